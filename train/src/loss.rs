//! Next-token cross entropy with a loss mask, and the language-model objective built on it
//! (pre-training and SFT: the mean loss per counted target token).

use burn::tensor::{Int, Tensor, TensorData, activation, backend::Backend};
use internlm2::backends::Kernels;
use internlm2::data::TokenBatch;
use internlm2::{ForwardInput, InternLM2};

use crate::TrainError;
use crate::objective::{Batch, Objective, TrainBackend};

/// The language-model objective: masked next-token cross entropy, averaged over the step's
/// counted target tokens ([`TokenBatch::loss_tokens`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LanguageModel;

impl<B: TrainBackend> Objective<B> for LanguageModel {
    type Model = InternLM2<B>;
    type Batch = TokenBatch;
    type Totals = usize;
    type Metrics = ();

    fn totals(&self, batch: &TokenBatch) -> usize {
        batch.loss_tokens()
    }

    fn loss(
        &self,
        model: &InternLM2<B>,
        batch: &TokenBatch,
        totals: &usize,
    ) -> Result<(Tensor<B, 1>, ()), TrainError> {
        Ok((batch_loss_sum(model, batch).div_scalar(*totals as f64), ()))
    }
}

impl Batch for TokenBatch {
    fn rows(&self) -> usize {
        self.batch
    }

    fn slice_rows(&self, start: usize, rows: usize) -> Self {
        TokenBatch::slice_rows(self, start, rows)
    }

    fn tokens(&self) -> usize {
        self.batch * self.seq_len
    }
}

/// Sum of `-log softmax(logits)[target]` over the positions where `mask` is 1, and the number
/// of such positions. Dividing the sum by the count of the whole (accumulated) batch gives the
/// mean loss per target token.
///
/// # Shapes
/// `logits`: `[batch, seq, vocab]` (f32), `targets`: `[batch, seq]`, `mask`: `[batch, seq]`
/// (1.0 where the target counts, 0.0 elsewhere) -> a `[1]` tensor
pub fn masked_cross_entropy_sum<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [b, s, _] = logits.dims();
    let log_probs = activation::log_softmax(logits, 2);
    let picked = log_probs
        .gather(2, targets.reshape([b, s, 1]))
        .reshape([b, s]);
    (picked.neg() * mask).sum()
}

/// [`masked_cross_entropy_sum`] of `model` on a packed batch (its positions and segments
/// included), on `model`'s device.
pub fn batch_loss_sum<B: Kernels>(model: &InternLM2<B>, batch: &TokenBatch) -> Tensor<B, 1> {
    let device = model.device();
    let shape = [batch.batch, batch.seq_len];
    let ids = |v: &[u32]| {
        Tensor::<B, 2, Int>::from_data(
            TensorData::new(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), shape),
            &device,
        )
    };
    let mut input = ForwardInput::new(ids(&batch.inputs)).with_positions(batch.positions.clone());
    if let Some(segments) = &batch.segments {
        input = input.with_segments(segments.clone());
    }
    let mask: Vec<f32> = batch
        .loss_mask
        .iter()
        .map(|&m| f32::from(u8::from(m)))
        .collect();
    let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, shape), &device);
    masked_cross_entropy_sum(model.forward_input(input), ids(&batch.targets), mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use internlm2::backends::Cpu;

    #[test]
    fn by_hand() {
        let device = Default::default();
        // Row 0: uniform over 4 -> ln 4 each; row 1: logits (0, ln 3) target 1 -> -ln(3/4).
        let logits = Tensor::<Cpu, 3>::from_data(
            TensorData::new(
                vec![0.0f32, 0.0, 0.0, 0.0, 0.0, 3f32.ln(), 0.0, 0.0],
                [1, 2, 4],
            ),
            &device,
        );
        let targets =
            Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![2i64, 1], [1, 2]), &device);
        let both = Tensor::<Cpu, 2>::from_data(TensorData::new(vec![1.0f32, 1.0], [1, 2]), &device);
        let first =
            Tensor::<Cpu, 2>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 2]), &device);
        let l = masked_cross_entropy_sum(logits.clone(), targets.clone(), both).into_scalar();
        // Row 1 has probabilities (1, 3, 1, 1) / 6 -> target 1 has 1/2.
        let expected = 4f32.ln() + 2f32.ln();
        assert!((l - expected).abs() < 1e-5, "{l} vs {expected}");
        let l = masked_cross_entropy_sum(logits, targets, first).into_scalar();
        assert!((l - 4f32.ln()).abs() < 1e-5);
    }
}

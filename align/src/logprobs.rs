//! Log-probabilities of given tokens, per token and per sequence, and the entropy of the
//! next-token distribution: the quantities DPO and PPO are written in.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData, activation};

use crate::sft::SftExample;

/// `log softmax(logits)[target]` at every position.
///
/// # Shapes
/// `logits`: `[batch, seq, vocab]`, `targets`: `[batch, seq]` -> `[batch, seq]`
pub fn token_logprobs<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> Tensor<B, 2> {
    let [b, s, _] = logits.dims();
    activation::log_softmax(logits, 2)
        .gather(2, targets.reshape([b, s, 1]))
        .reshape([b, s])
}

/// Entropy of the next-token distribution at every position.
///
/// # Shapes
/// `logits`: `[batch, seq, vocab]` -> `[batch, seq]`
pub fn entropy<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let [b, s, _] = logits.dims();
    let log_p = activation::log_softmax(logits, 2);
    (log_p.clone().exp() * log_p)
        .sum_dim(2)
        .neg()
        .reshape([b, s])
}

/// Rows of (prompt + response) examples right-padded to one width, on the host: inputs
/// (`ids[..n-1]`), targets (`ids[1..]`) and a mask of the response targets.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseRows {
    /// `[rows, width]`.
    pub dims: [usize; 2],
    /// Input ids, row-major.
    pub inputs: Vec<u32>,
    /// Target ids, row-major.
    pub targets: Vec<u32>,
    /// 1.0 where the target is part of the response, row-major.
    pub mask: Vec<f32>,
}

impl ResponseRows {
    /// The rows of `examples`; `pad` fills the right of shorter rows (never a target).
    pub fn new(examples: &[&SftExample], pad: u32) -> Self {
        let width = examples
            .iter()
            .map(|e| e.ids.len().saturating_sub(1))
            .max()
            .unwrap_or(1)
            .max(1);
        let b = examples.len();
        let (mut inputs, mut targets, mut mask) = (
            Vec::with_capacity(b * width),
            Vec::with_capacity(b * width),
            Vec::with_capacity(b * width),
        );
        for e in examples {
            let n = e.ids.len().saturating_sub(1);
            for i in 0..width {
                if i < n {
                    inputs.push(e.ids[i]);
                    targets.push(e.ids[i + 1]);
                    mask.push(if e.trained[i + 1] { 1.0f32 } else { 0.0 });
                } else {
                    inputs.push(pad);
                    targets.push(pad);
                    mask.push(0.0);
                }
            }
        }
        Self {
            dims: [b, width],
            inputs,
            targets,
            mask,
        }
    }

    /// Response targets (mask entries of 1).
    pub fn response_tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m > 0.0).count()
    }

    /// A `[rows, width]` f32 tensor of host values laid out like these rows.
    pub fn tensor<B: Backend>(&self, values: Vec<f32>, device: &B::Device) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(values, self.dims), device)
    }

    /// The tensors on `device`.
    pub fn to_batch<B: Backend>(&self, device: &B::Device) -> ResponseBatch<B> {
        let ids = |v: &[u32]| {
            Tensor::<B, 2, Int>::from_data(
                TensorData::new(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), self.dims),
                device,
            )
        };
        ResponseBatch {
            inputs: ids(&self.inputs),
            targets: ids(&self.targets),
            mask: self.tensor(self.mask.clone(), device),
            mask_host: self.mask.clone(),
            dims: self.dims,
        }
    }
}

/// [`ResponseRows`] as tensors on a device.
#[derive(Debug, Clone)]
pub struct ResponseBatch<B: Backend> {
    /// `[batch, seq]` inputs (`ids[..n-1]`).
    pub inputs: Tensor<B, 2, Int>,
    /// `[batch, seq]` targets (`ids[1..]`).
    pub targets: Tensor<B, 2, Int>,
    /// `[batch, seq]` 1.0 where the target is part of the response.
    pub mask: Tensor<B, 2>,
    /// Host copy of the mask.
    pub mask_host: Vec<f32>,
    /// `[batch, seq]`.
    pub dims: [usize; 2],
}

impl<B: Backend> ResponseBatch<B> {
    /// Builds the batch; `pad` fills the right of shorter rows (never a target).
    pub fn new(examples: &[&SftExample], pad: u32, device: &B::Device) -> Self {
        ResponseRows::new(examples, pad).to_batch(device)
    }
}

/// Sum of the response tokens' log-probabilities per row.
///
/// # Shapes
/// `logits`: `[batch, seq, vocab]` -> `[batch]`
pub fn response_logprobs<B: Backend>(
    logits: Tensor<B, 3>,
    batch: &ResponseBatch<B>,
) -> Tensor<B, 1> {
    let [b, _] = batch.dims;
    (token_logprobs(logits, batch.targets.clone()) * batch.mask.clone())
        .sum_dim(1)
        .reshape([b])
}

#[cfg(test)]
mod tests {
    use super::*;
    use internlm2::backends::Cpu;

    #[test]
    fn logprobs_and_entropy_by_hand() {
        let device = Default::default();
        // Uniform over 4: log p = -ln 4 everywhere, entropy ln 4.
        let logits = Tensor::<Cpu, 3>::zeros([1, 2, 4], &device);
        let targets =
            Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![0i64, 3], [1, 2]), &device);
        let lp = token_logprobs(logits.clone(), targets)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        assert!(lp.iter().all(|v| (v + 4f32.ln()).abs() < 1e-6));
        let h = entropy(logits).into_data().into_vec::<f32>().unwrap();
        assert!(h.iter().all(|v| (v - 4f32.ln()).abs() < 1e-6));
        // Only the masked response tokens count.
        let example = SftExample {
            ids: vec![1, 2, 3],
            trained: vec![false, false, true],
        };
        let batch = ResponseBatch::<Cpu>::new(&[&example], 0, &device);
        let sum: f32 = response_logprobs(Tensor::zeros([1, 2, 4], &device), &batch).into_scalar();
        assert!((sum + 4f32.ln()).abs() < 1e-6);
    }
}

//! One forward pass over the scheduled work: the packed input, its paged layout, and the
//! logits of the sequences that sample a token this step.
//!
//! Every scheduled sequence contributes its next `len` tokens to one row of `T` tokens, so
//! every linear layer runs once over the whole batch. Each token is rotated with the RoPE
//! length `generate` would give it alone, and its dense rows run in the numeric regime
//! `generate` would use for it (per row for decoding steps and short prompts, GEMM for longer
//! prompts, see [`RowGroups`]); with the row-invariant paged attention this makes a
//! sequence's tokens independent of the rest of the batch.

use burn::tensor::{DType, Int, Tensor, TensorData};
use internlm2::backends::Kernels;
use internlm2::backends::kernels::{PagedLayout, PagedSequence};
use internlm2::cache::PagedKvCache;
use internlm2::model::rows::RowGroups;
use internlm2::{ForwardInput, InternLM2};

use super::scheduler::{Scheduled, rope_length};
use super::sequence::Sequence;

/// Logits of the sequences that sample this step.
pub(crate) struct StepLogits {
    /// Index into the plan of each sampling sequence, in row order.
    pub samplers: Vec<usize>,
    /// `[samplers.len() * vocab]` f32, row-major.
    pub values: Vec<f32>,
    pub vocab: usize,
}

/// Runs the model over `plan` (`running` being the scheduler's running sequences).
pub(crate) fn forward<B: Kernels>(
    model: &InternLM2<B>,
    cache: &mut PagedKvCache<B>,
    running: &[Sequence<'_>],
    plan: &[Scheduled],
) -> StepLogits {
    let skinny = B::dense_skinny_rows();
    let tokens: usize = plan.iter().map(|s| s.len).sum();
    let mut ids = Vec::with_capacity(tokens);
    let mut positions = Vec::with_capacity(tokens);
    let mut rope_lengths = Vec::with_capacity(tokens);
    let mut per_row = Vec::with_capacity(tokens);
    let mut sequences = Vec::with_capacity(plan.len());
    let mut samplers = Vec::new();
    for (p, s) in plan.iter().enumerate() {
        let seq = &running[s.index];
        let start = seq.computed;
        for pos in start..start + s.len {
            ids.push(i64::from(seq.tokens[pos]));
            positions.push(pos);
            rope_lengths.push(rope_length(seq.prompt_len, pos));
            // `generate` runs a generated token alone, a prompt in one call of its length.
            per_row.push(pos >= seq.prompt_len || seq.prompt_len <= skinny);
        }
        sequences.push(PagedSequence {
            blocks: seq.blocks.clone(),
            past: start,
            len: s.len,
        });
        if start + s.len == seq.tokens.len() {
            samplers.push(p);
        }
    }
    let layout = PagedLayout {
        block_size: cache.block_size(),
        sequences,
    };
    let device = model.device();
    let input = ForwardInput::new(Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids, [1, tokens]),
        &device,
    ))
    .with_positions(positions)
    .with_rope_lengths(rope_lengths)
    .with_row_groups(RowGroups::by_regime(&per_row, skinny))
    .with_last_logits_only(true);
    // [1, plan.len(), hidden]: the last token of every scheduled sequence.
    let hidden = model.model.forward_paged(input, cache, &layout);
    let vocab = model.config().vocab_size;
    if samplers.is_empty() {
        return StepLogits {
            samplers,
            values: Vec::new(),
            vocab,
        };
    }
    let n = samplers.len();
    let hidden = if n == plan.len() {
        hidden
    } else {
        let rows: Vec<i64> = samplers.iter().map(|&p| p as i64).collect();
        hidden.select(1, Tensor::from_data(TensorData::new(rows, [n]), &device))
    };
    // The LM head runs per row, as `generate` runs it on one position.
    let logits = RowGroups::by_regime(&vec![true; n], skinny).apply(hidden, |h| model.logits(h));
    let values = logits
        .into_data()
        .convert_dtype(DType::F32)
        .into_vec::<f32>()
        .unwrap_or_default();
    StepLogits {
        samplers,
        values,
        vocab,
    }
}

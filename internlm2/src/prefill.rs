//! Chunked prefill: a long prompt runs through the model a chunk of tokens at a time, each chunk
//! attending to the KV cache the earlier chunks wrote, so that the work space of a forward
//! call is O(chunk x context) instead of O(context x context) and O(context x intermediate).
//!
//! What a whole-prompt forward would hold at once, and what a chunk of `c` tokens holds
//! instead (`t` = tokens cached so far plus the chunk):
//!
//! | buffer | whole prompt `s` | one chunk |
//! |---|---|---|
//! | attention scores (composite kernel) | `heads x s x s` f32 | `heads x c x t` |
//! | attention bias (composite kernel) | `s x s` f32 | `c x t` |
//! | fused CPU attention scores | bounded per task already | same |
//! | QKV, MLP activations | `s x (heads + 2 kv) d`, `3 x s x intermediate` | `c x ...` |
//! | logits | `1 x vocab` (last position only) | `1 x vocab`, last chunk only |
//!
//! So peak memory is the weights, the KV cache (linear in the context) and O(chunk x context)
//! work space.
//!
//! Dynamic NTK stays exact: the official full forward pass rotates every prompt position with
//! the base of the whole prompt length (SPEC 1), whereas a chunk alone would use its own
//! largest position. Each chunk therefore carries the prompt's RoPE length.

use burn::tensor::Tensor;
use internlm2_backends::Kernels;

use crate::cache::KvCache;
use crate::model::{ForwardInput, InternLM2};

/// Prompt tokens per chunk when a caller asks for chunking without a size.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// Runs the prompt of `input` through `model` in chunks of at most `chunk` tokens per row,
/// appending to `cache`, and returns the logits of the last position `[batch, vocab]` (f32).
///
/// `input` is what a single [`InternLM2::forward_cache`] call would take (ids, optional
/// positions, padding and RoPE lengths; segments are not supported with a cache). The result equals that
/// single call's last-position logits up to floating-point summation order. A `chunk` of 0 is
/// taken as 1.
///
/// ```
/// use burn::tensor::{Int, Tensor};
/// use internlm2::{ForwardInput, InternLM2, InternLM2Config, KvCache, prefill::prefill};
/// use internlm2_backends::Cpu;
/// let device = Default::default();
/// let config = InternLM2Config::new(64, 32, 64, 2, 4, 2);
/// let model: InternLM2<Cpu> = InternLM2::init(&config, &device);
/// let ids = Tensor::<Cpu, 2, Int>::from_ints([[1, 5, 9, 7, 3, 2, 8]], &device);
/// let mut cache = KvCache::new(&config, 1, 16);
/// let logits = prefill(&model, ForwardInput::new(ids), &mut cache, 3);
/// assert_eq!(logits.dims(), [1, 64]);
/// assert_eq!(cache.len(), 7);
/// ```
///
/// # Panics
/// As [`InternLM2::forward_cache`]: if the cache's batch differs from the input's, or the
/// input has segments.
pub fn prefill<B: Kernels>(
    model: &InternLM2<B>,
    input: ForwardInput<B>,
    cache: &mut KvCache<B>,
    chunk: usize,
) -> Tensor<B, 2> {
    let [batch, seq] = input.dims();
    let vocab = model.config().vocab_size;
    let chunk = chunk.max(1);
    let past = cache.len();
    let positions = input
        .positions
        .clone()
        .unwrap_or_else(|| (0..batch).flat_map(|_| past..past + seq).collect());
    // What one call would rotate with: the caller's lengths, else the largest position + 1.
    let lengths = input.rope_lengths.clone().unwrap_or_else(|| {
        let length = positions.iter().max().map_or(0, |p| p + 1);
        vec![length; batch * seq]
    });
    if seq <= chunk {
        let logits = model.forward_cache(
            input
                .with_positions(positions)
                .with_rope_lengths(lengths)
                .with_last_logits_only(true),
            cache,
        );
        return logits.reshape([batch, vocab]);
    }
    let mut logits = None;
    for start in (0..seq).step_by(chunk) {
        let end = (start + chunk).min(seq);
        let rows = |flat: &[usize]| -> Vec<usize> {
            (0..batch)
                .flat_map(|r| flat[r * seq + start..r * seq + end].iter().copied())
                .collect()
        };
        let ids = input.ids.clone().slice([0..batch, start..end]);
        let mut part = ForwardInput::new(ids)
            .with_positions(rows(&positions))
            .with_rope_lengths(rows(&lengths))
            .with_last_logits_only(true);
        if let Some(padding) = &input.padding {
            part = part.with_padding(
                (0..batch)
                    .flat_map(|r| padding[r * seq + start..r * seq + end].iter().copied())
                    .collect(),
            );
        }
        if end < seq {
            // Only the cache matters here: skip the LM head.
            let _ = model.model.forward(part, Some(cache));
        } else {
            logits = Some(model.forward_cache(part, cache));
        }
    }
    logits
        .expect("the last chunk computes logits")
        .reshape([batch, vocab])
}

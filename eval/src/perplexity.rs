//! Perplexity of a checkpoint on documents, with Hugging Face's sliding-window recipe
//! ("Perplexity of fixed-length models", `transformers` docs):
//!
//! ```text
//! prev_end_loc = 0
//! for begin_loc in range(0, seq_len, stride):
//!     end_loc = min(begin_loc + max_length, seq_len)
//!     trg_len = end_loc - prev_end_loc        # may differ from stride on the last loop
//!     input_ids = encodings.input_ids[:, begin_loc:end_loc]
//!     target_ids = input_ids.clone(); target_ids[:, :-trg_len] = -100
//!     ...
//!     prev_end_loc = end_loc
//!     if end_loc == seq_len: break
//! ```
//!
//! Each window is a fresh forward pass (positions from 0) and scores only the tokens the
//! previous window did not (the model's label shift never scores a window's first token). The
//! result is the token-weighted mean negative log-likelihood over every scored token and its
//! exponential. Each document is its own sequence (BOS first); windows of the same length are
//! batched, so no padding ever enters a window. Only the scored positions go through the LM
//! head, a slice at a time, so the logits never take `[batch, window, vocab]` memory.

use std::collections::BTreeMap;

use burn::tensor::{DType, Int, Tensor, TensorData, activation::log_softmax};
use indicatif::{ProgressBar, ProgressStyle};
use internlm2::backends::Kernels;
use internlm2::{ForwardInput, InternLM2};
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

/// Positions sent through the LM head at once (bounds the `[n, vocab]` logits).
const LOGIT_SLICE: usize = 256;

/// Window, stride and batching of a perplexity run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerplexityConfig {
    /// Tokens per window (the model's context for one forward pass).
    pub max_length: usize,
    /// Tokens between window starts (`max_length` = disjoint windows).
    pub stride: usize,
    /// Windows per forward pass.
    pub batch_size: usize,
    /// Draw a progress bar (stderr).
    pub progress: bool,
}

impl Default for PerplexityConfig {
    fn default() -> Self {
        Self {
            max_length: 2048,
            stride: 1024,
            batch_size: 4,
            progress: false,
        }
    }
}

/// One window of one document: tokens `begin..end` go through the model and tokens
/// `score_from..end` are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Which document.
    pub document: usize,
    /// First token of the window.
    pub begin: usize,
    /// One past the last token.
    pub end: usize,
    /// First scored token (`> begin`).
    pub score_from: usize,
}

/// The windows of a sequence of `len` tokens, as the recipe above lays them out; windows that
/// score nothing (a one-token sequence) are left out.
///
/// ```
/// use internlm2_eval::perplexity::windows;
/// // 10 tokens, windows of 4, stride 2: [0,4) scores 1..4, [2,6) scores 4..6, ...
/// let w: Vec<_> = windows(0, 10, 4, 2).iter().map(|w| (w.begin, w.end, w.score_from)).collect();
/// assert_eq!(w, [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]);
/// ```
pub fn windows(document: usize, len: usize, max_length: usize, stride: usize) -> Vec<Window> {
    let mut out = Vec::new();
    let mut prev_end = 0;
    let mut begin = 0;
    while begin < len {
        let end = (begin + max_length).min(len);
        let score_from = prev_end.max(begin + 1);
        if score_from < end {
            out.push(Window {
                document,
                begin,
                end,
                score_from,
            });
        }
        prev_end = end;
        if end == len {
            break;
        }
        begin += stride;
    }
    out
}

/// What a perplexity run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerplexityReport {
    /// Documents read (including those too short to score).
    pub documents: usize,
    /// Forward windows.
    pub windows: usize,
    /// Tokens scored.
    pub tokens: usize,
    /// Sum of the scored tokens' negative log-likelihoods (nats).
    pub nll_sum: f64,
    /// `nll_sum / tokens`.
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub perplexity: f64,
    /// The window length used.
    pub max_length: usize,
    /// The stride used.
    pub stride: usize,
}

fn check(config: &PerplexityConfig) -> Result<()> {
    let bad = |name, reason: &str| {
        Err(EvalError::InvalidSetting {
            name,
            reason: reason.into(),
        })
    };
    if config.max_length < 2 {
        return bad("max_length", "a window needs at least 2 tokens");
    }
    if config.stride == 0 || config.stride > config.max_length {
        return bad(
            "stride",
            "must be at least 1 and at most max_length (larger strides skip tokens)",
        );
    }
    if config.batch_size == 0 {
        return bad("batch_size", "must be at least 1");
    }
    Ok(())
}

/// The perplexity of `model` on `documents` (token ids, BOS included where wanted).
///
/// ```
/// use internlm2::{InternLM2, InternLM2Config, backends::Cpu};
/// use internlm2_eval::perplexity::{PerplexityConfig, perplexity};
/// let config = InternLM2Config::new(64, 32, 64, 2, 4, 2);
/// let model: InternLM2<Cpu> = InternLM2::init(&config, &Default::default());
/// let docs = vec![vec![1, 5, 9, 7, 3, 2, 8, 4, 4, 6]];
/// let config = PerplexityConfig { max_length: 4, stride: 2, ..Default::default() };
/// let report = perplexity(&model, &docs, &config)?;
/// assert_eq!(report.tokens, 9); // every token but the first
/// assert!((report.perplexity - report.mean_nll.exp()).abs() < 1e-9);
/// # Ok::<(), internlm2_eval::EvalError>(())
/// ```
pub fn perplexity<B: Kernels>(
    model: &InternLM2<B>,
    documents: &[Vec<u32>],
    config: &PerplexityConfig,
) -> Result<PerplexityReport> {
    check(config)?;
    let vocab = model.config().vocab_size;
    for doc in documents {
        if let Some(&id) = doc.iter().find(|&&id| id as usize >= vocab) {
            return Err(EvalError::InvalidSetting {
                name: "documents",
                reason: format!("token id {id} is outside the vocabulary of {vocab}"),
            });
        }
    }
    if config.max_length > model.config().max_position_embeddings {
        log::warn!(
            "perplexity windows of {} tokens exceed max_position_embeddings {}",
            config.max_length,
            model.config().max_position_embeddings
        );
    }
    // Windows grouped by length: a batch never needs padding.
    let mut by_length: BTreeMap<usize, Vec<Window>> = BTreeMap::new();
    let mut total_windows = 0;
    let mut total_tokens = 0;
    for (d, doc) in documents.iter().enumerate() {
        for w in windows(d, doc.len(), config.max_length, config.stride) {
            total_windows += 1;
            total_tokens += w.end - w.score_from;
            by_length.entry(w.end - w.begin).or_default().push(w);
        }
    }
    if total_tokens == 0 {
        return Err(EvalError::Empty {
            what: "documents (each needs at least 2 tokens)".into(),
        });
    }
    let bar = if config.progress {
        let bar = ProgressBar::new(total_tokens as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "perplexity {bar:40} {pos}/{len} tokens [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .expect("valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut nll_sum = 0f64;
    for (len, group) in &by_length {
        for batch in group.chunks(config.batch_size) {
            let sum = batch_nll(model, documents, batch, *len);
            nll_sum += sum;
            let scored: usize = batch.iter().map(|w| w.end - w.score_from).sum();
            bar.inc(scored as u64);
            bar.set_message(format!(
                "ppl {:.3}",
                (nll_sum / bar.position() as f64).exp()
            ));
        }
    }
    bar.finish_and_clear();
    let mean_nll = nll_sum / total_tokens as f64;
    Ok(PerplexityReport {
        documents: documents.len(),
        windows: total_windows,
        tokens: total_tokens,
        nll_sum,
        mean_nll,
        perplexity: mean_nll.exp(),
        max_length: config.max_length,
        stride: config.stride,
    })
}

/// Summed NLL of the scored tokens of windows that all have `len` tokens.
fn batch_nll<B: Kernels>(
    model: &InternLM2<B>,
    documents: &[Vec<u32>],
    batch: &[Window],
    len: usize,
) -> f64 {
    let device = model.device();
    let b = batch.len();
    let ids: Vec<i64> = batch
        .iter()
        .flat_map(|w| {
            documents[w.document][w.begin..w.end]
                .iter()
                .map(|&t| t as i64)
        })
        .collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, len]), &device);
    let hidden = model.model.forward(ForwardInput::new(ids), None); // [b, len, h]
    let h = hidden.dims()[2];
    let mut sum = 0f64;
    for (row, w) in batch.iter().enumerate() {
        // Logit at window position p - 1 predicts token p.
        let (first, last) = (w.score_from - w.begin - 1, w.end - w.begin - 1);
        let mut start = first;
        while start < last {
            let stop = (start + LOGIT_SLICE).min(last);
            let n = stop - start;
            let logits = model.logits(hidden.clone().slice([row..row + 1, start..stop, 0..h]));
            let logp = log_softmax(logits.cast(DType::F32), 2); // [1, n, vocab]
            let targets: Vec<i64> = documents[w.document][w.begin + start + 1..w.begin + stop + 1]
                .iter()
                .map(|&t| t as i64)
                .collect();
            let targets =
                Tensor::<B, 3, Int>::from_data(TensorData::new(targets, [1, n, 1]), &device);
            let picked = logp
                .gather(2, targets)
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("converted to f32");
            sum -= picked.iter().map(|&x| x as f64).sum::<f64>();
            start = stop;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hugging Face's loop, transcribed: the scored ranges of every window.
    fn hf(len: usize, max_length: usize, stride: usize) -> Vec<(usize, usize, usize)> {
        windows(0, len, max_length, stride)
            .iter()
            .map(|w| (w.begin, w.end, w.score_from))
            .collect()
    }

    #[test]
    fn windows_by_hand() {
        // One window covers a short sequence: every token but the first is scored.
        assert_eq!(hf(5, 8, 4), [(0, 5, 1)]);
        // Disjoint windows (stride = max_length): a window's first token is never scored
        // (the label shift), so tokens 4 and 8 go unscored, as in the recipe.
        assert_eq!(hf(10, 4, 4), [(0, 4, 1), (4, 8, 4 + 1), (8, 10, 9)]);
        // Overlapping: 10 tokens, windows of 6, stride 3: [0,6) 1..6; [3,9) 6..9; [6,10) 9..10.
        assert_eq!(hf(10, 6, 3), [(0, 6, 1), (3, 9, 6), (6, 10, 9)]);
        // The last window ends at the sequence end and the loop stops there.
        assert_eq!(hf(7, 6, 3), [(0, 6, 1), (3, 7, 6)]);
        // Nothing to score.
        assert!(hf(1, 4, 2).is_empty());
        assert!(hf(0, 4, 2).is_empty());
        // Every token but the first is scored exactly once when stride < max_length.
        for (len, m, s) in [(100, 16, 5), (37, 8, 8 - 1), (64, 64, 1), (9, 2, 1)] {
            let w = hf(len, m, s);
            let scored: usize = w.iter().map(|(_, e, f)| e - f).sum();
            assert_eq!(scored, len - 1, "len {len} max {m} stride {s}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let bad = |c: PerplexityConfig| matches!(check(&c), Err(EvalError::InvalidSetting { .. }));
        let base = PerplexityConfig::default();
        assert!(bad(PerplexityConfig {
            max_length: 1,
            ..base.clone()
        }));
        assert!(bad(PerplexityConfig {
            stride: 0,
            ..base.clone()
        }));
        assert!(bad(PerplexityConfig {
            stride: base.max_length + 1,
            ..base.clone()
        }));
        assert!(bad(PerplexityConfig {
            batch_size: 0,
            ..base.clone()
        }));
        assert!(check(&base).is_ok());
    }
}

//! Supervised fine-tuning (SPEC 6): ChatML conversations, loss only on what the assistant
//! says (its closing `<|im_end|>` included), conversations packed into rows with boundaries,
//! one epoch at LR 4e-5 by default.
//!
//! Data: JSONL, one `{"messages": [{"role": ..., "content": ..., "name"?, "tool_call"?}, ...]}`
//! per line (the [`Message`] serde format, tool turns included).

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use internlm2::Tokenizer;
use internlm2::backends::Kernels;
use internlm2::chat::{self, Message, Role};
use internlm2::train::{LrSchedule, StepRecord, TokenBatch, Trainer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::AlignError;

/// One line of an SFT file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// The turns, system first if any.
    pub messages: Vec<Message>,
}

/// A tokenised conversation: ids (BOS first) and, per id, whether the model learns to produce
/// it (assistant text, tool calls and the closing `<|im_end|>`).
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `trained[i]`: token `i` is a target of the loss.
    pub trained: Vec<bool>,
}

/// Renders and tokenises a conversation, marking the assistant tokens.
pub fn tokenize_conversation(
    tokenizer: &Tokenizer,
    messages: &[Message],
) -> Result<SftExample, AlignError> {
    // Byte spans of the assistant text in the rendered conversation.
    let mut text = String::new();
    let mut spans = Vec::new();
    for message in messages {
        let rendered = chat::render_message(message)?;
        if message.role == Role::Assistant {
            let header = format!("{}assistant\n", chat::IM_START);
            let start = text.len() + header.len();
            // Up to and including <|im_end|>, not the newline after it.
            let end = text.len() + rendered.len() - 1;
            spans.push((start, end));
        }
        text.push_str(&rendered);
    }
    let (ids, offsets) = tokenizer.encode_with_offsets(&text, true)?;
    let trained = offsets
        .iter()
        .enumerate()
        .map(|(i, &(start, end))| {
            i > 0 && end > start && spans.iter().any(|&(s, e)| start >= s && start < e)
        })
        .collect();
    Ok(SftExample { ids, trained })
}

/// Reads an SFT JSONL file.
pub fn read_conversations(path: impl AsRef<Path>) -> Result<Vec<Conversation>, AlignError> {
    crate::read_jsonl(path.as_ref())
}

/// Packing and batching settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SftPacking {
    /// Tokens per row.
    pub seq_len: usize,
    /// Id used for padding (never a target).
    pub pad_id: u32,
}

/// Conversations packed into rows: each conversation keeps its own positions (from 0) and
/// segment, so conversations in one row never attend to each other. A conversation longer
/// than a row is cut to the row (the cut is counted in [`PackedSft::truncated`]).
#[derive(Debug, Clone)]
pub struct PackedSft {
    rows: Vec<TokenBatch>,
    /// Conversations cut to fit a row.
    pub truncated: usize,
}

impl PackedSft {
    /// Packs `examples` (in this order) into rows of `packing.seq_len` inputs.
    pub fn new(examples: &[SftExample], packing: SftPacking) -> Self {
        let l = packing.seq_len;
        let mut rows = Vec::new();
        let mut row = empty_row(l);
        let mut used = 0;
        let mut segment = 0;
        let mut truncated = 0;
        for example in examples {
            if example.ids.len() < 2 {
                continue;
            }
            // Inputs ids[..n-1], targets ids[1..]: n - 1 positions.
            let mut n = example.ids.len() - 1;
            if n > l {
                n = l;
                truncated += 1;
            }
            if used + n > l {
                rows.push(finish_row(row, used, packing.pad_id, segment + 1));
                row = empty_row(l);
                used = 0;
            }
            for i in 0..n {
                row.inputs.push(example.ids[i]);
                row.targets.push(example.ids[i + 1]);
                row.loss_mask.push(example.trained[i + 1]);
                row.positions.push(i);
                row.segments.as_mut().expect("segments").push(segment);
            }
            used += n;
            segment += 1;
        }
        if used > 0 {
            rows.push(finish_row(row, used, packing.pad_id, segment));
        }
        Self { rows, truncated }
    }

    /// Packed rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether nothing was packed.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows of one epoch in a seeded order, `batch` rows per batch (the last may be short).
    pub fn batches(&self, batch: usize, seed: u64) -> Vec<TokenBatch> {
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        order
            .chunks(batch.max(1))
            .map(|chunk| concat_rows(chunk.iter().map(|&i| &self.rows[i])))
            .collect()
    }
}

fn empty_row(l: usize) -> TokenBatch {
    TokenBatch {
        batch: 1,
        seq_len: l,
        inputs: Vec::with_capacity(l),
        targets: Vec::with_capacity(l),
        loss_mask: Vec::with_capacity(l),
        positions: Vec::with_capacity(l),
        segments: Some(Vec::with_capacity(l)),
    }
}

fn finish_row(mut row: TokenBatch, used: usize, pad: u32, pad_segment: u32) -> TokenBatch {
    for _ in used..row.seq_len {
        row.inputs.push(pad);
        row.targets.push(pad);
        row.loss_mask.push(false);
        row.positions.push(0);
        row.segments.as_mut().expect("segments").push(pad_segment);
    }
    row
}

/// Stacks single rows into one batch.
pub(crate) fn concat_rows<'a>(rows: impl Iterator<Item = &'a TokenBatch>) -> TokenBatch {
    let mut out: Option<TokenBatch> = None;
    for row in rows {
        match out.as_mut() {
            None => out = Some(row.clone()),
            Some(b) => {
                b.batch += row.batch;
                b.inputs.extend_from_slice(&row.inputs);
                b.targets.extend_from_slice(&row.targets);
                b.loss_mask.extend_from_slice(&row.loss_mask);
                b.positions.extend_from_slice(&row.positions);
                if let (Some(s), Some(r)) = (b.segments.as_mut(), row.segments.as_ref()) {
                    s.extend_from_slice(r);
                }
            }
        }
    }
    out.expect("at least one row")
}

/// SFT hyper-parameters (SPEC 6 defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    /// Passes over the data (SPEC 6: 1).
    pub epochs: usize,
    /// Peak learning rate (SPEC 6: 4e-5).
    pub lr: f64,
    /// Warmup as a fraction of the steps.
    pub warmup_ratio: f64,
    /// Packed rows per step.
    pub batch_size: usize,
    /// Seed of the row order.
    pub seed: u64,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            lr: 4e-5,
            warmup_ratio: 0.03,
            batch_size: 8,
            seed: 0,
        }
    }
}

/// Fine-tunes `trainer.model` on packed conversations; calls `on_step` after every step.
pub fn train_sft<B: AutodiffBackend + Kernels>(
    trainer: &mut Trainer<B>,
    data: &PackedSft,
    config: &SftConfig,
    mut on_step: impl FnMut(&StepRecord),
) -> Result<Vec<f64>, AlignError>
where
    B::InnerBackend: Kernels,
{
    if data.is_empty() {
        return Err(AlignError::EmptyData("no packed SFT rows".into()));
    }
    let per_epoch = data.len().div_ceil(config.batch_size.max(1));
    let total = per_epoch * config.epochs.max(1);
    let schedule = LrSchedule::new(
        config.lr,
        ((total as f64 * config.warmup_ratio) as usize).max(1),
        total,
    );
    let mut losses = Vec::with_capacity(total);
    let mut step = 0;
    for epoch in 0..config.epochs.max(1) {
        for batch in data.batches(config.batch_size, config.seed.wrapping_add(epoch as u64)) {
            if batch.loss_tokens() == 0 {
                continue;
            }
            let lr = schedule.lr(step);
            let started = std::time::Instant::now();
            let stats = trainer.step(std::slice::from_ref(&batch), lr)?;
            step += 1;
            losses.push(stats.loss);
            let seconds = started.elapsed().as_secs_f64();
            on_step(&StepRecord {
                step,
                phase: format!("sft-epoch{}", epoch + 1),
                loss: stats.loss,
                lr,
                grad_norm: stats.grad_norm,
                tokens: stats.tokens,
                tokens_per_s: stats.tokens as f64 / seconds,
                mfu: 0.0,
                seconds,
            });
        }
    }
    Ok(losses)
}

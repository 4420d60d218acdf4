//! Supervised fine-tuning (SPEC 6): ChatML conversations, loss only on what the assistant
//! says (its closing `<|im_end|>` included), conversations packed into rows with boundaries,
//! one epoch at LR 4e-5 by default, on the shared training engine (the language-model
//! objective of `internlm2-train`).
//!
//! Data: JSONL, one `{"messages": [{"role": ..., "content": ..., "name"?, "tool_call"?}, ...]}`
//! per line (the [`Message`] serde format, tool turns included).

use std::path::Path;

use internlm2::Tokenizer;
use internlm2::chat::{self, Message, Role};
use internlm2_train::{
    LanguageModel, LrSchedule, Phase, RunOptions, StepEngine, StepList, StepRecord, TokenBatch,
    TrainBackend, TrainState, run,
};
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
    rows: TokenBatch,
    /// Conversations cut to fit a row.
    pub truncated: usize,
}

impl PackedSft {
    /// Packs `examples` (in this order) into rows of `packing.seq_len` inputs: consecutive
    /// conversations share a row while they fit.
    pub fn new(examples: &[SftExample], packing: SftPacking) -> Self {
        let l = packing.seq_len;
        let mut truncated = 0;
        // (example, inputs used) per row.
        let mut groups: Vec<Vec<(&SftExample, usize)>> = Vec::new();
        let mut used = 0;
        for example in examples.iter().filter(|e| e.ids.len() >= 2) {
            // Inputs ids[..n-1], targets ids[1..]: n - 1 positions.
            let mut n = example.ids.len() - 1;
            if n > l {
                n = l;
                truncated += 1;
            }
            if groups.is_empty() || used + n > l {
                groups.push(Vec::new());
                used = 0;
            }
            groups.last_mut().expect("a row").push((example, n));
            used += n;
        }
        let mut rows = TokenBatch::empty(l, true);
        for group in groups {
            let mut row = rows.push_row();
            for (example, n) in group {
                row.push_piece(
                    &example.ids[..n],
                    &example.ids[1..=n],
                    example.trained[1..=n].iter().copied(),
                );
            }
            row.finish(packing.pad_id);
        }
        Self { rows, truncated }
    }

    /// Packed rows.
    pub fn len(&self) -> usize {
        self.rows.batch
    }

    /// Whether nothing was packed.
    pub fn is_empty(&self) -> bool {
        self.rows.batch == 0
    }

    /// The rows of one epoch in a seeded order, `batch` rows per batch (the last may be short).
    pub fn batches(&self, batch: usize, seed: u64) -> Vec<TokenBatch> {
        let mut order: Vec<usize> = (0..self.rows.batch).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        order
            .chunks(batch.max(1))
            .map(|chunk| {
                let mut out = TokenBatch::empty(self.rows.seq_len, true);
                for &i in chunk {
                    out.append(&self.rows.slice_rows(i, 1));
                }
                out
            })
            .collect()
    }
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
    /// Micro-batches each step's rows are split into (gradient accumulation).
    #[serde(default = "one")]
    pub micro_batches: usize,
    /// Seed of the row order.
    pub seed: u64,
}

pub(crate) fn one() -> usize {
    1
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            epochs: 1,
            lr: 4e-5,
            warmup_ratio: 0.03,
            batch_size: 8,
            micro_batches: 1,
            seed: 0,
        }
    }
}

impl SftConfig {
    /// The run over `data`: its steps (every epoch's rows in a seeded order, batches without
    /// a counted target left out) and its phase (warmup + cosine), for
    /// [`internlm2_train::run`] with checkpoints, resume or data parallelism.
    pub fn plan(&self, data: &PackedSft) -> Result<(StepList<TokenBatch>, Phase), AlignError> {
        if data.is_empty() {
            return Err(AlignError::empty("no packed SFT rows"));
        }
        let steps: Vec<TokenBatch> = (0..self.epochs.max(1))
            .flat_map(|epoch| data.batches(self.batch_size, self.seed.wrapping_add(epoch as u64)))
            .filter(|batch| batch.loss_tokens() > 0)
            .collect();
        let per_epoch = data.len().div_ceil(self.batch_size.max(1));
        let total = per_epoch * self.epochs.max(1);
        let schedule = LrSchedule::new(
            self.lr,
            ((total as f64 * self.warmup_ratio) as usize).max(1),
            total,
        );
        let mut phase = Phase::fixed("sft", schedule).with_micro_batches(self.micro_batches.max(1));
        // Batches without a counted target are left out; the schedule keeps its length.
        phase.steps = steps.len();
        Ok((StepList::new(steps), phase))
    }
}

/// Fine-tunes the model of `engine` (a [`Trainer`](internlm2_train::Trainer) or
/// [`DataParallel`](internlm2_train::DataParallel) replicas) on packed conversations; calls
/// `on_step` after every step and returns the losses. For checkpoints and resume, run
/// [`SftConfig::plan`] with [`internlm2_train::run`].
pub fn train_sft<B: TrainBackend, E: StepEngine<B, LanguageModel>>(
    engine: &mut E,
    data: &PackedSft,
    config: &SftConfig,
    mut on_step: impl FnMut(&StepRecord),
) -> Result<Vec<f64>, AlignError> {
    let (mut steps, phase) = config.plan(data)?;
    let options = RunOptions::phase(phase);
    let mut state = TrainState::new(config.seed);
    run(engine, &mut steps, &mut state, &options, |record, _| {
        on_step(record)
    })?;
    Ok(state.losses)
}

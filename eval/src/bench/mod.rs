//! Benchmarks in OpenCompass's InternLM2-chat setting (`configs/eval_internlm2_chat_keyset.py`,
//! January 2024): greedy decoding, the chat template, OpenCompass's prompts and extractors, on
//! data files the user supplies in the usual Hugging Face JSONL layouts (nothing is
//! downloaded).
//!
//! Each run writes `<task>.jsonl` (one record per item: prompt length, the raw answer, what was
//! extracted, the reference, whether it is correct), appended a batch at a time so a rerun
//! resumes, and `<task>_summary.json` (accuracy; for MMLU per subject and their mean).
//!
//! ```no_run
//! use internlm2_eval::bench::{BenchConfig, Gsm8k, run_benchmark};
//! # fn demo(mut generator: impl internlm2_eval::Generator) -> Result<(), internlm2_eval::EvalError> {
//! let task = Gsm8k::load("gsm8k/test.jsonl".as_ref(), "gsm8k/train.jsonl".as_ref())?;
//! let config = BenchConfig { limit: Some(50), ..BenchConfig::default() };
//! let summary = run_benchmark(&mut generator, &task, &config, "out".as_ref())?;
//! println!("GSM8K {:.2}", summary.accuracy);
//! # Ok(()) }
//! ```

mod data;
mod gsm8k;
mod humaneval;
mod mmlu;
mod run;

pub use data::{JsonRecord, read_jsonl, read_jsonl_dir};
pub use gsm8k::{Gsm8k, gsm8k_shot_answer};
pub use humaneval::HumanEval;
pub use mmlu::Mmlu;
pub use run::{BenchConfig, BenchSummary, ItemRecord, SubjectScore, run_benchmark};

use crate::error::Result;
use crate::prompt::Turn;

/// One item of a benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// A stable id (the data's own id or the line number).
    pub id: String,
    /// The MMLU subject, if any.
    pub subject: Option<String>,
    /// The reference answer, as the record shows it.
    pub gold: String,
}

/// How a prediction was judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// What the extractor took from the answer (`None`: nothing).
    pub extracted: Option<String>,
    /// Whether it counts as correct.
    pub correct: bool,
    /// Details (e.g. a failing test's error), empty when none.
    pub detail: String,
}

/// A benchmark: items, their prompts and how answers are judged.
pub trait Task {
    /// The file stem of its records (`gsm8k`, `mmlu`, `humaneval`).
    fn name(&self) -> &'static str;
    /// The items, in order.
    fn items(&self) -> &[Item];
    /// The turns of item `index`'s prompt.
    fn prompt(&self, index: usize) -> Vec<Turn>;
    /// OpenCompass's `max_out_len` for the task.
    fn max_new_tokens(&self) -> usize;
    /// Judges the model's answer to item `index`.
    fn judge(&self, index: usize, answer: &str) -> Result<Judgement>;
}

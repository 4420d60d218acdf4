//! COOL RLHF for InternLM2 on burn (SPEC 6): supervised fine-tuning, the conditional reward
//! model, PPO, the online RLHF loop, and DPO as the cheaper alternative.
//!
//! Every stage trains with `internlm2_train`'s AdamW (two parameter groups, global-norm
//! clipping) and generates with `internlm2::generate`.
#![deny(missing_docs)]

pub mod dpo;
pub mod logprobs;
pub mod online;
pub mod pairs;
pub mod ppo;
pub mod reward;
pub mod sft;

use std::path::{Path, PathBuf};

/// Alignment failures.
#[derive(Debug, thiserror::Error)]
pub enum AlignError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSONL line is not the expected record.
    #[error("{path}:{line}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why.
        reason: String,
    },
    /// Nothing to train on.
    #[error("no data: {what}")]
    EmptyData {
        /// What is missing.
        what: String,
    },
    /// Options that cannot work.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// A score or loss left the finite range.
    #[error("numerical problem: {reason}")]
    Numerical {
        /// What left the range.
        reason: String,
    },
    /// See [`internlm2_train::TrainError`].
    #[error(transparent)]
    Train(#[from] internlm2_train::TrainError),
    /// See [`internlm2::ChatError`].
    #[error(transparent)]
    Chat(#[from] internlm2::ChatError),
    /// See [`internlm2::TokenizerError`].
    #[error(transparent)]
    Tokenizer(#[from] internlm2::TokenizerError),
    /// See [`internlm2::GenerateError`].
    #[error(transparent)]
    Generate(#[from] internlm2::GenerateError),
    /// See [`internlm2::CheckpointError`].
    #[error(transparent)]
    Checkpoint(#[from] internlm2::CheckpointError),
}

impl AlignError {
    pub(crate) fn empty(what: impl Into<String>) -> Self {
        Self::EmptyData { what: what.into() }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            reason: reason.into(),
        }
    }
}

/// One JSONL line of conversations with a preference domain: the prompts PPO rolls out, the
/// conversations the reward model scores (`{"messages": [...], "domain": "helpful"}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DomainConversation {
    /// The turns.
    pub messages: Vec<internlm2::chat::Message>,
    /// The preference domain (selects the reward model's system prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// Reads a JSONL file of `T` records (blank lines skipped).
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, AlignError> {
    let text = std::fs::read_to_string(path).map_err(|source| AlignError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| AlignError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Writes records as JSONL.
pub fn write_jsonl<T: serde::Serialize>(path: &Path, records: &[T]) -> Result<(), AlignError> {
    let mut text = String::new();
    for record in records {
        text.push_str(&serde_json::to_string(record).expect("records serialise"));
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|source| AlignError::Io {
        path: path.to_path_buf(),
        source,
    })
}

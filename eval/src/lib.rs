//! # internlm2-eval
//!
//! The measurements the InternLM2 report makes, run on any checkpoint without Python:
//!
//! - [`perplexity`]: Hugging Face's sliding-window perplexity on text files (JSONL, Parquet,
//!   plain text), batched;
//! - [`niah`]: needle in a haystack as OpenCompass ran it for InternLM2 (grid of context
//!   lengths x depths, the exact templates, keyword / Levenshtein scoring, several needles, the
//!   passkey variant, seeded repeats, resumable JSON lines and a heatmap PNG);
//! - [`bench`]: GSM8K, MMLU and HumanEval in OpenCompass's InternLM2-chat setting on the
//!   user's JSONL files, with the extractors of [`extract`].
//!
//! Generation goes through the [`Generator`] trait: [`ModelGenerator`] wraps
//! [`internlm2::generate::generate`], `EngineGenerator` (feature `engine`) the serving engine
//! of `internlm2-serve`; tests script a model's answers.
#![deny(missing_docs)]

pub mod bench;
#[cfg(feature = "engine")]
pub mod engine;
pub mod error;
pub mod exec;
pub mod extract;
pub mod generator;
pub mod niah;
pub mod perplexity;
pub mod prompt;
pub mod records;
pub mod text;

#[cfg(feature = "engine")]
pub use engine::EngineGenerator;
pub use error::{EvalError, Result};
pub use generator::{Completion, Generator, ModelGenerator};
pub use prompt::PromptFormat;

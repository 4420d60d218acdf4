//! The error type of the evaluation crate: bad input files, bad settings, and failures of the
//! model, the tokenizer, the plotter or the code runner, each naming what was wrong.

use std::path::PathBuf;

/// Everything that can go wrong while evaluating.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of a JSONL input file is not what the task expects.
    #[error("{path}:{line}: {reason}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An input holds nothing to evaluate.
    #[error("{what}: nothing to evaluate")]
    Empty {
        /// What was empty.
        what: String,
    },
    /// A setting is out of range.
    #[error("invalid setting `{name}`: {reason}")]
    InvalidSetting {
        /// The setting.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// A prompt does not fit the model's context.
    #[error(
        "a prompt of {prompt_len} tokens plus {max_new_tokens} new tokens exceeds the context limit of {limit}"
    )]
    ContextOverflow {
        /// Prompt tokens.
        prompt_len: usize,
        /// Tokens to generate.
        max_new_tokens: usize,
        /// The limit.
        limit: usize,
    },
    /// Something this build cannot do.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The data crate's readers failed.
    #[error(transparent)]
    Data(#[from] internlm2_datasets::DataError),
    /// Tokenising or decoding failed.
    #[error(transparent)]
    Tokenizer(#[from] internlm2::TokenizerError),
    /// Rendering a chat prompt failed.
    #[error(transparent)]
    Chat(#[from] internlm2::ChatError),
    /// Generation failed.
    #[error(transparent)]
    Generate(#[from] internlm2::GenerateError),
    /// A results file line could not be written or read back.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// Drawing a chart failed.
    #[error("plot {path}: {reason}")]
    Plot {
        /// The PNG.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Starting or talking to the code runner failed.
    #[error("code runner `{program}`: {reason}")]
    Runner {
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
}

/// `Result` with [`EvalError`].
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) trait IoContext<T> {
    /// The error with `path` attached.
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| EvalError::Io {
            path: path.into(),
            source,
        })
    }
}

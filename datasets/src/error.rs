//! Typed errors of the data pipeline.

use std::path::PathBuf;

/// Everything that can go wrong while reading, processing or writing data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// A JSONL line is not a valid record.
    #[error("{path}:{line}: not a valid record: {message}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What the parser said.
        message: String,
    },
    /// A Parquet file could not be read or written, or lacks a required column.
    #[error("{path}: parquet: {message}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A file's extension names no format this crate reads or writes.
    #[error("{path}: unknown data format (expected .jsonl, .jsonl.gz, .jsonl.zst or .parquet)")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A signature, plan, index or shard file is corrupt or from another configuration.
    #[error("{path}: corrupt or incompatible file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] internlm2::TokenizerError),
    /// A model used for scoring failed.
    #[error("model: {reason}")]
    Model {
        /// What failed.
        reason: String,
    },
}

impl DataError {
    /// A [`DataError::Config`].
    pub fn config(reason: impl Into<String>) -> Self {
        Self::Config {
            reason: reason.into(),
        }
    }

    /// A [`DataError::Model`].
    pub fn model(reason: impl Into<String>) -> Self {
        Self::Model {
            reason: reason.into(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Attach a path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| DataError::Io {
            path: path.into(),
            source,
        })
    }
}

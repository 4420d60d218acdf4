//! Why the engine refuses a request or cannot start.

use internlm2::GenerateError;

/// An engine error. Every variant is the caller's to handle; the engine never panics on a
/// request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// Prompt plus `max_new_tokens` does not fit the context limit (HTTP 400).
    #[error(
        "prompt of {prompt_len} tokens plus max_new_tokens {max_new_tokens} exceeds the context limit of {limit} tokens"
    )]
    ContextOverflow {
        /// Prompt tokens.
        prompt_len: usize,
        /// Requested new tokens.
        max_new_tokens: usize,
        /// The limit in force.
        limit: usize,
    },
    /// Prompt plus `max_new_tokens` needs more KV blocks than the whole pool holds, so the
    /// request could never run even alone (HTTP 400).
    #[error(
        "prompt of {prompt_len} tokens plus max_new_tokens {max_new_tokens} needs {needed_tokens} KV slots, more than the {pool_tokens} the KV pool holds (raise kv_memory_bytes)"
    )]
    ExceedsKvPool {
        /// Prompt tokens.
        prompt_len: usize,
        /// Requested new tokens.
        max_new_tokens: usize,
        /// Slots the request needs.
        needed_tokens: usize,
        /// Slots in the pool (`blocks * block_size`).
        pool_tokens: usize,
    },
    /// A request parameter is out of range (HTTP 400 naming it).
    #[error("invalid request parameter `{param}`: {reason}")]
    InvalidRequest {
        /// The parameter.
        param: &'static str,
        /// Why.
        reason: String,
    },
    /// Too many requests are waiting (HTTP 429).
    #[error("the engine's queue is full ({waiting} requests waiting)")]
    QueueFull {
        /// Requests waiting when this one arrived.
        waiting: usize,
    },
    /// The engine was shut down, or its worker stopped (HTTP 503).
    #[error("the engine is shut down")]
    ShutDown,
    /// The engine configuration cannot work with this model.
    #[error("invalid engine configuration `{param}`: {reason}")]
    InvalidConfig {
        /// The setting.
        param: &'static str,
        /// Why.
        reason: String,
    },
}

impl From<GenerateError> for EngineError {
    /// Maps the core crate's request validation onto engine errors.
    fn from(error: GenerateError) -> Self {
        match error {
            GenerateError::ContextOverflow {
                prompt_len,
                max_new_tokens,
                limit,
            } => Self::ContextOverflow {
                prompt_len,
                max_new_tokens,
                limit,
            },
            GenerateError::InvalidSampling { name, reason } => Self::InvalidRequest {
                param: name,
                reason,
            },
            GenerateError::EmptyPrompt { .. } | GenerateError::EmptyBatch => Self::InvalidRequest {
                param: "prompt",
                reason: "the prompt is empty: it needs at least one token".into(),
            },
            GenerateError::TokenOutOfVocab { id, vocab_size } => Self::InvalidRequest {
                param: "prompt",
                reason: format!("token {id} is outside the vocabulary of {vocab_size}"),
            },
            other => Self::InvalidRequest {
                param: "prompt",
                reason: other.to_string(),
            },
        }
    }
}

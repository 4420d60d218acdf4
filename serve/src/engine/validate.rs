//! Request validation at submit time, in the caller's thread: every refusal is an immediate,
//! typed [`EngineError`], and nothing that reaches the worker can fail its checks later.

use internlm2::generate::{OverflowPolicy, validate_request};

use super::error::EngineError;
use super::request::Request;

/// Most alternatives a request may ask logprobs for.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// What a request is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The model's context limit (prompt plus new tokens), used when a request sets none.
    pub context_limit: usize,
    /// The model's vocabulary.
    pub vocab_size: usize,
    /// Slots in the KV pool (`blocks * block_size`): no single sequence may need more.
    pub pool_tokens: usize,
    /// Requests allowed to wait.
    pub max_waiting: usize,
}

impl Limits {
    /// The largest prompt plus `max_new_tokens` the pool can hold for one sequence (its last
    /// token is never fed back, so it needs one slot less).
    pub fn max_sequence_tokens(&self) -> usize {
        self.pool_tokens.saturating_add(1)
    }

    /// Checks `request`; returns the `max_new_tokens` the context policy allows.
    pub fn validate(&self, request: &Request, has_tokenizer: bool) -> Result<usize, EngineError> {
        let config = &request.config;
        let mut limit = config.context_limit.unwrap_or(self.context_limit);
        if config.overflow == OverflowPolicy::ClampNewTokens {
            // Clamp to what the pool can hold as well.
            limit = limit.min(self.max_sequence_tokens());
        }
        let max_new_tokens = validate_request(
            std::slice::from_ref(&request.prompt),
            config,
            self.vocab_size,
            has_tokenizer,
            limit,
        )?;
        if let Some(top) = request.logprobs
            && top > MAX_TOP_LOGPROBS
        {
            return Err(EngineError::InvalidRequest {
                param: "top_logprobs",
                reason: format!("at most {MAX_TOP_LOGPROBS} alternatives, got {top}"),
            });
        }
        if request.parse_tools.is_some() && !has_tokenizer {
            return Err(EngineError::InvalidRequest {
                param: "parse_tools",
                reason: "parsing tool calls needs a tokenizer".into(),
            });
        }
        // The last generated token is never fed back, so a sequence holds at most
        // prompt + max_new_tokens - 1 slots; `validate_request` bounded the sum already.
        let needed = request
            .prompt
            .len()
            .saturating_add(max_new_tokens)
            .saturating_sub(1);
        if needed > self.pool_tokens {
            return Err(EngineError::ExceedsKvPool {
                prompt_len: request.prompt.len(),
                max_new_tokens,
                needed_tokens: needed,
                pool_tokens: self.pool_tokens,
            });
        }
        Ok(max_new_tokens)
    }
}

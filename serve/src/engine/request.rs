//! What a client submits: the prompt, the generation parameters, logprobs, a token
//! constraint, and what comes back: events, finish reasons, usage.

use internlm2::chat::{ToolCall, ToolSet};
use internlm2::generate::GenerationConfig;

/// One generation request.
///
/// ```
/// use internlm2::generate::GenerationConfig;
/// use internlm2::sampling::SamplingConfig;
/// use internlm2_serve::engine::Request;
/// let config = GenerationConfig::default()
///     .with_max_new_tokens(16)
///     .with_sampling(SamplingConfig::greedy());
/// let request = Request::new(vec![1, 333, 444], config).with_logprobs(5);
/// assert_eq!(request.logprobs, Some(5));
/// ```
pub struct Request {
    /// Prompt token ids (BOS included if the model wants one).
    pub prompt: Vec<u32>,
    /// `max_new_tokens`, sampling (all of `SamplingConfig`, seed included), stop ids, stop
    /// strings, context limit and overflow policy.
    pub config: GenerationConfig,
    /// `Some(n)`: report the chosen token's log-probability and the `n` most likely
    /// alternatives with each token.
    pub logprobs: Option<usize>,
    /// Restricts the tokens the request may sample (JSON schema, a forced tool call).
    pub constraint: Option<Box<dyn TokenConstraint>>,
    /// Run the streaming InternLM2 tool-call parser over the output, accepting calls to these
    /// tools: a complete call comes as [`Event::ToolCall`] instead of text in the deltas (a
    /// call that cannot be used, e.g. to an undeclared tool, stays text).
    pub parse_tools: Option<ToolSet>,
}

impl Request {
    /// A request with no logprobs, no constraint and no tool parsing.
    pub fn new(prompt: Vec<u32>, config: GenerationConfig) -> Self {
        Self {
            prompt,
            config,
            logprobs: None,
            constraint: None,
            parse_tools: None,
        }
    }

    /// Reports logprobs with the `top` most likely alternatives per token.
    pub fn with_logprobs(mut self, top: usize) -> Self {
        self.logprobs = Some(top);
        self
    }

    /// Restricts sampling with `constraint`.
    pub fn with_constraint(mut self, constraint: Box<dyn TokenConstraint>) -> Self {
        self.constraint = Some(constraint);
        self
    }

    /// Parses InternLM2 tool calls to `tools` out of the output.
    pub fn with_tool_parsing(mut self, tools: ToolSet) -> Self {
        self.parse_tools = Some(tools);
        self
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("prompt_len", &self.prompt.len())
            .field("config", &self.config)
            .field("logprobs", &self.logprobs)
            .field("constraint", &self.constraint.is_some())
            .field("parse_tools", &self.parse_tools.is_some())
            .finish()
    }
}

/// A constraint that cannot go on (the model's choice broke it, or it failed internally).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token constraint failed: {0}")]
pub struct ConstraintError(pub String);

/// Restricts which tokens a request may sample next (JSON schema, a forced tool-call prefix).
///
/// The engine calls [`mask`](Self::mask) on the host copy of the request's logits before every
/// sampling step, then [`commit`](Self::commit) with the chosen token.
pub trait TokenConstraint: Send {
    /// Sets every disallowed entry of `logits` (f32, one per vocabulary entry) to
    /// `f32::NEG_INFINITY`. An `Err` ends the request with [`FinishReason::Error`].
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError>;
    /// Advances the constraint by the token that was chosen.
    fn commit(&mut self, token: u32) -> Result<(), ConstraintError>;
    /// The constraint accepts nothing more: the engine ends the request
    /// ([`StopKind::Constraint`]).
    fn is_complete(&self) -> bool;
}

/// Which stop condition ended a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopKind {
    /// It produced this stop token (kept in the tokens, not in the text).
    Token(u32),
    /// Its text reached this stop string (cut from the text).
    String(String),
    /// Its [`TokenConstraint`] was complete.
    Constraint,
}

/// Why a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token, a stop string or a complete constraint.
    Stop(StopKind),
    /// It reached `max_new_tokens` (or the context limit under
    /// [`OverflowPolicy::ClampNewTokens`](internlm2::generate::OverflowPolicy)).
    Length,
    /// A stop condition ended an output that holds tool calls (`parse_tools` only).
    ToolCalls,
    /// The client cancelled it (or dropped its handle), or the engine shut down first.
    Cancelled,
    /// The engine failed while serving it (the message says why).
    Error(String),
}

impl FinishReason {
    /// OpenAI's `finish_reason` string: `stop`, `length`, `tool_calls`; `cancelled` and
    /// `error` have no OpenAI counterpart.
    pub fn openai_name(&self) -> &'static str {
        match self {
            Self::Stop(_) => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::Cancelled => "cancelled",
            Self::Error(_) => "error",
        }
    }
}

/// The log-probability of a chosen token and of the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The chosen token.
    pub token: u32,
    /// Its natural-log probability under the model's distribution (before sampling filters
    /// and constraints).
    pub logprob: f32,
    /// The most likely tokens with their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens (a final stop token included).
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache instead of being computed.
    pub cached_tokens: usize,
}

/// What a [`RequestHandle`](super::RequestHandle) yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One sampled token. `delta` is newly final text: never half a UTF-8 character, stop
    /// strings held back and cut as [`internlm2::generate`] does; with `parse_tools`, text
    /// inside a tool call is not in `delta` (it comes as [`Event::ToolCall`]).
    Token {
        /// The id.
        token: u32,
        /// Text that became final with it (may be empty).
        delta: String,
        /// With [`Request::with_logprobs`].
        logprob: Option<TokenLogprob>,
    },
    /// A complete InternLM2 tool call parsed from the output (`parse_tools` only).
    ToolCall(ToolCall),
    /// The last event.
    Finished {
        /// Why it ended.
        reason: FinishReason,
        /// Token counts.
        usage: Usage,
    },
}

//! One choice in flight: engine events -> content deltas, tool calls and the finish. Tool
//! calls are parsed by the engine (`Request::with_tool_parsing`, the one
//! [`ToolCallParser`](internlm2::chat::ToolCallParser) of the SDK): text inside a call never
//! reaches the deltas, each complete call arrives as its own event.
//!
//! Streaming responses send each [`Piece`] as it comes; non-streaming responses fold the same
//! pieces into one message ([`ChoiceResult`]), so both paths give the same text and calls.

use internlm2::chat::ToolCall;

use crate::engine::{Event, FinishReason, RequestHandle, TokenLogprob, Usage};

/// A step of a choice's output.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Content text that became final, with the logprobs of the tokens produced since the
    /// previous piece (with logprobs on).
    Content {
        /// The text.
        text: String,
        /// Logprobs of the tokens behind it.
        logprobs: Vec<TokenLogprob>,
    },
    /// A complete call.
    Call {
        /// Position among this choice's calls.
        index: usize,
        /// `call_...`.
        id: String,
        /// The call.
        call: ToolCall,
    },
    /// The last piece.
    Finish {
        /// OpenAI's finish reason (`stop`, `length`, `tool_calls`), or `error`.
        reason: String,
        /// What went wrong when `reason` is `error`.
        error: Option<String>,
        /// Token counts.
        usage: Usage,
        /// Logprobs not yet sent with a content piece.
        logprobs: Vec<TokenLogprob>,
    },
}

/// Turns one engine request's events into [`Piece`]s.
#[derive(Debug)]
pub struct ChoiceStream {
    /// Position among the choices of the response.
    pub index: usize,
    handle: RequestHandle,
    stop_ids: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    calls: usize,
    id_prefix: String,
    done: bool,
}

impl ChoiceStream {
    /// Follows `handle`; `stop_ids` are left out of the logprobs, calls get ids
    /// `{id_prefix}_{k}`.
    pub fn new(index: usize, handle: RequestHandle, stop_ids: Vec<u32>, id_prefix: String) -> Self {
        Self {
            index,
            handle,
            stop_ids,
            logprobs: Vec::new(),
            calls: 0,
            id_prefix,
            done: false,
        }
    }

    /// The next pieces (never empty), or `None` after the finish.
    pub async fn next(&mut self) -> Option<Vec<Piece>> {
        while !self.done {
            let pieces = match self.handle.next().await {
                Some(event) => self.apply(event),
                None => {
                    self.done = true;
                    vec![self.finish_piece(
                        "error".into(),
                        Some("the engine ended the request without finishing it".into()),
                        Usage::default(),
                    )]
                }
            };
            if !pieces.is_empty() {
                return Some(pieces);
            }
        }
        None
    }

    fn finish_piece(&mut self, reason: String, error: Option<String>, usage: Usage) -> Piece {
        Piece::Finish {
            reason,
            error,
            usage,
            logprobs: std::mem::take(&mut self.logprobs),
        }
    }

    fn push_call(&mut self, call: ToolCall, out: &mut Vec<Piece>) {
        out.push(Piece::Call {
            index: self.calls,
            id: format!("{}_{}", self.id_prefix, self.calls),
            call,
        });
        self.calls += 1;
    }

    fn apply(&mut self, event: Event) -> Vec<Piece> {
        let mut out = Vec::new();
        match event {
            Event::Token {
                token,
                delta,
                logprob,
            } => {
                if let Some(logprob) = logprob
                    && !self.stop_ids.contains(&token)
                {
                    self.logprobs.push(logprob);
                }
                if !delta.is_empty() {
                    out.push(Piece::Content {
                        text: delta,
                        logprobs: std::mem::take(&mut self.logprobs),
                    });
                }
            }
            Event::ToolCall(call) => self.push_call(call, &mut out),
            Event::Finished { reason, usage } => {
                let (name, error) = match &reason {
                    FinishReason::Stop(_) if self.calls > 0 => ("tool_calls".to_string(), None),
                    FinishReason::Error(message) => ("error".to_string(), Some(message.clone())),
                    other => (other.openai_name().to_string(), None),
                };
                let piece = self.finish_piece(name, error, usage);
                out.push(piece);
                self.done = true;
            }
        }
        out
    }
}

/// A finished choice: what a non-streaming response holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChoiceResult {
    /// All content text.
    pub content: String,
    /// All calls with their ids.
    pub calls: Vec<(String, ToolCall)>,
    /// All logprobs.
    pub logprobs: Vec<TokenLogprob>,
    /// Finish reason.
    pub reason: String,
    /// The error behind an `error` finish.
    pub error: Option<String>,
    /// Token counts.
    pub usage: Usage,
}

impl ChoiceResult {
    /// Folds one piece in.
    pub fn add(&mut self, piece: Piece) {
        match piece {
            Piece::Content { text, logprobs } => {
                self.content.push_str(&text);
                self.logprobs.extend(logprobs);
            }
            Piece::Call { id, call, .. } => self.calls.push((id, call)),
            Piece::Finish {
                reason,
                error,
                usage,
                logprobs,
            } => {
                self.reason = reason;
                self.error = error;
                self.usage = usage;
                self.logprobs.extend(logprobs);
            }
        }
    }

    /// Runs a choice to its end.
    pub async fn collect(mut stream: ChoiceStream) -> Self {
        let mut result = Self::default();
        while let Some(pieces) = stream.next().await {
            for piece in pieces {
                result.add(piece);
            }
        }
        result
    }
}

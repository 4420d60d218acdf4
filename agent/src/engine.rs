//! [`EngineGenerator`]: a [`TextGenerator`] over the serving engine (`internlm2-serve`,
//! feature `engine`), so agent turns share the engine's continuous batching and prefix cache
//! (the conversation so far is a cached prefix of each next turn's prompt).

use std::sync::Arc;

use internlm2::generate::GenerationConfig;
use internlm2::{Tokenizer, TokenizerError};
use internlm2_serve::engine::{EngineError, EngineHandle, Event, FinishReason, Request, StopKind};

use crate::generator::{Completion, StopReason, TextGenerator};

/// Why the engine could not generate a turn.
#[derive(Debug, thiserror::Error)]
pub enum EngineGeneratorError {
    /// The engine has no tokenizer, or one without the chat tokens.
    #[error("the engine needs a tokenizer with InternLM2's chat tokens")]
    NoChatTokens,
    /// Tokenising the prompt failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The engine refused the request (queue full, context overflow, shut down).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The engine failed while serving it.
    #[error("the engine failed: {reason}")]
    Failed {
        /// The engine's message.
        reason: String,
    },
    /// The engine closed the request without finishing it.
    #[error("the engine closed the request without a final event")]
    Closed,
}

/// Generates assistant turns on a running engine: the prompt is tokenised with the engine's
/// tokenizer (BOS first) and submitted with the stop tokens `</s>`, `<|im_end|>` and
/// `<|action_end|>`; `config`'s sampling and budget are kept.
pub struct EngineGenerator {
    engine: EngineHandle,
    tokenizer: Arc<Tokenizer>,
    config: GenerationConfig,
    action_end: u32,
}

impl EngineGenerator {
    /// Wraps an engine handle.
    pub fn new(
        engine: EngineHandle,
        config: GenerationConfig,
    ) -> Result<Self, EngineGeneratorError> {
        let tokenizer = engine
            .tokenizer()
            .ok_or(EngineGeneratorError::NoChatTokens)?;
        let chat = tokenizer
            .chat_tokens()
            .ok_or(EngineGeneratorError::NoChatTokens)?;
        let mut stops = vec![chat.im_end, chat.action_end];
        stops.extend(tokenizer.eos_id());
        Ok(Self {
            engine,
            tokenizer,
            config: config.with_stop_token_ids(stops),
            action_end: chat.action_end,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }
}

impl TextGenerator for EngineGenerator {
    type Error = EngineGeneratorError;

    fn complete(
        &mut self,
        prompt: &str,
        on_delta: &mut dyn FnMut(&str),
    ) -> Result<Completion, EngineGeneratorError> {
        let ids = self.tokenizer.encode(prompt, true)?;
        let mut handle = self.engine.submit(Request::new(ids, self.config.clone()))?;
        let mut text = String::new();
        let mut tokens = 0;
        while let Some(event) = handle.next_blocking() {
            match event {
                Event::Token { delta, .. } => {
                    tokens += 1;
                    if !delta.is_empty() {
                        on_delta(&delta);
                        text.push_str(&delta);
                    }
                }
                Event::ToolCall(_) => {}
                Event::Finished { reason, .. } => {
                    let stop = match reason {
                        FinishReason::Stop(StopKind::Token(id)) if id == self.action_end => {
                            StopReason::ActionEnd
                        }
                        FinishReason::Stop(_) | FinishReason::ToolCalls => StopReason::EndOfTurn,
                        FinishReason::Length => StopReason::Length,
                        FinishReason::Cancelled => StopReason::Cancelled,
                        FinishReason::Error(message) => {
                            return Err(EngineGeneratorError::Failed { reason: message });
                        }
                    };
                    return Ok(Completion { text, stop, tokens });
                }
            }
        }
        Err(EngineGeneratorError::Closed)
    }
}

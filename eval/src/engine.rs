//! Completions through the serving engine (`internlm2-serve`, feature `engine`): the harness
//! submits a whole batch of prompts at once and the engine schedules them with continuous
//! batching, chunked prefill and prefix caching (the needle grid's prompts share their
//! template's prefix). Greedy results equal [`ModelGenerator`](crate::ModelGenerator)'s: the
//! engine's logits do not depend on the batch.

use std::sync::Arc;

use internlm2::Tokenizer;
use internlm2::generate::{GenerationConfig, OverflowPolicy};
use internlm2::sampling::SamplingConfig;
use internlm2_serve::engine::{EngineHandle, Event, FinishReason, Request};

use crate::error::{EvalError, Result};
use crate::generator::{Completion, Generator, stop_tokens};

/// A [`Generator`] over a running engine.
///
/// ```no_run
/// use std::sync::Arc;
/// use burn::tensor::DType;
/// use internlm2::{InternLM2, Tokenizer, backends::Cpu};
/// use internlm2_eval::{EngineGenerator, Generator};
/// use internlm2_serve::engine::{Engine, EngineConfig};
/// let model = InternLM2::<Cpu>::load("model", DType::F32, &Default::default())?;
/// let tokenizer = Arc::new(Tokenizer::from_dir("model")?);
/// let engine = Engine::start(model, Some(tokenizer.clone()), EngineConfig::new())?;
/// let mut generator = EngineGenerator::new(engine, tokenizer).with_batch_size(32);
/// let prompt = generator.tokenizer().encode("The capital of France is", true)?;
/// println!("{}", generator.complete(vec![prompt], 8)?[0].text);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EngineGenerator {
    engine: EngineHandle,
    tokenizer: Arc<Tokenizer>,
    batch_size: usize,
    context_limit: Option<usize>,
}

impl EngineGenerator {
    /// Batches of 32 prompts, the engine's context limit.
    pub fn new(engine: EngineHandle, tokenizer: Arc<Tokenizer>) -> Self {
        Self {
            engine,
            tokenizer,
            batch_size: 32,
            context_limit: None,
        }
    }

    /// Prompts submitted together.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Overrides the context limit of every request.
    pub fn with_context_limit(mut self, limit: usize) -> Self {
        self.context_limit = Some(limit);
        self
    }

    /// The engine.
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }
}

impl Generator for EngineGenerator {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn context_limit(&self) -> usize {
        self.context_limit
            .unwrap_or_else(|| self.engine.context_limit())
            .min(self.engine.max_sequence_tokens())
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn complete(
        &mut self,
        prompts: Vec<Vec<u32>>,
        max_new_tokens: usize,
    ) -> Result<Vec<Completion>> {
        let mut config = GenerationConfig::default()
            .with_sampling(SamplingConfig::greedy())
            .with_max_new_tokens(max_new_tokens)
            .with_stop_token_ids(stop_tokens(&self.tokenizer))
            .with_overflow(OverflowPolicy::Error);
        if let Some(limit) = self.context_limit {
            config = config.with_context_limit(Some(limit));
        }
        let engine_error = |e: String| EvalError::Runner {
            program: "serving engine".into(),
            reason: e,
        };
        // Submit everything first so the engine batches them, then read each in turn.
        let mut handles = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let handle = self
                .engine
                .submit(Request::new(prompt, config.clone()))
                .map_err(|e| engine_error(e.to_string()))?;
            handles.push(handle);
        }
        let mut out = Vec::with_capacity(handles.len());
        for mut handle in handles {
            let (mut text, mut tokens) = (String::new(), 0);
            loop {
                match handle.next_blocking() {
                    Some(Event::Token { delta, .. }) => {
                        text.push_str(&delta);
                        tokens += 1;
                    }
                    Some(Event::ToolCall(_)) => {}
                    Some(Event::Finished { reason, .. }) => match reason {
                        FinishReason::Error(e) => return Err(engine_error(e)),
                        FinishReason::Cancelled => {
                            return Err(engine_error("the request was cancelled".into()));
                        }
                        _ => break,
                    },
                    None => return Err(engine_error("the engine stopped".into())),
                }
            }
            out.push(Completion { text, tokens });
        }
        Ok(out)
    }
}

//! [`ModelGenerator`]: a [`TextGenerator`] over `internlm2::generate` with a model and its
//! tokenizer, on any backend.

use internlm2::backends::Kernels;
use internlm2::generate::{FinishReason, Generation, GenerationConfig};
use internlm2::{GenerateError, InternLM2, Tokenizer, TokenizerError};

use crate::generator::{Completion, StopReason, TextGenerator};

/// Why the model could not generate a turn.
#[derive(Debug, thiserror::Error)]
pub enum ModelGeneratorError {
    /// The tokenizer has no chat tokens (`<|im_start|>`, `<|action_end|>`, ...).
    #[error("the tokenizer has no InternLM2 chat tokens; the agent needs a chat vocabulary")]
    NoChatTokens,
    /// Tokenising the prompt failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Generation refused the request (e.g. the context is full).
    #[error(transparent)]
    Generate(#[from] GenerateError),
}

/// Generates assistant turns with an [`InternLM2`] model: the prompt text is tokenised (BOS
/// first), generation stops at `<|action_end|>`, `<|im_end|>` or `</s>`.
///
/// ```no_run
/// use burn::tensor::DType;
/// use internlm2::generate::GenerationConfig;
/// use internlm2::{InternLM2, Tokenizer, backends::Cpu};
/// use internlm2_agent::ModelGenerator;
/// let model = InternLM2::<Cpu>::load("internlm2-chat-1_8b", DType::F32, &Default::default())?;
/// let tokenizer = Tokenizer::from_dir("internlm2-chat-1_8b")?;
/// let config = GenerationConfig::default().with_max_new_tokens(512);
/// let generator = ModelGenerator::new(&model, &tokenizer, config)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ModelGenerator<'a, B: Kernels> {
    model: &'a InternLM2<B>,
    tokenizer: &'a Tokenizer,
    config: GenerationConfig,
    action_end: u32,
    last_prompt_ids: Vec<u32>,
    last_generated_ids: Vec<u32>,
}

impl<'a, B: Kernels> ModelGenerator<'a, B> {
    /// Wraps a model and tokenizer; `config`'s sampling, budget and context policy are kept,
    /// its stop tokens are replaced by `</s>`, `<|im_end|>` and `<|action_end|>`.
    pub fn new(
        model: &'a InternLM2<B>,
        tokenizer: &'a Tokenizer,
        config: GenerationConfig,
    ) -> Result<Self, ModelGeneratorError> {
        let chat = tokenizer
            .chat_tokens()
            .ok_or(ModelGeneratorError::NoChatTokens)?;
        let mut stops = vec![chat.im_end, chat.action_end];
        stops.extend(tokenizer.eos_id());
        Ok(Self {
            model,
            tokenizer,
            config: config.with_stop_token_ids(stops),
            action_end: chat.action_end,
            last_prompt_ids: Vec::new(),
            last_generated_ids: Vec::new(),
        })
    }

    /// The generation settings in force.
    pub fn config(&self) -> &GenerationConfig {
        &self.config
    }

    /// The token ids of the last prompt (BOS first), to check what the model saw.
    pub fn last_prompt_ids(&self) -> &[u32] {
        &self.last_prompt_ids
    }

    /// The ids generated in the last turn (the stop token included).
    pub fn last_generated_ids(&self) -> &[u32] {
        &self.last_generated_ids
    }
}

impl<B: Kernels> TextGenerator for ModelGenerator<'_, B> {
    type Error = ModelGeneratorError;

    fn complete(
        &mut self,
        prompt: &str,
        on_delta: &mut dyn FnMut(&str),
    ) -> Result<Completion, ModelGeneratorError> {
        let ids = self.tokenizer.encode(prompt, true)?;
        self.last_prompt_ids = ids.clone();
        let mut generation =
            Generation::new(self.model, Some(self.tokenizer), vec![ids], &self.config)?;
        while !generation.is_done() {
            for event in generation.step()? {
                if !event.delta.is_empty() {
                    on_delta(&event.delta);
                }
            }
        }
        let output = generation
            .finish()
            .into_iter()
            .next()
            .expect("one prompt gives one output");
        let stop = match output.finish_reason {
            FinishReason::StopToken(id) if id == self.action_end => StopReason::ActionEnd,
            FinishReason::StopToken(_) | FinishReason::StopString(_) => StopReason::EndOfTurn,
            FinishReason::Length => StopReason::Length,
            FinishReason::Cancelled => StopReason::Cancelled,
        };
        self.last_generated_ids = output.tokens;
        Ok(Completion {
            text: output.text.unwrap_or_default(),
            stop,
            tokens: self.last_generated_ids.len(),
        })
    }
}

//! What the harnesses need from a model: greedy completions of token prompts.
//!
//! [`Generator`] hides whether the completions come from [`internlm2::generate::generate`]
//! ([`ModelGenerator`], batched with left padding) or from a serving engine, and lets tests
//! script a model's answers exactly.

use internlm2::backends::Kernels;
use internlm2::generate::{GenerationConfig, OverflowPolicy, default_context_limit, generate};
use internlm2::sampling::SamplingConfig;
use internlm2::{InternLM2, Tokenizer};

use crate::error::{EvalError, Result};

/// One completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The generated text (stop tokens excluded).
    pub text: String,
    /// Tokens generated.
    pub tokens: usize,
}

/// A source of greedy completions.
pub trait Generator {
    /// The tokenizer prompts are encoded with.
    fn tokenizer(&self) -> &Tokenizer;

    /// The most tokens a prompt plus its completion may hold.
    fn context_limit(&self) -> usize;

    /// Prompts worth handing over in one call (a batch); the harnesses group this many.
    fn batch_size(&self) -> usize {
        1
    }

    /// Greedy completions of `prompts` (token ids, BOS included), at most `max_new_tokens`
    /// each, stopping at the end-of-sequence and `<|im_end|>` tokens; in prompt order.
    fn complete(
        &mut self,
        prompts: Vec<Vec<u32>>,
        max_new_tokens: usize,
    ) -> Result<Vec<Completion>>;
}

/// The stop tokens of a tokenizer: `</s>` and, for chat vocabularies, `<|im_end|>`.
pub fn stop_tokens(tokenizer: &Tokenizer) -> Vec<u32> {
    let mut stop: Vec<u32> = tokenizer.eos_id().into_iter().collect();
    stop.extend(tokenizer.chat_tokens().map(|c| c.im_end));
    stop
}

/// Completions through [`internlm2::generate::generate`]: greedy, batched with left padding,
/// the prompt prefilled in chunks when `prefill_chunk` is set.
///
/// ```no_run
/// use burn::tensor::DType;
/// use internlm2::{InternLM2, Tokenizer, backends::Cpu};
/// use internlm2_eval::{Generator, ModelGenerator};
/// let model = InternLM2::<Cpu>::load("model", DType::F32, &Default::default())?;
/// let tokenizer = Tokenizer::from_dir("model")?;
/// let mut generator = ModelGenerator::new(&model, &tokenizer).with_batch_size(4);
/// let prompt = tokenizer.encode("The capital of France is", true)?;
/// let out = generator.complete(vec![prompt], 8)?;
/// println!("{}", out[0].text);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ModelGenerator<'a, B: Kernels> {
    model: &'a InternLM2<B>,
    tokenizer: &'a Tokenizer,
    batch_size: usize,
    prefill_chunk: Option<usize>,
    context_limit: usize,
}

impl<'a, B: Kernels> ModelGenerator<'a, B> {
    /// Batches of 1, the model's context limit, the prompt prefilled in one forward pass.
    pub fn new(model: &'a InternLM2<B>, tokenizer: &'a Tokenizer) -> Self {
        Self {
            model,
            tokenizer,
            batch_size: 1,
            prefill_chunk: None,
            context_limit: default_context_limit(model),
        }
    }

    /// Prompts generated together (left-padded to the longest).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Prefill prompts in chunks of this many tokens (bounded memory for long prompts).
    pub fn with_prefill_chunk(mut self, chunk: Option<usize>) -> Self {
        self.prefill_chunk = chunk;
        self
    }

    /// Overrides the context limit (e.g. to read past `max_position_embeddings x factor`).
    pub fn with_context_limit(mut self, limit: usize) -> Self {
        self.context_limit = limit;
        self
    }
}

impl<B: Kernels> Generator for ModelGenerator<'_, B> {
    fn tokenizer(&self) -> &Tokenizer {
        self.tokenizer
    }

    fn context_limit(&self) -> usize {
        self.context_limit
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn complete(
        &mut self,
        prompts: Vec<Vec<u32>>,
        max_new_tokens: usize,
    ) -> Result<Vec<Completion>> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if longest + max_new_tokens > self.context_limit {
            return Err(EvalError::ContextOverflow {
                prompt_len: longest,
                max_new_tokens,
                limit: self.context_limit,
            });
        }
        let config = GenerationConfig::default()
            .with_sampling(SamplingConfig::greedy())
            .with_max_new_tokens(max_new_tokens)
            .with_stop_token_ids(stop_tokens(self.tokenizer))
            .with_context_limit(Some(self.context_limit))
            .with_overflow(OverflowPolicy::Error)
            .with_prefill_chunk(self.prefill_chunk);
        let outputs = generate(self.model, Some(self.tokenizer), prompts, &config, |_| true)?;
        Ok(outputs
            .into_iter()
            .map(|o| Completion {
                text: o.text.unwrap_or_default(),
                tokens: o.tokens.len(),
            })
            .collect())
    }
}

//! Autoregressive generation over a KV cache: batched prompts with left padding and per-row
//! positions, sampling, stop tokens and stop strings, `max_new_tokens`, and streaming of text
//! deltas through an iterator ([`Generation`]) or a callback ([`generate`]).
//!
//! Context policy: a request whose longest prompt plus `max_new_tokens` exceeds the context
//! limit is refused with [`GenerateError::ContextOverflow`] ([`OverflowPolicy::Error`], the
//! default) or has `max_new_tokens` reduced to fit ([`OverflowPolicy::ClampNewTokens`]). The
//! limit defaults to `max_position_embeddings`, times the RoPE scaling factor when the config
//! has one (dynamic NTK is what lets the releases read past their training length).

use burn::config::Config;
use burn::tensor::{DType, Int, Tensor, TensorData};
use internlm2_backends::Kernels;

use crate::cache::KvCache;
use crate::config::RopeScaling;
use crate::error::GenerateError;
use crate::model::{ForwardInput, InternLM2};
use crate::sampling::{Sampler, SamplingConfig};
use crate::tokenizer::Tokenizer;

mod stream;
pub use stream::TextStream;

/// What to do when prompt plus `max_new_tokens` does not fit the context limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum OverflowPolicy {
    /// Refuse with [`GenerateError::ContextOverflow`].
    #[default]
    Error,
    /// Generate only as many tokens as fit (a prompt that alone overflows is still refused).
    ClampNewTokens,
}

impl OverflowPolicy {
    /// The context policy in checked arithmetic, for every value a caller may set: how many
    /// tokens a request whose longest prompt has `prompt_len` tokens generates under `limit`.
    /// `prompt_len + max_new_tokens` past the limit (or past `usize::MAX`) is
    /// [`GenerateError::ContextOverflow`] under [`OverflowPolicy::Error`], and `limit -
    /// prompt_len` under [`OverflowPolicy::ClampNewTokens`] (a prompt that alone reaches the
    /// limit is refused under both). [`Generation::new`] and the serving engine call this.
    ///
    /// ```
    /// use internlm2::generate::OverflowPolicy;
    /// assert_eq!(OverflowPolicy::Error.resolve(10, 6, 16).unwrap(), 6);
    /// assert!(OverflowPolicy::Error.resolve(10, usize::MAX, 16).is_err());
    /// assert_eq!(OverflowPolicy::ClampNewTokens.resolve(10, usize::MAX, 16).unwrap(), 6);
    /// assert!(OverflowPolicy::ClampNewTokens.resolve(16, 1, 16).is_err());
    /// ```
    pub fn resolve(
        self,
        prompt_len: usize,
        max_new_tokens: usize,
        limit: usize,
    ) -> Result<usize, GenerateError> {
        let fits = prompt_len
            .checked_add(max_new_tokens)
            .is_some_and(|total| total <= limit);
        if fits {
            Ok(max_new_tokens)
        } else if self == OverflowPolicy::ClampNewTokens && prompt_len < limit {
            Ok(limit - prompt_len)
        } else {
            Err(GenerateError::ContextOverflow {
                prompt_len,
                max_new_tokens,
                limit,
            })
        }
    }
}

/// Most stop strings a request may set.
pub const MAX_STOP_STRINGS: usize = 64;
/// Longest stop string a request may set, in bytes.
pub const MAX_STOP_STRING_BYTES: usize = 1024;
/// New-token slots of KV cache allocated up front; past them the cache grows by doubling, so
/// a huge `max_new_tokens` never allocates before tokens exist.
const PREALLOCATED_NEW_TOKENS: usize = 4096;

/// Everything a generation request needs besides the prompts.
///
/// ```
/// use internlm2::generate::GenerationConfig;
/// use internlm2::sampling::SamplingConfig;
/// let config = GenerationConfig::default()
///     .with_max_new_tokens(64)
///     .with_sampling(SamplingConfig::greedy())
///     .with_stop_token_ids(vec![2, 92542])
///     .with_stop_strings(vec!["\nUser:".into()]);
/// assert_eq!(config.max_new_tokens, 64);
/// ```
///
/// The builders and the serde form come from burn's `#[derive(Config)]`.
#[derive(Config, Debug, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens generated per row (stop tokens included).
    #[config(default = 256)]
    pub max_new_tokens: usize,
    /// How tokens are chosen.
    #[config(default = "SamplingConfig::new()")]
    pub sampling: SamplingConfig,
    /// A row stops after producing one of these (it is kept in the tokens, not in the text).
    #[config(default = "Vec::new()")]
    pub stop_token_ids: Vec<u32>,
    /// A row stops when its text contains one of these (cut from the text; needs a tokenizer).
    #[config(default = "Vec::new()")]
    pub stop_strings: Vec<String>,
    /// Context limit in tokens; `None` = the model's (see the module docs).
    pub context_limit: Option<usize>,
    /// What happens past the limit.
    #[config(default = "OverflowPolicy::Error")]
    pub overflow: OverflowPolicy,
    /// Prefill the prompt in chunks of this many tokens (bounded memory for long prompts, see
    /// [`crate::prefill`]); `None` = the whole prompt in one forward pass.
    pub prefill_chunk: Option<usize>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl GenerationConfig {
    /// The chat defaults: stop at `</s>` and `<|im_end|>` (SPEC 4).
    pub fn chat(tokenizer: &Tokenizer) -> Self {
        let mut stop = Vec::new();
        stop.extend(tokenizer.eos_id());
        stop.extend(tokenizer.chat_tokens().map(|c| c.im_end));
        Self::new().with_stop_token_ids(stop)
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// It produced this stop token.
    StopToken(u32),
    /// Its text reached this stop string.
    StopString(String),
    /// It reached `max_new_tokens`.
    Length,
    /// The caller stopped the generation first.
    Cancelled,
}

/// The result for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    /// Generated ids (a final stop token included).
    pub tokens: Vec<u32>,
    /// Generated text (stop tokens and stop strings excluded), when a tokenizer was given.
    pub text: Option<String>,
    /// Why it stopped.
    pub finish_reason: FinishReason,
}

/// One token produced for one row.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    /// Which prompt.
    pub row: usize,
    /// The id.
    pub token: u32,
    /// Text that became final with this token (may be empty; never half a character).
    pub delta: String,
}

struct Row<'t> {
    /// Prompt plus generated ids (for the repetition penalty).
    history: Vec<u32>,
    generated: Vec<u32>,
    /// Streamed text, stop strings held back and cut.
    text: TextStream<'t>,
    finished: Option<FinishReason>,
    next_position: usize,
    sampler: Sampler,
}

/// A generation in progress; each [`Iterator::next`] produces one token per unfinished row.
///
/// ```no_run
/// use burn::tensor::DType;
/// use internlm2::{InternLM2, Tokenizer, chat, generate::{Generation, GenerationConfig}};
/// use internlm2_backends::Cpu;
/// let model = InternLM2::<Cpu>::load("model", DType::F32, &Default::default())?;
/// let tokenizer = Tokenizer::from_dir("model")?;
/// let prompt = chat::encode(&tokenizer, &[chat::Message::user("Hi")], true)?;
/// let config = GenerationConfig::chat(&tokenizer).with_max_new_tokens(32);
/// let mut generation = Generation::new(&model, Some(&tokenizer), vec![prompt], &config)?;
/// for step in &mut generation {
///     for event in step? {
///         print!("{}", event.delta);
///     }
/// }
/// let outputs = generation.finish();
/// # Ok::<(), internlm2::Error>(())
/// ```
pub struct Generation<'a, B: Kernels> {
    model: &'a InternLM2<B>,
    config: GenerationConfig,
    cache: KvCache<B>,
    rows: Vec<Row<'a>>,
    /// Logits `[batch, vocab]` for the next choice.
    logits: Option<Tensor<B, 2>>,
    max_new_tokens: usize,
    steps: usize,
    pad: u32,
}

/// Every check of a generation request, in the order [`Generation::new`] makes them (the
/// serving engine calls it too, so both refuse the same requests): sampling parameters, a
/// non-empty batch of non-empty prompts inside the vocabulary, a prefill chunk of at least one
/// token, stop strings (a tokenizer, at most [`MAX_STOP_STRINGS`] non-empty ones of at most
/// [`MAX_STOP_STRING_BYTES`] bytes), and the context policy under `limit`
/// ([`OverflowPolicy::resolve`]). Returns the number of new tokens the request may generate.
pub fn validate_request(
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    vocab_size: usize,
    has_tokenizer: bool,
    limit: usize,
) -> Result<usize, GenerateError> {
    config.sampling.validate()?;
    if prompts.is_empty() {
        return Err(GenerateError::EmptyBatch);
    }
    for (index, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt { index });
        }
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(GenerateError::TokenOutOfVocab { id, vocab_size });
        }
    }
    if config.prefill_chunk == Some(0) {
        return Err(GenerateError::InvalidSampling {
            name: "prefill_chunk",
            reason: "a prefill chunk holds at least one token".into(),
        });
    }
    if !config.stop_strings.is_empty() && !has_tokenizer {
        return Err(GenerateError::InvalidSampling {
            name: "stop_strings",
            reason: "stop strings need a tokenizer".into(),
        });
    }
    if config.stop_strings.len() > MAX_STOP_STRINGS
        || config
            .stop_strings
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_STRING_BYTES)
    {
        return Err(GenerateError::InvalidSampling {
            name: "stop_strings",
            reason: format!(
                "at most {MAX_STOP_STRINGS} non-empty stop strings of at most \
                 {MAX_STOP_STRING_BYTES} bytes"
            ),
        });
    }
    let longest = prompts.iter().map(Vec::len).max().expect("non-empty batch");
    // The padded batch must have a size.
    if prompts.len().checked_mul(longest).is_none() {
        return Err(GenerateError::InvalidSampling {
            name: "batch",
            reason: format!(
                "{} prompts of up to {longest} tokens overflow",
                prompts.len()
            ),
        });
    }
    config
        .overflow
        .resolve(longest, config.max_new_tokens, limit)
}

impl<'a, B: Kernels> Generation<'a, B> {
    /// Validates the request and runs the prefill over the left-padded prompts.
    pub fn new(
        model: &'a InternLM2<B>,
        tokenizer: Option<&'a Tokenizer>,
        prompts: Vec<Vec<u32>>,
        config: &GenerationConfig,
    ) -> Result<Self, GenerateError> {
        let limit = config
            .context_limit
            .unwrap_or_else(|| default_context_limit(model));
        let max_new_tokens = validate_request(
            &prompts,
            config,
            model.config().vocab_size,
            tokenizer.is_some(),
            limit,
        )?;
        let longest = prompts.iter().map(Vec::len).max().expect("non-empty batch");

        let batch = prompts.len();
        let pad = model.config().pad_token_id;
        let padded = batch * longest; // checked by validate_request
        let mut ids = Vec::with_capacity(padded);
        let mut positions = Vec::with_capacity(padded);
        let mut padding = Vec::with_capacity(padded);
        for prompt in &prompts {
            let pads = longest - prompt.len();
            ids.extend(std::iter::repeat_n(pad as i64, pads));
            ids.extend(prompt.iter().map(|&id| id as i64));
            positions.extend(std::iter::repeat_n(0, pads));
            positions.extend(0..prompt.len());
            padding.extend(std::iter::repeat_n(true, pads));
            padding.extend(std::iter::repeat_n(false, prompt.len()));
        }
        let rows = prompts
            .into_iter()
            .enumerate()
            .map(|(row, prompt)| {
                let sampling = config.sampling.clone();
                let seed = sampling.seed.wrapping_add(row as u64);
                Ok(Row {
                    next_position: prompt.len(),
                    history: prompt,
                    generated: Vec::new(),
                    text: TextStream::new(tokenizer),
                    finished: None,
                    sampler: Sampler::new(sampling.with_seed(seed))?,
                })
            })
            .collect::<Result<Vec<_>, GenerateError>>()?;

        let device = model.device();
        let mut cache = KvCache::new(
            model.config(),
            batch,
            longest + max_new_tokens.min(PREALLOCATED_NEW_TOKENS),
        );
        let input = ForwardInput::new(Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids, [batch, longest]),
            &device,
        ))
        .with_positions(positions)
        .with_padding(padding)
        .with_last_logits_only(true);
        // On the CPU backend the prefill runs on a thread of the kernels' pool, as the steps
        // do: the work between kernels (reshapes, allocations) then runs there too, and each
        // kernel starts at once instead of handing its tasks over and waiting.
        let prefill_chunk = config.prefill_chunk;
        let logits = (max_new_tokens > 0).then(|| {
            crate::backends::on_cpu_threads(|| match prefill_chunk {
                Some(chunk) => crate::prefill::prefill(model, input, &mut cache, chunk),
                None => {
                    let logits = model.forward_cache(input, &mut cache);
                    logits.reshape([batch, model.config().vocab_size])
                }
            })
        });
        let mut generation = Self {
            model,
            config: config.clone(),
            cache,
            rows,
            logits,
            max_new_tokens,
            steps: 0,
            pad,
        };
        if max_new_tokens == 0 {
            for row in &mut generation.rows {
                row.finished = Some(FinishReason::Length);
            }
        }
        Ok(generation)
    }

    /// Whether every row has finished.
    pub fn is_done(&self) -> bool {
        self.rows.iter().all(|r| r.finished.is_some())
    }

    /// Chooses one token per unfinished row, then runs the model on them (unless all are done).
    ///
    /// On the CPU backend the step runs on a thread of the kernels' pool
    /// ([`on_cpu_threads`](crate::backends::on_cpu_threads)), so that its kernels do not each
    /// hand their work to the pool and wait.
    pub fn step(&mut self) -> Result<Vec<TokenEvent>, GenerateError> {
        crate::backends::on_cpu_threads(|| self.step_here())
    }

    fn step_here(&mut self) -> Result<Vec<TokenEvent>, GenerateError> {
        let Some(logits) = self.logits.take() else {
            return Ok(Vec::new());
        };
        let tokens = self.choose(logits);
        let mut events = Vec::new();
        self.steps += 1;
        for (index, row) in self.rows.iter_mut().enumerate() {
            if row.finished.is_some() {
                continue;
            }
            let token = tokens[index];
            row.generated.push(token);
            row.history.push(token);
            row.next_position += 1;
            let delta = if self.config.stop_token_ids.contains(&token) {
                row.finished = Some(FinishReason::StopToken(token));
                row.text.finish(&self.config.stop_strings)
            } else {
                let (mut delta, stop) = row.text.push(token, &self.config.stop_strings)?;
                if let Some(stop) = stop {
                    row.finished = Some(FinishReason::StopString(stop));
                }
                if row.finished.is_none() && self.steps >= self.max_new_tokens {
                    row.finished = Some(FinishReason::Length);
                    delta.push_str(&row.text.finish(&self.config.stop_strings));
                }
                delta
            };
            events.push(TokenEvent {
                row: index,
                token,
                delta,
            });
        }
        if !self.is_done() {
            self.logits = Some(self.advance(&tokens));
        }
        Ok(events)
    }

    /// Picks the next token of every row (finished rows get a placeholder).
    fn choose(&mut self, logits: Tensor<B, 2>) -> Vec<u32> {
        let [batch, vocab] = logits.dims();
        let all_greedy = self.rows.iter().all(|r| {
            r.sampler.config().is_greedy() && r.sampler.config().repetition_penalty == 1.0
        });
        if all_greedy {
            // Only the argmax ids leave the device.
            let ids = logits.argmax(1).into_data().convert::<i64>();
            return ids
                .into_vec::<i64>()
                .expect("converted above")
                .into_iter()
                .map(|id| id as u32)
                .collect();
        }
        let mut host = logits
            .into_data()
            .convert_dtype(DType::F32)
            .into_vec::<f32>()
            .expect("converted above");
        (0..batch)
            .map(|r| {
                let row = &mut self.rows[r];
                if row.finished.is_some() {
                    return self.pad;
                }
                row.sampler
                    .sample(&mut host[r * vocab..(r + 1) * vocab], &row.history)
            })
            .collect()
    }

    /// Runs the model on the chosen tokens; returns the next logits `[batch, vocab]`.
    fn advance(&mut self, tokens: &[u32]) -> Tensor<B, 2> {
        let batch = self.rows.len();
        let device = self.model.device();
        let ids: Vec<i64> = self
            .rows
            .iter()
            .zip(tokens)
            .map(|(row, &t)| if row.finished.is_some() { self.pad } else { t } as i64)
            .collect();
        let positions = self.rows.iter().map(|r| r.next_position - 1).collect();
        let input = ForwardInput::new(Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids, [batch, 1]),
            &device,
        ))
        .with_positions(positions)
        .with_last_logits_only(true);
        let logits = self.model.forward_cache(input, &mut self.cache);
        logits.reshape([batch, self.model.config().vocab_size])
    }

    /// The outputs so far (call after the iterator ends for the final ones).
    pub fn finish(self) -> Vec<GenerationOutput> {
        self.rows
            .into_iter()
            .map(|row| GenerationOutput {
                text: row.text.decodes().then(|| row.text.text().to_string()),
                tokens: row.generated,
                finish_reason: row.finished.unwrap_or(FinishReason::Cancelled),
            })
            .collect()
    }
}

impl<B: Kernels> Iterator for Generation<'_, B> {
    type Item = Result<Vec<TokenEvent>, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.is_done() {
            None
        } else {
            Some(self.step())
        }
    }
}

/// The context limit of a model: `max_position_embeddings`, times the RoPE scaling factor.
pub fn default_context_limit<B: Kernels>(model: &InternLM2<B>) -> usize {
    let config = model.config();
    match config.rope_scaling {
        Some(RopeScaling::Dynamic { factor } | RopeScaling::Linear { factor }) => {
            (config.max_position_embeddings as f64 * factor) as usize
        }
        None => config.max_position_embeddings,
    }
}

/// Generates for every prompt, calling `on_token` for each new token (return `false` to stop
/// early), and returns the outputs in prompt order.
pub fn generate<B: Kernels>(
    model: &InternLM2<B>,
    tokenizer: Option<&Tokenizer>,
    prompts: Vec<Vec<u32>>,
    config: &GenerationConfig,
    mut on_token: impl FnMut(&TokenEvent) -> bool,
) -> Result<Vec<GenerationOutput>, GenerateError> {
    let mut generation = Generation::new(model, tokenizer, prompts, config)?;
    'outer: while !generation.is_done() {
        for event in generation.step()? {
            if !on_token(&event) {
                break 'outer;
            }
        }
    }
    Ok(generation.finish())
}

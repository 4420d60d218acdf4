//! The InternLM2 decoder (SPEC 1), mirroring HuggingFace `modeling_internlm2.py`:
//!
//! ```text
//! h = tok_embeddings(ids)
//! for each layer:  h = h + wo(attn(attention_norm(h)))
//!                  h = h + w2(silu(w1(x)) * w3(x))   where x = ffn_norm(h)
//! logits = output(norm(h))                           (returned in f32)
//! ```
//!
//! Field names follow the checkpoint (`tok_embeddings`, `layers.{i}.attention.wqkv`, ...), so
//! loading only strips the `model.` prefix. The hot paths go through [`Kernels`].

pub mod attention;
pub mod backbone;
pub mod decoder;
pub mod embedding;
pub mod feed_forward;
pub mod input;
pub mod linear;
pub mod lora;
pub mod norm;
pub mod rope;
pub mod rows;

use burn::module::Module;
use burn::tensor::{DType, Int, Tensor};
use internlm2_backends::Kernels;

use crate::cache::{KvCache, PagedKvCache};
use crate::config::InternLM2Config;
pub use backbone::InternLM2Model;
pub use input::ForwardInput;
use internlm2_backends::kernels::PagedLayout;
use linear::Linear;

/// Standard deviation of the random initialisation (`initializer_range` of the releases).
pub const INIT_STD: f64 = 0.02;

/// InternLM2 for causal language modelling (HuggingFace `InternLM2ForCausalLM`): the decoder
/// body `model` and the LM head `output`.
///
/// ```
/// use burn::tensor::{Int, Tensor};
/// use internlm2::{InternLM2Config, InternLM2};
/// use internlm2_backends::Cpu;
///
/// let device = Default::default();
/// let config = InternLM2Config::new(128, 32, 64, 2, 4, 2);
/// let model: InternLM2<Cpu> = InternLM2::init(&config, &device);
/// let ids = Tensor::<Cpu, 2, Int>::from_ints([[1, 5, 9]], &device);
/// let logits = model.forward(ids);
/// assert_eq!(logits.dims(), [1, 3, 128]);
/// ```
#[derive(Module, Debug)]
pub struct InternLM2<B: Kernels> {
    /// `model`: embeddings, decoder layers, final norm.
    pub model: InternLM2Model<B>,
    /// `output` (the LM head); `None` when the embeddings are tied.
    pub output: Option<Linear<B>>,
}

impl<B: Kernels> InternLM2<B> {
    /// A model with random weights (normal, std [`INIT_STD`]) in f32.
    pub fn init(config: &InternLM2Config, device: &B::Device) -> Self {
        Self::init_with_dtype(config, DType::F32, device)
    }

    /// A model with random weights in the given dtype.
    pub fn init_with_dtype(config: &InternLM2Config, dtype: DType, device: &B::Device) -> Self {
        Self {
            model: InternLM2Model::init_with_dtype(config, dtype, device),
            output: (!config.tie_word_embeddings).then(|| {
                Linear::random(
                    config.hidden_size,
                    config.vocab_size,
                    false,
                    INIT_STD,
                    dtype,
                    device,
                )
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &InternLM2Config {
        &self.model.config
    }

    /// The configuration, to change what is not a weight (e.g. the RoPE base of a phase).
    pub fn config_mut(&mut self) -> &mut InternLM2Config {
        &mut self.model.config
    }

    /// The dtype of the activations (that of the embedding table).
    pub fn dtype(&self) -> DType {
        self.model.dtype()
    }

    /// The device of the weights.
    pub fn device(&self) -> B::Device {
        self.model.device()
    }

    /// Full causal forward pass over `ids` with positions `0..seq`.
    ///
    /// # Shapes
    /// `ids`: `[batch, seq]` -> logits `[batch, seq, vocab]` in f32
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.logits(self.model.forward(ForwardInput::new(ids), None))
    }

    /// Forward pass without a cache, with the positions, padding and segments of `input`.
    ///
    /// # Shapes
    /// -> logits `[batch, seq, vocab]` (or `[batch, 1, vocab]`) in f32
    pub fn forward_input(&self, input: ForwardInput<B>) -> Tensor<B, 3> {
        self.logits(self.model.forward(input, None))
    }

    /// Forward pass that reads and extends `cache`: the tokens of `input` come after the
    /// `cache.len()` cached ones.
    ///
    /// # Panics
    /// If the cache's batch differs from the input's, or if the input has segments.
    pub fn forward_cache(&self, input: ForwardInput<B>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        self.logits(self.model.forward(input, Some(cache)))
    }

    /// Forward pass over packed sequences and a paged KV cache (the serving engine's step):
    /// see [`InternLM2Model::forward_paged`]. With `input.last_logits_only`, the logits of
    /// the last token of every sequence.
    ///
    /// # Shapes
    /// `input`: `[1, tokens]` -> logits `[1, tokens, vocab]` (or `[1, sequences, vocab]`) in f32
    ///
    /// # Panics
    /// As [`InternLM2Model::forward_paged`].
    pub fn forward_paged(
        &self,
        input: ForwardInput<B>,
        cache: &mut PagedKvCache<B>,
        layout: &PagedLayout,
    ) -> Tensor<B, 3> {
        self.logits(self.model.forward_paged(input, cache, layout))
    }

    /// The LM head in f32.
    ///
    /// # Shapes
    /// `hidden`: `[batch, seq, hidden]` -> `[batch, seq, vocab]`
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let logits = match &self.output {
            Some(output) => output.forward(hidden),
            None => match &self.model.tok_embeddings.packed {
                Some(table) => B::dense_packed(hidden, table, None),
                None => B::dense(hidden, self.model.tok_embeddings.weight.val(), None),
            },
        };
        logits.cast(DType::F32)
    }
}

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
pub mod decoder;
pub mod embedding;
pub mod feed_forward;
pub mod linear;
pub mod norm;
pub mod rope;

use burn::module::Module;
use burn::tensor::{DType, Int, Tensor, backend::Backend};
use internlm2_backends::{AttentionMask, Kernels};

use crate::cache::KvCache;
use crate::config::InternLM2Config;
use attention::Attention;
use decoder::DecoderLayer;
use embedding::Embedding;
use feed_forward::FeedForward;
use linear::Linear;
use norm::RmsNorm;
use rope::Rope;

/// Standard deviation of the random initialisation (`initializer_range` of the releases).
pub const INIT_STD: f64 = 0.02;

/// InternLM2 for causal language modelling.
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
    /// `model.tok_embeddings`.
    pub tok_embeddings: Embedding<B>,
    /// `model.layers`.
    pub layers: Vec<DecoderLayer<B>>,
    /// `model.norm`.
    pub norm: RmsNorm<B>,
    /// `output` (the LM head); `None` when the embeddings are tied.
    pub output: Option<Linear<B>>,
    /// The configuration the model was built from (not a parameter).
    #[module(skip)]
    pub config: InternLM2Config,
}

/// One forward call: token ids plus, optionally, per-token positions and padding.
///
/// ```
/// use burn::tensor::{Int, Tensor};
/// use internlm2::ForwardInput;
/// use internlm2_backends::Cpu;
/// let device = Default::default();
/// // Two rows, the second left-padded by one token that restarts positions.
/// let ids = Tensor::<Cpu, 2, Int>::from_ints([[7, 8, 9], [2, 8, 9]], &device);
/// let input = ForwardInput::new(ids)
///     .with_positions(vec![0, 1, 2, 0, 0, 1])
///     .with_padding(vec![false, false, false, true, false, false]);
/// assert_eq!(input.dims(), [2, 3]);
/// ```
#[derive(Debug, Clone)]
pub struct ForwardInput<B: Backend> {
    /// `[batch, seq]` token ids.
    pub ids: Tensor<B, 2, Int>,
    /// `batch * seq` positions, row-major; default: consecutive from the cache length.
    pub positions: Option<Vec<usize>>,
    /// `batch * seq` flags, row-major, `true` for padding tokens nobody may attend to.
    pub padding: Option<Vec<bool>>,
    /// `batch * seq` segment ids, row-major: tokens attend only within their segment (packed
    /// documents). Not supported together with a KV cache.
    pub segments: Option<Vec<u32>>,
    /// Compute logits for the last position of each row only (`[batch, 1, vocab]`).
    pub last_logits_only: bool,
}

impl<B: Backend> ForwardInput<B> {
    /// Ids only: consecutive positions, no padding, logits for every position.
    pub fn new(ids: Tensor<B, 2, Int>) -> Self {
        Self {
            ids,
            positions: None,
            padding: None,
            segments: None,
            last_logits_only: false,
        }
    }

    /// Sets per-token positions (`batch * seq`, row-major).
    pub fn with_positions(mut self, positions: Vec<usize>) -> Self {
        self.positions = Some(positions);
        self
    }

    /// Sets per-token padding flags (`batch * seq`, row-major, `true` = padding).
    pub fn with_padding(mut self, padding: Vec<bool>) -> Self {
        self.padding = Some(padding);
        self
    }

    /// Sets per-token segment ids (`batch * seq`, row-major): attention stays inside a segment.
    pub fn with_segments(mut self, segments: Vec<u32>) -> Self {
        self.segments = Some(segments);
        self
    }

    /// Only the last position's logits are computed.
    pub fn with_last_logits_only(mut self, last_only: bool) -> Self {
        self.last_logits_only = last_only;
        self
    }

    /// `[batch, seq]`.
    pub fn dims(&self) -> [usize; 2] {
        self.ids.dims()
    }
}

impl<B: Kernels> InternLM2<B> {
    /// A model with random weights (normal, std [`INIT_STD`]) in f32.
    pub fn init(config: &InternLM2Config, device: &B::Device) -> Self {
        Self::init_with_dtype(config, DType::F32, device)
    }

    /// A model with random weights in the given dtype.
    pub fn init_with_dtype(config: &InternLM2Config, dtype: DType, device: &B::Device) -> Self {
        let (h, v) = (config.hidden_size, config.vocab_size);
        let layers = (0..config.num_hidden_layers)
            .map(|_| DecoderLayer {
                attention_norm: RmsNorm::ones(h, config.rms_norm_eps, dtype, device),
                attention: Attention::random(
                    h,
                    config.num_attention_heads,
                    config.num_key_value_heads,
                    config.head_dim(),
                    config.bias,
                    INIT_STD,
                    dtype,
                    device,
                ),
                ffn_norm: RmsNorm::ones(h, config.rms_norm_eps, dtype, device),
                feed_forward: FeedForward::random(
                    h,
                    config.intermediate_size,
                    INIT_STD,
                    dtype,
                    device,
                ),
            })
            .collect();
        Self {
            tok_embeddings: Embedding::random(v, h, INIT_STD, dtype, device),
            layers,
            norm: RmsNorm::ones(h, config.rms_norm_eps, dtype, device),
            output: (!config.tie_word_embeddings)
                .then(|| Linear::random(h, v, false, INIT_STD, dtype, device)),
            config: config.clone(),
        }
    }

    /// The dtype of the activations (that of the embedding table).
    pub fn dtype(&self) -> DType {
        self.tok_embeddings.weight.val().dtype()
    }

    /// The device of the weights.
    pub fn device(&self) -> B::Device {
        self.tok_embeddings.weight.val().device()
    }

    /// Full causal forward pass over `ids` with positions `0..seq`.
    ///
    /// # Shapes
    /// `ids`: `[batch, seq]` -> logits `[batch, seq, vocab]` in f32
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.run(ForwardInput::new(ids), None)
    }

    /// Forward pass without a cache, with the positions and padding of `input`.
    ///
    /// # Shapes
    /// -> logits `[batch, seq, vocab]` (or `[batch, 1, vocab]`) in f32
    pub fn forward_input(&self, input: ForwardInput<B>) -> Tensor<B, 3> {
        self.run(input, None)
    }

    /// Forward pass that reads and extends `cache`: the tokens of `input` come after the
    /// `cache.len()` cached ones.
    ///
    /// # Panics
    /// If the cache's batch differs from the input's, or if the input has segments.
    pub fn forward_cache(&self, input: ForwardInput<B>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        self.run(input, Some(cache))
    }

    fn run(&self, input: ForwardInput<B>, mut cache: Option<&mut KvCache<B>>) -> Tensor<B, 3> {
        let [b, s] = input.dims();
        let device = input.ids.device();
        let past = cache.as_ref().map_or(0, |c| c.len());
        if let Some(cache) = &cache {
            assert_eq!(cache.batch(), b, "cache batch != input batch");
        }
        let positions = input
            .positions
            .unwrap_or_else(|| (0..b).flat_map(|_| past..past + s).collect());
        let padding = input.padding.as_deref();
        let key_padding = match &cache {
            Some(cache) => cache.key_padding(padding, s, &device),
            None => padding.filter(|p| p.iter().any(|&x| x)).map(|p| {
                Tensor::from_data(burn::tensor::TensorData::new(p.to_vec(), [b, s]), &device)
            }),
        };
        let segments = input.segments.map(|segments| {
            assert!(
                cache.is_none(),
                "segments are not supported with a KV cache"
            );
            let ids: Vec<i64> = segments.into_iter().map(i64::from).collect();
            Tensor::from_data(burn::tensor::TensorData::new(ids, [b, s]), &device)
        });
        let mask = AttentionMask {
            past_len: past,
            key_padding,
            segments,
        };
        let rope =
            Rope::from_config(&self.config).tables::<B>(&positions, b, s, self.dtype(), &device);

        let mut h = self.tok_embeddings.forward(input.ids);
        match cache.as_deref_mut() {
            Some(cache) => {
                for (layer, layer_cache) in self.layers.iter().zip(cache.layers_mut()) {
                    h = layer.forward(h, &rope, &mask, Some(layer_cache));
                }
                cache.advance(s, padding);
            }
            None => {
                for layer in &self.layers {
                    h = layer.forward(h, &rope, &mask, None);
                }
            }
        }
        if input.last_logits_only {
            let hidden = h.dims()[2];
            h = h.slice([0..b, s - 1..s, 0..hidden]);
        }
        self.logits(self.norm.forward(h))
    }

    /// The LM head in f32.
    fn logits(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let logits = match &self.output {
            Some(output) => output.forward(h),
            None => B::dense(h, self.tok_embeddings.weight.val(), None),
        };
        logits.cast(DType::F32)
    }
}

//! The InternLM2 decoder body (HuggingFace `InternLM2Model`, the `model.` prefix of a
//! checkpoint): token embeddings, the decoder layers and the final RMSNorm. The causal LM
//! ([`InternLM2`](super::InternLM2)) adds the `output` head; the reward model and the critic
//! add a scalar head.

use burn::module::Module;
use burn::tensor::{DType, Tensor, TensorData};
use internlm2_backends::{AttentionMask, Kernels};

use super::INIT_STD;
use super::attention::Attention;
use super::decoder::DecoderLayer;
use super::embedding::Embedding;
use super::feed_forward::FeedForward;
use super::input::ForwardInput;
use super::norm::RmsNorm;
use super::rope::Rope;
use crate::cache::KvCache;
use crate::config::InternLM2Config;

/// `model`: embeddings, layers, final norm.
#[derive(Module, Debug)]
pub struct InternLM2Model<B: Kernels> {
    /// `model.tok_embeddings`.
    pub tok_embeddings: Embedding<B>,
    /// `model.layers`.
    pub layers: Vec<DecoderLayer<B>>,
    /// `model.norm`.
    pub norm: RmsNorm<B>,
    /// The configuration the model was built from (not a parameter).
    #[module(skip)]
    pub config: InternLM2Config,
}

impl<B: Kernels> InternLM2Model<B> {
    /// Random weights in the given dtype.
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

    /// The final hidden states (after the last RMSNorm), reading and extending `cache` when
    /// given; only the last position when `input.last_logits_only`.
    ///
    /// # Shapes
    /// -> `[batch, seq, hidden]` (or `[batch, 1, hidden]`)
    ///
    /// # Panics
    /// If the cache's batch differs from the input's, or if the input has segments and a cache.
    pub fn forward(
        &self,
        input: ForwardInput<B>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
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
            None => padding
                .filter(|p| p.iter().any(|&x| x))
                .map(|p| Tensor::from_data(TensorData::new(p.to_vec(), [b, s]), &device)),
        };
        let segments = input.segments.map(|segments| {
            assert!(
                cache.is_none(),
                "segments are not supported with a KV cache"
            );
            let ids: Vec<i64> = segments.into_iter().map(i64::from).collect();
            Tensor::from_data(TensorData::new(ids, [b, s]), &device)
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
        self.norm.forward(h)
    }
}

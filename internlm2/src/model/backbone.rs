//! The InternLM2 decoder body (HuggingFace `InternLM2Model`, the `model.` prefix of a
//! checkpoint): token embeddings, the decoder layers and the final RMSNorm. The causal LM
//! ([`InternLM2`](super::InternLM2)) adds the `output` head; the reward model and the critic
//! add a scalar head.

use burn::module::Module;
use burn::tensor::{DType, Tensor, TensorData};
use internlm2_backends::kernels::PagedLayout;
use internlm2_backends::{AttentionMask, Kernels};

use super::INIT_STD;
use super::decoder::DecoderLayer;
use super::embedding::Embedding;
use super::input::ForwardInput;
use super::norm::RmsNorm;
use super::rope::Rope;
use crate::cache::{KvCache, LayerKv, PagedKvCache};
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
            .map(|_| DecoderLayer::init(config, dtype, device))
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
            .clone()
            .unwrap_or_else(|| (0..b).flat_map(|_| past..past + s).collect());
        let padding = input.padding.clone();
        let padding = padding.as_deref();
        let key_padding = match &cache {
            Some(cache) => cache.key_padding(padding, s, &device),
            None => padding
                .filter(|p| p.iter().any(|&x| x))
                .map(|p| Tensor::from_data(TensorData::new(p.to_vec(), [b, s]), &device)),
        };
        let segments = input.segments.clone().map(|segments| {
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
        match cache.as_deref_mut() {
            Some(cache) => {
                let layers = cache.layers_mut().iter_mut().map(LayerKv::Contiguous);
                let h = self.run(input, &positions, &mask, layers);
                cache.advance(s, padding);
                h
            }
            None => self.run(
                input,
                &positions,
                &mask,
                std::iter::repeat_with(|| LayerKv::None),
            ),
        }
    }

    /// The final hidden states of packed sequences over a paged KV cache: `input` is one row
    /// of the `layout.tokens()` tokens of every sequence back to back; each sequence attends
    /// to its own cached tokens and its own tokens of this call, and its new keys and values
    /// go into the pool where the layout says. Positions default to each sequence's slots
    /// (`past..past + len`); pass per-token RoPE lengths
    /// ([`ForwardInput::with_rope_lengths`]) for dynamic NTK, and row groups
    /// ([`ForwardInput::with_row_groups`]) for batch-independent numerics.
    /// `last_logits_only` keeps the last token of every sequence.
    ///
    /// # Shapes
    /// `input`: `[1, tokens]` -> `[1, tokens, hidden]` (or `[1, sequences, hidden]`)
    ///
    /// # Panics
    /// If the input is not one row, has padding or segments, or the layout does not fit the
    /// cache and the input (see [`PagedLayout::check`]).
    pub fn forward_paged(
        &self,
        input: ForwardInput<B>,
        cache: &mut PagedKvCache<B>,
        layout: &PagedLayout,
    ) -> Tensor<B, 3> {
        let [b, s] = input.dims();
        assert_eq!(b, 1, "a paged batch is packed into one row");
        assert!(
            input.padding.is_none() && input.segments.is_none(),
            "a paged batch has no padding or segments"
        );
        if let Err(e) = layout.check(cache.blocks(), s) {
            panic!("paged layout: {e}");
        }
        assert_eq!(
            layout.block_size,
            cache.block_size(),
            "layout block size != cache block size"
        );
        let positions = input.positions.clone().unwrap_or_else(|| {
            layout
                .sequences
                .iter()
                .flat_map(|seq| seq.past..seq.past + seq.len)
                .collect()
        });
        let last_only = input.last_logits_only;
        let mask = AttentionMask::causal(0); // the layout places every sequence
        let layers = cache
            .layers_mut()
            .iter_mut()
            .map(|layer| LayerKv::Paged(layer, layout));
        let h = self.run(
            input.with_last_logits_only(false),
            &positions,
            &mask,
            layers,
        );
        if !last_only {
            return h;
        }
        let device = h.device();
        let mut end = 0;
        let last: Vec<i64> = layout
            .sequences
            .iter()
            .map(|seq| {
                end += seq.len;
                end as i64 - 1
            })
            .collect();
        let n = last.len();
        h.select(1, Tensor::from_data(TensorData::new(last, [n]), &device))
    }

    /// Embeddings, every layer with its cache, the last-position slice and the final norm.
    fn run<'c>(
        &self,
        input: ForwardInput<B>,
        positions: &[usize],
        mask: &AttentionMask<B>,
        caches: impl Iterator<Item = LayerKv<'c, B>>,
    ) -> Tensor<B, 3>
    where
        B: 'c,
    {
        let [b, s] = input.dims();
        let device = input.ids.device();
        let rope = Rope::from_config(&self.config).tables::<B>(
            positions,
            input.rope_lengths.as_deref(),
            b,
            s,
            self.dtype(),
            &device,
        );
        let mut h = self.tok_embeddings.forward(input.ids);
        for (layer, cache) in self.layers.iter().zip(caches) {
            h = layer.forward(h, &rope, mask, cache, &input.row_groups);
        }
        if input.last_logits_only {
            let hidden = h.dims()[2];
            h = h.slice([0..b, s - 1..s, 0..hidden]);
        }
        self.norm.forward(h)
    }
}

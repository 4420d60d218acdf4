//! One pre-norm decoder layer:
//! `h = h + wo(attn(attention_norm(h)))`, then `h = h + feed_forward(ffn_norm(h))`.

use burn::module::Module;
use burn::tensor::{DType, Tensor};
use internlm2_backends::{AttentionMask, Kernels};

use super::attention::Attention;
use super::feed_forward::FeedForward;
use super::norm::RmsNorm;
use super::rope::RopeTables;
use super::rows::RowGroups;
use crate::cache::LayerKv;
use crate::config::InternLM2Config;

/// `model.layers.{i}`.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Kernels> {
    /// `attention_norm`.
    pub attention_norm: RmsNorm<B>,
    /// `attention`.
    pub attention: Attention<B>,
    /// `ffn_norm`.
    pub ffn_norm: RmsNorm<B>,
    /// `feed_forward`.
    pub feed_forward: FeedForward<B>,
}

impl<B: Kernels> DecoderLayer<B> {
    /// Random weights in `dtype` for the shape `config` gives (norms at one).
    pub fn init(config: &InternLM2Config, dtype: DType, device: &B::Device) -> Self {
        let norm = || RmsNorm::ones(config.hidden_size, config.rms_norm_eps, dtype, device);
        Self {
            attention_norm: norm(),
            attention: Attention::init(config, dtype, device),
            ffn_norm: norm(),
            feed_forward: FeedForward::init(config, dtype, device),
        }
    }

    /// # Shapes
    /// `h`: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(
        &self,
        h: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: &AttentionMask<B>,
        cache: LayerKv<'_, B>,
        rows: &RowGroups,
    ) -> Tensor<B, 3> {
        let x = self.attention_norm.forward(h.clone());
        let attn = self.attention.forward(x, rope, mask, cache, rows);
        let (h, x) = self.ffn_norm.forward_add(attn, h);
        h + self.feed_forward.forward_rows(x, rows)
    }
}

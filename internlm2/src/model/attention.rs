//! Grouped-query self-attention with the fused, interleaved `wqkv` projection (SPEC 1).
//!
//! `wqkv` has `(heads + 2 * kv_heads) * head_dim` output rows grouped per KV head: viewed as
//! `[kv_heads, G + 2, head_dim]`, index `[:, :G]` is Q, `[:, G]` is K and `[:, G + 1]` is V,
//! with `G = heads / kv_heads`. Query head `i` therefore reads KV head `i / G`.

use burn::module::Module;
use burn::tensor::{DType, Tensor};
use internlm2_backends::{AttentionMask, Kernels};

use super::linear::Linear;
use super::rope::RopeTables;
use super::rows::RowGroups;
use crate::cache::LayerKv;
use crate::config::InternLM2Config;

/// `attention` of one decoder layer: `wqkv`, RoPE, causal GQA, `wo`.
#[derive(Module, Debug)]
pub struct Attention<B: Kernels> {
    /// Fused Q/K/V projection, `[(heads + 2 * kv_heads) * head_dim, hidden]`.
    pub wqkv: Linear<B>,
    /// Output projection, `[hidden, heads * head_dim]`.
    pub wo: Linear<B>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
}

impl<B: Kernels> Attention<B> {
    /// Random weights (normal, std [`INIT_STD`](super::INIT_STD)) in `dtype` for the shape
    /// `config` gives: `hidden_size` in, `num_attention_heads` query and `num_key_value_heads`
    /// KV heads of `head_dim()`, biases when `config.bias`.
    pub fn init(config: &InternLM2Config, dtype: DType, device: &B::Device) -> Self {
        let (hidden, bias, std) = (config.hidden_size, config.bias, super::INIT_STD);
        let q_width = config.num_attention_heads * config.head_dim();
        Self::from_linears(
            config,
            Linear::random(hidden, config.wqkv_rows(), bias, std, dtype, device),
            Linear::random(q_width, hidden, bias, std, dtype, device),
        )
    }

    /// The layer over given projections, its head counts from `config`.
    pub fn from_linears(config: &InternLM2Config, wqkv: Linear<B>, wo: Linear<B>) -> Self {
        Self {
            wqkv,
            wo,
            num_heads: config.num_attention_heads,
            num_kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim(),
        }
    }

    /// Attention over the call's tokens and whatever `cache` holds; the projections run in
    /// the dense calls `rows` gives.
    ///
    /// # Shapes
    /// `x`: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeTables<B>,
        mask: &AttentionMask<B>,
        cache: LayerKv<'_, B>,
        rows: &RowGroups,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);

        // Split the interleaved projection ([b, s, kv_heads, G + 2, d]) into
        // q [b, heads, s, d] and k, v [b, kv_heads, s, d].
        let qkv = rows.apply(x, |x| self.wqkv.forward(x));
        let (q, k, v) = B::split_qkv(qkv, nh, nkv);

        let q = B::rope(q, rope.cos.clone(), rope.sin.clone());
        let k = B::rope(k, rope.cos.clone(), rope.sin.clone());

        // With a cache, attend over everything cached so far plus these tokens.
        let out = cache.attend(q, k, v, mask); // [b, heads, s, d]
        let out = out.swap_dims(1, 2).reshape([b, s, nh * d]);
        rows.apply(out, |x| self.wo.forward(x))
    }
}

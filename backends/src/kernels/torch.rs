//! libtorch's fused ops for the `tch` backend: causal GQA attention through
//! `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels where
//! libtorch has them), with the mask of [`AttentionMask`] as an additive bias and GQA handled
//! by SDPA itself (`enable_gqa`, no repeated K/V). The other hot paths use the composite
//! reference, which libtorch runs as native ops.

use burn::backend::LibTorch;
use burn::backend::libtorch::TchTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use super::{AttentionMask, composite};

fn tch_of(x: Tensor<LibTorch, 4>) -> TchTensor {
    x.into_primitive().tensor()
}

/// See [`super::Kernels::causal_attention`].
pub fn causal_attention(
    q: Tensor<LibTorch, 4>,
    k: Tensor<LibTorch, 4>,
    v: Tensor<LibTorch, 4>,
    mask: &AttentionMask<LibTorch>,
) -> Tensor<LibTorch, 4> {
    let [_, heads, s, d] = q.dims();
    let [_, kv_heads, t, _] = k.dims();
    if kv_heads == 0 || heads % kv_heads != 0 {
        return composite::causal_attention(q, k, v, mask);
    }
    let dtype = q.dtype();
    // [b or 1, s, t] -> [b or 1, 1, s, t], in the inputs' dtype as SDPA requires.
    let bias = composite::attention_bias(mask, s, t, &q.device())
        .unsqueeze_dim::<4>(1)
        .cast(dtype);
    let bias = tch_of(bias);
    let (q, k, v) = (tch_of(q), tch_of(k), tch_of(v));
    let out = tch::Tensor::scaled_dot_product_attention(
        &q.tensor,
        &k.tensor,
        &v.tensor,
        Some(&bias.tensor),
        0.0,
        false,
        Some(1.0 / (d as f64).sqrt()),
        true,
    );
    Tensor::from_primitive(TensorPrimitive::Float(TchTensor::new(out)))
}

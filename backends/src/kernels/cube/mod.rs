//! Hand-written CubeCL kernels for burn's GPU backends (CUDA and wgpu).
//!
//! The kernels are generic over the CubeCL runtime, so the same code serves
//! `CubeBackend<CudaRuntime, ..>` and `CubeBackend<WgpuRuntime, ..>`:
//!
//! - [`rms_norm`](mod@rms_norm) and [`add_rms_norm`](mod@add_rms_norm): one cube per row,
//!   f32 sum of squares reduced in shared memory, output in the input dtype.
//! - [`rope`](mod@rope): rotate_half RoPE, one unit per output element, reading the strided
//!   `[b, h, s, d]` view the QKV split produces and writing a contiguous tensor.
//! - [`swiglu`](mod@swiglu): `silu(gate) * up` in one elementwise pass.
//! - [`attention`](mod@attention): tiled causal GQA attention with online softmax (one cube
//!   per block of query rows of one head, key tiles in shared memory up to the causal limit),
//!   never building the `[s, t]` scores nor repeating K/V; key padding and segments as `[b, t]`
//!   int masks.
//!
//! [`CubeOps`] is the backend-level entry point: implemented here for `CubeBackend`, which
//! launches the kernels, and in [`fusion`] for burn's `Fusion<B>`, which registers each kernel
//! as a custom operation of the fusion stream (burn's `Wgpu` and `Cuda` are fusion backends).
//! The tensor-level functions below check what a kernel covers (f32/f16/bf16, matching dtypes,
//! even head width for RoPE, head width up to 256 and whole GQA groups for attention) and take
//! the [`composite`](super::composite) path otherwise, rounding exactly where the composite
//! rounds to the activation dtype (attention: see [its module](mod@attention)).

pub mod add_rms_norm;
pub mod attention;
pub mod fusion;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;

use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, Tensor, TensorPrimitive, backend::Backend};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::{AttentionMask, composite};

/// Threads per cube of the row kernels (a power of two every GPU API accepts).
pub(crate) const ROW_BLOCK: u32 = 256;

/// The fused kernels at the level of backend primitives.
///
/// Callers guarantee what the tensor-level functions of this module check: float dtypes the
/// kernels cover, the same dtype for every input, matching shapes.
pub trait CubeOps: Backend {
    /// RMSNorm of `x` `[b, s, h]` with `weight` `[h]`; see [`super::Kernels::rms_norm`].
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self>;

    /// `(x + residual, rms_norm(x + residual))`; see [`super::Kernels::add_rms_norm`].
    fn fused_add_rms_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// rotate_half RoPE of `x` `[b, h, s, d]` (any strides) with `cos`/`sin` `[b, s, d]`.
    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `silu(gate) * up`, same shapes.
    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Causal GQA attention of `q` `[b, heads, s, d]` over `k`/`v` `[b, kv_heads, t, d]` (any
    /// strides, `heads % kv_heads == 0`, `1 <= d <= 256`); see
    /// [`super::Kernels::causal_attention`]. The mask is `past_len` and optional `[b, t]` int
    /// tensors: `padding` (non-zero = ignore the key) and `segments` (which need
    /// `past_len + s <= t`). Returns a contiguous `[b, heads, s, d]` tensor.
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        padding: Option<IntTensor<Self>>,
        segments: Option<IntTensor<Self>>,
        past_len: usize,
    ) -> FloatTensor<Self>;
}

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> CubeOps
    for CubeBackend<R, F, I, BT>
{
    fn fused_rms_norm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        rms_norm::launch(x, weight, eps)
    }

    fn fused_add_rms_norm(
        x: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        add_rms_norm::launch(x, residual, weight, eps)
    }

    fn fused_rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        rope::launch(x, cos, sin)
    }

    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        swiglu::launch(gate, up)
    }

    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        padding: Option<IntTensor<Self>>,
        segments: Option<IntTensor<Self>>,
        past_len: usize,
    ) -> FloatTensor<Self> {
        attention::launch(q, k, v, padding, segments, past_len)
    }
}

/// Whether the kernels cover tensors of these dtypes: all equal and f32, f16 or bf16.
fn covered(dtypes: &[DType]) -> bool {
    let first = dtypes[0];
    matches!(first, DType::F32 | DType::F16 | DType::BF16) && dtypes.iter().all(|&d| d == first)
}

fn primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn wrap<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// See [`super::Kernels::rms_norm`].
pub fn rms_norm<B: CubeOps>(x: Tensor<B, 3>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    if !covered(&[x.dtype(), weight.dtype()]) || x.dims()[2] != weight.dims()[0] {
        return composite::rms_norm(x, weight, eps);
    }
    wrap(B::fused_rms_norm(
        primitive(x),
        primitive(weight),
        eps as f32,
    ))
}

/// See [`super::Kernels::add_rms_norm`].
pub fn add_rms_norm<B: CubeOps>(
    x: Tensor<B, 3>,
    residual: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    if !covered(&[x.dtype(), residual.dtype(), weight.dtype()])
        || x.dims() != residual.dims()
        || x.dims()[2] != weight.dims()[0]
    {
        return composite::add_rms_norm(x, residual, weight, eps);
    }
    let (sum, normed) = B::fused_add_rms_norm(
        primitive(x),
        primitive(residual),
        primitive(weight),
        eps as f32,
    );
    (wrap(sum), wrap(normed))
}

/// See [`super::Kernels::rope`]. Odd head widths take the composite path.
pub fn rope<B: CubeOps>(x: Tensor<B, 4>, cos: Tensor<B, 3>, sin: Tensor<B, 3>) -> Tensor<B, 4> {
    let [b, _, s, d] = x.dims();
    if !covered(&[x.dtype(), cos.dtype(), sin.dtype()])
        || d % 2 != 0
        || cos.dims() != [b, s, d]
        || sin.dims() != [b, s, d]
    {
        return composite::rope(x, cos, sin);
    }
    wrap(B::fused_rope(primitive(x), primitive(cos), primitive(sin)))
}

/// See [`super::Kernels::swiglu`].
pub fn swiglu<B: CubeOps>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    if !covered(&[gate.dtype(), up.dtype()]) || gate.dims() != up.dims() {
        return composite::swiglu(gate, up);
    }
    wrap(B::fused_swiglu(primitive(gate), primitive(up)))
}

/// See [`super::Kernels::causal_attention`]. Takes the composite path for mixed or non-float
/// dtypes, inconsistent shapes, `heads % kv_heads != 0`, head widths over
/// [`attention::MAX_HEAD_DIM`], no keys or no queries, and segments that do not cover the
/// query slots (`past_len + s > t`, which the composite rejects).
pub fn causal_attention<B: CubeOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttentionMask<B>,
) -> Tensor<B, 4> {
    let [b, heads, s, d] = q.dims();
    let [kb, kv_heads, t, kd] = k.dims();
    let fits = covered(&[q.dtype(), k.dtype(), v.dtype()])
        && kb == b
        && kd == d
        && v.dims() == k.dims()
        && kv_heads > 0
        && heads % kv_heads == 0
        && (1..=attention::MAX_HEAD_DIM).contains(&d)
        && t > 0
        && b * heads * s > 0
        && u32::try_from(mask.past_len).is_ok()
        && mask.key_padding.as_ref().is_none_or(|p| p.dims() == [b, t])
        && (mask.segments.as_ref()).is_none_or(|g| g.dims() == [b, t] && mask.past_len + s <= t);
    if !fits {
        return composite::causal_attention(q, k, v, mask);
    }
    let padding = mask.key_padding.clone().map(|p| p.int().into_primitive());
    let segments = mask.segments.clone().map(|g| g.into_primitive());
    wrap(B::fused_attention(
        primitive(q),
        primitive(k),
        primitive(v),
        padding,
        segments,
        mask.past_len,
    ))
}

//! The kernel layer: one trait for the model's hot paths.
//!
//! The model calls these functions instead of composing the math inline, so that a backend
//! can replace any of them with a fused implementation. Every default method forwards to
//! [`composite`], the reference written with plain burn tensor ops; a backend that overrides
//! a method is tested against it.

pub mod composite;
mod composite_packed;
#[cfg(feature = "flex")]
pub mod cpu;
#[cfg(feature = "flex")]
mod cpu_gemm;
#[cfg(feature = "flex")]
pub mod cpu_paged;
#[cfg(feature = "flex")]
pub mod cpu_quant;
#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod cpu_quant_avx2;
#[cfg(all(feature = "flex", target_arch = "x86_64"))]
mod cpu_quant_avx512;
#[cfg(feature = "flex")]
mod cpu_quant_int8;
#[cfg(feature = "flex")]
mod cpu_simd;
#[cfg(feature = "flex")]
mod cpu_skinny;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub mod cube;
mod paged;
#[cfg(feature = "tch")]
pub mod torch;

use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::{Bool, Int, Tensor, backend::Backend};

use crate::packed::PackedWeight;

pub use paged::{PagedAttentionOutput, PagedLayout, PagedSequence};

/// Which implementation of the kernel layer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelMode {
    /// Each backend's fused kernels where it has them (the default).
    Fused,
    /// The [`composite`] reference everywhere: for testing and for comparing against the
    /// fused kernels.
    Composite,
}

/// 0: not decided yet (read `INTERNLM2_KERNELS`), 1: fused, 2: composite.
static MODE: AtomicU8 = AtomicU8::new(0);

/// Switches the whole process's kernel layer, e.g. to time the composite path:
///
/// ```
/// use internlm2_backends::kernels::{KernelMode, kernel_mode, set_kernel_mode};
/// set_kernel_mode(KernelMode::Composite);
/// assert_eq!(kernel_mode(), KernelMode::Composite);
/// set_kernel_mode(KernelMode::Fused);
/// ```
///
/// Without a call, the environment variable `INTERNLM2_KERNELS=composite` selects the composite
/// path (any other value, or none, the fused kernels).
pub fn set_kernel_mode(mode: KernelMode) {
    let code = match mode {
        KernelMode::Fused => 1,
        KernelMode::Composite => 2,
    };
    MODE.store(code, Ordering::Relaxed);
}

/// The kernel layer's current mode (see [`set_kernel_mode`]).
pub fn kernel_mode() -> KernelMode {
    match MODE.load(Ordering::Relaxed) {
        1 => KernelMode::Fused,
        2 => KernelMode::Composite,
        _ => {
            let composite = std::env::var("INTERNLM2_KERNELS")
                .is_ok_and(|v| v.eq_ignore_ascii_case("composite"));
            let mode = if composite {
                KernelMode::Composite
            } else {
                KernelMode::Fused
            };
            set_kernel_mode(mode);
            mode
        }
    }
}

/// 0: not decided yet (read `INTERNLM2_F32_ACTIVATIONS`), 1: on, 2: off.
static INT8_ACTIVATIONS: AtomicU8 = AtomicU8::new(0);

/// Lets the CPU decoding kernels over quantized weights (`Q8_0`, `Q4_0`, `Q4_K`, `Q6_K`)
/// quantize their f32 activations to 8 bits (one scale per 32 values for `Q8_0` and `Q4_0`
/// weights, per 256 for `Q4_K` and `Q6_K`) and multiply integers, as llama.cpp does (on: the
/// default), or keeps the activations in f32 (off: each result is then the f32 dot product
/// with the dequantized weight, up to summation order).
///
/// On x86-64 CPUs with AVX2 (AVX-512 ones included), the 8-bit path decoded the 4-bit formats
/// 20-40% faster on an AMD Zen 3 machine, and 22-60% faster than the AVX-512 f32 kernels on a
/// Xeon; each dot product then moves by at most half an activation step (`amax / 254` of the
/// value's block) times the weights' sum of magnitudes. Elsewhere the switch changes
/// nothing.
///
/// ```
/// use internlm2_backends::kernels::{int8_activations, set_int8_activations};
/// set_int8_activations(false);
/// assert!(!int8_activations());
/// set_int8_activations(true);
/// ```
///
/// Without a call, the environment variable `INTERNLM2_F32_ACTIVATIONS` (any value) turns it
/// off.
pub fn set_int8_activations(on: bool) {
    INT8_ACTIVATIONS.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether the CPU decoding kernels may quantize activations (see [`set_int8_activations`]).
pub fn int8_activations() -> bool {
    match INT8_ACTIVATIONS.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = std::env::var_os("INTERNLM2_F32_ACTIVATIONS").is_none();
            set_int8_activations(on);
            on
        }
    }
}

/// `$fused(args)` in [`KernelMode::Fused`], `$composite(args)` in [`KernelMode::Composite`]:
/// every backend override goes through this switch.
#[allow(unused_macros)] // a build with only the composite NdArray backend overrides nothing
macro_rules! fused_or_composite {
    ($fused:path, $composite:path, $($arg:expr),* $(,)?) => {
        if $crate::kernels::kernel_mode() == $crate::kernels::KernelMode::Composite {
            $composite($($arg),*)
        } else {
            $fused($($arg),*)
        }
    };
}
pub(crate) use fused_or_composite;

/// What a query may attend to.
///
/// Keys live in slots `0..t` (a KV cache, or the sequence itself); the `s` queries of this
/// call sit at slots `past_len..past_len + s`. A query attends to a key when the key's slot is
/// not after its own (causal), the key is not padding, and, with `segments`, both belong to
/// the same segment (packed documents do not see each other).
#[derive(Debug, Clone)]
pub struct AttentionMask<B: Backend> {
    /// Number of key slots before the first query (0 without a cache).
    pub past_len: usize,
    /// `[batch, t]`, `true` where the key slot is padding and must be ignored.
    pub key_padding: Option<Tensor<B, 2, Bool>>,
    /// `[batch, t]` segment id of every slot (queries take the id of their own slot).
    pub segments: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> AttentionMask<B> {
    /// Plain causal attention, no padding.
    pub fn causal(past_len: usize) -> Self {
        Self {
            past_len,
            key_padding: None,
            segments: None,
        }
    }
}

/// The model's hot paths. Implemented by every backend the SDK supports; the default methods
/// are the [`composite`] reference.
pub trait Kernels: Backend {
    /// RMSNorm over the last dimension with f32 statistics:
    /// `weight * cast(x * rsqrt(mean(x^2) + eps))`.
    ///
    /// # Shapes
    /// `x`: `[batch, seq, hidden]`, `weight`: `[hidden]` -> `[batch, seq, hidden]`
    fn rms_norm(x: Tensor<Self, 3>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 3> {
        composite::rms_norm(x, weight, eps)
    }

    /// Residual add followed by RMSNorm: returns `(x + residual, rms_norm(x + residual))`.
    fn add_rms_norm(
        x: Tensor<Self, 3>,
        residual: Tensor<Self, 3>,
        weight: Tensor<Self, 1>,
        eps: f64,
    ) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
        composite::add_rms_norm(x, residual, weight, eps)
    }

    /// Splits InternLM2's fused QKV projection, laid out per KV head as `group` query heads,
    /// then the key head, then the value head (`group = heads / kv_heads`), into query, key
    /// and value heads.
    ///
    /// # Shapes
    /// `qkv`: `[batch, seq, (heads + 2 * kv_heads) * head_dim]` -> q `[batch, heads, seq,
    /// head_dim]`, k and v `[batch, kv_heads, seq, head_dim]`
    ///
    /// # Panics
    /// If `kv_heads` does not divide `heads`, or the width is not `(heads + 2 * kv_heads)`
    /// times a head size.
    fn split_qkv(
        qkv: Tensor<Self, 3>,
        heads: usize,
        kv_heads: usize,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>, Tensor<Self, 4>) {
        composite::split_qkv(qkv, heads, kv_heads)
    }

    /// rotate_half RoPE: `x * cos + rotate_half(x) * sin`, with per-row positions already
    /// folded into `cos` and `sin`.
    ///
    /// # Shapes
    /// `x`: `[batch, heads, seq, head_dim]`, `cos`/`sin`: `[batch, seq, head_dim]`
    fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 3>, sin: Tensor<Self, 3>) -> Tensor<Self, 4> {
        composite::rope(x, cos, sin)
    }

    /// Causal grouped-query attention, softmax in f32, scale `1/sqrt(head_dim)`. Query head
    /// `i` reads key/value head `i / (heads / kv_heads)`.
    ///
    /// # Shapes
    /// `q`: `[batch, heads, s, d]`, `k`/`v`: `[batch, kv_heads, t, d]` -> `[batch, heads, s, d]`
    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        mask: &AttentionMask<Self>,
    ) -> Tensor<Self, 4> {
        composite::causal_attention(q, k, v, mask)
    }

    /// Writes `values` into `buffer` at slots `start..start + s` of dimension 2 (a KV-cache
    /// write) and returns the buffer. Backends that own the buffer alone write in place.
    ///
    /// # Shapes
    /// `buffer`: `[batch, kv_heads, capacity, d]`, `values`: `[batch, kv_heads, s, d]`
    fn cache_write(
        buffer: Tensor<Self, 4>,
        values: Tensor<Self, 4>,
        start: usize,
    ) -> Tensor<Self, 4> {
        composite::cache_write(buffer, values, start)
    }

    /// Causal grouped-query attention of packed sequences over a paged KV pool (see
    /// [`PagedLayout`]). Writes each sequence's new keys and values into its slots
    /// `past..past + len` (in place where the backend owns the pool alone), then every query
    /// row attends to slots `0..=` its own slot of its own sequence, softmax in f32, scale
    /// `1/sqrt(head_dim)`. A row's result depends on its query and its sequence's keys and
    /// values only, not on the other rows of the call.
    ///
    /// # Shapes
    /// `q`: `[1, heads, tokens, d]`, `k`/`v`: `[1, kv_heads, tokens, d]`, pools:
    /// `[blocks, kv_heads, block_size, d]` -> output `[1, heads, tokens, d]` and the pools
    ///
    /// # Panics
    /// If the layout does not [`check`](PagedLayout::check) against the pool and the input.
    fn paged_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        key_pool: Tensor<Self, 4>,
        value_pool: Tensor<Self, 4>,
        layout: &PagedLayout,
    ) -> PagedAttentionOutput<Self> {
        composite::paged_attention(q, k, v, key_pool, value_pool, layout)
    }

    /// Most rows for which [`dense`](Self::dense) runs a per-row kernel: a call with at most
    /// this many rows computes every row exactly as a one-row call does, and a call with more
    /// rows computes every row exactly as any other call with more rows does. A caller that
    /// needs a row's result to be independent of its batch (the serving engine) keeps each
    /// row in the same regime. `0` when the backend promises nothing of the kind (the
    /// composite path: a backend's matrix product may pick its algorithm from the shape).
    fn dense_skinny_rows() -> usize {
        0
    }

    /// SwiGLU gate: `silu(gate) * up`.
    fn swiglu(gate: Tensor<Self, 3>, up: Tensor<Self, 3>) -> Tensor<Self, 3> {
        composite::swiglu(gate, up)
    }

    /// A linear layer with a PyTorch-layout weight: `x @ weight^T + bias`.
    ///
    /// # Shapes
    /// `x`: `[batch, seq, in]`, `weight`: `[out, in]`, `bias`: `[out]` -> `[batch, seq, out]`
    fn dense(
        x: Tensor<Self, 3>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, 3> {
        composite::dense(x, weight, bias)
    }

    /// A linear layer whose weight is packed (f16/bf16 or block-quantized, see
    /// [`crate::packed`]), computed in the activation dtype: `x @ dequantize(weight)^T + bias`.
    /// No implementation materialises the whole weight in f32.
    ///
    /// # Shapes
    /// `x`: `[batch, seq, in]`, `weight`: `[out, in]`, `bias`: `[out]` -> `[batch, seq, out]`
    fn dense_packed(
        x: Tensor<Self, 3>,
        weight: &PackedWeight,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, 3> {
        composite::dense_packed(x, weight, bias)
    }
}

//! Backend selection and the kernel layer of the internlm2-rs SDK.
//!
//! - [`Cpu`] is the embedded CPU backend compiled in by default (burn's Flex, or NdArray with
//!   the `ndarray` feature and without `flex`); [`Cuda`], [`Wgpu`] and [`LibTorch`] come with
//!   the `cuda`, `wgpu` and `tch` features. Several may be compiled in at once.
//! - [`Kernels`] holds the model's hot paths (RMSNorm, RoPE, attention, SwiGLU, linear layers).
//!   Its default methods are the [`composite`](kernels::composite) reference built from plain
//!   burn tensor ops, which works on every backend and under autodiff.
//!
//! ```
//! use internlm2_backends::{Cpu, Kernels};
//! use burn::tensor::Tensor;
//!
//! let device = Default::default();
//! let x = Tensor::<Cpu, 3>::ones([1, 2, 4], &device);
//! let w = Tensor::<Cpu, 1>::ones([4], &device);
//! let y = Cpu::rms_norm(x, w, 1e-5);
//! assert_eq!(y.dims(), [1, 2, 4]);
//! ```
#![deny(missing_docs)]

pub mod device;
pub mod kernels;
pub mod limits;
pub mod memory;
pub mod packed;
pub mod program;
mod threads;

pub use threads::on_cpu_threads;

#[cfg(any(feature = "flex", feature = "cuda", feature = "wgpu", feature = "tch"))]
use burn::tensor::Tensor;

#[allow(unused_imports)] // used by the backend impls compiled in
use kernels::fused_or_composite;
pub use kernels::{AttentionMask, Kernels};

/// The embedded CPU backend: burn's Flex (pure Rust, SIMD, rayon threads).
#[cfg(feature = "flex")]
pub type Cpu = burn::backend::Flex;

/// [`Cpu`] with autodiff, for training (feature `autodiff`, which `internlm2-train` turns on).
#[cfg(all(feature = "autodiff", any(feature = "flex", feature = "ndarray")))]
pub type CpuAutodiff = burn::backend::Autodiff<Cpu>;

/// Which burn backend [`Cpu`] is.
#[cfg(feature = "flex")]
pub const CPU_BACKEND_NAME: &str = "flex";

/// The embedded CPU backend: burn's NdArray (selected when `flex` is off).
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type Cpu = burn::backend::NdArray<f32>;

/// Which burn backend [`Cpu`] is.
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub const CPU_BACKEND_NAME: &str = "ndarray";

/// burn's CUDA backend (feature `cuda`).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// burn's wgpu backend (feature `wgpu`), on Vulkan where available.
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu;

/// burn's libtorch backend (feature `tch`).
#[cfg(feature = "tch")]
pub type LibTorch = burn::backend::LibTorch;

/// One `Kernels` method running `kernels::$module::$method`, or the composite reference in
/// [`KernelMode::Composite`](kernels::KernelMode): every override's signature is written once,
/// here, for all the backends below.
#[allow(unused_macros)]
macro_rules! kernel_method {
    ($module:ident, rms_norm) => {
        fn rms_norm(x: Tensor<Self, 3>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 3> {
            fused_or_composite!(
                kernels::$module::rms_norm,
                kernels::composite::rms_norm,
                x,
                weight,
                eps
            )
        }
    };
    ($module:ident, add_rms_norm) => {
        fn add_rms_norm(
            x: Tensor<Self, 3>,
            residual: Tensor<Self, 3>,
            weight: Tensor<Self, 1>,
            eps: f64,
        ) -> (Tensor<Self, 3>, Tensor<Self, 3>) {
            fused_or_composite!(
                kernels::$module::add_rms_norm,
                kernels::composite::add_rms_norm,
                x,
                residual,
                weight,
                eps
            )
        }
    };
    ($module:ident, split_qkv) => {
        fn split_qkv(
            qkv: Tensor<Self, 3>,
            heads: usize,
            kv_heads: usize,
        ) -> (Tensor<Self, 4>, Tensor<Self, 4>, Tensor<Self, 4>) {
            fused_or_composite!(
                kernels::$module::split_qkv,
                kernels::composite::split_qkv,
                qkv,
                heads,
                kv_heads
            )
        }
    };
    ($module:ident, rope) => {
        fn rope(x: Tensor<Self, 4>, cos: Tensor<Self, 3>, sin: Tensor<Self, 3>) -> Tensor<Self, 4> {
            fused_or_composite!(
                kernels::$module::rope,
                kernels::composite::rope,
                x,
                cos,
                sin
            )
        }
    };
    ($module:ident, causal_attention) => {
        fn causal_attention(
            q: Tensor<Self, 4>,
            k: Tensor<Self, 4>,
            v: Tensor<Self, 4>,
            mask: &AttentionMask<Self>,
        ) -> Tensor<Self, 4> {
            fused_or_composite!(
                kernels::$module::causal_attention,
                kernels::composite::causal_attention,
                q,
                k,
                v,
                mask
            )
        }
    };
    ($module:ident, swiglu) => {
        fn swiglu(gate: Tensor<Self, 3>, up: Tensor<Self, 3>) -> Tensor<Self, 3> {
            fused_or_composite!(
                kernels::$module::swiglu,
                kernels::composite::swiglu,
                gate,
                up
            )
        }
    };
    ($module:ident, cache_write) => {
        fn cache_write(
            buffer: Tensor<Self, 4>,
            values: Tensor<Self, 4>,
            start: usize,
        ) -> Tensor<Self, 4> {
            fused_or_composite!(
                kernels::$module::cache_write,
                kernels::composite::cache_write,
                buffer,
                values,
                start
            )
        }
    };
    ($module:ident, dense) => {
        fn dense(
            x: Tensor<Self, 3>,
            weight: Tensor<Self, 2>,
            bias: Option<Tensor<Self, 1>>,
        ) -> Tensor<Self, 3> {
            fused_or_composite!(
                kernels::$module::dense,
                kernels::composite::dense,
                x,
                weight,
                bias
            )
        }
    };
    ($module:ident, paged_attention) => {
        fn paged_attention(
            q: Tensor<Self, 4>,
            k: Tensor<Self, 4>,
            v: Tensor<Self, 4>,
            key_pool: Tensor<Self, 4>,
            value_pool: Tensor<Self, 4>,
            layout: &kernels::PagedLayout,
        ) -> kernels::PagedAttentionOutput<Self> {
            fused_or_composite!(
                kernels::$module::paged_attention,
                kernels::composite::paged_attention,
                q,
                k,
                v,
                key_pool,
                value_pool,
                layout
            )
        }
    };
}

/// `dense_packed` takes its weight by reference, so it has its own arm.
#[allow(unused_macros)]
macro_rules! kernel_method_packed {
    ($module:ident) => {
        fn dense_packed(
            x: Tensor<Self, 3>,
            weight: &packed::PackedWeight,
            bias: Option<Tensor<Self, 1>>,
        ) -> Tensor<Self, 3> {
            fused_or_composite!(
                kernels::$module::dense_packed,
                kernels::composite::dense_packed,
                x,
                weight,
                bias
            )
        }
    };
}

/// The `Kernels` methods a backend overrides with the kernels of `kernels::$module`.
#[allow(unused_macros)]
macro_rules! kernel_methods {
    ($module:ident: $($method:ident),+ $(,)?) => {
        $(kernel_method!($module, $method);)+
    };
}

/// Flex runs the fused f32 CPU kernels of [`kernels::cpu`].
#[cfg(feature = "flex")]
impl Kernels for burn::backend::Flex {
    kernel_methods!(cpu: rms_norm, add_rms_norm, split_qkv, rope, causal_attention, swiglu, cache_write, dense);
    kernel_method_packed!(cpu_quant);
    kernel_method!(cpu_paged, paged_attention);

    fn dense_skinny_rows() -> usize {
        match kernels::kernel_mode() {
            kernels::KernelMode::Fused => kernels::cpu::SKINNY_MAX_ROWS,
            kernels::KernelMode::Composite => 0,
        }
    }
}

#[cfg(feature = "ndarray")]
impl Kernels for burn::backend::NdArray<f32> {}

/// Under autodiff every kernel is the differentiable [`composite`](kernels::composite)
/// reference: the fused kernels have no backward pass.
#[cfg(feature = "autodiff")]
impl<B: Kernels, C: burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy> Kernels
    for burn::backend::Autodiff<B, C>
{
}

/// The CubeCL backends (CUDA, wgpu) run the fused kernels of [`kernels::cube`] for RMSNorm,
/// RoPE, SwiGLU and causal attention (a tiled flash-attention kernel); the KV-cache write and
/// dense layers stay composite (burn's own matmul kernels).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl<R, F, I, BT> Kernels for burn_cubecl::CubeBackend<R, F, I, BT>
where
    R: burn_cubecl::CubeRuntime,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
{
    kernel_methods!(cube: rms_norm, add_rms_norm, rope, swiglu, causal_attention);
}

/// burn's `Cuda` and `Wgpu` are fusion backends over `CubeBackend`: the same fused kernels,
/// each recorded as a custom operation of the fusion stream ([`kernels::cube::fusion`]).
#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl<R, F, I, BT> Kernels for burn_fusion::Fusion<burn_cubecl::CubeBackend<R, F, I, BT>>
where
    R: burn_cubecl::CubeRuntime,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
{
    kernel_methods!(cube: rms_norm, add_rms_norm, rope, swiglu, causal_attention);
}

/// libtorch runs attention through its fused scaled-dot-product attention
/// ([`kernels::torch`]); the rest is the composite reference on libtorch's native ops.
#[cfg(feature = "tch")]
impl Kernels for burn::backend::LibTorch {
    kernel_methods!(torch: causal_attention);
}

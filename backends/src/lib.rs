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

pub mod kernels;

pub use kernels::{AttentionMask, Kernels};

/// The embedded CPU backend: burn's Flex (pure Rust, SIMD, rayon threads).
#[cfg(feature = "flex")]
pub type Cpu = burn::backend::Flex;

/// The embedded CPU backend: burn's NdArray (selected when `flex` is off).
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type Cpu = burn::backend::NdArray<f32>;

/// burn's CUDA backend (feature `cuda`).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// burn's wgpu backend (feature `wgpu`), on Vulkan where available.
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu;

/// burn's libtorch backend (feature `tch`).
#[cfg(feature = "tch")]
pub type LibTorch = burn::backend::LibTorch;

#[cfg(feature = "flex")]
impl Kernels for burn::backend::Flex {}

#[cfg(feature = "ndarray")]
impl Kernels for burn::backend::NdArray<f32> {}

#[cfg(feature = "cuda")]
impl Kernels for burn::backend::Cuda {}

#[cfg(feature = "wgpu")]
impl Kernels for burn::backend::Wgpu {}

#[cfg(feature = "tch")]
impl Kernels for burn::backend::LibTorch {}

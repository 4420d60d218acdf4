//! Parity with the official InternLM2 implementation: every case of the `reference.json` of
//! both tiny fixtures (`../shared/fixtures/tiny-internlm2*`, made with HuggingFace's remote
//! code in float32), computed by the SDK in f32 on the CPU backend — or, built with
//! `--features wgpu`, on burn's wgpu backend with the fused cube kernels (CI runs it on Mesa's
//! software Vulkan driver), or, built with `--features tch`, on libtorch (CI: the pip
//! `torch==2.9.0` wheel's libtorch on the CPU), or, built with `--features cuda`, on CUDA
//! (`scripts/gpu-check.sh`).
//!
//! Each enabled backend gets its own module (`cpu::`, `wgpu::`, `tch::`, `cuda::`), so one
//! build with several backend features checks all of them.

mod common;

/// The default build: the CPU backend.
#[cfg(not(any(feature = "wgpu", feature = "tch", feature = "cuda")))]
mod cpu {
    type B = internlm2::backends::Cpu;
    include!("parity/suite.rs");
}

/// CUDA (`scripts/gpu-check.sh` runs it on the lent GPU).
#[cfg(feature = "cuda")]
mod cuda {
    type B = internlm2::backends::Cuda;
    include!("parity/suite.rs");
}

/// burn's wgpu backend with the fused cube kernels.
#[cfg(feature = "wgpu")]
mod wgpu {
    type B = internlm2::backends::Wgpu;
    include!("parity/suite.rs");
}

/// libtorch.
#[cfg(feature = "tch")]
mod tch {
    type B = internlm2::backends::LibTorch;
    include!("parity/suite.rs");
}

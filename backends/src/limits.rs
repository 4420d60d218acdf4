//! A device's measured limits: best-of-5 timing with the device synchronised, and square-matmul
//! throughput. The MFU estimate of training and `bench --limits` are figured against them.
//!
//! ```
//! use internlm2_backends::{Cpu, limits::measure_matmul_flops};
//! let flops = measure_matmul_flops::<Cpu>(&Default::default(), 64);
//! assert!(flops > 0.0);
//! ```

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor};

/// Measures the backend's f32 matmul throughput on `device` (FLOP/s): the best of a few
/// square GEMMs of size `n`. Used as the peak of the MFU estimate when none is given.
pub fn measure_matmul_flops<B: Backend>(device: &B::Device, n: usize) -> f64 {
    measure_matmul_flops_in::<B>(device, n, DType::F32)
}

/// Square-matmul throughput of size `n` in `dtype` on `device` (FLOP/s): the best of 5 after
/// a warm-up, the device synchronised around each (no copy back to the host).
pub fn measure_matmul_flops_in<B: Backend>(device: &B::Device, n: usize, dtype: DType) -> f64 {
    let a = Tensor::<B, 2>::random([n, n], Distribution::Normal(0.0, 1.0), device).cast(dtype);
    let b = Tensor::<B, 2>::random([n, n], Distribution::Normal(0.0, 1.0), device).cast(dtype);
    let seconds = best_of_5::<B>(device, || {
        let _ = a.clone().matmul(b.clone());
    });
    2.0 * (n as f64).powi(3) / seconds
}

/// Best of 5 timings of `work` (after one warm-up run) in seconds, with `B::sync` after each
/// run so that asynchronous devices are timed to completion.
pub fn best_of_5<B: Backend>(device: &B::Device, mut work: impl FnMut()) -> f64 {
    work();
    let _ = B::sync(device);
    (0..5)
        .map(|_| {
            let t = std::time::Instant::now();
            work();
            let _ = B::sync(device);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

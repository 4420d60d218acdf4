//! The switch that forces the composite reference (`kernels::set_kernel_mode`): with
//! `KernelMode::Composite` the backend's `Kernels` methods return exactly what
//! `kernels::composite` computes (bit for bit); back in `KernelMode::Fused` they run the
//! backend's own kernels again, which agree with the reference within f32 rounding. Its own
//! test binary: the mode is process-wide.

use burn::tensor::{Distribution, Tensor};
use internlm2_backends::kernels::{
    AttentionMask, KernelMode, composite, kernel_mode, set_kernel_mode,
};
use internlm2_backends::{Cpu, Kernels};

fn random<const D: usize>(shape: [usize; D]) -> Tensor<Cpu, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn bits<const D: usize>(t: Tensor<Cpu, D>) -> Vec<u32> {
    t.into_data()
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn max_diff<const D: usize>(a: Tensor<Cpu, D>, b: Tensor<Cpu, D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn composite_mode_runs_the_reference_exactly() {
    let (q, k, v) = (
        random([1, 4, 33, 16]),
        random([1, 2, 33, 16]),
        random([1, 2, 33, 16]),
    );
    let (x, w) = (random([2, 5, 48]), random([48]));
    let mask = AttentionMask::causal(0);
    let reference_attention = composite::causal_attention(q.clone(), k.clone(), v.clone(), &mask);
    let reference_norm = composite::rms_norm(x.clone(), w.clone(), 1e-6);

    set_kernel_mode(KernelMode::Composite);
    assert_eq!(kernel_mode(), KernelMode::Composite);
    let attention = Cpu::causal_attention(q.clone(), k.clone(), v.clone(), &mask);
    let norm = Cpu::rms_norm(x.clone(), w.clone(), 1e-6);
    assert_eq!(bits(attention), bits(reference_attention.clone()));
    assert_eq!(bits(norm), bits(reference_norm.clone()));

    set_kernel_mode(KernelMode::Fused);
    assert_eq!(kernel_mode(), KernelMode::Fused);
    let attention = Cpu::causal_attention(q, k, v, &mask);
    let norm = Cpu::rms_norm(x, w, 1e-6);
    assert!(max_diff(attention, reference_attention) < 1e-5);
    assert!(max_diff(norm, reference_norm) < 1e-5);
}

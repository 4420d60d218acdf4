//! The packed-weight kernel tests of `cpu_quant.rs` again, with 8-bit activations off
//! (`kernels::set_int8_activations(false)`, which that file's weight helper calls when it runs
//! inside this binary): the decoding mat-vec then takes the f32 kernels, on AVX-512 machines
//! the grouped AVX-512 ones for Q8_0, Q4_0 and Q4_K that the default leaves to the integer
//! kernels. Its error bounds follow (`int8_activations()` is false here), so they are the f32
//! ones.

#![cfg(feature = "flex")]

#[path = "cpu_quant.rs"]
mod cpu_quant;

#[test]
fn this_suite_runs_with_f32_activations() {
    assert!(cpu_quant::f32_activations_suite());
}

//! Vectorised elementwise math of the CPU kernels: a row's maximum and `exp` for the attention
//! softmax, and the SwiGLU gate, with AVX2 + FMA where the CPU has them (chosen at run time)
//! and the standard library's `exp` elsewhere.
//!
//! The AVX2 `exp` is the classic Cephes scheme: `x = n ln2 + r` with `|r| <= ln2 / 2` (`ln2`
//! split in two parts), a degree-6 polynomial for `exp(r)`, and `2^n` built in the exponent
//! bits; inputs are clamped to `[-87.3, 88.7]`, so results stay finite. Relative error below
//! 2e-7 (checked against `f32::exp` in the tests).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

/// Sum of the 8 lanes in a fixed order: halves, then pairs, then the last two (the skinny
/// and quantized kernels' reduction; their scalar test emulations call it too).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx")]
pub(crate) fn hsum256(v: __m256) -> f32 {
    let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
        _mm256_set1_ps(88.7),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5.000_000_1e-1,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_sub_sum_avx2(row: &mut [f32], max: f32) -> f32 {
    let m = _mm256_set1_ps(max);
    let mut acc = _mm256_setzero_ps();
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds 8 f32.
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
        }
    }
    let mut lanes = [0f32; 8];
    // SAFETY: 8 writable f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    let mut sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for x in chunks.into_remainder() {
        *x = (*x - max).exp();
        sum += *x;
    }
    sum
}

/// The largest of `init` and `xs`, NaNs ignored (`init.max(x0).max(x1)...`, as `f32::max`
/// folds it), in eight independent lanes that the compiler vectorises: a running maximum over
/// a score row was a chain of dependent `maxss` and took a fifth of the prefill attention's
/// time. The maximum of a set does not depend on the order it is taken in, so the result is
/// the fold's.
pub(crate) fn max_of(xs: &[f32], init: f32) -> f32 {
    let mut lanes = [init; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    let mut max = lanes.into_iter().fold(init, f32::max);
    for &x in rest {
        max = max.max(x);
    }
    max
}

/// `row[i] = exp(row[i] - max)`; returns the sum of the new values.
pub(crate) fn exp_sub_sum(row: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the features were detected.
        return unsafe { exp_sub_sum_avx2(row, max) };
    }
    let mut sum = 0f32;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
    let one = _mm256_set1_ps(1.0);
    let n = out.len() - out.len() % 8;
    for i in (0..n).step_by(8) {
        // SAFETY: i + 8 <= len of all three slices.
        unsafe {
            let a = _mm256_loadu_ps(gate.as_ptr().add(i));
            let b = _mm256_loadu_ps(up.as_ptr().add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), a));
            let y = _mm256_mul_ps(_mm256_div_ps(a, _mm256_add_ps(one, e)), b);
            _mm256_storeu_ps(out.as_mut_ptr().add(i).cast(), y);
        }
    }
    for i in n..out.len() {
        out[i].write(gate[i] / (1.0 + (-gate[i]).exp()) * up[i]);
    }
}

/// `out = silu(gate) * up` elementwise; writes every value of `out` (which may be
/// uninitialized).
pub(crate) fn silu_mul(gate: &[f32], up: &[f32], out: &mut [MaybeUninit<f32>]) {
    assert!(gate.len() >= out.len() && up.len() >= out.len());
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the features were detected.
        return unsafe { silu_mul_avx2(gate, up, out) };
    }
    for ((o, &a), &b) in out.iter_mut().zip(gate).zip(up) {
        o.write(a / (1.0 + (-a).exp()) * b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library() {
        let mut xs: Vec<f32> = (0..2001).map(|i| -80.0 + i as f32 * 0.0437).collect();
        let want: Vec<f32> = xs.iter().map(|x| (x - 3.0f32).exp()).collect();
        let sum = exp_sub_sum(&mut xs, 3.0);
        for (g, w) in xs.iter().zip(&want) {
            assert!((g - w).abs() <= 2e-7 * w.abs() + 1e-38, "{g} vs {w}");
        }
        let total: f32 = want.iter().sum();
        assert!((sum - total).abs() <= 1e-5 * total);
    }

    #[test]
    fn max_of_is_the_fold() {
        for len in [0, 1, 7, 8, 9, 23, 64, 515] {
            let mut xs: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3)
                .collect();
            let fold = |xs: &[f32], init: f32| xs.iter().fold(init, |m, &x| m.max(x));
            for init in [f32::MIN, f32::NEG_INFINITY] {
                assert_eq!(
                    max_of(&xs, init).to_bits(),
                    fold(&xs, init).to_bits(),
                    "{len}"
                );
            }
            if len > 3 {
                // NaNs are ignored; infinities count.
                xs[len / 2] = f32::NAN;
                xs[1] = f32::NEG_INFINITY;
                assert_eq!(max_of(&xs, f32::MIN), fold(&xs, f32::MIN), "{len}");
                xs[len - 1] = f32::INFINITY;
                assert_eq!(max_of(&xs, f32::MIN), f32::INFINITY, "{len}");
            }
        }
        assert_eq!(max_of(&[f32::NAN; 9], f32::NEG_INFINITY), f32::NEG_INFINITY);
    }

    #[test]
    fn silu_matches_the_definition() {
        let g: Vec<f32> = (0..37).map(|i| i as f32 * 0.7 - 12.0).collect();
        let u: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.05).collect();
        let mut out = vec![MaybeUninit::new(f32::NAN); 37];
        silu_mul(&g, &u, &mut out);
        // SAFETY: `silu_mul` wrote (and the buffer started with) every value.
        let out: Vec<f32> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
        for i in 0..37 {
            let want = g[i] / (1.0 + (-g[i]).exp()) * u[i];
            assert!(
                (out[i] - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "{i}: {} vs {want}",
                out[i]
            );
        }
    }
}

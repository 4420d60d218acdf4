//! The per-row ("skinny") dense kernel of the Flex backend: `out[r, o] = dot(x[r], w[o])` for
//! the few rows of a decoding step.
//!
//! A GEMM library packs the whole weight for a handful of rows; this kernel streams each
//! weight row once from memory instead. Register-blocked, with two instruction sets chosen at
//! run time:
//!
//! - AVX-512: up to 8 input rows x 2 weight rows = 16 accumulators per pass, so a batch of 8
//!   decoding rows reads each weight row once (from memory) and 10 loads feed 16 FMAs of 16
//!   lanes (8 x 3 would spill accumulators to the stack: 2.3x slower). Each element: a 16-lane FMA chain over `k` whose last step is a zero-masked load
//!   of the `k % 16` remaining values, then a fixed horizontal sum.
//! - AVX + FMA: 4 input rows x 3 weight rows = 12 accumulators, so 7 loads feed 12 FMAs; more
//!   than 4 rows take each block of 3 weight rows from memory once, then from cache (L1 at
//!   k = 512, L2 for long rows) for the other groups of 4. Each element:
//!   an 8-lane FMA chain over `k`, a fixed horizontal sum, then the scalar tail.
//!
//! Both prefetch the weight rows a few blocks ahead into L2 ([`PREFETCH_BLOCKS`]).
//!
//! Either way every output element is the same computation whatever the blocking (weight
//! first, input second), so a row's result never depends on the other rows of the call, and a
//! batch of rows gives exactly the bits of one row alone (what the serving engine relies on
//! for batch-independent decoding). The two instruction sets differ from each other in the
//! last bits; a process uses one of them throughout (`INTERNLM2_NO_AVX512` selects AVX2).

#[cfg(target_arch = "x86_64")]
use super::cpu_simd::hsum256;

/// How many blocks of weight rows ahead the kernels prefetch into L2. The hardware
/// prefetcher alone kept a batch of 8 rows at half the read bandwidth: the loads of one block
/// wait on memory while the FMAs of the block before are long done.
const PREFETCH_BLOCKS: usize = 4;

/// `out[r * n + o] = dot(x[r], w[o])` for every row `r < m` and `o` in `o0..o1`.
///
/// # Safety
/// `out` must point at an `m x n` row-major buffer; no other thread may write its columns
/// `o0..o1`; `x` holds `m x k` and `w` at least `o1 x k` elements.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn skinny(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    o0: usize,
    o1: usize,
    out: *mut f32,
    n: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if super::cpu_quant_avx512::available() {
        // SAFETY: AVX-512 F (and FMA) were detected; the caller's guarantees carry over.
        unsafe { skinny_avx512(x, m, k, w, o0, o1, out, n) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were detected above; the caller's guarantees carry over.
        unsafe { skinny_avx(x, m, k, w, o0, o1, out, n) };
        return;
    }
    for o in o0..o1 {
        let row = &w[o * k..(o + 1) * k];
        for r in 0..m {
            let xr = &x[r * k..(r + 1) * k];
            let mut acc = [0f32; 8];
            for (wc, xc) in row.chunks_exact(8).zip(xr.chunks_exact(8)) {
                for i in 0..8 {
                    acc[i] += wc[i] * xc[i];
                }
            }
            let tail = k - k % 8;
            let mut sum: f32 = acc.iter().sum();
            sum += (tail..k).map(|i| row[i] * xr[i]).sum::<f32>();
            // SAFETY: the caller owns columns o0..o1.
            unsafe { *out.add(r * n + o) = sum };
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn skinny_avx(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    o0: usize,
    o1: usize,
    out: *mut f32,
    n: usize,
) {
    // Weight blocks outside, row groups inside: a block of 3 weight rows (6 KiB at k = 512)
    // comes from memory for the first group of 4 input rows and from L1 (L2 for long rows)
    // for the others, so
    // the weights stream while every group computes. (Row groups outside left memory idle
    // while the later groups re-read the task's weight rows from L2: a decoding step's dense
    // layers at 8 rows took 10-17% longer that way on the 2-core AMD Zen 3 VM.)
    let mut o = o0;
    while o < o1 {
        let cols = (o1 - o).min(3);
        let mut r = 0;
        while r < m {
            let rows = (m - r).min(4);
            // SAFETY: the features are enabled here; rows r..r+rows and weight rows
            // o..o+cols exist; the caller owns these output columns.
            unsafe {
                match (rows, cols) {
                    (1, 1) => block::<1, 1>(x, r, k, w, o, out, n),
                    (1, 2) => block::<1, 2>(x, r, k, w, o, out, n),
                    (1, _) => block::<1, 3>(x, r, k, w, o, out, n),
                    (2, 1) => block::<2, 1>(x, r, k, w, o, out, n),
                    (2, 2) => block::<2, 2>(x, r, k, w, o, out, n),
                    (2, _) => block::<2, 3>(x, r, k, w, o, out, n),
                    (3, 1) => block::<3, 1>(x, r, k, w, o, out, n),
                    (3, 2) => block::<3, 2>(x, r, k, w, o, out, n),
                    (3, _) => block::<3, 3>(x, r, k, w, o, out, n),
                    (_, 1) => block::<4, 1>(x, r, k, w, o, out, n),
                    (_, 2) => block::<4, 2>(x, r, k, w, o, out, n),
                    (_, _) => block::<4, 3>(x, r, k, w, o, out, n),
                }
            }
            r += rows;
        }
        o += cols;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn skinny_avx512(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    o0: usize,
    o1: usize,
    out: *mut f32,
    n: usize,
) {
    let mut r = 0;
    while r < m {
        let rows = (m - r).min(8);
        let mut o = o0;
        while o < o1 {
            let cols = (o1 - o).min(2);
            macro_rules! go {
                ($($r:literal)*) => {
                    match (rows, cols) {
                        $(
                            ($r, 1) => block512::<$r, 1>(x, r, k, w, o, out, n),
                            ($r, _) => block512::<$r, 2>(x, r, k, w, o, out, n),
                        )*
                        _ => unreachable!("rows is 1..=8"),
                    }
                };
            }
            // SAFETY: the features are enabled here; rows r..r+rows and weight rows
            // o..o+cols exist; the caller owns these output columns.
            unsafe { go!(1 2 3 4 5 6 7 8) };
            o += cols;
        }
        r += rows;
    }
}

/// The fixed horizontal sum of a 16-lane accumulator: halves, then quarters, then pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx,fma")]
#[inline]
unsafe fn hsum512(a: std::arch::x86_64::__m512) -> f32 {
    use std::arch::x86_64::*;
    let lo = _mm512_castps512_ps256(a);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    hsum256(_mm256_add_ps(lo, hi))
}

/// Dots weight rows `o..o + C` with input rows `r..r + R`, 16 lanes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn block512<const R: usize, const C: usize>(
    x: &[f32],
    r: usize,
    k: usize,
    w: &[f32],
    o: usize,
    out: *mut f32,
    n: usize,
) {
    use std::arch::x86_64::*;
    let body = k - k % 16;
    // SAFETY (whole body): full loads stay inside rows r..r+R of x and o..o+C of w
    // (i + 16 <= body <= k); the masked loads read only the k - body values left in each
    // row; the stores hit the caller's columns.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut i = 0;
        while i < body {
            let mut wv = [_mm512_setzero_ps(); C];
            for (c, v) in wv.iter_mut().enumerate() {
                let at = w.as_ptr().add((o + c) * k + i);
                *v = _mm512_loadu_ps(at);
                // The same line of the weight rows a few blocks ahead, into L2 (a hint:
                // prefetching past the end of the slice is harmless).
                _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(PREFETCH_BLOCKS * C * k) as *const i8);
            }
            for (j, row) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(x.as_ptr().add((r + j) * k + i));
                for (a, v) in row.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(*v, xv, *a);
                }
            }
            i += 16;
        }
        if body < k {
            let mask: __mmask16 = (1u32 << (k - body)) as u16 - 1;
            let mut wv = [_mm512_setzero_ps(); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_ps(mask, w.as_ptr().add((o + c) * k + body));
            }
            for (j, row) in acc.iter_mut().enumerate() {
                let xv = _mm512_maskz_loadu_ps(mask, x.as_ptr().add((r + j) * k + body));
                for (a, v) in row.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(*v, xv, *a);
                }
            }
        }
        for (j, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                *out.add((r + j) * n + o + c) = hsum512(*a);
            }
        }
    }
}

/// Dots weight rows `o..o + C` with input rows `r..r + R`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn block<const R: usize, const C: usize>(
    x: &[f32],
    r: usize,
    k: usize,
    w: &[f32],
    o: usize,
    out: *mut f32,
    n: usize,
) {
    use std::arch::x86_64::*;
    let body = k - k % 8;
    // SAFETY (whole body): loads stay inside rows r..r+R of x and o..o+C of w (i + 8 <= body
    // <= k); the stores hit the caller's columns.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut i = 0;
        while i < body {
            let mut wv = [_mm256_setzero_ps(); C];
            for (c, v) in wv.iter_mut().enumerate() {
                let at = w.as_ptr().add((o + c) * k + i);
                *v = _mm256_loadu_ps(at);
                _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(PREFETCH_BLOCKS * C * k) as *const i8);
            }
            for (j, row) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.as_ptr().add((r + j) * k + i));
                for (a, v) in row.iter_mut().zip(&wv) {
                    *a = _mm256_fmadd_ps(*v, xv, *a);
                }
            }
            i += 8;
        }
        for (j, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                let mut s = hsum256(*a);
                let (wrow, xrow) = ((o + c) * k, (r + j) * k);
                for t in body..k {
                    s += w[wrow + t] * x[xrow + t];
                }
                *out.add((r + j) * n + o + c) = s;
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// One weight row with one input row, exactly as the AVX + FMA kernel computes each
    /// element.
    #[target_feature(enable = "avx,fma")]
    unsafe fn one_avx(x: &[f32], w: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let k = x.len();
        let body = k - k % 8;
        unsafe {
            let mut a = _mm256_setzero_ps();
            let mut i = 0;
            while i < body {
                let wv = _mm256_loadu_ps(w.as_ptr().add(i));
                a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(i)), a);
                i += 8;
            }
            let mut s = hsum256(a);
            for t in body..k {
                s += w[t] * x[t];
            }
            s
        }
    }

    /// One weight row with one input row, exactly as the AVX-512 kernel computes each
    /// element: 16-lane chain, the remainder as one zero-masked step, the fixed sum.
    #[target_feature(enable = "avx512f,avx,fma")]
    unsafe fn one_avx512(x: &[f32], w: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let k = x.len();
        let body = k - k % 16;
        unsafe {
            let mut a = _mm512_setzero_ps();
            let mut i = 0;
            while i < body {
                let wv = _mm512_loadu_ps(w.as_ptr().add(i));
                a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x.as_ptr().add(i)), a);
                i += 16;
            }
            if body < k {
                let mask = ((1u32 << (k - body)) - 1) as u16;
                let wv = _mm512_maskz_loadu_ps(mask, w.as_ptr().add(body));
                a = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mask, x.as_ptr().add(body)), a);
            }
            hsum512(a)
        }
    }

    #[test]
    fn every_element_is_the_one_row_dot_product() {
        if !(std::arch::is_x86_feature_detected!("avx")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return;
        }
        let wide = super::super::cpu_quant_avx512::available();
        let mut seed = 1u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        for (m, k, n) in [
            (1, 64, 7),
            (5, 37, 10),
            (16, 512, 13),
            (9, 3, 5),
            (4, 1536, 4),
            (8, 17, 11),
            (13, 1000, 8),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let mut out = vec![0f32; m * n];
            // Columns 1..n in one task (the chunking of `dense` starts anywhere).
            unsafe { skinny(&x, m, k, &w, 1, n, out.as_mut_ptr(), n) };
            for r in 0..m {
                for o in 1..n {
                    let (xr, wr) = (&x[r * k..(r + 1) * k], &w[o * k..(o + 1) * k]);
                    let expected = unsafe {
                        if wide {
                            one_avx512(xr, wr)
                        } else {
                            one_avx(xr, wr)
                        }
                    };
                    let got = out[r * n + o];
                    assert_eq!(got.to_bits(), expected.to_bits(), "m={m} k={k} r={r} o={o}");
                    let exact: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                    assert!(
                        (got as f64 - exact).abs() <= 1e-5 * (k as f64).sqrt(),
                        "m={m} k={k} r={r} o={o}: {got} vs {exact}"
                    );
                }
                assert_eq!(out[r * n], 0.0, "column 0 belongs to another task");
            }
        }
    }
}

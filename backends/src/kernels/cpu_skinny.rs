//! The per-row ("skinny") dense kernel of the Flex backend: `out[r, o] = dot(x[r], w[o])` for
//! the few rows of a decoding step.
//!
//! A GEMM library packs the whole weight for a handful of rows; this kernel streams each
//! weight row once from memory instead. Register-blocked: each pass keeps 4 input rows x 3
//! weight rows = 12 accumulators (AVX + FMA), so 7 loads feed 12 FMAs. Every output element is
//! the same computation whatever the blocking: an 8-lane FMA chain over `k` (weight first,
//! input second), a fixed horizontal sum, then the scalar tail — so a row's result never
//! depends on the other rows of the call, and a batch of rows gives exactly the bits of one
//! row alone (what the serving engine relies on for batch-independent decoding).

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
    // Row groups outside, so a group's inputs stay in L1 while the task's weight rows (a
    // chunk of outputs) stream from L2 for each group.
    let mut r = 0;
    while r < m {
        let rows = (m - r).min(4);
        let mut o = o0;
        while o < o1 {
            let cols = (o1 - o).min(3);
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
            o += cols;
        }
        r += rows;
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
                *v = _mm256_loadu_ps(w.as_ptr().add((o + c) * k + i));
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
                let hi = _mm256_extractf128_ps(*a, 1);
                let sum4 = _mm_add_ps(_mm256_castps256_ps128(*a), hi);
                let sum2 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
                let sum1 = _mm_add_ss(sum2, _mm_shuffle_ps(sum2, sum2, 1));
                let mut s = _mm_cvtss_f32(sum1);
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

    /// One weight row with one input row, exactly as the kernel computes each element (and
    /// as the unblocked kernel before it did).
    #[target_feature(enable = "avx,fma")]
    unsafe fn one(x: &[f32], w: &[f32]) -> f32 {
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
            let hi = _mm256_extractf128_ps(a, 1);
            let sum4 = _mm_add_ps(_mm256_castps256_ps128(a), hi);
            let sum2 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
            let sum1 = _mm_add_ss(sum2, _mm_shuffle_ps(sum2, sum2, 1));
            let mut s = _mm_cvtss_f32(sum1);
            for t in body..k {
                s += w[t] * x[t];
            }
            s
        }
    }

    #[test]
    fn every_element_is_the_one_row_dot_product() {
        if !(std::arch::is_x86_feature_detected!("avx")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return;
        }
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
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let mut out = vec![0f32; m * n];
            // Columns 1..n in one task (the chunking of `dense` starts anywhere).
            unsafe { skinny(&x, m, k, &w, 1, n, out.as_mut_ptr(), n) };
            for r in 0..m {
                for o in 1..n {
                    let expected = unsafe { one(&x[r * k..(r + 1) * k], &w[o * k..(o + 1) * k]) };
                    assert_eq!(
                        out[r * n + o].to_bits(),
                        expected.to_bits(),
                        "m={m} k={k} r={r} o={o}"
                    );
                }
                assert_eq!(out[r * n], 0.0, "column 0 belongs to another task");
            }
        }
    }
}

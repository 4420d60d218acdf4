//! The prefill GEMM of the CPU (Flex) backend: `out[m, n] = x[m, k] @ w[n, k]^T (+ bias)` for
//! many rows, split over panels of output features that run on rayon's pool.
//!
//! Each task takes a panel of `w`'s rows (output features), gets it as f32 — borrowed from an
//! f32 weight, or dequantized from packed storage into a per-thread buffer that stays in the
//! core's L2 cache — and runs one single-threaded GEMM of the `gemm` crate (its AVX-512 or
//! AVX2 kernels, chosen at run time) for the columns of `out` it owns. Every weight value is
//! read (or dequantized) once per call; no task materialises more than one panel.
//!
//! Why not `gemm`'s own threading (what Flex's matmul uses): on the prefill shapes of a small
//! model (`512 x 512 x 768`, ...) it splits each `k` block into jobs and joins after each, and
//! the second core added 18% at best; independent panels scale with the cores.
//!
//! Numerics: an output element is one `gemm` dot product over `k`, blocked along `k` by an
//! amount `gemm` derives from `k` and the caches only (panels are kept wider than 64 outputs,
//! see [`MIN_PANEL`]), so a row's result does not depend on how many rows the call has or on
//! the thread count; it does differ in the last bits from the skinny decoding kernels.

use std::cell::RefCell;

use rayon::prelude::*;

/// f32 elements a dequantized panel may hold (256 KiB: stays in a core's L2 cache with room for
/// `gemm`'s packed copy of the input).
const PANEL_BUDGET: usize = 1 << 16;

/// Output features of a panel: a multiple of 16 (the `gemm` kernels' column step), at least
/// [`MIN_PANEL`] and at most 512.
pub(crate) fn panel_width(n: usize, k: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let by_cache = (PANEL_BUDGET / k.max(1)).clamp(MIN_PANEL, 512);
    // At least two panels per thread when `n` allows it, for balance.
    let by_balance = n.div_ceil(2 * threads).max(MIN_PANEL);
    by_cache.min(by_balance).div_ceil(16) * 16
}

/// Narrowest panel. `gemm` picks its `k` blocking from `k` alone, except for products of at
/// most 64 x 64 outputs, where it takes `min(k, 512)`: panels wider than 64 keep every row's
/// summation order independent of how many rows the call has (for `k <= 512` it is anyway).
const MIN_PANEL: usize = 80;

/// A raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct Dst(*mut f32);
// SAFETY: tasks write disjoint column ranges of the output (see `gemm_panels`).
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

/// Where a panel's f32 weights come from.
pub(crate) enum Panel<'a> {
    /// Rows `o0..o1` of an f32 `[n, k]` weight, read in place.
    Borrowed(&'a [f32]),
    /// The rows were written into the thread's panel buffer.
    Decoded,
}

thread_local! {
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Returns `out[m, n] = x[m, k] @ w^T + bias`, where `fill(o0, o1, buf)` provides rows
/// `o0..o1` of the `[n, k]` weight: either borrowed (`Panel::Borrowed`) or written into `buf`
/// (`(o1 - o0) * k` elements, `Panel::Decoded`).
///
/// The output is allocated without being zeroed first (a prefill's outputs are 1-3 MiB each;
/// `vec![0.0; _]` cleared them on the calling thread while the pool waited): every panel's
/// GEMM writes all of its columns of every row without reading them.
///
/// # Panics
/// If `x` or `bias` are shorter than `m * k` or `n`.
pub(crate) fn gemm_panels<'w>(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    bias: Option<&[f32]>,
    fill: impl Fn(usize, usize, &mut [f32]) -> Panel<'w> + Sync,
) -> Vec<f32> {
    assert!(x.len() >= m * k);
    assert!(bias.is_none_or(|b| b.len() >= n));
    if m == 0 || n == 0 {
        return vec![0.0; m * n];
    }
    let mut out = Vec::<f32>::with_capacity(m * n);
    let width = panel_width(n, k);
    let panels = n.div_ceil(width);
    let dst = Dst(out.as_mut_ptr());
    let task = |p: usize| {
        let dst = dst;
        let (o0, o1) = (p * width, ((p + 1) * width).min(n));
        let cols = o1 - o0;
        PANEL.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < cols * k {
                buf.resize(cols * k, 0.0);
            }
            let panel = fill(o0, o1, &mut buf[..cols * k]);
            let w: &[f32] = match panel {
                Panel::Borrowed(rows) => rows,
                Panel::Decoded => &buf[..cols * k],
            };
            assert!(w.len() >= cols * k, "panel {o0}..{o1} is short");
            // SAFETY: `x` holds m x k, `w` holds cols x k (row-major, so w^T has row stride 1
            // and column stride k), and this task alone writes columns o0..o1 of every row of
            // the m x n output.
            unsafe {
                gemm::gemm(
                    m,
                    cols,
                    k,
                    dst.0.add(o0),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    w.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            if let Some(bias) = bias {
                for r in 0..m {
                    // SAFETY: as above, columns o0..o1 of row r belong to this task.
                    let row =
                        unsafe { std::slice::from_raw_parts_mut(dst.0.add(r * n + o0), cols) };
                    for (y, b) in row.iter_mut().zip(&bias[o0..o1]) {
                        *y += b;
                    }
                }
            }
        });
    };
    if panels > 1 {
        (0..panels).into_par_iter().for_each(task);
    } else {
        task(0);
    }
    // SAFETY: the panels cover columns 0..n, and each panel's GEMM (`read_dst` false) wrote
    // its columns of all m rows.
    unsafe { out.set_len(m * n) };
    out
}

/// `x @ w^T + bias` for an f32 `[n, k]` weight (panels borrowed in place).
pub(crate) fn gemm_f32_weight(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert!(w.len() >= n * k);
    gemm_panels(x, m, k, n, bias, |o0, o1, _| {
        Panel::Borrowed(&w[o0 * k..o1 * k])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for o in 0..n {
                let mut s = 0f64;
                for i in 0..k {
                    s += x[r * k + i] as f64 * w[o * k + i] as f64;
                }
                out[r * n + o] = s as f32 + bias.map_or(0.0, |b| b[o]);
            }
        }
        out
    }

    #[test]
    fn panels_match_a_naive_product() {
        for (m, k, n) in [(17, 5, 3), (40, 64, 100), (33, 300, 700), (1, 7, 1)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
            let out = gemm_f32_weight(&x, m, k, &w, n, Some(&bias));
            let want = naive(&x, m, k, &w, n, Some(&bias));
            let worst = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-3, "{m}x{k}x{n}: {worst}");
        }
    }

    #[test]
    fn panel_widths_are_multiples_of_16_above_64() {
        for (n, k) in [(1, 1), (768, 512), (92544, 512), (100, 4096)] {
            let w = panel_width(n, k);
            assert!(
                w % 16 == 0 && (MIN_PANEL..=512).contains(&w),
                "{n} {k}: {w}"
            );
        }
    }
}

//! The prefill GEMM of the CPU (Flex) backend: `out[m, n] = x[m, k] @ w[n, k]^T (+ bias)` for
//! many rows, split into blocks (a panel of output features x a range of rows) that run on
//! rayon's pool.
//!
//! Each task takes a panel of `w`'s rows (output features), gets it as f32 — borrowed from an
//! f32 weight, or dequantized from packed storage into a per-thread buffer that stays in the
//! core's L2 cache (a thread that runs consecutive row blocks of one panel decodes it once) — and
//! runs one single-threaded GEMM of the `gemm` crate (its AVX-512 or AVX2 kernels, chosen at
//! run time) for the block of `out` it owns. No task materialises more than one panel.
//!
//! Why not `gemm`'s own threading (what Flex's matmul uses): on the prefill shapes of a small
//! model (`512 x 512 x 768`, ...) it splits each `k` block into jobs and joins after each, and
//! the second core added 18% at best; independent blocks scale with the cores.
//!
//! Numerics: an output element is one `gemm` dot product over `k`, blocked along `k` by an
//! amount `gemm` derives from `k` and the caches only (panels are kept wider than 64 outputs,
//! see [`min_panel`]), so a row's result does not depend on how many rows the call has, how
//! they are split or the thread count; it does differ in the last bits from the skinny
//! decoding kernels.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

/// f32 elements a dequantized panel may hold (256 KiB: stays in a core's L2 cache with room for
/// `gemm`'s packed copy of the input).
const PANEL_BUDGET: usize = 1 << 16;

/// Narrowest panel: the narrowest multiple of the panel unit ([`panel_unit`]) wider than 64.
/// `gemm` picks its `k` blocking from `k` alone, except for products of at most 64 x 64
/// outputs, where it takes `min(k, 512)`: panels wider than 64 keep every row's summation
/// order independent of how many rows the call (or its row block) has (for `k <= 512` it is
/// anyway).
const fn min_panel(unit: usize) -> usize {
    (64 / unit + 1) * unit
}

/// Output features one pass of `gemm`'s f32 microkernel covers, which panel widths are
/// multiples of: 16 (two AVX2 registers, its `x2x6` kernel), 64 on AVX-512 machines (four
/// registers, `x4x6`). A panel that is not a multiple runs its last features through a
/// narrower, slower kernel: with 16-wide units an AVX-512 machine's 80-wide panels of the
/// down projection (`k = 1536`) spent a fifth of their work in `x1x6`, 4% of a prefill.
fn panel_unit() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static UNIT: OnceLock<usize> = OnceLock::new();
        *UNIT.get_or_init(|| {
            if is_x86_feature_detected!("avx512f") {
                64
            } else {
                16
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    16
}

/// Fewest rows in a row block (see [`Grid`]); a call with fewer rows is not split by rows.
const MIN_ROWS: usize = 128;

/// Tasks per pool thread a call aims for: enough that the last task to finish is short
/// (a core that finishes early idles for at most about one task), few enough that each task
/// still multiplies a large block.
const TASKS_PER_THREAD: usize = 4;

/// How one call's `m x n` output is split into tasks: `panels` ranges of output features
/// (widths within one unit of each other, multiples of the unit ([`panel_unit`]) but the
/// last, at least [`min_panel`] when `n` allows), times `row_blocks` ranges of rows (at least
/// [`MIN_ROWS`] each).
///
/// Why rows too: with panels alone (at most `n / 80` of them) a small model's prefill GEMMs
/// had 4-12 tasks, so a pool of 16 threads left most of them idle. Why not rows alone: every
/// task packs its rows of `x` again, so the panel count sets how often `x` is copied, and the
/// row-block count how often a panel is dequantized (a thread that runs consecutive row blocks
/// of one panel decodes it once). On 2 threads the split changes nothing measurable
/// (a scratch benchmark of the five GEMMs of one layer, interleaved: same median time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grid {
    m: usize,
    n: usize,
    unit: usize,
    panels: usize,
    row_blocks: usize,
}

impl Grid {
    /// The split for `threads` pool threads on this CPU.
    pub(crate) fn new(m: usize, n: usize, k: usize, threads: usize) -> Self {
        Self::with_unit(m, n, k, threads, panel_unit())
    }

    /// The split for `threads` pool threads with panels in multiples of `unit` features.
    fn with_unit(m: usize, n: usize, k: usize, threads: usize, unit: usize) -> Self {
        let threads = threads.max(1);
        let min_panel = min_panel(unit);
        let by_cache = (PANEL_BUDGET / k.max(1)).clamp(min_panel, 512);
        let panels = n.div_ceil(by_cache).min(n / min_panel).max(1);
        let wanted = TASKS_PER_THREAD * threads;
        let row_blocks = wanted.div_ceil(panels).min(m / MIN_ROWS).max(1);
        Self {
            m,
            n,
            unit,
            panels,
            row_blocks,
        }
    }

    /// Number of tasks (`panels x row_blocks`).
    pub(crate) fn tasks(&self) -> usize {
        self.panels * self.row_blocks
    }

    /// Task `t`'s output features and rows; consecutive tasks share a panel.
    pub(crate) fn task(&self, t: usize) -> (usize, std::ops::Range<usize>, std::ops::Range<usize>) {
        let (p, r) = (t / self.row_blocks, t % self.row_blocks);
        let units = self.n.div_ceil(self.unit);
        let col = |p: usize| (units * p / self.panels * self.unit).min(self.n);
        let row = |r: usize| self.m * r / self.row_blocks;
        (p, col(p)..col(p + 1), row(r)..row(r + 1))
    }
}

/// A raw output pointer shared by tasks that write disjoint blocks.
#[derive(Clone, Copy)]
struct Dst(*mut f32);
// SAFETY: tasks write disjoint blocks of the output (see `gemm_panels`).
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

/// Where a panel's f32 weights come from.
pub(crate) enum Panel<'a> {
    /// Rows `o0..o1` of an f32 `[n, k]` weight, read in place.
    Borrowed(&'a [f32]),
    /// The rows were written into the thread's panel buffer.
    Decoded,
}

/// A thread's panel buffer and which call's panel it holds.
#[derive(Default)]
struct PanelBuf {
    values: Vec<f32>,
    /// `(call, panel)` whose decoded rows `values` holds.
    holds: Option<(u64, usize)>,
}

thread_local! {
    static PANEL: RefCell<PanelBuf> = RefCell::new(PanelBuf::default());
}

/// Numbers calls, so that a thread's buffer is known to hold this call's panel.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Returns `out[m, n] = x[m, k] @ w^T + bias`, where `fill(o0, o1, buf)` provides rows
/// `o0..o1` of the `[n, k]` weight: either borrowed (`Panel::Borrowed`) or written into `buf`
/// (`(o1 - o0) * k` elements, `Panel::Decoded`). `fill` is called at least once per panel and
/// at most once per task: a thread that runs consecutive row blocks of a decoded panel
/// decodes it once.
///
/// The output is allocated without being zeroed first (a prefill's outputs are 1-3 MiB each;
/// `vec![0.0; _]` cleared them on the calling thread while the pool waited): every task's
/// GEMM writes all of its block without reading it.
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
    let len = m.checked_mul(n).expect("the output's size overflows usize");
    let mut out = Vec::<f32>::with_capacity(len);
    let grid = Grid::new(m, n, k, rayon::current_num_threads());
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let dst = Dst(out.as_mut_ptr());
    let task = |t: usize| {
        let dst = dst;
        let (p, cols, rows) = grid.task(t);
        let (o0, o1) = (cols.start, cols.end);
        let width = o1 - o0;
        PANEL.with(|buf| {
            let mut buf = buf.borrow_mut();
            let buf = &mut *buf;
            if buf.values.len() < width * k {
                buf.values.resize(width * k, 0.0);
            }
            let w: &[f32] = if buf.holds == Some((call, p)) {
                &buf.values[..width * k]
            } else {
                buf.holds = None;
                match fill(o0, o1, &mut buf.values[..width * k]) {
                    Panel::Borrowed(rows) => rows,
                    Panel::Decoded => {
                        buf.holds = Some((call, p));
                        &buf.values[..width * k]
                    }
                }
            };
            assert!(w.len() >= width * k, "panel {o0}..{o1} is short");
            // SAFETY: `x` holds m x k, `w` holds width x k (row-major, so w^T has row stride 1
            // and column stride k), and this task alone writes columns o0..o1 of rows
            // `rows` of the m x n output.
            unsafe {
                gemm::gemm(
                    rows.len(),
                    width,
                    k,
                    dst.0.add(rows.start * n + o0),
                    1,
                    n as isize,
                    false,
                    x.as_ptr().add(rows.start * k),
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
                for r in rows {
                    // SAFETY: as above, columns o0..o1 of row r belong to this task.
                    let row =
                        unsafe { std::slice::from_raw_parts_mut(dst.0.add(r * n + o0), width) };
                    for (y, b) in row.iter_mut().zip(&bias[o0..o1]) {
                        *y += b;
                    }
                }
            }
        });
    };
    if grid.tasks() > 1 {
        (0..grid.tasks()).into_par_iter().for_each(task);
    } else {
        task(0);
    }
    // SAFETY: the tasks cover every row of columns 0..n, and each task's GEMM (`read_dst`
    // false) wrote its block.
    unsafe { out.set_len(len) };
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
    fn grids_cover_the_output_once_with_wide_panels_and_tall_blocks() {
        for (m, n, k, threads, unit) in [
            (1, 1, 1, 2, 16),
            (512, 768, 512, 2, 16),
            (512, 512, 1536, 2, 16),
            (512, 512, 1536, 2, 64),
            (512, 92544, 512, 16, 16),
            (512, 92544, 512, 16, 64),
            (100, 4096, 100, 4, 16),
            (300, 70, 64, 8, 16),
            (300, 70, 64, 8, 64),
            (512, 145, 512, 2, 16),
            (512, 300, 1536, 2, 64),
            (512, 177, 1024, 4, 16),
            (1000, 239, 2048, 3, 16),
            (1000, 1000, 2048, 3, 64),
            (2048, 1536, 512, 1, 16),
        ] {
            let grid = Grid::with_unit(m, n, k, threads, unit);
            let mut seen = vec![0u8; m * n];
            for t in 0..grid.tasks() {
                let (_, cols, rows) = grid.task(t);
                let width = cols.len();
                assert!(
                    width == n || (min_panel(unit)..=512 + unit).contains(&width),
                    "{m}x{n}x{k}/{unit}: panel {cols:?}"
                );
                assert!(cols.start % unit == 0, "{m}x{n}x{k}/{unit}: panel {cols:?}");
                // Every panel but the last is whole units.
                assert!(
                    cols.end == n || width % unit == 0,
                    "{m}x{n}x{k}/{unit}: panel {cols:?}"
                );
                assert!(
                    rows.len() == m || rows.len() >= MIN_ROWS,
                    "{m}x{n}x{k}: {rows:?}"
                );
                for r in rows {
                    for c in cols.clone() {
                        seen[r * n + c] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&v| v == 1), "{m}x{n}x{k}: {grid:?}");
        }
        // A small model's prefill shapes keep every thread of a large pool busy (panels alone
        // gave 4-12 tasks), and a 2-thread pool at least 4 tasks per thread.
        for unit in [16, 64] {
            for (n, k) in [(768, 512), (512, 512), (1536, 512), (512, 1536)] {
                let grid = |m, threads| Grid::with_unit(m, n, k, threads, unit);
                assert!(grid(2048, 16).tasks() >= 16, "{n} {k} / {unit}");
                assert!(grid(512, 2).tasks() >= 8, "{n} {k} / {unit}");
            }
        }
        // The down projection of the bench shape on an AVX-512 machine: four 128-wide panels
        // (not 80- and 96-wide ones, whose last 16 or 32 features took narrower kernels).
        let grid = Grid::with_unit(512, 512, 1536, 2, 64);
        let widths: Vec<usize> = (0..grid.tasks()).map(|t| grid.task(t).1.len()).collect();
        assert!(widths.iter().all(|&w| w == 128), "{widths:?}");
    }

    /// Calls of more than 16 rows (the only ones the prefill GEMM gets: fewer go to the skinny
    /// kernels) give every row the same bits whatever rows share the call and however it is
    /// split. (A 1-row call does not: `gemm` sums it in another order.)
    #[test]
    fn a_row_does_not_depend_on_how_the_call_is_split() {
        let (k, n) = (1536, 512);
        let x: Vec<f32> = (0..600 * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
            .collect();
        // Four pool threads, so that the 600-row call is split into row blocks on any machine.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        assert!(Grid::new(600, n, k, 4).row_blocks > 1);
        let all = pool.install(|| gemm_f32_weight(&x, 600, k, &w, n, None));
        for (start, rows) in [(0, 17), (5, 40), (300, 130), (583, 17), (0, 300)] {
            let part = pool.install(|| gemm_f32_weight(&x[start * k..], rows, k, &w, n, None));
            assert_eq!(
                part[..],
                all[start * n..(start + rows) * n],
                "rows {start}+{rows}"
            );
        }
    }

    #[test]
    fn decoded_panels_are_filled_once_per_thread_and_panel() {
        // One pool thread runs the tasks in order: one fill per panel (not per task), and a
        // second call (other values) must not reuse the first call's panels.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let (m, k, n) = (1024, 1024, 256);
        let grid = Grid::new(m, n, k, 1);
        // 3 x 2 with 16-wide units, 2 x 2 with 64-wide ones.
        assert!(grid.panels >= 2 && grid.row_blocks >= 2, "{grid:?}");
        let x = vec![1.0f32; m * k];
        for scale in [1.0f32, 3.0] {
            let fills = AtomicU64::new(0);
            let out = pool.install(|| {
                gemm_panels(&x, m, k, n, None, |o0, o1, buf| {
                    fills.fetch_add(1, Ordering::Relaxed);
                    assert_eq!(buf.len(), (o1 - o0) * k);
                    for (i, v) in buf.iter_mut().enumerate() {
                        *v = scale * (o0 + i / k) as f32;
                    }
                    Panel::Decoded
                })
            });
            assert_eq!(
                fills.load(Ordering::Relaxed),
                grid.panels as u64,
                "scale {scale}"
            );
            for r in [0, 511, 512, 1023] {
                for c in [0, 79, 80, 127, 128, 255] {
                    assert_eq!(out[r * n + c], scale * (c * k) as f32, "{r} {c}");
                }
            }
        }
    }
}

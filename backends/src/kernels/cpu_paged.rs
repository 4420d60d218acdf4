//! Fused paged attention for burn's Flex CPU backend (f32).
//!
//! One call serves every sequence of a packed batch (see [`PagedLayout`]):
//!
//! 1. the new keys and values are copied into their pool slots, in place when the pools are
//!    owned alone (the scheduler keeps them so; a shared pool takes the composite path, which
//!    copies);
//! 2. tasks of (sequence, KV head, block of queries) run across cores; each reads its
//!    sequence's keys and values straight from the pool through the block table, block by
//!    block, shares them between the `G` query heads of the KV head (never repeated), and
//!    computes scores, an f32 softmax and the weighted sum of values for its rows.
//!
//! Row invariance: a query row's result is computed from its query and keys `0..=` its slot
//! only, with the same order of operations whatever the other rows of the call, the size of
//! its query block or the way its sequence's prompt was chunked (dot products in fixed lanes,
//! the softmax over the row's visible keys, values accumulated key by key). A sequence
//! therefore gets bit-identical results alone or in any batch, which the serving engine relies
//! on. The arithmetic comes in two flavours, picked once per machine: AVX2 + FMA (8-lane
//! fused multiply-adds, when the CPU has them and the head size is a multiple of 8) and
//! portable Rust (separate multiplies and adds); they differ in the last bits only.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use super::{PagedAttentionOutput, PagedLayout, composite};

/// Multiply-adds below which the call stays on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;

/// Score entries per task (1 MiB of f32).
const SCORE_BUDGET: usize = 1 << 18;

/// Queries per task before the score budget shrinks it.
const QUERY_BLOCK: usize = 32;

fn primitive<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    t.into_primitive().tensor()
}

fn tensor<const D: usize>(t: FlexTensor) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// A strided `[1, heads, tokens, d]` f32 view whose innermost stride is 1.
struct Rows<'a> {
    data: &'a [f32],
    offset: usize,
    head_stride: usize,
    token_stride: usize,
    d: usize,
}

impl<'a> Rows<'a> {
    fn new(t: &'a FlexTensor) -> Option<Self> {
        let layout = t.layout();
        let s = layout.strides();
        let d = *layout.shape().last()?;
        if s.len() != 4 || s[3] != 1 || s.iter().any(|&x| x < 0) {
            return None;
        }
        Some(Self {
            data: t.storage::<f32>(),
            offset: layout.start_offset(),
            head_stride: s[1] as usize,
            token_stride: s[2] as usize,
            d,
        })
    }

    #[inline]
    fn row(&self, head: usize, token: usize) -> &'a [f32] {
        let start = self.offset + head * self.head_stride + token * self.token_stride;
        &self.data[start..start + self.d]
    }
}

/// A view usable by [`Rows`], copied to contiguous memory only if it is not.
fn viewable(t: FlexTensor) -> FlexTensor {
    if Rows::new(&t).is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// Whether the pool can be written in place: contiguous from offset 0 and not shared.
fn writable(t: &FlexTensor) -> bool {
    let layout = t.layout();
    layout.is_contiguous() && layout.start_offset() == 0 && t.is_unique()
}

/// The arithmetic of a task, in one flavour: portable, or AVX2 + FMA (picked at run time).
/// Each flavour fixes its own order of operations per output element, so a row's result
/// depends on its inputs only (see the module docs); the two flavours may differ in the last
/// bits, and a machine always uses the same one.
trait Math {
    /// `sum(a[i] * b[i])`.
    fn dot(a: &[f32], b: &[f32]) -> f32;
    /// `out = sum_j p[j] * v_j` over `j < p.len()`, keys in order.
    fn weighted_sum<'v>(out: &mut [f32], p: &[f32], value: impl Fn(usize) -> &'v [f32]);
}

/// Plain Rust: eight fixed lanes, separate multiplies and adds.
struct Portable;

impl Math for Portable {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut lanes = [0f32; 8];
        let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
        let (at, bt) = (ac.remainder(), bc.remainder());
        for (x, y) in ac.zip(bc) {
            for l in 0..8 {
                lanes[l] += x[l] * y[l];
            }
        }
        let mut sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
            + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
        for (x, y) in at.iter().zip(bt) {
            sum += x * y;
        }
        sum
    }

    #[inline(always)]
    fn weighted_sum<'v>(out: &mut [f32], p: &[f32], value: impl Fn(usize) -> &'v [f32]) {
        out.fill(0.0);
        for (j, &w) in p.iter().enumerate() {
            for (o, x) in out.iter_mut().zip(value(j)) {
                *o += w * x;
            }
        }
    }
}

/// AVX2 + FMA, 8 lanes; only used when the CPU has both and `d` is a multiple of 8.
#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Math for Avx2 {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        debug_assert!(a.len() % 8 == 0 && a.len() == b.len());
        // SAFETY: only reached from a function with avx2 and fma enabled (see `run_avx2`);
        // loads stay inside the slices.
        unsafe {
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i + 16 <= a.len() {
                a0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    a0,
                );
                a1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                    _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                    a1,
                );
                i += 16;
            }
            if i < a.len() {
                a0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    a0,
                );
            }
            hsum(_mm256_add_ps(a0, a1))
        }
    }

    #[inline(always)]
    fn weighted_sum<'v>(out: &mut [f32], p: &[f32], value: impl Fn(usize) -> &'v [f32]) {
        use std::arch::x86_64::*;
        debug_assert!(out.len() % 8 == 0);
        // SAFETY: as in `dot`; every value row has `out.len()` elements.
        unsafe {
            // 64 outputs (8 registers) at a time, keys in order inside.
            for c0 in (0..out.len()).step_by(64) {
                let width = (out.len() - c0).min(64) / 8;
                let mut acc = [_mm256_setzero_ps(); 8];
                for (j, &w) in p.iter().enumerate() {
                    let wv = _mm256_set1_ps(w);
                    let v = value(j).as_ptr().add(c0);
                    for (l, a) in acc.iter_mut().enumerate().take(width) {
                        *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(v.add(8 * l)), *a);
                    }
                }
                for (l, a) in acc.iter().enumerate().take(width) {
                    _mm256_storeu_ps(out.as_mut_ptr().add(c0 + 8 * l), *a);
                }
            }
        }
    }
}

/// Sum of the 8 lanes, in a fixed order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    unsafe {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
    }
}

/// Row `j` of a sequence (block table `blocks`) for one KV head, read from a
/// `[blocks, kv_heads, block_size, d]` pool.
#[inline]
fn slot_row<'a>(
    pool: &'a [f32],
    blocks: &[u32],
    [bs, nkv, d]: [usize; 3],
    kv_head: usize,
    j: usize,
) -> &'a [f32] {
    let (block, row) = (blocks[j / bs] as usize, j % bs);
    let at = ((block * nkv + kv_head) * bs + row) * d;
    &pool[at..at + d]
}

/// A raw output pointer shared by tasks that write disjoint rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of output rows (its own heads and queries).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// What every task of a call reads, and where it writes.
struct Ctx<'a> {
    layout: &'a PagedLayout,
    offsets: &'a [usize],
    queries: Rows<'a>,
    keys: &'a [f32],
    values: &'a [f32],
    /// Query heads per KV head.
    g: usize,
    /// `[block_size, kv_heads, head_dim]`.
    dims: [usize; 3],
    tokens: usize,
    scale: f32,
    out: OutPtr,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2(ctx: &Ctx<'_>, task: &Task) {
    run_task::<Avx2>(ctx, task);
}

/// One task: scores of its queries against every key they see, softmax, weighted values.
#[inline(always)]
fn run_task<M: Math>(ctx: &Ctx<'_>, task: &Task) {
    let [bs, nkv, d] = ctx.dims;
    let g = ctx.g;
    let seq = &ctx.layout.sequences[task.seq];
    let offset = ctx.offsets[task.seq];
    let rows = task.q1 - task.q0;
    let first_slot = seq.past + task.q0; // slot of the task's first query
    let t_end = seq.past + task.q1; // keys visible to its last query
    let key = |pool, j| slot_row(pool, &seq.blocks, [bs, nkv, d], task.kv_head, j);
    // scores[(gi * rows + r) * t_end + j]; row r sees keys 0..=first_slot + r.
    let mut scores = vec![0f32; g * rows * t_end];
    let queries: Vec<&[f32]> = (0..g * rows)
        .map(|i| {
            ctx.queries
                .row(task.kv_head * g + i / rows, offset + task.q0 + i % rows)
        })
        .collect();
    for j in 0..t_end {
        let kj = key(ctx.keys, j);
        let r0 = j.saturating_sub(first_slot);
        for gi in 0..g {
            for r in r0..rows {
                let i = gi * rows + r;
                scores[i * t_end + j] = M::dot(queries[i], kj) * ctx.scale;
            }
        }
    }
    for (i, row) in scores.chunks_mut(t_end).enumerate() {
        let visible = &mut row[..first_slot + i % rows + 1];
        let max = visible.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let inv = 1.0 / super::cpu_simd::exp_sub_sum(visible, max);
        visible.iter_mut().for_each(|x| *x *= inv);
        let head = task.kv_head * g + i / rows;
        let token = offset + task.q0 + i % rows;
        // SAFETY: this task alone writes rows q0..q1 of its G heads.
        let out = unsafe {
            std::slice::from_raw_parts_mut(ctx.out.0.add((head * ctx.tokens + token) * d), d)
        };
        M::weighted_sum(out, visible, |j| key(ctx.values, j));
    }
}

/// One task: rows `q0..q1` of sequence `seq`, query heads of KV head `kv_head`.
#[derive(Debug, Clone, Copy)]
struct Task {
    seq: usize,
    kv_head: usize,
    q0: usize,
    q1: usize,
}

/// See [`super::Kernels::paged_attention`].
pub fn paged_attention(
    q: Tensor<Flex, 4>,
    k: Tensor<Flex, 4>,
    v: Tensor<Flex, 4>,
    key_pool: Tensor<Flex, 4>,
    value_pool: Tensor<Flex, 4>,
    layout: &PagedLayout,
) -> PagedAttentionOutput<Flex> {
    let [_, nh, tokens, d] = q.dims();
    let [blocks, nkv, bs, _] = key_pool.dims();
    if let Err(e) = layout.check(blocks, tokens) {
        panic!("paged attention layout: {e}");
    }
    let f32s = [&q, &k, &v, &key_pool, &value_pool]
        .iter()
        .all(|t| t.dtype() == DType::F32);
    let (kp, vp) = (primitive(key_pool), primitive(value_pool));
    if !f32s || bs != layout.block_size || !writable(&kp) || !writable(&vp) {
        return composite::paged_attention(q, k, v, tensor(kp), tensor(vp), layout);
    }
    let (mut kp, mut vp) = (kp, vp);
    let offsets = layout.offsets();

    // 1. The new keys and values into their slots.
    let (kn, vn) = (viewable(primitive(k)), viewable(primitive(v)));
    let (kn, vn) = (
        Rows::new(&kn).expect("viewable"),
        Rows::new(&vn).expect("viewable"),
    );
    for (pool, new) in [(&mut kp, &kn), (&mut vp, &vn)] {
        let dst = pool.try_storage_mut::<f32>().expect("checked writable");
        for (si, (seq, &offset)) in layout.sequences.iter().zip(&offsets).enumerate() {
            for t in 0..seq.len {
                let (block, row) = layout.slot(si, seq.past + t);
                for h in 0..nkv {
                    let at = ((block * nkv + h) * bs + row) * d;
                    dst[at..at + d].copy_from_slice(new.row(h, offset + t));
                }
            }
        }
    }

    // 2. Attention, task by task.
    let qp = viewable(primitive(q));
    let qv = Rows::new(&qp).expect("viewable");
    let (keys, values) = (kp.storage::<f32>(), vp.storage::<f32>());
    let g = nh / nkv;
    let scale = 1.0 / (d as f32).sqrt();
    let mut tasks = Vec::new();
    let mut work = 0usize;
    for (si, seq) in layout.sequences.iter().enumerate() {
        if seq.len == 0 {
            continue;
        }
        let t = seq.past + seq.len;
        let block = QUERY_BLOCK.min((SCORE_BUDGET / (g * t)).max(1));
        for kv_head in 0..nkv {
            for q0 in (0..seq.len).step_by(block) {
                tasks.push(Task {
                    seq: si,
                    kv_head,
                    q0,
                    q1: (q0 + block).min(seq.len),
                });
            }
        }
        work = work.saturating_add(g * nkv * seq.len * t * d);
    }
    let mut out = vec![0f32; nh * tokens * d];
    let ctx = Ctx {
        layout,
        offsets: &offsets,
        queries: qv,
        keys,
        values,
        g,
        dims: [bs, nkv, d],
        tokens,
        scale,
        out: OutPtr(out.as_mut_ptr()),
    };
    #[cfg(target_arch = "x86_64")]
    let avx2 = d % 8 == 0
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;
    let run = |task: &Task| {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the features were detected above.
            unsafe { run_avx2(&ctx, task) };
            return;
        }
        run_task::<Portable>(&ctx, task);
    };
    if tasks.len() > 1 && work >= PARALLEL_MIN {
        tasks.par_iter().for_each(run);
    } else {
        tasks.iter().for_each(run);
    }
    drop(qp);
    PagedAttentionOutput {
        output: tensor(FlexTensor::from_data(TensorData::new(
            out,
            [1, nh, tokens, d],
        ))),
        key_pool: tensor(kp),
        value_pool: tensor(vp),
    }
}

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
//! on. The arithmetic comes in three flavours, picked once per machine: AVX-512 (16-lane
//! fused multiply-adds, scores 16 keys at a time, when the CPU has it and the head size is a
//! multiple of 16), AVX2 + FMA (8-lane, when the head size is a multiple of 8) and portable
//! Rust (separate multiplies and adds); they differ in the last bits only.

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
    /// `out[l] = dot(q, keys[l]) * scale` for the (at most 16) keys of a group whose first
    /// key index is a multiple of 16. A flavour may compute the group at once, but each
    /// element's operations depend only on `q`, its key and its position in the group.
    #[inline(always)]
    fn dot_many(q: &[f32], keys: &[&[f32]], scale: f32, out: &mut [f32]) {
        for (o, k) in out.iter_mut().zip(keys) {
            *o = Self::dot(q, k) * scale;
        }
    }
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

/// AVX-512, 16 lanes; only used when the CPU has it and `d` is a multiple of 16. Scores come
/// 16 keys at a time: one 16-lane FMA chain over `d` per key, then one transposing reduction
/// that sums each key's lanes (the same tree for every key position) into a single register.
#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Math for Avx512 {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut out = [0f32];
        Self::dot_many(a, &[b], 1.0, &mut out);
        out[0]
    }

    #[inline(always)]
    fn dot_many(q: &[f32], keys: &[&[f32]], scale: f32, out: &mut [f32]) {
        use std::arch::x86_64::*;
        debug_assert!(q.len() % 16 == 0 && keys.len() <= 16 && out.len() == keys.len());
        // SAFETY: only reached from a function with avx512f enabled (see `run_avx512`);
        // every key has q.len() elements; the store is masked to out.len() lanes.
        unsafe {
            // Always 16 chains (a fixed, unrolled loop that keeps them in registers): the
            // missing keys of a short group repeat its first key, and are not stored.
            let mut ptrs = [keys[0].as_ptr(); 16];
            for (p, k) in ptrs.iter_mut().zip(keys) {
                *p = k.as_ptr();
            }
            let mut acc = [_mm512_setzero_ps(); 16];
            let mut c = 0;
            while c < q.len() {
                let qv = _mm512_loadu_ps(q.as_ptr().add(c));
                for l in 0..16 {
                    acc[l] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(ptrs[l].add(c)), acc[l]);
                }
                c += 16;
            }
            let sums = _mm512_mul_ps(reduce16(&acc), _mm512_set1_ps(scale));
            let mask = (((1u32 << out.len()) - 1) & 0xffff) as u16;
            _mm512_mask_storeu_ps(out.as_mut_ptr(), mask, sums);
        }
    }

    #[inline(always)]
    fn weighted_sum<'v>(out: &mut [f32], p: &[f32], value: impl Fn(usize) -> &'v [f32]) {
        debug_assert!(out.len() % 16 == 0);
        // SAFETY: as in `dot_many`; every value row has `out.len()` elements.
        unsafe {
            // 64 outputs (4 registers) at a time, then 16 at a time; keys in order inside.
            let mut c0 = 0;
            while c0 + 64 <= out.len() {
                weighted_chunk::<4>(out, c0, p, &value);
                c0 += 64;
            }
            while c0 < out.len() {
                weighted_chunk::<1>(out, c0, p, &value);
                c0 += 16;
            }
        }
    }
}

/// `out[c0..c0 + 16 W] = sum_j p[j] * value(j)[c0..c0 + 16 W]`, keys in order.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weighted_chunk<'v, const W: usize>(
    out: &mut [f32],
    c0: usize,
    p: &[f32],
    value: &impl Fn(usize) -> &'v [f32],
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller (with avx512f enabled) keeps c0 + 16 W <= out.len(), and every value
    // row has out.len() elements.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); W];
        for (j, &w) in p.iter().enumerate() {
            let wv = _mm512_set1_ps(w);
            let v = value(j).as_ptr().add(c0);
            for (l, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(v.add(16 * l)), *a);
            }
        }
        for (l, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(c0 + 16 * l), *a);
        }
    }
}

/// Lane `l` of the result is the sum of the 16 lanes of `v[l]`, by the same tree for every
/// `l`: pairs of lanes within 128-bit quarters, then pairs of pairs, then the four quarters.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn reduce16(v: &[std::arch::x86_64::__m512; 16]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    unsafe {
        // Level 1: [a0+a2, b0+b2, a1+a3, b1+b3] per quarter, for the pairs (a, b).
        let mut l1 = [_mm512_setzero_ps(); 8];
        for (i, x) in l1.iter_mut().enumerate() {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            *x = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        }
        // Level 2: [a, b, c, d] quarter sums, for the quadruples (a, b, c, d).
        let mut l2 = [_mm512_setzero_ps(); 4];
        for (i, x) in l2.iter_mut().enumerate() {
            let (a, b) = (_mm512_castps_pd(l1[2 * i]), _mm512_castps_pd(l1[2 * i + 1]));
            *x = _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
            );
        }
        // Level 3: quarters 0 + 1 and 2 + 3 of two quadruples side by side.
        let pair = |x: __m512, y: __m512| {
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
            )
        };
        let (w0, w1) = (pair(l2[0], l2[1]), pair(l2[2], l2[3]));
        // Level 4: the two halves of each quadruple's sum; quarter i holds vectors 4i..4i+4.
        pair(w0, w1)
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_avx512(ctx: &Ctx<'_>, task: &Task) {
    run_task::<Avx512>(ctx, task);
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
    // Every key and value row the task reads, looked up in the block table once (not once
    // per query row: a division and two loads per key otherwise).
    let rows_of = |pool| -> Vec<&[f32]> {
        (0..t_end)
            .map(|j| slot_row(pool, &seq.blocks, [bs, nkv, d], task.kv_head, j))
            .collect()
    };
    let (key_rows, value_rows) = (rows_of(ctx.keys), rows_of(ctx.values));
    // scores[(gi * rows + r) * t_end + j]; row r sees keys 0..=first_slot + r.
    let mut scores = vec![0f32; g * rows * t_end];
    let queries: Vec<&[f32]> = (0..g * rows)
        .map(|i| {
            ctx.queries
                .row(task.kv_head * g + i / rows, offset + task.q0 + i % rows)
        })
        .collect();
    // Keys in groups of 16 from key 0, so a key's place in its group never depends on the
    // task; a group's keys no query of the task sees are skipped, the rest computed for
    // every query that sees its first key (scores past a row's last visible key are unused).
    let mut group: [&[f32]; 16] = [&[]; 16];
    for j0 in (0..t_end).step_by(16) {
        let n = (t_end - j0).min(16);
        for (l, slot) in group.iter_mut().enumerate().take(n) {
            *slot = key_rows[j0 + l];
        }
        let r0 = j0.saturating_sub(first_slot);
        for gi in 0..g {
            for r in r0..rows {
                let i = gi * rows + r;
                let at = i * t_end + j0;
                M::dot_many(queries[i], &group[..n], ctx.scale, &mut scores[at..at + n]);
            }
        }
    }
    for (i, row) in scores.chunks_mut(t_end).enumerate() {
        let visible = &mut row[..first_slot + i % rows + 1];
        let max = super::cpu_simd::max_of(visible, f32::NEG_INFINITY);
        let inv = 1.0 / super::cpu_simd::exp_sub_sum(visible, max);
        visible.iter_mut().for_each(|x| *x *= inv);
        let head = task.kv_head * g + i / rows;
        let token = offset + task.q0 + i % rows;
        // SAFETY: this task alone writes rows q0..q1 of its G heads.
        let out = unsafe {
            std::slice::from_raw_parts_mut(ctx.out.0.add((head * ctx.tokens + token) * d), d)
        };
        M::weighted_sum(out, visible, |j| value_rows[j]);
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
    #[cfg(target_arch = "x86_64")]
    let avx512 = d % 16 == 0 && super::cpu_quant_avx512::available();
    let run = |task: &Task| {
        #[cfg(target_arch = "x86_64")]
        if avx512 {
            // SAFETY: the features were detected (`available` checks AVX-512 F and FMA).
            unsafe { run_avx512(&ctx, task) };
            return;
        }
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

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
//! its query block or the way its sequence's prompt was chunked (dot products in eight fixed
//! lanes, separate multiplies and adds, values accumulated key by key). A sequence therefore
//! gets bit-identical results alone or in any batch, which the serving engine relies on.

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

/// `sum(a[i] * b[i])` in eight fixed lanes (then a fixed tree and the tail), separate
/// multiplies and adds: the same bits on every x86-64 CPU and in every call.
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

/// `acc[i] += w * v[i]`.
#[inline(always)]
fn axpy(acc: &mut [f32], w: f32, v: &[f32]) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a += w * x;
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
    let out_ptr = OutPtr(out.as_mut_ptr());
    let run = |task: &Task| {
        let out_ptr = out_ptr;
        let seq = &layout.sequences[task.seq];
        let offset = offsets[task.seq];
        let rows = task.q1 - task.q0;
        let first_slot = seq.past + task.q0; // slot of the task's first query
        let t_end = seq.past + task.q1; // keys visible to its last query
        let key = |pool, j| slot_row(pool, &seq.blocks, [bs, nkv, d], task.kv_head, j);
        // scores[(gi * rows + r) * t_end + j]; row r sees keys 0..=first_slot + r.
        let mut scores = vec![0f32; g * rows * t_end];
        let queries: Vec<&[f32]> = (0..g * rows)
            .map(|i| qv.row(task.kv_head * g + i / rows, offset + task.q0 + i % rows))
            .collect();
        for j in 0..t_end {
            let kj = key(keys, j);
            let r0 = j.saturating_sub(first_slot);
            for gi in 0..g {
                for r in r0..rows {
                    let i = gi * rows + r;
                    scores[i * t_end + j] = dot(queries[i], kj) * scale;
                }
            }
        }
        for (i, row) in scores.chunks_mut(t_end).enumerate() {
            let visible = &mut row[..first_slot + i % rows + 1];
            let max = visible.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut sum = 0f32;
            for x in visible.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            visible.iter_mut().for_each(|x| *x *= inv);
        }
        let out_row = |i: usize| {
            let head = task.kv_head * g + i / rows;
            let token = offset + task.q0 + i % rows;
            // SAFETY: this task alone writes rows q0..q1 of its G heads.
            unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add((head * tokens + token) * d), d) }
        };
        let mut outs: Vec<&mut [f32]> = (0..g * rows).map(out_row).collect();
        for j in 0..t_end {
            let vj = key(values, j);
            let r0 = j.saturating_sub(first_slot);
            for gi in 0..g {
                for r in r0..rows {
                    let i = gi * rows + r;
                    axpy(outs[i], scores[i * t_end + j], vj);
                }
            }
        }
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

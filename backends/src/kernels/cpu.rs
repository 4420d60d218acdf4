//! Fused f32 kernels for burn's Flex CPU backend.
//!
//! Each kernel reads the Flex buffers directly, does the whole operation in one pass over
//! memory and runs across cores with rayon:
//!
//! - RMSNorm and residual-add + RMSNorm: one pass per row.
//! - RoPE: reads the strided `[b, h, s, d]` view the QKV split produces, writes contiguous.
//! - SwiGLU: `silu(gate) * up` in one pass.
//! - Causal GQA attention: per (batch, KV head, block of queries), the `G` query heads of the
//!   KV head stacked into one block that meets the keys and values (never repeated) in two
//!   GEMMs from the `gemm` crate (the one Flex uses), scores only up to the causal bound of
//!   the block, softmax in place, in per-thread scratch buffers.
//!
//! Inputs in another dtype, or shapes a kernel does not cover, take the
//! [`composite`](super::composite) path.

use std::mem::MaybeUninit;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use rayon::prelude::*;

use super::{AttentionMask, composite};

/// Elements below which a kernel stays on the calling thread.
const PARALLEL_MIN: usize = 1 << 15;

/// Score-matrix budget per attention task, in f32 elements (8 MiB).
const SCORE_BUDGET: usize = 1 << 21;

/// Queries per attention task before the score budget shrinks it.
const QUERY_BLOCK: usize = 64;

pub(crate) fn primitive<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    t.into_primitive().tensor()
}

pub(crate) fn wrap<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<Flex, D> {
    // Every fused CPU kernel's output passes here: from the first one on, freed activation
    // buffers stay in the process (see `crate::memory`).
    crate::memory::keep_freed_memory();
    Tensor::from_primitive(TensorPrimitive::Float(FlexTensor::from_data(
        TensorData::new(values, shape),
    )))
}

/// The f32 elements of a tensor in row-major order (copied only if not contiguous).
pub(crate) fn contiguous(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(
            t.to_contiguous()
                .as_slice::<f32>()
                .expect("contiguous")
                .to_vec(),
        ),
    }
}

/// A strided 4-D f32 view whose innermost stride is 1.
struct View4<'a> {
    data: &'a [f32],
    offset: usize,
    strides: [usize; 3],
}

impl<'a> View4<'a> {
    /// `None` when the layout has negative or non-unit inner strides.
    fn new(t: &'a FlexTensor) -> Option<Self> {
        let layout = t.layout();
        let s = layout.strides();
        if s.len() != 4 || s[3] != 1 || s.iter().any(|&x| x < 0) {
            return None;
        }
        Some(Self {
            data: t.storage::<f32>(),
            offset: layout.start_offset(),
            strides: [s[0] as usize, s[1] as usize, s[2] as usize],
        })
    }

    #[inline]
    fn row(&self, i: usize, j: usize, k: usize, len: usize) -> &'a [f32] {
        let start = self.offset + i * self.strides[0] + j * self.strides[1] + k * self.strides[2];
        &self.data[start..start + len]
    }

    #[inline]
    fn ptr(&self, i: usize, j: usize, k: usize) -> *const f32 {
        let start = self.offset + i * self.strides[0] + j * self.strides[1] + k * self.strides[2];
        self.data[start..].as_ptr()
    }
}

/// `N` buffers of `lens` values that `fill` writes in full, allocated without being cleared:
/// the kernels that compute every value of their outputs (norms, the QKV split, RoPE, SwiGLU,
/// attention) cleared 1-3 MiB per call first (glibc clears the reused memory it returns; on
/// the pool that was still 2% of a 512-token prefill's time).
///
/// # Safety
/// `fill` must write every element of every slice it is given before returning.
unsafe fn written<const N: usize>(
    lens: [usize; N],
    fill: impl FnOnce([&mut [MaybeUninit<f32>]; N]),
) -> [Vec<f32>; N] {
    let mut outs = lens.map(Vec::with_capacity);
    let mut i = 0;
    fill(outs.each_mut().map(|out| {
        let slots = &mut out.spare_capacity_mut()[..lens[i]];
        i += 1;
        slots
    }));
    for (out, len) in outs.iter_mut().zip(lens) {
        // SAFETY: the caller's `fill` wrote the first `len` elements of the capacity.
        unsafe { out.set_len(len) };
    }
    outs
}

/// `out = x * rsqrt(mean(x^2) + eps) * w` for one row (`out`, `x` and `w` of one length).
#[inline]
fn rms_row(x: &[f32], w: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
    debug_assert!(x.len() == out.len() && w.len() == out.len());
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i] * c[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    sum += rest.iter().map(|v| v * v).sum::<f32>();
    let r = 1.0 / (sum / x.len() as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        o.write(v * r * g);
    }
}

/// Runs `f(i, row)` for every row `i` of `out` (rows of `width` values), on the pool when the
/// call is large.
fn for_rows<T: Send>(out: &mut [T], width: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let work = out.len();
    for_rows_of([out], [width], work, |i, [row]| f(i, row));
}

/// Runs `f(i, parts)` for every row `i`, where `parts[j]` is row `i` of `outs[j]` (rows of
/// `widths[j]` values; as many rows as the shortest of `outs` holds), on the pool when `work`
/// (values the call touches) reaches [`PARALLEL_MIN`], else on the calling thread.
fn for_rows_of<T: Send, const N: usize>(
    outs: [&mut [T]; N],
    widths: [usize; N],
    work: usize,
    f: impl Fn(usize, [&mut [T]; N]) + Sync,
) {
    if N == 0 {
        return;
    }
    let mut j = 0;
    let mut chunks = outs.map(|o| {
        let width = widths[j].max(1);
        j += 1;
        o.chunks_mut(width)
    });
    let items: Vec<[&mut [T]; N]> = std::iter::repeat(())
        .map_while(|_| {
            let parts = chunks.each_mut().map(Iterator::next);
            let whole = parts.iter().all(Option::is_some);
            whole.then(|| parts.map(Option::unwrap_or_default))
        })
        .collect();
    if work >= PARALLEL_MIN && items.len() > 1 {
        items
            .into_par_iter()
            .enumerate()
            .for_each(|(i, parts)| f(i, parts));
    } else {
        items
            .into_iter()
            .enumerate()
            .for_each(|(i, parts)| f(i, parts));
    }
}

/// See [`super::Kernels::rms_norm`].
pub fn rms_norm(x: Tensor<Flex, 3>, weight: Tensor<Flex, 1>, eps: f64) -> Tensor<Flex, 3> {
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return composite::rms_norm(x, weight, eps);
    }
    let dims = x.dims();
    let h = dims[2];
    if weight.dims()[0] != h {
        return composite::rms_norm(x, weight, eps);
    }
    let (x, w) = (primitive(x), primitive(weight));
    let (x, w) = (contiguous(&x), contiguous(&w));
    // SAFETY: the rows of `h` values cover the buffer and `rms_row` writes each of them
    // (`x`'s rows and `w` are `h` long).
    let [out] = unsafe {
        written([x.len()], |[out]| {
            for_rows(out, h, |i, row| {
                rms_row(&x[i * h..(i + 1) * h], &w, eps as f32, row)
            })
        })
    };
    wrap(out, dims)
}

/// See [`super::Kernels::add_rms_norm`].
pub fn add_rms_norm(
    x: Tensor<Flex, 3>,
    residual: Tensor<Flex, 3>,
    weight: Tensor<Flex, 1>,
    eps: f64,
) -> (Tensor<Flex, 3>, Tensor<Flex, 3>) {
    if x.dtype() != DType::F32 || residual.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return composite::add_rms_norm(x, residual, weight, eps);
    }
    let dims = x.dims();
    let h = dims[2];
    if residual.dims() != dims || weight.dims()[0] != h {
        return composite::add_rms_norm(x, residual, weight, eps);
    }
    let (x, r, w) = (primitive(x), primitive(residual), primitive(weight));
    let (x, r, w) = (contiguous(&x), contiguous(&r), contiguous(&w));
    let work = x.len();
    let fill = |outs: [&mut [MaybeUninit<f32>]; 2]| {
        for_rows_of(outs, [h, h], work, |i, [s, n]| {
            let (x, r) = (&x[i * h..(i + 1) * h], &r[i * h..(i + 1) * h]);
            for ((s, a), b) in s.iter_mut().zip(x).zip(r) {
                s.write(a + b);
            }
            // SAFETY: the loop above wrote every value of `s`.
            let s = unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) };
            rms_row(s, &w, eps as f32, n)
        });
    };
    // SAFETY: the rows of `h` values cover both buffers (`x`, `r` and `w` have the shapes
    // checked above), and each row of `sum` and of `normed` is written in full.
    let [sum, normed] = unsafe { written([work, work], fill) };
    (wrap(sum, dims), wrap(normed, dims))
}

/// Writes `src` into `dst` (of the same length).
fn copy_into(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    // SAFETY: both hold `src.len()` values and a `&mut` slot cannot overlap a `&` slice.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast(), src.len()) };
}

/// See [`super::Kernels::split_qkv`]. burn-flex's reshape copies any non-contiguous view on
/// the calling thread alone (the composite path gathers the query heads, and the key and value
/// heads, that way); this copies each token's heads on the pool, into `[batch, seq, heads,
/// head_dim]` memory returned as `[batch, heads, seq, head_dim]` views (RoPE, attention and
/// the cache write read strided views).
pub fn split_qkv(
    qkv: Tensor<Flex, 3>,
    heads: usize,
    kv_heads: usize,
) -> (Tensor<Flex, 4>, Tensor<Flex, 4>, Tensor<Flex, 4>) {
    let [b, s, width] = qkv.dims();
    let d = composite::qkv_head_dim(width, heads, kv_heads);
    // (No query heads would leave no rows for the loop below to write keys and values in.)
    if qkv.dtype() != DType::F32 || d == 0 || b * s == 0 || heads == 0 {
        return composite::split_qkv(qkv, heads, kv_heads);
    }
    let g = heads / kv_heads;
    let xp = primitive(qkv);
    let x = contiguous(&xp);
    let (qw, kw) = (heads * d, kv_heads * d);
    let rows = b * s;
    let work = x.len();
    // SAFETY: `qkv_head_dim` checked that `width` is `kv_heads` groups of `g` query heads, a
    // key head and a value head of `d` values (`heads = g * kv_heads`), so each row's
    // `kv_heads` groups write all `qw`, `kw` and `kw` values of its rows of `q`, `k` and `v`,
    // and the `rows` rows cover the three buffers.
    let [q, k, v] = unsafe {
        written([rows * qw, rows * kw, rows * kw], |outs| {
            for_rows_of(outs, [qw, kw, kw], work, |row, [q, k, v]| {
                let src = &x[row * width..(row + 1) * width];
                for (h, part) in src.chunks_exact((g + 2) * d).enumerate() {
                    copy_into(&mut q[h * g * d..(h + 1) * g * d], &part[..g * d]);
                    copy_into(&mut k[h * d..(h + 1) * d], &part[g * d..(g + 1) * d]);
                    copy_into(&mut v[h * d..(h + 1) * d], &part[(g + 1) * d..]);
                }
            });
        })
    };
    (
        wrap(q, [b, s, heads, d]).swap_dims(1, 2),
        wrap(k, [b, s, kv_heads, d]).swap_dims(1, 2),
        wrap(v, [b, s, kv_heads, d]).swap_dims(1, 2),
    )
}

/// See [`super::Kernels::rope`].
pub fn rope(x: Tensor<Flex, 4>, cos: Tensor<Flex, 3>, sin: Tensor<Flex, 3>) -> Tensor<Flex, 4> {
    if x.dtype() != DType::F32 || cos.dtype() != DType::F32 || sin.dtype() != DType::F32 {
        return composite::rope(x, cos, sin);
    }
    let [b, h, s, d] = x.dims();
    if d % 2 != 0 {
        return composite::rope(x, cos, sin);
    }
    let xp = primitive(x);
    let Some(view) = View4::new(&xp) else {
        return composite::rope(Tensor::from_primitive(TensorPrimitive::Float(xp)), cos, sin);
    };
    let (cos, sin) = (primitive(cos), primitive(sin));
    let (cos, sin) = (contiguous(&cos), contiguous(&sin));
    let half = d / 2;
    // SAFETY: the rows of `d` values cover the buffer, and with `d` even the loop writes
    // values `0..half` and `half..d` of each.
    let [out] = unsafe {
        written([b * h * s * d], |[out]| {
            for_rows(out, d, |row, o| {
                let (bi, rest) = (row / (h * s), row % (h * s));
                let (hi, si) = (rest / s, rest % s);
                let x = view.row(bi, hi, si, d);
                let t = (bi * s + si) * d;
                let (c, sn) = (&cos[t..t + d], &sin[t..t + d]);
                for i in 0..half {
                    o[i].write(x[i] * c[i] - x[i + half] * sn[i]);
                    o[i + half].write(x[i + half] * c[i + half] + x[i] * sn[i + half]);
                }
            })
        })
    };
    wrap(out, [b, h, s, d])
}

/// See [`super::Kernels::swiglu`].
pub fn swiglu(gate: Tensor<Flex, 3>, up: Tensor<Flex, 3>) -> Tensor<Flex, 3> {
    if gate.dtype() != DType::F32 || up.dtype() != DType::F32 {
        return composite::swiglu(gate, up);
    }
    let dims = gate.dims();
    if up.dims() != dims {
        return composite::swiglu(gate, up);
    }
    let (g, u) = (primitive(gate), primitive(up));
    let (g, u) = (contiguous(&g), contiguous(&u));
    let width = dims[2];
    // SAFETY: the rows of `width` values cover the buffer and `silu_mul` writes every value
    // of each (its inputs are as long).
    let [out] = unsafe {
        written([g.len()], |[out]| {
            for_rows(out, width, |i, row| {
                let (g, u) = (
                    &g[i * width..(i + 1) * width],
                    &u[i * width..(i + 1) * width],
                );
                super::cpu_simd::silu_mul(g, u, row);
            })
        })
    };
    wrap(out, dims)
}

/// See [`super::Kernels::cache_write`]. burn-flex 0.21's `slice_assign` always copies the
/// whole destination (it keeps a second handle to the buffer while asking for mutable
/// storage), which would make every decoding step copy the entire KV cache; this writes the
/// new rows into the buffer itself when nobody else holds it.
pub fn cache_write(
    buffer: Tensor<Flex, 4>,
    values: Tensor<Flex, 4>,
    start: usize,
) -> Tensor<Flex, 4> {
    let [b, h, cap, d] = buffer.dims();
    let [vb, vh, s, vd] = values.dims();
    let fits = vb == b && vh == h && vd == d && start + s <= cap;
    let mut buf = primitive(buffer);
    let layout = buf.layout();
    if !fits
        || buf.dtype() != values.dtype()
        || !layout.is_contiguous()
        || layout.start_offset() != 0
        || !buf.is_unique()
    {
        return composite::cache_write(
            Tensor::from_primitive(TensorPrimitive::Float(buf)),
            values,
            start,
        );
    }
    let vals = primitive(values);
    if buf.dtype() == DType::F32
        && s > 0
        && d > 0
        && let Some(view) = View4::new(&vals)
    {
        // Straight from the (often strided: `[b, s, heads, d]` memory seen as
        // `[b, heads, s, d]`) values into the buffer, one `d`-value row at a time, without
        // burn-flex's generic strided gather into a contiguous copy first.
        let dst = buf.try_storage_mut::<f32>().expect("checked unique");
        for (row, out) in dst.chunks_exact_mut(cap * d).enumerate().take(b * h) {
            let (bi, hi) = (row / h, row % h);
            for (t, slot) in out[start * d..(start + s) * d]
                .chunks_exact_mut(d)
                .enumerate()
            {
                slot.copy_from_slice(view.row(bi, hi, t, d));
            }
        }
        return Tensor::from_primitive(TensorPrimitive::Float(buf));
    }
    let vals = vals.to_contiguous();
    fn copy<E: burn::tensor::Element + bytemuck::Pod>(
        buf: &mut FlexTensor,
        vals: &FlexTensor,
        [b, h, cap, d]: [usize; 4],
        s: usize,
        start: usize,
    ) {
        let src = vals.as_slice::<E>().expect("contiguous");
        let dst = buf.try_storage_mut::<E>().expect("checked unique");
        for row in 0..b * h {
            let from = row * s * d;
            let to = (row * cap + start) * d;
            dst[to..to + s * d].copy_from_slice(&src[from..from + s * d]);
        }
    }
    let shape = [b, h, cap, d];
    match buf.dtype() {
        DType::F32 => copy::<f32>(&mut buf, &vals, shape, s, start),
        DType::BF16 => copy::<half::bf16>(&mut buf, &vals, shape, s, start),
        DType::F16 => copy::<half::f16>(&mut buf, &vals, shape, s, start),
        _ => {
            return composite::cache_write(
                Tensor::from_primitive(TensorPrimitive::Float(buf)),
                Tensor::from_primitive(TensorPrimitive::Float(vals)),
                start,
            );
        }
    }
    Tensor::from_primitive(TensorPrimitive::Float(buf))
}

/// Rows of `x` up to which [`dense`] uses the skinny kernel instead of a GEMM.
pub(crate) const SKINNY_MAX_ROWS: usize = 16;

/// Output features per skinny-kernel task.
const SKINNY_CHUNK: usize = 64;

/// See [`super::Kernels::dense`]. Decoding multiplies a handful of rows by every weight: a
/// GEMM library packs the whole weight for that and runs on one core below its parallel
/// threshold. The skinny kernel instead streams each weight row once, dots it with every
/// input row (AVX + FMA when the CPU has them) and splits the output features across cores;
/// a row's result never depends on the other rows of the call. More rows (prefill) run the
/// panel-parallel GEMM of [`super::cpu_gemm`].
pub fn dense(
    x: Tensor<Flex, 3>,
    weight: Tensor<Flex, 2>,
    bias: Option<Tensor<Flex, 1>>,
) -> Tensor<Flex, 3> {
    let [b, s, k] = x.dims();
    let [n, _] = weight.dims();
    let m = b * s;
    let f32s = x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    if !f32s {
        return composite::dense(x, weight, bias);
    }
    let (xp, wp) = (primitive(x), primitive(weight));
    let (xs, ws) = (contiguous(&xp), contiguous(&wp));
    let bias = bias.map(primitive);
    let bias = bias.as_ref().map(contiguous);
    if m > SKINNY_MAX_ROWS {
        let out = super::cpu_gemm::gemm_f32_weight(&xs, m, k, &ws, n, bias.as_deref());
        return wrap(out, [b, s, n]);
    }
    let mut out = vec![0f32; m * n];
    let out_ptr = OutPtr(out.as_mut_ptr());
    let task = |chunk: usize| {
        let out_ptr = out_ptr;
        let (o0, o1) = (chunk * SKINNY_CHUNK, ((chunk + 1) * SKINNY_CHUNK).min(n));
        // SAFETY: each task writes only the columns o0..o1 of every output row.
        unsafe { super::cpu_skinny::skinny(&xs, m, k, &ws, o0, o1, out_ptr.0, n) };
        if let Some(bias) = &bias {
            for r in 0..m {
                for o in o0..o1 {
                    // SAFETY: as above.
                    unsafe { *out_ptr.0.add(r * n + o) += bias[o] };
                }
            }
        }
    };
    let chunks = n.div_ceil(SKINNY_CHUNK);
    if m * n * k >= PARALLEL_MIN * 8 {
        (0..chunks).into_par_iter().for_each(task);
    } else {
        (0..chunks).for_each(task);
    }
    wrap(out, [b, s, n])
}

/// A raw output pointer shared by tasks that write disjoint rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every attention task writes a disjoint set of output rows (its own heads and
// queries), so concurrent writes never alias.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `dst[m, n] = beta * lhs[m, k] @ rhs[k, n]` through the `gemm` crate, single-threaded.
///
/// # Safety
/// The pointers and strides must describe valid, non-overlapping matrices of those sizes.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    beta: f32,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs,
            false,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            0.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

thread_local! {
    /// A thread's attention buffers (on the pool, or the caller's when a call runs on one
    /// thread): the stacked query heads (then their outputs) and the score block.
    static ATTENTION_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Elements of each scratch buffer a thread keeps from one attention task to the next (1 MiB;
/// 2 MiB per thread for the two): a 512-token prefill's score blocks fit. A larger block (long
/// contexts, up to [`SCORE_BUDGET`]) is allocated for its task and freed after it, as every
/// block was before the scratch.
const RETAINED_SCRATCH: usize = 1 << 18;

/// Makes `buf` at least `len` long, allocating exactly that much when it grows.
fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.reserve_exact(len - buf.len());
        buf.resize(len, 0.0);
    }
}

/// Softmax of one score row in place: keys `0..limit` are causally visible, padded keys
/// (`pad[j] != 0`) get no weight, the keys after `limit` are zeroed. A row that sees no key at
/// all (a left-padding query) gets the average over the row's keys.
fn softmax_row(row: &mut [f32], limit: usize, pad: Option<&[u8]>) {
    let width = row.len();
    let (visible, later) = row.split_at_mut(limit);
    later.fill(0.0);
    let (max, any) = match pad {
        None => (
            super::cpu_simd::max_of(visible, f32::MIN),
            !visible.is_empty(),
        ),
        Some(p) => {
            let mut max = f32::MIN;
            let mut any = false;
            for (j, x) in visible.iter_mut().enumerate() {
                if p[j] != 0 {
                    *x = f32::MIN;
                } else {
                    max = max.max(*x);
                    any = true;
                }
            }
            (max, any)
        }
    };
    if !any {
        row.fill(1.0 / width as f32);
        return;
    }
    let mut sum = super::cpu_simd::exp_sub_sum(visible, max);
    if let Some(p) = pad {
        for (j, x) in visible.iter_mut().enumerate() {
            if p[j] != 0 {
                sum -= *x;
                *x = 0.0;
            }
        }
    }
    let inv = 1.0 / sum;
    visible.iter_mut().for_each(|x| *x *= inv);
}

/// See [`super::Kernels::causal_attention`].
pub fn causal_attention(
    q: Tensor<Flex, 4>,
    k: Tensor<Flex, 4>,
    v: Tensor<Flex, 4>,
    mask: &AttentionMask<Flex>,
) -> Tensor<Flex, 4> {
    if q.dtype() != DType::F32
        || k.dtype() != DType::F32
        || v.dtype() != DType::F32
        || mask.segments.is_some()
    {
        return composite::causal_attention(q, k, v, mask);
    }
    let [b, nh, s, d] = q.dims();
    let [kb, nkv, t, kd] = k.dims();
    // The GEMMs below read keys and values through raw pointers: their shapes must agree with
    // the queries' (the composite path reports a mismatch).
    if s == 0
        || d == 0
        || nkv == 0
        || nh % nkv != 0
        || nh == 0
        || (kb, kd) != (b, d)
        || v.dims() != k.dims()
    {
        return composite::causal_attention(q, k, v, mask);
    }
    let g = nh / nkv;
    let (qp, kp, vp) = (primitive(q), primitive(k), primitive(v));
    let (qp, kp, vp) = (
        if View4::new(&qp).is_some() {
            qp
        } else {
            qp.to_contiguous()
        },
        if View4::new(&kp).is_some() {
            kp
        } else {
            kp.to_contiguous()
        },
        if View4::new(&vp).is_some() {
            vp
        } else {
            vp.to_contiguous()
        },
    );
    let (qv, kv, vv) = (
        View4::new(&qp).expect("checked"),
        View4::new(&kp).expect("checked"),
        View4::new(&vp).expect("checked"),
    );
    let padding: Option<Vec<u8>> = mask.key_padding.as_ref().map(|p| {
        p.clone()
            .into_primitive()
            .to_contiguous()
            .storage::<u8>()
            .to_vec()
    });
    let past = mask.past_len;
    let scale = 1.0 / (d as f32).sqrt();

    let block = QUERY_BLOCK
        .min(s)
        .min((SCORE_BUDGET / (g * t.max(1))).max(1));
    let blocks = s.div_ceil(block);
    let len = b * nh * s * d;
    // Every task writes all its rows but when there are no keys at all (`t = 0`, each task
    // returns at once): then the output is zeros.
    let mut out = if t == 0 {
        vec![0.0; len]
    } else {
        Vec::with_capacity(len)
    };
    let out_ptr = OutPtr(out.as_mut_ptr());
    let task = |index: usize| {
        let out_ptr = out_ptr;
        let (bi, rest) = (index / (nkv * blocks), index % (nkv * blocks));
        let (kvh, blk) = (rest / blocks, rest % blocks);
        let (q0, q1) = (blk * block, ((blk + 1) * block).min(s));
        let rows = q1 - q0;
        // Keys visible to the last query of the block.
        let t_end = (past + q1).min(t);
        if t_end == 0 {
            return;
        }
        // The g query heads that share this key/value head, stacked into one [g * rows, d]
        // block (row gi * rows + r), so that one GEMM of g * rows rows multiplies the keys
        // (packed once instead of once per head) and one multiplies the values.
        // Both buffers are the thread's scratch, reused from task to task (a fresh 0.5 MiB
        // score block per task was cleared and page-faulted every time); every element a
        // task reads it wrote first.
        ATTENTION_SCRATCH.with_borrow_mut(|(qbuf, sbuf)| {
            grow(qbuf, g * rows * d);
            grow(sbuf, g * rows * t_end);
            let queries = &mut qbuf[..g * rows * d];
            let scores = &mut sbuf[..g * rows * t_end];
            for (i, dst) in queries.chunks_exact_mut(d).enumerate() {
                let (gi, r) = (i / rows, i % rows);
                dst.copy_from_slice(qv.row(bi, kvh * g + gi, q0 + r, d));
            }
            // SAFETY: `queries` holds g * rows rows of d values, keys [0, t_end) are inside k's
            // buffer, and `scores` has room for g * rows x t_end.
            unsafe {
                gemm_f32(
                    g * rows,
                    t_end,
                    d,
                    scores.as_mut_ptr(),
                    t_end as isize,
                    queries.as_ptr(),
                    d as isize,
                    1,
                    kv.ptr(bi, kvh, 0),
                    1,
                    kv.strides[2] as isize,
                    scale,
                );
            }
            let pad_row = padding.as_ref().map(|p| &p[bi * t..bi * t + t_end]);
            for (r, row) in scores.chunks_mut(t_end).enumerate() {
                let slot = past + q0 + r % rows; // key slot of this query
                softmax_row(row, (slot + 1).min(t_end), pad_row);
            }
            // The stacked heads' outputs, [g * rows, d] (the query block's layout).
            let outputs = queries;
            // SAFETY: `scores` holds g * rows x t_end, values [0, t_end) are inside v's buffer
            // and `outputs` has room for g * rows x d.
            unsafe {
                gemm_f32(
                    g * rows,
                    d,
                    t_end,
                    outputs.as_mut_ptr(),
                    d as isize,
                    scores.as_ptr(),
                    t_end as isize,
                    1,
                    vv.ptr(bi, kvh, 0),
                    vv.strides[2] as isize,
                    1,
                    1.0,
                );
            }
            for (i, row) in outputs.chunks_exact(d).enumerate() {
                let (gi, r) = (i / rows, i % rows);
                // The output is laid out [b, s, heads, d], so that the model's swap back to
                // [b, s, heads * d] needs no copy.
                let dst = ((bi * s + q0 + r) * nh + kvh * g + gi) * d;
                // SAFETY: this task alone writes rows [q0, q1) of the heads of `kvh` in batch
                // `bi`; `dst..dst + d` is inside `out`.
                unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out_ptr.0.add(dst), d) };
            }
            for buf in [qbuf, sbuf] {
                if buf.capacity() > RETAINED_SCRATCH {
                    *buf = Vec::new();
                }
            }
        });
    };
    let tasks = b * nkv * blocks;
    if tasks > 1 && b * nh * s * t * d >= PARALLEL_MIN {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
    // SAFETY: with keys (`t > 0`, so `t_end >= 1` in every task), the tasks cover every batch,
    // KV head and query block, and each writes all `d` values of its `rows` queries of its
    // `g` heads (`nh = g * nkv`): every value of the output.
    unsafe { out.set_len(len) };
    wrap(out, [b, s, nh, d]).swap_dims(1, 2)
}

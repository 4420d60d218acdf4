//! The reference implementation of every kernel, written with plain burn tensor ops.
//!
//! It runs on every backend and under autodiff. Statistics and the softmax are computed in f32
//! whatever the activation dtype, as the official implementation does.

use burn::tensor::{DType, Tensor, activation, backend::Backend};

use super::AttentionMask;
pub use super::composite_packed::dense_packed;

/// See [`super::Kernels::rms_norm`].
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let xf = x.cast(DType::F32);
    let mean_square = xf.clone().square().mean_dim(2); // [b, s, 1]
    let normed = xf * mean_square.add_scalar(eps).sqrt().recip();
    normed.cast(dtype) * weight.unsqueeze::<3>()
}

/// See [`super::Kernels::add_rms_norm`].
pub fn add_rms_norm<B: Backend>(
    x: Tensor<B, 3>,
    residual: Tensor<B, 3>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let sum = x + residual;
    let normed = rms_norm(sum.clone(), weight, eps);
    (sum, normed)
}

/// The head size of a fused QKV projection `width` wide (see [`super::Kernels::split_qkv`]).
///
/// # Panics
/// If the shapes do not fit together.
pub(crate) fn qkv_head_dim(width: usize, heads: usize, kv_heads: usize) -> usize {
    assert!(
        kv_heads > 0 && heads % kv_heads == 0,
        "{kv_heads} KV heads do not divide {heads} heads"
    );
    let parts = heads + 2 * kv_heads;
    assert!(
        width % parts == 0,
        "a QKV projection {width} wide is not {parts} heads of one size"
    );
    width / parts
}

/// See [`super::Kernels::split_qkv`]: views of the projection (the query heads' reshape
/// copies them, as their per-KV-head groups are not evenly spaced).
pub fn split_qkv<B: Backend>(
    qkv: Tensor<B, 3>,
    heads: usize,
    kv_heads: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [b, s, width] = qkv.dims();
    let d = qkv_head_dim(width, heads, kv_heads);
    let g = heads / kv_heads;
    let qkv = qkv.reshape([b, s, kv_heads, g + 2, d]);
    let q = qkv.clone().slice([0..b, 0..s, 0..kv_heads, 0..g, 0..d]);
    let k = qkv.clone().slice([0..b, 0..s, 0..kv_heads, g..g + 1, 0..d]);
    let v = qkv.slice([0..b, 0..s, 0..kv_heads, g + 1..g + 2, 0..d]);
    (
        q.reshape([b, s, heads, d]).swap_dims(1, 2),
        k.reshape([b, s, kv_heads, d]).swap_dims(1, 2),
        v.reshape([b, s, kv_heads, d]).swap_dims(1, 2),
    )
}

/// See [`super::Kernels::rope`].
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 3>, sin: Tensor<B, 3>) -> Tensor<B, 4> {
    let [b, h, s, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    let cos = cos.unsqueeze_dim::<4>(1); // [b, 1, s, d]
    let sin = sin.unsqueeze_dim::<4>(1);
    x * cos + rotated * sin
}

/// The additive attention bias of a mask: 0 where a query may attend, the most negative
/// finite f32 elsewhere (finite so that a fully masked padding row stays NaN-free, as in the
/// official implementation).
///
/// # Shapes
/// returns `[batch or 1, s, t]` in f32
pub fn attention_bias<B: Backend>(
    mask: &AttentionMask<B>,
    s: usize,
    t: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    // true above the shifted diagonal: key slot j > query slot past_len + i
    let causal =
        Tensor::<B, 2, burn::tensor::Bool>::tril_mask([s, t], mask.past_len as i64, device)
            .unsqueeze::<3>(); // [1, s, t]
    let mut masked = match &mask.key_padding {
        Some(padding) => {
            let [b, tp] = padding.dims();
            assert_eq!(tp, t, "key padding covers {tp} slots, attention has {t}");
            let padding = padding.clone().unsqueeze_dim::<3>(1).expand([b, s, t]);
            causal.expand([b, s, t]).bool_or(padding)
        }
        None => causal,
    };
    if let Some(segments) = &mask.segments {
        let [b, ts] = segments.dims();
        assert_eq!(ts, t, "segments cover {ts} slots, attention has {t}");
        let past = mask.past_len;
        let queries = segments
            .clone()
            .slice([0..b, past..past + s])
            .unsqueeze_dim::<3>(2); // [b, s, 1]
        let keys = segments.clone().unsqueeze_dim::<3>(1); // [b, 1, t]
        let other = queries.expand([b, s, t]).not_equal(keys.expand([b, s, t]));
        let [mb, _, _] = masked.dims();
        masked = if mb == b {
            masked.bool_or(other)
        } else {
            masked.expand([b, s, t]).bool_or(other)
        };
    }
    masked.float().cast(DType::F32) * f32::MIN
}

/// See [`super::Kernels::causal_attention`]. Grouped-query attention without repeating K/V: the
/// `G` query heads of one KV head are stacked into the rows of one matmul.
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttentionMask<B>,
) -> Tensor<B, 4> {
    let [b, nh, s, d] = q.dims();
    let [_, nkv, t, _] = k.dims();
    let groups = nh / nkv;
    let dtype = q.dtype();
    let scale = 1.0 / (d as f64).sqrt();

    let q = q.reshape([b, nkv, groups * s, d]); // query head i = kv head i / G, group i % G
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .cast(DType::F32)
        .mul_scalar(scale);
    let scores = scores.reshape([b, nkv, groups, s, t]);
    let bias = attention_bias(mask, s, t, &scores.device()); // [b or 1, s, t]
    let bias_batch = bias.dims()[0];
    let scores = scores + bias.reshape([bias_batch, 1, 1, s, t]);
    let probs = activation::softmax(scores, 4).cast(dtype);
    let out = probs.reshape([b, nkv, groups * s, t]).matmul(v); // [b, nkv, G*s, d]
    out.reshape([b, nh, s, d])
}

/// See [`super::Kernels::cache_write`]: `slice_assign` (which copies the buffer on backends
/// that cannot write in place).
pub fn cache_write<B: Backend>(
    buffer: Tensor<B, 4>,
    values: Tensor<B, 4>,
    start: usize,
) -> Tensor<B, 4> {
    let [b, h, s, d] = values.dims();
    buffer.slice_assign([0..b, 0..h, start..start + s, 0..d], values)
}

/// See [`super::Kernels::paged_attention`]: each sequence's new keys and values are written
/// block piece by block piece with `slice_assign`, its visible keys gathered from the pool with
/// `select`, and [`causal_attention`] runs per sequence.
pub fn paged_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_pool: Tensor<B, 4>,
    value_pool: Tensor<B, 4>,
    layout: &super::PagedLayout,
) -> super::PagedAttentionOutput<B> {
    let [_, nh, tokens, d] = q.dims();
    let [blocks, nkv, bs, _] = key_pool.dims();
    if let Err(e) = layout.check(blocks, tokens) {
        panic!("paged attention layout: {e}");
    }
    assert_eq!(
        bs, layout.block_size,
        "pool block size != layout block size"
    );
    let (mut key_pool, mut value_pool) = (key_pool, value_pool);
    let offsets = layout.offsets();
    // Write this call's keys and values, one contiguous piece of a block at a time.
    for (seq, &offset) in layout.sequences.iter().zip(&offsets) {
        let mut done = 0;
        while done < seq.len {
            let slot = seq.past + done;
            let (block, row) = (seq.blocks[slot / bs] as usize, slot % bs);
            let n = (bs - row).min(seq.len - done);
            let rows = offset + done..offset + done + n;
            let at = [block..block + 1, 0..nkv, row..row + n, 0..d];
            let piece = |t: &Tensor<B, 4>| t.clone().slice([0..1, 0..nkv, rows.clone(), 0..d]);
            key_pool = key_pool.slice_assign(at.clone(), piece(&k));
            value_pool = value_pool.slice_assign(at, piece(&v));
            done += n;
        }
    }
    // Attend per sequence over its gathered keys and values.
    let device = q.device();
    let outputs: Vec<Tensor<B, 4>> = layout
        .sequences
        .iter()
        .zip(&offsets)
        .filter(|(seq, _)| seq.len > 0)
        .map(|(seq, &offset)| {
            let t = seq.past + seq.len;
            let used = t.div_ceil(bs);
            let ids: Vec<i64> = seq.blocks[..used].iter().map(|&b| b as i64).collect();
            let ids = Tensor::<B, 1, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(ids, [used]),
                &device,
            );
            let gather = |pool: &Tensor<B, 4>| {
                pool.clone()
                    .select(0, ids.clone()) // [used, kv_heads, bs, d]
                    .swap_dims(0, 1)
                    .reshape([1, nkv, used * bs, d])
                    .slice([0..1, 0..nkv, 0..t, 0..d])
            };
            let q = q
                .clone()
                .slice([0..1, 0..nh, offset..offset + seq.len, 0..d]);
            causal_attention(
                q,
                gather(&key_pool),
                gather(&value_pool),
                &AttentionMask::causal(seq.past),
            )
        })
        .collect();
    let output = if outputs.is_empty() {
        Tensor::<B, 4>::zeros([1, nh, 0, d], &device).cast(q.dtype())
    } else {
        Tensor::cat(outputs, 2)
    };
    super::PagedAttentionOutput {
        output,
        key_pool,
        value_pool,
    }
}

/// See [`super::Kernels::swiglu`].
pub fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    activation::silu(gate) * up
}

/// See [`super::Kernels::dense`]. The input is flattened to one matrix so that the backend
/// runs a single GEMM rather than one per batch row.
pub fn dense<B: Backend>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 3> {
    let [b, s, input] = x.dims();
    let [out, _] = weight.dims();
    let y = x.reshape([b * s, input]).matmul(weight.transpose());
    let y = match bias {
        Some(bias) => y + bias.unsqueeze::<2>(),
        None => y,
    };
    y.reshape([b, s, out])
}

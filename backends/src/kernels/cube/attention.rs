//! Tiled causal grouped-query attention ("flash attention"): the `[s, t]` score matrix is never
//! materialised and K/V are never repeated for GQA.
//!
//! One cube computes one block of `rows` query rows of one (batch, head); it is a
//! `keys x rows` grid of units, unit `(w, r)` serving query row `r`. Query head `h` reads KV
//! head `h / (heads / kv_heads)`. The cube loads its query rows into shared memory once, then
//! walks the keys in tiles of `keys`, up to the causal limit of its last row:
//!
//! 1. the cube loads the tile's K and V rows into shared memory (in the input dtype);
//! 2. unit `(w, r)` scores key `w` of the tile for row `r`: an f32 dot product, rounded to the
//!    input dtype and scaled by `1 / sqrt(d)` in f32, as the composite's matmul + cast do;
//!    masked keys (causal, padding, another segment) score `f32::MIN`, the composite's bias;
//! 3. online softmax in f32: each unit of row `r` takes the tile maximum, rescales its running
//!    sum and accumulators by `exp(old max - new max)`, and adds `exp(score - max) * v` for
//!    the `ceil(d / keys)` output columns it owns (`w, w + keys, ..`).
//!
//! Scores stay f32 until the end (the composite rounds the probabilities to the input dtype
//! before its second matmul; this kernel does not), and the output is rounded once.
//!
//! Fully masked rows (a query whose every key is padding, as left-padded prompts have) match
//! the composite exactly: there every score is `f32::MIN`, so its softmax is the uniform average
//! of V over all `t` keys. Masked keys scoring `f32::MIN` give the same average here (a running
//! maximum of `f32::MIN` weights each masked key by `exp(0) = 1`, and the first visible key
//! rescales them by `exp(f32::MIN - max) = 0`); a row that saw only masked keys up to the
//! block's causal limit adds the keys after it from global memory.
//!
//! Inputs are read through their strides (the model's strided Q view needs no copy); the
//! output is contiguous `[b, heads, s, d]`. Masks arrive as `[b, t]` int tensors: padding
//! (non-zero = ignore) and segment ids; an absent mask is a comptime `false` and its tensor
//! argument a one-element placeholder that is never read.

use burn::tensor::{DType, Shape};
use burn_cubecl::{CubeRuntime, ops::numeric::empty_device_dtype, tensor::CubeTensor};
use cubecl::prelude::*;

/// Largest head width the kernel takes (the wrapper falls back to the composite above it).
pub const MAX_HEAD_DIM: usize = 256;

/// Most query rows per cube.
const MAX_ROWS: usize = 16;

/// Units per cube the tile choice aims for.
const TARGET_UNITS: usize = 256;

/// Key tile bounds: at least 4 keys (so the worst case, `d` = 256 in f32, needs about 10 KiB of
/// shared memory, under every API's 16 KiB minimum), at most 64.
const MIN_KEYS: usize = 4;
const MAX_KEYS: usize = 64;

/// Attention of one block of query rows; see the module doc.
///
/// `q`: `[b, heads, s, d]`, `k`/`v`: `[b, kv_heads, t, d]` (any strides), `padding`/`segments`:
/// `[b, t]`, `output`: contiguous `[b, heads, s, d]`. Cube `(x, y, z)` = (query block, head,
/// batch); unit `(x, y)` = (key of the tile, query row of the block). `masked` is `f32::MIN`,
/// passed as an argument so that no shading language has to spell the literal.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_kernel<F: Float, P: Int, S: Int>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    padding: &Tensor<P>,
    segments: &Tensor<S>,
    output: &mut Tensor<F>,
    past_len: u32,
    scale: f32,
    masked: f32,
    #[comptime] dim: usize,
    #[comptime] rows: usize,
    #[comptime] keys: usize,
    #[comptime] has_padding: bool,
    #[comptime] has_segments: bool,
    #[define(F, P, S)] _dtypes: [StorageType; 3],
) {
    // Columns each unit owns in the output. K is stored transposed, `[d, keys + 1]`: the units
    // of a row read consecutive words (key `w` of column `c`), and the padding spreads the
    // cube's column-major stores over the shared-memory banks.
    let per_unit = dim.div_ceil(keys);
    let k_stride = keys + 1;
    let units = rows * keys;

    let (batch, head) = (CUBE_POS_Z as usize, CUBE_POS_Y as usize);
    let first = CUBE_POS_X as usize * rows;
    let (w, r) = (UNIT_POS_X as usize, UNIT_POS_Y as usize);
    let unit = UNIT_POS as usize;
    let past = past_len as usize;

    let (heads, seq, t) = (q.shape(1), q.shape(2), k.shape(2));
    let kv_head = head / (heads / k.shape(1));
    let row = first + r;
    let active = row < seq;
    let slot = past + row; // the key slot of this query

    // Keys visible to the block's last row: every key after them is masked for the block.
    let mut last = first + rows;
    if last > seq {
        last = seq;
    }
    let mut end = past + last;
    if end > t {
        end = t;
    }

    let q_base = batch * q.stride(0) + head * q.stride(1);
    let k_base = batch * k.stride(0) + kv_head * k.stride(1);
    let v_base = batch * v.stride(0) + kv_head * v.stride(1);

    let mut q_tile = SharedMemory::<F>::new(rows * dim);
    let mut k_tile = SharedMemory::<F>::new(dim * k_stride);
    let mut v_tile = SharedMemory::<F>::new(keys * dim);
    let mut scores = SharedMemory::<f32>::new(rows * keys);
    let mut weights = SharedMemory::<f32>::new(rows * keys);

    let mut i = unit;
    while i < rows * dim {
        let (rr, c) = (i / dim, i % dim);
        let mut value = F::new(0.0);
        if first + rr < seq {
            value = q[q_base + (first + rr) * q.stride(2) + c * q.stride(3)];
        }
        q_tile[i] = value;
        i += units;
    }

    let mut query_segment = S::cast_from(0u32);
    if has_segments {
        if active && slot < t {
            query_segment = segments[batch * segments.stride(0) + slot * segments.stride(1)];
        }
    }

    let mut max = masked;
    let mut sum = 0.0f32;
    let mut acc = Array::<f32>::new(per_unit);
    #[unroll]
    for j in 0..per_unit {
        acc[j] = 0.0f32;
    }

    let mut start = 0usize;
    while start < end {
        let mut count = end - start;
        if count > keys {
            count = keys;
        }

        // 1. K and V rows start..start + count.
        let mut i = unit;
        while i < keys * dim {
            let (kk, c) = (i / dim, i % dim);
            let mut kv = F::new(0.0);
            let mut vv = F::new(0.0);
            if kk < count {
                let key = start + kk;
                kv = k[k_base + key * k.stride(2) + c * k.stride(3)];
                vv = v[v_base + key * v.stride(2) + c * v.stride(3)];
            }
            k_tile[c * k_stride + kk] = kv;
            v_tile[i] = vv;
            i += units;
        }
        sync_cube();

        // 2. Score of key `w` for row `r`.
        let key = start + w;
        let mut score = masked;
        if active && w < count {
            let mut visible = key <= slot;
            if has_padding {
                let pad = padding[batch * padding.stride(0) + key * padding.stride(1)];
                visible = visible && u32::cast_from(pad) == 0u32;
            }
            if has_segments {
                let other = segments[batch * segments.stride(0) + key * segments.stride(1)];
                visible = visible && other == query_segment;
            }
            if visible {
                let mut dot = 0.0f32;
                for c in 0..dim {
                    dot += f32::cast_from(q_tile[r * dim + c])
                        * f32::cast_from(k_tile[c * k_stride + w]);
                }
                score = f32::cast_from(F::cast_from(dot)) * scale;
            }
        }
        scores[r * keys + w] = score;
        sync_cube();

        // 3. Online softmax: the tile maximum (every unit of the row computes the same one).
        let mut tile_max = max;
        for kk in 0..count {
            tile_max = f32::max(tile_max, scores[r * keys + kk]);
        }
        if w < count {
            weights[r * keys + w] = (score - tile_max).exp();
        }
        sync_cube();

        let correction = (max - tile_max).exp();
        let mut tile_sum = 0.0f32;
        for kk in 0..count {
            tile_sum += weights[r * keys + kk];
        }
        sum = sum * correction + tile_sum;
        max = tile_max;
        #[unroll]
        for j in 0..per_unit {
            let c = w + j * keys;
            if c < dim {
                let mut a = acc[j] * correction;
                for kk in 0..count {
                    a += weights[r * keys + kk] * f32::cast_from(v_tile[kk * dim + c]);
                }
                acc[j] = a;
            }
        }
        sync_cube();
        start += keys;
    }

    if active {
        if max == masked {
            // Every key so far was masked, so every key is: the composite's softmax of equal
            // scores is the uniform average of V over all t keys.
            let mut key = end;
            while key < t {
                #[unroll]
                for j in 0..per_unit {
                    let c = w + j * keys;
                    if c < dim {
                        acc[j] += f32::cast_from(v[v_base + key * v.stride(2) + c * v.stride(3)]);
                    }
                }
                sum += 1.0f32;
                key += 1;
            }
        }
        let out = ((batch * heads + head) * seq + row) * dim;
        #[unroll]
        for j in 0..per_unit {
            let c = w + j * keys;
            if c < dim {
                output[out + c] = F::cast_from(acc[j] / sum);
            }
        }
    }
}

/// Shared memory of one cube: Q rows, K (transposed, padded) and V tiles in the input dtype,
/// f32 scores and weights.
fn shared_bytes(rows: usize, keys: usize, dim: usize, elem: usize) -> usize {
    (rows * dim + dim * (keys + 1) + keys * dim) * elem + 8 * rows * keys
}

/// Query rows and keys per tile for these sizes: as many rows as the queries fill (up to 16),
/// then keys up to about 256 units per cube, shrunk until the shared memory fits `budget`
/// bytes.
fn tile(seq: usize, dim: usize, elem: usize, budget: usize) -> (usize, usize) {
    let mut rows = seq.next_power_of_two().min(MAX_ROWS);
    let mut keys = (TARGET_UNITS / rows).clamp(16, MAX_KEYS);
    let bytes = |rows: usize, keys: usize| shared_bytes(rows, keys, dim, elem);
    while bytes(rows, keys) > budget {
        if keys > 16 || (keys > MIN_KEYS && rows == 1) {
            keys /= 2;
        } else if rows > 1 {
            rows /= 2;
        } else {
            break;
        }
    }
    (rows, keys)
}

/// Launches the kernel on `q` `[b, heads, s, d]`, `k`/`v` `[b, kv_heads, t, d]` (one float
/// dtype, `heads % kv_heads == 0`, `1 <= d <=` [`MAX_HEAD_DIM`]) and optional `[b, t]` int masks
/// (`padding` non-zero = ignore, `segments` ids, which need `past_len + s <= t`); returns a new
/// contiguous `[b, heads, s, d]` tensor.
pub fn launch<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    padding: Option<CubeTensor<R>>,
    segments: Option<CubeTensor<R>>,
    past_len: usize,
) -> CubeTensor<R> {
    let shape = q.meta.shape().clone();
    let (batch, heads, seq, dim) = (shape[0], shape[1], shape[2], shape[3]);
    let t = k.meta.shape()[2];
    let output = empty_device_dtype(q.client.clone(), q.device.clone(), shape.clone(), q.dtype);
    if shape.num_elements() == 0 {
        return output;
    }
    assert!(
        (1..=MAX_HEAD_DIM).contains(&dim),
        "attention kernel: head_dim {dim} outside 1..={MAX_HEAD_DIM}"
    );
    assert!(t > 0, "attention kernel: no keys");
    let past_len = u32::try_from(past_len).expect("attention kernel: past_len over u32");

    let budget = q.client.properties().hardware.max_shared_memory_size;
    let (rows, keys) = tile(seq, dim, q.dtype.size(), budget);
    let placeholder = || {
        empty_device_dtype(
            q.client.clone(),
            q.device.clone(),
            Shape::new([1]),
            DType::I32,
        )
    };
    let (has_padding, has_segments) = (padding.is_some(), segments.is_some());
    let padding = padding.unwrap_or_else(placeholder);
    let segments = segments.unwrap_or_else(placeholder);
    let dtypes = [q.dtype.into(), padding.dtype.into(), segments.dtype.into()];

    let count = CubeCount::Static(seq.div_ceil(rows) as u32, heads as u32, batch as u32);
    let cube_dim = CubeDim::new_2d(keys as u32, rows as u32);
    attention_kernel::launch::<R>(
        &q.client,
        count,
        cube_dim,
        q.clone().into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        padding.into_tensor_arg(),
        segments.into_tensor_arg(),
        output.clone().into_tensor_arg(),
        past_len,
        (1.0 / (dim as f64).sqrt()) as f32,
        f32::MIN,
        dim,
        rows,
        keys,
        has_padding,
        has_segments,
        dtypes,
    );
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_fit_the_shared_memory_budget() {
        for dim in [1, 7, 24, 64, 128, 256] {
            for seq in [1, 2, 5, 16, 33, 512] {
                for elem in [2, 4] {
                    for budget in [16 << 10, 32 << 10, 48 << 10] {
                        let (rows, keys) = tile(seq, dim, elem, budget);
                        let bytes = shared_bytes(rows, keys, dim, elem);
                        assert!(bytes <= budget, "{dim} {seq} {elem} {budget}: {bytes}");
                        assert!(rows >= 1 && keys >= MIN_KEYS && rows * keys <= TARGET_UNITS);
                    }
                }
            }
        }
        assert_eq!(tile(1, 64, 4, 48 << 10), (1, 64));
        assert_eq!(tile(1, 128, 4, 48 << 10), (1, 32));
        assert_eq!(tile(512, 64, 4, 48 << 10), (16, 16));
    }
}

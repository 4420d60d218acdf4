//! The reference linear layer over a [`PackedWeight`], for every backend: dequantize a tile of
//! output features on the host, upload it, multiply, move on to the next tile.
//!
//! Only one tile of the weight (at most [`TILE_ELEMENTS`] values) exists in f32 at a time, so
//! the reference never materialises a whole f32 copy of the weight per call. It is slow on a
//! GPU (a host decode and an upload per tile and call) and meant as the definition the fused
//! kernels are tested against, and as the fallback where none exist.

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::packed::PackedWeight;

/// f32 values of the largest dequantized tile (16 MiB).
pub const TILE_ELEMENTS: usize = 1 << 22;

/// See [`super::Kernels::dense_packed`].
pub fn dense_packed<B: Backend>(
    x: Tensor<B, 3>,
    weight: &PackedWeight,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 3> {
    let [b, s, k] = x.dims();
    let [n, cols] = weight.dims();
    assert_eq!(
        cols, k,
        "dense_packed: input width {k}, weight has {cols} columns"
    );
    let device = x.device();
    let dtype = x.dtype();
    let x = x.reshape([b * s, k]);
    let tile = (TILE_ELEMENTS / k.max(1)).clamp(1, n.max(1));
    let mut parts = Vec::with_capacity(n.div_ceil(tile));
    let mut r0 = 0;
    while r0 < n {
        let r1 = (r0 + tile).min(n);
        let mut values = vec![0f32; (r1 - r0) * k];
        weight.dequantize_rows(r0, r1, &mut values);
        let w =
            Tensor::<B, 2>::from_data(TensorData::new(values, [r1 - r0, k]), &device).cast(dtype);
        parts.push(x.clone().matmul(w.transpose()));
        r0 = r1;
    }
    let y = if parts.len() == 1 {
        parts.pop().expect("one part")
    } else if parts.is_empty() {
        Tensor::<B, 2>::zeros([b * s, 0], &device).cast(dtype)
    } else {
        Tensor::cat(parts, 1)
    };
    let y = match bias {
        Some(bias) => y + bias.unsqueeze::<2>(),
        None => y,
    };
    y.reshape([b, s, n])
}

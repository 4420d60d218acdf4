//! Fused residual add + RMSNorm: returns `(x + residual, rms_norm(x + residual))`.
//!
//! The layout of [`rms_norm`](super::rms_norm): one cube per row, f32 statistics reduced in
//! shared memory. The sum is rounded to the activation dtype (as the composite's `x + residual`
//! is) and both passes use that rounded value.

use burn_cubecl::{CubeRuntime, ops::numeric::empty_device_dtype, tensor::CubeTensor};
use cubecl::prelude::*;

use super::ROW_BLOCK;
use super::rms_norm::{cube_sum, inverse_rms, launch_rows};

/// `x`, `residual`: `[b, s, h]` (any strides), `weight`: `[h]`; `sum` and `output`:
/// contiguous `[b, s, h]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn add_rms_norm_kernel<F: Float>(
    x: &Tensor<F>,
    residual: &Tensor<F>,
    weight: &Tensor<F>,
    sum: &mut Tensor<F>,
    output: &mut Tensor<F>,
    eps: f32,
    #[comptime] block: usize,
    #[define(F)] _dtype: StorageType,
) {
    let seq = x.shape(1);
    let hidden = x.shape(2);
    let row = CUBE_POS;
    if row >= x.shape(0) * seq {
        terminate!();
    }
    let (b, s) = (row / seq, row % seq);
    let base_x = b * x.stride(0) + s * x.stride(1);
    let base_r = b * residual.stride(0) + s * residual.stride(1);
    let (step_x, step_r) = (x.stride(2), residual.stride(2));
    let out = row * hidden;

    let mut squares = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < hidden {
        let v = x[base_x + i * step_x] + residual[base_r + i * step_r];
        sum[out + i] = v;
        let f = f32::cast_from(v);
        squares += f * f;
        i += block;
    }
    let mut partial = SharedMemory::<f32>::new(block);
    let scale = inverse_rms(cube_sum(&mut partial, squares), hidden, eps);

    // Each unit reads back only the elements it wrote itself.
    let mut i = UNIT_POS as usize;
    while i < hidden {
        let normed = F::cast_from(f32::cast_from(sum[out + i]) * scale);
        output[out + i] = normed * weight[i * weight.stride(0)];
        i += block;
    }
}

/// Launches the kernel on `x`, `residual` `[b, s, h]` and `weight` `[h]` (same float dtype);
/// returns the new contiguous `(sum, normed)`.
pub fn launch<R: CubeRuntime>(
    x: CubeTensor<R>,
    residual: CubeTensor<R>,
    weight: CubeTensor<R>,
    eps: f32,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let shape = x.meta.shape().clone();
    let empty = || empty_device_dtype(x.client.clone(), x.device.clone(), shape.clone(), x.dtype);
    let (sum, output) = (empty(), empty());
    let rows = shape[0] * shape[1];
    if rows == 0 || shape[2] == 0 {
        return (sum, output);
    }
    launch_rows(&x, rows, |count, dim| {
        add_rms_norm_kernel::launch::<R>(
            &x.client,
            count,
            dim,
            x.clone().into_tensor_arg(),
            residual.into_tensor_arg(),
            weight.into_tensor_arg(),
            sum.clone().into_tensor_arg(),
            output.clone().into_tensor_arg(),
            eps,
            ROW_BLOCK as usize,
            x.dtype.into(),
        )
    });
    (sum, output)
}

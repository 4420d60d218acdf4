//! Fused RMSNorm: `weight * cast(x * rsqrt(mean(x^2) + eps))` in one kernel.
//!
//! One cube normalises one row of `hidden` elements: every unit sums the squares of a strided
//! share of the row in f32, the cube adds the partial sums in shared memory, then every unit
//! writes its share. Rounding follows the composite: the normalised value is rounded to the
//! activation dtype before the multiplication by the weight, which is done in that dtype.

use burn_cubecl::{CubeRuntime, ops::numeric::empty_device_dtype, tensor::CubeTensor};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

use super::ROW_BLOCK;

/// Sums `value` over the units of the cube, through `partial` (one slot per unit).
///
/// Every unit of the cube must call it (it synchronises the cube); every unit gets the sum.
/// The cube size must be a power of two.
#[cube]
pub(crate) fn cube_sum(partial: &mut SharedMemory<f32>, value: f32) -> f32 {
    let unit = UNIT_POS as usize;
    partial[unit] = value;
    sync_cube();
    let mut stride = CUBE_DIM as usize / 2;
    while stride > 0 {
        if unit < stride {
            partial[unit] += partial[unit + stride];
        }
        sync_cube();
        stride /= 2;
    }
    partial[0]
}

/// `1 / sqrt(sum / count + eps)`, as the composite computes it.
#[cube]
pub(crate) fn inverse_rms(sum: f32, count: usize, eps: f32) -> f32 {
    let mean = sum / f32::cast_from(count as u32);
    (mean + eps).sqrt().recip()
}

/// `input`: `[b, s, h]` (any strides), `weight`: `[h]`, `output`: contiguous `[b, s, h]`.
#[cube(launch)]
fn rms_norm_kernel<F: Float>(
    input: &Tensor<F>,
    weight: &Tensor<F>,
    output: &mut Tensor<F>,
    eps: f32,
    #[comptime] block: usize,
    #[define(F)] _dtype: StorageType,
) {
    let seq = input.shape(1);
    let hidden = input.shape(2);
    let row = CUBE_POS;
    if row >= input.shape(0) * seq {
        terminate!();
    }
    let base = (row / seq) * input.stride(0) + (row % seq) * input.stride(1);
    let step = input.stride(2);

    let mut sum = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < hidden {
        let v = f32::cast_from(input[base + i * step]);
        sum += v * v;
        i += block;
    }
    let mut partial = SharedMemory::<f32>::new(block);
    let scale = inverse_rms(cube_sum(&mut partial, sum), hidden, eps);

    let out = row * hidden;
    let mut i = UNIT_POS as usize;
    while i < hidden {
        let normed = F::cast_from(f32::cast_from(input[base + i * step]) * scale);
        output[out + i] = normed * weight[i * weight.stride(0)];
        i += block;
    }
}

/// Launches the kernel on `x` `[b, s, h]` and `weight` `[h]` (same float dtype); returns a
/// new contiguous tensor.
pub fn launch<R: CubeRuntime>(x: CubeTensor<R>, weight: CubeTensor<R>, eps: f32) -> CubeTensor<R> {
    let shape = x.meta.shape().clone();
    let output = empty_device_dtype(x.client.clone(), x.device.clone(), shape.clone(), x.dtype);
    let rows = shape[0] * shape[1];
    if rows == 0 || shape[2] == 0 {
        return output;
    }
    launch_rows(&x, rows, |count, dim| {
        rms_norm_kernel::launch::<R>(
            &x.client,
            count,
            dim,
            x.clone().into_tensor_arg(),
            weight.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            eps,
            ROW_BLOCK as usize,
            x.dtype.into(),
        )
    });
    output
}

/// Runs `launch` with one cube of [`ROW_BLOCK`] units per row.
pub(crate) fn launch_rows<R: CubeRuntime>(
    x: &CubeTensor<R>,
    rows: usize,
    launch: impl FnOnce(CubeCount, CubeDim),
) {
    let dim = CubeDim::new_1d(ROW_BLOCK);
    let count = calculate_cube_count_elemwise(&x.client, rows * ROW_BLOCK as usize, dim);
    launch(count, dim);
}

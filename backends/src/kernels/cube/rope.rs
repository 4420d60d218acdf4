//! Fused rotate_half RoPE: `x * cos + rotate_half(x) * sin`.
//!
//! One unit per output element. `x` is read through its strides (the model passes the
//! `[b, s, h, d]` projection viewed as `[b, h, s, d]`, so no copy is made first); `cos` and
//! `sin` are `[b, s, d]`, also read through their strides; the output is contiguous. The
//! arithmetic is done in the activation dtype, as the composite does.

use burn_cubecl::{CubeRuntime, ops::numeric::empty_device_dtype, tensor::CubeTensor};
use cubecl::{calculate_cube_count_elemwise, prelude::*};

/// `x`: `[b, h, s, d]`, `cos`/`sin`: `[b, s, d]`, `output`: contiguous `[b, h, s, d]`, `d` even.
#[cube(launch)]
fn rope_kernel<F: Float>(
    x: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    output: &mut Tensor<F>,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= output.len() {
        terminate!();
    }
    let (heads, seq, dim) = (x.shape(1), x.shape(2), x.shape(3));
    let half = dim / 2;
    let i = pos % dim;
    let row = pos / dim;
    let s = row % seq;
    let h = (row / seq) % heads;
    let b = row / (seq * heads);

    let base = b * x.stride(0) + h * x.stride(1) + s * x.stride(2);
    let step = x.stride(3);
    let table = b * cos.stride(0) + s * cos.stride(1) + i * cos.stride(2);
    let table_sin = b * sin.stride(0) + s * sin.stride(1) + i * sin.stride(2);
    let value = x[base + i * step] * cos[table];
    if i < half {
        output[pos] = value - x[base + (i + half) * step] * sin[table_sin];
    } else {
        output[pos] = value + x[base + (i - half) * step] * sin[table_sin];
    }
}

/// Launches the kernel on `x` `[b, h, s, d]` (`d` even) and `cos`/`sin` `[b, s, d]` (same float
/// dtype); returns a new contiguous tensor.
pub fn launch<R: CubeRuntime>(
    x: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
) -> CubeTensor<R> {
    let shape = x.meta.shape().clone();
    let output = empty_device_dtype(x.client.clone(), x.device.clone(), shape.clone(), x.dtype);
    let n = shape.num_elements();
    if n == 0 {
        return output;
    }
    let dim = CubeDim::new(&x.client, n);
    let count = calculate_cube_count_elemwise(&x.client, n, dim);
    let dtype = x.dtype;
    rope_kernel::launch::<R>(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        cos.into_tensor_arg(),
        sin.into_tensor_arg(),
        output.clone().into_tensor_arg(),
        dtype.into(),
    );
    output
}

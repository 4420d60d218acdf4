//! Fused SwiGLU gate: `silu(gate) * up` in one elementwise pass.
//!
//! Rounding follows the composite (`gate * sigmoid(gate)`, then `* up`): the sigmoid is
//! computed in f32 and rounded to the activation dtype, the two products are done in that
//! dtype. Contiguous inputs (what the model's linear layers produce) take a vectorised kernel;
//! other layouts are read through their strides. The output is contiguous.

use burn_cubecl::{CubeRuntime, ops::numeric::empty_device_dtype, tensor::CubeTensor};
use cubecl::{calculate_cube_count_elemwise, prelude::*, tensor_vector_size_parallel};

/// Contiguous `gate`, `up` and `output`, `N` elements per unit.
#[cube(launch)]
fn swiglu_vector_kernel<F: Float, N: Size>(
    gate: &Tensor<Vector<F, N>>,
    up: &Tensor<Vector<F, N>>,
    output: &mut Tensor<Vector<F, N>>,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= output.len() {
        terminate!();
    }
    let g = gate[pos];
    let one = Vector::<f32, N>::new(1.0f32);
    let exp = Vector::<f32, N>::cast_from(-g).exp();
    let sigmoid = Vector::<F, N>::cast_from(one / (one + exp));
    output[pos] = g * sigmoid * up[pos];
}

/// `gate`, `up`: `[b, s, n]` (any strides), `output`: contiguous `[b, s, n]`.
#[cube(launch)]
fn swiglu_kernel<F: Float>(
    gate: &Tensor<F>,
    up: &Tensor<F>,
    output: &mut Tensor<F>,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= output.len() {
        terminate!();
    }
    let (seq, width) = (output.shape(1), output.shape(2));
    let i = pos % width;
    let row = pos / width;
    let (b, s) = (row / seq, row % seq);
    let g = gate[b * gate.stride(0) + s * gate.stride(1) + i * gate.stride(2)];
    let u = up[b * up.stride(0) + s * up.stride(1) + i * up.stride(2)];
    let sigmoid = F::cast_from(1.0f32 / (1.0f32 + (-f32::cast_from(g)).exp()));
    output[pos] = g * sigmoid * u;
}

/// Launches the kernel on `gate` and `up` `[b, s, n]` (same shape and float dtype); returns a
/// new contiguous tensor.
pub fn launch<R: CubeRuntime>(gate: CubeTensor<R>, up: CubeTensor<R>) -> CubeTensor<R> {
    let shape = gate.meta.shape().clone();
    let output = empty_device_dtype(
        gate.client.clone(),
        gate.device.clone(),
        shape.clone(),
        gate.dtype,
    );
    let n = shape.num_elements();
    if n == 0 {
        return output;
    }
    if gate.is_contiguous() && up.is_contiguous() {
        let last = shape.num_dims() - 1;
        let vector = [&gate, &up]
            .iter()
            .map(|t| {
                let sizes = t.client.io_optimized_vector_sizes(t.dtype.size());
                tensor_vector_size_parallel(sizes, t.meta.shape(), t.meta.strides(), last)
            })
            .min()
            .unwrap_or(1);
        let units = n / vector;
        let dim = CubeDim::new(&gate.client, units);
        let count = calculate_cube_count_elemwise(&gate.client, units, dim);
        let dtype = gate.dtype;
        swiglu_vector_kernel::launch::<R>(
            &output.client,
            count,
            dim,
            vector,
            gate.into_tensor_arg(),
            up.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            dtype.into(),
        );
        return output;
    }
    let dim = CubeDim::new(&gate.client, n);
    let count = calculate_cube_count_elemwise(&gate.client, n, dim);
    let dtype = gate.dtype;
    swiglu_kernel::launch::<R>(
        &gate.client,
        count,
        dim,
        gate.clone().into_tensor_arg(),
        up.into_tensor_arg(),
        output.clone().into_tensor_arg(),
        dtype.into(),
    );
    output
}

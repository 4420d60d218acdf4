//! RMSNorm with f32 statistics (SPEC 1): `weight * cast(x * rsqrt(mean(x^2) + eps))`.

use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor};
use internlm2_backends::Kernels;

/// Root-mean-square layer norm over the last dimension.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Kernels> {
    /// `[hidden]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean square before the root.
    pub eps: f64,
}

impl<B: Kernels> RmsNorm<B> {
    /// Unit weight.
    pub fn ones(hidden: usize, eps: f64, dtype: DType, device: &B::Device) -> Self {
        Self::from_tensor(Tensor::<B, 1>::ones([hidden], device).cast(dtype), eps)
    }

    /// Builds the norm from a loaded weight.
    pub fn from_tensor(weight: Tensor<B, 1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    /// # Shapes
    /// `x`: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        B::rms_norm(x, self.weight.val(), self.eps)
    }

    /// `(x + residual, norm(x + residual))`, fused where the backend can.
    pub fn forward_add(
        &self,
        x: Tensor<B, 3>,
        residual: Tensor<B, 3>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        B::add_rms_norm(x, residual, self.weight.val(), self.eps)
    }
}

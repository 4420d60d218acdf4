//! A linear layer that keeps the PyTorch / HuggingFace weight layout `[out, in]`, so that a
//! checkpoint tensor loads and saves without a transpose.

use burn::module::{Module, Param};
use burn::tensor::{DType, Distribution, Tensor};
use internlm2_backends::Kernels;

/// `y = x @ weight^T + bias`, through [`Kernels::dense`].
#[derive(Module, Debug)]
pub struct Linear<B: Kernels> {
    /// `[out, in]`, as stored in HuggingFace checkpoints.
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Kernels> Linear<B> {
    /// Random normal weights (std `std`), zero bias.
    pub fn random(
        input: usize,
        output: usize,
        bias: bool,
        std: f64,
        dtype: DType,
        device: &B::Device,
    ) -> Self {
        let weight =
            Tensor::<B, 2>::random([output, input], Distribution::Normal(0.0, std), device)
                .cast(dtype);
        Self {
            weight: Param::from_tensor(weight),
            bias: bias
                .then(|| Param::from_tensor(Tensor::<B, 1>::zeros([output], device).cast(dtype))),
        }
    }

    /// Builds the layer from loaded tensors.
    pub fn from_tensors(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
        }
    }

    /// # Shapes
    /// `x`: `[batch, seq, in]` -> `[batch, seq, out]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        B::dense(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
}

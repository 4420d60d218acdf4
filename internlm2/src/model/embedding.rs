//! Token embedding table (`model.tok_embeddings.weight`, `[vocab, hidden]`).

use burn::module::{Module, Param};
use burn::tensor::{DType, Distribution, Int, Tensor};
use internlm2_backends::Kernels;

/// Looks up one row of the table per token id.
#[derive(Module, Debug)]
pub struct Embedding<B: Kernels> {
    /// `[vocab, hidden]`.
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Kernels> Embedding<B> {
    /// Random normal table (std `std`).
    pub fn random(vocab: usize, hidden: usize, std: f64, dtype: DType, device: &B::Device) -> Self {
        let weight =
            Tensor::<B, 2>::random([vocab, hidden], Distribution::Normal(0.0, std), device);
        Self::from_tensor(weight.cast(dtype))
    }

    /// Builds the table from a loaded weight.
    pub fn from_tensor(weight: Tensor<B, 2>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
        }
    }

    /// # Shapes
    /// `ids`: `[batch, seq]` -> `[batch, seq, hidden]`
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        burn::tensor::module::embedding(self.weight.val(), ids)
    }
}

//! A linear layer that keeps the PyTorch / HuggingFace weight layout `[out, in]`, so that a
//! checkpoint tensor loads and saves without a transpose, with an optional LoRA adapter.

use burn::module::{Module, Param};
use burn::tensor::{DType, Distribution, Tensor};
use internlm2_backends::Kernels;

/// A low-rank adapter: `y += scale * (x @ A^T) @ B^T` with `A: [rank, in]`, `B: [out, rank]`,
/// `scale = alpha / rank` (LoRA, Hu et al. 2021; PEFT's `lora_A` / `lora_B`).
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Kernels> {
    /// `lora_A`, `[rank, in]`.
    pub a: Param<Tensor<B, 2>>,
    /// `lora_B`, `[out, rank]`; starts at zero so a fresh adapter changes nothing.
    pub b: Param<Tensor<B, 2>>,
    /// `alpha / rank`.
    pub scale: f64,
}

/// `y = x @ weight^T + bias`, through [`Kernels::dense`], plus the LoRA update when attached.
#[derive(Module, Debug)]
pub struct Linear<B: Kernels> {
    /// `[out, in]`, as stored in HuggingFace checkpoints.
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Low-rank adapter (see [`crate::model::lora`]).
    pub lora: Option<LoraAdapter<B>>,
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
            lora: None,
        }
    }

    /// Builds the layer from loaded tensors.
    pub fn from_tensors(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            lora: None,
        }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.val().dims()
    }

    /// # Shapes
    /// `x`: `[batch, seq, in]` -> `[batch, seq, out]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let y = B::dense(
            x.clone(),
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
        );
        match &self.lora {
            Some(lora) => {
                let down = B::dense(x, lora.a.val(), None); // [b, s, rank]
                y + B::dense(down, lora.b.val(), None).mul_scalar(lora.scale)
            }
            None => y,
        }
    }
}

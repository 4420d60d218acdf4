//! A linear layer that keeps the PyTorch / HuggingFace weight layout `[out, in]`, so that a
//! checkpoint tensor loads and saves without a transpose, with an optional LoRA adapter, and
//! for inference optionally a packed weight (f16/bf16 or quantized, see [`crate::quant`]).

use burn::module::{Module, Param};
use burn::tensor::{DType, Distribution, Tensor};
use internlm2_backends::Kernels;
use internlm2_backends::packed::PackedWeight;

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

/// `y = x @ weight^T + bias`, through [`Kernels::dense`] (or [`Kernels::dense_packed`] when the
/// weight is packed), plus the LoRA update when attached.
///
/// A packed layer keeps its weight in `packed` and an empty `[0, in]` f32 tensor in `weight`;
/// it is not trainable (it has no weight parameter to train).
#[derive(Module, Debug)]
pub struct Linear<B: Kernels> {
    /// `[out, in]`, as stored in HuggingFace checkpoints (`[0, in]` when `packed` is set).
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Low-rank adapter (see [`crate::model::lora`]).
    pub lora: Option<LoraAdapter<B>>,
    /// The weight in a packed format, for inference (see [`crate::quant`]).
    #[module(skip)]
    pub packed: Option<PackedWeight>,
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
            packed: None,
        }
    }

    /// Builds the layer from loaded tensors.
    pub fn from_tensors(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            lora: None,
            packed: None,
        }
    }

    /// Builds an inference layer over a packed weight (the bias stays dense).
    pub fn from_packed(
        weight: PackedWeight,
        bias: Option<Tensor<B, 1>>,
        device: &B::Device,
    ) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::zeros([0, weight.cols()], device)),
            bias: bias.map(Param::from_tensor),
            lora: None,
            packed: Some(weight),
        }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        match &self.packed {
            Some(p) => p.dims(),
            None => self.weight.val().dims(),
        }
    }

    /// The weight as a dense `[out, in]` tensor in `dtype` (dequantized when packed; for
    /// saving and inspection, not for the forward pass).
    pub fn dense_weight(&self, dtype: DType) -> Tensor<B, 2> {
        match &self.packed {
            Some(p) => {
                let data = burn::tensor::TensorData::new(p.dequantize(), p.dims());
                Tensor::<B, 2>::from_data(data, &self.weight.val().device()).cast(dtype)
            }
            None => self.weight.val().cast(dtype),
        }
    }

    /// # Shapes
    /// `x`: `[batch, seq, in]` -> `[batch, seq, out]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let bias = self.bias.as_ref().map(|b| b.val());
        let y = match &self.packed {
            Some(packed) => B::dense_packed(x.clone(), packed, bias),
            None => B::dense(x.clone(), self.weight.val(), bias),
        };
        match &self.lora {
            Some(lora) => {
                let down = B::dense(x, lora.a.val(), None); // [b, s, rank]
                y + B::dense(down, lora.b.val(), None).mul_scalar(lora.scale)
            }
            None => y,
        }
    }
}

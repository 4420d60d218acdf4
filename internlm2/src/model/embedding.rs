//! Token embedding table (`model.tok_embeddings.weight`, `[vocab, hidden]`).

use burn::module::{Module, Param};
use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};
use internlm2_backends::Kernels;
use internlm2_backends::packed::PackedWeight;

/// Looks up one row of the table per token id.
#[derive(Module, Debug)]
pub struct Embedding<B: Kernels> {
    /// `[vocab, hidden]` (`[0, hidden]` when `packed` holds the table).
    pub weight: Param<Tensor<B, 2>>,
    /// The table in a packed format, for inference: looked-up rows are decoded to f32.
    #[module(skip)]
    pub packed: Option<PackedWeight>,
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
            packed: None,
        }
    }

    /// A packed table; looked-up rows come out in `dtype` (the activation dtype, which
    /// [`crate::InternLM2::dtype`] reads from the empty `weight`).
    pub fn from_packed(table: PackedWeight, dtype: DType, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(
                Tensor::<B, 2>::zeros([0, table.cols()], device).cast(dtype),
            ),
            packed: Some(table),
        }
    }

    /// `[vocab, hidden]`.
    pub fn dims(&self) -> [usize; 2] {
        match &self.packed {
            Some(p) => p.dims(),
            None => self.weight.val().dims(),
        }
    }

    /// # Shapes
    /// `ids`: `[batch, seq]` -> `[batch, seq, hidden]`
    ///
    /// # Panics
    /// With a packed table, if an id is outside the vocabulary (the dense lookup's contract
    /// too; generation validates ids first).
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let Some(table) = &self.packed else {
            return burn::tensor::module::embedding(self.weight.val(), ids);
        };
        let [b, s] = ids.dims();
        let device = ids.device();
        let hidden = table.cols();
        let ids = ids
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .expect("int ids");
        let mut out = vec![0f32; b * s * hidden];
        for (row, &id) in out.chunks_exact_mut(hidden.max(1)).zip(&ids) {
            let id = usize::try_from(id).expect("token ids are non-negative");
            table.dequantize_rows(id, id + 1, row);
        }
        Tensor::<B, 3>::from_data(TensorData::new(out, [b, s, hidden]), &device)
            .cast(self.weight.val().dtype())
    }
}

//! The SwiGLU feed-forward block: `w2(silu(w1(x)) * w3(x))` (w1 gate, w3 up, w2 down).

use burn::module::Module;
use burn::tensor::{DType, Tensor};
use internlm2_backends::Kernels;

use super::linear::Linear;
use super::rows::RowGroups;

/// `feed_forward` of one decoder layer.
#[derive(Module, Debug)]
pub struct FeedForward<B: Kernels> {
    /// Gate projection, `[intermediate, hidden]`.
    pub w1: Linear<B>,
    /// Down projection, `[hidden, intermediate]`.
    pub w2: Linear<B>,
    /// Up projection, `[intermediate, hidden]`.
    pub w3: Linear<B>,
}

impl<B: Kernels> FeedForward<B> {
    /// Random weights.
    pub fn random(
        hidden: usize,
        intermediate: usize,
        std: f64,
        dtype: DType,
        device: &B::Device,
    ) -> Self {
        Self {
            w1: Linear::random(hidden, intermediate, false, std, dtype, device),
            w2: Linear::random(intermediate, hidden, false, std, dtype, device),
            w3: Linear::random(hidden, intermediate, false, std, dtype, device),
        }
    }

    /// # Shapes
    /// `x`: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_rows(x, &RowGroups::single())
    }

    /// [`forward`](Self::forward) with the dense layers run in the calls `rows` gives.
    ///
    /// # Shapes
    /// `x`: `[batch, seq, hidden]` -> `[batch, seq, hidden]`
    pub fn forward_rows(&self, x: Tensor<B, 3>, rows: &RowGroups) -> Tensor<B, 3> {
        let gate = rows.apply(x.clone(), |x| self.w1.forward(x));
        let up = rows.apply(x, |x| self.w3.forward(x));
        let hidden = B::swiglu(gate, up);
        rows.apply(hidden, |x| self.w2.forward(x))
    }
}

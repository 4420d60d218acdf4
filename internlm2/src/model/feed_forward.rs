//! The SwiGLU feed-forward block: `w2(silu(w1(x)) * w3(x))` (w1 gate, w3 up, w2 down).

use burn::module::Module;
use burn::tensor::{DType, Tensor};
use internlm2_backends::Kernels;

use super::linear::Linear;
use super::rows::RowGroups;
use crate::config::InternLM2Config;

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
    /// Random weights (normal, std [`INIT_STD`](super::INIT_STD)) in `dtype`:
    /// `hidden_size` -> `intermediate_size` -> `hidden_size`, no biases.
    pub fn init(config: &InternLM2Config, dtype: DType, device: &B::Device) -> Self {
        let (h, i, std) = (
            config.hidden_size,
            config.intermediate_size,
            super::INIT_STD,
        );
        Self {
            w1: Linear::random(h, i, false, std, dtype, device),
            w2: Linear::random(i, h, false, std, dtype, device),
            w3: Linear::random(h, i, false, std, dtype, device),
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

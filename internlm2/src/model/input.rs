//! The input of one forward call: token ids plus optional positions, padding and segments.

use burn::tensor::{Int, Tensor, backend::Backend};

/// One forward call: token ids plus, optionally, per-token positions and padding.
///
/// ```
/// use burn::tensor::{Int, Tensor};
/// use internlm2::ForwardInput;
/// use internlm2_backends::Cpu;
/// let device = Default::default();
/// // Two rows, the second left-padded by one token that restarts positions.
/// let ids = Tensor::<Cpu, 2, Int>::from_ints([[7, 8, 9], [2, 8, 9]], &device);
/// let input = ForwardInput::new(ids)
///     .with_positions(vec![0, 1, 2, 0, 0, 1])
///     .with_padding(vec![false, false, false, true, false, false]);
/// assert_eq!(input.dims(), [2, 3]);
/// ```
#[derive(Debug, Clone)]
pub struct ForwardInput<B: Backend> {
    /// `[batch, seq]` token ids.
    pub ids: Tensor<B, 2, Int>,
    /// `batch * seq` positions, row-major; default: consecutive from the cache length.
    pub positions: Option<Vec<usize>>,
    /// `batch * seq` flags, row-major, `true` for padding tokens nobody may attend to.
    pub padding: Option<Vec<bool>>,
    /// `batch * seq` segment ids, row-major: tokens attend only within their segment (packed
    /// documents). Not supported together with a KV cache.
    pub segments: Option<Vec<u32>>,
    /// Compute logits for the last position of each row only (`[batch, 1, vocab]`).
    pub last_logits_only: bool,
}

impl<B: Backend> ForwardInput<B> {
    /// Ids only: consecutive positions, no padding, logits for every position.
    pub fn new(ids: Tensor<B, 2, Int>) -> Self {
        Self {
            ids,
            positions: None,
            padding: None,
            segments: None,
            last_logits_only: false,
        }
    }

    /// Sets per-token positions (`batch * seq`, row-major).
    pub fn with_positions(mut self, positions: Vec<usize>) -> Self {
        self.positions = Some(positions);
        self
    }

    /// Sets per-token padding flags (`batch * seq`, row-major, `true` = padding).
    pub fn with_padding(mut self, padding: Vec<bool>) -> Self {
        self.padding = Some(padding);
        self
    }

    /// Sets per-token segment ids (`batch * seq`, row-major): attention stays inside a segment.
    pub fn with_segments(mut self, segments: Vec<u32>) -> Self {
        self.segments = Some(segments);
        self
    }

    /// Only the last position's logits are computed.
    pub fn with_last_logits_only(mut self, last_only: bool) -> Self {
        self.last_logits_only = last_only;
        self
    }

    /// `[batch, seq]`.
    pub fn dims(&self) -> [usize; 2] {
        self.ids.dims()
    }
}

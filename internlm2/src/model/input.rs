//! The input of one forward call: token ids plus optional positions, padding and segments.

use burn::tensor::{Int, Tensor, backend::Backend};

use super::rows::RowGroups;

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
    /// `batch * seq` RoPE lengths, row-major: token `i` is rotated with the dynamic-NTK base of
    /// a sequence of `rope_lengths[i]` tokens. Default: the largest position of the call + 1
    /// for every token (the official implementation's `seq_len`).
    pub rope_lengths: Option<Vec<usize>>,
    /// How the rows of a packed `[1, tokens]` input are split into dense calls (default: one
    /// call); see [`RowGroups`].
    pub row_groups: RowGroups,
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
            rope_lengths: None,
            row_groups: RowGroups::single(),
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

    /// Sets per-token RoPE lengths (`batch * seq`, row-major): each token uses the dynamic-NTK
    /// base of a sequence of that many tokens, e.g. the whole prompt's length for every
    /// token of a prompt prefilled in chunks, or each sequence's own length in a packed batch.
    /// Without dynamic NTK scaling the base never changes and the lengths change nothing.
    ///
    /// ```
    /// use burn::tensor::{Int, Tensor};
    /// use internlm2::ForwardInput;
    /// use internlm2_backends::Cpu;
    /// let ids = Tensor::<Cpu, 2, Int>::from_ints([[7, 8, 9]], &Default::default());
    /// // The last 3 tokens of a 100-token prompt, rotated as in one pass over all 100.
    /// let input = ForwardInput::new(ids)
    ///     .with_positions(vec![97, 98, 99])
    ///     .with_rope_lengths(vec![100; 3]);
    /// assert_eq!(input.rope_lengths.as_deref(), Some(&[100, 100, 100][..]));
    /// ```
    pub fn with_rope_lengths(mut self, lengths: Vec<usize>) -> Self {
        self.rope_lengths = Some(lengths);
        self
    }

    /// Splits the dense layers' rows into these calls (see [`RowGroups`]).
    pub fn with_row_groups(mut self, groups: RowGroups) -> Self {
        self.row_groups = groups;
        self
    }

    /// `[batch, seq]`.
    pub fn dims(&self) -> [usize; 2] {
        self.ids.dims()
    }
}

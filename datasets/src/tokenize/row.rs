//! One packed row with its document boundaries, and its conversion to the trainer's
//! [`TokenBatch`].

use internlm2::data::TokenBatch;
use serde::{Deserialize, Serialize};

use crate::{DataError, Result};

/// A piece of one document inside a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// First token of the piece in [`PackedRow::tokens`].
    pub start: usize,
    /// Tokens in the piece (the document's EOS separator included when it falls in the row).
    pub len: usize,
    /// The document's number in its [`TokenShards`](super::TokenShards) (the index of
    /// its [`DocumentSource`](internlm2::data::DocumentSource) view).
    pub document: u64,
    /// Whether the document begins here; false when it continues from the previous row.
    pub starts_document: bool,
}

/// One row of a token shard: `seq_len + 1` tokens, inputs `tokens[..seq_len]` and targets
/// `tokens[1..]`. The next row starts with this row's last token.
///
/// `segments` tile `tokens[..valid_len]` in order; `tokens[valid_len..]` is padding (only in
/// the last row of a shard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedRow {
    /// `seq_len + 1` token ids.
    pub tokens: Vec<u32>,
    /// Tokens that are real; the rest is padding.
    pub valid_len: usize,
    /// The document pieces of the real tokens.
    pub segments: Vec<Segment>,
}

impl PackedRow {
    /// Input tokens per row.
    pub fn seq_len(&self) -> usize {
        self.tokens.len().saturating_sub(1)
    }

    /// The input ids, `tokens[..seq_len]`.
    pub fn inputs(&self) -> &[u32] {
        &self.tokens[..self.seq_len()]
    }

    /// The target ids, `tokens[1..]` (empty for an empty row).
    pub fn targets(&self) -> &[u32] {
        self.tokens.get(1..).unwrap_or_default()
    }

    /// The segment number of every token of `tokens`: 0, 1, ... per piece, and one more number
    /// for the padding.
    pub fn segment_ids(&self) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.tokens.len());
        for (s, segment) in self.segments.iter().enumerate() {
            ids.extend(std::iter::repeat_n(s as u32, segment.len));
        }
        ids.resize(self.tokens.len(), self.segments.len() as u32);
        ids
    }

    fn check(&self) -> Result<()> {
        let mut next = 0usize;
        let mut tiled = true;
        for segment in &self.segments {
            tiled &= segment.start == next && segment.len > 0;
            next = next.saturating_add(segment.len);
        }
        tiled &= next == self.valid_len;
        if self.tokens.len() < 2 || self.valid_len > self.tokens.len() || !tiled {
            return Err(DataError::config(format!(
                "packed row: {} tokens, valid_len {}, segments {:?} do not tile the valid tokens",
                self.tokens.len(),
                self.valid_len,
                self.segments
            )));
        }
        Ok(())
    }

    /// The trainer's batch of `rows` (all of one `seq_len`), exactly as
    /// [`internlm2::data::Packer::next_batch`] builds it for the same stream:
    ///
    /// - inputs `tokens[..L]`, targets `tokens[1..]`;
    /// - per-document attention (`cross_document_attention == false`): positions restart at 0
    ///   at the start of the row and of every piece, segment ids number the pieces of the row
    ///   from 0, and a target counts in the loss only when it is in the same piece as its input
    ///   (so the target after a document's last token — its EOS — is left out);
    /// - cross-document attention: positions `0..L`, no segment ids, every real target counts.
    ///
    /// Padding gets its own segment and never counts in the loss.
    ///
    /// ```
    /// use internlm2_datasets::tokenize::{PackedRow, Segment};
    /// let seg = |start, len, document, starts_document| Segment { start, len, document, starts_document };
    /// // Document 0 = [5, 6, EOS 2], document 1 = [7, ...] continuing in the next row.
    /// let row = PackedRow {
    ///     tokens: vec![5, 6, 2, 7, 8],
    ///     valid_len: 5,
    ///     segments: vec![seg(0, 3, 0, true), seg(3, 2, 1, true)],
    /// };
    /// let b = PackedRow::to_token_batch(&[row], false).unwrap();
    /// assert_eq!(b.inputs, vec![5, 6, 2, 7]);
    /// assert_eq!(b.targets, vec![6, 2, 7, 8]);
    /// assert_eq!(b.positions, vec![0, 1, 2, 0]);
    /// assert_eq!(b.segments, Some(vec![0, 0, 0, 1]));
    /// assert_eq!(b.loss_mask, vec![true, true, false, true]);
    /// ```
    pub fn to_token_batch(
        rows: &[PackedRow],
        cross_document_attention: bool,
    ) -> Result<TokenBatch> {
        let Some(first) = rows.first() else {
            return Err(DataError::config("to_token_batch: no rows"));
        };
        let l = first.seq_len();
        let mut out = TokenBatch::empty(l, !cross_document_attention);
        for row in rows {
            row.check()?;
            if row.seq_len() != l {
                return Err(DataError::config(format!(
                    "to_token_batch: rows of seq_len {l} and {}",
                    row.seq_len()
                )));
            }
            let (tokens, valid) = (&row.tokens, row.valid_len);
            let mut writer = out.push_row();
            if cross_document_attention {
                let counts = (0..l).map(|i| i + 1 < valid);
                writer.push_piece(row.inputs(), row.targets(), counts);
            } else {
                // One piece per run of a segment id; a target counts when it is real and in
                // the same piece as its input.
                let ids = row.segment_ids();
                let mut start = 0;
                for end in 1..=l {
                    if end == l || ids[end] != ids[start] {
                        let counts = (start..end).map(|i| i + 1 < valid && ids[i] == ids[i + 1]);
                        writer.push_piece(&tokens[start..end], &tokens[start + 1..=end], counts);
                        start = end;
                    }
                }
            }
            writer.finish(0);
        }
        Ok(out)
    }
}

//! The data types training reads, shared by the data pipeline (`internlm2-datasets`) and the
//! training engine (`internlm2-train`): documents of token ids ([`DocumentSource`]), rows of
//! them ([`TokenBatch`]) and the packer that joins documents with EOS separators and cuts them
//! into fixed-length rows, as the varlen packing of the reference training systems does.
//! They live in the core crate so that both can use them without depending on each other.
//!
//! A row holds `seq_len + 1` tokens of the stream (inputs `0..seq_len`, targets `1..=seq_len`);
//! the next row starts at the row's last token, so every token is a target exactly once and
//! a long document's remainder carries on into the next row. With document masking (the
//! default), positions restart at 0 at every document start (and at the start of a row that
//! continues a document), attention stays inside a document (segment ids), and the target
//! after an EOS (the next document's first token) is left out of the loss.
//!
//! The stream is addressed by a [`DataCursor`], so a run can stop and resume at the exact
//! token it reached.

use std::borrow::Cow;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// Where the next row starts: epoch, document of that epoch, token inside it (the EOS after a
/// document is its last token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataCursor {
    /// Passes over the source so far.
    pub epoch: u64,
    /// Document index within the epoch's order.
    pub document: u64,
    /// Token offset within the document.
    pub offset: u64,
}

/// Documents of tokens, in a deterministic order per epoch.
pub trait DocumentSource {
    /// Documents per epoch.
    fn len(&self) -> usize;

    /// Whether the source has no documents.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Document `index` of epoch `epoch`.
    fn document(&self, epoch: u64, index: usize) -> Cow<'_, [u32]>;
}

/// Documents held in memory, shuffled per epoch with a seed (or in order).
#[derive(Debug, Clone)]
pub struct InMemoryDocuments {
    documents: Vec<Vec<u32>>,
    seed: Option<u64>,
}

impl InMemoryDocuments {
    /// Documents in the given order every epoch.
    pub fn new(documents: Vec<Vec<u32>>) -> Self {
        Self {
            documents: documents.into_iter().filter(|d| !d.is_empty()).collect(),
            seed: None,
        }
    }

    /// Shuffles the order of every epoch with `seed + epoch`.
    pub fn shuffled(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    fn order(&self, epoch: u64) -> Option<Vec<usize>> {
        let seed = self.seed?;
        let mut order: Vec<usize> = (0..self.documents.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(epoch)));
        Some(order)
    }
}

impl DocumentSource for InMemoryDocuments {
    fn len(&self) -> usize {
        self.documents.len()
    }

    fn document(&self, epoch: u64, index: usize) -> Cow<'_, [u32]> {
        let i = self.order(epoch).map_or(index, |o| o[index]);
        Cow::Borrowed(&self.documents[i])
    }
}

/// How documents become rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackingConfig {
    /// Tokens per row (inputs).
    pub seq_len: usize,
    /// Separator appended to every document.
    pub eos_id: u32,
    /// Let attention and positions run across documents (plain concatenation).
    pub cross_document_attention: bool,
}

/// One batch of packed rows, row-major `[batch, seq_len]` host vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    /// Rows.
    pub batch: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Input ids.
    pub inputs: Vec<u32>,
    /// Target ids (inputs shifted by one).
    pub targets: Vec<u32>,
    /// Whether each target counts in the loss.
    pub loss_mask: Vec<bool>,
    /// Position of each input token.
    pub positions: Vec<usize>,
    /// Segment (document) id of each input token, when attention is per document.
    pub segments: Option<Vec<u32>>,
}

impl TokenBatch {
    /// A batch without rows, of rows of `seq_len` tokens; with `per_document` attention its
    /// rows carry segment ids.
    pub fn empty(seq_len: usize, per_document: bool) -> Self {
        Self {
            batch: 0,
            seq_len,
            inputs: Vec::new(),
            targets: Vec::new(),
            loss_mask: Vec::new(),
            positions: Vec::new(),
            segments: per_document.then(Vec::new),
        }
    }

    /// Targets that count in the loss.
    pub fn loss_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }

    /// Starts a new row; it is complete when [`RowWriter::finish`] has filled it.
    ///
    /// Every packing of the SDK lays its rows out here: the [`Packer`]'s stream, the token
    /// shards of `internlm2-datasets` and the conversations of SFT.
    ///
    /// ```
    /// use internlm2::data::TokenBatch;
    /// let mut batch = TokenBatch::empty(6, true);
    /// let mut row = batch.push_row();
    /// row.push_piece(&[5, 6], &[6, 7], [true, true]); // a document
    /// row.push_piece(&[8], &[9], [false]); //            another one, its target not counted
    /// row.finish(0); //                                   padding
    /// assert_eq!(batch.positions, vec![0, 1, 0, 0, 1, 2]);
    /// assert_eq!(batch.segments, Some(vec![0, 0, 1, 2, 2, 2]));
    /// assert_eq!(batch.loss_mask, vec![true, true, false, false, false, false]);
    /// ```
    pub fn push_row(&mut self) -> RowWriter<'_> {
        let start = self.inputs.len();
        RowWriter {
            batch: self,
            start,
            segment: 0,
            position: 0,
        }
    }

    /// Rows `start..start + rows`.
    ///
    /// # Panics
    /// If the rows are not in the batch.
    pub fn slice_rows(&self, start: usize, rows: usize) -> Self {
        let l = self.seq_len;
        let range = start * l..(start + rows) * l;
        Self {
            batch: rows,
            seq_len: l,
            inputs: self.inputs[range.clone()].to_vec(),
            targets: self.targets[range.clone()].to_vec(),
            loss_mask: self.loss_mask[range.clone()].to_vec(),
            positions: self.positions[range.clone()].to_vec(),
            segments: self.segments.as_ref().map(|s| s[range].to_vec()),
        }
    }

    /// Appends the rows of `other` (rows of the same length and attention).
    ///
    /// # Panics
    /// If the row lengths or the attention differ.
    pub fn append(&mut self, other: &TokenBatch) {
        assert_eq!(self.seq_len, other.seq_len, "rows of different lengths");
        assert_eq!(
            self.segments.is_some(),
            other.segments.is_some(),
            "rows of different attention"
        );
        self.batch += other.batch;
        self.inputs.extend_from_slice(&other.inputs);
        self.targets.extend_from_slice(&other.targets);
        self.loss_mask.extend_from_slice(&other.loss_mask);
        self.positions.extend_from_slice(&other.positions);
        if let (Some(s), Some(o)) = (self.segments.as_mut(), other.segments.as_ref()) {
            s.extend_from_slice(o);
        }
    }
}

/// Writes one row of a [`TokenBatch`] piece by piece ([`TokenBatch::push_row`]).
///
/// A piece is one document's part of the row: its input ids, the target of each input and
/// whether that target counts in the loss. With per-document attention every piece gets its
/// own segment id and positions restarting at 0; otherwise positions run across the row.
#[derive(Debug)]
pub struct RowWriter<'a> {
    batch: &'a mut TokenBatch,
    start: usize,
    segment: u32,
    position: usize,
}

impl RowWriter<'_> {
    /// Tokens written to the row so far.
    pub fn len(&self) -> usize {
        self.batch.inputs.len() - self.start
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a piece (`inputs[i]` predicts `targets[i]`, counted when `counts[i]`).
    ///
    /// # Panics
    /// If `targets` is not as long as `inputs`, or the row would grow past `seq_len`.
    pub fn push_piece(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        counts: impl IntoIterator<Item = bool>,
    ) {
        assert_eq!(inputs.len(), targets.len(), "one target per input");
        assert!(
            self.len() + inputs.len() <= self.batch.seq_len,
            "the piece does not fit the row"
        );
        let batch = &mut *self.batch;
        let before = batch.loss_mask.len();
        batch.inputs.extend_from_slice(inputs);
        batch.targets.extend_from_slice(targets);
        batch
            .loss_mask
            .extend(counts.into_iter().take(inputs.len()));
        assert_eq!(
            batch.loss_mask.len(),
            before + inputs.len(),
            "one count per input"
        );
        match batch.segments.as_mut() {
            Some(segments) => {
                batch.positions.extend(0..inputs.len());
                segments.extend(std::iter::repeat_n(self.segment, inputs.len()));
                self.segment += 1;
            }
            None => {
                batch
                    .positions
                    .extend(self.position..self.position + inputs.len());
                self.position += inputs.len();
            }
        }
    }

    /// Fills the rest of the row with `pad` (a piece of its own that never counts) and
    /// completes the row.
    pub fn finish(mut self, pad: u32) {
        let rest = self.batch.seq_len - self.len();
        if rest > 0 {
            let pads = vec![pad; rest];
            self.push_piece(&pads, &pads, std::iter::repeat(false));
        }
        self.batch.batch += 1;
    }
}

/// Cuts a document stream into [`TokenBatch`]es.
#[derive(Debug, Clone)]
pub struct Packer<S: DocumentSource> {
    source: S,
    config: PackingConfig,
    cursor: DataCursor,
}

/// One token of the stream with its place in it.
struct StreamToken {
    id: u32,
    is_eos: bool,
    cursor: DataCursor,
}

impl<S: DocumentSource> Packer<S> {
    /// A packer at the start of the stream.
    ///
    /// # Panics
    /// If the source is empty or `seq_len` is 0.
    pub fn new(source: S, config: PackingConfig) -> Self {
        assert!(!source.is_empty(), "no documents to pack");
        assert!(config.seq_len > 0, "seq_len must be positive");
        Self {
            source,
            config,
            cursor: DataCursor::default(),
        }
    }

    /// Where the next row starts.
    pub fn cursor(&self) -> DataCursor {
        self.cursor
    }

    /// Moves to `cursor` (from a checkpoint).
    pub fn seek(&mut self, cursor: DataCursor) {
        self.cursor = cursor;
    }

    /// The packing settings.
    pub fn config(&self) -> PackingConfig {
        self.config
    }

    /// Changes the row length (a context-length curriculum phase); the cursor is kept.
    pub fn set_seq_len(&mut self, seq_len: usize) {
        assert!(seq_len > 0, "seq_len must be positive");
        self.config.seq_len = seq_len;
    }

    fn token_at(&self, c: DataCursor) -> (StreamToken, DataCursor) {
        let doc = self.source.document(c.epoch, c.document as usize);
        let len = doc.len() as u64;
        let (id, is_eos) = if c.offset < len {
            (doc[c.offset as usize], false)
        } else {
            (self.config.eos_id, true)
        };
        let mut next = c;
        if c.offset >= len {
            next.offset = 0;
            next.document += 1;
            if next.document as usize >= self.source.len() {
                next.document = 0;
                next.epoch += 1;
            }
        } else {
            next.offset += 1;
        }
        (
            StreamToken {
                id,
                is_eos,
                cursor: c,
            },
            next,
        )
    }

    /// The next `batch` rows.
    pub fn next_batch(&mut self, batch: usize) -> TokenBatch {
        let l = self.config.seq_len;
        let per_document = !self.config.cross_document_attention;
        let mut out = TokenBatch::empty(l, per_document);
        for _ in 0..batch {
            // The row's l + 1 tokens of the stream.
            let mut row = Vec::with_capacity(l + 1);
            let mut cursor = self.cursor;
            for _ in 0..=l {
                let (token, next) = self.token_at(cursor);
                row.push(token);
                cursor = next;
            }
            self.cursor = row[l].cursor;
            let ids: Vec<u32> = row.iter().map(|t| t.id).collect();
            let mut writer = out.push_row();
            if per_document {
                // A piece ends after each EOS: the next document's first token is not its
                // target.
                let mut start = 0;
                for end in 1..=l {
                    if row[end - 1].is_eos || end == l {
                        let counts = (start..end).map(|i| !row[i].is_eos);
                        writer.push_piece(&ids[start..end], &ids[start + 1..=end], counts);
                        start = end;
                    }
                }
            } else {
                writer.push_piece(&ids[..l], &ids[1..], std::iter::repeat(true));
            }
            writer.finish(self.config.eos_id);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packer(cross: bool) -> Packer<InMemoryDocuments> {
        Packer::new(
            InMemoryDocuments::new(vec![
                vec![10, 11, 12],
                vec![20, 21],
                vec![30, 31, 32, 33, 34, 35],
            ]),
            PackingConfig {
                seq_len: 4,
                eos_id: 2,
                cross_document_attention: cross,
            },
        )
    }

    #[test]
    fn rows_targets_positions_segments_by_hand() {
        let mut p = packer(false);
        // Stream: 10 11 12 2 20 21 2 30 31 32 33 34 35 2 | 10 ...
        let b = p.next_batch(2);
        assert_eq!(b.inputs, vec![10, 11, 12, 2, /* row 2 */ 20, 21, 2, 30]);
        assert_eq!(b.targets, vec![11, 12, 2, 20, /* */ 21, 2, 30, 31]);
        assert_eq!(b.positions, vec![0, 1, 2, 3, /* */ 0, 1, 2, 0]);
        assert_eq!(b.segments.as_deref(), Some(&[0, 0, 0, 0, 0, 0, 0, 1][..]));
        // EOS -> first token of the next document is not a target.
        assert_eq!(
            b.loss_mask,
            vec![true, true, true, false, true, true, false, true]
        );
        // The long document runs into the next row, positions restart there.
        let c = p.next_batch(1);
        assert_eq!(c.inputs, vec![31, 32, 33, 34]);
        assert_eq!(c.positions, vec![0, 1, 2, 3]);
        let d = p.next_batch(1);
        assert_eq!(d.inputs, vec![35, 2, 10, 11]);
        assert_eq!(
            d.targets,
            vec![2, 10, 11, 12],
            "the stream wraps to the next epoch"
        );
        assert_eq!(p.cursor().epoch, 1);
    }

    #[test]
    fn every_token_is_a_target_once() {
        let mut p = packer(true);
        let b = p.next_batch(3);
        let stream = [10, 11, 12, 2, 20, 21, 2, 30, 31, 32, 33, 34, 35, 2];
        assert_eq!(b.targets, stream[1..13].to_vec());
        assert!(b.loss_mask.iter().all(|&m| m));
        assert_eq!(b.positions, vec![0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]);
        assert!(b.segments.is_none());
    }

    #[test]
    fn seeking_a_cursor_repeats_the_stream() {
        let mut p = packer(false);
        p.next_batch(1);
        let at = p.cursor();
        let a = p.next_batch(3);
        p.seek(at);
        assert_eq!(p.next_batch(3), a);
    }

    #[test]
    fn shuffled_epochs_are_deterministic_permutations() {
        let docs: Vec<Vec<u32>> = (0..20).map(|i| vec![i]).collect();
        let s = InMemoryDocuments::new(docs).shuffled(7);
        let epoch0: Vec<u32> = (0..20).map(|i| s.document(0, i)[0]).collect();
        let again: Vec<u32> = (0..20).map(|i| s.document(0, i)[0]).collect();
        let epoch1: Vec<u32> = (0..20).map(|i| s.document(1, i)[0]).collect();
        assert_eq!(epoch0, again);
        assert_ne!(epoch0, epoch1);
        let mut sorted = epoch0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    }
}

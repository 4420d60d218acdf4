//! Packed training sequences: documents joined with EOS separators and cut into fixed-length
//! rows, as the varlen packing of the reference training systems does.
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
    /// Targets that count in the loss.
    pub fn loss_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }
}

/// Cuts a document stream into [`TokenBatch`]es.
#[derive(Debug, Clone)]
pub struct Packer<S: DocumentSource> {
    source: S,
    config: PackingConfig,
    cursor: DataCursor,
}

/// One token of the stream with its document number (within the row) and offset.
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
        let mut out = TokenBatch {
            batch,
            seq_len: l,
            inputs: Vec::with_capacity(batch * l),
            targets: Vec::with_capacity(batch * l),
            loss_mask: Vec::with_capacity(batch * l),
            positions: Vec::with_capacity(batch * l),
            segments: (!self.config.cross_document_attention)
                .then(|| Vec::with_capacity(batch * l)),
        };
        for _ in 0..batch {
            // l + 1 tokens, with the document each belongs to (a new one after every EOS).
            let mut row = Vec::with_capacity(l + 1);
            let mut cursor = self.cursor;
            let mut segment = 0u32;
            for _ in 0..=l {
                let (token, next) = self.token_at(cursor);
                let after_eos = token.is_eos;
                row.push((token, segment));
                if after_eos {
                    segment += 1;
                }
                cursor = next;
            }
            self.cursor = row[l].0.cursor;
            let mut position = 0usize;
            for i in 0..l {
                let (token, seg) = (&row[i].0, row[i].1);
                let (target, target_seg) = (&row[i + 1].0, row[i + 1].1);
                out.inputs.push(token.id);
                out.targets.push(target.id);
                if self.config.cross_document_attention {
                    out.positions.push(i);
                    out.loss_mask.push(true);
                } else {
                    if i > 0 && seg != row[i - 1].1 {
                        position = 0;
                    }
                    out.positions.push(position);
                    position += 1;
                    out.loss_mask.push(seg == target_seg);
                    if let Some(segments) = out.segments.as_mut() {
                        segments.push(seg);
                    }
                }
            }
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

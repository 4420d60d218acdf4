//! Tokenise and pack: documents become fixed-length rows of token ids in memory-mapped token
//! shards, with the document boundaries of every row, and a burn [`Dataset`] over them.
//!
//! # The stream and its rows
//!
//! A shard holds one *stream*: each document's tokens (encoded with `<s>` when
//! [`PackConfig::add_bos`]), followed by the EOS separator (when [`PackConfig::eos`]), documents
//! back to back in input order. Row `r` is the window `stream[r·L ..= r·L + L]` of `L + 1`
//! tokens (`L` = [`PackConfig::seq_len`]): inputs are its first `L` tokens, targets its last `L`,
//! and the next row starts at this row's last token. Rows therefore overlap by one token and
//! every token but the first is a target exactly once — the convention of
//! [`internlm2::data::Packer`], which [`PackedRow::to_token_batch`] reproduces exactly. A
//! document longer than a row simply continues in the next row (SPEC 5: the remainder is used,
//! nothing is truncated).
//!
//! The last row of a shard is padded with the pad id (the tokenizer's EOS) up to `L + 1` tokens;
//! [`PackedRow::valid_len`] says how many are real, and padding never counts in the loss. No
//! token is ever dropped: a stream of `N` tokens gives `ceil((N - 1) / L)` rows (one row when
//! `N == 1`).
//!
//! # Files
//!
//! [`pack_documents`] writes one shard per call (one input shard of the pipeline), as
//! `<name>.index.json` plus one or more parts `<name>.NNNNN.tokens` / `<name>.NNNNN.docs`. The
//! index is written last (temporary file + rename), so a shard whose index exists is complete
//! and a relaunch skips it. [`TokenShards::open`] memory-maps every shard of a folder and
//! validates it against its index. The exact format is described in [`ShardIndex`].
//!
//! ```
//! use internlm2::Tokenizer;
//! use internlm2_datasets::Document;
//! use internlm2_datasets::tokenize::{PackConfig, PackedRow, TokenShards, pack_documents};
//! use burn::data::dataset::Dataset;
//!
//! let texts = ["the cat sat on the mat", "the dog sat on the log"];
//! let tokenizer = Tokenizer::train_bpe(texts.iter(), 300).unwrap();
//! let dir = tempfile::tempdir().unwrap();
//! let config = PackConfig::default().with_seq_len(8);
//! let docs = texts.iter().map(|t| Document::new(*t));
//! let stats = pack_documents(&tokenizer, docs, &config, dir.path(), "part-00000").unwrap();
//! assert_eq!(stats.documents, 2);
//!
//! let shards = TokenShards::open(dir.path()).unwrap();
//! assert_eq!(shards.len() as u64, stats.rows);
//! let row = shards.get(0).unwrap();
//! assert_eq!(row.tokens.len(), 9); // seq_len + 1
//! let batch = PackedRow::to_token_batch(&[row], false).unwrap();
//! assert_eq!(batch.inputs.len(), 8);
//! ```
//!
//! [`Dataset`]: burn::data::dataset::Dataset

mod documents;
mod format;
mod pack;
mod row;
mod shards;
mod writer;

use burn::config::Config;
use serde::{Deserialize, Serialize};

pub use documents::{OpenedDocuments, TokenizerSource, TrainingDocuments, read_texts};
pub use format::{FORMAT_NAME, FORMAT_VERSION, PartIndex, ShardIndex};
pub use pack::{pack_documents, try_pack_documents};
pub use row::{PackedRow, Segment};
pub use shards::TokenShards;
pub use writer::{PackStats, ShardWriter, finished_shard};

use crate::{DataError, Result};

/// How token ids are stored on disk (little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenDtype {
    /// 2 bytes per token; only for vocabularies of at most 65,536 ids.
    U16,
    /// 4 bytes per token.
    #[default]
    U32,
}

impl TokenDtype {
    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }

    /// The largest vocabulary this type can store.
    pub fn max_vocab(self) -> u64 {
        match self {
            TokenDtype::U16 => 1 << 16,
            TokenDtype::U32 => 1 << 32,
        }
    }
}

/// How documents are tokenised and packed into rows.
///
/// ```
/// use internlm2_datasets::tokenize::{PackConfig, TokenDtype};
/// let c = PackConfig::default().with_seq_len(32_768).with_rows_per_file(Some(1024));
/// assert_eq!(c.seq_len, 32_768);
/// assert_eq!(c.dtype, TokenDtype::U32);
/// assert!(c.add_bos && c.eos);
/// ```
///
/// The builders and the serde form come from burn's `#[derive(Config)]`.
#[derive(Config, Debug, PartialEq, Eq)]
pub struct PackConfig {
    /// Input tokens per row (`L`); a row stores `L + 1` tokens. Default 4096 (SPEC 5's main
    /// phase; 32,768 for the long-context phase).
    #[config(default = 4096)]
    pub seq_len: usize,
    /// Encode every document with `<s>` in front. Default true.
    #[config(default = true)]
    pub add_bos: bool,
    /// Append the EOS separator after every document. Default true.
    #[config(default = true)]
    pub eos: bool,
    /// On-disk token type. Default [`TokenDtype::U32`]; [`TokenDtype::U16`] is accepted when the
    /// vocabulary has at most 65,536 ids.
    #[config(default = "TokenDtype::U32")]
    pub dtype: TokenDtype,
    /// Largest number of rows in one `.tokens` file; `None` (default) writes one file per
    /// shard. A document cut at a file boundary continues in the next file.
    pub rows_per_file: Option<u64>,
    /// Documents tokenised together on the rayon pool (order is kept). Default 1024.
    #[config(default = 1024)]
    pub chunk_documents: usize,
}

impl Default for PackConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl PackConfig {
    /// Checks the settings against a vocabulary.
    pub fn validate(&self, vocab: &VocabInfo) -> Result<()> {
        let bad = |m: String| Err(DataError::config(m));
        if self.seq_len == 0 {
            return bad("pack: seq_len must be positive".into());
        }
        if self.rows_per_file == Some(0) {
            return bad("pack: rows_per_file must be positive".into());
        }
        if self.chunk_documents == 0 {
            return bad("pack: chunk_documents must be positive".into());
        }
        if vocab.vocab_size == 0 {
            return bad("pack: empty vocabulary".into());
        }
        if vocab.vocab_size as u64 > self.dtype.max_vocab() {
            return bad(format!(
                "pack: a vocabulary of {} ids does not fit dtype {:?}",
                vocab.vocab_size, self.dtype
            ));
        }
        if self.eos && vocab.eos_id.is_none() {
            return bad("pack: eos separators asked for but the tokenizer has no EOS id".into());
        }
        for id in [vocab.eos_id, vocab.bos_id].into_iter().flatten() {
            if id as usize >= vocab.vocab_size {
                return bad(format!(
                    "pack: special id {id} outside the vocabulary of {}",
                    vocab.vocab_size
                ));
            }
        }
        Ok(())
    }
}

/// What the packer needs to know about the tokenizer; recorded in every shard's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VocabInfo {
    /// Number of ids; every stored id is below it.
    pub vocab_size: usize,
    /// `<s>`.
    pub bos_id: Option<u32>,
    /// `</s>`: the separator and the padding id.
    pub eos_id: Option<u32>,
}

impl VocabInfo {
    /// The vocabulary of a tokenizer.
    pub fn of(tokenizer: &internlm2::Tokenizer) -> Self {
        Self {
            vocab_size: tokenizer.vocab_size(),
            bos_id: tokenizer.bos_id(),
            eos_id: tokenizer.eos_id(),
        }
    }

    /// The id written as padding: EOS, or 0 without one.
    pub fn pad_id(&self) -> u32 {
        self.eos_id.unwrap_or(0)
    }
}

//! The on-disk format of a token shard: the JSON index, the part files, and their validation.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use super::{PackConfig, TokenDtype, VocabInfo};
use crate::error::IoContext;
use crate::{DataError, Result};

/// The `format` field of every shard index.
pub const FORMAT_NAME: &str = "internlm2-token-shard";

/// The `version` field this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The index of one shard: `<name>.index.json`.
///
/// A shard is one stream of tokens (see the [module docs](super)) cut into rows of
/// `seq_len + 1` tokens with stride `seq_len`, stored in one or more *parts*. Part `k` holds
/// rows `Σ_{j<k} rows_j ..` of the shard in two files:
///
/// - `tokens_file` (`<name>.NNNNN.tokens`): `rows · seq_len + 1` token ids, little-endian
///   `dtype`, no header. Row `r` of the part is tokens `r · seq_len ..= r · seq_len + seq_len`.
///   The first `valid_tokens` are the stream; the rest (only in the last part) are `pad_id`. The
///   last token of a part is repeated as the first token of the next part, so the rows of all
///   parts are exactly the rows of the unsplit stream.
/// - `docs_file` (`<name>.NNNNN.docs`): `segments` little-endian `u64`, the offsets in the part
///   where each document piece begins, strictly increasing, the first `0`. Piece `j` ends where
///   piece `j + 1` begins (the last at `valid_tokens`); it is document `first_document + j` of the
///   shard, including the EOS separator that ends it. Piece 0 continues a document of the
///   previous part when `first_continues`.
///
/// `xxh3_64` is the 64-bit XXH3 hash (seed 0) of the token file's bytes, 16 hex digits.
/// Counts: `rows = Σ rows_k`; `tokens = Σ valid_tokens_k - (parts - 1)` (the stream length, the
/// repeated tokens counted once); `padding = Σ (rows_k · seq_len + 1 - valid_tokens_k)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIndex {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// [`FORMAT_VERSION`] when written.
    pub version: u32,
    /// Input tokens per row.
    pub seq_len: usize,
    /// How the ids are stored.
    pub dtype: TokenDtype,
    /// Whether documents were encoded with `<s>`.
    pub add_bos: bool,
    /// Whether every document ends with an EOS separator.
    pub eos: bool,
    /// The tokenizer's number of ids.
    pub vocab_size: usize,
    /// The tokenizer's `<s>`.
    pub bos_id: Option<u32>,
    /// The tokenizer's `</s>`.
    pub eos_id: Option<u32>,
    /// The id of padding tokens.
    pub pad_id: u32,
    /// Documents in the shard.
    pub documents: u64,
    /// Input documents skipped because they had no text or no tokens.
    pub empty_documents: u64,
    /// Tokens of the stream (documents and separators, no padding).
    pub tokens: u64,
    /// Rows of the shard.
    pub rows: u64,
    /// Padding tokens at the end of the last row.
    pub padding: u64,
    /// The parts, in stream order.
    pub parts: Vec<PartIndex>,
}

/// One part of a shard: a `.tokens` file and its `.docs` boundary table (see [`ShardIndex`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartIndex {
    /// File name of the tokens, beside the index.
    pub tokens_file: String,
    /// File name of the document-boundary table, beside the index.
    pub docs_file: String,
    /// Rows in this part.
    pub rows: u64,
    /// Stream tokens in the file; the rest is padding.
    pub valid_tokens: u64,
    /// The shard-level number of the document of piece 0.
    pub first_document: u64,
    /// Whether piece 0 continues a document begun in the previous part.
    pub first_continues: bool,
    /// Document pieces (entries of the `.docs` file).
    pub segments: u64,
    /// XXH3-64 of the token file's bytes, 16 lowercase hex digits.
    pub xxh3_64: String,
}

/// Rows needed for a stream of `valid` tokens: `ceil((valid - 1) / seq_len)`, one row for a
/// single token, none for an empty stream.
pub(crate) fn rows_for(valid: u64, seq_len: u64) -> u64 {
    match valid {
        0 => 0,
        1 => 1,
        v => (v - 2) / seq_len + 1,
    }
}

/// Tokens stored for `rows` rows (the writer's sizes; indexes read from disk go through
/// [`checked_stored_len`]).
pub(crate) fn stored_len(rows: u64, seq_len: u64) -> u64 {
    if rows == 0 { 0 } else { rows * seq_len + 1 }
}

/// [`stored_len`], `None` when it overflows.
pub(crate) fn checked_stored_len(rows: u64, seq_len: u64) -> Option<u64> {
    if rows == 0 {
        Some(0)
    } else {
        rows.checked_mul(seq_len)?.checked_add(1)
    }
}

/// Largest shard index file read, in bytes (one part takes about 250 bytes of JSON).
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

/// `<dir>/<name>.index.json`.
pub(crate) fn index_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.index.json"))
}

/// The file names of part `k`.
pub(crate) fn part_names(name: &str, k: usize) -> (String, String) {
    (
        format!("{name}.{k:05}.tokens"),
        format!("{name}.{k:05}.docs"),
    )
}

/// A shard name must be a plain file-name stem.
pub(crate) fn check_name(name: &str) -> Result<()> {
    if is_plain_file_name(name) {
        Ok(())
    } else {
        Err(DataError::config(format!(
            "shard name {name:?} must be a non-empty file name without separators"
        )))
    }
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Writes `bytes` to `<path>.tmp`, syncs it, and renames it to `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let mut file = File::create(&tmp).at(&tmp)?;
    file.write_all(bytes).at(&tmp)?;
    file.sync_all().at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)
}

/// `<path>.tmp`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

fn corrupt(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Corrupt {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl ShardIndex {
    /// Reads an index and checks that its header and counts are consistent (the part files are
    /// checked by [`TokenShards::open`](super::TokenShards::open)).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let len = std::fs::metadata(path).at(path)?.len();
        if len > MAX_INDEX_BYTES {
            return Err(corrupt(
                path,
                format!("{len} bytes, more than the {MAX_INDEX_BYTES} a shard index may have"),
            ));
        }
        let text = std::fs::read_to_string(path).at(path)?;
        let index: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| corrupt(path, format!("not a shard index: {e}")))?;
        index.check(path)?;
        Ok(index)
    }

    /// The tokenizer settings recorded in the index.
    pub fn vocab(&self) -> VocabInfo {
        VocabInfo {
            vocab_size: self.vocab_size,
            bos_id: self.bos_id,
            eos_id: self.eos_id,
        }
    }

    /// Tokens stored in the file of part `k` (valid tokens and padding); checked not to
    /// overflow by [`ShardIndex::load`].
    pub(crate) fn stored_tokens(&self, k: usize) -> u64 {
        stored_len(self.parts[k].rows, self.seq_len as u64)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(corrupt(path, m));
        if self.format != FORMAT_NAME {
            return bad(format!(
                "format {:?}, expected {FORMAT_NAME:?}",
                self.format
            ));
        }
        if self.version != FORMAT_VERSION {
            return bad(format!(
                "version {}, this build reads version {FORMAT_VERSION}",
                self.version
            ));
        }
        if self.seq_len == 0 || self.seq_len > MAX_SEQ_LEN {
            return bad(format!(
                "seq_len {} (expected 1..={MAX_SEQ_LEN})",
                self.seq_len
            ));
        }
        if self.vocab_size as u64 > self.dtype.max_vocab()
            || self.pad_id as usize >= self.vocab_size
        {
            return bad(format!(
                "vocabulary of {} ids with pad id {} does not fit dtype {:?}",
                self.vocab_size, self.pad_id, self.dtype
            ));
        }
        let l = self.seq_len as u64;
        let (mut rows, mut valid, mut padding) = (0u64, 0u64, 0u64);
        let mut next_document = 0u64;
        let last = self.parts.len().saturating_sub(1);
        let overflow = |k: usize| Err(corrupt(path, format!("part {k}: counts overflow")));
        for (k, part) in self.parts.iter().enumerate() {
            if !is_plain_file_name(&part.tokens_file) || !is_plain_file_name(&part.docs_file) {
                return bad(format!("part {k}: file names must be plain names"));
            }
            // The file sizes the part implies must be representable: tokens times the dtype
            // width, and 8 bytes per document piece.
            let Some(stored) = checked_stored_len(part.rows, l)
                .filter(|&s| s.checked_mul(self.dtype.width() as u64).is_some())
            else {
                return overflow(k);
            };
            if part.segments.checked_mul(8).is_none() {
                return overflow(k);
            }
            let expected_rows = if k == last {
                rows_for(part.valid_tokens, l)
            } else {
                part.rows
            };
            if part.rows == 0
                || part.valid_tokens == 0
                || part.valid_tokens > stored
                || (k < last && part.valid_tokens != stored)
                || part.rows != expected_rows
            {
                return bad(format!(
                    "part {k}: {} rows do not fit {} stream tokens",
                    part.rows, part.valid_tokens
                ));
            }
            if part.segments == 0 || part.segments > part.valid_tokens {
                return bad(format!("part {k}: {} document pieces", part.segments));
            }
            if part.first_document != next_document || (k == 0 && part.first_continues) {
                return bad(format!(
                    "part {k}: first document {} (expected {next_document})",
                    part.first_document
                ));
            }
            if part.xxh3_64.len() != 16 || u64::from_str_radix(&part.xxh3_64, 16).is_err() {
                return bad(format!("part {k}: bad xxh3_64 {:?}", part.xxh3_64));
            }
            // The last document of a part goes on into the next one (the repeated token).
            let sums = (|| {
                Some((
                    (part.first_document.checked_add(part.segments)? - 1),
                    rows.checked_add(part.rows)?,
                    valid.checked_add(part.valid_tokens)?,
                    padding.checked_add(stored - part.valid_tokens)?,
                ))
            })();
            let Some(sums) = sums else {
                return overflow(k);
            };
            (next_document, rows, valid, padding) = sums;
        }
        let documents_seen = if self.parts.is_empty() {
            0
        } else {
            next_document.saturating_add(1)
        };
        let tokens = valid.saturating_sub((self.parts.len() as u64).saturating_sub(1));
        if rows != self.rows
            || padding != self.padding
            || tokens != self.tokens
            || documents_seen != self.documents
        {
            return bad(format!(
                "counts disagree with the parts: rows {} vs {rows}, padding {} vs {padding}, \
                 tokens {} vs {tokens}, documents {} vs {documents_seen}",
                self.rows, self.padding, self.tokens, self.documents
            ));
        }
        Ok(())
    }

    /// Whether the shard was written with these settings; a difference is a configuration
    /// error (packing again with other settings needs another folder or name).
    pub(crate) fn check_settings(
        &self,
        path: &Path,
        config: &PackConfig,
        vocab: &VocabInfo,
    ) -> Result<()> {
        let ours = (
            self.seq_len,
            self.dtype,
            self.add_bos,
            self.eos,
            self.vocab(),
        );
        let theirs = (
            config.seq_len,
            config.dtype,
            config.add_bos,
            config.eos,
            *vocab,
        );
        if ours != theirs {
            return Err(DataError::config(format!(
                "{} was packed with (seq_len, dtype, add_bos, eos, vocab) = {ours:?}, this run \
                 asks {theirs:?}; delete it or pack into another folder",
                path.display()
            )));
        }
        Ok(())
    }
}

/// Largest `seq_len` a shard index may declare (rows are copied out whole).
pub const MAX_SEQ_LEN: usize = 1 << 24;

/// A part's files, opened and checked against the index.
pub(crate) struct OpenedPart {
    pub tokens_path: PathBuf,
    pub map: Mmap,
    pub starts: Vec<u64>,
}

/// Opens part `k` of the shard indexed at `index_path`: file sizes, boundary table.
pub(crate) fn open_part(index_path: &Path, index: &ShardIndex, k: usize) -> Result<OpenedPart> {
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let part = &index.parts[k];
    let tokens_path = dir.join(&part.tokens_file);
    let docs_path = dir.join(&part.docs_file);

    let expected = index.stored_tokens(k) * index.dtype.width() as u64;
    let file = File::open(&tokens_path).at(&tokens_path)?;
    let actual = file.metadata().at(&tokens_path)?.len();
    if actual != expected {
        return Err(corrupt(
            &tokens_path,
            format!(
                "{actual} bytes, the index says {} {:?} tokens = {expected} bytes",
                index.stored_tokens(k),
                index.dtype
            ),
        ));
    }
    // SAFETY: the file is opened read-only; shards are written once (temporary file + rename)
    // and never modified in place. Truncating a mapped file from outside is not supported.
    let map = unsafe { Mmap::map(&file) }.at(&tokens_path)?;

    let bytes = std::fs::read(&docs_path).at(&docs_path)?;
    if bytes.len() as u64 != part.segments * 8 {
        return Err(corrupt(
            &docs_path,
            format!(
                "{} bytes, the index says {} u64 offsets",
                bytes.len(),
                part.segments
            ),
        ));
    }
    let starts: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
        .collect();
    let increasing = starts.windows(2).all(|w| w[0] < w[1]);
    if starts.first() != Some(&0) || !increasing || starts.last() >= Some(&part.valid_tokens) {
        return Err(corrupt(
            &docs_path,
            "document offsets must start at 0, increase, and stay below valid_tokens",
        ));
    }
    Ok(OpenedPart {
        tokens_path,
        map,
        starts,
    })
}

/// Streaming XXH3-64 of a token file, as recorded in [`PartIndex::xxh3_64`].
pub(crate) fn hash_hex(hash: u64) -> String {
    format!("{hash:016x}")
}

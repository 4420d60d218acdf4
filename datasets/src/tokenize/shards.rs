//! Reading token shards: memory-mapped parts checked against their indexes, rows as a burn
//! [`Dataset`], and the documents as a [`DocumentSource`] for [`internlm2::data::Packer`].

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::data::dataset::Dataset;
use internlm2::data::{DocumentSource, PackingConfig};
use memmap2::Mmap;

use super::format::{OpenedPart, ShardIndex, hash_hex, open_part};
use super::{PackedRow, Segment, TokenDtype, VocabInfo};
use crate::error::IoContext;
use crate::{DataError, Result};

/// All token shards of a folder, memory-mapped: rows in shard-name order, then part and row
/// order.
///
/// `TokenShards` is a burn [`Dataset`] of [`PackedRow`]s (`get(i)` copies one row of
/// `seq_len + 1` tokens out of the map), and a [`DocumentSource`] of the packed documents
/// (without their EOS separators) so that [`internlm2::data::Packer`] — and the trainer's
/// `run` — can re-pack them at another length, e.g. the 32K phase from 4K shards. Documents are
/// borrowed from the map for `u32` shards on little-endian hosts; a `u16` part is widened to
/// `u32` in memory the first time one of its documents is asked for, and a document cut
/// across two part files is assembled once and kept.
///
/// ```
/// use internlm2_datasets::tokenize::{PackConfig, ShardWriter, TokenShards, VocabInfo};
/// use internlm2::data::{DocumentSource, Packer};
/// use burn::data::dataset::Dataset;
/// let dir = tempfile::tempdir().unwrap();
/// let vocab = VocabInfo { vocab_size: 100, bos_id: None, eos_id: Some(2) };
/// let mut w = ShardWriter::create(dir.path(), "a", &PackConfig::default().with_seq_len(4), vocab).unwrap();
/// w.push_document(&[10, 11, 12]).unwrap();
/// w.push_document(&[20, 21]).unwrap();
/// w.finish().unwrap();
///
/// let shards = TokenShards::open(dir.path()).unwrap();
/// assert_eq!(shards.len(), 2); // stream 10 11 12 2 20 21 2: ceil(6 / 4) rows
/// assert_eq!(shards.get(1).unwrap().tokens, vec![20, 21, 2, 2, 2]); // 2 padding tokens
/// assert_eq!(&*shards.document(0, 1), &[20, 21]);
/// // Re-pack the documents at another length (here 6) with internlm2's Packer.
/// let config = shards.packing_config(6, false).unwrap();
/// let mut packer = Packer::new(shards, config);
/// assert_eq!(packer.next_batch(1).inputs, vec![10, 11, 12, 2, 20, 21]);
/// ```
pub struct TokenShards {
    seq_len: usize,
    shards: Vec<OpenShard>,
    parts: Vec<PartView>,
    /// Global row number of each part's first row, then the total.
    row_offsets: Vec<u64>,
    documents: u64,
}

struct OpenShard {
    path: PathBuf,
    index: ShardIndex,
}

struct PartView {
    shard: usize,
    tokens_path: PathBuf,
    map: Mmap,
    dtype: TokenDtype,
    rows: u64,
    valid: u64,
    starts: Vec<u64>,
    /// Global number of the document of piece 0.
    first_document: u64,
    first_continues: bool,
    xxh3_64: String,
    /// The valid tokens as `u32` when the map cannot be borrowed as such.
    widened: OnceLock<Vec<u32>>,
    /// The last document, assembled, when it goes on into the next part.
    spanning: OnceLock<Vec<u32>>,
}

impl PartView {
    fn last_document(&self) -> u64 {
        self.first_document + self.starts.len() as u64 - 1
    }

    /// End of piece `j`.
    fn piece_end(&self, j: usize) -> u64 {
        self.starts.get(j + 1).copied().unwrap_or(self.valid)
    }
}

impl std::fmt::Debug for TokenShards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenShards")
            .field("seq_len", &self.seq_len)
            .field("shards", &self.shards.len())
            .field("parts", &self.parts.len())
            .field("rows", &self.rows())
            .field("documents", &self.documents)
            .finish()
    }
}

/// The error for shards whose rows or documents add up past `u64::MAX`.
fn too_many(path: &Path) -> DataError {
    DataError::Corrupt {
        path: path.to_path_buf(),
        message: "rows or documents of the shards add up past 2^64".into(),
    }
}

fn decode(bytes: &[u8], dtype: TokenDtype, from: u64, to: u64) -> Vec<u32> {
    let w = dtype.width();
    let bytes = &bytes[from as usize * w..to as usize * w];
    match dtype {
        TokenDtype::U16 => bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
            .collect(),
        TokenDtype::U32 => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

impl TokenShards {
    /// Opens every shard of `dir` (every `*.index.json`, in file-name order) and checks each
    /// part against its index: file sizes and boundary tables ([`DataError::Corrupt`] on a
    /// mismatch). All shards must share `seq_len`, vocabulary size, EOS and pad ids
    /// ([`DataError::Config`] otherwise); a folder without shards is a [`DataError::Config`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let mut indexes = Vec::new();
        for entry in std::fs::read_dir(dir).at(dir)? {
            let path = entry.at(dir)?.path();
            let is_index = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".index.json"));
            if is_index && path.is_file() {
                indexes.push(path);
            }
        }
        indexes.sort();
        if indexes.is_empty() {
            return Err(DataError::config(format!(
                "no token shards (*.index.json) in {}",
                dir.display()
            )));
        }
        Self::open_indexes(indexes)
    }

    /// Opens the shards of the given index files, in the given order (checked as by
    /// [`TokenShards::open`]; no files at all is a [`DataError::Config`]).
    pub fn open_indexes(indexes: impl IntoIterator<Item = impl AsRef<Path>>) -> Result<Self> {
        let mut this = TokenShards {
            seq_len: 0,
            shards: Vec::new(),
            parts: Vec::new(),
            row_offsets: vec![0],
            documents: 0,
        };
        for path in indexes {
            let path = path.as_ref();
            let index = ShardIndex::load(path)?;
            if let Some(first) = this.shards.first() {
                let key = |i: &ShardIndex| (i.seq_len, i.vocab_size, i.eos_id, i.pad_id);
                if key(&index) != key(&first.index) {
                    return Err(DataError::config(format!(
                        "{}: (seq_len, vocab_size, eos_id, pad_id) = {:?}, but {} has {:?}",
                        path.display(),
                        key(&index),
                        first.path.display(),
                        key(&first.index)
                    )));
                }
            }
            this.seq_len = index.seq_len;
            let shard = this.shards.len();
            for (k, part) in index.parts.iter().enumerate() {
                let OpenedPart {
                    tokens_path,
                    map,
                    starts,
                } = open_part(path, &index, k)?;
                this.parts.push(PartView {
                    shard,
                    tokens_path,
                    map,
                    dtype: index.dtype,
                    rows: part.rows,
                    valid: part.valid_tokens,
                    starts,
                    first_document: this
                        .documents
                        .checked_add(part.first_document)
                        .ok_or_else(|| too_many(path))?,
                    first_continues: part.first_continues,
                    xxh3_64: part.xxh3_64.clone(),
                    widened: OnceLock::new(),
                    spanning: OnceLock::new(),
                });
                let rows = this.row_offsets.last().copied().unwrap_or(0);
                let rows = rows.checked_add(part.rows).ok_or_else(|| too_many(path))?;
                this.row_offsets.push(rows);
            }
            this.documents = this
                .documents
                .checked_add(index.documents)
                .ok_or_else(|| too_many(path))?;
            this.shards.push(OpenShard {
                path: path.to_path_buf(),
                index,
            });
        }
        if this.shards.is_empty() {
            return Err(DataError::config("no token shard index files given"));
        }
        Ok(this)
    }

    /// Input tokens per row.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Rows of all shards, as `usize` (the [`Dataset`] length; the [`DocumentSource`] length is
    /// [`TokenShards::documents`]). Defined here so that `shards.len()` is not ambiguous.
    pub fn len(&self) -> usize {
        self.rows() as usize
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows() == 0
    }

    /// Rows of all shards.
    pub fn rows(&self) -> u64 {
        self.row_offsets.last().copied().unwrap_or(0)
    }

    /// Documents of all shards.
    pub fn documents(&self) -> u64 {
        self.documents
    }

    /// Stream tokens of all shards (documents and separators, no padding).
    pub fn tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.index.tokens).sum()
    }

    /// The tokenizer the shards were packed with.
    pub fn vocab(&self) -> VocabInfo {
        self.shards.first().map_or(
            VocabInfo {
                vocab_size: 0,
                bos_id: None,
                eos_id: None,
            },
            |s| s.index.vocab(),
        )
    }

    /// Every shard's index file and contents, in order.
    pub fn indexes(&self) -> impl Iterator<Item = (&Path, &ShardIndex)> {
        self.shards.iter().map(|s| (s.path.as_path(), &s.index))
    }

    /// The settings of an [`internlm2::data::Packer`] that packs [this document
    /// view](DocumentSource) into rows of `seq_len` with the shards' EOS id; a
    /// [`DataError::Config`] when the tokenizer had no EOS.
    pub fn packing_config(
        &self,
        seq_len: usize,
        cross_document_attention: bool,
    ) -> Result<PackingConfig> {
        let eos_id = self.vocab().eos_id.ok_or_else(|| {
            DataError::config("the shards' tokenizer has no EOS id to separate documents")
        })?;
        Ok(PackingConfig {
            seq_len,
            eos_id,
            cross_document_attention,
        })
    }

    /// Recomputes every token file's XXH3-64 and compares it with the index
    /// ([`DataError::Corrupt`] naming the file on a mismatch). Reads all the data.
    pub fn verify(&self) -> Result<()> {
        for part in &self.parts {
            let hash = hash_hex(xxhash_rust::xxh3::xxh3_64(&part.map));
            if hash != part.xxh3_64 {
                return Err(DataError::Corrupt {
                    path: part.tokens_path.clone(),
                    message: format!("xxh3_64 {hash}, the index says {}", part.xxh3_64),
                });
            }
        }
        Ok(())
    }

    /// Row `index` (global), or `None` past the end.
    pub fn row(&self, index: u64) -> Option<PackedRow> {
        if index >= self.rows() {
            return None;
        }
        let p = self.row_offsets.partition_point(|&o| o <= index) - 1;
        let part = &self.parts[p];
        debug_assert!(index - self.row_offsets[p] < part.rows);
        let l = self.seq_len as u64;
        let begin = (index - self.row_offsets[p]) * l;
        let tokens = decode(&part.map, part.dtype, begin, begin + l + 1);
        let valid_end = part.valid.min(begin + l + 1);
        let mut segments = Vec::new();
        let first = part.starts.partition_point(|&s| s <= begin) - 1;
        for j in first..part.starts.len() {
            let start = part.starts[j];
            if start >= valid_end {
                break;
            }
            let from = start.max(begin);
            let to = part.piece_end(j).min(valid_end);
            segments.push(Segment {
                start: (from - begin) as usize,
                len: (to - from) as usize,
                document: part.first_document + j as u64,
                starts_document: start >= begin && !(j == 0 && part.first_continues),
            });
        }
        Some(PackedRow {
            tokens,
            valid_len: (valid_end - begin) as usize,
            segments,
        })
    }

    /// Tokens `from..to` of a part as `u32`, borrowed.
    fn slice<'a>(&'a self, part: &'a PartView, from: u64, to: u64) -> &'a [u32] {
        if part.dtype == TokenDtype::U32
            && cfg!(target_endian = "little")
            && let Ok(all) = bytemuck::try_cast_slice::<u8, u32>(&part.map)
        {
            return &all[from as usize..to as usize];
        }
        let wide = part
            .widened
            .get_or_init(|| decode(&part.map, part.dtype, 0, part.valid));
        &wide[from as usize..to as usize]
    }

    /// The tokens of document `index` (global), without its EOS separator; `None` past the end.
    pub fn document_tokens(&self, index: u64) -> Option<&[u32]> {
        if index >= self.documents {
            return None;
        }
        let p = self
            .parts
            .partition_point(|part| part.last_document() < index);
        let part = &self.parts[p];
        let j = (index - part.first_document) as usize;
        let strip = usize::from(self.shards[part.shard].index.eos);
        let continues = |q: usize| {
            self.parts
                .get(q + 1)
                .is_some_and(|next| next.shard == part.shard && next.first_document == index)
        };
        if !continues(p) {
            let tokens = self.slice(part, part.starts[j], part.piece_end(j));
            return Some(&tokens[..tokens.len() - strip]);
        }
        let whole = part.spanning.get_or_init(|| {
            let mut whole = self.slice(part, part.starts[j], part.valid).to_vec();
            let mut q = p + 1;
            loop {
                let next = &self.parts[q];
                // Token 0 of a part repeats the previous part's last token.
                whole.extend_from_slice(self.slice(next, 1, next.piece_end(0)));
                if next.starts.len() > 1 || !continues(q) {
                    break;
                }
                q += 1;
            }
            whole.truncate(whole.len() - strip);
            whole
        });
        Some(whole)
    }
}

impl Dataset<PackedRow> for TokenShards {
    fn get(&self, index: usize) -> Option<PackedRow> {
        self.row(index as u64)
    }

    fn len(&self) -> usize {
        self.rows() as usize
    }
}

impl DocumentSource for TokenShards {
    fn len(&self) -> usize {
        self.documents as usize
    }

    /// The same documents in the same order every epoch.
    ///
    /// # Panics
    /// If `index >= len()`, as slice indexing does.
    fn document(&self, _epoch: u64, index: usize) -> Cow<'_, [u32]> {
        match self.document_tokens(index as u64) {
            Some(tokens) => Cow::Borrowed(tokens),
            None => panic!(
                "document {index} of token shards with {} documents",
                self.documents
            ),
        }
    }
}

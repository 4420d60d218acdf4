//! Writing a shard: documents of token ids in, rows of `seq_len + 1` tokens out, files written
//! through temporary names and the index renamed last.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use super::format::{
    FORMAT_NAME, FORMAT_VERSION, PartIndex, ShardIndex, check_name, hash_hex, index_path,
    open_part, part_names, rows_for, stored_len, tmp_path, write_atomic,
};
use super::{PackConfig, TokenDtype, VocabInfo};
use crate::error::IoContext;
use crate::{DataError, Result};

/// Bytes buffered before a write to the token file.
const FLUSH_BYTES: usize = 1 << 20;

/// What packing one shard produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PackStats {
    /// Documents packed.
    pub documents: u64,
    /// Documents skipped because they had no text (or no tokens).
    pub empty_documents: u64,
    /// Tokens of the stream: document tokens plus separators, without padding.
    pub tokens: u64,
    /// Rows of `seq_len + 1` tokens.
    pub rows: u64,
    /// Padding tokens in the last row.
    pub padding: u64,
    /// `.tokens` files written.
    pub parts: usize,
    /// The shard was already complete and was not written again.
    pub resumed: bool,
}

impl PackStats {
    fn from_index(index: &ShardIndex, resumed: bool) -> Self {
        Self {
            documents: index.documents,
            empty_documents: index.empty_documents,
            tokens: index.tokens,
            rows: index.rows,
            padding: index.padding,
            parts: index.parts.len(),
            resumed,
        }
    }
}

/// Whether shard `name` of `dir` is complete and was written with these settings: the restart
/// check of [`pack_documents`](super::pack_documents).
///
/// `Ok(Some(stats))` when its index exists and its part files have the sizes and boundary
/// tables the index describes; `Ok(None)` when it does not exist or is incomplete or damaged
/// (a warning is logged and the shard will be written again); a [`DataError::Config`] when it
/// is complete but was packed with other settings. Checksums are not recomputed here (see
/// [`TokenShards::verify`](super::TokenShards::verify)).
pub fn finished_shard(
    dir: impl AsRef<Path>,
    name: &str,
    config: &PackConfig,
    vocab: &VocabInfo,
) -> Result<Option<PackStats>> {
    check_name(name)?;
    let path = index_path(dir.as_ref(), name);
    if !path.is_file() {
        return Ok(None);
    }
    let index = match ShardIndex::load(&path) {
        Ok(index) => index,
        Err(e @ DataError::Corrupt { .. }) => {
            log::warn!("{e}; packing the shard again");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    index.check_settings(&path, config, vocab)?;
    for k in 0..index.parts.len() {
        if let Err(e) = open_part(&path, &index, k) {
            log::warn!("{e}; packing the shard again");
            return Ok(None);
        }
    }
    Ok(Some(PackStats::from_index(&index, true)))
}

/// Writes one shard from documents that are already token ids.
///
/// Each non-empty document is written followed by the EOS separator (when
/// [`PackConfig::eos`]); empty ones are counted and skipped. [`ShardWriter::finish`] pads the
/// last row and writes the index; a writer dropped before `finish` leaves only temporary files
/// and parts without an index, which a later run overwrites.
///
/// ```
/// use internlm2_datasets::tokenize::{PackConfig, ShardWriter, VocabInfo};
/// let dir = tempfile::tempdir().unwrap();
/// let vocab = VocabInfo { vocab_size: 100, bos_id: Some(1), eos_id: Some(2) };
/// let config = PackConfig::default().with_seq_len(4);
/// let mut w = ShardWriter::create(dir.path(), "s", &config, vocab).unwrap();
/// w.push_document(&[10, 11, 12]).unwrap(); // stream: 10 11 12 2
/// w.push_document(&[20, 21]).unwrap(); //     then 20 21 2
/// let stats = w.finish().unwrap();
/// assert_eq!((stats.tokens, stats.rows, stats.padding), (7, 2, 2)); // ceil(6 / 4) rows of 5
/// ```
pub struct ShardWriter {
    dir: PathBuf,
    name: String,
    config: PackConfig,
    vocab: VocabInfo,
    /// Tokens a part holds before it is closed.
    capacity: u64,
    part: Option<PartWriter>,
    parts: Vec<PartIndex>,
    documents: u64,
    empty_documents: u64,
    tokens: u64,
    /// The last token written, its document and its offset in that document.
    last: (u32, u64, u64),
}

/// The part being written.
struct PartWriter {
    number: usize,
    tokens_name: String,
    docs_name: String,
    tmp: PathBuf,
    file: File,
    buf: Vec<u8>,
    hasher: Xxh3,
    dtype: TokenDtype,
    len: u64,
    starts: Vec<u64>,
    first_document: u64,
    first_continues: bool,
}

impl std::fmt::Debug for ShardWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardWriter")
            .field("dir", &self.dir)
            .field("name", &self.name)
            .field("seq_len", &self.config.seq_len)
            .field("documents", &self.documents)
            .field("tokens", &self.tokens)
            .field("finished_parts", &self.parts.len())
            .finish()
    }
}

impl PartWriter {
    fn create(
        dir: &Path,
        name: &str,
        number: usize,
        dtype: TokenDtype,
        first_document: u64,
        first_continues: bool,
    ) -> Result<Self> {
        let (tokens_name, docs_name) = part_names(name, number);
        let tmp = tmp_path(&dir.join(&tokens_name));
        let file = File::create(&tmp).at(&tmp)?;
        Ok(Self {
            number,
            tokens_name,
            docs_name,
            tmp,
            file,
            buf: Vec::with_capacity(FLUSH_BYTES + 4),
            hasher: Xxh3::new(),
            dtype,
            len: 0,
            starts: Vec::new(),
            first_document,
            first_continues,
        })
    }

    fn push(&mut self, token: u32) -> Result<()> {
        match self.dtype {
            // The id was checked against a vocabulary of at most 65,536 ids.
            TokenDtype::U16 => self.buf.extend_from_slice(&(token as u16).to_le_bytes()),
            TokenDtype::U32 => self.buf.extend_from_slice(&token.to_le_bytes()),
        }
        self.len += 1;
        if self.buf.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.hasher.update(&self.buf);
        self.file.write_all(&self.buf).at(&self.tmp)?;
        self.buf.clear();
        Ok(())
    }

    /// Pads to whole rows, syncs and renames both files; returns the part's index entry.
    fn close(mut self, dir: &Path, seq_len: u64, pad_id: u32) -> Result<PartIndex> {
        let valid = self.len;
        let rows = rows_for(valid, seq_len);
        for _ in valid..stored_len(rows, seq_len) {
            self.push(pad_id)?;
        }
        self.flush()?;
        self.file.sync_all().at(&self.tmp)?;
        let tokens_path = dir.join(&self.tokens_name);
        std::fs::rename(&self.tmp, &tokens_path).at(&tokens_path)?;
        let docs: Vec<u8> = self.starts.iter().flat_map(|s| s.to_le_bytes()).collect();
        write_atomic(&dir.join(&self.docs_name), &docs)?;
        Ok(PartIndex {
            tokens_file: self.tokens_name,
            docs_file: self.docs_name,
            rows,
            valid_tokens: valid,
            first_document: self.first_document,
            first_continues: self.first_continues,
            segments: self.starts.len() as u64,
            xxh3_64: hash_hex(self.hasher.digest()),
        })
    }
}

impl ShardWriter {
    /// Starts shard `name` in `dir` (created if needed). An existing index of that name is
    /// removed first, so an interrupted rewrite never looks complete.
    pub fn create(
        dir: impl AsRef<Path>,
        name: &str,
        config: &PackConfig,
        vocab: VocabInfo,
    ) -> Result<Self> {
        config.validate(&vocab)?;
        check_name(name)?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).at(&dir)?;
        remove_if_present(&index_path(&dir, name))?;
        let l = config.seq_len as u64;
        let capacity = config
            .rows_per_file
            .map_or(u64::MAX, |rows| rows.saturating_mul(l).saturating_add(1));
        Ok(Self {
            dir,
            name: name.to_string(),
            config: config.clone(),
            vocab,
            capacity,
            part: None,
            parts: Vec::new(),
            documents: 0,
            empty_documents: 0,
            tokens: 0,
            last: (0, 0, 0),
        })
    }

    /// Appends one document (its ids, `<s>` included if wanted); an empty one is counted in
    /// [`PackStats::empty_documents`] and skipped. An id outside the vocabulary is a
    /// [`DataError::Config`] and nothing of the document is written.
    pub fn push_document(&mut self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            self.empty_documents += 1;
            return Ok(());
        }
        let vocab_size = self.vocab.vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(DataError::config(format!(
                "shard {}: document {} has id {bad}, outside the vocabulary of {vocab_size}",
                self.name, self.documents
            )));
        }
        let document = self.documents;
        let eos = self.vocab.eos_id.filter(|_| self.config.eos);
        for (offset, &token) in tokens.iter().chain(eos.iter()).enumerate() {
            self.push_token(token, document, offset as u64)?;
        }
        self.documents += 1;
        Ok(())
    }

    fn push_token(&mut self, token: u32, document: u64, offset: u64) -> Result<()> {
        let dtype = self.config.dtype;
        let part = match self.part.take() {
            None => PartWriter::create(&self.dir, &self.name, 0, dtype, document, false)?,
            Some(full) if full.len == self.capacity => {
                // The full part's last token opens the next part, so rows stay contiguous.
                let number = full.number + 1;
                self.parts.push(full.close(
                    &self.dir,
                    self.config.seq_len as u64,
                    self.vocab.pad_id(),
                )?);
                let (last, last_document, last_offset) = self.last;
                let mut next = PartWriter::create(
                    &self.dir,
                    &self.name,
                    number,
                    dtype,
                    last_document,
                    last_offset > 0,
                )?;
                next.starts.push(0);
                next.push(last)?;
                next
            }
            Some(part) => part,
        };
        let part = self.part.insert(part);
        if offset == 0 {
            part.starts.push(part.len);
        }
        part.push(token)?;
        self.tokens += 1;
        self.last = (token, document, offset);
        Ok(())
    }

    /// Documents written so far.
    pub fn documents(&self) -> u64 {
        self.documents
    }

    /// Pads the last row, closes the last part, removes parts left by an earlier, longer run
    /// of the same name, and writes the index (temporary file + rename).
    pub fn finish(mut self) -> Result<PackStats> {
        let l = self.config.seq_len as u64;
        if let Some(part) = self.part.take() {
            self.parts
                .push(part.close(&self.dir, l, self.vocab.pad_id())?);
        }
        self.remove_stale_parts()?;
        let index = ShardIndex {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            seq_len: self.config.seq_len,
            dtype: self.config.dtype,
            add_bos: self.config.add_bos,
            eos: self.config.eos,
            vocab_size: self.vocab.vocab_size,
            bos_id: self.vocab.bos_id,
            eos_id: self.vocab.eos_id,
            pad_id: self.vocab.pad_id(),
            documents: self.documents,
            empty_documents: self.empty_documents,
            tokens: self.tokens,
            rows: self.parts.iter().map(|p| p.rows).sum(),
            padding: self
                .parts
                .iter()
                .map(|p| stored_len(p.rows, l) - p.valid_tokens)
                .sum(),
            parts: std::mem::take(&mut self.parts),
        };
        let json = serde_json::to_string_pretty(&index)
            .map_err(|e| DataError::config(format!("shard index: {e}")))?;
        write_atomic(&index_path(&self.dir, &self.name), json.as_bytes())?;
        let stats = PackStats::from_index(&index, false);
        log::info!(
            "packed {}: {} documents, {} tokens, {} rows of {} (+{} padding) in {} file(s)",
            self.name,
            stats.documents,
            stats.tokens,
            stats.rows,
            self.config.seq_len,
            stats.padding,
            stats.parts
        );
        Ok(stats)
    }

    fn remove_stale_parts(&self) -> Result<()> {
        for number in self.parts.len().. {
            let (tokens, docs) = part_names(&self.name, number);
            let removed_tokens = remove_if_present(&self.dir.join(tokens))?;
            let removed_docs = remove_if_present(&self.dir.join(docs))?;
            if !removed_tokens && !removed_docs {
                break;
            }
        }
        Ok(())
    }
}

/// Removes a file; `Ok(false)` when it was not there.
fn remove_if_present(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).at(path),
    }
}

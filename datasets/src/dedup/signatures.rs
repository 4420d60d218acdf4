//! Per-shard signature files: the output of the signature job of one shard and the input of
//! the merge.
//!
//! Layout (little-endian). A 64-byte header:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `IL2MHSIG` |
//! | 8..12 | format version (1) |
//! | 12..16 | `num_perm` |
//! | 16..24 | [`DedupConfig::fingerprint`] of the writer's configuration |
//! | 24..32 | number of documents |
//! | 32..40 | body length in bytes |
//! | 40..48 | xxh3-64 checksum of the body |
//! | 48..64 | reserved (zero) |
//!
//! then one record per document, in input order: `id_len: u32`, `flags: u32` (bit 0: has a
//! signature, bit 1: has a priority), `priority: f64`, `exact: u128`, `num_perm` x `u32`
//! signature values (all `u32::MAX` without signature), then the id's UTF-8 bytes.
//!
//! Files are written to `<path>.tmp` and renamed when complete, so an existing file is never
//! half-written; [`SignatureFile::open`] verifies header, checksum and every record and
//! answers [`DataError::Corrupt`] for anything else.
//!
//! ```
//! use internlm2_datasets::Document;
//! use internlm2_datasets::dedup::{write_signatures, DedupConfig, SignatureFile};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("part-0.minhash");
//! let cfg = DedupConfig::default();
//! let docs = [Document::new("one two three four five six").with_id("a").with_timestamp(7)];
//! assert_eq!(write_signatures(&cfg, &docs, &path).unwrap(), 1);
//! let file = SignatureFile::open(&path).unwrap();
//! let rec = file.record(0);
//! assert_eq!((rec.id, rec.priority), ("a", Some(7.0)));
//! assert_eq!(rec.signature().unwrap().values().len(), 128);
//! ```

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use xxhash_rust::xxh3::{Xxh3Default, xxh3_64};

use super::minhash::{MinHasher, Signature};
use super::{DedupConfig, exact_hash};
use crate::error::IoContext;
use crate::{DataError, Document, Result};

const MAGIC: &[u8; 8] = b"IL2MHSIG";
const VERSION: u32 = 1;
const HEADER: usize = 64;
/// Bytes of a record before the signature: id_len, flags, priority, exact.
const FIXED: usize = 4 + 4 + 8 + 16;
const HAS_SIGNATURE: u32 = 1;
const HAS_PRIORITY: u32 = 2;
/// Documents hashed in parallel per batch by [`write_signatures`].
const BATCH: usize = 1024;

/// What the merge needs of one document, computed by a signature job.
struct Record {
    priority: Option<f64>,
    exact: u128,
    signature: Option<Vec<u32>>,
}

/// Streams documents of one shard into a signature file.
///
/// ```
/// use internlm2_datasets::Document;
/// use internlm2_datasets::dedup::{DedupConfig, SignatureWriter};
/// let dir = tempfile::tempdir().unwrap();
/// let mut w = SignatureWriter::create(&DedupConfig::default(), dir.path().join("s.minhash")).unwrap();
/// w.write(&Document::new("hello world").with_id("d1")).unwrap();
/// assert_eq!(w.finish().unwrap(), 1);
/// ```
pub struct SignatureWriter {
    hasher: MinHasher,
    cfg: DedupConfig,
    out: BufWriter<File>,
    tmp: PathBuf,
    path: PathBuf,
    docs: u64,
    body_len: u64,
    checksum: Xxh3Default,
    buf: Vec<u8>,
}

impl SignatureWriter {
    /// Start `path` (written as `<path>.tmp` until [`finish`](Self::finish)).
    pub fn create(cfg: &DedupConfig, path: impl AsRef<Path>) -> Result<Self> {
        cfg.validate()?;
        let path = path.as_ref().to_path_buf();
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp).at(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; HEADER]).at(&tmp)?;
        Ok(Self {
            hasher: MinHasher::new(cfg),
            cfg: cfg.clone(),
            out,
            tmp,
            path,
            docs: 0,
            body_len: 0,
            checksum: Xxh3Default::new(),
            buf: Vec::new(),
        })
    }

    fn compute(&self, doc: &Document) -> Result<Record> {
        if doc.id.is_empty() {
            return Err(DataError::config(
                "dedup: a document has no id (the format stage assigns unique ids)",
            ));
        }
        let mut sig = vec![0u32; self.hasher.num_perm()];
        let mut code_exact = 0u128;
        let has_sig = self.hasher.signature_into(
            &doc.text,
            &mut sig,
            self.cfg.code_aware.then_some(&mut code_exact),
        );
        let exact = if self.cfg.code_aware {
            code_exact
        } else {
            exact_hash(&doc.text, &self.cfg)
        };
        Ok(Record {
            priority: doc.priority(&self.cfg.priority_field),
            exact,
            signature: has_sig.then_some(sig),
        })
    }

    fn append(&mut self, id: &str, rec: &Record) -> Result<()> {
        let id_len = u32::try_from(id.len())
            .map_err(|_| DataError::config(format!("dedup: id of {} bytes", id.len())))?;
        let buf = &mut self.buf;
        buf.clear();
        let flags = if rec.signature.is_some() {
            HAS_SIGNATURE
        } else {
            0
        } | if rec.priority.is_some() {
            HAS_PRIORITY
        } else {
            0
        };
        buf.extend_from_slice(&id_len.to_le_bytes());
        buf.extend_from_slice(&flags.to_le_bytes());
        buf.extend_from_slice(&rec.priority.unwrap_or(0.0).to_le_bytes());
        buf.extend_from_slice(&rec.exact.to_le_bytes());
        match &rec.signature {
            Some(sig) => sig
                .iter()
                .for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
            None => buf.resize(buf.len() + 4 * self.hasher.num_perm(), 0xFF),
        }
        buf.extend_from_slice(id.as_bytes());
        self.checksum.update(buf);
        self.out.write_all(buf).at(&self.tmp)?;
        self.body_len += buf.len() as u64;
        self.docs += 1;
        Ok(())
    }

    /// Add one document.
    pub fn write(&mut self, doc: &Document) -> Result<()> {
        let rec = self.compute(doc)?;
        self.append(&doc.id, &rec)
    }

    /// Add documents, hashing them in parallel (rayon) and writing them in order.
    pub fn write_batch(&mut self, docs: &[&Document]) -> Result<()> {
        let recs: Vec<Result<Record>> = docs.par_iter().map(|d| self.compute(d)).collect();
        for (doc, rec) in docs.iter().zip(recs) {
            self.append(&doc.id, &rec?)?;
        }
        Ok(())
    }

    /// Add documents from a reader (e.g. [`crate::io::read_documents`]), hashing them in
    /// parallel batches; stops at the first error.
    pub fn write_iter(&mut self, docs: impl IntoIterator<Item = Result<Document>>) -> Result<()> {
        let mut batch: Vec<Document> = Vec::with_capacity(BATCH);
        for doc in docs {
            batch.push(doc?);
            if batch.len() == BATCH {
                self.write_batch(&batch.iter().collect::<Vec<_>>())?;
                batch.clear();
            }
        }
        self.write_batch(&batch.iter().collect::<Vec<_>>())
    }

    /// Complete the file (header, rename); returns the number of documents.
    pub fn finish(mut self) -> Result<u64> {
        let mut header = [0u8; HEADER];
        header[0..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(self.hasher.num_perm() as u32).to_le_bytes());
        header[16..24].copy_from_slice(&self.cfg.fingerprint().to_le_bytes());
        header[24..32].copy_from_slice(&self.docs.to_le_bytes());
        header[32..40].copy_from_slice(&self.body_len.to_le_bytes());
        header[40..48].copy_from_slice(&self.checksum.digest().to_le_bytes());
        self.out.flush().at(&self.tmp)?;
        let file = self.out.get_mut();
        file.seek(SeekFrom::Start(0)).at(&self.tmp)?;
        file.write_all(&header).at(&self.tmp)?;
        file.sync_all().at(&self.tmp)?;
        std::fs::rename(&self.tmp, &self.path).at(&self.path)?;
        Ok(self.docs)
    }
}

/// Compute the signatures of one shard's documents and write them to `path`; returns the
/// number of documents. Documents are hashed in parallel batches (rayon's pool); every
/// document needs a non-empty id.
pub fn write_signatures<'a>(
    cfg: &DedupConfig,
    docs: impl IntoIterator<Item = &'a Document>,
    path: impl AsRef<Path>,
) -> Result<u64> {
    let mut writer = SignatureWriter::create(cfg, path)?;
    let mut batch: Vec<&Document> = Vec::with_capacity(BATCH);
    for doc in docs {
        batch.push(doc);
        if batch.len() == BATCH {
            writer.write_batch(&batch)?;
            batch.clear();
        }
    }
    writer.write_batch(&batch)?;
    writer.finish()
}

/// One document of a signature file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignatureRecord<'a> {
    /// The document id.
    pub id: &'a str,
    /// Its priority (the configured field), if it had one.
    pub priority: Option<f64>,
    /// Its exact hash ([`exact_hash`]).
    pub exact: u128,
    raw: Option<&'a [u8]>,
}

impl<'a> SignatureRecord<'a> {
    /// The MinHash signature; `None` for a document without shingles.
    pub fn signature(&self) -> Option<Signature> {
        self.raw.map(|raw| {
            Signature(
                raw.chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        })
    }

    /// The signature's raw little-endian bytes.
    pub(crate) fn raw_signature(&self) -> Option<&'a [u8]> {
        self.raw
    }
}

/// A verified, memory-mapped signature file.
#[derive(Debug)]
pub struct SignatureFile {
    path: PathBuf,
    map: Mmap,
    num_perm: usize,
    fingerprint: u64,
    offsets: Vec<usize>,
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl SignatureFile {
    /// Open and verify `path` (header, checksum, every record).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let corrupt = |message: String| DataError::Corrupt {
            path: path.clone(),
            message,
        };
        let file = File::open(&path).at(&path)?;
        let len = file.metadata().at(&path)?.len();
        if len < HEADER as u64 {
            return Err(corrupt(format!(
                "{len} bytes, shorter than the {HEADER}-byte signature-file header"
            )));
        }
        // SAFETY: signature files are written once (to a temporary name, then renamed) and
        // never modified in place; the mapping is read-only.
        let map = unsafe { Mmap::map(&file) }.at(&path)?;
        let b = &map[..];
        if &b[0..8] != MAGIC {
            return Err(corrupt("not a MinHash signature file (bad magic)".into()));
        }
        let version = read_u32(b, 8);
        if version != VERSION {
            return Err(corrupt(format!(
                "signature format version {version}, this build reads {VERSION}"
            )));
        }
        let num_perm = read_u32(b, 12) as usize;
        let fingerprint = read_u64(b, 16);
        let docs = read_u64(b, 24);
        let body_len = read_u64(b, 32);
        let checksum = read_u64(b, 40);
        let actual = (b.len() - HEADER) as u64;
        if body_len != actual {
            return Err(corrupt(format!(
                "header announces {body_len} body bytes, the file has {actual} (truncated?)"
            )));
        }
        if num_perm == 0 {
            return Err(corrupt("num_perm is 0".into()));
        }
        let body = &b[HEADER..];
        if xxh3_64(body) != checksum {
            return Err(corrupt("checksum mismatch".into()));
        }
        let record_fixed = FIXED + 4 * num_perm;
        let mut offsets = Vec::with_capacity(docs.min(actual / record_fixed as u64) as usize);
        let mut at = 0usize;
        while at < body.len() {
            if body.len() - at < record_fixed {
                return Err(corrupt(format!("record {} is cut short", offsets.len())));
            }
            let id_len = read_u32(body, at) as usize;
            let flags = read_u32(body, at + 4);
            let end = at + record_fixed + id_len;
            if flags & !(HAS_SIGNATURE | HAS_PRIORITY) != 0 || end > body.len() {
                return Err(corrupt(format!("record {} is malformed", offsets.len())));
            }
            if std::str::from_utf8(&body[at + record_fixed..end]).is_err() || id_len == 0 {
                return Err(corrupt(format!(
                    "record {} has an invalid id",
                    offsets.len()
                )));
            }
            offsets.push(HEADER + at);
            at = end;
        }
        if offsets.len() as u64 != docs {
            return Err(corrupt(format!(
                "header announces {docs} documents, the body holds {}",
                offsets.len()
            )));
        }
        Ok(Self {
            path,
            map,
            num_perm,
            fingerprint,
            offsets,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether the file holds no document.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Signature length.
    pub fn num_perm(&self) -> usize {
        self.num_perm
    }

    /// Fingerprint of the configuration that wrote the file ([`DedupConfig::fingerprint`]).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Document `i` (panics when `i >= len()`).
    pub fn record(&self, i: usize) -> SignatureRecord<'_> {
        let at = self.offsets[i];
        let b = &self.map[..];
        let id_len = read_u32(b, at) as usize;
        let flags = read_u32(b, at + 4);
        let sig_at = at + FIXED;
        let id_at = sig_at + 4 * self.num_perm;
        SignatureRecord {
            // Checked to be UTF-8 in `open`.
            id: std::str::from_utf8(&b[id_at..id_at + id_len]).unwrap_or_default(),
            priority: (flags & HAS_PRIORITY != 0)
                .then(|| f64::from_le_bytes(b[at + 8..at + 16].try_into().expect("8 bytes"))),
            exact: u128::from_le_bytes(b[at + 16..at + 32].try_into().expect("16 bytes")),
            raw: (flags & HAS_SIGNATURE != 0).then(|| &b[sig_at..id_at]),
        }
    }

    /// All documents in file order.
    pub fn records(&self) -> impl Iterator<Item = SignatureRecord<'_>> + '_ {
        (0..self.len()).map(|i| self.record(i))
    }
}

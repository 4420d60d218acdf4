//! Reading and writing [`Document`] records: JSONL (plain, `.gz`, `.zst`) and Parquet, streamed
//! with bounded memory, and listing the shards of a sharded dataset.
//!
//! The format follows the file name: `*.jsonl` / `*.json`, `*.jsonl.gz`, `*.jsonl.zst`,
//! `*.parquet`. Writers write to `<file>.tmp` and rename on [`DocumentWriter::finish`], so a
//! file that exists is complete.
//!
//! ```
//! use internlm2_datasets::{Document, io::{DocumentWriter, read_documents}};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("part-00000.jsonl.zst");
//! let mut w = DocumentWriter::create(&path).unwrap();
//! w.write(&Document::new("hello").with_id("a")).unwrap();
//! w.finish().unwrap();
//! let docs: Vec<Document> = read_documents(&path).unwrap().collect::<Result<_, _>>().unwrap();
//! assert_eq!(docs[0].text, "hello");
//! ```

mod jsonl;
mod parquet;

use std::path::{Path, PathBuf};

pub use jsonl::{JsonlReader, JsonlWriter, MAX_LINE_BYTES};
pub use parquet::{ParquetReader, ParquetWriter};

use crate::error::IoContext;
use crate::{DataError, Document, Result};

/// Compression of a JSONL file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain text.
    None,
    /// gzip (`.gz`).
    Gzip,
    /// Zstandard (`.zst`).
    Zstd,
}

/// A file format this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// One JSON object per line.
    Jsonl(Compression),
    /// Apache Parquet with the columns of [`Document`] (`metadata` as a JSON string column).
    Parquet,
}

impl DataFormat {
    /// The format a file name implies.
    pub fn from_path(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let base = name.trim_end_matches(".tmp");
        let format = if base.ends_with(".parquet") {
            DataFormat::Parquet
        } else if base.ends_with(".jsonl.gz") || base.ends_with(".json.gz") {
            DataFormat::Jsonl(Compression::Gzip)
        } else if base.ends_with(".jsonl.zst") || base.ends_with(".json.zst") {
            DataFormat::Jsonl(Compression::Zstd)
        } else if base.ends_with(".jsonl") || base.ends_with(".json") {
            DataFormat::Jsonl(Compression::None)
        } else {
            return Err(DataError::UnknownFormat {
                path: path.to_path_buf(),
            });
        };
        Ok(format)
    }

    /// The usual file extension (`jsonl.zst`, `parquet`, ...).
    pub fn extension(&self) -> &'static str {
        match self {
            DataFormat::Jsonl(Compression::None) => "jsonl",
            DataFormat::Jsonl(Compression::Gzip) => "jsonl.gz",
            DataFormat::Jsonl(Compression::Zstd) => "jsonl.zst",
            DataFormat::Parquet => "parquet",
        }
    }
}

/// A streaming reader over the documents of one file, whatever its format.
pub enum DocumentReader {
    /// JSONL, possibly compressed.
    Jsonl(JsonlReader),
    /// Parquet, one record batch at a time.
    Parquet(ParquetReader),
}

impl Iterator for DocumentReader {
    type Item = Result<Document>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            DocumentReader::Jsonl(r) => r.next(),
            DocumentReader::Parquet(r) => r.next(),
        }
    }
}

/// Open `path` for streaming reads; the format comes from its name.
pub fn read_documents(path: impl AsRef<Path>) -> Result<DocumentReader> {
    let path = path.as_ref();
    Ok(match DataFormat::from_path(path)? {
        DataFormat::Jsonl(c) => DocumentReader::Jsonl(JsonlReader::open(path, c)?),
        DataFormat::Parquet => DocumentReader::Parquet(ParquetReader::open(path)?),
    })
}

/// A writer of documents to one file; the format comes from its name.
pub enum DocumentWriter {
    /// JSONL, possibly compressed.
    Jsonl(JsonlWriter),
    /// Parquet.
    Parquet(ParquetWriter),
}

impl DocumentWriter {
    /// Create `path` (written as `<path>.tmp` until [`finish`](Self::finish)).
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        Ok(match DataFormat::from_path(path)? {
            DataFormat::Jsonl(c) => DocumentWriter::Jsonl(JsonlWriter::create(path, c)?),
            DataFormat::Parquet => DocumentWriter::Parquet(ParquetWriter::create(path)?),
        })
    }

    /// Append one document.
    pub fn write(&mut self, doc: &Document) -> Result<()> {
        match self {
            DocumentWriter::Jsonl(w) => w.write(doc),
            DocumentWriter::Parquet(w) => w.write(doc),
        }
    }

    /// Documents written so far.
    pub fn count(&self) -> u64 {
        match self {
            DocumentWriter::Jsonl(w) => w.count(),
            DocumentWriter::Parquet(w) => w.count(),
        }
    }

    /// Flush, close and move the file into place.
    pub fn finish(self) -> Result<PathBuf> {
        match self {
            DocumentWriter::Jsonl(w) => w.finish(),
            DocumentWriter::Parquet(w) => w.finish(),
        }
    }
}

/// The data files under `path`, sorted by name: `path` itself when it is a file, otherwise
/// every file of the directory (not recursive) whose name is a known format.
pub fn list_shards(path: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).at(path)?;
    if meta.is_file() {
        DataFormat::from_path(path)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).at(path)? {
        let entry = entry.at(path)?;
        let p = entry.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_file() && !name.ends_with(".tmp") && DataFormat::from_path(&p).is_ok() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// `<path>.tmp`, where writers write before the final rename.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Document> {
        vec![
            Document::new("first\nline two")
                .with_id("a")
                .with_source("https://x.org/1")
                .with_timestamp(7),
            Document::new("二番目 ✓")
                .with_id("b")
                .with_meta("score", 0.25),
            Document::new("").with_id("c"),
        ]
    }

    #[test]
    fn every_format_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        for ext in ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"] {
            let path = dir.path().join(format!("s.{ext}"));
            let mut w = DocumentWriter::create(&path).unwrap();
            for d in sample() {
                w.write(&d).unwrap();
            }
            assert_eq!(w.count(), 3);
            assert!(!path.exists(), "{ext}: visible before finish");
            w.finish().unwrap();
            let back: Vec<Document> = read_documents(&path)
                .unwrap()
                .collect::<Result<_>>()
                .unwrap();
            assert_eq!(back, sample(), "{ext}");
        }
        let shards = list_shards(dir.path()).unwrap();
        assert_eq!(shards.len(), 4);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, "{\"text\": \"ok\"}\nnot json\n").unwrap();
        let mut r = read_documents(&path).unwrap();
        assert!(r.next().unwrap().is_ok());
        match r.next().unwrap() {
            Err(DataError::BadRecord { line, .. }) => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_documents(dir.path().join("x.csv")),
            Err(DataError::UnknownFormat { .. })
        ));
        let pq = dir.path().join("bad.parquet");
        std::fs::write(&pq, b"not parquet").unwrap();
        assert!(matches!(
            read_documents(&pq),
            Err(DataError::Parquet { .. })
        ));
    }
}

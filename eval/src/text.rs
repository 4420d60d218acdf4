//! Text inputs: JSONL (plain, gzip, zstd) and Parquet through the data crate's readers (the
//! `text` field of each record), any other file as one plain-text document, and a directory as
//! all of its files.

use std::path::{Path, PathBuf};

use internlm2_datasets::io::{DataFormat, read_documents};

use crate::error::{EvalError, IoContext, Result};

/// The files a path stands for: the file itself, or every regular file of the directory (not
/// recursive, sorted by name, hidden and `.tmp` files skipped).
pub fn list_text_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).at(path)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).at(path)? {
        let p = entry.at(path)?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_file() && !name.starts_with('.') && !name.ends_with(".tmp") {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(EvalError::Empty {
            what: format!("directory {}", path.display()),
        });
    }
    Ok(files)
}

/// The documents of one file: its records' `text` for JSONL/Parquet, its whole content
/// otherwise (it must be UTF-8).
pub fn read_file_texts(path: &Path) -> Result<Vec<String>> {
    if DataFormat::from_path(path).is_ok() {
        let mut texts = Vec::new();
        for doc in read_documents(path)? {
            texts.push(doc?.text);
        }
        return Ok(texts);
    }
    let bytes = std::fs::read(path).at(path)?;
    String::from_utf8(bytes)
        .map(|text| vec![text])
        .map_err(|e| EvalError::BadRecord {
            path: path.to_path_buf(),
            line: 1,
            reason: format!("not UTF-8 text ({e})"),
        })
}

/// The non-empty documents of every file `path` stands for, in order.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// std::fs::write(dir.path().join("a.txt"), "plain text")?;
/// std::fs::write(dir.path().join("b.jsonl"), "{\"text\": \"one\"}\n{\"text\": \"two\"}\n")?;
/// let texts = internlm2_eval::text::read_texts(dir.path())?;
/// assert_eq!(texts, ["plain text", "one", "two"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_texts(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let mut texts = Vec::new();
    for file in list_text_files(path)? {
        texts.extend(
            read_file_texts(&file)?
                .into_iter()
                .filter(|t| !t.trim().is_empty()),
        );
    }
    if texts.is_empty() {
        return Err(EvalError::Empty {
            what: path.display().to_string(),
        });
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use internlm2_datasets::{Document, DocumentWriter};

    use super::*;

    #[test]
    fn every_format_of_the_data_crate_and_plain_text() {
        let dir = tempfile::tempdir().unwrap();
        for ext in ["parquet", "jsonl.zst", "jsonl.gz"] {
            let mut w = DocumentWriter::create(dir.path().join(format!("d.{ext}"))).unwrap();
            w.write(&Document::new(format!("from {ext}"))).unwrap();
            w.write(&Document::new("  ")).unwrap(); // blank: skipped
            w.finish().unwrap();
        }
        std::fs::write(dir.path().join("notes.md"), "plain 中文").unwrap();
        std::fs::write(dir.path().join(".hidden"), "skipped").unwrap();
        let texts = read_texts(dir.path()).unwrap();
        assert_eq!(
            texts,
            [
                "from jsonl.gz",
                "from jsonl.zst",
                "from parquet",
                "plain 中文"
            ]
        );
        // Not UTF-8, or nothing at all: typed errors.
        std::fs::write(dir.path().join("bin.txt"), [0xff, 0xfe]).unwrap();
        assert!(matches!(
            read_texts(dir.path().join("bin.txt")),
            Err(EvalError::BadRecord { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_texts(empty.path()),
            Err(EvalError::Empty { .. })
        ));
    }
}

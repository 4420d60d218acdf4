//! Results files: one JSON object per line, appended a batch at a time and read back to resume.
//!
//! A run killed while writing can leave a last line without its newline; reading drops such a
//! line (its cell runs again) and cuts it from the file, while a bad line in the middle is a
//! typed error, never skipped silently.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{EvalError, IoContext, Result};

/// Appends `records` to `path` as JSON lines (created when missing) and flushes.
pub fn append_lines<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    let mut text = String::new();
    for record in records {
        text.push_str(
            &serde_json::to_string(record).map_err(|source| EvalError::Json {
                path: path.to_path_buf(),
                source,
            })?,
        );
        text.push('\n');
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .at(path)?;
    file.write_all(text.as_bytes()).at(path)?;
    file.flush().at(path)
}

/// The records of `path` (none when it does not exist), dropping an unterminated last line.
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(EvalError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let complete = match text.rfind('\n') {
        Some(end) => end + 1,
        None => 0,
    };
    if complete < text.len() {
        log::warn!(
            "{}: dropping an unfinished last line (its cell will run again)",
            path.display()
        );
        let file = OpenOptions::new().write(true).open(path).at(path)?;
        file.set_len(complete as u64).at(path)?;
    }
    let mut records = Vec::new();
    for (i, line) in text[..complete].lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        records.push(
            serde_json::from_str(line).map_err(|e| EvalError::BadRecord {
                path: path.to_path_buf(),
                line: i + 1,
                reason: e.to_string(),
            })?,
        );
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        assert!(read_records::<u32>(&path).unwrap().is_empty());
        append_lines(&path, &[1u32, 2]).unwrap();
        append_lines(&path, &[3u32]).unwrap();
        assert_eq!(read_records::<u32>(&path).unwrap(), [1, 2, 3]);
        // An interrupted write: the partial line is dropped and cut from the file.
        std::fs::write(&path, "1\n2\n3").unwrap();
        assert_eq!(read_records::<u32>(&path).unwrap(), [1, 2]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n2\n");
        // A bad complete line is an error naming it.
        std::fs::write(&path, "1\nx\n3\n").unwrap();
        match read_records::<u32>(&path) {
            Err(EvalError::BadRecord { line, .. }) => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
    }
}

//! Reading benchmark JSONL files (any fields, unlike the data crate's `text` documents), with
//! every bad line reported by file and line.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{EvalError, IoContext, Result};
use crate::text::list_text_files;

/// One JSON object of a file, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonRecord {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// The object.
    pub value: Value,
}

impl JsonRecord {
    /// A typed error about this record.
    pub fn error(&self, reason: impl Into<String>) -> EvalError {
        EvalError::BadRecord {
            path: self.path.clone(),
            line: self.line,
            reason: reason.into(),
        }
    }

    /// A string field.
    pub fn str(&self, name: &str) -> Result<&str> {
        self.value
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| self.error(format!("missing string field `{name}`")))
    }

    /// A string field that may be absent.
    pub fn opt_str(&self, name: &str) -> Option<&str> {
        self.value.get(name).and_then(Value::as_str)
    }

    /// The file's stem without a split suffix (`abstract_algebra_test.jsonl` ->
    /// `abstract_algebra`).
    pub fn file_subject(&self) -> String {
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let stem = name.split('.').next().unwrap_or_default();
        ["_test", "_dev", "_val", "_validation", "_train"]
            .iter()
            .find_map(|s| stem.strip_suffix(s))
            .unwrap_or(stem)
            .to_string()
    }
}

/// The objects of a JSONL file (blank lines skipped).
pub fn read_jsonl(path: &Path) -> Result<Vec<JsonRecord>> {
    let text = std::fs::read_to_string(path).at(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| EvalError::BadRecord {
            path: path.to_path_buf(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        if !value.is_object() {
            return Err(EvalError::BadRecord {
                path: path.to_path_buf(),
                line: i + 1,
                reason: "not a JSON object".into(),
            });
        }
        out.push(JsonRecord {
            path: path.to_path_buf(),
            line: i + 1,
            value,
        });
    }
    Ok(out)
}

/// The objects of a file, or of every `.jsonl` / `.json` file of a directory (sorted by name).
pub fn read_jsonl_dir(path: &Path) -> Result<Vec<JsonRecord>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        list_text_files(path)?
            .into_iter()
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| e == "jsonl" || e == "json")
            })
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    let mut records = Vec::new();
    for file in files {
        records.extend(read_jsonl(&file)?);
    }
    if records.is_empty() {
        return Err(EvalError::Empty {
            what: path.display().to_string(),
        });
    }
    Ok(records)
}

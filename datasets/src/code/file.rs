//! One source file of a repository, with its path normalised: what the quality stage scores,
//! the resolver links and the repository document orders.

use serde::{Deserialize, Serialize};

/// One source file of a repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeFile {
    /// The repository it belongs to.
    pub repo: String,
    /// `/`-separated path relative to the repository root (normalised by
    /// [`normalize_path`]).
    pub path: String,
    /// The raw file text.
    pub text: String,
    /// The sampling weight the quality stage gave it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_weight: Option<f64>,
}

impl CodeFile {
    /// A file without a sampling weight; `path` is normalised.
    pub fn new(repo: impl Into<String>, path: impl AsRef<str>, text: impl Into<String>) -> Self {
        Self {
            repo: repo.into(),
            path: normalize_path(path.as_ref()),
            text: text.into(),
            sample_weight: None,
        }
    }
}

/// `\` -> `/`, leading `./` and `/` removed, empty and `.` segments dropped.
///
/// ```
/// use internlm2_datasets::code::normalize_path;
/// assert_eq!(normalize_path(r".\src//a/./b.py"), "src/a/b.py");
/// ```
pub fn normalize_path(path: &str) -> String {
    path.replace('\\', "/")
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

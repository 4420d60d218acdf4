//! The code pipeline of SPEC 5.
//!
//! Per file: [`CodeQualityStage`] scores each source file into a [`Tier`] (high / moderate /
//! low) with a sampling weight, dropping low. Per repository: [`group_repositories`] regroups
//! the surviving per-file documents by repository, [`Resolver`] detects imports with
//! per-language regular expressions ([`detect_imports`]) and resolves them to files of the
//! repository, [`sort_files`] orders the files (dependencies first, cycles broken
//! alphabetically, documentation before the first code file of its folder), and
//! [`repository_document`] concatenates the repository into one markdown document in the
//! unified format of [`file_block`].
//!
//! File-level deduplication with a code-aware tokenisation lives in [`crate::dedup`].
//!
//! ```
//! use internlm2_datasets::code::{CodeQualityConfig, CodeQualityStage, RepoConfig,
//!     group_repositories, repository_document};
//! use internlm2_datasets::{Document, Stage, Verdict};
//!
//! let file = |path: &str, text: &str| {
//!     Document::new(text).with_meta("repo", "calc").with_meta("path", path)
//! };
//! let files = vec![
//!     file("calc/ops.py", "from .num import Num\n\ndef add(a, b):\n    return Num(a.v + b.v)\n\n"),
//!     file("calc/num.py", "class Num:\n    def __init__(self, v):\n        self.v = v\n\n    def __repr__(self):\n        return f\"Num({self.v})\"\n"),
//!     file("README.md", "# calc\nA tiny calculator.\n"),
//! ];
//! let quality = CodeQualityStage::new(CodeQualityConfig::default())?;
//! let kept: Vec<Document> = files
//!     .into_iter()
//!     .filter_map(|d| match quality.apply(d) { Verdict::Keep(d) => Some(d), _ => None })
//!     .collect();
//! let config = RepoConfig::default();
//! let grouping = group_repositories(kept, &config);
//! let doc = repository_document(&grouping.repositories[0], &config);
//! assert_eq!(doc.metadata["files"], serde_json::json!(["README.md", "calc/num.py", "calc/ops.py"]));
//! # Ok::<(), internlm2_datasets::DataError>(())
//! ```

pub mod file;
pub mod imports;
pub mod language;
pub mod markdown;
pub mod quality;
pub mod repo;
pub mod resolve;
pub mod sort;

pub use file::{CodeFile, normalize_path};
pub use imports::{Import, detect_imports, is_umbrella};
pub use language::{FileKind, Language};
pub use markdown::{MarkdownStage, file_block, repository_markdown};
pub use quality::{
    Assessment, CodeQualityConfig, CodeQualityStage, CodeSignals, Tier, TierWeights,
};
pub use repo::{
    DirConfig, Grouping, RepoConfig, Repository, dependency_order, group_repositories,
    repository_document,
};
pub use resolve::Resolver;
pub use sort::sort_files;

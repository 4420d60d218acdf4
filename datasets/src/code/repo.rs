//! Repositories: regrouping per-file documents by repository, loading a directory tree from
//! disk, and the one markdown document per repository in dependency order.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use burn::config::Config;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::file::{CodeFile, normalize_path};
use super::markdown::repository_markdown;
use super::resolve::Resolver;
use super::sort::sort_checked;
use crate::error::IoContext;
use crate::{DataError, Document, Result};

/// How per-file documents name their repository and path, and how repository documents are
/// written.
///
/// The builders and the serde form come from burn's `#[derive(Config)]`: a serialised form
/// names every field; [`from_partial_json`](crate::from_partial_json) reads hand-written files
/// that name only what they change.
#[derive(Config, Debug)]
pub struct RepoConfig {
    /// Metadata field with the repository name (default `"repo"`).
    #[config(default = "String::from(\"repo\")")]
    pub repo_field: String,
    /// Metadata field with the file path (default `"path"`; `source` is used when absent).
    #[config(default = "String::from(\"path\")")]
    pub path_field: String,
    /// Metadata field with the file's sampling weight (default `"sample_weight"`).
    #[config(default = "String::from(\"sample_weight\")")]
    pub weight_field: String,
    /// Start the repository document with a `# <name>` title line (default true).
    #[config(default = true)]
    pub title: bool,
}

impl Default for RepoConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Which files [`Repository::from_dir_with`] reads.
///
/// The builders and the serde form come from burn's `#[derive(Config)]`: a serialised form
/// names every field; [`from_partial_json`](crate::from_partial_json) reads hand-written files
/// that name only what they change.
#[derive(Config, Debug)]
pub struct DirConfig {
    /// Files larger than this many bytes are skipped as `too_large` (default 1 MiB).
    #[config(default = "1 << 20")]
    pub max_file_bytes: u64,
    /// Read files and folders whose name starts with `.` (default false: skipped as `hidden`).
    #[config(default = false)]
    pub include_hidden: bool,
    /// Folder names never entered, skipped as `skipped_dir` (default `node_modules`,
    /// `__pycache__`).
    #[config(default = "vec![String::from(\"node_modules\"), String::from(\"__pycache__\")]")]
    pub skip_dirs: Vec<String>,
}

impl Default for DirConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// The files of one repository, sorted by path (paths are unique).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Repository {
    /// Repository name (the `source` of its document).
    pub name: String,
    /// Its files, sorted by path.
    pub files: Vec<CodeFile>,
    /// Entries [`Repository::from_dir`] did not read, by reason (`hidden`, `binary`,
    /// `not_utf8`, `too_large`, `symlink`, `skipped_dir`, `special`); empty otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped: BTreeMap<String, u64>,
}

/// Bytes inspected for a NUL byte to tell binary files.
const BINARY_SNIFF_BYTES: usize = 8192;

impl Repository {
    /// A repository of `files`: paths are normalised, files sorted by path and their `repo` set
    /// to `name`. Errors when two files have the same (normalised) path.
    ///
    /// ```
    /// use internlm2_datasets::code::{CodeFile, Repository};
    /// let repo = Repository::new("r", vec![CodeFile::new("x", "b.py", ""), CodeFile::new("x", "a.py", "")])?;
    /// assert_eq!(repo.files[0].path, "a.py");
    /// assert_eq!(repo.files[0].repo, "r");
    /// # Ok::<(), internlm2_datasets::DataError>(())
    /// ```
    pub fn new(name: impl Into<String>, files: Vec<CodeFile>) -> Result<Self> {
        let name = name.into();
        let mut files: Vec<CodeFile> = files
            .into_iter()
            .map(|mut f| {
                f.path = normalize_path(&f.path);
                f.repo.clone_from(&name);
                f
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        if let Some(w) = files.windows(2).find(|w| w[0].path == w[1].path) {
            return Err(DataError::config(format!(
                "repository {name}: the path {} appears twice",
                w[0].path
            )));
        }
        Ok(Self {
            name,
            files,
            skipped: BTreeMap::new(),
        })
    }

    /// Load the text files under `dir` with [`DirConfig::default`]; the repository is named
    /// after the folder.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_dir_with(dir, &DirConfig::default())
    }

    /// Load the text files under `dir`. Hidden entries, symbolic links (never followed),
    /// folders named in [`DirConfig::skip_dirs`], files over the size limit, binary files (a NUL
    /// byte in the first 8 KiB) and non-UTF-8 files are skipped and counted in
    /// [`Repository::skipped`] (one count per entry; a skipped folder counts once).
    pub fn from_dir_with(dir: impl AsRef<Path>, config: &DirConfig) -> Result<Self> {
        let dir = dir.as_ref();
        let name = match dir.file_name() {
            Some(n) => n.to_string_lossy().into_owned(),
            None => fs::canonicalize(dir).at(dir)?.file_name().map_or_else(
                || "repository".to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
        };
        let mut files = Vec::new();
        let mut skipped = BTreeMap::new();
        walk(dir, "", config, &name, &mut files, &mut skipped)?;
        let mut repo = Self::new(name, files)?;
        repo.skipped = skipped;
        Ok(repo)
    }

    /// The dependency lists of the files (see [`Resolver::dependencies`]).
    pub fn dependencies(&self) -> Vec<Vec<usize>> {
        Resolver::new(&self.files).dependencies()
    }

    /// Indices into [`Repository::files`] in dependency order (see [`sort_files`]).
    ///
    /// [`sort_files`]: super::sort_files
    pub fn dependency_order(&self) -> Vec<usize> {
        dependency_order(self)
    }

    /// The repository as one markdown document with [`RepoConfig::default`].
    pub fn to_document(&self) -> Document {
        repository_document(self, &RepoConfig::default())
    }
}

fn bump(skipped: &mut BTreeMap<String, u64>, reason: &str) {
    *skipped.entry(reason.to_string()).or_default() += 1;
}

fn walk(
    dir: &Path,
    rel: &str,
    config: &DirConfig,
    repo: &str,
    files: &mut Vec<CodeFile>,
    skipped: &mut BTreeMap<String, u64>,
) -> Result<()> {
    let mut entries = fs::read_dir(dir)
        .at(dir)?
        .collect::<std::io::Result<Vec<_>>>()
        .at(dir)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if name.starts_with('.') && !config.include_hidden {
            bump(skipped, "hidden");
            continue;
        }
        let kind = entry.file_type().at(&path)?;
        if kind.is_symlink() {
            bump(skipped, "symlink");
        } else if kind.is_dir() {
            if config.skip_dirs.contains(&name) {
                bump(skipped, "skipped_dir");
            } else {
                walk(&path, &child, config, repo, files, skipped)?;
            }
        } else if !kind.is_file() {
            bump(skipped, "special");
        } else if entry.metadata().at(&path)?.len() > config.max_file_bytes {
            bump(skipped, "too_large");
        } else {
            let bytes = fs::read(&path).at(&path)?;
            if bytes[..bytes.len().min(BINARY_SNIFF_BYTES)].contains(&0) {
                bump(skipped, "binary");
                continue;
            }
            match String::from_utf8(bytes) {
                Ok(text) => files.push(CodeFile::new(repo, &child, text)),
                Err(_) => bump(skipped, "not_utf8"),
            }
        }
    }
    Ok(())
}

/// Indices into `repo.files` in dependency order: imports detected and resolved by
/// [`Resolver`], sorted by the rules of [`sort_files`](super::sort_files).
///
/// ```
/// use internlm2_datasets::code::{CodeFile, Repository, dependency_order};
/// let repo = Repository::new("r", vec![
///     CodeFile::new("r", "main.py", "import util\n"),
///     CodeFile::new("r", "util.py", "X = 1\n"),
///     CodeFile::new("r", "README.md", "# r\n"),
/// ])?;
/// let order: Vec<&str> = dependency_order(&repo).iter().map(|&i| repo.files[i].path.as_str()).collect();
/// assert_eq!(order, ["README.md", "util.py", "main.py"]);
/// # Ok::<(), internlm2_datasets::DataError>(())
/// ```
pub fn dependency_order(repo: &Repository) -> Vec<usize> {
    let deps = repo.dependencies();
    let paths: Vec<&str> = repo.files.iter().map(|f| f.path.as_str()).collect();
    sort_checked(&paths, &deps)
}

/// What [`group_repositories`] produced.
#[derive(Debug, Clone, Default)]
pub struct Grouping {
    /// The repositories, sorted by name.
    pub repositories: Vec<Repository>,
    /// Documents that could not be grouped, with the reason: `"no_repository"` (no repository
    /// field), `"no_path"` (neither path field nor `source`), `"duplicate_path"` (a later copy
    /// of a path already seen in the same repository; the first copy is kept).
    pub rejected: Vec<(Document, &'static str)>,
}

/// Regroup per-file documents (raw file text, repository and path in metadata fields named by
/// `config`) into repositories. Input order does not matter except for which copy of a
/// duplicated path is kept (the first).
///
/// ```
/// use internlm2_datasets::Document;
/// use internlm2_datasets::code::{RepoConfig, group_repositories};
/// let docs = vec![
///     Document::new("import b\n").with_meta("repo", "r1").with_meta("path", "a.py"),
///     Document::new("x = 1\n").with_meta("repo", "r1").with_meta("path", "b.py"),
///     Document::new("orphan"),
/// ];
/// let grouping = group_repositories(docs, &RepoConfig::default());
/// assert_eq!(grouping.repositories.len(), 1);
/// assert_eq!(grouping.repositories[0].files.len(), 2);
/// assert_eq!(grouping.rejected[0].1, "no_repository");
/// ```
pub fn group_repositories(
    docs: impl IntoIterator<Item = Document>,
    config: &RepoConfig,
) -> Grouping {
    let mut groups: BTreeMap<String, Vec<CodeFile>> = BTreeMap::new();
    let mut seen: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    let mut rejected = Vec::new();
    for doc in docs {
        let Some(repo) = doc.metadata.get(&config.repo_field).and_then(Value::as_str) else {
            rejected.push((doc, "no_repository"));
            continue;
        };
        let path = match doc.metadata.get(&config.path_field).and_then(Value::as_str) {
            Some(p) => normalize_path(p),
            None => match &doc.source {
                Some(s) => normalize_path(s),
                None => {
                    rejected.push((doc, "no_path"));
                    continue;
                }
            },
        };
        if path.is_empty() {
            rejected.push((doc, "no_path"));
            continue;
        }
        let repo = repo.to_string();
        if !seen.entry(repo.clone()).or_default().insert(path.clone()) {
            rejected.push((doc, "duplicate_path"));
            continue;
        }
        let sample_weight = doc
            .metadata
            .get(&config.weight_field)
            .and_then(Value::as_f64);
        groups.entry(repo.clone()).or_default().push(CodeFile {
            repo,
            path,
            text: doc.text,
            sample_weight,
        });
    }
    let repositories = groups
        .into_iter()
        .map(|(name, mut files)| {
            files.sort_by(|a, b| a.path.cmp(&b.path));
            Repository {
                name,
                files,
                skipped: BTreeMap::new(),
            }
        })
        .collect();
    Grouping {
        repositories,
        rejected,
    }
}

/// The repository as ONE markdown document: the files in [`dependency_order`], each as a
/// [`file_block`](super::file_block), after a `# <name>` title when `config.title`.
///
/// The document has `id` and `source` = the repository name, and metadata
/// `{repo_field}: name`, `"files"`: the paths in document order, and `"sample_weight"`: the
/// mean of the files' weights weighted by their text length in bytes (a file without weight
/// counts 1.0; when all files are empty, the plain mean; without files, 1.0).
///
/// ```
/// use internlm2_datasets::code::{CodeFile, RepoConfig, Repository, repository_document};
/// let repo = Repository::new("demo", vec![
///     CodeFile::new("demo", "app.py", "from lib import f\n"),
///     CodeFile::new("demo", "lib.py", "def f(): ...\n"),
/// ])?;
/// let doc = repository_document(&repo, &RepoConfig::default());
/// assert!(doc.text.starts_with("# demo\n\n## lib.py\n\n```python\n"));
/// assert_eq!(doc.metadata["files"], serde_json::json!(["lib.py", "app.py"]));
/// assert_eq!(doc.source.as_deref(), Some("demo"));
/// # Ok::<(), internlm2_datasets::DataError>(())
/// ```
pub fn repository_document(repo: &Repository, config: &RepoConfig) -> Document {
    let order = dependency_order(repo);
    let text = repository_markdown(
        config.title.then_some(repo.name.as_str()),
        order
            .iter()
            .map(|&i| (repo.files[i].path.as_str(), repo.files[i].text.as_str())),
    );
    let (mut weighted, mut bytes) = (0.0, 0.0);
    for f in &repo.files {
        let b = f.text.len() as f64;
        weighted += f.sample_weight.unwrap_or(1.0) * b;
        bytes += b;
    }
    let sample_weight = if bytes > 0.0 {
        weighted / bytes
    } else if repo.files.is_empty() {
        1.0
    } else {
        let sum: f64 = repo
            .files
            .iter()
            .map(|f| f.sample_weight.unwrap_or(1.0))
            .sum();
        sum / repo.files.len() as f64
    };
    let files: Vec<Value> = order
        .iter()
        .map(|&i| Value::from(repo.files[i].path.as_str()))
        .collect();
    Document::new(text)
        .with_id(repo.name.as_str())
        .with_source(repo.name.as_str())
        .with_meta(config.repo_field.as_str(), repo.name.as_str())
        .with_meta("files", files)
        .with_meta("sample_weight", sample_weight)
}

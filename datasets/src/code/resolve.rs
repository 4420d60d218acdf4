//! Resolution of import specifiers to files of the same repository, and the dependency graph
//! that sorting consumes.
//!
//! Paths are `/`-separated and relative to the repository root. "Suffix match" below means a
//! file whose path equals the candidate or ends with `/` + candidate; when several files match,
//! **the shorter path is preferred, then the alphabetically first**. Specifiers that match no
//! file of the repository (standard library, third-party packages) are ignored.
//!
//! | family | resolution |
//! | --- | --- |
//! | Python | `a.b` -> `a/b.py` (or `.pyi`), else the package `a/b/__init__.py`, else the namespace folder `a/b`; looked up relative to the importing file's folder first, then by suffix match. Relative imports (`.m`, `..m`) start from the file's folder, one level up per extra dot. `from P import n` on a *package* P is refined per name: the submodule `P/n.py` / `P/n/__init__.py` when it exists, else the module that `P/__init__.py` itself imports `n` from (followed up to 3 levels), else `P/__init__.py`; `*` gives `P/__init__.py`. |
//! | Rust | `self::`, `super::`, `crate::` (the folder of the nearest `lib.rs`/`main.rs`) or a child module name start the walk; the longest prefix of the remaining segments that names `x.rs` or `x/mod.rs` wins. `mod x;` is `self::x`. A file's own module folder is its folder for `lib.rs`, `main.rs`, `mod.rs`, else its folder + stem. |
//! | C/C++ | `#include "x.h"`: relative to the file's folder, else by suffix match (`./`, `../` stripped); `<x.h>`: suffix match only. |
//! | Java | `import a.b.C;` -> suffix match of `a/b/C.java`, dropping trailing segments (nested classes, static members) down to two; `import a.b.*;` -> the `.java` files of the shortest folder matching `a/b`, refined to the classes whose name occurs as a word in the importing file (all of them when none does). |
//! | JS/TS | relative specifiers only (`./`, `../`): the path itself, then with `.ts`, `.tsx`, `.d.ts`, `.js`, `.jsx`, `.mjs`, `.cjs`, `.mts`, `.cts`, `.json`, then `/index` + those; a `.js`-family extension may name a `.ts`-family file. |
//! | Go | the package folder: the import path with a `go.mod` `module` prefix replaced by that `go.mod`'s folder, else the shortest folder that suffix-matches the longest possible tail of the import path; every non-test `.go` file directly in it. |
//!
//! Batched imports are then refined in [`Resolver::dependencies`]: an edge to an *umbrella*
//! ([`is_umbrella`]: a header, `__init__.py`, `mod.rs`/`lib.rs` or `index.js` that only
//! imports) is replaced by the umbrella's own dependencies (umbrellas among them expanded the
//! same way), minus the importing file. This removes the spurious cycles that arise when a
//! member of a batch imports the batch.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;

use regex::Regex;

use super::file::CodeFile;
use super::imports::{Import, detect_imports, is_umbrella};
use super::language::{Language, file_name, parent_dir};

/// Lookup tables over the paths of one repository.
struct FileIndex<'a> {
    paths: Vec<&'a str>,
    by_path: HashMap<&'a str, usize>,
    by_name: HashMap<&'a str, Vec<usize>>,
    /// Files directly inside each folder (every ancestor folder of a file is a key).
    dirs: HashMap<&'a str, Vec<usize>>,
    /// Non-root folders by their last component.
    dirs_by_name: HashMap<&'a str, Vec<&'a str>>,
}

impl<'a> FileIndex<'a> {
    fn new(paths: Vec<&'a str>) -> Self {
        let mut by_path = HashMap::new();
        let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut dirs: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, &p) in paths.iter().enumerate() {
            by_path.entry(p).or_insert(i);
            by_name.entry(file_name(p)).or_default().push(i);
            dirs.entry(parent_dir(p)).or_default().push(i);
            let mut d = parent_dir(p);
            while !d.is_empty() {
                d = parent_dir(d);
                dirs.entry(d).or_default();
            }
        }
        let mut dirs_by_name: HashMap<&str, Vec<&str>> = HashMap::new();
        for &d in dirs.keys().filter(|d| !d.is_empty()) {
            dirs_by_name.entry(file_name(d)).or_default().push(d);
        }
        Self {
            paths,
            by_path,
            by_name,
            dirs,
            dirs_by_name,
        }
    }

    fn get(&self, path: &str) -> Option<usize> {
        self.by_path.get(path).copied()
    }

    fn has_dir(&self, dir: &str) -> bool {
        self.dirs.contains_key(dir)
    }

    /// Files matching `suffix` (a `/`-separated relative path) by suffix, shortest first.
    fn suffix_matches(&self, suffix: &str) -> Vec<usize> {
        let Some(candidates) = self.by_name.get(file_name(suffix)) else {
            return Vec::new();
        };
        let mut found: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| ends_with_path(self.paths[i], suffix))
            .collect();
        found.sort_by_key(|&i| (self.paths[i].len(), self.paths[i]));
        found
    }

    /// The best suffix match: shortest path, then alphabetical.
    fn best_suffix_match(&self, suffix: &str) -> Option<usize> {
        self.suffix_matches(suffix).first().copied()
    }

    /// Folders matching `suffix` by suffix, shortest first.
    fn dir_suffix_matches(&self, suffix: &str) -> Vec<&'a str> {
        let Some(candidates) = self.dirs_by_name.get(file_name(suffix)) else {
            return Vec::new();
        };
        let mut found: Vec<&str> = candidates
            .iter()
            .copied()
            .filter(|d| ends_with_path(d, suffix))
            .collect();
        found.sort_by_key(|d| (d.len(), *d));
        found
    }
}

/// `path == suffix` or `path` ends with `/` + `suffix`.
fn ends_with_path(path: &str, suffix: &str) -> bool {
    path == suffix
        || (path.len() > suffix.len()
            && path.ends_with(suffix)
            && path.as_bytes()[path.len() - suffix.len() - 1] == b'/')
}

/// `base` joined with the relative `rel`, `.` and `..` resolved; `None` above the root.
fn join(base: &str, rel: &str) -> Option<String> {
    let mut parts: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
    for seg in rel.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

/// `rel` without leading `./` and `../` segments (for suffix matching).
fn strip_dots(rel: &str) -> String {
    let segs: Vec<&str> = rel
        .split('/')
        .skip_while(|s| matches!(*s, "." | ".." | ""))
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    segs.join("/")
}

/// Where a Python module name leads.
enum PyTarget {
    Module(usize),
    Package { dir: String, init: Option<usize> },
}

/// How many `__init__.py` re-exports a name is followed through.
const MAX_TRACE_DEPTH: usize = 3;

static GO_MODULE: LazyLock<Regex> = LazyLock::new(|| {
    // A constant pattern: the unit tests exercise it.
    Regex::new(r#"(?m)^[ \t]*module[ \t]+"?([^\s"]+)"?"#).expect("valid built-in regex")
});

/// Resolves the imports of the files of one repository.
///
/// ```
/// use internlm2_datasets::code::{CodeFile, Resolver};
/// let files = vec![
///     CodeFile::new("r", "app.py", "from geo import area\n"),
///     CodeFile::new("r", "geo/__init__.py", "from .area import area\n"),
///     CodeFile::new("r", "geo/area.py", "def area(): ...\n"),
/// ];
/// let resolver = Resolver::new(&files);
/// // `area` is a submodule of the package `geo`: the batched import is refined to it.
/// assert_eq!(resolver.resolve(0, &resolver.imports(0)[0]), vec![2]);
/// assert_eq!(resolver.dependencies(), vec![vec![2], vec![2], vec![]]);
/// ```
pub struct Resolver<'a> {
    files: &'a [CodeFile],
    index: FileIndex<'a>,
    languages: Vec<Language>,
    imports: Vec<Vec<Import>>,
    /// `(module path, folder of its go.mod)`, longest module path first.
    go_modules: Vec<(String, &'a str)>,
}

impl<'a> Resolver<'a> {
    /// Detect the imports of every file (with [`detect_imports`]) and index the paths.
    pub fn new(files: &'a [CodeFile]) -> Self {
        let index = FileIndex::new(files.iter().map(|f| f.path.as_str()).collect());
        let languages: Vec<Language> = files.iter().map(|f| Language::from_path(&f.path)).collect();
        let imports = files
            .iter()
            .zip(&languages)
            .map(|(f, &lang)| detect_imports(lang, &f.text))
            .collect();
        let mut go_modules: Vec<(String, &str)> = index
            .by_name
            .get("go.mod")
            .into_iter()
            .flatten()
            .filter_map(|&i| {
                let module = GO_MODULE.captures(&files[i].text)?.get(1)?.as_str();
                Some((
                    module.trim_end_matches('/').to_string(),
                    parent_dir(&files[i].path),
                ))
            })
            .collect();
        go_modules.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.cmp(b)));
        Self {
            files,
            index,
            languages,
            imports,
            go_modules,
        }
    }

    /// The imports detected in file `file`.
    pub fn imports(&self, file: usize) -> &[Import] {
        self.imports.get(file).map_or(&[], Vec::as_slice)
    }

    /// The files of the repository that `import`, written in file `file`, refers to (ascending
    /// indices, `file` itself excluded); empty when it names nothing in the repository.
    pub fn resolve(&self, file: usize, import: &Import) -> Vec<usize> {
        let Some(&language) = self.languages.get(file) else {
            return Vec::new();
        };
        let mut out = match language {
            Language::Python => self.python(file, import, 0),
            Language::Rust => self.rust(file, import),
            Language::C | Language::Cpp => self.c_family(file, import),
            Language::Java => self.java(file, import),
            Language::JavaScript | Language::TypeScript => self.js(file, import),
            Language::Go => self.go(file, import),
            _ => Vec::new(),
        };
        out.sort_unstable();
        out.dedup();
        out.retain(|&i| i != file);
        out
    }

    /// All resolved imports of `file` together, before umbrella refinement.
    pub fn direct_dependencies(&self, file: usize) -> Vec<usize> {
        let set: BTreeSet<usize> = self
            .imports(file)
            .iter()
            .flat_map(|imp| self.resolve(file, imp))
            .collect();
        set.into_iter().collect()
    }

    /// The dependency lists of every file (ascending indices, no self edges), with edges to
    /// umbrella files replaced by the umbrella's dependencies (see the module documentation).
    pub fn dependencies(&self) -> Vec<Vec<usize>> {
        let direct: Vec<Vec<usize>> = (0..self.files.len())
            .map(|i| self.direct_dependencies(i))
            .collect();
        let umbrella: Vec<bool> = self
            .files
            .iter()
            .map(|f| is_umbrella(&f.path, &f.text))
            .collect();
        (0..self.files.len())
            .map(|f| {
                let mut out = BTreeSet::new();
                for &d in &direct[f] {
                    if umbrella[d] {
                        let mut seen = HashSet::from([d]);
                        expand_umbrella(d, &direct, &umbrella, &mut seen, &mut out);
                    } else {
                        out.insert(d);
                    }
                }
                out.remove(&f);
                out.into_iter().collect()
            })
            .collect()
    }

    fn path(&self, i: usize) -> &'a str {
        self.index.paths[i]
    }

    // ---- Python ------------------------------------------------------------------------

    fn python(&self, file: usize, import: &Import, depth: usize) -> Vec<usize> {
        let dots = import.spec.chars().take_while(|&c| c == '.').count();
        let dotted = &import.spec[dots..];
        let here = parent_dir(self.path(file));
        let target = if dots > 0 {
            let mut base = Some(here.to_string());
            for _ in 1..dots {
                base = base.and_then(|b| join(&b, ".."));
            }
            base.and_then(|b| self.py_at(&b, dotted))
        } else {
            self.py_at(here, dotted).or_else(|| self.py_suffix(dotted))
        };
        match target {
            None => Vec::new(),
            Some(PyTarget::Module(i)) => vec![i],
            Some(PyTarget::Package { init, .. }) if import.names.is_empty() => {
                init.into_iter().collect()
            }
            Some(PyTarget::Package { dir, init }) => {
                let mut out = Vec::new();
                for name in &import.names {
                    if name == "*" {
                        out.extend(init);
                        continue;
                    }
                    match self.py_at(&dir, name) {
                        Some(PyTarget::Module(i)) => out.push(i),
                        Some(PyTarget::Package { init: Some(i), .. }) => out.push(i),
                        _ => {
                            let traced = init
                                .map(|init| self.trace_name(init, name, depth))
                                .unwrap_or_default();
                            if traced.is_empty() {
                                out.extend(init);
                            } else {
                                out.extend(traced);
                            }
                        }
                    }
                }
                out
            }
        }
    }

    /// The modules `__init__.py` file `init` imports `name` from.
    fn trace_name(&self, init: usize, name: &str, depth: usize) -> Vec<usize> {
        if depth >= MAX_TRACE_DEPTH {
            return Vec::new();
        }
        for import in self.imports(init) {
            if import.names.iter().any(|n| n == name) {
                let single = Import::new(import.spec.clone()).with_names([name]);
                let mut found = self.python(init, &single, depth + 1);
                found.retain(|&i| i != init);
                if !found.is_empty() {
                    return found;
                }
            }
        }
        Vec::new()
    }

    /// The module `dotted` inside folder `base` (`dotted` empty: the package `base` itself).
    fn py_at(&self, base: &str, dotted: &str) -> Option<PyTarget> {
        let rel = dotted.replace('.', "/");
        let p = join(base, &rel)?;
        if !rel.is_empty() {
            for ext in ["py", "pyi"] {
                if let Some(i) = self.index.get(&format!("{p}.{ext}")) {
                    return Some(PyTarget::Module(i));
                }
            }
        }
        let init = self.index.get(&join(&p, "__init__.py")?);
        if init.is_some() || self.index.has_dir(&p) {
            return Some(PyTarget::Package { dir: p, init });
        }
        None
    }

    /// The module `dotted` anywhere in the repository, by suffix match.
    fn py_suffix(&self, dotted: &str) -> Option<PyTarget> {
        if dotted.is_empty() {
            return None;
        }
        let rel = dotted.replace('.', "/");
        let mut found = self.index.suffix_matches(&format!("{rel}.py"));
        found.extend(self.index.suffix_matches(&format!("{rel}.pyi")));
        found.extend(self.index.suffix_matches(&format!("{rel}/__init__.py")));
        found.sort_by_key(|&i| (self.path(i).len(), self.path(i)));
        if let Some(&i) = found.first() {
            let path = self.path(i);
            return Some(if file_name(path) == "__init__.py" {
                PyTarget::Package {
                    dir: parent_dir(path).to_string(),
                    init: Some(i),
                }
            } else {
                PyTarget::Module(i)
            });
        }
        let dir = self.index.dir_suffix_matches(&rel).into_iter().next()?;
        Some(PyTarget::Package {
            dir: dir.to_string(),
            init: None,
        })
    }

    // ---- Rust --------------------------------------------------------------------------

    fn rust(&self, file: usize, import: &Import) -> Vec<usize> {
        let path = self.path(file);
        let segs: Vec<&str> = import.spec.split("::").filter(|s| !s.is_empty()).collect();
        let Some(&first) = segs.first() else {
            return Vec::new();
        };
        let self_dir = rust_module_dir(path);
        let (base, rest) = match first {
            "crate" => (self.rust_crate_root(path), &segs[1..]),
            "self" => (Some(self_dir), &segs[1..]),
            "super" => {
                let ups = segs.iter().take_while(|s| **s == "super").count();
                let mut base = Some(self_dir);
                for _ in 0..ups {
                    base = base.and_then(|b| join(&b, ".."));
                }
                (base, &segs[ups..])
            }
            _ => (Some(self_dir), &segs[..]),
        };
        let Some(base) = base else {
            return Vec::new();
        };
        for k in (1..=rest.len()).rev() {
            let Some(p) = join(&base, &rest[..k].join("/")) else {
                continue;
            };
            for candidate in [format!("{p}.rs"), format!("{p}/mod.rs")] {
                if let Some(i) = self.index.get(&candidate) {
                    return vec![i];
                }
            }
        }
        Vec::new()
    }

    /// The folder of the nearest `lib.rs` / `main.rs` at or above the file's folder.
    fn rust_crate_root(&self, path: &str) -> Option<String> {
        let mut dir = parent_dir(path);
        loop {
            for root in ["lib.rs", "main.rs"] {
                if self.index.get(&join(dir, root)?).is_some() {
                    return Some(dir.to_string());
                }
            }
            if dir.is_empty() {
                return Some(parent_dir(path).to_string());
            }
            dir = parent_dir(dir);
        }
    }

    // ---- C / C++ -----------------------------------------------------------------------

    fn c_family(&self, file: usize, import: &Import) -> Vec<usize> {
        if !import.system
            && let Some(p) = join(parent_dir(self.path(file)), &import.spec)
            && let Some(i) = self.index.get(&p)
        {
            return vec![i];
        }
        self.index
            .best_suffix_match(&strip_dots(&import.spec))
            .into_iter()
            .collect()
    }

    // ---- Java --------------------------------------------------------------------------

    fn java(&self, file: usize, import: &Import) -> Vec<usize> {
        let segs: Vec<&str> = import.spec.split('.').collect();
        if segs.last() == Some(&"*") {
            let pkg = segs[..segs.len() - 1].join("/");
            for dir in self.index.dir_suffix_matches(&pkg) {
                let classes: Vec<usize> = self.index.dirs[dir]
                    .iter()
                    .copied()
                    .filter(|&i| self.languages[i] == Language::Java && i != file)
                    .collect();
                if classes.is_empty() {
                    continue;
                }
                let text = &self.files[file].text;
                let used: Vec<usize> = classes
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let stem = file_name(self.path(i)).trim_end_matches(".java");
                        has_word(text, stem)
                    })
                    .collect();
                return if used.is_empty() { classes } else { used };
            }
            return Vec::new();
        }
        let min = segs.len().min(2);
        for k in (min..=segs.len()).rev() {
            if let Some(i) = self
                .index
                .best_suffix_match(&format!("{}.java", segs[..k].join("/")))
            {
                return vec![i];
            }
        }
        Vec::new()
    }

    // ---- JavaScript / TypeScript ---------------------------------------------------------

    fn js(&self, file: usize, import: &Import) -> Vec<usize> {
        const EXTS: [&str; 10] = [
            ".ts", ".tsx", ".d.ts", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts", ".json",
        ];
        let spec = import.spec.as_str();
        let relative =
            spec == "." || spec == ".." || spec.starts_with("./") || spec.starts_with("../");
        if !relative {
            return Vec::new();
        }
        let Some(base) = join(parent_dir(self.path(file)), spec) else {
            return Vec::new();
        };
        let mut candidates = vec![base.clone()];
        candidates.extend(EXTS.iter().map(|e| format!("{base}{e}")));
        candidates.extend(EXTS.iter().map(|e| format!("{base}/index{e}")));
        for (js, ts) in [
            (".js", ".ts"),
            (".js", ".tsx"),
            (".jsx", ".tsx"),
            (".mjs", ".mts"),
            (".cjs", ".cts"),
        ] {
            if let Some(stem) = base.strip_suffix(js) {
                candidates.push(format!("{stem}{ts}"));
            }
        }
        candidates
            .iter()
            .find_map(|c| self.index.get(c))
            .into_iter()
            .collect()
    }

    // ---- Go ----------------------------------------------------------------------------

    fn go(&self, file: usize, import: &Import) -> Vec<usize> {
        let spec = import.spec.trim_end_matches('/');
        let go_files = |dir: &str| -> Vec<usize> {
            self.index
                .dirs
                .get(dir)
                .into_iter()
                .flatten()
                .copied()
                .filter(|&i| {
                    self.languages[i] == Language::Go
                        && !self.path(i).ends_with("_test.go")
                        && i != file
                })
                .collect()
        };
        for (module, root) in &self.go_modules {
            let rest = if spec == module {
                Some("")
            } else {
                spec.strip_prefix(module.as_str())
                    .and_then(|r| r.strip_prefix('/'))
            };
            if let Some(rest) = rest
                && let Some(dir) = join(root, rest)
            {
                let found = go_files(&dir);
                if !found.is_empty() {
                    return found;
                }
            }
        }
        // The folder matching the longest tail of the import path.
        let segs: Vec<&str> = spec.split('/').collect();
        for k in 0..segs.len() {
            let tail = segs[k..].join("/");
            for dir in self.index.dir_suffix_matches(&tail) {
                let found = go_files(dir);
                if !found.is_empty() {
                    return found;
                }
            }
        }
        Vec::new()
    }
}

/// Add the non-umbrella dependencies reachable from umbrella `u` through umbrellas.
fn expand_umbrella(
    u: usize,
    direct: &[Vec<usize>],
    umbrella: &[bool],
    seen: &mut HashSet<usize>,
    out: &mut BTreeSet<usize>,
) {
    for &d in &direct[u] {
        if umbrella[d] {
            if seen.insert(d) {
                expand_umbrella(d, direct, umbrella, seen, out);
            }
        } else {
            out.insert(d);
        }
    }
}

/// The folder holding the child modules of a Rust file.
fn rust_module_dir(path: &str) -> String {
    let name = file_name(path);
    let dir = parent_dir(path);
    if matches!(name, "lib.rs" | "main.rs" | "mod.rs") {
        dir.to_string()
    } else {
        let stem = name.strip_suffix(".rs").unwrap_or(name);
        if dir.is_empty() {
            stem.to_string()
        } else {
            format!("{dir}/{stem}")
        }
    }
}

/// Whether `word` occurs in `text` delimited by non-identifier characters.
fn has_word(text: &str, word: &str) -> bool {
    if word.is_empty() {
        return false;
    }
    let is_ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_helpers() {
        assert_eq!(join("a/b", "../c/./d").as_deref(), Some("a/c/d"));
        assert_eq!(join("", "..").as_deref(), None);
        assert_eq!(join("a", "").as_deref(), Some("a"));
        assert_eq!(strip_dots("../../inc/./x.h"), "inc/x.h");
        assert!(ends_with_path("src/a/b.py", "a/b.py"));
        assert!(!ends_with_path("src/aa/b.py", "a/b.py"));
        assert_eq!(rust_module_dir("src/a/b.rs"), "src/a/b");
        assert_eq!(rust_module_dir("src/lib.rs"), "src");
        assert!(has_word("new Circle(1)", "Circle"));
        assert!(!has_word("CircleX Circles", "Circle"));
    }

    #[test]
    fn go_module_prefix() {
        let files = vec![
            CodeFile::new("r", "go.mod", "module example.com/m\n\ngo 1.22\n"),
            CodeFile::new(
                "r",
                "cmd/main.go",
                "package main\nimport \"example.com/m/util\"\n",
            ),
            CodeFile::new("r", "util/a.go", "package util\n"),
            CodeFile::new("r", "util/a_test.go", "package util\n"),
            CodeFile::new("r", "util/b.go", "package util\n"),
        ];
        let r = Resolver::new(&files);
        assert_eq!(r.direct_dependencies(1), vec![2, 4]);
    }
}

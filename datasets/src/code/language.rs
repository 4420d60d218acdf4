//! Programming languages of source files, read from the file name, and the split between code
//! files and non-code files (markdown, reStructuredText, plain text) that dependency sorting
//! places before the code of their folder.

use serde::{Deserialize, Serialize};

/// The language of a file, decided from its name alone.
///
/// Import detection exists for the six families Python, Rust, C/C++, Java,
/// JavaScript/TypeScript and Go; the other languages are still labelled (for the markdown fence
/// tag) but have no imports.
///
/// ```
/// use internlm2_datasets::code::{FileKind, Language};
/// assert_eq!(Language::from_path("src/lib.rs"), Language::Rust);
/// assert_eq!(Language::from_path("include/vec.hpp"), Language::Cpp);
/// assert_eq!(Language::from_path("docs/README"), Language::Text);
/// assert_eq!(Language::from_path("CMakeLists.txt"), Language::CMake);
/// assert_eq!(Language::from_path("README.md").kind(), FileKind::Doc);
/// assert_eq!(Language::from_path("a.weird").kind(), FileKind::Code);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    /// `.py`, `.pyi`
    Python,
    /// `.rs`
    Rust,
    /// `.c`, `.h`
    C,
    /// `.cc`, `.cpp`, `.cxx`, `.c++`, `.hh`, `.hpp`, `.hxx`, `.h++`, `.ipp`, `.inl`
    Cpp,
    /// `.java`
    Java,
    /// `.js`, `.mjs`, `.cjs`, `.jsx`
    JavaScript,
    /// `.ts`, `.tsx`, `.mts`, `.cts`
    TypeScript,
    /// `.go`
    Go,
    /// `.kt`, `.kts`
    Kotlin,
    /// `.scala`
    Scala,
    /// `.cs`
    CSharp,
    /// `.swift`
    Swift,
    /// `.rb`
    Ruby,
    /// `.php`
    Php,
    /// `.sh`, `.bash`, `.zsh`
    Shell,
    /// `.lua`
    Lua,
    /// `.pl`, `.pm`
    Perl,
    /// `.r`
    R,
    /// `.jl`
    Julia,
    /// `.hs`
    Haskell,
    /// `.sql`
    Sql,
    /// `.html`, `.htm`
    Html,
    /// `.css`, `.scss`
    Css,
    /// `.json`
    Json,
    /// `.yaml`, `.yml`
    Yaml,
    /// `.toml`
    Toml,
    /// `.xml`
    Xml,
    /// `Makefile`, `GNUmakefile`, `.mk`
    Make,
    /// `Dockerfile`
    Dockerfile,
    /// `CMakeLists.txt`, `.cmake`
    CMake,
    /// `.md`, `.markdown` (non-code)
    Markdown,
    /// `.rst` (non-code)
    ReStructuredText,
    /// `.txt`, `.adoc`, and extension-less `README`, `LICENSE`, `CHANGELOG`, ... (non-code)
    Text,
    /// Anything else: treated as code without imports.
    Other,
}

/// Whether a file is code (takes part in the dependency graph) or documentation (placed before
/// the first code file of its folder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A source file.
    Code,
    /// Markdown, reStructuredText or plain text.
    Doc,
}

/// Extension-less file names (compared case-insensitively) that are documentation.
const DOC_NAMES: &[&str] = &[
    "readme",
    "license",
    "licence",
    "copying",
    "changelog",
    "changes",
    "authors",
    "contributors",
    "contributing",
    "notice",
    "install",
    "news",
    "todo",
];

impl Language {
    /// The language of the file at `path` (`/`-separated; only the last component is read).
    pub fn from_path(path: &str) -> Language {
        let name = file_name(path);
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "makefile" | "gnumakefile" => return Language::Make,
            "dockerfile" => return Language::Dockerfile,
            "cmakelists.txt" => return Language::CMake,
            _ => {}
        }
        let Some((stem, ext)) = lower.rsplit_once('.').filter(|(stem, _)| !stem.is_empty()) else {
            return if DOC_NAMES.contains(&lower.as_str()) {
                Language::Text
            } else {
                Language::Other
            };
        };
        match ext {
            "py" | "pyi" => Language::Python,
            "rs" => Language::Rust,
            "c" | "h" => Language::C,
            "cc" | "cpp" | "cxx" | "c++" | "hh" | "hpp" | "hxx" | "h++" | "ipp" | "inl" => {
                Language::Cpp
            }
            "java" => Language::Java,
            "js" | "mjs" | "cjs" | "jsx" => Language::JavaScript,
            "ts" | "tsx" | "mts" | "cts" => Language::TypeScript,
            "go" => Language::Go,
            "kt" | "kts" => Language::Kotlin,
            "scala" => Language::Scala,
            "cs" => Language::CSharp,
            "swift" => Language::Swift,
            "rb" => Language::Ruby,
            "php" => Language::Php,
            "sh" | "bash" | "zsh" => Language::Shell,
            "lua" => Language::Lua,
            "pl" | "pm" => Language::Perl,
            "r" => Language::R,
            "jl" => Language::Julia,
            "hs" => Language::Haskell,
            "sql" => Language::Sql,
            "html" | "htm" => Language::Html,
            "css" | "scss" => Language::Css,
            "json" => Language::Json,
            "yaml" | "yml" => Language::Yaml,
            "toml" => Language::Toml,
            "xml" => Language::Xml,
            "mk" => Language::Make,
            "cmake" => Language::CMake,
            "md" | "markdown" => Language::Markdown,
            "rst" => Language::ReStructuredText,
            "txt" | "text" | "adoc" => Language::Text,
            // `LICENSE.MIT`, `README.en`: documentation with a suffix.
            _ if DOC_NAMES.contains(&stem) => Language::Text,
            _ => Language::Other,
        }
    }

    /// Code or documentation.
    pub fn kind(self) -> FileKind {
        match self {
            Language::Markdown | Language::ReStructuredText | Language::Text => FileKind::Doc,
            _ => FileKind::Code,
        }
    }

    /// Whether this is a documentation language.
    pub fn is_doc(self) -> bool {
        self.kind() == FileKind::Doc
    }

    /// The info string of a markdown code fence; `None` for [`Language::Other`] (the file
    /// extension is used instead) and for documentation, which is not fenced.
    pub fn tag(self) -> Option<&'static str> {
        Some(match self {
            Language::Python => "python",
            Language::Rust => "rust",
            Language::C => "c",
            Language::Cpp => "cpp",
            Language::Java => "java",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
            Language::Go => "go",
            Language::Kotlin => "kotlin",
            Language::Scala => "scala",
            Language::CSharp => "csharp",
            Language::Swift => "swift",
            Language::Ruby => "ruby",
            Language::Php => "php",
            Language::Shell => "bash",
            Language::Lua => "lua",
            Language::Perl => "perl",
            Language::R => "r",
            Language::Julia => "julia",
            Language::Haskell => "haskell",
            Language::Sql => "sql",
            Language::Html => "html",
            Language::Css => "css",
            Language::Json => "json",
            Language::Yaml => "yaml",
            Language::Toml => "toml",
            Language::Xml => "xml",
            Language::Make => "makefile",
            Language::Dockerfile => "dockerfile",
            Language::CMake => "cmake",
            Language::Markdown | Language::ReStructuredText | Language::Text | Language::Other => {
                return None;
            }
        })
    }
}

/// The last `/`-separated component of `path`.
pub(crate) fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The folder of `path` (`""` for a top-level file).
pub(crate) fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_names() {
        assert_eq!(Language::from_path("Makefile"), Language::Make);
        assert_eq!(Language::from_path("a/LICENSE"), Language::Text);
        assert_eq!(Language::from_path("LICENSE.MIT"), Language::Text);
        assert_eq!(Language::from_path(".gitignore"), Language::Other);
        assert_eq!(Language::from_path("x/Y.H"), Language::C);
        assert_eq!(parent_dir("a/b/c.py"), "a/b");
        assert_eq!(parent_dir("c.py"), "");
        assert_eq!(file_name("a/b/c.py"), "c.py");
    }
}

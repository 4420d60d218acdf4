//! The unified markdown format of the code pipeline.
//!
//! Every file becomes one *block*: a path header, a blank line, then the file. Code files are
//! fenced with their language tag; documentation (`.md`, `.rst`, `.txt`, `README`, ...) is
//! inserted as-is:
//!
//! ````text
//! ## src/geometry/area.py
//!
//! ```python
//! def area(shape):
//!     return shape.area()
//! ```
//! ````
//!
//! Exact rules:
//! - the header is `## ` followed by the `/`-separated path relative to the repository root;
//! - the body is the file text with a leading UTF-8 byte-order mark removed, `\r\n` and lone
//!   `\r` turned into `\n`, and trailing newlines removed; a non-empty body is followed by one
//!   `\n`;
//! - the fence is a run of backticks one longer than the longest run of backticks in the body,
//!   and at least three, so the body can never close it; its info string is
//!   [`Language::tag`], or the lower-cased extension for [`Language::Other`] (nothing when the
//!   file has no extension);
//! - a block always ends with exactly one `\n`; the blocks of a repository are joined with one
//!   blank line (`\n`) and preceded by a `# <repository>` title line and a blank line when a
//!   title is given.

use std::borrow::Cow;

use serde_json::Value;

use super::language::{FileKind, Language, file_name};
use crate::{Document, Stage, Verdict};

/// The markdown block of one file (see the module documentation for the exact format).
///
/// ```
/// use internlm2_datasets::code::file_block;
/// assert_eq!(file_block("a/x.py", "import os\r\n\r\n"), "## a/x.py\n\n```python\nimport os\n```\n");
/// assert_eq!(file_block("README.md", "# Hi\n"), "## README.md\n\n# Hi\n");
/// ```
pub fn file_block(path: &str, text: &str) -> String {
    let body = normalize_body(text);
    let mut out = String::with_capacity(body.len() + path.len() + 32);
    out.push_str("## ");
    out.push_str(path);
    out.push_str("\n\n");
    let language = Language::from_path(path);
    match language.kind() {
        FileKind::Doc => {
            if !body.is_empty() {
                out.push_str(&body);
                out.push('\n');
            }
        }
        FileKind::Code => {
            let fence = "`".repeat(longest_backtick_run(&body).max(2) + 1);
            out.push_str(&fence);
            out.push_str(&fence_tag(path, language));
            out.push('\n');
            if !body.is_empty() {
                out.push_str(&body);
                out.push('\n');
            }
            out.push_str(&fence);
            out.push('\n');
        }
    }
    out
}

/// Several files as one markdown document: an optional `# title` line, then the
/// [`file_block`]s in the given order, separated by blank lines.
///
/// ```
/// use internlm2_datasets::code::repository_markdown;
/// let md = repository_markdown(Some("demo"), [("README.md", "Demo."), ("m.py", "x = 1")]);
/// assert_eq!(md, "# demo\n\n## README.md\n\nDemo.\n\n## m.py\n\n```python\nx = 1\n```\n");
/// ```
pub fn repository_markdown<'a>(
    title: Option<&str>,
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut out = String::new();
    if let Some(title) = title {
        out.push_str("# ");
        out.push_str(title);
        out.push('\n');
    }
    for (path, text) in files {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&file_block(path, text));
    }
    out
}

/// The body of a block: BOM removed, line endings unified, trailing newlines removed.
fn normalize_body(text: &str) -> Cow<'_, str> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let text: Cow<'_, str> = if text.contains('\r') {
        Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        Cow::Borrowed(text)
    };
    match text {
        Cow::Borrowed(t) => Cow::Borrowed(t.trim_end_matches('\n')),
        Cow::Owned(t) => Cow::Owned(t.trim_end_matches('\n').to_string()),
    }
}

fn longest_backtick_run(text: &str) -> usize {
    let (mut best, mut run) = (0, 0);
    for b in text.bytes() {
        if b == b'`' {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

fn fence_tag(path: &str, language: Language) -> String {
    if let Some(tag) = language.tag() {
        return tag.to_string();
    }
    match file_name(path).rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => {
            // Keep the info string a single plain word.
            ext.chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '_'))
                .collect::<String>()
                .to_ascii_lowercase()
        }
        _ => String::new(),
    }
}

/// A [`Stage`] that replaces the text of a single-file document by its [`file_block`], for
/// files that are kept on their own instead of being regrouped into repositories.
///
/// The path is read from the metadata field `path_field` (default `"path"`), falling back to
/// `source`; a document with neither is dropped with reason `no_path`. The stage writes
/// `"format": "markdown"` into the metadata.
///
/// Regrouping ([`group_repositories`](super::group_repositories)) expects *raw* file texts:
/// do not run this stage before it.
///
/// ```
/// use internlm2_datasets::code::MarkdownStage;
/// use internlm2_datasets::{Document, Stage, Verdict};
/// let doc = Document::new("fn main() {}").with_meta("path", "src/main.rs");
/// let Verdict::Keep(out) = MarkdownStage::default().apply(doc) else { panic!() };
/// assert_eq!(out.text, "## src/main.rs\n\n```rust\nfn main() {}\n```\n");
/// ```
#[derive(Debug, Clone)]
pub struct MarkdownStage {
    path_field: String,
}

impl Default for MarkdownStage {
    fn default() -> Self {
        Self {
            path_field: "path".to_string(),
        }
    }
}

impl MarkdownStage {
    /// Builder: read the path from another metadata field.
    pub fn with_path_field(mut self, field: impl Into<String>) -> Self {
        self.path_field = field.into();
        self
    }
}

impl Stage for MarkdownStage {
    fn name(&self) -> &str {
        "code_markdown"
    }

    fn apply(&self, mut doc: Document) -> Verdict {
        let path = match doc.metadata.get(&self.path_field).and_then(Value::as_str) {
            Some(p) => p.to_string(),
            None => match &doc.source {
                Some(s) => s.clone(),
                None => return Verdict::drop(doc, "no_path"),
            },
        };
        doc.text = file_block(&path, &doc.text);
        doc.metadata.insert("format".into(), "markdown".into());
        Verdict::Keep(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_outgrows_backticks_in_body() {
        let block = file_block("x.js", "const s = `a ``` b`;");
        assert_eq!(
            block,
            "## x.js\n\n````javascript\nconst s = `a ``` b`;\n````\n"
        );
    }

    #[test]
    fn unknown_extension_and_empty_body() {
        assert_eq!(file_block("a.Proto", ""), "## a.Proto\n\n```proto\n```\n");
        assert_eq!(file_block("notes.txt", "\n\n"), "## notes.txt\n\n");
        assert_eq!(
            file_block("bin/run", "\u{feff}a\rb"),
            "## bin/run\n\n```\na\nb\n```\n"
        );
    }
}

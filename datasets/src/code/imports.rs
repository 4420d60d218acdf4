//! Import detection with per-language regular expressions.
//!
//! [`detect_imports`] lists what a file imports, as written; [`resolve`](super::resolve) maps
//! the specifiers to files of the same repository. What is recognised, per family (C-style
//! comments are blanked out first, keeping string literals, so commented-out imports do not
//! count; Python comments never match because every pattern is anchored at a line start):
//!
//! | family | statements | recorded specifier |
//! | --- | --- | --- |
//! | Python | `import a.b, c as d`; `from .m import x, y as z`; `from p import (x,\n y)` | `a.b`, `c`; `.m` with names `x`, `y` |
//! | Rust | `mod x;` (also `pub mod`); `use crate::a::{b, c::D};` (use trees expanded, `as` and `::*` removed, `self` in braces folded) | `self::x`; `crate::a::b`, `crate::a::c::D` |
//! | C/C++ | `#include "x.h"`, `#include <x.h>` | `x.h` ([`Import::system`] for `<>`) |
//! | Java | `import a.b.C;`, `import static a.b.C.m;`, `import a.b.*;` | `a.b.C`, `a.b.C.m`, `a.b.*` |
//! | JS/TS | `import ... from 'x'`, `export ... from 'x'`, `import 'x'`, `import('x')`, `require('x')` | `x` |
//! | Go | `import "a/b"`, `import alias "a/b"`, `import ( ... )` blocks | `a/b` |
//!
//! Each distinct import is listed once, in order of first appearance.

use std::sync::LazyLock;

use regex::Regex;

use super::language::Language;

/// One import statement (or one leaf of a Rust use tree).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Import {
    /// The module, path, header or package as written (see the module table).
    pub spec: String,
    /// Names imported from it: Python `from m import a, b` gives `["a", "b"]` (`*` kept);
    /// empty for every other statement.
    pub names: Vec<String>,
    /// `#include <...>`: searched repository-wide only, never relative to the file.
    pub system: bool,
}

impl Import {
    /// An import of `spec` without names.
    pub fn new(spec: impl Into<String>) -> Self {
        Self {
            spec: spec.into(),
            names: Vec::new(),
            system: false,
        }
    }

    /// Builder: set the imported names.
    pub fn with_names<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.names = names.into_iter().map(Into::into).collect();
        self
    }
}

fn re(pattern: &str) -> Regex {
    // The patterns are constants of this file; the unit tests compile every one of them.
    Regex::new(pattern).expect("valid built-in regex")
}

static PY_IMPORT: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?m)^[ \t]*import[ \t]+([\w.]+(?:[ \t]+as[ \t]+\w+)?(?:[ \t]*,[ \t]*[\w.]+(?:[ \t]+as[ \t]+\w+)?)*)",
    )
});
static PY_FROM: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?m)^[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#;]*)"));
static RS_MOD: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?m)^[ \t]*(?:pub(?:[ \t]*\([^)]*\))?[ \t]+)?mod[ \t]+(?:r#)?(\w+)[ \t]*;")
});
static RS_USE: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?m)^[ \t]*(?:pub(?:[ \t]*\([^)]*\))?[ \t]+)?use[ \t]+([^;]+);"));
static C_INCLUDE: LazyLock<Regex> =
    LazyLock::new(|| re(r#"(?m)^[ \t]*#[ \t]*include[ \t]*(?:"([^"\n]+)"|<([^>\n]+)>)"#));
static JAVA_IMPORT: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?m)^[ \t]*import[ \t]+(?:static[ \t]+)?([\w$]+(?:[ \t]*\.[ \t]*(?:[\w$]+|\*))*)[ \t]*;")
});
static JS_FROM: LazyLock<Regex> = LazyLock::new(|| {
    re(r#"(?:^|[^\w$.])(?:import|export)\b[^'"`;()]*?\bfrom[ \t\r\n]*['"]([^'"\n]+)['"]"#)
});
static JS_BARE: LazyLock<Regex> =
    LazyLock::new(|| re(r#"(?:^|[^\w$.])import[ \t]*['"]([^'"\n]+)['"]"#));
static JS_CALL: LazyLock<Regex> = LazyLock::new(|| {
    re(r#"(?:^|[^\w$.])(?:require|import)[ \t]*\([ \t\r\n]*['"]([^'"\n]+)['"][ \t\r\n]*\)"#)
});
static GO_SINGLE: LazyLock<Regex> =
    LazyLock::new(|| re(r#"(?m)^[ \t]*import[ \t]+(?:[\w.]+[ \t]+)?"([^"\n]+)""#));
static GO_BLOCK: LazyLock<Regex> = LazyLock::new(|| re(r"(?ms)^[ \t]*import[ \t]*\((.*?)\)"));
static GO_BLOCK_ITEM: LazyLock<Regex> =
    LazyLock::new(|| re(r#"(?m)^[ \t]*(?:[\w.]+[ \t]+)?"([^"\n]+)""#));

/// The imports of a file written in `language`, in order of first appearance, each once.
///
/// ```
/// use internlm2_datasets::code::{Import, Language, detect_imports};
/// let py = "import os.path as p\nfrom .shapes import (Circle,\n    Square as Sq)\n";
/// assert_eq!(detect_imports(Language::Python, py), vec![
///     Import::new("os.path"),
///     Import::new(".shapes").with_names(["Circle", "Square"]),
/// ]);
/// let rs = "mod util;\nuse crate::geo::{area, shapes::Circle};\n";
/// let specs: Vec<_> = detect_imports(Language::Rust, rs).into_iter().map(|i| i.spec).collect();
/// assert_eq!(specs, ["self::util", "crate::geo::area", "crate::geo::shapes::Circle"]);
/// ```
pub fn detect_imports(language: Language, text: &str) -> Vec<Import> {
    let mut found: Vec<(usize, Import)> = Vec::new();
    match language {
        Language::Python => python(text, &mut found),
        Language::Rust => rust(&strip_comments(text, &['"']), &mut found),
        Language::C | Language::Cpp => c_family(&strip_comments(text, &['"', '\'']), &mut found),
        Language::Java => java(&strip_comments(text, &['"', '\'']), &mut found),
        Language::JavaScript | Language::TypeScript => {
            js(&strip_comments(text, &['"', '\'', '`']), &mut found)
        }
        Language::Go => go(&strip_comments(text, &['"', '\'', '`']), &mut found),
        _ => {}
    }
    found.sort_by_key(|(pos, _)| *pos);
    let mut out: Vec<Import> = Vec::with_capacity(found.len());
    for (_, import) in found {
        if !out.contains(&import) {
            out.push(import);
        }
    }
    out
}

fn python(text: &str, found: &mut Vec<(usize, Import)>) {
    for cap in PY_IMPORT.captures_iter(text) {
        let pos = cap.get(0).map_or(0, |m| m.start());
        for part in cap[1].split(',') {
            if let Some(module) = part.split_whitespace().next() {
                found.push((pos, Import::new(module)));
            }
        }
    }
    for cap in PY_FROM.captures_iter(text) {
        let pos = cap.get(0).map_or(0, |m| m.start());
        let names: Vec<String> = cap[2]
            .trim_matches(|c: char| c == '(' || c == ')' || c.is_whitespace())
            .split(',')
            .filter_map(|n| n.split_whitespace().next())
            .filter(|n| *n == "*" || n.chars().all(|c| c.is_alphanumeric() || c == '_'))
            .map(str::to_string)
            .collect();
        if cap[1].is_empty() || names.is_empty() {
            continue;
        }
        found.push((pos, Import::new(&cap[1]).with_names(names)));
    }
}

fn rust(text: &str, found: &mut Vec<(usize, Import)>) {
    for cap in RS_MOD.captures_iter(text) {
        let pos = cap.get(0).map_or(0, |m| m.start());
        found.push((pos, Import::new(format!("self::{}", &cap[1]))));
    }
    for cap in RS_USE.captures_iter(text) {
        let pos = cap.get(0).map_or(0, |m| m.start());
        let tree = cap[1].split_whitespace().collect::<Vec<_>>().join(" ");
        for path in expand_use_tree(&tree) {
            found.push((pos, Import::new(path)));
        }
    }
}

/// `a::{b, c::{d, e as f}, self, *}` -> `a::b`, `a::c::d`, `a::c::e`, `a`, `a`.
fn expand_use_tree(tree: &str) -> Vec<String> {
    let tree = tree.trim().trim_start_matches("::");
    let mut out = Vec::new();
    match tree.find('{') {
        None => {
            let path = tree.split(" as ").next().unwrap_or(tree).trim();
            let path = path.trim_end_matches("::*").trim_end_matches("::self");
            if !path.is_empty() && path != "*" && path != "self" {
                out.push(path.to_string());
            }
        }
        Some(open) => {
            let prefix = tree[..open].trim().trim_end_matches("::");
            let inner = match tree.rfind('}') {
                Some(close) if close > open => &tree[open + 1..close],
                _ => &tree[open + 1..],
            };
            for item in split_top_level(inner) {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                if item == "self" || item == "*" {
                    if !prefix.is_empty() {
                        out.push(prefix.to_string());
                    }
                    continue;
                }
                for leaf in expand_use_tree(item) {
                    out.push(if prefix.is_empty() {
                        leaf
                    } else {
                        format!("{prefix}::{leaf}")
                    });
                }
            }
        }
    }
    out
}

/// Split at commas that are not inside braces.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0usize, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn c_family(text: &str, found: &mut Vec<(usize, Import)>) {
    for cap in C_INCLUDE.captures_iter(text) {
        let pos = cap.get(0).map_or(0, |m| m.start());
        if let Some(local) = cap.get(1) {
            found.push((pos, Import::new(local.as_str().trim())));
        } else if let Some(system) = cap.get(2) {
            let mut import = Import::new(system.as_str().trim());
            import.system = true;
            found.push((pos, import));
        }
    }
}

fn java(text: &str, found: &mut Vec<(usize, Import)>) {
    for cap in JAVA_IMPORT.captures_iter(text) {
        let pos = cap.get(0).map_or(0, |m| m.start());
        let spec: String = cap[1].chars().filter(|c| !c.is_whitespace()).collect();
        found.push((pos, Import::new(spec)));
    }
}

fn js(text: &str, found: &mut Vec<(usize, Import)>) {
    for regex in [&*JS_FROM, &*JS_BARE, &*JS_CALL] {
        for cap in regex.captures_iter(text) {
            let pos = cap.get(1).map_or(0, |m| m.start());
            found.push((pos, Import::new(&cap[1])));
        }
    }
}

fn go(text: &str, found: &mut Vec<(usize, Import)>) {
    for cap in GO_SINGLE.captures_iter(text) {
        let pos = cap.get(1).map_or(0, |m| m.start());
        found.push((pos, Import::new(&cap[1])));
    }
    for block in GO_BLOCK.captures_iter(text) {
        let Some(body) = block.get(1) else { continue };
        for cap in GO_BLOCK_ITEM.captures_iter(body.as_str()) {
            let pos = body.start() + cap.get(1).map_or(0, |m| m.start());
            found.push((pos, Import::new(&cap[1])));
        }
    }
}

/// Replace every character of `//` and `/* */` comments by a space (newlines kept, so line
/// anchors stay valid), leaving string literals delimited by `quotes` untouched.
pub(crate) fn strip_comments(text: &str, quotes: &[char]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string: Option<char> = None;
    while let Some(c) = chars.next() {
        if let Some(q) = in_string {
            out.push(c);
            if c == '\\' && q != '`' {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            } else if c == q || (c == '\n' && q != '`') {
                in_string = None;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('/', Some('/')) => {
                out.push(' ');
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                    out.push(' ');
                }
            }
            ('/', Some('*')) => {
                chars.next();
                out.push_str("  ");
                let mut prev = '\0';
                for c in chars.by_ref() {
                    out.push(if c == '\n' { '\n' } else { ' ' });
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
            }
            _ => {
                if quotes.contains(&c) {
                    in_string = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

static C_UMBRELLA_LINE: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r#"^(?:#[ \t]*(?:include\b.*|pragma\b.*|ifn?def[ \t]+\w+|if\b.*|elif\b.*|else\b.*|endif\b.*|define[ \t]+\w+)|extern[ \t]+"C(?:\+\+)?"[ \t]*\{|\})$"#,
    )
});
static PY_ALL: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?ms)^__all__[ \t]*\+?=[ \t]*[\[(].*?[\])]"));
static PY_DOCSTRING: LazyLock<Regex> =
    LazyLock::new(|| re(r#"^\s*(?:"""[\s\S]*?"""|'''[\s\S]*?''')"#));
static PY_COMMENT: LazyLock<Regex> = LazyLock::new(|| re(r"(?m)#.*$"));
static RS_ATTR: LazyLock<Regex> = LazyLock::new(|| re(r"(?m)^[ \t]*#!?\[[^\]]*\][ \t]*$"));
static JS_REEXPORT: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r#"(?:import|export)\b[^'"`;()]*?\bfrom[ \t\r\n]*['"][^'"\n]+['"][ \t]*;?|import[ \t]*['"][^'"\n]+['"][ \t]*;?"#,
    )
});

/// Whether a file only gathers other files (an umbrella header, a re-exporting `__init__.py`,
/// `mod.rs` or `index.js`): after removing comments, its text consists of imports (at least
/// one) and of the harmless lines of its language only.
///
/// Harmless lines: for C/C++ headers include guards (`#ifndef X`, `#define X`, `#endif`),
/// other preprocessor conditionals, `#pragma` and `extern "C" {` / `}`; for Python a leading
/// docstring and `__all__ = [...]`; for Rust attributes. Source files (`.c`, `.py` other than
/// `__init__.py`, ...) are umbrellas only when they are headers / package or module roots.
pub fn is_umbrella(path: &str, text: &str) -> bool {
    let language = Language::from_path(path);
    let name = super::language::file_name(path);
    match language {
        Language::C | Language::Cpp => {
            let is_header = name
                .rsplit_once('.')
                .is_some_and(|(_, ext)| matches!(ext, "h" | "hh" | "hpp" | "hxx" | "h++" | "H"));
            if !is_header {
                return false;
            }
            let text = strip_comments(text, &['"', '\'']);
            let mut includes = 0;
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if !C_UMBRELLA_LINE.is_match(line) {
                    return false;
                }
                includes += usize::from(C_INCLUDE.is_match(line));
            }
            includes > 0
        }
        Language::Python if name == "__init__.py" => {
            let imports = PY_IMPORT.find_iter(text).count() + PY_FROM.find_iter(text).count();
            let rest = PY_DOCSTRING.replace(text, "");
            let rest = PY_FROM.replace_all(&rest, "");
            let rest = PY_IMPORT.replace_all(&rest, "");
            let rest = PY_ALL.replace_all(&rest, "");
            let rest = PY_COMMENT.replace_all(&rest, "");
            imports > 0 && rest.trim().is_empty()
        }
        Language::Rust if matches!(name, "mod.rs" | "lib.rs") => {
            let text = strip_comments(text, &['"']);
            let imports = RS_MOD.find_iter(&text).count() + RS_USE.find_iter(&text).count();
            let rest = RS_MOD.replace_all(&text, "");
            let rest = RS_USE.replace_all(&rest, "");
            let rest = RS_ATTR.replace_all(&rest, "");
            imports > 0 && rest.trim().is_empty()
        }
        Language::JavaScript | Language::TypeScript if name.starts_with("index.") => {
            let text = strip_comments(text, &['"', '\'', '`']);
            let imports = JS_REEXPORT.find_iter(&text).count();
            let rest = JS_REEXPORT.replace_all(&text, "");
            imports > 0 && rest.trim().is_empty()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_patterns_compile() {
        for r in [
            &PY_IMPORT,
            &PY_FROM,
            &RS_MOD,
            &RS_USE,
            &C_INCLUDE,
            &JAVA_IMPORT,
            &JS_FROM,
            &JS_BARE,
            &JS_CALL,
            &GO_SINGLE,
            &GO_BLOCK,
            &GO_BLOCK_ITEM,
            &C_UMBRELLA_LINE,
            &PY_ALL,
            &PY_DOCSTRING,
            &PY_COMMENT,
            &RS_ATTR,
            &JS_REEXPORT,
        ] {
            LazyLock::force(r);
        }
    }

    #[test]
    fn use_trees() {
        assert_eq!(
            expand_use_tree("crate::a::{self, b as c, d::{e, f::*}, *}"),
            [
                "crate::a",
                "crate::a::b",
                "crate::a::d::e",
                "crate::a::d::f",
                "crate::a"
            ]
        );
        assert_eq!(expand_use_tree("::std::io"), ["std::io"]);
    }

    #[test]
    fn comments_are_blanked_but_strings_kept() {
        let s = strip_comments("a // x\n/* #include \"y\"\n */ \"//k\"", &['"']);
        assert_eq!(
            s,
            format!("a{}\n{}\n    \"//k\"", " ".repeat(5), " ".repeat(15))
        );
    }

    #[test]
    fn umbrellas() {
        assert!(is_umbrella(
            "all.h",
            "#ifndef ALL_H\n#define ALL_H\n#include \"a.h\"\n#endif\n"
        ));
        assert!(!is_umbrella("all.h", "#include \"a.h\"\nint x;\n"));
        assert!(!is_umbrella("all.c", "#include \"a.h\"\n"));
        assert!(is_umbrella(
            "p/__init__.py",
            "\"\"\"Doc.\"\"\"\nfrom .a import (X,\n Y)\n__all__ = [\n'X']\n"
        ));
        assert!(!is_umbrella("p/__init__.py", "from .a import X\nZ = 1\n"));
        assert!(is_umbrella(
            "src/lib.rs",
            "#![deny(missing_docs)]\npub mod a;\npub use a::X;\n"
        ));
        assert!(is_umbrella(
            "lib/index.ts",
            "export * from './a';\nexport { b } from \"./b\";\n"
        ));
    }
}

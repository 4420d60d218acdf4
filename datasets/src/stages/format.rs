//! The `format` stage (SPEC 5, first step of the text pipeline): Unicode normalisation,
//! whitespace cleanup, language identification and stable unique ids.
//!
//! [`FormatStage`] rewrites the text of every document according to a [`FormatConfig`]
//! (normalisation form, line endings, control characters, trailing and repeated spaces, runs of
//! blank lines), identifies its language with [`whatlang`] (written to
//! [`Document::language`] as an ISO 639-1 code and to the `language_score` metadata field) and
//! gives documents without an id a content hash id that is the same on every run and machine.
//!
//! Drop reasons: `empty` (nothing left after cleanup), `low_language_confidence`,
//! `language_not_allowed`.

use burn::config::Config;
use serde::{Deserialize, Serialize};
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick, is_nfkc_quick};
use whatlang::Lang;
use xxhash_rust::xxh3::Xxh3Default;

pub use super::text::is_unspaced;
use crate::{Document, Stage, Verdict};

/// Metadata field the format stage writes the language-identification confidence to.
pub const LANGUAGE_SCORE_FIELD: &str = "language_score";

/// Which Unicode normalisation form the format stage applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalization {
    /// Leave the text as it is.
    None,
    /// Canonical composition (`"e\u{301}"` -> `"é"`): changes no visible character.
    #[default]
    Nfc,
    /// Compatibility composition: NFC plus folding of compatibility characters (full-width
    /// Latin `"Ａ"` -> `"A"`, ligatures `"ﬁ"` -> `"fi"`, ideographic space -> space).
    Nfkc,
}

/// Configuration of [`FormatStage`]. Every cleanup step can be switched off.
///
/// ```
/// use internlm2_datasets::stages::format::{FormatConfig, Normalization};
/// let config = FormatConfig::default()
///     .with_normalization(Normalization::Nfkc)
///     .with_allowed_languages(Some(vec!["en".into(), "zh".into()]))
///     .with_id_prefix("web-".into());
/// assert_eq!(config.max_blank_lines, Some(2));
/// ```
///
/// The builders and the serde form come from burn's `#[derive(Config)]`: a serialised form
/// names every field; [`from_partial_json`](crate::from_partial_json) reads hand-written files
/// that name only what they change.
#[derive(Config, Debug, PartialEq)]
pub struct FormatConfig {
    /// Unicode normalisation form (default NFC).
    #[config(default = "Normalization::Nfc")]
    pub normalization: Normalization,
    /// Turn `\r\n`, a lone `\r`, NEL (U+0085) and the Unicode line / paragraph separators
    /// (U+2028, U+2029) into `\n` (default `true`).
    #[config(default = true)]
    pub normalize_line_endings: bool,
    /// Remove control characters other than `\n` and `\t`, and the byte-order mark U+FEFF
    /// (default `true`).
    #[config(default = true)]
    pub strip_control_chars: bool,
    /// Turn Unicode space separators (no-break space U+00A0, U+1680, U+2000..U+200A, U+202F,
    /// U+205F) into an ASCII space; the ideographic space U+3000 is kept (default `true`).
    #[config(default = true)]
    pub unicode_spaces_to_ascii: bool,
    /// Remove whitespace at the end of every line (default `true`).
    #[config(default = true)]
    pub trim_trailing_whitespace: bool,
    /// Collapse runs of ASCII spaces inside a line into one space; the indentation at the start
    /// of a line is kept (default `true`; switch off for text whose alignment matters).
    #[config(default = true)]
    pub collapse_spaces: bool,
    /// At most this many consecutive blank lines are kept; longer runs are shortened (default
    /// `Some(2)`; `None` keeps every blank line). A line of only whitespace counts as blank and
    /// is written as an empty line.
    #[config(default = "Some(2)")]
    pub max_blank_lines: Option<usize>,
    /// Remove blank lines at the start and whitespace at the end of the document (default
    /// `true`).
    #[config(default = true)]
    pub trim_document: bool,
    /// Identify the language (default `true`). Detection overwrites [`Document::language`].
    #[config(default = true)]
    pub detect_language: bool,
    /// Language identification reads at most this many bytes from the start of the text
    /// (cut at a character boundary; default 4096). `0` reads everything.
    #[config(default = 4096)]
    pub language_sample_bytes: usize,
    /// Drop documents whose language confidence (0..1, from whatlang) is below this
    /// (reason `low_language_confidence`; default `None`: keep all). A text whose language
    /// cannot be identified at all has confidence 0.
    pub min_language_confidence: Option<f64>,
    /// Keep only these languages (ISO 639-1 codes such as `"en"`, `"zh"`, or the ISO 639-3
    /// code for languages without one); others are dropped with reason `language_not_allowed`.
    /// `None` (default) keeps every language. Needs `detect_language`.
    pub allowed_languages: Option<Vec<String>>,
    /// Give documents with an empty id a content id (default `true`), see [`document_id`].
    #[config(default = true)]
    pub assign_ids: bool,
    /// Replace ids that are already set as well (default `false`).
    #[config(default = false)]
    pub overwrite_ids: bool,
    /// Prefix of assigned ids (default empty).
    #[config(default = "String::new()")]
    pub id_prefix: String,
}

impl Default for FormatConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl FormatConfig {
    /// A configuration that changes nothing in the text (no normalisation, no cleanup) but
    /// still identifies the language and assigns ids.
    pub fn text_unchanged() -> Self {
        Self {
            normalization: Normalization::None,
            normalize_line_endings: false,
            strip_control_chars: false,
            unicode_spaces_to_ascii: false,
            trim_trailing_whitespace: false,
            collapse_spaces: false,
            max_blank_lines: None,
            trim_document: false,
            ..Self::default()
        }
    }
}

/// The format stage: cleans the text, identifies the language, assigns ids.
///
/// ```
/// use internlm2_datasets::stages::format::FormatStage;
/// use internlm2_datasets::{Document, Stage, Verdict};
/// let stage = FormatStage::default();
/// let text = "Cafe\u{301}   au lait.  \r\nThe cat sat on the mat and looked at the dog.\r\n";
/// let Verdict::Keep(doc) = stage.apply(Document::new(text)) else { panic!("dropped") };
/// assert_eq!(doc.text, "Café au lait.\nThe cat sat on the mat and looked at the dog.");
/// assert_eq!(doc.language.as_deref(), Some("en"));
/// assert_eq!(doc.id.len(), 32);
/// ```
#[derive(Debug, Clone, Default)]
pub struct FormatStage {
    config: FormatConfig,
}

impl FormatStage {
    /// A stage with this configuration.
    pub fn new(config: FormatConfig) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &FormatConfig {
        &self.config
    }

    /// The cleaned text (normalisation and whitespace steps of the configuration, in this
    /// order: Unicode normalisation, line endings, control characters and Unicode spaces,
    /// per-line trailing whitespace and space runs, blank-line runs, document trim).
    pub fn clean(&self, text: &str) -> String {
        clean_text(text, &self.config)
    }

    /// The language of `text` as `(code, confidence)`, `None` when whatlang cannot tell.
    /// The code is ISO 639-1 where one exists (see [`iso639_1`]).
    pub fn detect_language(&self, text: &str) -> Option<(&'static str, f64)> {
        let sample = prefix_at_char_boundary(text, self.config.language_sample_bytes);
        whatlang::detect(sample).map(|info| (iso639_1(info.lang()), info.confidence()))
    }
}

impl Stage for FormatStage {
    fn name(&self) -> &str {
        "format"
    }

    fn apply(&self, mut doc: Document) -> Verdict {
        let cfg = &self.config;
        doc.text = self.clean(&doc.text);
        if cfg.assign_ids && (doc.id.is_empty() || cfg.overwrite_ids) {
            doc.id = document_id(doc.source.as_deref(), &doc.text, &cfg.id_prefix);
        }
        if doc.text.trim().is_empty() {
            return Verdict::drop(doc, "empty");
        }
        if !cfg.detect_language {
            return Verdict::Keep(doc);
        }
        let detected = self.detect_language(&doc.text);
        let confidence = detected.map_or(0.0, |(_, c)| c);
        doc.language = detected.map(|(code, _)| code.to_string());
        doc.metadata
            .insert(LANGUAGE_SCORE_FIELD.to_string(), confidence.into());
        if cfg
            .min_language_confidence
            .is_some_and(|min| confidence < min)
        {
            return Verdict::drop(doc, "low_language_confidence");
        }
        if let Some(allowed) = &cfg.allowed_languages {
            let ok = doc
                .language
                .as_deref()
                .is_some_and(|lang| allowed.iter().any(|a| a == lang));
            if !ok {
                return Verdict::drop(doc, "language_not_allowed");
            }
        }
        Verdict::Keep(doc)
    }
}

/// The stable id of a document: the lowercase hex xxh3-128 hash (32 digits) of
/// `len(source) as u64 little-endian ‖ source ‖ text` (UTF-8 bytes; a missing source is
/// empty), after `prefix`. The same source and text give the same id on every run and machine.
///
/// ```
/// use internlm2_datasets::stages::format::document_id;
/// let a = document_id(Some("https://a.org"), "text", "");
/// assert_eq!(a, document_id(Some("https://a.org"), "text", ""));
/// assert_ne!(a, document_id(Some("https://b.org"), "text", ""));
/// assert!(document_id(None, "text", "cc-").starts_with("cc-"));
/// ```
pub fn document_id(source: Option<&str>, text: &str, prefix: &str) -> String {
    let source = source.unwrap_or("");
    let mut hasher = Xxh3Default::new();
    hasher.update(&(source.len() as u64).to_le_bytes());
    hasher.update(source.as_bytes());
    hasher.update(text.as_bytes());
    format!("{prefix}{:032x}", hasher.digest128())
}

/// whatlang languages and their ISO 639-1 codes.
const ISO639_1: &[(Lang, &str)] = &[
    (Lang::Epo, "eo"),
    (Lang::Eng, "en"),
    (Lang::Rus, "ru"),
    (Lang::Cmn, "zh"),
    (Lang::Spa, "es"),
    (Lang::Por, "pt"),
    (Lang::Ita, "it"),
    (Lang::Ben, "bn"),
    (Lang::Fra, "fr"),
    (Lang::Deu, "de"),
    (Lang::Ukr, "uk"),
    (Lang::Kat, "ka"),
    (Lang::Ara, "ar"),
    (Lang::Hin, "hi"),
    (Lang::Jpn, "ja"),
    (Lang::Heb, "he"),
    (Lang::Yid, "yi"),
    (Lang::Pol, "pl"),
    (Lang::Amh, "am"),
    (Lang::Jav, "jv"),
    (Lang::Kor, "ko"),
    (Lang::Nob, "nb"),
    (Lang::Dan, "da"),
    (Lang::Swe, "sv"),
    (Lang::Fin, "fi"),
    (Lang::Tur, "tr"),
    (Lang::Nld, "nl"),
    (Lang::Hun, "hu"),
    (Lang::Ces, "cs"),
    (Lang::Ell, "el"),
    (Lang::Bul, "bg"),
    (Lang::Bel, "be"),
    (Lang::Mar, "mr"),
    (Lang::Kan, "kn"),
    (Lang::Ron, "ro"),
    (Lang::Slv, "sl"),
    (Lang::Hrv, "hr"),
    (Lang::Srp, "sr"),
    (Lang::Mkd, "mk"),
    (Lang::Lit, "lt"),
    (Lang::Lav, "lv"),
    (Lang::Est, "et"),
    (Lang::Tam, "ta"),
    (Lang::Vie, "vi"),
    (Lang::Urd, "ur"),
    (Lang::Tha, "th"),
    (Lang::Guj, "gu"),
    (Lang::Uzb, "uz"),
    (Lang::Pan, "pa"),
    (Lang::Aze, "az"),
    (Lang::Ind, "id"),
    (Lang::Tel, "te"),
    (Lang::Pes, "fa"),
    (Lang::Mal, "ml"),
    (Lang::Ori, "or"),
    (Lang::Mya, "my"),
    (Lang::Nep, "ne"),
    (Lang::Sin, "si"),
    (Lang::Khm, "km"),
    (Lang::Tuk, "tk"),
    (Lang::Aka, "ak"),
    (Lang::Zul, "zu"),
    (Lang::Sna, "sn"),
    (Lang::Afr, "af"),
    (Lang::Lat, "la"),
    (Lang::Slk, "sk"),
    (Lang::Cat, "ca"),
    (Lang::Tgl, "tl"),
    (Lang::Hye, "hy"),
    (Lang::Cym, "cy"),
];

/// The ISO 639-1 code of a whatlang language (`Lang::Cmn` -> `"zh"`), or its ISO 639-3 code
/// when it has none.
///
/// ```
/// use internlm2_datasets::stages::format::iso639_1;
/// assert_eq!(iso639_1(whatlang::Lang::Eng), "en");
/// assert_eq!(iso639_1(whatlang::Lang::Cmn), "zh");
/// ```
pub fn iso639_1(lang: Lang) -> &'static str {
    ISO639_1
        .iter()
        .find(|(l, _)| *l == lang)
        .map_or_else(|| lang.code(), |(_, code)| code)
}

/// The longest prefix of `text` of at most `max` bytes that ends at a character boundary
/// (`max == 0`: all of it).
fn prefix_at_char_boundary(text: &str, max: usize) -> &str {
    if max == 0 || text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Unicode normalisation, skipped when a quick check says the text is already normal.
fn normalize(text: &str, form: Normalization) -> Option<String> {
    match form {
        Normalization::None => None,
        Normalization::Nfc => {
            (is_nfc_quick(text.chars()) != IsNormalized::Yes).then(|| text.nfc().collect())
        }
        Normalization::Nfkc => {
            (is_nfkc_quick(text.chars()) != IsNormalized::Yes).then(|| text.nfkc().collect())
        }
    }
}

/// Whether `c` is a Unicode space separator that [`FormatConfig::unicode_spaces_to_ascii`]
/// replaces.
fn is_unicode_space(c: char) -> bool {
    matches!(
        c,
        '\u{A0}' | '\u{1680}' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}'
    )
}

/// The character-level pass: line endings, control characters, Unicode spaces.
fn clean_chars(text: &str, cfg: &FormatConfig) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let c = if cfg.normalize_line_endings {
            match c {
                '\r' => {
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    '\n'
                }
                '\u{85}' | '\u{2028}' | '\u{2029}' => '\n',
                c => c,
            }
        } else {
            c
        };
        if cfg.strip_control_chars
            && ((c.is_control() && c != '\n' && c != '\t') || c == '\u{FEFF}')
        {
            continue;
        }
        if cfg.unicode_spaces_to_ascii && is_unicode_space(c) {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// Collapse runs of spaces after the indentation of `line` into one space.
fn collapse_line_spaces(line: &str, out: &mut String) {
    let body_start = line.len() - line.trim_start().len();
    out.push_str(&line[..body_start]);
    let mut previous_space = false;
    for c in line[body_start..].chars() {
        if c == ' ' {
            if !previous_space {
                out.push(' ');
            }
            previous_space = true;
        } else {
            out.push(c);
            previous_space = false;
        }
    }
}

/// The text cleanup of [`FormatStage::clean`].
fn clean_text(text: &str, cfg: &FormatConfig) -> String {
    let normalized = normalize(text, cfg.normalization);
    let text = normalized.as_deref().unwrap_or(text);
    let text = clean_chars(text, cfg);
    let mut out = String::with_capacity(text.len());
    let mut emitted = 0usize;
    let mut blank_run = 0usize;
    for line in text.split('\n') {
        let line = if cfg.trim_trailing_whitespace {
            line.trim_end()
        } else {
            line
        };
        let blank = line.trim().is_empty();
        if blank {
            blank_run += 1;
            let leading = cfg.trim_document && emitted == 0;
            if leading || cfg.max_blank_lines.is_some_and(|max| blank_run > max) {
                continue;
            }
        } else {
            blank_run = 0;
        }
        if emitted > 0 {
            out.push('\n');
        }
        emitted += 1;
        if blank && cfg.max_blank_lines.is_some() {
            // A whitespace-only line is written as an empty line.
        } else if cfg.collapse_spaces {
            collapse_line_spaces(line, &mut out);
        } else {
            out.push_str(line);
        }
    }
    if cfg.trim_document {
        let end = out.trim_end().len();
        out.truncate(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_runs_and_trim() {
        let cfg = FormatConfig::default();
        assert_eq!(clean_text("\n\n  \nA\n\n\n\n\nB  \n\n", &cfg), "A\n\n\nB");
        assert_eq!(clean_text("  x  y", &cfg), "  x y");
        let none = FormatConfig::text_unchanged();
        let raw = " a\r\n\r\n\r\n\r\nb\u{0}  ";
        assert_eq!(clean_text(raw, &none), raw);
    }

    #[test]
    fn prefix_respects_char_boundaries() {
        assert_eq!(prefix_at_char_boundary("aé", 2), "a");
        assert_eq!(prefix_at_char_boundary("aé", 0), "aé");
    }
}

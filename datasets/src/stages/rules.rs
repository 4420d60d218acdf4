//! The `rules` stage (SPEC 5, second step of the text pipeline): heuristic document filters.
//!
//! [`RulesStage`] drops documents that fail one of the rules of a [`RulesConfig`]: the
//! Gopher quality and repetition rules (Rae et al. 2021), the document-level C4 rules (Raffel
//! et al. 2020) and the anomaly rules of the InternLM2 report (separators, line breaks,
//! abnormal character frequency, punctuation distribution). Every rule has its own drop reason
//! (see [`REASONS`]) and is switched off by setting its threshold to `None` (a list threshold to
//! empty, a flag to `false`). Rules are checked in the order of [`REASONS`]; a document is
//! dropped for the first rule it fails.
//!
//! # Words
//!
//! Word-based rules use [`words`]: whitespace-separated tokens with non-alphanumeric
//! characters trimmed from both ends (tokens left empty are not words), except that every
//! character of a script written without spaces ([`is_unspaced`]: Chinese, Japanese, Korean,
//! Thai, ...) is a word of its own. For a document in which such characters make up more than
//! half of the words (an *unspaced document*), the mean word length rule is skipped (it would
//! always be 1), word counts are character counts, and the repetition n-grams are character
//! n-grams. The stop-word rule only applies to documents whose [`Document::language`] is listed
//! in [`RulesConfig::stop_word_languages`] (English by default), so it needs the format stage.

use std::collections::HashMap;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::format::is_unspaced;
use super::safety::Prehashed;
use crate::{DataError, Document, Result, Stage, Verdict};

/// Every drop reason of the rules stage, in the order the rules are checked.
pub const REASONS: &[&str] = &[
    "gopher_word_count",
    "replacement_chars",
    "control_chars",
    "digit_fraction",
    "dominant_char",
    "punctuation_high",
    "punctuation_low",
    "empty_lines",
    "short_lines",
    "long_line",
    "separator_anomaly",
    "symbol_run",
    "c4_lorem_ipsum",
    "c4_curly_brace",
    "c4_javascript",
    "c4_policy",
    "c4_terminal_punct",
    "gopher_mean_word_length",
    "gopher_symbol_ratio",
    "gopher_bullet_lines",
    "gopher_ellipsis_lines",
    "gopher_alpha_words",
    "gopher_stop_words",
    "gopher_dup_lines",
    "gopher_dup_line_chars",
    "gopher_dup_paragraphs",
    "gopher_dup_paragraph_chars",
    "gopher_top_ngram",
    "gopher_dup_ngram",
];

/// The Gopher stop words: an English document must contain at least two occurrences of them.
pub const GOPHER_STOP_WORDS: &[&str] = &["the", "be", "to", "of", "and", "that", "have", "with"];

/// Phrases of the C4 policy rule (cookie banners, legal boilerplate), matched in lower case.
pub const POLICY_PHRASES: &[&str] = &[
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
];

/// Thresholds of [`RulesStage`]. All fractions are in `[0, 1]`; a rule drops a document when
/// the measured value is strictly beyond its threshold. `None` (or an empty list, or `false`)
/// switches a rule off.
///
/// "Lines" are the lines of the text split at `\n`; "non-empty lines" are those with a
/// non-whitespace character, trimmed. Character fractions count non-whitespace characters.
///
/// ```
/// use internlm2_datasets::stages::rules::RulesConfig;
/// // Default rules, but shorter documents allowed and the C4 curly-brace rule on.
/// let config = RulesConfig::default().with_min_words(Some(20)).with_drop_curly_braces(true);
/// assert_eq!(config.max_words, Some(100_000));
/// // Only one rule.
/// let only = RulesConfig::disabled().with_max_dup_lines(Some(0.3));
/// assert_eq!(only.min_words, None);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RulesConfig {
    /// `gopher_word_count`: fewer words than this (default 50).
    pub min_words: Option<usize>,
    /// `gopher_word_count`: more words than this (default 100,000).
    pub max_words: Option<usize>,

    /// `replacement_chars`: fraction of U+FFFD (decoding errors) above this (default 0.001).
    pub max_replacement_chars: Option<f64>,
    /// `control_chars`: fraction of control characters (other than `\n`, `\r`, `\t`) and
    /// private-use characters above this (default 0.001).
    pub max_control_chars: Option<f64>,
    /// `digit_fraction`: fraction of numeric characters above this (default 0.3).
    pub max_digit_fraction: Option<f64>,
    /// `dominant_char`: fraction of the most frequent character above this (default 0.3).
    pub max_dominant_char: Option<f64>,
    /// `punctuation_high`: fraction of punctuation characters above this (default 0.25).
    pub max_punctuation: Option<f64>,
    /// `punctuation_low`: fraction of punctuation characters below this (default 0.005):
    /// long text without punctuation (keyword lists, broken extraction).
    pub min_punctuation: Option<f64>,
    /// The four character-frequency rules above (`digit_fraction` .. `punctuation_low`) only
    /// look at texts with at least this many non-whitespace characters (default 100): in
    /// shorter texts the fractions are noise.
    pub ratio_min_chars: usize,

    /// `empty_lines`: fraction of lines that are blank above this (default 0.6).
    pub max_empty_lines: Option<f64>,
    /// `short_lines`: mean width of non-empty lines below this (default 10 columns; a
    /// character of an unspaced script counts 2 columns). Only for texts of at least 3
    /// non-empty lines: it detects a line break after every word or two.
    pub min_mean_line_width: Option<f64>,
    /// `long_line`: a line of more characters than this (default 10,000): the text lost its
    /// line breaks.
    pub max_line_chars: Option<usize>,
    /// `separator_anomaly`: fraction of non-empty lines that are separator lines above this
    /// (default 0.2). A separator line is one non-alphanumeric character repeated at least
    /// [`Self::separator_min_run`] times, possibly with spaces (`-----`, `= = = = =`, `*****`).
    pub max_separator_lines: Option<f64>,
    /// Minimum repetitions for a separator line (default 5).
    pub separator_min_run: usize,
    /// `symbol_run`: a run of one repeated non-alphanumeric, non-whitespace character longer
    /// than this anywhere in the text (default 100).
    pub max_symbol_run: Option<usize>,

    /// `c4_lorem_ipsum`: drop text containing "lorem ipsum", any case (default `true`).
    pub drop_lorem_ipsum: bool,
    /// `c4_curly_brace`: drop text containing `{` (default `false`: C4 does this, but it
    /// removes all code and LaTeX).
    pub drop_curly_braces: bool,
    /// `c4_javascript`: fraction of non-empty lines mentioning "javascript" above this
    /// (default 0.2). C4 removes such lines; here they count against the document.
    pub max_javascript_lines: Option<f64>,
    /// `c4_policy`: fraction of non-empty lines containing a [`POLICY_PHRASES`] phrase above
    /// this (default 0.2).
    pub max_policy_lines: Option<f64>,
    /// `c4_terminal_punct`: fraction of non-empty lines ending in terminal punctuation
    /// (`. ! ? " ' ” ’ … 。 ！ ？ 」 』`) below this (default 0.12).
    pub min_terminal_punct_lines: Option<f64>,

    /// `gopher_mean_word_length`: mean word length in characters below this (default 3).
    /// Skipped for unspaced documents.
    pub min_mean_word_length: Option<f64>,
    /// `gopher_mean_word_length`: mean word length above this (default 10).
    pub max_mean_word_length: Option<f64>,
    /// `gopher_symbol_ratio`: number of `#` characters, or of ellipses (`...` or `…`), per
    /// word above this (default 0.1).
    pub max_symbol_word_ratio: Option<f64>,
    /// `gopher_bullet_lines`: fraction of non-empty lines starting with a bullet (`•`, `●`,
    /// `▪`, `►`, ..., or `-`, `*`, `+`, `–`, `—` followed by a space) above this (default 0.9).
    pub max_bullet_lines: Option<f64>,
    /// `gopher_ellipsis_lines`: fraction of non-empty lines ending in `...` or `…` above this
    /// (default 0.3).
    pub max_ellipsis_lines: Option<f64>,
    /// `gopher_alpha_words`: fraction of words with an alphabetic character below this
    /// (default 0.8).
    pub min_alpha_words: Option<f64>,
    /// `gopher_stop_words`: fewer occurrences of [`Self::stop_words`] than this (default 2).
    pub min_stop_words: Option<usize>,
    /// The stop words (default [`GOPHER_STOP_WORDS`]), compared in lower case.
    pub stop_words: Vec<String>,
    /// Languages (ISO 639-1, from [`Document::language`]) the stop-word rule applies to
    /// (default `["en"]`). Documents without a language are not checked.
    pub stop_word_languages: Vec<String>,

    /// `gopher_dup_lines`: fraction of non-empty lines that repeat an earlier line above this
    /// (default 0.3).
    pub max_dup_lines: Option<f64>,
    /// `gopher_dup_line_chars`: characters in repeated lines over characters in all non-empty
    /// lines, above this (default 0.2).
    pub max_dup_line_chars: Option<f64>,
    /// `gopher_dup_paragraphs`: fraction of paragraphs (runs of non-empty lines) that repeat an
    /// earlier paragraph above this (default 0.3).
    pub max_dup_paragraphs: Option<f64>,
    /// `gopher_dup_paragraph_chars`: characters in repeated paragraphs over all paragraph
    /// characters, above this (default 0.2).
    pub max_dup_paragraph_chars: Option<f64>,
    /// `gopher_top_ngram`: `(n, max)` pairs: the characters covered by the most frequent word
    /// n-gram (its count times its length; only n-grams occurring at least twice) over the
    /// characters of all words, above `max` (default `[(2, 0.2), (3, 0.18), (4, 0.16)]`).
    pub max_top_ngram_chars: Vec<(usize, f64)>,
    /// `gopher_dup_ngram`: `(n, max)` pairs: the characters of words covered by repeated
    /// occurrences of any word n-gram (the first occurrence not counted) over the characters of
    /// all words, above `max` (default `(5, 0.15)`, `(6, 0.14)`, ... `(10, 0.10)`).
    pub max_dup_ngram_chars: Vec<(usize, f64)>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            min_words: Some(50),
            max_words: Some(100_000),
            max_replacement_chars: Some(0.001),
            max_control_chars: Some(0.001),
            max_digit_fraction: Some(0.3),
            max_dominant_char: Some(0.3),
            max_punctuation: Some(0.25),
            min_punctuation: Some(0.005),
            ratio_min_chars: 100,
            max_empty_lines: Some(0.6),
            min_mean_line_width: Some(10.0),
            max_line_chars: Some(10_000),
            max_separator_lines: Some(0.2),
            separator_min_run: 5,
            max_symbol_run: Some(100),
            drop_lorem_ipsum: true,
            drop_curly_braces: false,
            max_javascript_lines: Some(0.2),
            max_policy_lines: Some(0.2),
            min_terminal_punct_lines: Some(0.12),
            min_mean_word_length: Some(3.0),
            max_mean_word_length: Some(10.0),
            max_symbol_word_ratio: Some(0.1),
            max_bullet_lines: Some(0.9),
            max_ellipsis_lines: Some(0.3),
            min_alpha_words: Some(0.8),
            min_stop_words: Some(2),
            stop_words: GOPHER_STOP_WORDS.iter().map(|w| w.to_string()).collect(),
            stop_word_languages: vec!["en".to_string()],
            max_dup_lines: Some(0.3),
            max_dup_line_chars: Some(0.2),
            max_dup_paragraphs: Some(0.3),
            max_dup_paragraph_chars: Some(0.2),
            max_top_ngram_chars: vec![(2, 0.2), (3, 0.18), (4, 0.16)],
            max_dup_ngram_chars: vec![
                (5, 0.15),
                (6, 0.14),
                (7, 0.13),
                (8, 0.12),
                (9, 0.11),
                (10, 0.10),
            ],
        }
    }
}

impl RulesConfig {
    /// Every rule switched off (the non-threshold settings keep their defaults); enable rules
    /// one by one with the builders.
    pub fn disabled() -> Self {
        Self {
            min_words: None,
            max_words: None,
            max_replacement_chars: None,
            max_control_chars: None,
            max_digit_fraction: None,
            max_dominant_char: None,
            max_punctuation: None,
            min_punctuation: None,
            max_empty_lines: None,
            min_mean_line_width: None,
            max_line_chars: None,
            max_separator_lines: None,
            max_symbol_run: None,
            drop_lorem_ipsum: false,
            drop_curly_braces: false,
            max_javascript_lines: None,
            max_policy_lines: None,
            min_terminal_punct_lines: None,
            min_mean_word_length: None,
            max_mean_word_length: None,
            max_symbol_word_ratio: None,
            max_bullet_lines: None,
            max_ellipsis_lines: None,
            min_alpha_words: None,
            min_stop_words: None,
            max_dup_lines: None,
            max_dup_line_chars: None,
            max_dup_paragraphs: None,
            max_dup_paragraph_chars: None,
            max_top_ngram_chars: Vec::new(),
            max_dup_ngram_chars: Vec::new(),
            ..Self::default()
        }
    }

    /// Check that fractions are in `[0, 1]`, lengths are positive and n-gram sizes are at
    /// least 1.
    pub fn validate(&self) -> Result<()> {
        let fractions = [
            ("max_replacement_chars", self.max_replacement_chars),
            ("max_control_chars", self.max_control_chars),
            ("max_digit_fraction", self.max_digit_fraction),
            ("max_dominant_char", self.max_dominant_char),
            ("max_punctuation", self.max_punctuation),
            ("min_punctuation", self.min_punctuation),
            ("max_empty_lines", self.max_empty_lines),
            ("max_separator_lines", self.max_separator_lines),
            ("max_javascript_lines", self.max_javascript_lines),
            ("max_policy_lines", self.max_policy_lines),
            ("min_terminal_punct_lines", self.min_terminal_punct_lines),
            ("max_bullet_lines", self.max_bullet_lines),
            ("max_ellipsis_lines", self.max_ellipsis_lines),
            ("min_alpha_words", self.min_alpha_words),
            ("max_dup_lines", self.max_dup_lines),
            ("max_dup_line_chars", self.max_dup_line_chars),
            ("max_dup_paragraphs", self.max_dup_paragraphs),
            ("max_dup_paragraph_chars", self.max_dup_paragraph_chars),
        ];
        for (name, value) in fractions {
            if let Some(v) = value
                && !(0.0..=1.0).contains(&v)
            {
                return Err(DataError::Config(format!(
                    "rules: {name} = {v} is not a fraction in [0, 1]"
                )));
            }
        }
        for (name, list) in [
            ("max_top_ngram_chars", &self.max_top_ngram_chars),
            ("max_dup_ngram_chars", &self.max_dup_ngram_chars),
        ] {
            for &(n, max) in list {
                if n == 0 || !(0.0..=1.0).contains(&max) {
                    return Err(DataError::Config(format!(
                        "rules: {name} entry ({n}, {max}) needs n >= 1 and a fraction in [0, 1]"
                    )));
                }
            }
        }
        if self.separator_min_run == 0 {
            return Err(DataError::Config(
                "rules: separator_min_run must be at least 1".into(),
            ));
        }
        for (name, value) in [
            ("min_mean_line_width", self.min_mean_line_width),
            ("min_mean_word_length", self.min_mean_word_length),
            ("max_mean_word_length", self.max_mean_word_length),
            ("max_symbol_word_ratio", self.max_symbol_word_ratio),
        ] {
            if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(DataError::Config(format!(
                    "rules: {name} must be a non-negative number"
                )));
            }
        }
        Ok(())
    }
}

/// `with_*` builders of the config fields.
macro_rules! builders {
    ($($method:ident => $field:ident: $ty:ty;)*) => {
        impl RulesConfig {
            $(
                #[doc = concat!("Builder: set [`Self::", stringify!($field), "`].")]
                pub fn $method(mut self, value: $ty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

builders! {
    with_min_words => min_words: Option<usize>;
    with_max_words => max_words: Option<usize>;
    with_max_replacement_chars => max_replacement_chars: Option<f64>;
    with_max_control_chars => max_control_chars: Option<f64>;
    with_max_digit_fraction => max_digit_fraction: Option<f64>;
    with_max_dominant_char => max_dominant_char: Option<f64>;
    with_max_punctuation => max_punctuation: Option<f64>;
    with_min_punctuation => min_punctuation: Option<f64>;
    with_ratio_min_chars => ratio_min_chars: usize;
    with_max_empty_lines => max_empty_lines: Option<f64>;
    with_min_mean_line_width => min_mean_line_width: Option<f64>;
    with_max_line_chars => max_line_chars: Option<usize>;
    with_max_separator_lines => max_separator_lines: Option<f64>;
    with_separator_min_run => separator_min_run: usize;
    with_max_symbol_run => max_symbol_run: Option<usize>;
    with_drop_lorem_ipsum => drop_lorem_ipsum: bool;
    with_drop_curly_braces => drop_curly_braces: bool;
    with_max_javascript_lines => max_javascript_lines: Option<f64>;
    with_max_policy_lines => max_policy_lines: Option<f64>;
    with_min_terminal_punct_lines => min_terminal_punct_lines: Option<f64>;
    with_min_mean_word_length => min_mean_word_length: Option<f64>;
    with_max_mean_word_length => max_mean_word_length: Option<f64>;
    with_max_symbol_word_ratio => max_symbol_word_ratio: Option<f64>;
    with_max_bullet_lines => max_bullet_lines: Option<f64>;
    with_max_ellipsis_lines => max_ellipsis_lines: Option<f64>;
    with_min_alpha_words => min_alpha_words: Option<f64>;
    with_min_stop_words => min_stop_words: Option<usize>;
    with_stop_words => stop_words: Vec<String>;
    with_stop_word_languages => stop_word_languages: Vec<String>;
    with_max_dup_lines => max_dup_lines: Option<f64>;
    with_max_dup_line_chars => max_dup_line_chars: Option<f64>;
    with_max_dup_paragraphs => max_dup_paragraphs: Option<f64>;
    with_max_dup_paragraph_chars => max_dup_paragraph_chars: Option<f64>;
    with_max_top_ngram_chars => max_top_ngram_chars: Vec<(usize, f64)>;
    with_max_dup_ngram_chars => max_dup_ngram_chars: Vec<(usize, f64)>;
}

/// The rules stage.
///
/// ```
/// use internlm2_datasets::stages::rules::{RulesConfig, RulesStage};
/// use internlm2_datasets::{Document, Stage};
/// let stage = RulesStage::new(RulesConfig::disabled().with_drop_lorem_ipsum(true)).unwrap();
/// let verdict = stage.apply(Document::new("Lorem ipsum dolor sit amet."));
/// assert_eq!(verdict.reason(), Some("c4_lorem_ipsum"));
/// assert!(stage.apply(Document::new("A clean sentence.")).is_keep());
/// ```
#[derive(Debug, Clone)]
pub struct RulesStage {
    config: RulesConfig,
    stop_words: HashSet<String>,
}

impl Default for RulesStage {
    fn default() -> Self {
        Self::from_valid(RulesConfig::default())
    }
}

impl RulesStage {
    /// A stage with this configuration; fails when [`RulesConfig::validate`] does.
    pub fn new(config: RulesConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self::from_valid(config))
    }

    fn from_valid(config: RulesConfig) -> Self {
        let stop_words = config.stop_words.iter().map(|w| w.to_lowercase()).collect();
        Self { config, stop_words }
    }

    /// The configuration.
    pub fn config(&self) -> &RulesConfig {
        &self.config
    }

    /// The first rule `text` fails (its reason from [`REASONS`]), or `None` when it passes all.
    /// `language` is the document's ISO 639-1 language (only the stop-word rule reads it).
    pub fn check(&self, text: &str, language: Option<&str>) -> Option<&'static str> {
        let cfg = &self.config;
        // Statistics no enabled rule reads are not computed (all-zero stats fail no rule).
        let words = if self.needs_words() {
            WordStats::new(text)
        } else {
            WordStats::default()
        };
        if cfg.min_words.is_some_and(|min| words.count < min)
            || cfg.max_words.is_some_and(|max| words.count > max)
        {
            return Some("gopher_word_count");
        }
        let chars = if self.needs_chars() {
            CharStats::new(text)
        } else {
            CharStats::default()
        };
        if let Some(reason) = self.check_chars(&chars) {
            return Some(reason);
        }
        let lines = if self.needs_lines() {
            LineStats::new(text, cfg.separator_min_run)
        } else {
            LineStats::default()
        };
        if let Some(reason) = self.check_lines(&lines) {
            return Some(reason);
        }
        if cfg
            .max_symbol_run
            .is_some_and(|max| chars.longest_symbol_run > max)
        {
            return Some("symbol_run");
        }
        if let Some(reason) = self.check_c4(text, &lines) {
            return Some(reason);
        }
        if let Some(reason) = self.check_gopher_quality(text, language, &words, &lines) {
            return Some(reason);
        }
        self.check_repetition(text)
    }

    fn needs_words(&self) -> bool {
        let c = &self.config;
        c.min_words.is_some()
            || c.max_words.is_some()
            || c.min_mean_word_length.is_some()
            || c.max_mean_word_length.is_some()
            || c.max_symbol_word_ratio.is_some()
            || c.min_alpha_words.is_some()
    }

    fn needs_chars(&self) -> bool {
        let c = &self.config;
        c.max_replacement_chars.is_some()
            || c.max_control_chars.is_some()
            || c.max_digit_fraction.is_some()
            || c.max_dominant_char.is_some()
            || c.max_punctuation.is_some()
            || c.min_punctuation.is_some()
            || c.max_symbol_run.is_some()
    }

    fn needs_lines(&self) -> bool {
        let c = &self.config;
        c.max_empty_lines.is_some()
            || c.min_mean_line_width.is_some()
            || c.max_line_chars.is_some()
            || c.max_separator_lines.is_some()
            || c.max_javascript_lines.is_some()
            || c.max_policy_lines.is_some()
            || c.min_terminal_punct_lines.is_some()
            || c.max_bullet_lines.is_some()
            || c.max_ellipsis_lines.is_some()
    }

    fn check_chars(&self, c: &CharStats) -> Option<&'static str> {
        let cfg = &self.config;
        let frac = |n: usize| ratio(n, c.non_space);
        if exceeds(cfg.max_replacement_chars, frac(c.replacement)) {
            return Some("replacement_chars");
        }
        if exceeds(cfg.max_control_chars, frac(c.control)) {
            return Some("control_chars");
        }
        if c.non_space < cfg.ratio_min_chars {
            return None;
        }
        if exceeds(cfg.max_digit_fraction, frac(c.digits)) {
            return Some("digit_fraction");
        }
        if exceeds(cfg.max_dominant_char, frac(c.most_frequent)) {
            return Some("dominant_char");
        }
        if exceeds(cfg.max_punctuation, frac(c.punctuation)) {
            return Some("punctuation_high");
        }
        if below(cfg.min_punctuation, frac(c.punctuation)) {
            return Some("punctuation_low");
        }
        None
    }

    fn check_lines(&self, l: &LineStats) -> Option<&'static str> {
        let cfg = &self.config;
        if exceeds(cfg.max_empty_lines, ratio(l.total - l.non_empty, l.total)) {
            return Some("empty_lines");
        }
        if l.non_empty >= 3 && below(cfg.min_mean_line_width, l.width as f64 / l.non_empty as f64) {
            return Some("short_lines");
        }
        if cfg.max_line_chars.is_some_and(|max| l.longest > max) {
            return Some("long_line");
        }
        if exceeds(cfg.max_separator_lines, ratio(l.separators, l.non_empty)) {
            return Some("separator_anomaly");
        }
        None
    }

    fn check_c4(&self, text: &str, l: &LineStats) -> Option<&'static str> {
        let cfg = &self.config;
        let needs_lower = cfg.drop_lorem_ipsum
            || cfg.max_javascript_lines.is_some()
            || cfg.max_policy_lines.is_some();
        let lower = if needs_lower {
            text.to_lowercase()
        } else {
            String::new()
        };
        if cfg.drop_lorem_ipsum && lower.contains("lorem ipsum") {
            return Some("c4_lorem_ipsum");
        }
        if cfg.drop_curly_braces && text.contains('{') {
            return Some("c4_curly_brace");
        }
        if cfg.max_javascript_lines.is_some() || cfg.max_policy_lines.is_some() {
            let (mut javascript, mut policy) = (0, 0);
            for line in lower.lines().filter(|line| !line.trim().is_empty()) {
                javascript += usize::from(line.contains("javascript"));
                policy += usize::from(POLICY_PHRASES.iter().any(|p| line.contains(p)));
            }
            if exceeds(cfg.max_javascript_lines, ratio(javascript, l.non_empty)) {
                return Some("c4_javascript");
            }
            if exceeds(cfg.max_policy_lines, ratio(policy, l.non_empty)) {
                return Some("c4_policy");
            }
        }
        if l.non_empty > 0 && below(cfg.min_terminal_punct_lines, ratio(l.terminal, l.non_empty)) {
            return Some("c4_terminal_punct");
        }
        None
    }

    fn check_gopher_quality(
        &self,
        text: &str,
        language: Option<&str>,
        w: &WordStats,
        l: &LineStats,
    ) -> Option<&'static str> {
        let cfg = &self.config;
        if w.count > 0 && !w.is_unspaced() {
            let mean = w.chars as f64 / w.count as f64;
            if below(cfg.min_mean_word_length, mean) || exceeds(cfg.max_mean_word_length, mean) {
                return Some("gopher_mean_word_length");
            }
        }
        if cfg.max_symbol_word_ratio.is_some() && w.count > 0 {
            let hashes = text.matches('#').count();
            let ellipses = text.matches("...").count() + text.matches('…').count();
            if exceeds(
                cfg.max_symbol_word_ratio,
                hashes.max(ellipses) as f64 / w.count as f64,
            ) {
                return Some("gopher_symbol_ratio");
            }
        }
        if exceeds(cfg.max_bullet_lines, ratio(l.bullets, l.non_empty)) {
            return Some("gopher_bullet_lines");
        }
        if exceeds(cfg.max_ellipsis_lines, ratio(l.ellipsis_end, l.non_empty)) {
            return Some("gopher_ellipsis_lines");
        }
        if w.count > 0 && below(cfg.min_alpha_words, ratio(w.alphabetic, w.count)) {
            return Some("gopher_alpha_words");
        }
        if let Some(min) = cfg.min_stop_words
            && language.is_some_and(|lang| cfg.stop_word_languages.iter().any(|l| l == lang))
        {
            let found = words(text)
                .filter(|word| self.stop_words.contains(&word.to_lowercase()))
                .take(min)
                .count();
            if found < min {
                return Some("gopher_stop_words");
            }
        }
        None
    }

    fn check_repetition(&self, text: &str) -> Option<&'static str> {
        let cfg = &self.config;
        let line_rules = [cfg.max_dup_lines, cfg.max_dup_line_chars];
        if line_rules.iter().any(Option::is_some) {
            let dup = duplicates(text.lines().map(str::trim).filter(|l| !l.is_empty()));
            if exceeds(cfg.max_dup_lines, ratio(dup.repeated, dup.total)) {
                return Some("gopher_dup_lines");
            }
            if exceeds(
                cfg.max_dup_line_chars,
                ratio(dup.repeated_chars, dup.total_chars),
            ) {
                return Some("gopher_dup_line_chars");
            }
        }
        let paragraph_rules = [cfg.max_dup_paragraphs, cfg.max_dup_paragraph_chars];
        if paragraph_rules.iter().any(Option::is_some) {
            let paragraphs = paragraphs(text);
            let dup = duplicates(paragraphs.iter().map(String::as_str));
            if exceeds(cfg.max_dup_paragraphs, ratio(dup.repeated, dup.total)) {
                return Some("gopher_dup_paragraphs");
            }
            if exceeds(
                cfg.max_dup_paragraph_chars,
                ratio(dup.repeated_chars, dup.total_chars),
            ) {
                return Some("gopher_dup_paragraph_chars");
            }
        }
        if cfg.max_top_ngram_chars.is_empty() && cfg.max_dup_ngram_chars.is_empty() {
            return None;
        }
        let tokens: Vec<(u64, usize)> = words(text)
            .map(|word| (hash_lower(word), word.chars().count()))
            .collect();
        let total: usize = tokens.iter().map(|t| t.1).sum();
        for &(n, max) in &cfg.max_top_ngram_chars {
            if ratio(top_ngram_chars(&tokens, n), total) > max {
                return Some("gopher_top_ngram");
            }
        }
        for &(n, max) in &cfg.max_dup_ngram_chars {
            if ratio(dup_ngram_chars(&tokens, n), total) > max {
                return Some("gopher_dup_ngram");
            }
        }
        None
    }
}

impl Stage for RulesStage {
    fn name(&self) -> &str {
        "rules"
    }

    fn apply(&self, doc: Document) -> Verdict {
        match self.check(&doc.text, doc.language.as_deref()) {
            Some(reason) => Verdict::drop(doc, reason),
            None => Verdict::Keep(doc),
        }
    }
}

/// The words of `text` as the rules count them (see the module documentation): every
/// character of an unspaced script is a word; other whitespace-separated tokens are words
/// after trimming non-alphanumeric characters from both ends.
///
/// ```
/// use internlm2_datasets::stages::rules::words;
/// let w: Vec<&str> = words("Hello, world! -- 中文ok (x)").collect();
/// assert_eq!(w, ["Hello", "world", "中", "文", "ok", "x"]);
/// ```
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace()
        .flat_map(split_unspaced)
        .filter_map(|token| {
            let word = token.trim_matches(|c: char| !c.is_alphanumeric());
            (!word.is_empty()).then_some(word)
        })
}

/// Split a whitespace-free token into runs of ordinary characters and single unspaced
/// characters.
fn split_unspaced(token: &str) -> impl Iterator<Item = &str> {
    let mut rest = token;
    std::iter::from_fn(move || {
        let first = rest.chars().next()?;
        let end = if is_unspaced(first) {
            first.len_utf8()
        } else {
            rest.find(is_unspaced).unwrap_or(rest.len())
        };
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// `part / whole`, 0 when `whole` is 0.
fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Whether a maximum is set and `value` is above it.
fn exceeds(max: Option<f64>, value: f64) -> bool {
    max.is_some_and(|max| value > max)
}

/// Whether a minimum is set and `value` is below it.
fn below(min: Option<f64>, value: f64) -> bool {
    min.is_some_and(|min| value < min)
}

/// Whether `c` is punctuation: ASCII punctuation, Latin-1 punctuation, the General
/// Punctuation block, CJK symbols and punctuation, and full-width punctuation.
pub fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(c as u32,
            0xA1..=0xBF | 0x2010..=0x205E | 0x3001..=0x303F
            | 0xFE10..=0xFE1F | 0xFE30..=0xFE4F | 0xFE50..=0xFE6B
            | 0xFF01..=0xFF0F | 0xFF1A..=0xFF20 | 0xFF3B..=0xFF40 | 0xFF5B..=0xFF65)
}

/// Whether `c` is a private-use character.
fn is_private_use(c: char) -> bool {
    matches!(c as u32, 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD)
}

/// Word counts of a text.
#[derive(Default)]
struct WordStats {
    count: usize,
    chars: usize,
    alphabetic: usize,
    unspaced: usize,
}

impl WordStats {
    fn new(text: &str) -> Self {
        let mut stats = Self {
            count: 0,
            chars: 0,
            alphabetic: 0,
            unspaced: 0,
        };
        for word in words(text) {
            stats.count += 1;
            let mut chars = word.chars();
            let first = chars.next().unwrap_or(' ');
            stats.chars += 1 + chars.clone().count();
            stats.alphabetic += usize::from(word.chars().any(char::is_alphabetic));
            stats.unspaced += usize::from(is_unspaced(first) && chars.next().is_none());
        }
        stats
    }

    /// Whether more than half of the words are single unspaced characters.
    fn is_unspaced(&self) -> bool {
        self.unspaced * 2 > self.count
    }
}

/// Character counts of a text (non-whitespace characters only).
#[derive(Default)]
struct CharStats {
    non_space: usize,
    replacement: usize,
    control: usize,
    digits: usize,
    punctuation: usize,
    most_frequent: usize,
    longest_symbol_run: usize,
}

impl CharStats {
    fn new(text: &str) -> Self {
        let mut s = Self {
            non_space: 0,
            replacement: 0,
            control: 0,
            digits: 0,
            punctuation: 0,
            most_frequent: 0,
            longest_symbol_run: 0,
        };
        let mut ascii = [0usize; 128];
        let mut other: HashMap<char, usize> = HashMap::new();
        let mut run: Option<(char, usize)> = None;
        for c in text.chars() {
            let symbol = !c.is_whitespace() && !c.is_alphanumeric();
            run = match run {
                Some((prev, n)) if symbol && prev == c => Some((c, n + 1)),
                _ if symbol => Some((c, 1)),
                _ => None,
            };
            if let Some((_, n)) = run {
                s.longest_symbol_run = s.longest_symbol_run.max(n);
            }
            if c.is_whitespace() {
                continue;
            }
            s.non_space += 1;
            s.replacement += usize::from(c == '\u{FFFD}');
            s.control += usize::from(c.is_control() || is_private_use(c));
            s.digits += usize::from(c.is_numeric());
            s.punctuation += usize::from(is_punctuation(c));
            let count = if c.is_ascii() {
                &mut ascii[c as usize]
            } else {
                other.entry(c).or_default()
            };
            *count += 1;
            s.most_frequent = s.most_frequent.max(*count);
        }
        s
    }
}

/// Line counts of a text.
#[derive(Default)]
struct LineStats {
    total: usize,
    non_empty: usize,
    width: usize,
    longest: usize,
    separators: usize,
    terminal: usize,
    bullets: usize,
    ellipsis_end: usize,
}

/// Characters that start a bullet line on their own.
const BULLETS: &[char] = &[
    '•', '‣', '⁃', '◦', '▪', '▫', '■', '□', '●', '○', '►', '▸', '▹', '▶', '➢', '➤', '✓', '✔', '·',
    '∙',
];

/// Characters that start a bullet line when a space follows.
const DASH_BULLETS: &[char] = &['-', '*', '+', '–', '—'];

/// Characters that end a line in terminal punctuation.
const TERMINAL: &[char] = &[
    '.', '!', '?', '"', '\'', '”', '’', '…', '。', '！', '？', '」', '』',
];

impl LineStats {
    fn new(text: &str, separator_min_run: usize) -> Self {
        let mut s = Self {
            total: 0,
            non_empty: 0,
            width: 0,
            longest: 0,
            separators: 0,
            terminal: 0,
            bullets: 0,
            ellipsis_end: 0,
        };
        for line in text.lines() {
            s.total += 1;
            let chars = line.chars().count();
            s.longest = s.longest.max(chars);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            s.non_empty += 1;
            s.width += line
                .chars()
                .map(|c| if is_unspaced(c) { 2 } else { 1 })
                .sum::<usize>();
            s.separators += usize::from(is_separator_line(line, separator_min_run));
            s.terminal += usize::from(line.ends_with(TERMINAL));
            s.ellipsis_end += usize::from(line.ends_with("...") || line.ends_with('…'));
            let mut chars = line.chars();
            let first = chars.next().unwrap_or(' ');
            let second = chars.next();
            s.bullets += usize::from(
                BULLETS.contains(&first)
                    || (DASH_BULLETS.contains(&first) && second.is_some_and(char::is_whitespace)),
            );
        }
        s
    }
}

/// Whether a trimmed, non-empty line is one non-alphanumeric character repeated at least
/// `min_run` times (spaces allowed between).
fn is_separator_line(line: &str, min_run: usize) -> bool {
    let mut chars = line.chars().filter(|c| !c.is_whitespace());
    let Some(first) = chars.next() else {
        return false;
    };
    if first.is_alphanumeric() {
        return false;
    }
    let mut n = 1;
    for c in chars {
        if c != first {
            return false;
        }
        n += 1;
    }
    n >= min_run
}

/// The paragraphs of a text: runs of non-empty lines, trimmed and joined with `\n`.
fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else {
            if !current.is_empty() {
                current.push('\n');
            }
            current.push_str(line);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Counts of repeated elements (lines or paragraphs).
struct Duplicates {
    total: usize,
    total_chars: usize,
    repeated: usize,
    repeated_chars: usize,
}

/// Count the elements that repeat an earlier element, and their characters.
fn duplicates<'a>(items: impl Iterator<Item = &'a str>) -> Duplicates {
    let mut seen = HashSet::new();
    let mut d = Duplicates {
        total: 0,
        total_chars: 0,
        repeated: 0,
        repeated_chars: 0,
    };
    for item in items {
        let chars = item.chars().count();
        d.total += 1;
        d.total_chars += chars;
        if !seen.insert(item) {
            d.repeated += 1;
            d.repeated_chars += chars;
        }
    }
    d
}

/// 64-bit hash of a word in lower case.
fn hash_lower(word: &str) -> u64 {
    if word.chars().any(char::is_uppercase) {
        xxh3_64(word.to_lowercase().as_bytes())
    } else {
        xxh3_64(word.as_bytes())
    }
}

/// Hash of the n-gram of word hashes starting at each position (well mixed in all bits, so
/// it can key a [`HashMap`] without rehashing).
fn ngram_hashes(tokens: &[(u64, usize)], n: usize) -> impl Iterator<Item = u64> + '_ {
    tokens.windows(n).map(|gram| {
        let h = gram.iter().fold(0x243F_6A88_85A3_08D3_u64, |h, (word, _)| {
            (h.rotate_left(23) ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        });
        h ^ (h >> 32)
    })
}

/// Characters covered by the most frequent n-gram occurring at least twice: its count times
/// the characters of its words (0 when no n-gram repeats).
fn top_ngram_chars(tokens: &[(u64, usize)], n: usize) -> usize {
    if tokens.len() < n {
        return 0;
    }
    let mut counts: HashMap<u64, (usize, usize), Prehashed> =
        HashMap::with_capacity_and_hasher(tokens.len(), Prehashed::default());
    for (i, hash) in ngram_hashes(tokens, n).enumerate() {
        let entry = counts.entry(hash).or_insert((0, i));
        entry.0 += 1;
    }
    counts
        .values()
        .filter(|(count, _)| *count >= 2)
        .map(|&(count, first)| count * tokens[first..first + n].iter().map(|t| t.1).sum::<usize>())
        .max()
        .unwrap_or(0)
}

/// Characters of words covered by an occurrence of an n-gram that already occurred earlier
/// (each word counted once).
fn dup_ngram_chars(tokens: &[(u64, usize)], n: usize) -> usize {
    if tokens.len() < n {
        return 0;
    }
    let mut seen: HashSet<u64, Prehashed> =
        HashSet::with_capacity_and_hasher(tokens.len(), Prehashed::default());
    let mut covered = vec![false; tokens.len()];
    for (i, hash) in ngram_hashes(tokens, n).enumerate() {
        if !seen.insert(hash) {
            covered[i..i + n].iter_mut().for_each(|c| *c = true);
        }
    }
    tokens
        .iter()
        .zip(&covered)
        .filter(|(_, c)| **c)
        .map(|(t, _)| t.1)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspaced_splitting() {
        let pieces: Vec<&str> = split_unspaced("ab中文cd").collect();
        assert_eq!(pieces, ["ab", "中", "文", "cd"]);
    }

    #[test]
    fn ngram_coverage() {
        // a b c a b c: the 3-gram "a b c" repeats once (3 words); 2-grams "a b" and "b c"
        // occur twice each.
        let tokens: Vec<(u64, usize)> = [1, 2, 3, 1, 2, 3].iter().map(|&h| (h, 1)).collect();
        assert_eq!(dup_ngram_chars(&tokens, 3), 3);
        assert_eq!(top_ngram_chars(&tokens, 2), 4);
        assert_eq!(top_ngram_chars(&tokens, 4), 0);
    }
}

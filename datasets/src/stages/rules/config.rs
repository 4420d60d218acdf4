//! The thresholds of the rules stage, one per rule, with their defaults (Gopher, C4 and the
//! InternLM2 report's anomaly rules) and their validation.

use serde::{Deserialize, Serialize};

use super::GOPHER_STOP_WORDS;
use crate::{DataError, Result};

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
                return Err(DataError::config(format!(
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
                    return Err(DataError::config(format!(
                        "rules: {name} entry ({n}, {max}) needs n >= 1 and a fraction in [0, 1]"
                    )));
                }
            }
        }
        if self.separator_min_run == 0 {
            return Err(DataError::config(
                "rules: separator_min_run must be at least 1",
            ));
        }
        for (name, value) in [
            ("min_mean_line_width", self.min_mean_line_width),
            ("min_mean_word_length", self.min_mean_word_length),
            ("max_mean_word_length", self.max_mean_word_length),
            ("max_symbol_word_ratio", self.max_symbol_word_ratio),
        ] {
            if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(DataError::config(format!(
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

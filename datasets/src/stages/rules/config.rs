//! The thresholds of the rules stage, one per rule, with their defaults (Gopher, C4 and the
//! InternLM2 report's anomaly rules) and their validation.

use burn::config::Config;

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
///
/// The builders and the serde form come from burn's `#[derive(Config)]`: a serialised form
/// names every field; [`from_partial_json`](crate::from_partial_json) reads hand-written files
/// that name only what they change.
#[derive(Config, Debug, PartialEq)]
pub struct RulesConfig {
    /// `gopher_word_count`: fewer words than this (default 50).
    #[config(default = "Some(50)")]
    pub min_words: Option<usize>,
    /// `gopher_word_count`: more words than this (default 100,000).
    #[config(default = "Some(100_000)")]
    pub max_words: Option<usize>,

    /// `replacement_chars`: fraction of U+FFFD (decoding errors) above this (default 0.001).
    #[config(default = "Some(0.001)")]
    pub max_replacement_chars: Option<f64>,
    /// `control_chars`: fraction of control characters (other than `\n`, `\r`, `\t`) and
    /// private-use characters above this (default 0.001).
    #[config(default = "Some(0.001)")]
    pub max_control_chars: Option<f64>,
    /// `digit_fraction`: fraction of numeric characters above this (default 0.3).
    #[config(default = "Some(0.3)")]
    pub max_digit_fraction: Option<f64>,
    /// `dominant_char`: fraction of the most frequent character above this (default 0.3).
    #[config(default = "Some(0.3)")]
    pub max_dominant_char: Option<f64>,
    /// `punctuation_high`: fraction of punctuation characters above this (default 0.25).
    #[config(default = "Some(0.25)")]
    pub max_punctuation: Option<f64>,
    /// `punctuation_low`: fraction of punctuation characters below this (default 0.005):
    /// long text without punctuation (keyword lists, broken extraction).
    #[config(default = "Some(0.005)")]
    pub min_punctuation: Option<f64>,
    /// The four character-frequency rules above (`digit_fraction` .. `punctuation_low`) only
    /// look at texts with at least this many non-whitespace characters (default 100): in
    /// shorter texts the fractions are noise.
    #[config(default = 100)]
    pub ratio_min_chars: usize,

    /// `empty_lines`: fraction of lines that are blank above this (default 0.6).
    #[config(default = "Some(0.6)")]
    pub max_empty_lines: Option<f64>,
    /// `short_lines`: mean width of non-empty lines below this (default 10 columns; a
    /// character of an unspaced script counts 2 columns). Only for texts of at least 3
    /// non-empty lines: it detects a line break after every word or two.
    #[config(default = "Some(10.0)")]
    pub min_mean_line_width: Option<f64>,
    /// `long_line`: a line of more characters than this (default 10,000): the text lost its
    /// line breaks.
    #[config(default = "Some(10_000)")]
    pub max_line_chars: Option<usize>,
    /// `separator_anomaly`: fraction of non-empty lines that are separator lines above this
    /// (default 0.2). A separator line is one non-alphanumeric character repeated at least
    /// [`Self::separator_min_run`] times, possibly with spaces (`-----`, `= = = = =`, `*****`).
    #[config(default = "Some(0.2)")]
    pub max_separator_lines: Option<f64>,
    /// Minimum repetitions for a separator line (default 5).
    #[config(default = 5)]
    pub separator_min_run: usize,
    /// `symbol_run`: a run of one repeated non-alphanumeric, non-whitespace character longer
    /// than this anywhere in the text (default 100).
    #[config(default = "Some(100)")]
    pub max_symbol_run: Option<usize>,

    /// `c4_lorem_ipsum`: drop text containing "lorem ipsum", any case (default `true`).
    #[config(default = true)]
    pub drop_lorem_ipsum: bool,
    /// `c4_curly_brace`: drop text containing `{` (default `false`: C4 does this, but it
    /// removes all code and LaTeX).
    #[config(default = false)]
    pub drop_curly_braces: bool,
    /// `c4_javascript`: fraction of non-empty lines mentioning "javascript" above this
    /// (default 0.2). C4 removes such lines; here they count against the document.
    #[config(default = "Some(0.2)")]
    pub max_javascript_lines: Option<f64>,
    /// `c4_policy`: fraction of non-empty lines containing a [`POLICY_PHRASES`] phrase above
    /// this (default 0.2).
    #[config(default = "Some(0.2)")]
    pub max_policy_lines: Option<f64>,
    /// `c4_terminal_punct`: fraction of non-empty lines ending in terminal punctuation
    /// (`. ! ? " ' ” ’ … 。 ！ ？ 」 』`) below this (default 0.12).
    #[config(default = "Some(0.12)")]
    pub min_terminal_punct_lines: Option<f64>,

    /// `gopher_mean_word_length`: mean word length in characters below this (default 3).
    /// Skipped for unspaced documents.
    #[config(default = "Some(3.0)")]
    pub min_mean_word_length: Option<f64>,
    /// `gopher_mean_word_length`: mean word length above this (default 10).
    #[config(default = "Some(10.0)")]
    pub max_mean_word_length: Option<f64>,
    /// `gopher_symbol_ratio`: number of `#` characters, or of ellipses (`...` or `…`), per
    /// word above this (default 0.1).
    #[config(default = "Some(0.1)")]
    pub max_symbol_word_ratio: Option<f64>,
    /// `gopher_bullet_lines`: fraction of non-empty lines starting with a bullet (`•`, `●`,
    /// `▪`, `►`, ..., or `-`, `*`, `+`, `–`, `—` followed by a space) above this (default 0.9).
    #[config(default = "Some(0.9)")]
    pub max_bullet_lines: Option<f64>,
    /// `gopher_ellipsis_lines`: fraction of non-empty lines ending in `...` or `…` above this
    /// (default 0.3).
    #[config(default = "Some(0.3)")]
    pub max_ellipsis_lines: Option<f64>,
    /// `gopher_alpha_words`: fraction of words with an alphabetic character below this
    /// (default 0.8).
    #[config(default = "Some(0.8)")]
    pub min_alpha_words: Option<f64>,
    /// `gopher_stop_words`: fewer occurrences of [`Self::stop_words`] than this (default 2).
    #[config(default = "Some(2)")]
    pub min_stop_words: Option<usize>,
    /// The stop words (default [`GOPHER_STOP_WORDS`]), compared in lower case.
    #[config(default = "GOPHER_STOP_WORDS.iter().map(|w| w.to_string()).collect()")]
    pub stop_words: Vec<String>,
    /// Languages (ISO 639-1, from [`Document::language`]) the stop-word rule applies to
    /// (default `["en"]`). Documents without a language are not checked.
    #[config(default = "vec![\"en\".to_string()]")]
    pub stop_word_languages: Vec<String>,

    /// `gopher_dup_lines`: fraction of non-empty lines that repeat an earlier line above this
    /// (default 0.3).
    #[config(default = "Some(0.3)")]
    pub max_dup_lines: Option<f64>,
    /// `gopher_dup_line_chars`: characters in repeated lines over characters in all non-empty
    /// lines, above this (default 0.2).
    #[config(default = "Some(0.2)")]
    pub max_dup_line_chars: Option<f64>,
    /// `gopher_dup_paragraphs`: fraction of paragraphs (runs of non-empty lines) that repeat an
    /// earlier paragraph above this (default 0.3).
    #[config(default = "Some(0.3)")]
    pub max_dup_paragraphs: Option<f64>,
    /// `gopher_dup_paragraph_chars`: characters in repeated paragraphs over all paragraph
    /// characters, above this (default 0.2).
    #[config(default = "Some(0.2)")]
    pub max_dup_paragraph_chars: Option<f64>,
    /// `gopher_top_ngram`: `(n, max)` pairs: the characters covered by the most frequent word
    /// n-gram (its count times its length; only n-grams occurring at least twice) over the
    /// characters of all words, above `max` (default `[(2, 0.2), (3, 0.18), (4, 0.16)]`).
    #[config(default = "vec![(2, 0.2), (3, 0.18), (4, 0.16)]")]
    pub max_top_ngram_chars: Vec<(usize, f64)>,
    /// `gopher_dup_ngram`: `(n, max)` pairs: the characters of words covered by repeated
    /// occurrences of any word n-gram (the first occurrence not counted) over the characters of
    /// all words, above `max` (default `(5, 0.15)`, `(6, 0.14)`, ... `(10, 0.10)`).
    #[config(default = "vec![(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)]")]
    pub max_dup_ngram_chars: Vec<(usize, f64)>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self::new()
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

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

//!
//! The rules live in [`RulesConfig`] (thresholds, one per rule), [`RulesStage`] (the checks, in
//! order) and the statistics they read (`stats`: words, characters, lines, repetition).

mod config;
mod stage;
mod stats;

pub use super::text::{is_punctuation, words};
pub use config::RulesConfig;
pub use stage::RulesStage;

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

//! The rules stage: every rule of a [`RulesConfig`] checked in the order of
//! [`REASONS`](super::REASONS), statistics computed only for the rules that are on.

use std::collections::HashSet;

use super::stats::{
    CharStats, LineStats, WordStats, dup_ngram_chars, duplicates, hash_lower, paragraphs,
    top_ngram_chars,
};
use super::{POLICY_PHRASES, RulesConfig};
use crate::stages::text::words;
use crate::{Document, Result, Stage, Verdict};

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

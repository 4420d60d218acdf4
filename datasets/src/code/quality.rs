//! Rule- and model-based quality scoring of code files into three tiers.
//!
//! [`CodeSignals::measure`] computes cheap statistics of a file; [`CodeQualityConfig`] turns
//! them into a [`Tier`]: a file is **low** when any "low" rule fires, else **moderate** when
//! any "moderate" rule fires, else **high**. With a [`Classifier`] attached (the "model-based"
//! part; its score is the probability that the file is good code), the model's tier caps the
//! rules' tier: a score below [`CodeQualityConfig::model_low_below`] makes the file low, below
//! [`CodeQualityConfig::model_high_at_least`] at most moderate.
//!
//! Each tier has a sampling weight ([`TierWeights`], default high 2.0 = upsampled, moderate
//! 1.0, low 0.0); [`CodeQualityStage`] writes the tier and weight into the metadata and drops
//! files whose weight is zero.
//!
//! | rule (default) | low when | moderate when |
//! | --- | --- | --- |
//! | empty | no non-whitespace character | |
//! | auto-generated marker in the first 10 lines | present | |
//! | longest line, in characters (code only) | > 1000 | > 300 |
//! | mean line length = characters / lines (code only) | > 100 | > 60 |
//! | alphanumeric characters / all characters | < 0.25 | < 0.35 |
//! | numeric tokens / tokens (files of >= 20 tokens) | > 0.5 | > 0.25 |
//! | non-blank lines (code only) | | < 5 |
//!
//! Documentation files (by [`Language::kind`]) skip the line-length and line-count rules:
//! unwrapped prose paragraphs are normal.

use std::borrow::Cow;
use std::fmt;

use burn::config::Config;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::language::Language;
use crate::{Classifier, DataError, Document, Result, Stage, Verdict};

/// The quality tier of a code file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Dropped by default.
    Low,
    /// Kept as is.
    Moderate,
    /// Upsampled.
    High,
}

impl Tier {
    /// `"low"`, `"moderate"` or `"high"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Low => "low",
            Tier::Moderate => "moderate",
            Tier::High => "high",
        }
    }

    /// The drop reason used when the tier's weight is zero: `"low_quality_code"`, ...
    pub fn drop_reason(self) -> &'static str {
        match self {
            Tier::Low => "low_quality_code",
            Tier::Moderate => "moderate_quality_code",
            Tier::High => "high_quality_code",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sampling weight of each tier: how many times a file of the tier is seen per epoch
/// (0 = dropped). Must be finite and non-negative.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TierWeights {
    /// Weight of [`Tier::High`] (default 2.0).
    pub high: f64,
    /// Weight of [`Tier::Moderate`] (default 1.0).
    pub moderate: f64,
    /// Weight of [`Tier::Low`] (default 0.0: dropped).
    pub low: f64,
}

impl Default for TierWeights {
    fn default() -> Self {
        Self {
            high: 2.0,
            moderate: 1.0,
            low: 0.0,
        }
    }
}

impl TierWeights {
    /// The weight of `tier`.
    pub fn weight(&self, tier: Tier) -> f64 {
        match tier {
            Tier::High => self.high,
            Tier::Moderate => self.moderate,
            Tier::Low => self.low,
        }
    }
}

/// Thresholds of the code quality rules (see the module table) and the tier weights.
///
/// The builders and the serde form come from burn's `#[derive(Config)]`: a serialised form
/// names every field; [`from_partial_json`](crate::from_partial_json) reads hand-written files
/// that name only what they change.
#[derive(Config, Debug)]
pub struct CodeQualityConfig {
    /// Longest line above which a code file is low (characters, default 1000).
    #[config(default = 1000)]
    pub max_line_length_low: usize,
    /// Longest line above which a code file is moderate (default 300).
    #[config(default = 300)]
    pub max_line_length_moderate: usize,
    /// Mean line length above which a code file is low (default 100).
    #[config(default = 100.0)]
    pub mean_line_length_low: f64,
    /// Mean line length above which a code file is moderate (default 60).
    #[config(default = 60.0)]
    pub mean_line_length_moderate: f64,
    /// Alphanumeric fraction below which a file is low (default 0.25).
    #[config(default = 0.25)]
    pub alnum_fraction_low: f64,
    /// Alphanumeric fraction below which a file is moderate (default 0.35).
    #[config(default = 0.35)]
    pub alnum_fraction_moderate: f64,
    /// Numeric-token fraction above which a file is low: data, not code (default 0.5).
    #[config(default = 0.5)]
    pub numeric_fraction_low: f64,
    /// Numeric-token fraction above which a file is moderate (default 0.25).
    #[config(default = 0.25)]
    pub numeric_fraction_moderate: f64,
    /// Files with fewer tokens skip the numeric rules (default 20).
    #[config(default = 20)]
    pub numeric_min_tokens: usize,
    /// Code files with fewer non-blank lines are at most moderate (default 5).
    #[config(default = 5)]
    pub min_lines_high: usize,
    /// How many leading lines are searched for auto-generated markers (default 10; 0 = off).
    #[config(default = 10)]
    pub generated_marker_lines: usize,
    /// A classifier score below this makes the file low (default 0.2).
    #[config(default = 0.2)]
    pub model_low_below: f32,
    /// A classifier score below this makes the file at most moderate (default 0.5).
    #[config(default = 0.5)]
    pub model_high_at_least: f32,
    /// Sampling weight per tier.
    #[config(default = "TierWeights::default()")]
    pub weights: TierWeights,
    /// Metadata field holding the file path, used to tell code from documentation (default
    /// `"path"`; `source` is used when the field is absent; no path = code).
    #[config(default = "String::from(\"path\")")]
    pub path_field: String,
}

impl Default for CodeQualityConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl CodeQualityConfig {
    /// Builder: set both longest-line thresholds.
    pub fn with_max_line_length(mut self, moderate: usize, low: usize) -> Self {
        self.max_line_length_moderate = moderate;
        self.max_line_length_low = low;
        self
    }

    /// Builder: set both mean-line-length thresholds.
    pub fn with_mean_line_length(mut self, moderate: f64, low: f64) -> Self {
        self.mean_line_length_moderate = moderate;
        self.mean_line_length_low = low;
        self
    }

    /// Builder: set both alphanumeric-fraction thresholds.
    pub fn with_alnum_fraction(mut self, moderate: f64, low: f64) -> Self {
        self.alnum_fraction_moderate = moderate;
        self.alnum_fraction_low = low;
        self
    }

    /// Builder: set both numeric-fraction thresholds.
    pub fn with_numeric_fraction(mut self, moderate: f64, low: f64) -> Self {
        self.numeric_fraction_moderate = moderate;
        self.numeric_fraction_low = low;
        self
    }

    /// Builder: set the classifier thresholds.
    pub fn with_model_thresholds(mut self, low_below: f32, high_at_least: f32) -> Self {
        self.model_low_below = low_below;
        self.model_high_at_least = high_at_least;
        self
    }

    /// Check that weights are finite and non-negative, fractions in `[0, 1]`, mean lengths
    /// finite, and every "low" threshold at least as strict as its "moderate" one.
    pub fn validate(&self) -> Result<()> {
        let w = &self.weights;
        for (name, v) in [("high", w.high), ("moderate", w.moderate), ("low", w.low)] {
            if !v.is_finite() || v < 0.0 {
                return Err(DataError::config(format!(
                    "code quality: weight of tier {name} is {v}"
                )));
            }
        }
        let unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(DataError::config(format!(
                    "code quality: {name} = {v} is not in [0, 1]"
                )))
            }
        };
        unit("alnum_fraction_low", self.alnum_fraction_low)?;
        unit("alnum_fraction_moderate", self.alnum_fraction_moderate)?;
        unit("numeric_fraction_low", self.numeric_fraction_low)?;
        unit("numeric_fraction_moderate", self.numeric_fraction_moderate)?;
        unit("model_low_below", self.model_low_below.into())?;
        unit("model_high_at_least", self.model_high_at_least.into())?;
        let ordered = [
            (
                "max_line_length",
                self.max_line_length_moderate <= self.max_line_length_low,
            ),
            (
                "mean_line_length",
                self.mean_line_length_moderate.is_finite()
                    && self.mean_line_length_low.is_finite()
                    && self.mean_line_length_moderate <= self.mean_line_length_low,
            ),
            (
                "alnum_fraction",
                self.alnum_fraction_low <= self.alnum_fraction_moderate,
            ),
            (
                "numeric_fraction",
                self.numeric_fraction_moderate <= self.numeric_fraction_low,
            ),
            (
                "model thresholds",
                self.model_low_below <= self.model_high_at_least,
            ),
        ];
        match ordered.iter().find(|(_, ok)| !ok) {
            Some((name, _)) => Err(DataError::config(format!(
                "code quality: the low threshold of {name} must be at least as strict as the moderate one"
            ))),
            None => Ok(()),
        }
    }
}

/// Statistics of one file that the rules read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeSignals {
    /// Lines (a trailing newline does not open a new line; an empty text has 0).
    pub lines: usize,
    /// Lines with a non-whitespace character.
    pub nonblank_lines: usize,
    /// Longest line in characters.
    pub max_line_length: usize,
    /// Characters (newlines excluded) / lines; 0 for an empty text.
    pub mean_line_length: f64,
    /// Alphanumeric characters / all characters (newlines included); 0 for an empty text.
    pub alnum_fraction: f64,
    /// Tokens: maximal runs of alphanumeric characters, `_` and `.`.
    pub tokens: usize,
    /// Tokens that are numbers (decimal, float, hex `0x..`) / tokens; 0 without tokens.
    pub numeric_fraction: f64,
    /// A marker such as `auto-generated`, `do not edit` or `@generated` occurs in the first
    /// lines (how many is a parameter of [`CodeSignals::measure`]).
    pub generated: bool,
}

/// Case-insensitive markers of generated files.
const GENERATED_MARKERS: &[&str] = &[
    "auto-generated",
    "autogenerated",
    "automatically generated",
    "generated by",
    "@generated",
    "do not edit",
    "code generated",
];

impl CodeSignals {
    /// Measure `text`, searching the first `marker_lines` lines for generated-file markers.
    ///
    /// ```
    /// use internlm2_datasets::code::CodeSignals;
    /// let s = CodeSignals::measure("x = 1\n\ny = 0x1f\n", 10);
    /// assert_eq!((s.lines, s.nonblank_lines, s.max_line_length), (3, 2, 8));
    /// assert_eq!(s.mean_line_length, 13.0 / 3.0);
    /// assert_eq!((s.tokens, s.numeric_fraction), (4, 0.5));
    /// ```
    pub fn measure(text: &str, marker_lines: usize) -> Self {
        let mut lines = 0;
        let mut nonblank = 0;
        let mut max_len = 0;
        let mut line_chars = 0;
        for line in text.lines() {
            let len = line.chars().count();
            lines += 1;
            line_chars += len;
            max_len = max_len.max(len);
            nonblank += usize::from(!line.trim().is_empty());
        }
        let total_chars = text.chars().count();
        let alnum = text.chars().filter(|c| c.is_alphanumeric()).count();
        let mut tokens = 0;
        let mut numeric = 0;
        for token in text
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .map(|t| t.trim_matches('.'))
            .filter(|t| !t.is_empty())
        {
            tokens += 1;
            numeric += usize::from(is_number(token));
        }
        let generated = text.lines().take(marker_lines).any(|line| {
            let lower = line.to_lowercase();
            GENERATED_MARKERS.iter().any(|m| lower.contains(m))
        });
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Self {
            lines,
            nonblank_lines: nonblank,
            max_line_length: max_len,
            mean_line_length: ratio(line_chars, lines),
            alnum_fraction: ratio(alnum, total_chars),
            tokens,
            numeric_fraction: ratio(numeric, tokens),
            generated,
        }
    }
}

/// `12`, `3.5`, `1e-3` (as `1e` `3`: both numeric enough), `0x1F`, `0b1010`.
fn is_number(token: &str) -> bool {
    let lower = token.to_ascii_lowercase();
    if let Some(hex) = lower.strip_prefix("0x") {
        return !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit() || c == '_');
    }
    if let Some(bin) = lower.strip_prefix("0b") {
        return !bin.is_empty() && bin.chars().all(|c| matches!(c, '0' | '1' | '_'));
    }
    lower.starts_with(|c: char| c.is_ascii_digit())
        && lower
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '_' | 'e' | 'f' | 'l' | 'u'))
}

/// The verdict of the quality rules and model on one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    /// The final tier.
    pub tier: Tier,
    /// Its sampling weight.
    pub sample_weight: f64,
    /// Names of the rules that fired (`"max_line_length_low"`, `"model_moderate"`, ...).
    pub flags: Vec<String>,
    /// The classifier score, when a classifier is attached.
    pub model_score: Option<f32>,
    /// The measured statistics.
    pub signals: CodeSignals,
}

/// The code quality stage: scores each file, writes `tier` (`"high"`, `"moderate"`, `"low"`),
/// `sample_weight` and `quality_flags` (and `code_quality_score` with a classifier) into the
/// metadata, and drops files whose tier weight is zero with reason
/// [`Tier::drop_reason`] (`"low_quality_code"` by default).
///
/// ```
/// use internlm2_datasets::code::{CodeQualityConfig, CodeQualityStage};
/// use internlm2_datasets::{Document, Stage, Verdict};
/// let stage = CodeQualityStage::new(CodeQualityConfig::default())?;
/// let minified = format!("var a={};", "b(1),".repeat(400));
/// let verdict = stage.apply(Document::new(minified).with_meta("path", "app.min.js"));
/// assert_eq!(verdict.reason(), Some("low_quality_code"));
/// let code = "def add(a, b):\n    \"\"\"Sum.\"\"\"\n    total = a + b\n    return total\n\n\nprint(add(2, 3))\n";
/// let Verdict::Keep(doc) = stage.apply(Document::new(code).with_meta("path", "add.py")) else { panic!() };
/// assert_eq!(doc.metadata["tier"], "high");
/// assert_eq!(doc.metadata["sample_weight"], 2.0);
/// # Ok::<(), internlm2_datasets::DataError>(())
/// ```
pub struct CodeQualityStage {
    config: CodeQualityConfig,
    classifier: Option<Box<dyn Classifier>>,
}

impl fmt::Debug for CodeQualityStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeQualityStage")
            .field("config", &self.config)
            .field("classifier", &self.classifier.as_ref().map(|c| c.name()))
            .finish()
    }
}

impl CodeQualityStage {
    /// A rule-only stage; errors when the configuration is invalid.
    pub fn new(config: CodeQualityConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            classifier: None,
        })
    }

    /// Builder: combine the rules with a classifier scoring the probability of good code.
    pub fn with_classifier(mut self, classifier: impl Classifier + 'static) -> Self {
        self.classifier = Some(Box::new(classifier));
        self
    }

    /// The configuration.
    pub fn config(&self) -> &CodeQualityConfig {
        &self.config
    }

    /// Score one document (its path read from the configured metadata field, else `source`).
    pub fn assess(&self, doc: &Document) -> Assessment {
        let path = doc
            .metadata
            .get(&self.config.path_field)
            .and_then(Value::as_str)
            .or(doc.source.as_deref());
        let is_doc = path.is_some_and(|p| Language::from_path(p).is_doc());
        let c = &self.config;
        let s = CodeSignals::measure(&doc.text, c.generated_marker_lines);
        let mut low: Vec<&str> = Vec::new();
        let mut moderate: Vec<&str> = Vec::new();
        if s.nonblank_lines == 0 {
            low.push("empty");
        }
        if s.generated {
            low.push("generated");
        }
        if !is_doc {
            if s.max_line_length > c.max_line_length_low {
                low.push("max_line_length_low");
            } else if s.max_line_length > c.max_line_length_moderate {
                moderate.push("max_line_length_moderate");
            }
            if s.mean_line_length > c.mean_line_length_low {
                low.push("mean_line_length_low");
            } else if s.mean_line_length > c.mean_line_length_moderate {
                moderate.push("mean_line_length_moderate");
            }
            if s.nonblank_lines > 0 && s.nonblank_lines < c.min_lines_high {
                moderate.push("few_lines");
            }
        }
        if s.nonblank_lines > 0 {
            if s.alnum_fraction < c.alnum_fraction_low {
                low.push("alnum_fraction_low");
            } else if s.alnum_fraction < c.alnum_fraction_moderate {
                moderate.push("alnum_fraction_moderate");
            }
        }
        if s.tokens >= c.numeric_min_tokens {
            if s.numeric_fraction > c.numeric_fraction_low {
                low.push("numeric_fraction_low");
            } else if s.numeric_fraction > c.numeric_fraction_moderate {
                moderate.push("numeric_fraction_moderate");
            }
        }
        let mut tier = if !low.is_empty() {
            Tier::Low
        } else if !moderate.is_empty() {
            Tier::Moderate
        } else {
            Tier::High
        };
        let mut flags: Vec<String> = low.iter().chain(&moderate).map(|f| f.to_string()).collect();
        let model_score = self.classifier.as_ref().map(|m| m.score(doc));
        if let Some(score) = model_score {
            let model_tier = if score.is_nan() || score < c.model_low_below {
                flags.push("model_low".into());
                Tier::Low
            } else if score < c.model_high_at_least {
                flags.push("model_moderate".into());
                Tier::Moderate
            } else {
                Tier::High
            };
            tier = tier.min(model_tier);
        }
        Assessment {
            tier,
            sample_weight: c.weights.weight(tier),
            flags,
            model_score,
            signals: s,
        }
    }
}

impl Stage for CodeQualityStage {
    fn name(&self) -> &str {
        "code_quality"
    }

    fn apply(&self, mut doc: Document) -> Verdict {
        let a = self.assess(&doc);
        doc.metadata.insert("tier".into(), a.tier.as_str().into());
        doc.metadata
            .insert("sample_weight".into(), a.sample_weight.into());
        doc.metadata.insert("quality_flags".into(), a.flags.into());
        if let Some(score) = a.model_score {
            doc.metadata
                .insert("code_quality_score".into(), f64::from(score).into());
        }
        if a.sample_weight > 0.0 {
            Verdict::Keep(doc)
        } else {
            Verdict::drop(doc, Cow::Borrowed(a.tier.drop_reason()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        for t in ["12", "3.5", "0x1F", "0b101", "10u", "1_000"] {
            assert!(is_number(t), "{t}");
        }
        for t in ["x1", "0x", "abc", "1a"] {
            assert!(!is_number(t), "{t}");
        }
    }

    #[test]
    fn config_validation() {
        assert!(CodeQualityConfig::default().validate().is_ok());
        let bad = CodeQualityConfig::default().with_weights(TierWeights {
            high: f64::NAN,
            ..TierWeights::default()
        });
        assert!(bad.validate().is_err());
        assert!(
            CodeQualityConfig::default()
                .with_max_line_length(500, 100)
                .validate()
                .is_err()
        );
        assert!(
            CodeQualityConfig::default()
                .with_alnum_fraction(0.2, 0.3)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn generated_marker_only_near_the_top() {
        let mut text = "// Code generated by protoc. DO NOT EDIT.\n".to_string();
        assert!(CodeSignals::measure(&text, 10).generated);
        text = format!("{}// generated by hand\n", "x\n".repeat(10));
        assert!(!CodeSignals::measure(&text, 10).generated);
        assert!(!CodeSignals::measure("// @generated\n", 0).generated);
    }
}

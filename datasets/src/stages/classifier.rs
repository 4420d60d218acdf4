//! Classifiers with thresholds, the machinery the safety (toxicity, pornography) and quality
//! (advertisement, fluency) stages share: the [`Classifier`] trait (a model that scores a
//! document), [`Threshold`] (which side of a score a kept document must be on), and
//! [`ScoredChecks`] (classifiers run in order, each score written to metadata, the first
//! failing threshold dropping the document).

use serde::{Deserialize, Serialize};

use crate::{Document, Verdict};

/// Scores a document for one property.
///
/// The score is a probability-like number in `[0, 1]` that the document *has* the property the
/// classifier is named after (`"toxic"`, `"ad"`, `"fluent"`, ...). Stages compare it with a
/// threshold; which side is dropped is part of the stage's configuration, not the classifier's.
pub trait Classifier: Send + Sync {
    /// Name of the property, used in drop reasons (`"toxic"` -> reason `"toxic_score"`).
    fn name(&self) -> &str;
    /// Score one document.
    fn score(&self, doc: &Document) -> f32;
}

impl<C: Classifier + ?Sized> Classifier for Box<C> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn score(&self, doc: &Document) -> f32 {
        (**self).score(doc)
    }
}

impl<C: Classifier + ?Sized> Classifier for std::sync::Arc<C> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn score(&self, doc: &Document) -> f32 {
        (**self).score(doc)
    }
}

/// Which side of a threshold a kept document must be on.
///
/// Serialised as `{"min": 0.5}` or `{"max": 0.9}`. A score that is not a number fails both.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    /// Keep documents scoring at least this (for properties to keep, like fluency).
    Min(f32),
    /// Keep documents scoring at most this (for properties to remove, like advertising).
    Max(f32),
}

impl Threshold {
    /// Whether `score` passes.
    ///
    /// ```
    /// use internlm2_datasets::stages::quality::Threshold;
    /// assert!(Threshold::Min(0.5).passes(0.5) && !Threshold::Min(0.5).passes(0.4));
    /// assert!(Threshold::Max(0.5).passes(0.5) && !Threshold::Max(0.5).passes(0.6));
    /// assert!(!Threshold::Max(0.5).passes(f32::NAN));
    /// ```
    pub fn passes(self, score: f32) -> bool {
        match self {
            Threshold::Min(min) => score >= min,
            Threshold::Max(max) => score <= max,
        }
    }
}

/// A classifier with its threshold.
struct Check {
    classifier: Box<dyn Classifier>,
    threshold: Threshold,
    reason: String,
    field: String,
}

/// Classifiers with thresholds, run in the order they were added: each score is written to
/// metadata field `<score_prefix><name>` (when scores are written), and the first classifier
/// whose threshold fails drops the document with reason `<name>_score`; later classifiers are
/// not run.
///
/// ```
/// use internlm2_datasets::stages::classifier::{Classifier, ScoredChecks, Threshold};
/// use internlm2_datasets::Document;
/// struct Length;
/// impl Classifier for Length {
///     fn name(&self) -> &str { "long" }
///     fn score(&self, doc: &Document) -> f32 { (doc.text.len() as f32 / 10.0).min(1.0) }
/// }
/// let mut checks = ScoredChecks::new("quality_", true);
/// checks.push(Box::new(Length), Threshold::Max(0.5));
/// assert_eq!(checks.apply(Document::new("far too long a text")).reason(), Some("long_score"));
/// let internlm2_datasets::Verdict::Keep(kept) = checks.apply(Document::new("short")) else {
///     panic!("dropped")
/// };
/// assert_eq!(kept.metadata["quality_long"], 0.5);
/// ```
pub struct ScoredChecks {
    checks: Vec<Check>,
    write_scores: bool,
    score_prefix: String,
}

impl std::fmt::Debug for ScoredChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.checks
                    .iter()
                    .map(|c| (c.classifier.name(), c.threshold)),
            )
            .finish()
    }
}

impl ScoredChecks {
    /// No checks yet; scores go to fields `<score_prefix><name>` when `write_scores`.
    pub fn new(score_prefix: impl Into<String>, write_scores: bool) -> Self {
        Self {
            checks: Vec::new(),
            write_scores,
            score_prefix: score_prefix.into(),
        }
    }

    /// Adds a classifier with its threshold.
    pub fn push(&mut self, classifier: Box<dyn Classifier>, threshold: Threshold) {
        let name = classifier.name().to_string();
        self.checks.push(Check {
            reason: format!("{name}_score"),
            field: format!("{}{name}", self.score_prefix),
            classifier,
            threshold,
        });
    }

    /// Number of classifiers.
    pub fn len(&self) -> usize {
        self.checks.len()
    }

    /// Whether there is no classifier.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Whether scores are written to metadata.
    pub fn write_scores(&self) -> bool {
        self.write_scores
    }

    /// Scores `doc` with every classifier in order; drops it at the first failing threshold.
    pub fn apply(&self, mut doc: Document) -> Verdict {
        for check in &self.checks {
            let score = check.classifier.score(&doc);
            if self.write_scores {
                doc.metadata.insert(check.field.clone(), score_value(score));
            }
            if !check.threshold.passes(score) {
                return Verdict::drop(doc, check.reason.clone());
            }
        }
        Verdict::Keep(doc)
    }
}

/// A score rounded to 6 decimals for metadata (f32 -> f64 without spurious digits).
pub(crate) fn score_value(score: f32) -> serde_json::Value {
    ((f64::from(score) * 1e6).round() / 1e6).into()
}

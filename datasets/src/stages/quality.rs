//! The `quality` stage (SPEC 5, last step of the text pipeline): advertisement and fluency
//! classifiers with thresholds, with a built-in classifier that needs no download
//! ([`NgramClassifier`], in [`super::ngram`]).
//!
//! [`QualityStage`]: any number of classifiers, each with a [`Threshold`] (a minimum for
//! properties to keep, like fluency; a maximum for properties to remove, like advertising).
//! Every score is written to metadata field `quality_<name>`; the drop reason is
//! `<name>_score` (the [`ScoredChecks`] the safety stage uses too).

use std::path::PathBuf;

use burn::config::Config;
use serde::{Deserialize, Serialize};

use super::classifier::ScoredChecks;
pub use super::classifier::Threshold;
pub use super::ngram::{NgramClassifier, NgramConfig};
use crate::{Classifier, Document, Result, Stage, Verdict};

/// A quality model loaded from a file: an [`NgramClassifier`] saved with
/// [`NgramClassifier::save_json`], with its threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityModel {
    /// The model file.
    pub path: PathBuf,
    /// Which scores are kept.
    pub threshold: Threshold,
}

/// Configuration of [`QualityStage`] (built with [`QualityStage::from_config`]).
///
/// ```
/// use internlm2_datasets::stages::quality::{QualityConfig, Threshold};
/// let config: QualityConfig = internlm2_datasets::from_partial_json(
///     r#"{"models": [{"path": "ad.json", "threshold": {"max": 0.5}}]}"#,
/// ).unwrap();
/// assert_eq!(config.models[0].threshold, Threshold::Max(0.5));
/// assert_eq!(config.score_prefix, "quality_");
/// ```
///
/// The builders and the serde form come from burn's `#[derive(Config)]`: a serialised form
/// names every field; [`from_partial_json`](crate::from_partial_json) reads hand-written files
/// that name only what they change.
#[derive(Config, Debug, PartialEq)]
pub struct QualityConfig {
    /// Classifier models to load, each with its threshold.
    #[config(default = "Vec::new()")]
    pub models: Vec<QualityModel>,
    /// Write every score to metadata field `<score_prefix><name>` (default `true`).
    #[config(default = true)]
    pub write_scores: bool,
    /// Prefix of the score fields (default `"quality_"`).
    #[config(default = "String::from(\"quality_\")")]
    pub score_prefix: String,
}

impl Default for QualityConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl QualityConfig {
    /// Builder: add a model file with its threshold.
    pub fn with_model(mut self, path: impl Into<PathBuf>, threshold: Threshold) -> Self {
        self.models.push(QualityModel {
            path: path.into(),
            threshold,
        });
        self
    }
}

/// The quality stage: classifiers with thresholds, run in the order they were added.
///
/// Each score is written to metadata field `quality_<name>` (see [`QualityConfig`]); the
/// first classifier whose threshold fails drops the document with reason `<name>_score`, and
/// later classifiers are not run.
///
/// ```
/// use internlm2_datasets::stages::quality::{QualityStage, Threshold};
/// use internlm2_datasets::{Classifier, Document, Stage};
///
/// struct Exclamations;
/// impl Classifier for Exclamations {
///     fn name(&self) -> &str { "ad" }
///     fn score(&self, doc: &Document) -> f32 {
///         (doc.text.matches('!').count() as f32 / 3.0).min(1.0)
///     }
/// }
///
/// let stage = QualityStage::new().with_classifier(Exclamations, Threshold::Max(0.5));
/// let verdict = stage.apply(Document::new("Buy! Now! Cheap!"));
/// assert_eq!(verdict.reason(), Some("ad_score"));
/// let internlm2_datasets::Verdict::Keep(doc) = stage.apply(Document::new("A plain sentence."))
/// else { panic!("dropped") };
/// assert_eq!(doc.metadata["quality_ad"], 0.0);
/// ```
pub struct QualityStage {
    checks: ScoredChecks,
}

impl std::fmt::Debug for QualityStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QualityStage")
            .field("classifiers", &self.checks)
            .field("write_scores", &self.checks.write_scores())
            .finish()
    }
}

impl Default for QualityStage {
    fn default() -> Self {
        Self::new()
    }
}

impl QualityStage {
    /// A stage without classifiers (keeps everything) and the default score fields.
    pub fn new() -> Self {
        let config = QualityConfig::default();
        Self {
            checks: ScoredChecks::new(config.score_prefix, config.write_scores),
        }
    }

    /// A stage from a configuration: loads every model file.
    pub fn from_config(config: &QualityConfig) -> Result<Self> {
        let mut stage = Self {
            checks: ScoredChecks::new(config.score_prefix.clone(), config.write_scores),
        };
        for model in &config.models {
            let classifier = NgramClassifier::load_json(&model.path)?;
            stage.push_classifier(Box::new(classifier), model.threshold);
        }
        Ok(stage)
    }

    /// Builder: add a classifier with its threshold.
    pub fn with_classifier(
        mut self,
        classifier: impl Classifier + 'static,
        threshold: Threshold,
    ) -> Self {
        self.push_classifier(Box::new(classifier), threshold);
        self
    }

    /// Add a boxed classifier with its threshold.
    pub fn push_classifier(&mut self, classifier: Box<dyn Classifier>, threshold: Threshold) {
        self.checks.push(classifier, threshold);
    }

    /// Number of classifiers.
    pub fn len(&self) -> usize {
        self.checks.len()
    }

    /// Whether the stage has no classifier.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }
}

impl Stage for QualityStage {
    fn name(&self) -> &str {
        "quality"
    }

    fn apply(&self, doc: Document) -> Verdict {
        self.checks.apply(doc)
    }
}

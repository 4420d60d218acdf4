//! The `Classifier` trait: a model that scores a document, used by the safety (toxicity,
//! pornography) and quality (advertisement, fluency) stages with thresholds.

use crate::Document;

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

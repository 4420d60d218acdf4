//! Per-document filter and transform stages of the text pipeline (SPEC 5): format, rules,
//! safety, quality and long context.

pub mod classifier;
pub mod format;
pub mod long_context;
pub mod ngram;
pub mod quality;
pub mod rules;
pub mod safety;
pub mod text;

pub use classifier::{Classifier, ScoredChecks, Threshold};

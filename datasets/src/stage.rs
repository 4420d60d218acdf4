//! The per-document stage abstraction and its statistics.
//!
//! A [`Stage`] looks at one [`Document`] and either keeps it (possibly changed) or drops it
//! with a reason. [`StageStats`] counts what every stage read, kept and dropped by reason; the
//! counts always add up (`read == kept + dropped`), which [`StageStats::check`] verifies.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Document;

/// What a stage decided about a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Keep the document (the stage may have changed it).
    Keep(Document),
    /// Drop the document; `reason` is a short snake_case label used in statistics and reject files.
    Drop {
        /// The document as the stage saw it.
        doc: Document,
        /// Why it was dropped.
        reason: Cow<'static, str>,
    },
}

impl Verdict {
    /// Drop `doc` for `reason`.
    pub fn drop(doc: Document, reason: impl Into<Cow<'static, str>>) -> Self {
        Verdict::Drop {
            doc,
            reason: reason.into(),
        }
    }

    /// Whether the document was kept.
    pub fn is_keep(&self) -> bool {
        matches!(self, Verdict::Keep(_))
    }

    /// The drop reason, if dropped.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Keep(_) => None,
            Verdict::Drop { reason, .. } => Some(reason),
        }
    }
}

/// A per-document step of the pipeline.
///
/// Stages are `Send + Sync`: the executor calls one stage object from many rayon threads.
///
/// ```
/// use internlm2_datasets::{Document, Stage, Verdict};
/// struct NonEmpty;
/// impl Stage for NonEmpty {
///     fn name(&self) -> &str { "non_empty" }
///     fn apply(&self, doc: Document) -> Verdict {
///         if doc.text.trim().is_empty() { Verdict::drop(doc, "empty") } else { Verdict::Keep(doc) }
///     }
/// }
/// assert!(!NonEmpty.apply(Document::new("  ")).is_keep());
/// ```
pub trait Stage: Send + Sync {
    /// Name used in statistics and reports.
    fn name(&self) -> &str;
    /// Decide about one document.
    fn apply(&self, doc: Document) -> Verdict;
}

impl<S: Stage + ?Sized> Stage for Box<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn apply(&self, doc: Document) -> Verdict {
        (**self).apply(doc)
    }
}

/// Counts of one stage: documents and bytes read, kept, and dropped by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageStats {
    /// Documents the stage saw.
    pub read: u64,
    /// Documents it kept.
    pub kept: u64,
    /// Documents it dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// UTF-8 bytes of text it saw.
    pub bytes_read: u64,
    /// UTF-8 bytes of text it kept (after any change it made).
    pub bytes_kept: u64,
}

impl StageStats {
    /// Count one verdict on a document of `bytes_in` bytes.
    pub fn record(&mut self, bytes_in: usize, verdict: &Verdict) {
        self.read += 1;
        self.bytes_read += bytes_in as u64;
        match verdict {
            Verdict::Keep(doc) => {
                self.kept += 1;
                self.bytes_kept += doc.text.len() as u64;
            }
            Verdict::Drop { reason, .. } => {
                *self.dropped.entry(reason.to_string()).or_default() += 1
            }
        }
    }

    /// Count documents read and kept in bulk (stages that pass everything through).
    pub fn record_kept(&mut self, docs: u64, bytes: u64) {
        self.read += docs;
        self.kept += docs;
        self.bytes_read += bytes;
        self.bytes_kept += bytes;
    }

    /// Count a drop that happened outside [`Stage::apply`].
    pub fn record_drop(&mut self, bytes: u64, reason: &str) {
        self.read += 1;
        self.bytes_read += bytes;
        *self.dropped.entry(reason.to_string()).or_default() += 1;
    }

    /// All drops together.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// Add another shard's counts.
    pub fn merge(&mut self, other: &StageStats) {
        self.read += other.read;
        self.kept += other.kept;
        self.bytes_read += other.bytes_read;
        self.bytes_kept += other.bytes_kept;
        for (reason, n) in &other.dropped {
            *self.dropped.entry(reason.clone()).or_default() += n;
        }
    }

    /// Whether `read == kept + dropped`.
    pub fn check(&self) -> bool {
        self.read == self.kept + self.dropped_total()
    }
}

/// Stages applied one after another; a dropped document goes no further.
#[derive(Default)]
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
}

impl Chain {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder: append a stage.
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, stage: impl Stage + 'static) -> Self {
        self.stages.push(Box::new(stage));
        self
    }

    /// Append a boxed stage.
    pub fn push(&mut self, stage: Box<dyn Stage>) {
        self.stages.push(stage);
    }

    /// Stage names in order.
    pub fn names(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.name().to_string()).collect()
    }

    /// Number of stages.
    pub fn len(&self) -> usize {
        self.stages.len()
    }

    /// Whether the chain has no stage.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Run `doc` through the chain, counting into `stats` (one entry per stage, same order).
    /// Returns the kept document, or the dropped one with the stage name and reason.
    pub fn run(
        &self,
        mut doc: Document,
        stats: &mut [StageStats],
    ) -> Result<Document, (Document, String, String)> {
        assert_eq!(stats.len(), self.stages.len(), "one StageStats per stage");
        for (stage, stat) in self.stages.iter().zip(stats.iter_mut()) {
            let bytes = doc.text.len();
            let verdict = stage.apply(doc);
            stat.record(bytes, &verdict);
            match verdict {
                Verdict::Keep(d) => doc = d,
                Verdict::Drop { doc, reason } => {
                    return Err((doc, stage.name().to_string(), reason.into_owned()));
                }
            }
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct DropShort(usize);
    impl Stage for DropShort {
        fn name(&self) -> &str {
            "short"
        }
        fn apply(&self, doc: Document) -> Verdict {
            if doc.text.len() < self.0 {
                Verdict::drop(doc, "too_short")
            } else {
                Verdict::Keep(doc)
            }
        }
    }

    #[test]
    fn chain_counts_add_up() {
        let chain = Chain::new().add(DropShort(2)).add(DropShort(4));
        let mut stats = vec![StageStats::default(); 2];
        let out: Vec<_> = ["a", "abc", "abcde", ""]
            .into_iter()
            .filter_map(|t| chain.run(Document::new(t), &mut stats).ok())
            .collect();
        assert_eq!(out.len(), 1);
        assert_eq!(
            (stats[0].read, stats[0].kept, stats[0].dropped["too_short"]),
            (4, 2, 2)
        );
        assert_eq!(
            (stats[1].read, stats[1].kept, stats[1].dropped["too_short"]),
            (2, 1, 1)
        );
        assert!(stats.iter().all(StageStats::check));
    }
}

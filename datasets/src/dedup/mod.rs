//! Exact and MinHash-LSH fuzzy deduplication (SPEC 5), expressed as per-shard signature files
//! plus one merge step, so that a cluster scheduler can run the shards on many machines:
//!
//! 1. **signatures** — one job per shard: [`write_signatures`] reads the shard's documents and
//!    writes a signature file (per document: id, priority, exact hash, MinHash signature);
//! 2. **merge** — one job: [`merge_signatures`] reads every signature file, groups exact
//!    duplicates, finds near-duplicate candidates by LSH banding, verifies them, clusters with
//!    union-find and keeps one document per cluster (the newest by default) -> a [`DedupPlan`],
//!    saved with [`DedupPlan::save`] (or per shard with [`DedupPlan::for_shard`]);
//! 3. **filter** — one job per shard: [`DedupFilter`], a [`Stage`](crate::Stage), drops the
//!    documents the plan removes, with the reason `exact_duplicate` or `near_duplicate`.
//!
//! Defaults follow the InternLM2 report: 128 hash functions over word 5-gram shingles, Jaccard
//! threshold 0.7, 32 bands of 4 rows (see [`lsh`] for the S-curve), keep the newest record.
//! [`DedupConfig::code`] switches to the code-aware tokenisation, in which indentation by
//! 2 spaces, 4 spaces or a tab (indeed any whitespace layout) does not make files differ.
//!
//! ```
//! use std::sync::Arc;
//! use internlm2_datasets::{Document, Stage};
//! use internlm2_datasets::dedup::{merge_signatures, write_signatures, DedupConfig, DedupFilter};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let text = "the quick brown fox jumps over the lazy dog near the river bank";
//! let docs = vec![
//!     Document::new(text).with_id("old").with_timestamp(1),
//!     Document::new(text).with_id("new").with_timestamp(2),
//!     Document::new("something else entirely, with enough words to shingle").with_id("other"),
//! ];
//! let cfg = DedupConfig::default();
//! let path = dir.path().join("shard-0.minhash");
//! write_signatures(&cfg, &docs, &path).unwrap();
//! let plan = Arc::new(merge_signatures(&cfg, &[path]).unwrap());
//! assert_eq!(plan.stats().exact_removed, 1);
//! let filter = DedupFilter::new(plan);
//! let kept: Vec<_> = docs.into_iter().filter(|d| filter.apply(d.clone()).is_keep()).collect();
//! assert_eq!(kept.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["new", "other"]);
//! ```

pub mod lsh;
pub mod minhash;
pub mod plan;
pub mod shingle;
pub mod signatures;
mod union_find;

use burn::config::Config;

use crate::{DataError, Result};

pub use lsh::candidate_probability;
pub use minhash::{MinHasher, Signature};
pub use plan::{DedupFilter, DedupPlan, DedupStats, DupKind, merge_signatures};
pub use shingle::{exact_hash, shingles};
pub use signatures::{SignatureFile, SignatureRecord, SignatureWriter, write_signatures};

/// Configuration of deduplication.
///
/// The fields that change what a signature file contains (`num_perm`, `ngram`, `seed`,
/// `code_aware`, `priority_field`) are fingerprinted into every signature file; the merge
/// refuses files written with another value ([`DataError::Corrupt`]). `bands`, `rows`,
/// `threshold`, `exact` and `fuzzy` only matter to the merge and may change between merges of
/// the same signature files.
///
/// ```
/// use internlm2_datasets::dedup::DedupConfig;
/// let cfg = DedupConfig::default().with_threshold(0.8).with_priority_field("dump".into());
/// assert_eq!((cfg.num_perm, cfg.bands, cfg.rows, cfg.ngram), (128, 32, 4, 5));
/// assert!(DedupConfig::code().code_aware);
/// cfg.validate().unwrap();
/// ```
///
/// The builders and the serde form come from burn's `#[derive(Config)]`: a serialised form
/// names every field; [`from_partial_json`](crate::from_partial_json) reads hand-written files
/// that name only what they change.
/// The generated `with_num_perm` sets `num_perm` only; [`DedupConfig::with_permutations`] also
/// adjusts `bands`.
#[derive(Config, Debug, PartialEq)]
pub struct DedupConfig {
    /// Number of MinHash permutations (signature length). Default 128.
    #[config(default = 128)]
    pub num_perm: usize,
    /// Shingle length in words (code tokens in code-aware mode). Default 5. A document with
    /// fewer words has one shingle made of all its words; one with none has no signature and
    /// is only deduplicated exactly.
    #[config(default = 5)]
    pub ngram: usize,
    /// LSH bands; `bands * rows` must equal `num_perm`. Default 32.
    #[config(default = 32)]
    pub bands: usize,
    /// Rows (signature values) per band. Default 4.
    #[config(default = 4)]
    pub rows: usize,
    /// Jaccard threshold: a candidate pair is a near-duplicate when the fraction of equal
    /// signature values (the MinHash estimate of the Jaccard similarity of the shingle sets) is
    /// at least this. Default 0.7.
    #[config(default = 0.7)]
    pub threshold: f64,
    /// Seed of the permutations. Every shard of one corpus must use the same seed. Default 42.
    #[config(default = 42)]
    pub seed: u64,
    /// The field that ranks copies: the copy with the highest value survives
    /// (see [`Document::priority`](crate::Document::priority); a missing value ranks lowest).
    /// Default `"timestamp"`, i.e. keep the newest record.
    #[config(default = "String::from(\"timestamp\")")]
    pub priority_field: String,
    /// Code-aware tokenisation: tokens are identifiers/numbers and single punctuation
    /// characters, case is kept and all whitespace (indentation, line breaks) is ignored, also
    /// by the exact hash. Default false.
    #[config(default = false)]
    pub code_aware: bool,
    /// Group documents with the same exact hash (text, or the code token stream in code-aware
    /// mode). Default true.
    #[config(default = true)]
    pub exact: bool,
    /// MinHash-LSH near-duplicate detection. Default true.
    #[config(default = true)]
    pub fuzzy: bool,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl DedupConfig {
    /// The defaults with the code-aware tokenisation (file-level code dedup of SPEC 5).
    pub fn code() -> Self {
        Self {
            code_aware: true,
            ..Self::default()
        }
    }

    /// Builder: number of permutations; also sets `bands = num_perm / rows` when that divides
    /// (the derived `with_num_perm` sets `num_perm` only).
    pub fn with_permutations(mut self, num_perm: usize) -> Self {
        self.num_perm = num_perm;
        if self.rows > 0 && num_perm.is_multiple_of(self.rows) {
            self.bands = num_perm / self.rows;
        }
        self
    }

    /// Builder: LSH banding (`bands * rows` must equal `num_perm`).
    pub fn with_banding(mut self, bands: usize, rows: usize) -> Self {
        self.bands = bands;
        self.rows = rows;
        self
    }

    /// Check the values: `1 <= num_perm <= 4096`, `ngram >= 1`, `bands * rows == num_perm`,
    /// `0 < threshold <= 1`, non-empty priority field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DataError::config(format!("dedup: {m}")));
        if self.num_perm == 0 || self.num_perm > 4096 {
            return bad(format!("num_perm = {} must be in 1..=4096", self.num_perm));
        }
        if self.ngram == 0 {
            return bad("ngram must be at least 1".into());
        }
        if self.bands.checked_mul(self.rows) != Some(self.num_perm) {
            return bad(format!(
                "bands ({}) x rows ({}) must equal num_perm ({})",
                self.bands, self.rows, self.num_perm
            ));
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return bad(format!("threshold = {} must be in (0, 1]", self.threshold));
        }
        if self.priority_field.is_empty() {
            return bad("priority_field is empty".into());
        }
        Ok(())
    }

    /// Fingerprint of the fields that determine a signature file's content.
    pub fn fingerprint(&self) -> u64 {
        let key = format!(
            "internlm2-minhash|v{}|perm={}|ngram={}|seed={}|code={}|priority={}",
            shingle::NORMALISATION_VERSION,
            self.num_perm,
            self.ngram,
            self.seed,
            self.code_aware,
            self.priority_field
        );
        xxhash_rust::xxh3::xxh3_64(key.as_bytes())
    }
}

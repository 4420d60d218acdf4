//! # internlm2-datasets
//!
//! The InternLM2 pre-training data pipeline (SPEC 5) as a library: document records read and
//! written as JSONL (plain, gzip, zstd) and Parquet; per-document stages (format, rules, safety,
//! quality, long context) with statistics that always add up; exact and MinHash-LSH fuzzy
//! deduplication as per-shard signature files plus a merge step; the code pipeline (markdown
//! conversion, quality tiers, repository dependency sorting); tokenisation and packing into
//! memory-mapped token shards with a burn `Dataset` over them; and a shard-parallel, restartable
//! executor.
#![deny(missing_docs)]

pub mod code;
pub mod dedup;
pub mod error;
pub mod io;
pub mod partial_json;
pub mod pipeline;
pub mod record;
pub mod stage;
pub mod stages;
pub mod synthetic;
pub mod tokenize;

pub use code::{CodeQualityStage, Repository, group_repositories, repository_document};
pub use dedup::{DedupConfig, DedupFilter, DedupPlan, merge_signatures, write_signatures};
pub use error::{DataError, Result};
pub use io::{DocumentReader, DocumentWriter, list_shards, read_documents};
pub use partial_json::from_partial_json;
pub use pipeline::text::TextPipelineConfig;
pub use pipeline::{PipelineReport, ShardSelection, StepOptions, run_step};
pub use record::Document;
pub use stage::{Chain, Stage, StageStats, Verdict};
pub use stages::Classifier;
pub use stages::format::{FormatConfig, FormatStage};
pub use stages::long_context::{LongContextConfig, LongContextStage};
pub use stages::quality::{NgramClassifier, QualityConfig, QualityStage, Threshold};
pub use stages::rules::{RulesConfig, RulesStage};
pub use stages::safety::{DomainBlocklist, SafetyConfig, SafetyStage, WordBlocklist};
pub use tokenize::{PackConfig, PackedRow, TokenShards, pack_documents};

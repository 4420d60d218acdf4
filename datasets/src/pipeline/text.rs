//! The text pipeline of SPEC 5 as one serde-configurable recipe: format -> rules -> dedup ->
//! safety -> quality, run by the shard executor as three steps (`filter`, `dedup`, `safety`).
//!
//! A recipe is plain data, so it can live in a JSON file next to the job that runs it:
//!
//! ```
//! use internlm2_datasets::pipeline::text::TextPipelineConfig;
//! let cfg = TextPipelineConfig::default();
//! let json = serde_json::to_string_pretty(&cfg).unwrap();
//! let back: TextPipelineConfig = serde_json::from_str(&json).unwrap();
//! assert_eq!(back, cfg);
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::dedup::run_dedup;
use super::{PipelineReport, StepOptions, run_step, step_outputs};
use crate::dedup::DedupConfig;
use crate::stages::format::{FormatConfig, FormatStage};
use crate::stages::quality::{QualityConfig, QualityStage};
use crate::stages::rules::{RulesConfig, RulesStage};
use crate::stages::safety::{SafetyConfig, SafetyStage};
use crate::{Chain, Result};

/// Which stages run, with their configurations (`None` skips a stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextPipelineConfig {
    /// Unicode and whitespace cleanup, language id, ids (always runs: dedup needs ids).
    pub format: FormatConfig,
    /// Heuristic rules.
    pub rules: Option<RulesConfig>,
    /// Exact and MinHash-LSH dedup.
    pub dedup: Option<DedupConfig>,
    /// Domain and word blocklists, safety classifiers.
    pub safety: Option<SafetyConfig>,
    /// Quality classifiers.
    pub quality: Option<QualityConfig>,
}

impl Default for TextPipelineConfig {
    fn default() -> Self {
        Self {
            format: FormatConfig::default(),
            rules: Some(RulesConfig::default()),
            dedup: Some(DedupConfig::default()),
            safety: None,
            quality: None,
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct TextPipelineOutput {
    /// Per step and stage counts.
    pub report: PipelineReport,
    /// The final shards (of every input shard, also those another task runs).
    pub outputs: Vec<PathBuf>,
}

impl TextPipelineConfig {
    /// Builder: rules.
    pub fn with_rules(mut self, rules: Option<RulesConfig>) -> Self {
        self.rules = rules;
        self
    }
    /// Builder: dedup.
    pub fn with_dedup(mut self, dedup: Option<DedupConfig>) -> Self {
        self.dedup = dedup;
        self
    }
    /// Builder: safety.
    pub fn with_safety(mut self, safety: Option<SafetyConfig>) -> Self {
        self.safety = safety;
        self
    }
    /// Builder: quality.
    pub fn with_quality(mut self, quality: Option<QualityConfig>) -> Self {
        self.quality = quality;
        self
    }

    /// Run every step over `inputs` (see [`crate::pipeline`] for files, restart and scale-out).
    /// The configured files (blocklists, classifier models) are loaded first, so a bad path fails
    /// before any data is touched.
    pub fn run(&self, inputs: &[PathBuf], opts: &StepOptions) -> Result<TextPipelineOutput> {
        let mut filter = Chain::new().add(FormatStage::new(self.format.clone()));
        if let Some(rules) = &self.rules {
            filter = filter.add(RulesStage::new(rules.clone())?);
        }
        let mut tail = Chain::new();
        if let Some(safety) = &self.safety {
            tail = tail.add(SafetyStage::from_config(safety)?);
        }
        if let Some(quality) = &self.quality {
            tail = tail.add(QualityStage::from_config(quality)?);
        }
        let mut report = PipelineReport::default();
        report.push(run_step("filter", &filter, inputs, opts)?);
        let mut current = step_outputs("filter", inputs, opts);
        if let Some(dedup) = &self.dedup {
            report.push(run_dedup("dedup", dedup, &current, opts)?);
            current = step_outputs("dedup", &current, opts);
        }
        if !tail.is_empty() {
            report.push(run_step("safety", &tail, &current, opts)?);
            current = step_outputs("safety", &current, opts);
        }
        Ok(TextPipelineOutput {
            report,
            outputs: current,
        })
    }
}

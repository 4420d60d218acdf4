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

use burn::config::Config;
use serde::{Deserialize, Serialize};

use super::dedup::{dedup_merge, dedup_signatures, run_dedup};
use super::{PipelineReport, StepOptions, run_step, step_outputs};
use crate::dedup::DedupConfig;
use crate::stages::format::{FormatConfig, FormatStage};
use crate::stages::quality::{QualityConfig, QualityStage};
use crate::stages::rules::{RulesConfig, RulesStage};
use crate::stages::safety::{SafetyConfig, SafetyStage};
use crate::{Chain, Result};

/// Which stages run, with their configurations (`None` skips a stage).
///
/// The builders and the serde form come from burn's `#[derive(Config)]`: a serialised form
/// names every field; [`from_partial_json`](crate::from_partial_json) reads hand-written files
/// that name only what they change.
#[derive(Config, Debug, PartialEq)]
pub struct TextPipelineConfig {
    /// Unicode and whitespace cleanup, language id, ids (always runs: dedup needs ids).
    #[config(default = "FormatConfig::default()")]
    pub format: FormatConfig,
    /// Heuristic rules.
    #[config(default = "Some(RulesConfig::default())")]
    pub rules: Option<RulesConfig>,
    /// Exact and MinHash-LSH dedup.
    #[config(default = "Some(DedupConfig::default())")]
    pub dedup: Option<DedupConfig>,
    /// Domain and word blocklists, safety classifiers.
    pub safety: Option<SafetyConfig>,
    /// Quality classifiers.
    pub quality: Option<QualityConfig>,
}

impl Default for TextPipelineConfig {
    fn default() -> Self {
        Self::new()
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
    fn chains(&self) -> Result<(Chain, Chain)> {
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
        Ok((filter, tail))
    }

    /// Run every step over `inputs` (see [`crate::pipeline`] for files, restart and scale-out).
    /// The configured files (blocklists, classifier models) are loaded first, so a bad path fails
    /// before any data is touched. Equivalent to the three [`TextPhase`]s in order.
    pub fn run(&self, inputs: &[PathBuf], opts: &StepOptions) -> Result<TextPipelineOutput> {
        let mut report = PipelineReport::default();
        let mut outputs = Vec::new();
        for phase in [TextPhase::Shards, TextPhase::Merge, TextPhase::Finish] {
            let out = self.run_phase(phase, inputs, opts)?;
            report.steps.extend(out.report.steps);
            outputs = out.outputs;
        }
        Ok(TextPipelineOutput { report, outputs })
    }

    /// Run one phase. On a cluster: [`TextPhase::Shards`] as a job array over the shards (each
    /// task with its [`ShardSelection`](super::ShardSelection) in `opts`), then one
    /// [`TextPhase::Merge`] job, then [`TextPhase::Finish`] as a job array again. `outputs` are
    /// the phase's output files for every input shard.
    pub fn run_phase(
        &self,
        phase: TextPhase,
        inputs: &[PathBuf],
        opts: &StepOptions,
    ) -> Result<TextPipelineOutput> {
        let (filter, tail) = self.chains()?;
        let mut report = PipelineReport::default();
        let filtered = step_outputs("filter", inputs, opts);
        let deduped = match self.dedup {
            Some(_) => step_outputs("dedup", &filtered, opts),
            None => filtered.clone(),
        };
        let outputs = match phase {
            TextPhase::Shards => {
                report.push(run_step("filter", &filter, inputs, opts)?);
                if let Some(dedup) = &self.dedup {
                    dedup_signatures("dedup", dedup, &filtered, opts)?;
                }
                filtered
            }
            TextPhase::Merge => {
                if let Some(dedup) = &self.dedup {
                    dedup_merge("dedup", dedup, &filtered, opts)?;
                }
                filtered
            }
            TextPhase::Finish => {
                if let Some(dedup) = &self.dedup {
                    report.push(run_dedup("dedup", dedup, &filtered, opts)?);
                }
                if tail.is_empty() {
                    deduped
                } else {
                    report.push(run_step("safety", &tail, &deduped, opts)?);
                    step_outputs("safety", &deduped, opts)
                }
            }
        };
        Ok(TextPipelineOutput { report, outputs })
    }
}

/// The phases of a text pipeline run (see [`TextPipelineConfig::run_phase`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextPhase {
    /// Per shard: format and rules, then the dedup signature file.
    Shards,
    /// Once: merge every signature file into the dedup plan.
    Merge,
    /// Per shard: drop duplicates, then safety and quality.
    Finish,
}

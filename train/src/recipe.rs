//! Pre-training as a recipe: a serde [`PretrainConfig`] (model, optimizer, phases, packing,
//! checkpointing) saved as `pretrain.json` beside the checkpoints, and [`pretrain`], which builds
//! the model (or resumes the newest checkpoint), runs the phases on one device, several
//! (data parallel) or several nodes, and returns the trained model with the run's state.
//!
//! ```no_run
//! use internlm2::backends::CpuAutodiff;
//! use internlm2::data::InMemoryDocuments;
//! use internlm2_train::recipe::{ModelSource, PretrainConfig, pretrain};
//! use internlm2_train::Phase;
//!
//! let config = PretrainConfig::new(ModelSource::preset("tiny"))
//!     .with_phases(vec![Phase::new("main", 100, 128, 8, 3e-4)])
//!     .with_checkpoints("runs/a", 50);
//! let documents = InMemoryDocuments::new(vec![vec![5, 6, 7], vec![8, 9]]).shuffled(config.seed);
//! let done = pretrain::<CpuAutodiff, _>(&config, documents, 1000, 2, &[Default::default()], None)?;
//! println!("{} steps, last loss {:?}", done.state.step, done.state.losses.last());
//! # Ok::<(), internlm2_train::TrainError>(())
//! ```

use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::DType;
use internlm2::checkpoint::{SaveDtype, SaveOptions};
use internlm2::data::{DocumentSource, Packer, PackingConfig};
use internlm2::{InternLM2, InternLM2Config, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{TrainState, io_err, latest_checkpoint};
use crate::cluster::ClusterConfig;
use crate::metrics::plot_loss_curve;
use crate::objective::TrainBackend;
use crate::optim::OptimizerConfig;
use crate::parallel::DataParallel;
use crate::phase::{Phase, RunOptions};
use crate::run::{StepEngine, run};
use crate::trainer::Trainer;
use crate::{StepRecord, TrainError};

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    /// A built-in shape with random weights: `tiny`, `140m`, `1.8b`, `7b`, `20b` (the vocabulary
    /// is the data's).
    Preset {
        /// The shape's name.
        name: String,
    },
    /// A HuggingFace `config.json`, random weights.
    Config {
        /// The file.
        path: PathBuf,
    },
    /// A HuggingFace model directory to continue from.
    InitFrom {
        /// The directory.
        dir: PathBuf,
    },
}

impl ModelSource {
    /// A built-in shape.
    pub fn preset(name: impl Into<String>) -> Self {
        Self::Preset { name: name.into() }
    }
}

/// The shape of a built-in preset for a vocabulary of `vocab` ids.
pub fn preset(name: &str, vocab: usize) -> Result<InternLM2Config, TrainError> {
    Ok(match name {
        "tiny" => InternLM2Config::new(vocab, 256, 768, 4, 8, 2).with_max_position_embeddings(4096),
        "140m" => InternLM2Config::new(vocab, 512, 1536, 8, 8, 2),
        "1.8b" => InternLM2Config {
            vocab_size: vocab,
            ..InternLM2Config::internlm2_1_8b()
        },
        "7b" => InternLM2Config {
            vocab_size: vocab,
            ..InternLM2Config::internlm2_7b()
        },
        "20b" => InternLM2Config {
            vocab_size: vocab,
            ..InternLM2Config::internlm2_20b()
        },
        other => {
            return Err(TrainError::invalid(format!(
                "unknown preset {other} (tiny, 140m, 1.8b, 7b, 20b)"
            )));
        }
    })
}

/// Checkpoints of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpointing {
    /// The directory (`None`: no checkpoints).
    pub dir: Option<PathBuf>,
    /// Save every this many steps (and at the end); 0 = only at the end.
    pub every: usize,
    /// Checkpoints kept.
    pub keep_last: usize,
    /// Resume from the newest checkpoint in `dir` when there is one.
    pub resume: bool,
}

impl Default for Checkpointing {
    fn default() -> Self {
        Self {
            dir: None,
            every: 100,
            keep_last: 3,
            resume: true,
        }
    }
}

/// A pre-training run as data (saved as `pretrain.json` beside the checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    /// The model.
    pub model: ModelSource,
    /// AdamW (SPEC 5 defaults when left out).
    #[serde(default = "OptimizerConfig::new")]
    pub optimizer: OptimizerConfig,
    /// The curriculum.
    pub phases: Vec<Phase>,
    /// Let attention and positions run across documents in packed rows.
    #[serde(default)]
    pub cross_document_attention: bool,
    /// Checkpoints and resume.
    #[serde(default)]
    pub checkpoint: Checkpointing,
    /// Per-step JSONL log (default: `metrics.jsonl` in the checkpoint directory).
    #[serde(default)]
    pub log: Option<PathBuf>,
    /// Peak FLOP/s of a device for MFU (default: its measured f32 matmul throughput).
    #[serde(default)]
    pub peak_flops: Option<f64>,
    /// Compute in bf16 with f32 master weights.
    #[serde(default)]
    pub bf16: bool,
    /// Seed of the initialisation and the data order.
    #[serde(default)]
    pub seed: u64,
    /// Show a progress bar.
    #[serde(default = "yes")]
    pub progress: bool,
}

fn yes() -> bool {
    true
}

impl PretrainConfig {
    /// A run of `model` with the SPEC 5 optimiser, one 100-step phase of 8 rows of 256 tokens at
    /// 3e-4, no checkpoints.
    pub fn new(model: ModelSource) -> Self {
        Self {
            model,
            optimizer: OptimizerConfig::new(),
            phases: vec![Phase::new("main", 100, 256, 8, 3e-4)],
            cross_document_attention: false,
            checkpoint: Checkpointing::default(),
            log: None,
            peak_flops: None,
            bf16: false,
            seed: 0,
            progress: true,
        }
    }

    /// Sets the curriculum.
    pub fn with_phases(mut self, phases: Vec<Phase>) -> Self {
        self.phases = phases;
        self
    }

    /// Checkpoints every `every` steps into `dir` (resuming from the newest one there).
    pub fn with_checkpoints(mut self, dir: impl Into<PathBuf>, every: usize) -> Self {
        self.checkpoint.dir = Some(dir.into());
        self.checkpoint.every = every;
        self
    }

    /// Reads a recipe file.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        serde_json::from_str(&text)
            .map_err(|e| TrainError::invalid(format!("{}: {e}", path.display())))
    }

    /// Writes the recipe to `dir/pretrain.json`.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join("pretrain.json");
        let json = serde_json::to_string_pretty(self).expect("the recipe serialises");
        std::fs::write(&path, json).map_err(io_err(&path))?;
        Ok(path)
    }

    /// The run options: the phases, checkpoints and log of this recipe (`log_name` in the
    /// checkpoint directory when no log is set), at the measured or given peak FLOP/s.
    pub fn run_options(&self, log_name: &str, peak_flops: f64) -> RunOptions {
        RunOptions {
            phases: self.phases.clone(),
            checkpoint_dir: self.checkpoint.dir.clone(),
            checkpoint_every: self.checkpoint.every,
            keep_last: self.checkpoint.keep_last,
            log_path: self
                .log
                .clone()
                .or_else(|| self.checkpoint.dir.as_ref().map(|d| d.join(log_name))),
            peak_flops: Some(self.peak_flops.unwrap_or(peak_flops)),
            progress: self.progress,
            stop_at_step: None,
        }
    }

    /// A fresh model as the recipe says, for a vocabulary of `vocab` ids.
    pub fn build_model<B: TrainBackend>(
        &self,
        vocab: usize,
        device: &B::Device,
    ) -> Result<InternLM2<B>, TrainError> {
        let invalid = |e: &dyn std::fmt::Display| TrainError::invalid(e.to_string());
        let model = match &self.model {
            ModelSource::InitFrom { dir } => {
                InternLM2::<B>::load(dir, DType::F32, device).map_err(|e| invalid(&e))?
            }
            ModelSource::Config { path } => {
                let config = InternLM2Config::from_hf_file(path).map_err(|e| invalid(&e))?;
                InternLM2::init(&config, device)
            }
            ModelSource::Preset { name } => {
                B::seed(device, self.seed);
                InternLM2::init(&preset(name, vocab)?, device)
            }
        };
        if vocab > model.config().vocab_size {
            return Err(TrainError::invalid(format!(
                "the data has {vocab} ids but the model only {}",
                model.config().vocab_size
            )));
        }
        Ok(model)
    }
}

/// What [`pretrain`] returns.
pub struct Pretrained<B: TrainBackend> {
    /// The trained model (master weights).
    pub model: InternLM2<B>,
    /// The run's state: steps done, data cursor, losses.
    pub state: TrainState,
}

impl<B: TrainBackend> Pretrained<B> {
    /// Writes the trained model to `dir` in the HuggingFace layout (f32 `config.json` and
    /// `model.safetensors`), `tokenizer.json` when a tokenizer is given, and the loss curve
    /// (`loss.png`).
    pub fn export(&self, dir: &Path, tokenizer: Option<&Tokenizer>) -> Result<(), TrainError> {
        let failed = |reason: &dyn std::fmt::Display| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason: reason.to_string(),
        };
        let options = SaveOptions::default().with_dtype(SaveDtype::F32);
        self.model
            .valid()
            .save(dir, &options)
            .map_err(|e| failed(&e))?;
        if let Some(tokenizer) = tokenizer {
            tokenizer
                .save_json(dir.join("tokenizer.json"))
                .map_err(|e| failed(&e))?;
        }
        plot_loss_curve(
            &self.state.losses,
            dir.join("loss.png"),
            "pre-training loss",
        )
    }
}

/// Runs a pre-training recipe on `documents` (token ids, `vocab` of them, documents joined
/// with `eos`): resumes the newest checkpoint when the recipe says so, else builds the model;
/// trains on one device, data-parallel on several (`devices`), or as this node's share of a
/// multi-node group (`cluster`); saves the recipe beside the checkpoints.
pub fn pretrain<B: TrainBackend, S: DocumentSource>(
    config: &PretrainConfig,
    documents: S,
    vocab: usize,
    eos: u32,
    devices: &[B::Device],
    cluster: Option<ClusterConfig>,
) -> Result<Pretrained<B>, TrainError> {
    let device = devices
        .first()
        .ok_or_else(|| TrainError::invalid("no devices given"))?;
    let mixed_precision = config.bf16.then_some(DType::BF16);
    if let Some(dir) = &config.checkpoint.dir {
        config.save(dir)?;
    }
    let resume = match (&config.checkpoint.dir, config.checkpoint.resume) {
        (Some(dir), true) => latest_checkpoint(dir)?,
        _ => None,
    };
    if let Some(path) = &resume {
        log::info!("resuming from {}", path.display());
    }
    let first_seq_len = config.phases.first().map_or(1, |p| p.seq_len).max(1);
    let mut packer = Packer::new(
        documents,
        PackingConfig {
            seq_len: first_seq_len,
            eos_id: eos,
            cross_document_attention: config.cross_document_attention,
        },
    );
    // Nodes other than 0 log beside node 0's log (a shared checkpoint directory).
    let log_name = match &cluster {
        Some(c) if c.node_rank() != 0 => format!("metrics-node{}.jsonl", c.node_rank()),
        _ => "metrics.jsonl".to_string(),
    };
    let peak = match config.peak_flops {
        Some(peak) => peak,
        None => internlm2::backends::limits::measure_matmul_flops::<B>(device, 512),
    };
    let options = config.run_options(&log_name, peak);
    let on_step = |_: &StepRecord, _: &crate::StepStats| {};
    if devices.len() > 1 || cluster.is_some() {
        let (group, mut state) = match resume {
            Some(path) => {
                DataParallel::load_checkpoint(&path, config.optimizer.clone(), devices, cluster)?
            }
            None => {
                let model = config.build_model::<B>(vocab, device)?;
                let group = match cluster {
                    Some(cluster) => {
                        DataParallel::join(cluster, model, config.optimizer.clone(), devices)?
                    }
                    None => DataParallel::new(model, config.optimizer.clone(), devices)?,
                };
                (group, TrainState::new(config.seed))
            }
        };
        let mut group = group.with_mixed_precision(mixed_precision)?;
        run(&mut group, &mut packer, &mut state, &options, on_step)?;
        let model = StepEngine::model(&group)?;
        return Ok(Pretrained { model, state });
    }
    let (trainer, mut state) = match resume {
        Some(path) => Trainer::load_checkpoint(&path, config.optimizer.clone(), device)?,
        None => (
            Trainer::new(
                config.build_model::<B>(vocab, device)?,
                config.optimizer.clone(),
            ),
            TrainState::new(config.seed),
        ),
    };
    let mut trainer = trainer.with_mixed_precision(mixed_precision);
    run(&mut trainer, &mut packer, &mut state, &options, on_step)?;
    Ok(Pretrained {
        model: trainer.model,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_round_trips_and_builds_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let config = PretrainConfig::new(ModelSource::preset("tiny"))
            .with_phases(vec![
                Phase::new("a", 4, 16, 2, 1e-3),
                Phase::new("b", 2, 32, 2, 5e-4),
            ])
            .with_checkpoints(dir.path(), 2);
        let path = config.save(dir.path()).unwrap();
        assert_eq!(PretrainConfig::load(&path).unwrap(), config);
        let options = config.run_options("metrics.jsonl", 1e12);
        assert_eq!(options.total_steps(), 6);
        assert_eq!(options.log_path, Some(dir.path().join("metrics.jsonl")));
        assert_eq!(options.peak_flops, Some(1e12));
        // A recipe written by hand: defaults fill what it leaves out.
        let json = r#"{"model": {"preset": {"name": "140m"}},
            "phases": [{"name": "p", "steps": 3, "seq_len": 8, "batch_size": 2,
            "micro_batches": 1, "schedule": {"peak_lr": 0.001, "warmup_steps": 1,
            "total_steps": 3, "min_ratio": 0.1}, "rope_theta": null}]}"#;
        let parsed: PretrainConfig = serde_json::from_str(json).unwrap();
        assert_eq!(parsed.model, ModelSource::preset("140m"));
        assert!(parsed.progress && parsed.checkpoint.resume && parsed.checkpoint.dir.is_none());
        assert_eq!(parsed.optimizer, OptimizerConfig::new());
        assert!(matches!(
            preset("13b", 10),
            Err(TrainError::InvalidConfig { .. })
        ));
    }
}

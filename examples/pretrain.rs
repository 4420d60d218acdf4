//! Pre-trains (or continues training) an InternLM2: the recipe is a `PretrainConfig` (model,
//! optimizer, phases, packing, checkpointing), built from these flags or read with `--recipe`,
//! and saved as `pretrain.json` beside the checkpoints.
//!
//! ```text
//! cargo run --release --example pretrain -- --data corpus.jsonl --train-tokenizer 8000 \
//!     --preset tiny --steps 1000 --seq-len 256 --batch 16 --checkpoint-dir runs/a --out runs/a/model
//! # the same run again resumes from the newest checkpoint; several devices train data-parallel:
//! cargo run --release --example pretrain -- --recipe runs/a/pretrain.json --data corpus.jsonl \
//!     --tokenizer runs/a/model --devices cpu,cpu
//! ```
//!
//! `--data`: token shards of the data pipeline (a directory), or JSONL/Parquet/plain text
//! tokenised with `--tokenizer` or a BPE trained on it (`--train-tokenizer VOCAB`). Several
//! nodes: `--nodes N --node-rank R --orchestrator ws://HOST:PORT --node-address ws://THIS:PORT`
//! on every node, one of them with `--host-orchestrator` (see docs/training.md).

use std::path::PathBuf;
use std::process::ExitCode;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use clap::Parser;
use internlm2::Tokenizer;
use internlm2::backends::Kernels;
use internlm2::backends::device::{DTypeChoice, DeviceError, DeviceSpec, parse_devices};
use internlm2::backends::program::{ParallelProgram, ProgramResult, run_parallel_program};
use internlm2::checkpoint::{SaveDtype, SaveOptions};
use internlm2_datasets::tokenize::{TrainingDocuments, read_texts};
use internlm2_train::recipe::{ModelSource, PretrainConfig, pretrain};
use internlm2_train::{ClusterConfig, LrSchedule, Phase, plot_loss_curve, spawn_orchestrator};

fn main() -> ExitCode {
    internlm2_rs::quiet_logs();
    run_parallel_program(Args::parse())
}

#[derive(Parser)]
#[command(about = "Pre-train an InternLM2 with the SDK's training engine")]
struct Args {
    /// A recipe (pretrain.json); the model, phase and checkpoint flags are then ignored.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Built-in shape (tiny, 140m, 1.8b, 7b, 20b), or --config / --init-from.
    #[arg(long, default_value = "tiny")]
    preset: String,
    #[arg(long, conflicts_with = "init_from")]
    config: Option<PathBuf>,
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Training data (token shards, JSONL/Parquet, plain text) and its tokenizer.
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long)]
    train_tokenizer: Option<usize>,
    /// One phase: steps, tokens per row, rows per step, micro-batches, peak LR, warmup, RoPE base.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 1)]
    micro_batches: usize,
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    #[arg(long)]
    warmup: Option<usize>,
    #[arg(long)]
    rope_theta: Option<f64>,
    /// Several phases from a JSON list instead.
    #[arg(long)]
    phases: Option<PathBuf>,
    #[arg(long)]
    cross_document_attention: bool,
    /// Checkpoints (a run resumes from the newest one there).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    #[arg(long, default_value_t = 3)]
    keep_last: usize,
    #[arg(long)]
    peak_flops: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Devices of one backend (cpu, cpu,cpu, cuda:0,cuda:1, wgpu, tch:cuda:0) and compute
    /// dtype (auto: bf16 with f32 master weights on CUDA, f32 elsewhere).
    #[arg(long, default_value = "cpu")]
    devices: String,
    #[arg(long, default_value = "auto")]
    dtype: DTypeChoice,
    /// Several nodes.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    #[arg(long, default_value_t = 0)]
    node_rank: u32,
    #[arg(long)]
    orchestrator: Option<String>,
    #[arg(long)]
    node_address: Option<String>,
    #[arg(long)]
    host_orchestrator: bool,
    /// Export the trained model here (HuggingFace layout, f32), with the tokenizer.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Args {
    fn recipe(&self, bf16: bool) -> Result<PretrainConfig, Box<dyn std::error::Error>> {
        if let Some(path) = &self.recipe {
            return Ok(PretrainConfig::load(path)?);
        }
        let model = match (&self.init_from, &self.config) {
            (Some(dir), _) => ModelSource::InitFrom { dir: dir.clone() },
            (None, Some(path)) => ModelSource::Config { path: path.clone() },
            (None, None) => ModelSource::preset(&self.preset),
        };
        let warmup = self.warmup.unwrap_or((self.steps / 100).max(1));
        let mut phase = Phase::new("main", self.steps, self.seq_len, self.batch, self.lr)
            .with_micro_batches(self.micro_batches)
            .with_schedule(LrSchedule::new(self.lr, warmup, self.steps));
        phase.rope_theta = self.rope_theta;
        let phases = match &self.phases {
            Some(path) => serde_json::from_str(&std::fs::read_to_string(path)?)?,
            None => vec![phase],
        };
        let mut recipe = PretrainConfig::new(model).with_phases(phases);
        recipe.checkpoint.dir = self.checkpoint_dir.clone();
        (recipe.checkpoint.every, recipe.checkpoint.keep_last) =
            (self.checkpoint_every, self.keep_last);
        (recipe.cross_document_attention, recipe.bf16) = (self.cross_document_attention, bf16);
        (recipe.peak_flops, recipe.seed) = (self.peak_flops, self.seed);
        Ok(recipe)
    }
}

impl ParallelProgram for Args {
    fn devices(&self) -> Result<Vec<DeviceSpec>, DeviceError> {
        parse_devices(&self.devices)
    }

    fn run<B: Kernels>(self, devices: Vec<B::Device>) -> ProgramResult {
        let spec = parse_devices(&self.devices)?[0];
        let recipe = self.recipe(self.dtype.resolve(&spec) == burn::tensor::DType::BF16)?;
        let cluster = match (&self.orchestrator, &self.node_address) {
            _ if self.nodes <= 1 && !self.host_orchestrator => None,
            (Some(orchestrator), Some(node)) => {
                let cluster = ClusterConfig::new(self.nodes, self.node_rank, orchestrator, node)?;
                if self.host_orchestrator {
                    spawn_orchestrator(cluster.orchestrator_port())?;
                }
                Some(cluster)
            }
            _ => return Err("a multi-node run needs --orchestrator and --node-address".into()),
        };
        let tokenizer = match (&self.tokenizer, self.train_tokenizer, &self.init_from) {
            (Some(path), _, _) if path.is_dir() => Some(Tokenizer::from_dir(path)?),
            (Some(path), _, _) => Some(Tokenizer::from_file(path)?),
            (None, Some(vocab), _) => {
                Some(Tokenizer::train_bpe(read_texts(&self.data)?.iter(), vocab)?)
            }
            (None, None, Some(dir)) => Some(Tokenizer::from_dir(dir)?),
            _ => None,
        };
        let data = TrainingDocuments::open(&self.data, tokenizer.as_ref(), recipe.seed)?;
        eprintln!(
            "data: {} documents, {} tokens, {} ids",
            data.count, data.tokens, data.vocab_size
        );
        let eos = data.eos_id.unwrap_or(2);
        let leader = cluster.as_ref().is_none_or(|c| c.node_rank() == 0);
        let done = pretrain::<Autodiff<B>, _>(
            &recipe,
            data.documents,
            data.vocab_size,
            eos,
            &devices,
            cluster,
        )?;
        eprintln!(
            "done: {} steps, last loss {:?}",
            done.state.step,
            done.state.losses.last()
        );
        if let Some(out) = self.out.as_ref().filter(|_| leader) {
            done.model
                .valid()
                .save(out, &SaveOptions::default().with_dtype(SaveDtype::F32))?;
            if let Some(tokenizer) = &tokenizer {
                tokenizer.save_json(out.join("tokenizer.json"))?;
            }
            plot_loss_curve(
                &done.state.losses,
                out.join("loss.png"),
                "pre-training loss",
            )?;
            eprintln!(
                "exported to {} (config.json, model.safetensors, loss.png)",
                out.display()
            );
        }
        Ok(())
    }
}

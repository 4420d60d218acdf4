//! Pre-trains (or continues training) an InternLM2. The run is a recipe, `PretrainConfig`
//! (model, optimizer, phases, packing, checkpoints), read with `--recipe` or made from the flags
//! below as one phase, and saved as `pretrain.json` beside the checkpoints: edit that file for
//! several phases, micro-batches, RoPE bases or the optimizer, and pass it back with `--recipe`.
//!
//! ```text
//! cargo run --release --example pretrain -- --data corpus.jsonl --train-tokenizer 8000 \
//!     --preset tiny --steps 1000 --seq-len 256 --batch 16 --checkpoint-dir runs/a --out runs/a/model
//! # the same run again resumes from the newest checkpoint; several devices train data-parallel:
//! cargo run --release --example pretrain -- --recipe runs/a/pretrain.json --data corpus.jsonl \
//!     --tokenizer runs/a/model --devices cpu,cpu
//! ```
//!
//! Several nodes: `--nodes N --node-rank R --orchestrator ws://HOST:PORT --node-address
//! ws://THIS:PORT` on every node, one of them with `--host-orchestrator` (docs/training.md).

use std::path::PathBuf;
use std::process::ExitCode;

use burn::backend::Autodiff;
use burn::tensor::DType;
use clap::Parser;
use internlm2::backends::Kernels;
use internlm2::backends::device::{DTypeChoice, DeviceError, DeviceSpec, parse_devices};
use internlm2::backends::program::{ParallelProgram, ProgramResult, run_parallel_program};
use internlm2_datasets::tokenize::{TokenizerSource, TrainingDocuments};
use internlm2_train::recipe::{ModelSource, PretrainConfig, pretrain};
use internlm2_train::{ClusterConfig, Phase, spawn_orchestrator};

fn main() -> ExitCode {
    internlm2_rs::quiet_logs();
    run_parallel_program(Args::parse())
}

#[derive(Parser)]
#[command(about = "Pre-train an InternLM2 with the SDK's training engine")]
struct Args {
    /// The recipe (pretrain.json); the model, phase and checkpoint flags are then ignored.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// The model: a built-in shape (tiny, 140m, 1.8b, 7b, 20b), a config.json, or a model
    /// directory to continue from.
    #[arg(long, default_value = "tiny")]
    preset: String,
    #[arg(long, conflicts_with = "init_from")]
    config: Option<PathBuf>,
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// One phase: steps of `batch` rows of `seq-len` tokens, warmup 1% then cosine from `lr`.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// Checkpoints every 100 steps (a run resumes from the newest one there).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Token shards of the data pipeline (a directory), or JSONL/Parquet/plain text tokenised
    /// with `--tokenizer` or a BPE of `--train-tokenizer` ids trained on it.
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long)]
    train_tokenizer: Option<usize>,
    /// Devices of one backend (cpu, cpu,cpu, cuda:0,cuda:1, wgpu, tch:cuda:0) and compute
    /// dtype (auto: bf16 with f32 master weights on CUDA, f32 elsewhere).
    #[arg(long, default_value = "cpu")]
    devices: String,
    #[arg(long, default_value = "auto")]
    dtype: DTypeChoice,
    /// Several nodes (see docs/training.md).
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
    /// Export the trained model here (HuggingFace layout, f32, tokenizer, loss curve).
    #[arg(long)]
    out: Option<PathBuf>,
}

impl ParallelProgram for Args {
    fn devices(&self) -> Result<Vec<DeviceSpec>, DeviceError> {
        parse_devices(&self.devices)
    }

    fn run<B: Kernels>(self, devices: Vec<B::Device>) -> ProgramResult {
        let recipe = match &self.recipe {
            Some(path) => PretrainConfig::load(path)?,
            None => {
                let model = match (&self.init_from, &self.config) {
                    (Some(dir), _) => ModelSource::InitFrom { dir: dir.clone() },
                    (None, Some(path)) => ModelSource::Config { path: path.clone() },
                    (None, None) => ModelSource::preset(&self.preset),
                };
                let phase = Phase::new("main", self.steps, self.seq_len, self.batch, self.lr);
                let mut recipe = PretrainConfig::new(model).with_phases(vec![phase]);
                recipe.checkpoint.dir = self.checkpoint_dir.clone();
                recipe.bf16 = self.dtype.resolve(&self.devices()?[0]) == DType::BF16;
                recipe
            }
        };
        let (orchestrator, node) = (self.orchestrator.as_deref(), self.node_address.as_deref());
        let cluster = ClusterConfig::from_flags(self.nodes, self.node_rank, orchestrator, node)?;
        if let (Some(cluster), true) = (&cluster, self.host_orchestrator) {
            spawn_orchestrator(cluster.orchestrator_port())?;
        }
        let leader = cluster.as_ref().is_none_or(|c| c.node_rank() == 0);
        let source = TokenizerSource::first_of(
            self.tokenizer.as_deref(),
            self.train_tokenizer,
            self.init_from.as_deref(),
        );
        let tokenizer = source.load(&self.data)?;
        let data = TrainingDocuments::open(&self.data, tokenizer.as_ref(), recipe.seed)?;
        eprintln!("data: {} documents, {} tokens", data.count, data.tokens);
        let (vocab, eos) = (data.vocab_size, data.eos_id.unwrap_or(2));
        let done =
            pretrain::<Autodiff<B>, _>(&recipe, data.documents, vocab, eos, &devices, cluster)?;
        eprintln!(
            "{} steps, last loss {:?}",
            done.state.step,
            done.state.losses.last()
        );
        if let Some(out) = self.out.as_ref().filter(|_| leader) {
            done.export(out, tokenizer.as_ref())?;
            eprintln!("exported to {}", out.display());
        }
        Ok(())
    }
}

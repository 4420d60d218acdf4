//! Pre-trains (or continues training) an InternLM2 with the SDK's training engine.
//!
//! ```text
//! cargo run --release --example pretrain -- \
//!     --preset tiny --data corpus.jsonl --train-tokenizer 8000 \
//!     --steps 1000 --seq-len 256 --batch 16 --lr 3e-4 \
//!     --checkpoint-dir runs/a/checkpoints --out runs/a/model
//! # resume the same run after an interruption:
//! cargo run --release --example pretrain -- ... --resume
//! ```
//!
//! - model: `--config config.json` (a HuggingFace config) or `--preset tiny|140m|1.8b|7b|20b`
//!   (random init), or `--init-from MODEL_DIR` (continue from a HuggingFace checkpoint);
//! - data: `--data` a directory of token shards written by the data pipeline
//!   (`internlm2_datasets::tokenize`, e.g. `target/data_pipeline/tokens`; already tokenised,
//!   documents in shard order every epoch; `--tokenizer` is then only needed for the export), or
//!   a document file / directory of shards (JSONL, `.jsonl.gz`, `.jsonl.zst`, Parquet; a
//!   `text` field per record) or plain text (documents separated by a blank line), tokenised
//!   with `--tokenizer` (tokenizer.model / tokenizer.json / directory) or a byte-level BPE
//!   trained on the data with `--train-tokenizer VOCAB`;
//! - schedule: `--phases phases.json` (a list of phases: name, steps, seq_len, batch_size,
//!   micro_batches, schedule {peak_lr, warmup_steps, total_steps, min_ratio}, rope_theta), or
//!   one phase from `--steps --seq-len --batch --micro-batches --lr --warmup --rope-theta`;
//! - `--devices`: one device spec or several of the same backend (`cpu`, `cpu,cpu`, `cuda:0,cuda:1`,
//!   `wgpu`, `tch:cuda:0`; backends other than the CPU need their cargo feature, e.g.
//!   `--features cuda`); several run data-parallel replicas through burn-collective.
//!   `--dtype auto` trains in bf16 with f32 master weights where the device policy says bf16
//!   (CUDA), f32 elsewhere;
//! - several nodes: `--nodes N --node-rank R --orchestrator ws://HOST:PORT --node-address
//!   ws://THIS_HOST:PORT` on every node, with the same data and flags; one process serves the
//!   orchestrator (`--host-orchestrator` on node 0, or `cargo run --example orchestrator`).
//!   Node 0 writes the checkpoints (put `--checkpoint-dir` on a shared filesystem) and the
//!   export. Two nodes on one machine:
//!
//! ```text
//! cargo run --release --example pretrain -- --data corpus.jsonl --train-tokenizer 2000 \
//!     --batch 8 --nodes 2 --node-rank 0 --orchestrator ws://127.0.0.1:3000 \
//!     --node-address ws://127.0.0.1:3001 --host-orchestrator --out runs/two-nodes &
//! cargo run --release --example pretrain -- --data corpus.jsonl --train-tokenizer 2000 \
//!     --batch 8 --nodes 2 --node-rank 1 --orchestrator ws://127.0.0.1:3000 \
//!     --node-address ws://127.0.0.1:3002
//! ```

use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use clap::Parser;
use internlm2::backends::Kernels;
use internlm2::backends::device::{DTypeChoice, DeviceSpec, DevicesTask, parse_devices, run_on};
use internlm2::checkpoint::{SaveDtype, SaveOptions};
use internlm2_train::{
    ClusterConfig, DataParallel, DocumentSource, InMemoryDocuments, LrSchedule, OptimizerConfig,
    Packer, PackingConfig, Phase, RunOptions, TrainState, Trainer, latest_checkpoint,
    plot_loss_curve, run, spawn_orchestrator,
};
use internlm2::{InternLM2, InternLM2Config, Tokenizer};
use internlm2_datasets::tokenize::TokenShards;

#[derive(Parser)]
#[command(about = "Pre-train an InternLM2 on CPU with the SDK's training engine")]
struct Args {
    /// HuggingFace config.json of the model to build.
    #[arg(long, conflicts_with_all = ["preset", "init_from"])]
    config: Option<PathBuf>,
    /// A built-in shape: tiny, 140m, 1.8b, 7b, 20b.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Continue from a HuggingFace model directory instead of a random init.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Training text: JSONL with a "text" field, or plain text with blank-line separated documents.
    #[arg(long)]
    data: PathBuf,
    /// tokenizer.model, tokenizer.json or a directory with one.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Train a byte-level BPE of this many ids on the data instead.
    #[arg(long)]
    train_tokenizer: Option<usize>,
    /// JSON list of phases (overrides the single-phase flags below).
    #[arg(long)]
    phases: Option<PathBuf>,
    /// Optimiser steps (single phase).
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Tokens per row (single phase).
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Rows per step (single phase).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Micro-batches per step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    micro_batches: usize,
    /// Peak learning rate (SPEC 5: 3e-4).
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// Warmup steps (default: 1% of the steps).
    #[arg(long)]
    warmup: Option<usize>,
    /// RoPE base of the phase.
    #[arg(long)]
    rope_theta: Option<f64>,
    /// Let attention cross document boundaries in packed rows.
    #[arg(long)]
    cross_document_attention: bool,
    /// Training devices, comma separated, of one backend (cpu, cuda:N, wgpu, tch:cpu,
    /// tch:cuda:N); several run data-parallel (one replica each).
    #[arg(long, default_value = "cpu")]
    devices: String,
    /// Compute dtype: auto (the device's policy: bf16 on CUDA, f32 elsewhere), f32 or bf16
    /// (bf16 compute with f32 master weights).
    #[arg(long, default_value = "auto")]
    dtype: DTypeChoice,
    /// Checkpoint directory.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Save a checkpoint every N steps.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 3)]
    keep_last: usize,
    /// Resume from the newest checkpoint in --checkpoint-dir.
    #[arg(long)]
    resume: bool,
    /// Export the trained model here (HuggingFace layout, f32), with the tokenizer.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Per-step JSONL log (default: next to the checkpoints or the export).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Seed of the data order and the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Peak device FLOP/s for MFU (default: measured f32 matmul throughput).
    #[arg(long)]
    peak_flops: Option<f64>,
    /// Number of nodes of a multi-node run (each runs this program with its own --node-rank).
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// This node's rank, 0..nodes.
    #[arg(long, default_value_t = 0)]
    node_rank: u32,
    /// The orchestrator's URL, ws://HOST:PORT (multi-node runs).
    #[arg(long)]
    orchestrator: Option<String>,
    /// This node's URL as the other nodes reach it, ws://HOST:PORT; tensors are served on PORT.
    #[arg(long)]
    node_address: Option<String>,
    /// Serve the orchestrator in this process, on the port of --orchestrator.
    #[arg(long)]
    host_orchestrator: bool,
}

/// The run, generic over the backend the `--devices` specs name.
struct Pretrain {
    args: Args,
    dtype: DType,
}

impl DevicesTask for Pretrain {
    type Output = Result<(), Box<dyn std::error::Error>>;
    fn run<B: Kernels>(self, devices: Vec<B::Device>) -> Self::Output {
        pretrain::<B>(self.args, self.dtype, devices)
    }
}

fn main() {
    let args = Args::parse();
    quiet_logs();
    let result = parse_devices(&args.devices)
        .map_err(Into::into)
        .and_then(|specs: Vec<DeviceSpec>| {
            let dtype = args.dtype.resolve(&specs[0]);
            Ok(run_on(&specs, Pretrain { args, dtype })?)
        })
        .and_then(|run| run);
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn read_documents(path: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let docs: Vec<String> = match internlm2_datasets::io::list_shards(path) {
        Ok(files) if !files.is_empty() => {
            let mut docs = Vec::new();
            for file in files {
                for doc in internlm2_datasets::io::read_documents(&file)? {
                    docs.push(doc?.text);
                }
            }
            docs
        }
        _ => std::fs::read_to_string(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .split("\n\n")
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .collect(),
    };
    if docs.is_empty() {
        return Err(format!("{}: no documents", path.display()).into());
    }
    Ok(docs)
}

/// Training documents: tokenised in memory (shuffled per epoch) or token shards on disk.
enum Documents {
    Memory(InMemoryDocuments),
    Shards(TokenShards),
}

impl DocumentSource for Documents {
    fn len(&self) -> usize {
        match self {
            Documents::Memory(d) => d.len(),
            Documents::Shards(d) => DocumentSource::len(d),
        }
    }

    fn document(&self, epoch: u64, index: usize) -> std::borrow::Cow<'_, [u32]> {
        match self {
            Documents::Memory(d) => d.document(epoch, index),
            Documents::Shards(d) => d.document(epoch, index),
        }
    }
}

fn preset(name: &str, vocab: usize) -> Result<InternLM2Config, String> {
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
            return Err(format!(
                "unknown preset {other} (tiny, 140m, 1.8b, 7b, 20b)"
            ));
        }
    })
}

fn pretrain<B: Kernels>(
    args: Args,
    dtype: DType,
    devices: Vec<B::Device>,
) -> Result<(), Box<dyn std::error::Error>> {
    let device = devices[0].clone();
    let mixed_precision = match dtype {
        DType::F32 => None,
        DType::BF16 if B::supports_dtype(&device, DType::BF16) => Some(DType::BF16),
        other => {
            return Err(format!(
                "--dtype {other:?} is not available on {device:?} (f32 always is; bf16 where the device has it)"
            )
            .into());
        }
    };
    let cluster = match (&args.orchestrator, &args.node_address) {
        _ if args.nodes <= 1 && !args.host_orchestrator => None,
        (Some(orchestrator), Some(node)) => {
            let cluster = ClusterConfig::new(args.nodes, args.node_rank, orchestrator, node)?;
            if args.host_orchestrator {
                spawn_orchestrator(cluster.orchestrator_port())?;
                eprintln!("serving the orchestrator at {orchestrator}");
            }
            Some(cluster)
        }
        _ => return Err("a multi-node run needs --orchestrator and --node-address".into()),
    };
    let shards = args
        .data
        .is_dir()
        .then(|| TokenShards::open(&args.data).ok())
        .flatten();
    let texts = match &shards {
        Some(_) => Vec::new(),
        None => read_documents(&args.data)?,
    };
    let tokenizer = match (&args.tokenizer, args.train_tokenizer, &args.init_from) {
        (Some(path), _, _) if path.is_dir() => Some(Tokenizer::from_dir(path)?),
        (Some(path), _, _) => Some(Tokenizer::from_file(path)?),
        (None, Some(vocab), _) if shards.is_none() => {
            Some(Tokenizer::train_bpe(texts.iter(), vocab)?)
        }
        (None, None, Some(dir)) => Some(Tokenizer::from_dir(dir)?),
        _ if shards.is_some() => None,
        _ => return Err("give --tokenizer or --train-tokenizer VOCAB".into()),
    };
    let (documents, vocab_size, eos_id) = match shards {
        Some(shards) => {
            let vocab = shards.vocab();
            eprintln!(
                "data: token shards {}: {} documents, {} tokens, {} rows of {} ({} ids)",
                args.data.display(),
                shards.documents(),
                shards.tokens(),
                shards.rows(),
                shards.seq_len(),
                vocab.vocab_size
            );
            (Documents::Shards(shards), vocab.vocab_size, vocab.eos_id)
        }
        None => {
            let tokenizer = tokenizer.as_ref().ok_or("no tokenizer")?;
            let documents: Vec<Vec<u32>> = texts
                .iter()
                .map(|t| tokenizer.encode(t, false))
                .collect::<Result<_, _>>()?;
            let tokens: usize = documents.iter().map(Vec::len).sum();
            eprintln!(
                "data: {} documents, {} tokens ({} ids)",
                documents.len(),
                tokens,
                tokenizer.vocab_size()
            );
            (
                Documents::Memory(InMemoryDocuments::new(documents)),
                tokenizer.vocab_size(),
                tokenizer.eos_id(),
            )
        }
    };

    let phases: Vec<Phase> = match &args.phases {
        Some(path) => serde_json::from_str(&std::fs::read_to_string(path)?)?,
        None => {
            let mut phase = Phase::new("main", args.steps, args.seq_len, args.batch, args.lr)
                .with_micro_batches(args.micro_batches)
                .with_schedule(LrSchedule::new(
                    args.lr,
                    args.warmup.unwrap_or((args.steps / 100).max(1)),
                    args.steps,
                ));
            if let Some(theta) = args.rope_theta {
                phase = phase.with_rope_theta(theta);
            }
            vec![phase]
        }
    };

    let optimizer = OptimizerConfig::new();
    let resume_from = match (&args.checkpoint_dir, args.resume) {
        (Some(dir), true) => latest_checkpoint(dir)?,
        (None, true) => return Err("--resume needs --checkpoint-dir".into()),
        _ => None,
    };
    let (trainer, mut state) = match resume_from {
        Some(path) => {
            eprintln!("resuming from {}", path.display());
            Trainer::<Autodiff<B>>::load_checkpoint(&path, optimizer, &device)?
        }
        None => {
            let model = match (&args.init_from, &args.config) {
                (Some(dir), _) => InternLM2::<Autodiff<B>>::load(dir, DType::F32, &device)?,
                (None, Some(path)) => {
                    InternLM2::init(&InternLM2Config::from_hf_file(path)?, &device)
                }
                (None, None) => {
                    Autodiff::<B>::seed(&device, args.seed);
                    InternLM2::init(&preset(&args.preset, vocab_size)?, &device)
                }
            };
            (Trainer::new(model, optimizer), TrainState::new(args.seed))
        }
    };
    let mut trainer = trainer.with_mixed_precision(mixed_precision);
    eprintln!(
        "devices: {devices:?}; compute {}",
        match mixed_precision {
            Some(_) => "bf16 with f32 master weights",
            None => "f32",
        }
    );
    let config = trainer.model.config().clone();
    if vocab_size > config.vocab_size {
        return Err(format!(
            "the tokenizer has {} ids but the model only {}",
            vocab_size, config.vocab_size
        )
        .into());
    }
    eprintln!(
        "model: hidden {}, {} layers, {} parameters; {} steps to go",
        config.hidden_size,
        config.num_hidden_layers,
        config.num_parameters(),
        phases
            .iter()
            .map(|p| p.steps)
            .sum::<usize>()
            .saturating_sub(state.step)
    );

    let documents = match documents {
        Documents::Memory(d) => Documents::Memory(d.shuffled(state.seed)),
        shards => shards,
    };
    let mut packer = Packer::new(
        documents,
        PackingConfig {
            seq_len: phases[0].seq_len,
            eos_id: eos_id.unwrap_or(config.eos_token_id),
            cross_document_attention: args.cross_document_attention,
        },
    );
    // Nodes other than 0 log beside node 0's log (a shared checkpoint directory).
    let log_name = match &cluster {
        Some(c) if c.node_rank() != 0 => format!("metrics-node{}.jsonl", c.node_rank()),
        _ => "metrics.jsonl".to_string(),
    };
    let log = args.log.clone().or_else(|| {
        args.checkpoint_dir
            .as_ref()
            .or(args.out.as_ref())
            .map(|d| d.join(&log_name))
    });
    let options =
        RunOptions {
            phases,
            checkpoint_dir: args.checkpoint_dir.clone(),
            checkpoint_every: args.checkpoint_every,
            keep_last: args.keep_last,
            log_path: log.clone(),
            peak_flops: Some(args.peak_flops.unwrap_or_else(|| {
                internlm2::backends::limits::measure_matmul_flops::<B>(&device, 512)
            })),
            progress: true,
            stop_at_step: None,
        };
    let leader = cluster.as_ref().is_none_or(|c| c.node_rank() == 0);
    if devices.len() > 1 || cluster.is_some() {
        match &cluster {
            Some(c) => eprintln!(
                "data-parallel over {} nodes x {} replicas (this is node {})",
                c.num_nodes(),
                devices.len(),
                c.node_rank()
            ),
            None => eprintln!("data-parallel over {} replicas", devices.len()),
        }
        let model = trainer.model.clone();
        let resume = args
            .checkpoint_dir
            .as_ref()
            .filter(|_| state.step > 0)
            .map(|d| latest_checkpoint(d))
            .transpose()?
            .flatten();
        drop(trainer);
        let optimizer = OptimizerConfig::new();
        let mut group = match (resume, cluster) {
            (Some(path), cluster) => {
                DataParallel::load_checkpoint(&path, optimizer, &devices, cluster)?.0
            }
            (None, Some(cluster)) => DataParallel::join(cluster, model, optimizer, &devices)?,
            (None, None) => DataParallel::new(model, optimizer, &devices)?,
        }
        .with_mixed_precision(mixed_precision)?;
        run(&mut group, &mut packer, &mut state, &options, |_, _| {})?;
        trainer = Trainer::new(group.model()?, OptimizerConfig::new());
    } else {
        run(&mut trainer, &mut packer, &mut state, &options, |_, _| {})?;
    }
    eprintln!(
        "done: {} steps, last loss {:.4}",
        state.step,
        state.losses.last().copied().unwrap_or(f64::NAN)
    );
    if let Some(out) = args.out.as_ref().filter(|_| leader) {
        let model = trainer.model.valid();
        model.save(out, &SaveOptions::default().with_dtype(SaveDtype::F32))?;
        match &tokenizer {
            Some(tokenizer) => tokenizer.save_json(out.join("tokenizer.json"))?,
            None => eprintln!("no --tokenizer given: the export has no tokenizer.json"),
        }
        plot_loss_curve(&state.losses, out.join("loss.png"), "pre-training loss")?;
        eprintln!(
            "exported to {} (config.json, model.safetensors, tokenizer.json, loss.png)",
            out.display()
        );
    }
    if let Some(log) = log {
        eprintln!("per-step log: {}", log.display());
    }
    Ok(())
}

/// burn-communication installs an INFO-level log subscriber (several lines per step) unless the
/// program has one: install a quieter one first (`RUST_LOG` when set, warnings otherwise).
fn quiet_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

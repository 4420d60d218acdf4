//! Training throughput benchmark: tokens/s, MFU and peak memory per optimiser step, random
//! weights and random tokens.
//!
//! ```text
//! cargo run --release --example train_bench -- --config benches/internlm2-140m.json \
//!     --seq-len 512 --batch 4 --steps 3 [--json]
//! ```
//!
//! MFU = training FLOPs per token (`6 N` + attention, see `train::metrics`) x tokens/s over
//! the measured f32 matmul throughput of the same device (reported as `peak_flops`).

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use internlm2::backends::{Cpu, CpuAutodiff};
use internlm2::train::metrics::{measure_matmul_flops, train_flops_per_token};
use internlm2::train::{InMemoryDocuments, OptimizerConfig, Packer, PackingConfig, Trainer};
use internlm2::{InternLM2, InternLM2Config};

#[derive(Parser)]
#[command(about = "Training tokens/s, MFU and peak memory of an InternLM2 shape")]
struct Args {
    /// HuggingFace config.json of the model shape.
    #[arg(long, default_value = "benches/internlm2-140m.json")]
    config: PathBuf,
    /// Tokens per row.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Rows per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// One JSON line instead of a table.
    #[arg(long)]
    json: bool,
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn main() {
    if let Err(e) = bench(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn bench(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = InternLM2Config::from_hf_file(&args.config)?;
    let device = Default::default();
    let peak = measure_matmul_flops::<Cpu>(&device, 1024);
    let model = InternLM2::<CpuAutodiff>::init(&config, &device);
    let vocab = config.vocab_size as u32;
    let documents: Vec<Vec<u32>> = (0..64u32)
        .map(|d| {
            (0..2000u32)
                .map(|i| 3 + (d * 7919 + i * 104_729) % (vocab - 3))
                .collect()
        })
        .collect();
    let mut packer = Packer::new(
        InMemoryDocuments::new(documents),
        PackingConfig {
            seq_len: args.seq_len,
            eos_id: 2,
            cross_document_attention: false,
        },
    );
    let mut trainer = Trainer::new(model, OptimizerConfig::new());
    trainer.step(&[packer.next_batch(args.batch)], 1e-4)?; // warm-up
    let start = Instant::now();
    for _ in 0..args.steps {
        trainer.step(&[packer.next_batch(args.batch)], 1e-4)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let tokens = (args.steps * args.batch * args.seq_len) as f64;
    let tokens_per_s = tokens / seconds;
    let mfu = train_flops_per_token(&config, args.seq_len) * tokens_per_s / peak;
    let rss = peak_rss_bytes();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "train_tokens_per_s": tokens_per_s,
                "step_seconds": seconds / args.steps as f64,
                "mfu": mfu,
                "peak_flops": peak,
                "peak_memory_bytes": rss,
                "parameters": config.num_parameters(),
                "seq_len": args.seq_len,
                "batch": args.batch,
                "device": format!("cpu ({threads} threads)"),
                "dtype": "f32",
            })
        );
    } else {
        println!(
            "| model | params | seq | batch | step (s) | tokens/s | MFU | measured f32 matmul peak | peak RSS |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {:.1}M | {} | {} | {:.2} | {:.0} | {:.1}% | {:.1} GFLOP/s | {} |",
            args.config.display(),
            config.num_parameters() as f64 / 1e6,
            args.seq_len,
            args.batch,
            seconds / args.steps as f64,
            tokens_per_s,
            100.0 * mfu,
            peak / 1e9,
            rss.map_or("?".into(), |b| format!(
                "{:.0} MiB",
                b as f64 / (1 << 20) as f64
            )),
        );
    }
    Ok(())
}

//! Training throughput benchmark: tokens/s, MFU and peak memory per optimiser step, random
//! weights and random tokens.
//!
//! ```text
//! cargo run --release --example train_bench -- --config benches/internlm2-140m.json \
//!     --seq-len 512 --batch 4 --steps 3 [--device cpu] [--dtype auto] [--peak-flops F] [--json]
//! # on a GPU build (--features cuda): --config benches/internlm2-1_8b.json --seq-len 4096
//! #   --device cuda:0 (bf16 compute with f32 master weights by default)
//! ```
//!
//! MFU = training FLOPs per token (`6 N` + attention, see `train::metrics`) x tokens/s over
//! `--peak-flops` (e.g. the card's dense bf16 datasheet figure), or by default over the
//! measured square-matmul throughput of the same device in the compute dtype (reported as
//! `peak_flops`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::DType;
use clap::Parser;
use internlm2::backends::Kernels;
use internlm2::backends::device::{BackendTask, DTypeChoice, DeviceSpec};
use internlm2::backends::limits::measure_matmul_flops_in;
use internlm2::backends::program::exit_code;
use internlm2::{InternLM2, InternLM2Config};
use internlm2_train::metrics::train_flops_per_token;
use internlm2_train::{InMemoryDocuments, OptimizerConfig, Packer, PackingConfig, Trainer};

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
    /// Device: cpu, cuda[:N], wgpu, tch:cpu, tch:cuda[:N] (its feature compiled in).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Compute dtype: auto (bf16 on CUDA, f32 elsewhere), f32 or bf16 (f32 master weights).
    #[arg(long, default_value = "auto")]
    dtype: DTypeChoice,
    /// Peak FLOP/s the MFU is stated against (default: measured matmul peak in the dtype).
    #[arg(long)]
    peak_flops: Option<f64>,
    /// One JSON line instead of a table.
    #[arg(long)]
    json: bool,
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn main() -> ExitCode {
    exit_code(bench(Args::parse()))
}

/// Timed training steps on one backend: (seconds, measured matmul peak).
struct Steps {
    config: InternLM2Config,
    dtype: DType,
    seq_len: usize,
    batch: usize,
    steps: usize,
    /// The device is the host CPU (a smaller matmul probe for the peak).
    host: bool,
}

impl BackendTask for Steps {
    type Output = Result<(f64, f64), internlm2_train::TrainError>;

    fn run<B: Kernels>(self, device: B::Device) -> Self::Output {
        let cpu = self.host;
        let peak = measure_matmul_flops_in::<B>(&device, if cpu { 1024 } else { 8192 }, self.dtype);
        let model = InternLM2::<Autodiff<B>>::init(&self.config, &device);
        let compute = (self.dtype != DType::F32).then_some(self.dtype);
        let mut trainer = Trainer::new(model, OptimizerConfig::new()).with_mixed_precision(compute);
        let mut packer = packer(&self.config, self.seq_len);
        trainer.step(&[packer.next_batch(self.batch)], 1e-4)?; // warm-up
        let start = Instant::now();
        for _ in 0..self.steps {
            trainer.step(&[packer.next_batch(self.batch)], 1e-4)?; // the loss syncs the device
        }
        Ok((start.elapsed().as_secs_f64(), peak))
    }
}

/// Random documents packed into rows.
fn packer(config: &InternLM2Config, seq_len: usize) -> Packer<InMemoryDocuments> {
    let vocab = config.vocab_size as u32;
    let documents: Vec<Vec<u32>> = (0..64u32)
        .map(|d| {
            (0..2000u32)
                .map(|i| 3 + (d * 7919 + i * 104_729) % (vocab - 3))
                .collect()
        })
        .collect();
    Packer::new(
        InMemoryDocuments::new(documents),
        PackingConfig {
            seq_len,
            eos_id: 2,
            cross_document_attention: false,
        },
    )
}

fn bench(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let config = InternLM2Config::from_hf_file(&args.config)?;
    let dtype = args.dtype.resolve(&args.device);
    let (seconds, measured_peak) = args.device.run(Steps {
        config: config.clone(),
        dtype,
        seq_len: args.seq_len,
        batch: args.batch,
        steps: args.steps,
        host: args.device.is_host(),
    })??;
    let peak = args.peak_flops.unwrap_or(measured_peak);
    let tokens = (args.steps * args.batch * args.seq_len) as f64;
    let tokens_per_s = tokens / seconds;
    let mfu = train_flops_per_token(&config, args.seq_len) * tokens_per_s / peak;
    let rss = peak_rss_bytes();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let device_name = match args.device {
        DeviceSpec::Cpu => format!("cpu ({threads} threads)"),
        other => other.to_string(),
    };
    let dtype_name = format!("{dtype:?}").to_lowercase();
    let peak_name = if args.peak_flops.is_some() {
        "stated peak"
    } else {
        "measured matmul peak"
    };
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
                "device": device_name,
                "dtype": dtype_name,
            })
        );
    } else {
        println!(
            "| model | params | device | dtype | seq | batch | step (s) | tokens/s | MFU | {peak_name} | peak RSS |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {:.1}M | {} | {} | {} | {} | {:.2} | {:.0} | {:.1}% | {:.1} GFLOP/s | {} |",
            args.config.display(),
            config.num_parameters() as f64 / 1e6,
            device_name,
            dtype_name,
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

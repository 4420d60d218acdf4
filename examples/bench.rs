//! Inference benchmark on random weights: prefill and decode throughput and peak memory.
//!
//! ```text
//! cargo run --release --example bench -- --config benches/internlm2-140m.json \
//!     --prompt-len 512 --new-tokens 64 --batch 1 [--device cpu] [--dtype auto] [--json] \
//!     [--quant f32|f16|bf16|q8_0|q4_0|q4_k] [--head-format q6_k] [--embedding-format q8_0]
//! # on a GPU build (cargo ... --features cuda): --device cuda:0 (bf16 by default)
//! ```
//!
//! Prefill runs the whole `[batch, prompt_len]` prompt through the model with the KV cache
//! (logits of the last position only, as generation needs). It runs twice: the first, in a
//! fresh process, is the warm-up (reported as `first prefill`: it pays the page faults of new
//! buffers and the thread pool's start) and the second is timed as `prefill`, the steady state
//! of a running server and what `llama-bench` times after its own warm-up. Decode then produces
//! `new_tokens` tokens per row one step at a time (greedy, argmax on the device). Peak memory
//! is the process's peak resident set (VmHWM), weights included.
//!
//! `--quant` packs the random weights (see `internlm2::quant`; under a 4-bit body the embedding
//! table and the LM head stay at Q8_0 unless `--head-format` / `--embedding-format` say
//! otherwise); activations stay f32.
//!
//! `--model PATH` times a real checkpoint instead of random weights: a HuggingFace directory
//! (packed on load as `--quant` says), one of our quantized checkpoints, an AWQ directory or a
//! `.gguf` file (used as stored: the same bytes llama.cpp reads, for side-by-side runs); the
//! shape comes from the checkpoint and `--config` is not needed.
//!
//! `--limits` also measures the device's read bandwidth and matmul throughput in the compute
//! dtype (the better of burn's matmul and the kernel layer's `dense` on square matrices) and prints each figure next to its physical limit: decode reads every weight once
//! per step (`batch x bandwidth / weight bytes`, the bytes the weights take in their stored
//! format, or `matmul peak / 2 x params` when compute binds first), prefill needs `2 x (params - embedding - LM head) + 2 x layers x hidden x
//! prompt` FLOPs per token (the LM head runs for the last position only; causal attention) at
//! the measured matmul peak.
//!
//! `--long-context 4096,8192,16384,32768` instead measures prefill time and peak RSS of long
//! prompts, chunked (`--prefill-chunk`, 512 by default; `--prefill-chunk 0,512` adds the
//! whole-prompt baseline), one fresh process per length, next to the KV-cache bytes the config
//! implies (see `examples/long_context/mod.rs`).

#[path = "long_context/mod.rs"]
mod long_context;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::{DType, Int, Tensor, TensorData};
use clap::Parser;
use internlm2::backends::device::{BackendTask, DTypeChoice, DeviceSpec};
use internlm2::backends::limits::{best_of_5, measure_matmul_flops_in};
use internlm2::backends::program::exit_code;
use internlm2::backends::{Kernels, on_cpu_threads};
use internlm2::quant::{LoadOptions, QuantConfig, WeightFormat};
use internlm2::{ForwardInput, InternLM2, InternLM2Config, KvCache};

#[derive(Parser)]
#[command(about = "Prefill/decode throughput of InternLM2 with random weights")]
struct Args {
    /// HuggingFace config.json of the model shape (random weights).
    #[arg(long, required_unless_present = "model")]
    config: Option<PathBuf>,
    /// A checkpoint to time instead of random weights: HuggingFace directory, quantized or AWQ
    /// checkpoint, or `.gguf` file.
    #[arg(long, conflicts_with = "config")]
    model: Option<PathBuf>,
    /// Prompt tokens per row.
    #[arg(long, default_value_t = 512)]
    prompt_len: usize,
    /// Tokens generated per row.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Rows.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Device: cpu, cuda[:N], wgpu, vulkan, tch:cpu, tch:cuda[:N] (its backend's feature must
    /// be compiled in).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Compute dtype: auto (bf16 on CUDA, f32 elsewhere), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    dtype: DTypeChoice,
    /// Weight storage: f32 (dense, the default), f16, bf16, q8_0, q4_0 or q4_k.
    #[arg(long, default_value = "f32")]
    quant: QuantConfig,
    /// Override the LM head's format (e.g. q6_k, q8_0, f16).
    #[arg(long)]
    head_format: Option<String>,
    /// Override the embedding table's format.
    #[arg(long)]
    embedding_format: Option<String>,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    json: bool,
    /// Also measure read bandwidth and matmul peak, and print the fraction of each limit.
    #[arg(long)]
    limits: bool,
    /// Long-context prefill: prompt lengths, each measured in a fresh process.
    #[arg(long, value_delimiter = ',')]
    long_context: Option<Vec<usize>>,
    /// Prefill chunks of the long-context measurement (0 = the whole prompt at once).
    #[arg(long, value_delimiter = ',', default_value = "512")]
    prefill_chunk: Vec<usize>,
    /// Internal: one long-context measurement in this process (prints one JSON line).
    #[arg(long, hide = true)]
    long_context_one: Option<usize>,
}

/// Peak resident set size of this process in bytes (Linux), if known.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() -> ExitCode {
    exit_code(run(Args::parse()))
}

/// What one backend measured.
struct Measured {
    prefill_s: f64,
    /// The warm-up prefill: the same prompt, the process's first (cold) one.
    first_prefill_s: f64,
    decode_s: f64,
    /// Bytes of weights a decoding step reads (the stored format's).
    weight_bytes: usize,
    /// The packed layers' formats with their counts (`q4_k x30, q6_k x11`), or `dense`.
    formats: String,
    /// Read bandwidth in bytes/s and matmul throughput in FLOP/s, with `--limits`.
    limits: Option<(f64, f64)>,
}

/// Prefill and decode on one backend.
struct Measure {
    config: InternLM2Config,
    /// Load this checkpoint instead of initialising random weights.
    model: Option<PathBuf>,
    dtype: DType,
    quant: QuantConfig,
    ids: Vec<i64>,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    limits: bool,
    /// The device is the host CPU (smaller probes for the limits).
    host: bool,
}

/// Read bandwidth (a sum over a large tensor: bytes read per second, what a decode step's
/// weight reads need) and the best square-matmul FLOP/s of two sizes, in `dtype`.
fn device_limits<B: Kernels>(device: &B::Device, dtype: DType, cpu: bool) -> (f64, f64) {
    let elements = if cpu { 1 << 26 } else { 1 << 30 };
    let x = Tensor::<B, 1>::ones([elements], device).cast(dtype);
    let read_s = best_of_5::<B>(device, || {
        let _ = x.clone().sum();
    });
    let bandwidth = elements as f64 * dtype.size() as f64 / read_s;
    let sizes = if cpu { [1024, 2048] } else { [4096, 8192] };
    // The backend's matmul, and the model's own linear-layer kernel (`Kernels::dense`, the
    // panel-parallel GEMM on the CPU), whichever is faster.
    let flops = sizes
        .into_iter()
        .map(|n| {
            let x = Tensor::<B, 3>::ones([1, n, n], device).cast(dtype);
            let w = Tensor::<B, 2>::ones([n, n], device).cast(dtype);
            let dense_s = best_of_5::<B>(device, || {
                let _ = B::dense(x.clone(), w.clone(), None);
            });
            measure_matmul_flops_in::<B>(device, n, dtype).max(2.0 * (n as f64).powi(3) / dense_s)
        })
        .fold(0.0, f64::max);
    (bandwidth, flops)
}

impl BackendTask for Measure {
    type Output = Result<Measured, String>;

    fn run<B: Kernels>(self, device: B::Device) -> Result<Measured, String> {
        let cpu = self.host;
        let limits = self
            .limits
            .then(|| device_limits::<B>(&device, self.dtype, cpu));
        let (b, p, n) = (self.batch, self.prompt_len, self.new_tokens);
        let model = match &self.model {
            Some(path) => {
                let options = LoadOptions::new(self.dtype).with_quant(self.quant);
                InternLM2::<B>::load_with(path, &options, &device).map_err(|e| e.to_string())?
            }
            None => InternLM2::<B>::init_with_dtype(&self.config, self.dtype, &device)
                .quantize(&self.quant)
                .map_err(|e| e.to_string())?,
        };
        let weight_bytes = model.weight_bytes_per_token();
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for (_, format) in model.packed_layers() {
            *counts.entry(format.name()).or_default() += 1;
        }
        let formats = if counts.is_empty() {
            "dense".to_string()
        } else {
            let parts: Vec<String> = counts.iter().map(|(f, n)| format!("{f} x{n}")).collect();
            parts.join(", ")
        };
        // Warm-up: one whole prefill of the same prompt into a cache of the same size (thread
        // pool, kernel compilation, the allocator's pages for buffers of these sizes), as
        // llama-bench warms up before it times `pp512`: the timed prefill then measures the
        // steady state a server sees, not a cold process's first page faults.
        let prompt = Tensor::<B, 2, Int>::from_data(TensorData::new(self.ids, [b, p]), &device);
        let t = Instant::now();
        {
            let mut cache = KvCache::new(&self.config, b, p + n);
            // On a thread of the CPU kernels' pool, as `generate` runs its prefill.
            let warm = prompt.clone();
            let _ = on_cpu_threads(|| {
                model
                    .forward_cache(
                        ForwardInput::new(warm).with_last_logits_only(true),
                        &mut cache,
                    )
                    .argmax(2)
                    .into_data()
            });
        }
        let first_prefill_s = t.elapsed().as_secs_f64();

        let mut cache = KvCache::new(&self.config, b, p + n);
        let t = Instant::now();
        let mut next = on_cpu_threads(|| {
            let logits = model.forward_cache(
                ForwardInput::new(prompt).with_last_logits_only(true),
                &mut cache,
            );
            let next = logits.argmax(2).reshape([b, 1]);
            let _ = next.to_data(); // wait for the device
            next
        });
        let prefill_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        for _ in 0..n {
            // Each step on a thread of the CPU kernels' pool, as `generate` runs its steps.
            next = on_cpu_threads(|| {
                let logits = model.forward_cache(
                    ForwardInput::new(next).with_last_logits_only(true),
                    &mut cache,
                );
                let next = logits.argmax(2).reshape([b, 1]);
                let _ = next.to_data();
                next
            });
        }
        Ok(Measured {
            prefill_s,
            first_prefill_s,
            decode_s: t.elapsed().as_secs_f64(),
            weight_bytes,
            formats,
            limits,
        })
    }
}

/// The model shape: from `--config`, or from the checkpoint `--model` names.
fn model_config(args: &Args) -> Result<(InternLM2Config, String), Box<dyn std::error::Error>> {
    match (&args.model, &args.config) {
        (Some(path), _) if path.is_file() => {
            let file = internlm2::checkpoint::gguf::GgufFile::open(path)?;
            Ok((
                internlm2::checkpoint::gguf::gguf_config(&file)?,
                path.display().to_string(),
            ))
        }
        (Some(dir), _) => Ok((
            InternLM2Config::from_hf_file(dir.join("config.json"))?,
            dir.display().to_string(),
        )),
        (None, Some(config)) => Ok((
            InternLM2Config::from_hf_file(config)?,
            config.display().to_string(),
        )),
        (None, None) => Err("give --config (random weights) or --model".into()),
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (config, shape_name) = model_config(&args)?;
    let dtype = args.dtype.resolve(&args.device);
    if let Some(tokens) = args.long_context_one {
        let one = long_context::One {
            config,
            dtype,
            tokens,
            chunk: args.prefill_chunk.first().copied().unwrap_or(0),
        };
        println!("{}", serde_json::to_string(&args.device.run(one)?)?);
        return Ok(());
    }
    if let Some(lengths) = &args.long_context {
        let Some(config_path) = &args.config else {
            return Err("--long-context needs --config".into());
        };
        let forward = [
            "--config".to_string(),
            config_path.display().to_string(),
            "--device".into(),
            args.device.to_string(),
            "--dtype".into(),
            format!("{dtype:?}").to_lowercase(),
        ];
        let name = config_path.display().to_string();
        return long_context::run_all(
            &config,
            &name,
            dtype,
            lengths,
            &args.prefill_chunk,
            &forward,
            &args.device.to_string(),
        );
    }
    let format = |name: &Option<String>| -> Result<Option<Option<WeightFormat>>, String> {
        match name.as_deref() {
            None => Ok(None),
            Some("f32" | "dense") => Ok(Some(None)),
            Some(n) => WeightFormat::from_name(n)
                .map(|f| Some(Some(f)))
                .ok_or_else(|| format!("unknown format `{n}`")),
        }
    };
    let mut quant = args.quant;
    if let Some(f) = format(&args.head_format)? {
        quant = quant.with_head(f);
    }
    if let Some(f) = format(&args.embedding_format)? {
        quant = quant.with_embedding(f);
    }
    let (b, p, n) = (args.batch, args.prompt_len, args.new_tokens);
    if b == 0 || p == 0 {
        return Err("--batch and --prompt-len must be at least 1".into());
    }
    let vocab = config.vocab_size as i64;
    // Deterministic pseudo-random prompt ids.
    let ids: Vec<i64> = (0..b * p)
        .map(|i| 3 + (i as i64 * 7919) % (vocab - 3))
        .collect();
    let measured = args.device.run(Measure {
        config: config.clone(),
        model: args.model.clone(),
        dtype,
        quant,
        ids,
        batch: b,
        prompt_len: p,
        new_tokens: n,
        limits: args.limits,
        host: args.device.is_host(),
    })??;

    let prefill = (b * p) as f64 / measured.prefill_s;
    let first_prefill = (b * p) as f64 / measured.first_prefill_s;
    let decode = (b * n) as f64 / measured.decode_s;
    // Physical limits (see the module docs): weights read per decode step, FLOPs per token.
    let params = config.num_parameters() as f64;
    let lookup = (config.vocab_size * config.hidden_size) as f64; // embedding rows are gathered
    let weight_bytes = measured.weight_bytes as f64;
    let limits = measured.limits.map(|(bandwidth, flops)| {
        let decode_limit =
            (b as f64 * bandwidth / weight_bytes).min(flops / (2.0 * (params - lookup)));
        // Prefill computes the LM head for the last position only.
        let attention = 2.0 * (config.num_hidden_layers * config.hidden_size * p) as f64;
        let prefill_limit = flops / (2.0 * (params - 2.0 * lookup) + attention);
        (bandwidth, flops, prefill_limit, decode_limit)
    });
    let peak = peak_rss_bytes();
    let device_name = match args.device {
        DeviceSpec::Cpu => format!(
            "cpu (burn {}, {} threads)",
            internlm2::backends::CPU_BACKEND_NAME,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        other => other.to_string(),
    };
    let dtype_name = format!("{dtype:?}").to_lowercase();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "prefill_tokens_per_s": prefill,
                "first_prefill_tokens_per_s": first_prefill,
                "decode_tokens_per_s": decode,
                "peak_memory_bytes": peak,
                "device": device_name,
                "dtype": dtype_name,
                "weights": quant.to_string(),
                "packed_layers": measured.formats,
                "model": args.model.as_ref().map(|p| p.display().to_string()),
                "weight_bytes_per_token": measured.weight_bytes,
                "batch": b,
                "prompt_len": p,
                "new_tokens": n,
                "parameters": config.num_parameters(),
                "read_bandwidth_bytes_per_s": limits.map(|l| l.0),
                "matmul_flops": limits.map(|l| l.1),
                "prefill_limit_tokens_per_s": limits.map(|l| l.2),
                "decode_limit_tokens_per_s": limits.map(|l| l.3),
            })
        );
    } else {
        println!(
            "| model | params | device | dtype | weights | batch | prompt | new | prefill tok/s | first prefill tok/s | decode tok/s | peak RSS |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {:.1}M | {} | {} | {} ({:.0} MB/token) | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} |",
            shape_name,
            config.num_parameters() as f64 / 1e6,
            device_name,
            dtype_name,
            measured.formats,
            measured.weight_bytes as f64 / 1e6,
            b,
            p,
            n,
            prefill,
            first_prefill,
            decode,
            peak.map_or("?".to_string(), |p| format!(
                "{:.0} MiB",
                p as f64 / (1 << 20) as f64
            ))
        );
        if let Some((bandwidth, flops, prefill_limit, decode_limit)) = limits {
            println!();
            println!(
                "| read bandwidth | matmul peak ({dtype_name}) | prefill limit tok/s | prefill % | decode limit tok/s | decode % |"
            );
            println!("|---|---|---|---|---|---|");
            println!(
                "| {:.1} GB/s | {:.2} TFLOP/s | {:.1} | {:.1}% | {:.1} | {:.1}% |",
                bandwidth / 1e9,
                flops / 1e12,
                prefill_limit,
                100.0 * prefill / prefill_limit,
                decode_limit,
                100.0 * decode / decode_limit
            );
        }
    }
    Ok(())
}

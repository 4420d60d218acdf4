//! Quantize an InternLM2 checkpoint and write it in our quantized layout (safetensors with the
//! packed GGUF blocks, plus config.json), which loads without re-quantizing.
//!
//! ```text
//! cargo run --release --example quantize -- --model-dir internlm2-chat-1_8b --quant q4_k \
//!     --out internlm2-chat-1_8b-q4_k [--head-format q8_0] [--embedding-format q8_0]
//! # from a GGUF file (tensors kept as stored) or an AWQ checkpoint:
//! cargo run --release --example quantize -- --model-dir model-Q4_K_M.gguf --out model-q4_k_m
//! ```
//!
//! Formats: `f16`, `bf16`, `q8_0`, `q4_0`, `q4_k` (see `docs/quantization.md`). Under a 4-bit
//! body the embedding table and the LM head stay at Q8_0 unless told otherwise. The tokenizer
//! files of the input directory are copied (a GGUF file's tokenizer is written as
//! `tokenizer.json`). Then load the result with `InternLM2::load_with(out, ...)`, or
//! `cargo run --release --example chat -- --model-dir OUT`.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::DType;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use internlm2::InternLM2;
use internlm2::backends::Cpu;
use internlm2::checkpoint::gguf::tokenizer_from_gguf;
use internlm2::quant::{LoadOptions, QuantConfig, WeightFormat, save_quantized};

#[derive(Parser)]
#[command(about = "Quantize an InternLM2 checkpoint (HF directory, GGUF file or AWQ checkpoint)")]
struct Args {
    /// HuggingFace model directory, GGUF file, or AWQ / quantized checkpoint directory.
    #[arg(long)]
    model_dir: PathBuf,
    /// Format of the decoder's linear layers: f16, bf16, q8_0, q4_0 or q4_k (ignored for inputs
    /// that are already packed).
    #[arg(long, default_value = "q8_0")]
    quant: QuantConfig,
    /// Format of the LM head (default: q8_0 under a 4-bit body, else the body's).
    #[arg(long)]
    head_format: Option<String>,
    /// Format of the embedding table (same default).
    #[arg(long)]
    embedding_format: Option<String>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

fn format(name: &Option<String>) -> Result<Option<Option<WeightFormat>>, String> {
    match name.as_deref() {
        None => Ok(None),
        Some("f32" | "dense") => Ok(Some(None)),
        Some(n) => WeightFormat::from_name(n)
            .map(|f| Some(Some(f)))
            .ok_or_else(|| format!("unknown format `{n}`")),
    }
}

fn size_of(path: &std::path::Path) -> u64 {
    if path.is_file() {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    }
    std::fs::read_dir(path)
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    name.ends_with(".safetensors")
                        || name.ends_with(".bin")
                        || name.ends_with(".gguf")
                })
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut quant = args.quant;
    if let Some(f) = format(&args.head_format)? {
        quant = quant.with_head(f);
    }
    if let Some(f) = format(&args.embedding_format)? {
        quant = quant.with_embedding(f);
    }
    let spinner = ProgressBar::new_spinner()
        .with_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}")?);
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    spinner.set_message(format!("loading {} as {quant}", args.model_dir.display()));
    let start = Instant::now();
    let options = LoadOptions::new(DType::F32).with_quant(quant);
    let model = InternLM2::<Cpu>::load_with(&args.model_dir, &options, &Default::default())?;
    let loaded = start.elapsed().as_secs_f64();
    spinner.set_message(format!("writing {}", args.out.display()));
    save_quantized(&model, &args.out)?;
    spinner.finish_and_clear();

    // Tokenizer files travel with the weights.
    if args.model_dir.is_dir() {
        for name in [
            "tokenizer.model",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "generation_config.json",
        ] {
            let from = args.model_dir.join(name);
            if from.is_file() {
                std::fs::copy(&from, args.out.join(name))?;
            }
        }
    } else {
        tokenizer_from_gguf(&args.model_dir)?.save_json(args.out.join("tokenizer.json"))?;
    }

    let layers = model.packed_layers();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for (_, f) in &layers {
        *counts.entry(f.name()).or_default() += 1;
    }
    println!(
        "| input | output | packed tensors by format | input weights | output weights | time |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:?} | {:.1} MB | {:.1} MB | {:.1} s load+quantize, {:.1} s total |",
        args.model_dir.display(),
        args.out.display(),
        counts,
        size_of(&args.model_dir) as f64 / 1e6,
        size_of(&args.out) as f64 / 1e6,
        loaded,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

//! Accuracy of the quantized formats against f32: per format, the largest logit error, the
//! top-1 agreement and the perplexity on held-out text, as a table.
//!
//! ```text
//! cargo run --release --example quickstart          # once: writes target/quickstart/model
//! cargo run --release --example quant_eval -- [--model-dir target/quickstart/model] \
//!     [--formats f16,bf16,q8_0,q4_k,q4_0] [--documents 300] [--seed 9001] [--json]
//! ```
//!
//! What is measured, exactly: the model loads once in f32 (the reference) and once per format
//! with `QuantConfig::new(format)` — the decoder's linear layers in the format, the embedding
//! table and the LM head in Q8_0 under a 4-bit body (else in the format), layers whose rows
//! are not whole blocks falling back (`effective_format`). The held-out text is `--documents`
//! stories and facts from the quickstart's corpus generator (`internlm2_datasets::synthetic`) with a seed the training did not
//! use (`--seed`), each tokenized with BOS and cut to `--max-tokens`. For every position the
//! logits of both models are compared: max-abs error (absolute, and relative to the largest
//! f32 logit), top-1 agreement (same argmax); each model's perplexity is the mean next-token negative
//! log-likelihood over every predicted position (`internlm2_eval::perplexity`, one window per
//! document).

use std::path::PathBuf;

use burn::tensor::{DType, Int, Tensor, TensorData};
use clap::Parser;
use internlm2::backends::Cpu;
use internlm2::quant::{LoadOptions, QuantConfig, WeightFormat, effective_format};
use internlm2::{InternLM2, Tokenizer};
use internlm2_datasets::synthetic;
use internlm2_eval::perplexity::{PerplexityConfig, perplexity};

#[derive(Parser)]
#[command(about = "Logit error, top-1 agreement and perplexity of each quantized format vs f32")]
struct Args {
    /// HuggingFace model directory (config.json, safetensors, tokenizer).
    #[arg(long, default_value = "target/quickstart/model")]
    model_dir: PathBuf,
    /// Formats to evaluate.
    #[arg(long, value_delimiter = ',', default_value = "f16,bf16,q8_0,q4_k,q4_0")]
    formats: Vec<String>,
    /// Held-out documents.
    #[arg(long, default_value_t = 300)]
    documents: usize,
    /// Seed of the held-out corpus (the quickstart trains on seed 42).
    #[arg(long, default_value_t = 9001)]
    seed: u64,
    /// Longest document, in tokens.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Print one JSON line per format instead of a table.
    #[arg(long)]
    json: bool,
}

/// What one model gives on the held-out text.
struct Outputs {
    /// Per document: logits `[positions, vocab]`.
    logits: Vec<Vec<f32>>,
    vocab: usize,
}

fn run_model(model: &InternLM2<Cpu>, docs: &[Vec<u32>]) -> Outputs {
    let mut logits = Vec::with_capacity(docs.len());
    let mut vocab = 0;
    for doc in docs {
        let ids: Vec<i64> = doc.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(ids, [1, doc.len()]),
            &Default::default(),
        );
        let out = model.forward(ids);
        vocab = out.dims()[2];
        logits.push(out.into_data().into_vec::<f32>().expect("f32 logits"));
    }
    Outputs { logits, vocab }
}

/// Perplexity over whole documents: one window per document, every token but the first
/// scored (`internlm2_eval::perplexity` with a window as long as the longest document).
fn whole_document_perplexity(
    model: &InternLM2<Cpu>,
    docs: &[Vec<u32>],
) -> Result<f64, internlm2_eval::EvalError> {
    let longest = docs.iter().map(Vec::len).max().unwrap_or(2);
    let config = PerplexityConfig {
        max_length: longest,
        stride: longest,
        batch_size: 16,
        progress: false,
    };
    Ok(perplexity(model, docs, &config)?.perplexity)
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
        .0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !args.model_dir.join("config.json").is_file() {
        return Err(format!(
            "{} has no config.json: run `cargo run --release --example quickstart` first, or pass --model-dir",
            args.model_dir.display()
        )
        .into());
    }
    let tokenizer = Tokenizer::from_dir(&args.model_dir)?;
    let docs: Vec<Vec<u32>> = synthetic::generate(args.documents, args.seed)
        .iter()
        .map(|text| {
            let mut ids = tokenizer.encode(text, true)?;
            ids.truncate(args.max_tokens);
            Ok(ids)
        })
        .collect::<Result<Vec<_>, internlm2::TokenizerError>>()?
        .into_iter()
        .filter(|ids| ids.len() >= 2)
        .collect();
    let positions: usize = docs.iter().map(|d| d.len()).sum();
    let device = Default::default();
    let reference = InternLM2::<Cpu>::load(&args.model_dir, DType::F32, &device)?;
    let cfg = reference.config().clone();
    let want = run_model(&reference, &docs);
    let ppl_f32 = whole_document_perplexity(&reference, &docs)?;
    let max_logit = want
        .logits
        .iter()
        .flatten()
        .fold(0f32, |m, v| m.max(v.abs()));
    if !args.json {
        println!(
            "{}: {} parameters (hidden {}, intermediate {}, {} layers); {} held-out documents (seed {}), {} positions; f32 perplexity {:.4}",
            args.model_dir.display(),
            cfg.num_parameters(),
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_hidden_layers,
            docs.len(),
            args.seed,
            positions,
            ppl_f32
        );
        println!();
        println!(
            "| format | body layers as stored | embedding / head | weights read per token | max-abs logit error | relative | top-1 agreement | perplexity | change |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        println!(
            "| f32 | f32 | f32 / f32 | {:.2} MB | 0 | 0 | 100% | {ppl_f32:.4} | - |",
            reference.weight_bytes_per_token() as f64 / 1e6
        );
    }
    for name in &args.formats {
        let quant: QuantConfig = name.parse()?;
        let model = InternLM2::<Cpu>::load_with(
            &args.model_dir,
            &LoadOptions::new(DType::F32).with_quant(quant),
            &device,
        )?;
        let got = run_model(&model, &docs);
        let mut err = 0f32;
        let (mut agree, mut total) = (0usize, 0usize);
        for (a, b) in got.logits.iter().zip(&want.logits) {
            err = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(err, f32::max);
            for (ra, rb) in a.chunks_exact(want.vocab).zip(b.chunks_exact(want.vocab)) {
                agree += (argmax(ra) == argmax(rb)) as usize;
                total += 1;
            }
        }
        let ppl = whole_document_perplexity(&model, &docs)?;
        let change = 100.0 * (ppl / ppl_f32 - 1.0);
        let body = quant.body.map(|f| {
            let shapes = [
                ("wqkv", cfg.hidden_size),
                ("wo", cfg.num_attention_heads * cfg.head_dim()),
                ("w1/w3", cfg.hidden_size),
                ("w2", cfg.intermediate_size),
            ];
            shapes
                .iter()
                .map(|(n, cols)| format!("{n} {}", effective_format(f, *cols).name()))
                .collect::<Vec<_>>()
                .join(", ")
        });
        let fmt = |f: Option<WeightFormat>| {
            f.map_or("f32".to_string(), |f| {
                effective_format(f, cfg.hidden_size).name().to_string()
            })
        };
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "format": name, "model": args.model_dir, "documents": docs.len(), "positions": positions,
                    "max_abs_logit_error": err, "relative_logit_error": err / max_logit,
                    "top1_agreement": agree as f64 / total as f64, "perplexity_f32": ppl_f32,
                    "perplexity": ppl, "perplexity_change_percent": change,
                    "weight_bytes_per_token": model.weight_bytes_per_token(),
                })
            );
        } else {
            println!(
                "| {name} | {} | {} / {} | {:.2} MB | {err:.4} | {:.4} | {:.2}% | {ppl:.4} | {change:+.3}% |",
                body.unwrap_or_else(|| "f32".into()),
                fmt(quant.embedding),
                fmt(quant.head),
                model.weight_bytes_per_token() as f64 / 1e6,
                err / max_logit,
                100.0 * agree as f64 / total as f64,
            );
        }
    }
    Ok(())
}

//! The main job: pre-train a tiny InternLM2 from scratch on this machine's CPU and talk to it.
//!
//! ```text
//! cargo run --release --example quickstart [-- --out target/quickstart --steps 300]
//! ```
//!
//! 1. runs the data pipeline (`internlm2-datasets`) on the sample web corpus and code
//!    repository shipped in `examples/data/`: format, rules, MinHash dedup, safety, quality,
//!    code dependency sorting, long-context filter, token shards; prints what each stage
//!    dropped and why (the same chain as `cargo run --release --example data_pipeline`);
//! 2. generates a small deterministic corpus (short stories and arithmetic facts) and adds the
//!    pipeline's surviving documents to it;
//! 3. trains a byte-level BPE tokenizer on it with the `tokenizers` crate;
//! 4. pre-trains a tiny InternLM2 on the CPU backend with the SDK's training engine: packed
//!    sequences, AdamW, warmup + cosine, and a two-phase context curriculum (64 tokens at RoPE
//!    base 50,000, then 128 tokens at 1,000,000), logging every step;
//! 5. saves a HuggingFace checkpoint (`config.json`, `model.safetensors`, `tokenizer.json`);
//! 6. reloads it for inference and generates text;
//! 7. fine-tunes it on a tiny synthetic instruction set (SFT, loss on assistant tokens);
//! 8. trains a reward model on synthetic preferences (focal ranking loss + log barrier);
//! 9. runs a few PPO iterations against it, printing the held-out reward before and after;
//! 10. answers a chat turn with the aligned model;
//! 11. evaluates the pre-trained model with `internlm2-eval`: perplexity on held-out stories and
//!     a small needle-in-a-haystack grid with its heatmap.
//!
//! No GPU, no downloads; a few minutes on two cores.

mod align;
mod eval;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::DType;
use clap::Parser;
use internlm2::backends::program::exit_code;
use internlm2::backends::{Cpu, CpuAutodiff};
use internlm2::checkpoint::{SaveDtype, SaveOptions};
use internlm2::generate::{GenerationConfig, generate};
use internlm2::sampling::SamplingConfig;
use internlm2::{InternLM2, InternLM2Config, Tokenizer};
use internlm2_datasets::pipeline::recipe::DataRecipe;
use internlm2_datasets::synthetic;
use internlm2_train::{
    InMemoryDocuments, OptimizerConfig, Packer, PackingConfig, Phase, RunOptions, TrainState,
    Trainer, plot_loss_curve, run,
};

#[derive(Parser)]
#[command(about = "Pre-train a tiny InternLM2 on CPU, save it, reload it and generate")]
struct Args {
    /// Output directory (checkpoints, logs, the exported model).
    #[arg(long, default_value = "target/quickstart")]
    out: PathBuf,
    /// Optimiser steps of the first (short-context) phase.
    #[arg(long, default_value_t = 400)]
    steps: usize,
    /// Documents in the generated corpus.
    #[arg(long, default_value_t = 4000)]
    documents: usize,
    /// Seed of the corpus, the model initialisation and the sampling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> ExitCode {
    exit_code(run_quickstart(Args::parse()))
}

fn run_quickstart(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let device = Default::default();
    std::fs::create_dir_all(&args.out)?;

    println!("== 1. data pipeline");
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/data");
    // Start the data steps afresh (they would otherwise resume from a previous run's files).
    let _ = std::fs::remove_dir_all(args.out.join("data"));
    let recipe = DataRecipe {
        vocab_size: 1000,
        seq_len: 256,
        progress: false,
        ..DataRecipe::sample(&sample, args.out.join("data"))
    };
    let data = recipe.run(None)?;
    for line in data.report.table().lines() {
        println!("   {line}");
    }
    println!(
        "   {} web documents and {} repository kept, {} tokens in {} packed rows ({}), {:.1}s",
        data.documents.len(),
        data.repositories.len(),
        data.tokens,
        data.rows,
        data.token_dir.display(),
        data.seconds
    );

    println!("== 2. corpus");
    let mut texts = synthetic::generate(args.documents, args.seed);
    texts.extend(data.documents.iter().map(|d| d.text.clone()));
    let chars: usize = texts.iter().map(String::len).sum();
    println!(
        "   {} documents, {} characters ({} generated with seed {}, {} from the pipeline)",
        texts.len(),
        chars,
        args.documents,
        args.seed,
        data.documents.len()
    );
    println!("   e.g. {:?}", &texts[0][..texts[0].len().min(110)]);

    println!("== 3. tokenizer");
    let t = Instant::now();
    let tokenizer = Tokenizer::train_bpe(texts.iter(), 1024)?;
    let documents: Vec<Vec<u32>> = texts
        .iter()
        .map(|text| tokenizer.encode(text, false))
        .collect::<Result<_, _>>()?;
    let tokens: usize = documents.iter().map(Vec::len).sum();
    println!(
        "   byte-level BPE, {} ids, trained in {:.1}s; corpus = {} tokens ({:.2} characters per token)",
        tokenizer.vocab_size(),
        t.elapsed().as_secs_f64(),
        tokens,
        chars as f64 / tokens as f64
    );

    println!("== 4. pre-training");
    let config = InternLM2Config::new(tokenizer.vocab_size(), 192, 512, 4, 6, 2)
        .with_max_position_embeddings(256)
        .with_rope_theta(50_000.0)
        .with_bos_token_id(tokenizer.bos_id().unwrap_or(1))
        .with_eos_token_id(tokenizer.eos_id().unwrap_or(2))
        .with_pad_token_id(tokenizer.eos_id().unwrap_or(2));
    <CpuAutodiff as burn::tensor::backend::Backend>::seed(&device, args.seed);
    let model = InternLM2::<CpuAutodiff>::init(&config, &device);
    println!(
        "   InternLM2: hidden {}, {} layers, {} heads / {} KV heads, {} parameters",
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.num_parameters()
    );
    let mut packer = Packer::new(
        InMemoryDocuments::new(documents).shuffled(args.seed),
        PackingConfig {
            seq_len: 64,
            eos_id: config.eos_token_id,
            cross_document_attention: false,
        },
    );
    let options = RunOptions {
        phases: vec![
            Phase::new("ctx64", args.steps, 64, 16, 2e-3).with_rope_theta(50_000.0),
            Phase::new("ctx128", (args.steps / 4).max(1), 128, 8, 6e-4)
                .with_rope_theta(1_000_000.0),
        ],
        checkpoint_dir: Some(args.out.join("checkpoints")),
        checkpoint_every: 100,
        keep_last: 2,
        log_path: Some(args.out.join("metrics.jsonl")),
        peak_flops: Some(internlm2::backends::limits::measure_matmul_flops::<Cpu>(
            &device, 512,
        )),
        progress: true,
        stop_at_step: None,
    };
    for phase in &options.phases {
        println!(
            "   phase {}: {} steps x {} rows x {} tokens, peak lr {:.0e}, RoPE base {}",
            phase.name,
            phase.steps,
            phase.batch_size,
            phase.seq_len,
            phase.schedule.peak_lr,
            phase.rope_theta.unwrap_or(config.rope_theta)
        );
    }
    let _ = std::fs::remove_file(args.out.join("metrics.jsonl"));
    let _ = std::fs::remove_dir_all(args.out.join("checkpoints"));
    let mut trainer = Trainer::new(model, OptimizerConfig::new());
    let mut state = TrainState::new(args.seed);
    let t = Instant::now();
    let mut tokens_seen = 0usize;
    run(
        &mut trainer,
        &mut packer,
        &mut state,
        &options,
        |record, _| {
            tokens_seen += record.tokens;
            if record.step % 50 == 0 || record.step == 1 {
                eprintln!(
                    "   step {:>4} [{}] loss {:.3} lr {:.2e} grad-norm {:.2} {:.0} tok/s",
                    record.step,
                    record.phase,
                    record.loss,
                    record.lr,
                    record.grad_norm,
                    record.tokens_per_s
                );
            }
        },
    )?;
    let seconds = t.elapsed().as_secs_f64();
    let losses = &state.losses;
    let head: f64 = losses.iter().take(10).sum::<f64>() / losses.len().min(10) as f64;
    let tail: f64 = losses.iter().rev().take(10).sum::<f64>() / losses.len().min(10) as f64;
    println!(
        "   {} steps, {} tokens in {:.0}s ({:.0} tok/s); loss {:.3} (first 10 steps) -> {:.3} (last 10)",
        state.step,
        tokens_seen,
        seconds,
        tokens_seen as f64 / seconds,
        head,
        tail
    );
    let curve = args.out.join("loss.png");
    plot_loss_curve(losses, &curve, "quickstart pre-training loss")?;
    println!(
        "   loss curve: {}; per-step log: {}",
        curve.display(),
        args.out.join("metrics.jsonl").display()
    );

    println!("== 5. export");
    let export = args.out.join("model");
    let trained = trainer.model.valid();
    trained.save(&export, &SaveOptions::default().with_dtype(SaveDtype::F32))?;
    tokenizer.save_json(export.join("tokenizer.json"))?;
    let bytes: u64 = std::fs::read_dir(&export)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "   HuggingFace layout in {} ({:.1} MB)",
        export.display(),
        bytes as f64 / 1e6
    );

    println!("== 6. reload and generate");
    let model = InternLM2::<Cpu>::load(&export, DType::F32, &device)?;
    let tokenizer = Tokenizer::from_dir(&export)?;
    let prompts = [
        "Once upon a time, Lily",
        "Tom and Mia walked to the",
        "7 plus 5 is",
    ];
    let greedy = GenerationConfig::default()
        .with_sampling(SamplingConfig::greedy())
        .with_stop_token_ids(tokenizer.eos_id().into_iter().collect())
        .with_max_new_tokens(48);
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tokenizer.encode(p, true))
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    let outputs = generate(&model, Some(&tokenizer), ids, &greedy, |_| true)?;
    let generated: usize = outputs.iter().map(|o| o.tokens.len()).sum();
    for (prompt, out) in prompts.iter().zip(&outputs) {
        println!("   {prompt}|{}", out.text.as_deref().unwrap_or_default());
    }
    println!(
        "   ({} prompts batched, {} tokens in {:.2}s, greedy)",
        prompts.len(),
        generated,
        t.elapsed().as_secs_f64()
    );
    let sampled = greedy.with_sampling(
        SamplingConfig::default()
            .with_temperature(0.8)
            .with_top_p(0.95)
            .with_seed(args.seed),
    );
    let out = generate(
        &model,
        Some(&tokenizer),
        vec![tokenizer.encode("Once upon a time", true)?],
        &sampled,
        |_| true,
    )?;
    println!(
        "   sampled (T 0.8, top-p 0.95): Once upon a time|{}",
        out[0].text.as_deref().unwrap_or_default()
    );
    align::run(&export, &args.out, args.seed)?;
    eval::run(&export, &args.out, args.seed)?;
    println!("== done in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

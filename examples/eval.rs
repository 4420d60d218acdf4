//! Evaluate a checkpoint: perplexity, needle in a haystack, GSM8K, MMLU, HumanEval.
//!
//! ```text
//! cargo run --release --example eval -- ppl --model-dir DIR --data corpus.jsonl --out runs/eval
//! cargo run --release --example eval -- niah --model-dir DIR --data haystack/ --out runs/niah \
//!     [--task single|multi:3|passkey] [--lengths 1000,2000,4000] [--depths 0,10,21,...] \
//!     [--repeats 3] [--language en|zh] [--needles needles.jsonl] [--scoring keyword]
//! cargo run --release --example eval -- gsm8k --model-dir DIR --data test.jsonl --shots train.jsonl --out runs/eval
//! cargo run --release --example eval -- mmlu --model-dir DIR --data mmlu/test --shots mmlu/dev --out runs/eval
//! cargo run --release --example eval -- humaneval --model-dir DIR --data HumanEval.jsonl --out runs/eval
//! ```
//!
//! Common flags: `--device cpu|cuda:0|...`, `--dtype auto|f32|bf16`, `--batch N`,
//! `--prefill-chunk N` (bounded memory for long prompts), `--format chat|raw` (default: chat
//! when the tokenizer has the chat tokens), `--limit N` (benchmarks), `--context-limit N`.
//! Results land in `--out` (JSON lines, a summary JSON, the needle heatmap PNG); reruns resume.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use internlm2::backends::Kernels;
use internlm2::backends::device::{DTypeChoice, DeviceSpec};
use internlm2::backends::program::{Program, ProgramResult, run_program};
use internlm2::prefill::DEFAULT_PREFILL_CHUNK;
use internlm2::{InternLM2, Tokenizer};
use internlm2_eval::bench::{BenchConfig, BenchSummary, Gsm8k, HumanEval, Mmlu, run_benchmark};
use internlm2_eval::exec::{PythonRunner, SandboxedPython};
use internlm2_eval::niah::{
    self, Haystack, Language, NeedleConfig, NeedleTask, Scoring, default_needles, load_needles,
};
use internlm2_eval::perplexity::{PerplexityConfig, perplexity};
use internlm2_eval::text::read_texts;
use internlm2_eval::{EngineGenerator, Generator, ModelGenerator, PromptFormat};
use internlm2_serve::engine::{Engine, EngineConfig};

#[derive(Parser)]
#[command(about = "Evaluate an InternLM2 checkpoint")]
struct Args {
    #[command(subcommand)]
    task: Command,
    /// HuggingFace model directory (config.json, safetensors, tokenizer.model or tokenizer.json).
    #[arg(long, global = true)]
    model_dir: Option<PathBuf>,
    /// Input data: text for ppl, the haystack for niah, the test split for benchmarks.
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// Output directory.
    #[arg(long, global = true, default_value = "target/eval")]
    out: PathBuf,
    /// Device: cpu, cuda[:N], wgpu, vulkan, tch:cpu, tch:cuda[:N].
    #[arg(long, global = true, default_value = "cpu")]
    device: DeviceSpec,
    /// Compute dtype: auto, f32, bf16, f16.
    #[arg(long, global = true, default_value = "auto")]
    dtype: DTypeChoice,
    /// Prompts (or windows) per forward pass.
    #[arg(long, global = true, default_value_t = 1)]
    batch: usize,
    /// Prefill prompts in chunks of this many tokens.
    #[arg(long, global = true)]
    prefill_chunk: Option<usize>,
    /// Prompt format: chat or raw (default: chat when the tokenizer has the chat tokens).
    #[arg(long, global = true)]
    format: Option<PromptFormat>,
    /// Context limit in tokens (default: max_position_embeddings x the RoPE scaling factor).
    #[arg(long, global = true)]
    context_limit: Option<usize>,
    /// Generate through the serving engine (continuous batching, paged KV cache, prefix
    /// caching); --batch is then the number of prompts submitted together.
    #[arg(long, global = true)]
    engine: bool,
    /// KV-cache pool of the engine, MiB.
    #[arg(long, global = true, default_value_t = 4096)]
    kv_memory_mb: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Sliding-window perplexity.
    Ppl {
        /// Tokens per window.
        #[arg(long, default_value_t = 2048)]
        max_length: usize,
        /// Tokens between window starts.
        #[arg(long, default_value_t = 1024)]
        stride: usize,
    },
    /// Needle in a haystack.
    Niah {
        /// single, multi[:N] or passkey.
        #[arg(long, default_value = "single")]
        task: NeedleTask,
        /// Context lengths in tokens.
        #[arg(long, value_delimiter = ',', default_value = "1000,2000,4000,8000")]
        lengths: Vec<usize>,
        /// Depth percents (default: OpenCompass's 0,10,21,...,94,100).
        #[arg(long, value_delimiter = ',')]
        depths: Option<Vec<f64>>,
        /// Repeats per cell (seeds seed..seed+repeats).
        #[arg(long, default_value_t = 1)]
        repeats: usize,
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Template language: en or zh.
        #[arg(long, default_value = "en")]
        language: Language,
        /// Needles JSONL (OpenCompass's needles.jsonl layout or {needle, question, keyword}).
        #[arg(long)]
        needles: Option<PathBuf>,
        /// keyword, keyword-or-levenshtein or levenshtein.
        #[arg(long, default_value = "keyword")]
        scoring: Scoring,
        /// Tokens kept free for the template and the answer.
        #[arg(long, default_value_t = 200)]
        length_buffer: usize,
        /// Tokens per answer.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// Insert at the exact token point instead of the previous sentence end.
        #[arg(long)]
        no_snap: bool,
    },
    /// GSM8K, 4-shot multi-turn.
    Gsm8k {
        /// JSONL whose first four records are the examples (usually the train split).
        #[arg(long)]
        shots: PathBuf,
        /// Only the first N items.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// MMLU, 5-shot per subject.
    Mmlu {
        /// The dev split (file or directory).
        #[arg(long)]
        shots: PathBuf,
        /// Only the first N items.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// HumanEval, 0-shot pass@1.
    Humaneval {
        /// Only the first N problems.
        #[arg(long)]
        limit: Option<usize>,
        /// Seconds per problem.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
        /// Python interpreter.
        #[arg(long, default_value = "python3")]
        python: String,
        /// Run the tests in a plain `python3 -I` subprocess instead of the sandboxed
        /// interpreter of internlm2-agent.
        #[arg(long)]
        no_sandbox: bool,
    },
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    run_program(Args::parse())
}

impl Program for Args {
    fn device(&self) -> DeviceSpec {
        self.device
    }

    fn run<B: Kernels>(self, device: B::Device) -> ProgramResult {
        run::<B>(self, device)
    }
}

fn required<'a>(value: &'a Option<PathBuf>, flag: &str) -> Res<&'a PathBuf> {
    value
        .as_ref()
        .ok_or_else(|| format!("--{flag} is required").into())
}

fn run<B: Kernels>(args: Args, device: B::Device) -> Res<()> {
    let model_dir = required(&args.model_dir, "model-dir")?;
    let data = required(&args.data, "data")?;
    let dtype = args.dtype.resolve(&args.device);
    let started = Instant::now();
    let model = InternLM2::<B>::load(model_dir, dtype, &device)?;
    let tokenizer = Tokenizer::from_dir(model_dir)?;
    eprintln!(
        "loaded {} ({:.1}M parameters, {dtype:?}) in {:.1}s",
        model_dir.display(),
        model.config().num_parameters() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let format = args
        .format
        .unwrap_or_else(|| PromptFormat::for_tokenizer(&tokenizer));
    let started = Instant::now();
    if let Command::Ppl { max_length, stride } = args.task {
        let texts = read_texts(data)?;
        let documents: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| tokenizer.encode(t, true))
            .collect::<Result<_, _>>()?;
        let config = PerplexityConfig {
            max_length,
            stride,
            batch_size: args.batch,
            progress: true,
        };
        let report = perplexity(&model, &documents, &config)?;
        std::fs::create_dir_all(&args.out)?;
        let path = args.out.join("perplexity.json");
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        println!(
            "| data | documents | windows | tokens scored | window / stride | mean NLL | perplexity |"
        );
        println!("|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} | {} | {} | {} / {} | {:.4} | {:.3} |",
            data.display(),
            report.documents,
            report.windows,
            report.tokens,
            report.max_length,
            report.stride,
            report.mean_nll,
            report.perplexity
        );
        println!("written: {}", path.display());
        eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
        return Ok(());
    }
    let mut generator: Box<dyn Generator + '_> = if args.engine {
        let tokenizer = Arc::new(tokenizer.clone());
        let config = EngineConfig::new()
            .with_kv_memory_bytes(args.kv_memory_mb << 20)
            .with_prefill_chunk(args.prefill_chunk.unwrap_or(DEFAULT_PREFILL_CHUNK));
        let engine = Engine::start(model, Some(tokenizer.clone()), config)?;
        let mut generator = EngineGenerator::new(engine, tokenizer).with_batch_size(args.batch);
        if let Some(limit) = args.context_limit {
            generator = generator.with_context_limit(limit);
        }
        Box::new(generator)
    } else {
        let mut generator = ModelGenerator::new(&model, &tokenizer)
            .with_batch_size(args.batch)
            .with_prefill_chunk(args.prefill_chunk);
        if let Some(limit) = args.context_limit {
            generator = generator.with_context_limit(limit);
        }
        Box::new(generator)
    };
    match args.task {
        // Handled above, before any generator exists.
        Command::Ppl { .. } => {}
        Command::Niah {
            task,
            lengths,
            depths,
            repeats,
            seed,
            language,
            needles,
            scoring,
            length_buffer,
            max_new_tokens,
            no_snap,
        } => {
            let texts = read_texts(data)?;
            let haystack = Haystack::new(&tokenizer, &texts)?;
            let needles = match &needles {
                Some(path) => load_needles(path, language)?,
                None => default_needles(language),
            };
            let config = NeedleConfig {
                lengths,
                depths: depths.unwrap_or_else(niah::opencompass_depths),
                repeats,
                seed,
                length_buffer,
                task,
                language,
                scoring,
                max_new_tokens,
                sentence_snap: !no_snap,
                format,
                progress: true,
                title: model_dir
                    .file_name()
                    .map_or("model".into(), |n| n.to_string_lossy().into_owned()),
            };
            eprintln!(
                "haystack: {} documents, {} tokens",
                texts.len(),
                haystack.total_tokens()
            );
            let summary = niah::run_grid(&mut *generator, &haystack, &needles, &config, &args.out)?;
            print_heatmap(&summary.heatmap);
            println!(
                "{} cells ({} run now, {} resumed); results {}, heatmap {}",
                summary.cells,
                summary.ran,
                summary.skipped,
                summary.results.display(),
                summary.plot.display()
            );
        }
        Command::Gsm8k { shots, limit } => {
            let task = Gsm8k::load(data, &shots)?;
            let summary = bench(&mut *generator, &task, limit, format, &args.out)?;
            print_bench(&summary);
        }
        Command::Mmlu { shots, limit } => {
            let task = Mmlu::load(data, &shots)?;
            let summary = bench(&mut *generator, &task, limit, format, &args.out)?;
            print_bench(&summary);
        }
        Command::Humaneval {
            limit,
            timeout,
            python,
            no_sandbox,
        } => {
            let timeout = std::time::Duration::from_secs_f64(timeout);
            let task = if no_sandbox {
                HumanEval::load(
                    data,
                    PythonRunner {
                        program: python,
                        timeout,
                    },
                )?
            } else {
                let runner = SandboxedPython::start(&python, timeout)?;
                eprintln!("sandbox:\n{}", runner.sandbox_report());
                HumanEval::load(data, runner)?
            };
            let summary = bench(&mut *generator, &task, limit, format, &args.out)?;
            print_bench(&summary);
        }
    }
    eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn bench<G: Generator + ?Sized, T: internlm2_eval::bench::Task>(
    generator: &mut G,
    task: &T,
    limit: Option<usize>,
    format: PromptFormat,
    out: &std::path::Path,
) -> Res<BenchSummary> {
    let config = BenchConfig {
        limit,
        format,
        progress: true,
        ..BenchConfig::default()
    };
    Ok(run_benchmark(generator, task, &config, out)?)
}

fn print_bench(summary: &BenchSummary) {
    println!("| task | items | correct | accuracy |");
    println!("|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.2} |",
        summary.task, summary.items, summary.correct, summary.accuracy
    );
    for (subject, score) in &summary.subjects {
        println!(
            "| {}/{subject} | {} | {} | {:.2} |",
            summary.task, score.items, score.correct, score.accuracy
        );
    }
    if let Some(mean) = summary.subject_mean {
        println!("| {} (mean of subjects) | | | {mean:.2} |", summary.task);
    }
    println!("records: {}", summary.records.display());
}

fn print_heatmap(h: &niah::Heatmap) {
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    print!("| depth \\ length |");
    for l in &h.lengths {
        print!(" {l} |");
    }
    println!();
    println!("|---|{}", "---|".repeat(h.lengths.len()));
    for (depth, row) in h.depths.iter().zip(&h.scores) {
        print!("| {depth}% |");
        for v in row {
            print!(" {} |", cell(*v));
        }
        println!();
    }
    print!("| mean |");
    for m in &h.length_means {
        print!(" {} |", m.map_or("-".into(), |m| format!("{m:.1}")));
    }
    println!();
    println!(
        "overall score: {}",
        h.overall.map_or("n/a".into(), |o| format!("{o:.2}"))
    );
}

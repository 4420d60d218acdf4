//! Math word problems with the code interpreter, in InternLM2's official setting (the MATH
//! interpreter prompt, answers in `\boxed{}`, at most 5 turns), scored by exact match after
//! normalisation.
//!
//! ```text
//! cargo run --release --example math_agent -- --model-dir internlm2-chat-7b \
//!     --data problems.jsonl [--out results.jsonl] [--limit 100] [--max-turns 5]
//!     [--temperature 0] [--max-new-tokens 512] [--timeout 20] [--device cpu]
//! ```
//!
//! `problems.jsonl` holds `{"problem": ..., "answer": ...}` lines (e.g. the MATH test set);
//! each result line (`--out`) holds the prediction, the score and the whole transcript.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use internlm2::backends::Kernels;
use internlm2::backends::device::{DTypeChoice, DeviceSpec};
use internlm2::backends::program::{Program, ProgramResult, run_program};
use internlm2::generate::GenerationConfig;
use internlm2::sampling::SamplingConfig;
use internlm2::{InternLM2, Tokenizer};
use internlm2_agent::math::{MATH_MAX_TURNS, MathRunner, read_problems};
use internlm2_agent::{CodeInterpreter, InterpreterConfig, ModelGenerator};

#[derive(Parser)]
#[command(about = "MATH with the code interpreter, InternLM2's official agent setting")]
struct Args {
    /// HuggingFace model directory (config.json, safetensors, tokenizer.model).
    #[arg(long)]
    model_dir: PathBuf,
    /// JSONL of {"problem", "answer"}.
    #[arg(long)]
    data: PathBuf,
    /// Where to write one JSON record per problem.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only the first N problems.
    #[arg(long)]
    limit: Option<usize>,
    /// Most model turns per problem (the official setting: 5).
    #[arg(long, default_value_t = MATH_MAX_TURNS)]
    max_turns: usize,
    /// Sampling temperature (0 = greedy; the official script samples at 0.1).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Most tokens per model turn (the official setting: 512).
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Wall-clock limit of one code cell, in seconds.
    #[arg(long, default_value_t = 20.0)]
    timeout: f64,
    /// Device: cpu, cuda[:N], wgpu, vulkan, tch:cpu, tch:cuda[:N] (its feature compiled in).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Compute dtype: auto (bf16 on CUDA, f32 elsewhere), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    dtype: DTypeChoice,
}

fn main() -> ExitCode {
    run_program(Args::parse())
}

/// The body, generic over the backend `--device` names.
impl Program for Args {
    fn device(&self) -> DeviceSpec {
        self.device
    }

    fn run<B: Kernels>(self, device: B::Device) -> ProgramResult {
        run::<B>(self, device)
    }
}

fn run<B: Kernels>(args: Args, device: B::Device) -> Result<(), Box<dyn std::error::Error>> {
    let mut problems = read_problems(&args.data)?;
    if let Some(limit) = args.limit {
        problems.truncate(limit);
    }
    let dtype = args.dtype.resolve(&args.device);
    let model = InternLM2::<B>::load(&args.model_dir, dtype, &device)?;
    let tokenizer = Tokenizer::from_dir(&args.model_dir)?;
    let generation = GenerationConfig::default()
        .with_sampling(SamplingConfig::default().with_temperature(args.temperature))
        .with_max_new_tokens(args.max_new_tokens);
    let generator = ModelGenerator::new(&model, &tokenizer, generation)?;
    let interpreter = CodeInterpreter::start(
        InterpreterConfig::default().with_timeout(Duration::from_secs_f64(args.timeout)),
    )?;
    eprintln!("sandbox:\n{}", interpreter.sandbox_report());
    let mut runner = MathRunner::new(generator, interpreter).with_max_turns(args.max_turns);

    let mut out = match &args.out {
        Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => None,
    };
    let bar = ProgressBar::new(problems.len() as u64).with_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
    )?);
    let mut correct = 0usize;
    let mut write_error = None;
    let report = runner.run(&problems, |record| {
        correct += usize::from(record.correct);
        bar.inc(1);
        bar.set_message(format!(
            "accuracy {:.1}%",
            100.0 * correct as f64 / bar.position() as f64
        ));
        if let Some(out) = out.as_mut()
            && write_error.is_none()
        {
            let line = serde_json::to_string(record).expect("records serialise");
            if let Err(e) = writeln!(out, "{line}") {
                write_error = Some(e);
            }
        }
    })?;
    bar.finish();
    if let Some(e) = write_error {
        return Err(e.into());
    }
    if let Some(mut out) = out {
        out.flush()?;
    }
    println!(
        "problems {}  correct {}  accuracy {:.2}%  without a boxed answer {}",
        report.total,
        report.correct,
        100.0 * report.accuracy(),
        report.unanswered
    );
    Ok(())
}

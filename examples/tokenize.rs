//! Tokenises a JSONL file with an InternLM2 tokenizer.
//!
//! ```text
//! cargo run --release --example tokenize -- TOKENIZER_PATH IN_JSONL OUT_JSONL
//! ```
//!
//! `TOKENIZER_PATH` is a `tokenizer.model`, a `tokenizer.json` or a model directory. Each input
//! line is `{"text": ...}`; each output line is `{"text": ..., "ids": [...]}` with BOS first.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use internlm2::Tokenizer;
use internlm2::backends::program::exit_code;

#[derive(Parser)]
#[command(about = "Tokenise {\"text\"} JSONL lines into {\"text\", \"ids\"} lines")]
struct Args {
    /// tokenizer.model, tokenizer.json or a directory holding one.
    tokenizer: PathBuf,
    /// Input JSONL, one {"text": ...} per line.
    input: PathBuf,
    /// Output JSONL.
    output: PathBuf,
    /// Do not prepend BOS.
    #[arg(long)]
    no_bos: bool,
}

fn main() -> ExitCode {
    exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let tokenizer = if args.tokenizer.is_dir() {
        Tokenizer::from_dir(&args.tokenizer)?
    } else {
        Tokenizer::from_file(&args.tokenizer)?
    };
    let input = std::io::BufReader::new(std::fs::File::open(&args.input)?);
    let mut output = BufWriter::new(std::fs::File::create(&args.output)?);
    let (mut lines, mut tokens) = (0usize, 0usize);
    let start = std::time::Instant::now();
    for (number, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| format!("{}:{}: {e}", args.input.display(), number + 1))?;
        let text = record["text"].as_str().ok_or_else(|| {
            format!(
                "{}:{}: no \"text\" string",
                args.input.display(),
                number + 1
            )
        })?;
        let ids = tokenizer.encode(text, !args.no_bos)?;
        tokens += ids.len();
        lines += 1;
        serde_json::to_writer(&mut output, &serde_json::json!({"text": text, "ids": ids}))?;
        output.write_all(b"\n")?;
    }
    output.flush()?;
    eprintln!(
        "{lines} lines, {tokens} tokens in {:.2}s -> {}",
        start.elapsed().as_secs_f64(),
        args.output.display()
    );
    Ok(())
}

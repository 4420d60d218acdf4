//! The pre-training data pipeline of SPEC 5 end to end on the sample corpus shipped in
//! `examples/data/` (planted exact and near duplicates, junk, blocked domains and words,
//! advertisements, a small code repository with an import cycle):
//!
//! ```text
//! cargo run --release --example data_pipeline                 # sample corpus -> target/data_pipeline
//! cargo run --release --example data_pipeline -- --corpus my_shards/ --code my_repo/ \
//!     --tokenizer path/to/tokenizer.model --seq-len 4096 --output out/
//! ```
//!
//! Every step is restartable: run it again and finished shards are skipped (`--fresh` starts
//! over). The report is printed as a table and saved as `<output>/report.json`. The chain is
//! the library's recipe, [`DataRecipe`].

use std::path::PathBuf;
use std::process::ExitCode;

use burn::tensor::DType;
use clap::Parser;
use internlm2::backends::Cpu;
use internlm2::backends::program::exit_code;
use internlm2::{InternLM2, Tokenizer};
use internlm2_datasets::pipeline::recipe::DataRecipe;
use internlm2_datasets::stages::long_context::{ContextScorer, ModelScorer};

#[derive(Parser, Debug)]
#[command(about = "Run the InternLM2 data pipeline on a corpus and a code repository")]
struct Args {
    /// Text shards (a directory of .jsonl/.jsonl.gz/.jsonl.zst/.parquet files, or one file).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// A code repository directory.
    #[arg(long)]
    code: Option<PathBuf>,
    /// Blocked domains, one per line.
    #[arg(long)]
    blocked_domains: Option<PathBuf>,
    /// Blocked words, one per line.
    #[arg(long)]
    blocked_words: Option<PathBuf>,
    /// Labelled JSONL ({"text", "label"}) for the advertisement classifier.
    #[arg(long)]
    ad_train: Option<PathBuf>,
    /// Drop documents with an advertisement score above this (on the sample corpus the adverts
    /// score above 0.9 and the French and German articles, a language the training lines lack,
    /// about 0.6).
    #[arg(long, default_value_t = 0.8)]
    ad_max: f32,
    /// Output directory.
    #[arg(long, default_value = "target/data_pipeline")]
    output: PathBuf,
    /// Tokenizer file or directory; a byte-level BPE is trained on the kept text when absent.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Vocabulary size of the trained tokenizer.
    #[arg(long, default_value_t = 2000)]
    vocab_size: usize,
    /// Tokens per packed row.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Minimum bytes of a long-context document (SPEC 5: 32K).
    #[arg(long, default_value_t = 32 * 1024)]
    long_min_bytes: usize,
    /// InternLM2 checkpoint directory (config.json, safetensors, tokenizer) that scores the
    /// perplexity-difference filter of the long-context step.
    #[arg(long)]
    scorer_model: Option<PathBuf>,
    /// Delete the output directory first.
    #[arg(long)]
    fresh: bool,
}

fn main() -> ExitCode {
    exit_code(run(Args::parse()))
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/data");
    let sample = args.corpus.is_none();
    let pick = |given: Option<PathBuf>, default: &str| {
        given.or_else(|| sample.then(|| data.join(default)))
    };
    if args.fresh && args.output.exists() {
        std::fs::remove_dir_all(&args.output)?;
    }
    let recipe = DataRecipe {
        corpus: args.corpus.unwrap_or_else(|| data.join("corpus")),
        code: pick(args.code, "code/tinyrepo"),
        blocked_domains: pick(args.blocked_domains, "safety/blocked_domains.txt"),
        blocked_words: pick(args.blocked_words, "safety/blocked_words.txt"),
        ad_train: pick(args.ad_train, "quality/ad_train.jsonl"),
        ad_max: args.ad_max,
        output: args.output.clone(),
        tokenizer: args.tokenizer,
        vocab_size: args.vocab_size,
        seq_len: args.seq_len,
        long_min_bytes: args.long_min_bytes,
        progress: true,
    };
    // The perplexity-difference filter of the long-context step, with a model to score it.
    let scorer: Option<Box<dyn ContextScorer>> = match &args.scorer_model {
        Some(dir) => {
            let model = InternLM2::<Cpu>::load(dir, DType::F32, &Default::default())?;
            Some(Box::new(ModelScorer::new(
                model,
                Tokenizer::from_dir(dir)?,
                1024,
            )))
        }
        None => None,
    };
    let summary = recipe.run(scorer)?;
    println!("\n{}", summary.report.table());
    println!(
        "kept {} documents and {} repository document(s); packed {} tokens into {} rows of {} in {}",
        summary.documents.len(),
        summary.repositories.len(),
        summary.tokens,
        summary.rows,
        recipe.seq_len,
        summary.token_dir.display()
    );
    if let Some(repo) = summary.repositories.first() {
        let files: Vec<&str> = repo.metadata["files"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        println!(
            "repository {} in dependency order: {}",
            repo.id,
            files.join(" -> ")
        );
    }
    println!(
        "counts add up: {}; report: {}; {:.1} s",
        summary.report.check(),
        args.output.join("report.json").display(),
        summary.seconds
    );
    Ok(())
}

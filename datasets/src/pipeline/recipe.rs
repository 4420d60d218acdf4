//! The whole data chain of SPEC 5 as one recipe, on a directory of JSONL/Parquet shards and a
//! code repository: text pipeline (format, rules, MinHash dedup, safety, quality), code
//! pipeline (quality tiers, code-aware dedup, dependency-sorted markdown), the long-context
//! filter, and tokenisation into packed token shards. The `data_pipeline` example and the
//! quickstart's first step run it.
//!
//! ```no_run
//! use internlm2_datasets::pipeline::recipe::DataRecipe;
//! let recipe = DataRecipe::new("corpus/".into(), "target/data".into())
//!     .with_code(Some("my_repo/".into()));
//! let summary = recipe.run(None)?; // no model scores the long-context step
//! println!("{}", summary.report.table());
//! # Ok::<(), internlm2_datasets::DataError>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::config::Config;
use internlm2::Tokenizer;

use crate::code::{
    CodeQualityConfig, CodeQualityStage, RepoConfig, Repository, group_repositories,
    repository_document,
};
use crate::dedup::{DedupConfig, DedupFilter, merge_signatures, write_signatures};
use crate::io::{DocumentWriter, list_shards, read_documents};
use crate::pipeline::text::TextPipelineConfig;
use crate::pipeline::{PipelineReport, StepOptions, StepReport};
use crate::stages::long_context::{ContextScorer, LongContextConfig, LongContextStage};
use crate::stages::quality::{NgramClassifier, NgramConfig, QualityConfig, Threshold};
use crate::stages::safety::SafetyConfig;
use crate::tokenize::{PackConfig, pack_documents};
use crate::{Chain, DataError, Document, StageStats};

/// Inputs and settings of one run (saved as `data-recipe.json` beside its outputs; the text
/// pipeline's own settings as `recipe.json`).
///
/// [`DataRecipe::new`] takes `corpus` and `output`; the defaults are no code repository,
/// blocklists or quality model; a 2,000-id byte-level BPE trained on the kept text; rows of
/// 512 tokens; the SPEC 5 long-context floor of 32K bytes; progress bars. The builders and
/// the serde form come from burn's `#[derive(Config)]`.
#[derive(Config, Debug, PartialEq)]
pub struct DataRecipe {
    /// Directory (or file) of text shards.
    pub corpus: PathBuf,
    /// A code repository directory (optional).
    pub code: Option<PathBuf>,
    /// Blocked domains file.
    pub blocked_domains: Option<PathBuf>,
    /// Blocked words file.
    pub blocked_words: Option<PathBuf>,
    /// Labelled JSONL to train the advertisement classifier from.
    pub ad_train: Option<PathBuf>,
    /// Drop documents whose ad score is above this.
    #[config(default = 0.8)]
    pub ad_max: f32,
    /// Output directory.
    pub output: PathBuf,
    /// Tokenizer (`tokenizer.model`, `tokenizer.json` or a directory); trained when absent.
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary of a trained tokenizer.
    #[config(default = 2000)]
    pub vocab_size: usize,
    /// Tokens per packed row.
    #[config(default = 512)]
    pub seq_len: usize,
    /// Long-context floor in bytes (SPEC 5: 32K).
    #[config(default = "32 * 1024")]
    pub long_min_bytes: usize,
    /// Progress bars.
    #[config(default = true)]
    pub progress: bool,
}

impl DataRecipe {
    /// The recipe on the sample corpus of a directory laid out as the SDK's `examples/data`
    /// (`corpus/`, `code/tinyrepo`, `safety/blocked_{domains,words}.txt`,
    /// `quality/ad_train.jsonl`).
    pub fn sample(data: impl AsRef<Path>, output: impl Into<PathBuf>) -> Self {
        let data = data.as_ref();
        Self {
            code: Some(data.join("code/tinyrepo")),
            blocked_domains: Some(data.join("safety/blocked_domains.txt")),
            blocked_words: Some(data.join("safety/blocked_words.txt")),
            ad_train: Some(data.join("quality/ad_train.jsonl")),
            ..Self::new(data.join("corpus"), output.into())
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct DataSummary {
    /// Counts per step and stage.
    pub report: PipelineReport,
    /// Final text documents.
    pub documents: Vec<Document>,
    /// One markdown document per repository.
    pub repositories: Vec<Document>,
    /// Where the token shards are.
    pub token_dir: PathBuf,
    /// Packed rows written.
    pub rows: u64,
    /// Tokens packed.
    pub tokens: u64,
    /// Seconds.
    pub seconds: f64,
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Document>, DataError> {
    let mut docs = Vec::new();
    for p in paths {
        for d in read_documents(p)? {
            docs.push(d?);
        }
    }
    Ok(docs)
}

/// Run `chain` over in-memory documents, counting into a report step.
fn run_in_memory(name: &str, chain: &Chain, docs: Vec<Document>) -> (StepReport, Vec<Document>) {
    let mut stats = vec![StageStats::default(); chain.len()];
    let kept: Vec<Document> = docs
        .into_iter()
        .filter_map(|d| chain.run(d, &mut stats).ok())
        .collect();
    let report = StepReport {
        name: name.to_string(),
        shards_run: 1,
        stages: chain.names().into_iter().zip(stats).collect(),
        ..Default::default()
    };
    (report, kept)
}

/// The code pipeline on one repository directory: per-file quality tiers, code-aware
/// file-level dedup, dependency-sorted markdown (`None` when no file survives).
fn code_pipeline(
    dir: &Path,
    out: &Path,
    report: &mut PipelineReport,
) -> Result<Option<Document>, DataError> {
    let repo = Repository::from_dir(dir)?;
    let files: Vec<Document> = repo
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            Document::new(f.text.clone())
                .with_id(format!("{}/{}#{i}", f.repo, f.path))
                .with_meta("repo", f.repo.clone())
                .with_meta("path", f.path.clone())
        })
        .collect();
    // File-level dedup with the code-aware tokenisation (indentation does not matter).
    let cfg = DedupConfig::code();
    let sig = out.join("code/files.minhash");
    std::fs::create_dir_all(out.join("code")).map_err(|source| DataError::Io {
        path: out.join("code"),
        source,
    })?;
    write_signatures(&cfg, &files, &sig)?;
    let plan = Arc::new(merge_signatures(&cfg, &[sig])?);
    let chain = Chain::new()
        .add(CodeQualityStage::new(CodeQualityConfig::default())?)
        .add(DedupFilter::new(plan));
    let (step, kept) = run_in_memory("code_files", &chain, files);
    report.push(step);
    // The surviving files (metadata `repo`, `path`, `sample_weight`) regrouped into their repository.
    let grouping = group_repositories(kept, &RepoConfig::default());
    if let Some((doc, reason)) = grouping.rejected.first() {
        return Err(DataError::config(format!("code file {}: {reason}", doc.id)));
    }
    Ok(grouping
        .repositories
        .first()
        .map(|repo| repository_document(repo, &RepoConfig::default())))
}

impl DataRecipe {
    /// Runs the whole chain; `scorer` (e.g. a
    /// [`ModelScorer`](crate::stages::long_context::ModelScorer)) adds the perplexity-difference
    /// filter to the long-context step. Restartable: finished shards of every step are kept.
    pub fn run(&self, scorer: Option<Box<dyn ContextScorer>>) -> Result<DataSummary, DataError> {
        run(self, scorer)
    }
}

fn run(
    args: &DataRecipe,
    scorer: Option<Box<dyn ContextScorer>>,
) -> Result<DataSummary, DataError> {
    let started = Instant::now();
    let opts = StepOptions::new(args.output.clone()).with_progress(args.progress);
    let inputs = list_shards(&args.corpus)?;

    // Quality: train the advertisement classifier from labelled lines (no download).
    let mut quality = None;
    if let Some(train) = &args.ad_train {
        let model = NgramClassifier::train_jsonl(train, NgramConfig::new("ad".into()))?;
        let path = args.output.join("models/ad.json");
        std::fs::create_dir_all(args.output.join("models")).map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })?;
        model.save_json(&path)?;
        quality = Some(QualityConfig::default().with_model(path, Threshold::Max(args.ad_max)));
    }
    let mut safety = SafetyConfig::default();
    if let Some(p) = &args.blocked_domains {
        safety = safety.with_domain_blocklist(Some(p.clone()));
    }
    if let Some(p) = &args.blocked_words {
        safety = safety.with_word_blocklist(Some(p.clone()));
    }
    let text = TextPipelineConfig::default()
        .with_safety(Some(safety))
        .with_quality(quality);
    std::fs::create_dir_all(&args.output).map_err(|source| DataError::Io {
        path: args.output.clone(),
        source,
    })?;
    let recipe = args.output.join("recipe.json");
    std::fs::write(
        &recipe,
        serde_json::to_vec_pretty(&text).unwrap_or_default(),
    )
    .map_err(|source| DataError::Io {
        path: recipe,
        source,
    })?;
    let whole = args.output.join("data-recipe.json");
    std::fs::write(&whole, serde_json::to_vec_pretty(args).unwrap_or_default()).map_err(
        |source| DataError::Io {
            path: whole,
            source,
        },
    )?;
    let out = text.run(&inputs, &opts)?;
    let mut report = out.report;
    let documents = read_all(&out.outputs)?;

    let mut repositories = Vec::new();
    if let Some(dir) = &args.code {
        repositories.extend(code_pipeline(dir, &args.output, &mut report)?);
    }

    // Long context: only documents of at least `long_min_bytes` go to the long-context set.
    let long = Chain::new().add(LongContextStage::new(
        LongContextConfig::default().with_min_bytes(args.long_min_bytes),
        scorer,
    ));
    let (step, long_docs) = run_in_memory(
        "long_context",
        &long,
        documents.iter().chain(&repositories).cloned().collect(),
    );
    report.push(step);
    if !long_docs.is_empty() {
        let mut w = DocumentWriter::create(args.output.join("long_context/part-00000.jsonl.zst"))?;
        for d in &long_docs {
            w.write(d)?;
        }
        w.finish()?;
    }

    // Tokenise and pack everything that survived.
    let tokenizer = match &args.tokenizer {
        Some(p) if p.is_dir() => Tokenizer::from_dir(p)?,
        Some(p) => Tokenizer::from_file(p)?,
        None => {
            let texts: Vec<&str> = documents
                .iter()
                .chain(&repositories)
                .map(|d| d.text.as_str())
                .collect();
            let tok = Tokenizer::train_bpe(texts.into_iter(), args.vocab_size)?;
            tok.save_json(args.output.join("tokenizer.json"))?;
            tok
        }
    };
    let token_dir = args.output.join("tokens");
    let pack = PackConfig::default().with_seq_len(args.seq_len);
    let stats = pack_documents(
        &tokenizer,
        documents.iter().chain(&repositories).cloned(),
        &pack,
        &token_dir,
        "train-00000",
    )?;
    let summary = DataSummary {
        report,
        documents,
        repositories,
        token_dir,
        rows: stats.rows,
        tokens: stats.tokens,
        seconds: started.elapsed().as_secs_f64(),
    };
    summary.report.save_json(args.output.join("report.json"))?;
    Ok(summary)
}

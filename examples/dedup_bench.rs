//! MinHash-LSH deduplication benchmark: signature and merge (LSH + clustering) throughput on a
//! synthetic corpus, against datatrove's MinHash stages on the same corpus.
//!
//! ```text
//! pip install datatrove spacy orjson regex tokenizers "xxhash<4"   # for the baseline
//! cargo run --release --example dedup_bench -- [--mb 100] [--threads 1,all] [--repeat 3] [--python python3]
//! ```
//!
//! The corpus is deterministic (seeded): documents of 150-1,200 words drawn from a Zipf
//! distribution over 30,000 synthetic alphabetic words, in sentences with capitals and
//! punctuation; 6% are exact copies of an earlier document, 10% near copies (0.5-3% of the
//! words replaced: true Jaccard ~0.75-0.97) and 4% distant copies (10-15% replaced, J < 0.5).
//! It is written as JSONL (`id`, `text`, `timestamp`) for both sides.
//!
//! Ours, once per `--threads` value (a child process with `RAYON_NUM_THREADS` set): parse the
//! JSONL, write one signature file per shard ([`write_signatures`]), merge them
//! ([`merge_signatures`]). datatrove (`scripts/datatrove_minhash_bench.py`, one task at a time):
//! signature stage (reads the JSONL itself), buckets stage, cluster stage, with the same 128
//! permutations (32 buckets x 4) and 5-grams, once with its default English word tokenizer
//! (spaCy) and once with `str.split` (its best case). MB = 10^6 bytes of document text.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use internlm2::backends::program::exit_code;
use internlm2_datasets::Document;
use internlm2_datasets::dedup::{DedupConfig, merge_signatures, shingles, write_signatures};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "MinHash-LSH dedup throughput vs datatrove")]
struct Args {
    /// Corpus size in MB of text (at least 100 for the reported numbers).
    #[arg(long, default_value_t = 100)]
    mb: usize,
    /// Thread counts to measure ours with (comma separated; each runs in a child process).
    #[arg(long, default_value = "1,all", value_delimiter = ',')]
    threads: Vec<String>,
    /// Signature files (shards) the corpus is split into.
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// Python interpreter with datatrove installed.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Runs of our side per thread count; the fastest is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Skip the datatrove baseline.
    #[arg(long)]
    no_datatrove: bool,
    /// Also time the whole text pipeline (format, rules, dedup, safety, quality) end to end
    /// on the same corpus, with 1 thread and with all of them.
    #[arg(long)]
    pipeline: bool,
    /// Work directory (corpus, signature files, datatrove's files).
    #[arg(long, default_value = "target/dedup_bench")]
    dir: PathBuf,
    /// Internal: run only our side on `<dir>/corpus.jsonl` and print one JSON line.
    #[arg(long, hide = true)]
    ours_only: bool,
}

/// Our timings of one run.
#[derive(Debug, Serialize, Deserialize)]
struct OursResult {
    threads: usize,
    docs: u64,
    text_bytes: u64,
    parse_s: f64,
    signature_s: f64,
    merge_s: f64,
    exact_removed: u64,
    near_removed: u64,
    /// Planted near copies with true J >= 0.7 whose copy or original was removed.
    high_found: u64,
    /// Planted copies with true J < 0.6 that were removed.
    low_removed: u64,
}

/// A planted near or distant copy and its true Jaccard similarity to the original.
#[derive(Debug, Serialize, Deserialize)]
struct PlantedPair {
    original: String,
    copy: String,
    jaccard: f64,
}

/// datatrove's timings (the script's JSON line).
#[derive(Debug, Deserialize)]
struct DatatroveResult {
    datatrove: String,
    tokenizer: String,
    docs: u64,
    text_bytes: u64,
    signature_s: f64,
    buckets_s: f64,
    cluster_s: f64,
    removed: u64,
}

fn main() -> ExitCode {
    exit_code(run(Args::parse()))
}

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

fn run(args: Args) -> BoxResult<()> {
    std::fs::create_dir_all(&args.dir)?;
    let corpus = args.dir.join("corpus.jsonl");
    if args.ours_only {
        let result = run_ours(&corpus, &args.dir, args.shards, args.repeat)?;
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }

    let start = Instant::now();
    let planted = generate_corpus(&corpus, args.mb * 1_000_000)?;
    println!(
        "corpus: {} docs, {:.1} MB of text ({} exact copies, {} near copies with J >= 0.7, \
         {} copies with J < 0.6) in {:.1}s -> {}",
        planted.docs,
        planted.text_bytes as f64 / 1e6,
        planted.exact,
        planted.near_high,
        planted.near_low,
        start.elapsed().as_secs_f64(),
        corpus.display()
    );

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut ours = Vec::new();
    for t in &args.threads {
        let threads = if t == "all" { cores } else { t.parse()? };
        let out = Command::new(std::env::current_exe()?)
            .args(["--ours-only", "--shards", &args.shards.to_string()])
            .args(["--repeat", &args.repeat.to_string(), "--dir"])
            .arg(&args.dir)
            .env("RAYON_NUM_THREADS", threads.to_string())
            .output()?;
        if !out.status.success() {
            return Err(
                format!("child run failed: {}", String::from_utf8_lossy(&out.stderr)).into(),
            );
        }
        let stdout = String::from_utf8(out.stdout)?;
        let line = stdout.lines().last().ok_or("child printed nothing")?;
        ours.push(serde_json::from_str::<OursResult>(line)?);
    }

    let mut baseline = Vec::new();
    if !args.no_datatrove {
        for tokenizer in ["spacy", "split"] {
            match run_datatrove(&args, &corpus, tokenizer) {
                Ok(r) => baseline.push(r),
                Err(e) => println!("datatrove ({tokenizer}) did not run: {e}"),
            }
        }
    }
    print_table(&ours, &baseline, &planted);
    if args.pipeline {
        run_pipeline(&corpus, &args.dir, args.shards, cores)?;
    }
    Ok(())
}

/// The whole text recipe of `data_pipeline` (sample blocklists, an advertisement classifier
/// trained from the sample labels) over the corpus split into shards, timed per step.
fn run_pipeline(corpus: &Path, dir: &Path, shards: usize, cores: usize) -> BoxResult<()> {
    use internlm2_datasets::io::{DocumentWriter, read_documents};
    use internlm2_datasets::pipeline::StepOptions;
    use internlm2_datasets::pipeline::text::TextPipelineConfig;
    use internlm2_datasets::stages::quality::{
        NgramClassifier, NgramConfig, QualityConfig, Threshold,
    };
    use internlm2_datasets::stages::safety::SafetyConfig;

    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/data");
    let work = dir.join("pipeline");
    let _ = std::fs::remove_dir_all(&work);
    // Split the corpus into shards (not timed).
    let mut writers = (0..shards.max(1))
        .map(|i| DocumentWriter::create(work.join(format!("in/part-{i:05}.jsonl"))))
        .collect::<Result<Vec<_>, _>>()?;
    let (mut docs, mut bytes) = (0u64, 0u64);
    for (i, doc) in read_documents(corpus)?.enumerate() {
        let doc = doc?;
        docs += 1;
        bytes += doc.text.len() as u64;
        let n = writers.len();
        writers[i % n].write(&doc)?;
    }
    let inputs = writers
        .into_iter()
        .map(|w| w.finish())
        .collect::<Result<Vec<_>, _>>()?;
    let ad = NgramClassifier::train_jsonl(
        data.join("quality/ad_train.jsonl"),
        NgramConfig::new("ad".into()),
    )?;
    ad.save_json(work.join("ad.json"))?;
    let recipe = TextPipelineConfig::default()
        .with_safety(Some(
            SafetyConfig::default()
                .with_domain_blocklist(Some(data.join("safety/blocked_domains.txt")))
                .with_word_blocklist(Some(data.join("safety/blocked_words.txt"))),
        ))
        .with_quality(Some(
            QualityConfig::default().with_model(work.join("ad.json"), Threshold::Max(0.8)),
        ));
    let mb = bytes as f64 / 1e6;
    println!(
        "\nend-to-end text pipeline on {docs} docs, {mb:.1} MB, {} shards",
        inputs.len()
    );
    println!("| threads | step | seconds | MB/s (of the input) | docs/s | kept after the step |");
    println!("|---|---|---|---|---|---|");
    for threads in [1, cores] {
        let out = work.join(format!("out-{threads}"));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let started = Instant::now();
        let result = pool.install(|| recipe.run(&inputs, &StepOptions::new(out.clone())))?;
        let total = started.elapsed().as_secs_f64();
        for step in &result.report.steps {
            println!(
                "| {threads} | {} | {:.2} | {:.1} | {:.0} | {} |",
                step.name,
                step.seconds,
                mb / step.seconds,
                docs as f64 / step.seconds,
                step.kept()
            );
        }
        println!(
            "| {threads} | **all** | {total:.2} | {:.1} ({:.1} per core) | {:.0} | {} |",
            mb / total,
            mb / total / threads as f64,
            docs as f64 / total,
            result.report.steps.last().map_or(0, |s| s.kept())
        );
        if threads == cores {
            break;
        }
    }
    Ok(())
}

/// Ground truth of the generated corpus.
struct Planted {
    docs: u64,
    text_bytes: u64,
    exact: u64,
    near_high: u64,
    near_low: u64,
    pairs: Vec<PlantedPair>,
}

/// A Zipf(1) sampler over `n` ranks (inverse CDF by binary search).
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Self {
        let mut acc = 0.0;
        let cdf = (0..n)
            .map(|r| {
                acc += 1.0 / (r as f64 + 2.0);
                acc
            })
            .collect::<Vec<_>>();
        let total = acc;
        Self {
            cdf: cdf.into_iter().map(|c| c / total).collect(),
        }
    }

    fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// 30,000 distinct alphabetic words of 1-4 syllables (letters only: datatrove normalises digits).
fn vocabulary(rng: &mut StdRng) -> Vec<String> {
    const ONSETS: &[&str] = &[
        "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
        "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr",
    ];
    const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "ou", "io", "y"];
    let mut seen = std::collections::HashSet::new();
    let mut words = Vec::new();
    while words.len() < 30_000 {
        let syllables = 1 + rng.random_range(0..4);
        let mut w = String::new();
        for _ in 0..syllables {
            w.push_str(ONSETS[rng.random_range(0..ONSETS.len())]);
            w.push_str(VOWELS[rng.random_range(0..VOWELS.len())]);
        }
        if rng.random_bool(0.3) {
            w.push(['n', 's', 't', 'r', 'l'][rng.random_range(0..5)]);
        }
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    words
}

fn write_words(words: &[usize], vocab: &[String], rng: &mut StdRng) -> String {
    let mut text = String::with_capacity(words.len() * 8);
    let mut sentence_left = 0;
    for &w in words {
        let word = &vocab[w];
        if sentence_left == 0 {
            if !text.is_empty() {
                text.push_str(if rng.random_bool(0.2) { ".\n" } else { ". " });
            }
            sentence_left = rng.random_range(8..20);
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                text.extend(first.to_uppercase());
                text.push_str(chars.as_str());
            }
        } else {
            text.push_str(if rng.random_bool(0.08) { ", " } else { " " });
            text.push_str(word);
        }
        sentence_left -= 1;
    }
    text.push('.');
    text
}

fn generate_corpus(path: &Path, target_bytes: usize) -> BoxResult<Planted> {
    let mut rng = StdRng::seed_from_u64(20_240_101);
    let vocab = vocabulary(&mut rng);
    let zipf = Zipf::new(vocab.len());
    let cfg = DedupConfig::default();
    let jaccard = |a: &str, b: &str| {
        let a: std::collections::HashSet<u64> = shingles(a, &cfg).into_iter().collect();
        let b: std::collections::HashSet<u64> = shingles(b, &cfg).into_iter().collect();
        a.intersection(&b).count() as f64 / a.union(&b).count().max(1) as f64
    };
    let mut originals: Vec<(Vec<usize>, String, String)> = Vec::new();
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    let mut planted = Planted {
        docs: 0,
        text_bytes: 0,
        exact: 0,
        near_high: 0,
        near_low: 0,
        pairs: Vec::new(),
    };
    while (planted.text_bytes as usize) < target_bytes {
        let roll: f64 = rng.random();
        let id = format!("doc-{:07}", planted.docs);
        let text = if originals.len() > 10 && roll < 0.20 {
            let (words, text, original) = &originals[rng.random_range(0..originals.len())];
            if roll < 0.06 {
                planted.exact += 1;
                text.clone()
            } else {
                let rate = if roll < 0.16 {
                    rng.random_range(0.005..0.03)
                } else {
                    rng.random_range(0.10..0.15)
                };
                let copy: Vec<usize> = words
                    .iter()
                    .map(|&w| {
                        if rng.random_bool(rate) {
                            zipf.sample(&mut rng)
                        } else {
                            w
                        }
                    })
                    .collect();
                let copy = write_words(&copy, &vocab, &mut rng);
                let j = jaccard(text, &copy);
                if j >= 0.7 {
                    planted.near_high += 1;
                } else if j < 0.6 {
                    planted.near_low += 1;
                }
                let pair = PlantedPair {
                    original: original.clone(),
                    copy: id.clone(),
                    jaccard: j,
                };
                planted.pairs.push(pair);
                copy
            }
        } else {
            let n = rng.random_range(150..1200);
            let words: Vec<usize> = (0..n).map(|_| zipf.sample(&mut rng)).collect();
            let text = write_words(&words, &vocab, &mut rng);
            originals.push((words, text.clone(), id.clone()));
            text
        };
        let doc = Document::new(text)
            .with_id(id)
            .with_timestamp(rng.random_range(1_600_000_000..1_700_000_000));
        planted.text_bytes += doc.text.len() as u64;
        planted.docs += 1;
        serde_json::to_writer(&mut out, &doc)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    let pairs = path.with_file_name("planted.json");
    std::fs::write(pairs, serde_json::to_string(&planted.pairs)?)?;
    Ok(planted)
}

fn run_ours(corpus: &Path, dir: &Path, shards: usize, repeat: usize) -> BoxResult<OursResult> {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Each phase is timed `repeat` times and the fastest run is reported (the machine may be
    // shared); the outcome is the same every time.
    let (mut parse_s, mut signature_s, mut merge_s) = (f64::MAX, f64::MAX, f64::MAX);
    let mut last = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let mut docs = Vec::new();
        for line in BufReader::new(std::fs::File::open(corpus)?).lines() {
            docs.push(serde_json::from_str::<Document>(&line?)?);
        }
        parse_s = parse_s.min(t.elapsed().as_secs_f64());

        let cfg = DedupConfig::default();
        let per_shard = docs.len().div_ceil(shards.max(1));
        let t = Instant::now();
        let mut files = Vec::new();
        for (i, shard) in docs.chunks(per_shard.max(1)).enumerate() {
            let path = dir.join(format!("shard-{i:05}.minhash"));
            write_signatures(&cfg, shard, &path)?;
            files.push(path);
        }
        signature_s = signature_s.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let plan = merge_signatures(&cfg, &files)?;
        merge_s = merge_s.min(t.elapsed().as_secs_f64());
        last = Some((docs, plan));
    }
    let (docs, plan) = last.ok_or("no run")?;
    let text_bytes = docs.iter().map(|d| d.text.len() as u64).sum();
    let pairs: Vec<PlantedPair> = serde_json::from_str(&std::fs::read_to_string(
        corpus.with_file_name("planted.json"),
    )?)?;
    let removed = |id: &str| plan.is_removed(id).is_some();
    let high_found = pairs
        .iter()
        .filter(|p| p.jaccard >= 0.7 && (removed(&p.original) || removed(&p.copy)))
        .count() as u64;
    let low_removed = pairs
        .iter()
        .filter(|p| p.jaccard < 0.6 && removed(&p.copy))
        .count() as u64;
    Ok(OursResult {
        threads,
        docs: docs.len() as u64,
        text_bytes,
        parse_s,
        signature_s,
        merge_s,
        exact_removed: plan.stats().exact_removed,
        near_removed: plan.stats().near_removed,
        high_found,
        low_removed,
    })
}

fn run_datatrove(args: &Args, corpus: &Path, tokenizer: &str) -> BoxResult<DatatroveResult> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/datatrove_minhash_bench.py");
    let out = Command::new(&args.python)
        .arg(script)
        .arg("--input")
        .arg(corpus)
        .arg("--workdir")
        .arg(args.dir.join(format!("datatrove-{tokenizer}")))
        .args(["--tokenizer", tokenizer])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(format!(
            "{last} {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
        .into());
    }
    Ok(serde_json::from_str(last)?)
}

fn print_table(ours: &[OursResult], baseline: &[DatatroveResult], planted: &Planted) {
    println!();
    println!(
        "| run | threads | read+signature MB/s | read+signature docs/s | LSH+cluster s | total MB/s | total MB/s per core | removed |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut per_core_ours = None;
    for r in ours {
        let mb = r.text_bytes as f64 / 1e6;
        // The signature stage includes parsing the JSONL, as datatrove's does.
        let sig = r.parse_s + r.signature_s;
        let total = sig + r.merge_s;
        let per_core = mb / total / r.threads as f64;
        if r.threads == 1 {
            per_core_ours = Some(per_core);
        }
        println!(
            "| internlm2-datasets (parse {:.2}s + sign {:.2}s) | {} | {:.1} | {:.0} | {:.2} | {:.1} | {:.1} | {} exact + {} near |",
            r.parse_s,
            r.signature_s,
            r.threads,
            mb / sig,
            r.docs as f64 / sig,
            r.merge_s,
            mb / total,
            per_core,
            r.exact_removed,
            r.near_removed
        );
    }
    for b in baseline {
        let mb = b.text_bytes as f64 / 1e6;
        let lsh = b.buckets_s + b.cluster_s;
        let total = b.signature_s + lsh;
        println!(
            "| datatrove {} ({} tokenizer) | 1 | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            b.datatrove,
            b.tokenizer,
            mb / b.signature_s,
            b.docs as f64 / b.signature_s,
            lsh,
            mb / total,
            mb / total,
            b.removed
        );
    }
    if let Some(ours) = per_core_ours {
        for b in baseline {
            let dt = b.text_bytes as f64 / 1e6 / (b.signature_s + b.buckets_s + b.cluster_s);
            println!(
                "per-core ratio vs datatrove ({} tokenizer): {:.1}x (signature + LSH + cluster, one core each)",
                b.tokenizer,
                ours / dt
            );
        }
    }
    for r in ours.iter().take(1) {
        println!(
            "ours: {} of {} planted near copies with true J >= 0.7 found; {} of {} copies with \
             J < 0.6 removed",
            r.high_found, planted.near_high, r.low_removed, planted.near_low
        );
    }
    println!(
        "planted: {} exact copies, {} near copies with true J >= 0.7, {} copies with J < 0.6 \
         (datatrove does not verify candidates: a J < 0.6 pair sharing a band is removed too)",
        planted.exact, planted.near_high, planted.near_low
    );
}

//! The shard-parallel, restartable executor and the run report.
//!
//! A *step* runs a [`Chain`] of stages over every input shard and writes, per shard, the kept
//! documents, optionally the rejected ones (with `drop_stage` and `drop_reason` metadata),
//! and a statistics file. Shards run in parallel on the rayon pool; inside a shard documents go
//! through the chain in chunks processed in parallel with their order kept.
//!
//! **Restart.** A shard's statistics file `<step>/stats/<shard>.json` is written last, after
//! its output was renamed into place; a relaunch skips every shard that has one and reads its
//! counts back, so an interrupted step resumes where it stopped and the report still adds up.
//!
//! **Scale-out.** [`ShardSelection`] runs only shard `i` of every `n` (`index == i % n`), so a
//! Slurm job array (`--array=0-(n-1)`, `index = $SLURM_ARRAY_TASK_ID`) or a Kubernetes indexed
//! job (`JOB_COMPLETION_INDEX`) splits a step across machines sharing a file system; the next
//! step starts when all tasks of the previous one are done (`--dependency=afterok`).
//!
//! ```
//! use internlm2_datasets::{Chain, Document, io::DocumentWriter};
//! use internlm2_datasets::pipeline::{StepOptions, run_step};
//! # use internlm2_datasets::{Stage, Verdict};
//! # struct NonEmpty;
//! # impl Stage for NonEmpty {
//! #     fn name(&self) -> &str { "non_empty" }
//! #     fn apply(&self, d: Document) -> Verdict {
//! #         if d.text.is_empty() { Verdict::drop(d, "empty") } else { Verdict::Keep(d) } }
//! # }
//! let dir = tempfile::tempdir().unwrap();
//! let input = dir.path().join("in/part-0.jsonl");
//! let mut w = DocumentWriter::create(&input).unwrap();
//! for t in ["a", "", "b"] { w.write(&Document::new(t)).unwrap(); }
//! w.finish().unwrap();
//! let chain = Chain::new().add(NonEmpty);
//! let opts = StepOptions::new(dir.path().join("out"));
//! let report = run_step("filter", &chain, &[input], &opts).unwrap();
//! assert_eq!((report.stages[0].1.kept, report.stages[0].1.dropped["empty"]), (2, 1));
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use burn::config::Config;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub mod dedup;
pub mod recipe;
pub mod text;

use crate::error::IoContext;
use crate::io::{DocumentWriter, read_documents};
use crate::{Chain, DataError, Document, Result, StageStats};

/// Which shards this process runs: those with `position % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSelection {
    /// This task's index, `0..count`.
    pub index: usize,
    /// Number of tasks sharing the step.
    pub count: usize,
}

impl Default for ShardSelection {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl ShardSelection {
    /// Task `index` of `count`; a typed error when `index >= count`.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(DataError::config(format!(
                "shard selection {index} of {count}: need index < count"
            )));
        }
        Ok(Self { index, count })
    }

    /// Whether shard number `position` belongs to this task.
    pub fn selects(&self, position: usize) -> bool {
        position % self.count == self.index
    }

    /// This task's items of `all` (by position), in order.
    pub fn pick<'a, T>(&self, all: &'a [T]) -> Vec<&'a T> {
        all.iter()
            .enumerate()
            .filter(|(i, _)| self.selects(*i))
            .map(|(_, t)| t)
            .collect()
    }
}

/// Where and how a step writes. Defaults: zstd JSONL, rejects written, all shards, chunks of
/// 512, no progress bar; `output` is the argument of [`StepOptions::new`].
///
/// The builders and the serde form come from burn's `#[derive(Config)]`: a serialised form
/// names every field; [`from_partial_json`](crate::from_partial_json) reads hand-written files
/// that name only what they change.
#[derive(Config, Debug)]
pub struct StepOptions {
    /// Root output directory; a step writes under `<output>/<step name>/`.
    pub output: PathBuf,
    /// Extension of output shards (`jsonl.zst`, `jsonl`, `jsonl.gz`, `parquet`).
    #[config(default = "String::from(\"jsonl.zst\")")]
    pub extension: String,
    /// Write dropped documents to `<step>/rejects/`.
    #[config(default = true)]
    pub rejects: bool,
    /// The shards this process runs.
    #[config(default = "ShardSelection::default()")]
    pub selection: ShardSelection,
    /// Documents per parallel chunk inside a shard.
    #[config(default = 512)]
    pub chunk: usize,
    /// Show progress bars.
    #[config(default = false)]
    pub progress: bool,
}

impl StepOptions {
    /// `<output>/<step>`.
    pub fn step_dir(&self, step: &str) -> PathBuf {
        self.output.join(step)
    }
}

/// The stem of a shard file name without its data extensions (`part-0.jsonl.zst` -> `part-0`).
pub fn shard_stem(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("shard");
    for ext in [
        ".jsonl.zst",
        ".jsonl.gz",
        ".json.zst",
        ".json.gz",
        ".jsonl",
        ".json",
        ".parquet",
    ] {
        if let Some(stem) = name.strip_suffix(ext) {
            return stem.to_string();
        }
    }
    name.to_string()
}

/// The output file of every input shard of a step, selected by this task or not, in input
/// order: the inputs of the next step (positions, and so shard selections, stay the same).
pub fn step_outputs(step: &str, inputs: &[PathBuf], opts: &StepOptions) -> Vec<PathBuf> {
    inputs
        .iter()
        .map(|i| {
            opts.step_dir(step)
                .join(format!("{}.{}", shard_stem(i), opts.extension))
        })
        .collect()
}

/// Counts of one shard of one step, saved as its completion marker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardStats {
    /// Input file.
    pub input: PathBuf,
    /// Output file.
    pub output: PathBuf,
    /// Per stage, in chain order.
    pub stages: Vec<(String, StageStats)>,
    /// Seconds spent.
    pub seconds: f64,
}

/// Counts of one step over all its shards.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepReport {
    /// Step name.
    pub name: String,
    /// Shards processed now.
    pub shards_run: usize,
    /// Shards skipped because a previous run finished them.
    pub shards_skipped: usize,
    /// Per stage, summed over shards.
    pub stages: Vec<(String, StageStats)>,
    /// Output files of this step (all selected shards).
    pub outputs: Vec<PathBuf>,
    /// Wall-clock seconds of this run of the step.
    pub seconds: f64,
}

impl StepReport {
    /// Whether every stage's counts add up and each stage read what the previous one kept.
    pub fn check(&self) -> bool {
        self.stages.iter().all(|(_, s)| s.check())
            && self.stages.windows(2).all(|w| w[0].1.kept == w[1].1.read)
    }

    /// Documents that entered the step.
    pub fn read(&self) -> u64 {
        self.stages.first().map_or(0, |s| s.1.read)
    }

    /// Documents that left it.
    pub fn kept(&self) -> u64 {
        self.stages.last().map_or(0, |s| s.1.kept)
    }

    fn absorb(&mut self, shard: &ShardStats) {
        if self.stages.is_empty() {
            self.stages = shard
                .stages
                .iter()
                .map(|(n, _)| (n.clone(), StageStats::default()))
                .collect();
        }
        for ((_, total), (_, s)) in self.stages.iter_mut().zip(&shard.stages) {
            total.merge(s);
        }
        self.outputs.push(shard.output.clone());
    }
}

fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    let tmp = crate::io::tmp_path(path);
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| DataError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(&tmp, bytes).at(&tmp)?;
    std::fs::rename(&tmp, path).at(path)
}

fn load_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).at(path)?;
    serde_json::from_slice(&bytes).map_err(|e| DataError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

pub(crate) fn progress_bar(show: bool, len: u64, name: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>14} [{bar:30}] {pos}/{len} shards {msg} ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    bar
}

/// Run `chain` over the selected `inputs`, writing under `<output>/<name>/`.
pub fn run_step(
    name: &str,
    chain: &Chain,
    inputs: &[PathBuf],
    opts: &StepOptions,
) -> Result<StepReport> {
    let started = Instant::now();
    let dir = opts.step_dir(name);
    let selected = opts.selection.pick(inputs);
    let bar = progress_bar(opts.progress, selected.len() as u64, name);
    let docs_done = std::sync::atomic::AtomicU64::new(0);
    let results: Vec<Result<(ShardStats, bool)>> = selected
        .par_iter()
        .map(|input| {
            let stem = shard_stem(input);
            let stats_path = dir.join("stats").join(format!("{stem}.json"));
            let out = if stats_path.exists() {
                (load_json::<ShardStats>(&stats_path)?, true)
            } else {
                let stats = run_shard(chain, input, &dir, &stem, opts)?;
                save_json(&stats_path, &stats)?;
                (stats, false)
            };
            let read = out.0.stages.first().map_or(0, |s| s.1.read);
            let total = docs_done.fetch_add(read, std::sync::atomic::Ordering::Relaxed) + read;
            bar.set_message(format!("{total} docs"));
            bar.inc(1);
            Ok(out)
        })
        .collect();
    bar.finish();
    let mut report = StepReport {
        name: name.to_string(),
        ..Default::default()
    };
    for r in results {
        let (shard, skipped) = r?;
        if skipped {
            report.shards_skipped += 1;
        } else {
            report.shards_run += 1;
        }
        report.absorb(&shard);
    }
    if report.stages.is_empty() {
        report.stages = chain
            .names()
            .into_iter()
            .map(|n| (n, StageStats::default()))
            .collect();
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn run_shard(
    chain: &Chain,
    input: &Path,
    dir: &Path,
    stem: &str,
    opts: &StepOptions,
) -> Result<ShardStats> {
    let started = Instant::now();
    let output = dir.join(format!("{stem}.{}", opts.extension));
    let mut writer = DocumentWriter::create(&output)?;
    let mut rejects = if opts.rejects {
        Some(DocumentWriter::create(
            dir.join("rejects").join(format!("{stem}.jsonl.zst")),
        )?)
    } else {
        None
    };
    let stats = Mutex::new(vec![StageStats::default(); chain.len()]);
    let mut reader = read_documents(input)?;
    let chunk = opts.chunk.max(1);
    loop {
        let batch: Vec<Document> = reader.by_ref().take(chunk).collect::<Result<_>>()?;
        if batch.is_empty() {
            break;
        }
        let verdicts: Vec<_> = batch
            .into_par_iter()
            .map(|doc| {
                let mut local = vec![StageStats::default(); chain.len()];
                let v = chain.run(doc, &mut local);
                (v, local)
            })
            .collect();
        let mut totals = stats.lock().map_err(|_| DataError::config("poisoned"))?;
        for (verdict, local) in verdicts {
            for (t, l) in totals.iter_mut().zip(&local) {
                t.merge(l);
            }
            match verdict {
                Ok(doc) => writer.write(&doc)?,
                Err((mut doc, stage, reason)) => {
                    if let Some(r) = rejects.as_mut() {
                        doc.metadata.insert("drop_stage".into(), stage.into());
                        doc.metadata.insert("drop_reason".into(), reason.into());
                        r.write(&doc)?;
                    }
                }
            }
        }
    }
    let output = writer.finish()?;
    if let Some(r) = rejects {
        r.finish()?;
    }
    let totals = stats
        .into_inner()
        .map_err(|_| DataError::config("poisoned"))?;
    Ok(ShardStats {
        input: input.to_path_buf(),
        output,
        stages: chain.names().into_iter().zip(totals).collect(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The report of a whole run: one entry per step, saved as JSON and printed as a table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PipelineReport {
    /// Steps in the order they ran.
    pub steps: Vec<StepReport>,
}

impl PipelineReport {
    /// Append a step.
    pub fn push(&mut self, step: StepReport) {
        self.steps.push(step);
    }

    /// Whether every step's counts add up.
    pub fn check(&self) -> bool {
        self.steps.iter().all(StepReport::check)
    }

    /// Save as pretty JSON (atomically).
    pub fn save_json(&self, path: impl AsRef<Path>) -> Result<()> {
        save_json(path.as_ref(), self)
    }

    /// Load a saved report.
    pub fn load_json(path: impl AsRef<Path>) -> Result<Self> {
        load_json(path.as_ref())
    }

    /// A plain-text table: one row per stage with read / kept / dropped-by-reason.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<16} {:<18} {:>9} {:>9} {:>9}  {}\n",
            "step", "stage", "read", "kept", "dropped", "reasons"
        ));
        for step in &self.steps {
            for (i, (stage, s)) in step.stages.iter().enumerate() {
                let reasons: Vec<String> =
                    s.dropped.iter().map(|(r, n)| format!("{r}={n}")).collect();
                out.push_str(&format!(
                    "{:<16} {:<18} {:>9} {:>9} {:>9}  {}\n",
                    if i == 0 { step.name.as_str() } else { "" },
                    stage,
                    s.read,
                    s.kept,
                    s.dropped_total(),
                    reasons.join(", ")
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Stage, Verdict};

    struct DropOdd;
    impl Stage for DropOdd {
        fn name(&self) -> &str {
            "drop_odd"
        }
        fn apply(&self, doc: Document) -> Verdict {
            if doc.text.len() % 2 == 1 {
                Verdict::drop(doc, "odd")
            } else {
                Verdict::Keep(doc)
            }
        }
    }

    fn write_shards(dir: &Path, shards: usize, docs: usize) -> Vec<PathBuf> {
        (0..shards)
            .map(|s| {
                let p = dir.join(format!("in/part-{s}.jsonl"));
                let mut w = DocumentWriter::create(&p).unwrap();
                for d in 0..docs {
                    w.write(&Document::new("x".repeat(d)).with_id(format!("{s}-{d}")))
                        .unwrap();
                }
                w.finish().unwrap()
            })
            .collect()
    }

    #[test]
    fn step_counts_outputs_rejects_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = write_shards(dir.path(), 3, 1000);
        let chain = Chain::new().add(DropOdd);
        let mut opts = StepOptions::new(dir.path().join("out"));
        opts.chunk = 64;
        let report = run_step("s", &chain, &inputs, &opts).unwrap();
        assert_eq!(
            (report.read(), report.kept(), report.shards_run),
            (3000, 1500, 3)
        );
        assert!(report.check());
        let kept: Vec<Document> = read_documents(&report.outputs[1])
            .unwrap()
            .map(|d| d.unwrap())
            .collect();
        // Order is kept: lengths 0, 2, 4, ...
        assert!(kept.iter().enumerate().all(|(i, d)| d.text.len() == 2 * i));
        let rejected = read_documents(opts.step_dir("s").join("rejects/part-1.jsonl.zst"))
            .unwrap()
            .count();
        assert_eq!(rejected, 500);
        // A relaunch skips all three shards and reports the same counts.
        std::fs::remove_file(opts.step_dir("s").join("stats/part-2.json")).unwrap();
        let again = run_step("s", &chain, &inputs, &opts).unwrap();
        assert_eq!((again.shards_skipped, again.shards_run), (2, 1));
        assert_eq!(again.stages, report.stages);
    }

    #[test]
    fn selection_splits_shards() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = write_shards(dir.path(), 5, 4);
        let chain = Chain::new().add(DropOdd);
        let mut total = 0;
        for i in 0..2 {
            let opts = StepOptions::new(dir.path().join("out"))
                .with_selection(ShardSelection::new(i, 2).unwrap());
            let r = run_step("s", &chain, &inputs, &opts).unwrap();
            assert_eq!(r.shards_run, if i == 0 { 3 } else { 2 });
            total += r.read();
        }
        assert_eq!(total, 20);
        assert!(ShardSelection::new(2, 2).is_err());
    }
}

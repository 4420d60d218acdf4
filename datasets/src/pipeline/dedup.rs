//! Deduplication as executor steps: per-shard signature jobs, one merge job, per-shard filter
//! jobs (see [`crate::dedup`] for the algorithm).
//!
//! Files under `<output>/<step>/`: `signatures/<shard>.minhash`, `plan.dedup` (the merged
//! plan), then the filtered shards, `rejects/` and `stats/` as in [`run_step`]. Every file is
//! written atomically and skipped when present, so each of the three phases restarts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::{StepOptions, StepReport, progress_bar, run_step, shard_stem};
use crate::dedup::{DedupConfig, DedupFilter, DedupPlan, SignatureWriter, merge_signatures};
use crate::io::read_documents;
use crate::{Chain, DataError, Result};

/// The signature file of `input` under the step directory.
pub fn signature_path(opts: &StepOptions, step: &str, input: &std::path::Path) -> PathBuf {
    opts.step_dir(step)
        .join("signatures")
        .join(format!("{}.minhash", shard_stem(input)))
}

/// The merged plan of the step.
pub fn plan_path(opts: &StepOptions, step: &str) -> PathBuf {
    opts.step_dir(step).join("plan.dedup")
}

/// Phase 1: write the signature file of every selected shard (skipping existing ones).
/// Returns documents signed now.
pub fn dedup_signatures(
    step: &str,
    cfg: &DedupConfig,
    inputs: &[PathBuf],
    opts: &StepOptions,
) -> Result<u64> {
    let dir = opts.step_dir(step).join("signatures");
    std::fs::create_dir_all(&dir).map_err(|source| DataError::Io {
        path: dir.clone(),
        source,
    })?;
    let selected = opts.selection.pick(inputs);
    let bar = progress_bar(
        opts.progress,
        selected.len() as u64,
        &format!("{step}:sign"),
    );
    let counts: Vec<Result<u64>> = selected
        .par_iter()
        .map(|input| {
            let path = signature_path(opts, step, input);
            let n = if path.exists() {
                0
            } else {
                let mut w = SignatureWriter::create(cfg, &path)?;
                let mut reader = read_documents(input)?;
                loop {
                    let batch: Vec<_> = reader
                        .by_ref()
                        .take(opts.chunk.max(1))
                        .collect::<Result<_>>()?;
                    if batch.is_empty() {
                        break;
                    }
                    w.write_batch(&batch.iter().collect::<Vec<_>>())?;
                }
                w.finish()?
            };
            bar.inc(1);
            Ok(n)
        })
        .collect();
    bar.finish();
    counts.into_iter().sum()
}

/// Phase 2: merge the signature files of *all* `inputs` into the plan (loaded when present).
/// On a cluster this is one job that runs after every signature job finished.
pub fn dedup_merge(
    step: &str,
    cfg: &DedupConfig,
    inputs: &[PathBuf],
    opts: &StepOptions,
) -> Result<DedupPlan> {
    let plan = plan_path(opts, step);
    if plan.exists() {
        return DedupPlan::load(&plan);
    }
    let files: Vec<PathBuf> = inputs
        .iter()
        .map(|i| signature_path(opts, step, i))
        .collect();
    if let Some(missing) = files.iter().find(|f| !f.exists()) {
        return Err(DataError::config(format!(
            "dedup merge: signature file {} is missing (run the signature phase of every shard first)",
            missing.display()
        )));
    }
    let merged = merge_signatures(cfg, &files)?;
    merged.save(&plan)?;
    Ok(merged)
}

/// All three phases for the selected shards: signatures, merge, filter. With a
/// [`ShardSelection`](super::ShardSelection) of more than one task, run [`dedup_signatures`]
/// as one job per task, then [`dedup_merge`] as one job, then this per task (its signature and
/// merge phases then find their files and skip).
///
/// The report has one stage, `dedup`, whose drops are `exact_duplicate` / `near_duplicate`.
pub fn run_dedup(
    step: &str,
    cfg: &DedupConfig,
    inputs: &[PathBuf],
    opts: &StepOptions,
) -> Result<StepReport> {
    let started = Instant::now();
    dedup_signatures(step, cfg, inputs, opts)?;
    let plan = Arc::new(dedup_merge(step, cfg, inputs, opts)?);
    let chain = Chain::new().add(DedupFilter::new(plan));
    let mut report = run_step(step, &chain, inputs, opts)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

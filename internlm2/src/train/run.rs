//! The training loop: a run is a list of curriculum phases (SPEC 5: e.g. 4K context with RoPE
//! base 50,000, then 32K with base 1,000,000), each with its sequence length, batch, learning
//! rate schedule and RoPE base. The loop logs every step (progress bar, JSONL), saves
//! checkpoints, and resumes at any step, inside any phase, from a checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use internlm2_backends::Kernels;
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::data::TokenBatch;
use super::data::{DocumentSource, Packer};
use super::metrics::{JsonlLog, StepRecord, train_flops_per_token};
use super::schedule::LrSchedule;
use super::trainer::{StepStats, TrainState, Trainer};
use crate::config::InternLM2Config;

/// What [`run`] drives: one [`Trainer`], or data-parallel replicas
/// ([`DataParallel`](super::parallel::DataParallel)).
pub trait StepEngine {
    /// One optimiser step over `micro_batches` (rows of the whole step).
    fn step(&mut self, micro_batches: &[TokenBatch], lr: f64) -> Result<StepStats, TrainError>;
    /// The model's configuration.
    fn model_config(&self) -> InternLM2Config;
    /// Changes the RoPE base (a curriculum phase).
    fn set_rope_theta(&mut self, theta: f64);
    /// Writes a checkpoint (see [`Trainer::save_checkpoint`]).
    fn save_checkpoint(
        &self,
        dir: &Path,
        state: &TrainState,
        keep_last: usize,
    ) -> Result<PathBuf, TrainError>;
}

impl<B: AutodiffBackend + Kernels> StepEngine for Trainer<B>
where
    B::InnerBackend: Kernels,
{
    fn step(&mut self, micro_batches: &[TokenBatch], lr: f64) -> Result<StepStats, TrainError> {
        Trainer::step(self, micro_batches, lr)
    }

    fn model_config(&self) -> InternLM2Config {
        self.model.config().clone()
    }

    fn set_rope_theta(&mut self, theta: f64) {
        self.model.config_mut().rope_theta = theta;
    }

    fn save_checkpoint(
        &self,
        dir: &Path,
        state: &TrainState,
        keep_last: usize,
    ) -> Result<PathBuf, TrainError> {
        Trainer::save_checkpoint(self, dir, state, keep_last)
    }
}

/// One stage of the curriculum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Name shown in logs.
    pub name: String,
    /// Optimiser steps.
    pub steps: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Rows per optimiser step.
    pub batch_size: usize,
    /// Micro-batches the rows are split into (gradient accumulation).
    pub micro_batches: usize,
    /// Learning rate over the phase's own steps.
    pub schedule: LrSchedule,
    /// RoPE base for this phase (`None`: keep the model's).
    pub rope_theta: Option<f64>,
}

impl Phase {
    /// A phase of `steps` steps of `batch_size` rows of `seq_len` tokens, warmup 1% then
    /// cosine to 10% of `peak_lr`.
    pub fn new(
        name: impl Into<String>,
        steps: usize,
        seq_len: usize,
        batch_size: usize,
        peak_lr: f64,
    ) -> Self {
        Self {
            name: name.into(),
            steps,
            seq_len,
            batch_size,
            micro_batches: 1,
            schedule: LrSchedule::new(peak_lr, (steps / 100).max(1), steps),
            rope_theta: None,
        }
    }

    /// Splits each step into `n` micro-batches.
    pub fn with_micro_batches(mut self, n: usize) -> Self {
        self.micro_batches = n;
        self
    }

    /// Sets the RoPE base of the phase.
    pub fn with_rope_theta(mut self, theta: f64) -> Self {
        self.rope_theta = Some(theta);
        self
    }

    /// Sets the schedule.
    pub fn with_schedule(mut self, schedule: LrSchedule) -> Self {
        self.schedule = schedule;
        self
    }
}

/// How a run is driven.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The curriculum, in order.
    pub phases: Vec<Phase>,
    /// Where checkpoints go (`None`: no checkpoints).
    pub checkpoint_dir: Option<PathBuf>,
    /// Save every this many steps (and at the end); 0 = only at the end.
    pub checkpoint_every: usize,
    /// Checkpoints kept.
    pub keep_last: usize,
    /// JSONL file receiving one [`StepRecord`] per step.
    pub log_path: Option<PathBuf>,
    /// Peak FLOP/s of the device for the MFU estimate (`None`: MFU reported as 0).
    pub peak_flops: Option<f64>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Stop after this global step even if phases remain (a time budget; resumable).
    pub stop_at_step: Option<usize>,
}

impl RunOptions {
    /// Steps of all phases.
    pub fn total_steps(&self) -> usize {
        self.phases.iter().map(|p| p.steps).sum()
    }

    /// The phase of global step `step` and the step inside it.
    pub fn phase_at(&self, step: usize) -> Option<(usize, usize)> {
        let mut start = 0;
        for (i, phase) in self.phases.iter().enumerate() {
            if step < start + phase.steps {
                return Some((i, step - start));
            }
            start += phase.steps;
        }
        None
    }

    fn validate(&self) -> Result<(), TrainError> {
        if self.phases.is_empty() {
            return Err(TrainError::InvalidConfig(
                "a run needs at least one phase".into(),
            ));
        }
        for p in &self.phases {
            let bad = |why: String| {
                Err(TrainError::InvalidConfig(format!(
                    "phase {}: {why}",
                    p.name
                )))
            };
            if p.steps == 0 || p.seq_len == 0 || p.batch_size == 0 || p.micro_batches == 0 {
                return bad("steps, seq_len, batch_size and micro_batches must be positive".into());
            }
            if p.batch_size % p.micro_batches != 0 {
                return bad(format!(
                    "batch_size {} is not divisible by micro_batches {}",
                    p.batch_size, p.micro_batches
                ));
            }
            if !(p.schedule.peak_lr > 0.0 && p.schedule.peak_lr.is_finite()) {
                return bad("peak learning rate must be positive".into());
            }
        }
        Ok(())
    }
}

/// Runs the curriculum from `state.step` on, updating `state` after every step and calling
/// `on_step` with its record.
pub fn run<E: StepEngine, S: DocumentSource>(
    trainer: &mut E,
    packer: &mut Packer<S>,
    state: &mut TrainState,
    options: &RunOptions,
    mut on_step: impl FnMut(&StepRecord),
) -> Result<(), TrainError> {
    options.validate()?;
    let total = options.total_steps();
    let end = options.stop_at_step.map_or(total, |s| s.min(total));
    let mut log = options.log_path.as_ref().map(JsonlLog::open).transpose()?;
    let bar = options.progress.then(|| {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_position(state.step as u64);
        bar
    });
    packer.seek(state.cursor);
    while state.step < end {
        let (index, local) = options.phase_at(state.step).expect("step < total");
        let phase = &options.phases[index];
        if let Some(theta) = phase.rope_theta {
            trainer.set_rope_theta(theta);
        }
        packer.set_seq_len(phase.seq_len);
        let rows = phase.batch_size / phase.micro_batches;
        let started = Instant::now();
        let micro: Vec<_> = (0..phase.micro_batches)
            .map(|_| packer.next_batch(rows))
            .collect();
        let lr = phase.schedule.lr(local);
        let stats = trainer.step(&micro, lr)?;
        let seconds = started.elapsed().as_secs_f64();
        state.step += 1;
        state.cursor = packer.cursor();
        state.losses.push(stats.loss);
        let tokens_per_s = stats.tokens as f64 / seconds;
        let mfu = options.peak_flops.map_or(0.0, |peak| {
            train_flops_per_token(&trainer.model_config(), phase.seq_len) * tokens_per_s / peak
        });
        let record = StepRecord {
            step: state.step,
            phase: phase.name.clone(),
            loss: stats.loss,
            lr,
            grad_norm: stats.grad_norm,
            tokens: stats.tokens,
            tokens_per_s,
            mfu,
            seconds,
        };
        if let Some(log) = log.as_mut() {
            log.write(&record)?;
        }
        if let Some(bar) = &bar {
            bar.set_position(state.step as u64);
            bar.set_message(format!(
                "{} loss {:.4} lr {:.2e} |g| {:.2} {:.0} tok/s mfu {:.1}%",
                phase.name,
                stats.loss,
                lr,
                stats.grad_norm,
                tokens_per_s,
                100.0 * mfu
            ));
        }
        on_step(&record);
        if let Some(dir) = &options.checkpoint_dir {
            let due = options.checkpoint_every > 0 && state.step % options.checkpoint_every == 0;
            if due || state.step == end {
                trainer.save_checkpoint(dir, state, options.keep_last)?;
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(())
}

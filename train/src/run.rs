//! The training loop, one for every objective: a run is a list of [`Phase`]s; each step takes
//! its micro-batches from a [`StepSource`] (the [`Packer`]'s document stream for
//! pre-training, a [`StepList`] of batches formed beforehand for SFT, the reward model and
//! DPO), steps the engine (one [`Trainer`](crate::Trainer) or
//! [`DataParallel`](crate::DataParallel) replicas), logs it (progress bar, JSONL), saves
//! checkpoints, and resumes at any step, inside any phase, from a checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use internlm2::InternLM2Config;
use internlm2::data::{DataCursor, DocumentSource, Packer, TokenBatch};

use crate::TrainError;
use crate::checkpoint::TrainState;
use crate::metrics::{JsonlLog, StepRecord, train_flops_per_token};
use crate::objective::{Batch, Objective, TrainBackend, TrainModel};
use crate::phase::{Phase, RunOptions};
use crate::trainer::{StepStats, Trainer};

/// What [`run`] drives: one [`Trainer`], or data-parallel replicas
/// ([`DataParallel`](crate::DataParallel)) of objective `O`.
pub trait StepEngine<B: TrainBackend, O: Objective<B>> {
    /// One optimiser step over `micro_batches` (rows of the whole step).
    fn step(
        &mut self,
        micro_batches: &[O::Batch],
        lr: f64,
    ) -> Result<StepStats<O::Metrics>, TrainError>;
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
    /// A copy of the trained model.
    fn model(&self) -> Result<O::Model, TrainError>;
}

impl<B: TrainBackend, O: Objective<B>> StepEngine<B, O> for Trainer<B, O> {
    fn step(
        &mut self,
        micro_batches: &[O::Batch],
        lr: f64,
    ) -> Result<StepStats<O::Metrics>, TrainError> {
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

    fn model(&self) -> Result<O::Model, TrainError> {
        Ok(self.model.clone())
    }
}

/// Where a run's micro-batches come from, step after step, addressed by a [`DataCursor`] so
/// that a resumed run continues exactly where the checkpoint was taken.
pub trait StepSource<T> {
    /// Whether this source can serve `phase` (checked for every phase before the first step).
    fn check(&self, phase: &Phase) -> Result<(), TrainError>;
    /// Where the next step starts.
    fn cursor(&self) -> DataCursor;
    /// Moves to `cursor` (the start of a run, or a checkpoint's).
    fn seek(&mut self, cursor: DataCursor);
    /// The micro-batches of the next step of `phase`.
    fn next_step(&mut self, phase: &Phase) -> Result<Vec<T>, TrainError>;
}

/// The packed document stream: each step is `phase.micro_batches` batches of
/// `phase.batch_size / phase.micro_batches` rows of `phase.seq_len` tokens.
impl<S: DocumentSource> StepSource<TokenBatch> for Packer<S> {
    fn check(&self, phase: &Phase) -> Result<(), TrainError> {
        if phase.seq_len == 0 || phase.batch_size == 0 {
            return Err(phase.invalid("seq_len and batch_size must be positive"));
        }
        if phase.batch_size % phase.micro_batches != 0 {
            return Err(phase.invalid(format!(
                "batch_size {} is not divisible by micro_batches {}",
                phase.batch_size, phase.micro_batches
            )));
        }
        Ok(())
    }

    fn cursor(&self) -> DataCursor {
        Packer::cursor(self)
    }

    fn seek(&mut self, cursor: DataCursor) {
        Packer::seek(self, cursor);
    }

    fn next_step(&mut self, phase: &Phase) -> Result<Vec<TokenBatch>, TrainError> {
        self.set_seq_len(phase.seq_len);
        let rows = phase.batch_size / phase.micro_batches;
        Ok((0..phase.micro_batches)
            .map(|_| self.next_batch(rows))
            .collect())
    }
}

/// Steps formed beforehand: step `k` of the run trains on `steps[k]`, cut into the phase's
/// micro-batches (its rows split as evenly as possible). The cursor counts steps in
/// [`DataCursor::document`].
#[derive(Debug, Clone)]
pub struct StepList<T> {
    steps: Vec<T>,
    next: usize,
}

impl<T> StepList<T> {
    /// The list, at its first step.
    pub fn new(steps: Vec<T>) -> Self {
        Self { steps, next: 0 }
    }

    /// Steps in the list.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether the list has no steps.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The steps.
    pub fn steps(&self) -> &[T] {
        &self.steps
    }
}

impl<T: Batch> StepSource<T> for StepList<T> {
    fn check(&self, phase: &Phase) -> Result<(), TrainError> {
        if phase.steps > self.steps.len() {
            return Err(phase.invalid(format!(
                "{} steps, but the data makes {}",
                phase.steps,
                self.steps.len()
            )));
        }
        Ok(())
    }

    fn cursor(&self) -> DataCursor {
        DataCursor {
            document: self.next as u64,
            ..DataCursor::default()
        }
    }

    fn seek(&mut self, cursor: DataCursor) {
        self.next = cursor.document as usize;
    }

    fn next_step(&mut self, phase: &Phase) -> Result<Vec<T>, TrainError> {
        let step = self.steps.get(self.next).ok_or_else(|| {
            phase.invalid(format!("the data has only {} steps", self.steps.len()))
        })?;
        self.next += 1;
        Ok(step.split(phase.micro_batches))
    }
}

/// Runs the phases of `options` from `state.step` on, updating `state` after every step and
/// calling `on_step` with its record and statistics.
pub fn run<B, O, E, D>(
    engine: &mut E,
    data: &mut D,
    state: &mut TrainState,
    options: &RunOptions,
    mut on_step: impl FnMut(&StepRecord, &StepStats<O::Metrics>),
) -> Result<(), TrainError>
where
    B: TrainBackend,
    O: Objective<B>,
    E: StepEngine<B, O>,
    D: StepSource<O::Batch>,
{
    options.validate()?;
    for phase in &options.phases {
        data.check(phase)?;
    }
    let total = options.total_steps();
    let end = options.stop_at_step.map_or(total, |s| s.min(total));
    let mut log = options.log_path.as_ref().map(JsonlLog::open).transpose()?;
    let bar = options.progress.then(|| progress_bar(total, state.step));
    data.seek(state.cursor);
    while state.step < end {
        let (index, local) = options.phase_at(state.step).expect("step < total");
        let phase = &options.phases[index];
        if let Some(theta) = phase.rope_theta {
            engine.set_rope_theta(theta);
        }
        let started = Instant::now();
        let micro = data.next_step(phase)?;
        let lr = phase.schedule.lr(local);
        let stats = engine.step(&micro, lr)?;
        let seconds = started.elapsed().as_secs_f64();
        state.step += 1;
        state.cursor = data.cursor();
        state.losses.push(stats.loss);
        let tokens_per_s = stats.tokens as f64 / seconds;
        let seq_len = micro
            .first()
            .map_or(phase.seq_len, |b| b.tokens() / b.rows().max(1));
        let mfu = options.peak_flops.map_or(0.0, |peak| {
            train_flops_per_token(&engine.model_config(), seq_len) * tokens_per_s / peak
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
        on_step(&record, &stats);
        if let Some(dir) = &options.checkpoint_dir {
            let due = options.checkpoint_every > 0 && state.step % options.checkpoint_every == 0;
            if due || state.step == end {
                engine.save_checkpoint(dir, state, options.keep_last)?;
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(())
}

fn progress_bar(total: usize, position: usize) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(position as u64);
    bar
}

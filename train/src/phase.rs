//! A run's curriculum (SPEC 5: e.g. 4K context with RoPE base 50,000, then 32K with base
//! 1,000,000) and how it is driven: phases with their sequence length, batch, micro-batches,
//! learning-rate schedule and RoPE base, and where a run checkpoints and logs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::schedule::LrSchedule;

/// One stage of the curriculum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Name shown in logs.
    pub name: String,
    /// Optimiser steps.
    pub steps: usize,
    /// Tokens per row (0: as the data has them).
    pub seq_len: usize,
    /// Rows per optimiser step (0: as the data has them).
    pub batch_size: usize,
    /// Micro-batches the rows are split into (gradient accumulation).
    pub micro_batches: usize,
    /// Learning rate over the phase's own steps.
    pub schedule: LrSchedule,
    /// RoPE base for this phase (`None`: keep the model's).
    pub rope_theta: Option<f64>,
}

impl Phase {
    /// A [`TrainError::InvalidConfig`] naming this phase.
    pub fn invalid(&self, why: impl std::fmt::Display) -> TrainError {
        TrainError::invalid(format!("phase {}: {why}", self.name))
    }

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

    /// A phase over data whose steps are formed beforehand (a [`StepList`](crate::StepList):
    /// SFT, the reward model, DPO): `schedule.total_steps` steps, rows and lengths as the data
    /// has them.
    pub fn fixed(name: impl Into<String>, schedule: LrSchedule) -> Self {
        Self {
            name: name.into(),
            steps: schedule.total_steps,
            seq_len: 0,
            batch_size: 0,
            micro_batches: 1,
            schedule,
            rope_theta: None,
        }
    }
}

/// How a run is driven.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// A run of one phase, without checkpoints, log or progress bar.
    pub fn phase(phase: Phase) -> Self {
        Self {
            phases: vec![phase],
            ..Self::default()
        }
    }

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

    /// Checks what every run needs: at least one phase, positive step and micro-batch
    /// counts, a positive learning rate. (The data source checks the rest.)
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.phases.is_empty() {
            return Err(TrainError::invalid("a run needs at least one phase"));
        }
        for p in &self.phases {
            if p.steps == 0 || p.micro_batches == 0 {
                return Err(p.invalid("steps and micro_batches must be positive"));
            }
            if !(p.schedule.peak_lr > 0.0 && p.schedule.peak_lr.is_finite()) {
                return Err(p.invalid("peak learning rate must be positive"));
            }
        }
        Ok(())
    }
}

//! Training: the step-based engine that pre-training and every alignment stage share, and the
//! InternLM2 pre-training recipe of SPEC 5 on top of it.
//!
//! - [`Trainer`]: AdamW with the paper's defaults and two parameter groups, global-norm
//!   clipping, gradient accumulation, masked next-token cross entropy, checkpoints.
//! - [`Packer`]: documents packed into fixed-length rows with EOS separators, positions
//!   restarting and attention kept inside each document.
//! - [`run`]: the loop over curriculum [`Phase`]s with logging, MFU, checkpoints and resume.
//! - [`DataParallel`]: replicas on several devices stepping together (burn-collective), and
//!   across nodes through burn-collective's global orchestrator ([`cluster`]).
//!
//! The model trains on any `B: AutodiffBackend + Kernels`, e.g.
//! `burn::backend::Autodiff<internlm2::backends::Cpu>`; under autodiff every kernel is the
//! differentiable composite reference. Activation checkpointing is burn's: train on
//! `Autodiff<B, BalancedCheckpointing>` instead of `Autodiff<B>`.

pub mod cluster;
pub mod data;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod parallel;
pub mod run;
pub mod schedule;
pub mod trainer;

use std::path::PathBuf;

pub use cluster::{ClusterConfig, serve_orchestrator, spawn_orchestrator};
pub use data::{DataCursor, DocumentSource, InMemoryDocuments, Packer, PackingConfig, TokenBatch};
pub use metrics::{StepRecord, plot_loss_curve};
pub use optim::{GroupedAdamW, OptimizerConfig};
pub use parallel::DataParallel;
pub use run::{Phase, RunOptions, StepEngine, run};
pub use schedule::LrSchedule;
pub use trainer::{StepStats, TrainState, Trainer, latest_checkpoint};

/// Training failures.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A checkpoint could not be written or read back.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The batch has no target that counts in the loss.
    #[error("no target token counts in the loss (empty loss mask)")]
    NoLossTokens,
    /// Options that cannot run.
    #[error("invalid training configuration: {0}")]
    InvalidConfig(String),
    /// burn-collective failed (registration, all-reduce) or a replica thread is gone.
    #[error("collective: {0}")]
    Collective(String),
    /// The loss curve could not be drawn.
    #[error("loss curve {path}: {reason}")]
    Plot {
        /// The PNG.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

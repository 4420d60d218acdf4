//! Training InternLM2 on burn: the step-based engine that pre-training and every alignment
//! stage share, and the InternLM2 pre-training recipe of SPEC 5 on top of it.
//!
//! The crate sits between the core crate (`internlm2`: model, checkpoints, tokenizer,
//! generation; no autodiff, no collective, no async runtime) and `internlm2-align`.
//!
//! - [`Trainer`]: AdamW with the paper's defaults and two parameter groups, global-norm
//!   clipping, gradient accumulation, masked next-token cross entropy, checkpoints.
//! - [`Packer`] (from [`internlm2::data`]): documents packed into fixed-length rows with EOS
//!   separators, positions restarting and attention kept inside each document.
//! - [`run`]: the loop over curriculum [`Phase`]s with logging, MFU, checkpoints and resume.
//! - [`DataParallel`]: replicas on several devices stepping together (burn-collective), and
//!   across nodes through burn-collective's global orchestrator ([`cluster`]).
//!
//! The model trains on any `B: AutodiffBackend + Kernels`, e.g.
//! `burn::backend::Autodiff<internlm2::backends::Cpu>`; under autodiff every kernel is the
//! differentiable composite reference. Activation checkpointing is burn's: train on
//! `Autodiff<B, BalancedCheckpointing>` instead of `Autodiff<B>`.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod cluster;
pub mod loss;
pub mod metrics;
pub mod objective;
pub mod optim;
pub mod parallel;
pub mod phase;
pub mod recipe;
pub mod run;
pub mod schedule;
pub mod trainer;

use std::path::PathBuf;

pub use checkpoint::{TrainState, latest_checkpoint, list_checkpoints, write_checkpoint};
pub use cluster::{ClusterConfig, serve_orchestrator, spawn_orchestrator};
pub use internlm2::data::{
    DataCursor, DocumentSource, InMemoryDocuments, Packer, PackingConfig, TokenBatch,
};
pub use loss::LanguageModel;
pub use metrics::{StepRecord, plot_loss_curve};
pub use objective::{Batch, Metrics, Objective, Totals, TrainBackend, TrainModel};
pub use optim::{GroupedAdamW, OptimizerConfig};
pub use parallel::{DataParallel, Replica};
pub use phase::{Phase, RunOptions};
pub use recipe::{ModelSource, PretrainConfig, Pretrained, pretrain};
pub use run::{StepEngine, StepList, StepSource, run};
pub use schedule::LrSchedule;
pub use trainer::{Gradients, StepStats, Trainer};

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
    /// A step's loss left the finite range (the step is not applied).
    #[error("the loss is {loss}: training diverged or the data has no finite loss")]
    NonFiniteLoss {
        /// The loss.
        loss: f64,
    },
    /// Options that cannot run.
    #[error("invalid training configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// burn-collective failed (registration, all-reduce) or a replica thread is gone.
    #[error("collective: {reason}")]
    Collective {
        /// What failed.
        reason: String,
    },
    /// The loss curve could not be drawn.
    #[error("loss curve {path}: {reason}")]
    Plot {
        /// The PNG.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl TrainError {
    /// A [`TrainError::InvalidConfig`].
    pub fn invalid(reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            reason: reason.into(),
        }
    }
}

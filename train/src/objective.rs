//! What the engine trains and how: the backends it trains on ([`TrainBackend`]), the models
//! ([`TrainModel`]), and the objectives ([`Objective`]) that turn a model and a batch into a
//! loss and its statistics. Language modelling ([`LanguageModel`](crate::LanguageModel)), the
//! reward model's ranking loss, DPO and PPO's actor and critic are objectives; the
//! [`Trainer`](crate::Trainer), gradient accumulation, mixed precision, checkpoints and resume,
//! and [`DataParallel`](crate::DataParallel) are written once for all of them.
//!
//! # How a step is normalised
//!
//! A step's loss is a mean over *units* (target tokens, preference pairs, response tokens).
//! [`Objective::totals`] counts the units of every micro-batch; the engine adds them up over
//! the whole step (all micro-batches, all replicas) before any forward pass, and
//! [`Objective::loss`] divides each micro-batch's sum by those totals. The parts of a step then
//! add up to the mean over the whole step, so two micro-batches of `n` rows make the same step
//! as one batch of `2n` rows, and `k` replicas the same step as one replica over all the rows.

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor};
use internlm2::backends::Kernels;
use internlm2::{InternLM2, InternLM2Config};

use crate::TrainError;

/// The backends training runs on: burn's autodiff over a backend with kernels, e.g.
/// `Autodiff<internlm2::backends::Cpu>` ([`CpuAutodiff`](internlm2::backends::CpuAutodiff)).
/// Under autodiff every kernel is the differentiable composite reference; the inner backend's
/// fused kernels serve inference (rollouts, reference log-probabilities).
///
/// Implemented for every such backend; write `B: TrainBackend` instead of the bounds.
pub trait TrainBackend: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

impl<B: AutodiffBackend<InnerBackend: Kernels> + Kernels> TrainBackend for B {}

/// A model the engine trains: an autodiff module with an InternLM2 body, which a checkpoint
/// rebuilds from the body's `config.json` before loading the weights into it.
pub trait TrainModel<B: TrainBackend>: AutodiffModule<B> + Clone + Send + 'static {
    /// The configuration of the InternLM2 body.
    fn config(&self) -> &InternLM2Config;
    /// The configuration, mutable (a curriculum phase changes the RoPE base).
    fn config_mut(&mut self) -> &mut InternLM2Config;
    /// A model of this shape with fresh weights (the skeleton a checkpoint is loaded into).
    fn init(config: &InternLM2Config, device: &B::Device) -> Self;
    /// The dtype of the weights (the master weights under mixed precision).
    fn dtype(&self) -> DType;
}

impl<B: TrainBackend> TrainModel<B> for InternLM2<B> {
    fn config(&self) -> &InternLM2Config {
        InternLM2::config(self)
    }

    fn config_mut(&mut self) -> &mut InternLM2Config {
        InternLM2::config_mut(self)
    }

    fn init(config: &InternLM2Config, device: &B::Device) -> Self {
        InternLM2::init(config, device)
    }

    fn dtype(&self) -> DType {
        InternLM2::dtype(self)
    }
}

/// One micro-batch of an objective: rows that can be split across replicas.
pub trait Batch: Clone + Send + 'static {
    /// Rows (sequences, pairs, rollouts): the unit a step is split by across replicas and
    /// micro-batches.
    fn rows(&self) -> usize;
    /// Rows `start..start + rows`.
    fn slice_rows(&self, start: usize, rows: usize) -> Self;
    /// Input tokens the forward pass reads (for throughput and MFU).
    fn tokens(&self) -> usize;

    /// The rows cut into `parts` consecutive pieces as equal as possible (the first ones one
    /// row longer); pieces without rows are left out.
    fn split(&self, parts: usize) -> Vec<Self> {
        let (rows, parts) = (self.rows(), parts.max(1));
        let mut out = Vec::with_capacity(parts);
        let mut start = 0;
        for part in 0..parts {
            let n = rows / parts + usize::from(part < rows % parts);
            if n > 0 {
                out.push(self.slice_rows(start, n));
            }
            start += n;
        }
        out
    }
}

/// The counts a step's loss is normalised by (see the [module docs](self)): added up over
/// micro-batches and replicas before the forward passes.
pub trait Totals: Copy + Default + Send + 'static {
    /// The sum of two counts.
    fn add(self, other: Self) -> Self;
    /// Whether nothing counts in the loss (the step cannot be normalised).
    fn is_empty(&self) -> bool;
}

impl Totals for usize {
    fn add(self, other: Self) -> Self {
        self + other
    }

    fn is_empty(&self) -> bool {
        *self == 0
    }
}

/// Statistics of a step beside its loss (accuracy counts, clipped ratios, ...), added up over
/// micro-batches and over the replicas of a node.
pub trait Metrics: Default + Clone + Send + 'static {
    /// Adds `other`'s counts to these.
    fn merge(&mut self, other: Self);
}

impl Metrics for () {
    fn merge(&mut self, _: Self) {}
}

/// Turns a model and a micro-batch into its part of the step's loss and its statistics.
///
/// Objectives are cloned into every data-parallel replica, so they hold settings, not data.
pub trait Objective<B: TrainBackend>: Clone + Send + 'static {
    /// The model trained.
    type Model: TrainModel<B>;
    /// One micro-batch.
    type Batch: Batch;
    /// What the loss is normalised by.
    type Totals: Totals;
    /// Statistics beside the loss.
    type Metrics: Metrics;

    /// The units of `batch` the loss averages over.
    fn totals(&self, batch: &Self::Batch) -> Self::Totals;

    /// This micro-batch's part of the step's loss: its sum over units divided by the whole
    /// step's `totals`; a `[1]` tensor on the model's device, in f32.
    fn loss(
        &self,
        model: &Self::Model,
        batch: &Self::Batch,
        totals: &Self::Totals,
    ) -> Result<(Tensor<B, 1>, Self::Metrics), TrainError>;
}

/// The whole step's totals of `batches`.
pub fn step_totals<B: TrainBackend, O: Objective<B>>(
    objective: &O,
    batches: &[O::Batch],
) -> O::Totals {
    batches
        .iter()
        .fold(O::Totals::default(), |sum, b| sum.add(objective.totals(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Rows(Vec<usize>);

    impl Batch for Rows {
        fn rows(&self) -> usize {
            self.0.len()
        }
        fn slice_rows(&self, start: usize, rows: usize) -> Self {
            Rows(self.0[start..start + rows].to_vec())
        }
        fn tokens(&self) -> usize {
            self.0.len()
        }
    }

    #[test]
    fn split_cuts_rows_evenly_in_order() {
        let parts: Vec<Vec<usize>> = Rows((0..7).collect())
            .split(3)
            .into_iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(parts, vec![vec![0, 1, 2], vec![3, 4], vec![5, 6]]);
        assert_eq!(
            Rows(vec![1, 2]).split(4).len(),
            2,
            "empty pieces are left out"
        );
    }
}

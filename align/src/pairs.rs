//! What the stages trained on preference pairs share (the reward model and DPO): the counts of
//! a step ([`PairMetrics`]), the seeded order of every epoch, and a whole stage run on one
//! [`Trainer`].

use internlm2_train::{
    Metrics, Objective, OptimizerConfig, Phase, RunOptions, StepList, StepStats, TrainBackend,
    TrainState, Trainer, run,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::AlignError;

/// Counts of a step over preference pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PairMetrics {
    /// Pairs.
    pub pairs: usize,
    /// Pairs whose margin (chosen over rejected) is positive.
    pub preferred: usize,
    /// Sum of the margins.
    pub margin_sum: f64,
}

impl PairMetrics {
    /// The counts of these margins (one per pair).
    ///
    /// ```
    /// use internlm2_align::pairs::PairMetrics;
    /// let m = PairMetrics::of([0.5, -0.25, 1.0]);
    /// assert_eq!((m.pairs, m.preferred), (3, 2));
    /// assert!((m.mean_margin() - 1.25 / 3.0).abs() < 1e-12);
    /// ```
    pub fn of(margins: impl IntoIterator<Item = f64>) -> Self {
        margins.into_iter().fold(Self::default(), |mut m, margin| {
            m.pairs += 1;
            m.preferred += usize::from(margin > 0.0);
            m.margin_sum += margin;
            m
        })
    }

    /// The share of pairs with a positive margin.
    pub fn accuracy(&self) -> f64 {
        self.preferred as f64 / self.pairs.max(1) as f64
    }

    /// The mean margin.
    pub fn mean_margin(&self) -> f64 {
        self.margin_sum / self.pairs.max(1) as f64
    }
}

impl Metrics for PairMetrics {
    fn merge(&mut self, other: Self) {
        self.pairs += other.pairs;
        self.preferred += other.preferred;
        self.margin_sum += other.margin_sum;
    }
}

/// The order of `n` items in every epoch: shuffled with `seed + epoch`.
pub(crate) fn epoch_orders(n: usize, epochs: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    (0..epochs.max(1))
        .map(|epoch| {
            order.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(epoch as u64)));
            order.clone()
        })
        .collect()
}

/// Runs a stage (its steps and phase) on one [`Trainer`] of `model` for `objective`; returns the
/// trained model and `each`'s value for every step.
pub(crate) fn train_on_one<B: TrainBackend, O: Objective<B>, T>(
    model: O::Model,
    objective: O,
    optimizer: OptimizerConfig,
    (mut steps, phase): (StepList<O::Batch>, Phase),
    seed: u64,
    mut each: impl FnMut(usize, &StepStats<O::Metrics>) -> T,
) -> Result<(O::Model, Vec<T>), AlignError> {
    let mut trainer = Trainer::with_objective(model, objective, optimizer);
    let mut out = Vec::with_capacity(steps.len());
    let mut state = TrainState::new(seed);
    let options = RunOptions::phase(phase);
    run(
        &mut trainer,
        &mut steps,
        &mut state,
        &options,
        |record, stats| {
            out.push(each(record.step, stats));
        },
    )?;
    Ok((trainer.model, out))
}

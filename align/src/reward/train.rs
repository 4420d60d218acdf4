//! Training the reward model (SPEC 6) on the shared engine: the focal ranking loss with a
//! log-barrier penalty as an [`Objective`], preference pairs batched under a padded-token
//! budget, and the run (token budget 16384, LR 1e-5 -> 5e-6, one epoch).

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, activation};
use internlm2_train::{
    Batch, LrSchedule, Objective, OptimizerConfig, Phase, StepList, StepStats, TrainBackend,
};
use serde::{Deserialize, Serialize};

use super::{PreferencePair, RewardEncoder, RewardModel};
use crate::AlignError;
use crate::pairs::{PairMetrics, epoch_orders, train_on_one};

/// The loss of SPEC 6.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RankingLoss {
    /// Focal exponent (SPEC 6: 2).
    pub gamma: f64,
    /// Weight of the log-barrier penalty (SPEC 6: 0.02).
    pub lambda: f64,
    /// Scores are kept inside (-bound, bound) (SPEC 6: 5).
    pub bound: f64,
    /// Past `bound - margin` the barrier continues as its tangent line, so scores outside the
    /// interval get a finite loss and a gradient pointing back inside (never NaN).
    pub margin: f64,
}

impl Default for RankingLoss {
    fn default() -> Self {
        Self {
            gamma: 2.0,
            lambda: 0.02,
            bound: 5.0,
            margin: 1e-3,
        }
    }
}

impl RankingLoss {
    /// Reference value for one pair, in f64 (what the tensor version computes).
    pub fn pair_value(&self, chosen: f64, rejected: f64) -> f64 {
        let p = 1.0 / (1.0 + (-(chosen - rejected)).exp());
        let weight = (1.0 - 2.0 * (p - 0.5).max(0.0)).powf(self.gamma);
        -weight * p.ln() + self.lambda * (self.barrier_value(chosen) + self.barrier_value(rejected))
    }

    /// `-(log(r + b) + log(b - r))`, continued linearly past `b - margin`.
    pub fn barrier_value(&self, r: f64) -> f64 {
        let edge = self.bound - self.margin;
        let c = r.clamp(-edge, edge);
        let value = -((c + self.bound).ln() + (self.bound - c).ln());
        let slope = -1.0 / (c + self.bound) + 1.0 / (self.bound - c);
        value + slope * (r - c)
    }

    /// Mean loss over pairs.
    ///
    /// # Shapes
    /// `chosen`, `rejected`: `[pairs]` (f32) -> `[1]`
    pub fn forward<B: Backend>(
        &self,
        chosen: Tensor<B, 1>,
        rejected: Tensor<B, 1>,
    ) -> Tensor<B, 1> {
        let pairs = chosen.dims()[0];
        self.forward_sum(chosen, rejected)
            .div_scalar(pairs.max(1) as f64)
    }

    /// Summed loss over pairs (what a step divides by all its pairs).
    ///
    /// # Shapes
    /// `chosen`, `rejected`: `[pairs]` (f32) -> `[1]`
    pub fn forward_sum<B: Backend>(
        &self,
        chosen: Tensor<B, 1>,
        rejected: Tensor<B, 1>,
    ) -> Tensor<B, 1> {
        let diff = chosen.clone() - rejected.clone();
        let log_p = activation::log_sigmoid(diff.clone());
        let p = activation::sigmoid(diff);
        let weight = (p
            .sub_scalar(0.5)
            .clamp_min(0.0)
            .mul_scalar(-2.0)
            .add_scalar(1.0))
        .powf_scalar(self.gamma);
        let ranking = (weight * log_p).neg();
        let penalty = self.barrier(chosen) + self.barrier(rejected);
        (ranking + penalty.mul_scalar(self.lambda)).sum()
    }

    fn barrier<B: Backend>(&self, r: Tensor<B, 1>) -> Tensor<B, 1> {
        let edge = self.bound - self.margin;
        let c = r.clone().clamp(-edge, edge);
        let value = (c.clone().add_scalar(self.bound).log()
            + c.clone().neg().add_scalar(self.bound).log())
        .neg();
        let slope = c.clone().add_scalar(self.bound).recip().neg()
            + c.clone().neg().add_scalar(self.bound).recip();
        value + slope * (r - c)
    }
}

/// Reward-model training settings (SPEC 6 defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardTrainConfig {
    /// Padded tokens per batch (SPEC 6: 16384): `rows * longest row <= budget`.
    pub token_budget: usize,
    /// Passes over the pairs (SPEC 6: 1).
    pub epochs: usize,
    /// Peak learning rate (SPEC 6: 1e-5).
    pub lr: f64,
    /// Final learning rate (SPEC 6: 5e-6).
    pub final_lr: f64,
    /// Weight decay (SPEC 6: 0.01).
    pub weight_decay: f32,
    /// The loss.
    pub loss: RankingLoss,
    /// Micro-batches each step's pairs are split into (gradient accumulation).
    #[serde(default = "crate::sft::one")]
    pub micro_batches: usize,
    /// Seed of the pair order.
    pub seed: u64,
}

impl Default for RewardTrainConfig {
    fn default() -> Self {
        Self {
            token_budget: 16_384,
            epochs: 1,
            lr: 1e-5,
            final_lr: 5e-6,
            weight_decay: 0.01,
            loss: RankingLoss::default(),
            micro_batches: 1,
            seed: 0,
        }
    }
}

/// What one reward-model step did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardStepStats {
    /// Mean loss.
    pub loss: f64,
    /// Pairs where chosen scored above rejected.
    pub accuracy: f64,
    /// Mean `chosen - rejected`.
    pub margin: f64,
    /// Pairs in the batch.
    pub pairs: usize,
}

impl RewardStepStats {
    /// The statistics of an engine step.
    pub fn from_step(stats: &StepStats<PairMetrics>) -> Self {
        Self {
            loss: stats.loss,
            accuracy: stats.metrics.accuracy(),
            margin: stats.metrics.mean_margin(),
            pairs: stats.metrics.pairs,
        }
    }
}

/// Encoded pairs grouped into batches under a padded-token budget.
pub fn budget_batches(pairs: &[(Vec<u32>, Vec<u32>)], budget: usize) -> Vec<Vec<usize>> {
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut width = 0;
    for (i, (c, r)) in pairs.iter().enumerate() {
        let w = width.max(c.len()).max(r.len());
        if !current.is_empty() && 2 * (current.len() + 1) * w > budget {
            batches.push(std::mem::take(&mut current));
            width = 0;
        }
        width = width.max(c.len()).max(r.len());
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Encoded preference pairs: `(chosen ids, rejected ids)`, each ending with the reward token.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PairBatch {
    /// The pairs.
    pub pairs: Vec<(Vec<u32>, Vec<u32>)>,
}

impl Batch for PairBatch {
    fn rows(&self) -> usize {
        self.pairs.len()
    }

    fn slice_rows(&self, start: usize, rows: usize) -> Self {
        Self {
            pairs: self.pairs[start..start + rows].to_vec(),
        }
    }

    fn tokens(&self) -> usize {
        let width = self
            .pairs
            .iter()
            .map(|(c, r)| c.len().max(r.len()))
            .max()
            .unwrap_or(0);
        2 * self.pairs.len() * width
    }
}

/// The reward model's objective: the [`RankingLoss`] averaged over the step's pairs. The pairs
/// are right-padded with `pad_id`; the score is read at each row's last (reward) token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankingObjective {
    /// The loss.
    pub loss: RankingLoss,
    /// Right-padding id.
    pub pad_id: u32,
}

impl<B: TrainBackend> Objective<B> for RankingObjective {
    type Model = RewardModel<B>;
    type Batch = PairBatch;
    type Totals = usize;
    type Metrics = PairMetrics;

    fn totals(&self, batch: &PairBatch) -> usize {
        batch.pairs.len()
    }

    fn loss(
        &self,
        model: &RewardModel<B>,
        batch: &PairBatch,
        totals: &usize,
    ) -> Result<(Tensor<B, 1>, PairMetrics), internlm2_train::TrainError> {
        let n = batch.pairs.len();
        let rows: Vec<Vec<u32>> = batch
            .pairs
            .iter()
            .map(|(c, _)| c.clone())
            .chain(batch.pairs.iter().map(|(_, r)| r.clone()))
            .collect();
        let (ids, last) = super::encode::pad_rows::<B>(&rows, self.pad_id, &model.model.device());
        let scores = model.scores(ids, &last);
        let chosen = scores.clone().slice([0..n]);
        let rejected = scores.slice([n..2 * n]);
        let (c, r) = (
            chosen.clone().into_data().into_vec::<f32>().expect("f32"),
            rejected.clone().into_data().into_vec::<f32>().expect("f32"),
        );
        let metrics = PairMetrics::of(c.iter().zip(&r).map(|(a, b)| f64::from(a - b)));
        let loss = self
            .loss
            .forward_sum(chosen, rejected)
            .div_scalar(*totals as f64);
        Ok((loss, metrics))
    }
}

impl RewardTrainConfig {
    /// The run over `pairs`: every epoch's pairs in a seeded order, grouped under the token
    /// budget, one step per group; LR from `lr` to `final_lr` after 5% warmup. Run it with
    /// [`internlm2_train::run`] on a trainer of [`RewardTrainConfig::objective`] for
    /// checkpoints, resume or data parallelism.
    pub fn plan(
        &self,
        encoder: &RewardEncoder,
        pairs: &[PreferencePair],
    ) -> Result<(StepList<PairBatch>, Phase), AlignError> {
        let mut encoded = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let mut chosen = pair.prompt.clone();
            chosen.extend_from_slice(&pair.chosen);
            let mut rejected = pair.prompt.clone();
            rejected.extend_from_slice(&pair.rejected);
            let domain = pair.domain.as_deref();
            encoded.push((
                encoder.encode(&chosen, domain)?,
                encoder.encode(&rejected, domain)?,
            ));
        }
        if encoded.is_empty() {
            return Err(AlignError::empty("no preference pairs"));
        }
        let mut steps = Vec::new();
        for order in epoch_orders(encoded.len(), self.epochs, self.seed) {
            let shuffled: Vec<(Vec<u32>, Vec<u32>)> =
                order.iter().map(|&i| encoded[i].clone()).collect();
            for batch in budget_batches(&shuffled, self.token_budget) {
                steps.push(PairBatch {
                    pairs: batch.into_iter().map(|i| shuffled[i].clone()).collect(),
                });
            }
        }
        let schedule = LrSchedule::new(self.lr, (steps.len() / 20).max(1), steps.len())
            .with_min_ratio(self.final_lr / self.lr);
        let phase = Phase::fixed("reward", schedule).with_micro_batches(self.micro_batches.max(1));
        Ok((StepList::new(steps), phase))
    }

    /// The objective these settings train with (padding with `encoder`'s pad id).
    pub fn objective(&self, encoder: &RewardEncoder) -> RankingObjective {
        RankingObjective {
            loss: self.loss,
            pad_id: encoder.pad_id,
        }
    }

    /// The optimiser settings (SPEC 6: weight decay 0.01).
    pub fn optimizer(&self) -> OptimizerConfig {
        OptimizerConfig::new().with_weight_decay(self.weight_decay)
    }
}

/// Trains a reward model on preference pairs with one
/// [`Trainer`](internlm2_train::Trainer); returns it and per-step
/// statistics. For checkpoints, resume, mixed precision or data parallelism, run
/// [`RewardTrainConfig::plan`] with [`internlm2_train::run`].
pub fn train_reward_model<B: TrainBackend>(
    model: RewardModel<B>,
    encoder: &RewardEncoder,
    pairs: &[PreferencePair],
    config: &RewardTrainConfig,
    mut on_step: impl FnMut(usize, &RewardStepStats),
) -> Result<(RewardModel<B>, Vec<RewardStepStats>), AlignError> {
    train_on_one(
        model,
        config.objective(encoder),
        config.optimizer(),
        config.plan(encoder, pairs)?,
        config.seed,
        |step, stats| {
            let s = RewardStepStats::from_step(stats);
            on_step(step, &s);
            s
        },
    )
}

/// The inference copy of a model being trained.
pub fn inference_copy<B: TrainBackend>(model: &RewardModel<B>) -> RewardModel<B::InnerBackend> {
    model.valid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use internlm2::backends::Cpu;

    fn tensor(values: &[f32]) -> Tensor<Cpu, 1> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &Default::default(),
        )
    }

    #[test]
    fn ranking_loss_by_hand() {
        let loss = RankingLoss::default();
        // chosen 1, rejected 0: P = sigmoid(1) = 0.731059, weight (1 - 2 * 0.231059)^2 = 0.289297,
        // -log P = 0.313262 -> 0.090625; barrier(1) = -(ln 6 + ln 4) = -3.178054,
        // barrier(0) = -2 ln 5 = -3.218876 -> penalty -6.396930 * 0.02 = -0.127939.
        let expected = 0.289_317_9 * 0.313_261_7 - 0.02 * 6.396_929_6;
        assert!(
            (loss.pair_value(1.0, 0.0) - expected).abs() < 1e-5,
            "{}",
            loss.pair_value(1.0, 0.0)
        );
        // A wrongly ordered pair gets the full -log P (weight 1).
        let p: f64 = 1.0 / (1.0 + 1f64.exp());
        let expected = -p.ln() + 0.02 * (-(4f64.ln() + 6f64.ln()) - (2.0 * 5f64.ln()));
        assert!((loss.pair_value(-1.0, 0.0) - expected).abs() < 1e-9);
        // The tensor version agrees.
        let t: f32 = loss
            .forward(tensor(&[1.0, -1.0]), tensor(&[0.0, 0.0]))
            .into_scalar();
        let reference = (loss.pair_value(1.0, 0.0) + loss.pair_value(-1.0, 0.0)) / 2.0;
        assert!((t as f64 - reference).abs() < 1e-5, "{t} vs {reference}");
    }

    #[test]
    fn barrier_near_and_outside_the_bounds_stays_finite() {
        let loss = RankingLoss::default();
        // Near +5 the barrier grows like -log(5 - r).
        let near = loss.barrier_value(4.99);
        assert!((near - -(9.99f64.ln() + 0.01f64.ln())).abs() < 1e-9);
        assert!(near > 2.0);
        // Outside the interval: finite, larger further out, symmetric.
        let (at, out, far) = (
            loss.barrier_value(5.0),
            loss.barrier_value(6.0),
            loss.barrier_value(50.0),
        );
        assert!(at.is_finite() && out.is_finite() && far.is_finite());
        assert!(far > out && out > at && at > near);
        assert!((loss.barrier_value(-6.0) - out).abs() < 1e-9);
        // Tensor version on out-of-range scores: finite.
        let t: f32 = loss
            .forward(tensor(&[7.0, -9.0]), tensor(&[-8.0, 6.0]))
            .into_scalar();
        assert!(t.is_finite());
        let reference = (loss.pair_value(7.0, -8.0) + loss.pair_value(-9.0, 6.0)) / 2.0;
        assert!(
            ((t as f64) - reference).abs() / reference.abs() < 1e-4,
            "{t} vs {reference}"
        );
    }

    #[test]
    fn budget_batches_respect_the_padded_budget() {
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = [10, 12, 30, 5, 5, 100]
            .iter()
            .map(|&n| (vec![0; n], vec![0; n / 2 + 1]))
            .collect();
        let batches = budget_batches(&pairs, 100);
        for b in &batches {
            let w = b
                .iter()
                .map(|&i| pairs[i].0.len().max(pairs[i].1.len()))
                .max()
                .unwrap();
            assert!(2 * b.len() * w <= 100 || b.len() == 1, "{b:?}");
        }
        assert_eq!(batches.concat(), (0..6).collect::<Vec<_>>());
    }
}

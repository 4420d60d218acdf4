//! PPO's two objectives on the shared engine — the clipped policy loss (with the PTX
//! pre-training loss) for the actor and the value loss for the critic — their batches of
//! scored rollouts, and the engines that step them: [`ActorCritic`] (one trainer each) or
//! [`DataParallel`] replicas of it.

use std::path::{Path, PathBuf};

use burn::tensor::{ElementConversion as _, Int, Tensor, TensorData};
use internlm2::InternLM2;
use internlm2::data::TokenBatch;
use internlm2::model::ForwardInput;
use internlm2_train::loss::batch_loss_sum;
use internlm2_train::{
    Batch, DataParallel, Metrics, Objective, OptimizerConfig, Replica, StepStats, Totals,
    TrainBackend, TrainError, TrainState, Trainer, write_checkpoint,
};
use serde::{Deserialize, Serialize};

use super::CriticModel;
use super::math::{clipped_policy_loss, value_loss};
use crate::logprobs::{ResponseRows, token_logprobs};
use crate::sft::SftExample;

/// One scored rollout: prompt + response ids, and per input position (`ids.len() - 1` of
/// them) the rollout-time log-probability, advantage, return and value.
#[derive(Debug, Clone, PartialEq)]
pub struct PpoRow {
    /// The ids, and which targets are the response.
    pub example: SftExample,
    /// `log pi_old(target)` per position.
    pub old_logprobs: Vec<f32>,
    /// Advantage per position (0 outside the response).
    pub advantages: Vec<f32>,
    /// Return per position (0 outside the response).
    pub returns: Vec<f32>,
    /// The critic's value per position at rollout time.
    pub old_values: Vec<f32>,
}

/// Rollouts of one PPO step, with the iteration's PTX rows (split over micro-batches and
/// replicas in proportion to the rollouts).
#[derive(Debug, Clone, Default)]
pub struct PpoBatch {
    /// The rollouts.
    pub rows: Vec<PpoRow>,
    /// Pre-training rows for the PTX loss.
    pub ptx: Option<TokenBatch>,
    /// Right-padding id.
    pub pad: u32,
}

impl Batch for PpoBatch {
    fn rows(&self) -> usize {
        self.rows.len()
    }

    fn slice_rows(&self, start: usize, rows: usize) -> Self {
        let total = self.rows.len().max(1);
        let ptx = self.ptx.as_ref().and_then(|ptx| {
            let (from, to) = (
                start * ptx.batch / total,
                (start + rows) * ptx.batch / total,
            );
            (to > from).then(|| ptx.slice_rows(from, to - from))
        });
        Self {
            rows: self.rows[start..start + rows].to_vec(),
            ptx,
            pad: self.pad,
        }
    }

    fn tokens(&self) -> usize {
        let width = self
            .rows
            .iter()
            .map(|r| r.example.ids.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        self.rows.len() * width + self.ptx.as_ref().map_or(0, Batch::tokens)
    }
}

/// The rows of a batch as tensors: ids, mask, and the per-position values right-padded.
struct Padded<B: TrainBackend> {
    inputs: Tensor<B, 2, Int>,
    targets: Tensor<B, 2, Int>,
    mask: Tensor<B, 2>,
    host_mask: Vec<f32>,
    rows: ResponseRows,
}

impl<B: TrainBackend> Padded<B> {
    fn new(batch: &PpoBatch, device: &B::Device) -> Self {
        let examples: Vec<&SftExample> = batch.rows.iter().map(|r| &r.example).collect();
        let rows = ResponseRows::new(&examples, batch.pad);
        let tensors = rows.to_batch::<B>(device);
        Self {
            inputs: tensors.inputs,
            targets: tensors.targets,
            mask: tensors.mask,
            host_mask: rows.mask.clone(),
            rows,
        }
    }

    /// `field` of every row, padded with 0 to the width.
    fn values(
        &self,
        batch: &PpoBatch,
        field: fn(&PpoRow) -> &[f32],
        device: &B::Device,
    ) -> Tensor<B, 2> {
        let [_, width] = self.rows.dims;
        let mut flat = Vec::with_capacity(batch.rows.len() * width);
        for row in &batch.rows {
            let v = field(row);
            flat.extend_from_slice(&v[..v.len().min(width)]);
            flat.extend(std::iter::repeat_n(0.0, width - v.len().min(width)));
        }
        Tensor::from_data(TensorData::new(flat, self.rows.dims), device)
    }
}

/// What the actor's loss is normalised by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyTotals {
    /// Response tokens (the policy loss is their mean).
    pub response_tokens: usize,
    /// PTX target tokens (the PTX loss is their mean).
    pub ptx_tokens: usize,
}

impl Totals for PolicyTotals {
    fn add(self, other: Self) -> Self {
        Self {
            response_tokens: self.response_tokens + other.response_tokens,
            ptx_tokens: self.ptx_tokens + other.ptx_tokens,
        }
    }

    fn is_empty(&self) -> bool {
        self.response_tokens == 0
    }
}

/// Statistics of an actor step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyMetrics {
    /// The policy loss (without PTX).
    pub policy_loss: f64,
    /// The PTX loss (mean over its targets, before the coefficient).
    pub ptx_loss: f64,
    /// Response tokens whose ratio left `[1 - eps, 1 + eps]`.
    pub clipped: usize,
    /// Response tokens.
    pub tokens: usize,
}

impl Metrics for PolicyMetrics {
    fn merge(&mut self, other: Self) {
        self.policy_loss += other.policy_loss;
        self.ptx_loss += other.ptx_loss;
        self.clipped += other.clipped;
        self.tokens += other.tokens;
    }
}

/// The actor's objective: the clipped surrogate loss averaged over the step's response tokens,
/// plus `ptx_coef` times the language-model loss on the PTX rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyObjective {
    /// Policy ratio clip.
    pub clip_eps: f64,
    /// Weight of the PTX loss (0: none).
    pub ptx_coef: f64,
}

impl<B: TrainBackend> Objective<B> for PolicyObjective {
    type Model = InternLM2<B>;
    type Batch = PpoBatch;
    type Totals = PolicyTotals;
    type Metrics = PolicyMetrics;

    fn totals(&self, batch: &PpoBatch) -> PolicyTotals {
        let response_tokens = batch
            .rows
            .iter()
            .map(|r| r.example.trained.iter().skip(1).filter(|&&t| t).count())
            .sum();
        let ptx_tokens = match &batch.ptx {
            Some(ptx) if self.ptx_coef > 0.0 => ptx.loss_tokens(),
            _ => 0,
        };
        PolicyTotals {
            response_tokens,
            ptx_tokens,
        }
    }

    fn loss(
        &self,
        actor: &InternLM2<B>,
        batch: &PpoBatch,
        totals: &PolicyTotals,
    ) -> Result<(Tensor<B, 1>, PolicyMetrics), TrainError> {
        let device = actor.device();
        let padded = Padded::<B>::new(batch, &device);
        let old = padded.values(batch, |r| &r.old_logprobs, &device);
        let advantages = padded.values(batch, |r| &r.advantages, &device);
        let logits = actor.forward_input(ForwardInput::new(padded.inputs.clone()));
        let ratio = (token_logprobs(logits, padded.targets.clone()) - old).exp();
        let ratios = ratio.clone().into_data().into_vec::<f32>().expect("f32");
        let clipped = ratios
            .iter()
            .zip(&padded.host_mask)
            .filter(|(r, m)| {
                **m > 0.0
                    && ((**r as f64) < 1.0 - self.clip_eps || (**r as f64) > 1.0 + self.clip_eps)
            })
            .count();
        let normalizer = totals.response_tokens.max(1) as f64;
        let policy = (clipped_policy_loss(ratio, advantages, self.clip_eps) * padded.mask)
            .sum()
            .div_scalar(normalizer);
        let mut metrics = PolicyMetrics {
            policy_loss: policy.clone().into_scalar().elem::<f64>(),
            ptx_loss: 0.0,
            clipped,
            tokens: padded.rows.response_tokens(),
        };
        let mut loss = policy;
        if let Some(ptx) = batch.ptx.as_ref().filter(|_| self.ptx_coef > 0.0) {
            let lm = batch_loss_sum(actor, ptx).div_scalar(totals.ptx_tokens.max(1) as f64);
            metrics.ptx_loss = lm.clone().into_scalar().elem::<f64>();
            loss = loss + lm.mul_scalar(self.ptx_coef);
        }
        Ok((loss, metrics))
    }
}

/// The critic's objective: the (optionally clipped) value loss averaged over the step's
/// response tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueObjective {
    /// Clip the values around the rollout-time values by this much.
    pub value_clip: Option<f64>,
}

impl<B: TrainBackend> Objective<B> for ValueObjective {
    type Model = CriticModel<B>;
    type Batch = PpoBatch;
    type Totals = usize;
    type Metrics = ();

    fn totals(&self, batch: &PpoBatch) -> usize {
        batch
            .rows
            .iter()
            .map(|r| r.example.trained.iter().skip(1).filter(|&&t| t).count())
            .sum()
    }

    fn loss(
        &self,
        critic: &CriticModel<B>,
        batch: &PpoBatch,
        totals: &usize,
    ) -> Result<(Tensor<B, 1>, ()), TrainError> {
        let device = critic.model.device();
        let padded = Padded::<B>::new(batch, &device);
        let returns = padded.values(batch, |r| &r.returns, &device);
        let old = padded.values(batch, |r| &r.old_values, &device);
        let values = critic.values(padded.inputs.clone());
        let loss = (value_loss(values, old, returns, self.value_clip) * padded.mask)
            .sum()
            .div_scalar(*totals as f64);
        Ok((loss, ()))
    }
}

/// What steps PPO's actor and critic: [`ActorCritic`] (one trainer each) or
/// [`DataParallel`] replicas of it.
pub trait PpoEngine<B: TrainBackend> {
    /// One critic step over `batches` (micro-batches of the iteration's rollouts).
    fn critic_step(&mut self, batches: &[PpoBatch], lr: f64) -> Result<StepStats, TrainError>;
    /// One actor step over `batches`.
    fn actor_step(
        &mut self,
        batches: &[PpoBatch],
        lr: f64,
    ) -> Result<StepStats<PolicyMetrics>, TrainError>;
    /// A copy of the actor.
    fn actor(&self) -> Result<InternLM2<B>, TrainError>;
    /// A copy of the critic.
    fn critic(&self) -> Result<CriticModel<B>, TrainError>;
    /// Writes actor and critic trainers to checkpoint `dir/step-XXXXXXXX` (`state.step` = the
    /// iterations done).
    fn save_checkpoint(
        &self,
        dir: &Path,
        state: &TrainState,
        keep_last: usize,
    ) -> Result<PathBuf, TrainError>;
}

/// PPO's actor and critic trainers, stepping in turn.
pub struct ActorCritic<B: TrainBackend> {
    /// The policy's trainer.
    pub actor: Trainer<B, PolicyObjective>,
    /// The value model's trainer.
    pub critic: Trainer<B, ValueObjective>,
}

impl<B: TrainBackend> ActorCritic<B> {
    /// Trainers for `actor` and `critic` with these objectives, optimiser states empty (no
    /// weight decay).
    pub fn new(
        actor: InternLM2<B>,
        critic: CriticModel<B>,
        policy: PolicyObjective,
        value: ValueObjective,
    ) -> Self {
        let optimizer = || OptimizerConfig::new().with_weight_decay(0.0);
        Self {
            actor: Trainer::with_objective(actor, policy, optimizer()),
            critic: Trainer::with_objective(critic, value, optimizer()),
        }
    }

    /// Restores both trainers (and the run's state) from a checkpoint written by
    /// [`PpoEngine::save_checkpoint`].
    pub fn load_checkpoint(
        path: &Path,
        policy: PolicyObjective,
        value: ValueObjective,
        device: &B::Device,
    ) -> Result<(Self, TrainState), TrainError> {
        let optimizer = || OptimizerConfig::new().with_weight_decay(0.0);
        let actor = Trainer::load_from(&path.join("actor"), policy, optimizer(), device)?;
        let critic = Trainer::load_from(&path.join("critic"), value, optimizer(), device)?;
        let state = internlm2_train::checkpoint::read_state(path)?;
        Ok((Self { actor, critic }, state))
    }

    /// Both models compute in `dtype` with f32 master weights (see
    /// [`Trainer::with_mixed_precision`]).
    pub fn with_mixed_precision(mut self, dtype: Option<burn::tensor::DType>) -> Self {
        self.actor.set_mixed_precision(dtype);
        self.critic.set_mixed_precision(dtype);
        self
    }
}

impl<B: TrainBackend> Replica<B> for ActorCritic<B> {
    fn fork(&self, device: &B::Device) -> Self {
        Self {
            actor: self.actor.fork(device),
            critic: self.critic.fork(device),
        }
    }
}

fn save_actor_critic<B: TrainBackend>(
    pair: &ActorCritic<B>,
    dir: &Path,
    state: &TrainState,
    keep_last: usize,
) -> Result<PathBuf, TrainError> {
    write_checkpoint(dir, state, keep_last, |tmp| {
        pair.actor.save_into(&tmp.join("actor"))?;
        pair.critic.save_into(&tmp.join("critic"))
    })
}

impl<B: TrainBackend> PpoEngine<B> for ActorCritic<B> {
    fn critic_step(&mut self, batches: &[PpoBatch], lr: f64) -> Result<StepStats, TrainError> {
        self.critic.step(batches, lr)
    }

    fn actor_step(
        &mut self,
        batches: &[PpoBatch],
        lr: f64,
    ) -> Result<StepStats<PolicyMetrics>, TrainError> {
        self.actor.step(batches, lr)
    }

    fn actor(&self) -> Result<InternLM2<B>, TrainError> {
        Ok(self.actor.model.clone())
    }

    fn critic(&self) -> Result<CriticModel<B>, TrainError> {
        Ok(self.critic.model.clone())
    }

    fn save_checkpoint(
        &self,
        dir: &Path,
        state: &TrainState,
        keep_last: usize,
    ) -> Result<PathBuf, TrainError> {
        save_actor_critic(self, dir, state, keep_last)
    }
}

impl<B: TrainBackend> PpoEngine<B> for DataParallel<B, ActorCritic<B>> {
    fn critic_step(&mut self, batches: &[PpoBatch], lr: f64) -> Result<StepStats, TrainError> {
        let objective = self.on_first(|r: &mut ActorCritic<B>| *r.critic.objective())?;
        self.step_with(|r| &mut r.critic, &objective, batches, lr)
    }

    fn actor_step(
        &mut self,
        batches: &[PpoBatch],
        lr: f64,
    ) -> Result<StepStats<PolicyMetrics>, TrainError> {
        let objective = self.on_first(|r: &mut ActorCritic<B>| *r.actor.objective())?;
        self.step_with(|r| &mut r.actor, &objective, batches, lr)
    }

    fn actor(&self) -> Result<InternLM2<B>, TrainError> {
        self.on_first(|r: &mut ActorCritic<B>| r.actor.model.clone())
    }

    fn critic(&self) -> Result<CriticModel<B>, TrainError> {
        self.on_first(|r: &mut ActorCritic<B>| r.critic.model.clone())
    }

    fn save_checkpoint(
        &self,
        dir: &Path,
        state: &TrainState,
        keep_last: usize,
    ) -> Result<PathBuf, TrainError> {
        self.save_with(dir, state, keep_last, save_actor_critic)
    }
}

//! PPO as COOL RLHF runs it (SPEC 6): actor and reference from the SFT model, a critic with a
//! value per token (initialised from the reward model's body), a frozen reward that sees its
//! domain system prompt alone, per-token KL penalty against the reference, GAE, the clipped
//! policy loss, an unclipped value loss, no advantage normalisation (both switchable), the
//! PTX pre-training loss, and critic pre-training with the actor frozen.

use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, ElementConversion as _, Int, Tensor, TensorData};
use internlm2::backends::Kernels;
use internlm2::chat::{self, Message};
use internlm2::generate::{Generation, GenerationConfig};
use internlm2::model::linear::Linear;
use internlm2::model::{ForwardInput, INIT_STD, InternLM2, InternLM2Model};
use internlm2::sampling::SamplingConfig;
use internlm2::train::loss::batch_loss_sum;
use internlm2::train::{GroupedAdamW, OptimizerConfig, TokenBatch};
use internlm2::{InternLM2Config, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::AlignError;
use crate::logprobs::{ResponseBatch, entropy, token_logprobs};
use crate::reward::{RewardModel, RewardScorer};
use crate::sft::SftExample;

/// The critic: the InternLM2 body with a value head read at every position.
#[derive(Module, Debug)]
pub struct CriticModel<B: Kernels> {
    /// `model.*`.
    pub model: InternLM2Model<B>,
    /// `[1, hidden]`.
    pub v_head: Linear<B>,
}

impl<B: Kernels> CriticModel<B> {
    /// A critic from a reward model: its body, a fresh value head (SPEC 6).
    pub fn from_reward_model(reward: RewardModel<B>) -> Self {
        let device = reward.model.device();
        let (h, dtype) = (reward.model.config.hidden_size, reward.model.dtype());
        Self {
            model: reward.model,
            v_head: Linear::random(h, 1, false, INIT_STD, dtype, &device),
        }
    }

    /// Random weights.
    pub fn init(config: &InternLM2Config, device: &B::Device) -> Self {
        Self::from_reward_model(RewardModel::init(config, device))
    }

    /// Values at every input position.
    ///
    /// # Shapes
    /// `ids`: `[batch, seq]` -> `[batch, seq]` (f32)
    pub fn values(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [b, s] = ids.dims();
        let hidden = self.model.forward(ForwardInput::new(ids), None);
        self.v_head.forward(hidden).reshape([b, s]).cast(DType::F32)
    }
}

/// A prompt to roll out.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// Token ids the actor continues (BOS first).
    pub ids: Vec<u32>,
    /// The conversation, for rewards that read messages.
    pub messages: Option<Vec<Message>>,
    /// Preference domain of the reward.
    pub domain: Option<String>,
}

impl Prompt {
    /// A chat prompt: the conversation rendered with the generation prompt.
    pub fn chat(
        tokenizer: &Tokenizer,
        messages: Vec<Message>,
        domain: Option<&str>,
    ) -> Result<Self, AlignError> {
        Ok(Self {
            ids: chat::encode(tokenizer, &messages, true)?,
            messages: Some(messages),
            domain: domain.map(str::to_string),
        })
    }
}

/// One sampled answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// The prompt.
    pub prompt: Prompt,
    /// Generated ids (a final stop token included).
    pub response: Vec<u32>,
    /// Generated text (stop tokens excluded), when a tokenizer was given.
    pub text: Option<String>,
}

/// What scores a finished rollout.
pub trait RewardFn {
    /// One reward per rollout.
    fn rewards(&self, rollouts: &[Rollout]) -> Result<Vec<f32>, AlignError>;
}

/// The frozen conditional reward model: the domain's system prompt is prepended for the
/// reward model alone (the actor never sees it).
pub struct ConditionalReward<B: Kernels> {
    /// The scorer.
    pub scorer: RewardScorer<B>,
}

impl<B: Kernels> RewardFn for ConditionalReward<B> {
    fn rewards(&self, rollouts: &[Rollout]) -> Result<Vec<f32>, AlignError> {
        rollouts
            .iter()
            .map(|r| {
                let mut conversation = r.prompt.messages.clone().ok_or_else(|| {
                    AlignError::InvalidConfig("the conditional reward needs chat prompts".into())
                })?;
                conversation.push(Message::assistant(r.text.clone().unwrap_or_default()));
                self.scorer.score(&conversation, r.prompt.domain.as_deref())
            })
            .collect()
    }
}

/// PPO settings (SPEC 6 values where the paper gives them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoConfig {
    /// Per-token KL penalty against the reference (SPEC 6: 0.01).
    pub kl_coef: f64,
    /// GAE lambda (SPEC 6: 0.99).
    pub gae_lambda: f64,
    /// GAE gamma (not published; 1).
    pub gamma: f64,
    /// Policy ratio clip (not published; 0.2).
    pub clip_eps: f64,
    /// Clip the value loss around the old values by this much (SPEC 6: off).
    pub value_clip: Option<f64>,
    /// Normalise advantages per batch (SPEC 6: off).
    pub normalize_advantages: bool,
    /// Weight of the PTX pre-training loss (SPEC 6: 0.5).
    pub ptx_coef: f64,
    /// Actor learning rate (SPEC 6: 1e-6).
    pub actor_lr: f64,
    /// Critic learning rate (SPEC 6: 5e-6).
    pub critic_lr: f64,
    /// Iterations that train the critic only (SPEC 6: 50).
    pub critic_warmup_iterations: usize,
    /// Optimisation passes over each rollout batch.
    pub ppo_epochs: usize,
    /// Sampling of the rollouts (SPEC 6: top-p 0.9).
    pub sampling: SamplingConfig,
    /// Longest answer.
    pub max_new_tokens: usize,
    /// Stop tokens of the rollouts.
    pub stop_token_ids: Vec<u32>,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            kl_coef: 0.01,
            gae_lambda: 0.99,
            gamma: 1.0,
            clip_eps: 0.2,
            value_clip: None,
            normalize_advantages: false,
            ptx_coef: 0.5,
            actor_lr: 1e-6,
            critic_lr: 5e-6,
            critic_warmup_iterations: 50,
            ppo_epochs: 1,
            sampling: SamplingConfig::default()
                .with_temperature(1.0)
                .with_top_p(0.9),
            max_new_tokens: 256,
            stop_token_ids: vec![2],
        }
    }
}

/// Per-iteration metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoStats {
    /// 1-based iteration.
    pub iteration: usize,
    /// Mean reward of the rollouts.
    pub reward: f64,
    /// Mean per-sequence KL to the reference (sum over response tokens of `log pi - log ref`).
    pub kl: f64,
    /// Mean per-token entropy of the actor on the responses.
    pub entropy: f64,
    /// Value loss.
    pub value_loss: f64,
    /// Policy loss (0 while the critic warms up).
    pub policy_loss: f64,
    /// PTX loss (0 without pre-training data).
    pub ptx_loss: f64,
    /// Mean response length in tokens.
    pub response_length: f64,
    /// Fraction of response tokens whose ratio was clipped.
    pub clip_fraction: f64,
    /// Whether the actor was updated (false during critic pre-training).
    pub actor_updated: bool,
}

/// Generalised advantage estimation over one response.
///
/// `rewards[t]` and `values[t]` for the response tokens `t = 0..n`; the value after the last
/// token is 0. Returns `(advantages, returns)` with `returns = advantages + values`.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut advantages = vec![0.0; n];
    let mut next_value = 0.0;
    let mut next_advantage = 0.0;
    for t in (0..n).rev() {
        let delta = rewards[t] + gamma * next_value - values[t];
        next_advantage = delta + gamma * lambda * next_advantage;
        advantages[t] = next_advantage;
        next_value = values[t];
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    (advantages, returns)
}

/// Mean of `x` where `mask` is 1.
fn masked_mean<B: burn::tensor::backend::Backend>(
    x: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    count: f64,
) -> Tensor<B, 1> {
    (x * mask).sum().div_scalar(count.max(1.0))
}

/// The PPO state: actor, critic, their optimisers, and the frozen reference.
pub struct Ppo<B: AutodiffBackend + Kernels>
where
    B::InnerBackend: Kernels,
{
    /// The policy being trained.
    pub actor: InternLM2<B>,
    /// The value model being trained.
    pub critic: CriticModel<B>,
    reference: InternLM2<B::InnerBackend>,
    actor_opt: GroupedAdamW<InternLM2<B>, B>,
    critic_opt: GroupedAdamW<CriticModel<B>, B>,
    /// Settings.
    pub config: PpoConfig,
    iteration: usize,
    pad: u32,
}

impl<B: AutodiffBackend + Kernels> Ppo<B>
where
    B::InnerBackend: Kernels,
{
    /// PPO from an actor (the SFT model), its frozen reference, and a critic.
    pub fn new(
        actor: InternLM2<B>,
        reference: InternLM2<B::InnerBackend>,
        critic: CriticModel<B>,
        config: PpoConfig,
    ) -> Self {
        let pad = actor.config().pad_token_id;
        Self {
            actor_opt: GroupedAdamW::new(&actor, OptimizerConfig::new().with_weight_decay(0.0)),
            critic_opt: GroupedAdamW::new(&critic, OptimizerConfig::new().with_weight_decay(0.0)),
            actor,
            critic,
            reference,
            config,
            iteration: 0,
            pad,
        }
    }

    /// Iterations done.
    pub fn iterations(&self) -> usize {
        self.iteration
    }

    /// Samples one answer per prompt with the current actor.
    pub fn rollout(
        &self,
        prompts: &[Prompt],
        tokenizer: Option<&Tokenizer>,
        seed: u64,
    ) -> Result<Vec<Rollout>, AlignError> {
        let actor = self.actor.valid();
        let config = GenerationConfig::default()
            .with_sampling(self.config.sampling.clone().with_seed(seed))
            .with_stop_token_ids(self.config.stop_token_ids.clone())
            .with_max_new_tokens(self.config.max_new_tokens);
        let mut generation = Generation::new(
            &actor,
            tokenizer,
            prompts.iter().map(|p| p.ids.clone()).collect(),
            &config,
        )?;
        for step in &mut generation {
            step?;
        }
        Ok(generation
            .finish()
            .into_iter()
            .zip(prompts)
            .map(|(out, prompt)| Rollout {
                prompt: prompt.clone(),
                response: out.tokens,
                text: out.text,
            })
            .collect())
    }

    /// One PPO iteration: roll out `prompts`, score, compute advantages, update the critic and
    /// (after the critic's warm-up) the actor, with the PTX loss on `ptx` when given.
    pub fn iterate(
        &mut self,
        prompts: &[Prompt],
        tokenizer: Option<&Tokenizer>,
        reward: &dyn RewardFn,
        ptx: Option<&TokenBatch>,
    ) -> Result<(PpoStats, Vec<Rollout>), AlignError> {
        self.iteration += 1;
        let rollouts = self.rollout(prompts, tokenizer, self.iteration as u64)?;
        let scores = reward.rewards(&rollouts)?;
        if let Some(bad) = scores.iter().find(|s| !s.is_finite()) {
            return Err(AlignError::Numerical(format!("reward {bad}")));
        }
        let examples: Vec<SftExample> = rollouts
            .iter()
            .map(|r| {
                let mut ids = r.prompt.ids.clone();
                ids.extend_from_slice(&r.response);
                let mut trained = vec![false; r.prompt.ids.len()];
                trained.extend(std::iter::repeat_n(true, r.response.len()));
                SftExample { ids, trained }
            })
            .collect();
        let rows: Vec<&SftExample> = examples.iter().collect();
        let device = self.actor.device();
        let batch = ResponseBatch::<B>::new(&rows, self.pad, &device);
        let [b, s] = batch.dims;

        // Old log-probs, reference log-probs and values, without gradients.
        let inner_batch = ResponseBatch::<B::InnerBackend>::new(&rows, self.pad, &device);
        let actor_inner = self.actor.valid();
        let old_lp = token_logprobs(
            actor_inner.forward_input(ForwardInput::new(inner_batch.inputs.clone())),
            inner_batch.targets.clone(),
        )
        .into_data()
        .into_vec::<f32>()
        .expect("f32");
        let ref_lp = token_logprobs(
            self.reference
                .forward_input(ForwardInput::new(inner_batch.inputs.clone())),
            inner_batch.targets.clone(),
        )
        .into_data()
        .into_vec::<f32>()
        .expect("f32");
        let values = self
            .critic
            .valid()
            .values(inner_batch.inputs.clone())
            .into_data()
            .into_vec::<f32>()
            .expect("f32");

        // Per-token rewards (KL penalty, score on the last token), GAE per row.
        let mask = &batch.mask_host;
        let mut advantages = vec![0f32; b * s];
        let mut returns = vec![0f32; b * s];
        let mut kl_total = 0.0;
        for row in 0..b {
            let idx: Vec<usize> = (0..s)
                .map(|j| row * s + j)
                .filter(|&i| mask[i] > 0.0)
                .collect();
            if idx.is_empty() {
                continue;
            }
            let kl: Vec<f64> = idx
                .iter()
                .map(|&i| (old_lp[i] - ref_lp[i]) as f64)
                .collect();
            kl_total += kl.iter().sum::<f64>();
            let mut r: Vec<f64> = kl.iter().map(|k| -self.config.kl_coef * k).collect();
            *r.last_mut().expect("non-empty") += scores[row] as f64;
            let v: Vec<f64> = idx.iter().map(|&i| values[i] as f64).collect();
            let (adv, ret) = gae(&r, &v, self.config.gamma, self.config.gae_lambda);
            for (k, &i) in idx.iter().enumerate() {
                advantages[i] = adv[k] as f32;
                returns[i] = ret[k] as f32;
            }
        }
        let count: f64 = mask.iter().map(|&m| m as f64).sum();
        if self.config.normalize_advantages && count > 1.0 {
            let mean = advantages
                .iter()
                .zip(mask)
                .map(|(a, m)| (a * m) as f64)
                .sum::<f64>()
                / count;
            let var = advantages
                .iter()
                .zip(mask)
                .map(|(a, m)| (m * (a - mean as f32).powi(2)) as f64)
                .sum::<f64>()
                / count;
            let std = var.sqrt().max(1e-8);
            for (a, m) in advantages.iter_mut().zip(mask) {
                if *m > 0.0 {
                    *a = ((*a as f64 - mean) / std) as f32;
                }
            }
        }
        let tensor =
            |v: &[f32]| Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [b, s]), &device);
        let (adv_t, ret_t, old_t, old_v) = (
            tensor(&advantages),
            tensor(&returns),
            tensor(&old_lp),
            tensor(&values),
        );

        let mut value_loss_value = 0.0;
        let mut policy_loss_value = 0.0;
        let mut ptx_value = 0.0;
        let mut entropy_value = 0.0;
        let mut clip_fraction = 0.0;
        let actor_updated = self.iteration > self.config.critic_warmup_iterations;
        for _ in 0..self.config.ppo_epochs.max(1) {
            // Critic.
            let v = self.critic.values(batch.inputs.clone());
            let value_loss = match self.config.value_clip {
                Some(c) => {
                    let clipped = old_v.clone() + (v.clone() - old_v.clone()).clamp(-c, c);
                    let a = (v - ret_t.clone()).powf_scalar(2.0);
                    let b2 = (clipped - ret_t.clone()).powf_scalar(2.0);
                    masked_mean(a.max_pair(b2), batch.mask.clone(), count).mul_scalar(0.5)
                }
                None => masked_mean(
                    (v - ret_t.clone()).powf_scalar(2.0),
                    batch.mask.clone(),
                    count,
                )
                .mul_scalar(0.5),
            };
            value_loss_value = value_loss.clone().into_scalar().elem::<f64>();
            let grads = GradientsParams::from_grads(value_loss.backward(), &self.critic);
            let (critic, _) =
                self.critic_opt
                    .step(self.critic.clone(), grads, self.config.critic_lr);
            self.critic = critic;

            // Actor.
            let logits = self
                .actor
                .forward_input(ForwardInput::new(batch.inputs.clone()));
            entropy_value =
                masked_mean(entropy(logits.clone().detach()), batch.mask.clone(), count)
                    .into_scalar()
                    .elem::<f64>();
            if !actor_updated {
                continue;
            }
            let new_lp = token_logprobs(logits, batch.targets.clone());
            let ratio = (new_lp - old_t.clone()).exp();
            let unclipped = ratio.clone() * adv_t.clone();
            let clipped = ratio
                .clone()
                .clamp(1.0 - self.config.clip_eps, 1.0 + self.config.clip_eps)
                * adv_t.clone();
            let policy_loss =
                masked_mean(unclipped.min_pair(clipped).neg(), batch.mask.clone(), count);
            let ratios = ratio.inner().into_data().into_vec::<f32>().expect("f32");
            clip_fraction = ratios
                .iter()
                .zip(mask)
                .filter(|(r, m)| {
                    **m > 0.0
                        && ((**r as f64) < 1.0 - self.config.clip_eps
                            || (**r as f64) > 1.0 + self.config.clip_eps)
                })
                .count() as f64
                / count.max(1.0);
            policy_loss_value = policy_loss.clone().into_scalar().elem::<f64>();
            let mut loss = policy_loss;
            if let Some(ptx) = ptx.filter(|_| self.config.ptx_coef > 0.0) {
                let tokens = ptx.loss_tokens().max(1) as f64;
                let lm = batch_loss_sum(&self.actor, ptx).div_scalar(tokens);
                ptx_value = lm.clone().into_scalar().elem::<f64>();
                loss = loss + lm.mul_scalar(self.config.ptx_coef);
            }
            let grads = GradientsParams::from_grads(loss.backward(), &self.actor);
            let (actor, _) = self
                .actor_opt
                .step(self.actor.clone(), grads, self.config.actor_lr);
            self.actor = actor;
        }
        let stats = PpoStats {
            iteration: self.iteration,
            reward: scores.iter().map(|&x| x as f64).sum::<f64>() / b as f64,
            kl: kl_total / b as f64,
            entropy: entropy_value,
            value_loss: value_loss_value,
            policy_loss: policy_loss_value,
            ptx_loss: ptx_value,
            response_length: rollouts
                .iter()
                .map(|r| r.response.len() as f64)
                .sum::<f64>()
                / b as f64,
            clip_fraction,
            actor_updated,
        };
        Ok((stats, rollouts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gae_by_hand() {
        // gamma 1, lambda 1: advantages are reward-to-go minus value.
        let (adv, ret) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.2, 0.1], 1.0, 1.0);
        assert_eq!(
            ret.iter()
                .map(|r| (r * 1e9).round() / 1e9)
                .collect::<Vec<_>>(),
            vec![1.0, 1.0, 1.0]
        );
        assert!(
            (adv[0] - 0.5).abs() < 1e-12
                && (adv[1] - 0.8).abs() < 1e-12
                && (adv[2] - 0.9).abs() < 1e-12
        );
        // lambda 0: one-step TD errors.
        let (adv, _) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.2, 0.1], 1.0, 0.0);
        assert!((adv[0] - (0.2 - 0.5)).abs() < 1e-12);
        assert!((adv[1] - (0.1 - 0.2)).abs() < 1e-12);
        assert!((adv[2] - (1.0 - 0.1)).abs() < 1e-12);
        // gamma 0.5, lambda 0.5: delta_2 = 1 - 0.1 = 0.9; delta_1 = 0 + 0.05 - 0.2 = -0.15;
        // A_1 = -0.15 + 0.25 * 0.9 = 0.075.
        let (adv, _) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.2, 0.1], 0.5, 0.5);
        assert!((adv[1] - 0.075).abs() < 1e-12);
    }
}

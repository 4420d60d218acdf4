//! PPO as COOL RLHF runs it (SPEC 6): actor and reference from the SFT model, a critic with a
//! value per token (initialised from the reward model's body), a frozen reward that sees its
//! domain system prompt alone, per-token KL penalty against the reference, GAE, the clipped
//! policy loss, an unclipped value loss, no advantage normalisation (both switchable), the
//! PTX pre-training loss, and critic pre-training with the actor frozen.
//!
//! The actor and the critic are objectives of the shared engine ([`objective`]), so PPO has its
//! gradient accumulation ([`PpoConfig::micro_batches`]), bf16 mixed precision, checkpoints with
//! exact resume ([`Ppo::save_checkpoint`]) and data parallelism ([`Ppo::with_engine`] on a
//! [`DataParallel`](internlm2_train::DataParallel) of [`ActorCritic`]). The arithmetic between
//! the rollouts and the losses is in [`math`], as pure functions.

pub mod math;
pub mod objective;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use burn::tensor::{DType, ElementConversion as _, Int, Tensor};
use internlm2::backends::Kernels;
use internlm2::chat::{self, Message};
use internlm2::generate::{Generation, GenerationConfig};
use internlm2::model::linear::Linear;
use internlm2::model::{ForwardInput, INIT_STD, InternLM2, InternLM2Model};
use internlm2::sampling::SamplingConfig;
use internlm2::{InternLM2Config, Tokenizer};
use internlm2_train::{Batch, TokenBatch, TrainBackend, TrainModel, TrainState};
use serde::{Deserialize, Serialize};

pub use math::gae;
pub use objective::{
    ActorCritic, PolicyMetrics, PolicyObjective, PolicyTotals, PpoBatch, PpoEngine, PpoRow,
    ValueObjective,
};

use crate::AlignError;
use crate::logprobs::{ResponseRows, entropy, token_logprobs};
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

impl<B: TrainBackend> TrainModel<B> for CriticModel<B> {
    fn config(&self) -> &InternLM2Config {
        &self.model.config
    }

    fn config_mut(&mut self) -> &mut InternLM2Config {
        &mut self.model.config
    }

    fn init(config: &InternLM2Config, device: &B::Device) -> Self {
        CriticModel::init(config, device)
    }

    fn dtype(&self) -> DType {
        self.model.dtype()
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
                    AlignError::invalid("the conditional reward needs chat prompts")
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
    /// Micro-batches each iteration's rollouts are split into (gradient accumulation).
    #[serde(default = "crate::sft::one")]
    pub micro_batches: usize,
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
            micro_batches: 1,
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

impl PpoConfig {
    /// The actor's objective.
    pub fn policy_objective(&self) -> PolicyObjective {
        PolicyObjective {
            clip_eps: self.clip_eps,
            ptx_coef: self.ptx_coef,
        }
    }

    /// The critic's objective.
    pub fn value_objective(&self) -> ValueObjective {
        ValueObjective {
            value_clip: self.value_clip,
        }
    }
}

/// The PPO loop: an engine stepping the actor and the critic, the frozen reference, and the
/// iteration count (rollouts of iteration `k` sample with seed `k`, so a run resumed from a
/// checkpoint repeats the straight run).
pub struct Ppo<B: TrainBackend, E: PpoEngine<B> = ActorCritic<B>> {
    engine: E,
    reference: InternLM2<B::InnerBackend>,
    /// Settings.
    pub config: PpoConfig,
    iteration: usize,
    pad: u32,
    _backend: PhantomData<B>,
}

impl<B: TrainBackend> Ppo<B> {
    /// PPO from an actor (the SFT model), its frozen reference, and a critic, each trained by
    /// its own [`Trainer`](internlm2_train::Trainer).
    pub fn new(
        actor: InternLM2<B>,
        reference: InternLM2<B::InnerBackend>,
        critic: CriticModel<B>,
        config: PpoConfig,
    ) -> Self {
        let engine = ActorCritic::new(
            actor,
            critic,
            config.policy_objective(),
            config.value_objective(),
        );
        Self::with_engine(engine, reference, config)
    }

    /// PPO resumed from a checkpoint of [`Ppo::save_checkpoint`] (the reference is the frozen
    /// SFT model, as when the run started).
    pub fn load_checkpoint(
        path: &Path,
        reference: InternLM2<B::InnerBackend>,
        config: PpoConfig,
        device: &B::Device,
    ) -> Result<Self, AlignError> {
        let (engine, state) = ActorCritic::load_checkpoint(
            path,
            config.policy_objective(),
            config.value_objective(),
            device,
        )?;
        Ok(Self::with_engine(engine, reference, config).with_iterations_done(state.step))
    }
}

impl<B: TrainBackend, E: PpoEngine<B>> Ppo<B, E> {
    /// PPO on `engine` (an [`ActorCritic`], or a
    /// [`DataParallel`](internlm2_train::DataParallel) group of one).
    pub fn with_engine(
        engine: E,
        reference: InternLM2<B::InnerBackend>,
        config: PpoConfig,
    ) -> Self {
        let pad = reference.config().pad_token_id;
        Self {
            engine,
            reference,
            config,
            iteration: 0,
            pad,
            _backend: PhantomData,
        }
    }

    /// Continues after `iterations` done (a resumed run: the next rollouts use the next seed).
    pub fn with_iterations_done(mut self, iterations: usize) -> Self {
        self.iteration = iterations;
        self
    }

    /// Iterations done.
    pub fn iterations(&self) -> usize {
        self.iteration
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// A copy of the actor (the policy being trained).
    pub fn actor(&self) -> Result<InternLM2<B>, AlignError> {
        Ok(self.engine.actor()?)
    }

    /// A copy of the critic.
    pub fn critic(&self) -> Result<CriticModel<B>, AlignError> {
        Ok(self.engine.critic()?)
    }

    /// Writes actor, critic and their optimiser moments to `dir/step-XXXXXXXX` (XXXXXXXX = the
    /// iterations done), keeping the newest `keep_last`.
    pub fn save_checkpoint(&self, dir: &Path, keep_last: usize) -> Result<PathBuf, AlignError> {
        let mut state = TrainState::new(0);
        state.step = self.iteration;
        Ok(self.engine.save_checkpoint(dir, &state, keep_last)?)
    }

    /// Samples one answer per prompt with the current actor.
    pub fn rollout(
        &self,
        prompts: &[Prompt],
        tokenizer: Option<&Tokenizer>,
        seed: u64,
    ) -> Result<Vec<Rollout>, AlignError> {
        let actor = self.engine.actor()?.valid();
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
        let iteration = self.iteration + 1;
        let rollouts = self.rollout(prompts, tokenizer, iteration as u64)?;
        let scores = reward.rewards(&rollouts)?;
        if let Some(bad) = scores.iter().find(|s| !s.is_finite()) {
            return Err(AlignError::Numerical {
                reason: format!("reward {bad}"),
            });
        }
        let scored = self.score_rollouts(&rollouts, &scores, ptx)?;
        let micro = scored.batch.split(self.config.micro_batches.max(1));
        let actor_updated = iteration > self.config.critic_warmup_iterations;
        let mut value_loss = 0.0;
        let mut policy = PolicyMetrics::default();
        for _ in 0..self.config.ppo_epochs.max(1) {
            value_loss = self.engine.critic_step(&micro, self.config.critic_lr)?.loss;
            if actor_updated {
                policy = self
                    .engine
                    .actor_step(&micro, self.config.actor_lr)?
                    .metrics;
            }
        }
        self.iteration = iteration;
        let b = rollouts.len().max(1) as f64;
        let stats = PpoStats {
            iteration,
            reward: scores.iter().map(|&x| x as f64).sum::<f64>() / b,
            kl: scored.kl_total / b,
            entropy: scored.entropy,
            value_loss,
            policy_loss: policy.policy_loss,
            ptx_loss: policy.ptx_loss,
            response_length: rollouts
                .iter()
                .map(|r| r.response.len() as f64)
                .sum::<f64>()
                / b,
            clip_fraction: policy.clipped as f64 / policy.tokens.max(1) as f64,
            actor_updated,
        };
        Ok((stats, rollouts))
    }

    /// The rollouts as a training batch: rollout-time log-probabilities (actor and reference)
    /// and values, KL-shaped rewards, GAE advantages and returns (whitened when configured).
    fn score_rollouts(
        &self,
        rollouts: &[Rollout],
        scores: &[f32],
        ptx: Option<&TokenBatch>,
    ) -> Result<Scored, AlignError> {
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
        let refs: Vec<&SftExample> = examples.iter().collect();
        let rows = ResponseRows::new(&refs, self.pad);
        let [b, s] = rows.dims;
        // Rollout-time log-probs, reference log-probs, entropy and values, without gradients.
        let actor = self.engine.actor()?.valid();
        let device = actor.device();
        let batch = rows.to_batch::<B::InnerBackend>(&device);
        let logits = actor.forward_input(ForwardInput::new(batch.inputs.clone()));
        let count = rows.response_tokens() as f64;
        let entropy = (entropy(logits.clone()) * batch.mask.clone())
            .sum()
            .into_scalar()
            .elem::<f64>()
            / count.max(1.0);
        let host = |t: Tensor<B::InnerBackend, 2>| t.into_data().into_vec::<f32>().expect("f32");
        let old_lp = host(token_logprobs(logits, batch.targets.clone()));
        let ref_lp = host(token_logprobs(
            self.reference
                .forward_input(ForwardInput::new(batch.inputs.clone())),
            batch.targets.clone(),
        ));
        let values = host(self.engine.critic()?.valid().values(batch.inputs.clone()));

        // Per-token rewards (KL penalty, score on the last token), GAE per row.
        let mask: Vec<bool> = rows.mask.iter().map(|&m| m > 0.0).collect();
        let mut advantages = vec![0f64; b * s];
        let mut returns = vec![0f64; b * s];
        let mut kl_total = 0.0;
        for (row, &score) in scores.iter().enumerate().take(b) {
            let idx: Vec<usize> = (row * s..(row + 1) * s).filter(|&i| mask[i]).collect();
            let pick = |v: &[f32]| idx.iter().map(|&i| v[i] as f64).collect::<Vec<_>>();
            let (rewards, kl) = math::kl_shaped_rewards(
                &pick(&old_lp),
                &pick(&ref_lp),
                score as f64,
                self.config.kl_coef,
            );
            kl_total += kl;
            let (adv, ret) = gae(
                &rewards,
                &pick(&values),
                self.config.gamma,
                self.config.gae_lambda,
            );
            for (k, &i) in idx.iter().enumerate() {
                advantages[i] = adv[k];
                returns[i] = ret[k];
            }
        }
        if self.config.normalize_advantages {
            math::whiten(&mut advantages, &mask);
        }
        let per_row = |v: &[f32], row: usize, n: usize| v[row * s..row * s + n].to_vec();
        let as_f32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        let (advantages, returns) = (as_f32(&advantages), as_f32(&returns));
        let batch_rows = examples
            .into_iter()
            .enumerate()
            .map(|(row, example)| {
                let n = example.ids.len().saturating_sub(1);
                PpoRow {
                    example,
                    old_logprobs: per_row(&old_lp, row, n),
                    advantages: per_row(&advantages, row, n),
                    returns: per_row(&returns, row, n),
                    old_values: per_row(&values, row, n),
                }
            })
            .collect();
        Ok(Scored {
            batch: PpoBatch {
                rows: batch_rows,
                ptx: ptx.cloned(),
                pad: self.pad,
            },
            kl_total,
            entropy,
        })
    }
}

/// An iteration's rollouts, scored.
struct Scored {
    batch: PpoBatch,
    /// Summed per-sequence KL estimates.
    kl_total: f64,
    /// Mean entropy of the rollout-time policy over the response tokens.
    entropy: f64,
}

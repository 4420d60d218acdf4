//! The conditional reward model (SPEC 6): the InternLM2 body with a 1-dimensional head
//! `v_head` read at a reward token appended after the conversation, a domain system prompt
//! selecting the preference (helpful, harmless, code, math, ...), and the focal ranking loss
//! with a log-barrier penalty keeping scores inside (-5, 5).
//!
//! Checkpoints follow the official InternLM2-Reward layout: `model.*` plus `v_head.weight`
//! `[1, H]`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, ElementConversion as _, Int, Tensor, TensorData, activation};
use internlm2::backends::Kernels;
use internlm2::chat::{self, Message};
use internlm2::checkpoint::{
    SaveOptions, WeightReader, backbone_tensors, reject_leftovers, torch_dtype, write_checkpoint,
};
use internlm2::model::linear::Linear;
use internlm2::model::{ForwardInput, INIT_STD, InternLM2, InternLM2Model};
use internlm2::train::{GroupedAdamW, LrSchedule, OptimizerConfig};
use internlm2::{CheckpointError, InternLM2Config, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::AlignError;

/// The reward token of the released vocabulary (`[UNUSED_TOKEN_130]`).
pub const RELEASED_REWARD_TOKEN: u32 = 92_527;

/// InternLM2 body + scalar head.
#[derive(Module, Debug)]
pub struct RewardModel<B: Kernels> {
    /// `model.*`.
    pub model: InternLM2Model<B>,
    /// `v_head`, `[1, hidden]`, no bias.
    pub v_head: Linear<B>,
}

impl<B: Kernels> RewardModel<B> {
    /// A reward model initialised from a (SFT) language model: its LM head is replaced by a
    /// freshly initialised `v_head` (SPEC 6).
    pub fn from_language_model(lm: InternLM2<B>) -> Self {
        let device = lm.device();
        let (h, dtype) = (lm.config().hidden_size, lm.dtype());
        Self {
            model: lm.model,
            v_head: Linear::random(h, 1, false, INIT_STD, dtype, &device),
        }
    }

    /// Random weights.
    pub fn init(config: &InternLM2Config, device: &B::Device) -> Self {
        Self::from_language_model(InternLM2::init(config, device))
    }

    /// Loads an InternLM2-Reward HuggingFace directory (`config.json`, `model.*`, `v_head.weight`).
    pub fn load(
        dir: impl AsRef<Path>,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        let dir = dir.as_ref();
        let config = InternLM2Config::from_hf_file(dir.join("config.json"))?;
        let mut reader = WeightReader::open(dir)?;
        let model = InternLM2Model::from_reader(&config, &mut reader, dtype, device)?;
        let head = reader.take_tensor("v_head.weight", [1, config.hidden_size], dtype, device)?;
        reject_leftovers(&reader)?;
        Ok(Self {
            model,
            v_head: Linear::from_tensors(head, None),
        })
    }

    /// Saves in the InternLM2-Reward layout.
    pub fn save(
        &self,
        dir: impl AsRef<Path>,
        options: &SaveOptions,
    ) -> Result<(), CheckpointError> {
        let mut config: serde_json::Value =
            serde_json::from_str(&self.model.config.to_hf_json(torch_dtype(options.dtype)))
                .expect("valid JSON");
        config["architectures"] = serde_json::json!(["InternLM2ForRewardModel"]);
        config["auto_map"]["AutoModel"] =
            serde_json::json!("modeling_internlm2.InternLM2ForRewardModel");
        let mut tensors = backbone_tensors(&self.model);
        tensors.push((
            "v_head.weight".to_string(),
            self.v_head.weight.val().into_data(),
        ));
        write_checkpoint(
            dir.as_ref(),
            &serde_json::to_string_pretty(&config).expect("JSON"),
            tensors,
            options,
        )
    }

    /// Scores of right-padded sequences read at `last[b]` (the reward token of row `b`).
    ///
    /// # Shapes
    /// `ids`: `[batch, seq]` -> `[batch]` in f32
    pub fn scores(&self, ids: Tensor<B, 2, Int>, last: &[usize]) -> Tensor<B, 1> {
        let [b, _] = ids.dims();
        let hidden = self.model.forward(ForwardInput::new(ids), None); // [b, s, h]
        let h = hidden.dims()[2];
        let device = hidden.device();
        let index: Vec<i64> = last
            .iter()
            .flat_map(|&p| std::iter::repeat_n(p as i64, h))
            .collect();
        let index = Tensor::<B, 3, Int>::from_data(TensorData::new(index, [b, 1, h]), &device);
        let at_token = hidden.gather(1, index); // [b, 1, h]
        self.v_head.forward(at_token).reshape([b]).cast(DType::F32)
    }
}

/// Domain -> system prompt selecting the preference the reward model applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainPrompts(pub BTreeMap<String, String>);

impl Default for DomainPrompts {
    /// Our prompts for `helpful`, `harmless`, `code` and `math` (the paper does not publish its
    /// own).
    fn default() -> Self {
        let prompts = [
            (
                "helpful",
                "Judge how helpful the assistant's reply is: does it answer the user's request correctly, completely and clearly?",
            ),
            (
                "harmless",
                "Judge how harmless the assistant's reply is: does it avoid dangerous, unethical, deceptive or offensive content while staying respectful?",
            ),
            (
                "code",
                "Judge the assistant's reply as code: is it correct, does it run as intended, does it handle edge cases, is it clear?",
            ),
            (
                "math",
                "Judge the assistant's mathematical reasoning: is every step valid and is the final answer correct?",
            ),
        ];
        Self(
            prompts
                .iter()
                .map(|(d, p)| (d.to_string(), p.to_string()))
                .collect(),
        )
    }
}

impl DomainPrompts {
    /// The conversation the reward model reads for `domain`: the domain's system prompt first
    /// (none for `None` or an unknown domain with `strict = false`).
    pub fn condition(
        &self,
        conversation: &[Message],
        domain: Option<&str>,
    ) -> Result<Vec<Message>, AlignError> {
        let mut out = Vec::with_capacity(conversation.len() + 1);
        if let Some(domain) = domain {
            let prompt = self.0.get(domain).ok_or_else(|| {
                AlignError::InvalidConfig(format!(
                    "no system prompt for preference domain {domain:?}"
                ))
            })?;
            out.push(Message::system(prompt.clone()));
        }
        out.extend_from_slice(conversation);
        Ok(out)
    }
}

/// A preference pair: the same prompt answered twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    /// The conversation up to the answer.
    pub prompt: Vec<Message>,
    /// The preferred answer (assistant turns).
    pub chosen: Vec<Message>,
    /// The other answer.
    pub rejected: Vec<Message>,
    /// Preference domain (selects the reward model's system prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl PreferencePair {
    /// A pair of single assistant answers to one prompt.
    pub fn new(
        prompt: Vec<Message>,
        chosen: impl Into<String>,
        rejected: impl Into<String>,
        domain: Option<&str>,
    ) -> Self {
        Self {
            prompt,
            chosen: vec![Message::assistant(chosen)],
            rejected: vec![Message::assistant(rejected)],
            domain: domain.map(str::to_string),
        }
    }
}

/// How conversations become reward-model inputs.
#[derive(Debug, Clone)]
pub struct RewardEncoder {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Appended after the conversation; the score is read there.
    pub reward_token: u32,
    /// Domain prompts.
    pub prompts: DomainPrompts,
    /// Longest sequence (SPEC 6: 8192); longer conversations keep their last tokens.
    pub max_len: usize,
    /// Right-padding id.
    pub pad_id: u32,
}

impl RewardEncoder {
    /// An encoder with the default prompts, the reward token found by name
    /// (`[UNUSED_TOKEN_130]`) or the released id 92527, and max length 8192.
    pub fn new(tokenizer: Tokenizer) -> Result<Self, AlignError> {
        let reward_token = tokenizer
            .token_to_id("[UNUSED_TOKEN_130]")
            .or_else(|| {
                (tokenizer.vocab_size() > RELEASED_REWARD_TOKEN as usize)
                    .then_some(RELEASED_REWARD_TOKEN)
            })
            .ok_or_else(|| {
                AlignError::InvalidConfig("the vocabulary has no reward token".into())
            })?;
        let pad_id = tokenizer.eos_id().unwrap_or(0);
        Ok(Self {
            tokenizer,
            reward_token,
            prompts: DomainPrompts::default(),
            max_len: 8192,
            pad_id,
        })
    }

    /// Ids of a conversation (domain prompt first) ending with the reward token.
    pub fn encode(
        &self,
        conversation: &[Message],
        domain: Option<&str>,
    ) -> Result<Vec<u32>, AlignError> {
        let conditioned = self.prompts.condition(conversation, domain)?;
        let mut ids = self
            .tokenizer
            .encode(&chat::render(&conditioned, false)?, true)?;
        ids.push(self.reward_token);
        if ids.len() > self.max_len {
            ids.drain(..ids.len() - self.max_len);
        }
        Ok(ids)
    }

    /// Right-pads sequences into one `[batch, max_len]` tensor; returns it and each row's last
    /// position.
    pub fn batch<B: Backend>(
        &self,
        rows: &[Vec<u32>],
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Vec<usize>) {
        let width = rows.iter().map(Vec::len).max().unwrap_or(1);
        let mut flat = Vec::with_capacity(rows.len() * width);
        for row in rows {
            flat.extend(row.iter().map(|&i| i as i64));
            flat.extend(std::iter::repeat_n(self.pad_id as i64, width - row.len()));
        }
        let last = rows.iter().map(|r| r.len() - 1).collect();
        (
            Tensor::from_data(TensorData::new(flat, [rows.len(), width]), device),
            last,
        )
    }
}

/// Scoring with a trained reward model.
pub struct RewardScorer<B: Kernels> {
    /// The model.
    pub model: RewardModel<B>,
    /// How conversations are encoded.
    pub encoder: RewardEncoder,
}

impl<B: Kernels> RewardScorer<B> {
    /// Scores of several conversations under one domain.
    pub fn score_many(
        &self,
        conversations: &[Vec<Message>],
        domain: Option<&str>,
    ) -> Result<Vec<f32>, AlignError> {
        let rows = conversations
            .iter()
            .map(|c| self.encoder.encode(c, domain))
            .collect::<Result<Vec<_>, _>>()?;
        let (ids, last) = self.encoder.batch::<B>(&rows, &self.model.model.device());
        Ok(self
            .model
            .scores(ids, &last)
            .into_data()
            .into_vec::<f32>()
            .expect("f32 scores"))
    }

    /// The score of one conversation.
    pub fn score(&self, conversation: &[Message], domain: Option<&str>) -> Result<f32, AlignError> {
        Ok(self.score_many(&[conversation.to_vec()], domain)?[0])
    }

    /// Which of two conversations the model prefers (`Less` = `a` is worse), with both scores.
    pub fn compare(
        &self,
        a: &[Message],
        b: &[Message],
        domain: Option<&str>,
    ) -> Result<(Ordering, f32, f32), AlignError> {
        let s = self.score_many(&[a.to_vec(), b.to_vec()], domain)?;
        Ok((s[0].total_cmp(&s[1]), s[0], s[1]))
    }

    /// Indices of `conversations`, best first, with their scores.
    pub fn rank(
        &self,
        conversations: &[Vec<Message>],
        domain: Option<&str>,
    ) -> Result<Vec<(usize, f32)>, AlignError> {
        let scores = self.score_many(conversations, domain)?;
        let mut ranked: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(ranked)
    }

    /// Best-of-N: samples `n` answers to `prompt` with `policy` and returns the one the reward
    /// model scores highest, with every answer's score.
    pub fn best_of_n<P: Kernels>(
        &self,
        policy: &InternLM2<P>,
        tokenizer: &Tokenizer,
        prompt: &[Message],
        n: usize,
        config: &internlm2::generate::GenerationConfig,
        domain: Option<&str>,
    ) -> Result<(String, Vec<(String, f32)>), AlignError> {
        if n == 0 {
            return Err(AlignError::InvalidConfig("best-of-N needs n >= 1".into()));
        }
        let ids = chat::encode(tokenizer, prompt, true)?;
        let prompts = vec![ids; n];
        let outputs =
            internlm2::generate::generate(policy, Some(tokenizer), prompts, config, |_| true)?;
        let answers: Vec<String> = outputs
            .into_iter()
            .map(|o| o.text.unwrap_or_default())
            .collect();
        let conversations: Vec<Vec<Message>> = answers
            .iter()
            .map(|a| {
                let mut c = prompt.to_vec();
                c.push(Message::assistant(a.clone()));
                c
            })
            .collect();
        let scores = self.score_many(&conversations, domain)?;
        let scored: Vec<(String, f32)> = answers.into_iter().zip(scores).collect();
        let best = scored
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(a, _)| a.clone())
            .expect("n >= 1");
        Ok((best, scored))
    }
}

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
        (ranking + penalty.mul_scalar(self.lambda)).mean()
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

/// Trains a reward model on preference pairs; returns per-step statistics.
pub fn train_reward_model<B: AutodiffBackend + Kernels>(
    model: RewardModel<B>,
    encoder: &RewardEncoder,
    pairs: &[PreferencePair],
    config: &RewardTrainConfig,
    mut on_step: impl FnMut(usize, &RewardStepStats),
) -> Result<(RewardModel<B>, Vec<RewardStepStats>), AlignError>
where
    B::InnerBackend: Kernels,
{
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
        return Err(AlignError::EmptyData("no preference pairs".into()));
    }
    let optimizer_config = OptimizerConfig::new().with_weight_decay(config.weight_decay);
    let mut optimizer = GroupedAdamW::<RewardModel<B>, B>::new(&model, optimizer_config);
    let mut model = model;
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    let mut batches = Vec::new();
    for epoch in 0..config.epochs.max(1) {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
            config.seed.wrapping_add(epoch as u64),
        ));
        let shuffled: Vec<(Vec<u32>, Vec<u32>)> =
            order.iter().map(|&i| encoded[i].clone()).collect();
        for batch in budget_batches(&shuffled, config.token_budget) {
            batches.push(
                batch
                    .into_iter()
                    .map(|i| shuffled[i].clone())
                    .collect::<Vec<_>>(),
            );
        }
    }
    let schedule = LrSchedule::new(config.lr, (batches.len() / 20).max(1), batches.len())
        .with_min_ratio(config.final_lr / config.lr);
    let device = model.model.device();
    let mut stats = Vec::with_capacity(batches.len());
    for (step, batch) in batches.iter().enumerate() {
        let n = batch.len();
        let rows: Vec<Vec<u32>> = batch
            .iter()
            .map(|(c, _)| c.clone())
            .chain(batch.iter().map(|(_, r)| r.clone()))
            .collect();
        let (ids, last) = encoder.batch::<B>(&rows, &device);
        let scores = model.scores(ids, &last);
        let chosen = scores.clone().slice([0..n]);
        let rejected = scores.slice([n..2 * n]);
        let loss = config.loss.forward(chosen.clone(), rejected.clone());
        let loss_value: f64 = loss.clone().into_scalar().elem();
        if !loss_value.is_finite() {
            return Err(AlignError::Numerical(format!(
                "reward loss is {loss_value} at step {step}"
            )));
        }
        let (c, r) = (
            chosen.inner().into_data().into_vec::<f32>().expect("f32"),
            rejected.inner().into_data().into_vec::<f32>().expect("f32"),
        );
        let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &model);
        let (updated, _) = optimizer.step(model, grads, schedule.lr(step));
        model = updated;
        let s = RewardStepStats {
            loss: loss_value,
            accuracy: c.iter().zip(&r).filter(|(a, b)| a > b).count() as f64 / n as f64,
            margin: c.iter().zip(&r).map(|(a, b)| (a - b) as f64).sum::<f64>() / n as f64,
            pairs: n,
        };
        on_step(step + 1, &s);
        stats.push(s);
    }
    Ok((model, stats))
}

/// Pair accuracy of a reward model on held-out pairs.
pub fn pair_accuracy<B: Kernels>(
    scorer: &RewardScorer<B>,
    pairs: &[PreferencePair],
) -> Result<f64, AlignError> {
    if pairs.is_empty() {
        return Err(AlignError::EmptyData("no pairs to evaluate".into()));
    }
    let mut right = 0;
    for pair in pairs {
        let mut chosen = pair.prompt.clone();
        chosen.extend_from_slice(&pair.chosen);
        let mut rejected = pair.prompt.clone();
        rejected.extend_from_slice(&pair.rejected);
        let (order, _, _) = scorer.compare(&chosen, &rejected, pair.domain.as_deref())?;
        if order == Ordering::Greater {
            right += 1;
        }
    }
    Ok(right as f64 / pairs.len() as f64)
}

/// The inference copy of a model being trained.
pub fn inference_copy<B: AutodiffBackend + Kernels>(
    model: &RewardModel<B>,
) -> RewardModel<B::InnerBackend>
where
    B::InnerBackend: Kernels,
{
    model.valid()
}

#[cfg(test)]
mod tests {
    use super::*;
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

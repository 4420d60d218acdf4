//! Direct preference optimisation on the same preference pairs as the reward model:
//! `-log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))))`, the
//! log-probabilities summed over the response tokens. The cheaper alternative to reward model
//! plus PPO: one model trains, the frozen reference is only evaluated once per pair.

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion as _, Tensor, TensorData, activation};
use internlm2::backends::Kernels;
use internlm2::model::ForwardInput;
use internlm2::train::{GroupedAdamW, LrSchedule, OptimizerConfig};
use internlm2::{InternLM2, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::AlignError;
use crate::logprobs::{ResponseBatch, response_logprobs};
use crate::reward::PreferencePair;
use crate::sft::{SftExample, tokenize_conversation};

/// DPO settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    /// Strength of the implicit KL constraint.
    pub beta: f64,
    /// Peak learning rate.
    pub lr: f64,
    /// Pairs per step.
    pub batch_pairs: usize,
    /// Passes over the pairs.
    pub epochs: usize,
    /// Seed of the pair order.
    pub seed: u64,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            lr: 5e-7,
            batch_pairs: 8,
            epochs: 1,
            seed: 0,
        }
    }
}

/// What one DPO step did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpoStepStats {
    /// Mean loss.
    pub loss: f64,
    /// Mean implicit reward margin `beta * (chosen log-ratio - rejected log-ratio)`.
    pub margin: f64,
    /// Pairs whose margin is positive.
    pub accuracy: f64,
}

/// A pair tokenised for DPO, with its reference log-probabilities.
#[derive(Debug, Clone)]
pub struct DpoExample {
    chosen: SftExample,
    rejected: SftExample,
    ref_chosen: f32,
    ref_rejected: f32,
}

/// Tokenises pairs and scores them once with the frozen reference.
pub fn prepare<B: Kernels>(
    reference: &InternLM2<B>,
    tokenizer: &Tokenizer,
    pairs: &[PreferencePair],
    batch_pairs: usize,
) -> Result<Vec<DpoExample>, AlignError> {
    let mut examples = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let mut c = pair.prompt.clone();
        c.extend_from_slice(&pair.chosen);
        let mut r = pair.prompt.clone();
        r.extend_from_slice(&pair.rejected);
        examples.push((
            tokenize_conversation(tokenizer, &c)?,
            tokenize_conversation(tokenizer, &r)?,
        ));
    }
    let pad = tokenizer.eos_id().unwrap_or(0);
    let device = reference.device();
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_pairs.max(1)) {
        let rows: Vec<&SftExample> = chunk
            .iter()
            .map(|(c, _)| c)
            .chain(chunk.iter().map(|(_, r)| r))
            .collect();
        let batch = ResponseBatch::<B>::new(&rows, pad, &device);
        let logits = reference.forward_input(ForwardInput::new(batch.inputs.clone()));
        let lp = response_logprobs(logits, &batch)
            .into_data()
            .into_vec::<f32>()
            .expect("f32");
        let n = chunk.len();
        for (i, (c, r)) in chunk.iter().enumerate() {
            out.push(DpoExample {
                chosen: c.clone(),
                rejected: r.clone(),
                ref_chosen: lp[i],
                ref_rejected: lp[n + i],
            });
        }
    }
    Ok(out)
}

/// Trains `policy` with DPO; returns it and per-step statistics.
pub fn train_dpo<B: AutodiffBackend + Kernels>(
    policy: InternLM2<B>,
    examples: &[DpoExample],
    pad: u32,
    config: &DpoConfig,
    mut on_step: impl FnMut(usize, &DpoStepStats),
) -> Result<(InternLM2<B>, Vec<DpoStepStats>), AlignError>
where
    B::InnerBackend: Kernels,
{
    if examples.is_empty() {
        return Err(AlignError::EmptyData("no DPO pairs".into()));
    }
    let mut optimizer = GroupedAdamW::<InternLM2<B>, B>::new(
        &policy,
        OptimizerConfig::new().with_weight_decay(0.0),
    );
    let mut policy = policy;
    let device = policy.device();
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let steps_per_epoch = examples.len().div_ceil(config.batch_pairs.max(1));
    let total = steps_per_epoch * config.epochs.max(1);
    let schedule = LrSchedule::new(config.lr, (total / 10).max(1), total).with_min_ratio(1.0);
    let mut stats = Vec::with_capacity(total);
    let mut step = 0;
    for epoch in 0..config.epochs.max(1) {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(
            config.seed.wrapping_add(epoch as u64),
        ));
        for chunk in order.chunks(config.batch_pairs.max(1)) {
            let n = chunk.len();
            let rows: Vec<&SftExample> = chunk
                .iter()
                .map(|&i| &examples[i].chosen)
                .chain(chunk.iter().map(|&i| &examples[i].rejected))
                .collect();
            let batch = ResponseBatch::<B>::new(&rows, pad, &device);
            let logits = policy.forward_input(ForwardInput::new(batch.inputs.clone()));
            let lp = response_logprobs(logits, &batch);
            let reference: Vec<f32> = chunk
                .iter()
                .map(|&i| examples[i].ref_chosen)
                .chain(chunk.iter().map(|&i| examples[i].ref_rejected))
                .collect();
            let reference = Tensor::<B, 1>::from_data(TensorData::new(reference, [2 * n]), &device);
            let ratio = lp - reference; // log pi - log ref
            let margin =
                (ratio.clone().slice([0..n]) - ratio.slice([n..2 * n])).mul_scalar(config.beta);
            let loss = activation::log_sigmoid(margin.clone()).neg().mean();
            let loss_value: f64 = loss.clone().into_scalar().elem();
            if !loss_value.is_finite() {
                return Err(AlignError::Numerical(format!(
                    "DPO loss is {loss_value} at step {step}"
                )));
            }
            let margins = margin.inner().into_data().into_vec::<f32>().expect("f32");
            let grads = GradientsParams::from_grads(loss.backward(), &policy);
            let (updated, _) = optimizer.step(policy, grads, schedule.lr(step));
            policy = updated;
            step += 1;
            let s = DpoStepStats {
                loss: loss_value,
                margin: margins.iter().map(|&m| m as f64).sum::<f64>() / n as f64,
                accuracy: margins.iter().filter(|&&m| m > 0.0).count() as f64 / n as f64,
            };
            on_step(step, &s);
            stats.push(s);
        }
    }
    Ok((policy, stats))
}

/// Mean implicit reward margin of `policy` over `examples` (positive: chosen preferred).
pub fn mean_margin<B: Kernels>(
    policy: &InternLM2<B>,
    examples: &[DpoExample],
    pad: u32,
    beta: f64,
) -> f64 {
    let device = policy.device();
    let mut total = 0.0;
    for chunk in examples.chunks(8) {
        let n = chunk.len();
        let rows: Vec<&SftExample> = chunk
            .iter()
            .map(|e| &e.chosen)
            .chain(chunk.iter().map(|e| &e.rejected))
            .collect();
        let batch = ResponseBatch::<B>::new(&rows, pad, &device);
        let lp = response_logprobs(
            policy.forward_input(ForwardInput::new(batch.inputs.clone())),
            &batch,
        )
        .into_data()
        .into_vec::<f32>()
        .expect("f32");
        for (i, e) in chunk.iter().enumerate() {
            total += beta * (((lp[i] - e.ref_chosen) - (lp[n + i] - e.ref_rejected)) as f64);
        }
    }
    total / examples.len() as f64
}

/// The inference copy of a policy being trained.
pub fn inference_copy<B: AutodiffBackend + Kernels>(
    policy: &InternLM2<B>,
) -> InternLM2<B::InnerBackend>
where
    B::InnerBackend: Kernels,
{
    policy.valid()
}

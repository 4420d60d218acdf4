//! Direct preference optimisation on the same preference pairs as the reward model:
//! `-log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))))`, the
//! log-probabilities summed over the response tokens. The cheaper alternative to reward model
//! plus PPO: one model trains, the frozen reference is only evaluated once per pair. DPO is an
//! [`Objective`] of the shared engine.

use burn::module::AutodiffModule;
use burn::tensor::{Tensor, TensorData, activation};
use internlm2::backends::Kernels;
use internlm2::model::ForwardInput;
use internlm2::{InternLM2, Tokenizer};
use internlm2_train::{
    Batch, LrSchedule, Objective, OptimizerConfig, Phase, StepList, StepStats, TrainBackend,
    TrainError,
};
use serde::{Deserialize, Serialize};

use crate::AlignError;
use crate::logprobs::{ResponseBatch, ResponseRows, response_logprobs};
use crate::pairs::{PairMetrics, epoch_orders, train_on_one};
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
    /// Micro-batches each step's pairs are split into (gradient accumulation).
    #[serde(default = "crate::sft::one")]
    pub micro_batches: usize,
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
            micro_batches: 1,
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

impl DpoStepStats {
    /// The statistics of an engine step.
    pub fn from_step(stats: &StepStats<PairMetrics>) -> Self {
        Self {
            loss: stats.loss,
            margin: stats.metrics.mean_margin(),
            accuracy: stats.metrics.accuracy(),
        }
    }
}

/// Pairs of one DPO step.
#[derive(Debug, Clone, Default)]
pub struct DpoBatch {
    /// The pairs.
    pub examples: Vec<DpoExample>,
}

impl Batch for DpoBatch {
    fn rows(&self) -> usize {
        self.examples.len()
    }

    fn slice_rows(&self, start: usize, rows: usize) -> Self {
        Self {
            examples: self.examples[start..start + rows].to_vec(),
        }
    }

    fn tokens(&self) -> usize {
        let width = self
            .examples
            .iter()
            .map(|e| {
                e.chosen
                    .ids
                    .len()
                    .max(e.rejected.ids.len())
                    .saturating_sub(1)
            })
            .max()
            .unwrap_or(0);
        2 * self.examples.len() * width
    }
}

/// The DPO objective: `-log sigmoid(margin)` averaged over the step's pairs, rows right-padded
/// with `pad`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoObjective {
    /// Strength of the implicit KL constraint.
    pub beta: f64,
    /// Right-padding id.
    pub pad: u32,
}

impl<B: TrainBackend> Objective<B> for DpoObjective {
    type Model = InternLM2<B>;
    type Batch = DpoBatch;
    type Totals = usize;
    type Metrics = PairMetrics;

    fn totals(&self, batch: &DpoBatch) -> usize {
        batch.examples.len()
    }

    fn loss(
        &self,
        policy: &InternLM2<B>,
        batch: &DpoBatch,
        totals: &usize,
    ) -> Result<(Tensor<B, 1>, PairMetrics), TrainError> {
        let n = batch.examples.len();
        let device = policy.device();
        let rows: Vec<&SftExample> = batch
            .examples
            .iter()
            .map(|e| &e.chosen)
            .chain(batch.examples.iter().map(|e| &e.rejected))
            .collect();
        let rows = ResponseRows::new(&rows, self.pad).to_batch::<B>(&device);
        let logits = policy.forward_input(ForwardInput::new(rows.inputs.clone()));
        let lp = response_logprobs(logits, &rows);
        let reference: Vec<f32> = batch
            .examples
            .iter()
            .map(|e| e.ref_chosen)
            .chain(batch.examples.iter().map(|e| e.ref_rejected))
            .collect();
        let reference = Tensor::<B, 1>::from_data(TensorData::new(reference, [2 * n]), &device);
        let ratio = lp - reference; // log pi - log ref
        let margin = (ratio.clone().slice([0..n]) - ratio.slice([n..2 * n])).mul_scalar(self.beta);
        let margins = margin.clone().into_data().into_vec::<f32>().expect("f32");
        let metrics = PairMetrics::of(margins.iter().map(|&m| f64::from(m)));
        let loss = activation::log_sigmoid(margin)
            .neg()
            .sum()
            .div_scalar(*totals as f64);
        Ok((loss, metrics))
    }
}

impl DpoConfig {
    /// The run over `examples`: every epoch's pairs in a seeded order, `batch_pairs` per step,
    /// a constant LR after 10% warmup. Run it with [`internlm2_train::run`] on a trainer of
    /// [`DpoConfig::objective`] for checkpoints, resume or data parallelism.
    pub fn plan(&self, examples: &[DpoExample]) -> Result<(StepList<DpoBatch>, Phase), AlignError> {
        if examples.is_empty() {
            return Err(AlignError::empty("no DPO pairs"));
        }
        let mut steps = Vec::new();
        for order in epoch_orders(examples.len(), self.epochs, self.seed) {
            for chunk in order.chunks(self.batch_pairs.max(1)) {
                steps.push(DpoBatch {
                    examples: chunk.iter().map(|&i| examples[i].clone()).collect(),
                });
            }
        }
        let total = steps.len();
        let schedule = LrSchedule::new(self.lr, (total / 10).max(1), total).with_min_ratio(1.0);
        let phase = Phase::fixed("dpo", schedule).with_micro_batches(self.micro_batches.max(1));
        Ok((StepList::new(steps), phase))
    }

    /// The objective these settings train with.
    pub fn objective(&self, pad: u32) -> DpoObjective {
        DpoObjective {
            beta: self.beta,
            pad,
        }
    }

    /// The optimiser settings (no weight decay).
    pub fn optimizer(&self) -> OptimizerConfig {
        OptimizerConfig::new().with_weight_decay(0.0)
    }
}

/// Trains `policy` with DPO on one [`Trainer`](internlm2_train::Trainer); returns it and per-step statistics. For
/// checkpoints, resume, mixed precision or data parallelism, run [`DpoConfig::plan`] with
/// [`internlm2_train::run`].
pub fn train_dpo<B: TrainBackend>(
    policy: InternLM2<B>,
    examples: &[DpoExample],
    pad: u32,
    config: &DpoConfig,
    mut on_step: impl FnMut(usize, &DpoStepStats),
) -> Result<(InternLM2<B>, Vec<DpoStepStats>), AlignError> {
    train_on_one(
        policy,
        config.objective(pad),
        config.optimizer(),
        config.plan(examples)?,
        config.seed,
        |step, stats| {
            let s = DpoStepStats::from_step(stats);
            on_step(step, &s);
            s
        },
    )
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
pub fn inference_copy<B: TrainBackend>(policy: &InternLM2<B>) -> InternLM2<B::InnerBackend> {
    policy.valid()
}

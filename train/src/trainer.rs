//! One optimiser step of any [`Objective`]: micro-batches (gradient accumulation) -> the
//! objective's loss -> backward -> global-norm clipping -> AdamW per parameter group; bf16
//! mixed precision with f32 master weights; saving and restoring everything a step depends on.

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, ElementConversion as _, Tensor};
use internlm2::InternLM2;
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::checkpoint::{TrainState, io_err, read_state, write_checkpoint};
use crate::loss::LanguageModel;
use crate::objective::{Batch, Metrics, Objective, Totals, TrainBackend, TrainModel, step_totals};
use crate::optim::{GroupedAdamW, OptimizerConfig};

/// What one optimiser step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStats<M = ()> {
    /// The step's loss (the objective's mean over the step's units).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Input tokens processed.
    pub tokens: usize,
    /// The objective's statistics, added up over the micro-batches (and over the replicas of
    /// a node under data parallelism).
    pub metrics: M,
}

/// The accumulated gradients of a step's micro-batches ([`Trainer::gradients`]).
pub struct Gradients<M> {
    /// The loss of these micro-batches (their part of the step's loss).
    pub loss: f64,
    /// Their statistics.
    pub metrics: M,
    /// The gradients, summed.
    pub grads: GradientsParams,
}

/// A model, its objective and its two AdamW optimisers (matrices with weight decay, 1-D
/// parameters without). `Trainer<B>` trains an [`InternLM2`] as a language model.
pub struct Trainer<B: TrainBackend, O: Objective<B> = LanguageModel> {
    /// The model being trained (the master weights, in the dtype they were created in).
    pub model: O::Model,
    objective: O,
    optimizer: GroupedAdamW<O::Model, B>,
    compute_dtype: Option<DType>,
}

/// Casts every float parameter inside the autodiff graph: the cast's backward casts the
/// gradient back, so gradients arrive on the master weights in their own dtype.
struct CastParams(DType);

impl<B: AutodiffBackend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = if tensor.dtype() == self.0 {
            tensor
        } else {
            tensor.cast(self.0)
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

fn recorder_err(path: &Path) -> impl FnOnce(burn::record::RecorderError) -> TrainError + '_ {
    move |e| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl<B: TrainBackend> Trainer<B> {
    /// A language-model trainer for `model`, optimiser states empty.
    pub fn new(model: InternLM2<B>, config: OptimizerConfig) -> Self {
        Self::with_objective(model, LanguageModel, config)
    }

    /// Restores a language-model trainer and its state from a checkpoint directory
    /// (`step-XXXXXXXX`).
    pub fn load_checkpoint(
        path: &Path,
        config: OptimizerConfig,
        device: &B::Device,
    ) -> Result<(Self, TrainState), TrainError> {
        Self::load_checkpoint_with(path, LanguageModel, config, device)
    }
}

impl<B: TrainBackend, O: Objective<B>> Trainer<B, O> {
    /// A trainer of `model` for `objective`, optimiser states empty.
    pub fn with_objective(model: O::Model, objective: O, config: OptimizerConfig) -> Self {
        Self {
            optimizer: GroupedAdamW::new(&model, config),
            objective,
            model,
            compute_dtype: None,
        }
    }

    /// Mixed precision: forward and backward run with the weights cast to `dtype` (e.g.
    /// `DType::BF16`) while the master weights, gradients and AdamW moments stay in the
    /// model's own dtype (f32). Norm statistics, attention softmax, logits and the loss are
    /// computed in f32 by the model in either case. `None` (the default) trains in the
    /// master dtype. Not stored in checkpoints: set it again after
    /// [`load_checkpoint`](Self::load_checkpoint).
    ///
    /// ```
    /// use burn::tensor::DType;
    /// use internlm2_train::{OptimizerConfig, Trainer};
    /// use internlm2::{InternLM2, InternLM2Config, backends::CpuAutodiff};
    /// let model = InternLM2::<CpuAutodiff>::init(&InternLM2Config::new(64, 32, 64, 1, 2, 1), &Default::default());
    /// let trainer = Trainer::new(model, OptimizerConfig::new()).with_mixed_precision(Some(DType::BF16));
    /// assert_eq!(trainer.compute_dtype(), Some(DType::BF16));
    /// ```
    pub fn with_mixed_precision(mut self, dtype: Option<DType>) -> Self {
        self.set_mixed_precision(dtype);
        self
    }

    /// Sets the compute dtype as [`with_mixed_precision`](Self::with_mixed_precision) does.
    pub fn set_mixed_precision(&mut self, dtype: Option<DType>) {
        self.compute_dtype = dtype.filter(|d| *d != self.model.dtype());
    }

    /// The dtype forward and backward run in, when it differs from the master weights'.
    pub fn compute_dtype(&self) -> Option<DType> {
        self.compute_dtype
    }

    /// The objective.
    pub fn objective(&self) -> &O {
        &self.objective
    }

    /// The optimiser settings.
    pub fn optimizer_config(&self) -> &OptimizerConfig {
        self.optimizer.config()
    }

    /// The model as the forward pass sees it: the master weights, cast to the compute dtype.
    fn compute_model(&self) -> O::Model {
        match self.compute_dtype {
            Some(dtype) => self.model.clone().map(&mut CastParams(dtype)),
            None => self.model.clone(),
        }
    }

    /// The mean loss over all units of `batches`, without updating anything (no gradients
    /// are recorded).
    pub fn evaluate(&self, batches: &[O::Batch]) -> Result<f64, TrainError> {
        let totals = step_totals(&self.objective, batches);
        if totals.is_empty() {
            return Err(TrainError::NoLossTokens);
        }
        let model = self.model.clone().no_grad();
        let mut sum = 0.0;
        for batch in batches {
            let (loss, _) = self.objective.loss(&model, batch, &totals)?;
            sum += loss.into_scalar().elem::<f64>();
        }
        Ok(sum)
    }

    /// One optimiser step at learning rate `lr` over `micro_batches`: their gradients are
    /// accumulated and the loss is the mean over all their units, so two micro-batches of `n`
    /// rows make the same step as one batch of `2n` rows.
    pub fn step(
        &mut self,
        micro_batches: &[O::Batch],
        lr: f64,
    ) -> Result<StepStats<O::Metrics>, TrainError> {
        let totals = step_totals(&self.objective, micro_batches);
        let gradients = self.gradients(micro_batches, &totals)?;
        let grad_norm = self.apply(gradients.grads, lr);
        Ok(StepStats {
            loss: gradients.loss,
            grad_norm,
            tokens: micro_batches.iter().map(Batch::tokens).sum(),
            metrics: gradients.metrics,
        })
    }

    /// The accumulated gradients of `micro_batches` for a loss normalised by `totals` (the
    /// whole step's, which may span other replicas), that loss part and its statistics.
    pub fn gradients(
        &self,
        micro_batches: &[O::Batch],
        totals: &O::Totals,
    ) -> Result<Gradients<O::Metrics>, TrainError> {
        if totals.is_empty() {
            return Err(TrainError::NoLossTokens);
        }
        let mut accumulator = GradientsAccumulator::<O::Model>::new();
        let mut loss = 0.0;
        let mut metrics = O::Metrics::default();
        for batch in micro_batches {
            let model = self.compute_model();
            let (part, part_metrics) = self.objective.loss(&model, batch, totals)?;
            let value = part.clone().into_scalar().elem::<f64>();
            if !value.is_finite() {
                return Err(TrainError::NonFiniteLoss { loss: value });
            }
            loss += value;
            metrics.merge(part_metrics);
            let grads = GradientsParams::from_grads(part.backward(), &self.model);
            accumulator.accumulate(&self.model, grads);
        }
        Ok(Gradients {
            loss,
            metrics,
            grads: accumulator.grads(),
        })
    }

    /// Clips `grads` to the global norm and applies AdamW to both groups; returns the norm
    /// before clipping.
    pub fn apply(&mut self, grads: GradientsParams, lr: f64) -> f64 {
        let (model, grad_norm) = self.optimizer.step(self.model.clone(), grads, lr);
        self.model = model;
        grad_norm
    }

    /// A copy of this trainer on `device`: the same weights (parameter ids included),
    /// objective, optimiser moments and precision (a data-parallel replica).
    pub fn fork(&self, device: &B::Device) -> Self {
        let model = self.model.clone().fork(device);
        let optimizer = GroupedAdamW::new(&model, self.optimizer.config().clone())
            .load_record(self.optimizer.to_record());
        Self {
            model,
            objective: self.objective.clone(),
            optimizer,
            compute_dtype: self.compute_dtype,
        }
    }

    /// Writes the model (`model.mpk`), the optimiser moments and the body's `config.json`
    /// into the directory `dir` (created if needed).
    pub fn save_into(&self, dir: &Path) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let rec = recorder();
        self.model
            .clone()
            .save_file(dir.join("model"), &rec)
            .map_err(recorder_err(dir))?;
        let (decay, one_d) = self.optimizer.to_record();
        Recorder::<B>::record(&rec, decay, dir.join("optimizer-decay"))
            .map_err(recorder_err(dir))?;
        Recorder::<B>::record(&rec, one_d, dir.join("optimizer-1d")).map_err(recorder_err(dir))?;
        std::fs::write(
            dir.join("config.json"),
            self.model.config().to_hf_json("float32"),
        )
        .map_err(io_err(dir))
    }

    /// Restores a trainer written by [`save_into`](Self::save_into) from `dir`.
    pub fn load_from(
        dir: &Path,
        objective: O,
        config: OptimizerConfig,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let model_config = internlm2::InternLM2Config::from_hf_file(dir.join("config.json"))
            .map_err(|e| TrainError::Checkpoint {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            })?;
        let rec = recorder();
        let model = O::Model::init(&model_config, device)
            .load_file(dir.join("model"), &rec, device)
            .map_err(recorder_err(dir))?;
        let mut trainer = Self::with_objective(model, objective, config);
        let decay = Recorder::<B>::load(&rec, dir.join("optimizer-decay"), device)
            .map_err(recorder_err(dir))?;
        let one_d = Recorder::<B>::load(&rec, dir.join("optimizer-1d"), device)
            .map_err(recorder_err(dir))?;
        trainer.optimizer = trainer.optimizer.load_record((decay, one_d));
        Ok(trainer)
    }

    /// Writes model, optimiser moments and `state` to `dir/step-XXXXXXXX` atomically (a
    /// temporary directory renamed into place), keeping the newest `keep_last` checkpoints.
    pub fn save_checkpoint(
        &self,
        dir: &Path,
        state: &TrainState,
        keep_last: usize,
    ) -> Result<PathBuf, TrainError> {
        write_checkpoint(dir, state, keep_last, |tmp| self.save_into(tmp))
    }

    /// Restores a trainer of `objective` and its state from a checkpoint directory
    /// (`step-XXXXXXXX`).
    pub fn load_checkpoint_with(
        path: &Path,
        objective: O,
        config: OptimizerConfig,
        device: &B::Device,
    ) -> Result<(Self, TrainState), TrainError> {
        let trainer = Self::load_from(path, objective, config, device)?;
        Ok((trainer, read_state(path)?))
    }
}

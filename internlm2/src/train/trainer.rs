//! One optimiser step: micro-batches (gradient accumulation) -> masked next-token loss ->
//! backward -> global-norm clipping -> AdamW per parameter group. Plus saving and restoring
//! everything a step depends on.

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule as _, Module, ModuleMapper, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, ElementConversion as _, Tensor};
use internlm2_backends::Kernels;
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::data::{DataCursor, TokenBatch};
use super::loss::batch_loss_sum;
use super::optim::{GroupedAdamW, OptimizerConfig};
use crate::config::InternLM2Config;
use crate::model::InternLM2;

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// Mean loss per counted target token.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Targets counted in the loss.
    pub loss_tokens: usize,
    /// Input tokens processed.
    pub tokens: usize,
}

/// Everything besides weights and optimiser moments that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps done.
    pub step: usize,
    /// Where the data stream continues.
    pub cursor: DataCursor,
    /// The run's seed (data order derives from it).
    pub seed: u64,
    /// The losses of every step so far (for the loss curve).
    pub losses: Vec<f64>,
}

impl TrainState {
    /// A run that has not started.
    pub fn new(seed: u64) -> Self {
        Self {
            step: 0,
            cursor: DataCursor::default(),
            seed,
            losses: Vec::new(),
        }
    }
}

/// A model with its two AdamW optimisers (matrices with weight decay, 1-D parameters without).
pub struct Trainer<B: AutodiffBackend + Kernels>
where
    B::InnerBackend: Kernels,
{
    /// The model being trained (the master weights, in the dtype they were created in).
    pub model: InternLM2<B>,
    optimizer: GroupedAdamW<InternLM2<B>, B>,
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

impl<B: AutodiffBackend + Kernels> Trainer<B>
where
    B::InnerBackend: Kernels,
{
    /// A trainer for `model`, optimiser states empty.
    pub fn new(model: InternLM2<B>, config: OptimizerConfig) -> Self {
        Self {
            optimizer: GroupedAdamW::new(&model, config),
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
    /// use internlm2::train::{OptimizerConfig, Trainer};
    /// use internlm2::{InternLM2, InternLM2Config, backends::CpuAutodiff};
    /// let model = InternLM2::<CpuAutodiff>::init(&InternLM2Config::new(64, 32, 64, 1, 2, 1), &Default::default());
    /// let trainer = Trainer::new(model, OptimizerConfig::new()).with_mixed_precision(Some(DType::BF16));
    /// assert_eq!(trainer.compute_dtype(), Some(DType::BF16));
    /// ```
    pub fn with_mixed_precision(mut self, dtype: Option<DType>) -> Self {
        self.compute_dtype = dtype.filter(|d| *d != self.model.dtype());
        self
    }

    /// The dtype forward and backward run in, when it differs from the master weights'.
    pub fn compute_dtype(&self) -> Option<DType> {
        self.compute_dtype
    }

    /// The model as the forward pass sees it: the master weights, cast to the compute dtype.
    fn compute_model(&self) -> InternLM2<B> {
        match self.compute_dtype {
            Some(dtype) => self.model.clone().map(&mut CastParams(dtype)),
            None => self.model.clone(),
        }
    }

    /// The optimiser settings.
    pub fn optimizer_config(&self) -> &OptimizerConfig {
        self.optimizer.config()
    }

    /// Mean loss over the counted targets of `batches`, without updating anything.
    pub fn evaluate(&self, batches: &[TokenBatch]) -> Result<f64, TrainError> {
        let count: usize = batches.iter().map(TokenBatch::loss_tokens).sum();
        if count == 0 {
            return Err(TrainError::NoLossTokens);
        }
        let model = self.model.valid();
        let mut sum = 0.0;
        for batch in batches {
            sum += batch_loss_sum(&model, batch).into_scalar().elem::<f64>();
        }
        Ok(sum / count as f64)
    }

    /// One optimiser step at learning rate `lr` over `micro_batches`: their gradients are
    /// accumulated and the loss is the mean over all their counted targets, so two
    /// micro-batches of `n` rows make the same step as one batch of `2n` rows.
    pub fn step(&mut self, micro_batches: &[TokenBatch], lr: f64) -> Result<StepStats, TrainError> {
        let loss_tokens: usize = micro_batches.iter().map(TokenBatch::loss_tokens).sum();
        let (loss, grads) = self.gradients(micro_batches, loss_tokens)?;
        let grad_norm = self.apply(grads, lr);
        Ok(StepStats {
            loss,
            grad_norm,
            loss_tokens,
            tokens: micro_batches.iter().map(|b| b.batch * b.seq_len).sum(),
        })
    }

    /// The accumulated gradients of `micro_batches` for a loss normalised by `normalizer`
    /// counted targets (the whole step's, which may span other replicas), and that loss part.
    pub fn gradients(
        &self,
        micro_batches: &[TokenBatch],
        normalizer: usize,
    ) -> Result<(f64, GradientsParams), TrainError> {
        if normalizer == 0 {
            return Err(TrainError::NoLossTokens);
        }
        let mut accumulator = GradientsAccumulator::<InternLM2<B>>::new();
        let mut loss = 0.0;
        for batch in micro_batches {
            let model = self.compute_model();
            let part = batch_loss_sum(&model, batch).div_scalar(normalizer as f64);
            loss += part.clone().into_scalar().elem::<f64>();
            let grads = GradientsParams::from_grads(part.backward(), &self.model);
            accumulator.accumulate(&self.model, grads);
        }
        Ok((loss, accumulator.grads()))
    }

    /// Clips `grads` to the global norm and applies AdamW to both groups; returns the norm
    /// before clipping.
    pub fn apply(&mut self, grads: GradientsParams, lr: f64) -> f64 {
        let (model, grad_norm) = self.optimizer.step(self.model.clone(), grads, lr);
        self.model = model;
        grad_norm
    }

    /// Writes model, optimiser moments and `state` to `dir/step-XXXXXXXX` atomically (a
    /// temporary directory renamed into place), keeping the newest `keep_last` checkpoints.
    pub fn save_checkpoint(
        &self,
        dir: &Path,
        state: &TrainState,
        keep_last: usize,
    ) -> Result<PathBuf, TrainError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TrainError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let name = checkpoint_name(state.step);
        let tmp = dir.join(format!("{name}.tmp"));
        let target = dir.join(&name);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let rec = recorder();
        self.model
            .clone()
            .save_file(tmp.join("model"), &rec)
            .map_err(recorder_err(&tmp))?;
        let (decay, one_d) = self.optimizer.to_record();
        Recorder::<B>::record(&rec, decay, tmp.join("optimizer-decay"))
            .map_err(recorder_err(&tmp))?;
        Recorder::<B>::record(&rec, one_d, tmp.join("optimizer-1d")).map_err(recorder_err(&tmp))?;
        let json = serde_json::to_string_pretty(state).expect("state serialises");
        std::fs::write(tmp.join("state.json"), json).map_err(io(&tmp))?;
        std::fs::write(
            tmp.join("config.json"),
            self.model.config().to_hf_json("float32"),
        )
        .map_err(io(&tmp))?;
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(io(&target))?;
        }
        std::fs::rename(&tmp, &target).map_err(io(&target))?;
        // Keep the newest `keep_last`.
        let mut all = list_checkpoints(dir)?;
        all.sort();
        let excess = all.len().saturating_sub(keep_last.max(1));
        for old in all.into_iter().take(excess) {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        Ok(target)
    }

    /// Restores a trainer and its state from a checkpoint directory (`step-XXXXXXXX`).
    pub fn load_checkpoint(
        path: &Path,
        config: OptimizerConfig,
        device: &B::Device,
    ) -> Result<(Self, TrainState), TrainError> {
        let model_config =
            InternLM2Config::from_hf_file(path.join("config.json")).map_err(|e| {
                TrainError::Checkpoint {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            })?;
        let rec = recorder();
        let model = InternLM2::<B>::init(&model_config, device)
            .load_file(path.join("model"), &rec, device)
            .map_err(recorder_err(path))?;
        let mut trainer = Self::new(model, config);
        let decay = Recorder::<B>::load(&rec, path.join("optimizer-decay"), device)
            .map_err(recorder_err(path))?;
        let one_d = Recorder::<B>::load(&rec, path.join("optimizer-1d"), device)
            .map_err(recorder_err(path))?;
        trainer.optimizer = trainer.optimizer.load_record((decay, one_d));
        let state_path = path.join("state.json");
        let text = std::fs::read_to_string(&state_path).map_err(|source| TrainError::Io {
            path: state_path.clone(),
            source,
        })?;
        let state = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
            path: state_path,
            reason: e.to_string(),
        })?;
        Ok((trainer, state))
    }
}

/// The directory name of the checkpoint taken after `step` steps.
pub(crate) fn checkpoint_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// The `step-XXXXXXXX` checkpoints in `dir` (unordered).
pub fn list_checkpoints(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir).map_err(|source| TrainError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-") && !n.ends_with(".tmp"))
        })
        .collect())
}

/// The newest checkpoint in `dir`, if any.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    let mut all = list_checkpoints(dir)?;
    all.sort();
    Ok(all.pop())
}

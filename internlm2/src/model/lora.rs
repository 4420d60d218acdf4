//! LoRA fine-tuning (burn 0.21 has no LoRA module, so the SDK has its own): low-rank adapters
//! on chosen linear layers, the base weights frozen, adapters saved on their own in PEFT's
//! layout (`adapter_model.safetensors` + `adapter_config.json`) and mergeable into the base
//! weights for a plain HuggingFace checkpoint.
//!
//! ```
//! use internlm2::model::lora::{LoraConfig, LoraTarget};
//! use internlm2::{InternLM2, InternLM2Config};
//! use internlm2_backends::Cpu;
//! let config = InternLM2Config::new(64, 32, 64, 2, 4, 2);
//! let model: InternLM2<Cpu> = InternLM2::init(&config, &Default::default());
//! let lora = LoraConfig::new(8, 16.0).with_targets(vec![LoraTarget::Wqkv, LoraTarget::Wo]);
//! let adapted = lora.attach(model, &Default::default());
//! assert_eq!(lora.adapters(&adapted).len(), 2 * 2 * 2); // layers x targets x (A, B)
//! let merged = lora.merge(adapted); // plain InternLM2 again
//! assert!(merged.model.layers[0].attention.wqkv.lora.is_none());
//! ```

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use internlm2_backends::Kernels;
use serde::{Deserialize, Serialize};

use super::InternLM2;
use super::linear::{Linear, LoraAdapter};
use crate::checkpoint::{SaveDtype, SaveOptions, WeightReader, write_checkpoint};
use crate::error::CheckpointError;

/// The linear layers an adapter can attach to (PEFT `target_modules` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraTarget {
    /// `attention.wqkv`.
    Wqkv,
    /// `attention.wo`.
    Wo,
    /// `feed_forward.w1`.
    W1,
    /// `feed_forward.w2`.
    W2,
    /// `feed_forward.w3`.
    W3,
}

impl LoraTarget {
    fn module(self) -> &'static str {
        match self {
            LoraTarget::Wqkv => "attention.wqkv",
            LoraTarget::Wo => "attention.wo",
            LoraTarget::W1 => "feed_forward.w1",
            LoraTarget::W2 => "feed_forward.w2",
            LoraTarget::W3 => "feed_forward.w3",
        }
    }
}

/// Where and how big the adapters are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r`.
    pub rank: usize,
    /// `alpha`; the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Layers that get an adapter.
    pub targets: Vec<LoraTarget>,
}

fn layer<B: Kernels>(model: &InternLM2<B>, i: usize, target: LoraTarget) -> &Linear<B> {
    let l = &model.model.layers[i];
    match target {
        LoraTarget::Wqkv => &l.attention.wqkv,
        LoraTarget::Wo => &l.attention.wo,
        LoraTarget::W1 => &l.feed_forward.w1,
        LoraTarget::W2 => &l.feed_forward.w2,
        LoraTarget::W3 => &l.feed_forward.w3,
    }
}

fn layer_mut<B: Kernels>(model: &mut InternLM2<B>, i: usize, target: LoraTarget) -> &mut Linear<B> {
    let l = &mut model.model.layers[i];
    match target {
        LoraTarget::Wqkv => &mut l.attention.wqkv,
        LoraTarget::Wo => &mut l.attention.wo,
        LoraTarget::W1 => &mut l.feed_forward.w1,
        LoraTarget::W2 => &mut l.feed_forward.w2,
        LoraTarget::W3 => &mut l.feed_forward.w3,
    }
}

impl LoraConfig {
    /// Rank `rank`, `alpha`, on every linear layer of the decoder.
    pub fn new(rank: usize, alpha: f64) -> Self {
        Self {
            rank,
            alpha,
            targets: vec![
                LoraTarget::Wqkv,
                LoraTarget::Wo,
                LoraTarget::W1,
                LoraTarget::W2,
                LoraTarget::W3,
            ],
        }
    }

    /// Sets the target layers.
    pub fn with_targets(mut self, targets: Vec<LoraTarget>) -> Self {
        self.targets = targets;
        self
    }

    /// Freezes `model` and attaches fresh adapters (A random, B zero): only the adapters
    /// receive gradients.
    pub fn attach<B: Kernels>(&self, model: InternLM2<B>, device: &B::Device) -> InternLM2<B> {
        let mut model = model.no_grad();
        let dtype = model.dtype();
        let scale = self.alpha / self.rank as f64;
        for i in 0..model.model.layers.len() {
            for &target in &self.targets {
                let linear = layer_mut(&mut model, i, target);
                let [out, input] = linear.dims();
                let a = Tensor::<B, 2>::random(
                    [self.rank, input],
                    Distribution::Normal(0.0, 1.0 / self.rank as f64),
                    device,
                )
                .cast(dtype);
                let b = Tensor::<B, 2>::zeros([out, self.rank], device).cast(dtype);
                linear.lora = Some(LoraAdapter {
                    a: Param::from_tensor(a),
                    b: Param::from_tensor(b),
                    scale,
                });
            }
        }
        model
    }

    /// The adapters under their PEFT names
    /// (`base_model.model.model.layers.{i}.attention.wqkv.lora_A.weight`, ...).
    pub fn adapters<B: Kernels>(&self, model: &InternLM2<B>) -> Vec<(String, TensorData)> {
        let mut out = Vec::new();
        for i in 0..model.model.layers.len() {
            for &target in &self.targets {
                if let Some(lora) = &layer(model, i, target).lora {
                    let prefix = format!("base_model.model.model.layers.{i}.{}", target.module());
                    out.push((format!("{prefix}.lora_A.weight"), lora.a.val().into_data()));
                    out.push((format!("{prefix}.lora_B.weight"), lora.b.val().into_data()));
                }
            }
        }
        out
    }

    /// Writes the adapters alone: `adapter_model.safetensors` and a PEFT `adapter_config.json`.
    pub fn save_adapters<B: Kernels>(
        &self,
        model: &InternLM2<B>,
        dir: &Path,
        dtype: SaveDtype,
    ) -> Result<(), CheckpointError> {
        let targets: Vec<&str> = self
            .targets
            .iter()
            .map(|t| t.module().rsplit('.').next().unwrap_or(""))
            .collect();
        let config = serde_json::json!({
            "peft_type": "LORA",
            "r": self.rank,
            "lora_alpha": self.alpha,
            "target_modules": targets,
            "task_type": "CAUSAL_LM",
        });
        let options = SaveOptions::default().with_dtype(dtype);
        write_checkpoint(
            dir,
            &serde_json::to_string_pretty(&config).expect("JSON"),
            self.adapters(model),
            &options,
        )?;
        // write_checkpoint names its files like a model; rename them to PEFT's names.
        let rename = |from: &str, to: &str| {
            std::fs::rename(dir.join(from), dir.join(to)).map_err(|source| CheckpointError::Io {
                path: dir.join(to),
                source,
            })
        };
        rename("config.json", "adapter_config.json")?;
        rename("model.safetensors", "adapter_model.safetensors")
    }

    /// Attaches the adapters saved in `dir` (by [`LoraConfig::save_adapters`]) to `model`.
    pub fn load_adapters<B: Kernels>(
        &self,
        model: InternLM2<B>,
        dir: &Path,
        device: &B::Device,
    ) -> Result<InternLM2<B>, CheckpointError> {
        let staging = tempdir_for(dir)?;
        std::fs::copy(
            dir.join("adapter_model.safetensors"),
            staging.join("model.safetensors"),
        )
        .map_err(|source| CheckpointError::Io {
            path: dir.join("adapter_model.safetensors"),
            source,
        })?;
        let mut reader = WeightReader::open(&staging)?;
        let mut model = model.no_grad();
        let dtype = model.dtype();
        let scale = self.alpha / self.rank as f64;
        for i in 0..model.model.layers.len() {
            for &target in &self.targets {
                let [out, input] = layer(&model, i, target).dims();
                let prefix = format!("base_model.model.model.layers.{i}.{}", target.module());
                let a = reader.take_tensor(
                    &format!("{prefix}.lora_A.weight"),
                    [self.rank, input],
                    dtype,
                    device,
                )?;
                let b = reader.take_tensor(
                    &format!("{prefix}.lora_B.weight"),
                    [out, self.rank],
                    dtype,
                    device,
                )?;
                layer_mut(&mut model, i, target).lora = Some(LoraAdapter {
                    a: Param::from_tensor(a),
                    b: Param::from_tensor(b),
                    scale,
                });
            }
        }
        let _ = std::fs::remove_dir_all(&staging);
        crate::checkpoint::reject_leftovers(&reader)?;
        Ok(model)
    }

    /// Folds every adapter into its base weight (`W + scale * B @ A`) and removes it.
    pub fn merge<B: Kernels>(&self, mut model: InternLM2<B>) -> InternLM2<B> {
        for i in 0..model.model.layers.len() {
            for &target in &self.targets {
                let linear = layer_mut(&mut model, i, target);
                if let Some(lora) = linear.lora.take() {
                    let delta = lora.b.val().matmul(lora.a.val()).mul_scalar(lora.scale);
                    let merged = (linear.weight.val().cast(DType::F32) + delta.cast(DType::F32))
                        .cast(linear.weight.val().dtype());
                    linear.weight = Param::from_tensor(merged.detach());
                }
            }
        }
        model
    }

    /// Parameter counts: `(adapter, base)`.
    pub fn parameter_counts<B: Kernels>(&self, model: &InternLM2<B>) -> (usize, usize) {
        let adapters: usize = self
            .adapters(model)
            .iter()
            .map(|(_, d)| d.num_elements())
            .sum();
        (adapters, model.config().num_parameters())
    }
}

fn tempdir_for(dir: &Path) -> Result<std::path::PathBuf, CheckpointError> {
    let staging = dir.join(".load-staging");
    std::fs::create_dir_all(&staging).map_err(|source| CheckpointError::Io {
        path: staging.clone(),
        source,
    })?;
    Ok(staging)
}

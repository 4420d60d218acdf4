//! LoRA fine-tuning (burn 0.21 has no LoRA module, so the SDK has its own): low-rank adapters
//! on chosen linear layers, the base weights frozen, mergeable into the base weights for a
//! plain HuggingFace checkpoint. Saving and loading the adapters alone in PEFT's layout
//! (`adapter_model.safetensors` + `adapter_config.json`) is checkpoint I/O:
//! [`crate::checkpoint::peft`].
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

use burn::module::{Module, Param};
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use internlm2_backends::Kernels;
use serde::{Deserialize, Serialize};

use super::InternLM2;
use super::linear::{Linear, LoraAdapter};

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
    /// The module's path inside a decoder layer (`attention.wqkv`, ...).
    pub(crate) fn module(self) -> &'static str {
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

pub(crate) fn layer<B: Kernels>(model: &InternLM2<B>, i: usize, target: LoraTarget) -> &Linear<B> {
    let l = &model.model.layers[i];
    match target {
        LoraTarget::Wqkv => &l.attention.wqkv,
        LoraTarget::Wo => &l.attention.wo,
        LoraTarget::W1 => &l.feed_forward.w1,
        LoraTarget::W2 => &l.feed_forward.w2,
        LoraTarget::W3 => &l.feed_forward.w3,
    }
}

pub(crate) fn layer_mut<B: Kernels>(
    model: &mut InternLM2<B>,
    i: usize,
    target: LoraTarget,
) -> &mut Linear<B> {
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

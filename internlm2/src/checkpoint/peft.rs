//! PEFT adapter I/O: LoRA adapters saved on their own in the layout of HuggingFace PEFT
//! (`adapter_model.safetensors` with `base_model.model.model.layers.{i}.{module}.lora_{A,B}.weight`
//! tensors, and an `adapter_config.json`), and loaded back onto a base model. The adapters
//! themselves are [`crate::model::lora`].
//!
//! ```
//! use internlm2::checkpoint::SaveDtype;
//! use internlm2::model::lora::LoraConfig;
//! use internlm2::{InternLM2, InternLM2Config};
//! use internlm2_backends::Cpu;
//! let device = Default::default();
//! let base: InternLM2<Cpu> = InternLM2::init(&InternLM2Config::new(64, 32, 64, 1, 2, 1), &device);
//! let lora = LoraConfig::new(4, 8.0);
//! let adapted = lora.attach(base.clone(), &device);
//! let dir = tempfile::tempdir().unwrap();
//! lora.save_adapters(&adapted, dir.path(), SaveDtype::F32).unwrap();
//! let reloaded = lora.load_adapters(base, dir.path(), &device).unwrap();
//! assert_eq!(lora.adapters(&reloaded).len(), lora.adapters(&adapted).len());
//! ```

use std::path::Path;

use burn::module::{Module, Param};
use internlm2_backends::Kernels;

use super::{SaveDtype, SaveOptions, WeightReader, reject_leftovers, write_checkpoint};
use crate::error::CheckpointError;
use crate::model::InternLM2;
use crate::model::linear::LoraAdapter;
use crate::model::lora::{LoraConfig, layer, layer_mut};

impl LoraConfig {
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
        reject_leftovers(&reader)?;
        Ok(model)
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

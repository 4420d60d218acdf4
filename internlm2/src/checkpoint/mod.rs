//! HuggingFace checkpoints: load a model directory into an [`InternLM2`], save one back.
//!
//! Checkpoint names are the module paths (SPEC 2): `InternLM2 { model: InternLM2Model, output }`
//! mirrors HuggingFace's `InternLM2ForCausalLM { model: InternLM2Model, output }`, and weights
//! keep the PyTorch `[out, in]` layout, so nothing is renamed or transposed:
//!
//! | checkpoint tensor | module field | shape |
//! |---|---|---|
//! | `model.tok_embeddings.weight` | `model.tok_embeddings.weight` | `[V, H]` |
//! | `model.layers.{i}.attention_norm.weight` | `model.layers[i].attention_norm.weight` | `[H]` |
//! | `model.layers.{i}.attention.wqkv.weight` (`.bias`) | `model.layers[i].attention.wqkv` | `[(nh + 2 nkv) d, H]` |
//! | `model.layers.{i}.attention.wo.weight` (`.bias`) | `model.layers[i].attention.wo` | `[H, nh d]` |
//! | `model.layers.{i}.ffn_norm.weight` | `model.layers[i].ffn_norm.weight` | `[H]` |
//! | `model.layers.{i}.feed_forward.w{1,3}.weight` | `model.layers[i].feed_forward.w{1,3}` | `[I, H]` |
//! | `model.layers.{i}.feed_forward.w2.weight` | `model.layers[i].feed_forward.w2` | `[H, I]` |
//! | `model.norm.weight` | `model.norm.weight` | `[H]` |
//! | `output.weight` | `output.weight` (absent when tied) | `[V, H]` |
//!
//! Stored BF16, F16 and F32 load into the compute dtype the caller picks. Besides safetensors
//! (single file or shards), `pytorch_model*.bin` directories load through burn-store's PyTorch
//! reader. Saving writes `config.json` plus `model.safetensors` (or shards and an index) in
//! BF16 or F32, through a temporary file and a rename.

pub mod awq;
pub mod gguf;
mod gguf_model;
pub mod peft;
mod reader;
mod writer;

use std::path::Path;

use burn::tensor::DType;
use internlm2_backends::Kernels;

pub use reader::WeightReader;
pub(crate) use writer::write_atomic;
pub use writer::{
    SaveDtype, SaveOptions, backbone_tensors, named_tensors, torch_dtype, write_checkpoint,
};

use crate::config::InternLM2Config;
use crate::error::CheckpointError;
use crate::model::attention::Attention;
use crate::model::decoder::DecoderLayer;
use crate::model::embedding::Embedding;
use crate::model::feed_forward::FeedForward;
use crate::model::linear::Linear;
use crate::model::norm::RmsNorm;
use crate::model::{InternLM2, InternLM2Model};

/// Older checkpoints store RoPE's `inv_freq` buffer; it is recomputed, never read.
const IGNORED_SUFFIXES: [&str; 1] = ["rotary_emb.inv_freq"];

/// Every tensor an InternLM2 checkpoint of this config holds, with its shape, in file order.
pub fn expected_tensors(config: &InternLM2Config) -> Vec<(String, Vec<usize>)> {
    let (h, v, i) = (
        config.hidden_size,
        config.vocab_size,
        config.intermediate_size,
    );
    let q_width = config.num_attention_heads * config.head_dim();
    let mut names = vec![("model.tok_embeddings.weight".to_string(), vec![v, h])];
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        names.push((format!("{p}.attention_norm.weight"), vec![h]));
        names.push((
            format!("{p}.attention.wqkv.weight"),
            vec![config.wqkv_rows(), h],
        ));
        if config.bias {
            names.push((format!("{p}.attention.wqkv.bias"), vec![config.wqkv_rows()]));
        }
        names.push((format!("{p}.attention.wo.weight"), vec![h, q_width]));
        if config.bias {
            names.push((format!("{p}.attention.wo.bias"), vec![h]));
        }
        names.push((format!("{p}.ffn_norm.weight"), vec![h]));
        names.push((format!("{p}.feed_forward.w1.weight"), vec![i, h]));
        names.push((format!("{p}.feed_forward.w3.weight"), vec![i, h]));
        names.push((format!("{p}.feed_forward.w2.weight"), vec![h, i]));
    }
    names.push(("model.norm.weight".to_string(), vec![h]));
    if !config.tie_word_embeddings {
        names.push(("output.weight".to_string(), vec![v, h]));
    }
    names
}

impl<B: Kernels> InternLM2<B> {
    /// Loads a HuggingFace model directory (`config.json` plus weights) in `dtype`.
    ///
    /// ```no_run
    /// use burn::tensor::DType;
    /// use internlm2::InternLM2;
    /// use internlm2_backends::Cpu;
    /// let model = InternLM2::<Cpu>::load("internlm2-chat-1_8b", DType::F32, &Default::default())?;
    /// println!("{} layers", model.config().num_hidden_layers);
    /// # Ok::<(), internlm2::CheckpointError>(())
    /// ```
    pub fn load(
        dir: impl AsRef<Path>,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        let dir = dir.as_ref();
        let config = InternLM2Config::from_hf_file(dir.join("config.json"))?;
        let mut reader = WeightReader::open(dir)?;
        let model = Self::from_reader(&config, &mut reader, dtype, device)?;
        reject_leftovers(&reader)?;
        Ok(model)
    }

    /// Builds the model from the tensors of `reader`, taking exactly the tensors of
    /// [`expected_tensors`]; whatever else the reader holds stays there (a reward head, say).
    pub fn from_reader(
        config: &InternLM2Config,
        reader: &mut WeightReader,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        let model = InternLM2Model::from_reader(config, reader, dtype, device)?;
        let (h, v) = (config.hidden_size, config.vocab_size);
        let output = if config.tie_word_embeddings {
            // A tied checkpoint may still carry the (identical) head; it is not read.
            reader.skip("output.weight");
            None
        } else {
            Some(Linear::from_tensors(
                reader.take_tensor("output.weight", [v, h], dtype, device)?,
                None,
            ))
        };
        Ok(Self { model, output })
    }

    /// Saves the model as a HuggingFace directory: `config.json` and safetensors weights.
    ///
    /// ```no_run
    /// # use burn::tensor::DType;
    /// # use internlm2::{InternLM2, checkpoint::SaveOptions};
    /// # use internlm2_backends::Cpu;
    /// # let model = InternLM2::<Cpu>::load("in", DType::F32, &Default::default())?;
    /// model.save("out", &SaveOptions::default())?; // bf16, one file
    /// # Ok::<(), internlm2::CheckpointError>(())
    /// ```
    pub fn save(
        &self,
        dir: impl AsRef<Path>,
        options: &SaveOptions,
    ) -> Result<(), CheckpointError> {
        writer::save(self, dir.as_ref(), options)
    }
}

impl<B: Kernels> InternLM2Model<B> {
    /// Builds the decoder body from the `model.*` tensors of `reader` (no LM head is read).
    pub fn from_reader(
        config: &InternLM2Config,
        reader: &mut WeightReader,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        config.validate()?;
        // Every tensor of the body must be in the files with the shape config.json implies
        // before anything is allocated: the files, not config.json, bound what is built.
        for (name, shape) in expected_tensors(config) {
            if name.starts_with("model.") {
                reader.check(&name, &shape)?;
            }
        }
        let (h, v, i) = (
            config.hidden_size,
            config.vocab_size,
            config.intermediate_size,
        );
        let q_width = config.num_attention_heads * config.head_dim();
        let eps = config.rms_norm_eps;

        let embed = Embedding::from_tensor(reader.take_tensor(
            "model.tok_embeddings.weight",
            [v, h],
            dtype,
            device,
        )?);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let bias1 = |reader: &mut WeightReader, name: String, n: usize| {
                if config.bias {
                    reader.take_tensor(&name, [n], dtype, device).map(Some)
                } else {
                    Ok(None)
                }
            };
            let wqkv = Linear::from_tensors(
                reader.take_tensor(
                    &format!("{p}.attention.wqkv.weight"),
                    [config.wqkv_rows(), h],
                    dtype,
                    device,
                )?,
                bias1(
                    reader,
                    format!("{p}.attention.wqkv.bias"),
                    config.wqkv_rows(),
                )?,
            );
            let wo = Linear::from_tensors(
                reader.take_tensor(
                    &format!("{p}.attention.wo.weight"),
                    [h, q_width],
                    dtype,
                    device,
                )?,
                bias1(reader, format!("{p}.attention.wo.bias"), h)?,
            );
            layers.push(DecoderLayer {
                attention_norm: RmsNorm::from_tensor(
                    reader.take_tensor(
                        &format!("{p}.attention_norm.weight"),
                        [h],
                        dtype,
                        device,
                    )?,
                    eps,
                ),
                attention: Attention::from_linears(config, wqkv, wo),
                ffn_norm: RmsNorm::from_tensor(
                    reader.take_tensor(&format!("{p}.ffn_norm.weight"), [h], dtype, device)?,
                    eps,
                ),
                feed_forward: FeedForward {
                    w1: Linear::from_tensors(
                        reader.take_tensor(
                            &format!("{p}.feed_forward.w1.weight"),
                            [i, h],
                            dtype,
                            device,
                        )?,
                        None,
                    ),
                    w2: Linear::from_tensors(
                        reader.take_tensor(
                            &format!("{p}.feed_forward.w2.weight"),
                            [h, i],
                            dtype,
                            device,
                        )?,
                        None,
                    ),
                    w3: Linear::from_tensors(
                        reader.take_tensor(
                            &format!("{p}.feed_forward.w3.weight"),
                            [i, h],
                            dtype,
                            device,
                        )?,
                        None,
                    ),
                },
            });
        }
        let norm = RmsNorm::from_tensor(
            reader.take_tensor("model.norm.weight", [h], dtype, device)?,
            eps,
        );
        Ok(Self {
            tok_embeddings: embed,
            layers,
            norm,
            config: config.clone(),
        })
    }
}

/// Errors on any tensor left in the reader that is not a known, ignorable buffer.
pub fn reject_leftovers(reader: &WeightReader) -> Result<(), CheckpointError> {
    for name in reader.remaining() {
        if IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            continue;
        }
        return Err(CheckpointError::UnexpectedTensor {
            path: reader.file_of(name),
            name: name.to_string(),
        });
    }
    Ok(())
}

//! Writing a model back as a HuggingFace directory: `config.json` plus `model.safetensors`, or
//! shards `model-0000i-of-0000N.safetensors` with `model.safetensors.index.json`.
//!
//! Every file is written to a temporary name and renamed into place, so a crash never leaves a
//! half-written checkpoint under the real name.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor, TensorData};
use half::bf16;
use internlm2_backends::Kernels;
use safetensors::{Dtype, View};

use crate::error::CheckpointError;
use crate::model::linear::Linear;
use crate::model::{InternLM2, InternLM2Model};

/// The dtype weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaveDtype {
    /// bfloat16, as the releases are stored.
    #[default]
    Bf16,
    /// float32 (exact for an f32 model).
    F32,
}

/// How [`InternLM2::save`] writes a directory.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Stored dtype.
    pub dtype: SaveDtype,
    /// Split into shards of at most this many bytes of tensor data (`None`: one file).
    pub max_shard_bytes: Option<usize>,
}

impl SaveOptions {
    /// Sets the stored dtype.
    pub fn with_dtype(mut self, dtype: SaveDtype) -> Self {
        self.dtype = dtype;
        self
    }

    /// Shards the weights into files of at most `bytes` bytes.
    pub fn with_max_shard_bytes(mut self, bytes: usize) -> Self {
        self.max_shard_bytes = Some(bytes);
        self
    }
}

/// One tensor ready to be serialised.
struct Stored {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Stored {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn encode(data: TensorData, dtype: SaveDtype) -> Stored {
    let shape = data.shape.to_vec();
    let floats: Vec<f32> = data
        .convert_dtype(DType::F32)
        .into_vec::<f32>()
        .expect("converted to f32 above");
    match dtype {
        SaveDtype::F32 => Stored {
            dtype: Dtype::F32,
            shape,
            bytes: floats.iter().flat_map(|f| f.to_le_bytes()).collect(),
        },
        SaveDtype::Bf16 => Stored {
            dtype: Dtype::BF16,
            shape,
            bytes: floats
                .iter()
                .flat_map(|&f| bf16::from_f32(f).to_le_bytes())
                .collect(),
        },
    }
}

/// A linear layer's weight as data: packed weights are dequantized to f32.
fn linear_data<B: Kernels>(linear: &Linear<B>) -> TensorData {
    match &linear.packed {
        Some(p) => TensorData::new(p.dequantize(), p.dims()),
        None => linear.weight.val().into_data(),
    }
}

/// The model's tensors under their HuggingFace names, in checkpoint order (packed weights
/// dequantized to f32; [`crate::quant::save_quantized`] keeps them packed).
pub fn named_tensors<B: Kernels>(model: &InternLM2<B>) -> Vec<(String, TensorData)> {
    let mut out = backbone_tensors(&model.model);
    if let Some(output) = &model.output {
        out.push(("output.weight".to_string(), linear_data(output)));
    }
    out
}

/// The `model.*` tensors of a decoder body, in checkpoint order.
pub fn backbone_tensors<B: Kernels>(body: &InternLM2Model<B>) -> Vec<(String, TensorData)> {
    fn d<B: Kernels, const D: usize>(t: Tensor<B, D>) -> TensorData {
        t.into_data()
    }
    let mut out = vec![(
        "model.tok_embeddings.weight".to_string(),
        match &body.tok_embeddings.packed {
            Some(table) => TensorData::new(table.dequantize(), table.dims()),
            None => d(body.tok_embeddings.weight.val()),
        },
    )];
    for (l, layer) in body.layers.iter().enumerate() {
        let p = format!("model.layers.{l}");
        out.push((
            format!("{p}.attention_norm.weight"),
            d(layer.attention_norm.weight.val()),
        ));
        let att = &layer.attention;
        out.push((format!("{p}.attention.wqkv.weight"), linear_data(&att.wqkv)));
        if let Some(b) = &att.wqkv.bias {
            out.push((format!("{p}.attention.wqkv.bias"), d(b.val())));
        }
        out.push((format!("{p}.attention.wo.weight"), linear_data(&att.wo)));
        if let Some(b) = &att.wo.bias {
            out.push((format!("{p}.attention.wo.bias"), d(b.val())));
        }
        out.push((
            format!("{p}.ffn_norm.weight"),
            d(layer.ffn_norm.weight.val()),
        ));
        let ff = &layer.feed_forward;
        out.push((format!("{p}.feed_forward.w1.weight"), linear_data(&ff.w1)));
        out.push((format!("{p}.feed_forward.w3.weight"), linear_data(&ff.w3)));
        out.push((format!("{p}.feed_forward.w2.weight"), linear_data(&ff.w2)));
    }
    out.push(("model.norm.weight".to_string(), d(body.norm.weight.val())));
    out
}

/// Writes `bytes` to `path` through `path.tmp` and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn write_safetensors(path: &Path, tensors: &[(String, Stored)]) -> Result<(), CheckpointError> {
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let views = tensors.iter().map(|(name, stored)| (name.as_str(), stored));
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("cannot serialise: {e}"),
        })?;
    write_atomic(path, &bytes)
}

pub(crate) fn save<B: Kernels>(
    model: &InternLM2<B>,
    dir: &Path,
    options: &SaveOptions,
) -> Result<(), CheckpointError> {
    let config = model.config().to_hf_json(torch_dtype(options.dtype));
    write_checkpoint(dir, &config, named_tensors(model), options)
}

/// The `torch_dtype` string of config.json for a stored dtype.
pub fn torch_dtype(dtype: SaveDtype) -> &'static str {
    match dtype {
        SaveDtype::Bf16 => "bfloat16",
        SaveDtype::F32 => "float32",
    }
}

/// Writes `config.json` (the given text) and the tensors as safetensors, one file or shards
/// with an index, each through a temporary file and a rename.
pub fn write_checkpoint(
    dir: &Path,
    config_json: &str,
    tensors: Vec<(String, TensorData)>,
    options: &SaveOptions,
) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_atomic(&dir.join("config.json"), config_json.as_bytes())?;

    let tensors: Vec<(String, Stored)> = tensors
        .into_iter()
        .map(|(name, data)| (name, encode(data, options.dtype)))
        .collect();
    let total: usize = tensors.iter().map(|(_, s)| s.bytes.len()).sum();

    // Remove whatever weights a previous save left, so the directory has one layout only.
    for stale in ["model.safetensors", "model.safetensors.index.json"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }

    let limit = options.max_shard_bytes.unwrap_or(usize::MAX).max(1);
    if total <= limit {
        return write_safetensors(&dir.join("model.safetensors"), &tensors);
    }
    // Greedy sharding in checkpoint order, at least one tensor per shard.
    let mut shards: Vec<Vec<(String, Stored)>> = vec![Vec::new()];
    let mut size = 0;
    for (name, stored) in tensors {
        let len = stored.bytes.len();
        if size > 0 && size + len > limit {
            shards.push(Vec::new());
            size = 0;
        }
        size += len;
        shards.last_mut().expect("never empty").push((name, stored));
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        write_safetensors(&dir.join(&file), shard)?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), file.clone());
        }
    }
    let index = serde_json::json!({
        "metadata": {"total_size": total},
        "weight_map": weight_map,
    });
    write_atomic(
        &dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)
            .expect("a JSON value always serialises")
            .as_bytes(),
    )
}

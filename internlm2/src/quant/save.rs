//! Our quantized checkpoint: a HuggingFace directory whose packed weights stay packed, so that
//! it loads without re-quantizing.
//!
//! - `config.json`: the model's HF config plus
//!   `"quantization_config": {"quant_method": "internlm2-rs", "version": 1, "body": "q4_k",
//!   "embedding": "q8_0", "head": "q8_0", "tensors": {NAME: {"shape": [rows, cols],
//!   "segments": [[FORMAT, rows], ...]}}}` listing every packed tensor.
//! - `model.safetensors`: each packed tensor under its HF name, its bytes exactly as
//!   [`PackedWeight`] holds them (GGUF block layout, rows one after the other, segments one
//!   after the other): `U8` `[bytes]` for block formats, or `F16`/`BF16` `[rows, cols]` for a
//!   uniform half-precision weight (readable by any safetensors tool). Dense tensors (norms,
//!   biases, unpacked parts) are stored as F32.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use burn::tensor::{DType, Tensor};
use internlm2_backends::Kernels;
use internlm2_backends::packed::{PackedWeight, WeightFormat};
use safetensors::{Dtype, View};
use serde_json::{Value, json};

use super::load::{Part, WeightSource, assemble};
use crate::checkpoint::{WeightReader, reject_leftovers};
use crate::config::InternLM2Config;
use crate::error::CheckpointError;
use crate::model::InternLM2;
use crate::model::embedding::Embedding;
use crate::model::linear::Linear;

/// `quantization_config.quant_method` of our quantized checkpoints.
pub const QUANT_METHOD: &str = "internlm2-rs";

/// Version of the layout above.
const VERSION: u64 = 1;

struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Raw {
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

fn packed_raw(p: &PackedWeight) -> (Raw, Value) {
    let segments: Vec<Value> = p
        .segments()
        .map(|(f, r)| json!([f.name(), r.len()]))
        .collect();
    let mut bytes = Vec::with_capacity(p.storage_bytes());
    for (_, _, b) in p.segment_bytes() {
        bytes.extend_from_slice(b);
    }
    let half = match p.format() {
        WeightFormat::F16 => Some(Dtype::F16),
        WeightFormat::BF16 => Some(Dtype::BF16),
        _ => None,
    };
    let raw = match half {
        Some(dtype) if p.is_uniform() => Raw {
            dtype,
            shape: p.dims().to_vec(),
            bytes,
        },
        _ => Raw {
            dtype: Dtype::U8,
            shape: vec![bytes.len()],
            bytes,
        },
    };
    (raw, json!({"shape": p.dims(), "segments": segments}))
}

/// Writes `model` to `dir` in our quantized layout (see the module docs): `config.json` and
/// `model.safetensors`, each through a temporary file and a rename.
///
/// ```no_run
/// use internlm2::quant::{QuantConfig, WeightFormat, save_quantized};
/// use internlm2::{InternLM2, InternLM2Config};
/// use internlm2_backends::Cpu;
/// let config = InternLM2Config::new(512, 64, 128, 2, 4, 2);
/// let model = InternLM2::<Cpu>::init(&config, &Default::default())
///     .quantize(&QuantConfig::new(WeightFormat::Q8_0))?;
/// save_quantized(&model, "model-q8_0".as_ref())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn save_quantized<B: Kernels>(model: &InternLM2<B>, dir: &Path) -> Result<(), CheckpointError> {
    let packed: HashMap<String, &PackedWeight> = packed_weights(model).into_iter().collect();
    let mut tensors = Vec::new();
    let mut listing = serde_json::Map::new();
    let mut dense = dense_tensors(model, &packed);
    for (name, _) in crate::checkpoint::expected_tensors(model.config()) {
        match packed.get(&name) {
            Some(p) => {
                let (raw, entry) = packed_raw(p);
                listing.insert(name.clone(), entry);
                tensors.push((name, raw));
            }
            None => {
                let Some(data) = dense.remove(&name) else {
                    continue;
                };
                let shape = data.shape.to_vec();
                let floats = data.convert::<f32>().into_vec::<f32>().expect("f32");
                let bytes = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
                tensors.push((
                    name,
                    Raw {
                        dtype: Dtype::F32,
                        shape,
                        bytes,
                    },
                ));
            }
        }
    }
    let name = |part: Part| {
        let first = match part {
            Part::Body => model
                .model
                .layers
                .first()
                .and_then(|l| l.attention.wqkv.packed.as_ref()),
            Part::Embedding => model.model.tok_embeddings.packed.as_ref(),
            Part::Head => model.output.as_ref().and_then(|o| o.packed.as_ref()),
        };
        first.map_or(Value::Null, |p| json!(p.format().name()))
    };
    let mut config: Value = serde_json::from_str(&model.config().to_hf_json("float32"))
        .expect("our config serialises to JSON");
    config["quantization_config"] = json!({
        "quant_method": QUANT_METHOD,
        "version": VERSION,
        "body": name(Part::Body),
        "embedding": name(Part::Embedding),
        "head": name(Part::Head),
        "tensors": listing,
    });
    std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for stale in ["model.safetensors.index.json"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let path = dir.join("model.safetensors");
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let bytes =
        safetensors::serialize(tensors.iter().map(|(n, r)| (n.as_str(), r)), Some(metadata))
            .map_err(|e| CheckpointError::Corrupt {
                path: path.clone(),
                reason: format!("cannot serialise: {e}"),
            })?;
    crate::checkpoint::write_atomic(&path, &bytes)?;
    crate::checkpoint::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)
            .expect("JSON")
            .as_bytes(),
    )
}

/// The packed weights of a model by HF name.
fn packed_weights<B: Kernels>(model: &InternLM2<B>) -> Vec<(String, &PackedWeight)> {
    let mut out = Vec::new();
    if let Some(p) = &model.model.tok_embeddings.packed {
        out.push(("model.tok_embeddings.weight".to_string(), p));
    }
    for (i, layer) in model.model.layers.iter().enumerate() {
        for (n, l) in [
            ("attention.wqkv", &layer.attention.wqkv),
            ("attention.wo", &layer.attention.wo),
            ("feed_forward.w1", &layer.feed_forward.w1),
            ("feed_forward.w3", &layer.feed_forward.w3),
            ("feed_forward.w2", &layer.feed_forward.w2),
        ] {
            if let Some(p) = &l.packed {
                out.push((format!("model.layers.{i}.{n}.weight"), p));
            }
        }
    }
    if let Some(p) = model.output.as_ref().and_then(|o| o.packed.as_ref()) {
        out.push(("output.weight".to_string(), p));
    }
    out
}

fn dense_tensors<B: Kernels>(
    model: &InternLM2<B>,
    packed: &HashMap<String, &PackedWeight>,
) -> HashMap<String, burn::tensor::TensorData> {
    let mut out = HashMap::new();
    let mut put = |name: String, t: Option<Tensor<B, 2>>| {
        if !packed.contains_key(&name)
            && let Some(t) = t
        {
            out.insert(name, t.into_data());
        }
    };
    put(
        "model.tok_embeddings.weight".into(),
        Some(model.model.tok_embeddings.weight.val()),
    );
    let mut vectors = Vec::new();
    for (i, layer) in model.model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        vectors.push((
            format!("{p}.attention_norm.weight"),
            layer.attention_norm.weight.val(),
        ));
        vectors.push((format!("{p}.ffn_norm.weight"), layer.ffn_norm.weight.val()));
        for (n, l) in [
            ("attention.wqkv", &layer.attention.wqkv),
            ("attention.wo", &layer.attention.wo),
            ("feed_forward.w1", &layer.feed_forward.w1),
            ("feed_forward.w3", &layer.feed_forward.w3),
            ("feed_forward.w2", &layer.feed_forward.w2),
        ] {
            put(format!("{p}.{n}.weight"), Some(l.weight.val()));
            if let Some(b) = &l.bias {
                vectors.push((format!("{p}.{n}.bias"), b.val()));
            }
        }
    }
    vectors.push(("model.norm.weight".into(), model.model.norm.weight.val()));
    if let Some(o) = &model.output {
        put("output.weight".into(), Some(o.weight.val()));
    }
    for (n, v) in vectors {
        out.insert(n, v.into_data());
    }
    out
}

/// Reads one of our quantized directories.
struct QuantizedSource<'a, B: Kernels> {
    reader: &'a mut WeightReader,
    listing: &'a serde_json::Map<String, Value>,
    dtype: DType,
    device: B::Device,
    config_path: std::path::PathBuf,
}

impl<B: Kernels> QuantizedSource<'_, B> {
    fn bad(&self, name: &str, reason: String) -> CheckpointError {
        CheckpointError::Corrupt {
            path: self.config_path.clone(),
            reason: format!("quantization_config.tensors[`{name}`]: {reason}"),
        }
    }

    /// The packed weight `name` if the listing has it.
    fn packed(
        &mut self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Option<PackedWeight>, CheckpointError> {
        let Some(entry) = self.listing.get(name) else {
            return Ok(None);
        };
        let listed: Option<Vec<usize>> = entry
            .get("shape")
            .and_then(|s| serde_json::from_value(s.clone()).ok());
        if listed.as_deref() != Some(&shape[..]) {
            return Err(CheckpointError::ShapeMismatch {
                path: self.config_path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                got: listed.unwrap_or_default(),
            });
        }
        let segments: Vec<(String, usize)> = entry
            .get("segments")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| self.bad(name, "no `segments` list of [format, rows]".into()))?;
        let mut parts = Vec::with_capacity(segments.len());
        let mut sizes = Vec::with_capacity(segments.len());
        let (mut rows, mut total) = (0usize, 0usize);
        for (f, r) in &segments {
            let format = WeightFormat::from_name(f)
                .ok_or_else(|| self.bad(name, format!("unknown format `{f}`")))?;
            let len = format
                .row_bytes(shape[1])
                .and_then(|b| b.checked_mul(*r))
                .ok_or_else(|| {
                    self.bad(
                        name,
                        format!("{f} cannot hold {r} rows of {} values", shape[1]),
                    )
                })?;
            rows = rows
                .checked_add(*r)
                .ok_or_else(|| self.bad(name, "row count overflows".into()))?;
            total = total
                .checked_add(len)
                .ok_or_else(|| self.bad(name, "size overflows".into()))?;
            sizes.push((format, *r, len));
        }
        if rows != shape[0] {
            return Err(self.bad(
                name,
                format!("segments hold {rows} rows, the tensor has {}", shape[0]),
            ));
        }
        let file = self.reader.file_of(name);
        let (dtype, stored_shape, bytes) = self.reader.take_raw(name)?;
        if bytes.len() != total {
            return Err(CheckpointError::Corrupt {
                path: file,
                reason: format!(
                    "tensor `{name}` has {} bytes, its segments need {total} (stored {dtype} {stored_shape:?})",
                    bytes.len()
                ),
            });
        }
        let bytes: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(bytes);
        let mut offset = 0;
        for (format, r, len) in sizes {
            let part =
                PackedWeight::from_shared(format, r, shape[1], bytes.clone(), offset..offset + len)
                    .map_err(|e| CheckpointError::Corrupt {
                        path: file.clone(),
                        reason: format!("tensor `{name}`: {e}"),
                    })?;
            parts.push(part);
            offset += len;
        }
        let packed = PackedWeight::stack(&parts).map_err(|e| CheckpointError::Corrupt {
            path: file,
            reason: format!("tensor `{name}`: {e}"),
        })?;
        Ok(Some(packed))
    }
}

impl<B: Kernels> WeightSource<B> for QuantizedSource<'_, B> {
    fn linear(
        &mut self,
        prefix: &str,
        shape: [usize; 2],
        bias: bool,
        _part: Part,
    ) -> Result<Linear<B>, CheckpointError> {
        let name = format!("{prefix}.weight");
        let packed = self.packed(&name, shape)?;
        let bias_dtype = if packed.is_some() {
            DType::F32
        } else {
            self.dtype
        };
        let bias = if bias {
            Some(self.reader.take_tensor(
                &format!("{prefix}.bias"),
                [shape[0]],
                bias_dtype,
                &self.device,
            )?)
        } else {
            None
        };
        match packed {
            Some(p) => Ok(Linear::from_packed(p, bias, &self.device)),
            None => Ok(Linear::from_tensors(
                self.reader
                    .take_tensor(&name, shape, self.dtype, &self.device)?,
                bias,
            )),
        }
    }

    fn embedding(
        &mut self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Embedding<B>, CheckpointError> {
        match self.packed(name, shape)? {
            Some(p) => Ok(Embedding::from_packed(p, self.dtype, &self.device)),
            None => Ok(Embedding::from_tensor(self.reader.take_tensor(
                name,
                shape,
                self.dtype,
                &self.device,
            )?)),
        }
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>, CheckpointError> {
        self.reader
            .take_tensor(name, [len], self.dtype, &self.device)
    }

    fn skip(&mut self, name: &str) {
        self.reader.skip(name);
    }
}

/// Loads a directory written by [`save_quantized`] (its `quantization_config` is `q`).
pub(crate) fn load_quantized<B: Kernels>(
    dir: &Path,
    q: &Value,
    dtype: DType,
    device: &B::Device,
) -> Result<InternLM2<B>, CheckpointError> {
    let config_path = dir.join("config.json");
    let version = q.get("version").and_then(Value::as_u64);
    if version != Some(VERSION) {
        return Err(CheckpointError::Unsupported {
            path: config_path,
            reason: format!(
                "quantization_config.version {version:?}: this build reads version {VERSION}"
            ),
        });
    }
    let listing =
        q.get("tensors")
            .and_then(Value::as_object)
            .ok_or_else(|| CheckpointError::Corrupt {
                path: config_path.clone(),
                reason: "quantization_config has no `tensors` map".into(),
            })?;
    let config = InternLM2Config::from_hf_file(&config_path)?;
    let mut reader = WeightReader::open(dir)?;
    let model = assemble(
        &config,
        &mut QuantizedSource {
            reader: &mut reader,
            listing,
            dtype,
            device: device.clone(),
            config_path,
        },
    )?;
    reject_leftovers(&reader)?;
    Ok(model)
}

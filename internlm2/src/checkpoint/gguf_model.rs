//! InternLM2 from a GGUF file as llama.cpp's `convert_hf_to_gguf.py` (class `InternLM2Model`)
//! and `llama-quantize` write it, and its tokenizer from the GGUF metadata.
//!
//! | GGUF | HuggingFace |
//! |---|---|
//! | `token_embd.weight` | `model.tok_embeddings.weight` |
//! | `blk.{i}.attn_norm.weight` | `model.layers.{i}.attention_norm.weight` |
//! | `blk.{i}.attn_q/attn_k/attn_v.weight` | `model.layers.{i}.attention.wqkv.weight` (fused) |
//! | `blk.{i}.attn_output.weight` | `model.layers.{i}.attention.wo.weight` |
//! | `blk.{i}.ffn_norm.weight` | `model.layers.{i}.ffn_norm.weight` |
//! | `blk.{i}.ffn_gate/ffn_up/ffn_down.weight` | `model.layers.{i}.feed_forward.w1/w3/w2.weight` |
//! | `output_norm.weight` | `model.norm.weight` |
//! | `output.weight` (absent: tied) | `output.weight` |
//!
//! The converter splits the fused, per-KV-group interleaved `wqkv` into Q, K and V and permutes
//! the rows of Q and K within each head from rotate_half order to llama.cpp's interleaved RoPE
//! order (`LlamaModel.permute`: head row `a * d/2 + j` moves to `2j + a`). The loader undoes
//! the permutation row by row on the packed bytes (rows are independent in every format) and
//! interleaves Q, K and V back per group; a GGUF `Q4_K_M` file whose V is `Q6_K` gives a fused
//! weight with both formats side by side. Other tensors are used in place from the mapping.
//!
//! GGUF cannot express InternLM2's dynamic-NTK RoPE scaling (the converter drops it): such
//! models load without it, as llama.cpp runs them.

use std::path::Path;

use burn::tensor::{DType, Tensor, TensorData};
use internlm2_backends::Kernels;
use internlm2_backends::packed::{PackedWeight, WeightFormat};

use super::gguf::{GgmlType, GgufFile, GgufTensor, GgufValue};
use crate::config::{InternLM2Config, RopeScaling};
use crate::error::{CheckpointError, TokenizerError};
use crate::model::InternLM2;
use crate::model::embedding::Embedding;
use crate::model::linear::Linear;
use crate::quant::load::{Part, WeightSource, assemble};
use crate::quant::{LoadOptions, QuantConfig, pack};
use crate::tokenizer::Tokenizer;

/// Loads the InternLM2 model of a GGUF file. Packed tensors are used as stored; F32 ones
/// load dense in `options.dtype`, or packed if `options.quant` asks for their part.
///
/// ```no_run
/// use internlm2::checkpoint::gguf::{load_gguf, tokenizer_from_gguf};
/// use internlm2::quant::LoadOptions;
/// use internlm2_backends::Cpu;
/// let path = "internlm2-chat-1_8b-Q4_K_M.gguf".as_ref();
/// let model = load_gguf::<Cpu>(path, &LoadOptions::default(), &Default::default())?;
/// let tokenizer = tokenizer_from_gguf(path)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn load_gguf<B: Kernels>(
    path: &Path,
    options: &LoadOptions,
    device: &B::Device,
) -> Result<InternLM2<B>, CheckpointError> {
    let file = GgufFile::open(path)?;
    let config = gguf_config(&file)?;
    let mut source = GgufSource::<B> {
        file: &file,
        config: &config,
        quant: options.quant,
        dtype: options.dtype,
        device: device.clone(),
        used: Default::default(),
    };
    let model = assemble(&config, &mut source)?;
    if let Some(name) = file
        .tensors
        .keys()
        .find(|n| !source.used.contains(*n) && !n.ends_with("rope_freqs.weight"))
    {
        return Err(CheckpointError::UnexpectedTensor {
            path: path.to_path_buf(),
            name: name.clone(),
        });
    }
    Ok(model)
}

fn meta_err(path: &Path, key: &str, what: &str) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("GGUF metadata `{key}`: {what}"),
    }
}

/// The model configuration a GGUF file's metadata and tensor shapes describe.
pub fn gguf_config(file: &GgufFile) -> Result<InternLM2Config, CheckpointError> {
    let path = file.path();
    let arch = file
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .unwrap_or("");
    if arch != "internlm2" {
        return Err(CheckpointError::Unsupported {
            path: path.to_path_buf(),
            reason: format!("GGUF architecture `{arch}` (expected `internlm2`)"),
        });
    }
    let int = |key: &str| -> Result<usize, CheckpointError> {
        let k = format!("internlm2.{key}");
        file.get(&k)
            .and_then(GgufValue::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| meta_err(path, &k, "missing or not an integer"))
    };
    let float = |key: &str, default: f64| -> f64 {
        file.get(&format!("internlm2.{key}"))
            .and_then(GgufValue::as_f64)
            .unwrap_or(default)
    };
    let embd =
        file.tensors
            .get("token_embd.weight")
            .ok_or_else(|| CheckpointError::MissingTensor {
                dir: path.to_path_buf(),
                name: "token_embd.weight".into(),
            })?;
    let vocab = embd.shape().first().copied().unwrap_or(0);
    let heads = int("attention.head_count")?;
    let kv_heads = int("attention.head_count_kv").unwrap_or(heads);
    let mut config = InternLM2Config::new(
        vocab,
        int("embedding_length")?,
        int("feed_forward_length")?,
        int("block_count")?,
        heads,
        kv_heads,
    )
    .with_max_position_embeddings(int("context_length")?)
    .with_rms_norm_eps(float("attention.layer_norm_rms_epsilon", 1e-5))
    .with_rope_theta(float("rope.freq_base", 10_000.0))
    .with_tie_word_embeddings(!file.tensors.contains_key("output.weight"));
    match file
        .get("internlm2.rope.scaling.type")
        .and_then(GgufValue::as_str)
    {
        None | Some("none") => {}
        Some("linear") => {
            let factor = float("rope.scaling.factor", 1.0);
            config = config.with_rope_scaling(Some(RopeScaling::Linear { factor }));
        }
        Some(other) => {
            return Err(CheckpointError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("RoPE scaling `{other}` (InternLM2 uses linear or dynamic NTK)"),
            });
        }
    }
    let token = |key: &str, default: u32| {
        file.get(&format!("tokenizer.ggml.{key}"))
            .and_then(GgufValue::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(default)
    };
    config = config
        .with_bos_token_id(token("bos_token_id", 1))
        .with_eos_token_id(token("eos_token_id", 2))
        .with_pad_token_id(token("padding_token_id", 2));
    if file.tensors.contains_key("blk.0.attn_q.bias") {
        return Err(CheckpointError::Unsupported {
            path: path.to_path_buf(),
            reason:
                "InternLM2 GGUF with attention biases (llama.cpp's converter does not write them)"
                    .into(),
        });
    }
    config.validate()?;
    Ok(config)
}

/// The GGUF name of a HuggingFace tensor name.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.tok_embeddings.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "output.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, field) = rest.split_once('.')?;
    let g = match field {
        "attention_norm.weight" => "attn_norm.weight",
        "attention.wo.weight" => "attn_output.weight",
        "ffn_norm.weight" => "ffn_norm.weight",
        "feed_forward.w1.weight" => "ffn_gate.weight",
        "feed_forward.w3.weight" => "ffn_up.weight",
        "feed_forward.w2.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}

/// A tensor of the file, dense (f32 values) or packed (in place).
enum Loaded {
    Dense(Vec<f32>),
    Packed(PackedWeight),
}

struct GgufSource<'a, B: Kernels> {
    file: &'a GgufFile,
    config: &'a InternLM2Config,
    quant: QuantConfig,
    dtype: DType,
    device: B::Device,
    used: std::collections::HashSet<String>,
}

impl<B: Kernels> GgufSource<'_, B> {
    fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<(&GgufTensor, String), CheckpointError> {
        let path = self.file.path();
        let t = self
            .file
            .tensors
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                dir: path.to_path_buf(),
                name: name.to_string(),
            })?;
        if t.shape() != shape {
            return Err(CheckpointError::ShapeMismatch {
                path: path.to_path_buf(),
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.shape(),
            });
        }
        self.used.insert(name.to_string());
        Ok((t, name.to_string()))
    }

    fn load(&mut self, name: &str, shape: &[usize]) -> Result<Loaded, CheckpointError> {
        let file = self.file;
        let (t, name) = self.tensor(name, shape)?;
        match t.ggml_type {
            GgmlType::F32 => Ok(Loaded::Dense(
                file.bytes(t)
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )),
            GgmlType::Packed(format) => {
                let cols = t.dims[0];
                let rows = t.dims.iter().skip(1).product();
                let bytes: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync> = file.mmap().clone();
                PackedWeight::from_shared(format, rows, cols, bytes, t.range.clone())
                    .map(Loaded::Packed)
                    .map_err(|e| CheckpointError::Corrupt {
                        path: file.path().to_path_buf(),
                        reason: format!("tensor `{name}`: {e}"),
                    })
            }
            GgmlType::Other(_) => Err(CheckpointError::UnsupportedDtype {
                path: file.path().to_path_buf(),
                name,
                dtype: format!(
                    "{} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K)",
                    t.ggml_type.name()
                ),
            }),
        }
    }

    fn linear_from(
        &self,
        loaded: Loaded,
        [rows, cols]: [usize; 2],
        part: Part,
        name: &str,
    ) -> Result<Linear<B>, CheckpointError> {
        match loaded {
            Loaded::Packed(p) => Ok(Linear::from_packed(p, None, &self.device)),
            Loaded::Dense(values) => match self.quant.format_of(part) {
                Some(format) => {
                    let p = pack(&values, rows, cols, format).map_err(|e| {
                        CheckpointError::Corrupt {
                            path: self.file.path().to_path_buf(),
                            reason: format!("tensor `{name}`: {e}"),
                        }
                    })?;
                    Ok(Linear::from_packed(p, None, &self.device))
                }
                None => {
                    let t = Tensor::<B, 2>::from_data(
                        TensorData::new(values, [rows, cols]),
                        &self.device,
                    )
                    .cast(self.dtype);
                    Ok(Linear::from_tensors(t, None))
                }
            },
        }
    }

    /// Rebuilds the fused `wqkv` of layer `layer` from `attn_q`, `attn_k` and `attn_v`.
    fn wqkv(&mut self, layer: usize) -> Result<Linear<B>, CheckpointError> {
        let c = self.config;
        let (h, d, nh, nkv) = (
            c.hidden_size,
            c.head_dim(),
            c.num_attention_heads,
            c.num_key_value_heads,
        );
        let g = nh / nkv;
        let q = self.load(&format!("blk.{layer}.attn_q.weight"), &[nh * d, h])?;
        let k = self.load(&format!("blk.{layer}.attn_k.weight"), &[nkv * d, h])?;
        let v = self.load(&format!("blk.{layer}.attn_v.weight"), &[nkv * d, h])?;
        // HF row `r` of a head comes from GGUF row `unpermute(r)` of the same head.
        let unpermute = |r: usize| {
            let (a, j) = (r / (d / 2), r % (d / 2));
            2 * j + a
        };
        let source_row = |head: usize, r: usize| head * d + unpermute(r);
        let name = format!("blk.{layer}.attn_q/k/v.weight");
        match (q, k, v) {
            (Loaded::Dense(q), Loaded::Dense(k), Loaded::Dense(v)) => {
                let mut out = Vec::with_capacity(c.wqkv_rows() * h);
                for grp in 0..nkv {
                    for i in 0..g {
                        for r in 0..d {
                            let s = source_row(grp * g + i, r);
                            out.extend_from_slice(&q[s * h..(s + 1) * h]);
                        }
                    }
                    for r in 0..d {
                        let s = source_row(grp, r);
                        out.extend_from_slice(&k[s * h..(s + 1) * h]);
                    }
                    out.extend_from_slice(&v[grp * d * h..(grp + 1) * d * h]);
                }
                self.linear_from(Loaded::Dense(out), [c.wqkv_rows(), h], Part::Body, &name)
            }
            (Loaded::Packed(q), Loaded::Packed(k), Loaded::Packed(v)) => {
                let reorder = |w: &PackedWeight,
                               heads: usize|
                 -> Result<PackedWeight, CheckpointError> {
                    let mut rows = Vec::with_capacity(heads * d);
                    for head in 0..heads {
                        for r in 0..d {
                            rows.push(w.slice_rows(source_row(head, r), source_row(head, r) + 1));
                        }
                    }
                    PackedWeight::stack(&rows).map_err(|e| CheckpointError::Corrupt {
                        path: self.file.path().to_path_buf(),
                        reason: format!("{name}: {e}"),
                    })
                };
                let (q, k) = (compact(&reorder(&q, nh)?), compact(&reorder(&k, nkv)?));
                let mut parts = Vec::with_capacity(3 * nkv);
                for grp in 0..nkv {
                    parts.push(q.slice_rows(grp * g * d, (grp + 1) * g * d));
                    parts.push(k.slice_rows(grp * d, (grp + 1) * d));
                    parts.push(v.slice_rows(grp * d, (grp + 1) * d));
                }
                let fused = PackedWeight::stack(&parts).map_err(|e| CheckpointError::Corrupt {
                    path: self.file.path().to_path_buf(),
                    reason: format!("{name}: {e}"),
                })?;
                Ok(Linear::from_packed(fused, None, &self.device))
            }
            _ => Err(CheckpointError::Unsupported {
                path: self.file.path().to_path_buf(),
                reason: format!("{name}: F32 and packed tensors mixed in one attention projection"),
            }),
        }
    }
}

/// A copy of `w` with each run of rows of one format in one buffer (row-by-row stacks of a
/// permutation are thousands of one-row segments otherwise).
fn compact(w: &PackedWeight) -> PackedWeight {
    let mut parts = Vec::new();
    let mut run: Option<(WeightFormat, Vec<u8>, usize)> = None;
    w.for_rows(0, w.rows(), |_, format, bytes| match &mut run {
        Some((f, buf, rows)) if *f == format => {
            buf.extend_from_slice(bytes);
            *rows += 1;
        }
        _ => {
            if let Some((f, buf, rows)) = run.take() {
                parts.push(PackedWeight::new(f, rows, w.cols(), buf).expect("whole rows"));
            }
            run = Some((format, bytes.to_vec(), 1));
        }
    });
    if let Some((f, buf, rows)) = run {
        parts.push(PackedWeight::new(f, rows, w.cols(), buf).expect("whole rows"));
    }
    PackedWeight::stack(&parts).expect("same columns")
}

impl<B: Kernels> WeightSource<B> for GgufSource<'_, B> {
    fn linear(
        &mut self,
        prefix: &str,
        shape: [usize; 2],
        bias: bool,
        part: Part,
    ) -> Result<Linear<B>, CheckpointError> {
        if bias {
            return Err(CheckpointError::Unsupported {
                path: self.file.path().to_path_buf(),
                reason: "biased linear layers in a GGUF InternLM2".into(),
            });
        }
        let hf = format!("{prefix}.weight");
        if let Some(layer) = prefix
            .strip_prefix("model.layers.")
            .and_then(|r| r.strip_suffix(".attention.wqkv"))
        {
            let layer: usize = layer
                .parse()
                .map_err(|_| meta_err(self.file.path(), prefix, "bad layer"))?;
            return self.wqkv(layer);
        }
        let name = gguf_name(&hf).ok_or_else(|| meta_err(self.file.path(), &hf, "no GGUF name"))?;
        let loaded = self.load(&name, &shape)?;
        self.linear_from(loaded, shape, part, &name)
    }

    fn embedding(
        &mut self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Embedding<B>, CheckpointError> {
        let g = gguf_name(name).ok_or_else(|| meta_err(self.file.path(), name, "no GGUF name"))?;
        let activations = if self.quant.is_dense() {
            self.dtype
        } else {
            DType::F32
        };
        match self.load(&g, &shape)? {
            Loaded::Packed(p) => Ok(Embedding::from_packed(p, activations, &self.device)),
            Loaded::Dense(values) => match self.quant.format_of(Part::Embedding) {
                Some(format) => {
                    let p = pack(&values, shape[0], shape[1], format).map_err(|e| {
                        CheckpointError::Corrupt {
                            path: self.file.path().to_path_buf(),
                            reason: format!("tensor `{g}`: {e}"),
                        }
                    })?;
                    Ok(Embedding::from_packed(p, activations, &self.device))
                }
                None => Ok(Embedding::from_tensor(
                    Tensor::<B, 2>::from_data(TensorData::new(values, shape), &self.device)
                        .cast(activations),
                )),
            },
        }
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>, CheckpointError> {
        let g = gguf_name(name).ok_or_else(|| meta_err(self.file.path(), name, "no GGUF name"))?;
        let values = match self.load(&g, &[len])? {
            Loaded::Dense(v) => v,
            Loaded::Packed(p) => p.dequantize(),
        };
        let dtype = if self.quant.is_dense() {
            self.dtype
        } else {
            DType::F32
        };
        Ok(Tensor::<B, 1>::from_data(TensorData::new(values, [len]), &self.device).cast(dtype))
    }

    fn skip(&mut self, _name: &str) {}
}

/// SentencePiece `ModelProto` fields, to rebuild a `tokenizer.model` from GGUF metadata.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Model {
        #[prost(message, repeated, tag = "1")]
        pub pieces: Vec<Piece>,
        #[prost(message, optional, tag = "2")]
        pub trainer: Option<Trainer>,
        #[prost(message, optional, tag = "3")]
        pub normalizer: Option<Normalizer>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Piece {
        #[prost(string, optional, tag = "1")]
        pub piece: Option<String>,
        #[prost(float, optional, tag = "2")]
        pub score: Option<f32>,
        #[prost(int32, optional, tag = "3")]
        pub kind: Option<i32>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Trainer {
        #[prost(int32, optional, tag = "3")]
        pub model_type: Option<i32>,
        #[prost(bool, optional, tag = "35")]
        pub byte_fallback: Option<bool>,
        #[prost(int32, optional, tag = "40")]
        pub unk_id: Option<i32>,
        #[prost(int32, optional, tag = "41")]
        pub bos_id: Option<i32>,
        #[prost(int32, optional, tag = "42")]
        pub eos_id: Option<i32>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Normalizer {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(bool, optional, tag = "3")]
        pub add_dummy_prefix: Option<bool>,
        #[prost(bool, optional, tag = "4")]
        pub remove_extra_whitespaces: Option<bool>,
        #[prost(bool, optional, tag = "5")]
        pub escape_whitespaces: Option<bool>,
    }
}

/// The chat tokens the converter may mark CONTROL; our tokenizer matches them atomically as
/// user-defined pieces, as InternLM2's `tokenizer.model` does.
const CHAT_TOKENS: [&str; 6] = [
    "<|im_start|>",
    "<|im_end|>",
    "<|action_start|>",
    "<|action_end|>",
    "<|interpreter|>",
    "<|plugin|>",
];

/// The tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`, model `llama`, i.e.
/// SentencePiece BPE), rebuilt as a SentencePiece model: pieces, scores and types as stored;
/// the converter's stand-in `🐉` for the NUL piece becomes NUL again; no text normalisation
/// besides the dummy prefix (`tokenizer.ggml.add_space_prefix`), as llama.cpp tokenizes.
pub fn tokenizer_from_gguf(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let origin = path.display().to_string();
    let invalid = |reason: String| TokenizerError::InvalidModel {
        origin: origin.clone(),
        reason,
    };
    let file = GgufFile::open(path).map_err(|e| invalid(e.to_string()))?;
    let model = file.get("tokenizer.ggml.model").and_then(GgufValue::as_str);
    if model != Some("llama") {
        return Err(invalid(format!(
            "tokenizer.ggml.model {model:?}: only SentencePiece (`llama`) is supported"
        )));
    }
    let array = |key: &str| match file.get(key) {
        Some(GgufValue::Array(items)) => Ok(items.as_slice()),
        _ => Err(invalid(format!(
            "metadata `{key}` is missing or not an array"
        ))),
    };
    let tokens = array("tokenizer.ggml.tokens")?;
    let scores = array("tokenizer.ggml.scores").unwrap_or(&[]);
    let types = array("tokenizer.ggml.token_type").unwrap_or(&[]);
    let mut pieces = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let text = t
            .as_str()
            .ok_or_else(|| invalid(format!("token {i} is not a string")))?;
        let text = if text == "🐉" { "\0" } else { text };
        let mut kind = types.get(i).and_then(GgufValue::as_u64).unwrap_or(1) as i32;
        if kind == 3 && CHAT_TOKENS.contains(&text) {
            kind = 4;
        }
        pieces.push(proto::Piece {
            piece: Some(text.to_string()),
            score: scores.get(i).and_then(GgufValue::as_f64).map(|s| s as f32),
            kind: Some(kind),
        });
    }
    let id = |key: &str, default: i32| {
        file.get(&format!("tokenizer.ggml.{key}"))
            .and_then(GgufValue::as_u64)
            .map_or(default, |v| v as i32)
    };
    let byte_fallback = pieces.iter().any(|p| p.kind == Some(6));
    let add_prefix = !matches!(
        file.get("tokenizer.ggml.add_space_prefix"),
        Some(GgufValue::Bool(false))
    );
    let m = proto::Model {
        pieces,
        trainer: Some(proto::Trainer {
            model_type: Some(2),
            byte_fallback: Some(byte_fallback),
            unk_id: Some(id("unknown_token_id", 0)),
            bos_id: Some(id("bos_token_id", 1)),
            eos_id: Some(id("eos_token_id", 2)),
        }),
        normalizer: Some(proto::Normalizer {
            name: Some("identity".into()),
            add_dummy_prefix: Some(add_prefix),
            remove_extra_whitespaces: Some(false),
            escape_whitespaces: Some(true),
        }),
    };
    Tokenizer::from_sentencepiece_bytes(&prost::Message::encode_to_vec(&m), &origin)
}

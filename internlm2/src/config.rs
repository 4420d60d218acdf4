//! The model configuration: HuggingFace `config.json` in, a validated [`InternLM2Config`] out.
//!
//! Two layers, as in candle's llama: a raw serde struct whose fields are exactly the JSON keys
//! of an InternLM2 `config.json` (Options and defaults, unknown keys ignored), and the validated
//! burn [`Config`] the model is built from. The presets reproduce the released shapes of SPEC 1
//! and [`InternLM2Config::num_parameters`] their published parameter counts.

use std::path::Path;

use burn::config::Config;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The largest value each size of a config may take. Every released InternLM2 (and every
/// open model of its family) is far below these; a `config.json` above them is refused before
/// anything is allocated from it, and the products the model forms from them (`V x H`,
/// `I x H`, `layers x params per layer`, `max_position_embeddings x factor`) cannot overflow.
pub mod limits {
    /// `vocab_size` (InternLM2: 92,544).
    pub const MAX_VOCAB_SIZE: usize = 1 << 22;
    /// `hidden_size` (InternLM2-20B: 6,144).
    pub const MAX_HIDDEN_SIZE: usize = 1 << 16;
    /// `intermediate_size` (InternLM2-20B: 16,384).
    pub const MAX_INTERMEDIATE_SIZE: usize = 1 << 20;
    /// `num_hidden_layers` (InternLM2-20B: 48).
    pub const MAX_LAYERS: usize = 1 << 10;
    /// `max_position_embeddings` (InternLM2: 32,768; InternLM2.5-1M: 262,144).
    pub const MAX_POSITION_EMBEDDINGS: usize = 1 << 24;
    /// `rope_scaling.factor` (InternLM2: 2 to 3).
    pub const MAX_ROPE_SCALING_FACTOR: f64 = 1024.0;
    /// Largest file read as a `config.json`, in bytes (released ones are about 1 KB).
    pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
}

/// RoPE scaling as written in `config.json` under `rope_scaling`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Positions are divided by `factor`.
    Linear {
        /// The divisor of every position.
        factor: f64,
    },
    /// Dynamic NTK: past `max_position_embeddings` the RoPE base grows with the length.
    Dynamic {
        /// The NTK factor `f` of `base * ((f * L / M) - (f - 1)) ^ (d / (d - 2))`.
        factor: f64,
    },
}

/// InternLM2 hyper-parameters (SPEC 1). Field names are the HuggingFace `config.json` keys.
///
/// ```
/// use internlm2::InternLM2Config;
/// let config = InternLM2Config::internlm2_1_8b();
/// assert_eq!(config.num_parameters(), 1_889_110_016);
/// let small = InternLM2Config::new(1000, 64, 176, 2, 4, 2).with_rope_theta(10_000.0);
/// small.validate().unwrap();
/// assert_eq!(small.head_dim(), 16);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct InternLM2Config {
    /// Vocabulary size `V` (92,544 in every release).
    pub vocab_size: usize,
    /// Model width `H`.
    pub hidden_size: usize,
    /// SwiGLU inner width `I`.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (GQA). Releases: 8. Without the key in `config.json`: the
    /// number of query heads (plain multi-head attention).
    pub num_key_value_heads: usize,
    /// Context length the model was trained for; dynamic NTK starts past it. Default (the
    /// releases): 32,768. Without the key in `config.json`: 2,048 (HuggingFace's default).
    #[config(default = 32768)]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon. Default (the releases): 1e-5. Without the key in `config.json`: 1e-6
    /// (HuggingFace's default).
    #[config(default = 1e-5)]
    pub rms_norm_eps: f64,
    /// RoPE base. Default (the releases): 1,000,000. Without the key in `config.json`: 10,000
    /// (HuggingFace's default).
    #[config(default = 1_000_000.0)]
    pub rope_theta: f64,
    /// RoPE scaling (`None` = plain RoPE). Default and without the key: `None`; the chat
    /// releases ship `dynamic` with factor 2 or 3.
    #[config(default = "None")]
    pub rope_scaling: Option<RopeScaling>,
    /// Biases on `wqkv` and `wo`. Default (the releases): `false`. Without the key in
    /// `config.json`: `true` (HuggingFace's default).
    #[config(default = false)]
    pub bias: bool,
    /// Share `output.weight` with `model.tok_embeddings.weight`. Default and without the key:
    /// `false`.
    #[config(default = false)]
    pub tie_word_embeddings: bool,
    /// Begin-of-sequence id. Default and without the key: 1.
    #[config(default = 1)]
    pub bos_token_id: u32,
    /// End-of-sequence id. Default and without the key: 2; a list in `config.json` gives its
    /// first id.
    #[config(default = 2)]
    pub eos_token_id: u32,
    /// Padding id. Default (the releases): 2. Without the key in `config.json`: 0
    /// (HuggingFace's default).
    #[config(default = 2)]
    pub pad_token_id: u32,
}

/// `config.json` exactly as HuggingFace writes it; unknown keys are ignored.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<serde_json::Value>,
    pad_token_id: Option<u32>,
}

impl InternLM2Config {
    /// Reads and validates a HuggingFace `config.json`.
    pub fn from_hf_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > limits::MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                field: "config.json (bytes)",
                value: len.to_string(),
                max: limits::MAX_CONFIG_BYTES.to_string(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse_hf_json(&text, &path.display().to_string())
    }

    /// Parses and validates the text of a HuggingFace `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self, ConfigError> {
        Self::parse_hf_json(text, "<config.json text>")
    }

    fn parse_hf_json(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let hf: HfConfig = serde_json::from_str(text).map_err(|source| ConfigError::Json {
            origin: origin.to_string(),
            source,
        })?;
        if let Some(model_type) = &hf.model_type
            && model_type != "internlm2"
        {
            return Err(ConfigError::WrongModelType {
                name: model_type.clone(),
            });
        }
        if let Some(act) = &hf.hidden_act
            && act != "silu"
        {
            return Err(ConfigError::UnsupportedActivation { name: act.clone() });
        }
        let rope_scaling = match hf.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => Some(parse_rope_scaling(&value)?),
        };
        let eos_token_id = match hf.eos_token_id {
            None | Some(serde_json::Value::Null) => 2,
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| ConfigError::InvalidField {
                    field: "eos_token_id",
                    reason: format!("{n} is not a token id"),
                })?,
            // Some configs list several end ids; the first is the model's EOS.
            Some(serde_json::Value::Array(ids)) => ids
                .first()
                .and_then(|v| v.as_u64())
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| ConfigError::InvalidField {
                    field: "eos_token_id",
                    reason: "expected a non-empty list of token ids".into(),
                })?,
            Some(other) => {
                return Err(ConfigError::InvalidField {
                    field: "eos_token_id",
                    reason: format!("unexpected value {other}"),
                });
            }
        };
        let config = Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: hf.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            bias: hf.bias.unwrap_or(true),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            bos_token_id: hf.bos_token_id.unwrap_or(1),
            eos_token_id,
            pad_token_id: hf.pad_token_id.unwrap_or(0),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every invariant the model relies on: sizes positive and within [`limits`],
    /// heads dividing the width and KV heads dividing the heads, an even head width, a finite
    /// positive epsilon and RoPE base, a RoPE scaling factor in `[1, MAX_ROPE_SCALING_FACTOR]`,
    /// and special ids inside the vocabulary.
    ///
    /// ```
    /// use internlm2::{ConfigError, InternLM2Config};
    /// let huge = InternLM2Config::new(1000, 64, 176, usize::MAX, 4, 2);
    /// assert!(matches!(
    ///     huge.validate(),
    ///     Err(ConfigError::TooLarge { field: "num_hidden_layers", .. })
    /// ));
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value, max) in [
            ("vocab_size", self.vocab_size, limits::MAX_VOCAB_SIZE),
            ("hidden_size", self.hidden_size, limits::MAX_HIDDEN_SIZE),
            (
                "intermediate_size",
                self.intermediate_size,
                limits::MAX_INTERMEDIATE_SIZE,
            ),
            (
                "num_hidden_layers",
                self.num_hidden_layers,
                limits::MAX_LAYERS,
            ),
            (
                "num_attention_heads",
                self.num_attention_heads,
                limits::MAX_HIDDEN_SIZE,
            ),
            (
                "num_key_value_heads",
                self.num_key_value_heads,
                limits::MAX_HIDDEN_SIZE,
            ),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                limits::MAX_POSITION_EMBEDDINGS,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::NotPositive { field });
            }
            if value > max {
                return Err(ConfigError::TooLarge {
                    field,
                    value: value.to_string(),
                    max: max.to_string(),
                });
            }
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return Err(ConfigError::InvalidField {
                field: "rms_norm_eps",
                reason: format!("{} is not a number in (0, 1)", self.rms_norm_eps),
            });
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(ConfigError::InvalidField {
                field: "rope_theta",
                reason: format!("{} is not a finite RoPE base > 1", self.rope_theta),
            });
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(ConfigError::HeadsNotDivisible {
                heads: self.num_attention_heads,
                kv_heads: self.num_key_value_heads,
            });
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(ConfigError::HiddenNotDivisible {
                hidden: self.hidden_size,
                heads: self.num_attention_heads,
            });
        }
        if self.head_dim() % 2 != 0 || self.head_dim() < 4 {
            return Err(ConfigError::InvalidField {
                field: "hidden_size",
                reason: format!(
                    "head_dim {} must be even and at least 4 for rotate_half RoPE",
                    self.head_dim()
                ),
            });
        }
        if let Some(RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor }) =
            self.rope_scaling
            && !(factor.is_finite() && (1.0..=limits::MAX_ROPE_SCALING_FACTOR).contains(&factor))
        {
            return Err(ConfigError::InvalidField {
                field: "rope_scaling.factor",
                reason: format!(
                    "{factor} must be a finite number in [1, {}]",
                    limits::MAX_ROPE_SCALING_FACTOR
                ),
            });
        }
        // Every tensor's element count, and the parameter count, fit a usize (also on 32-bit
        // hosts): the bounds above keep them far below 2^63 on 64-bit ones.
        if self.checked_num_parameters().is_none() {
            return Err(ConfigError::InvalidField {
                field: "hidden_size",
                reason: "the parameter count of this shape overflows".into(),
            });
        }
        for (field, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            if id as usize >= self.vocab_size {
                return Err(ConfigError::InvalidField {
                    field,
                    reason: format!("{id} is outside the vocabulary of {}", self.vocab_size),
                });
            }
        }
        Ok(())
    }

    /// Width of one attention head, `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Query heads per key/value head, `G = heads / kv_heads`.
    pub fn num_key_value_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Rows of the fused `wqkv` weight, `(heads + 2 * kv_heads) * head_dim`.
    pub fn wqkv_rows(&self) -> usize {
        (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim()
    }

    /// Exact number of parameters (SPEC 1 counts: 1.8B = 1,889,110,016); saturates at
    /// `usize::MAX` for a shape [`InternLM2Config::validate`] refuses.
    pub fn num_parameters(&self) -> usize {
        self.checked_num_parameters().unwrap_or(usize::MAX)
    }

    /// [`InternLM2Config::num_parameters`], `None` when a product overflows.
    fn checked_num_parameters(&self) -> Option<usize> {
        let (h, v, i) = (self.hidden_size, self.vocab_size, self.intermediate_size);
        let head_dim = h.checked_div(self.num_attention_heads)?;
        let q_width = self.num_attention_heads.checked_mul(head_dim)?;
        let qkv = self
            .num_key_value_heads
            .checked_mul(2)?
            .checked_add(self.num_attention_heads)?
            .checked_mul(head_dim)?;
        let biases = if self.bias { qkv.checked_add(h)? } else { 0 };
        let attention = qkv
            .checked_mul(h)?
            .checked_add(h.checked_mul(q_width)?)?
            .checked_add(biases)?;
        let layer = h
            .checked_mul(2)?
            .checked_add(attention)?
            .checked_add(h.checked_mul(i)?.checked_mul(3)?)?;
        let embedding = v.checked_mul(h)?;
        let output = if self.tie_word_embeddings {
            0
        } else {
            embedding
        };
        embedding
            .checked_add(self.num_hidden_layers.checked_mul(layer)?)?
            .checked_add(h)?
            .checked_add(output)
    }

    /// The `config.json` text HuggingFace's `InternLM2ForCausalLM` expects.
    pub fn to_hf_json(&self, torch_dtype: &str) -> String {
        let value = serde_json::json!({
            "architectures": ["InternLM2ForCausalLM"],
            "model_type": "internlm2",
            "auto_map": {
                "AutoConfig": "configuration_internlm2.InternLM2Config",
                "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"
            },
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "bias": self.bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": torch_dtype,
            "use_cache": true,
        });
        serde_json::to_string_pretty(&value).expect("a JSON value always serialises")
    }

    /// The released shape shared by every preset: vocab 92,544, 8 KV heads, RoPE base 1e6,
    /// 32K context, no bias, untied embeddings.
    fn release(hidden: usize, intermediate: usize, layers: usize, heads: usize) -> Self {
        Self::new(92_544, hidden, intermediate, layers, heads, 8)
            .with_max_position_embeddings(32_768)
            .with_rope_theta(1_000_000.0)
            .with_rms_norm_eps(1e-5)
            .with_pad_token_id(2)
    }

    /// InternLM2-Chat-1.8B: hidden 2048, 24 layers, 16 heads, intermediate 8192, dynamic NTK 2.0.
    pub fn internlm2_1_8b() -> Self {
        Self::release(2048, 8192, 24, 16)
            .with_rope_scaling(Some(RopeScaling::Dynamic { factor: 2.0 }))
    }

    /// InternLM2-Chat-7B: hidden 4096, 32 layers, 32 heads, intermediate 14336, dynamic NTK 2.0.
    pub fn internlm2_7b() -> Self {
        Self::release(4096, 14336, 32, 32)
            .with_rope_scaling(Some(RopeScaling::Dynamic { factor: 2.0 }))
    }

    /// InternLM2.5-7B-Chat: the 7B shape (hidden 4096, 32 layers, 32 heads, 14336), dynamic 2.0.
    pub fn internlm2_5_7b() -> Self {
        Self::internlm2_7b()
    }

    /// InternLM2-Chat-20B: hidden 6144, 48 layers, 48 heads, intermediate 16384, dynamic NTK 3.0.
    pub fn internlm2_20b() -> Self {
        Self::release(6144, 16384, 48, 48)
            .with_rope_scaling(Some(RopeScaling::Dynamic { factor: 3.0 }))
    }
}

fn parse_rope_scaling(value: &serde_json::Value) -> Result<RopeScaling, ConfigError> {
    let kind = value
        .get("type")
        .or_else(|| value.get("rope_type"))
        .and_then(|t| t.as_str())
        .ok_or_else(|| ConfigError::InvalidField {
            field: "rope_scaling",
            reason: format!("missing `type` in {value}"),
        })?;
    let factor = value
        .get("factor")
        .and_then(|f| f.as_f64())
        .ok_or_else(|| ConfigError::InvalidField {
            field: "rope_scaling",
            reason: format!("missing numeric `factor` in {value}"),
        })?;
    match kind {
        "linear" => Ok(RopeScaling::Linear { factor }),
        "dynamic" => Ok(RopeScaling::Dynamic { factor }),
        other => Err(ConfigError::UnknownRopeScaling {
            name: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{"vocab_size": 512, "hidden_size": 64, "intermediate_size": 176,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rope_scaling": {"type": "dynamic", "factor": 2.0}, "bias": false,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 64,
        "some_unknown_key": [1, 2, 3], "model_type": "internlm2"}"#;

    #[test]
    fn parses_every_field_and_ignores_unknown_keys() {
        let c = InternLM2Config::from_hf_json(TINY).unwrap();
        assert_eq!(c.vocab_size, 512);
        assert_eq!(c.num_key_value_heads, 2);
        assert_eq!(c.rope_scaling, Some(RopeScaling::Dynamic { factor: 2.0 }));
        assert_eq!(c.head_dim(), 16);
        assert_eq!(c.num_key_value_groups(), 2);
        assert!(!c.bias);
    }

    #[test]
    fn kv_heads_default_to_heads() {
        let text = TINY.replace(r#""num_key_value_heads": 2,"#, "");
        let c = InternLM2Config::from_hf_json(&text).unwrap();
        assert_eq!(c.num_key_value_heads, 4);
    }

    #[test]
    fn linear_scaling_and_null_scaling() {
        let lin = TINY.replace("dynamic", "linear");
        let c = InternLM2Config::from_hf_json(&lin).unwrap();
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
        let none = TINY.replace(r#"{"type": "dynamic", "factor": 2.0}"#, "null");
        assert_eq!(
            InternLM2Config::from_hf_json(&none).unwrap().rope_scaling,
            None
        );
    }

    #[test]
    fn rejects_bad_configs_with_typed_errors() {
        let bad_kv = TINY.replace(r#""num_key_value_heads": 2"#, r#""num_key_value_heads": 3"#);
        assert!(matches!(
            InternLM2Config::from_hf_json(&bad_kv),
            Err(ConfigError::HeadsNotDivisible {
                heads: 4,
                kv_heads: 3
            })
        ));
        let bad_hidden = TINY.replace(r#""hidden_size": 64"#, r#""hidden_size": 66"#);
        assert!(matches!(
            InternLM2Config::from_hf_json(&bad_hidden),
            Err(ConfigError::HiddenNotDivisible { .. })
        ));
        let zero = TINY.replace(r#""num_hidden_layers": 2"#, r#""num_hidden_layers": 0"#);
        assert!(matches!(
            InternLM2Config::from_hf_json(&zero),
            Err(ConfigError::NotPositive {
                field: "num_hidden_layers"
            })
        ));
        let yarn = TINY.replace("dynamic", "yarn");
        assert!(matches!(
            InternLM2Config::from_hf_json(&yarn),
            Err(ConfigError::UnknownRopeScaling { name }) if name == "yarn"
        ));
        let llama = TINY.replace(r#""model_type": "internlm2""#, r#""model_type": "llama""#);
        assert!(matches!(
            InternLM2Config::from_hf_json(&llama),
            Err(ConfigError::WrongModelType { .. })
        ));
        assert!(matches!(
            InternLM2Config::from_hf_json("{not json"),
            Err(ConfigError::Json { .. })
        ));
        let gelu = TINY.replace(r#""bias": false"#, r#""bias": false, "hidden_act": "gelu""#);
        assert!(matches!(
            InternLM2Config::from_hf_json(&gelu),
            Err(ConfigError::UnsupportedActivation { .. })
        ));
    }

    /// Issue 16: sizes from a config.json are bounded before anything is allocated from them.
    #[test]
    fn sizes_above_their_limits_are_typed_errors() {
        for (key, value) in [
            ("num_hidden_layers", "18446744073709551615"),
            ("num_hidden_layers", "1099511627776"),
            ("vocab_size", "8589934592"),
            ("intermediate_size", "4294967296"),
            ("max_position_embeddings", "18446744073709551615"),
        ] {
            let text = set(TINY, key, value);
            let err = InternLM2Config::from_hf_json(&text).unwrap_err();
            assert!(
                matches!(err, ConfigError::TooLarge { field, .. } if field == key),
                "{key} = {value}: {err}"
            );
        }
        // Heads and width whose products overflow: head_dim 4, but V x H has no usize.
        let text = set(
            &set(
                &set(TINY, "hidden_size", "17179869184"),
                "num_attention_heads",
                "4294967296",
            ),
            "num_key_value_heads",
            "4294967296",
        );
        assert!(matches!(
            InternLM2Config::from_hf_json(&text),
            Err(ConfigError::TooLarge { .. })
        ));
        // The largest accepted shape still has a parameter count.
        let max = InternLM2Config::new(
            limits::MAX_VOCAB_SIZE,
            limits::MAX_HIDDEN_SIZE,
            limits::MAX_INTERMEDIATE_SIZE,
            limits::MAX_LAYERS,
            limits::MAX_HIDDEN_SIZE / 4,
            limits::MAX_HIDDEN_SIZE / 4,
        )
        .with_max_position_embeddings(limits::MAX_POSITION_EMBEDDINGS)
        .with_rope_scaling(Some(RopeScaling::Dynamic {
            factor: limits::MAX_ROPE_SCALING_FACTOR,
        }));
        max.validate().unwrap();
        assert!(max.num_parameters() < usize::MAX);
    }

    /// Issue 16: values the model cannot compute with are typed errors.
    #[test]
    fn unusable_values_are_typed_errors() {
        for (key, value) in [
            ("rms_norm_eps", "0"),
            ("rms_norm_eps", "-1e-5"),
            ("rms_norm_eps", "1.5"),
            ("rms_norm_eps", "1e300"),
            ("rope_theta", "0"),
            ("rope_theta", "-10000"),
            ("rope_theta", "0.5"),
            ("rope_theta", "1e-300"),
        ] {
            let text = set(TINY, key, value);
            let err = InternLM2Config::from_hf_json(&text).unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidField { field, .. } if field == key),
                "{key} = {value}: {err}"
            );
        }
        for factor in ["0.5", "0", "-2", "1e300"] {
            let text = TINY.replace(r#""factor": 2.0"#, &format!(r#""factor": {factor}"#));
            assert!(
                matches!(
                    InternLM2Config::from_hf_json(&text),
                    Err(ConfigError::InvalidField {
                        field: "rope_scaling.factor",
                        ..
                    })
                ),
                "factor {factor}"
            );
        }
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let c = InternLM2Config::from_hf_json(TINY).unwrap();
            assert!(c.clone().with_rms_norm_eps(bad).validate().is_err());
            assert!(c.clone().with_rope_theta(bad).validate().is_err());
            assert!(
                c.with_rope_scaling(Some(RopeScaling::Linear { factor: bad }))
                    .validate()
                    .is_err()
            );
        }
        // Heads that do not divide the width, KV heads that do not divide the heads, more
        // heads than the width, zero heads.
        for (key, value) in [
            ("num_attention_heads", "5"),
            ("num_attention_heads", "128"),
            ("num_key_value_heads", "3"),
            ("num_key_value_heads", "8"),
            ("num_attention_heads", "0"),
        ] {
            assert!(
                InternLM2Config::from_hf_json(&set(TINY, key, value)).is_err(),
                "{key} = {value}"
            );
        }
    }

    #[test]
    fn an_oversized_config_file_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let mut text = TINY.to_string();
        text.push_str(&" ".repeat(limits::MAX_CONFIG_BYTES as usize));
        std::fs::write(&path, text).unwrap();
        assert!(matches!(
            InternLM2Config::from_hf_file(&path),
            Err(ConfigError::TooLarge { .. })
        ));
    }

    /// `TINY` with `"key": value` replaced.
    fn set(text: &str, key: &str, value: &str) -> String {
        let mut json: serde_json::Value = serde_json::from_str(text).unwrap();
        json[key] = serde_json::from_str(value).unwrap();
        json.to_string()
    }

    #[test]
    fn parameter_counts_match_the_spec() {
        assert_eq!(
            InternLM2Config::internlm2_1_8b().num_parameters(),
            1_889_110_016
        );
        assert_eq!(
            InternLM2Config::internlm2_7b().num_parameters(),
            7_737_708_544
        );
        assert_eq!(
            InternLM2Config::internlm2_20b().num_parameters(),
            19_861_149_696
        );
        for preset in [
            InternLM2Config::internlm2_1_8b(),
            InternLM2Config::internlm2_7b(),
            InternLM2Config::internlm2_5_7b(),
            InternLM2Config::internlm2_20b(),
        ] {
            preset.validate().unwrap();
        }
    }

    #[test]
    fn hf_json_round_trip() {
        let c = InternLM2Config::internlm2_20b().with_bias(true);
        let back = InternLM2Config::from_hf_json(&c.to_hf_json("bfloat16")).unwrap();
        assert_eq!(c, back);
    }
}

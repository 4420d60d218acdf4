//! Quantized and half-precision weights for inference.
//!
//! Every linear layer of the decoder (`wqkv`, `wo`, `w1`, `w2`, `w3`), the LM head and the
//! embedding table can be stored packed ([`PackedWeight`]): f16 or bf16 (computed in f32), or
//! GGUF's block formats `Q8_0`, `Q4_0`, `Q4_K` (and `Q6_K` from GGUF files), or AWQ's W4A16
//! groups. Activations stay f32. A packed [`Linear`](crate::model::linear::Linear) runs
//! [`Kernels::dense_packed`](internlm2_backends::Kernels::dense_packed): fused dequantizing
//! kernels on the CPU backend, the tiled composite reference elsewhere.
//!
//! [`QuantConfig`] says which format each part gets; under a 4-bit body the embedding table
//! and the LM head stay at `Q8_0` by default, because errors there reach every token (the
//! rule mistral.rs and llama.cpp's `Q4_K_M` follow). Models load quantized from a HuggingFace
//! directory ([`LoadOptions`], quantize on load), from our quantized checkpoints (written by
//! [`save_quantized`], loaded without re-quantizing), from GGUF files and from AWQ
//! checkpoints (see [`crate::checkpoint`]).
//!
//! Quantized models are for inference: [`InternLM2::check_trainable`](crate::InternLM2) is the
//! typed error training code raises for them.

pub mod encode;
pub(crate) mod load;
mod save;

use std::fmt;
use std::str::FromStr;

pub use internlm2_backends::packed::{PackedError, PackedWeight, WeightFormat};
pub use load::LoadOptions;
pub use save::{QUANT_METHOD, save_quantized};

/// A quantization or packing failure.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// The format's blocks do not divide the row.
    #[error("{format}: rows of {cols} values are not a whole number of {}-value blocks", format.block_values())]
    PartialBlock {
        /// The format.
        format: WeightFormat,
        /// Values per row.
        cols: usize,
    },
    /// `rows x cols` disagrees with the number of values.
    #[error("{len} values cannot be a [{rows}, {cols}] matrix")]
    Shape {
        /// Rows.
        rows: usize,
        /// Values per row.
        cols: usize,
        /// Values given.
        len: usize,
    },
    /// See [`PackedError`].
    #[error(transparent)]
    Packed(#[from] PackedError),
    /// A text that names no format.
    #[error("unknown quantization `{0}` (expected f32, f16, bf16, q8_0, q4_0 or q4_k)")]
    UnknownFormat(String),
    /// A format that cannot be produced by quantizing (AWQ's groups come from AWQ files).
    #[error("{0} weights cannot be produced by quantizing; load an AWQ checkpoint instead")]
    NotEncodable(WeightFormat),
    /// Training a model whose weights are packed.
    #[error(
        "`{layer}` is stored as {format}: quantized weights are for inference only (train the f32/bf16 model, or attach LoRA adapters)"
    )]
    NotTrainable {
        /// The first packed layer found.
        layer: String,
        /// Its format.
        format: WeightFormat,
    },
}

/// Which format each part of the model is stored in; `None` keeps the load dtype (dense).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuantConfig {
    /// The decoder's linear layers (`wqkv`, `wo`, `w1`, `w2`, `w3`).
    pub body: Option<WeightFormat>,
    /// The token embedding table.
    pub embedding: Option<WeightFormat>,
    /// The LM head (`output`).
    pub head: Option<WeightFormat>,
}

impl QuantConfig {
    /// No packing: every weight dense in the load dtype.
    pub fn dense() -> Self {
        Self::default()
    }

    /// `body` for the decoder's linear layers; the embedding table and the head get the same
    /// format, except under a 4-bit body, where they stay at `Q8_0`.
    ///
    /// ```
    /// use internlm2::quant::{QuantConfig, WeightFormat};
    /// let q = QuantConfig::new(WeightFormat::Q4K);
    /// assert_eq!(q.head, Some(WeightFormat::Q8_0));
    /// let q = q.with_head(Some(WeightFormat::Q4K)); // configurable
    /// assert_eq!(q.head, Some(WeightFormat::Q4K));
    /// ```
    pub fn new(body: WeightFormat) -> Self {
        let outer = if body.bits_per_weight() < 8.0 {
            WeightFormat::Q8_0
        } else {
            body
        };
        Self {
            body: Some(body),
            embedding: Some(outer),
            head: Some(outer),
        }
    }

    /// Sets the format of the decoder's linear layers.
    pub fn with_body(mut self, format: Option<WeightFormat>) -> Self {
        self.body = format;
        self
    }

    /// Sets the embedding table's format.
    pub fn with_embedding(mut self, format: Option<WeightFormat>) -> Self {
        self.embedding = format;
        self
    }

    /// Sets the LM head's format.
    pub fn with_head(mut self, format: Option<WeightFormat>) -> Self {
        self.head = format;
        self
    }

    /// Whether anything is packed.
    pub fn is_dense(&self) -> bool {
        self.body.is_none() && self.embedding.is_none() && self.head.is_none()
    }
}

impl FromStr for QuantConfig {
    type Err = QuantError;

    /// `f32` (dense), `f16`, `bf16`, `q8_0`, `q4_0`, `q4_k` (also `q6_k`), case-insensitive,
    /// with the defaults of [`QuantConfig::new`].
    fn from_str(s: &str) -> Result<Self, QuantError> {
        if s.eq_ignore_ascii_case("f32") || s.eq_ignore_ascii_case("none") {
            return Ok(Self::dense());
        }
        match WeightFormat::from_name(s) {
            Some(WeightFormat::Awq4) => Err(QuantError::NotEncodable(WeightFormat::Awq4)),
            Some(f) => Ok(Self::new(f)),
            None => Err(QuantError::UnknownFormat(s.to_string())),
        }
    }
}

impl fmt::Display for QuantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |x: Option<WeightFormat>| x.map_or("dense", |x| x.name());
        write!(
            f,
            "body {}, embedding {}, head {}",
            name(self.body),
            name(self.embedding),
            name(self.head)
        )
    }
}

/// The format a `[rows, cols]` weight actually gets when `wanted` is asked for: formats whose
/// blocks do not divide `cols` fall back to the nearest one whose 32-value blocks do (`Q4_K`
/// to `Q4_0`, `Q6_K` to `Q8_0`), then to `f16`, as llama.cpp's quantizer falls back for such
/// tensors (it picks `Q5_0` for `Q4_K`, a format we do not have).
pub fn effective_format(wanted: WeightFormat, cols: usize) -> WeightFormat {
    let mut f = wanted;
    loop {
        if f.row_bytes(cols).is_some() {
            return f;
        }
        f = match f {
            WeightFormat::Q4K => WeightFormat::Q4_0,
            WeightFormat::Q6K | WeightFormat::Awq4 => WeightFormat::Q8_0,
            _ => WeightFormat::F16,
        };
    }
}

/// Quantizes a row-major `[rows, cols]` matrix into `wanted` (or its fallback, see
/// [`effective_format`]).
pub fn pack(
    values: &[f32],
    rows: usize,
    cols: usize,
    wanted: WeightFormat,
) -> Result<PackedWeight, QuantError> {
    if wanted == WeightFormat::Awq4 {
        return Err(QuantError::NotEncodable(wanted));
    }
    encode::quantize(values, rows, cols, effective_format(wanted, cols))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse_with_their_defaults() {
        let q: QuantConfig = "Q4_0".parse().unwrap();
        assert_eq!(q.body, Some(WeightFormat::Q4_0));
        assert_eq!(q.embedding, Some(WeightFormat::Q8_0));
        let q: QuantConfig = "f16".parse().unwrap();
        assert_eq!(q.head, Some(WeightFormat::F16));
        assert!("f32".parse::<QuantConfig>().unwrap().is_dense());
        assert!(matches!(
            "q3".parse::<QuantConfig>(),
            Err(QuantError::UnknownFormat(_))
        ));
        assert!(matches!(
            "awq4".parse::<QuantConfig>(),
            Err(QuantError::NotEncodable(_))
        ));
    }

    #[test]
    fn formats_fall_back_where_blocks_do_not_fit() {
        assert_eq!(effective_format(WeightFormat::Q4K, 512), WeightFormat::Q4K);
        assert_eq!(effective_format(WeightFormat::Q4K, 64), WeightFormat::Q4_0);
        assert_eq!(effective_format(WeightFormat::Q6K, 192), WeightFormat::Q8_0);
        assert_eq!(effective_format(WeightFormat::Q4K, 176), WeightFormat::F16);
        assert_eq!(effective_format(WeightFormat::Q4_0, 176), WeightFormat::F16);
        assert_eq!(effective_format(WeightFormat::F16, 7), WeightFormat::F16);
    }
}

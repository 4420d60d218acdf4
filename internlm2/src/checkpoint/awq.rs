//! LMDeploy / AutoAWQ W4A16 checkpoints: 4-bit weights in groups of 128 input features with an
//! f16 scale and a 4-bit zero point per group and output feature (asymmetric), in AutoAWQ's
//! `gemm` packing, which is what `lmdeploy lite auto_awq` writes for InternLM2.
//!
//! `config.json` carries `"quantization_config": {"quant_method": "awq", "version": "gemm",
//! "bits": 4, "group_size": 128, "zero_point": true}`. Each quantized linear layer `{p}` (of
//! `wqkv`, `wo`, `w1`, `w2`, `w3`) stores, for `in` inputs and `out` outputs:
//!
//! | tensor | dtype | shape | holds |
//! |---|---|---|---|
//! | `{p}.qweight` | I32 | `[in, out / 8]` | `q[i][c]`: 8 outputs per word, nibble `k` (bits `4k..4k+4`) holds output `8w + [0, 2, 4, 6, 1, 3, 5, 7][k]` |
//! | `{p}.qzeros` | I32 | `[in / 128, out / 8]` | zero points `z`, packed the same way |
//! | `{p}.scales` | F16 | `[in / 128, out]` | scales `s` |
//!
//! and `W[c][i] = s[i / 128][c] * (q[i][c] - z[i / 128][c])`. The loader repacks each output
//! row into the `AWQ4` format of [`internlm2_backends::packed`] (the same values, rows
//! contiguous), so the CPU kernels read one row at a time like the GGUF formats. Everything
//! else (embeddings, norms, head) loads as in a plain HF checkpoint.

use std::path::Path;

use burn::tensor::{DType, Tensor};
use half::f16;
use internlm2_backends::Kernels;
use internlm2_backends::packed::{PackedWeight, WeightFormat};

use super::{WeightReader, reject_leftovers};
use crate::config::InternLM2Config;
use crate::error::CheckpointError;
use crate::model::InternLM2;
use crate::model::embedding::Embedding;
use crate::model::linear::Linear;
use crate::quant::LoadOptions;
use crate::quant::load::{HfSource, Part, WeightSource, assemble};

/// The only group size LMDeploy's W4A16 kernels (and this loader) use.
pub const GROUP: usize = 128;

/// Output column of nibble `k` of a packed word, relative to the word's first column.
const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Loads an AWQ checkpoint directory whose `quantization_config` is `q`.
pub(crate) fn load_awq<B: Kernels>(
    dir: &Path,
    q: &serde_json::Value,
    options: &LoadOptions,
    device: &B::Device,
) -> Result<InternLM2<B>, CheckpointError> {
    let config_path = dir.join("config.json");
    let field = |k: &str| q.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let unsupported = |reason: String| CheckpointError::Unsupported {
        path: config_path.clone(),
        reason,
    };
    let version = field("version");
    if !version
        .as_str()
        .is_some_and(|v| v.eq_ignore_ascii_case("gemm"))
    {
        return Err(unsupported(format!(
            "AWQ version {version} (only the `gemm` packing is supported)"
        )));
    }
    if field("bits").as_u64() != Some(4) {
        return Err(unsupported(format!(
            "AWQ with {} bits (only 4)",
            field("bits")
        )));
    }
    if field("group_size").as_u64() != Some(GROUP as u64) {
        return Err(unsupported(format!(
            "AWQ group size {} (only {GROUP})",
            field("group_size")
        )));
    }
    if field("zero_point").as_bool() == Some(false) {
        return Err(unsupported("AWQ without zero points".into()));
    }
    let config = InternLM2Config::from_hf_file(&config_path)?;
    let mut reader = WeightReader::open(dir)?;
    let model = assemble(
        &config,
        &mut AwqSource {
            hf: HfSource {
                reader: &mut reader,
                quant: options.quant.with_body(None),
                dtype: if options.quant.is_dense() {
                    options.dtype
                } else {
                    DType::F32
                },
                device: device.clone(),
            },
        },
    )?;
    reject_leftovers(&reader)?;
    Ok(model)
}

struct AwqSource<'a, B: Kernels> {
    hf: HfSource<'a, B>,
}

/// Reads an I32 tensor of `shape`.
fn int32s(
    reader: &mut WeightReader,
    name: &str,
    shape: [usize; 2],
) -> Result<Vec<i32>, CheckpointError> {
    let path = reader.file_of(name);
    let (dtype, got, bytes) = reader.take_raw(name)?;
    if got != shape {
        return Err(CheckpointError::ShapeMismatch {
            path,
            name: name.into(),
            expected: shape.to_vec(),
            got,
        });
    }
    if dtype != "I32" || bytes.len() != shape[0] * shape[1] * 4 {
        return Err(CheckpointError::UnsupportedDtype {
            path,
            name: name.into(),
            dtype: format!("{dtype} (AWQ packs into I32)"),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Repacks AutoAWQ `gemm` tensors of a `[out, in]` layer into `AWQ4` rows.
///
/// `qweight`: `[in, out / 8]`, `qzeros`: `[in / 128, out / 8]`, `scales` (f16 bits):
/// `[in / 128, out]`.
pub fn repack(
    qweight: &[i32],
    qzeros: &[i32],
    scales: &[u16],
    out: usize,
    input: usize,
) -> Vec<u8> {
    let words = out / 8;
    let groups = input / GROUP;
    let nibble = |packed: &[i32], row: usize, col: usize| -> u8 {
        let word = packed[row * words + col / 8] as u32;
        let k = ORDER.iter().position(|&o| o == col % 8).expect("0..8");
        ((word >> (4 * k)) & 0xF) as u8
    };
    let block = WeightFormat::Awq4.block_bytes();
    let mut bytes = vec![0u8; out * groups * block];
    for c in 0..out {
        for g in 0..groups {
            let b = &mut bytes[(c * groups + g) * block..(c * groups + g + 1) * block];
            b[0..2].copy_from_slice(&scales[g * out + c].to_le_bytes());
            b[2] = nibble(qzeros, g, c);
            for j in 0..64 {
                let lo = nibble(qweight, g * GROUP + j, c);
                let hi = nibble(qweight, g * GROUP + 64 + j, c);
                b[4 + j] = lo | (hi << 4);
            }
        }
    }
    bytes
}

impl<B: Kernels> AwqSource<'_, B> {
    fn awq_linear(
        &mut self,
        prefix: &str,
        [out, input]: [usize; 2],
    ) -> Result<PackedWeight, CheckpointError> {
        let reader = &mut *self.hf.reader;
        let path = reader.file_of(&format!("{prefix}.qweight"));
        if out % 8 != 0 || input % GROUP != 0 {
            return Err(CheckpointError::Unsupported {
                path,
                reason: format!(
                    "`{prefix}`: AWQ needs outputs divisible by 8 and inputs by {GROUP}, got [{out}, {input}]"
                ),
            });
        }
        let qweight = int32s(reader, &format!("{prefix}.qweight"), [input, out / 8])?;
        let qzeros = int32s(
            reader,
            &format!("{prefix}.qzeros"),
            [input / GROUP, out / 8],
        )?;
        let name = format!("{prefix}.scales");
        let spath = reader.file_of(&name);
        let (dtype, shape, bytes) = reader.take_raw(&name)?;
        if shape != [input / GROUP, out] {
            return Err(CheckpointError::ShapeMismatch {
                path: spath,
                name,
                expected: vec![input / GROUP, out],
                got: shape,
            });
        }
        let scales: Vec<u16> = match dtype.as_str() {
            "F16" => bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
            "BF16" | "F32" => {
                let f = |c: &[u8]| {
                    if c.len() == 2 {
                        half::bf16::from_le_bytes([c[0], c[1]]).to_f32()
                    } else {
                        f32::from_le_bytes([c[0], c[1], c[2], c[3]])
                    }
                };
                bytes
                    .chunks_exact(if dtype == "F32" { 4 } else { 2 })
                    .map(|c| f16::from_f32(f(c)).to_bits())
                    .collect()
            }
            other => {
                return Err(CheckpointError::UnsupportedDtype {
                    path: spath,
                    name,
                    dtype: other.into(),
                });
            }
        };
        let packed = repack(&qweight, &qzeros, &scales, out, input);
        PackedWeight::new(WeightFormat::Awq4, out, input, packed).map_err(|e| {
            CheckpointError::Corrupt {
                path,
                reason: format!("`{prefix}`: {e}"),
            }
        })
    }
}

impl<B: Kernels> WeightSource<B> for AwqSource<'_, B> {
    fn linear(
        &mut self,
        prefix: &str,
        shape: [usize; 2],
        bias: bool,
        part: Part,
    ) -> Result<Linear<B>, CheckpointError> {
        if !self.hf.reader.contains(&format!("{prefix}.qweight")) {
            return self.hf.linear(prefix, shape, bias, part);
        }
        let bias = if bias {
            Some(self.hf.reader.take_tensor(
                &format!("{prefix}.bias"),
                [shape[0]],
                DType::F32,
                &self.hf.device,
            )?)
        } else {
            None
        };
        let packed = self.awq_linear(prefix, shape)?;
        Ok(Linear::from_packed(packed, bias, &self.hf.device))
    }

    fn embedding(
        &mut self,
        name: &str,
        shape: [usize; 2],
    ) -> Result<Embedding<B>, CheckpointError> {
        self.hf.embedding(name, shape)
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor<B, 1>, CheckpointError> {
        self.hf.vector(name, len)
    }

    fn skip(&mut self, name: &str) {
        self.hf.skip(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repack_follows_the_gemm_nibble_order() {
        // out = 8, in = 128: q[i][c] = (i + c) % 16, z[c] = c, s = 1.0 (f16 0x3C00).
        let (out, input) = (8, 128);
        let mut qweight = vec![0i32; input];
        for i in 0..input {
            let mut w = 0u32;
            for (k, &c) in ORDER.iter().enumerate() {
                w |= (((i + c) % 16) as u32) << (4 * k);
            }
            qweight[i] = w as i32;
        }
        let mut z = 0u32;
        for (k, &c) in ORDER.iter().enumerate() {
            z |= (c as u32) << (4 * k);
        }
        let bytes = repack(&qweight, &[z as i32], &[0x3C00; 8], out, input);
        let w = PackedWeight::new(WeightFormat::Awq4, out, input, bytes)
            .unwrap()
            .dequantize();
        for c in 0..out {
            for i in 0..input {
                let want = ((i + c) % 16) as f32 - c as f32;
                assert_eq!(w[c * input + i], want, "c {c} i {i}");
            }
        }
    }
}

//! Rotary position embedding, NeoX "rotate_half" pairing (dimension `i` with `i + d/2`), with
//! default, linear and dynamic-NTK scaling (SPEC 1).
//!
//! The cos/sin tables are computed on the host in f32 exactly as `modeling_internlm2.py`
//! computes them (`inv_freq = 1 / base^(2j/d)`, `freqs = pos * inv_freq`), one row per token,
//! so every row of a batch may have its own positions (left padding, packed documents).

use burn::tensor::{DType, Tensor, TensorData};
use internlm2_backends::Kernels;

use crate::config::{InternLM2Config, RopeScaling};

/// The RoPE parameters of a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// Rotated width (the whole head).
    pub head_dim: usize,
    /// Base `theta`.
    pub theta: f64,
    /// Scaling from config.json.
    pub scaling: Option<RopeScaling>,
    /// Where dynamic NTK starts to grow the base.
    pub max_position_embeddings: usize,
}

/// Per-token `cos` and `sin`, `[batch, seq, head_dim]`, in the activation dtype.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Kernels> {
    /// `cos(pos * inv_freq)`, duplicated over both halves.
    pub cos: Tensor<B, 3>,
    /// `sin(pos * inv_freq)`, duplicated over both halves.
    pub sin: Tensor<B, 3>,
}

impl Rope {
    /// The RoPE of a config.
    pub fn from_config(config: &InternLM2Config) -> Self {
        Self {
            head_dim: config.head_dim(),
            theta: config.rope_theta,
            scaling: config.rope_scaling,
            max_position_embeddings: config.max_position_embeddings,
        }
    }

    /// The base in force for a sequence of `seq_len` positions: `theta`, or for dynamic NTK past
    /// `max_position_embeddings` (`M`): `theta * ((f * L / M) - (f - 1)) ^ (d / (d - 2))`.
    pub fn base(&self, seq_len: usize) -> f64 {
        match self.scaling {
            Some(RopeScaling::Dynamic { factor }) if seq_len > self.max_position_embeddings => {
                let d = self.head_dim as f64;
                let grow =
                    factor * seq_len as f64 / self.max_position_embeddings as f64 - (factor - 1.0);
                self.theta * grow.powf(d / (d - 2.0))
            }
            _ => self.theta,
        }
    }

    /// `inv_freq[j] = 1 / base^(2j / d)`, in f32 as torch computes it.
    pub fn inv_freq(&self, base: f64) -> Vec<f32> {
        let d = self.head_dim;
        let base = base as f32;
        (0..d / 2)
            .map(|j| 1.0 / base.powf((2 * j) as f32 / d as f32))
            .collect()
    }

    /// cos/sin tables for the given positions.
    ///
    /// `positions` holds `batch * seq` positions, row-major. The dynamic-NTK length of a token
    /// is `lengths[token]` when given, otherwise the largest position + 1 (the official
    /// implementation's `seq_len`, one for the whole call).
    ///
    /// # Panics
    /// If `positions` (or `lengths`) does not hold one entry per token.
    pub fn tables<B: Kernels>(
        &self,
        positions: &[usize],
        lengths: Option<&[usize]>,
        batch: usize,
        seq: usize,
        dtype: DType,
        device: &B::Device,
    ) -> RopeTables<B> {
        assert_eq!(positions.len(), batch * seq, "one position per token");
        if let Some(lengths) = lengths {
            assert_eq!(lengths.len(), batch * seq, "one RoPE length per token");
        }
        let seq_len = positions.iter().max().map_or(0, |p| p + 1);
        // inv_freq per distinct base, in order of first use (a handful at most per call).
        let mut bases: Vec<(u64, Vec<f32>)> = Vec::new();
        let mut inv_freq_of = |len: usize| -> usize {
            let base = self.base(len);
            match bases.iter().position(|(bits, _)| *bits == base.to_bits()) {
                Some(i) => i,
                None => {
                    bases.push((base.to_bits(), self.inv_freq(base)));
                    bases.len() - 1
                }
            }
        };
        let which: Vec<usize> = match lengths {
            Some(lengths) => lengths.iter().map(|&l| inv_freq_of(l)).collect(),
            None => vec![inv_freq_of(seq_len); positions.len()],
        };
        let divisor = match self.scaling {
            Some(RopeScaling::Linear { factor }) => factor as f32,
            _ => 1.0,
        };
        let d = self.head_dim;
        let half = d / 2;
        let mut cos = vec![0f32; batch * seq * d];
        let mut sin = vec![0f32; batch * seq * d];
        for (token, &pos) in positions.iter().enumerate() {
            let t = pos as f32 / divisor;
            let row = token * d;
            for (j, f) in bases[which[token]].1.iter().enumerate() {
                let angle = t * f;
                let (s, c) = angle.sin_cos();
                cos[row + j] = c;
                cos[row + half + j] = c;
                sin[row + j] = s;
                sin[row + half + j] = s;
            }
        }
        let shape = [batch, seq, d];
        RopeTables {
            cos: Tensor::<B, 3>::from_data(TensorData::new(cos, shape), device).cast(dtype),
            sin: Tensor::<B, 3>::from_data(TensorData::new(sin, shape), device).cast(dtype),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(scaling: Option<RopeScaling>) -> Rope {
        Rope {
            head_dim: 16,
            theta: 10_000.0,
            scaling,
            max_position_embeddings: 64,
        }
    }

    #[test]
    fn inv_freq_by_hand() {
        let f = rope(None).inv_freq(10_000.0);
        assert_eq!(f.len(), 8);
        assert_eq!(f[0], 1.0);
        // 10000^(-2/16) = 10^(-0.5)
        assert!((f[1] - 0.316_227_77).abs() < 1e-6);
    }

    #[test]
    fn dynamic_ntk_grows_only_past_max_positions() {
        let r = rope(Some(RopeScaling::Dynamic { factor: 2.0 }));
        assert_eq!(r.base(64), 10_000.0);
        // L = 100, M = 64, f = 2: (2 * 100 / 64 - 1) ^ (16 / 14)
        let expected = 10_000.0 * (2.0f64 * 100.0 / 64.0 - 1.0).powf(16.0 / 14.0);
        assert!((r.base(100) - expected).abs() < 1e-9);
        assert_eq!(rope(None).base(100), 10_000.0);
    }

    #[test]
    fn per_token_lengths_pick_each_tokens_base() {
        use internlm2_backends::Cpu;
        let r = rope(Some(RopeScaling::Dynamic { factor: 2.0 }));
        let device = Default::default();
        let host = |t: RopeTables<Cpu>| t.cos.into_data().into_vec::<f32>().unwrap();
        // Two tokens at position 5: one of a 10-token sequence, one of a 100-token one.
        let mixed = host(r.tables::<Cpu>(&[5, 5], Some(&[10, 100]), 1, 2, DType::F32, &device));
        let short = host(r.tables::<Cpu>(&[5], Some(&[10]), 1, 1, DType::F32, &device));
        let long = host(r.tables::<Cpu>(&[5], Some(&[100]), 1, 1, DType::F32, &device));
        assert_eq!(mixed[..16], short[..]);
        assert_eq!(mixed[16..], long[..]);
        assert_ne!(short, long);
        // Without lengths, every token takes the largest position + 1 (here 100).
        let default = host(r.tables::<Cpu>(&[5, 99], None, 1, 2, DType::F32, &device));
        assert_eq!(default[..16], long[..]);
    }
}

//! libtorch's fused attention (SDPA with `enable_gqa`) against the composite reference on the
//! same backend: GQA ratios 1, 2, 4 and 6, with a cache offset, key padding and packed
//! segments, f32 (tolerance 1e-5 max-abs) and bf16 (2e-2). Needs libtorch at run time (CI: the
//! pip `torch==2.9.0` wheel, `LIBTORCH_USE_PYTORCH=1` and its `lib/` on `LD_LIBRARY_PATH`).

#![cfg(feature = "tch")]

mod common;

use burn::tensor::{Bool, DType, Distribution, Int, Tensor, TensorData};
use internlm2_backends::kernels::composite;
use internlm2_backends::{AttentionMask, Kernels, LibTorch};

fn random<const D: usize>(shape: [usize; D]) -> Tensor<LibTorch, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn padding(b: usize, t: usize, pads: &[usize]) -> Tensor<LibTorch, 2, Bool> {
    let mut flat = vec![false; b * t];
    for (row, &p) in pads.iter().enumerate() {
        flat[row * t..row * t + p].fill(true);
    }
    Tensor::from_data(TensorData::new(flat, [b, t]), &Default::default())
}

/// Two documents per row: slots `0..t/2` segment 0, the rest segment 1.
fn segments(b: usize, t: usize) -> Tensor<LibTorch, 2, Int> {
    let flat: Vec<i64> = (0..b * t).map(|i| i64::from(i % t >= t / 2)).collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), &Default::default())
}

#[test]
fn sdpa_attention_matches_composite() {
    for dtype in [DType::F32, DType::BF16] {
        let tolerance = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
        for groups in [1, 2, 4, 6] {
            for (b, nkv, s, past, d, pads, packed) in [
                (1, 1, 1, 0, 8, vec![0], false),
                (2, 2, 13, 0, 16, vec![0, 5], false),
                (1, 2, 1, 40, 64, vec![0], false),
                (3, 1, 7, 9, 24, vec![3, 0, 12], false),
                (2, 2, 33, 0, 32, vec![0, 0], true),
            ] {
                let nh = nkv * groups;
                let t = past + s;
                let q = random([b, s, nh, d]).swap_dims(1, 2).cast(dtype);
                let k = random([b, nkv, t, d]).cast(dtype);
                let v = random([b, nkv, t, d]).cast(dtype);
                let mask = AttentionMask {
                    past_len: past,
                    key_padding: pads.iter().any(|&p| p > 0).then(|| padding(b, t, &pads)),
                    segments: packed.then(|| segments(b, t)),
                };
                let ours = LibTorch::causal_attention(q.clone(), k.clone(), v.clone(), &mask);
                let reference = composite::causal_attention(q, k, v, &mask);
                assert_eq!(ours.dims(), [b, nh, s, d]);
                assert_eq!(ours.dtype(), dtype);
                let ours = ours.cast(DType::F32).into_data().into_vec::<f32>().unwrap();
                let reference = reference
                    .cast(DType::F32)
                    .into_data()
                    .into_vec::<f32>()
                    .unwrap();
                // Queries that see no key at all (padding rows): any output is acceptable.
                let worst = common::worst_visible_diff(&ours, &reference, [nh, s, d], past, &pads);
                assert!(
                    worst < tolerance,
                    "{dtype:?} G={groups} b={b} nkv={nkv} s={s} past={past} d={d}: {worst}"
                );
            }
        }
    }
}

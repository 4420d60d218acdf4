//! The fused CPU kernels (Flex, f32) against the composite reference on random inputs: odd
//! sizes, GQA ratios 1, 2, 4 and 6, attention with and without a cache and with key padding.
//! Tolerance: 1e-5 max-abs (f32 results of order 1, differing only in summation order).

#![cfg(feature = "flex")]

mod common;

use burn::tensor::{Bool, Distribution, Tensor, TensorData};
use internlm2_backends::kernels::composite;
use internlm2_backends::{AttentionMask, Cpu, Kernels};

const TOLERANCE: f32 = 1e-5;

fn random<const D: usize>(shape: [usize; D]) -> Tensor<Cpu, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn max_diff<const D: usize>(a: Tensor<Cpu, D>, b: Tensor<Cpu, D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (
        a.into_data().into_vec::<f32>().unwrap(),
        b.into_data().into_vec::<f32>().unwrap(),
    );
    // A NaN on either side counts as an infinite difference (`f32::max` would skip it).
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .map(|d| if d.is_nan() { f32::INFINITY } else { d })
        .fold(0f32, f32::max)
}

/// Fills and frees a few blocks of `len` NaNs, so that the allocation a kernel makes next
/// likely reuses one of them (glibc keeps freed blocks once a kernel has called
/// `keep_freed_memory`): an output value the kernel does not write then shows as NaN.
fn poison(len: usize) {
    internlm2_backends::memory::keep_freed_memory();
    let blocks: Vec<Vec<f32>> = (0..4).map(|_| vec![f32::NAN; len]).collect();
    drop(std::hint::black_box(blocks));
}

/// The kernels allocate their outputs without clearing them: over freed NaN-filled memory,
/// every output value must still be written (prefill-sized calls, on the pool, and small ones).
#[test]
fn every_output_value_is_written_over_reused_memory() {
    for [b, s, h] in [[1, 3, 8], [2, 300, 512]] {
        let (x, r, w) = (random([b, s, h]), random([b, s, h]), random([h]));
        poison(b * s * h);
        let d = max_diff(
            Cpu::rms_norm(x.clone(), w.clone(), 1e-5),
            composite::rms_norm(x.clone(), w.clone(), 1e-5),
        );
        assert!(d < TOLERANCE, "rms_norm {b}x{s}x{h}: {d}");
        poison(b * s * h);
        let (s1, n1) = Cpu::add_rms_norm(x.clone(), r.clone(), w.clone(), 1e-5);
        let (s2, n2) = composite::add_rms_norm(x, r, w, 1e-5);
        assert!(max_diff(s1, s2) < TOLERANCE && max_diff(n1, n2) < TOLERANCE);
        let (g, u) = (random([b, s, 3 * h]), random([b, s, 3 * h]));
        poison(b * s * 3 * h);
        let d = max_diff(Cpu::swiglu(g.clone(), u.clone()), composite::swiglu(g, u));
        assert!(d < TOLERANCE, "swiglu {b}x{s}x{h}: {d}");
    }
    for (b, s, nh, nkv, d) in [(1, 2, 8, 2, 4), (2, 300, 8, 2, 64)] {
        let qkv = random([b, s, (nh + 2 * nkv) * d]);
        poison(b * s * nh * d);
        poison(b * s * nkv * d);
        let (q1, k1, v1) = Cpu::split_qkv(qkv.clone(), nh, nkv);
        let (q2, k2, v2) = composite::split_qkv(qkv, nh, nkv);
        for (name, got, want) in [("q", q1, q2), ("k", k1, k2), ("v", v1, v2)] {
            assert_eq!(max_diff(got, want), 0.0, "{name} {b}x{s} {nh}/{nkv}x{d}");
        }
        let x = random([b, s, nh, d]).swap_dims(1, 2);
        let (cos, sin) = (random([b, s, d]), random([b, s, d]));
        poison(b * s * nh * d);
        let dd = max_diff(
            Cpu::rope(x.clone(), cos.clone(), sin.clone()),
            composite::rope(x, cos, sin),
        );
        assert!(dd < TOLERANCE, "rope {b}x{s} {nh}x{d}: {dd}");
        let (q, k, v) = (
            random([b, nh, s, d]),
            random([b, nkv, s, d]),
            random([b, nkv, s, d]),
        );
        let mask = AttentionMask::causal(0);
        poison(b * s * nh * d);
        let dd = max_diff(
            Cpu::causal_attention(q.clone(), k.clone(), v.clone(), &mask),
            composite::causal_attention(q, k, v, &mask),
        );
        assert!(dd < TOLERANCE, "attention {b}x{s} {nh}/{nkv}x{d}: {dd}");
    }
}

#[test]
fn rms_norm_and_add_rms_norm() {
    for [b, s, h] in [[1, 1, 8], [2, 7, 33], [3, 129, 512]] {
        let (x, r, w) = (random([b, s, h]), random([b, s, h]), random([h]));
        let d = max_diff(
            Cpu::rms_norm(x.clone(), w.clone(), 1e-5),
            composite::rms_norm(x.clone(), w.clone(), 1e-5),
        );
        assert!(d < TOLERANCE, "rms_norm {b}x{s}x{h}: {d}");
        let (s1, n1) = Cpu::add_rms_norm(x.clone(), r.clone(), w.clone(), 1e-5);
        let (s2, n2) = composite::add_rms_norm(x, r, w, 1e-5);
        assert!(max_diff(s1, s2) < TOLERANCE && max_diff(n1, n2) < TOLERANCE);
    }
}

#[test]
fn split_qkv_copies_exactly_what_the_composite_views_hold() {
    // (batch, seq, heads, kv_heads, head_dim): one token, GQA ratios 1, 2, 4 and 6, and a
    // prefill-sized call that takes the parallel path.
    for (b, s, nh, nkv, d) in [
        (1, 1, 8, 2, 4),
        (2, 7, 3, 3, 6),
        (2, 5, 8, 2, 10),
        (1, 3, 12, 2, 8),
        (2, 300, 8, 2, 64),
    ] {
        let qkv = random([b, s, (nh + 2 * nkv) * d]);
        let (q1, k1, v1) = Cpu::split_qkv(qkv.clone(), nh, nkv);
        let (q2, k2, v2) = composite::split_qkv(qkv.clone(), nh, nkv);
        assert_eq!(q1.dims(), [b, nh, s, d]);
        assert_eq!(k1.dims(), [b, nkv, s, d]);
        assert_eq!(v1.dims(), [b, nkv, s, d]);
        for (name, got, want) in [("q", q1, q2), ("k", k1, k2), ("v", v1, v2)] {
            assert_eq!(max_diff(got, want), 0.0, "{name} {b}x{s} {nh}/{nkv}x{d}");
        }
        // Spot-check one value against the layout itself: query head h of KV group h / G at
        // token 0 starts at (h / G) * (G + 2) * d + (h % G) * d of the row.
        let g = nh / nkv;
        let h = nh - 1;
        let row = qkv.clone().slice([0..1, 0..1, 0..(nh + 2 * nkv) * d]);
        let row = row.into_data().into_vec::<f32>().unwrap();
        let q = Cpu::split_qkv(qkv, nh, nkv).0;
        let q = q
            .slice([0..1, h..h + 1, 0..1, 0..d])
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let start = (h / g) * (g + 2) * d + (h % g) * d;
        assert_eq!(q, row[start..start + d].to_vec());
    }
}

#[test]
fn rope_on_strided_views() {
    // An odd head size (no model has one) takes the composite path.
    for [b, h, s, d] in [[1, 1, 1, 4], [2, 3, 5, 6], [2, 8, 67, 64], [1, 2, 3, 5]] {
        // The layout the model produces: [b, s, h, d] viewed as [b, h, s, d].
        let x = random([b, s, h, d]).swap_dims(1, 2);
        let (cos, sin) = (random([b, s, d]), random([b, s, d]));
        let dd = max_diff(
            Cpu::rope(x.clone(), cos.clone(), sin.clone()),
            composite::rope(x, cos, sin),
        );
        assert!(dd < TOLERANCE, "rope {b}x{h}x{s}x{d}: {dd}");
    }
}

#[test]
fn swiglu_matches() {
    let (g, u) = (random([2, 9, 1537]), random([2, 9, 1537]));
    assert!(max_diff(Cpu::swiglu(g.clone(), u.clone()), composite::swiglu(g, u)) < TOLERANCE);
}

fn padding(b: usize, t: usize, pads: &[usize]) -> Tensor<Cpu, 2, Bool> {
    let mut flat = vec![false; b * t];
    for (row, &p) in pads.iter().enumerate() {
        for j in 0..p {
            flat[row * t + j] = true;
        }
    }
    Tensor::from_data(TensorData::new(flat, [b, t]), &Default::default())
}

#[test]
fn attention_gqa_ratios_caches_and_padding() {
    for groups in [1, 2, 4, 6] {
        for (b, nkv, s, past, d, pads) in [
            (1, 1, 1, 0, 8, vec![0]),
            (2, 2, 13, 0, 16, vec![0, 5]),
            (1, 2, 1, 40, 64, vec![0]),
            (3, 1, 7, 9, 24, vec![3, 0, 12]),
            (1, 2, 150, 0, 32, vec![0]),
            // With 4 and 6 heads per KV head, a score block larger than the scratch a thread
            // keeps between tasks.
            (1, 1, 70, 1100, 16, vec![0]),
        ] {
            let nh = nkv * groups;
            let t = past + s;
            let q = random([b, s, nh, d]).swap_dims(1, 2);
            // Keys and values as a view of a larger cache buffer.
            let cap = t + 5;
            let k = random([b, nkv, cap, d]).slice([0..b, 0..nkv, 0..t, 0..d]);
            let v = random([b, nkv, cap, d]).slice([0..b, 0..nkv, 0..t, 0..d]);
            let mask = AttentionMask {
                past_len: past,
                key_padding: pads.iter().any(|&p| p > 0).then(|| padding(b, t, &pads)),
                segments: None,
            };
            let ours = Cpu::causal_attention(q.clone(), k.clone(), v.clone(), &mask);
            let reference = composite::causal_attention(q, k, v, &mask);
            // Rows that can see no key at all are padding queries: any output is acceptable.
            let (ours, reference) = (
                ours.into_data().into_vec::<f32>().unwrap(),
                reference.into_data().into_vec::<f32>().unwrap(),
            );
            let worst = common::worst_visible_diff(&ours, &reference, [nh, s, d], past, &pads);
            assert!(
                worst < TOLERANCE,
                "G={groups} b={b} nkv={nkv} s={s} past={past} d={d}: {worst}"
            );
        }
    }
}

/// Scores in the thousands: the softmax must subtract each row's true maximum (exp overflows
/// past 88), so a wrong running maximum shows as inf or NaN here, where random unit inputs
/// would hide it (the softmax of a row does not depend on the shift otherwise).
#[test]
fn attention_with_large_scores_subtracts_the_row_maximum() {
    let (b, nkv, groups, s, d) = (1, 2, 4, 100, 16);
    let q = random([b, s, nkv * groups, d]).swap_dims(1, 2) * 60.0;
    let k = random([b, nkv, s, d]) * 3.0;
    let v = random([b, nkv, s, d]);
    let mask = AttentionMask::causal(0);
    let ours = Cpu::causal_attention(q.clone(), k.clone(), v.clone(), &mask);
    let reference = composite::causal_attention(q, k, v, &mask);
    let values = ours.clone().into_data().into_vec::<f32>().unwrap();
    assert!(values.iter().all(|x| x.is_finite()), "non-finite output");
    let worst = max_diff(ours, reference);
    assert!(worst < 1e-4, "{worst}");
}

fn buffer_address(t: &Tensor<Cpu, 4>) -> *const u8 {
    let p = t.clone().into_primitive().tensor();
    p.bytes().as_ptr()
}

#[test]
fn cache_write_is_in_place_and_matches_slice_assign() {
    let buffer = Tensor::<Cpu, 4>::zeros([2, 3, 10, 8], &Default::default());
    let values = random([2, 3, 4, 8]);
    let expected = composite::cache_write(buffer.clone(), values.clone(), 5);
    let before = buffer_address(&buffer);
    let written = Cpu::cache_write(buffer, values, 5);
    assert_eq!(buffer_address(&written), before, "the buffer was copied");
    assert_eq!(max_diff(written, expected), 0.0);
    // Values as a strided view (`[b, s, heads, d]` memory seen as `[b, heads, s, d]`, as
    // `split_qkv` returns them), written twice at different offsets. (Both cases take the f32
    // row-copy path; the other dtypes' copy is not exercised here.)
    let buffer = Tensor::<Cpu, 4>::zeros([2, 3, 10, 8], &Default::default());
    let values = random([2, 4, 3, 8]).swap_dims(1, 2);
    let more = random([2, 1, 3, 8]).swap_dims(1, 2);
    let expected = composite::cache_write(buffer.clone(), values.clone(), 1);
    let expected = composite::cache_write(expected, more.clone(), 9);
    let before = buffer_address(&buffer);
    let written = Cpu::cache_write(Cpu::cache_write(buffer, values, 1), more, 9);
    assert_eq!(buffer_address(&written), before, "the buffer was copied");
    assert_eq!(max_diff(written, expected), 0.0);
}

#[test]
fn dense_skinny_and_gemm_paths() {
    for (b, s, k, n, bias) in [
        (1, 1, 512, 768, false),
        (3, 1, 37, 70, true),
        (1, 16, 64, 129, true),
        (2, 9, 20, 5, false),
        (1, 300, 64, 33, true),
    ] {
        let x = random([b, s, k]);
        let w = random([n, k]);
        let bias = bias.then(|| random([n]));
        let d = max_diff(
            Cpu::dense(x.clone(), w.clone(), bias.clone()),
            composite::dense(x, w, bias),
        );
        assert!(d < 1e-4, "dense {b}x{s}x{k} -> {n}: {d}");
    }
}

//! The CubeCL kernels (`kernels::cube`) against the composite reference on the same wgpu
//! device (lavapipe's software Vulkan in CI; CUDA device 0 in a build with only the `cuda`
//! feature, as `scripts/gpu-check.sh` makes), on random inputs: odd widths, one and 33 tokens,
//! strided views, f32 and f16. Each kernel is checked twice: through burn's fusion backend
//! (`Wgpu`, what the model uses) and on the plain `CubeBackend`; each case is run through the
//! `CubeOps` entry point, which always launches the kernel (no composite fallback), and through
//! the `Kernels` trait the model calls.
//!
//! Tolerance, with `eps` the machine epsilon of the dtype (2^-23 for f32, 2^-10 for f16):
//! `|ours - reference| <= ulps * eps * (1 + |reference|)`, with `ulps` = 8 in f32 (the two
//! differ only in summation order and in the order of f32 operations) and 2 in f16 (one
//! rounding of an f32 intermediate to f16 may go the other way, then one more product).
//!
//! Attention (`attention_matches_composite_*`) runs GQA ratios 1, 2, 4 and 6 over decoding (1
//! query over 37 slots), prefill (33 queries), a cache offset (7 queries after 5 slots), left
//! key padding (with rows of queries that see no key at all, where the kernel reproduces the
//! composite's uniform average), packed segments and both together, head widths 7, 24, 40, 64
//! and 128, on strided and contiguous Q/K/V. It sums over up to 37 keys in another order than
//! the composite's two matmuls and softmax, through a running maximum whose rescaling adds an
//! `exp` rounding per tile, so its tolerance is 64 eps in f32; in f16 it is 4 eps, because the
//! composite rounds the probabilities to f16 before its second matmul and the kernel keeps them
//! in f32 (each of the two outputs is within about one f16 rounding of the exact value). The
//! attention reference is the composite on the plain backend for both backends (the fusion
//! backend's JIT compiles the composite's many fused kernels slowly on lavapipe).
//!
//! `timings` (ignored by default) prints composite vs fused times per kernel.

#![cfg(any(feature = "wgpu", feature = "cuda"))]

use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Distribution, Int, Tensor, TensorData, TensorPrimitive};
use internlm2_backends::kernels::composite;
use internlm2_backends::kernels::cube::CubeOps;
use internlm2_backends::{AttentionMask, Kernels};
use target::{Device, Fused, Plain, device};

/// The device under test: wgpu (CI, lavapipe) or, in a build with only the `cuda` feature
/// (`scripts/gpu-check.sh`), CUDA device 0.
#[cfg(feature = "wgpu")]
mod target {
    pub use burn::backend::wgpu::WgpuDevice as Device;
    use burn::backend::wgpu::{CubeBackend, WgpuRuntime};

    /// burn's wgpu backend (fusion), what the model uses.
    pub type Fused = internlm2_backends::Wgpu;
    /// burn's wgpu backend without the fusion layer.
    pub type Plain = CubeBackend<WgpuRuntime, f32, i32, u32>;

    pub fn device() -> Device {
        Device::DefaultDevice
    }
}

/// The device under test: CUDA device 0.
#[cfg(all(feature = "cuda", not(feature = "wgpu")))]
mod target {
    use burn_cubecl::CubeBackend;
    pub use cubecl::cuda::CudaDevice as Device;
    use cubecl::cuda::CudaRuntime;

    /// burn's CUDA backend (fusion), what the model uses.
    pub type Fused = internlm2_backends::Cuda;
    /// burn's CUDA backend without the fusion layer.
    pub type Plain = CubeBackend<CudaRuntime, f32, i32, u8>;

    pub fn device() -> Device {
        Device::new(0)
    }
}

const EPS: f64 = 1e-6;

/// The dtypes to test: f32, and f16 where the device has it.
fn dtypes<B: Backend<Device = Device>>() -> Vec<DType> {
    let mut dtypes = vec![DType::F32];
    if B::supports_dtype(&device(), DType::F16) {
        dtypes.push(DType::F16);
    } else {
        eprintln!("this device has no f16: testing f32 only");
    }
    dtypes
}

fn random<B: Backend<Device = Device>, const D: usize>(
    shape: [usize; D],
    dtype: DType,
) -> Tensor<B, D> {
    Tensor::<B, D>::random(shape, Distribution::Normal(0.0, 1.0), &device()).cast(dtype)
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().to_vec::<f32>().unwrap()
}

/// Panics when `ours` and `reference` differ by more than the tolerance of `dtype`.
fn assert_close<B: Backend, const D: usize>(
    what: &str,
    ours: Tensor<B, D>,
    reference: Tensor<B, D>,
    dtype: DType,
) {
    assert_within(what, ours, reference, dtype, [8.0, 2.0]);
}

/// Panics when `ours` and `reference` differ by more than `ulps` (for f32, f16) eps of `dtype`.
fn assert_within<B: Backend, C: Backend, const D: usize>(
    what: &str,
    ours: Tensor<B, D>,
    reference: Tensor<C, D>,
    dtype: DType,
    [ulps_f32, ulps_f16]: [f32; 2],
) {
    assert_eq!(ours.dims(), reference.dims(), "{what}: shapes");
    assert_eq!(ours.dtype(), dtype, "{what}: output dtype");
    let (eps, ulps) = match dtype {
        DType::F32 => (f32::EPSILON, ulps_f32),
        DType::F16 => (half_epsilon(), ulps_f16),
        other => panic!("no tolerance for {other:?}"),
    };
    let (ours, reference) = (values(ours), values(reference));
    let mut worst = 0f32;
    for (i, (a, r)) in ours.iter().zip(&reference).enumerate() {
        let tol = ulps * eps * (1.0 + r.abs());
        assert!(
            (a - r).abs() <= tol && a.is_finite(),
            "{what} {dtype:?}: element {i}: {a} vs {r} (tolerance {tol})"
        );
        worst = worst.max((a - r).abs() / (eps * (1.0 + r.abs())));
    }
    println!("{what} {dtype:?}: worst {worst:.2} eps");
}

/// Machine epsilon of f16: 2^-10.
fn half_epsilon() -> f32 {
    1.0 / 1024.0
}

fn float<B: Backend, const D: usize>(t: Tensor<B, D>) -> burn::tensor::ops::FloatTensor<B> {
    t.into_primitive().tensor()
}

fn tensor<B: Backend, const D: usize>(t: burn::tensor::ops::FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

const HIDDEN: [usize; 5] = [1, 7, 64, 130, 4096];
const SEQ: [usize; 2] = [1, 33];

fn check_rms_norm<B: CubeOps + Kernels<Device = Device>>(name: &str) {
    for dtype in dtypes::<B>() {
        for h in HIDDEN {
            for (b, s) in SEQ.iter().map(|&s| (2, s)) {
                let what = format!("{name} rms_norm {b}x{s}x{h}");
                let (x, w) = (random::<B, 3>([b, s, h], dtype), random::<B, 1>([h], dtype));
                let reference = composite::rms_norm(x.clone(), w.clone(), EPS);
                let ours = B::fused_rms_norm(float(x.clone()), float(w.clone()), EPS as f32);
                assert_close(&what, tensor(ours), reference.clone(), dtype);
                assert_close(&what, B::rms_norm(x, w, EPS), reference, dtype);
            }
        }
        // A strided view: [b, h, s] seen as [b, s, h].
        let x = random::<B, 3>([2, 130, 33], dtype).swap_dims(1, 2);
        let w = random::<B, 1>([130], dtype);
        let reference = composite::rms_norm(x.clone(), w.clone(), EPS);
        let ours = tensor(B::fused_rms_norm(float(x), float(w), EPS as f32));
        assert_close(&format!("{name} rms_norm strided"), ours, reference, dtype);
    }
}

fn check_add_rms_norm<B: CubeOps + Kernels<Device = Device>>(name: &str) {
    for dtype in dtypes::<B>() {
        for h in HIDDEN {
            for s in SEQ {
                let what = format!("{name} add_rms_norm 2x{s}x{h}");
                let (x, r) = (
                    random::<B, 3>([2, s, h], dtype),
                    random::<B, 3>([2, s, h], dtype),
                );
                let w = random::<B, 1>([h], dtype);
                let (sum, normed) = composite::add_rms_norm(x.clone(), r.clone(), w.clone(), EPS);
                let (s1, n1) = B::fused_add_rms_norm(
                    float(x.clone()),
                    float(r.clone()),
                    float(w.clone()),
                    EPS as f32,
                );
                assert_close(&format!("{what} sum"), tensor(s1), sum.clone(), dtype);
                assert_close(&format!("{what} normed"), tensor(n1), normed.clone(), dtype);
                let (s2, n2) = B::add_rms_norm(x, r, w, EPS);
                assert_close(&format!("{what} sum"), s2, sum, dtype);
                assert_close(&format!("{what} normed"), n2, normed, dtype);
            }
        }
    }
}

/// The query layout of the model: the `[b, s, kv, G + 2, d]` projection, sliced, reshaped to
/// `[b, s, heads, d]` and viewed as `[b, heads, s, d]`.
fn model_queries<B: Backend<Device = Device>>(
    [b, s, kv, g, d]: [usize; 5],
    dtype: DType,
) -> Tensor<B, 4> {
    random::<B, 5>([b, s, kv, g + 2, d], dtype)
        .slice([0..b, 0..s, 0..kv, 0..g, 0..d])
        .reshape([b, s, kv * g, d])
        .swap_dims(1, 2)
}

fn check_rope<B: CubeOps + Kernels<Device = Device>>(name: &str) {
    for dtype in dtypes::<B>() {
        for d in [2, 8, 64, 128] {
            for s in SEQ {
                let (b, h) = (2, 3);
                let what = format!("{name} rope {b}x{h}x{s}x{d}");
                let views = [
                    random::<B, 4>([b, h, s, d], dtype),
                    random::<B, 4>([b, s, h, d], dtype).swap_dims(1, 2),
                    model_queries::<B>([b, s, 1, h, d], dtype),
                ];
                let (cos, sin) = (
                    random::<B, 3>([b, s, d], dtype),
                    random::<B, 3>([b, s, d], dtype),
                );
                for x in views {
                    let reference = composite::rope(x.clone(), cos.clone(), sin.clone());
                    let ours =
                        B::fused_rope(float(x.clone()), float(cos.clone()), float(sin.clone()));
                    assert_close(&what, tensor(ours), reference.clone(), dtype);
                    assert_close(
                        &what,
                        B::rope(x, cos.clone(), sin.clone()),
                        reference,
                        dtype,
                    );
                }
            }
        }
    }
}

fn check_swiglu<B: CubeOps + Kernels<Device = Device>>(name: &str) {
    for dtype in dtypes::<B>() {
        for n in [1, 7, 130, 1537, 4096] {
            for s in SEQ {
                let what = format!("{name} swiglu 2x{s}x{n}");
                let (g, u) = (
                    random::<B, 3>([2, s, n], dtype),
                    random::<B, 3>([2, s, n], dtype),
                );
                let reference = composite::swiglu(g.clone(), u.clone());
                let ours = B::fused_swiglu(float(g.clone()), float(u.clone()));
                assert_close(&what, tensor(ours), reference.clone(), dtype);
                assert_close(&what, B::swiglu(g, u), reference, dtype);
            }
        }
    }
}

/// Attention tolerance in eps of the dtype (f32, f16): see the module doc.
const ATTENTION_ULPS: [f32; 2] = [64.0, 4.0];

/// `[b, t]` key padding with the first `pads[row]` slots of each row padded (left padding).
fn left_padding<B: Backend<Device = Device>>(t: usize, pads: &[usize]) -> Tensor<B, 2, Bool> {
    let flat: Vec<bool> = (pads.iter())
        .flat_map(|&p| (0..t).map(move |j| j < p))
        .collect();
    Tensor::from_data(TensorData::new(flat, [pads.len(), t]), &device())
}

/// `[b, t]` segment ids of packed documents: row `r` switches document at slots that are
/// multiples of `t / (r + 2)` (so rows differ), ids counting up from 7.
fn packed_segments<B: Backend<Device = Device>>(b: usize, t: usize) -> Tensor<B, 2, Int> {
    let flat: Vec<i64> = (0..b * t)
        .map(|i| {
            let (row, slot) = (i / t, i % t);
            7 + (slot / (t / (row + 2)).max(1)) as i64
        })
        .collect();
    Tensor::from_data(TensorData::new(flat, [b, t]), &device())
}

/// One attention case: batch, KV heads, queries, cache length, head width, left padding per
/// row (empty: none), packed segments.
struct AttentionCase {
    b: usize,
    kv: usize,
    s: usize,
    past: usize,
    d: usize,
    pads: &'static [usize],
    packed: bool,
}

/// Query heads per KV head.
const GROUPS: [usize; 4] = [1, 2, 4, 6];

const ATTENTION_CASES: [AttentionCase; 7] = [
    // Decoding one token over a cache of 36.
    AttentionCase {
        b: 1,
        kv: 1,
        s: 1,
        past: 36,
        d: 64,
        pads: &[],
        packed: false,
    },
    // Prefill of 33, plain causal.
    AttentionCase {
        b: 1,
        kv: 2,
        s: 33,
        past: 0,
        d: 64,
        pads: &[],
        packed: false,
    },
    // Prefill of 33 with left padding: queries 0..5 of row 1 see no key at all.
    AttentionCase {
        b: 2,
        kv: 1,
        s: 33,
        past: 0,
        d: 40,
        pads: &[0, 5],
        packed: false,
    },
    // 7 queries after 5 cached slots (t = 12), row 1 padded up to slot 8: its first 3 queries
    // see nothing, and the keys after the block's causal limit count in their average.
    AttentionCase {
        b: 2,
        kv: 2,
        s: 7,
        past: 5,
        d: 24,
        pads: &[3, 8],
        packed: false,
    },
    // Packed documents.
    AttentionCase {
        b: 2,
        kv: 1,
        s: 33,
        past: 0,
        d: 64,
        pads: &[],
        packed: true,
    },
    // Packed documents after a cache, head width 128.
    AttentionCase {
        b: 1,
        kv: 1,
        s: 17,
        past: 20,
        d: 128,
        pads: &[],
        packed: true,
    },
    // Padding and segments together, odd head width.
    AttentionCase {
        b: 2,
        kv: 1,
        s: 9,
        past: 0,
        d: 7,
        pads: &[2, 0],
        packed: true,
    },
];

/// A copy of `t` on [`Plain`] (same device and dtype, contiguous).
fn on_plain<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<Plain, D> {
    let dtype = t.dtype();
    Tensor::<Plain, D>::from_data(t.cast(DType::F32).into_data(), &device()).cast(dtype)
}

/// The reference is the composite on [`Plain`] for both backends: the same kernels as on the
/// fusion backend, without the fusion JIT's compilations (about 150 s on lavapipe here).
fn check_attention<B: CubeOps + Kernels<Device = Device>>(name: &str) {
    for dtype in dtypes::<B>() {
        for (n, case) in ATTENTION_CASES.iter().enumerate() {
            // Two GQA ratios per case, so that every ratio meets several cases.
            for groups in [GROUPS[n % 4], GROUPS[(n + 1) % 4]] {
                let AttentionCase {
                    b,
                    kv,
                    s,
                    past,
                    d,
                    pads,
                    packed,
                } = *case;
                let (heads, t) = (kv * groups, past + s);
                let what = format!(
                    "{name} attention G={groups} b={b} kv={kv} s={s} past={past} d={d} \
                     pads={pads:?} packed={packed}"
                );
                // Alternate the model's strided Q and K/V views with contiguous tensors.
                let (q, k, v) = if n % 2 == 0 {
                    (
                        model_queries::<B>([b, s, kv, groups, d], dtype),
                        random::<B, 4>([b, t, kv, d], dtype).swap_dims(1, 2),
                        random::<B, 4>([b, t, kv, d], dtype).swap_dims(1, 2),
                    )
                } else {
                    (
                        random::<B, 4>([b, heads, s, d], dtype),
                        random::<B, 4>([b, kv, t, d], dtype),
                        random::<B, 4>([b, kv, t, d], dtype),
                    )
                };
                let mask = AttentionMask {
                    past_len: past,
                    key_padding: (!pads.is_empty()).then(|| left_padding::<B>(t, pads)),
                    segments: packed.then(|| packed_segments::<B>(b, t)),
                };
                let reference = composite::causal_attention(
                    on_plain(q.clone()),
                    on_plain(k.clone()),
                    on_plain(v.clone()),
                    &AttentionMask {
                        past_len: past,
                        key_padding: (mask.key_padding.clone())
                            .map(|p| Tensor::from_data(p.into_data(), &device())),
                        segments: (mask.segments.clone())
                            .map(|g| Tensor::from_data(g.into_data(), &device())),
                    },
                );
                let ours = B::fused_attention(
                    float(q.clone()),
                    float(k.clone()),
                    float(v.clone()),
                    mask.key_padding.clone().map(|p| p.int().into_primitive()),
                    mask.segments.clone().map(|g| g.into_primitive()),
                    past,
                );
                assert_within(
                    &what,
                    tensor::<B, 4>(ours),
                    reference.clone(),
                    dtype,
                    ATTENTION_ULPS,
                );
                let ours = B::causal_attention(q, k, v, &mask);
                assert_within(&what, ours, reference, dtype, ATTENTION_ULPS);
            }
        }
    }
}

// One test per backend, so that the test runner can run the two (each minutes on lavapipe) at
// the same time.
#[test]
fn attention_matches_composite_with_fusion() {
    check_attention::<Fused>("fusion");
}

#[test]
fn attention_matches_composite_without_fusion() {
    check_attention::<Plain>("plain");
}

#[test]
fn rms_norm_matches_composite() {
    check_rms_norm::<Fused>("fusion");
    check_rms_norm::<Plain>("plain");
}

#[test]
fn add_rms_norm_matches_composite() {
    check_add_rms_norm::<Fused>("fusion");
    check_add_rms_norm::<Plain>("plain");
}

#[test]
fn rope_matches_composite_on_strided_views() {
    check_rope::<Fused>("fusion");
    check_rope::<Plain>("plain");
}

#[test]
fn swiglu_matches_composite() {
    check_swiglu::<Fused>("fusion");
    check_swiglu::<Plain>("plain");
}

/// Mean seconds per call of `f` over 10 calls, synced, after a warm-up round (shader
/// compilation, autotuning). Outputs stay alive until the sync so that no backend can skip
/// computing them.
fn time<B: Backend<Device = Device>, T>(mut f: impl FnMut() -> T) -> f64 {
    let reps = 10;
    let mut round = || {
        let start = Instant::now();
        let outputs: Vec<T> = (0..reps).map(|_| f()).collect();
        B::sync(&device()).unwrap();
        let elapsed = start.elapsed().as_secs_f64();
        drop(outputs);
        elapsed / reps as f64
    };
    round();
    round()
}

fn row(kernel: &str, composite: f64, fused: f64) {
    println!(
        "| {kernel} | {:.3} | {:.3} | {:.2}x |",
        composite * 1e3,
        fused * 1e3,
        composite / fused
    );
}

fn timings_on<B: CubeOps + Kernels<Device = Device>>(name: &str) {
    let (b, s, h, heads, d, inter) = (1, 512, 2048, 16, 128, 8192);
    let dt = DType::F32;
    println!(
        "\n{name} backend, f32, batch {b}, seq {s}, hidden {h}, heads {heads}x{d}, ffn {inter}"
    );
    println!("| kernel | composite ms | fused ms | speed-up |\n|---|---|---|---|");
    let (x, r, w) = (
        random::<B, 3>([b, s, h], dt),
        random::<B, 3>([b, s, h], dt),
        random::<B, 1>([h], dt),
    );
    row(
        "rms_norm",
        time::<B, _>(|| composite::rms_norm(x.clone(), w.clone(), EPS)),
        time::<B, _>(|| B::rms_norm(x.clone(), w.clone(), EPS)),
    );
    row(
        "add_rms_norm",
        time::<B, _>(|| composite::add_rms_norm(x.clone(), r.clone(), w.clone(), EPS)),
        time::<B, _>(|| B::add_rms_norm(x.clone(), r.clone(), w.clone(), EPS)),
    );
    let q = random::<B, 4>([b, s, heads, d], dt).swap_dims(1, 2);
    let (cos, sin) = (random::<B, 3>([b, s, d], dt), random::<B, 3>([b, s, d], dt));
    row(
        "rope",
        time::<B, _>(|| composite::rope(q.clone(), cos.clone(), sin.clone())),
        time::<B, _>(|| B::rope(q.clone(), cos.clone(), sin.clone())),
    );
    let (g, u) = (
        random::<B, 3>([b, s, inter], dt),
        random::<B, 3>([b, s, inter], dt),
    );
    row(
        "swiglu",
        time::<B, _>(|| composite::swiglu(g.clone(), u.clone())),
        time::<B, _>(|| B::swiglu(g.clone(), u.clone())),
    );
    let kv_heads = heads / 2;
    let (k, v) = (
        random::<B, 4>([b, kv_heads, s, d], dt),
        random::<B, 4>([b, kv_heads, s, d], dt),
    );
    let mask = AttentionMask::causal(0);
    row(
        &format!("attention prefill (GQA {heads}/{kv_heads})"),
        time::<B, _>(|| composite::causal_attention(q.clone(), k.clone(), v.clone(), &mask)),
        time::<B, _>(|| B::causal_attention(q.clone(), k.clone(), v.clone(), &mask)),
    );
    let q1 = random::<B, 4>([b, heads, 1, d], dt);
    let mask = AttentionMask::causal(s - 1);
    row(
        &format!("attention decode 1 over {s}"),
        time::<B, _>(|| composite::causal_attention(q1.clone(), k.clone(), v.clone(), &mask)),
        time::<B, _>(|| B::causal_attention(q1.clone(), k.clone(), v.clone(), &mask)),
    );
}

#[test]
#[ignore = "timing table, run with --run-ignored all --no-capture"]
fn timings() {
    timings_on::<Fused>("fusion (burn's Wgpu / Cuda)");
    timings_on::<Plain>("plain CubeBackend");
}

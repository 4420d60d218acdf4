//! The fused packed-weight kernels of the CPU backend (`dense_packed`: the dequantizing
//! mat-vec up to 16 rows, the panel GEMM above) against the composite reference (tiled
//! dequantize, then matmul) for every format, odd shapes, mixed-format stacks and biases;
//! and the decoding kernels' batch invariance (a row's result is bit-identical whatever else
//! is in the call). Tolerance: 2e-4 relative to the size of the dot products (f32 results
//! differing only in summation order), plus, for decoding-sized calls that may quantize their
//! activations to 8 bits, that rounding's worst case per element.

#![cfg(feature = "flex")]

use burn::tensor::{Distribution, Tensor, TensorData};
use half::{bf16, f16};
use internlm2_backends::kernels::{composite, int8_activations};
use internlm2_backends::packed::{PackedWeight, WeightFormat};
use internlm2_backends::{Cpu, Kernels};

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Whether this file runs as the suite with 8-bit activations off: `cpu_quant_f32_activations.rs`
/// includes it as a module, so that the f32 decoding kernels (on AVX-512 machines the grouped
/// ones for Q8_0, Q4_0 and Q4_K, which the default leaves to the integer kernels) keep the
/// same tests. The switch is process-wide; that binary only ever turns it off.
pub(crate) fn f32_activations_suite() -> bool {
    module_path!().starts_with("cpu_quant_f32_activations")
}

/// Random but valid packed rows: random quantized values, sane f16 scales. (Every test makes
/// its weights here first: in the f32-activation suite this turns the 8-bit path off.)
fn random_packed(format: WeightFormat, rows: usize, cols: usize, seed: u64) -> PackedWeight {
    if f32_activations_suite() {
        internlm2_backends::kernels::set_int8_activations(false);
    }
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let row_bytes = format.row_bytes(cols).expect("whole blocks");
    let mut bytes: Vec<u8> = (0..rows * row_bytes).map(|_| rng.next() as u8).collect();
    let scale = |rng: &mut Rng| f16::from_f32(0.005 + 0.05 * rng.unit()).to_le_bytes();
    let bb = format.block_bytes();
    for block in bytes.chunks_exact_mut(bb) {
        match format {
            WeightFormat::F16 => {
                block.copy_from_slice(&f16::from_f32(rng.unit() - 0.5).to_le_bytes())
            }
            WeightFormat::BF16 => {
                block.copy_from_slice(&bf16::from_f32(rng.unit() - 0.5).to_le_bytes())
            }
            WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Awq4 => {
                block[0..2].copy_from_slice(&scale(&mut rng))
            }
            WeightFormat::Q4K => {
                block[0..2].copy_from_slice(&scale(&mut rng));
                block[2..4].copy_from_slice(&scale(&mut rng));
            }
            WeightFormat::Q6K => block[208..210].copy_from_slice(&scale(&mut rng)),
            _ => unreachable!(),
        }
    }
    PackedWeight::new(format, rows, cols, bytes).unwrap()
}

fn random<const D: usize>(shape: [usize; D]) -> Tensor<Cpu, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn values<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().unwrap()
}

/// Worst difference relative to the largest magnitude of the reference.
fn relative_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

/// Whether the CPU mat-vec may have multiplied 8-bit activations for this call (see
/// `kernels::set_int8_activations`; it does so only on AVX2 machines, but a looser check
/// where it did not is still a check).
fn may_use_int8(format: WeightFormat, m: usize) -> bool {
    int8_activations()
        && m <= 16
        && matches!(
            format,
            WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q4K | WeightFormat::Q6K
        )
}

/// The values sharing one activation scale when the mat-vec rounds activations to 8 bits for
/// an output row of this format: 32 for `Q8_0` and `Q4_0`, a 256-value super-block for `Q4_K`
/// and `Q6_K`.
fn activation_block(format: WeightFormat) -> usize {
    match format {
        WeightFormat::Q4K | WeightFormat::Q6K => 256,
        _ => 32,
    }
}

/// `fused` against `reference` for `x [m, k] @ w^T`: each element within 2e-4 of the largest
/// reference magnitude (summation order), plus, where the activations may have been rounded
/// to 8 bits, that rounding's worst case for the element: half a step (`amax / 254` of each
/// activation block, see [`activation_block`]) times the block's weight magnitudes.
fn assert_close(
    fused: &[f32],
    reference: &[f32],
    x: &[f32],
    w: &PackedWeight,
    m: usize,
    int8: bool,
    what: &str,
) {
    let (n, k) = (w.rows(), w.cols());
    let dense = w.dequantize();
    let scale = reference.iter().fold(1e-6f32, |a, v| a.max(v.abs()));
    for r in 0..m {
        for o in 0..n {
            let mut bound = 2e-4 * scale;
            if int8 {
                let block = activation_block(w.row(o).0);
                for b in 0..k / block {
                    let xs = &x[r * k + block * b..r * k + block * (b + 1)];
                    let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let wsum: f32 = dense[o * k + block * b..o * k + block * (b + 1)]
                        .iter()
                        .map(|v| v.abs())
                        .sum();
                    bound += amax / 254.0 * wsum * 1.001;
                }
            }
            let (got, want) = (fused[r * n + o], reference[r * n + o]);
            assert!(
                (got - want).abs() <= bound,
                "{what} row {r} output {o}: {got} vs {want} (bound {bound})"
            );
        }
    }
}

const FORMATS: [WeightFormat; 7] = [
    WeightFormat::F16,
    WeightFormat::BF16,
    WeightFormat::Q8_0,
    WeightFormat::Q4_0,
    WeightFormat::Q4K,
    WeightFormat::Q6K,
    WeightFormat::Awq4,
];

#[test]
fn fused_matches_composite_for_every_format_and_row_count() {
    for (fi, &format) in FORMATS.iter().enumerate() {
        let cols = 512;
        for (m, n, bias) in [
            (1, 37, false),
            (1, 70, true),
            (3, 100, true),
            (4, 64, false),
            (5, 129, true),
            (16, 33, false),
            (17, 200, true),
            (64, 300, false),
        ] {
            let w = random_packed(format, n, cols, (fi * 100 + m) as u64);
            let x = random([1, m, cols]);
            let bias = bias.then(|| random([n]));
            let fused = values(Cpu::dense_packed(x.clone(), &w, bias.clone()));
            let xs = values(x.clone());
            let reference = values(composite::dense_packed(x, &w, bias));
            let int8 = may_use_int8(format, m);
            assert_close(
                &fused,
                &reference,
                &xs,
                &w,
                m,
                int8,
                &format!("{format} m={m} n={n}"),
            );
        }
    }
}

#[test]
fn half_precision_rows_of_any_length() {
    for format in [WeightFormat::F16, WeightFormat::BF16] {
        for (m, k) in [(1, 7), (2, 33), (20, 176)] {
            let w = random_packed(format, 19, k, k as u64);
            let x = random([1, m, k]);
            let d = relative_diff(
                &values(Cpu::dense_packed(x.clone(), &w, None)),
                &values(composite::dense_packed(x, &w, None)),
            );
            assert!(d < 2e-4, "{format} m={m} k={k}: {d}");
        }
    }
}

#[test]
fn mixed_format_stacks() {
    // Q4_K queries and keys next to Q6_K values, as a GGUF Q4_K_M wqkv holds them.
    let parts = [
        random_packed(WeightFormat::Q4K, 48, 256, 1),
        random_packed(WeightFormat::Q6K, 16, 256, 2),
        random_packed(WeightFormat::Q4K, 16, 256, 3),
        random_packed(WeightFormat::Q8_0, 8, 256, 4),
    ];
    let w = PackedWeight::stack(&parts).unwrap();
    for m in [1, 2, 9, 33] {
        let x = random([1, m, 256]);
        let xs = values(x.clone());
        let fused = values(Cpu::dense_packed(x.clone(), &w, None));
        let reference = values(composite::dense_packed(x, &w, None));
        // Every part of this stack has an 8-bit-activation kernel.
        let int8 = may_use_int8(WeightFormat::Q4K, m);
        assert_close(&fused, &reference, &xs, &w, m, int8, &format!("m={m}"));
    }
}

#[test]
fn decoding_rows_do_not_depend_on_their_neighbours() {
    for (fi, &format) in FORMATS.iter().enumerate() {
        let w = random_packed(format, 300, 256, 40 + fi as u64);
        let x = random([1, 16, 256]);
        let all = values(Cpu::dense_packed(x.clone(), &w, None));
        for m in [1, 3, 7, 16] {
            for r in 0..m {
                let alone = x.clone().slice([0..1, r..r + 1, 0..256]);
                let got = values(Cpu::dense_packed(alone, &w, None));
                let part = values(Cpu::dense_packed(
                    x.clone().slice([0..1, 0..m, 0..256]),
                    &w,
                    None,
                ));
                assert_eq!(
                    got,
                    all[r * 300..(r + 1) * 300].to_vec(),
                    "{format} row {r} alone vs 16"
                );
                assert_eq!(
                    part[r * 300..(r + 1) * 300].to_vec(),
                    got,
                    "{format} row {r} in {m}"
                );
            }
        }
    }
}

#[test]
fn prefill_rows_do_not_depend_on_the_row_count() {
    for format in [WeightFormat::Q4_0, WeightFormat::F16] {
        let w = random_packed(format, 700, 1536, 9);
        let x = random([1, 100, 1536]);
        let all = values(Cpu::dense_packed(x.clone(), &w, None));
        let some = values(Cpu::dense_packed(x.slice([0..1, 0..17, 0..1536]), &w, None));
        assert_eq!(some, all[..17 * 700].to_vec(), "{format}");
    }
    let w = random([900, 1536]);
    let x = random([1, 100, 1536]);
    let all = values(Cpu::dense(x.clone(), w.clone(), None));
    let some = values(Cpu::dense(x.slice([0..1, 0..40, 0..1536]), w, None));
    assert_eq!(some, all[..40 * 900].to_vec(), "f32");
}

#[test]
fn the_reference_decoders_agree_with_the_composite_path() {
    // composite::dense_packed of a one-hot input returns the dequantized columns.
    let w = random_packed(WeightFormat::Q4K, 5, 256, 77);
    let dense = w.dequantize();
    let mut onehot = vec![0f32; 256];
    onehot[100] = 1.0;
    let x = Tensor::<Cpu, 3>::from_data(TensorData::new(onehot, [1, 1, 256]), &Default::default());
    let y = values(composite::dense_packed(x, &w, None));
    for (o, v) in y.iter().enumerate() {
        assert!((v - dense[o * 256 + 100]).abs() < 1e-6);
    }
}

/// A NaN input value reaches every output of its own row (it is in every dot product of the
/// row) and no output of the other rows, on every path: the decoding mat-vec (8-bit
/// activations included, where a NaN block gets a NaN scale) and the prefill GEMM.
#[test]
fn a_nan_input_spoils_its_own_row_only() {
    for (fi, &format) in FORMATS.iter().enumerate() {
        for m in [1, 3, 20] {
            let (n, k) = (40, 512);
            let w = random_packed(format, n, k, 500 + fi as u64);
            let mut xs = values(random([1, m, k]));
            xs[(m - 1) * k + 300] = f32::NAN;
            let x =
                Tensor::<Cpu, 3>::from_data(TensorData::new(xs, [1, m, k]), &Default::default());
            let out = values(Cpu::dense_packed(x, &w, None));
            for r in 0..m {
                for o in 0..n {
                    let v = out[r * n + o];
                    if r == m - 1 {
                        assert!(v.is_nan(), "{format} m={m} row {r} output {o}: {v}");
                    } else {
                        assert!(v.is_finite(), "{format} m={m} row {r} output {o}: {v}");
                    }
                }
            }
        }
    }
}

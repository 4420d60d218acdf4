//! Linear layers over packed weights ([`PackedWeight`]: f16/bf16, Q8_0, Q4_0, Q4_K, Q6_K,
//! AWQ4) on burn's Flex CPU backend, with f32 activations.
//!
//! - **Decoding (up to 16 rows)**: a mat-vec that streams each packed weight row once and
//!   dequantizes it in registers, block by block, against every input row: AVX-512 kernels
//!   for f16, Q8_0, Q4_0 and Q4_K ([`super::cpu_quant_avx512`]) and AVX2 + FMA + F16C kernels
//!   for every format ([`super::cpu_quant_avx2`]) where the CPU has them, chosen at run time,
//!   and a portable kernel (decode one block to the stack, dot it) elsewhere. Output features are
//!   split across cores. A row's result depends only on that row and the weight, never on how
//!   many rows share the call (the serving engine relies on this for batch-invariant tokens).
//!   On AVX2 machines (AVX-512 ones included), `Q8_0`, `Q4_0`, `Q4_K` and `Q6_K` rows
//!   multiply 8-bit activations instead ([`super::cpu_quant_int8`]); the AVX-512 kernels then
//!   serve f16 (and the other formats when [`super::set_int8_activations`] is off).
//! - **Prefill (more rows)**: the panel-parallel GEMM of [`super::cpu_gemm`], each panel of
//!   output features dequantized into a per-thread f32 buffer that stays in cache.
//!
//! Neither path ever holds more than one panel of the weight in f32.

use burn::backend::Flex;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::composite;
use super::cpu::{SKINNY_MAX_ROWS, contiguous, primitive, wrap};
use super::cpu_gemm::{Panel, gemm_panels};
use super::cpu_quant_int8 as int8;
use crate::packed::{PackedWeight, WeightFormat, blocks};

/// Work (rows x outputs x inputs) below which the mat-vec stays on the calling thread.
const PARALLEL_WORK: usize = 1 << 18;

/// Input rows one kernel call handles together (each weight block is decoded once for them).
pub(crate) const ROW_GROUP: usize = 4;

/// See [`super::Kernels::dense_packed`].
pub fn dense_packed(
    x: Tensor<Flex, 3>,
    weight: &PackedWeight,
    bias: Option<Tensor<Flex, 1>>,
) -> Tensor<Flex, 3> {
    let [b, s, k] = x.dims();
    let n = weight.rows();
    let f32s = x.dtype() == DType::F32 && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    if !f32s || weight.cols() != k {
        return composite::dense_packed(x, weight, bias);
    }
    let m = b * s;
    let xp = primitive(x);
    let xs = contiguous(&xp);
    let bias = bias.map(primitive);
    let bias = bias.as_ref().map(contiguous);
    let out = if m <= SKINNY_MAX_ROWS {
        let mut out = vec![0f32; m * n];
        matvec(&xs, m, k, weight, bias.as_deref(), &mut out);
        out
    } else {
        gemm_panels(&xs, m, k, n, bias.as_deref(), |o0, o1, buf| {
            decode_rows(weight, o0, o1, buf);
            Panel::Decoded
        })
    };
    wrap(out, [b, s, n])
}

/// Dequantizes rows `o0..o1` of `weight` into `out` with the fastest decoder the CPU has.
pub(crate) fn decode_rows(weight: &PackedWeight, o0: usize, o1: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::cpu_quant_avx2::available() {
        let k = weight.cols();
        if k == 0 {
            return;
        }
        weight.for_rows(o0, o1, |o, format, row| {
            let dst = &mut out[(o - o0) * k..(o - o0 + 1) * k];
            // SAFETY: the features were detected; `dst` holds one row of `k` values.
            unsafe { super::cpu_quant_avx2::decode_row(format, row, dst) };
        });
        return;
    }
    weight.dequantize_rows(o0, o1, out);
}

/// The sums of every 32 consecutive inputs of each row (`[m, k / 32]`), which the formats
/// with an offset (`Q4_K`'s mins) subtract once per sub-block instead of once per value.
pub(crate) fn chunk_sums(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let chunks = k / 32;
    let mut sums = vec![0f32; m * chunks];
    for r in 0..m {
        for c in 0..chunks {
            let v = &x[r * k + c * 32..r * k + c * 32 + 32];
            let mut acc = [0f32; 8];
            for part in v.chunks_exact(8) {
                for i in 0..8 {
                    acc[i] += part[i];
                }
            }
            sums[r * chunks + c] =
                ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        }
    }
    sums
}

/// What one kernel call needs besides the weight row: the input rows and their chunk sums.
#[derive(Clone, Copy)]
pub(crate) struct Inputs<'a> {
    /// `[rows, k]` row-major.
    pub x: &'a [f32],
    /// `[rows, k / 32]` (empty when the format does not use them).
    pub sums: &'a [f32],
    /// Values per row.
    pub k: usize,
}

/// A raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct Dst(*mut f32);
// SAFETY: every task writes its own output columns only.
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

/// How far ahead of the rows being decoded the kernels prefetch weight bytes into L2. The
/// hardware prefetcher alone left a batch-1 decoding step waiting on memory between rows;
/// the same hint took the f32 decoding kernel from half the read bandwidth to all of it.
const PREFETCH_BYTES: usize = 8 << 10;

/// `out[r, o] = dot(x[r], dequantize(weight[o])) + bias[o]` for up to [`SKINNY_MAX_ROWS`] rows.
pub(crate) fn matvec(
    x: &[f32],
    m: usize,
    k: usize,
    weight: &PackedWeight,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let n = weight.rows();
    #[cfg(target_arch = "x86_64")]
    let avx2 = super::cpu_quant_avx2::available();
    #[cfg(target_arch = "x86_64")]
    let avx512 = super::cpu_quant_avx512::available();
    // 8-bit activations for the integer kernels (every AVX2 machine; see `cpu_quant_int8`).
    // On an AVX-512 Xeon (2 threads, the bench shape) they decoded faster than the AVX-512
    // f32 kernels at batch 1: q8_0 275 -> 332 tok/s, q4_0 274 -> 342, q4_k 226 -> 363, q4_k
    // with a Q6_K head (no AVX-512 kernel) 182 -> 399; at batch 8 q4_k +9%, q8_0 and q4_0
    // -5%. The path cannot depend on the row count: a row's bits must not depend on its
    // batch.
    #[cfg(target_arch = "x86_64")]
    let use_int8 = avx2 && super::int8_activations();
    #[cfg(not(target_arch = "x86_64"))]
    let use_int8 = false;
    // The activations quantized in each block size a segment of this weight asks for.
    let quantized = |block: usize| {
        let wanted = use_int8
            && k > 0
            && k % block == 0
            && weight
                .segments()
                .any(|(f, _)| int8::block_of(f) == Some(block));
        wanted.then(|| int8::quantize_rows(x, m, k, block))
    };
    let (acts32, acts256) = (quantized(int8::BLOCK), quantized(int8::SUPER_BLOCK));
    #[cfg(target_arch = "x86_64")]
    let acts_for = |format: WeightFormat| match int8::block_of(format) {
        Some(int8::BLOCK) => acts32.as_ref(),
        Some(int8::SUPER_BLOCK) => acts256.as_ref(),
        _ => None,
    };
    let sums = if weight.uses(WeightFormat::Q4K) && acts256.is_none() {
        chunk_sums(x, m, k)
    } else {
        Vec::new()
    };
    let dst = Dst(out.as_mut_ptr());
    let chunks = k / 32;
    let task = |(o0, o1): (usize, usize)| {
        let dst = dst;
        weight.for_row_runs(o0, o1, |run, format, data| {
            let row_bytes = data.len() / run.len();
            #[cfg(target_arch = "x86_64")]
            if let Some(acts) = acts_for(format) {
                // The whole run through one kernel call per group of input rows (the run's
                // bytes stay in L2 for the next group).
                for r in (0..m).step_by(ROW_GROUP) {
                    let rows = (m - r).min(ROW_GROUP);
                    let emit = |i: usize, dots: &[f32; ROW_GROUP]| {
                        let o = run.start + i;
                        for (j, &d) in dots[..rows].iter().enumerate() {
                            let v = d + bias.map_or(0.0, |b| b[o]);
                            // SAFETY: this task alone writes columns o0..o1; row r + j < m.
                            unsafe { *dst.0.add((r + j) * n + o) = v };
                        }
                    };
                    // SAFETY: the features were detected; `data` holds whole packed rows.
                    unsafe {
                        super::cpu_quant_avx2::dot_run_int8(
                            format,
                            data,
                            row_bytes,
                            acts.rows(r, r + rows),
                            rows,
                            PREFETCH_BYTES,
                            emit,
                        )
                    };
                }
                return;
            }
            let row =
                |o: usize| &data[(o - run.start) * row_bytes..(o - run.start + 1) * row_bytes];
            #[cfg(target_arch = "x86_64")]
            let grouped = avx512 && super::cpu_quant_avx512::handles(format);
            #[cfg(not(target_arch = "x86_64"))]
            let grouped = false;
            // Several input rows: groups of consecutive weight rows decoded side by side by
            // the AVX-512 kernels (each decoded block serves every input row). One input row
            // (batch-1 decoding): one weight row at a time, which streamed the 92,544 x 512
            // Q8_0 head at 2.55 ms against 5.46 ms four rows side by side (2-core AMD EPYC,
            // 2 threads). Results are the same either way: every (weight row, input row)
            // pair goes through the same operations.
            #[cfg(target_arch = "x86_64")]
            let group = if grouped && m > 1 {
                super::cpu_quant_avx512::group_rows(format)
            } else {
                1
            };
            #[cfg(not(target_arch = "x86_64"))]
            let group = 1;
            let mut outs = [[0f32; ROW_GROUP]; ROW_GROUP];
            let mut o = run.start;
            while o < run.end {
                let g = group.min(run.end - o);
                // The rows PREFETCH_BYTES ahead, into L2 (a hint; see `PREFETCH_BYTES`).
                #[cfg(target_arch = "x86_64")]
                {
                    let from = (o - run.start) * row_bytes + PREFETCH_BYTES;
                    let to = (from + g * row_bytes).min(data.len());
                    for at in (from..to).step_by(64) {
                        // SAFETY: SSE is part of x86_64; `at` is inside `data`.
                        unsafe {
                            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                                data.as_ptr().add(at) as *const i8,
                            )
                        };
                    }
                }
                let mut wrows: [&[u8]; ROW_GROUP] = [row(o); ROW_GROUP];
                for (i, w) in wrows.iter_mut().enumerate().take(g).skip(1) {
                    *w = row(o + i);
                }
                let mut r = 0;
                while r < m {
                    let rows = (m - r).min(ROW_GROUP);
                    let inputs = Inputs {
                        x: &x[r * k..(r + rows) * k],
                        sums: if sums.is_empty() {
                            &[]
                        } else {
                            &sums[r * chunks..(r + rows) * chunks]
                        },
                        k,
                    };
                    #[cfg(target_arch = "x86_64")]
                    if grouped {
                        // SAFETY: the features were detected; the rows are whole packed rows.
                        unsafe {
                            super::cpu_quant_avx512::dot_group(
                                format,
                                &wrows[..g],
                                inputs,
                                rows,
                                &mut outs,
                            )
                        };
                    } else if avx2 {
                        // SAFETY: the features were detected.
                        unsafe {
                            super::cpu_quant_avx2::dot_rows(
                                format,
                                wrows[0],
                                inputs,
                                rows,
                                &mut outs[0],
                            )
                        };
                    } else {
                        dot_rows_portable(format, wrows[0], inputs, rows, &mut outs[0]);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    dot_rows_portable(format, wrows[0], inputs, rows, &mut outs[0]);
                    for (w, dots) in outs[..g].iter().enumerate() {
                        for (j, &d) in dots[..rows].iter().enumerate() {
                            let v = d + bias.map_or(0.0, |b| b[o + w]);
                            // SAFETY: this task alone writes columns o0..o1; row r + j < m.
                            unsafe { *dst.0.add((r + j) * n + o + w) = v };
                        }
                    }
                    r += rows;
                }
                o += g;
            }
        });
    };
    let threads = rayon::current_num_threads().max(1);
    let per_task = (n / (8 * threads)).clamp(16, 256);
    let ranges: Vec<(usize, usize)> = (0..n.div_ceil(per_task))
        .map(|t| (t * per_task, ((t + 1) * per_task).min(n)))
        .collect();
    if m * n * k >= PARALLEL_WORK && ranges.len() > 1 {
        ranges.into_par_iter().for_each(task);
    } else {
        ranges.into_iter().for_each(task);
    }
}

/// The portable kernel: decode 32 values (or one block of a larger format) to the stack, then
/// dot them with each input row, every row in the same order whatever `rows` is.
pub(crate) fn dot_rows_portable(
    format: WeightFormat,
    row: &[u8],
    inputs: Inputs<'_>,
    rows: usize,
    dots: &mut [f32; ROW_GROUP],
) {
    let k = inputs.k;
    let piece = format.block_values().max(32);
    let piece_bytes = piece / format.block_values() * format.block_bytes();
    let mut buf = [0f32; 256];
    let mut acc = [[0f32; 8]; ROW_GROUP];
    let whole = row.len() / piece_bytes;
    for (p, bytes) in row.chunks_exact(piece_bytes).enumerate() {
        let vals = &mut buf[..piece];
        blocks::decode_row(format, bytes, vals);
        for (j, a) in acc[..rows].iter_mut().enumerate() {
            let xs = &inputs.x[j * k + p * piece..j * k + (p + 1) * piece];
            for (wv, xv) in vals.chunks_exact(8).zip(xs.chunks_exact(8)) {
                for i in 0..8 {
                    a[i] += wv[i] * xv[i];
                }
            }
        }
    }
    // f16/bf16 rows may end with fewer than 32 values.
    let tail = k - whole * piece;
    blocks::decode_row(format, &row[whole * piece_bytes..], &mut buf[..tail]);
    for (j, (d, a)) in dots[..rows].iter_mut().zip(&acc).enumerate() {
        let mut sum = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        for (i, w) in buf[..tail].iter().enumerate() {
            sum += w * inputs.x[j * k + whole * piece + i];
        }
        *d = sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid packed rows from a byte pattern, with sane f16 scales.
    fn rows(format: WeightFormat, rows: usize, cols: usize) -> PackedWeight {
        let rb = format.row_bytes(cols).unwrap();
        let mut bytes: Vec<u8> = (0..rows * rb).map(|i| (i * 131 % 251) as u8).collect();
        let scale = half::f16::from_f32(0.01).to_le_bytes();
        for block in bytes.chunks_exact_mut(format.block_bytes()) {
            match format {
                WeightFormat::F16 | WeightFormat::BF16 => block[1] &= 0x3B, // small finite values
                WeightFormat::Q6K => block[208..210].copy_from_slice(&scale),
                WeightFormat::Q4K => {
                    block[..2].copy_from_slice(&scale);
                    block[2..4].copy_from_slice(&scale);
                }
                _ => block[..2].copy_from_slice(&scale),
            }
        }
        PackedWeight::new(format, rows, cols, bytes).unwrap()
    }

    #[test]
    fn portable_kernel_matches_the_reference_decoders() {
        for format in WeightFormat::ALL {
            let (n, k, m) = (3, 512, 4);
            let w = rows(format, n, k);
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 19) as f32 - 9.0) / 9.0)
                .collect();
            let dense = w.dequantize();
            let mut out = [0f32; ROW_GROUP];
            for o in 0..n {
                let (f, row) = w.row(o);
                let inputs = Inputs {
                    x: &x,
                    sums: &[],
                    k,
                };
                dot_rows_portable(f, row, inputs, m, &mut out);
                for r in 0..m {
                    let want: f32 = (0..k).map(|i| dense[o * k + i] * x[r * k + i]).sum();
                    let scale = (0..k)
                        .map(|i| (dense[o * k + i] * x[r * k + i]).abs())
                        .sum::<f32>()
                        .max(1e-6);
                    assert!(
                        (out[r] - want).abs() / scale < 1e-5,
                        "{format} row {o} input {r}: {} vs {want}",
                        out[r]
                    );
                }
            }
        }
    }

    /// Every kernel the CPU can run (portable, AVX2, AVX-512) gives each format's dot products
    /// up to summation order, for 1 to 4 rows.
    #[test]
    fn every_instruction_set_agrees() {
        for format in WeightFormat::ALL {
            let (n, k) = (5, 512);
            let w = rows(format, n, k);
            let x: Vec<f32> = (0..4 * k)
                .map(|i| ((i * 13 % 23) as f32 - 11.0) / 11.0)
                .collect();
            let sums = chunk_sums(&x, 4, k);
            for m in 1..=4 {
                for o in 0..n {
                    let (f, row) = w.row(o);
                    let inputs = Inputs {
                        x: &x[..m * k],
                        sums: &sums[..m * (k / 32)],
                        k,
                    };
                    let mut want = [0f32; ROW_GROUP];
                    dot_rows_portable(f, row, inputs, m, &mut want);
                    let mut results = Vec::new();
                    #[cfg(target_arch = "x86_64")]
                    {
                        if super::super::cpu_quant_avx2::available() {
                            let mut got = [0f32; ROW_GROUP];
                            // SAFETY: detected.
                            unsafe {
                                super::super::cpu_quant_avx2::dot_rows(f, row, inputs, m, &mut got)
                            };
                            results.push(("avx2", got));
                        }
                        if super::super::cpu_quant_avx512::available()
                            && super::super::cpu_quant_avx512::handles(f)
                        {
                            let mut got = [0f32; ROW_GROUP];
                            // SAFETY: detected.
                            unsafe {
                                super::super::cpu_quant_avx512::dot_rows(
                                    f, row, inputs, m, &mut got,
                                )
                            };
                            results.push(("avx512", got));
                        }
                    }
                    for (isa, got) in results {
                        for r in 0..m {
                            let tol =
                                1e-5 * (0..k).map(|i| x[r * k + i].abs()).sum::<f32>().max(1.0);
                            assert!(
                                (got[r] - want[r]).abs() <= tol,
                                "{format} {isa} m={m} row {o}/{r}: {} vs {}",
                                got[r],
                                want[r]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn chunk_sums_add_32_values() {
        let x: Vec<f32> = (0..128).map(|i| i as f32).collect();
        let s = chunk_sums(&x, 2, 64);
        assert_eq!(s, vec![496.0, 1520.0, 2544.0, 3568.0]);
    }
}

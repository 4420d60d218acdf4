//! Decoding with 8-bit activations: the input rows of a quantized mat-vec quantized to
//! signed bytes with one f32 scale per block of values, so that `Q8_0`, `Q4_0`, `Q4_K` and
//! `Q6_K` weight blocks multiply them with integer instructions (AVX2 `maddubs`/`madd`,
//! [`super::cpu_quant_avx2::dot_run_int8`]) instead of unpacking every weight to f32.
//! llama.cpp decodes these formats the same way (its `vec_dot_type` is `Q8_0` or `Q8_K`).
//!
//! Blocks. For `Q8_0` and `Q4_0` weights an activation block is 32 values (as GGUF's `Q8_0`),
//! the size of a weight block, so each 32-value integer dot is scaled once. For the super-block
//! formats `Q4_K` and `Q6_K` it is 256 values (as GGUF's `Q8_K`): the integer dots of a whole
//! super-block, each already multiplied by its 6-bit sub-block scale, add up in 32-bit
//! integers and are converted and scaled once per 256 values instead of once per 32, which
//! halved the integer kernels' instructions per weight byte.
//!
//! Numerics. Each activation moves by at most half a step, `amax / 254` of its block, so a dot
//! product moves by at most `sum_b amax_b / 254 * sum_{i in b} |w_i|` (checked in the tests);
//! the integer block dots themselves are exact (a `Q6_K` super-block's 32-bit lanes can exceed
//! 2^24, so their one conversion to f32 may round by a unit of the 25th bit, far below the
//! activation rounding). A row's result still depends only on that row
//! and the weight. The path is taken on x86-64 CPUs with AVX2 (AVX-512 ones included: there
//! it decoded 22-25% faster than the AVX-512 f32 kernels at `Q8_0` and `Q4_0` and 60% at
//! `Q4_K`), unless [`super::set_int8_activations`] turned it off.

use crate::packed::WeightFormat;
#[cfg(test)]
use crate::packed::blocks::q4k_scale_min;

/// Values per activation block for the 32-value weight formats (`Q8_0`, `Q4_0`).
pub(crate) const BLOCK: usize = 32;
/// Values per activation block for the super-block formats (`Q4_K`, `Q6_K`).
pub(crate) const SUPER_BLOCK: usize = 256;

/// The activation block size of a format with an 8-bit-activation kernel, `None` for the
/// others.
pub(crate) fn block_of(format: WeightFormat) -> Option<usize> {
    match format {
        WeightFormat::Q8_0 | WeightFormat::Q4_0 => Some(BLOCK),
        WeightFormat::Q4K | WeightFormat::Q6K => Some(SUPER_BLOCK),
        _ => None,
    }
}

/// Input rows quantized per block of [`Q8Rows::block`] values.
pub(crate) struct Q8Rows {
    /// `[rows, k]` signed bytes in `-127..=127`.
    pub q: Vec<i8>,
    /// `[rows, k / block]`: each block's scale (`x ~= d * q`); NaN for a block holding a
    /// non-finite value, so that it reaches the output as the f32 path would carry it.
    pub d: Vec<f32>,
    /// `[rows, k / 16]`: the integer sum of every 16 values of `q` (for the offsets of
    /// `Q4_K`'s mins and `Q6_K`'s values).
    pub b16: Vec<i16>,
    /// Values per row.
    pub k: usize,
    /// Values per scale: [`BLOCK`] or [`SUPER_BLOCK`].
    pub block: usize,
}

/// A view of some consecutive rows of [`Q8Rows`].
#[derive(Clone, Copy)]
pub(crate) struct Q8Inputs<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub b16: &'a [i16],
    pub k: usize,
    pub block: usize,
}

impl Q8Rows {
    /// Rows `r0..r1`.
    pub fn rows(&self, r0: usize, r1: usize) -> Q8Inputs<'_> {
        let (k, c) = (self.k, self.k / self.block);
        Q8Inputs {
            q: &self.q[r0 * k..r1 * k],
            d: &self.d[r0 * c..r1 * c],
            b16: &self.b16[r0 * (k / 16)..r1 * (k / 16)],
            k,
            block: self.block,
        }
    }
}

#[cfg(test)]
impl Q8Inputs<'_> {
    /// The scale of row `j`'s values `32 * c..32 * (c + 1)`.
    fn scale(&self, j: usize, c: usize) -> f32 {
        self.d[(j * self.k + 32 * c) / self.block]
    }
}

/// Quantizes `m` rows of `k` values (`k` a multiple of `block`, itself a multiple of 32): per
/// block `d = amax / 127` and `q = round(x / d)`.
pub(crate) fn quantize_rows(x: &[f32], m: usize, k: usize, block: usize) -> Q8Rows {
    debug_assert!(block % 32 == 0 && k % block == 0 && x.len() >= m * k);
    let mut q = vec![0i8; m * k];
    let mut d = vec![0f32; m * k / block];
    for ((xs, qs), db) in x[..m * k]
        .chunks_exact(block)
        .zip(q.chunks_exact_mut(block))
        .zip(d.iter_mut())
    {
        if xs.iter().any(|v| !v.is_finite()) {
            *db = f32::NAN;
            continue;
        }
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        if amax == 0.0 {
            continue;
        }
        let inv = 127.0 / amax;
        for (qv, &v) in qs.iter_mut().zip(xs) {
            // Round to nearest (ties to even) by adding and removing 1.5 * 2^23, which
            // compiles to two additions instead of a call to `roundf` per value.
            const MAGIC: f32 = 12_582_912.0;
            *qv = (((v * inv) + MAGIC) - MAGIC).clamp(-127.0, 127.0) as i8;
        }
        *db = amax / 127.0;
    }
    let b16 = q
        .chunks_exact(16)
        .map(|c| c.iter().map(|&v| v as i16).sum())
        .collect();
    Q8Rows {
        q,
        d,
        b16,
        k,
        block,
    }
}

#[cfg(test)]
/// The weight values of one 32-value block as integers with the block's (scale, offset):
/// `w = scale * q - offset`.
fn weight_block(format: WeightFormat, row: &[u8], b: usize) -> ([i32; 32], f32, f32) {
    let f16 = |p: &[u8]| half::f16::from_le_bytes([p[0], p[1]]).to_f32();
    let mut q = [0i32; 32];
    match format {
        WeightFormat::Q8_0 => {
            let blk = &row[34 * b..34 * (b + 1)];
            for (v, &byte) in q.iter_mut().zip(&blk[2..]) {
                *v = byte as i8 as i32;
            }
            (q, f16(blk), 0.0)
        }
        WeightFormat::Q4_0 => {
            let blk = &row[18 * b..18 * (b + 1)];
            for i in 0..16 {
                q[i] = (blk[2 + i] & 0xF) as i32 - 8;
                q[i + 16] = (blk[2 + i] >> 4) as i32 - 8;
            }
            (q, f16(blk), 0.0)
        }
        WeightFormat::Q4K => {
            let (sb, sub) = (b / 8, b % 8);
            let blk = &row[144 * sb..144 * (sb + 1)];
            let (sc, m) = q4k_scale_min(&blk[4..16], sub);
            let bytes = &blk[16 + 32 * (sub / 2)..16 + 32 * (sub / 2 + 1)];
            for (v, &byte) in q.iter_mut().zip(bytes) {
                *v = if sub % 2 == 0 { byte & 0xF } else { byte >> 4 } as i32;
            }
            (q, f16(blk) * sc as f32, f16(&blk[2..]) * m as f32)
        }
        WeightFormat::Q6K => {
            // GGUF's layout: per 128-value half `n`, low nibbles in `ql[64n..64n + 64]`, two
            // high bits per value in `qh[32n..32n + 32]`, one signed scale per 16 values.
            let (sb, sub) = (b / 8, b % 8);
            let blk = &row[210 * sb..210 * (sb + 1)];
            let (n, g) = (sub / 4, sub % 4);
            for (l, v) in q.iter_mut().enumerate() {
                let ql = blk[64 * n + 32 * (g % 2) + l];
                let low = if g < 2 { ql & 0xF } else { ql >> 4 };
                let high = (blk[128 + 32 * n + l] >> (2 * g)) & 3;
                let scale = blk[192 + (32 * sub + l) / 16] as i8 as i32;
                *v = ((low | (high << 4)) as i32 - 32) * scale;
            }
            (q, f16(&blk[208..]), 0.0)
        }
        _ => unreachable!("no 8-bit-activation kernel for {format}"),
    }
}

#[cfg(test)]
/// The scalar definition of what the SIMD kernels compute: per block, the exact integer dot
/// scaled by both scales, minus the offset times the block's activation sum (summation order
/// differs from the kernels).
pub(crate) fn dot_rows_reference(
    format: WeightFormat,
    row: &[u8],
    inputs: Q8Inputs<'_>,
    rows: usize,
    dots: &mut [f32],
) {
    let (k, chunks) = (inputs.k, inputs.k / BLOCK);
    for (j, dot) in dots[..rows].iter_mut().enumerate() {
        let mut acc = 0f64;
        for b in 0..chunks {
            let (wq, scale, offset) = weight_block(format, row, b);
            let xq = &inputs.q[j * k + BLOCK * b..j * k + BLOCK * (b + 1)];
            let int: i32 = wq.iter().zip(xq).map(|(&w, &x)| w * x as i32).sum();
            let sum: i32 = xq.iter().map(|&x| x as i32).sum();
            let dx = inputs.scale(j, b) as f64;
            acc += scale as f64 * dx * int as f64 - offset as f64 * dx * sum as f64;
        }
        *dot = acc as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::PackedWeight;

    fn weight(format: WeightFormat, rows: usize, cols: usize) -> PackedWeight {
        let rb = format.row_bytes(cols).unwrap();
        let mut bytes: Vec<u8> = (0..rows * rb).map(|i| (i * 131 % 251) as u8).collect();
        let scale = half::f16::from_f32(0.01).to_le_bytes();
        for block in bytes.chunks_exact_mut(format.block_bytes()) {
            if format == WeightFormat::Q6K {
                block[208..].copy_from_slice(&scale);
                continue;
            }
            block[..2].copy_from_slice(&scale);
            if format == WeightFormat::Q4K {
                block[2..4].copy_from_slice(&half::f16::from_f32(0.02).to_le_bytes());
            }
        }
        PackedWeight::new(format, rows, cols, bytes).unwrap()
    }

    fn inputs(m: usize, k: usize) -> Vec<f32> {
        (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0 * if i % 64 < 32 { 1.0 } else { 0.01 })
            .collect()
    }

    #[test]
    fn quantized_rows_round_to_the_nearest_step() {
        for block in [BLOCK, SUPER_BLOCK] {
            let x = inputs(2, 512);
            let q = quantize_rows(&x, 2, 512, block);
            assert_eq!(q.d.len(), 2 * 512 / block);
            for (i, &v) in x.iter().enumerate() {
                let d = q.d[i / block];
                assert!(
                    (d * q.q[i] as f32 - v).abs() <= d / 2.0 * 1.0001,
                    "block {block} value {i}"
                );
            }
            for (b, &d) in q.d.iter().enumerate() {
                let amax = x[block * b..block * (b + 1)]
                    .iter()
                    .fold(0f32, |a, v| a.max(v.abs()));
                assert_eq!(d, amax / 127.0, "block {block} scale {b}");
            }
            for (t, &sum) in q.b16.iter().enumerate() {
                let want: i32 = q.q[16 * t..16 * (t + 1)].iter().map(|&v| v as i32).sum();
                assert_eq!(sum as i32, want);
            }
        }
    }

    #[test]
    fn a_zero_block_and_a_non_finite_block() {
        for block in [BLOCK, SUPER_BLOCK] {
            let mut x = vec![0f32; 2 * block];
            x[block + 8] = f32::INFINITY;
            let q = quantize_rows(&x, 1, 2 * block, block);
            assert_eq!(q.d[0], 0.0);
            assert!(q.d[1].is_nan());
        }
    }

    /// The reference is the f32 dot with the dequantized weight, off by no more than half an
    /// activation step per value.
    #[test]
    fn reference_stays_within_the_activation_rounding_bound() {
        for format in [
            WeightFormat::Q8_0,
            WeightFormat::Q4_0,
            WeightFormat::Q4K,
            WeightFormat::Q6K,
        ] {
            let (n, k, m) = (3, 512, 2);
            let w = weight(format, n, k);
            let dense = w.dequantize();
            let x = inputs(m, k);
            let block = block_of(format).unwrap();
            let acts = quantize_rows(&x, m, k, block);
            for o in 0..n {
                let (f, row) = w.row(o);
                let mut got = [0f32; 4];
                dot_rows_reference(f, row, acts.rows(0, m), m, &mut got);
                for r in 0..m {
                    let exact: f64 = (0..k)
                        .map(|i| dense[o * k + i] as f64 * x[r * k + i] as f64)
                        .sum();
                    let bound: f64 = (0..k)
                        .map(|i| dense[o * k + i].abs() as f64 * acts.d[(r * k + i) / block] as f64)
                        .sum::<f64>()
                        / 2.0
                        * 1.001
                        + 1e-6 * exact.abs();
                    let err = (got[r] as f64 - exact).abs();
                    assert!(err <= bound, "{format} {o}/{r}: {err} > {bound}");
                    // The bound is not vacuous: it is far below the size of the dot.
                    assert!(
                        bound
                            < 0.05
                                * (0..k)
                                    .map(|i| (dense[o * k + i] * x[r * k + i]).abs() as f64)
                                    .sum::<f64>()
                    );
                }
            }
        }
    }

    /// The AVX2 integer kernels compute the reference's block sums (up to f32 summation
    /// order), for 1 to 4 rows, each row the same whatever its neighbours.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernels_match_the_reference() {
        use super::super::cpu_quant::ROW_GROUP;
        use super::super::cpu_quant_avx2 as avx2;
        if !avx2::available() {
            return;
        }
        for format in [
            WeightFormat::Q8_0,
            WeightFormat::Q4_0,
            WeightFormat::Q4K,
            WeightFormat::Q6K,
        ] {
            // An odd number of blocks: 25 of 32 values for the even/odd accumulators of the
            // Q8_0 and Q4_0 kernels, 3 super-blocks for Q4_K and Q6_K.
            let k = if block_of(format) == Some(BLOCK) {
                800
            } else {
                768
            };
            let n = 4;
            let w = weight(format, n, k);
            let dense = w.dequantize();
            let x = inputs(4, k);
            let acts = quantize_rows(&x, 4, k, block_of(format).unwrap());
            // One weight row alone: a run of length one.
            let one_row = |row: &[u8], inputs: Q8Inputs<'_>, m: usize| {
                let mut dots = [0f32; ROW_GROUP];
                // SAFETY: detected; one whole row, `m` input rows.
                unsafe {
                    avx2::dot_run_int8(format, row, row.len(), inputs, m, 0, |_, d| dots = *d)
                };
                dots
            };
            for m in 1..=4 {
                for o in 0..n {
                    let (f, row) = w.row(o);
                    let mut want = [0f32; ROW_GROUP];
                    dot_rows_reference(f, row, acts.rows(0, m), m, &mut want);
                    let got = one_row(row, acts.rows(0, m), m);
                    let mut run = vec![[0f32; ROW_GROUP]; n];
                    let data = (0..n)
                        .flat_map(|o| w.row(o).1.to_vec())
                        .collect::<Vec<u8>>();
                    // SAFETY: detected; whole rows.
                    unsafe {
                        avx2::dot_run_int8(f, &data, row.len(), acts.rows(0, m), m, 256, |i, d| {
                            run[i] = *d
                        })
                    };
                    for r in 0..m {
                        assert_eq!(
                            run[o][r].to_bits(),
                            got[r].to_bits(),
                            "{format} run {o}/{r}"
                        );
                    }
                    for r in 0..m {
                        let alone = one_row(row, acts.rows(r, r + 1), 1);
                        assert_eq!(
                            got[r].to_bits(),
                            alone[0].to_bits(),
                            "{format} m={m} row {r}"
                        );
                        let size: f32 = (0..k)
                            .map(|i| (dense[o * k + i] * x[r * k + i]).abs())
                            .sum();
                        assert!(
                            (got[r] - want[r]).abs() <= 1e-5 * size,
                            "{format} m={m} row {o}/{r}: {} vs {}",
                            got[r],
                            want[r]
                        );
                    }
                }
            }
        }
    }

    /// The AVX2 unpacking of a `Q4_K` scale table equals the scalar definition for every
    /// byte value in every position and for random tables.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_q4_k_scale_table_matches_the_scalar_definition() {
        use super::super::cpu_quant_avx2 as avx2;
        if !avx2::available() {
            return;
        }
        let mut tables: Vec<[u8; 12]> = Vec::new();
        for pos in 0..12 {
            for v in 0..=255u8 {
                let mut t = [0x5Au8; 12];
                t[pos] = v;
                tables.push(t);
            }
        }
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..2000 {
            let mut t = [0u8; 12];
            for b in t.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = (state >> 24) as u8;
            }
            tables.push(t);
        }
        for t in tables {
            // SAFETY: detected; 12 readable bytes.
            let v = unsafe { avx2::q4k_scales_mins(t.as_ptr()) };
            let mut got = [0u8; 16];
            // SAFETY: 16 writable bytes.
            unsafe {
                std::arch::x86_64::_mm_storeu_si128(got.as_mut_ptr() as *mut _, v);
            }
            for j in 0..8 {
                let (sc, m) = q4k_scale_min(&t, j);
                assert_eq!((got[j], got[8 + j]), (sc, m), "table {t:?} sub-block {j}");
            }
        }
    }
}

//! Quantizing f32 rows into the packed formats of [`internlm2_backends::packed`], with GGUF's
//! rounding rules where GGUF defines one:
//!
//! - `Q8_0`: `d = absmax / 127`, `q = round(x / d)` (ties away from zero), as ggml's
//!   `quantize_row_q8_0_ref`.
//! - `Q4_0`: `d = max / -8` with `max` the signed value of largest magnitude,
//!   `q = min(15, trunc(x / d + 8.5))`, as `quantize_row_q4_0_ref` (bit-identical output).
//! - `Q4_K`: per 32 values a least-squares `(scale, min)` over a grid of candidate scales (our
//!   own search in the spirit of ggml's `make_qkx2_quants`), scales and mins quantized to 6
//!   bits against the super-block's f16 `d` and `dmin`, then the values re-quantized with the
//!   stored scales.
//! - `Q6_K`: per 16 values the ggml-style symmetric rule (`scale = max / -32`), scales
//!   quantized to i8 against the super-block's f16 `d`, values re-quantized with them.
//! - `f16` / `bf16`: round to nearest even.
//!
//! Rows are quantized in parallel (rayon).

use half::{bf16, f16};
use internlm2_backends::packed::blocks::q4k_pack_scales;
use internlm2_backends::packed::{PackedWeight, WeightFormat};
use rayon::prelude::*;

use super::QuantError;

/// Quantizes a row-major `[rows, cols]` f32 matrix.
///
/// ```
/// use internlm2::quant::encode::quantize;
/// use internlm2_backends::packed::WeightFormat;
/// let w: Vec<f32> = (0..64).map(|i| i as f32 / 64.0 - 0.5).collect();
/// let q = quantize(&w, 2, 32, WeightFormat::Q8_0)?;
/// assert_eq!(q.storage_bytes(), 2 * 34);
/// let back = q.dequantize();
/// assert!(back.iter().zip(&w).all(|(a, b)| (a - b).abs() < 0.5 / 127.0));
/// # Ok::<(), internlm2::quant::QuantError>(())
/// ```
pub fn quantize(
    values: &[f32],
    rows: usize,
    cols: usize,
    format: WeightFormat,
) -> Result<PackedWeight, QuantError> {
    let row_bytes = format
        .row_bytes(cols)
        .ok_or(QuantError::PartialBlock { format, cols })?;
    if rows.checked_mul(cols) != Some(values.len()) {
        return Err(QuantError::Shape {
            rows,
            cols,
            len: values.len(),
        });
    }
    let total = rows.checked_mul(row_bytes).ok_or(QuantError::Shape {
        rows,
        cols,
        len: values.len(),
    })?;
    let mut bytes = vec![0u8; total];
    if cols > 0 && rows > 0 {
        bytes
            .par_chunks_mut(row_bytes)
            .zip(values.par_chunks(cols))
            .for_each(|(dst, src)| encode_row(format, src, dst));
    }
    PackedWeight::new(format, rows, cols, bytes).map_err(QuantError::Packed)
}

/// Encodes one row (a whole number of blocks).
///
/// # Panics
/// If `dst` is not exactly the packed size of `src` or the format has no encoder (`AWQ4`,
/// which only comes from AWQ checkpoints).
pub fn encode_row(format: WeightFormat, src: &[f32], dst: &mut [u8]) {
    let (bv, bb) = (format.block_values(), format.block_bytes());
    assert_eq!(src.len() / bv * bb, dst.len(), "row sizes");
    match format {
        WeightFormat::F16 => {
            for (d, &v) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
        WeightFormat::BF16 => {
            for (d, &v) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&bf16::from_f32(v).to_le_bytes());
            }
        }
        WeightFormat::Q8_0 => blocks(src, dst, bv, bb, encode_q8_0),
        WeightFormat::Q4_0 => blocks(src, dst, bv, bb, encode_q4_0),
        WeightFormat::Q4K => blocks(src, dst, bv, bb, encode_q4_k),
        WeightFormat::Q6K => blocks(src, dst, bv, bb, encode_q6_k),
        other => panic!("no encoder for {other}"),
    }
}

fn blocks(src: &[f32], dst: &mut [u8], bv: usize, bb: usize, f: fn(&[f32], &mut [u8])) {
    for (x, out) in src.chunks_exact(bv).zip(dst.chunks_exact_mut(bb)) {
        f(x, out);
    }
}

fn put_f16(dst: &mut [u8], v: f32) -> f32 {
    let h = f16::from_f32(v);
    dst[..2].copy_from_slice(&h.to_le_bytes());
    h.to_f32()
}

/// ggml `quantize_row_q8_0_ref` for one block.
pub fn encode_q8_0(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, d);
    for (o, &v) in out[2..34].iter_mut().zip(x) {
        *o = ((v * id).round() as i8) as u8;
    }
}

/// ggml `quantize_row_q4_0_ref` for one block.
pub fn encode_q4_0(x: &[f32], out: &mut [u8]) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(out, d);
    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    for j in 0..16 {
        out[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
    }
}

/// Candidate grid of the `Q4_K` search: `iscale = (nmax + STEP * i) / range` for
/// `i in -STEPS..=STEPS`.
const Q4K_STEPS: i32 = 10;
const Q4K_STEP: f32 = 0.1;

/// Least-squares `(scale, offset)` of `x ~ scale * q + offset` with `offset <= 0`, for fixed
/// `q`, and its squared error.
fn fit(x: &[f32], q: &[u8]) -> (f32, f32, f32) {
    let n = x.len() as f32;
    let (mut sq, mut sx, mut sqq, mut sqx) = (0f32, 0f32, 0f32, 0f32);
    for (&v, &l) in x.iter().zip(q) {
        let l = l as f32;
        sq += l;
        sx += v;
        sqq += l * l;
        sqx += l * v;
    }
    let det = n * sqq - sq * sq;
    let (mut scale, mut offset) = if det > 0.0 {
        ((n * sqx - sq * sx) / det, (sqq * sx - sq * sqx) / det)
    } else {
        (0.0, sx / n)
    };
    if offset > 0.0 {
        offset = 0.0;
        scale = if sqq > 0.0 { sqx / sqq } else { 0.0 };
    }
    let err = x
        .iter()
        .zip(q)
        .map(|(&v, &l)| {
            let e = scale * l as f32 + offset - v;
            e * e
        })
        .sum();
    (scale, offset, err)
}

/// The best `(scale >= 0, min >= 0)` of 32 values for `x ~ scale * q - min`, `q` in `0..=15`.
fn q4k_sub_block(x: &[f32]) -> (f32, f32) {
    let lo = x.iter().fold(0f32, |m, &v| m.min(v)); // min is clamped to <= 0
    let hi = x.iter().fold(f32::MIN, |m, &v| m.max(v));
    let range = hi - lo;
    if range <= 0.0 {
        return (0.0, -lo);
    }
    let mut best = (range / 15.0, -lo, f32::MAX);
    let mut q = [0u8; 32];
    for i in -Q4K_STEPS..=Q4K_STEPS {
        let iscale = (15.0 + Q4K_STEP * i as f32) / range;
        for (l, &v) in q.iter_mut().zip(x) {
            *l = ((iscale * (v - lo)).round()).clamp(0.0, 15.0) as u8;
        }
        let (scale, offset, err) = fit(x, &q[..x.len()]);
        if err < best.2 && scale >= 0.0 {
            best = (scale, -offset, err);
        }
    }
    (best.0, best.1)
}

/// One `Q4_K` super-block of 256 values.
pub fn encode_q4_k(x: &[f32], out: &mut [u8]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for j in 0..8 {
        (scales[j], mins[j]) = q4k_sub_block(&x[32 * j..32 * j + 32]);
    }
    let max_scale = scales.iter().fold(0f32, |m, &v| m.max(v));
    let max_min = mins.iter().fold(0f32, |m, &v| m.max(v));
    let d = put_f16(&mut out[0..2], max_scale / 63.0);
    let dmin = put_f16(&mut out[2..4], max_min / 63.0);
    let q6 = |v: f32, unit: f32| {
        if unit > 0.0 {
            (v / unit).round().clamp(0.0, 63.0) as u8
        } else {
            0
        }
    };
    let mut pairs = [(0u8, 0u8); 8];
    for j in 0..8 {
        pairs[j] = (q6(scales[j], d), q6(mins[j], dmin));
    }
    out[4..16].copy_from_slice(&q4k_pack_scales(&pairs));
    let qs = &mut out[16..144];
    qs.fill(0);
    for j in 0..8 {
        let (sc, m) = pairs[j];
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let inv = if d1 != 0.0 { 1.0 / d1 } else { 0.0 };
        for l in 0..32 {
            let q = ((x[32 * j + l] + m1) * inv).round().clamp(0.0, 15.0) as u8;
            // Sub-blocks 2i and 2i + 1 share bytes 32i..32i+32: low and high nibbles.
            qs[32 * (j / 2) + l] |= if j % 2 == 0 { q } else { q << 4 };
        }
    }
}

/// One `Q6_K` super-block of 256 values.
pub fn encode_q6_k(x: &[f32], out: &mut [u8]) {
    let mut scales = [0f32; 16];
    for (j, s) in scales.iter_mut().enumerate() {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in &x[16 * j..16 * j + 16] {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        *s = max / -32.0;
    }
    let (mut amax, mut max) = (0f32, 0f32);
    for &s in &scales {
        if amax < s.abs() {
            amax = s.abs();
            max = s;
        }
    }
    let d = put_f16(&mut out[208..210], max / -127.0);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0u8; 256];
    for j in 0..16 {
        let sc = (scales[j] * id).round().clamp(-128.0, 127.0) as i8;
        out[192 + j] = sc as u8;
        let unit = d * sc as f32;
        let inv = if unit != 0.0 { 1.0 / unit } else { 0.0 };
        for l in 0..16 {
            q[16 * j + l] = ((x[16 * j + l] * inv).round().clamp(-32.0, 31.0) as i32 + 32) as u8;
        }
    }
    let (ql, rest) = out.split_at_mut(128);
    let qh = &mut rest[..64];
    ql.fill(0);
    qh.fill(0);
    for n in 0..2 {
        for l in 0..32 {
            let v = |i: usize| q[128 * n + l + 32 * i];
            ql[64 * n + l] = (v(0) & 0xF) | ((v(2) & 0xF) << 4);
            ql[64 * n + l + 32] = (v(1) & 0xF) | ((v(3) & 0xF) << 4);
            qh[32 * n + l] =
                (v(0) >> 4) | ((v(1) >> 4) << 2) | ((v(2) >> 4) << 4) | ((v(3) >> 4) << 6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use internlm2_backends::packed::blocks;

    fn wave(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = (i as u32).wrapping_mul(2654435761).wrapping_add(seed);
                (t >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn q4_0_matches_a_hand_computed_block() {
        // max = -4 (largest magnitude, negative): d = 0.5, id = 2; x = 1.3 -> 2.6 + 8.5 = 11.1
        // -> 11; x = -4 -> 0; x = 3.9 -> 16.3 -> 16 -> clamped to 15.
        let mut x = [0f32; 32];
        x[0] = 1.3;
        x[1] = -4.0;
        x[16] = 3.9;
        let mut out = [0u8; 18];
        encode_q4_0(&x, &mut out);
        assert_eq!(f16::from_le_bytes([out[0], out[1]]).to_f32(), 0.5);
        assert_eq!(out[2], 11 | (15 << 4));
        assert_eq!(out[3], 0 | (8 << 4));
        assert_eq!(out[4], 8 | (8 << 4));
    }

    #[test]
    fn q8_0_matches_a_hand_computed_block() {
        let mut x = [0f32; 32];
        x[0] = 2.54; // absmax: d = 0.02, q = 127
        x[1] = -0.05; // -2.5 -> -3 (ties away from zero)
        x[2] = 0.01; // 0.5 -> 1
        let mut out = [0u8; 34];
        encode_q8_0(&x, &mut out);
        assert_eq!(out[2] as i8, 127);
        assert_eq!(out[3] as i8, -3);
        assert_eq!(out[4] as i8, 1);
        assert_eq!(f16::from_le_bytes([out[0], out[1]]), f16::from_f32(0.02));
    }

    #[test]
    fn round_trip_errors_are_within_each_format_bound() {
        let cols = 512;
        let x = wave(4 * cols, 7);
        for (format, bound) in [
            (WeightFormat::F16, 1e-3),
            (WeightFormat::BF16, 8e-3),
            (WeightFormat::Q8_0, 1.0 / 127.0),
            (WeightFormat::Q6K, 1.0 / 24.0),
            // Half a step (range / 15 / 2 = 1 / 15) plus the 6-bit rounding of the stored
            // scale and min (values at the top of a sub-block can clamp by up to 15 x d / 2).
            (WeightFormat::Q4K, 0.1),
            (WeightFormat::Q4_0, 1.0 / 7.0),
        ] {
            let q = quantize(&x, 4, cols, format).unwrap();
            let back = q.dequantize();
            let worst = back
                .iter()
                .zip(&x)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // Values lie in [-1, 1): the error bound is about half a quantization step.
            assert!(worst <= bound, "{format}: {worst} > {bound}");
            let mut row = vec![0f32; cols];
            blocks::decode_row(format, q.row(1).1, &mut row);
            assert_eq!(row, back[cols..2 * cols].to_vec());
        }
    }

    #[test]
    fn q4_k_beats_q4_0_on_shifted_values() {
        // Values in [0, 1): Q4_K's min captures the offset that Q4_0's symmetric grid wastes.
        let x: Vec<f32> = wave(1024, 3).iter().map(|v| v * 0.5 + 0.5).collect();
        let err = |f| {
            let back = quantize(&x, 1, 1024, f).unwrap().dequantize();
            back.iter()
                .zip(&x)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
        };
        assert!(err(WeightFormat::Q4K) < 0.5 * err(WeightFormat::Q4_0));
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(matches!(
            quantize(&[0.0; 40], 1, 40, WeightFormat::Q8_0),
            Err(QuantError::PartialBlock { cols: 40, .. })
        ));
        assert!(matches!(
            quantize(&[0.0; 64], 3, 32, WeightFormat::Q8_0),
            Err(QuantError::Shape { .. })
        ));
    }
}

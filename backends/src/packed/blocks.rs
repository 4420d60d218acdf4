//! Reference decoders of the packed formats, one block at a time, written after the layouts
//! of GGUF (ggml-common.h) and AWQ. They define the values every fused kernel must produce;
//! the kernels are tested against them.
//!
//! Every multi-byte field is little-endian.

use half::{bf16, f16};

use super::WeightFormat;

/// Bytes of the 6-bit scale/min table of a `Q4_K` super-block.
pub const Q4K_SCALE_BYTES: usize = 12;

/// The f16 at `b[i..i + 2]` as f32.
#[inline(always)]
pub fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Scale and min (6 bits each) of sub-block `j` (0..8) of a `Q4_K` super-block, from its
/// 12-byte table: sub-blocks 0-3 keep them in the low 6 bits of bytes `j` and `j + 4`;
/// sub-blocks 4-7 split them into the nibbles of byte `j + 4` and the top 2 bits of bytes
/// `j - 4` (scale) and `j` (min).
#[inline(always)]
pub fn q4k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Packs 8 (scale, min) pairs of 6 bits into the 12-byte `Q4_K` table (the inverse of
/// [`q4k_scale_min`]).
pub fn q4k_pack_scales(pairs: &[(u8, u8); 8]) -> [u8; Q4K_SCALE_BYTES] {
    let mut t = [0u8; Q4K_SCALE_BYTES];
    for (j, &(sc, m)) in pairs.iter().enumerate() {
        debug_assert!(sc < 64 && m < 64);
        if j < 4 {
            t[j] |= sc & 63;
            t[j + 4] |= m & 63;
        } else {
            t[j + 4] |= (sc & 0xF) | ((m & 0xF) << 4);
            t[j - 4] |= (sc >> 4) << 6;
            t[j] |= (m >> 4) << 6;
        }
    }
    t
}

/// `Q8_0`: `d * q`.
pub fn decode_q8_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (o, &q) in out[..32].iter_mut().zip(&block[2..34]) {
        *o = d * (q as i8) as f32;
    }
}

/// `Q4_0`: `d * (q - 8)`, `q[j]` in the low nibble of byte `j`, `q[j + 16]` in its high one.
pub fn decode_q4_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for j in 0..16 {
        let b = block[2 + j];
        out[j] = d * ((b & 0xF) as i32 - 8) as f32;
        out[j + 16] = d * ((b >> 4) as i32 - 8) as f32;
    }
}

/// `Q4_K`: for each 64 values, 32 bytes whose low nibbles are sub-block `2i` and high nibbles
/// sub-block `2i + 1`; value = `(d * sc) * q - dmin * m`.
pub fn decode_q4_k(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let scales = &block[4..16];
    let qs = &block[16..144];
    for i in 0..4 {
        let (sc1, m1) = q4k_scale_min(scales, 2 * i);
        let (sc2, m2) = q4k_scale_min(scales, 2 * i + 1);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * i..32 * i + 32];
        for l in 0..32 {
            out[64 * i + l] = d1 * (q[l] & 0xF) as f32 - min1;
            out[64 * i + 32 + l] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

/// `Q6_K`: per 128 values, 64 bytes of low nibbles (`ql`), 32 bytes of high 2-bit pairs
/// (`qh`) and 8 signed scales; value = `d * sc * (q - 32)` per 16 values.
pub fn decode_q6_k(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 208);
    for n in 0..2 {
        let ql = &block[64 * n..64 * n + 64];
        let qh = &block[128 + 32 * n..128 + 32 * n + 32];
        let sc = &block[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut out[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// `AWQ4`: `s * (q - z)`, `q[j]` in the low nibble of byte `4 + j`, `q[j + 64]` in its high one.
pub fn decode_awq4(block: &[u8], out: &mut [f32]) {
    let s = f16_at(block, 0);
    let z = (block[2] & 0xF) as i32;
    for j in 0..64 {
        let b = block[4 + j];
        out[j] = s * ((b & 0xF) as i32 - z) as f32;
        out[j + 64] = s * ((b >> 4) as i32 - z) as f32;
    }
}

/// Decodes one packed row (a whole number of blocks) into `out`.
///
/// # Panics
/// If `row` and `out` do not hold the same number of blocks.
pub fn decode_row(format: WeightFormat, row: &[u8], out: &mut [f32]) {
    let (bv, bb) = (format.block_values(), format.block_bytes());
    assert_eq!(
        row.len() / bb * bv,
        out.len(),
        "row and output sizes differ"
    );
    match format {
        WeightFormat::F16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        WeightFormat::BF16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => {
            let decode = match format {
                WeightFormat::Q8_0 => decode_q8_0,
                WeightFormat::Q4_0 => decode_q4_0,
                WeightFormat::Q4K => decode_q4_k,
                WeightFormat::Q6K => decode_q6_k,
                _ => decode_awq4,
            };
            for (block, o) in row.chunks_exact(bb).zip(out.chunks_exact_mut(bv)) {
                decode(block, o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4k_scale_table_round_trips() {
        let pairs: [(u8, u8); 8] = [
            (1, 63),
            (63, 0),
            (17, 33),
            (40, 2),
            (63, 63),
            (0, 1),
            (32, 16),
            (5, 58),
        ];
        let t = q4k_pack_scales(&pairs);
        for (j, &p) in pairs.iter().enumerate() {
            assert_eq!(q4k_scale_min(&t, j), p, "sub-block {j}");
        }
    }

    #[test]
    fn hand_made_blocks_decode() {
        // Q8_0: d = 0.5 (f16 0x3800), q = 0, 1, -1, 127, -128, ...
        let mut b = vec![0x00, 0x38];
        b.extend([0u8, 1, 0xFF, 127, 0x80]);
        b.resize(34, 0);
        let mut out = [0f32; 32];
        decode_q8_0(&b, &mut out);
        assert_eq!(&out[..5], &[0.0, 0.5, -0.5, 63.5, -64.0]);
        // Q4_0: d = 2 (0x4000); byte 0 = 0x9F: q[0] = 15 -> 14, q[16] = 9 -> 2.
        let mut b = vec![0x00, 0x40, 0x9F];
        b.resize(18, 0x88);
        decode_q4_0(&b, &mut out);
        assert_eq!((out[0], out[16], out[1], out[31]), (14.0, 2.0, 0.0, 0.0));
        // AWQ4: s = 1, z = 3; byte 4 = 0x5A: q[0] = 10 -> 7, q[64] = 5 -> 2.
        let mut b = vec![0x00, 0x3C, 3, 0, 0x5A];
        b.resize(68, 0x33);
        let mut out = [0f32; 128];
        decode_awq4(&b, &mut out);
        assert_eq!((out[0], out[64], out[1], out[127]), (7.0, 2.0, 0.0, 0.0));
    }

    #[test]
    fn q4k_and_q6k_hand_made_blocks() {
        // Q4_K: d = 1, dmin = 0.5; sub-block 5 has scale 33, min 18; its values are the high
        // nibbles of qs[64..96] (set to 0x70: q = 7) -> 33 * 7 - 0.5 * 18 = 222.
        let mut pairs = [(0u8, 0u8); 8];
        pairs[5] = (33, 18);
        let mut b = vec![0x00, 0x3C, 0x00, 0x38];
        b.extend(q4k_pack_scales(&pairs));
        b.resize(144, 0);
        for q in &mut b[16 + 64..16 + 96] {
            *q = 0x70;
        }
        let mut out = [0f32; 256];
        decode_q4_k(&b, &mut out);
        assert!(
            out[160..192].iter().all(|&v| v == 222.0),
            "{:?}",
            &out[160..164]
        );
        assert!(out[128..160].iter().all(|&v| v == 0.0));
        // Q6_K: d = 0.25; value 0 = ql[0] low nibble 0xF | qh[0] bits 0-1 = 3 -> 63 - 32 = 31,
        // scale[0] = -2 -> 0.25 * -2 * 31 = -15.5; value 96 = ql[32] high nibble 1,
        // qh[0] bits 6-7 = 0 -> 1 - 32 = -31, scale[6] = 4 -> -31.
        let mut b = vec![0u8; 210];
        b[0] = 0x0F;
        b[32] = 0x10;
        b[128] = 0x03;
        b[192] = (-2i8) as u8;
        b[198] = 4;
        b[208..210].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        decode_q6_k(&b, &mut out);
        assert_eq!(out[0], -15.5);
        assert_eq!(out[96], -31.0);
    }
}

//! AVX-512 versions of the decoding kernels of [`super::cpu_quant_avx2`] for the formats
//! decoding spends its time in (f16, Q8_0, Q4_0, Q4_K): 16 lanes per instruction halve the
//! work per weight block, which matters once a core's dequantizing, not the memory bus, is
//! the limit. Selected at run time when the CPU has AVX-512 F and BW; the other formats (and
//! CPUs without AVX-512) keep the AVX2 kernels. With 8-bit activations on (the default) the
//! AVX2 integer kernels decode Q8_0, Q4_0 and Q4_K instead (faster on the Xeons measured), so
//! these serve f16, and the other three when `set_int8_activations(false)`.
//!
//! The same contract as the AVX2 kernels: each input row's dot product is computed by the same
//! sequence of operations whatever the number of rows in the call.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::cpu_quant::{Inputs, ROW_GROUP};
use crate::packed::WeightFormat;
use crate::packed::blocks::q4k_scale_min;

/// Whether this CPU has AVX-512 F and BW (and F16C), checked once; the environment variable
/// `INTERNLM2_NO_AVX512` (any value) turns these kernels off, to compare with the AVX2 ones.
pub(crate) fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::env::var_os("INTERNLM2_NO_AVX512").is_none()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("f16c")
            && is_x86_feature_detected!("fma")
    })
}

/// Whether [`dot_rows`] handles `format`.
pub(crate) fn handles(format: WeightFormat) -> bool {
    matches!(
        format,
        WeightFormat::F16 | WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q4K
    )
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees two readable bytes at `p`.
    let bits = unsafe { std::ptr::read_unaligned(p as *const u16) };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The f16 at `p` in every lane. Per-block scales go through this rather than
/// `_mm512_set1_ps(f16_at(p))`: for the scalar form LLVM folds the load into a `vpinsrw` that merges
/// into a register of its choosing, and it chose the kernels' accumulator, so each block
/// waited for the previous block's sum (about 3x slower Q8_0 decoding on an AVX-512 Xeon).
/// Converting a broadcast of all 16 lanes leaves it nothing to merge into.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
unsafe fn f16_splat(p: *const u8) -> __m512 {
    // SAFETY: the caller guarantees two readable bytes at `p`.
    let bits = unsafe { std::ptr::read_unaligned(p as *const u16) };
    _mm512_cvtph_ps(_mm256_set1_epi16(bits as i16))
}

/// 16 signed bytes as 16 f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
fn i8x16(v: __m128i) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v))
}

/// Dots one packed row with `rows` (1..=4) input rows.
///
/// # Safety
/// [`available`] must be true and [`handles`] true for `format`; `row` must be one packed row
/// of `inputs.k` values and `inputs.x` must hold `rows` rows (and `inputs.sums` their chunk
/// sums for `Q4_K`).
pub(crate) unsafe fn dot_rows(
    format: WeightFormat,
    row: &[u8],
    inputs: Inputs<'_>,
    rows: usize,
    dots: &mut [f32; ROW_GROUP],
) {
    macro_rules! by_rows {
        ($f:ident) => {
            // SAFETY: forwarded from the caller.
            unsafe {
                match rows {
                    1 => $f::<1>(row, inputs, dots),
                    2 => $f::<2>(row, inputs, dots),
                    3 => $f::<3>(row, inputs, dots),
                    _ => $f::<4>(row, inputs, dots),
                }
            }
        };
    }
    match format {
        WeightFormat::F16 => by_rows!(dot_f16),
        WeightFormat::Q8_0 => by_rows!(dot_q8_0),
        WeightFormat::Q4_0 => by_rows!(dot_q4_0),
        WeightFormat::Q4K => by_rows!(dot_q4_k),
        other => unreachable!("{other} has no AVX-512 kernel"),
    }
}

#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
unsafe fn dot_f16<const R: usize>(row: &[u8], inp: Inputs<'_>, dots: &mut [f32; ROW_GROUP]) {
    let (k, p, x) = (inp.k, row.as_ptr(), inp.x.as_ptr());
    let body = k - k % 32;
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    // SAFETY: i + 32 <= k values of the row and of every input row.
    unsafe {
        let mut i = 0;
        while i < body {
            let w0 = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * i) as *const __m256i));
            let w1 = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * i + 32) as *const __m256i));
            for j in 0..R {
                let xp = x.add(j * k + i);
                acc0[j] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp), acc0[j]);
                acc1[j] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp.add(16)), acc1[j]);
            }
            i += 32;
        }
    }
    for j in 0..R {
        let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0[j], acc1[j]));
        for t in body..k {
            s += half::f16::from_le_bytes([row[2 * t], row[2 * t + 1]]).to_f32() * inp.x[j * k + t];
        }
        dots[j] = s;
    }
}

/// Weight rows one grouped call handles for `format` (their blocks are decoded side by side
/// and share every input load); 1 for formats without a grouped kernel.
pub(crate) fn group_rows(format: WeightFormat) -> usize {
    match format {
        WeightFormat::Q8_0 | WeightFormat::Q4_0 => 4,
        WeightFormat::Q4K => 2,
        _ => 1,
    }
}

/// Dots `wrows.len()` packed rows (1..=[`group_rows`]) of one format with `rows` (1..=4) input
/// rows: `out[w][j]` is weight row `w` with input row `j`. Every (weight row, input row)
/// pair goes through the same operations as a call with a single weight row and a single
/// input row.
///
/// # Safety
/// As [`dot_rows`], for every row of `wrows`.
pub(crate) unsafe fn dot_group(
    format: WeightFormat,
    wrows: &[&[u8]],
    inputs: Inputs<'_>,
    rows: usize,
    out: &mut [[f32; ROW_GROUP]; ROW_GROUP],
) {
    macro_rules! by_shape {
        ($f:ident, $($w:literal),+) => {{
            let w = wrows.len();
            // SAFETY: forwarded from the caller.
            unsafe {
                match (w, rows) {
                    $(
                        ($w, 1) => $f::<1, $w>(ptrs::<$w>(wrows), inputs, out),
                        ($w, 2) => $f::<2, $w>(ptrs::<$w>(wrows), inputs, out),
                        ($w, 3) => $f::<3, $w>(ptrs::<$w>(wrows), inputs, out),
                        ($w, _) => $f::<4, $w>(ptrs::<$w>(wrows), inputs, out),
                    )+
                    _ => unreachable!("{w} weight rows"),
                }
            }
        }};
    }
    match format {
        WeightFormat::Q8_0 => by_shape!(group_q8_0, 1, 2, 3, 4),
        WeightFormat::Q4_0 => by_shape!(group_q4_0, 1, 2, 3, 4),
        WeightFormat::Q4K => by_shape!(group_q4_k, 1, 2),
        _ => {
            for (w, row) in wrows.iter().enumerate() {
                // SAFETY: forwarded from the caller.
                unsafe { dot_rows(format, row, inputs, rows, &mut out[w]) };
            }
        }
    }
}

fn ptrs<const W: usize>(rows: &[&[u8]]) -> [*const u8; W] {
    std::array::from_fn(|i| rows[i].as_ptr())
}

/// `Q8_0` through the grouped kernel with one weight row.
#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
unsafe fn dot_q8_0<const R: usize>(row: &[u8], inp: Inputs<'_>, dots: &mut [f32; ROW_GROUP]) {
    let mut out = [[0f32; ROW_GROUP]; ROW_GROUP];
    // SAFETY: forwarded from the caller.
    unsafe { group_q8_0::<R, 1>([row.as_ptr()], inp, &mut out) };
    *dots = out[0];
}

/// `Q4_0` through the grouped kernel with one weight row.
#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
unsafe fn dot_q4_0<const R: usize>(row: &[u8], inp: Inputs<'_>, dots: &mut [f32; ROW_GROUP]) {
    let mut out = [[0f32; ROW_GROUP]; ROW_GROUP];
    // SAFETY: forwarded from the caller.
    unsafe { group_q4_0::<R, 1>([row.as_ptr()], inp, &mut out) };
    *dots = out[0];
}

/// `Q4_K` through the grouped kernel with one weight row.
#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
unsafe fn dot_q4_k<const R: usize>(row: &[u8], inp: Inputs<'_>, dots: &mut [f32; ROW_GROUP]) {
    let mut out = [[0f32; ROW_GROUP]; ROW_GROUP];
    // SAFETY: forwarded from the caller.
    unsafe { group_q4_k::<R, 1>([row.as_ptr()], inp, &mut out) };
    *dots = out[0];
}

#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
unsafe fn group_q8_0<const R: usize, const W: usize>(
    w: [*const u8; W],
    inp: Inputs<'_>,
    out: &mut [[f32; ROW_GROUP]; ROW_GROUP],
) {
    let (k, x) = (inp.k, inp.x.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); W]; R];
    // SAFETY: k / 32 blocks of 34 bytes in every row, k values per input row.
    unsafe {
        for b in 0..k / 32 {
            let mut d = [_mm512_setzero_ps(); W];
            let mut q0 = [_mm512_setzero_ps(); W];
            let mut q1 = [_mm512_setzero_ps(); W];
            for i in 0..W {
                let blk = w[i].add(34 * b);
                d[i] = f16_splat(blk);
                q0[i] = i8x16(_mm_loadu_si128(blk.add(2) as *const __m128i));
                q1[i] = i8x16(_mm_loadu_si128(blk.add(18) as *const __m128i));
            }
            for j in 0..R {
                let xp = x.add(j * k + 32 * b);
                let (x0, x1) = (_mm512_loadu_ps(xp), _mm512_loadu_ps(xp.add(16)));
                for i in 0..W {
                    let t = _mm512_fmadd_ps(q1[i], x1, _mm512_mul_ps(q0[i], x0));
                    acc[j][i] = _mm512_fmadd_ps(d[i], t, acc[j][i]);
                }
            }
        }
    }
    for j in 0..R {
        for i in 0..W {
            out[i][j] = _mm512_reduce_add_ps(acc[j][i]);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
unsafe fn group_q4_0<const R: usize, const W: usize>(
    w: [*const u8; W],
    inp: Inputs<'_>,
    out: &mut [[f32; ROW_GROUP]; ROW_GROUP],
) {
    let (k, x) = (inp.k, inp.x.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); W]; R];
    let m4 = _mm_set1_epi8(0x0F);
    let eight = _mm_set1_epi8(8);
    // SAFETY: k / 32 blocks of 18 bytes in every row, k values per input row.
    unsafe {
        for b in 0..k / 32 {
            let mut d = [_mm512_setzero_ps(); W];
            let mut q0 = [_mm512_setzero_ps(); W];
            let mut q1 = [_mm512_setzero_ps(); W];
            for i in 0..W {
                let blk = w[i].add(18 * b);
                d[i] = f16_splat(blk);
                let bytes = _mm_loadu_si128(blk.add(2) as *const __m128i);
                q0[i] = i8x16(_mm_sub_epi8(_mm_and_si128(bytes, m4), eight));
                q1[i] = i8x16(_mm_sub_epi8(
                    _mm_and_si128(_mm_srli_epi16(bytes, 4), m4),
                    eight,
                ));
            }
            for j in 0..R {
                let xp = x.add(j * k + 32 * b);
                let (x0, x1) = (_mm512_loadu_ps(xp), _mm512_loadu_ps(xp.add(16)));
                for i in 0..W {
                    let t = _mm512_fmadd_ps(q1[i], x1, _mm512_mul_ps(q0[i], x0));
                    acc[j][i] = _mm512_fmadd_ps(d[i], t, acc[j][i]);
                }
            }
        }
    }
    for j in 0..R {
        for i in 0..W {
            out[i][j] = _mm512_reduce_add_ps(acc[j][i]);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
unsafe fn group_q4_k<const R: usize, const W: usize>(
    w: [*const u8; W],
    inp: Inputs<'_>,
    out: &mut [[f32; ROW_GROUP]; ROW_GROUP],
) {
    let (k, x) = (inp.k, inp.x.as_ptr());
    let chunks = k / 32;
    let mut acc = [[_mm512_setzero_ps(); W]; R];
    let mut mins = [[0f32; W]; R];
    let m4 = _mm256_set1_epi8(0x0F);
    // SAFETY: k / 256 super-blocks of 144 bytes in every row, k values per input row.
    unsafe {
        for sb in 0..k / 256 {
            let mut dd = [(0f32, 0f32); W];
            for i in 0..W {
                let blk = w[i].add(144 * sb);
                dd[i] = (f16_at(blk), f16_at(blk.add(2)));
            }
            for s in 0..4 {
                let mut q = [[_mm512_setzero_ps(); 4]; W];
                let mut scale = [(_mm512_setzero_ps(), _mm512_setzero_ps()); W];
                let mut min = [(0f32, 0f32); W];
                for i in 0..W {
                    let blk = w[i].add(144 * sb);
                    let scales = std::slice::from_raw_parts(blk.add(4), 12);
                    let (sc1, m1) = q4k_scale_min(scales, 2 * s);
                    let (sc2, m2) = q4k_scale_min(scales, 2 * s + 1);
                    let bytes = _mm256_loadu_si256(blk.add(16 + 32 * s) as *const __m256i);
                    let lo = _mm256_and_si256(bytes, m4);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4);
                    q[i] = [
                        i8x16(_mm256_castsi256_si128(lo)),
                        i8x16(_mm256_extracti128_si256(lo, 1)),
                        i8x16(_mm256_castsi256_si128(hi)),
                        i8x16(_mm256_extracti128_si256(hi, 1)),
                    ];
                    let (d, dmin) = dd[i];
                    scale[i] = (
                        _mm512_set1_ps(d * sc1 as f32),
                        _mm512_set1_ps(d * sc2 as f32),
                    );
                    min[i] = (dmin * m1 as f32, dmin * m2 as f32);
                }
                let c = sb * 8 + 2 * s;
                for j in 0..R {
                    let xp = x.add(j * k + 256 * sb + 64 * s);
                    let xs = [
                        _mm512_loadu_ps(xp),
                        _mm512_loadu_ps(xp.add(16)),
                        _mm512_loadu_ps(xp.add(32)),
                        _mm512_loadu_ps(xp.add(48)),
                    ];
                    let sums = inp.sums.as_ptr().add(j * chunks + c);
                    for i in 0..W {
                        let t = _mm512_fmadd_ps(q[i][1], xs[1], _mm512_mul_ps(q[i][0], xs[0]));
                        acc[j][i] = _mm512_fmadd_ps(scale[i].0, t, acc[j][i]);
                        let t = _mm512_fmadd_ps(q[i][3], xs[3], _mm512_mul_ps(q[i][2], xs[2]));
                        acc[j][i] = _mm512_fmadd_ps(scale[i].1, t, acc[j][i]);
                        mins[j][i] += min[i].0 * *sums + min[i].1 * *sums.add(1);
                    }
                }
            }
        }
    }
    for j in 0..R {
        for i in 0..W {
            out[i][j] = _mm512_reduce_add_ps(acc[j][i]) - mins[j][i];
        }
    }
}

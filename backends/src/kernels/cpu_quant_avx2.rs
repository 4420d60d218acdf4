//! AVX2 + FMA + F16C kernels for packed weights (x86-64, selected at run time by
//! [`available`]): dot products of one packed weight row with up to four f32 input rows,
//! dequantizing each block in registers once for all of them, and a row decoder for the
//! prefill GEMM's panels.
//!
//! Every kernel computes each input row's dot product with the same sequence of operations
//! whatever the number of rows `R` in the call, so a row's result never depends on its
//! neighbours. Results equal the reference decoders of [`crate::packed::blocks`] up to f32
//! summation order.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::cpu_quant::{Inputs, ROW_GROUP};
use super::cpu_quant_int8::Q8Inputs;
use super::cpu_simd::hsum256;
use crate::packed::WeightFormat;
use crate::packed::blocks::q4k_scale_min;

/// Whether this CPU has AVX2, FMA and F16C (checked once).
pub(crate) fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// The little-endian f16 at `p` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees two readable bytes at `p`.
    let bits = unsafe { std::ptr::read_unaligned(p as *const u16) };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// The f16 at `p` in every lane. Per-block scales go through this rather than
/// `_mm256_set1_ps(f16_at(p))`: for the scalar form LLVM folds the load into a `vpinsrw` that merges
/// into a register of its choosing, and it chose the kernels' accumulator, so each block
/// waited for the previous block's sum (about 3x slower Q8_0 decoding on an AVX-512 Xeon).
/// Converting a broadcast of all 8 lanes leaves it nothing to merge into.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_splat(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees two readable bytes at `p`.
    let bits = unsafe { std::ptr::read_unaligned(p as *const u16) };
    _mm256_cvtph_ps(_mm_set1_epi16(bits as i16))
}

/// The 8 signed bytes in the low half of `v` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn i8_lo(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
}

/// The 8 signed bytes in the high half of `v` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn i8_hi(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)))
}

/// 32 signed bytes as four vectors of 8 f32, in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn i8x32(v: __m256i) -> [__m256; 4] {
    let (a, b) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    [i8_lo(a), i8_hi(a), i8_lo(b), i8_hi(b)]
}

/// The low and high nibbles of 32 bytes, each minus `offset`, as signed bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles32(bytes: __m256i, offset: i8) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(0x0F);
    let off = _mm256_set1_epi8(offset);
    let lo = _mm256_sub_epi8(_mm256_and_si256(bytes, m4), off);
    let hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4), off);
    (lo, hi)
}

/// Dot of 32 dequantized values `q` (scaled later) with `x[0..32]`, as one vector (two
/// independent chains).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot32(q: &[__m256; 4], x: *const f32) -> __m256 {
    // SAFETY: the caller guarantees 32 readable f32 at `x`.
    unsafe {
        let t0 = _mm256_mul_ps(q[0], _mm256_loadu_ps(x));
        let t1 = _mm256_mul_ps(q[1], _mm256_loadu_ps(x.add(8)));
        let t0 = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(x.add(16)), t0);
        let t1 = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(x.add(24)), t1);
        _mm256_add_ps(t0, t1)
    }
}

/// Dot of 16 values `q0, q1` with `x[0..16]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot16(q0: __m256, q1: __m256, x: *const f32) -> __m256 {
    // SAFETY: the caller guarantees 16 readable f32 at `x`.
    unsafe {
        let t = _mm256_mul_ps(q0, _mm256_loadu_ps(x));
        _mm256_fmadd_ps(q1, _mm256_loadu_ps(x.add(8)), t)
    }
}

/// `$f::<R>(args)` with the const `R` equal to `rows` (1 to 4; more counts as 4).
macro_rules! for_rows {
    ($rows:expr, $f:ident($($arg:expr),*)) => {
        match $rows {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            _ => $f::<4>($($arg),*),
        }
    };
}

/// Dots one packed row with `rows` (1..=4) input rows.
///
/// # Safety
/// [`available`] must be true; `row` must be one packed row of `inputs.k` values and
/// `inputs.x` must hold `rows` rows (and `inputs.sums` their chunk sums for `Q4_K`).
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
            unsafe { for_rows!(rows, $f(row, inputs, dots)) }
        };
    }
    match format {
        WeightFormat::F16 => by_rows!(dot_f16),
        WeightFormat::BF16 => by_rows!(dot_bf16),
        WeightFormat::Q8_0 => by_rows!(dot_q8_0),
        WeightFormat::Q4_0 => by_rows!(dot_q4_0),
        WeightFormat::Q4K => by_rows!(dot_q4_k),
        WeightFormat::Q6K => by_rows!(dot_q6_k),
        WeightFormat::Awq4 => by_rows!(dot_awq4),
    }
}

/// 8 f16 values at `p` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16x8(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees 16 readable bytes.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) })
}

/// 8 bf16 values at `p` as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16x8(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees 16 readable bytes.
    let v = _mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(p as *const __m128i) });
    _mm256_castsi256_ps(_mm256_slli_epi32(v, 16))
}

macro_rules! half_kernel {
    ($name:ident, $load:ident, $scalar:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name<const R: usize>(row: &[u8], inp: Inputs<'_>, dots: &mut [f32; ROW_GROUP]) {
            let (k, p, x) = (inp.k, row.as_ptr(), inp.x.as_ptr());
            let body = k - k % 16;
            let mut acc0 = [_mm256_setzero_ps(); R];
            let mut acc1 = [_mm256_setzero_ps(); R];
            let mut i = 0;
            // SAFETY: i + 16 <= k values of the row and of every input row.
            unsafe {
                while i < body {
                    let w0 = $load(p.add(2 * i));
                    let w1 = $load(p.add(2 * i + 16));
                    for j in 0..R {
                        let xp = x.add(j * k + i);
                        acc0[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp), acc0[j]);
                        acc1[j] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(8)), acc1[j]);
                    }
                    i += 16;
                }
            }
            for j in 0..R {
                let mut s = hsum256(_mm256_add_ps(acc0[j], acc1[j]));
                for t in body..k {
                    let w: f32 = $scalar([row[2 * t], row[2 * t + 1]]);
                    s += w * inp.x[j * k + t];
                }
                dots[j] = s;
            }
        }
    };
}

fn f16_le(b: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(b).to_f32()
}

fn bf16_le(b: [u8; 2]) -> f32 {
    half::bf16::from_le_bytes(b).to_f32()
}

half_kernel!(dot_f16, f16x8, f16_le);
half_kernel!(dot_bf16, bf16x8, bf16_le);

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0<const R: usize>(row: &[u8], inp: Inputs<'_>, dots: &mut [f32; ROW_GROUP]) {
    let (k, p, x) = (inp.k, row.as_ptr(), inp.x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); R];
    // SAFETY: k / 32 blocks of 34 bytes in the row, k values per input row.
    unsafe {
        for b in 0..k / 32 {
            let blk = p.add(34 * b);
            let d = f16_splat(blk);
            let v = _mm256_loadu_si256(blk.add(2) as *const __m256i);
            let q = i8x32(v);
            for j in 0..R {
                let t = dot32(&q, x.add(j * k + 32 * b));
                acc[j] = _mm256_fmadd_ps(d, t, acc[j]);
            }
        }
    }
    for j in 0..R {
        dots[j] = hsum256(acc[j]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_0<const R: usize>(row: &[u8], inp: Inputs<'_>, dots: &mut [f32; ROW_GROUP]) {
    let (k, p, x) = (inp.k, row.as_ptr(), inp.x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); R];
    let m4 = _mm_set1_epi8(0x0F);
    let eight = _mm_set1_epi8(8);
    // SAFETY: k / 32 blocks of 18 bytes in the row, k values per input row.
    unsafe {
        for b in 0..k / 32 {
            let blk = p.add(18 * b);
            let d = f16_splat(blk);
            let bytes = _mm_loadu_si128(blk.add(2) as *const __m128i);
            let lo = _mm_sub_epi8(_mm_and_si128(bytes, m4), eight);
            let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), m4), eight);
            let q = [i8_lo(lo), i8_hi(lo), i8_lo(hi), i8_hi(hi)];
            for j in 0..R {
                let t = dot32(&q, x.add(j * k + 32 * b));
                acc[j] = _mm256_fmadd_ps(d, t, acc[j]);
            }
        }
    }
    for j in 0..R {
        dots[j] = hsum256(acc[j]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k<const R: usize>(row: &[u8], inp: Inputs<'_>, dots: &mut [f32; ROW_GROUP]) {
    let (k, p, x) = (inp.k, row.as_ptr(), inp.x.as_ptr());
    let chunks = k / 32;
    let mut acc = [_mm256_setzero_ps(); R];
    let mut mins = [0f32; R];
    // SAFETY: k / 256 super-blocks of 144 bytes in the row, k values per input row.
    unsafe {
        for sb in 0..k / 256 {
            let blk = p.add(144 * sb);
            let (d, dmin) = (f16_at(blk), f16_at(blk.add(2)));
            let scales = std::slice::from_raw_parts(blk.add(4), 12);
            for i in 0..4 {
                let (sc1, m1) = q4k_scale_min(scales, 2 * i);
                let (sc2, m2) = q4k_scale_min(scales, 2 * i + 1);
                let bytes = _mm256_loadu_si256(blk.add(16 + 32 * i) as *const __m256i);
                let (lo, hi) = nibbles32(bytes, 0);
                let (ql, qh) = (i8x32(lo), i8x32(hi));
                let (d1, d2) = (
                    _mm256_set1_ps(d * sc1 as f32),
                    _mm256_set1_ps(d * sc2 as f32),
                );
                let (min1, min2) = (dmin * m1 as f32, dmin * m2 as f32);
                let c = sb * 8 + 2 * i; // 32-value chunk of the first sub-block
                for j in 0..R {
                    let xp = x.add(j * k + 256 * sb + 64 * i);
                    acc[j] = _mm256_fmadd_ps(d1, dot32(&ql, xp), acc[j]);
                    acc[j] = _mm256_fmadd_ps(d2, dot32(&qh, xp.add(32)), acc[j]);
                    let s = inp.sums.as_ptr().add(j * chunks + c);
                    mins[j] += min1 * *s + min2 * *s.add(1);
                }
            }
        }
    }
    for j in 0..R {
        dots[j] = hsum256(acc[j]) - mins[j];
    }
}

/// The four 32-value groups of one 128-value half of a `Q6_K` super-block (6-bit values
/// `0..64`), minus `offset`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_half(blk: *const u8, n: usize, offset: i8) -> [__m256i; 4] {
    // SAFETY: the caller guarantees a whole 210-byte block at `blk`.
    unsafe {
        let ql_a = _mm256_loadu_si256(blk.add(64 * n) as *const __m256i);
        let ql_b = _mm256_loadu_si256(blk.add(64 * n + 32) as *const __m256i);
        let qh = _mm256_loadu_si256(blk.add(128 + 32 * n) as *const __m256i);
        let m4 = _mm256_set1_epi8(0x0F);
        let m3 = _mm256_set1_epi8(3);
        let off = _mm256_set1_epi8(offset);
        // Bits 2s..2s+2 of every qh byte, moved to bits 4..6.
        let h0 = _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4);
        let h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4);
        let h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4);
        let h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4);
        let v1 = _mm256_or_si256(_mm256_and_si256(ql_a, m4), h0);
        let v2 = _mm256_or_si256(_mm256_and_si256(ql_b, m4), h1);
        let v3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql_a, 4), m4), h2);
        let v4 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql_b, 4), m4), h3);
        [
            _mm256_sub_epi8(v1, off),
            _mm256_sub_epi8(v2, off),
            _mm256_sub_epi8(v3, off),
            _mm256_sub_epi8(v4, off),
        ]
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k<const R: usize>(row: &[u8], inp: Inputs<'_>, dots: &mut [f32; ROW_GROUP]) {
    let (k, p, x) = (inp.k, row.as_ptr(), inp.x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); R];
    // SAFETY: k / 256 super-blocks of 210 bytes in the row, k values per input row.
    unsafe {
        for sb in 0..k / 256 {
            let blk = p.add(210 * sb);
            let d = f16_at(blk.add(208));
            for n in 0..2 {
                let groups = q6k_half(blk, n, 32);
                for (g, v) in groups.iter().enumerate() {
                    let q = i8x32(*v);
                    let sc = blk.add(192 + 8 * n + 2 * g);
                    let da = _mm256_set1_ps(d * (*sc as i8) as f32);
                    let db = _mm256_set1_ps(d * (*sc.add(1) as i8) as f32);
                    for j in 0..R {
                        let xp = x.add(j * k + 256 * sb + 128 * n + 32 * g);
                        acc[j] = _mm256_fmadd_ps(da, dot16(q[0], q[1], xp), acc[j]);
                        acc[j] = _mm256_fmadd_ps(db, dot16(q[2], q[3], xp.add(16)), acc[j]);
                    }
                }
            }
        }
    }
    for j in 0..R {
        dots[j] = hsum256(acc[j]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_awq4<const R: usize>(row: &[u8], inp: Inputs<'_>, dots: &mut [f32; ROW_GROUP]) {
    let (k, p, x) = (inp.k, row.as_ptr(), inp.x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); R];
    // SAFETY: k / 128 blocks of 68 bytes in the row, k values per input row.
    unsafe {
        for b in 0..k / 128 {
            let blk = p.add(68 * b);
            let s = f16_splat(blk);
            let z = (*blk.add(2) & 0xF) as i8;
            for c in 0..2 {
                let bytes = _mm256_loadu_si256(blk.add(4 + 32 * c) as *const __m256i);
                let (lo, hi) = nibbles32(bytes, z);
                let (ql, qh) = (i8x32(lo), i8x32(hi));
                for j in 0..R {
                    let xp = x.add(j * k + 128 * b + 32 * c);
                    acc[j] = _mm256_fmadd_ps(s, dot32(&ql, xp), acc[j]);
                    acc[j] = _mm256_fmadd_ps(s, dot32(&qh, xp.add(64)), acc[j]);
                }
            }
        }
    }
    for j in 0..R {
        dots[j] = hsum256(acc[j]);
    }
}

/// Unsigned bytes `u` times signed bytes `x`, summed in fours: 8 i32. Neither operand
/// pair overflows the 16-bit intermediate: `2 * 128 * 127 < 2^15`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sum4_u8i8(u: __m256i, x: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
}

/// The 32 signed weights of a `Q8_0` block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_weights(blk: *const u8) -> __m256i {
    // SAFETY: the caller guarantees a whole 34-byte block at `blk`.
    unsafe { _mm256_loadu_si256(blk.add(2) as *const __m256i) }
}

/// The 32 signed weights of a `Q4_0` block (nibble minus 8; low nibbles first).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0_weights(blk: *const u8) -> __m256i {
    // SAFETY: the caller guarantees a whole 18-byte block at `blk`.
    let bytes = unsafe { _mm_loadu_si128(blk.add(2) as *const __m128i) };
    let both = _mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes);
    _mm256_sub_epi8(
        _mm256_and_si256(both, _mm256_set1_epi8(0x0F)),
        _mm256_set1_epi8(8),
    )
}

/// Dots every row of a run of consecutive `Q8_0`, `Q4_0`, `Q4_K` or `Q6_K` packed rows of one format
/// (`data`, `row_bytes` each) with `rows` (1..=4) input rows quantized to 8 bits
/// ([`super::cpu_quant_int8`]), calling `emit(i, dots)` for the run's `i`-th row. One call per
/// run instead of one per row keeps the per-row work to the kernel itself (the decoding
/// head has 92,544 rows of 544 bytes), and weight bytes `prefetch` ahead are hinted into L2.
/// Each (weight row, input row) pair goes through the same operations whatever `rows` is.
///
/// # Safety
/// [`available`] must be true; `data` must be whole packed rows of `inputs.k` values of
/// `format`, and `inputs` must hold `rows` rows.
pub(crate) unsafe fn dot_run_int8(
    format: WeightFormat,
    data: &[u8],
    row_bytes: usize,
    inputs: Q8Inputs<'_>,
    rows: usize,
    prefetch: usize,
    emit: impl FnMut(usize, &[f32; ROW_GROUP]),
) {
    macro_rules! by_rows {
        ($f:ident) => {
            // SAFETY: forwarded from the caller.
            unsafe { for_rows!(rows, $f(data, row_bytes, inputs, prefetch, emit)) }
        };
    }
    match format {
        WeightFormat::Q8_0 => by_rows!(run_q8_0_int8),
        WeightFormat::Q4_0 => by_rows!(run_q4_0_int8),
        WeightFormat::Q4K => by_rows!(run_q4_k_int8),
        WeightFormat::Q6K => by_rows!(run_q6_k_int8),
        _ => unreachable!("no 8-bit-activation kernel for {format}"),
    }
}

/// The row loop of [`dot_run_int8`] around one kernel (a function per kernel, so that the
/// kernel inlines into it).
macro_rules! int8_run {
    ($name:ident, $kernel:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name<const R: usize>(
            data: &[u8],
            row_bytes: usize,
            inputs: Q8Inputs<'_>,
            prefetch: usize,
            mut emit: impl FnMut(usize, &[f32; ROW_GROUP]),
        ) {
            let mut dots = [0f32; ROW_GROUP];
            let mut hinted = prefetch.min(data.len());
            for (i, row) in data.chunks_exact(row_bytes).enumerate() {
                let ahead = ((i + 1) * row_bytes + prefetch).min(data.len());
                while hinted < ahead {
                    // SAFETY: `hinted` is inside `data`.
                    unsafe { _mm_prefetch::<_MM_HINT_T1>(data.as_ptr().add(hinted) as *const i8) };
                    hinted += 64;
                }
                // SAFETY: forwarded from the caller.
                unsafe { $kernel::<R>(row, inputs, &mut dots) };
                emit(i, &dots);
            }
        }
    };
}

int8_run!(run_q8_0_int8, dot_q8_0_int8);
int8_run!(run_q4_0_int8, dot_q4_0_int8);
int8_run!(run_q4_k_int8, dot_q4_k_int8);
int8_run!(run_q6_k_int8, dot_q6_k_int8);

/// A kernel for the formats whose 32-value blocks are an f16 scale and 32 signed weights:
/// `|w| * (x with the sign of w)` makes the unsigned-by-signed `maddubs` multiply two signed
/// operands. Even and odd blocks go to separate accumulators, so that consecutive blocks do
/// not wait on one FMA chain.
macro_rules! int8_block_kernel {
    ($name:ident, $bytes:literal, $weights:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name<const R: usize>(
            row: &[u8],
            inp: Q8Inputs<'_>,
            dots: &mut [f32; ROW_GROUP],
        ) {
            debug_assert_eq!(inp.block, 32);
            let (k, chunks, p) = (inp.k, inp.k / 32, row.as_ptr());
            let (xq, xd) = (inp.q.as_ptr(), inp.d.as_ptr());
            let mut even = [_mm256_setzero_ps(); R];
            let mut odd = [_mm256_setzero_ps(); R];
            // SAFETY: `chunks` blocks of $bytes bytes in the row; `k` values and `k / 32`
            // scales per input row.
            unsafe {
                macro_rules! block {
                    ($b:expr, $acc:ident) => {{
                        let b = $b;
                        let blk = p.add($bytes * b);
                        let dw = f16_splat(blk);
                        let w = $weights(blk);
                        let aw = _mm256_sign_epi8(w, w);
                        for j in 0..R {
                            let x = _mm256_loadu_si256(xq.add(j * k + 32 * b) as *const __m256i);
                            let ints = sum4_u8i8(aw, _mm256_sign_epi8(x, w));
                            let d =
                                _mm256_mul_ps(dw, _mm256_broadcast_ss(&*xd.add(j * chunks + b)));
                            $acc[j] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(ints), $acc[j]);
                        }
                    }};
                }
                let mut b = 0;
                while b + 2 <= chunks {
                    block!(b, even);
                    block!(b + 1, odd);
                    b += 2;
                }
                if b < chunks {
                    block!(b, even);
                }
            }
            for j in 0..R {
                dots[j] = hsum256(_mm256_add_ps(even[j], odd[j]));
            }
        }
    };
}

int8_block_kernel!(dot_q8_0_int8, 34, q8_0_weights);
int8_block_kernel!(dot_q4_0_int8, 18, q4_0_weights);

/// The 8 six-bit scales and 8 six-bit mins of a `Q4_K` super-block's 12-byte table at `p`, as
/// bytes `0..8` (scales) and `8..16` (mins); see [`q4k_scale_min`] for the layout. Bytes 0-3
/// hold scales 0-3 and the top bits of scales 4-7, bytes 4-7 mins 0-3 and the top bits of
/// mins 4-7, bytes 8-11 the low nibbles of scales 4-7 (low) and mins 4-7 (high).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4k_scales_mins(p: *const u8) -> __m128i {
    // SAFETY: the caller guarantees 12 readable bytes at `p`.
    let [a, b, c] = unsafe { [0, 4, 8].map(|o| (p.add(o) as *const u32).read_unaligned()) };
    let low6 = 0x3f3f_3f3f;
    let (nib, top) = (0x0f0f_0f0f, 0x0303_0303);
    let scales = (a & low6) as u64 | ((((c & nib) | ((a >> 6) & top) << 4) as u64) << 32);
    let mins = (b & low6) as u64 | (((((c >> 4) & nib) | ((b >> 6) & top) << 4) as u64) << 32);
    _mm_set_epi64x(mins as i64, scales as i64)
}

/// Byte shuffles for `_mm256_shuffle_epi8` that spread i16 number `lo` (of the 8 in a 128-bit
/// lane) over the low lane's 8 i16 lanes and i16 number `hi` over the high lane's.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn spread_i16(lo: i8, hi: i8) -> __m256i {
    let (a, b, c, e) = (2 * lo, 2 * lo + 1, 2 * hi, 2 * hi + 1);
    _mm256_setr_epi8(
        a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, c, e, c, e, c, e, c, e, c, e, c, e, c, e,
        c, e,
    )
}

/// `Q4_K` with 8-bit activations in blocks of 256 (one scale per super-block). Per 32-value
/// sub-block, the unsigned nibbles times the activations (`maddubs`), times the sub-block's
/// 6-bit scale (`madd`), summed in 32-bit integers over the super-block; then converted and
/// scaled once by `d * d_x`. The mins: `dmin * d_x * sum_s min_s * sum(q_x of s)`, the integer
/// part one `madd` of the mins with the activations' 16-value sums.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k_int8<const R: usize>(
    row: &[u8],
    inp: Q8Inputs<'_>,
    dots: &mut [f32; ROW_GROUP],
) {
    debug_assert_eq!(inp.block, 256);
    let (k, p) = (inp.k, row.as_ptr());
    let supers = k / 256;
    let (xq, xd, xb) = (inp.q.as_ptr(), inp.d.as_ptr(), inp.b16.as_ptr());
    let m4 = _mm256_set1_epi8(0x0F);
    let picks: [__m256i; 8] = std::array::from_fn(|t| spread_i16(t as i8, t as i8));
    let mut acc = [_mm256_setzero_ps(); R];
    // SAFETY: `supers` super-blocks of 144 bytes in the row; `k` values, `k / 256` scales and
    // `k / 16` sums per input row.
    unsafe {
        for sb in 0..supers {
            let blk = p.add(144 * sb);
            let (d, dmin) = (f16_at(blk), f16_at(blk.add(2)));
            let table = q4k_scales_mins(blk.add(4));
            let scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(table));
            // min 0, min 0, min 1, min 1, ...: one per 16 values.
            let mins = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(table, table));
            let mut ints = [_mm256_setzero_si256(); R];
            for i in 0..4 {
                let bytes = _mm256_loadu_si256(blk.add(16 + 32 * i) as *const __m256i);
                let lo = _mm256_and_si256(bytes, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), m4);
                let s_lo = _mm256_shuffle_epi8(scales, picks[2 * i]);
                let s_hi = _mm256_shuffle_epi8(scales, picks[2 * i + 1]);
                for j in 0..R {
                    let xp = xq.add(j * k + 256 * sb + 64 * i);
                    let x_lo = _mm256_loadu_si256(xp as *const __m256i);
                    let x_hi = _mm256_loadu_si256(xp.add(32) as *const __m256i);
                    let a = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x_lo), s_lo);
                    let b = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x_hi), s_hi);
                    ints[j] = _mm256_add_epi32(ints[j], _mm256_add_epi32(a, b));
                }
            }
            for j in 0..R {
                let dx = *xd.add(j * supers + sb);
                let sums = _mm256_loadu_si256(xb.add(j * (k / 16) + 16 * sb) as *const __m256i);
                let m = _mm256_cvtepi32_ps(_mm256_madd_epi16(sums, mins));
                acc[j] =
                    _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(ints[j]), acc[j]);
                acc[j] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * dx), m, acc[j]);
            }
        }
    }
    for j in 0..R {
        dots[j] = hsum256(acc[j]);
    }
}

/// `Q6_K` with 8-bit activations in blocks of 256. The unsigned 6-bit values (`0..64`)
/// multiply the activations directly (`maddubs`), and `madd` applies the two 16-value scales
/// of each 32 values (picked from the half's 8 scales by one byte shuffle); the integer sums
/// of the whole super-block add up in 32-bit lanes. The values' offset of 32 is taken off in
/// integers, `32 * sum_{16-blocks} scale * sum(q_x)` (one `madd` of the 16 scales with the
/// activations' 16-value sums), and the result is converted and scaled by `d * d_x` once.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k_int8<const R: usize>(
    row: &[u8],
    inp: Q8Inputs<'_>,
    dots: &mut [f32; ROW_GROUP],
) {
    debug_assert_eq!(inp.block, 256);
    let (k, p) = (inp.k, row.as_ptr());
    let supers = k / 256;
    let (xq, xd, xb) = (inp.q.as_ptr(), inp.d.as_ptr(), inp.b16.as_ptr());
    // Scale 2g of the half over the low 128-bit lane, 2g + 1 over the high (16 values each).
    let picks: [__m256i; 4] = std::array::from_fn(|g| spread_i16(2 * g as i8, 2 * g as i8 + 1));
    let mut acc = [_mm256_setzero_ps(); R];
    // SAFETY: `supers` super-blocks of 210 bytes in the row; `k` values, `k / 256` scales and
    // `k / 16` sums per input row.
    unsafe {
        for sb in 0..supers {
            let blk = p.add(210 * sb);
            let d = f16_at(blk.add(208));
            let mut ints = [_mm256_setzero_si256(); R];
            for n in 0..2 {
                let groups = q6k_half(blk, n, 0);
                let half =
                    _mm_cvtepi8_epi16(_mm_loadl_epi64(blk.add(192 + 8 * n) as *const __m128i));
                let half = _mm256_broadcastsi128_si256(half);
                for (g, &w) in groups.iter().enumerate() {
                    let scales = _mm256_shuffle_epi8(half, picks[g]);
                    let c = 4 * n + g;
                    for j in 0..R {
                        let x =
                            _mm256_loadu_si256(xq.add(j * k + 256 * sb + 32 * c) as *const __m256i);
                        let v = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), scales);
                        ints[j] = _mm256_add_epi32(ints[j], v);
                    }
                }
            }
            // The offset: lane g of `madd(scales, sums)` is group g's sum of scale * sum(q_x).
            let all = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192) as *const __m128i));
            for j in 0..R {
                let sums = _mm256_loadu_si256(xb.add(j * (k / 16) + 16 * sb) as *const __m256i);
                let offset = _mm256_slli_epi32(_mm256_madd_epi16(all, sums), 5);
                let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(ints[j], offset));
                let dd = _mm256_set1_ps(d * *xd.add(j * supers + sb));
                acc[j] = _mm256_fmadd_ps(dd, v, acc[j]);
            }
        }
    }
    for j in 0..R {
        dots[j] = hsum256(acc[j]);
    }
}

/// Stores `scale * q` (and `- min`) for 32 values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store32(out: *mut f32, q: &[__m256; 4], scale: __m256, min: __m256) {
    for (i, v) in q.iter().enumerate() {
        // SAFETY: the caller guarantees 32 writable f32 at `out`.
        unsafe { _mm256_storeu_ps(out.add(8 * i), _mm256_fmsub_ps(*v, scale, min)) };
    }
}

/// Decodes one packed row into `out` (its `cols` values).
///
/// # Safety
/// [`available`] must be true and `row` must be one packed row of `out.len()` values.
// The features are enabled here, not only on the helpers: without them every intrinsic and
// helper of the loop stayed an out-of-line call (one `_mm256_storeu_ps` call per 8 values).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn decode_row(format: WeightFormat, row: &[u8], out: &mut [f32]) {
    let (p, o, k) = (row.as_ptr(), out.as_mut_ptr(), out.len());
    // SAFETY: each arm reads whole blocks of the row and writes their values.
    unsafe {
        let zero = _mm256_setzero_ps();
        match format {
            WeightFormat::F16 | WeightFormat::BF16 => {
                let body = k - k % 8;
                for i in (0..body).step_by(8) {
                    let v = if format == WeightFormat::F16 {
                        f16x8(p.add(2 * i))
                    } else {
                        bf16x8(p.add(2 * i))
                    };
                    _mm256_storeu_ps(o.add(i), v);
                }
                crate::packed::blocks::decode_row(format, &row[2 * body..], &mut out[body..]);
            }
            WeightFormat::Q8_0 => {
                for b in 0..k / 32 {
                    let blk = p.add(34 * b);
                    let q = i8x32(_mm256_loadu_si256(blk.add(2) as *const __m256i));
                    store32(o.add(32 * b), &q, f16_splat(blk), zero);
                }
            }
            WeightFormat::Q4_0 => {
                let m4 = _mm_set1_epi8(0x0F);
                let eight = _mm_set1_epi8(8);
                for b in 0..k / 32 {
                    let blk = p.add(18 * b);
                    let bytes = _mm_loadu_si128(blk.add(2) as *const __m128i);
                    let lo = _mm_sub_epi8(_mm_and_si128(bytes, m4), eight);
                    let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), m4), eight);
                    let q = [i8_lo(lo), i8_hi(lo), i8_lo(hi), i8_hi(hi)];
                    store32(o.add(32 * b), &q, f16_splat(blk), zero);
                }
            }
            WeightFormat::Q4K => {
                for sb in 0..k / 256 {
                    let blk = p.add(144 * sb);
                    let (d, dmin) = (f16_at(blk), f16_at(blk.add(2)));
                    let scales = std::slice::from_raw_parts(blk.add(4), 12);
                    for i in 0..4 {
                        let bytes = _mm256_loadu_si256(blk.add(16 + 32 * i) as *const __m256i);
                        let (lo, hi) = nibbles32(bytes, 0);
                        for (h, v) in [lo, hi].into_iter().enumerate() {
                            let (sc, m) = q4k_scale_min(scales, 2 * i + h);
                            let scale = _mm256_set1_ps(d * sc as f32);
                            let min = _mm256_set1_ps(dmin * m as f32);
                            store32(o.add(256 * sb + 64 * i + 32 * h), &i8x32(v), scale, min);
                        }
                    }
                }
            }
            WeightFormat::Q6K => {
                for sb in 0..k / 256 {
                    let blk = p.add(210 * sb);
                    let d = f16_at(blk.add(208));
                    for n in 0..2 {
                        for (g, v) in q6k_half(blk, n, 32).iter().enumerate() {
                            let q = i8x32(*v);
                            let sc = blk.add(192 + 8 * n + 2 * g);
                            let da = _mm256_set1_ps(d * (*sc as i8) as f32);
                            let db = _mm256_set1_ps(d * (*sc.add(1) as i8) as f32);
                            let dst = o.add(256 * sb + 128 * n + 32 * g);
                            _mm256_storeu_ps(dst, _mm256_mul_ps(q[0], da));
                            _mm256_storeu_ps(dst.add(8), _mm256_mul_ps(q[1], da));
                            _mm256_storeu_ps(dst.add(16), _mm256_mul_ps(q[2], db));
                            _mm256_storeu_ps(dst.add(24), _mm256_mul_ps(q[3], db));
                        }
                    }
                }
            }
            WeightFormat::Awq4 => {
                for b in 0..k / 128 {
                    let blk = p.add(68 * b);
                    let s = f16_splat(blk);
                    let z = (*blk.add(2) & 0xF) as i8;
                    for c in 0..2 {
                        let bytes = _mm256_loadu_si256(blk.add(4 + 32 * c) as *const __m256i);
                        let (lo, hi) = nibbles32(bytes, z);
                        store32(o.add(128 * b + 32 * c), &i8x32(lo), s, zero);
                        store32(o.add(128 * b + 64 + 32 * c), &i8x32(hi), s, zero);
                    }
                }
            }
        }
    }
}

//! Packed weight storage for inference: f16/bf16 and GGUF's block-quantized formats, kept in
//! their exact on-disk byte layout so that a GGUF tensor is used as it is stored.
//!
//! A [`PackedWeight`] is a `[rows, cols]` matrix in the PyTorch `[out, in]` layout: each row
//! (an output feature) is `cols / block_values` consecutive blocks, so rows are independent
//! byte ranges (GGUF stores a 2-D tensor with `ne0 = cols` exactly this way). The bytes live in
//! host memory, shared (`Arc`) between clones, possibly memory-mapped from a file.
//!
//! | format | block | bytes | value |
//! |---|---|---|---|
//! | `F16`, `BF16` | 1 | 2 | the half-precision value |
//! | `Q8_0` | 32 | 34: f16 `d`, 32 x i8 `q` | `d * q` |
//! | `Q4_0` | 32 | 18: f16 `d`, 16 bytes: `q[j]` low nibble, `q[j + 16]` high nibble | `d * (q - 8)` |
//! | `Q4_K` | 256 | 144: f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles | `d * sc * q - dmin * m` per 32 values |
//! | `Q6_K` | 256 | 210: 128 bytes low nibbles, 64 bytes high 2 bits, 16 x i8 scales, f16 `d` | `d * sc * (q - 32)` per 16 values |
//! | `AWQ4` | 128 | 68: f16 `s`, u8 zero `z`, 1 pad byte, 64 bytes: `q[j]` low nibble, `q[j + 64]` high | `s * (q - z)` |
//!
//! `AWQ4` is ours: LMDeploy/AutoAWQ's W4A16 groups (128 inputs, asymmetric), repacked per
//! output row so that a row is contiguous like the GGUF formats. The reference decoders of
//! [`blocks`] define what every kernel must compute.

pub mod blocks;

use std::fmt;
use std::sync::Arc;

/// How a [`PackedWeight`] stores its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WeightFormat {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// GGUF `Q8_0`: blocks of 32, f16 scale, i8 values.
    Q8_0,
    /// GGUF `Q4_0`: blocks of 32, f16 scale, 4-bit values offset by 8.
    Q4_0,
    /// GGUF `Q4_K`: super-blocks of 256 = 8 x 32 with 6-bit scales and mins.
    Q4K,
    /// GGUF `Q6_K`: super-blocks of 256 = 16 x 16 with i8 scales, 6-bit values offset by 32.
    Q6K,
    /// AWQ W4A16 groups of 128 with an f16 scale and a 4-bit zero point (see the module docs).
    Awq4,
}

impl WeightFormat {
    /// Every format, for tests and listings.
    pub const ALL: [WeightFormat; 7] = [
        Self::F16,
        Self::BF16,
        Self::Q8_0,
        Self::Q4_0,
        Self::Q4K,
        Self::Q6K,
        Self::Awq4,
    ];

    /// Values per block.
    pub const fn block_values(self) -> usize {
        match self {
            Self::F16 | Self::BF16 => 1,
            Self::Q8_0 | Self::Q4_0 => 32,
            Self::Q4K | Self::Q6K => 256,
            Self::Awq4 => 128,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::F16 | Self::BF16 => 2,
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4K => 144,
            Self::Q6K => 210,
            Self::Awq4 => 68,
        }
    }

    /// Stored bits per weight.
    pub fn bits_per_weight(self) -> f64 {
        8.0 * self.block_bytes() as f64 / self.block_values() as f64
    }

    /// The lower-case name used in files and on command lines (`q8_0`, `q4_k`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4K => "q4_k",
            Self::Q6K => "q6_k",
            Self::Awq4 => "awq4",
        }
    }

    /// The format of a name written by [`WeightFormat::name`] (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// Bytes of one row of `cols` values, `None` when `cols` is not a whole number of blocks
    /// (or the size overflows).
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if cols % self.block_values() != 0 {
            return None;
        }
        (cols / self.block_values()).checked_mul(self.block_bytes())
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes cannot form a [`PackedWeight`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackedError {
    /// `cols` is not a multiple of the format's block.
    #[error("{format}: {cols} columns are not a whole number of {}-value blocks", format.block_values())]
    PartialBlock {
        /// The format.
        format: WeightFormat,
        /// Values per row.
        cols: usize,
    },
    /// Stacked weights with different numbers of columns.
    #[error("cannot stack weights of {cols} and {other} columns")]
    MixedColumns {
        /// Columns of the first weight.
        cols: usize,
        /// Columns of the one that differs.
        other: usize,
    },
    /// The byte count disagrees with the shape.
    #[error("{format} [{rows}, {cols}] needs {expected:?} bytes, got {got}")]
    WrongLength {
        /// The format.
        format: WeightFormat,
        /// Rows.
        rows: usize,
        /// Values per row.
        cols: usize,
        /// Bytes the shape needs (`None` if it overflows).
        expected: Option<usize>,
        /// Bytes given.
        got: usize,
    },
}

/// Where the bytes of a packed weight live.
type Bytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Consecutive rows stored in one format.
#[derive(Clone)]
struct Segment {
    format: WeightFormat,
    /// First row of the weight this segment holds.
    first: usize,
    rows: usize,
    row_bytes: usize,
    bytes: Bytes,
    /// Byte offset of the segment's first row inside `bytes`.
    offset: usize,
}

impl Segment {
    fn data(&self) -> &[u8] {
        &(*self.bytes).as_ref()[self.offset..self.offset + self.rows * self.row_bytes]
    }
}

/// A `[rows, cols]` weight in packed [`WeightFormat`]s, row-major, rows independent.
///
/// Usually one format; [`PackedWeight::stack`] joins weights of different formats along the
/// rows (GGUF's `Q4_K_M` files store InternLM2's V projection as `Q6_K` next to `Q4_K`
/// queries and keys, which the fused `wqkv` then holds side by side).
#[derive(Clone)]
pub struct PackedWeight {
    rows: usize,
    cols: usize,
    segments: Arc<[Segment]>,
}

impl fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let formats: Vec<_> = self.segments().map(|(f, r)| (f, r.len())).collect();
        f.debug_struct("PackedWeight")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("formats", &formats)
            .finish_non_exhaustive()
    }
}

impl PackedWeight {
    /// Takes ownership of `bytes` (exactly `rows * row_bytes(cols)` of them).
    pub fn new(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    ) -> Result<Self, PackedError> {
        let len = bytes.len();
        Self::from_shared(format, rows, cols, Arc::new(bytes), 0..len)
    }

    /// Uses `range` of shared bytes (a memory-mapped file, say) without copying.
    pub fn from_shared(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        bytes: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: std::ops::Range<usize>,
    ) -> Result<Self, PackedError> {
        let row_bytes = format
            .row_bytes(cols)
            .ok_or(PackedError::PartialBlock { format, cols })?;
        let expected = row_bytes.checked_mul(rows);
        let available = (*bytes).as_ref().len();
        let got = range.end.min(available).saturating_sub(range.start);
        if expected != Some(range.end.saturating_sub(range.start)) || range.end > available {
            return Err(PackedError::WrongLength {
                format,
                rows,
                cols,
                expected,
                got,
            });
        }
        let segment = Segment {
            format,
            first: 0,
            rows,
            row_bytes,
            bytes,
            offset: range.start,
        };
        Ok(Self {
            rows,
            cols,
            segments: Arc::from(vec![segment]),
        })
    }

    /// The weights one after the other along the rows (all with the same `cols`).
    pub fn stack(parts: &[PackedWeight]) -> Result<Self, PackedError> {
        let cols = parts.first().map_or(0, |p| p.cols);
        let mut segments = Vec::new();
        let mut rows = 0usize;
        for part in parts {
            if part.cols != cols {
                return Err(PackedError::MixedColumns {
                    cols,
                    other: part.cols,
                });
            }
            for seg in part.segments.iter() {
                let mut seg = seg.clone();
                seg.first = rows;
                rows += seg.rows;
                segments.push(seg);
            }
        }
        Ok(Self {
            rows,
            cols,
            segments: Arc::from(segments),
        })
    }

    /// Rows `r0..r1` as a weight of their own, sharing the bytes (no copy).
    ///
    /// # Panics
    /// If `r0 > r1` or `r1 > rows`.
    pub fn slice_rows(&self, r0: usize, r1: usize) -> Self {
        assert!(
            r0 <= r1 && r1 <= self.rows,
            "rows {r0}..{r1} of {}",
            self.rows
        );
        let mut segments = Vec::new();
        for seg in self.segments.iter() {
            let (a, b) = (seg.first.max(r0), (seg.first + seg.rows).min(r1));
            if a >= b {
                continue;
            }
            let mut s = seg.clone();
            s.offset += (a - seg.first) * seg.row_bytes;
            s.first = a - r0;
            s.rows = b - a;
            segments.push(s);
        }
        Self {
            rows: r1 - r0,
            cols: self.cols,
            segments: Arc::from(segments),
        }
    }

    /// The format of the first rows (the only one unless [`PackedWeight::is_uniform`] is
    /// false).
    pub fn format(&self) -> WeightFormat {
        self.segments
            .first()
            .map_or(WeightFormat::F16, |s| s.format)
    }

    /// Whether every row has the same format.
    pub fn is_uniform(&self) -> bool {
        self.segments.windows(2).all(|w| w[0].format == w[1].format)
    }

    /// Whether some rows use `format`.
    pub fn uses(&self, format: WeightFormat) -> bool {
        self.segments.iter().any(|s| s.format == format)
    }

    /// Each run of rows and its format.
    pub fn segments(&self) -> impl Iterator<Item = (WeightFormat, std::ops::Range<usize>)> + '_ {
        self.segments
            .iter()
            .map(|s| (s.format, s.first..s.first + s.rows))
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    fn segment_of(&self, row: usize) -> &Segment {
        let i = self.segments.partition_point(|s| s.first + s.rows <= row);
        &self.segments[i]
    }

    /// The format and packed bytes of row `row`.
    ///
    /// # Panics
    /// If `row >= rows`.
    pub fn row(&self, row: usize) -> (WeightFormat, &[u8]) {
        assert!(row < self.rows, "row {row} of {}", self.rows);
        let seg = self.segment_of(row);
        let local = row - seg.first;
        (
            seg.format,
            &seg.data()[local * seg.row_bytes..(local + 1) * seg.row_bytes],
        )
    }

    /// Calls `f(row, format, bytes)` for every row of `r0..r1`, in order.
    ///
    /// # Panics
    /// If `r0 > r1` or `r1 > rows`.
    pub fn for_rows(&self, r0: usize, r1: usize, mut f: impl FnMut(usize, WeightFormat, &[u8])) {
        self.for_row_runs(r0, r1, |run, format, data| {
            let rb = data.len() / run.len();
            for (i, o) in run.enumerate() {
                f(o, format, &data[i * rb..(i + 1) * rb]);
            }
        });
    }

    /// Calls `f(rows, format, bytes)` for each run of consecutive rows of one format inside
    /// `r0..r1`, in order: `rows` is the run (never empty) and `bytes` holds its packed rows
    /// back to back (`bytes.len() / rows.len()` each). Kernels that stream many rows take
    /// their bytes once per run instead of once per row.
    ///
    /// # Panics
    /// If `r0 > r1` or `r1 > rows`.
    pub fn for_row_runs(
        &self,
        r0: usize,
        r1: usize,
        mut f: impl FnMut(std::ops::Range<usize>, WeightFormat, &[u8]),
    ) {
        assert!(
            r0 <= r1 && r1 <= self.rows,
            "rows {r0}..{r1} of {}",
            self.rows
        );
        let mut r = r0;
        while r < r1 {
            let seg = self.segment_of(r);
            let end = (seg.first + seg.rows).min(r1);
            let data = seg.data();
            let local = r - seg.first;
            f(
                r..end,
                seg.format,
                &data[local * seg.row_bytes..(end - seg.first) * seg.row_bytes],
            );
            r = end;
        }
    }

    /// Each segment's format, rows and packed bytes, in row order (what a checkpoint writer
    /// stores).
    pub fn segment_bytes(&self) -> impl Iterator<Item = (WeightFormat, usize, &[u8])> + '_ {
        self.segments.iter().map(|s| (s.format, s.rows, s.data()))
    }

    /// Decodes rows `r0..r1` into `out` (`(r1 - r0) * cols` values) with the reference
    /// decoders of [`blocks`].
    ///
    /// # Panics
    /// If the range is out of bounds or `out` has the wrong length.
    pub fn dequantize_rows(&self, r0: usize, r1: usize, out: &mut [f32]) {
        assert_eq!(out.len(), (r1 - r0) * self.cols, "output length");
        let cols = self.cols;
        if cols == 0 {
            return;
        }
        self.for_rows(r0, r1, |o, format, bytes| {
            let i = o - r0;
            blocks::decode_row(format, bytes, &mut out[i * cols..(i + 1) * cols]);
        });
    }

    /// The whole matrix as f32, row-major (for tests and saving; reference paths that work in
    /// tiles use [`PackedWeight::dequantize_rows`]).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows(0, self.rows, &mut out);
        out
    }

    /// Bytes of storage (what a pass over the weight reads).
    pub fn storage_bytes(&self) -> usize {
        self.segments.iter().map(|s| s.rows * s.row_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_block_layouts() {
        assert_eq!(WeightFormat::Q8_0.row_bytes(64), Some(68));
        assert_eq!(WeightFormat::Q4_0.row_bytes(64), Some(36));
        assert_eq!(WeightFormat::Q4K.row_bytes(512), Some(288));
        assert_eq!(WeightFormat::Q6K.row_bytes(256), Some(210));
        assert_eq!(WeightFormat::Awq4.row_bytes(256), Some(136));
        assert_eq!(WeightFormat::F16.row_bytes(3), Some(6));
        assert_eq!(WeightFormat::Q4K.row_bytes(176), None);
        assert_eq!(WeightFormat::Q4_0.bits_per_weight(), 4.5);
        for f in WeightFormat::ALL {
            assert_eq!(WeightFormat::from_name(f.name()), Some(f));
        }
    }

    #[test]
    fn lengths_are_checked() {
        let err = PackedWeight::new(WeightFormat::Q8_0, 2, 32, vec![0; 67]).unwrap_err();
        assert!(matches!(
            err,
            PackedError::WrongLength {
                expected: Some(68),
                got: 67,
                ..
            }
        ));
        let err = PackedWeight::new(WeightFormat::Q8_0, 2, 33, vec![0; 68]).unwrap_err();
        assert!(matches!(err, PackedError::PartialBlock { cols: 33, .. }));
        let err = PackedWeight::new(WeightFormat::Q8_0, usize::MAX, 32, vec![]).unwrap_err();
        assert!(matches!(
            err,
            PackedError::WrongLength { expected: None, .. }
        ));
        let ok = PackedWeight::new(WeightFormat::Q8_0, 2, 32, vec![0; 68]).unwrap();
        assert_eq!(ok.dims(), [2, 32]);
    }

    #[test]
    fn stacks_keep_each_rows_format() {
        let a = PackedWeight::new(WeightFormat::F16, 1, 32, [0x00u8, 0x3C].repeat(32)).unwrap();
        let mut q = vec![0x00, 0x40]; // Q8_0, d = 2, q = 3 everywhere
        q.extend([3u8; 32]);
        let b = PackedWeight::new(WeightFormat::Q8_0, 2, 32, q.repeat(2)).unwrap();
        let s = PackedWeight::stack(&[a.clone(), b, a]).unwrap();
        assert_eq!(s.dims(), [4, 32]);
        assert!(!s.is_uniform());
        assert_eq!(s.row(2).0, WeightFormat::Q8_0);
        let v = s.dequantize();
        assert_eq!((v[0], v[32], v[64], v[96]), (1.0, 6.0, 6.0, 1.0));
        let mut seen = Vec::new();
        s.for_rows(1, 4, |o, f, _| seen.push((o, f)));
        assert_eq!(
            seen,
            [
                (1, WeightFormat::Q8_0),
                (2, WeightFormat::Q8_0),
                (3, WeightFormat::F16)
            ]
        );
        let mid = s.slice_rows(1, 3);
        assert_eq!(mid.dims(), [2, 32]);
        assert!(mid.is_uniform());
        assert_eq!(mid.dequantize(), v[32..96].to_vec());
        let odd = PackedWeight::new(WeightFormat::F16, 1, 2, vec![0; 4]).unwrap();
        assert!(PackedWeight::stack(&[s, odd]).is_err());
    }
}

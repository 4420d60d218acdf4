//! GGUF files (llama.cpp's format, versions 2 and 3): a bounds-checked reader of the header,
//! the metadata and the tensor table, over a memory-mapped file. [`gguf_model`](super::gguf_model)
//! turns an InternLM2 GGUF into a model and a tokenizer.
//!
//! Layout: magic `GGUF`, version (u32), tensor count (u64), metadata count (u64); metadata
//! `key (string), type (u32), value`; tensor infos `name, n_dims (u32), dims (u64 x n_dims,
//! innermost first), ggml type (u32), offset (u64, from the data section)`; the data section
//! starts at the next multiple of `general.alignment` (default 32). Strings are a u64 length
//! and UTF-8 bytes; everything is little-endian.
//!
//! Every count and length read from the file is checked against the bytes that remain before
//! anything is allocated for it, and every tensor's byte range against the file's size.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use internlm2_backends::packed::WeightFormat;
use memmap2::Mmap;

use crate::error::CheckpointError;

pub use super::gguf_model::{gguf_config, load_gguf, tokenizer_from_gguf};

/// The GGUF magic, `GGUF` read as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// Most dimensions a ggml tensor has.
const MAX_DIMS: u32 = 4;
/// Nesting a metadata array may have (llama.cpp writes flat arrays).
const MAX_ARRAY_DEPTH: usize = 2;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Any unsigned integer type.
    Uint(u64),
    /// Any signed integer type.
    Int(i64),
    /// `f32` or `f64`.
    Float(f64),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string (invalid UTF-8 is replaced).
    Str(String),
    /// An array.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as a `u64` if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::Uint(v) => Some(v),
            Self::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an `f64` if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Float(v) => Some(v),
            Self::Uint(v) => Some(v as f64),
            Self::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// The element types of ggml tensors we read, by their ggml id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// `GGML_TYPE_F32` (0).
    F32,
    /// A packed format: F16 (1), Q4_0 (2), Q8_0 (8), Q4_K (12), Q6_K (14), BF16 (30).
    Packed(WeightFormat),
    /// Any other id (Q4_1, Q5_*, IQ*, ...): listed, but not loadable.
    Other(u32),
}

impl GgmlType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::Packed(WeightFormat::F16),
            2 => Self::Packed(WeightFormat::Q4_0),
            8 => Self::Packed(WeightFormat::Q8_0),
            12 => Self::Packed(WeightFormat::Q4K),
            14 => Self::Packed(WeightFormat::Q6K),
            30 => Self::Packed(WeightFormat::BF16),
            other => Self::Other(other),
        }
    }

    /// ggml's name of the type (for messages).
    pub fn name(self) -> String {
        match self {
            Self::F32 => "F32".into(),
            Self::Packed(f) => f.name().to_uppercase(),
            Self::Other(id) => format!("ggml type {id}"),
        }
    }
}

/// One tensor of the file.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    /// Dimensions, innermost (row length) first, as GGUF stores them.
    pub dims: Vec<usize>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Absolute byte range in the file.
    pub range: std::ops::Range<usize>,
}

impl GgufTensor {
    /// `[rows, cols]` of a 2-D tensor (`[ne1, ne0]`), `[n]` of a 1-D one, in PyTorch order.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file, memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensors by name.
    pub tensors: BTreeMap<String, GgufTensor>,
    mmap: Arc<Mmap>,
}

/// A cursor over the header bytes that never reads past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> CheckpointError {
        CheckpointError::Corrupt {
            path: self.path.to_path_buf(),
            reason: format!("GGUF header: {what} at byte {}", self.pos),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CheckpointError> {
        if n > self.remaining() {
            return Err(self.err(&format!(
                "{what} needs {n} bytes, {} remain",
                self.remaining()
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, CheckpointError> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64, CheckpointError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    /// A count that needs at least `min_bytes` bytes per item in what remains.
    fn count(&mut self, min_bytes: usize, what: &str) -> Result<usize, CheckpointError> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_bytes.max(1)))
            .is_some_and(|b| b <= self.remaining());
        if !fits {
            return Err(self.err(&format!(
                "{what} of {n} cannot fit in the {} bytes left",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, CheckpointError> {
        let n = self.count(1, what)?;
        Ok(String::from_utf8_lossy(self.take(n, what)?).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize, what: &str) -> Result<GgufValue, CheckpointError> {
        let fixed =
            |c: &mut Self, n: usize| -> Result<&'a [u8], CheckpointError> { c.take(n, what) };
        Ok(match ty {
            0 => GgufValue::Uint(fixed(self, 1)?[0] as u64),
            1 => GgufValue::Int(fixed(self, 1)?[0] as i8 as i64),
            2 => GgufValue::Uint(u16::from_le_bytes(fixed(self, 2)?.try_into().expect("2")) as u64),
            3 => GgufValue::Int(i16::from_le_bytes(fixed(self, 2)?.try_into().expect("2")) as i64),
            4 => GgufValue::Uint(self.u32(what)? as u64),
            5 => GgufValue::Int(i32::from_le_bytes(fixed(self, 4)?.try_into().expect("4")) as i64),
            6 => GgufValue::Float(f32_as_f64(f32::from_le_bytes(
                fixed(self, 4)?.try_into().expect("4"),
            ))),
            7 => GgufValue::Bool(fixed(self, 1)?[0] != 0),
            8 => GgufValue::Str(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(&format!(
                        "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let item = self.u32(what)?;
                let min = match item {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(self.err(&format!("{what}: unknown array item type {other}")));
                    }
                };
                let n = self.count(min, what)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, depth + 1, what)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::Uint(self.u64(what)?),
            11 => GgufValue::Int(i64::from_le_bytes(fixed(self, 8)?.try_into().expect("8"))),
            12 => GgufValue::Float(f64::from_le_bytes(fixed(self, 8)?.try_into().expect("8"))),
            other => return Err(self.err(&format!("{what}: unknown value type {other}"))),
        })
    }
}

/// The f64 whose shortest decimal is the f32's (an f32 `1e-5` reads as `1e-5`, not as
/// `9.99999974e-6`): GGUF stores config floats such as `rms_norm_eps` as f32.
fn f32_as_f64(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

impl GgufFile {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: read-only mapping; like every model loader we assume the file is not
        // truncated by another process while it is in use.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let mut c = Cursor {
            bytes: &mmap,
            pos: 0,
            path,
        };
        if c.u32("magic")? != MAGIC {
            return Err(CheckpointError::Corrupt {
                path: path.to_path_buf(),
                reason: "not a GGUF file (no `GGUF` magic)".into(),
            });
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(CheckpointError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("GGUF version {version} (this reader knows versions 2 and 3)"),
            });
        }
        // A tensor info is at least 8 (name length) + 4 + 4 + 8 bytes; a metadata entry at
        // least 8 (key length) + 4 + 1.
        let n_tensors = c.u64("tensor count")?;
        let n_meta = c.count(13, "metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_meta {
            let key = c.string("metadata key")?;
            let ty = c.u32("metadata type")?;
            let value = c.value(ty, 0, &format!("metadata `{key}`"))?;
            metadata.insert(key, value);
        }
        let n_tensors = usize::try_from(n_tensors)
            .ok()
            .filter(|n| n.checked_mul(24).is_some_and(|b| b <= c.remaining()))
            .ok_or_else(|| {
                c.err(&format!(
                    "tensor count {n_tensors} cannot fit in the {} bytes left",
                    c.remaining()
                ))
            })?;
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor dims")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.err(&format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = c.u64("tensor dim")?;
                dims.push(
                    usize::try_from(d).map_err(|_| c.err(&format!("tensor `{name}` dim {d}")))?,
                );
            }
            let ty = GgmlType::from_id(c.u32("tensor type")?);
            let offset = c.u64("tensor offset")?;
            infos.push((name, dims, ty, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => return Err(c.err(&format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, dims, ty, offset) in infos {
            let bad = |reason: String| CheckpointError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("GGUF tensor `{name}`: {reason}"),
            };
            let elements = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(format!("{dims:?} overflows")))?;
            let bytes = match ty {
                GgmlType::F32 => elements.checked_mul(4),
                GgmlType::Packed(f) => {
                    let rows = elements.checked_div(dims[0]).unwrap_or(0);
                    f.row_bytes(dims[0]).and_then(|b| b.checked_mul(rows))
                }
                GgmlType::Other(_) => Some(0),
            }
            .ok_or_else(|| {
                bad(format!(
                    "{} rows of {} values are not whole blocks",
                    ty.name(),
                    dims[0]
                ))
            })?;
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_start))
                .ok_or_else(|| bad(format!("offset {offset} overflows")))?;
            let end = start
                .checked_add(bytes)
                .ok_or_else(|| bad("size overflows".into()))?;
            if end > mmap.len() {
                return Err(bad(format!(
                    "bytes {start}..{end} lie past the end of the {}-byte file",
                    mmap.len()
                )));
            }
            if tensors
                .insert(
                    name.clone(),
                    GgufTensor {
                        dims,
                        ggml_type: ty,
                        range: start..end,
                    },
                )
                .is_some()
            {
                return Err(bad("appears twice".into()));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            mmap: Arc::new(mmap),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// The mapping, shared with packed weights that use it in place.
    pub(crate) fn mmap(&self) -> &Arc<Mmap> {
        &self.mmap
    }

    /// The bytes of a tensor.
    pub fn bytes(&self, tensor: &GgufTensor) -> &[u8] {
        &self.mmap[tensor.range.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    /// A GGUF v3 file with one u32 metadata entry and one F32 [2, 3] tensor.
    fn small() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(MAGIC.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // tensors
        b.extend(1u64.to_le_bytes()); // metadata
        string(&mut b, "internlm2.block_count");
        b.extend(4u32.to_le_bytes());
        b.extend(7u32.to_le_bytes());
        string(&mut b, "w");
        b.extend(2u32.to_le_bytes());
        b.extend(3u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for i in 0..6 {
            b.extend((i as f32).to_le_bytes());
        }
        b
    }

    fn parse(bytes: &[u8]) -> Result<GgufFile, CheckpointError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, bytes).unwrap();
        GgufFile::open(&path)
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let f = parse(&small()).unwrap();
        assert_eq!(
            f.get("internlm2.block_count").and_then(GgufValue::as_u64),
            Some(7)
        );
        let t = &f.tensors["w"];
        assert_eq!(t.shape(), vec![2, 3]);
        assert_eq!(f.bytes(t).len(), 24);
    }

    #[test]
    fn truncated_and_oversized_headers_are_errors() {
        let full = small();
        for cut in [3, 10, 30, 60, full.len() - 1] {
            assert!(parse(&full[..cut]).is_err(), "cut at {cut}");
        }
        // A metadata count far larger than the file.
        let mut b = full.clone();
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&b), Err(CheckpointError::Corrupt { .. })));
        // A string length far larger than the file.
        let mut b = full.clone();
        b[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(parse(&b), Err(CheckpointError::Corrupt { .. })));
        // A tensor dim that makes the data run past the end.
        let mut b = full;
        let at = b.windows(8).position(|w| w == 3u64.to_le_bytes()).unwrap();
        b[at..at + 8].copy_from_slice(&1000u64.to_le_bytes());
        let err = parse(&b).err().unwrap().to_string();
        assert!(err.contains("`w`"), "{err}");
    }
}

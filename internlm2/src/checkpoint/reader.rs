//! Reading tensors out of a HuggingFace model directory: memory-mapped safetensors (one file
//! or shards with `model.safetensors.index.json`), or `pytorch_model*.bin` through burn-store's
//! PyTorch reader.
//!
//! Tensors are read one at a time, converted from the stored dtype (BF16, F16, F32) to the
//! compute dtype straight from the mapping, so the weights exist once in host memory plus one
//! tensor in flight.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use burn_store::pytorch::PytorchReader;
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::CheckpointError;

/// Largest `model.safetensors.index.json` read, in bytes (a 20B model's is about 50 KB).
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

/// Where a tensor lives.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    shape: Vec<usize>,
    /// Stored dtype, as text for messages.
    dtype: String,
    /// Byte range inside a safetensors file (absolute), `None` for pickled tensors.
    range: Option<(usize, usize)>,
}

enum WeightFile {
    Safetensors {
        path: PathBuf,
        mmap: Mmap,
    },
    Pytorch {
        path: PathBuf,
        reader: PytorchReader,
    },
}

impl WeightFile {
    fn path(&self) -> &Path {
        match self {
            Self::Safetensors { path, .. } | Self::Pytorch { path, .. } => path,
        }
    }
}

/// All tensors of a model directory, by HuggingFace name.
pub struct WeightReader {
    dir: PathBuf,
    files: Vec<WeightFile>,
    entries: BTreeMap<String, Entry>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl WeightReader {
    /// Opens every weight file of `dir`.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let mut reader = Self {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            entries: BTreeMap::new(),
        };
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            reader.add_safetensors(&single)?;
        } else if index.is_file() {
            let shards = read_index(&index)?;
            let mut claimed: HashMap<String, String> = HashMap::new();
            for (name, shard) in &shards {
                claimed.insert(name.clone(), shard.clone());
            }
            let mut files: Vec<&String> = shards.values().collect();
            files.sort();
            files.dedup();
            for shard in &files {
                // Shards live beside the index: a path elsewhere is not a shard of this model.
                if !is_plain_file_name(shard) {
                    return Err(CheckpointError::BadIndex {
                        path: index.clone(),
                        reason: format!("shard {shard:?} is not a file name in {}", dir.display()),
                    });
                }
            }
            for shard in files {
                let path = dir.join(shard);
                if !path.is_file() {
                    return Err(CheckpointError::BadIndex {
                        path: index.clone(),
                        reason: format!("shard {shard} does not exist"),
                    });
                }
                reader.add_safetensors(&path)?;
            }
            // The index and the shards must agree.
            for (name, shard) in &claimed {
                let found = reader
                    .entries
                    .get(name)
                    .map(|e| reader.files[e.file].path().file_name());
                if found != Some(Some(std::ffi::OsStr::new(shard))) {
                    return Err(CheckpointError::BadIndex {
                        path: index.clone(),
                        reason: format!("tensor `{name}` is not in {shard}"),
                    });
                }
            }
        } else {
            let mut bins: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(io_err(dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("pytorch_model") && n.ends_with(".bin"))
                })
                .collect();
            bins.sort();
            if bins.is_empty() {
                return Err(CheckpointError::NoWeights {
                    dir: dir.to_path_buf(),
                });
            }
            for bin in bins {
                reader.add_pytorch(&bin)?;
            }
        }
        Ok(reader)
    }

    fn add_safetensors(&mut self, path: &Path) -> Result<(), CheckpointError> {
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: the mapping is read-only; like every safetensors reader we assume the file
        // is not truncated by another process while the model loads.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        check_safetensors_bounds(&mmap).map_err(|reason| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })?;
        let (header, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| CheckpointError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let data_start = 8 + header;
        let index = self.files.len();
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            let entry = Entry {
                file: index,
                shape: info.shape.clone(),
                dtype: format!("{:?}", info.dtype),
                range: Some((data_start + start, data_start + end)),
            };
            self.insert(name, entry, path)?;
        }
        self.files.push(WeightFile::Safetensors {
            path: path.to_path_buf(),
            mmap,
        });
        Ok(())
    }

    fn add_pytorch(&mut self, path: &Path) -> Result<(), CheckpointError> {
        let reader = PytorchReader::new(path).map_err(|e| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("cannot read PyTorch checkpoint: {e}"),
        })?;
        let index = self.files.len();
        for (name, snapshot) in reader.tensors() {
            let entry = Entry {
                file: index,
                shape: snapshot.shape.to_vec(),
                dtype: format!("{:?}", snapshot.dtype),
                range: None,
            };
            self.insert(name.clone(), entry, path)?;
        }
        self.files.push(WeightFile::Pytorch {
            path: path.to_path_buf(),
            reader,
        });
        Ok(())
    }

    fn insert(&mut self, name: String, entry: Entry, path: &Path) -> Result<(), CheckpointError> {
        if self.entries.contains_key(&name) {
            return Err(CheckpointError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}` appears in more than one file"),
            });
        }
        self.entries.insert(name, entry);
        Ok(())
    }

    /// Whether the directory holds a tensor of that name.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The stored shape of tensor `name`, if the directory holds it (nothing is read).
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Checks, without reading anything, that tensor `name` is there with shape `expected`
    /// ([`CheckpointError::MissingTensor`] or [`CheckpointError::ShapeMismatch`] otherwise).
    pub fn check(&self, name: &str, expected: &[usize]) -> Result<(), CheckpointError> {
        match self.shape(name) {
            None => Err(CheckpointError::MissingTensor {
                dir: self.dir.clone(),
                name: name.to_string(),
            }),
            Some(got) if got != expected => Err(CheckpointError::ShapeMismatch {
                path: self.file_of(name),
                name: name.to_string(),
                expected: expected.to_vec(),
                got: got.to_vec(),
            }),
            Some(_) => Ok(()),
        }
    }

    /// Names of the tensors not taken yet.
    pub fn remaining(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The file holding a tensor (for messages).
    pub fn file_of(&self, name: &str) -> PathBuf {
        self.entries
            .get(name)
            .map(|e| self.files[e.file].path().to_path_buf())
            .unwrap_or_else(|| self.dir.clone())
    }

    /// Removes tensor `name` and returns its stored dtype (safetensors' name: `U8`, `F16`,
    /// ...), shape and bytes as stored, unconverted: for packed weights
    /// ([`crate::quant`]). Only safetensors files hold raw tensors.
    pub fn take_raw(
        &mut self,
        name: &str,
    ) -> Result<(String, Vec<usize>, Vec<u8>), CheckpointError> {
        let entry = self
            .entries
            .remove(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                dir: self.dir.clone(),
                name: name.to_string(),
            })?;
        match (&self.files[entry.file], entry.range) {
            (WeightFile::Safetensors { mmap, path }, Some((start, end))) => {
                let bytes = mmap
                    .get(start..end)
                    .ok_or_else(|| CheckpointError::Corrupt {
                        path: path.clone(),
                        reason: format!("tensor `{name}` runs past the end of the file"),
                    })?;
                Ok((entry.dtype, entry.shape, bytes.to_vec()))
            }
            (file, _) => Err(CheckpointError::UnsupportedDtype {
                path: file.path().to_path_buf(),
                name: name.to_string(),
                dtype: format!(
                    "{} in a pickled file (packed weights live in safetensors)",
                    entry.dtype
                ),
            }),
        }
    }

    /// Removes a tensor from the directory's set without reading it.
    pub fn skip(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// Reads tensor `name`, checks its shape and converts it to `dtype`.
    pub fn take(
        &mut self,
        name: &str,
        expected: &[usize],
        dtype: DType,
    ) -> Result<TensorData, CheckpointError> {
        let entry = self
            .entries
            .remove(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                dir: self.dir.clone(),
                name: name.to_string(),
            })?;
        let file = &self.files[entry.file];
        let path = file.path().to_path_buf();
        if entry.shape != expected {
            return Err(CheckpointError::ShapeMismatch {
                path,
                name: name.to_string(),
                expected: expected.to_vec(),
                got: entry.shape,
            });
        }
        let unsupported = || CheckpointError::UnsupportedDtype {
            path: path.clone(),
            name: name.to_string(),
            dtype: entry.dtype.clone(),
        };
        match file {
            WeightFile::Safetensors { mmap, .. } => {
                let (start, end) = entry.range.expect("safetensors entries have a range");
                let bytes = mmap
                    .get(start..end)
                    .ok_or_else(|| CheckpointError::Corrupt {
                        path: path.clone(),
                        reason: format!(
                            "tensor `{name}` at bytes {start}..{end} of a {}-byte file",
                            mmap.len()
                        ),
                    })?;
                let stored = match entry.dtype.as_str() {
                    "BF16" => Dtype::BF16,
                    "F16" => Dtype::F16,
                    "F32" => Dtype::F32,
                    _ => return Err(unsupported()),
                };
                convert(bytes, stored, expected, dtype).ok_or_else(unsupported)
            }
            WeightFile::Pytorch { reader, .. } => {
                let snapshot = reader.get(name).expect("entry came from this reader");
                if !matches!(snapshot.dtype, DType::F32 | DType::BF16 | DType::F16) {
                    return Err(unsupported());
                }
                let data = snapshot.to_data().map_err(|e| CheckpointError::Corrupt {
                    path: path.clone(),
                    reason: format!("tensor `{name}`: {e:?}"),
                })?;
                Ok(data.convert_dtype(dtype))
            }
        }
    }
}

impl WeightReader {
    /// [`WeightReader::take`] straight into a tensor of rank `D` on `device`.
    pub fn take_tensor<B: burn::tensor::backend::Backend, const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        dtype: DType,
        device: &B::Device,
    ) -> Result<burn::tensor::Tensor<B, D>, CheckpointError> {
        let data = self.take(name, &shape, dtype)?;
        Ok(burn::tensor::Tensor::from_data(data, (device, dtype)))
    }
}

/// Converts little-endian stored bytes to `TensorData` of the target dtype; `None` when the
/// target is not a float dtype we compute in.
fn convert(bytes: &[u8], stored: Dtype, shape: &[usize], target: DType) -> Option<TensorData> {
    let same = matches!(
        (stored, target),
        (Dtype::F32, DType::F32) | (Dtype::BF16, DType::BF16) | (Dtype::F16, DType::F16)
    );
    if same {
        return Some(TensorData::from_bytes_vec(
            bytes.to_vec(),
            shape.to_vec(),
            target,
        ));
    }
    let floats: Vec<f32> = match stored {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    };
    let shape = shape.to_vec();
    match target {
        DType::F32 => Some(TensorData::new(floats, shape)),
        DType::BF16 => Some(TensorData::new(
            floats.into_iter().map(bf16::from_f32).collect::<Vec<_>>(),
            shape,
        )),
        DType::F16 => Some(TensorData::new(
            floats.into_iter().map(f16::from_f32).collect::<Vec<_>>(),
            shape,
        )),
        _ => None,
    }
}

/// Checks the parts of a safetensors header that the `safetensors` crate adds up without
/// checking: the header length must fit the file, and every tensor's `data_offsets` must lie
/// inside the data section, so that no offset sum can overflow and every range can be sliced.
fn check_safetensors_bounds(bytes: &[u8]) -> Result<(), String> {
    let Some(len) = bytes.get(..8) else {
        return Err(format!(
            "{} bytes, shorter than the 8-byte header length",
            bytes.len()
        ));
    };
    let header_len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    let available = bytes.len() as u64 - 8;
    if header_len > available {
        return Err(format!(
            "header of {header_len} bytes in a file of {} bytes",
            bytes.len()
        ));
    }
    let data_len = available - header_len;
    let header = &bytes[8..8 + header_len as usize];
    // Only the offsets are read here; `safetensors` validates the rest.
    #[derive(serde::Deserialize)]
    struct Info {
        data_offsets: (u64, u64),
    }
    let Ok(tensors) = serde_json::from_slice::<BTreeMap<String, serde_json::Value>>(header) else {
        // Not a JSON object: `safetensors` reports what is wrong with it.
        return Ok(());
    };
    for (name, value) in tensors {
        if name == "__metadata__" {
            continue;
        }
        let Ok(info) = serde_json::from_value::<Info>(value) else {
            continue;
        };
        let (start, end) = info.data_offsets;
        if start > end || end > data_len {
            return Err(format!(
                "tensor `{name}` has data_offsets [{start}, {end}] outside the {data_len} data bytes"
            ));
        }
    }
    Ok(())
}

/// Whether a shard name from an index is a plain file name (no directory part).
fn is_plain_file_name(name: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty()
        && path
            .file_name()
            .is_some_and(|n| n == std::ffi::OsStr::new(name))
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
}

/// `weight_map` of `model.safetensors.index.json`.
fn read_index(path: &Path) -> Result<BTreeMap<String, String>, CheckpointError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let len = std::fs::metadata(path).map_err(io_err(path))?.len();
    if len > MAX_INDEX_BYTES {
        return Err(CheckpointError::BadIndex {
            path: path.to_path_buf(),
            reason: format!("{len} bytes, more than the {MAX_INDEX_BYTES} an index may have"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let index: Index = serde_json::from_str(&text).map_err(|e| CheckpointError::BadIndex {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(index.weight_map)
}

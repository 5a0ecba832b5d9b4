//! Index of a `model.safetensors` checkpoint: tensor names, dtypes, shapes and byte ranges.
//!
//! F32 tensors are referenced in place (the ONNX graphs point at them as external data, so the
//! weights are never copied into the graph); F16/BF16 tensors are converted to F32 on request.
//! This module owns validation of names, dtypes and shapes; it knows nothing about ONNX.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::ModelError;
use crate::onnx::WeightData;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "F32" => Some(DType::F32),
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::BF16),
            _ => None,
        }
    }
    fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// One tensor's entry in the safetensors header.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    pub length: u64,
}

/// An opened checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub file_name: String,
    tensors: HashMap<String, TensorInfo>,
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Largest safetensors JSON header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

impl Checkpoint {
    /// Opens `dir/model.safetensors` and validates its header.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let file_name = "model.safetensors".to_string();
        let path = dir.join(&file_name);
        let mut f = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        let file_len = f.metadata().map_err(|e| ModelError::io(&path, e))?.len();
        let corrupt = |m: String| ModelError::Safetensors(format!("{}: {m}", path.display()));
        let mut len_buf = [0u8; 8];
        f.read_exact(&mut len_buf)
            .map_err(|_| corrupt("file is shorter than its 8-byte header length".into()))?;
        let header_len = u64::from_le_bytes(len_buf);
        if header_len > MAX_HEADER || 8 + header_len > file_len {
            return Err(corrupt(format!(
                "header length {header_len} does not fit the file"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        f.read_exact(&mut header)
            .map_err(|e| corrupt(format!("cannot read header: {e}")))?;
        let raw: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| corrupt(format!("header is not valid JSON: {e}")))?;
        let data_start = 8 + header_len;
        let mut tensors = HashMap::with_capacity(raw.len());
        for (name, value) in raw {
            if name == "__metadata__" {
                continue;
            }
            let entry: RawEntry = serde_json::from_value(value)
                .map_err(|e| corrupt(format!("bad entry for {name}: {e}")))?;
            let [begin, end] = entry.data_offsets;
            let numel: usize = entry.shape.iter().product();
            let Some(dtype) = DType::parse(&entry.dtype) else {
                // Unsupported dtypes are only an error if the tensor is used; keep a marker.
                tensors.insert(
                    name.clone(),
                    TensorInfo {
                        dtype: DType::F32,
                        shape: entry.shape,
                        offset: u64::MAX,
                        length: 0,
                    },
                );
                tracing::debug!(tensor = %name, dtype = %entry.dtype, "unsupported dtype in checkpoint");
                continue;
            };
            if end < begin
                || data_start + end > file_len
                || (end - begin) != (numel * dtype.size()) as u64
            {
                return Err(corrupt(format!(
                    "tensor {name}: byte range {begin}..{end} does not match shape {:?} {} or the file size",
                    entry.shape, entry.dtype
                )));
            }
            tensors.insert(
                name,
                TensorInfo {
                    dtype,
                    shape: entry.shape,
                    offset: data_start + begin,
                    length: end - begin,
                },
            );
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            file_name,
            tensors,
        })
    }

    /// Path of the weights file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file_name)
    }

    /// Looks a tensor up and checks its shape.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<&TensorInfo, ModelError> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        if info.offset == u64::MAX {
            return Err(ModelError::DType {
                name: name.to_string(),
            });
        }
        if info.shape != expected {
            return Err(ModelError::Shape {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        Ok(info)
    }

    /// The F32 data of a tensor with the expected shape: in place when stored as F32, converted otherwise.
    pub fn weight(&self, name: &str, expected: &[usize]) -> Result<WeightData, ModelError> {
        let info = self.get(name, expected)?;
        match info.dtype {
            DType::F32 => Ok(WeightData::External {
                file_name: self.file_name.clone(),
                offset: info.offset,
                length: info.length,
            }),
            _ => Ok(WeightData::Owned(self.read_f32(name, info)?)),
        }
    }

    /// Reads a tensor's values as F32 (converting F16/BF16).
    pub fn read_f32_checked(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        let info = self.get(name, expected)?;
        self.read_f32(name, info)
    }

    fn read_f32(&self, name: &str, info: &TensorInfo) -> Result<Vec<f32>, ModelError> {
        use std::io::{Seek, SeekFrom};
        let path = self.path();
        let mut f = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        f.seek(SeekFrom::Start(info.offset))
            .map_err(|e| ModelError::io(&path, e))?;
        let mut bytes = vec![0u8; info.length as usize];
        f.read_exact(&mut bytes).map_err(|e| {
            ModelError::Safetensors(format!(
                "{}: cannot read tensor {name}: {e}",
                path.display()
            ))
        })?;
        Ok(match info.dtype {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        })
    }
}

//! `ModelError`: why a model directory cannot be loaded or used.

use std::path::{Path, PathBuf};

/// Errors from loading or validating a model directory.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("missing model file {0}")]
    MissingFile(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("invalid checkpoint: {0}")]
    Safetensors(String),
    #[error("checkpoint has no tensor {0}")]
    MissingTensor(String),
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor {name} has an unsupported dtype (F32, F16 and BF16 are supported)")]
    DType { name: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

impl ModelError {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::NotFound {
            ModelError::MissingFile(path.to_path_buf())
        } else {
            ModelError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    }

    /// Stable snake_case name for APIs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelError::MissingFile(_) => "model_missing_file",
            ModelError::Io { .. } => "model_io",
            ModelError::Config(_) => "model_config",
            ModelError::Safetensors(_) => "model_checkpoint",
            ModelError::MissingTensor(_) => "model_missing_tensor",
            ModelError::Shape { .. } => "model_tensor_shape",
            ModelError::DType { .. } => "model_tensor_dtype",
            ModelError::Tokenizer(_) => "model_tokenizer",
        }
    }
}

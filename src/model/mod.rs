//! The OWLv2 model as data: configuration, checkpoint index, tokenizer and the native ONNX graphs
//! built from them. Nothing here runs inference (that is `crate::backend`).

pub mod checkpoint;
pub mod config;
mod error;
pub mod graphs;
pub mod quant;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use checkpoint::Checkpoint;
pub use config::OwlConfig;
pub use error::ModelError;
pub use tokenizer::QueryTokenizer;

/// A model directory, validated: config, checkpoint index and tokenizer.
#[derive(Debug)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub config: OwlConfig,
    pub checkpoint: Checkpoint,
}

impl ModelDir {
    /// Opens and validates `dir` (config files and safetensors header; weights are not read).
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::MissingFile(dir.to_path_buf()));
        }
        let config = OwlConfig::from_dir(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        Ok(ModelDir {
            dir: dir.to_path_buf(),
            config,
            checkpoint,
        })
    }
}

//! The pipeline's error type (its own file: `plan` and `mod.rs` both use it).

use crate::backend::BackendError;
use crate::model::tokenizer::QueryError;

/// Errors of running the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// An exemplar image that cannot be a query (its box outside the image or empty).
    #[error("{0}")]
    Exemplar(String),
}

impl PipelineError {
    /// Stable snake_case name for APIs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineError::Query(e) => e.kind(),
            PipelineError::Backend(e) => e.kind(),
            PipelineError::Exemplar(_) => "invalid_exemplar",
        }
    }
}

//! `DetectError`: why one detection was not answered. Typed for the service's callers; the server
//! maps it to an HTTP status (`server::error`), the metrics use `kind()` as the outcome label.

use crate::backend::BackendError;
use crate::model::tokenizer::QueryError;
use crate::pipeline::PipelineError;
use crate::preprocess::ImageError;

/// Why a detection failed. Cloned to every request of a batch that fails as a whole.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum DetectError {
    /// The query list breaks a rule, or a query cannot be tokenized.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// Threshold or NMS value out of range.
    #[error("{0}")]
    InvalidParameter(String),
    /// The image is refused (limits, format, decoding).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Admission: every queue slot is taken.
    #[error("too many requests in flight; retry shortly")]
    QueueFull,
    /// The request's deadline passed.
    #[error("request took longer than {0} ms")]
    Timeout(u64),
    /// The worker has stopped (the daemon is shutting down).
    #[error("the inference worker has stopped")]
    Stopped,
    /// ONNX Runtime failed on the batch.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A bug or a lost task, never the client's fault.
    #[error("{0}")]
    Internal(String),
}

impl From<PipelineError> for DetectError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Query(q) => DetectError::Query(q),
            PipelineError::Backend(b) => DetectError::Backend(b),
            PipelineError::Exemplar(m) => DetectError::InvalidParameter(m),
        }
    }
}

impl DetectError {
    /// Stable snake_case name for APIs and metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            DetectError::Query(e) => e.kind(),
            DetectError::InvalidParameter(_) => "invalid_parameter",
            DetectError::Image(e) => e.kind(),
            DetectError::QueueFull => "queue_full",
            DetectError::Timeout(_) => "timeout",
            DetectError::Stopped => "shutting_down",
            DetectError::Backend(e) => e.kind(),
            DetectError::Internal(_) => "internal",
        }
    }
}

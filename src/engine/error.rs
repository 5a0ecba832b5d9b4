//! `EngineError`: why no engine could be built for a model.

use crate::backend::BackendError;
use crate::model::ModelError;

/// Why an engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model itself is unusable: no provider would do better.
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A part of the cache key cannot be determined (the engine is then built in memory).
    #[error("{0}")]
    Key(String),
    #[error("no backend could load the model: {0}")]
    NoBackend(String),
}

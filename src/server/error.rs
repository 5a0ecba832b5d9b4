//! The API error shape: HTTP status, `{"error": {"kind", "message"}}`, optional `Retry-After`.

use serde_json::json;

use crate::service::DetectError;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub(crate) fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, kind, message)
    }

    /// 503 with `Retry-After`.
    pub(crate) fn unavailable(
        kind: &'static str,
        message: impl Into<String>,
        retry_after: u32,
    ) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(503, kind, message)
        }
    }

    pub(crate) fn body(&self) -> String {
        json!({"error": {"kind": self.kind, "message": self.message}}).to_string()
    }
}

impl From<&DetectError> for ApiError {
    fn from(e: &DetectError) -> Self {
        let (status, retry_after) = match e {
            DetectError::Image(i) if i.is_too_large() => (413, None),
            DetectError::Image(_) | DetectError::Query(_) | DetectError::InvalidParameter(_) => {
                (400, None)
            }
            DetectError::QueueFull | DetectError::Stopped => (503, Some(1)),
            DetectError::Timeout(_) => (504, None),
            DetectError::Backend(_) | DetectError::Internal(_) => (500, None),
        };
        ApiError {
            retry_after,
            ..ApiError::new(status, e.kind(), e.to_string())
        }
    }
}

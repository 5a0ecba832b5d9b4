//! The handlers' kit: JSON and error responses, strict query strings and numbers, bounded bodies,
//! the JSON check, `query_images` entries, the ready service, and `blocking` for handler work that
//! must not run on the async threads. Imports no handler.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use super::body::Body;
use super::error::ApiError;
use super::state::{AppState, Phase};
use crate::service::{DetectService, ExemplarInput};

pub(crate) type Resp = Response<Body>;

pub(crate) fn json_response(status: u16, body: String) -> Resp {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(crate) fn error_response(e: &ApiError) -> Resp {
    let mut r = json_response(e.status, e.body());
    if let Some(s) = e.retry_after {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

pub(crate) fn bad(kind: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(kind, message)
}

/// Percent-decodes one query-string component strictly: `+` is a space, every `%` starts two hex
/// digits, the result is UTF-8 without control characters (which would forge log lines).
fn decode_component(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        {
            return Err(bad(
                "invalid_query_string",
                format!("invalid percent escape at byte {i} of the query string"),
            ));
        }
    }
    let plus = s.replace('+', " ");
    let decoded = percent_decode_str(&plus)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| {
            bad(
                "invalid_query_string",
                "the query string is not valid UTF-8 after percent-decoding",
            )
        })?;
    if decoded.chars().any(char::is_control) {
        return Err(bad(
            "invalid_query_string",
            "the query string contains control characters",
        ));
    }
    Ok(decoded)
}

pub(crate) fn parse_number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ApiError> {
    // Rust's parsers take a leading '+' (`since=%2B5`); the API's numbers are written plainly.
    let plain = !v.starts_with('+');
    plain.then(|| v.parse::<T>().ok()).flatten().ok_or_else(|| {
        bad(
            "invalid_parameter",
            format!("{name}={v:?} is not a valid number"),
        )
    })
}

/// The query string's `key=value` pairs, each strictly percent-decoded.
pub(crate) fn query_pairs(q: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    q.unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode_component(k)?, decode_component(v)?))
        })
        .collect()
}

/// One `query_images` entry (in `/v1/detect` and in query sets).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JsonExemplar {
    image_base64: String,
    /// `[x0, y0, x1, y1]` in the exemplar's pixels.
    #[serde(rename = "box")]
    bbox: Option<[f32; 4]>,
    label: Option<String>,
    /// A counter-example (see `ExemplarInput::negative`).
    #[serde(default)]
    negative: bool,
}

impl JsonExemplar {
    /// The `n`-th entry as the service's input (its label is checked there, with the queries).
    pub(crate) fn into_input(self, n: usize) -> Result<ExemplarInput, ApiError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.image_base64.as_bytes())
            .map_err(|e| {
                bad(
                    "invalid_base64",
                    format!("query_images[{n}].image_base64 is not valid base64: {e}"),
                )
            })?;
        Ok(ExemplarInput {
            image: Bytes::from(raw),
            bbox: self.bbox,
            label: self.label,
            negative: self.negative,
        })
    }
}

/// Reads the whole body (taking it out of `body`), refusing one over `max` bytes.
pub(crate) async fn read_body(
    headers: &hyper::HeaderMap,
    body: &mut Option<Incoming>,
    max: usize,
) -> Result<Bytes, ApiError> {
    let too_large = |n: String| {
        ApiError::new(
            413,
            "body_too_large",
            format!("request body {n} exceeds the limit of {max} bytes"),
        )
    };
    if let Some(len) = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max as u64 {
            return Err(too_large(format!("of {len} bytes")));
        }
    }
    let Some(incoming) = body.take() else {
        return Err(bad("body_read_failed", "the request body was already read"));
    };
    match Limited::new(incoming, max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(too_large(format!("of more than {max} bytes")))
        }
        Err(e) => Err(bad(
            "body_read_failed",
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// The service, or why this request cannot be served now.
pub(crate) fn ready_service(st: &AppState) -> Result<&DetectService, ApiError> {
    let service = st.service.get();
    match (st.phase(), service) {
        (Phase::Ready, Some(s)) => Ok(s),
        (Phase::Stopping, _) => Err(ApiError::unavailable(
            "shutting_down",
            "the daemon is shutting down",
            1,
        )),
        (Phase::Failed, _) => Err(ApiError::unavailable(
            "not_ready",
            "the model failed to load",
            30,
        )),
        _ => Err(ApiError::unavailable(
            "not_ready",
            "the model is still loading",
            5,
        )),
    }
}

/// Runs blocking work (file writes, hashing, encoding) on the blocking pool; a task that panicked
/// is a 500 `internal` saying "`what` failed".
pub(crate) async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(500, "internal", format!("{what} failed: {e}")))
}

/// Refuses a body that is not JSON (`curl -d` sends application/x-www-form-urlencoded unless
/// told otherwise: read as JSON too).
pub(crate) fn require_json(req: &Parts) -> Result<(), ApiError> {
    let ctype = media_type(req);
    if matches!(
        ctype.as_str(),
        "" | "application/json" | "application/x-www-form-urlencoded"
    ) {
        return Ok(());
    }
    Err(ApiError::new(
        415,
        "unsupported_media_type",
        format!("content type {ctype:?} is not supported (application/json)"),
    ))
}

/// The request's media type, lower-case, without parameters.
pub(crate) fn media_type(req: &Parts) -> String {
    req.headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// A follower whose connection took no line for this long is let go.
pub(crate) const FOLLOWER_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A place among the events followers (`max_followers`, at most half of `max_connections`), or
/// 429 `too_many_followers`.
pub(crate) fn follower_permit(
    st: &AppState,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    st.followers.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            429,
            "too_many_followers",
            format!(
                "{} events followers are connected already (max_followers, at most half of max_connections)",
                st.config.follower_limit()
            ),
        )
    })
}

/// The NDJSON response whose body is fed by `rx` (holding its connection's in-flight mark).
pub(crate) fn ndjson_response(
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    guard: super::body::Guard,
) -> Resp {
    let mut r = Response::new(Body::stream(rx, guard));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}

/// Sends one line to a follower within `FOLLOWER_SEND_TIMEOUT`; false when it is gone or stuck.
pub(crate) async fn send_line(tx: &tokio::sync::mpsc::Sender<Bytes>, line: Bytes) -> bool {
    matches!(
        tokio::time::timeout(FOLLOWER_SEND_TIMEOUT, tx.send(line)).await,
        Ok(Ok(()))
    )
}

/// Lets a stuck follower go: its connection loses its in-flight mark, so the connection cap can
/// evict it.
pub(crate) fn let_go(guard: &super::body::Guard) {
    if let Ok(mut g) = guard.lock() {
        g.take();
    }
}

/// A JPEG answer that is never cached (a snapshot).
pub(crate) fn jpeg_response(jpeg: Vec<u8>) -> Resp {
    let mut r = Response::new(Body::full(jpeg));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}

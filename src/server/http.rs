//! HTTP handlers for both listeners: the detection API (Unix socket only) and the health, status
//! and metrics endpoints (both). Health handlers only read shared state, so probes never wait
//! behind inference.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::body::Body;
use super::error::ApiError;
use super::state::{AppState, Phase};
use crate::postprocess::Detection;
use crate::service::{
    DetectError, DetectRequest, DetectService, ExemplarInput, ImageInput, Timing,
};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    /// Unix-socket client with its credentials (SO_PEERCRED).
    Unix { uid: Option<u32>, pid: Option<i32> },
    /// Loopback TCP client.
    Tcp,
}

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

/// Entry point for every request on either listener.
pub async fn handle(
    req: Request<Incoming>,
    st: Arc<AppState>,
    peer: Peer,
) -> Result<Resp, Infallible> {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let resp = route(&parts, &mut body, &st, peer).await;
    if let Some(unread) = body {
        // Answered before the body was read (a bad URL, not ready, 404…): read and discard it
        // first, within bounds, so that an ordinary client still sending it can read the answer.
        drain(unread, st.config.max_body_bytes, DRAIN_TIME).await;
    }
    let (method, path) = (&parts.method, parts.uri.path());
    let status = resp.status().as_u16();
    match peer {
        Peer::Unix { uid, pid } => {
            tracing::info!(%method, %path, status, uid, pid, ms = start.elapsed().as_secs_f64() * 1e3, "request")
        }
        Peer::Tcp => {
            tracing::debug!(%method, %path, status, ms = start.elapsed().as_secs_f64() * 1e3, "request")
        }
    }
    Ok(resp)
}

/// How long an unread request body is drained before the connection is closed.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads and discards `body`, up to `max` bytes and for at most `limit`.
async fn drain(mut body: Incoming, max: usize, limit: Duration) {
    let mut seen = 0usize;
    let _ = tokio::time::timeout(limit, async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > max {
                break;
            }
        }
    })
    .await;
}

async fn route(req: &Parts, body: &mut Option<Incoming>, st: &Arc<AppState>, peer: Peer) -> Resp {
    let path = req.uri.path();
    match (&req.method, path) {
        (&Method::GET, "/livez") => json_response(200, json!({"status": "alive"}).to_string()),
        (&Method::GET, "/readyz") => {
            let ready = st.phase() == Phase::Ready;
            json_response(
                if ready { 200 } else { 503 },
                json!({"ready": ready}).to_string(),
            )
        }
        (&Method::GET, "/api/health") => health(st),
        (&Method::GET, "/api/optimization") => optimization(st),
        (&Method::GET, "/metrics") => {
            let depth = st.queue_depth() as u64;
            let mut text = st.metrics.render(depth);
            if let Some(m) = st.streams.get() {
                m.render_metrics(&mut text);
            }
            let mut r = Response::new(Body::full(text));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (&Method::POST, "/v1/detect") => match peer {
            Peer::Unix { .. } => {
                let started = Instant::now();
                let result = detect(req, body, st, started).await;
                st.metrics
                    .observe_total(started.elapsed().as_secs_f64() * 1e3);
                match result {
                    Ok(body) => {
                        st.metrics.request("ok");
                        json_response(200, body)
                    }
                    Err(e) => {
                        st.metrics.request(e.kind);
                        error_response(&e)
                    }
                }
            }
            Peer::Tcp => error_response(&ApiError::new(
                404,
                "not_found",
                "detection is served on the Unix socket only",
            )),
        },
        (_, p) if p == "/v1/query-sets" || p.starts_with("/v1/query-sets/") => match peer {
            Peer::Unix { .. } => super::query_sets::route(req, body, st).await,
            Peer::Tcp => error_response(&ApiError::new(
                404,
                "not_found",
                "query sets are served on the Unix socket only",
            )),
        },
        (_, p) if p == "/v1/streams" || p.starts_with("/v1/streams/") => match peer {
            Peer::Unix { .. } => super::streams::route(req, body, st).await,
            Peer::Tcp => error_response(&ApiError::new(
                404,
                "not_found",
                "streams are served on the Unix socket only",
            )),
        },
        (
            _,
            "/livez" | "/readyz" | "/api/health" | "/api/optimization" | "/metrics" | "/v1/detect",
        ) => error_response(&ApiError::new(
            405,
            "method_not_allowed",
            format!("{} is not allowed on {path}", req.method),
        )),
        _ => error_response(&ApiError::new(
            404,
            "not_found",
            format!("no route for {path}"),
        )),
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Starting => "starting",
        Phase::Ready => "healthy",
        Phase::Stopping => "stopping",
        Phase::Failed => "failed",
    }
}

fn health(st: &AppState) -> Resp {
    let p = st.phase();
    let e = st.engine();
    let body = json!({
        "status": phase_name(p),
        "model_loaded": st.service.get().is_some(),
        "gpu_available": e.gpu_available,
        "optimization": {
            "backend": e.backend,
            "speedup_estimate": e.speedup_estimate,
            "cached": e.cached,
        },
        "status_line": st.status_line.lock().map(|s| s.clone()).unwrap_or_default(),
        "streams": st.streams.get().map(|m| m.summary()).unwrap_or_default(),
    });
    json_response(if p == Phase::Ready { 200 } else { 503 }, body.to_string())
}

fn optimization(st: &AppState) -> Resp {
    let e = st.engine();
    let c = &st.config;
    let body = json!({
        "model_name": e.model_name,
        "model_dir": e.model_dir,
        "device": e.device,
        "gpu_available": e.gpu_available,
        "optimization": {
            "backend": e.backend,
            "optimization_time": e.optimization_time,
            "speedup_estimate": e.speedup_estimate,
            "cached": e.cached,
            "fallbacks": e.fallbacks,
        },
        "settings": {
            "enable_optimization": c.enable_optimization,
            "backend_preference": c.optimization_backend,
            "tensorrt_precision": c.tensorrt_precision,
            "torch_compile_mode": c.torch_compile_mode,
        },
        "onnxruntime_version": e.onnxruntime_version,
        "onnxruntime_path": e.onnxruntime_path,
        "gpu": e.gpu,
        "image_size": e.image_size,
        "warmup_ms": e.warmup_ms,
        "status": phase_name(st.phase()),
    });
    json_response(200, body.to_string())
}

fn bad(kind: &'static str, message: impl Into<String>) -> ApiError {
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

/// Parameters from the URL.
#[derive(Debug, Default)]
struct UrlParams {
    queries: Vec<String>,
    query_set: Option<String>,
    threshold: Option<f32>,
    nms: Option<f32>,
    width: Option<u32>,
    height: Option<u32>,
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

fn parse_url(q: Option<&str>) -> Result<UrlParams, ApiError> {
    let mut p = UrlParams::default();
    for (k, v) in query_pairs(q)? {
        match k.as_str() {
            "query" => p.queries.push(v),
            "query_set" => p.query_set = Some(v),
            "threshold" => p.threshold = Some(parse_number("threshold", &v)?),
            "nms" => p.nms = Some(parse_number("nms", &v)?),
            "width" => p.width = Some(parse_number("width", &v)?),
            "height" => p.height = Some(parse_number("height", &v)?),
            other => {
                return Err(bad(
                    "invalid_parameter",
                    format!("unknown parameter {other:?}"),
                ))
            }
        }
    }
    Ok(p)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    image_base64: String,
    #[serde(default)]
    queries: Vec<String>,
    /// Example images as queries (query by example).
    #[serde(default)]
    query_images: Vec<JsonExemplar>,
    /// A saved query set, by name.
    query_set: Option<String>,
    threshold: Option<f32>,
    nms: Option<f32>,
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

/// Parses a `/v1/detect` request (URL, content type, body) into the service's request.
async fn parse_detect(
    req: &Parts,
    body: &mut Option<Incoming>,
    st: &AppState,
    received: Instant,
) -> Result<DetectRequest, ApiError> {
    let max_body = st.config.max_body_bytes;
    let mut url = parse_url(req.uri.query())?;
    let mut set_name = url.query_set.take();
    let ctype = media_type(req);
    let body = read_body(&req.headers, body, max_body).await?;
    let mut exemplars = Vec::new();
    let (image, queries, threshold, nms) = match ctype.as_str() {
        "application/json" => {
            let j: JsonRequest = serde_json::from_slice(&body).map_err(|e| bad("invalid_json", format!("malformed JSON body: {e}")))?;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(j.image_base64.as_bytes())
                .map_err(|e| bad("invalid_base64", format!("image_base64 is not valid base64: {e}")))?;
            let mut queries = url.queries;
            queries.extend(j.queries);
            for (n, e) in j.query_images.into_iter().enumerate() {
                exemplars.push(e.into_input(n)?);
            }
            if j.query_set.is_some() {
                set_name = j.query_set;
            }
            (ImageInput::Encoded(Bytes::from(raw)), queries, j.threshold.or(url.threshold), j.nms.or(url.nms))
        }
        "application/x-raw-rgb" => {
            let (Some(width), Some(height)) = (url.width, url.height) else {
                return Err(bad("invalid_parameter", "application/x-raw-rgb needs width= and height= parameters"));
            };
            (ImageInput::Raw { width, height, data: body }, url.queries, url.threshold, url.nms)
        }
        // curl --data-binary sends application/x-www-form-urlencoded by default: treat it as image bytes.
        "" | "image/jpeg" | "image/png" | "image/webp" | "image/bmp" | "application/octet-stream" | "application/x-www-form-urlencoded" => {
            (ImageInput::Encoded(body), url.queries, url.threshold, url.nms)
        }
        other => {
            return Err(ApiError::new(
                415,
                "unsupported_media_type",
                format!("content type {other:?} is not supported (image/*, application/octet-stream, application/json, application/x-raw-rgb)"),
            ))
        }
    };
    let query_set = match set_name {
        Some(name) => Some(st.query_sets.get(&name).ok_or_else(|| {
            bad(
                "unknown_query_set",
                format!("no query set named {name:?} (PUT /v1/query-sets/{{name}} saves one)"),
            )
        })?),
        None => None,
    };
    Ok(DetectRequest {
        image,
        queries,
        exemplars,
        query_set,
        threshold,
        nms,
        received,
    })
}

/// `/v1/detect`: parse within the request's deadline, then hand the request to the service.
async fn detect(
    req: &Parts,
    body: &mut Option<Incoming>,
    st: &AppState,
    started: Instant,
) -> Result<String, ApiError> {
    let service = ready_service(st)?;
    let timeout = service.config().request_timeout;
    let deadline = tokio::time::Instant::from_std(started + timeout);
    let request = tokio::time::timeout_at(deadline, parse_detect(req, body, st, started))
        .await
        .map_err(|_| ApiError::from(&DetectError::Timeout(timeout.as_millis() as u64)))??;
    let out = service
        .detect(request)
        .await
        .map_err(|e| ApiError::from(&e))?;
    let resp = DetectResponse {
        width: out.width,
        height: out.height,
        detections: &out.detections,
        backend: st.engine().backend,
        batch_size: out.batch_size,
        timing_ms: out.timing_ms,
    };
    serde_json::to_string(&resp)
        .map_err(|e| ApiError::new(500, "internal", format!("cannot encode the response: {e}")))
}

/// The `200` body of `/v1/detect` (detections serialise exactly as `intelligent-video detect`'s).
#[derive(Serialize)]
struct DetectResponse<'a> {
    width: u32,
    height: u32,
    detections: &'a [Detection],
    backend: String,
    batch_size: usize,
    timing_ms: Timing,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_params_decode_strictly() {
        let p = parse_url(Some(
            "query=a+cat&query=red%20forklift&threshold=0.3&nms=0.5",
        ))
        .expect("ok");
        assert_eq!(p.queries, vec!["a cat", "red forklift"]);
        assert_eq!(p.threshold, Some(0.3));
        assert_eq!(p.nms, Some(0.5));
        let e = parse_url(Some("query=%FF%FE")).expect_err("bad utf8");
        assert_eq!(e.kind, "invalid_query_string");
        let e = parse_url(Some("threshold=abc")).expect_err("nan");
        assert_eq!(e.kind, "invalid_parameter");
        let e = parse_url(Some("colour=red")).expect_err("unknown");
        assert!(e.message.contains("colour"));
        for bad in [
            "query=%ZZ",
            "query=a%2",
            "query=%00",
            "query=a%0Ab",
            "query=%1B%5B31m",
        ] {
            let e = parse_url(Some(bad)).expect_err(bad);
            assert_eq!(e.kind, "invalid_query_string", "{bad}");
        }
        let p = parse_url(Some("query=50%25+off")).expect("escaped percent");
        assert_eq!(p.queries, vec!["50% off"]);
    }
}

//! `POST /v1/detect` (Unix socket only): the URL's parameters, the body by content type (image
//! bytes, raw RGB, or JSON with `image_base64`, queries, exemplars and a query set) into a
//! `DetectRequest` within the request's deadline, the service's answer as JSON.

use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::http::request::Parts;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::request::{
    bad, media_type, parse_number, query_pairs, read_body, ready_service, JsonExemplar,
};
use super::state::AppState;
use crate::postprocess::Detection;
use crate::service::{DetectError, DetectRequest, ImageInput, Timing};

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
pub(super) async fn detect(
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

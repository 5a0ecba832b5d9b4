//! The router of both listeners: every request enters at `handle` (logged, an unread body drained
//! before the answer), the Unix-only gate (detection, query sets, streams) is applied once, then
//! the route table hands it to its resource's module (`detect`, `health`, `query_sets`,
//! `streams`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Method, Request};

use super::error::ApiError;
use super::request::{error_response, json_response, Resp};
use super::state::AppState;
use super::{detect, health};

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Peer {
    /// Unix-socket client with its credentials (SO_PEERCRED).
    Unix { uid: Option<u32>, pid: Option<i32> },
    /// Loopback TCP client.
    Tcp,
}

/// Entry point for every request on either listener.
pub(crate) async fn handle(
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

/// Paths served on the Unix socket only, and what the health listener answers for them.
fn unix_only(path: &str) -> Option<&'static str> {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    if path == "/v1/detect" {
        Some("detection is served on the Unix socket only")
    } else if under("/v1/query-sets") {
        Some("query sets are served on the Unix socket only")
    } else if under("/v1/streams") {
        Some("streams are served on the Unix socket only")
    } else if under("/v1/events") {
        Some("events are served on the Unix socket only")
    } else {
        None
    }
}

/// The route table; the Unix-only gate is applied once, before it.
async fn route(req: &Parts, body: &mut Option<Incoming>, st: &Arc<AppState>, peer: Peer) -> Resp {
    let path = req.uri.path();
    if let (Peer::Tcp, Some(why)) = (peer, unix_only(path)) {
        return error_response(&ApiError::new(404, "not_found", why));
    }
    match (&req.method, path) {
        (&Method::GET, "/livez") => health::livez(),
        (&Method::GET, "/readyz") => health::readyz(st),
        (&Method::GET, "/api/health") => health::health(st),
        (&Method::GET, "/api/optimization") => health::optimization(st),
        (&Method::GET, "/metrics") => health::metrics(st),
        (&Method::POST, "/v1/detect") => {
            let started = Instant::now();
            let result = detect::detect(req, body, st, started).await;
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
        (_, p) if p == "/v1/query-sets" || p.starts_with("/v1/query-sets/") => {
            super::query_sets::route(req, body, st).await
        }
        (_, p) if p == "/v1/streams" || p.starts_with("/v1/streams/") => {
            super::streams::route(req, body, st).await
        }
        (_, p) if p == "/v1/events" || p.starts_with("/v1/events/") => {
            super::events::route(req, st).await
        }
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

//! The router of both listeners: every request enters at `handle` (logged, an unread body drained
//! before the answer), the Unix-only gate (detection, query sets, streams) and the cross-site gate
//! (a browser page of another origin cannot change anything, see [`cross_site`]) are applied
//! once, then the route table hands it to its resource's module (`detect`, `health`,
//! `query_sets`, `streams`).

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
    } else if path == "/api/doctor" {
        Some("doctor's checks are served on the Unix socket only (or run `intelligent-video doctor`)")
    } else if super::console::is_console(path) {
        Some("the web console is served on the Unix socket only: run `intelligent-video ui`, or `ssh -L 8080:/run/intelligent-video.sock host`")
    } else {
        None
    }
}

/// Why a request that would change or compute something comes from a browser page of another
/// origin, if it does: a socket forwarded to a local TCP port (`ssh -L`, `intelligent-video ui`)
/// is reachable from every page the browser opens, and such a page may send requests but must not
/// act through them. Browsers mark those requests: `Sec-Fetch-Site: cross-site|same-site`, or an
/// `Origin` whose host and port differ from `Host` (`null` included). Requests without these
/// headers (curl, programs) and safe methods (GET, HEAD, OPTIONS) pass.
pub(crate) fn cross_site(req: &Parts) -> Option<String> {
    if matches!(req.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let header = |name: &str| {
        req.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{fffd}").trim().to_ascii_lowercase())
    };
    if let Some(site) = header("sec-fetch-site") {
        if site == "cross-site" || site == "same-site" {
            return Some(format!(
                "{} from a page of another site (Sec-Fetch-Site: {site}) is refused",
                req.method
            ));
        }
    }
    let origin = header("origin")?;
    let host = header("host").unwrap_or_default();
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'))
        .unwrap_or("");
    if origin_host.is_empty() || origin_host != host {
        return Some(format!(
            "{} from a page of origin {origin:?} to host {host:?} is refused (cross-origin)",
            req.method
        ));
    }
    None
}

/// Why a browser's request names a host that is not this machine, if it does: a page whose DNS
/// name was made to point at 127.0.0.1 (DNS rebinding) is same-origin to itself, so the
/// cross-site gate cannot see it, but its `Host` is its own name. Browser requests (those with
/// `Sec-Fetch-*` headers) must name `localhost`, a `*.localhost` name or an IP address.
pub(crate) fn foreign_host(req: &Parts) -> Option<String> {
    let browser = req
        .headers
        .keys()
        .any(|k| k.as_str().starts_with("sec-fetch-"));
    if !browser {
        return None;
    }
    let host = req
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let local = match host.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            let name = host.rsplit_once(':').map_or(host.as_str(), |(n, _)| n);
            name == "localhost"
                || name.ends_with(".localhost")
                || name.parse::<std::net::Ipv4Addr>().is_ok()
        }
    };
    (!local).then(|| {
        format!(
            "a browser request to host {host:?} is refused: open the console as localhost or by IP address"
        )
    })
}

/// The route table; the Unix-only and cross-site gates are applied once, before it.
async fn route(req: &Parts, body: &mut Option<Incoming>, st: &Arc<AppState>, peer: Peer) -> Resp {
    let path = req.uri.path();
    if let (Peer::Tcp, Some(why)) = (peer, unix_only(path)) {
        return error_response(&ApiError::new(404, "not_found", why));
    }
    if let Some(why) = cross_site(req).or_else(|| foreign_host(req)) {
        return error_response(&ApiError::new(403, "cross_origin", why));
    }
    if super::console::is_console(path) {
        return super::console::serve(req);
    }
    match (&req.method, path) {
        (&Method::GET, "/livez") => health::livez(),
        (&Method::GET, "/readyz") => health::readyz(st),
        (&Method::GET, "/api/health") => health::health(st),
        (&Method::GET, "/api/optimization") => health::optimization(st),
        (&Method::GET, "/metrics") => health::metrics(st),
        (&Method::GET, "/api/doctor") => super::doctor::doctor().await,
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
            "/livez" | "/readyz" | "/api/health" | "/api/optimization" | "/metrics" | "/v1/detect"
            | "/api/doctor",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method(method).uri("/v1/streams/cam");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    #[test]
    fn pages_of_other_origins_cannot_change_anything() {
        let refused = [
            vec![
                ("host", "localhost:8080"),
                ("origin", "http://evil.example"),
            ],
            vec![
                ("host", "localhost:8080"),
                ("origin", "http://localhost:9999"),
            ],
            vec![("host", "localhost:8080"), ("origin", "null")],
            vec![("origin", "http://localhost:8080")],
            vec![("host", "localhost:8080"), ("sec-fetch-site", "cross-site")],
            vec![("host", "localhost:8080"), ("sec-fetch-site", "same-site")],
        ];
        for h in &refused {
            for m in [Method::POST, Method::PUT, Method::DELETE] {
                assert!(cross_site(&parts(m, h)).is_some(), "{h:?}");
            }
        }
        let passed = [
            vec![],
            vec![("host", "localhost")],
            vec![
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
            ],
            vec![
                ("host", "LOCALHOST:8080"),
                ("origin", "http://localhost:8080/"),
            ],
            vec![
                ("host", "localhost:8080"),
                ("sec-fetch-site", "same-origin"),
            ],
            vec![("host", "localhost:8080"), ("sec-fetch-site", "none")],
        ];
        for h in &passed {
            assert_eq!(cross_site(&parts(Method::PUT, h)), None, "{h:?}");
        }
        // Reading is not acting.
        assert_eq!(cross_site(&parts(Method::GET, &refused[0])), None);
    }

    #[test]
    fn browsers_must_name_this_machine() {
        let mode = ("sec-fetch-mode", "cors");
        for host in [
            "localhost:8080",
            "app.localhost",
            "127.0.0.1:9",
            "[::1]:8080",
            "10.0.0.5",
        ] {
            let p = parts(Method::GET, &[("host", host), mode]);
            assert_eq!(foreign_host(&p), None, "{host}");
        }
        for host in [
            "evil.example:8080",
            "evil.example",
            "",
            "[evil]:1",
            "localhost.evil.example",
        ] {
            let p = parts(Method::GET, &[("host", host), mode]);
            assert!(foreign_host(&p).is_some(), "{host}");
        }
        // Programs send no Sec-Fetch headers and may name any host.
        assert_eq!(
            foreign_host(&parts(Method::GET, &[("host", "spark")])),
            None
        );
    }
}

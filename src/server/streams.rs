//! `/v1/streams` handlers (Unix socket only): list, get, put, delete, follow a stream's events
//! (NDJSON, `?since=N` replays), and its latest snapshot as JPEG (`?raw=1` without drawing).
//! Stream logic is in `crate::video`; this module maps requests and errors.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Method, Response};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::body::{Body, Guard};
use super::error::ApiError;
use super::request::{
    blocking, error_response, follower_permit, jpeg_response, json_response, let_go,
    ndjson_response, parse_number, query_pairs, read_body, ready_service, require_json, send_line,
    Resp,
};
use super::state::AppState;
use crate::spec::{check_name, SpecError, StreamBody};
use crate::video::events::{self, StateEvent, Subscription};
use crate::video::manager::{ManagerError, Put, StreamManager, StreamStatus};

/// Lines waiting for a follower's connection.
const FOLLOWER_QUEUE: usize = 64;
/// Biggest `PUT /v1/streams/{name}` body.
const MAX_STREAM_BODY: usize = 256 * 1024;

enum Target<'a> {
    List,
    Item(&'a str),
    Events(&'a str),
    Snapshot(&'a str),
    Live(&'a str),
}

fn target(path: &str) -> Option<Target<'_>> {
    let rest = path.strip_prefix("/v1/streams")?;
    if rest.is_empty() || rest == "/" {
        return Some(Target::List);
    }
    let rest = rest.strip_prefix('/')?;
    match rest.split_once('/') {
        None => Some(Target::Item(rest)),
        Some((name, "events")) => Some(Target::Events(name)),
        Some((name, "snapshot.jpg")) => Some(Target::Snapshot(name)),
        Some((name, "live.mjpeg")) => Some(Target::Live(name)),
        Some(_) => None,
    }
}

/// Routes one `/v1/streams…` request.
pub(crate) async fn route(req: &Parts, body: &mut Option<Incoming>, st: &Arc<AppState>) -> Resp {
    match handle(req, body, st).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn handle(
    req: &Parts,
    body: &mut Option<Incoming>,
    st: &Arc<AppState>,
) -> Result<Resp, ApiError> {
    let path = req.uri.path();
    let Some(t) = target(path) else {
        return Err(ApiError::new(
            404,
            "not_found",
            format!("no route for {path}"),
        ));
    };
    ready_service(st)?;
    let m = st
        .streams
        .get()
        .ok_or_else(|| ApiError::unavailable("not_ready", "streams are not started yet", 1))?;
    let not_allowed = || {
        ApiError::new(
            405,
            "method_not_allowed",
            format!("{} is not allowed on {path}", req.method),
        )
    };
    match (t, &req.method) {
        (Target::List, &Method::GET) => {
            Ok(json_response(200, json!({"streams": m.list()}).to_string()))
        }
        (Target::Item(name), &Method::GET) => {
            let s = m.status_of(name).ok_or_else(|| not_found(name))?;
            Ok(json_response(200, json!(s).to_string()))
        }
        (Target::Item(name), &Method::PUT) => put(req, body, m, name).await,
        (Target::Item(name), &Method::PATCH) => patch(req, body, m, name).await,
        (Target::Item(name), &Method::DELETE) => {
            let (m, name_owned) = (m.clone(), name.to_string());
            blocking("stream delete", move || m.delete(&name_owned))
                .await?
                .map_err(|e| manager_error(&e))?;
            let mut r = Response::new(Body::full(Bytes::new()));
            *r.status_mut() = hyper::StatusCode::NO_CONTENT;
            Ok(r)
        }
        (Target::Events(name), &Method::GET) => follow(req, st, m, name),
        (Target::Snapshot(name), &Method::GET) => snapshot(req, m, name).await,
        (Target::Live(name), &Method::GET) => super::live::live(req, st, m, name),
        _ => Err(not_allowed()),
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(404, "not_found", format!("no stream named {name:?}"))
}

fn manager_error(e: &ManagerError) -> ApiError {
    let msg = e.to_string();
    match e {
        ManagerError::NotFound(_) => ApiError::new(404, "not_found", msg),
        ManagerError::ReadOnly(_) => ApiError::new(409, "read_only", msg),
        ManagerError::TooMany(_) => ApiError::new(409, "too_many_streams", msg),
        ManagerError::Invalid(s) => spec_error(s),
        ManagerError::Persist { .. } => ApiError::new(500, "persist_failed", msg),
        ManagerError::Queries { error, .. } => {
            let e = ApiError::from(error);
            ApiError::new(e.status, e.kind, msg)
        }
    }
}

fn spec_error(e: &SpecError) -> ApiError {
    let kind = match e {
        SpecError::Name(_) => "invalid_stream_name",
        SpecError::Url(_) => "invalid_url",
        SpecError::Queries(_) => "invalid_query",
        SpecError::QuerySet(_) => "unknown_query_set",
        SpecError::Number(_) => "invalid_parameter",
        SpecError::Rules(_) => "invalid_rule",
    };
    ApiError::bad_request(kind, e.to_string())
}

/// `PUT /v1/streams/{name}`: saved (a file write and sync) on the blocking pool; answered with
/// the status the change made, whatever another request does next.
async fn put(
    req: &Parts,
    body: &mut Option<Incoming>,
    m: &Arc<StreamManager>,
    name: &str,
) -> Result<Resp, ApiError> {
    check_name(name).map_err(|e| spec_error(&e))?;
    require_json(req)?;
    let bytes = read_body(&req.headers, body, MAX_STREAM_BODY).await?;
    let (outcome, status) = apply(m, name, serde_json::from_slice(&bytes)).await?;
    let code = match outcome {
        Put::Created => 201,
        Put::Replaced => 200,
    };
    Ok(json_response(code, json!(status).to_string()))
}

/// `PATCH /v1/streams/{name}`: the fields of a JSON object laid over the saved definition (a
/// field set to `null` goes back to its default; `url` may be left out, so a console never sees
/// the camera's credentials), then checked and applied as a `PUT` of the result.
async fn patch(
    req: &Parts,
    body: &mut Option<Incoming>,
    m: &Arc<StreamManager>,
    name: &str,
) -> Result<Resp, ApiError> {
    require_json(req)?;
    let bytes = read_body(&req.headers, body, MAX_STREAM_BODY).await?;
    let changes: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes)
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("a PATCH body is a JSON object: {e}"),
            )
        })?;
    let saved = m.definition(name).ok_or_else(|| not_found(name))?;
    let (_, status) = apply(m, name, serde_json::from_value(merge(saved, changes))).await?;
    Ok(json_response(200, json!(status).to_string()))
}

/// A definition (as parsed from a `PUT` or a merged `PATCH`) saved and started on the blocking
/// pool, with the status the change made.
async fn apply(
    m: &Arc<StreamManager>,
    name: &str,
    parsed: serde_json::Result<StreamBody>,
) -> Result<(Put, StreamStatus), ApiError> {
    let b = parsed.map_err(|e| {
        ApiError::bad_request("invalid_json", format!("malformed stream definition: {e}"))
    })?;
    let (m, spec) = (m.clone(), b.named(name));
    blocking("stream put", move || m.put(spec))
        .await?
        .map_err(|e| manager_error(&e))
}

/// `changes` over `saved` without its name: a `null` removes the field.
fn merge(
    saved: serde_json::Value,
    changes: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    let mut fields = match saved {
        serde_json::Value::Object(o) => o,
        _ => serde_json::Map::new(),
    };
    fields.remove("name");
    for (k, v) in changes {
        if v.is_null() {
            fields.remove(&k);
        } else {
            fields.insert(k, v);
        }
    }
    serde_json::Value::Object(fields)
}

/// `GET /v1/streams/{name}/events[?since=N]`.
fn follow(
    req: &Parts,
    st: &Arc<AppState>,
    m: &StreamManager,
    name: &str,
) -> Result<Resp, ApiError> {
    let mut since = None;
    for (k, v) in query_pairs(req.uri.query())? {
        match k.as_str() {
            "since" => since = Some(parse_number::<u64>("since", &v)?),
            other => {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("unknown parameter {other:?}"),
                ))
            }
        }
    }
    let shared = m.get(name).ok_or_else(|| not_found(name))?;
    let permit = follower_permit(st)?;
    let sub = shared.hub.subscribe(since);
    let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
    let guard = Guard::default();
    let follower = Follower {
        tx,
        stop: m.stopping().clone(),
        name: shared.name.clone(),
        guard: guard.clone(),
        keepalive: Duration::from_millis(st.config.stream_keepalive_ms),
        _permit: permit,
    };
    tokio::spawn(follower.forward(sub));
    Ok(ndjson_response(rx, guard))
}

/// One events follower's feeder.
struct Follower {
    tx: mpsc::Sender<Bytes>,
    stop: CancellationToken,
    name: String,
    guard: Guard,
    /// A line is sent at least this often (a keep-alive when nothing happens): a follower that
    /// closed its connection is noticed at the next write.
    keepalive: Duration,
    /// Its place among `max_followers`.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Follower {
    /// Feeds the follower: the replay, then live events, until the stream ends (finished, failed,
    /// deleted: the body ends after its last state line), the daemon stops, the connection
    /// closes, or the follower falls behind (told so in a last line). A follower that took no
    /// line for `FOLLOWER_SEND_TIMEOUT` is let go: its connection loses its in-flight mark, so the
    /// connection cap can evict it.
    async fn forward(self, sub: Subscription) {
        let Subscription {
            replay,
            mut live,
            mut ended,
        } = sub;
        for line in replay {
            if !send(&self.tx, line).await {
                return self.let_go();
            }
        }
        let mut keepalive = tokio::time::interval(self.keepalive);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.reset();
        loop {
            if *ended.borrow_and_update() {
                // Every line published before the end is already in `live`.
                return self.drain(&mut live).await;
            }
            let next = tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    let _ = self.tx.try_send(state_line(&self.name, "stopping", "the daemon is stopping"));
                    return;
                }
                _ = self.tx.closed() => return,
                r = live.recv() => r,
                _ = ended.changed() => continue,
                _ = keepalive.tick() => Ok(keepalive_line(&self.name)),
            };
            keepalive.reset();
            match next {
                Ok(line) => {
                    if !send(&self.tx, line).await {
                        return self.let_go();
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let msg = format!(
                        "this follower fell {n} events behind and is disconnected; reconnect with ?since="
                    );
                    let _ = self.tx.try_send(state_line(&self.name, "lagged", &msg));
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // Stopping wins over a stream that closed at the same moment.
                    if self.stop.is_cancelled() {
                        let _ = self.tx.try_send(state_line(
                            &self.name,
                            "stopping",
                            "the daemon is stopping",
                        ));
                    }
                    return;
                }
            }
        }
    }

    /// Sends what is left in `live` (the stream has ended), then ends the body.
    async fn drain(&self, live: &mut broadcast::Receiver<Bytes>) {
        while let Ok(line) = live.try_recv() {
            if !send(&self.tx, line).await {
                return self.let_go();
            }
        }
    }

    fn let_go(&self) {
        let_go(&self.guard);
    }
}

async fn send(tx: &mpsc::Sender<Bytes>, line: Bytes) -> bool {
    send_line(tx, line).await
}

/// `{"stream":"cam","keepalive":true}`: nothing happened; the stream runs.
fn keepalive_line(stream: &str) -> Bytes {
    events::line(&json!({"stream": stream, "keepalive": true}))
}

fn state_line(stream: &str, state: &str, message: &str) -> Bytes {
    events::line(&StateEvent {
        stream,
        state,
        message,
    })
}

/// `GET /v1/streams/{name}/snapshot.jpg[?raw=1]`.
async fn snapshot(req: &Parts, m: &StreamManager, name: &str) -> Result<Resp, ApiError> {
    let mut raw = false;
    for (k, v) in query_pairs(req.uri.query())? {
        match (k.as_str(), v.as_str()) {
            ("raw", "1" | "true") => raw = true,
            ("raw", "0" | "false") => raw = false,
            ("raw", other) => {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("raw={other:?} is not 0 or 1"),
                ))
            }
            (other, _) => {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("unknown parameter {other:?}"),
                ))
            }
        }
    }
    let shared = m.get(name).ok_or_else(|| not_found(name))?;
    let snap = shared.snapshot().ok_or_else(|| {
        ApiError::unavailable(
            "no_frame_yet",
            format!("stream {name:?} has no processed frame yet"),
            1,
        )
    })?;
    let jpeg = blocking("snapshot task", move || super::live::render(&snap, raw))
        .await?
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    Ok(jpeg_response(jpeg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(matches!(target("/v1/streams"), Some(Target::List)));
        assert!(matches!(target("/v1/streams/"), Some(Target::List)));
        assert!(matches!(
            target("/v1/streams/cam"),
            Some(Target::Item("cam"))
        ));
        assert!(matches!(
            target("/v1/streams/cam/events"),
            Some(Target::Events("cam"))
        ));
        assert!(matches!(
            target("/v1/streams/cam/snapshot.jpg"),
            Some(Target::Snapshot("cam"))
        ));
        assert!(target("/v1/streams/cam/other").is_none());
        assert!(target("/v1/streamsx").is_none());
    }

    #[test]
    fn a_patch_lays_its_fields_over_the_saved_definition() {
        let saved = json!({"name": "cam", "url": "rtsp://u:secret@cam/1", "queries": ["a cat"],
                           "threshold": 0.4, "max_fps": 5.0});
        let changes = json!({"queries": ["a dog"], "threshold": null, "zones": {}});
        let serde_json::Value::Object(changes) = changes else {
            panic!("an object")
        };
        assert_eq!(
            merge(saved, changes),
            json!({"url": "rtsp://u:secret@cam/1", "queries": ["a dog"], "max_fps": 5.0, "zones": {}})
        );
        let b: Result<StreamBody, _> = serde_json::from_value(merge(
            json!({"name": "cam", "url": "/v.mp4"}),
            [("name".to_string(), json!("other"))].into_iter().collect(),
        ));
        assert!(b.is_err(), "a PATCH cannot rename");
    }
}

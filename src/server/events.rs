//! `GET /v1/events?since=SEQ[&stream=NAME][&type=T[,T…]]` (Unix socket only): the daemon's
//! events as NDJSON, the journal's lines after `since` (none: from now on), then each new one as
//! it is written, filtered by stream and type. The follower reads the journal at its own pace (a
//! slow one reads the disk, it is never cut off), shares the `max_followers` permits with stream
//! followers, gets a keep-alive line after `stream_keepalive_ms` of silence, and ends when the
//! daemon stops. `GET /v1/events/{id}/snapshot.jpg`: the best snapshot of the event's track
//! (saved when the track ends).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::Method;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::body::Guard;
use super::error::ApiError;
use super::request::{
    blocking, error_response, follower_permit, jpeg_response, let_go, ndjson_response,
    parse_number, query_pairs, send_line, Resp,
};
use super::state::AppState;
use crate::events::{EventLog, Head};
use crate::video::rules::Kind;

/// Lines waiting for a follower's connection.
const QUEUE: usize = 64;
/// Journal lines read at once.
const READ_BATCH: usize = 256;

/// What a follower asked for.
#[derive(Debug, Default, PartialEq)]
struct Filter {
    since: Option<u64>,
    stream: Option<String>,
    kinds: Vec<Kind>,
}

impl Filter {
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut f = Filter::default();
        for (k, v) in query_pairs(query)? {
            match k.as_str() {
                "since" => f.since = Some(parse_number::<u64>("since", &v)?),
                "stream" => f.stream = Some(v),
                "type" => {
                    for t in v.split(',') {
                        f.kinds.push(Kind::parse(t).ok_or_else(|| {
                            ApiError::bad_request(
                                "invalid_parameter",
                                format!(
                                    "unknown event type {t:?} (new, update, end, zone_enter, zone_exit, loiter, line_cross)"
                                ),
                            )
                        })?);
                    }
                }
                other => {
                    return Err(ApiError::bad_request(
                        "invalid_parameter",
                        format!("unknown parameter {other:?}"),
                    ))
                }
            }
        }
        Ok(f)
    }

    fn wants(&self, line: &[u8]) -> bool {
        if self.stream.is_none() && self.kinds.is_empty() {
            return true;
        }
        let Ok(h) = serde_json::from_slice::<Head>(line) else {
            return false;
        };
        self.stream.as_deref().is_none_or(|s| s == h.stream)
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k.name() == h.kind))
    }
}

/// Routes `/v1/events` and `/v1/events/{id}/snapshot.jpg`.
pub(super) async fn route(req: &Parts, st: &Arc<AppState>) -> Resp {
    let path = req.uri.path();
    if req.method != Method::GET {
        return error_response(&ApiError::new(
            405,
            "method_not_allowed",
            format!("{} is not allowed on {path}", req.method),
        ));
    }
    let answer = match path
        .strip_prefix("/v1/events/")
        .and_then(|r| r.strip_suffix("/snapshot.jpg"))
    {
        Some(id) => snapshot(st, id.to_string()).await,
        None if path == "/v1/events" => follow(req, st),
        None => Err(ApiError::new(
            404,
            "not_found",
            format!("no route for {path}"),
        )),
    };
    answer.unwrap_or_else(|e| error_response(&e))
}

/// The best snapshot of event `id`'s track.
async fn snapshot(st: &Arc<AppState>, id: String) -> Result<Resp, ApiError> {
    let log = st
        .events
        .get()
        .ok_or_else(|| ApiError::new(503, "not_ready", "the daemon is not ready yet"))?
        .clone();
    let missing = |what: &str| ApiError::new(404, "not_found", format!("{what} (event {id:?})"));
    let seq = id
        .rsplit_once('-')
        .and_then(|(_, s)| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .ok_or_else(|| missing("no such event"))?;
    let (want, log2) = (id.clone(), log.clone());
    let file = blocking("event lookup", move || -> Option<String> {
        let lines = log2.read_after(seq - 1, 1).ok()?;
        let (s, line) = lines.into_iter().next()?;
        let v: serde_json::Value = serde_json::from_slice(&line).ok()?;
        (s == seq && v["id"] == want.as_str())
            .then(|| v["snapshot"].as_str().map(str::to_string))
            .flatten()
    })
    .await?
    .ok_or_else(|| missing("no such event in the journal, or it has no track"))?;
    let path = log
        .snapshot_path(&file)
        .ok_or_else(|| missing("no snapshot yet: a track's best snapshot is saved when it ends, and kept within snapshots_max"))?;
    let jpeg = blocking("snapshot read", move || std::fs::read(path))
        .await?
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    Ok(jpeg_response(jpeg))
}

fn follow(req: &Parts, st: &Arc<AppState>) -> Result<Resp, ApiError> {
    let filter = Filter::parse(req.uri.query())?;
    let (Some(log), Some(streams)) = (st.events.get(), st.streams.get()) else {
        return Err(ApiError::new(
            503,
            "not_ready",
            "the daemon is not ready yet",
        ));
    };
    if let Some(why) = log.why_unavailable() {
        return Err(ApiError::new(503, "events_unavailable", why.to_string()));
    }
    let permit = follower_permit(st)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let guard = Guard::default();
    let follower = Follower {
        cursor: filter.since.unwrap_or_else(|| log.last_seq()),
        filter,
        log: log.clone(),
        tx,
        stop: streams.stopping().clone(),
        guard: guard.clone(),
        keepalive: Duration::from_millis(st.config.stream_keepalive_ms),
        _permit: permit,
    };
    tokio::spawn(follower.forward());
    Ok(ndjson_response(rx, guard))
}

struct Follower {
    /// The last sequence number handled.
    cursor: u64,
    filter: Filter,
    log: Arc<EventLog>,
    tx: mpsc::Sender<Bytes>,
    stop: CancellationToken,
    guard: Guard,
    keepalive: Duration,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Follower {
    /// Journal lines after the cursor until the daemon stops or the follower leaves or stalls.
    async fn forward(mut self) {
        let mut written = self.log.watch();
        loop {
            let log = self.log.clone();
            let after = self.cursor;
            let read = tokio::task::spawn_blocking(move || log.read_after(after, READ_BATCH)).await;
            let lines = match read {
                Ok(Ok(lines)) => lines,
                Ok(Err(e)) => {
                    let _ = self.tx.try_send(crate::video::events::line(
                        &json!({"error": {"kind": "journal", "message": e.to_string()}}),
                    ));
                    return;
                }
                Err(_) => return,
            };
            if lines.is_empty() {
                if !self.wait(&mut written).await {
                    return;
                }
                continue;
            }
            for (seq, line) in lines {
                self.cursor = seq;
                if self.filter.wants(&line) && !self.send(line).await {
                    return self.let_go();
                }
            }
        }
    }

    /// Waits for a new event (true), sending keep-alives; false when the follower should end.
    async fn wait(&self, written: &mut tokio::sync::watch::Receiver<u64>) -> bool {
        loop {
            if *written.borrow_and_update() > self.cursor {
                return true;
            }
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    let _ = self.tx.try_send(crate::video::events::line(&json!({"state": "stopping", "message": "the daemon is stopping"})));
                    return false;
                }
                _ = self.tx.closed() => return false,
                r = written.changed() => if r.is_err() { return false },
                _ = tokio::time::sleep(self.keepalive) => {
                    let line = crate::video::events::line(&json!({"keepalive": true, "seq": self.cursor}));
                    if !self.send(line).await {
                        self.let_go();
                        return false;
                    }
                }
            }
        }
    }

    async fn send(&self, line: Bytes) -> bool {
        send_line(&self.tx, line).await
    }

    fn let_go(&self) {
        let_go(&self.guard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match_stream_and_type() {
        let f = Filter::parse(Some("since=5&stream=cam&type=zone_enter,line_cross"))
            .expect("test step");
        assert_eq!(f.since, Some(5));
        assert_eq!(f.kinds, vec![Kind::ZoneEnter, Kind::LineCross]);
        let line = |stream: &str, t: &str| {
            format!("{{\"seq\":1,\"id\":\"x\",\"time\":1.0,\"stream\":\"{stream}\",\"type\":\"{t}\"}}\n")
        };
        assert!(f.wants(line("cam", "line_cross").as_bytes()));
        assert!(!f.wants(line("cam", "new").as_bytes()));
        assert!(!f.wants(line("door", "zone_enter").as_bytes()));
        let e = Filter::parse(Some("type=enter")).expect_err("refused");
        assert_eq!(e.kind, "invalid_parameter");
        assert!(Filter::parse(Some("since=-1")).is_err());
        assert!(Filter::parse(Some("follow=1")).is_err());
    }
}

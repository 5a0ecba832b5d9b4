//! `GET /v1/events?since=SEQ[&stream=NAME][&type=T[,T…]][&label=L][&zone=Z][&from=T][&to=T]`
//! (Unix socket only): the daemon's events as NDJSON, the journal's lines after `since` (none: from
//! now on), then each new one as it is written, filtered. The follower reads the journal at its
//! own pace (a slow one reads the disk, it is never cut off), shares the `max_followers` permits
//! with stream followers, gets a keep-alive line after `stream_keepalive_ms` of silence, and ends
//! when the daemon stops. `GET /v1/events/history?before=SEQ&limit=N` and the same filters: one
//! JSON page of past events, newest first, for paging back through the journal.
//! `GET /v1/events/{id}/snapshot.jpg`: the best snapshot of the event's track (saved when the
//! track ends).

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
    blocking, error_response, follower_permit, jpeg_response, json_response, let_go,
    ndjson_response, parse_number, query_pairs, send_line, Resp,
};
use super::state::AppState;
use crate::events::{EventLog, Head};
use crate::video::rules::Kind;

/// Lines waiting for a follower's connection.
const QUEUE: usize = 64;
/// Journal lines read at once.
const READ_BATCH: usize = 256;

/// Events of one history page by default, and at most.
const PAGE: usize = 50;
const MAX_PAGE: usize = 500;
/// Journal lines a history request reads at most before it answers (with `next_before`).
const MAX_SCAN: usize = 20_000;

/// What a follower or a history page asked for.
#[derive(Debug, Default, PartialEq)]
struct Filter {
    since: Option<u64>,
    before: Option<u64>,
    limit: Option<usize>,
    stream: Option<String>,
    kinds: Vec<Kind>,
    label: Option<String>,
    zone: Option<String>,
    /// Unix seconds, inclusive.
    from: Option<f64>,
    to: Option<f64>,
}

/// The fields the label and zone filters look at.
#[derive(serde::Deserialize)]
struct Places {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    current_zones: Vec<String>,
    #[serde(default)]
    entered_zones: Vec<String>,
}

impl Filter {
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut f = Filter::default();
        for (k, v) in query_pairs(query)? {
            match k.as_str() {
                "since" => f.since = Some(parse_number::<u64>("since", &v)?),
                "before" => f.before = Some(parse_number::<u64>("before", &v)?),
                "limit" => {
                    let n = parse_number::<usize>("limit", &v)?;
                    if !(1..=MAX_PAGE).contains(&n) {
                        return Err(ApiError::bad_request(
                            "invalid_parameter",
                            format!("limit={n} is outside 1..={MAX_PAGE}"),
                        ));
                    }
                    f.limit = Some(n);
                }
                "from" => f.from = Some(parse_time("from", &v)?),
                "to" => f.to = Some(parse_time("to", &v)?),
                "label" => f.label = Some(v),
                "zone" => f.zone = Some(v),
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

    /// Refuses what only one of the two requests takes.
    fn for_follow(self) -> Result<Self, ApiError> {
        if self.before.is_some() || self.limit.is_some() {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "before and limit are parameters of /v1/events/history",
            ));
        }
        Ok(self)
    }

    fn for_history(self) -> Result<Self, ApiError> {
        if self.since.is_some() {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "since is a parameter of /v1/events (history pages go back with before)",
            ));
        }
        Ok(self)
    }

    fn wants(&self, line: &[u8]) -> bool {
        let plain = self.stream.is_none() && self.kinds.is_empty() && self.from.is_none();
        let plain = plain && self.to.is_none() && self.label.is_none() && self.zone.is_none();
        if plain {
            return true;
        }
        let Ok(h) = serde_json::from_slice::<Head>(line) else {
            return false;
        };
        let head = self.stream.as_deref().is_none_or(|s| s == h.stream)
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k.name() == h.kind))
            && self.from.is_none_or(|t| h.time >= t)
            && self.to.is_none_or(|t| h.time <= t);
        if !head || (self.label.is_none() && self.zone.is_none()) {
            return head;
        }
        let Ok(p) = serde_json::from_slice::<Places>(line) else {
            return false;
        };
        let label = self
            .label
            .as_deref()
            .is_none_or(|l| p.label.as_deref() == Some(l));
        let zone = self.zone.as_deref().is_none_or(|z| {
            p.zone.as_deref() == Some(z)
                || p.current_zones.iter().any(|c| c == z)
                || p.entered_zones.iter().any(|c| c == z)
        });
        label && zone
    }
}

fn parse_time(name: &str, v: &str) -> Result<f64, ApiError> {
    parse_number::<f64>(name, v).and_then(|t| {
        t.is_finite().then_some(t).ok_or_else(|| {
            ApiError::bad_request("invalid_parameter", format!("{name}={v:?} is not a time"))
        })
    })
}

/// One history page: the events before `before` (exclusive) that `f` wants, newest first, at
/// most `limit`, reading at most [`MAX_SCAN`] lines; `next_before` continues it (`None`: the
/// journal's start was reached).
fn history(log: &EventLog, f: &Filter) -> Result<String, String> {
    let limit = f.limit.unwrap_or(PAGE);
    let mut hi = f
        .before
        .unwrap_or(u64::MAX)
        .min(log.last_seq().saturating_add(1));
    let (mut events, mut scanned) = (Vec::new(), 0usize);
    let next = loop {
        if hi <= 1 {
            break None;
        }
        if scanned >= MAX_SCAN {
            break Some(hi);
        }
        let lo = hi.saturating_sub(READ_BATCH as u64).max(1);
        let lines = log
            .read_after(lo - 1, (hi - lo) as usize)
            .map_err(|e| e.to_string())?;
        let lines: Vec<(u64, Bytes)> = lines.into_iter().filter(|(s, _)| *s < hi).collect();
        if lines.is_empty() {
            // Sequence numbers are contiguous from the oldest kept: nothing older remains.
            break None;
        }
        scanned += lines.len();
        let mut full = None;
        for (seq, line) in lines.into_iter().rev() {
            if f.wants(&line) {
                // Checked (not built) as JSON: the page is written around the lines.
                serde_json::from_slice::<serde::de::IgnoredAny>(&line)
                    .map_err(|e| format!("journal line {seq}: {e}"))?;
                events.push(line);
                if events.len() == limit {
                    full = Some(seq);
                    break;
                }
            }
        }
        if let Some(seq) = full {
            break (seq > 1).then_some(seq);
        }
        hi = lo;
    };
    // The journal's lines are the events' JSON already.
    let lines: Vec<&str> = events
        .iter()
        .map(|l| std::str::from_utf8(l).map(str::trim_end))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("a journal line is not UTF-8: {e}"))?;
    let next = next.map_or("null".to_string(), |n| n.to_string());
    Ok(format!(
        "{{\"events\":[{}],\"next_before\":{next},\"last_seq\":{}}}",
        lines.join(","),
        log.last_seq()
    ))
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
        None if path == "/v1/events/history" => page(req, st).await,
        None => Err(ApiError::new(
            404,
            "not_found",
            format!("no route for {path}"),
        )),
    };
    answer.unwrap_or_else(|e| error_response(&e))
}

/// The event log, once the daemon has opened it.
fn event_log(st: &AppState) -> Result<Arc<EventLog>, ApiError> {
    st.events
        .get()
        .cloned()
        .ok_or_else(|| ApiError::new(503, "not_ready", "the daemon is not ready yet"))
}

/// The best snapshot of event `id`'s track.
async fn snapshot(st: &Arc<AppState>, id: String) -> Result<Resp, ApiError> {
    let log = event_log(st)?;
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

/// `GET /v1/events/history`.
async fn page(req: &Parts, st: &Arc<AppState>) -> Result<Resp, ApiError> {
    let filter = Filter::parse(req.uri.query())?.for_history()?;
    let log = event_log(st)?;
    if let Some(why) = log.why_unavailable() {
        return Err(ApiError::new(503, "events_unavailable", why.to_string()));
    }
    let body = blocking("event history", move || history(&log, &filter))
        .await?
        .map_err(|e| ApiError::new(500, "journal", e))?;
    Ok(json_response(200, body))
}

fn follow(req: &Parts, st: &Arc<AppState>) -> Result<Resp, ApiError> {
    let filter = Filter::parse(req.uri.query())?.for_follow()?;
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

    #[test]
    fn label_zone_and_time_filters_match_the_event_body() {
        let f = Filter::parse(Some("label=a+person&zone=porch&from=10&to=20")).expect("parsed");
        let line = |label: &str, zones: &str, time: f64| {
            format!("{{\"seq\":1,\"id\":\"x\",\"time\":{time},\"stream\":\"cam\",\"type\":\"update\",\"label\":\"{label}\",\"current_zones\":[{zones}]}}\n")
        };
        assert!(f.wants(line("a person", "\"porch\"", 15.0).as_bytes()));
        assert!(!f.wants(line("a cat", "\"porch\"", 15.0).as_bytes()));
        assert!(!f.wants(line("a person", "", 15.0).as_bytes()));
        assert!(!f.wants(line("a person", "\"porch\"", 25.0).as_bytes()));
        assert!(!f.wants(line("a person", "\"porch\"", 5.0).as_bytes()));
        assert!(Filter::parse(Some("from=nan")).is_err());
        assert!(Filter::parse(Some("limit=0")).is_err());
        assert!(Filter::parse(Some("limit=501")).is_err());
        assert!(Filter::parse(Some("before=3"))
            .expect("parsed")
            .for_follow()
            .is_err());
        assert!(Filter::parse(Some("since=3"))
            .expect("parsed")
            .for_history()
            .is_err());
    }
}

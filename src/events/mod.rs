//! Daemon-wide events (what the streams' rules decide, `video::rules`): numbered with one
//! increasing `seq`, written to the durable journal (`journal`) by one writer thread, so stream
//! tasks never wait for the disk, then announced to readers (`GET /v1/events` followers, the
//! MQTT sink), which read the journal from their own position: a reader that falls behind reads
//! the disk instead of being cut off, and one that reconnects, or a restarted daemon, loses
//! nothing within retention.

mod cursor;
pub(crate) mod journal;
pub(crate) mod mqtt;
mod mqtt_link;
pub(crate) mod snapshots;
pub(crate) mod topics;
pub(crate) mod webhook;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub(crate) use journal::{JournalError, Retention};
pub(crate) use snapshots::{Shot, ShotRetention};

use crate::video::rules::RuleEvent;
use journal::Journal;
use snapshots::Snapshots;

/// Batches (one per frame with events) that may wait for the writer.
const QUEUE: usize = 1024;

/// One journal line: the event with its number, id, wall time and stream.
#[derive(Serialize)]
struct Record<'a> {
    seq: u64,
    id: String,
    /// Unix seconds (milliseconds precision) when the event was decided.
    time: f64,
    stream: &'a str,
    #[serde(flatten)]
    event: &'a RuleEvent,
}

/// What a reader filters on, read back from a journal line.
#[derive(Debug, Deserialize)]
pub(crate) struct Head {
    pub id: String,
    pub time: f64,
    pub stream: String,
    #[serde(rename = "type")]
    pub kind: String,
}

struct Batch {
    stream: String,
    events: Vec<RuleEvent>,
    /// Best snapshots of the tracks that end in this batch, saved before its events.
    shots: Vec<Shot>,
    time: f64,
}

struct Shared {
    /// `None`: the journal could not be opened (the daemon serves without events).
    journal: Mutex<Option<Journal>>,
    snapshots: Mutex<Option<Snapshots>>,
    /// The last sequence number written and synced.
    last: watch::Sender<u64>,
    /// Events written, by type.
    written: Mutex<BTreeMap<&'static str, u64>>,
    /// Events dropped because the writer's queue was full or the disk refused them.
    dropped: AtomicU64,
}

/// A sink's counters (`/metrics`).
#[derive(Debug, Default)]
pub(crate) struct SinkStats {
    pub connected: AtomicBool,
    /// Events delivered (acknowledged).
    pub delivered: AtomicU64,
    /// Events the journal's retention dropped before delivery.
    pub dropped: AtomicU64,
    /// The last sequence number delivered.
    pub position: AtomicU64,
    /// Events a cooldown skipped.
    pub skipped: AtomicU64,
    /// Failed attempts by class (`4xx`, `5xx`, `timeout`, `connect`, `secret`).
    pub failures: Mutex<BTreeMap<&'static str, u64>>,
}

impl SinkStats {
    pub(crate) fn failure(&self, class: &'static str) {
        if let Ok(mut f) = self.failures.lock() {
            *f.entry(class).or_insert(0) += 1;
        }
    }
}

/// The event log: submit from stream tasks, read from anywhere.
pub(crate) struct EventLog {
    shared: Arc<Shared>,
    /// Why there is no journal (its folder could not be opened), if so.
    unavailable: Option<String>,
    /// This daemon start (hex milliseconds), in snapshot names.
    boot: String,
    sinks: Mutex<Vec<(String, Arc<SinkStats>)>>,
    tx: Mutex<Option<SyncSender<Batch>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn now_s() -> f64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    ms as f64 / 1000.0
}

impl EventLog {
    /// Opens the journal in `dir` and the snapshot folder `shots_dir`, and starts the writer
    /// thread.
    pub(crate) fn open(
        dir: &std::path::Path,
        retention: Retention,
        shots_dir: &std::path::Path,
        shots: ShotRetention,
    ) -> Result<Arc<Self>, JournalError> {
        let journal = Journal::open(dir, retention)?;
        let snapshots = Snapshots::open(shots_dir, shots).map_err(|source| JournalError::Io {
            path: shots_dir.to_path_buf(),
            source,
        })?;
        let (last, _) = watch::channel(journal.next_seq() - 1);
        let shared = Arc::new(Shared {
            journal: Mutex::new(Some(journal)),
            snapshots: Mutex::new(Some(snapshots)),
            last,
            written: Mutex::new(BTreeMap::new()),
            dropped: AtomicU64::new(0),
        });
        let (tx, rx) = sync_channel(QUEUE);
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("iv-events".into())
            .spawn(move || write_loop(&s, &rx))
            .map_err(|e| JournalError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        Ok(Arc::new(EventLog {
            shared,
            unavailable: None,
            boot: format!("{:x}", (now_s() * 1000.0) as u64),
            sinks: Mutex::new(Vec::new()),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        }))
    }

    /// An event log without a journal (its folder could not be opened): the daemon serves, events
    /// are dropped (counted), readers are told why.
    pub(crate) fn unavailable(reason: String) -> Arc<Self> {
        let (last, _) = watch::channel(0);
        Arc::new(EventLog {
            shared: Arc::new(Shared {
                journal: Mutex::new(None),
                snapshots: Mutex::new(None),
                last,
                written: Mutex::new(BTreeMap::new()),
                dropped: AtomicU64::new(0),
            }),
            unavailable: Some(reason),
            boot: String::new(),
            sinks: Mutex::new(Vec::new()),
            tx: Mutex::new(None),
            writer: Mutex::new(None),
        })
    }

    /// Why events are not kept, when they are not.
    pub(crate) fn why_unavailable(&self) -> Option<&str> {
        self.unavailable.as_deref()
    }

    /// Hands a frame's events to the writer; never waits. A full queue drops them, counted and
    /// logged.
    pub(crate) fn submit(&self, stream: &str, events: Vec<RuleEvent>, shots: Vec<Shot>) {
        if events.is_empty() && shots.is_empty() {
            return;
        }
        let n = events.len() as u64;
        let batch = Batch {
            stream: stream.to_string(),
            events,
            shots,
            time: now_s(),
        };
        let sent = match self.tx.lock().ok().as_ref().and_then(|t| t.as_ref()) {
            Some(tx) => match tx.try_send(batch) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
            },
            None => false,
        };
        if !sent {
            self.shared.dropped.fetch_add(n, Ordering::Relaxed);
            if self.unavailable.is_some() {
                return; // said once, at start
            }
            tracing::warn!(
                stream,
                events = n,
                "event journal queue full or closed; events dropped"
            );
        }
    }

    /// This daemon start's mark in snapshot names.
    pub(crate) fn boot(&self) -> &str {
        &self.boot
    }

    /// The file of a saved snapshot.
    pub(crate) fn snapshot_path(&self, name: &str) -> Option<std::path::PathBuf> {
        self.shared.snapshots.lock().ok()?.as_ref()?.path(name)
    }

    /// The last sequence number written (0: none yet).
    pub(crate) fn last_seq(&self) -> u64 {
        *self.shared.last.borrow()
    }

    /// Changes of the last sequence number.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.shared.last.subscribe()
    }

    /// Up to `max` journal lines after `after`, oldest first (blocking: disk reads for readers
    /// behind the memory tail).
    pub(crate) fn read_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<(u64, Bytes)>, JournalError> {
        let j = match self.shared.journal.lock() {
            Ok(j) => j,
            Err(p) => p.into_inner(),
        };
        match j.as_ref() {
            Some(j) => j.read_after(after, max),
            None => Err(JournalError::Unavailable(
                self.unavailable.clone().unwrap_or_default(),
            )),
        }
    }

    /// The counters of sink `name` (registered for `/metrics`).
    pub(crate) fn sink(&self, name: &str) -> Arc<SinkStats> {
        let stats = Arc::new(SinkStats::default());
        if let Ok(mut s) = self.sinks.lock() {
            s.push((name.to_string(), stats.clone()));
        }
        stats
    }

    /// Writes what was submitted, then stops the writer (at shutdown, after the streams).
    pub(crate) fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = writer {
            let _ = w.join();
        }
    }

    /// `iv_events_total{type}` and `iv_events_dropped_total`.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# HELP iv_events_total Events written to the journal, by type.\n# TYPE iv_events_total counter");
        let written = self
            .shared
            .written
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default();
        for k in crate::video::rules::Kind::ALL {
            let n = written.get(k.name()).copied().unwrap_or(0);
            let _ = writeln!(out, "iv_events_total{{type=\"{}\"}} {n}", k.name());
        }
        let _ = writeln!(out, "# HELP iv_events_dropped_total Events lost before the journal (queue full, disk errors).\n# TYPE iv_events_dropped_total counter\niv_events_dropped_total {}", self.shared.dropped.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP iv_events_last_seq The last event's sequence number.\n# TYPE iv_events_last_seq gauge\niv_events_last_seq {}", self.last_seq());
        self.render_sinks(out);
    }

    /// Per sink: delivered, dropped, outbox depth; webhooks: skipped, failures by class; MQTT:
    /// connected.
    fn render_sinks(&self, out: &mut String) {
        use std::fmt::Write as _;
        let sinks = self.sinks.lock().map(|s| s.clone()).unwrap_or_default();
        if sinks.is_empty() {
            return;
        }
        let last = self.last_seq();
        let mut families: Vec<(&str, &str, &str, String)> = vec![
            (
                "iv_sink_delivered_total",
                "counter",
                "Events a sink delivered.",
                String::new(),
            ),
            (
                "iv_sink_dropped_total",
                "counter",
                "Events a sink dropped: journal retention, refused (4xx), too old to retry.",
                String::new(),
            ),
            (
                "iv_sink_outbox_events",
                "gauge",
                "Events written and not yet delivered by a sink.",
                String::new(),
            ),
            (
                "iv_sink_skipped_total",
                "counter",
                "Events a webhook's cooldown skipped.",
                String::new(),
            ),
            (
                "iv_webhook_failures_total",
                "counter",
                "Failed webhook attempts by class (4xx, 5xx, timeout, connect, secret).",
                String::new(),
            ),
        ];
        for (name, s) in &sinks {
            let l = format!("sink=\"{name}\"");
            let values = [
                s.delivered.load(Ordering::Relaxed),
                s.dropped.load(Ordering::Relaxed),
                last.saturating_sub(s.position.load(Ordering::Relaxed)),
            ];
            for (f, v) in families.iter_mut().zip(values) {
                let _ = writeln!(f.3, "{}{{{l}}} {v}", f.0);
            }
            if name == "mqtt" {
                continue;
            }
            let _ = writeln!(
                families[3].3,
                "iv_sink_skipped_total{{{l}}} {}",
                s.skipped.load(Ordering::Relaxed)
            );
            let failed = s.failures.lock().map(|f| f.clone()).unwrap_or_default();
            for class in ["4xx", "5xx", "timeout", "connect", "secret"] {
                let n = failed.get(class).copied().unwrap_or(0);
                let _ = writeln!(
                    families[4].3,
                    "iv_webhook_failures_total{{{l},class=\"{class}\"}} {n}"
                );
            }
        }
        for (name, kind, help, samples) in families {
            if !samples.is_empty() {
                let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{samples}");
            }
        }
        if let Some((_, s)) = sinks.iter().find(|(n, _)| n == "mqtt") {
            let _ = writeln!(out, "# HELP iv_mqtt_connected Whether the MQTT sink is connected.\n# TYPE iv_mqtt_connected gauge\niv_mqtt_connected {}", u8::from(s.connected.load(Ordering::Relaxed)));
        }
    }
}

/// The writer thread: each batch written and synced, then announced.
fn write_loop(shared: &Shared, rx: &Receiver<Batch>) {
    while let Ok(batch) = rx.recv() {
        if let Some(s) = shared
            .snapshots
            .lock()
            .as_deref_mut()
            .ok()
            .and_then(Option::as_mut)
        {
            for shot in &batch.shots {
                if let Err(e) = s.save(shot) {
                    tracing::warn!(error = %e, "cannot save a track's snapshot");
                }
            }
        }
        let written = {
            let Ok(mut guard) = shared.journal.lock() else {
                return;
            };
            let Some(j) = guard.as_mut() else {
                return;
            };
            let mut events = batch.events.iter();
            j.append(batch.events.len(), |seq| match events.next() {
                Some(e) => record_line(seq, &batch.stream, batch.time, e),
                None => Bytes::new(),
            })
        };
        match written {
            Ok(last) => {
                if let Ok(mut w) = shared.written.lock() {
                    for e in &batch.events {
                        *w.entry(e.kind.name()).or_insert(0) += 1;
                    }
                }
                shared.last.send_replace(last);
            }
            Err(e) => {
                shared
                    .dropped
                    .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot write events; dropped");
            }
        }
    }
}

/// The journal line of `event` of `stream`, numbered `seq`, decided at `time`.
pub(crate) fn record_line(seq: u64, stream: &str, time: f64, event: &RuleEvent) -> Bytes {
    crate::video::events::line(&Record {
        seq,
        id: format!("{stream}-{seq}"),
        time,
        stream,
        event,
    })
}

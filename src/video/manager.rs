//! The set of streams: the config file's (read-only) and the API's (persisted atomically in
//! `state_dir/streams.json`, back after a restart). Starts, replaces and stops stream runs, lists
//! their status, renders their metrics, and stops them all at shutdown.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::spec::{SpecError, StreamSpec};
use super::stream::{Run, RunSettings, State, StreamShared};
use crate::config::Config;
use crate::model::tokenizer::QueryRules;
use crate::service::metrics::header;
use crate::service::{DetectService, QuerySets};

/// Name of the state file in `state_dir`.
pub const STATE_FILE: &str = "streams.json";

/// Where a stream's definition comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Config,
    Api,
}

/// Why a stream request is refused.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("no stream named {0:?}")]
    NotFound(String),
    #[error("stream {0:?} comes from the config file and is read-only through the API")]
    ReadOnly(String),
    #[error("{0}")]
    Invalid(#[from] SpecError),
    #[error("there are already {0} streams (max_streams)")]
    TooMany(usize),
    /// The stream's queries together with its query set's break a request's rule.
    #[error("with query set {set:?}: {error}")]
    Queries {
        set: String,
        error: crate::service::DetectError,
    },
    #[error("cannot save the streams in {path}: {message}")]
    Persist { path: String, message: String },
}

/// Whether a `put` made a new stream or replaced one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    Replaced,
}

/// The state file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    streams: Vec<StreamSpec>,
}

/// A stream's status line of `GET /v1/streams`.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub url: String,
    pub queries: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_set: Option<String>,
    /// As written (0.1, not the f32's 0.10000000149011612).
    pub threshold: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nms: Option<f64>,
    pub max_fps: f64,
    pub origin: Origin,
    pub state: State,
    pub decoder: Option<String>,
    pub frames: u64,
    pub dropped: u64,
    pub fps: f64,
    pub last_error: Option<String>,
    pub followers: usize,
}

struct Entry {
    spec: StreamSpec,
    origin: Origin,
    shared: Arc<StreamShared>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Daemon-wide stream settings (from `Config`).
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub state_file: PathBuf,
    pub max_streams: usize,
    pub events_buffer: usize,
    pub follower_lag: usize,
    pub queries: QueryRules,
    pub run: RunSettings,
}

impl ManagerConfig {
    pub fn from_config(c: &Config) -> Self {
        ManagerConfig {
            state_file: c.state_dir.join(STATE_FILE),
            max_streams: c.max_streams,
            events_buffer: c.stream_events_buffer,
            follower_lag: c.stream_follower_lag,
            queries: c.query_rules(),
            run: RunSettings {
                stall_timeout: Duration::from_millis(c.stream_stall_timeout_ms),
                rtsp_timeout: Duration::from_millis(c.stream_rtsp_timeout_ms),
                reconnect_min: Duration::from_millis(500)
                    .min(Duration::from_millis(c.stream_reconnect_max_ms)),
                reconnect_max: Duration::from_millis(c.stream_reconnect_max_ms),
                lost_track_ms: c.stream_track_lost_ms,
            },
        }
    }
}

/// The running streams.
pub struct StreamManager {
    cfg: ManagerConfig,
    service: DetectService,
    query_sets: Arc<QuerySets>,
    streams: Mutex<BTreeMap<String, Entry>>,
    stopping: CancellationToken,
}

/// Counts of streams by state, for `/api/health`.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub total: usize,
    pub running: usize,
    pub starting: usize,
    pub reconnecting: usize,
    pub finished: usize,
    pub failed: usize,
}

impl StreamManager {
    /// Starts the config file's streams and the saved ones (a saved stream whose name the config
    /// file now uses is skipped, with a warning).
    pub fn start(
        cfg: ManagerConfig,
        service: DetectService,
        query_sets: Arc<QuerySets>,
        configured: &[StreamSpec],
    ) -> Arc<Self> {
        let m = Arc::new(StreamManager {
            cfg,
            service,
            query_sets,
            streams: Mutex::new(BTreeMap::new()),
            stopping: CancellationToken::new(),
        });
        let saved = m.load_saved();
        if let Ok(mut map) = m.streams.lock() {
            for spec in configured {
                m.launch(&mut map, spec.clone(), Origin::Config);
            }
            for spec in saved {
                if map.contains_key(&spec.name) {
                    tracing::warn!(stream = %spec.name, "a saved stream has the name of a configured one; the configured one wins");
                    continue;
                }
                if map.len() >= m.cfg.max_streams {
                    tracing::warn!(stream = %spec.name, "saved stream skipped: max_streams reached");
                    continue;
                }
                if let Err(e) = spec.validate(&m.cfg.queries) {
                    tracing::warn!(stream = %spec.name, error = %e, "saved stream skipped: no longer valid");
                    continue;
                }
                m.launch(&mut map, spec, Origin::Api);
            }
        }
        m
    }

    /// Saved streams, or none (with a warning) when the file is unreadable.
    fn load_saved(&self) -> Vec<StreamSpec> {
        let path = &self.cfg.state_file;
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<StateFile>(&bytes) {
                Ok(f) => f.streams,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "stream state file is not valid; its streams are not started");
                    Vec::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the stream state file");
                Vec::new()
            }
        }
    }

    /// Starts a run of `spec` (already validated), keeping the shared part of a stream it replaces.
    fn launch(&self, map: &mut BTreeMap<String, Entry>, spec: StreamSpec, origin: Origin) {
        let Ok(source) = spec.validate(&self.cfg.queries) else {
            return;
        };
        let shared = match map.remove(&spec.name) {
            Some(old) => {
                old.cancel.cancel();
                old.shared
            }
            None => Arc::new(StreamShared::new(
                &spec.name,
                self.cfg.events_buffer,
                self.cfg.follower_lag,
            )),
        };
        let cancel = self.stopping.child_token();
        let run = Run {
            shared: shared.clone(),
            spec: spec.clone(),
            source,
            service: self.service.clone(),
            query_sets: self.query_sets.clone(),
            last_set: std::sync::Mutex::new(None),
            settings: self.cfg.run,
        };
        let task = tokio::spawn(run.run(cancel.clone()));
        map.insert(
            spec.name.clone(),
            Entry {
                spec,
                origin,
                shared,
                cancel,
                task,
            },
        );
    }

    /// Adds or replaces an API stream; saved before it starts.
    pub fn put(&self, spec: StreamSpec) -> Result<Put, ManagerError> {
        spec.validate(&self.cfg.queries)?;
        if let Some(name) = &spec.query_set {
            let Some(set) = self.query_sets.get(name) else {
                return Err(ManagerError::Invalid(SpecError::QuerySet(format!(
                    "no query set named {name:?} (PUT /v1/query-sets/{{name}} saves one)"
                ))));
            };
            self.service
                .check_with_set(&set, &spec.queries)
                .map_err(|error| ManagerError::Queries {
                    set: name.clone(),
                    error,
                })?;
        }
        let mut map = self.lock();
        let outcome = match map.get(&spec.name) {
            Some(e) if e.origin == Origin::Config => return Err(ManagerError::ReadOnly(spec.name)),
            Some(_) => Put::Replaced,
            None if map.len() >= self.cfg.max_streams => {
                return Err(ManagerError::TooMany(map.len()))
            }
            None => Put::Created,
        };
        let mut saved = api_specs(&map);
        saved.retain(|s| s.name != spec.name);
        saved.push(spec.clone());
        self.save(saved)?;
        self.launch(&mut map, spec, Origin::Api);
        Ok(outcome)
    }

    /// Stops and forgets an API stream.
    pub fn delete(&self, name: &str) -> Result<(), ManagerError> {
        let mut map = self.lock();
        match map.get(name) {
            None => return Err(ManagerError::NotFound(name.to_string())),
            Some(e) if e.origin == Origin::Config => {
                return Err(ManagerError::ReadOnly(name.to_string()))
            }
            Some(_) => {}
        }
        let mut saved = api_specs(&map);
        saved.retain(|s| s.name != name);
        self.save(saved)?;
        if let Some(e) = map.remove(name) {
            e.cancel.cancel();
            e.shared
                .hub
                .publish_state(super::events::line(&super::events::StateEvent {
                    stream: name,
                    state: "deleted",
                    message: "the stream was deleted",
                }));
        }
        Ok(())
    }

    fn save(&self, mut specs: Vec<StreamSpec>) -> Result<(), ManagerError> {
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        let path = &self.cfg.state_file;
        let fail = |message: String| ManagerError::Persist {
            path: path.display().to_string(),
            message,
        };
        let mut text = serde_json::to_vec_pretty(&StateFile { streams: specs })
            .map_err(|e| fail(e.to_string()))?;
        text.push(b'\n');
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        crate::fsutil::write_file_atomic(path, &text).map_err(|e| fail(e.to_string()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every stream's status, by name.
    pub fn list(&self) -> Vec<StreamStatus> {
        let default = self.service.config().default_threshold;
        self.lock()
            .values()
            .map(|e| {
                let v = e.shared.view();
                StreamStatus {
                    name: e.spec.name.clone(),
                    url: super::spec::redacted(&e.spec.url),
                    queries: e.spec.queries.clone(),
                    query_set: e.spec.query_set.clone(),
                    threshold: shortest(e.spec.threshold.unwrap_or(default)),
                    nms: e.spec.nms.map(shortest),
                    max_fps: e.spec.max_fps,
                    origin: e.origin,
                    state: v.state,
                    decoder: v.decoder,
                    frames: v.frames,
                    dropped: v.dropped,
                    fps: v.fps,
                    last_error: v.last_error,
                    followers: e.shared.hub.followers(),
                }
            })
            .collect()
    }

    /// One stream's shared part.
    pub fn get(&self, name: &str) -> Option<Arc<StreamShared>> {
        self.lock().get(name).map(|e| e.shared.clone())
    }

    /// Cancelled when the daemon stops: events followers end then.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    /// Counts by state.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for e in self.lock().values() {
            s.total += 1;
            match e.shared.view().state {
                State::Running => s.running += 1,
                State::Starting => s.starting += 1,
                State::Reconnecting => s.reconnecting += 1,
                State::Finished => s.finished += 1,
                State::Failed => s.failed += 1,
            }
        }
        s
    }

    /// Per-stream Prometheus metrics.
    pub fn render_metrics(&self, out: &mut String) {
        let map = self.lock();
        // One view per stream (each takes the stream's locks), read by every family below.
        let views: Vec<(&str, super::stream::RunView)> = map
            .values()
            .map(|e| (e.spec.name.as_str(), e.shared.view()))
            .collect();
        let counters: [(&str, &str, ViewCount); 3] = [
            ("iv_stream_frames_total", "Frames processed per stream.", |v| v.frames),
            (
                "iv_stream_dropped_frames_total",
                "Frames decoded but not processed per stream (newest-frame policy, max_fps, errors).",
                |v| v.dropped,
            ),
            ("iv_stream_up", "1 while the stream is running, else 0.", |v| {
                u64::from(v.state == State::Running)
            }),
        ];
        for (name, help, get) in counters {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            header(out, name, kind, help);
            for (stream, v) in &views {
                let _ = writeln!(out, "{name}{{stream=\"{stream}\"}} {}", get(v));
            }
        }
        let histograms: [(&str, &str, RenderLatency); 2] = [
            (
                "iv_stream_decode_latency_seconds",
                "Time from a compressed frame entering the decoder to its RGB frame.",
                StreamShared::render_decode_latency,
            ),
            (
                "iv_stream_end_to_end_latency_seconds",
                "Time from a decoded frame to its event being published.",
                StreamShared::render_end_to_end_latency,
            ),
        ];
        for (name, help, render) in histograms {
            header(out, name, "histogram", help);
            for e in map.values() {
                render(&e.shared, out, name);
            }
        }
    }

    /// Stops every stream and waits for them (at most `grace`).
    pub async fn shutdown(&self, grace: Duration) {
        self.stopping.cancel();
        let tasks: Vec<JoinHandle<()>> = {
            let mut map = self.lock();
            std::mem::take(&mut *map)
                .into_values()
                .map(|e| e.task)
                .collect()
        };
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("streams did not stop within the grace period");
        }
    }
}

/// The f64 whose shortest decimal form is the f32's (what the user wrote).
fn shortest(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// Renders one of a stream's latency histograms.
type RenderLatency = fn(&StreamShared, &mut String, &str);

/// Reads a counter or gauge off a stream's view.
type ViewCount = fn(&super::stream::RunView) -> u64;

/// The API's streams of `map`, to save.
fn api_specs(map: &BTreeMap<String, Entry>) -> Vec<StreamSpec> {
    map.values()
        .filter(|e| e.origin == Origin::Api)
        .map(|e| e.spec.clone())
        .collect()
}

/// Whether `path` is the state file of `dir` (for `config check`'s report).
pub fn state_file(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

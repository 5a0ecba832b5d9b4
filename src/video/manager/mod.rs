//! The set of streams: the config file's (read-only) and the API's (persisted atomically in
//! `state_dir/streams.json`, back after a restart; a saved definition stays saved until it is
//! deleted, started or not). Starts, replaces and stops stream runs, lists their status, renders
//! their metrics, and stops them all at shutdown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::attempt::FrameSource;
use super::rules::RuleSettings;
use super::saved::{self, Saved, StateFileContent};
use super::stream::{Run, RunSettings, State, StreamShared};
use super::track::TrackerConfig;
use crate::config::Config;
use crate::events::EventLog;
use crate::model::tokenizer::QueryRules;
use crate::service::{DetectService, QuerySets};
use crate::spec::{check_local_access, LocalPolicy, SpecError, StreamSpec};
use crate::state_file::StateFile;

mod metrics;

/// Name of the state file in `state_dir`.
pub(crate) const STATE_FILE: &str = "streams.json";

/// Where a stream's definition comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Origin {
    Config,
    Api,
}

/// Why a stream request is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ManagerError {
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
pub(crate) enum Put {
    Created,
    Replaced,
}

/// A stream's status line of `GET /v1/streams`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamStatus {
    pub name: String,
    pub url: String,
    pub queries: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_set: Option<String>,
    /// As written (0.1, not the f32's 0.10000000149011612).
    pub threshold: f64,
    /// The effective one too (the stream's, or `stream_nms`); 1 is off.
    pub nms: f64,
    pub max_fps: f64,
    pub origin: Origin,
    pub state: State,
    pub decoder: Option<String>,
    pub frames: u64,
    pub dropped: u64,
    pub fps: f64,
    pub last_error: Option<String>,
    pub followers: usize,
    /// The stream's rules as defined (so a console can draw and edit them).
    #[serde(skip_serializing_if = "crate::spec::Zones::is_empty")]
    pub zones: crate::spec::Zones,
    #[serde(skip_serializing_if = "crate::spec::Lines::is_empty")]
    pub lines: crate::spec::Lines,
}

struct Entry {
    spec: StreamSpec,
    /// A saved definition that does not parse: written back as it was, never started.
    raw: Option<serde_json::Value>,
    origin: Origin,
    shared: Arc<StreamShared>,
    /// `None` for a saved definition that could not start (the reason is its `last_error`).
    run: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Entry {
    /// What the state file keeps of it.
    fn saved(&self) -> serde_json::Value {
        match &self.raw {
            Some(raw) => raw.clone(),
            None => serde_json::to_value(&self.spec).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Daemon-wide stream settings (from `Config`).
#[derive(Debug, Clone)]
pub(crate) struct ManagerConfig {
    pub state_file: PathBuf,
    pub max_streams: usize,
    pub events_buffer: usize,
    pub events_buffer_bytes: usize,
    pub follower_lag: usize,
    pub queries: QueryRules,
    pub run: RunSettings,
    /// Where the local sources of API streams may be.
    pub api_local: LocalPolicy,
}

impl ManagerConfig {
    pub(crate) fn from_config(c: &Config) -> Self {
        ManagerConfig {
            state_file: c.state_dir.join(STATE_FILE),
            max_streams: c.max_streams,
            events_buffer: c.stream_events_buffer,
            events_buffer_bytes: usize::try_from(c.stream_events_buffer_mb << 20)
                .unwrap_or(usize::MAX),
            follower_lag: c.stream_follower_lag,
            queries: c.query_rules(),
            run: RunSettings {
                stall_timeout: Duration::from_millis(c.stream_stall_timeout_ms),
                stop_timeout: Duration::from_millis(c.stream_stop_timeout_ms),
                rtsp_timeout: Duration::from_millis(c.stream_rtsp_timeout_ms),
                reconnect_min: Duration::from_millis(500)
                    .min(Duration::from_millis(c.stream_reconnect_max_ms)),
                reconnect_max: Duration::from_millis(c.stream_reconnect_max_ms),
                track: TrackerConfig {
                    match_iou: c.stream_track_match_iou,
                    match_distance: c.stream_track_match_distance,
                    duplicate_iou: c.stream_track_duplicate_iou,
                    lost_timeout_ms: c.stream_track_lost_ms,
                    ..TrackerConfig::default()
                },
                nms: c.stream_nms,
                max_detections: c.stream_max_detections,
                rules: RuleSettings {
                    lost_ms: c.stream_track_lost_ms,
                    update_interval_ms: (c.events_update_interval_s * 1000.0).round() as u64,
                },
            },
            api_local: LocalPolicy::Roots(c.stream_file_roots.clone()),
        }
    }
}

/// The running streams.
pub(crate) struct StreamManager {
    cfg: ManagerConfig,
    service: DetectService,
    query_sets: Arc<QuerySets>,
    /// Starts the runs' attempts.
    frames_from: Arc<dyn FrameSource>,
    state: StateFile,
    /// Where runs are spawned (changes are made on the blocking pool).
    runtime: tokio::runtime::Handle,
    streams: Mutex<BTreeMap<String, Entry>>,
    /// Saved definitions that have no entry (their name is a config stream's, or they have no
    /// valid name): written back with every change, as they were.
    kept: Mutex<Vec<serde_json::Value>>,
    /// Serialises changes and their state-file writes.
    writer: Mutex<()>,
    stopping: CancellationToken,
    /// Where the runs' rules send their events.
    events: Arc<EventLog>,
}

/// Counts of streams by state, for `/api/health`.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Summary {
    pub total: usize,
    pub running: usize,
    pub starting: usize,
    pub reconnecting: usize,
    pub finished: usize,
    pub failed: usize,
}

impl StreamManager {
    /// Starts the config file's streams and the saved ones. Every saved definition stays on disk
    /// until it is deleted: one that cannot start (its name is a configured stream's, more than
    /// `max_streams`, no longer valid, unreadable) is shown `failed` with the reason, or kept
    /// aside in the file when it has no name of its own. Must be called within a tokio runtime.
    pub(crate) fn start(
        cfg: ManagerConfig,
        service: DetectService,
        query_sets: Arc<QuerySets>,
        frames_from: Arc<dyn FrameSource>,
        events: Arc<EventLog>,
        configured: &[StreamSpec],
    ) -> Arc<Self> {
        let m = Arc::new(StreamManager {
            events,
            frames_from,
            state: StateFile::new(cfg.state_file.clone()),
            cfg,
            service,
            query_sets,
            runtime: tokio::runtime::Handle::current(),
            streams: Mutex::new(BTreeMap::new()),
            kept: Mutex::new(Vec::new()),
            writer: Mutex::new(()),
            stopping: CancellationToken::new(),
        });
        let saved = m.load_saved();
        let mut kept = Vec::new();
        {
            let mut map = m.lock();
            for spec in configured {
                m.launch(&mut map, spec.clone(), Origin::Config);
            }
            for s in saved {
                m.restore(&mut map, s, &mut kept);
            }
        }
        *m.kept_lock() = kept;
        m
    }

    /// Puts one saved definition back: started, shown as not started with the reason, or kept.
    fn restore(
        &self,
        map: &mut BTreeMap<String, Entry>,
        saved: Saved,
        kept: &mut Vec<serde_json::Value>,
    ) {
        let (name, raw) = match &saved {
            Saved::Spec(spec, raw) => (Some(spec.name.clone()), raw),
            Saved::Unreadable(name, raw, _) => (name.clone(), raw),
        };
        let Some(name) = name.filter(|n| !map.contains_key(n)) else {
            tracing::warn!(definition = %crate::spec::redacted(&raw.to_string()), "a saved stream has no name of its own (or a configured stream's); it is kept in the state file, not started");
            kept.push(raw.clone());
            return;
        };
        let reason = match &saved {
            Saved::Unreadable(_, _, e) => Some(format!("the saved definition is not valid: {e}")),
            Saved::Spec(spec, _) => match spec.validate(&self.cfg.queries) {
                Err(e) => Some(format!("the saved definition is no longer valid: {e}")),
                Ok(_) if map.len() >= self.cfg.max_streams => Some(format!(
                    "not started: max_streams ({}) streams are running; raise it or delete a stream",
                    self.cfg.max_streams
                )),
                Ok(_) => None,
            },
        };
        match (saved, reason) {
            (Saved::Spec(spec, _), None) => self.launch(map, spec, Origin::Api),
            (saved, reason) => {
                let reason = reason.unwrap_or_else(|| "not started".to_string());
                tracing::warn!(stream = %name, reason = %reason, "saved stream not started; it stays saved");
                let (spec, raw) = match saved {
                    Saved::Spec(spec, _) => (spec, None),
                    Saved::Unreadable(_, raw, _) => (saved::lenient_spec(&name, &raw), Some(raw)),
                };
                let shared = self.new_shared(&name);
                shared.set_state(State::Failed, &reason);
                map.insert(
                    name,
                    Entry {
                        spec,
                        raw,
                        origin: Origin::Api,
                        shared,
                        run: None,
                    },
                );
            }
        }
    }

    /// The saved definitions (see `saved::read`).
    fn load_saved(&self) -> Vec<Saved> {
        saved::read(&self.state)
    }

    fn new_shared(&self, name: &str) -> Arc<StreamShared> {
        Arc::new(StreamShared::new(
            name,
            self.cfg.events_buffer,
            self.cfg.events_buffer_bytes,
            self.cfg.follower_lag,
        ))
    }

    /// Starts a run of `spec` (already validated), keeping the shared part of a stream it replaces.
    fn launch(&self, map: &mut BTreeMap<String, Entry>, spec: StreamSpec, origin: Origin) {
        let Ok(source) = spec.validate(&self.cfg.queries) else {
            return;
        };
        let shared = match map.remove(&spec.name) {
            Some(old) => {
                if let Some((cancel, _)) = old.run {
                    cancel.cancel();
                }
                old.shared
            }
            None => self.new_shared(&spec.name),
        };
        let cancel = self.stopping.child_token();
        let run = Run {
            shared: shared.clone(),
            spec: spec.clone(),
            source,
            frames_from: self.frames_from.clone(),
            local: match origin {
                Origin::Config => LocalPolicy::Any,
                Origin::Api => self.cfg.api_local.clone(),
            },
            service: self.service.clone(),
            query_sets: self.query_sets.clone(),
            last_set: std::sync::Mutex::new(None),
            settings: self.cfg.run,
            events: self.events.clone(),
        };
        let task = self.runtime.spawn(run.run(cancel.clone()));
        map.insert(
            spec.name.clone(),
            Entry {
                spec,
                raw: None,
                origin,
                shared,
                run: Some((cancel, task)),
            },
        );
    }

    /// Adds or replaces an API stream; saved before it starts. Blocking (the state file is written
    /// and synced): call it off the async threads. Answers with the stream's status as saved.
    pub(crate) fn put(&self, spec: StreamSpec) -> Result<(Put, StreamStatus), ManagerError> {
        let source = spec.validate(&self.cfg.queries)?;
        let source = check_local_access(&source, &self.cfg.api_local)?;
        super::attempt::check_local(&source).map_err(|e| SpecError::Url(e.to_string()))?;
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
        let _writer = self.write_lock();
        let (outcome, saved) = {
            let map = self.lock();
            let outcome = match map.get(&spec.name) {
                Some(e) if e.origin == Origin::Config => {
                    return Err(ManagerError::ReadOnly(spec.name))
                }
                Some(_) => Put::Replaced,
                None if map.len() >= self.cfg.max_streams => {
                    return Err(ManagerError::TooMany(map.len()))
                }
                None => Put::Created,
            };
            let mut saved = self.saved_except(&map, &spec.name);
            saved.push((
                spec.name.clone(),
                serde_json::to_value(&spec).unwrap_or_default(),
            ));
            (outcome, saved)
        };
        self.save(saved)?;
        let mut map = self.lock();
        let name = spec.name.clone();
        self.launch(&mut map, spec, Origin::Api);
        let status = map
            .get(&name)
            .map(|e| self.status(e))
            .ok_or(ManagerError::NotFound(name))?;
        Ok((outcome, status))
    }

    /// Stops and forgets an API stream. Blocking, like `put`.
    pub(crate) fn delete(&self, name: &str) -> Result<(), ManagerError> {
        let _writer = self.write_lock();
        let saved = {
            let map = self.lock();
            match map.get(name) {
                None => return Err(ManagerError::NotFound(name.to_string())),
                Some(e) if e.origin == Origin::Config => {
                    return Err(ManagerError::ReadOnly(name.to_string()))
                }
                Some(_) => {}
            }
            self.saved_except(&map, name)
        };
        self.save(saved)?;
        if let Some(e) = self.lock().remove(name) {
            if let Some((cancel, _)) = e.run {
                cancel.cancel();
            }
            e.shared.hub.publish_state(
                super::events::line(&super::events::StateEvent {
                    stream: name,
                    state: "deleted",
                    message: "the stream was deleted",
                }),
                true,
            );
        }
        Ok(())
    }

    /// The saved definitions (API streams and the kept ones) but `name`'s, by name.
    fn saved_except(
        &self,
        map: &BTreeMap<String, Entry>,
        name: &str,
    ) -> Vec<(String, serde_json::Value)> {
        let mut saved: Vec<(String, serde_json::Value)> = map
            .values()
            .filter(|e| e.origin == Origin::Api && e.spec.name != name)
            .map(|e| (e.spec.name.clone(), e.saved()))
            .collect();
        saved.extend(self.kept_lock().iter().map(|v| (String::new(), v.clone())));
        saved
    }

    fn save(&self, mut saved: Vec<(String, serde_json::Value)>) -> Result<(), ManagerError> {
        saved.sort_by(|a, b| a.0.cmp(&b.0));
        let content = StateFileContent {
            streams: saved.into_iter().map(|(_, v)| v).collect(),
        };
        self.state
            .save(&content, true)
            .map_err(|message| ManagerError::Persist {
                path: self.state.path().display().to_string(),
                message,
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn kept_lock(&self) -> std::sync::MutexGuard<'_, Vec<serde_json::Value>> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn status(&self, e: &Entry) -> StreamStatus {
        let default = self.service.config().default_threshold;
        let v = e.shared.view();
        StreamStatus {
            name: e.spec.name.clone(),
            url: crate::spec::redacted(&e.spec.url),
            queries: e.spec.queries.clone(),
            query_set: e.spec.query_set.clone(),
            threshold: shortest(e.spec.threshold.unwrap_or(default)),
            nms: shortest(e.spec.nms.unwrap_or(self.cfg.run.nms)),
            max_fps: e.spec.max_fps,
            origin: e.origin,
            state: v.state,
            decoder: v.decoder,
            frames: v.frames,
            dropped: v.dropped.iter().sum(),
            fps: v.fps,
            last_error: v.last_error,
            followers: e.shared.hub.followers(),
            zones: e.spec.zones.clone(),
            lines: e.spec.lines.clone(),
        }
    }

    /// Every stream's status, by name.
    pub(crate) fn list(&self) -> Vec<StreamStatus> {
        self.lock().values().map(|e| self.status(e)).collect()
    }

    /// One stream's status.
    pub(crate) fn status_of(&self, name: &str) -> Option<StreamStatus> {
        self.lock().get(name).map(|e| self.status(e))
    }

    /// A stream's saved definition as the state file keeps it (credentials included), for a
    /// change of some of its fields (`PATCH`); `put` decides whether it may change.
    pub(crate) fn definition(&self, name: &str) -> Option<serde_json::Value> {
        self.lock().get(name).map(Entry::saved)
    }

    /// One stream's shared part.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<StreamShared>> {
        self.lock().get(name).map(|e| e.shared.clone())
    }

    /// Cancelled when the daemon stops: events followers end then.
    pub(crate) fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    /// Counts by state.
    pub(crate) fn summary(&self) -> Summary {
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

    /// Stops every stream and waits for them (at most `grace`).
    pub(crate) async fn shutdown(&self, grace: Duration) {
        self.stopping.cancel();
        let tasks: Vec<JoinHandle<()>> = {
            let mut map = self.lock();
            std::mem::take(&mut *map)
                .into_values()
                .filter_map(|e| e.run.map(|(_, task)| task))
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

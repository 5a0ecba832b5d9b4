//! One stream's life: attempts of its source (a `FrameSource`: GStreamer in the daemon), each frame through the detection
//! service (the same admission, batcher and worker as `/v1/detect`), the tracker, the event hub and
//! the snapshot; reconnection with capped exponential backoff for live sources; `finished` or
//! `failed` for files. Its shared part (`StreamShared`: state, counters, events, snapshot) outlives
//! a replacement of the definition, so followers keep following.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::attempt::{
    Attempt, DropReason, Frame, FrameSource, Outcome, SourceError, SourceOptions, SourceStats,
    Stopping,
};
use super::draw::Annotation;
use super::events::{self, EventHub, FrameEvent, StateEvent, TrackedDetection};
use super::rules::{RuleSettings, Rules};
use super::track::{TrackInput, Tracker, TrackerConfig};
use super::tracking::Tracking;
use crate::events::EventLog;
use crate::pacing::{Backoff, LogLimiter};
use crate::preprocess::Rgb;
use crate::service::metrics::{Histogram, LATENCY_BUCKETS_S};
use crate::service::{DetectError, DetectRequest, DetectService, ImageInput};
use crate::spec::{check_local_access, LocalPolicy, Source, StreamSpec};

/// A stream's state, as `GET /v1/streams` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    Starting,
    Running,
    Reconnecting,
    Finished,
    Failed,
}

impl State {
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Reconnecting => "reconnecting",
            State::Finished => "finished",
            State::Failed => "failed",
        }
    }
}

/// The latest processed frame and what was found in it.
pub(crate) struct Snapshot {
    /// The frame's sequence number (the live view draws each frame once).
    pub frame: u64,
    pub rgb: Arc<Rgb>,
    pub annotations: Vec<Annotation>,
    /// The stream's zones and lines, drawn over the frame.
    pub shapes: Arc<Vec<super::draw::Shape>>,
}

/// Daemon-wide settings of stream runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunSettings {
    /// A live source without a frame for this long is reconnected, a file fails (time its frames
    /// wait for the detector does not count); an attempt whose pipeline does not start within it
    /// fails too.
    pub stall_timeout: Duration,
    /// How long a pipeline's teardown may take before it is abandoned.
    pub stop_timeout: Duration,
    pub rtsp_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// The tracker's settings (its score thresholds follow each stream's threshold).
    pub track: TrackerConfig,
    /// Per-query NMS IoU of streams without their own `nms`.
    pub nms: f32,
    /// Detections a frame event reports at most (the highest scores).
    pub max_detections: usize,
    /// How the rules end tracks and pace `update` events.
    pub rules: RuleSettings,
}

/// Detections down to this fraction of the threshold feed the tracker's second stage (they
/// continue tracks, and are not reported).
const TRACK_LOW_RATIO: f32 = 0.5;

/// Processing instants kept for the frame rate.
const FPS_WINDOW: usize = 32;

struct Status {
    state: State,
    last_error: Option<String>,
    processed_at: VecDeque<Instant>,
    /// Repeated frame errors are logged once per `ERROR_LOG_INTERVAL`.
    error_log: LogLimiter,
}

/// A stream logs a repeated frame error at most this often (a camera whose every frame fails
/// would otherwise write 30 lines a second).
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The part of a stream that lives as long as its name: counters, state, events, snapshot,
/// latency histograms.
pub(crate) struct StreamShared {
    pub name: String,
    pub hub: EventHub,
    pub stats: Arc<SourceStats>,
    pub processed: AtomicU64,
    status: Mutex<Status>,
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    decode_s: Mutex<Histogram>,
    end_to_end_s: Mutex<Histogram>,
}

/// A point-in-time view of a stream's run.
#[derive(Debug, Clone)]
pub(crate) struct RunView {
    pub state: State,
    pub last_error: Option<String>,
    pub decoder: Option<String>,
    pub frames: u64,
    /// Frames not processed, by `DropReason::ALL`'s order.
    pub dropped: [u64; 3],
    pub fps: f64,
}

impl StreamShared {
    pub(crate) fn new(name: &str, ring: usize, ring_bytes: usize, follower_lag: usize) -> Self {
        StreamShared {
            name: name.to_string(),
            hub: EventHub::new(ring, ring_bytes, follower_lag),
            stats: Arc::new(SourceStats::default()),
            processed: AtomicU64::new(0),
            status: Mutex::new(Status {
                state: State::Starting,
                last_error: None,
                processed_at: VecDeque::with_capacity(FPS_WINDOW),
                error_log: LogLimiter::new(ERROR_LOG_INTERVAL),
            }),
            snapshot: Mutex::new(None),
            decode_s: Mutex::new(Histogram::new(&LATENCY_BUCKETS_S)),
            end_to_end_s: Mutex::new(Histogram::new(&LATENCY_BUCKETS_S)),
        }
    }

    /// Sets the state (and the last error, for failures) and tells the followers; a finished or
    /// failed stream ends their bodies.
    pub(crate) fn set_state(&self, state: State, message: &str) {
        if let Ok(mut s) = self.status.lock() {
            s.state = state;
            if matches!(state, State::Reconnecting | State::Failed) && !message.is_empty() {
                s.last_error = Some(message.to_string());
            }
        }
        tracing::info!(stream = %self.name, state = state.name(), message, "stream state");
        self.hub.publish_state(
            events::line(&StateEvent {
                stream: &self.name,
                state: state.name(),
                message,
            }),
            matches!(state, State::Finished | State::Failed),
        );
    }

    /// Records a frame's error; logs it when it is new or `ERROR_LOG_INTERVAL` has passed.
    fn note_error(&self, message: String) {
        let Ok(mut s) = self.status.lock() else {
            return;
        };
        let new = s.last_error.as_deref() != Some(message.as_str());
        if let Some(held_back) = s.error_log.admit(Instant::now(), new) {
            tracing::warn!(stream = %self.name, error = %message, repeated_unlogged = held_back, "stream frame not processed");
        }
        s.last_error = Some(message);
    }

    pub(crate) fn view(&self) -> RunView {
        let (state, last_error, fps) = match self.status.lock() {
            Ok(s) => (s.state, s.last_error.clone(), fps(&s.processed_at)),
            Err(_) => (State::Failed, Some("status lock poisoned".into()), 0.0),
        };
        RunView {
            state,
            last_error,
            decoder: self.stats.decoder.lock().ok().and_then(|d| d.clone()),
            frames: self.processed.load(Ordering::Relaxed),
            dropped: DropReason::ALL.map(|why| self.stats.dropped(why)),
            fps,
        }
    }

    pub(crate) fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.lock().ok().and_then(|s| s.clone())
    }

    /// Prometheus samples of the decode latency histogram for this stream.
    pub(crate) fn render_decode_latency(&self, out: &mut String, name: &str) {
        if let Ok(h) = self.decode_s.lock() {
            h.render_samples(out, name, &format!("stream=\"{}\"", self.name));
        }
    }

    /// Prometheus samples of the end-to-end latency histogram for this stream.
    pub(crate) fn render_end_to_end_latency(&self, out: &mut String, name: &str) {
        if let Ok(h) = self.end_to_end_s.lock() {
            h.render_samples(out, name, &format!("stream=\"{}\"", self.name));
        }
    }

    fn processed(&self, decoded_at: Instant, decode_latency: Option<Duration>) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if let Ok(mut s) = self.status.lock() {
            if s.processed_at.len() >= FPS_WINDOW {
                s.processed_at.pop_front();
            }
            s.processed_at.push_back(now);
        }
        if let (Some(d), Ok(mut h)) = (decode_latency, self.decode_s.lock()) {
            h.observe(d.as_secs_f64());
        }
        if let Ok(mut h) = self.end_to_end_s.lock() {
            h.observe(now.duration_since(decoded_at).as_secs_f64());
        }
    }
}

/// Frames per second over the recent processing instants (0 when idle for 5 s).
fn fps(times: &VecDeque<Instant>) -> f64 {
    match (times.front(), times.back()) {
        (Some(first), Some(last)) if times.len() > 1 && last.elapsed() < Duration::from_secs(5) => {
            let span = last.duration_since(*first).as_secs_f64();
            if span > 0.0 {
                (times.len() - 1) as f64 / span
            } else {
                0.0
            }
        }
        _ => 0.0,
    }
}

/// One definition's run.
pub(crate) struct Run {
    pub shared: Arc<StreamShared>,
    pub spec: StreamSpec,
    pub source: Source,
    /// Starts its attempts (GStreamer in the daemon).
    pub frames_from: Arc<dyn FrameSource>,
    /// Where its local source may be, checked again before every attempt (a link may have
    /// changed since the definition was accepted).
    pub local: LocalPolicy,
    pub service: DetectService,
    /// Where the spec's `query_set` is looked up, at every frame.
    pub query_sets: Arc<crate::service::QuerySets>,
    /// The query set the last frame used (weak: a deleted set's images are not kept alive): when
    /// it is replaced, query indices change meaning and the tracks restart.
    pub last_set: std::sync::Mutex<Option<std::sync::Weak<crate::service::QuerySet>>>,
    pub settings: RunSettings,
    /// Where the rules' events go.
    pub events: Arc<EventLog>,
}

/// The thresholds a frame is processed with, and the shapes its snapshot shows.
struct FrameRules {
    threshold: f32,
    low: f32,
    shapes: Arc<Vec<super::draw::Shape>>,
}

impl Run {
    /// Runs until `cancel`, or until a file ends or fails; then the tracks still alive end.
    pub(crate) async fn run(self, cancel: CancellationToken) {
        let (rules, mut tracking) = self.rules_and_tracking();
        self.attempts(&rules, &mut tracking, &cancel).await;
        tracking.restart();
    }

    /// Attempts of the source until `cancel`, or until a file ends or fails.
    async fn attempts(
        &self,
        rules: &FrameRules,
        tracking: &mut Tracking,
        cancel: &CancellationToken,
    ) {
        let live = self.source.is_live();
        let opts = SourceOptions {
            max_fps: self.spec.max_fps,
            stall_timeout: self.settings.stall_timeout,
            rtsp_timeout: self.settings.rtsp_timeout,
        };
        let mut backoff = Backoff::new(self.settings.reconnect_min, self.settings.reconnect_max);
        self.shared.set_state(State::Starting, "");
        let mut stopping: Option<Stopping> = None;
        loop {
            tracking.restart();
            // One pipeline per stream at most: the previous one must have stopped first.
            if let Some(s) = stopping.take() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = s.wait() => {}
                }
            }
            let Some(started) = self.start(opts, cancel).await else {
                return;
            };
            let (outcome, had_frames) = match started {
                Ok(attempt) => {
                    let (outcome, had_frames, left) =
                        self.frames(attempt, rules, tracking, cancel).await;
                    stopping = left;
                    (outcome, had_frames)
                }
                Err(e) => (Outcome::Error(e.to_string()), false),
            };
            if cancel.is_cancelled() {
                return;
            }
            let message = match &outcome {
                Outcome::Eos => "the source ended".to_string(),
                Outcome::Error(e) => e.clone(),
                Outcome::Stopped => return,
            };
            if !live {
                match outcome {
                    Outcome::Eos => self.shared.set_state(State::Finished, "end of file"),
                    _ => self.shared.set_state(State::Failed, &message),
                }
                return;
            }
            if had_frames {
                backoff.reset();
            }
            self.shared.set_state(
                State::Reconnecting,
                &format!(
                    "{message}; reconnecting in {:.1} s",
                    backoff.peek().as_secs_f64()
                ),
            );
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff.advance()) => {}
            }
        }
    }

    /// The thresholds frames are processed with, and the tracker and rules that follow them.
    fn rules_and_tracking(&self) -> (FrameRules, Tracking) {
        let threshold = self
            .spec
            .threshold
            .unwrap_or(self.service.config().default_threshold);
        let rules = FrameRules {
            threshold,
            low: threshold * TRACK_LOW_RATIO,
            shapes: Arc::new(super::draw::shapes(&self.spec.zones, &self.spec.lines)),
        };
        let tracker = Tracker::new(TrackerConfig {
            high: threshold.next_up(),
            low: rules.low,
            ..self.settings.track
        });
        let zones = Rules::new(&self.spec.zones, &self.spec.lines, self.settings.rules);
        let tracking = Tracking::new(tracker, zones, self.events.clone(), &self.shared.name);
        (rules, tracking)
    }

    /// Starts one attempt of the source (after the local access check); `None` when `cancel`
    /// came first.
    async fn start(
        &self,
        opts: SourceOptions,
        cancel: &CancellationToken,
    ) -> Option<Result<Attempt, SourceError>> {
        let source = match check_local_access(&self.source, &self.local) {
            Ok(source) => source,
            Err(e) => return Some(Err(SourceError::Start(e.to_string()))),
        };
        let start = self.frames_from.start(
            &source,
            opts,
            self.shared.stats.clone(),
            self.settings.stall_timeout,
        );
        tokio::select! {
            _ = cancel.cancelled() => None,
            r = start => Some(r),
        }
    }

    /// Processes an attempt's frames until it ends or `cancel`; says how it ended, whether it
    /// gave any frame, and its pipeline if that is still stopping.
    async fn frames(
        &self,
        mut attempt: Attempt,
        rules: &FrameRules,
        tracking: &mut Tracking,
        cancel: &CancellationToken,
    ) -> (Outcome, bool, Option<Stopping>) {
        let mut had_frames = false;
        let interval = (self.source.is_live() && self.spec.max_fps > 0.0)
            .then(|| Duration::from_secs_f64(1.0 / self.spec.max_fps));
        let mut next_due = Instant::now();
        let mut last_t = 0u64;
        loop {
            let frame = tokio::select! {
                _ = cancel.cancelled() => break,
                f = attempt.next() => f,
            };
            let Some(frame) = frame else { break };
            if !had_frames {
                had_frames = true;
                self.shared.set_state(State::Running, "");
            }
            let frame = match interval {
                // Live sources with max_fps: wait for the next slot, then take the newest frame
                // (the slot keeps replacing it meanwhile, counting drops).
                Some(step) => {
                    if Instant::now() < next_due {
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep_until(next_due.into()) => {}
                        }
                    }
                    next_due = Instant::now() + step;
                    attempt.newest(frame)
                }
                None => frame,
            };
            last_t = last_t.max(frame.pts_ms);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.process(frame, last_t, rules, tracking) => {}
            }
        }
        let (outcome, stopping) = attempt.finish(self.settings.stop_timeout).await;
        (outcome, had_frames, stopping)
    }

    /// Detects, tracks, publishes and keeps the snapshot of one frame.
    async fn process(&self, frame: Frame, t_ms: u64, rules: &FrameRules, tracking: &mut Tracking) {
        let Frame {
            seq,
            rgb,
            pts_ms,
            decoded_at,
            decode_latency,
        } = frame;
        let rgb = Arc::new(rgb);
        let Some((out, set)) = self.detect(&rgb, rules).await else {
            self.shared.stats.drop_frame(DropReason::Failed);
            return;
        };
        if self.set_changed(set) {
            tracking.restart();
        }
        let inputs: Vec<TrackInput> = out
            .detections
            .iter()
            .map(|d| TrackInput {
                class: d.query_index,
                score: d.score,
                bbox: d.bbox,
            })
            .collect();
        let ids = tracking.update(t_ms, &inputs);
        let mut tracked: Vec<TrackedDetection> = out
            .detections
            .into_iter()
            .zip(ids)
            // Above the threshold every detection has an id but the duplicates of a tracked
            // object (and boxes with no area), which are left out.
            .filter(|(d, id)| d.score > rules.threshold && id.is_some())
            .map(|(detection, track_id)| TrackedDetection {
                detection,
                track_id,
            })
            .collect();
        if tracked.len() > self.settings.max_detections {
            tracked.sort_by(|a, b| b.detection.score.total_cmp(&a.detection.score));
            tracked.truncate(self.settings.max_detections);
        }
        let line = events::line(&FrameEvent {
            stream: &self.shared.name,
            frame: seq,
            pts_ms,
            width: out.width,
            height: out.height,
            detections: &tracked,
        });
        self.shared.hub.publish_frame(seq, line);
        tracking.report(t_ms, &rgb, &tracked);
        let annotations = tracked
            .iter()
            .map(|t| Annotation::of(&t.detection, t.track_id))
            .collect();
        if let Ok(mut s) = self.shared.snapshot.lock() {
            *s = Some(Arc::new(Snapshot {
                frame: seq,
                rgb,
                annotations,
                shapes: rules.shapes.clone(),
            }));
        }
        self.shared.processed(decoded_at, decode_latency);
    }

    /// Whether `set` is another query set than the previous frame's (then it is remembered).
    fn set_changed(&self, set: Option<Arc<crate::service::QuerySet>>) -> bool {
        let Ok(mut last) = self.last_set.lock() else {
            return false;
        };
        let changed = match (&*last, &set) {
            (Some(a), Some(b)) => !std::sync::Weak::ptr_eq(a, &Arc::downgrade(b)),
            _ => false,
        };
        *last = set.as_ref().map(Arc::downgrade);
        changed
    }

    /// The service's answer for one frame at the tracker's low threshold, with the query set it
    /// used. Files wait for room in the queue (every frame counts); live frames are dropped when
    /// the service is saturated.
    async fn detect(
        &self,
        rgb: &Arc<Rgb>,
        rules: &FrameRules,
    ) -> Option<(
        crate::service::DetectOutput,
        Option<Arc<crate::service::QuerySet>>,
    )> {
        let mut req =
            DetectRequest::new(ImageInput::Shared(rgb.clone()), self.spec.queries.clone());
        req.threshold = Some(rules.low);
        req.nms = Some(self.spec.nms.unwrap_or(self.settings.nms));
        if let Some(name) = &self.spec.query_set {
            let Some(set) = self.query_sets.get(name) else {
                self.shared
                    .note_error(format!("query set {name:?} does not exist (any more)"));
                return None;
            };
            req.query_set = Some(set);
        }
        let set = req.query_set.clone();
        // A live frame that finds the queue full is dropped (a newer one comes); a file's waits.
        let answer = if self.source.is_live() {
            self.service.detect(req).await
        } else {
            self.service.detect_waiting(req).await
        };
        match answer {
            Ok(out) => Some((out, set)),
            Err(DetectError::QueueFull | DetectError::Stopped) => None,
            Err(e) => {
                self.shared.note_error(e.to_string());
                None
            }
        }
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;

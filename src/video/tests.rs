//! In-process tests of stream runs and the stream manager on a scripted frame source (no GStreamer)
//! and the fake detection service (`service::fake`): a file's frames end to end, drops and
//! reconnection of a live source, deleting a followed stream, saved streams after a restart, and
//! a stuck teardown that holds the next attempt back. Waits are bounded polls, not sleeps.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::attempt::{
    Attempt, DropReason, Frame, FrameSink, FrameSource, Frames, LatestSlot, Outcome, SourceError,
    SourceOptions, SourceStats, Starting,
};
use super::manager::{ManagerConfig, StreamManager};
use super::stream::{RunSettings, State};
use crate::model::tokenizer::QueryRules;
use crate::preprocess::Rgb;
use crate::service::fake::{config, start};
use crate::service::query_sets::Limits;
use crate::service::QuerySets;
use crate::spec::{LocalPolicy, Source, StreamSpec};

/// What one scripted attempt does.
struct Script {
    /// Frames it decodes, back to back.
    frames: usize,
    /// How it ends after them; `None`: it runs until it is stopped.
    then: Option<Outcome>,
    /// Its teardown waits for this (a server that does not let go).
    hold: Option<oneshot::Receiver<()>>,
    /// It gives nothing before this (the test is ready to watch).
    go: Option<oneshot::Receiver<()>>,
}

impl Script {
    fn new(frames: usize, then: Option<Outcome>) -> Self {
        Script {
            frames,
            then,
            hold: None,
            go: None,
        }
    }
}

/// Attempts from a script, one per start; a start with the script used up fails.
#[derive(Default)]
struct Scripted {
    scripts: Mutex<VecDeque<Script>>,
    started: AtomicUsize,
}

impl Scripted {
    fn with(scripts: Vec<Script>) -> Arc<Self> {
        Arc::new(Scripted {
            scripts: Mutex::new(scripts.into()),
            started: AtomicUsize::new(0),
        })
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

impl FrameSource for Scripted {
    fn start<'a>(
        &'a self,
        source: &'a Source,
        _opts: SourceOptions,
        stats: Arc<SourceStats>,
        _limit: Duration,
    ) -> Starting<'a> {
        Box::pin(async move {
            self.started.fetch_add(1, Ordering::SeqCst);
            let next = self.scripts.lock().ok().and_then(|mut s| s.pop_front());
            let Some(script) = next else {
                return Err(SourceError::Start("the script has no more attempts".into()));
            };
            let (frames, sink) = if source.is_live() {
                let slot = Arc::new(LatestSlot::default());
                (Frames::Latest(slot.clone()), FrameSink::Latest(slot))
            } else {
                let (tx, rx) = mpsc::channel(2);
                (Frames::Ordered(rx), FrameSink::Ordered(tx))
            };
            let stop = Arc::new(AtomicBool::new(false));
            let (outcome_tx, outcome) = oneshot::channel();
            let (stopped_tx, stopped) = oneshot::channel();
            tokio::spawn(play(
                script,
                sink,
                stats.clone(),
                stop.clone(),
                outcome_tx,
                stopped_tx,
            ));
            Ok(Attempt::new(frames, stats, stop, outcome, stopped))
        })
    }
}

/// The scripted pipeline: its frames, its end, its teardown.
async fn play(
    script: Script,
    sink: FrameSink,
    stats: Arc<SourceStats>,
    stop: Arc<AtomicBool>,
    outcome: oneshot::Sender<Outcome>,
    stopped: oneshot::Sender<()>,
) {
    if let Some(go) = script.go {
        let _ = go.await;
    }
    for i in 0..script.frames {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let frame = Frame {
            seq: stats.decoded.fetch_add(1, Ordering::Relaxed),
            rgb: Rgb {
                width: 32,
                height: 24,
                data: vec![100; 32 * 24 * 3],
            },
            pts_ms: i as u64 * 100,
            decoded_at: Instant::now(),
            decode_latency: None,
        };
        match &sink {
            FrameSink::Latest(slot) => {
                if slot.put(frame) {
                    stats.drop_frame(DropReason::Replaced);
                }
            }
            FrameSink::Ordered(tx) => {
                if tx.send(frame).await.is_err() {
                    break;
                }
            }
        }
    }
    let end = match script.then {
        Some(o) if !stop.load(Ordering::SeqCst) => o,
        _ => {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Outcome::Stopped
        }
    };
    let _ = outcome.send(end);
    drop(sink);
    if let Some(hold) = script.hold {
        let _ = hold.await;
    }
    drop(stopped);
}

fn settings() -> RunSettings {
    RunSettings {
        stall_timeout: Duration::from_secs(5),
        stop_timeout: Duration::from_millis(200),
        rtsp_timeout: Duration::from_secs(1),
        reconnect_min: Duration::from_millis(5),
        reconnect_max: Duration::from_millis(20),
        track: crate::video::track::TrackerConfig::default(),
        nms: 0.3,
        max_detections: 100,
        rules: crate::video::rules::RuleSettings {
            lost_ms: 1000,
            update_interval_ms: 0,
        },
    }
}

/// A manager on the fake service and `frames`, saving into `dir`, with API files allowed there.
fn manager(dir: &std::path::Path, frames: Arc<Scripted>) -> Arc<StreamManager> {
    let (svc, worker, _probe, _metrics) = start(config());
    // The worker thread lives as long as the service handles; the test process ends it.
    std::mem::forget(worker);
    let cfg = ManagerConfig {
        state_file: dir.join("streams.json"),
        max_streams: 8,
        events_buffer: 64,
        events_buffer_bytes: 1 << 20,
        follower_lag: 64,
        queries: QueryRules::default(),
        run: settings(),
        api_local: LocalPolicy::Roots(vec![dir.to_path_buf()]),
    };
    let sets = Arc::new(QuerySets::in_memory(Limits {
        max_sets: 4,
        budget_bytes: 1 << 20,
    }));
    let events = crate::events::EventLog::open(
        &dir.join("events"),
        crate::events::Retention {
            max_events: 10_000,
            max_bytes: 1 << 20,
        },
        &dir.join("snapshots"),
        crate::events::ShotRetention {
            max_files: 100,
            max_bytes: 1 << 24,
        },
    )
    .expect("event log");
    StreamManager::start(cfg, svc, sets, frames, events, &[])
}

fn spec(name: &str, url: &str) -> StreamSpec {
    StreamSpec {
        name: name.into(),
        url: url.into(),
        queries: vec!["a cat".into()],
        query_set: None,
        threshold: Some(0.4),
        nms: None,
        max_fps: 0.0,
        zones: Default::default(),
        lines: Default::default(),
    }
}

/// A file inside `dir` for a file stream (its bytes are never read: the frames are scripted).
fn clip(dir: &std::path::Path, name: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, b"scripted").expect("write");
    p.to_string_lossy().into_owned()
}

/// Polls `cond` every millisecond for at most five seconds.
async fn until(cond: impl Fn() -> bool) -> bool {
    crate::service::fake::until(Duration::from_secs(5), cond).await
}

fn state_of(m: &StreamManager, name: &str) -> Option<State> {
    m.status_of(name).map(|s| s.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_stream_processes_every_frame_then_finishes() {
    let dir = tempfile::tempdir().expect("tmp");
    let frames = Scripted::with(vec![Script::new(3, Some(Outcome::Eos))]);
    let m = manager(dir.path(), frames.clone());
    m.put(spec("clip", &clip(dir.path(), "a.mp4")))
        .expect("put");
    assert!(until(|| state_of(&m, "clip") == Some(State::Finished)).await);
    let s = m.status_of("clip").expect("status");
    assert_eq!((s.frames, s.dropped), (3, 0), "a file loses no frame");
    let shared = m.get("clip").expect("shared");
    let lines = shared.hub.subscribe(Some(0)).replay;
    assert_eq!(lines.len(), 3);
    for (i, l) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_slice(l).expect("json");
        assert_eq!(v["frame"], i);
        assert_eq!(v["pts_ms"], i * 100);
        // The fake scores every patch of tiny-a's 6 x 6 grid 0.5 for "a cat", all with the same
        // box: the streams' default NMS keeps one of the 36, and the tracker follows it.
        assert_eq!(v["detections"].as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v["detections"][0]["track_id"], 1, "{v}");
    }
    assert_eq!(shared.snapshot().map(|s| s.frame), Some(2));
    assert_eq!(frames.started(), 1, "a finished file is not started again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_source_reconnects_after_an_error_and_counts_what_it_drops() {
    let dir = tempfile::tempdir().expect("tmp");
    let (go, wait) = oneshot::channel();
    let mut first = Script::new(0, Some(Outcome::Error("boom".into())));
    first.go = Some(wait);
    let frames = Scripted::with(vec![first, Script::new(5, Some(Outcome::Eos))]);
    let m = manager(dir.path(), frames.clone());
    m.put(spec("cam", "rtsp://127.0.0.1:9/cam")).expect("put");
    let follower = m.get("cam").expect("shared").hub.subscribe(None);
    let _ = go.send(());
    assert!(until(|| frames.started() >= 3).await, "the script runs out");
    let s = m.status_of("cam").expect("status");
    assert_eq!(
        s.frames + s.dropped,
        5,
        "every decoded frame is processed or dropped: {s:?}"
    );
    assert!(s.frames >= 1, "{s:?}");
    assert_eq!(s.state, State::Reconnecting);
    // By reason: a live source only loses frames to newer ones here (no max_fps, no failure).
    let mut text = String::new();
    m.render_metrics(&mut text);
    let dropped = |why: &str| {
        let key = format!("iv_stream_dropped_frames_total{{stream=\"cam\",reason=\"{why}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|n| n.parse::<u64>().ok())
    };
    assert_eq!(
        (dropped("replaced"), dropped("sampled"), dropped("failed")),
        (Some(s.dropped), Some(0), Some(0)),
        "{text}"
    );
    let mut states = Vec::new();
    let mut live = follower.live;
    while let Ok(l) = live.try_recv() {
        let v: serde_json::Value = serde_json::from_slice(&l).expect("json");
        if let Some(st) = v["state"].as_str() {
            states.push(format!("{st}: {}", v["message"].as_str().unwrap_or("")));
        }
    }
    // ("starting" may come before the follower does.)
    let boom = states
        .iter()
        .position(|s| s.starts_with("reconnecting: boom"));
    let running = states.iter().position(|s| s.starts_with("running"));
    assert!(boom.is_some() && boom < running, "{states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_followed_stream_ends_its_followers_and_stops_its_attempt() {
    let dir = tempfile::tempdir().expect("tmp");
    let frames = Scripted::with(vec![Script::new(1, None)]);
    let m = manager(dir.path(), frames.clone());
    m.put(spec("cam", "rtsp://127.0.0.1:9/cam")).expect("put");
    assert!(until(|| state_of(&m, "cam") == Some(State::Running)).await);
    let mut sub = m.get("cam").expect("shared").hub.subscribe(None);
    m.delete("cam").expect("delete");
    assert!(m.status_of("cam").is_none());
    assert!(*sub.ended.borrow_and_update(), "followers' bodies end");
    // The frame's event may come first (the stream is running before its first frame's event).
    let last = loop {
        let line: serde_json::Value =
            serde_json::from_slice(&sub.live.recv().await.expect("a line")).expect("json");
        if line.get("frame").is_none() {
            break line;
        }
    };
    assert_eq!(last["state"], "deleted");
    let saved = std::fs::read_to_string(dir.path().join("streams.json")).expect("state file");
    assert!(!saved.contains("\"cam\""), "{saved}");
    assert_eq!(frames.started(), 1, "nothing restarts a deleted stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_streams_start_again_after_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let first = Scripted::with(vec![
        Script::new(1, Some(Outcome::Eos)),
        Script::new(1, Some(Outcome::Eos)),
    ]);
    let m = manager(dir.path(), first.clone());
    m.put(spec("a", &clip(dir.path(), "a.mp4"))).expect("put a");
    m.put(spec("b", &clip(dir.path(), "b.mp4"))).expect("put b");
    assert!(until(|| first.started() == 2).await);
    m.shutdown(Duration::from_secs(2)).await;
    let again = Scripted::with(vec![
        Script::new(2, Some(Outcome::Eos)),
        Script::new(2, Some(Outcome::Eos)),
    ]);
    let m = manager(dir.path(), again.clone());
    let names: Vec<String> = m.list().into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["a", "b"]);
    assert!(until(|| m.list().iter().all(|s| s.state == State::Finished)).await);
    assert!(m.list().iter().all(|s| s.frames == 2));
    assert_eq!(again.started(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_teardown_holds_the_next_attempt_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let (release, hold) = oneshot::channel();
    let mut stuck = Script::new(1, Some(Outcome::Error("gone".into())));
    stuck.hold = Some(hold);
    let frames = Scripted::with(vec![stuck, Script::new(1, None)]);
    let m = manager(dir.path(), frames.clone());
    m.put(spec("cam", "rtsp://127.0.0.1:9/cam")).expect("put");
    assert!(until(|| state_of(&m, "cam") == Some(State::Reconnecting)).await);
    // Well past the 20 ms backoff: the second attempt waits for the first pipeline.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(frames.started(), 1);
    let _ = release.send(());
    assert!(until(|| frames.started() == 2).await);
    assert!(until(|| state_of(&m, "cam") == Some(State::Running)).await);
}

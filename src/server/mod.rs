//! The daemon (`intelligent-video serve`): listeners, lifecycle (load → start the detection
//! service → warmup → READY → drain on SIGTERM), systemd notifications and watchdog, and the accept
//! loops. Request parsing and routing are in `http`, shared state in `state`; detection itself
//! (admission, preprocessing, batching, inference) is `crate::service`.
//!
//! `run` takes its listeners, a model loader and a cancellation token; only `main` exits the
//! process (and `backend::library_guard`, when a loaded runtime library is rewritten under it).

pub(crate) mod body;
mod conn;
mod console;
mod detect;
mod doctor;
pub(crate) mod error;
mod events;
mod health;
pub(crate) mod http;
pub(crate) mod listen;
mod live;
mod parse_errors;
mod query_sets;
mod request;
pub(crate) mod state;
mod streams;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::server::graceful::GracefulShutdown;
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

pub(crate) use listen::Listeners;
use state::{AppState, EngineInfo, Phase};

use crate::config::Config;
use crate::pipeline::Detector;
use crate::preprocess::Rgb;
use crate::service::{DetectRequest, DetectService, ImageInput, ServiceConfig};
use crate::video::manager::{ManagerConfig, StreamManager};

/// Reports a startup phase (systemd `STATUS=` and the health document).
pub(crate) type StatusFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Loads the model on a blocking thread: returns the detector and the engine facts.
pub(crate) type Loader = Box<dyn FnOnce(StatusFn) -> Result<(Detector, EngineInfo), String> + Send>;

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("cannot load the model: {0}")]
    Load(String),
    #[error("warmup failed: {0}")]
    Warmup(String),
    #[error("{0}")]
    Internal(String),
}

/// Sends a systemd notification (a no-op without `NOTIFY_SOCKET`).
pub(crate) fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "systemd notification failed");
    }
}

fn set_status(st: &AppState, s: &str) {
    st.set_status(s);
    notify(&[NotifyState::Status(s)]);
    tracing::info!(status = s, "phase");
}

/// A synthetic, textured frame for warmup.
fn warmup_frame() -> Rgb {
    let (w, h) = (640u32, 480u32);
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            data.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, ((x ^ y) % 256) as u8]);
        }
    }
    Rgb {
        width: w,
        height: h,
        data,
    }
}

/// Runs `n` detections of a synthetic frame through the service, like any request (but without
/// the request deadline: a slow first inference must not fail the start).
async fn warmup(st: &Arc<AppState>, service: &DetectService, n: u32) -> Result<f64, ServeError> {
    let frame = warmup_frame();
    let t = Instant::now();
    for i in 1..=n {
        set_status(st, &format!("warmup {i}/{n}"));
        let mut req = DetectRequest::new(
            ImageInput::Decoded(frame.clone()),
            vec!["a photo of an object".into()],
        );
        req.threshold = Some(0.1);
        service
            .detect_untimed(req)
            .await
            .map_err(|e| ServeError::Warmup(e.to_string()))?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Watchdog: pings while loading, and afterwards only while the inference worker turns its loop
/// (a stuck inference lets systemd restart the daemon).
fn spawn_watchdog(st: Arc<AppState>, stop: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period / 2);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let alive = match st.phase() {
                Phase::Starting => true,
                Phase::Ready | Phase::Stopping => {
                    st.heartbeat_age_ms() < (period / 2).as_millis() as u64
                }
                Phase::Failed => false,
            };
            if alive {
                notify(&[NotifyState::Watchdog]);
            } else {
                tracing::warn!(
                    age_ms = st.heartbeat_age_ms(),
                    "inference worker is not answering; withholding WATCHDOG=1"
                );
            }
        }
    });
}

/// Drains in-flight connections within the grace period. Connections accepted just before the
/// listeners closed get a moment to deliver their request first: hyper closes a connection that
/// has no request in progress at once, which a client would see as a reset.
async fn drain(graceful: GracefulShutdown, grace_ms: u64) {
    let grace = Duration::from_millis(grace_ms);
    tokio::time::sleep(grace.min(Duration::from_millis(300))).await;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace_ms, "grace period over; closing remaining connections");
    }
}

/// Runs the daemon until `shutdown` is cancelled (or loading fails).
pub(crate) async fn run(
    cfg: Config,
    listeners: Listeners,
    loader: Loader,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let st = AppState::new(cfg.clone());
    let Listeners {
        detect,
        http,
        socket_file,
    } = listeners;
    let graceful = GracefulShutdown::new();
    let accept_stop = CancellationToken::new();
    spawn_watchdog(st.clone(), accept_stop.clone());
    let acceptor = conn::Acceptor::new(&st, &graceful);
    let (result, ()) = tokio::join!(
        async {
            let r = lifecycle(st.clone(), loader, shutdown.clone()).await;
            accept_stop.cancel();
            r
        },
        acceptor.run(detect, http, accept_stop.clone())
    );
    drain(graceful, cfg.shutdown_grace_ms).await;
    if let Some(f) = socket_file {
        f.remove_if_ours();
    }
    tracing::info!("stopped");
    result
}

/// Stopped before READY: the shutdown came first.
fn stopped_early(st: &AppState) -> Result<(), ServeError> {
    st.set_phase(Phase::Stopping);
    notify(&[NotifyState::Stopping]);
    Ok(())
}

/// Marks the start as failed with `e` (the status line carries a load error's own message).
fn failed(st: &AppState, e: ServeError) -> Result<(), ServeError> {
    st.set_phase(Phase::Failed);
    let why = match &e {
        ServeError::Load(msg) => msg.clone(),
        other => other.to_string(),
    };
    set_status(st, &format!("failed: {why}"));
    Err(e)
}

/// Runs the loader on the blocking pool, keeping systemd's start timeout ahead of a long load or
/// engine build. `None` when shutdown came first.
async fn load(
    st: &Arc<AppState>,
    loader: Loader,
    shutdown: &CancellationToken,
) -> Option<Result<(Detector, EngineInfo), ServeError>> {
    set_status(st, "loading model");
    let st2 = st.clone();
    let status: StatusFn = Arc::new(move |s: &str| set_status(&st2, s));
    let mut load = tokio::task::spawn_blocking(move || loader(status));
    let mut extend = tokio::time::interval(Duration::from_secs(10));
    let loaded = loop {
        tokio::select! {
            r = &mut load => break r,
            _ = extend.tick() => notify(&[NotifyState::ExtendTimeoutUsec(30_000_000)]),
            _ = shutdown.cancelled() => return None,
        }
    };
    Some(match loaded {
        Ok(r) => r.map_err(ServeError::Load),
        Err(e) => Err(ServeError::Load(format!("loader panicked: {e}"))),
    })
}

/// Load → start the service → warmup → READY → wait for shutdown → STOPPING.
async fn lifecycle(
    st: Arc<AppState>,
    loader: Loader,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let t0 = Instant::now();
    let (det, mut info) = match load(&st, loader, &shutdown).await {
        None => return stopped_early(&st),
        Some(Ok(x)) => x,
        Some(Err(e)) => return failed(&st, e),
    };
    let backend = det.backend_name().to_string();
    // The worker thread is detached: it stops when the last service handle goes with the state.
    let (service, _worker) = DetectService::start(
        det,
        ServiceConfig::from_config(&st.config),
        st.metrics.clone(),
    )
    .map_err(|e| ServeError::Internal(format!("cannot start the worker: {e}")))?;
    let _ = st.service.set(service.clone());
    notify(&[NotifyState::ExtendTimeoutUsec(30_000_000)]);
    let warm = tokio::select! {
        r = warmup(&st, &service, st.config.warmup_iterations) => r,
        _ = shutdown.cancelled() => return stopped_early(&st),
    };
    info.warmup_ms = match warm {
        Ok(ms) => ms,
        Err(e) => return failed(&st, e),
    };
    let warmup_ms = info.warmup_ms;
    if let Ok(mut e) = st.engine.lock() {
        *e = info;
    }
    let running = start_running(&st, &service);
    st.set_phase(Phase::Ready);
    let line = format!("serving on {backend}");
    st.set_status(&line);
    notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
    tracing::info!(
        startup_ms = t0.elapsed().as_millis() as u64,
        warmup_ms,
        socket = %st.config.socket_path.display(),
        http = %st.config.http_addr,
        "ready"
    );

    shutdown.cancelled().await;
    st.set_phase(Phase::Stopping);
    st.set_status("stopping");
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    tracing::info!("shutdown requested; draining");
    running.stop(&st.config).await;
    Ok(())
}

/// What runs once the daemon is ready: the event log, its sinks, the streams.
struct Running {
    events: Arc<crate::events::EventLog>,
    sinks: Vec<tokio::task::JoinHandle<()>>,
    sinks_stop: CancellationToken,
    streams: Arc<StreamManager>,
}

/// Opens the event log, starts the sinks, then the streams (whose rules write to the log).
fn start_running(st: &Arc<AppState>, service: &DetectService) -> Running {
    // A state folder that cannot hold the journal costs the events, not detection.
    let events = open_events(&st.config).unwrap_or_else(|e| {
        tracing::error!(error = %e, "events are not kept: the journal cannot be opened");
        crate::events::EventLog::unavailable(e.to_string())
    });
    let _ = st.events.set(events.clone());
    let sinks_stop = CancellationToken::new();
    let sinks = match events.why_unavailable() {
        Some(_) => Vec::new(),
        None => start_sinks(&st.config, &events, &sinks_stop),
    };
    let streams = StreamManager::start(
        ManagerConfig::from_config(&st.config),
        service.clone(),
        st.query_sets.clone(),
        Arc::new(crate::video::source::Gstreamer),
        events.clone(),
        &st.config.streams,
    );
    let _ = st.streams.set(streams.clone());
    Running {
        events,
        sinks,
        sinks_stop,
        streams,
    }
}

impl Running {
    /// Stops the streams, writes their last events (their tracks' ends), then stops the sinks
    /// (what they did not deliver waits in the journal).
    async fn stop(self, c: &crate::config::Config) {
        self.streams
            .shutdown(Duration::from_millis(c.shutdown_grace_ms))
            .await;
        let events = self.events;
        let _ = tokio::task::spawn_blocking(move || events.close()).await;
        self.sinks_stop.cancel();
        let sinks = self.sinks;
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            for t in sinks {
                let _ = t.await;
            }
        })
        .await;
    }
}

/// The event sinks configured (`[mqtt]`, `[[webhooks]]`); their positions are in
/// `state_dir/events/sinks/`. One whose position cannot be kept is logged and not started.
fn start_sinks(
    c: &crate::config::Config,
    events: &Arc<crate::events::EventLog>,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let dir = c.state_dir.join("events/sinks");
    let mut started = Vec::new();
    if let Some(m) = &c.mqtt {
        started.push(crate::events::mqtt::spawn(
            m.clone(),
            events.clone(),
            &dir.join("mqtt"),
            stop.clone(),
        ));
    }
    for w in &c.webhooks {
        started.push(crate::events::webhook::spawn(
            w.clone(),
            events.clone(),
            &dir.join(w.id()),
            stop.clone(),
        ));
    }
    started
        .into_iter()
        .filter_map(|s| {
            s.map_err(|e| tracing::error!(error = %e, "an event sink is not started"))
                .ok()
        })
        .collect()
}

/// The event journal in `state_dir/events/` with the configured retention.
fn open_events(
    c: &crate::config::Config,
) -> Result<Arc<crate::events::EventLog>, crate::events::JournalError> {
    crate::events::EventLog::open(
        &c.state_dir.join("events"),
        crate::events::Retention {
            max_events: c.events_max,
            max_bytes: c.events_max_mb << 20,
        },
        &c.state_dir.join("snapshots"),
        crate::events::ShotRetention {
            max_files: usize::try_from(c.snapshots_max).unwrap_or(usize::MAX),
            max_bytes: c.snapshots_max_mb << 20,
        },
    )
}

//! The daemon (`intelligent-video serve`): listeners, lifecycle (load → start the detection
//! service → warmup → READY → drain on SIGTERM), systemd notifications and watchdog, and the accept
//! loops. Request parsing and routing are in `http`, shared state in `state`; detection itself
//! (admission, preprocessing, batching, inference) is `crate::service`.
//!
//! `run` takes its listeners, a model loader and a cancellation token; only `main` exits the
//! process.

pub mod error;
pub mod http;
pub mod listen;
pub mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use sd_notify::NotifyState;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use listen::Listeners;
use state::{AppState, EngineInfo, Phase};

use crate::config::Config;
use crate::pipeline::Detector;
use crate::preprocess::Rgb;
use crate::service::{DetectRequest, DetectService, ImageInput, ServiceConfig};

/// Reports a startup phase (systemd `STATUS=` and the health document).
pub type StatusFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Loads the model on a blocking thread: returns the detector and the engine facts.
pub type Loader = Box<dyn FnOnce(StatusFn) -> Result<(Detector, EngineInfo), String> + Send>;

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot load the model: {0}")]
    Load(String),
    #[error("warmup failed: {0}")]
    Warmup(String),
    #[error("{0}")]
    Internal(String),
}

/// Sends a systemd notification (a no-op without `NOTIFY_SOCKET`).
pub fn notify(states: &[NotifyState<'_>]) {
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

/// Answers a connection over the cap with a 503 and closes it.
async fn refuse<S: tokio::io::AsyncWrite + Unpin>(mut s: S) {
    let body =
        error::ApiError::unavailable("too_many_connections", "connection limit reached", 1).body();
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(msg.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// Serves one accepted connection (HTTP/1.1, header timeout, graceful-shutdown aware), or answers
/// 503 and closes it when the listener's connection cap is reached.
fn serve_connection<S>(
    stream: S,
    peer: http::Peer,
    st: &Arc<AppState>,
    conns: &Arc<Semaphore>,
    graceful: &GracefulShutdown,
    header_timeout: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = conns.clone().try_acquire_owned() else {
        tokio::spawn(refuse(stream));
        return;
    };
    let st = st.clone();
    let svc = service_fn(move |req| http::handle(req, st.clone(), peer));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), svc);
    let fut = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            tracing::debug!(error = %e, ?peer, "connection ended with an error");
        }
        drop(permit);
    });
}

/// Runs the daemon until `shutdown` is cancelled (or loading fails).
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    loader: Loader,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let st = AppState::new(cfg.clone());
    let Listeners {
        detect,
        http: http_l,
        socket_file,
    } = listeners;
    let graceful = GracefulShutdown::new();
    let header_timeout = Duration::from_millis(cfg.header_timeout_ms);
    let detect_conns = Arc::new(Semaphore::new(cfg.max_connections));
    let http_conns = Arc::new(Semaphore::new(cfg.max_connections));
    let accept_stop = CancellationToken::new();

    // Watchdog: ping while loading, and afterwards only while the worker turns its loop.
    if let Some(period) = sd_notify::watchdog_enabled() {
        let st = st.clone();
        let stop = accept_stop.clone();
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

    // Accept loop for both listeners.
    let accept = {
        let st = st.clone();
        let stop = accept_stop.clone();
        let graceful_ref = &graceful;
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = detect.accept() => match r {
                        Ok((stream, _)) => {
                            let cred = stream.peer_cred().ok();
                            let peer = http::Peer::Unix { uid: cred.map(|c| c.uid()), pid: cred.and_then(|c| c.pid()) };
                            serve_connection(stream, peer, &st, &detect_conns, graceful_ref, header_timeout);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept on the detection socket failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    r = http_l.accept() => match r {
                        Ok((stream, _)) => serve_connection(stream, http::Peer::Tcp, &st, &http_conns, graceful_ref, header_timeout),
                        Err(e) => {
                            tracing::warn!(error = %e, "accept on the http socket failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                }
            }
        }
    };

    let lifecycle = lifecycle(st.clone(), loader, shutdown.clone());
    let (result, ()) = tokio::join!(
        async {
            let r = lifecycle.await;
            accept_stop.cancel();
            r
        },
        accept
    );

    // Drain in-flight connections within the grace period. Connections accepted just before the
    // listeners closed get a moment to deliver their request first: hyper closes a connection that
    // has no request in progress at once, which a client would see as a reset.
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    tokio::time::sleep(grace.min(Duration::from_millis(300))).await;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = cfg.shutdown_grace_ms,
            "grace period over; closing remaining connections"
        );
    }
    if let Some(p) = socket_file {
        if let Err(e) = std::fs::remove_file(&p) {
            tracing::warn!(path = %p.display(), error = %e, "cannot remove the socket file");
        }
    }
    tracing::info!("stopped");
    result
}

/// Load → warmup → READY → wait for shutdown → STOPPING.
async fn lifecycle(
    st: Arc<AppState>,
    loader: Loader,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let t0 = Instant::now();
    set_status(&st, "loading model");
    let st2 = st.clone();
    let status: StatusFn = Arc::new(move |s: &str| set_status(&st2, s));
    let mut load = tokio::task::spawn_blocking(move || loader(status));
    // Keep systemd's start timeout ahead of a long load or engine build.
    let mut extend = tokio::time::interval(Duration::from_secs(10));
    let loaded = loop {
        tokio::select! {
            r = &mut load => break r,
            _ = extend.tick() => notify(&[NotifyState::ExtendTimeoutUsec(30_000_000)]),
            _ = shutdown.cancelled() => {
                st.set_phase(Phase::Stopping);
                notify(&[NotifyState::Stopping]);
                return Ok(());
            }
        }
    };
    let (det, mut info) = match loaded {
        Ok(Ok(x)) => x,
        Ok(Err(msg)) => {
            st.set_phase(Phase::Failed);
            set_status(&st, &format!("failed: {msg}"));
            return Err(ServeError::Load(msg));
        }
        Err(e) => {
            st.set_phase(Phase::Failed);
            return Err(ServeError::Load(format!("loader panicked: {e}")));
        }
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
    let n = st.config.warmup_iterations;
    notify(&[NotifyState::ExtendTimeoutUsec(30_000_000)]);
    let warm = tokio::select! {
        r = warmup(&st, &service, n) => r,
        _ = shutdown.cancelled() => {
            st.set_phase(Phase::Stopping);
            notify(&[NotifyState::Stopping]);
            return Ok(());
        }
    };
    let warm_ms = match warm {
        Ok(ms) => ms,
        Err(e) => {
            st.set_phase(Phase::Failed);
            set_status(&st, &format!("failed: {e}"));
            return Err(e);
        }
    };
    info.warmup_ms = warm_ms;
    if let Ok(mut e) = st.engine.lock() {
        *e = info;
    }
    st.set_phase(Phase::Ready);
    let line = format!("serving on {backend}");
    st.set_status(&line);
    notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
    tracing::info!(
        startup_ms = t0.elapsed().as_millis() as u64,
        warmup_ms = warm_ms,
        "ready"
    );

    shutdown.cancelled().await;
    st.set_phase(Phase::Stopping);
    st.set_status("stopping");
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    tracing::info!("shutdown requested; draining");
    Ok(())
}

//! Accepting and serving connections on both listeners: a connection cap per listener that idle
//! clients cannot exhaust (a new connection displaces the oldest one that has no request in
//! progress; only when every connection is busy is it answered `429 too_many_connections`),
//! hyper HTTP/1.1 with the header timeout (shorter on the health listener) and graceful shutdown,
//! and a bounded backoff after failed accepts (e.g. out of file descriptors).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::http::{self, Peer};
use super::parse_errors::JsonParseErrors;
use super::state::AppState;
use crate::pacing::Backoff;

/// First and longest pause after a failed accept.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The pause after failed accepts: doubling from `BACKOFF_MIN` to `BACKOFF_MAX`.
fn accept_backoff() -> Backoff {
    Backoff::new(BACKOFF_MIN, BACKOFF_MAX)
}

/// What a refused connection may still send (its request) before it is closed, and for how long.
const REFUSE_DRAIN_BYTES: u64 = 1024 * 1024;
const REFUSE_DRAIN_TIME: Duration = Duration::from_millis(500);

/// The health listener's header timeout at most: probes send their request at once.
const HEALTH_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers a connection over the cap with a 429 (distinct from the 503 of "not ready") and closes
/// it, after reading (within bounds) what the client is still sending, so that it reads the answer
/// instead of a reset.
async fn refuse<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    let body = ApiError::new(
        429,
        "too_many_connections",
        "connection limit reached and every connection is busy",
    )
    .body();
    let msg = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(msg.as_bytes()).await;
    let _ = s.flush().await;
    let mut sink = tokio::io::sink();
    let _ = tokio::time::timeout(
        REFUSE_DRAIN_TIME,
        tokio::io::copy(&mut (&mut s).take(REFUSE_DRAIN_BYTES), &mut sink),
    )
    .await;
    let _ = s.shutdown().await;
}

/// One open connection as its listener's slots see it.
#[derive(Debug)]
struct Conn {
    id: u64,
    /// Requests being answered on it right now.
    in_flight: AtomicUsize,
    /// Closes it (eviction).
    close: CancellationToken,
}

/// The connection slots of one listener: at most `cap` open connections. When they are all taken,
/// the oldest connection with no request in progress (an idle keep-alive, or a client that never
/// finished its headers) is closed to make room, so slow or idle clients cannot lock others out.
#[derive(Debug)]
struct Slots {
    permits: Arc<Semaphore>,
    open: Mutex<Vec<Arc<Conn>>>,
    next_id: AtomicU64,
}

impl Slots {
    fn new(cap: usize) -> Arc<Self> {
        Arc::new(Slots {
            permits: Arc::new(Semaphore::new(cap)),
            open: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// A slot for a new connection: a free one, or one freed by closing the oldest idle
    /// connection; `None` when every open connection is busy.
    async fn admit(self: &Arc<Self>) -> Option<(OwnedSemaphorePermit, Arc<Conn>)> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !self.evict_oldest_idle() {
                    return None;
                }
                // The evicted connection's task frees its permit as it ends.
                tokio::time::timeout(Duration::from_secs(1), self.permits.clone().acquire_owned())
                    .await
                    .ok()?
                    .ok()?
            }
        };
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            in_flight: AtomicUsize::new(0),
            close: CancellationToken::new(),
        });
        if let Ok(mut open) = self.open.lock() {
            open.push(conn.clone());
        }
        Some((permit, conn))
    }

    /// Closes the oldest connection with no request in progress; false when there is none.
    fn evict_oldest_idle(&self) -> bool {
        let Ok(mut open) = self.open.lock() else {
            return false;
        };
        let Some(i) = open
            .iter()
            .position(|c| c.in_flight.load(Ordering::SeqCst) == 0)
        else {
            return false;
        };
        let c = open.remove(i);
        tracing::debug!(
            conn = c.id,
            "connection cap reached; closing the oldest idle connection"
        );
        c.close.cancel();
        true
    }

    fn remove(&self, id: u64) {
        if let Ok(mut open) = self.open.lock() {
            open.retain(|c| c.id != id);
        }
    }
}

/// Counts a request as in progress on its connection while it is alive.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn new(conn: &Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(conn.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves accepted connections of both listeners.
pub(super) struct Acceptor<'a> {
    st: Arc<AppState>,
    graceful: &'a GracefulShutdown,
    header_timeout: Duration,
    detect_slots: Arc<Slots>,
    http_slots: Arc<Slots>,
}

impl<'a> Acceptor<'a> {
    pub(super) fn new(st: &Arc<AppState>, graceful: &'a GracefulShutdown) -> Self {
        let c = &st.config;
        Acceptor {
            st: st.clone(),
            graceful,
            header_timeout: Duration::from_millis(c.header_timeout_ms),
            detect_slots: Slots::new(c.max_connections),
            http_slots: Slots::new(c.max_connections),
        }
    }

    /// Accepts on both listeners until `stop` is cancelled.
    pub(super) async fn run(
        self,
        detect: UnixListener,
        http: TcpListener,
        stop: CancellationToken,
    ) {
        let (mut detect_backoff, mut http_backoff) = (accept_backoff(), accept_backoff());
        let health_timeout = self.header_timeout.min(HEALTH_HEADER_TIMEOUT);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                r = detect.accept() => match r {
                    Ok((stream, _)) => {
                        detect_backoff.reset();
                        let cred = stream.peer_cred().ok();
                        let peer = Peer::Unix { uid: cred.map(|c| c.uid()), pid: cred.and_then(|c| c.pid()) };
                        self.serve(stream, peer, &self.detect_slots, self.header_timeout);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept on the detection socket failed");
                        tokio::time::sleep(detect_backoff.advance()).await;
                    }
                },
                r = http.accept() => match r {
                    Ok((stream, _)) => {
                        http_backoff.reset();
                        self.serve(stream, Peer::Tcp, &self.http_slots, health_timeout);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept on the http socket failed");
                        tokio::time::sleep(http_backoff.advance()).await;
                    }
                },
            }
        }
    }

    /// Serves one accepted connection (HTTP/1.1, header timeout, graceful-shutdown aware) in a
    /// slot of its listener, or answers 429 and closes it when every slot holds a busy connection.
    fn serve<S>(&self, stream: S, peer: Peer, slots: &Arc<Slots>, header_timeout: Duration)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let st = self.st.clone();
        let slots = slots.clone();
        let watcher = self.graceful.watcher();
        tokio::spawn(async move {
            let Some((permit, conn)) = slots.admit().await else {
                refuse(stream).await;
                return;
            };
            let in_conn = conn.clone();
            let svc = service_fn(move |req| {
                let busy = InFlight::new(&in_conn);
                let st = st.clone();
                async move {
                    let mut r = http::handle(req, st, peer).await;
                    // A streamed answer keeps the connection busy until it ends.
                    if let Ok(resp) = &mut r {
                        resp.body_mut().hold(busy);
                    }
                    r
                }
            });
            let hyper_conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                // A client may shut its write side after a complete request: still answer it.
                .half_close(true)
                .serve_connection(TokioIo::new(JsonParseErrors::new(stream)), svc);
            let fut = watcher.watch(hyper_conn);
            tokio::select! {
                r = fut => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, ?peer, "connection ended with an error");
                    }
                }
                _ = conn.close.cancelled() => {}
            }
            slots.remove(conn.id);
            drop(permit);
        });
    }
}

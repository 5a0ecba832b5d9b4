//! Accepting and serving connections on both listeners: a connection cap per listener (a
//! `503 too_many_connections` answer over it), hyper HTTP/1.1 with the header timeout and graceful
//! shutdown, and a bounded backoff after failed accepts (e.g. out of file descriptors).

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::http::{self, Peer};
use super::state::AppState;

/// First and longest pause after a failed accept.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Doubles the pause after each failed accept, up to `BACKOFF_MAX`; a success resets it.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(BACKOFF_MIN)
    }
    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
    /// The pause to take now; the next one is twice as long (up to the bound).
    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        now
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.next()).await;
    }
}

/// What a refused connection may still send (its request) before it is closed, and for how long.
const REFUSE_DRAIN_BYTES: u64 = 1024 * 1024;
const REFUSE_DRAIN_TIME: Duration = Duration::from_millis(500);

/// Answers a connection over the cap with a 503 and closes it, after reading (within bounds) what
/// the client is still sending, so that it reads the answer instead of a reset.
async fn refuse<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
    let body = ApiError::unavailable("too_many_connections", "connection limit reached", 1).body();
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
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

/// Serves accepted connections of both listeners.
pub(super) struct Acceptor<'a> {
    st: Arc<AppState>,
    graceful: &'a GracefulShutdown,
    header_timeout: Duration,
    detect_conns: Arc<Semaphore>,
    http_conns: Arc<Semaphore>,
}

impl<'a> Acceptor<'a> {
    pub(super) fn new(st: &Arc<AppState>, graceful: &'a GracefulShutdown) -> Self {
        let c = &st.config;
        Acceptor {
            st: st.clone(),
            graceful,
            header_timeout: Duration::from_millis(c.header_timeout_ms),
            detect_conns: Arc::new(Semaphore::new(c.max_connections)),
            http_conns: Arc::new(Semaphore::new(c.max_connections)),
        }
    }

    /// Accepts on both listeners until `stop` is cancelled.
    pub(super) async fn run(
        self,
        detect: UnixListener,
        http: TcpListener,
        stop: CancellationToken,
    ) {
        let (mut detect_backoff, mut http_backoff) = (Backoff::new(), Backoff::new());
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                r = detect.accept() => match r {
                    Ok((stream, _)) => {
                        detect_backoff.reset();
                        let cred = stream.peer_cred().ok();
                        let peer = Peer::Unix { uid: cred.map(|c| c.uid()), pid: cred.and_then(|c| c.pid()) };
                        self.serve(stream, peer, &self.detect_conns);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept on the detection socket failed");
                        detect_backoff.wait().await;
                    }
                },
                r = http.accept() => match r {
                    Ok((stream, _)) => {
                        http_backoff.reset();
                        self.serve(stream, Peer::Tcp, &self.http_conns);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept on the http socket failed");
                        http_backoff.wait().await;
                    }
                },
            }
        }
    }

    /// Serves one accepted connection (HTTP/1.1, header timeout, graceful-shutdown aware), or
    /// answers 503 and closes it when the listener's connection cap is reached.
    fn serve<S>(&self, stream: S, peer: Peer, conns: &Arc<Semaphore>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            return;
        };
        let st = self.st.clone();
        let svc = service_fn(move |req| http::handle(req, st.clone(), peer));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            // A client may shut its write side after a complete request: still answer it.
            .half_close(true)
            .serve_connection(TokioIo::new(stream), svc);
        let fut = self.graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::debug!(error = %e, ?peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound_and_resets() {
        let mut b = Backoff::new();
        let seen: Vec<Duration> = (0..9).map(|_| b.next()).collect();
        assert_eq!(seen[0], Duration::from_millis(10));
        assert_eq!(seen[1], Duration::from_millis(20));
        assert_eq!(seen[6], Duration::from_millis(640));
        assert_eq!(seen[7], BACKOFF_MAX);
        assert_eq!(seen[8], BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next(), BACKOFF_MIN);
    }
}

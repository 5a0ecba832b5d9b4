//! Harness for daemon tests: starts the real binary with a fixture model, a temporary socket, a
//! free loopback port and a test-owned `NOTIFY_SOCKET`; a raw HTTP/1.1 client over the Unix socket
//! and TCP (so tests can send malformed, slow or truncated requests).
use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{bin, fixtures, wait};

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The error kind of a JSON error body; empty when the body is not one.
    pub(crate) fn kind(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["kind"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// Parses a complete HTTP/1.1 response (the server closes or sends Content-Length).
pub(crate) fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if body.len() < len {
            return None;
        }
        body.truncate(len);
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

/// Reads one response (until its Content-Length is complete, or the peer closes).
pub(crate) fn read_response<S: Read>(s: &mut S) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(r) = parse_response(&buf) {
            if r.header("content-length").is_some() {
                return Ok(r);
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return parse_response(&buf).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("incomplete response: {:?}", String::from_utf8_lossy(&buf)),
                )
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Builds a request with `Content-Length` and `Connection: close`.
pub(crate) fn request_bytes(
    method: &str,
    target: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if let Some(ct) = content_type {
        r.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    r.push_str("\r\n");
    let mut v = r.into_bytes();
    v.extend_from_slice(body);
    v
}

/// One request over the Unix socket.
pub(crate) fn unix_request(
    sock: &Path,
    method: &str,
    target: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(&request_bytes(method, target, content_type, body))?;
    read_response(&mut s)
}

/// One request over loopback TCP.
pub(crate) fn tcp_request(port: u16, method: &str, target: &str) -> std::io::Result<Response> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(&request_bytes(method, target, None, b""))?;
    read_response(&mut s)
}

/// Percent-encodes a query value.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/v1/detect?query=…` for the given queries and extra parameters.
pub(crate) fn detect_target(queries: &[&str], extra: &str) -> String {
    let mut t = String::from("/v1/detect?");
    t.push_str(
        &queries
            .iter()
            .map(|q| format!("query={}", enc(q)))
            .collect::<Vec<_>>()
            .join("&"),
    );
    if !extra.is_empty() {
        t.push('&');
        t.push_str(extra);
    }
    t
}

/// A running daemon.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    /// Holds the socket, cache, notify socket and log; removed on drop.
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) socket: PathBuf,
    pub(crate) port: u16,
    pub(crate) notes: Arc<Mutex<Vec<String>>>,
    pub(crate) stderr_path: PathBuf,
}

/// A loopback port nobody listens on right now and that no other test of this process got.
///
/// A port is handed out once: a test that stops its broker and starts it again on the same port
/// must not find another test's broker there (CI saw exactly that: two MQTT tests, one port).
pub(crate) fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind :0");
        let port = l.local_addr().expect("addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl Daemon {
    /// Starts `serve` with the tiny-a model and extra `IV_*` settings.
    pub(crate) fn start(env: &[(&str, &str)]) -> Daemon {
        Self::start_with(fixtures::model_dir("tiny-a").to_str().expect("utf8"), env)
    }

    pub(crate) fn start_with(model: &str, env: &[(&str, &str)]) -> Daemon {
        Self::launch(model, &[], env)
    }

    /// Starts `serve ARGS…` with `model` and extra `IV_*` settings (they override the harness's
    /// own, e.g. `IV_STATE_DIR`).
    pub(crate) fn launch(model: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().expect("tmp");
        let socket = dir.path().join("run/detect.sock");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let notes = Arc::new(Mutex::new(Vec::new()));
        {
            let notes = notes.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 4096];
                loop {
                    match notify.recv(&mut buf) {
                        Ok(n) => {
                            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                            let mut g = notes.lock().expect("lock");
                            for line in msg.lines() {
                                g.push(line.to_string());
                            }
                        }
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut =>
                        {
                            if Arc::strong_count(&notes) == 1 {
                                break;
                            }
                        }
                        Err(_) => break,
                    }
                }
            });
        }
        let port = free_port();
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("log");
        let mut cmd = bin::command();
        cmd.arg("serve")
            .args(args)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("IV_STATE_DIR", dir.path().join("state"))
            .env("IV_MODEL", model)
            .env("IV_SOCKET_PATH", &socket)
            .env("IV_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("IV_WARMUP_ITERATIONS", "2")
            .env("IV_LOG_FORMAT", "text")
            .env("IV_CACHE_DIR", dir.path().join("cache"))
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("daemon starts");
        Daemon {
            child,
            _dir: dir,
            socket,
            port,
            notes,
            stderr_path,
        }
    }

    /// Notification lines received so far.
    pub(crate) fn notes(&self) -> Vec<String> {
        self.notes.lock().expect("lock").clone()
    }

    /// Waits until a notification line satisfies `pred` (or the daemon exits / time runs out).
    pub(crate) fn wait_note(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let seen = |d: &Daemon| d.notes().iter().any(|n| pred(n));
        wait::until(timeout, || {
            if seen(self) {
                return Some(true);
            }
            // Once the daemon has exited, no more notes can come: the last look decides.
            matches!(self.child.try_wait(), Ok(Some(_))).then(|| seen(self))
        })
        .unwrap_or(false)
    }

    /// How many notification lines equal `note` so far.
    pub(crate) fn count_notes(&self, note: &str) -> usize {
        self.notes().iter().filter(|n| *n == note).count()
    }

    /// Waits for `READY=1`; panics with the daemon's stderr otherwise.
    pub(crate) fn wait_ready(&mut self) {
        if !self.wait_note(|n| n == "READY=1", Duration::from_secs(120)) {
            panic!(
                "daemon not ready; notes {:?}; stderr:\n{}",
                self.notes(),
                self.stderr()
            );
        }
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub(crate) fn request(
        &self,
        method: &str,
        target: &str,
        ct: Option<&str>,
        body: &[u8],
    ) -> Response {
        unix_request(&self.socket, method, target, ct, body)
            .unwrap_or_else(|e| panic!("request failed: {e}; stderr:\n{}", self.stderr()))
    }

    /// One detection of "person" in a fixture image answers 200 with detections (at threshold 0
    /// every patch is one).
    pub(crate) fn assert_detects(&self) {
        let r = self.request(
            "POST",
            &detect_target(&["person"], "threshold=0"),
            Some("image/png"),
            &fixtures::image("small_pad.png"),
        );
        assert_eq!(
            r.status,
            200,
            "{}\nstderr:\n{}",
            String::from_utf8_lossy(&r.body),
            self.stderr()
        );
        assert!(!r.json()["detections"]
            .as_array()
            .expect("detections")
            .is_empty());
    }

    pub(crate) fn health(&self) -> Response {
        tcp_request(self.port, "GET", "/api/health").expect("health")
    }

    /// Sends a signal to the daemon.
    pub(crate) fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("kill");
    }

    /// Waits for exit; returns the exit code.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        wait::until(timeout, || self.child.try_wait().ok().flatten()).and_then(|s| s.code())
    }

    /// GET `/metrics` over the health port (must answer 200): the Prometheus text, to read with
    /// [`super::metrics`].
    pub(crate) fn metrics(&self) -> String {
        let r = tcp_request(self.port, "GET", "/metrics").expect("metrics");
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).expect("utf8 metrics")
    }

    /// Whether the daemon is still running.
    pub(crate) fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

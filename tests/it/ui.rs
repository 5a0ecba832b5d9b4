//! `intelligent-video ui`: the socket on a loopback port behind a random token. Without the token
//! (or with another) every request is refused; the printed URL's token is moved into a cookie by a
//! redirect; with the cookie, requests reach the daemon (listing, a detection) and its cross-site
//! gate still refuses what another page would send.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::daemon::{read_response, Daemon, Response};
use crate::support::{bin, fixtures};

/// `intelligent-video ui --no-browser` for a daemon: its port and token; killed when the test
/// ends, however it ends.
pub(crate) struct Proxy {
    child: Child,
    /// Its stdout, kept open while it runs.
    _out: BufReader<std::process::ChildStdout>,
    pub(crate) port: u16,
    pub(crate) token: String,
}

impl Proxy {
    pub(crate) fn start(d: &Daemon) -> Proxy {
        let mut child = bin::command()
            .args(["ui", "--no-browser", "--socket"])
            .arg(&d.socket)
            .stdout(Stdio::piped())
            .spawn()
            .expect("ui starts");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        out.read_line(&mut line).expect("the URL line");
        let url = line
            .trim()
            .strip_prefix("intelligent-video ui: http://127.0.0.1:")
            .unwrap_or_else(|| panic!("a loopback URL: {line:?}"))
            .to_string();
        let (port, token) = url.split_once("/?token=").expect("a token in the URL");
        Proxy {
            port: port.parse().expect("port"),
            token: token.to_string(),
            child,
            _out: out,
        }
    }

    /// The URL the proxy printed (the token moves into a cookie on the first visit).
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/?token={}", self.port, self.token)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(port: u16, head: &str, body: &[u8]) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut raw = format!(
        "{head}Host: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    s.write_all(&raw).expect("send");
    read_response(&mut s).expect("a response")
}

#[test]
fn the_ui_proxy_needs_its_token_and_forwards_to_the_socket() {
    let mut d = Daemon::start(&[]);
    d.wait_ready();
    let proxy = Proxy::start(&d);
    let (port, token) = (proxy.port, proxy.token.as_str());
    assert_eq!(token.len(), 64, "{token}");

    for head in [
        "GET /v1/streams HTTP/1.1\r\n".to_string(),
        "GET /v1/streams?token=0000 HTTP/1.1\r\n".to_string(),
        format!(
            "GET /v1/streams HTTP/1.1\r\nCookie: iv_ui={}\r\n",
            &token[1..]
        ),
    ] {
        let r = send(port, &head, b"");
        assert_eq!((r.status, r.kind().as_str()), (403, "forbidden"), "{head}");
    }
    let r = send(
        port,
        &format!("GET /v1/streams?token={token} HTTP/1.1\r\n"),
        b"",
    );
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/v1/streams"));
    let cookie = r.header("set-cookie").expect("a cookie").to_string();
    assert!(
        cookie.starts_with(&format!("iv_ui={token};")) && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let with_cookie = |head: &str| format!("{head}Cookie: other=1; iv_ui={token}\r\n");
    let r = send(port, &with_cookie("GET /v1/streams HTTP/1.1\r\n"), b"");
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"streams": []}))
    );
    let png = fixtures::image("small_pad.png");
    let r = send(
        port,
        &with_cookie("POST /v1/detect?query=cat HTTP/1.1\r\nContent-Type: image/png\r\n"),
        &png,
    );
    assert_eq!(r.status, 200);
    assert!(r.json()["detections"].is_array());
    let r = send(
        port,
        &with_cookie("DELETE /v1/query-sets/x HTTP/1.1\r\nOrigin: http://evil.example\r\n"),
        b"",
    );
    assert_eq!((r.status, r.kind().as_str()), (403, "cross_origin"));
}

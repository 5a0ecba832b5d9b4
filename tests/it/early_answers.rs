//! Answers given before the request body is read still reach ordinary clients: the daemon reads
//! and discards the body (within bounds) instead of closing on a client that is still sending;
//! clients that half-close after a complete request get their answer; a connection over the cap
//! gets its 503 instead of a reset.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;

use std::time::Duration;

use crate::support::daemon::{read_response, Daemon, Response};
use crate::support::wait;

/// Sends a request with `body` the way simple clients do (headers, then the whole body, then read),
/// failing on a broken pipe or a reset while sending.
fn send_then_read<S: Read + Write>(mut s: S, head: &str, body: &[u8]) -> std::io::Result<Response> {
    s.write_all(head.as_bytes())?;
    for chunk in body.chunks(16 * 1024) {
        s.write_all(chunk)?;
    }
    s.flush()?;
    read_response(&mut s)
}

fn post_head(target: &str, len: usize) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nhost: localhost\r\ncontent-type: image/png\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
    )
}

#[test]
fn errors_before_the_body_is_read_reach_clients_still_sending_it() {
    let mut d = Daemon::start(&[]);
    d.wait_ready();
    let body = vec![7u8; 400 * 1024];
    let cases = [
        ("/v1/detect?query=%ZZ", 400, "invalid_query_string"),
        ("/v1/detect?query=a&colour=red", 400, "invalid_parameter"),
        ("/v1/nope", 404, "not_found"),
    ];
    for round in 0..5 {
        for (target, status, kind) in cases {
            let s = UnixStream::connect(&d.socket).expect("connect");
            let r = send_then_read(s, &post_head(target, body.len()), &body)
                .unwrap_or_else(|e| panic!("round {round} {target}: {e}"));
            assert_eq!(r.status, status, "{target}");
            assert_eq!(r.kind(), kind, "{target}");
        }
    }
}

#[test]
fn not_ready_answers_reach_clients_still_sending_their_body() {
    // Many warmup iterations keep the daemon starting while the requests arrive.
    let d = Daemon::start(&[("IV_WARMUP_ITERATIONS", "1000")]);
    assert!(
        wait::until_true(Duration::from_secs(30), || UnixStream::connect(&d.socket)
            .is_ok()),
        "the socket never accepted"
    );
    let body = vec![7u8; 400 * 1024];
    for _ in 0..20 {
        let s = UnixStream::connect(&d.socket).expect("connect");
        let r = send_then_read(s, &post_head("/v1/detect?query=a", body.len()), &body)
            .expect("the 503 is read, not a broken pipe");
        assert_eq!(r.status, 503);
        assert_eq!(r.kind(), "not_ready");
    }
}

#[test]
fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let mut d = Daemon::start(&[]);
    d.wait_ready();
    for _ in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", d.port)).expect("connect");
        s.write_all(b"GET /api/health HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .expect("send");
        s.shutdown(Shutdown::Write).expect("half-close");
        let r = read_response(&mut s).expect("answer after half-close");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["status"], "healthy");
    }
}

#[test]
fn a_connection_over_the_cap_of_busy_connections_reads_its_429() {
    let mut d = Daemon::start(&[("IV_MAX_CONNECTIONS", "1")]);
    d.wait_ready();
    // The one allowed connection is busy: its request has started (the daemon asked for the body
    // with `100 Continue`) and its body is still on the way.
    let mut held = UnixStream::connect(&d.socket).expect("first");
    held.write_all(
        b"POST /v1/detect?query=a HTTP/1.1\r\nhost: localhost\r\ncontent-type: image/png\r\ncontent-length: 1000\r\nexpect: 100-continue\r\n\r\n",
    )
    .expect("headers");
    let mut buf = [0u8; 64];
    let n = held.read(&mut buf).expect("100 continue");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let body = vec![7u8; 400 * 1024];
    for _ in 0..10 {
        let s = UnixStream::connect(&d.socket).expect("connect");
        let r = send_then_read(s, &post_head("/v1/detect?query=a", body.len()), &body)
            .expect("the 429 is read, not a reset");
        assert_eq!(r.status, 429);
        assert_eq!(r.kind(), "too_many_connections");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
}

#[test]
fn idle_connections_cannot_lock_probes_out_of_the_health_listener() {
    let mut d = Daemon::start(&[("IV_MAX_CONNECTIONS", "4")]);
    d.wait_ready();
    // Slowloris: more connections than the cap, each with an unfinished request head.
    let idle: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", d.port)).expect("connect");
            s.write_all(b"GET /api/health HTTP/1.1\r\nhost: loc")
                .expect("partial head");
            s
        })
        .collect();
    for _ in 0..5 {
        let r = d.health();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["status"], "healthy");
    }
    drop(idle);
}

//! Webhooks end to end: the `moving` clip with a line and a zone, two receivers started here on
//! 127.0.0.1. The first answers 503 three times, then 200: every `line_cross` and `zone_enter`
//! event of the journal arrives accepted once, in order, with `X-IV-Event-Id` and a valid
//! `X-IV-Signature` (HMAC-SHA256 of the body with the secret file's key). The second answers 404:
//! each event is tried once, dropped and counted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::events::{caught_up, clip, stream_body};
use crate::streams::{file_roots, put, wait_status};
use crate::support::daemon::{free_port, Daemon};
use crate::support::{fixtures, metrics, wait};

/// One request a receiver got: its headers (lower-case names) and body, and the status it gave.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    status: u16,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A receiver on a free port answering `status(n)` to its n-th request (0-based).
fn receiver(status: fn(usize) -> u16) -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind(("127.0.0.1", free_port())).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let log = got.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut headers = Vec::new();
            let mut line = String::new();
            let _ = reader.read_line(&mut line); // request line
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let len = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let status = status(n);
            log.lock().expect("lock").push(Received {
                headers,
                body,
                status,
            });
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (port, got)
}

fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn webhooks_deliver_once_after_503s_signed_and_drop_on_404() {
    let tmp = tempfile::tempdir().expect("tmp");
    let clips = tmp.path().join("clips");
    let video = clip(&clips);
    let (flaky_port, flaky) = receiver(|n| if n < 3 { 503 } else { 200 });
    let (gone_port, gone) = receiver(|_| 404);
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "hush\n").expect("secret");
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[webhooks]]\nname = \"flaky\"\nurl = \"http://127.0.0.1:{flaky_port}/hook\"\nevents = [\"line_cross\", \"zone_enter\"]\nsecret_file = {:?}\n\n[[webhooks]]\nname = \"gone\"\nurl = \"http://127.0.0.1:{gone_port}/hook\"\nevents = [\"new\"]\nstreams = [\"moving\"]\n",
            secret.display().to_string()
        ),
    )
    .expect("config");
    let state = tmp.path().join("state");
    let (state_s, roots) = (
        state.to_str().expect("utf8").to_string(),
        file_roots(&[&clips]),
    );
    let env = [
        ("IV_STREAM_FILE_ROOTS", roots.as_str()),
        ("IV_STATE_DIR", state_s.as_str()),
        ("IV_STREAM_KEEPALIVE_MS", "500"),
    ];
    let model = fixtures::model_dir("tiny-track");
    let mut d = Daemon::launch(
        model.to_str().expect("utf8"),
        &["--config", config.to_str().expect("utf8")],
        &env,
    );
    d.wait_ready();
    assert_eq!(put(&d, "moving", &stream_body(&video)).status, 201);
    wait_status(&d, "moving", Duration::from_secs(120), |s| {
        s["state"] == "finished"
    });
    let journal = caught_up(&d, "/v1/events?since=0");
    let wanted: Vec<&Value> = journal
        .iter()
        .filter(|e| e["type"] == "line_cross" || e["type"] == "zone_enter")
        .collect();
    assert!(!wanted.is_empty());
    let accepted = || -> Vec<Received> {
        flaky
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.status == 200)
            .cloned()
            .collect()
    };
    let done = wait::until_true(Duration::from_secs(60), || accepted().len() >= wanted.len());
    assert!(done, "{:?}\n{}", flaky.lock().expect("lock"), d.stderr());
    let got = accepted();
    assert_eq!(got.len(), wanted.len(), "each event accepted once");
    for (r, e) in got.iter().zip(&wanted) {
        let body: Value = serde_json::from_slice(&r.body).expect("a JSON event");
        assert_eq!(&&body, e);
        assert_eq!(r.header("x-iv-event-id"), e["id"].as_str());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("x-iv-signature"),
            Some(signature(b"hush", &r.body).as_str())
        );
    }
    let all = flaky.lock().expect("lock").clone();
    assert_eq!(all.len(), wanted.len() + 3, "three 503s, then each once");
    assert!(
        all[..4].iter().all(|r| r.body == all[0].body),
        "the first event retried"
    );

    // 404: tried once each, dropped, counted.
    let news = journal.iter().filter(|e| e["type"] == "new").count();
    assert!(wait::until_true(Duration::from_secs(30), || gone
        .lock()
        .expect("lock")
        .len()
        >= news));
    // Each answer is counted once the daemon has it: wait for the positions to move past them.
    let settled = wait::until_true(Duration::from_secs(30), || {
        let m = d.metrics();
        ["gone", "flaky"]
            .iter()
            .all(|s| metrics::value(&m, "iv_sink_outbox_events", &[("sink", s)]) == Some(0.0))
    });
    assert!(settled, "{}", d.metrics());
    let m = d.metrics();
    let value = |name: &str, labels: &[(&str, &str)]| metrics::value(&m, name, labels);
    assert_eq!(
        value(
            "iv_webhook_failures_total",
            &[("sink", "gone"), ("class", "4xx")]
        ),
        Some(news as f64)
    );
    assert_eq!(
        value("iv_sink_dropped_total", &[("sink", "gone")]),
        Some(news as f64)
    );
    assert_eq!(
        value(
            "iv_webhook_failures_total",
            &[("sink", "flaky"), ("class", "5xx")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value("iv_sink_delivered_total", &[("sink", "flaky")]),
        Some(wanted.len() as f64)
    );
    assert_eq!(
        value("iv_sink_outbox_events", &[("sink", "gone")]),
        Some(0.0)
    );
    assert_eq!(
        gone.lock().expect("lock").len(),
        news,
        "a 404 is not retried"
    );
}

//! A bounded load test of the daemon: 8 clients × 40 requests over the Unix socket against a small
//! queue. Every answer is either the right detections for the image sent (batching changes
//! nothing) or a 503 `queue_full` with `Retry-After`; no connection fails, and the queue drains.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{detect_target, tcp_request, unix_request, Daemon, Response};

const QUERIES: [&str; 2] = ["a photo of a cat", "person"];
const IMAGES: [&str; 3] = ["wide_blur.png", "photo.jpg", "tall_rgba.png"];
const CLIENTS: usize = 8;
const PER_CLIENT: usize = 40;
/// Pause of a client after a 503 before its next request.
const BACKOFF: Duration = Duration::from_millis(5);

fn content_type(name: &str) -> &'static str {
    if name.ends_with(".jpg") {
        "image/jpeg"
    } else {
        "image/png"
    }
}

fn detections(r: &Response) -> Result<Vec<serde_json::Value>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("not JSON: {e}"))?;
    v["detections"]
        .as_array()
        .cloned()
        .ok_or_else(|| "no detections array".to_string())
}

/// Compares detections: label and query index exactly, score within 1e-5, box within 1e-3.
fn compare(got: &[serde_json::Value], want: &[serde_json::Value]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} detections, want {}", got.len(), want.len()));
    }
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g["label"] != w["label"] || g["query_index"] != w["query_index"] {
            return Err(format!("detection {i}: {g} vs {w}"));
        }
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        if (f(&g["score"]) - f(&w["score"])).abs() >= 1e-5 {
            return Err(format!(
                "detection {i}: score {} vs {}",
                g["score"], w["score"]
            ));
        }
        for k in 0..4 {
            if (f(&g["box"][k]) - f(&w["box"][k])).abs() >= 1e-3 {
                return Err(format!("detection {i}: box {} vs {}", g["box"], w["box"]));
            }
        }
    }
    Ok(())
}

fn metrics(d: &Daemon) -> String {
    let r = tcp_request(d.port, "GET", "/metrics").expect("metrics");
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).expect("utf8 metrics")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[derive(Default)]
struct Tally {
    ok: usize,
    queue_full: usize,
    latencies: Vec<Duration>,
    max_batch: u64,
    failures: Vec<String>,
}

#[test]
fn bounded_load_gets_correct_answers_or_queue_full() {
    let mut d = Daemon::start(&[
        ("IV_MAX_QUEUE", "4"),
        ("IV_MAX_BATCH_SIZE", "4"),
        ("IV_MAX_BATCH_WAIT_MS", "2"),
    ]);
    d.wait_ready();
    let target = detect_target(&QUERIES, "threshold=0.2");
    let images: Vec<(String, Vec<u8>)> = IMAGES
        .iter()
        .map(|n| {
            let p = common::fixtures().join("images").join(n);
            (
                n.to_string(),
                std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            )
        })
        .collect();
    // Expected detections: one request per image on the idle daemon.
    let expected: Vec<Vec<serde_json::Value>> = images
        .iter()
        .map(|(name, bytes)| {
            let r = d.request("POST", &target, Some(content_type(name)), bytes);
            assert_eq!(
                r.status,
                200,
                "{name}: {}",
                String::from_utf8_lossy(&r.body)
            );
            detections(&r).expect("detections")
        })
        .collect();
    assert!(
        expected.iter().any(|e| !e.is_empty()),
        "threshold 0.2 keeps nothing on any fixture"
    );

    let images = Arc::new(images);
    let expected = Arc::new(expected);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (images, expected, tally) = (images.clone(), expected.clone(), tally.clone());
            let (socket, target) = (d.socket.clone(), target.clone());
            std::thread::spawn(move || {
                let mut local = Tally::default();
                for i in 0..PER_CLIENT {
                    let which = (c + i) % images.len();
                    let (name, bytes) = &images[which];
                    let t = Instant::now();
                    let r = match unix_request(
                        &socket,
                        "POST",
                        &target,
                        Some(content_type(name)),
                        bytes,
                    ) {
                        Ok(r) => r,
                        Err(e) => {
                            local.failures.push(format!(
                                "client {c} request {i} ({name}): connection error {e}"
                            ));
                            continue;
                        }
                    };
                    let took = t.elapsed();
                    match r.status {
                        200 => match detections(&r).and_then(|g| compare(&g, &expected[which])) {
                            Ok(()) => {
                                let batch = serde_json::from_slice::<serde_json::Value>(&r.body)
                                    .ok()
                                    .and_then(|v| v["batch_size"].as_u64())
                                    .unwrap_or(0);
                                local.max_batch = local.max_batch.max(batch);
                                local.ok += 1;
                                local.latencies.push(took);
                            }
                            Err(e) => local
                                .failures
                                .push(format!("client {c} request {i} ({name}): {e}")),
                        },
                        503 => {
                            let kind = serde_json::from_slice::<serde_json::Value>(&r.body)
                                .ok()
                                .and_then(|v| v["error"]["kind"].as_str().map(str::to_string))
                                .unwrap_or_default();
                            if kind == "queue_full" && r.header("retry-after").is_some() {
                                local.queue_full += 1;
                                // A client backs off before its next request (Retry-After says
                                // 1 s; a short fixed backoff keeps the test quick). Without it the
                                // rejected clients spin through their requests in microseconds.
                                std::thread::sleep(BACKOFF);
                            } else {
                                local.failures.push(format!(
                                    "client {c} request {i}: 503 kind {kind:?} retry-after {:?}",
                                    r.header("retry-after")
                                ));
                            }
                        }
                        s => local.failures.push(format!(
                            "client {c} request {i} ({name}): status {s}: {}",
                            String::from_utf8_lossy(&r.body)
                        )),
                    }
                }
                let mut g = tally.lock().expect("lock");
                g.ok += local.ok;
                g.queue_full += local.queue_full;
                g.max_batch = g.max_batch.max(local.max_batch);
                g.latencies.extend(local.latencies);
                g.failures.extend(local.failures);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    let elapsed = start.elapsed();
    let mut t = std::mem::take(&mut *tally.lock().expect("lock"));
    t.latencies.sort();
    let total = CLIENTS * PER_CLIENT;
    eprintln!(
        "load: {total} requests in {:.3} s = {:.1} req/s; ok {} (p50 {:.1} ms, p99 {:.1} ms); 503 queue_full {}; largest batch {}; failures {}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        t.ok,
        percentile(&t.latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&t.latencies, 0.99).as_secs_f64() * 1e3,
        t.queue_full,
        t.max_batch,
        t.failures.len()
    );
    assert!(
        t.failures.is_empty(),
        "{} bad responses, first ones:\n{}",
        t.failures.len(),
        t.failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(t.ok + t.queue_full, total);
    assert!(
        t.ok * 4 >= total,
        "only {} of {total} requests succeeded",
        t.ok
    );

    // Metrics: batches were recorded and the queue drained (bounded polling).
    let m = metrics(&d);
    assert!(
        m.lines().any(|l| l.starts_with("iv_batch_size_bucket")),
        "no iv_batch_size_bucket line:\n{m}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = metrics(&d);
    while !last.lines().any(|l| l == "iv_queue_depth 0") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        last = metrics(&d);
    }
    let depth = last
        .lines()
        .find(|l| l.starts_with("iv_queue_depth "))
        .unwrap_or("missing")
        .to_string();
    assert_eq!(
        depth, "iv_queue_depth 0",
        "queue depth after the load:\n{last}"
    );
    let ok_count = last
        .lines()
        .find_map(|l| l.strip_prefix("iv_requests_total{outcome=\"ok\"} "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    assert_eq!(
        ok_count,
        t.ok + images.len(),
        "ok outcomes counted:\n{last}"
    );
    let full_count = last
        .lines()
        .find_map(|l| l.strip_prefix("iv_requests_total{outcome=\"queue_full\"} "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    assert_eq!(
        full_count, t.queue_full,
        "queue_full outcomes counted:\n{last}"
    );
    assert!(
        d.child.try_wait().expect("try_wait").is_none(),
        "daemon exited; stderr:\n{}",
        d.stderr()
    );
    assert!(
        !d.stderr().contains("panicked"),
        "daemon panicked:\n{}",
        d.stderr()
    );
}

//! A bounded load test of the daemon: 8 clients × 40 requests over the Unix socket against a small
//! queue. Every answer is either the right detections for the image sent (batching changes
//! nothing) or a 503 `queue_full` with `Retry-After`; no connection fails, and the queue drains.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::daemon::{detect_target, unix_request, Daemon, Response};
use crate::support::detections::{compare, Det, Tolerance};
use crate::support::{fixtures, metrics, wait};

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

fn detections(r: &Response) -> Result<Vec<Det>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("not JSON: {e}"))?;
    Det::list_from_json(&v["detections"])
}

/// Under load the same image is answered within a batch of up to 4 instead of alone, so the
/// numbers may move by what batching changes in the kernels: label and query index exactly, score
/// < 1e-5, box < 1e-3 px. Tighter than the README's parity tolerances on purpose, kept as it was.
const BATCHED_VS_ALONE: Tolerance = Tolerance::strict(1e-5, 1e-3);

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
        .map(|n| (n.to_string(), fixtures::image(n)))
        .collect();
    // Expected detections (and the image's larger side): one request per image on the idle daemon.
    let expected: Vec<(Vec<Det>, f64)> = images
        .iter()
        .map(|(name, bytes)| {
            let r = d.request("POST", &target, Some(content_type(name)), bytes);
            assert_eq!(
                r.status,
                200,
                "{name}: {}",
                String::from_utf8_lossy(&r.body)
            );
            let v = r.json();
            let side = v["width"]
                .as_f64()
                .expect("width")
                .max(v["height"].as_f64().expect("height"));
            (detections(&r).expect("detections"), side)
        })
        .collect();
    assert!(
        expected.iter().any(|e| !e.0.is_empty()),
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
                        200 => match detections(&r).and_then(|g| {
                            let (want, side) = &expected[which];
                            compare(&g, want, *side, BATCHED_VS_ALONE)
                        }) {
                            Ok(_) => {
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
                            let kind = r.kind();
                            if kind == "queue_full" && r.header("retry-after").is_some() {
                                local.queue_full += 1;
                                // A fixed pause on purpose (client behaviour under test, not a
                                // wait for a condition). A client backs off before its next
                                // request (Retry-After says
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
    let m = d.metrics();
    assert!(
        metrics::has(&m, "iv_batch_size_bucket"),
        "no iv_batch_size_bucket line:\n{m}"
    );
    let mut last = String::new();
    wait::until_true(Duration::from_secs(5), || {
        last = d.metrics();
        metrics::value(&last, "iv_queue_depth", &[]) == Some(0.0)
    });
    assert_eq!(
        metrics::value(&last, "iv_queue_depth", &[]),
        Some(0.0),
        "queue depth after the load:\n{last}"
    );
    // A counter that was never incremented may be absent: it counts as 0.
    let outcome = |o: &str| {
        metrics::value(&last, "iv_requests_total", &[("outcome", o)]).unwrap_or(0.0) as usize
    };
    assert_eq!(
        outcome("ok"),
        t.ok + images.len(),
        "ok outcomes counted:\n{last}"
    );
    assert_eq!(
        outcome("queue_full"),
        t.queue_full,
        "queue_full outcomes counted:\n{last}"
    );
    assert!(d.running(), "daemon exited; stderr:\n{}", d.stderr());
    assert!(
        !d.stderr().contains("panicked"),
        "daemon panicked:\n{}",
        d.stderr()
    );
}

//! In-process tests of the service around a fake backend (tiny-a's config and tokenizer, outputs
//! of zeros): validation, admission, batching, timeouts, batch-wide errors and drain, each in
//! milliseconds. Synchronisation is by gates and channels, never by sleeping.

use std::time::{Duration, Instant};

use super::fake::{config, start};
use super::*;
use crate::model::tokenizer::QueryError;
use crate::preprocess::ImageError;

fn frame(w: u32, h: u32) -> ImageInput {
    ImageInput::Decoded(Rgb {
        width: w,
        height: h,
        data: vec![128; (w * h * 3) as usize],
    })
}

fn request(queries: &[&str]) -> DetectRequest {
    DetectRequest::new(
        frame(32, 24),
        queries.iter().map(|q| q.to_string()).collect(),
    )
}

/// Polls `cond` every millisecond for at most two seconds.
async fn until(cond: impl Fn() -> bool) -> bool {
    super::fake::until(Duration::from_secs(2), cond).await
}

#[tokio::test]
async fn answers_with_every_patch_above_the_threshold() {
    let (svc, _w, probe, metrics) = start(config());
    let out = svc.detect(request(&["a cat", "a dog"])).await.expect("ok");
    // Zero embeddings, shift 0, scale 1: every patch scores sigmoid(0) = 0.5 for both queries, and
    // each patch keeps its best query (the first on a tie).
    let grid = 96 / 16;
    assert_eq!(out.detections.len(), grid * grid);
    assert!(out.detections.iter().all(|d| (d.score - 0.5).abs() < 1e-6));
    assert!(out.detections.iter().all(|d| d.label == "a cat"));
    assert_eq!((out.width, out.height, out.batch_size), (32, 24, 1));
    assert!(out.timing_ms.total >= out.timing_ms.preprocess);
    assert_eq!(*probe.batches.lock().expect("lock"), vec![1]);
    assert!(metrics
        .render(0, svc.cache_stats())
        .contains("iv_query_cache_misses_total 2"));
    // Above the threshold nothing passes.
    let mut r = request(&["a cat"]);
    r.threshold = Some(0.6);
    assert!(svc.detect(r).await.expect("ok").detections.is_empty());
    assert!(metrics
        .render(0, svc.cache_stats())
        .contains("iv_query_cache_hits_total 1"));
}

#[tokio::test]
async fn bad_requests_are_refused_before_admission() {
    let (svc, _w, probe, _m) = start(config());
    let many: Vec<String> = (0..65).map(|i| format!("q{i}")).collect();
    let long = "x".repeat(1025);
    let cases: Vec<(&str, DetectRequest, &str)> = vec![
        ("no queries", request(&[]), "missing_query"),
        (
            "too many",
            DetectRequest::new(frame(8, 8), many),
            "too_many_queries",
        ),
        ("blank", request(&["a cat", "  "]), "invalid_query"),
        ("long", request(&[&long]), "invalid_query"),
        (
            "threshold",
            DetectRequest {
                threshold: Some(1.5),
                ..request(&["a cat"])
            },
            "invalid_parameter",
        ),
        (
            "nms",
            DetectRequest {
                nms: Some(-0.1),
                ..request(&["a cat"])
            },
            "invalid_parameter",
        ),
        (
            "zero size",
            DetectRequest::new(frame(0, 4), vec!["a".into()]),
            "invalid_image",
        ),
        (
            "raw size",
            DetectRequest::new(
                ImageInput::Raw {
                    width: 4,
                    height: 4,
                    data: Bytes::from_static(&[0; 47]),
                },
                vec!["a".into()],
            ),
            "invalid_raw_frame",
        ),
        (
            "undecodable",
            DetectRequest::new(
                ImageInput::Encoded(Bytes::from_static(b"not an image")),
                vec!["a".into()],
            ),
            "unsupported_image_format",
        ),
    ];
    for (name, req, kind) in cases {
        let e = svc.detect(req).await.expect_err(name);
        assert_eq!(e.kind(), kind, "{name}: {e}");
        assert_eq!(svc.queue_depth(), 0, "{name}: slot not released");
    }
    assert!(probe.batches.lock().expect("lock").is_empty());
    // The rules are the tokenizer's `QueryRules`, with their messages.
    let e = svc.detect(request(&[&long])).await.expect_err("long");
    assert!(
        matches!(
            e,
            DetectError::Query(QueryError::TooLong {
                index: 0,
                len: 1025,
                max: 1024
            })
        ),
        "{e:?}"
    );
    let e = svc
        .detect(DetectRequest::new(frame(0, 4), vec!["a".into()]))
        .await
        .expect_err("zero");
    assert!(
        matches!(
            e,
            DetectError::Image(ImageError::ZeroSize {
                width: 0,
                height: 4
            })
        ),
        "{e:?}"
    );
}

type Answer = tokio::task::JoinHandle<Result<DetectOutput, DetectError>>;

/// A service with one queue slot, held by a request its gated worker has taken: the service, its
/// worker, the probe (open the gate to answer) and that request's task.
async fn one_slot_held() -> (DetectService, Worker, Arc<super::fake::Probe>, Answer) {
    let (svc, worker, probe, _m) = start(ServiceConfig {
        max_queue: 1,
        ..config()
    });
    probe.gate.set(true);
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { svc.detect(request(&["a cat"])).await }
    });
    assert!(until(|| probe.batches.lock().map(|b| b.len()).unwrap_or(0) == 1).await);
    (svc, worker, probe, first)
}

#[tokio::test]
async fn a_full_queue_fails_fast_and_frees_when_answered() {
    let (svc, _w, probe, first) = one_slot_held().await;
    assert_eq!(svc.queue_depth(), 1);
    let t = Instant::now();
    let e = svc.detect(request(&["a cat"])).await.expect_err("full");
    assert!(matches!(e, DetectError::QueueFull), "{e:?}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "queue_full must not wait"
    );
    probe.gate.set(false);
    assert!(first.await.expect("task").is_ok());
    assert_eq!(svc.queue_depth(), 0);
    assert!(svc.detect(request(&["a cat"])).await.is_ok());
}

#[tokio::test]
async fn a_waiting_request_takes_the_slot_once_it_is_free() {
    let (svc, _w, probe, first) = one_slot_held().await;
    let mut waiting = tokio::spawn({
        let svc = svc.clone();
        async move { svc.detect_waiting(request(&["a dog"])).await }
    });
    // Not answered while the slot is held (the gate is shut: no timing involved).
    let early = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
    assert!(early.is_err(), "it waits for the slot: {early:?}");
    assert_eq!(svc.queue_depth(), 1, "a waiting request holds no slot");
    probe.gate.set(false);
    assert!(first.await.expect("task").is_ok());
    let out = waiting
        .await
        .expect("task")
        .expect("answered once admitted");
    assert_eq!(
        out.detections.first().map(|d| d.label.as_str()),
        Some("a dog")
    );
}

#[tokio::test]
async fn concurrent_requests_share_one_batch() {
    let (svc, _w, probe, metrics) = start(ServiceConfig {
        max_batch: 4,
        // Long enough that the batch closes because it is full, not because time ran out.
        max_batch_wait: Duration::from_secs(5),
        ..config()
    });
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.detect(request(&[&format!("thing {i}")])).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task").expect("ok").batch_size, 4);
    }
    assert_eq!(*probe.batches.lock().expect("lock"), vec![4]);
    assert!(metrics
        .render(0, svc.cache_stats())
        .contains("iv_batch_size_count 1"));
}

#[tokio::test]
async fn a_timeout_answers_at_once_but_keeps_the_slot_until_the_work_ends() {
    let (svc, _w, probe, _m) = start(ServiceConfig {
        request_timeout: Duration::from_millis(50),
        ..config()
    });
    probe.gate.set(true);
    let e = svc.detect(request(&["a cat"])).await.expect_err("timeout");
    assert!(matches!(e, DetectError::Timeout(50)), "{e:?}");
    assert_eq!(e.kind(), "timeout");
    assert!(until(|| probe.batches.lock().map(|b| b.len()).unwrap_or(0) == 1).await);
    // The batch is still running on the worker: its slot is still taken.
    assert_eq!(svc.queue_depth(), 1);
    probe.gate.set(false);
    assert!(until(|| svc.queue_depth() == 0).await);
}

#[tokio::test]
async fn a_batch_error_reaches_every_request_of_the_batch() {
    let (svc, _w, probe, _m) = start(ServiceConfig {
        max_batch: 2,
        max_batch_wait: Duration::from_secs(5),
        ..config()
    });
    *probe.fail.lock().expect("lock") = true;
    let a = tokio::spawn({
        let svc = svc.clone();
        async move { svc.detect(request(&["a"])).await }
    });
    let b = svc.detect(request(&["b"])).await;
    let a = a.await.expect("task");
    for r in [a, b] {
        let e = r.expect_err("fails");
        assert_eq!(e.kind(), "inference_failed");
        assert!(e.to_string().contains("injected failure"), "{e}");
    }
    assert_eq!(*probe.batches.lock().expect("lock"), vec![2]);
}

#[tokio::test]
async fn drain_answers_queued_requests_before_the_worker_stops() {
    let (svc, worker, probe, _m) = start(ServiceConfig {
        max_batch: 1,
        ..config()
    });
    probe.gate.set(true);
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.detect(request(&[&format!("q{i}")])).await })
        })
        .collect();
    assert!(until(|| svc.queue_depth() == 3).await);
    drop(svc);
    probe.gate.set(false);
    for t in tasks {
        assert!(t.await.expect("task").is_ok());
    }
    // Every handle is gone and the queue is empty: the worker stops.
    tokio::task::spawn_blocking(move || worker.join())
        .await
        .expect("joined");
    assert_eq!(*probe.batches.lock().expect("lock"), vec![1, 1, 1]);
}

#[tokio::test]
async fn images_beyond_the_decode_budget_are_refused_before_decoding() {
    let (svc, _w, probe, _m) = start(ServiceConfig {
        // 64 KiB: a 100x50 PNG needs 100·50·12 = 60 000 bytes, a 100x100 one 120 000.
        decode_budget_bytes: 64 * 1024,
        ..config()
    });
    let png = |w: u32, h: u32| {
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(image::RgbImage::new(w, h))
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("encode");
        Bytes::from(out)
    };
    let ok = DetectRequest::new(ImageInput::Encoded(png(100, 50)), vec!["a".into()]);
    assert!(svc.detect(ok).await.is_ok());
    let big = DetectRequest::new(ImageInput::Encoded(png(100, 100)), vec!["a".into()]);
    let e = svc.detect(big).await.expect_err("over budget");
    assert_eq!(e.kind(), "image_too_large");
    assert!(e.to_string().contains("decode budget"), "{e}");
    assert_eq!(probe.batches.lock().expect("lock").len(), 1);
    assert_eq!(svc.queue_depth(), 0);
}

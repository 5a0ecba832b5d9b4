//! The daemon under bad input: every malformed, oversized, truncated or slow request gets the
//! documented status and error kind (or a closed connection), and the daemon keeps serving good
//! requests after each one. JSON and raw-RGB inputs agree with the encoded-image path, and the
//! metrics count outcomes.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::daemon::{
    detect_target, enc, read_response, request_bytes, tcp_request, Daemon, Response,
};
use intelligent_video::preprocess::{decode, ImageLimits};

const QUERIES: [&str; 2] = ["a photo of a cat", "person"];
const MAX_BODY: usize = 300_000;

fn image(name: &str) -> Vec<u8> {
    let p = common::fixtures().join("images").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Sends `raw` over the Unix socket and reads one response. A write error (the server may answer
/// and close before reading the whole body) is ignored as long as a response can be read.
fn send_raw(sock: &Path, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    let write_err = s.write_all(raw).err();
    read_response(&mut s).map_err(|e| write_err.unwrap_or(e))
}

fn request(
    d: &Daemon,
    method: &str,
    target: &str,
    ct: Option<&str>,
    body: &[u8],
) -> std::io::Result<Response> {
    send_raw(&d.socket, &request_bytes(method, target, ct, body))
}

fn body_text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).chars().take(300).collect()
}

fn kind_of(r: &Response) -> String {
    serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["error"]["kind"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Collects failed checks so one run reports every broken case.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let w = what();
            eprintln!("FAILED: {w}");
            self.0.push(w);
        }
    }
}

/// Health is 200 and a good detection request (threshold 0) returns detections.
fn still_serves(d: &Daemon, f: &mut Failures, after: &str, good_png: &[u8]) {
    match tcp_request(d.port, "GET", "/api/health") {
        Ok(r) => f.check(r.status == 200, || {
            format!("after {after}: health {} {}", r.status, body_text(&r))
        }),
        Err(e) => f.check(false, || {
            format!("after {after}: health request failed: {e}")
        }),
    }
    match request(
        d,
        "POST",
        &detect_target(&QUERIES, "threshold=0"),
        Some("image/png"),
        good_png,
    ) {
        Ok(r) => {
            let n = serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["detections"].as_array().map(|a| a.len()))
                .unwrap_or(0);
            f.check(r.status == 200 && n > 0, || {
                format!(
                    "after {after}: good request got {} with {n} detections: {}",
                    r.status,
                    body_text(&r)
                )
            });
        }
        Err(e) => f.check(false, || {
            format!(
                "after {after}: good request failed: {e}; stderr:\n{}",
                d.stderr()
            )
        }),
    }
}

fn metrics(d: &Daemon) -> String {
    let r = tcp_request(d.port, "GET", "/metrics").expect("metrics");
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).expect("utf8 metrics")
}

/// The value of a metric line `name value`.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

struct Case {
    name: &'static str,
    target: String,
    ct: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    kind: &'static str,
}

fn cases() -> Vec<Case> {
    let png = image("small_pad.png");
    let png_target = detect_target(&QUERIES, "threshold=0.1");
    let mut bomb = image("wide_blur.png");
    bomb[16..20].copy_from_slice(&30_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&30_000u32.to_be_bytes());
    let hundred: Vec<String> = (0..100).map(|i| format!("thing {i}")).collect();
    let hundred_refs: Vec<&str> = hundred.iter().map(|s| s.as_str()).collect();
    let long_query = "a".repeat(10_000);
    let c = |name, target: &str, ct, body: &[u8], status, kind| Case {
        name,
        target: target.to_string(),
        ct,
        body: body.to_vec(),
        status,
        kind,
    };
    vec![
        c(
            "empty body",
            &png_target,
            Some("image/png"),
            b"",
            400,
            "empty_image",
        ),
        c(
            "truncated png",
            &png_target,
            Some("image/png"),
            &png[..png.len() / 2],
            400,
            "invalid_image",
        ),
        c(
            "non-image bytes",
            &png_target,
            Some("application/octet-stream"),
            b"this is certainly not an image, just some text bytes",
            400,
            "unsupported_image_format",
        ),
        c(
            "decompression bomb 30000x30000",
            &png_target,
            Some("image/png"),
            &bomb,
            413,
            "image_too_large",
        ),
        c(
            "body over max_body_bytes",
            &png_target,
            Some("image/png"),
            &vec![0x42u8; MAX_BODY + 100_000],
            413,
            "body_too_large",
        ),
        c(
            "100 queries",
            &detect_target(&hundred_refs, ""),
            Some("image/png"),
            &png,
            400,
            "too_many_queries",
        ),
        c(
            "10000-character query",
            &detect_target(&[&long_query], ""),
            Some("image/png"),
            &png,
            400,
            "invalid_query",
        ),
        c(
            "invalid UTF-8 query string",
            "/v1/detect?query=%FF%FE",
            Some("image/png"),
            &png,
            400,
            "invalid_query_string",
        ),
        c(
            "malformed JSON",
            "/v1/detect",
            Some("application/json"),
            b"{\"image_base64\": \"abc\", ",
            400,
            "invalid_json",
        ),
        c(
            "bad base64",
            "/v1/detect",
            Some("application/json"),
            br#"{"image_base64": "!!!not base64!!!", "queries": ["a cat"]}"#,
            400,
            "invalid_base64",
        ),
        c(
            "raw frame of the wrong size",
            &detect_target(&QUERIES, "width=10&height=10"),
            Some("application/x-raw-rgb"),
            &[0u8; 299],
            400,
            "invalid_raw_frame",
        ),
        c(
            "raw frame without width/height",
            &detect_target(&QUERIES, ""),
            Some("application/x-raw-rgb"),
            &[0u8; 300],
            400,
            "invalid_parameter",
        ),
        c(
            "no query",
            "/v1/detect?threshold=0.1",
            Some("image/png"),
            &png,
            400,
            "missing_query",
        ),
        c(
            "threshold=2",
            &detect_target(&QUERIES, "threshold=2"),
            Some("image/png"),
            &png,
            400,
            "invalid_parameter",
        ),
        c(
            "text/plain body",
            &png_target,
            Some("text/plain"),
            b"hello",
            415,
            "unsupported_media_type",
        ),
    ]
}

fn detections(r: &Response) -> Vec<serde_json::Value> {
    r.json()["detections"]
        .as_array()
        .expect("detections array")
        .clone()
}

fn assert_same_detections(what: &str, got: &[serde_json::Value], want: &[serde_json::Value]) {
    assert_eq!(got.len(), want.len(), "{what}: detection count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g["label"], w["label"], "{what}: label of detection {i}");
        assert_eq!(
            g["query_index"], w["query_index"],
            "{what}: query_index of detection {i}"
        );
        let (gs, ws) = (
            g["score"].as_f64().expect("score"),
            w["score"].as_f64().expect("score"),
        );
        assert!(
            (gs - ws).abs() < 1e-5,
            "{what}: score of detection {i}: {gs} vs {ws}"
        );
        for k in 0..4 {
            let (gb, wb) = (
                g["box"][k].as_f64().expect("box"),
                w["box"][k].as_f64().expect("box"),
            );
            assert!(
                (gb - wb).abs() < 1e-5,
                "{what}: box[{k}] of detection {i}: {gb} vs {wb}"
            );
        }
    }
}

#[test]
fn bad_requests_get_the_right_error_and_the_daemon_keeps_serving() {
    let mut d = Daemon::start(&[
        ("IV_MAX_BODY_BYTES", "300000"),
        ("IV_HEADER_TIMEOUT_MS", "500"),
        ("IV_MAX_BATCH_WAIT_MS", "1"),
    ]);
    d.wait_ready();
    let good = image("small_pad.png");
    let mut f = Failures::default();
    still_serves(&d, &mut f, "startup", &good);

    for case in cases() {
        match request(&d, "POST", &case.target, case.ct, &case.body) {
            Ok(r) => {
                let kind = kind_of(&r);
                f.check(r.status == case.status && kind == case.kind, || {
                    format!(
                        "{}: want {} {}, got {} {kind:?}: {}",
                        case.name,
                        case.status,
                        case.kind,
                        r.status,
                        body_text(&r)
                    )
                });
            }
            Err(e) => f.check(false, || format!("{}: no response: {e}", case.name)),
        }
        // Nothing is in flight now, so the gauge of admitted-and-unanswered requests must be 0.
        // FAILS BECAUSE OF A SRC BUG: src/server/http.rs `detect` stores `iv_queue_depth` only after
        // admission (line ~331) and after a success (line ~367); a decode/raw-frame error returned
        // by `??` at line ~346 drops the permit without updating the gauge, which stays at 1.
        let m = metrics(&d);
        f.check(metric_value(&m, "iv_queue_depth") == Some(0.0), || {
            format!(
                "after {}: iv_queue_depth is {:?}, want 0",
                case.name,
                metric_value(&m, "iv_queue_depth")
            )
        });
        still_serves(&d, &mut f, case.name, &good);
    }

    // A client that announces a 100000-byte body, sends part of it and disconnects.
    {
        let mut s = UnixStream::connect(&d.socket).expect("connect");
        let mut raw = format!(
            "POST {} HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n",
            detect_target(&QUERIES, "")
        )
        .into_bytes();
        raw.extend_from_slice(&good);
        s.write_all(&raw).expect("partial request");
        drop(s);
    }
    still_serves(&d, &mut f, "truncated upload then disconnect", &good);

    // A client that sends part of the request line and then stalls past the header timeout.
    {
        let mut s = UnixStream::connect(&d.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let t = Instant::now();
        s.write_all(b"POST /v1/det").expect("partial request line");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let outcome = loop {
            match s.read(&mut chunk) {
                Ok(0) => break Ok(()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let waited = t.elapsed();
        let text = String::from_utf8_lossy(&buf).to_string();
        f.check(outcome.is_ok(), || {
            format!("slow headers: the connection was not closed within 10 s ({outcome:?})")
        });
        f.check(buf.is_empty() || text.starts_with("HTTP/1.1 408"), || {
            format!("slow headers: unexpected reply {text:?}")
        });
        f.check(
            waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
            || {
                format!(
                    "slow headers: closed after {waited:?}, want about the 500 ms header timeout"
                )
            },
        );
    }
    still_serves(&d, &mut f, "slow headers", &good);

    // Routing.
    match tcp_request(d.port, "POST", "/v1/detect") {
        Ok(r) => f.check(r.status == 404, || {
            format!("POST /v1/detect over TCP: {} {}", r.status, body_text(&r))
        }),
        Err(e) => f.check(false, || format!("POST /v1/detect over TCP: {e}")),
    }
    for (method, target, status) in [("GET", "/nope", 404), ("GET", "/v1/detect", 405)] {
        match request(&d, method, target, None, b"") {
            Ok(r) => f.check(r.status == status, || {
                format!(
                    "{method} {target}: want {status}, got {} {}",
                    r.status,
                    body_text(&r)
                )
            }),
            Err(e) => f.check(false, || format!("{method} {target}: {e}")),
        }
    }
    match tcp_request(d.port, "GET", "/nope") {
        Ok(r) => f.check(r.status == 404, || {
            format!("GET /nope over TCP: {} {}", r.status, body_text(&r))
        }),
        Err(e) => f.check(false, || format!("GET /nope over TCP: {e}")),
    }
    still_serves(&d, &mut f, "routing checks", &good);

    // JSON and raw RGB give the same detections as the encoded PNG.
    let png = image("wide_blur.png");
    let png_resp = request(
        &d,
        "POST",
        &detect_target(&QUERIES, "threshold=0"),
        Some("image/png"),
        &png,
    )
    .expect("png request");
    assert_eq!(png_resp.status, 200, "{}", body_text(&png_resp));
    let want = detections(&png_resp);
    assert!(!want.is_empty());
    let json_body = serde_json::json!({
        "image_base64": base64::engine::general_purpose::STANDARD.encode(&png),
        "queries": QUERIES,
        "threshold": 0.0,
    })
    .to_string();
    let json_resp = request(
        &d,
        "POST",
        "/v1/detect",
        Some("application/json"),
        json_body.as_bytes(),
    )
    .expect("json request");
    assert_eq!(json_resp.status, 200, "{}", body_text(&json_resp));
    assert_same_detections("json", &detections(&json_resp), &want);
    let rgb = decode(&png, &ImageLimits::default()).expect("decode fixture");
    let raw_target = detect_target(
        &QUERIES,
        &format!("threshold=0&width={}&height={}", rgb.width, rgb.height),
    );
    let raw_resp = request(
        &d,
        "POST",
        &raw_target,
        Some("application/x-raw-rgb"),
        &rgb.data,
    )
    .expect("raw request");
    assert_eq!(raw_resp.status, 200, "{}", body_text(&raw_resp));
    assert_same_detections("raw rgb", &detections(&raw_resp), &want);
    for r in [&png_resp, &json_resp, &raw_resp] {
        let v = r.json();
        assert_eq!(v["width"], rgb.width);
        assert_eq!(v["height"], rgb.height);
    }
    // Queries from the URL and the JSON body are combined (URL first).
    let mixed = serde_json::json!({
        "image_base64": base64::engine::general_purpose::STANDARD.encode(&png),
        "queries": [QUERIES[1]],
        "threshold": 0.0,
    })
    .to_string();
    let mixed_resp = request(
        &d,
        "POST",
        &format!("/v1/detect?query={}", enc(QUERIES[0])),
        Some("application/json"),
        mixed.as_bytes(),
    )
    .expect("mixed request");
    assert_eq!(mixed_resp.status, 200, "{}", body_text(&mixed_resp));
    assert_same_detections("json with URL queries", &detections(&mixed_resp), &want);

    // Outcomes are counted.
    let m = metrics(&d);
    let ok = metric_value(&m, "iv_requests_total{outcome=\"ok\"}");
    f.check(ok.is_some_and(|v| v >= 1.0), || {
        format!("metrics: no ok outcome count ({ok:?}):\n{m}")
    });
    for kind in [
        "invalid_image",
        "empty_image",
        "image_too_large",
        "body_too_large",
        "invalid_json",
        "missing_query",
    ] {
        let v = metric_value(&m, &format!("iv_requests_total{{outcome=\"{kind}\"}}"));
        f.check(v.is_some_and(|v| v >= 1.0), || {
            format!("metrics: outcome {kind} is {v:?}:\n{m}")
        });
    }

    assert!(
        d.child.try_wait().expect("try_wait").is_none(),
        "daemon exited; stderr:\n{}",
        d.stderr()
    );
    let stderr = d.stderr();
    assert!(!stderr.contains("panicked"), "daemon panicked:\n{stderr}");
    assert!(
        f.0.is_empty(),
        "{} failed checks:\n{}",
        f.0.len(),
        f.0.join("\n")
    );
}

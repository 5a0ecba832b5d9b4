//! The daemon under bad input: every malformed, oversized, truncated or slow request gets the
//! documented status and error kind (or a closed connection), and the daemon keeps serving good
//! requests after each one. JSON and raw-RGB inputs agree with the encoded-image path, and the
//! metrics count outcomes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use intelligent_video::preprocess::{decode, ImageLimits};

use crate::support::daemon::{
    detect_target, enc, read_response, request_bytes, tcp_request, Daemon, Response,
};
use crate::support::detections::{compare, Det, Tolerance};
use crate::support::fixtures::image;
use crate::support::metrics;

const QUERIES: [&str; 2] = ["a photo of a cat", "person"];
const MAX_BODY: usize = 300_000;

/// JSON / raw RGB / mixed-query bodies vs the same image as PNG: the same engine on the same
/// decoded pixels, one request at a time, so the bound is far tighter than the README's parity
/// tolerances on purpose (score < 1e-5, box < 1e-5 px) and kept as it was.
const SAME_PIXELS: Tolerance = Tolerance::strict(1e-5, 1e-5);

/// Sends `raw` over the Unix socket and reads one response. A write error (the server may answer
/// and close before reading the whole body) is ignored as long as a response can be read.
fn send_raw(sock: &Path, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    let write_err = s.write_all(raw).err();
    read_response(&mut s).map_err(|e| write_err.unwrap_or(e))
}

fn body_text(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).chars().take(300).collect()
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

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Via {
    /// The detection socket.
    Unix,
    /// The health port (no body).
    Tcp,
}

/// One request.
struct Request {
    via: Via,
    method: &'static str,
    target: String,
    ct: Option<&'static str>,
    body: Vec<u8>,
}

impl Request {
    /// A request over the detection socket.
    fn unix(method: &'static str, target: &str, ct: Option<&'static str>, body: &[u8]) -> Request {
        Request {
            via: Via::Unix,
            method,
            target: target.to_string(),
            ct,
            body: body.to_vec(),
        }
    }

    /// A bodiless request to the health port.
    fn tcp(method: &'static str, target: &str) -> Request {
        Request {
            via: Via::Tcp,
            method,
            target: target.to_string(),
            ct: None,
            body: Vec::new(),
        }
    }

    fn send(&self, d: &Daemon) -> std::io::Result<Response> {
        match self.via {
            Via::Unix => send_raw(
                &d.socket,
                &request_bytes(self.method, &self.target, self.ct, &self.body),
            ),
            Via::Tcp => tcp_request(d.port, self.method, &self.target),
        }
    }
}

/// A good detection request (threshold 0) for `png`.
fn good_request(png: &[u8]) -> Request {
    Request::unix(
        "POST",
        &detect_target(&QUERIES, "threshold=0"),
        Some("image/png"),
        png,
    )
}

/// Health is 200 and a good detection request (threshold 0) returns detections.
fn still_serves(d: &Daemon, f: &mut Failures, after: &str, good_png: &[u8]) {
    match Request::tcp("GET", "/api/health").send(d) {
        Ok(r) => f.check(r.status == 200, || {
            format!("after {after}: health {} {}", r.status, body_text(&r))
        }),
        Err(e) => f.check(false, || {
            format!("after {after}: health request failed: {e}")
        }),
    }
    match good_request(good_png).send(d) {
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

/// One bad request: what is sent, the status it must get, and the error kind (`None` where only
/// the status is checked: the routing answers).
struct Case {
    name: &'static str,
    request: Request,
    status: u16,
    kind: Option<&'static str>,
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
    let post = |target: &str, ct, body: &[u8]| Request::unix("POST", target, Some(ct), body);
    let c = |name, request, status, kind| Case {
        name,
        request,
        status,
        kind: Some(kind),
    };
    let status_only = |name, request, status| Case {
        name,
        request,
        status,
        kind: None,
    };
    vec![
        c(
            "empty body",
            post(&png_target, "image/png", b""),
            400,
            "empty_image",
        ),
        c(
            "truncated png",
            post(&png_target, "image/png", &png[..png.len() / 2]),
            400,
            "invalid_image",
        ),
        c(
            "non-image bytes",
            post(
                &png_target,
                "application/octet-stream",
                b"this is certainly not an image, just some text bytes",
            ),
            400,
            "unsupported_image_format",
        ),
        c(
            "decompression bomb 30000x30000",
            post(&png_target, "image/png", &bomb),
            413,
            "image_too_large",
        ),
        c(
            "body over max_body_bytes",
            post(&png_target, "image/png", &vec![0x42u8; MAX_BODY + 100_000]),
            413,
            "body_too_large",
        ),
        c(
            "100 queries",
            post(&detect_target(&hundred_refs, ""), "image/png", &png),
            400,
            "too_many_queries",
        ),
        c(
            "10000-character query",
            post(&detect_target(&[&long_query], ""), "image/png", &png),
            400,
            "invalid_query",
        ),
        c(
            "invalid UTF-8 query string",
            post("/v1/detect?query=%FF%FE", "image/png", &png),
            400,
            "invalid_query_string",
        ),
        c(
            "malformed JSON",
            post(
                "/v1/detect",
                "application/json",
                b"{\"image_base64\": \"abc\", ",
            ),
            400,
            "invalid_json",
        ),
        c(
            "bad base64",
            post(
                "/v1/detect",
                "application/json",
                br#"{"image_base64": "!!!not base64!!!", "queries": ["a cat"]}"#,
            ),
            400,
            "invalid_base64",
        ),
        c(
            "raw frame of the wrong size",
            post(
                &detect_target(&QUERIES, "width=10&height=10"),
                "application/x-raw-rgb",
                &[0u8; 299],
            ),
            400,
            "invalid_raw_frame",
        ),
        c(
            "raw frame without width/height",
            post(
                &detect_target(&QUERIES, ""),
                "application/x-raw-rgb",
                &[0u8; 300],
            ),
            400,
            "invalid_parameter",
        ),
        c(
            "no query",
            post("/v1/detect?threshold=0.1", "image/png", &png),
            400,
            "missing_query",
        ),
        c(
            "threshold=2",
            post(&detect_target(&QUERIES, "threshold=2"), "image/png", &png),
            400,
            "invalid_parameter",
        ),
        c(
            "text/plain body",
            post(&png_target, "text/plain", b"hello"),
            415,
            "unsupported_media_type",
        ),
        // Over hyper's fixed 64 KiB request-line limit: hyper answers before any handler, and
        // the answer still carries the JSON error.
        c(
            "URL over 64 KiB",
            post(
                &format!("/v1/detect?query={}", "a".repeat(70_000)),
                "image/png",
                &png,
            ),
            414,
            "uri_too_long",
        ),
        // Routing.
        status_only(
            "POST /v1/detect over TCP",
            Request::tcp("POST", "/v1/detect"),
            404,
        ),
        status_only("GET /nope", Request::unix("GET", "/nope", None, b""), 404),
        status_only(
            "GET /v1/detect",
            Request::unix("GET", "/v1/detect", None, b""),
            405,
        ),
        status_only("GET /nope over TCP", Request::tcp("GET", "/nope"), 404),
    ]
}

fn detections(r: &Response) -> Vec<Det> {
    Det::list_from_json(&r.json()["detections"]).expect("detections array")
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
        match case.request.send(&d) {
            Ok(r) => {
                let kind = r.kind();
                let kind_ok = case.kind.is_none_or(|k| kind == k);
                f.check(r.status == case.status && kind_ok, || {
                    format!(
                        "{}: want {} {}, got {} {kind:?}: {}",
                        case.name,
                        case.status,
                        case.kind.unwrap_or("(any kind)"),
                        r.status,
                        body_text(&r)
                    )
                });
            }
            Err(e) => f.check(false, || format!("{}: no response: {e}", case.name)),
        }
        // Nothing is in flight now, so the gauge of admitted-and-unanswered requests must be 0.
        let m = d.metrics();
        let depth = metrics::value(&m, "iv_queue_depth", &[]);
        f.check(depth == Some(0.0), || {
            format!("after {}: iv_queue_depth is {depth:?}, want 0", case.name)
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

    // JSON, raw RGB, and JSON with queries from the URL (URL first) give the same detections as
    // the encoded PNG, at the same size.
    let png = image("wide_blur.png");
    let png_resp = good_request(&png).send(&d).expect("png request");
    assert_eq!(png_resp.status, 200, "{}", body_text(&png_resp));
    let want = detections(&png_resp);
    assert!(!want.is_empty());
    let rgb = decode(&png, &ImageLimits::default()).expect("decode fixture");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let json_body = |queries: &[&str]| {
        serde_json::json!({"image_base64": b64, "queries": queries, "threshold": 0.0})
            .to_string()
            .into_bytes()
    };
    let same_as_png = [
        (
            "json",
            Request::unix(
                "POST",
                "/v1/detect",
                Some("application/json"),
                &json_body(&QUERIES),
            ),
        ),
        (
            "raw rgb",
            Request::unix(
                "POST",
                &detect_target(
                    &QUERIES,
                    &format!("threshold=0&width={}&height={}", rgb.width, rgb.height),
                ),
                Some("application/x-raw-rgb"),
                &rgb.data,
            ),
        ),
        (
            "json with URL queries",
            Request::unix(
                "POST",
                &format!("/v1/detect?query={}", enc(QUERIES[0])),
                Some("application/json"),
                &json_body(&[QUERIES[1]]),
            ),
        ),
    ];
    let side = rgb.width.max(rgb.height) as f64;
    let v = png_resp.json();
    assert_eq!(v["width"], rgb.width);
    assert_eq!(v["height"], rgb.height);
    for (what, request) in same_as_png {
        let r = request
            .send(&d)
            .unwrap_or_else(|e| panic!("{what} request: {e}"));
        assert_eq!(r.status, 200, "{what}: {}", body_text(&r));
        compare(&detections(&r), &want, side, SAME_PIXELS)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let v = r.json();
        assert_eq!(v["width"], rgb.width, "{what}");
        assert_eq!(v["height"], rgb.height, "{what}");
    }

    // Outcomes are counted, in an exposition that follows Prometheus conventions.
    let m = d.metrics();
    if let Some(complaints) = metrics::promtool_lint(&m) {
        f.check(complaints.trim().is_empty(), || {
            format!("promtool check metrics: {complaints}")
        });
    }
    for outcome in [
        "ok",
        "invalid_image",
        "empty_image",
        "image_too_large",
        "body_too_large",
        "invalid_json",
        "missing_query",
    ] {
        let v = metrics::value(&m, "iv_requests_total", &[("outcome", outcome)]);
        f.check(v.is_some_and(|v| v >= 1.0), || {
            format!("metrics: outcome {outcome} is {v:?}:\n{m}")
        });
    }

    assert!(d.running(), "daemon exited; stderr:\n{}", d.stderr());
    let stderr = d.stderr();
    assert!(!stderr.contains("panicked"), "daemon panicked:\n{stderr}");
    assert!(
        f.0.is_empty(),
        "{} failed checks:\n{}",
        f.0.len(),
        f.0.join("\n")
    );
}

/// A browser page of another origin cannot act through a forwarded socket: its requests carry an
/// `Origin` that differs from `Host` (or `Sec-Fetch-Site: cross-site`) and are refused with 403
/// `cross_origin` before anything runs; the same request from the console's own origin, or from a
/// program without those headers, is served.
#[test]
fn cross_origin_requests_are_refused_before_they_act() {
    let mut d = Daemon::start(&[]);
    d.wait_ready();
    let png = image("small_pad.png");
    let detect = |headers: &str| {
        let mut raw = format!(
            "POST /v1/detect?query=cat HTTP/1.1\r\nHost: localhost:8080\r\n{headers}Content-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            png.len()
        )
        .into_bytes();
        raw.extend_from_slice(&png);
        send_raw(&d.socket, &raw).expect("answered")
    };
    for refused in [
        "Origin: http://evil.example\r\n",
        "Origin: null\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
    ] {
        let r = detect(refused);
        assert_eq!(
            (r.status, r.kind().as_str()),
            (403, "cross_origin"),
            "{refused}"
        );
    }
    for served in [
        "",
        "Origin: http://localhost:8080\r\n",
        "Sec-Fetch-Site: same-origin\r\n",
    ] {
        assert_eq!(detect(served).status, 200, "{served}");
    }
    // A deletion from another origin changes nothing.
    let raw = b"DELETE /v1/query-sets/x HTTP/1.1\r\nHost: localhost\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n";
    let r = send_raw(&d.socket, raw).expect("answered");
    assert_eq!((r.status, r.kind().as_str()), (403, "cross_origin"));
}

//! Video streams end to end: videos made here with ffmpeg (lossless FFV1 and H.264), a local RTSP
//! server (`support/rtsp_server.py`, GStreamer's RTSP server through python3-gi) stopped and
//! restarted to prove reconnection, the `/v1/streams` API and its errors, persistence across a
//! restart, and SIGTERM with a stream running.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::daemon::{detect_target, free_port, Daemon};
use crate::support::{fixtures, metrics, wait};

/// Frames of the test clips: 320x240 crops of a fixture photo, shifted 3 px per frame.
pub(crate) const FRAMES: usize = 8;
const QUERIES: [&str; 2] = ["a photo of a cat", "a dog"];
const THRESHOLD: f32 = 0.85;

pub(crate) fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg runs (apt install ffmpeg)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `f_000.png…` (moving unless `still`) into `dir`; returns their paths.
pub(crate) fn frames(dir: &Path, still: bool) -> Vec<PathBuf> {
    let photo = fixtures::image_path("photo.jpg");
    (0..FRAMES)
        .map(|i| {
            let p = dir.join(format!("f_{i:03}.png"));
            let x = if still { 0 } else { i * 3 };
            ffmpeg(&[
                "-i",
                photo.to_str().expect("utf8"),
                "-vf",
                &format!("scale=360:240,crop=320:240:{x}:0"),
                "-frames:v",
                "1",
                p.to_str().expect("utf8"),
            ]);
            p
        })
        .collect()
}

/// Encodes `dir/f_%03d.png` at 10 fps into `dir/name` with the given codec arguments.
pub(crate) fn encode(dir: &Path, name: &str, codec: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let pattern = dir.join("f_%03d.png");
    let mut args = vec!["-framerate", "10", "-i", pattern.to_str().expect("utf8")];
    args.extend_from_slice(codec);
    args.push(out.to_str().expect("utf8"));
    ffmpeg(&args);
    out
}

/// A lossless clip (FFV1, RGB): decoded frames equal the PNGs bit for bit.
pub(crate) fn lossless(dir: &Path) -> PathBuf {
    encode(dir, "clip.mkv", &["-c:v", "ffv1", "-pix_fmt", "bgr0"])
}

pub(crate) fn status(d: &Daemon, name: &str) -> Value {
    let r = d.request("GET", &format!("/v1/streams/{name}"), None, b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Waits until the stream's status satisfies `pred`; panics with the last status otherwise.
pub(crate) fn wait_status(
    d: &Daemon,
    name: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let found = wait::until(timeout, || {
        last = status(d, name);
        pred(&last).then(|| last.clone())
    });
    found.unwrap_or_else(|| panic!("stream {name} never got there: {last}\n{}", d.stderr()))
}

pub(crate) fn put(d: &Daemon, name: &str, body: &Value) -> crate::support::daemon::Response {
    d.request(
        "PUT",
        &format!("/v1/streams/{name}"),
        Some("application/json"),
        body.to_string().as_bytes(),
    )
}

/// Follows `target` (an NDJSON events URL) and returns its lines as they come, decoding the
/// chunked transfer encoding.
pub(crate) struct Follower {
    reader: BufReader<UnixStream>,
}

/// Sends `GET target` on the socket and reads the response head: the status code, the header
/// lines (lower-case), and the connection, positioned at the body.
pub(crate) fn open_events(d: &Daemon, target: &str) -> (u16, Vec<String>, BufReader<UnixStream>) {
    let mut s = UnixStream::connect(&d.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(s, "GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).expect("status line");
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        headers.push(h.to_ascii_lowercase());
    }
    (code, headers, reader)
}

impl Follower {
    pub(crate) fn open(d: &Daemon, target: &str) -> Follower {
        let (code, headers, reader) = open_events(d, target);
        assert_eq!(code, 200, "{headers:?}");
        for h in &headers {
            if h.starts_with("content-type:") {
                assert!(h.contains("application/x-ndjson"), "{h}");
            }
        }
        let chunked = headers
            .iter()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        assert!(chunked, "events come chunked");
        Follower { reader }
    }

    /// A follower over a connection whose response head was read already.
    pub(crate) fn open_reader(reader: BufReader<UnixStream>) -> Follower {
        Follower { reader }
    }

    /// The next chunk's bytes; `None` at the end of the body or when the daemon closes.
    pub(crate) fn chunk(&mut self) -> Option<Vec<u8>> {
        let mut size = String::new();
        if self.reader.read_line(&mut size).ok()? == 0 {
            return None;
        }
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return None;
        }
        let mut buf = vec![0u8; n + 2];
        self.reader.read_exact(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// The next `n` JSON lines (panics if the body ends first).
    pub(crate) fn lines(&mut self, n: usize) -> Vec<Value> {
        let mut pending = Vec::new();
        let mut out = Vec::new();
        while out.len() < n {
            let c = self.chunk().expect("the events body ended early");
            pending.extend_from_slice(&c);
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                out.push(serde_json::from_slice(&line).expect("an NDJSON line"));
            }
        }
        out
    }
}

/// The JPEGs of the first `n` parts of a live view's multipart body (checking each part's headers).
fn live_parts(mut body: Follower, n: usize) -> Vec<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut parts = Vec::new();
    let opening = b"--ivframe\r\n";
    while bytes.len() < opening.len() {
        bytes.extend(body.chunk().expect("the live body ended before a frame"));
    }
    assert_eq!(
        &bytes[..opening.len()],
        opening,
        "the body opens with the boundary"
    );
    bytes.drain(..opening.len());
    while parts.len() < n {
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            bytes.extend(body.chunk().expect("the live body ended before a frame"));
            continue;
        };
        let head = String::from_utf8_lossy(&bytes[..end]).to_string();
        let mut lines = head.lines();
        assert_eq!(lines.next(), Some("Content-Type: image/jpeg"), "{head}");
        let len: usize = lines
            .next()
            .and_then(|l| l.strip_prefix("Content-Length: "))
            .and_then(|n| n.parse().ok())
            .expect("a Content-Length line");
        let start = end + 4;
        let closing = b"\r\n--ivframe\r\n";
        while bytes.len() < start + len + closing.len() {
            bytes.extend(body.chunk().expect("the part is cut short"));
        }
        // The boundary that ends a part comes with it (a browser shows a part only then).
        assert_eq!(&bytes[start + len..start + len + closing.len()], closing);
        let jpeg = bytes[start..start + len].to_vec();
        assert_eq!(
            (&jpeg[..2], &jpeg[len - 2..]),
            (&[0xFF, 0xD8][..], &[0xFF, 0xD9][..])
        );
        parts.push(jpeg);
        bytes.drain(..start + len + closing.len());
    }
    parts
}

pub(crate) fn file_roots(dirs: &[&Path]) -> String {
    let list: Vec<String> = dirs
        .iter()
        .map(|d| format!("{:?}", d.display().to_string()))
        .collect();
    format!("[{}]", list.join(", "))
}

/// The `name`s of a `{"streams": [...]}` document (the API's list or the state file).
pub(crate) fn stream_names(doc: &Value) -> Vec<String> {
    doc["streams"]
        .as_array()
        .expect("a streams list")
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

/// Only frame lines (state lines have a `state` key).
pub(crate) fn frame_lines(lines: Vec<Value>) -> Vec<Value> {
    lines
        .into_iter()
        .filter(|l| l.get("frame").is_some())
        .collect()
}

/// The streams' config; the tracker leaves every reported box in (no duplicate dropped), so frame
/// events are `/v1/detect`'s with the streams' default NMS.
fn write_config(dir: &Path, streams: &[(&str, &Path)]) -> PathBuf {
    let mut toml = String::from("stream_track_duplicate_iou = 1.0\n\n");
    for (name, path) in streams {
        toml.push_str(&format!(
            "[[streams]]\nname = \"{name}\"\nurl = \"{}\"\nqueries = [\"{}\", \"{}\"]\nthreshold = {THRESHOLD}\n\n",
            path.display(),
            QUERIES[0],
            QUERIES[1]
        ));
    }
    let p = dir.join("config.toml");
    std::fs::write(&p, toml).expect("config");
    p
}

#[test]
fn file_frames_equal_detect_and_still_frames_keep_their_track_ids() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (moving_dir, still_dir) = (tmp.path().join("moving"), tmp.path().join("still"));
    std::fs::create_dir_all(&moving_dir).expect("dir");
    std::fs::create_dir_all(&still_dir).expect("dir");
    let pngs = frames(&moving_dir, false);
    let clip = lossless(&moving_dir);
    frames(&still_dir, true);
    let still = lossless(&still_dir);
    let config = write_config(tmp.path(), &[("clip", &clip), ("still", &still)]);
    let mut d = Daemon::launch(
        fixtures::model_dir("tiny-a").to_str().expect("utf8"),
        &["--config", config.to_str().expect("utf8")],
        &[],
    );
    d.wait_ready();
    for name in ["clip", "still"] {
        let s = wait_status(&d, name, Duration::from_secs(60), |s| {
            s["state"] == "finished"
        });
        assert_eq!(s["frames"], FRAMES, "{s}");
        assert_eq!(s["dropped"], 0, "{s}");
        assert_eq!(s["decoder"], "avdec_ffv1", "{s}");
        assert_eq!(s["origin"], "config", "{s}");
    }

    // Every frame's detections are /v1/detect's for the same image with the streams' default NMS.
    let events = frame_lines(Follower::open(&d, "/v1/streams/clip/events?since=0").lines(FRAMES));
    let target = detect_target(&QUERIES, &format!("threshold={THRESHOLD}&nms=0.3"));
    let mut compared = 0;
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(ev["stream"], "clip");
        assert_eq!(ev["frame"], i);
        assert_eq!(ev["pts_ms"], i * 100, "10 fps");
        assert_eq!(
            (ev["width"].as_u64(), ev["height"].as_u64()),
            (Some(320), Some(240))
        );
        let png = std::fs::read(&pngs[i]).expect("png");
        let r = d.request("POST", &target, Some("image/png"), &png);
        assert_eq!(r.status, 200);
        let want = r.json()["detections"].as_array().expect("dets").clone();
        let got = ev["detections"].as_array().expect("dets");
        assert_eq!(got.len(), want.len(), "frame {i}: {ev} vs {want:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g["label"], w["label"]);
            assert_eq!(g["query_index"], w["query_index"]);
            let (gs, ws) = (
                g["score"].as_f64().expect("s"),
                w["score"].as_f64().expect("s"),
            );
            assert!((gs - ws).abs() < 1e-5, "frame {i}: score {gs} vs {ws}");
            for k in 0..4 {
                let (gb, wb) = (
                    g["box"][k].as_f64().expect("b"),
                    w["box"][k].as_f64().expect("b"),
                );
                assert!((gb - wb).abs() < 1e-3, "frame {i}: box {g} vs {w}");
            }
            assert!(g["track_id"].as_u64().is_some(), "{g}");
            compared += 1;
        }
    }
    assert!(
        compared > FRAMES,
        "too few detections to compare: {compared}"
    );

    // ?since=N replays from frame N.
    let replay = frame_lines(Follower::open(&d, "/v1/streams/clip/events?since=5").lines(3));
    let numbers: Vec<u64> = replay.iter().filter_map(|l| l["frame"].as_u64()).collect();
    assert_eq!(numbers, vec![5, 6, 7]);

    // Identical frames keep every track id.
    let still_events =
        frame_lines(Follower::open(&d, "/v1/streams/still/events?since=0").lines(FRAMES));
    let ids = |ev: &Value| -> Vec<u64> {
        let mut v: Vec<u64> = ev["detections"]
            .as_array()
            .expect("dets")
            .iter()
            .map(|x| {
                x["track_id"]
                    .as_u64()
                    .expect("every reported detection has an id")
            })
            .collect();
        v.sort_unstable();
        v
    };
    let first = ids(&still_events[0]);
    assert!(!first.is_empty(), "the still clip has detections");
    for ev in &still_events {
        assert_eq!(ids(ev), first, "frame {}", ev["frame"]);
    }

    // The snapshot: the last frame as JPEG, with boxes drawn unless raw=1.
    let snap = d.request("GET", "/v1/streams/clip/snapshot.jpg", None, b"");
    assert_eq!(snap.status, 200);
    assert_eq!(snap.header("content-type"), Some("image/jpeg"));
    assert_eq!(&snap.body[..2], &[0xFF, 0xD8]);
    let raw = d.request("GET", "/v1/streams/clip/snapshot.jpg?raw=1", None, b"");
    assert_eq!(raw.status, 200);
    assert_ne!(
        raw.body, snap.body,
        "boxes are drawn on the default snapshot"
    );

    // The live view: multipart JPEG parts of the drawn frames; the clip has ended, so its one
    // part is the drawn last frame, the snapshot's bytes.
    let (code, headers, reader) = open_events(&d, "/v1/streams/clip/live.mjpeg?fps=10");
    assert_eq!(code, 200, "{headers:?}");
    assert!(
        headers
            .iter()
            .any(|h| h.trim_end() == "content-type: multipart/x-mixed-replace; boundary=ivframe"),
        "{headers:?}"
    );
    let part = live_parts(Follower::open_reader(reader), 1);
    assert_eq!(part[0], snap.body, "the live part is the drawn snapshot");

    let m = d.metrics();
    assert_eq!(
        metrics::value(&m, "iv_stream_frames_total", &[("stream", "clip")]),
        Some(FRAMES as f64)
    );
    assert_eq!(
        metrics::value(
            &m,
            "iv_stream_end_to_end_latency_seconds_count",
            &[("stream", "still")]
        ),
        Some(FRAMES as f64)
    );
    let h = d.health().json();
    assert_eq!(h["streams"]["finished"], 2, "{h}");
    assert_eq!(h["streams"]["total"], 2, "{h}");
}

#[test]
fn api_validates_persists_and_restores_streams() {
    let tmp = tempfile::tempdir().expect("tmp");
    frames(tmp.path(), false);
    let h264 = encode(
        tmp.path(),
        "clip.mp4",
        &["-c:v", "libx264", "-pix_fmt", "yuv420p"],
    );
    let config = write_config(tmp.path(), &[("fixed", &h264)]);
    let state = tmp.path().join("state");
    let state_s = state.to_str().expect("utf8").to_string();
    let file_roots = file_roots(&[tmp.path()]);
    let start = || {
        let mut d = Daemon::launch(
            fixtures::model_dir("tiny-a").to_str().expect("utf8"),
            &["--config", config.to_str().expect("utf8")],
            &[
                ("IV_STATE_DIR", &state_s),
                ("IV_STREAM_FILE_ROOTS", &file_roots),
            ],
        );
        d.wait_ready();
        d
    };
    let mut d = start();
    let url = h264.to_str().expect("utf8");
    let ok = json!({"url": url, "queries": ["a dog"]});
    // Refusals, each with its kind.
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("Bad_Name", ok.clone(), 400, "invalid_stream_name"),
        (
            "a",
            json!({"url": "ftp://x/y", "queries": ["a dog"]}),
            400,
            "invalid_url",
        ),
        (
            "a",
            json!({"url": "relative.mp4", "queries": ["a dog"]}),
            400,
            "invalid_url",
        ),
        (
            "a",
            json!({"url": url, "queries": []}),
            400,
            "invalid_query",
        ),
        (
            "a",
            json!({"url": url, "queries": ["a dog"], "threshold": 1.5}),
            400,
            "invalid_parameter",
        ),
        (
            "a",
            json!({"url": url, "queries": ["a dog"], "max_fps": -1}),
            400,
            "invalid_parameter",
        ),
        (
            "a",
            json!({"url": url, "queries": ["a dog"], "fps": 3}),
            400,
            "invalid_json",
        ),
        ("fixed", ok.clone(), 409, "read_only"),
    ];
    for (name, body, status, kind) in cases {
        let r = put(&d, name, &body);
        assert_eq!(
            (r.status, r.kind().as_str()),
            (status, kind),
            "{name} {body}"
        );
        assert!(!r.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .is_empty());
    }
    let r = d.request(
        "PUT",
        "/v1/streams/a",
        Some("application/json"),
        b"{not json",
    );
    assert_eq!((r.status, r.kind().as_str()), (400, "invalid_json"));
    for (method, target, status, kind) in [
        ("DELETE", "/v1/streams/fixed", 409, "read_only"),
        ("DELETE", "/v1/streams/nope", 404, "not_found"),
        ("GET", "/v1/streams/nope", 404, "not_found"),
        ("GET", "/v1/streams/nope/events", 404, "not_found"),
        ("GET", "/v1/streams/nope/snapshot.jpg", 404, "not_found"),
        ("GET", "/v1/streams/nope/live.mjpeg", 404, "not_found"),
        (
            "GET",
            "/v1/streams/fixed/live.mjpeg?fps=0",
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            "/v1/streams/fixed/live.mjpeg?fps=31",
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            "/v1/streams/fixed/live.mjpeg?size=2",
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            "/v1/streams/fixed/events?since=abc",
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            "/v1/streams/fixed/snapshot.jpg?raw=maybe",
            400,
            "invalid_parameter",
        ),
        ("POST", "/v1/streams", 405, "method_not_allowed"),
        ("GET", "/v1/streams/fixed/other", 404, "not_found"),
    ] {
        let r = d.request(method, target, None, b"");
        assert_eq!(
            (r.status, r.kind().as_str()),
            (status, kind),
            "{method} {target}"
        );
    }
    let tcp = crate::support::daemon::tcp_request(d.port, "GET", "/v1/streams").expect("tcp");
    assert_eq!(tcp.status, 404, "streams are on the Unix socket only");

    // Created, then replaced; H.264 decodes to the end.
    assert_eq!(put(&d, "extra", &ok).status, 201);
    let replaced = put(
        &d,
        "extra",
        &json!({"url": url, "queries": ["a dog"], "threshold": 0.5}),
    );
    assert_eq!(replaced.status, 200);
    assert_eq!(replaced.json()["threshold"], 0.5);
    let s = wait_status(&d, "extra", Duration::from_secs(60), |s| {
        s["state"] == "finished"
    });
    assert_eq!(s["frames"], FRAMES, "{s}");
    assert!(
        s["decoder"].as_str().is_some_and(|n| n.contains("264")),
        "an H.264 decoder is reported: {s}"
    );
    let saved = std::fs::read_to_string(state.join("streams.json")).expect("state file");
    assert!(
        saved.contains("\"extra\"") && !saved.contains("\"fixed\""),
        "{saved}"
    );

    // max_fps on a file samples by timestamp: 5 of 10 fps keeps frames 0, 2, 4, 6.
    let sampled = json!({"url": url, "queries": ["a dog"], "max_fps": 5});
    assert_eq!(put(&d, "sampled", &sampled).status, 201);
    let s = wait_status(&d, "sampled", Duration::from_secs(60), |s| {
        s["state"] == "finished"
    });
    assert_eq!(
        (s["frames"].as_u64(), s["dropped"].as_u64()),
        (Some(4), Some(4)),
        "{s}"
    );
    let numbers: Vec<u64> =
        frame_lines(Follower::open(&d, "/v1/streams/sampled/events?since=0").lines(4))
            .iter()
            .filter_map(|l| l["frame"].as_u64())
            .collect();
    assert_eq!(numbers, vec![0, 2, 4, 6]);
    assert_eq!(
        d.request("DELETE", "/v1/streams/sampled", None, b"").status,
        204
    );

    // An http:// source (GStreamer's HTTP client): a live source, so it plays and then reconnects.
    let http = HttpServer::start(tmp.path());
    let http_url = format!("http://127.0.0.1:{}/clip.mp4", http.port);
    assert_eq!(
        put(&d, "web", &json!({"url": http_url, "queries": ["a dog"]})).status,
        201
    );
    let s = wait_status(&d, "web", Duration::from_secs(60), |s| {
        s["frames"].as_u64() > Some(0)
    });
    assert!(
        s["decoder"].as_str().is_some_and(|n| n.contains("264")),
        "{s}"
    );
    assert_eq!(
        d.request("DELETE", "/v1/streams/web", None, b"").status,
        204
    );

    // Back after a restart, from the state file; deleted for good.
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0));
    let d = start();
    let list = d.request("GET", "/v1/streams", None, b"").json();
    assert_eq!(stream_names(&list), vec!["extra", "fixed"]);
    assert_eq!(status(&d, "extra")["origin"], "api");
    assert_eq!(status(&d, "extra")["threshold"], 0.5);
    assert_eq!(
        d.request("DELETE", "/v1/streams/extra", None, b"").status,
        204
    );
    assert_eq!(d.request("GET", "/v1/streams/extra", None, b"").status, 404);
    let saved = std::fs::read_to_string(state.join("streams.json")).expect("state file");
    assert!(!saved.contains("extra"), "{saved}");
}

/// Adds a live stream of `url` and waits until it runs and has processed a few frames; returns
/// its status.
pub(crate) fn start_live(d: &Daemon, name: &str, url: &str) -> Value {
    let r = put(d, name, &json!({"url": url, "queries": ["a ball"]}));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    wait_status(d, name, Duration::from_secs(30), |s| {
        s["state"] == "running" && s["frames"].as_u64() > Some(3)
    })
}

/// `python3 -m http.server` on a free loopback port, serving `dir` (killed on drop).
struct HttpServer {
    child: Child,
    port: u16,
}

impl HttpServer {
    fn start(dir: &Path) -> HttpServer {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server starts");
        let up = wait::until_true(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "http.server did not listen");
        HttpServer { child, port }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A helper server process (killed on drop).
struct Served(Child);

/// The local RTSP server.
struct RtspServer;

impl RtspServer {
    fn start(port: u16) -> Served {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/rtsp_server.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3-gi RTSP server starts");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        BufReader::new(out)
            .read_line(&mut line)
            .expect("ready line");
        assert_eq!(line.trim(), "ready", "RTSP server did not start");
        Served(child)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn rtsp_stream_reconnects_and_sigterm_stops_it_cleanly() {
    let port = free_port();
    let server = RtspServer::start(port);
    let mut d = Daemon::start(&[
        ("IV_STREAM_STALL_TIMEOUT_MS", "3000"),
        ("IV_STREAM_RECONNECT_MAX_MS", "1000"),
    ]);
    d.wait_ready();
    let s = start_live(&d, "cam", &format!("rtsp://127.0.0.1:{port}/cam"));
    assert_eq!(s["decoder"], "jpegdec", "{s}");
    let mut follower = Follower::open(&d, "/v1/streams/cam/events");

    drop(server);
    let s = wait_status(&d, "cam", Duration::from_secs(30), |s| {
        s["state"] == "reconnecting"
    });
    assert!(
        s["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{s}"
    );
    let before = s["frames"].as_u64().expect("frames");
    let _server = RtspServer::start(port);
    wait_status(&d, "cam", Duration::from_secs(30), |s| {
        s["state"] == "running" && s["frames"].as_u64() > Some(before + 3)
    });
    // The follower saw the outage and the recovery.
    let mut states = Vec::new();
    while !states.contains(&"running".to_string()) {
        for l in follower.lines(1) {
            if let Some(st) = l["state"].as_str() {
                states.push(st.to_string());
            }
        }
    }
    assert!(states.contains(&"reconnecting".to_string()), "{states:?}");
    assert_eq!(d.health().json()["streams"]["running"], 1);

    // SIGTERM with the stream running: exit 0 quickly; the follower is told and its body ends.
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        d.stderr()
    );
    let mut last = Vec::new();
    while let Some(c) = follower.chunk() {
        last = c;
    }
    let tail = String::from_utf8_lossy(&last);
    assert!(
        tail.contains("\"stopping\"") || tail.contains("\"frame\""),
        "{tail}"
    );
}

#[test]
fn a_stream_that_cannot_be_saved_is_not_started() {
    let mut d = Daemon::start(&[("IV_STATE_DIR", "/dev/null/state")]);
    d.wait_ready();
    let r = put(
        &d,
        "cam",
        &json!({"url": "rtsp://127.0.0.1:9/cam", "queries": ["a dog"]}),
    );
    assert_eq!((r.status, r.kind().as_str()), (500, "persist_failed"));
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("/dev/null/state/streams.json")),
        "{}",
        r.json()
    );
    let list = d.request("GET", "/v1/streams", None, b"").json();
    assert_eq!(
        list["streams"],
        json!([]),
        "nothing runs that would be lost at restart"
    );
    // No journal there either: the daemon serves, and says why events are not kept.
    let r = d.request("GET", "/v1/events", None, b"");
    assert_eq!((r.status, r.kind().as_str()), (503, "events_unavailable"));
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("/dev/null/state/events")));
}

#[test]
fn an_mjpeg_over_http_camera_plays_as_a_live_source() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pngs = frames(tmp.path(), false);
    let jpegs: Vec<PathBuf> = pngs
        .iter()
        .take(2)
        .map(|p| {
            let j = p.with_extension("jpg");
            ffmpeg(&["-i", p.to_str().expect("utf8"), j.to_str().expect("utf8")]);
            j
        })
        .collect();
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/mjpeg_server.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .args(&jpegs)
        .stdout(Stdio::piped())
        .spawn()
        .expect("MJPEG server starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    let _server = Served(child);
    assert_eq!(line.trim(), "ready");
    let mut d = Daemon::start(&[]);
    d.wait_ready();
    let s = start_live(&d, "ipcam", &format!("http://127.0.0.1:{port}/video"));
    assert_eq!(s["decoder"], "jpegdec", "{s}");
    let mut follower = Follower::open(&d, "/v1/streams/ipcam/events");
    let ev = (0..20)
        .find_map(|_| frame_lines(follower.lines(1)).pop())
        .expect("a frame event");
    assert_eq!(
        (ev["width"].as_u64(), ev["height"].as_u64()),
        (Some(320), Some(240))
    );
    // Its live view goes on with the camera: three drawn frames in a row.
    let (code, _, reader) = open_events(&d, "/v1/streams/ipcam/live.mjpeg?fps=20");
    assert_eq!(code, 200);
    assert_eq!(live_parts(Follower::open_reader(reader), 3).len(), 3);
}

/// A stream defined by a saved query set (no queries of its own): refused while the set does not
/// exist; then every frame's detections are `/v1/detect?query_set=`'s for the same image.
#[test]
fn a_stream_looks_for_its_query_set() {
    use base64::Engine as _;
    let tmp = tempfile::tempdir().expect("tmp");
    let pngs = frames(tmp.path(), false);
    let clip = lossless(tmp.path());
    let file_roots = file_roots(&[tmp.path()]);
    let mut d = Daemon::start(&[
        ("IV_STREAM_FILE_ROOTS", &file_roots),
        ("IV_STREAM_TRACK_DUPLICATE_IOU", "1"),
    ]);
    d.wait_ready();
    let url = clip.to_str().expect("utf8");
    let body = json!({"url": url, "query_set": "looks", "threshold": 0.5, "nms": 0.3});
    let r = put(&d, "byset", &body);
    assert_eq!((r.status, r.kind()), (400, "unknown_query_set".to_string()));
    let set = json!({"query_images": [{
        "image_base64": base64::engine::general_purpose::STANDARD.encode(std::fs::read(&pngs[0]).expect("png")),
        "box": [100, 60, 220, 180],
        "label": "that",
    }]});
    let r = d.request(
        "PUT",
        "/v1/query-sets/looks",
        Some("application/json"),
        set.to_string().as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // Checked together with the set's, as a request would be: a text query named like the set's
    // exemplar label is refused with the request's kind.
    let clash = json!({"url": url, "query_set": "looks", "queries": ["that"]});
    let r = put(&d, "clash", &clash);
    assert_eq!((r.status, r.kind()), (400, "invalid_parameter".to_string()));
    assert!(String::from_utf8_lossy(&r.body).contains("also a text query"));
    let r = put(&d, "byset", &body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let s = wait_status(&d, "byset", Duration::from_secs(60), |s| {
        s["state"] == "finished"
    });
    assert_eq!(s["frames"], FRAMES, "{s}");
    assert_eq!(s["query_set"], "looks", "{s}");
    let events = frame_lines(Follower::open(&d, "/v1/streams/byset/events?since=0").lines(FRAMES));
    let mut compared = 0;
    for (i, ev) in events.iter().enumerate() {
        let png = std::fs::read(&pngs[i]).expect("png");
        let r = d.request(
            "POST",
            "/v1/detect?query_set=looks&threshold=0.5&nms=0.3",
            Some("image/png"),
            &png,
        );
        assert_eq!(r.status, 200);
        let want = r.json()["detections"].as_array().expect("dets").clone();
        let got = ev["detections"].as_array().expect("dets");
        assert_eq!(got.len(), want.len(), "frame {i}: {ev} vs {want:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g["label"], "that");
            assert_eq!(g["label"], w["label"]);
            let (gs, ws) = (
                g["score"].as_f64().unwrap_or(-1.0),
                w["score"].as_f64().unwrap_or(1.0),
            );
            assert!((gs - ws).abs() < 1e-5, "frame {i}: score {gs} vs {ws}");
            compared += 1;
        }
    }
    assert!(
        compared >= FRAMES,
        "too few detections to compare: {compared}"
    );
}

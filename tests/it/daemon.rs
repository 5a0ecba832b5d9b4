//! The daemon's lifecycle through the real binary: READY only after warmup, detections equal to the
//! `detect` command's, both health documents, graceful SIGTERM with an in-flight request, socket
//! cleanup, watchdog pings, socket activation, missing model, `config check` and the `health` command.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::daemon::{
    detect_target, free_port, parse_response, request_bytes, tcp_request, unix_request, Daemon,
};
use crate::support::{bin, fixtures, wait};

#[test]
fn ready_after_warmup_serves_detect_equal_to_cli_and_drains_on_sigterm() {
    let mut d = Daemon::start(&[("IV_WARMUP_ITERATIONS", "3"), ("IV_SOCKET_MODE", "0640")]);
    d.wait_ready();
    let notes = d.notes();
    let pos = |s: &str| {
        notes
            .iter()
            .position(|n| n == s)
            .unwrap_or_else(|| panic!("{s} missing in {notes:?}"))
    };
    let ready = pos("READY=1");
    assert!(pos("STATUS=loading model") < pos("STATUS=warmup 1/3"));
    assert!(pos("STATUS=warmup 1/3") < pos("STATUS=warmup 2/3"));
    assert!(
        pos("STATUS=warmup 3/3") < ready,
        "READY before the last warmup: {notes:?}"
    );
    assert!(
        notes.iter().any(|n| n == "STATUS=serving on cpu"),
        "{notes:?}"
    );

    // Socket file mode as configured.
    let mode = std::fs::metadata(&d.socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640);

    // Health documents.
    let h = d.health();
    assert_eq!(h.status, 200);
    let hj = h.json();
    assert_eq!(hj["status"], "healthy");
    assert_eq!(hj["model_loaded"], true);
    assert_eq!(hj["gpu_available"], false);
    assert_eq!(hj["optimization"]["backend"], "cpu");
    assert!(hj["optimization"]["speedup_estimate"].as_f64().is_some());
    assert!(hj["optimization"]["cached"].is_boolean());
    let o = tcp_request(d.port, "GET", "/api/optimization").expect("optimization");
    assert_eq!(o.status, 200);
    let oj = o.json();
    for k in [
        "model_name",
        "device",
        "gpu_available",
        "optimization",
        "settings",
    ] {
        assert!(oj.get(k).is_some(), "{k} missing in {oj}");
    }
    for k in ["backend", "optimization_time", "speedup_estimate", "cached"] {
        assert!(
            oj["optimization"].get(k).is_some(),
            "optimization.{k} missing"
        );
    }
    for k in [
        "enable_optimization",
        "backend_preference",
        "tensorrt_precision",
        "torch_compile_mode",
    ] {
        assert!(oj["settings"].get(k).is_some(), "settings.{k} missing");
    }
    // What the PyTorch-named setting turns on here (default: neither).
    assert_eq!(oj["settings"]["cuda_graphs"], false, "{oj}");
    assert_eq!(oj["settings"]["cudnn_exhaustive_search"], false, "{oj}");
    assert_eq!(oj["settings"]["backend_preference"], "auto");
    // auto tried TensorRT and CUDA first; each failure is listed with its reason.
    let fb = oj["optimization"]["fallbacks"]
        .as_array()
        .expect("fallbacks");
    let names: Vec<&str> = fb
        .iter()
        .map(|f| f["backend"].as_str().expect("backend"))
        .collect();
    assert_eq!(names, vec!["tensorrt", "tensorrt_rtx", "cuda"], "{oj}");
    assert!(
        fb.iter()
            .all(|f| f["reason"].as_str().is_some_and(|r| r.len() > 5)),
        "{oj}"
    );
    assert!(oj["gpu"]["available"].is_boolean());
    assert_eq!(
        tcp_request(d.port, "GET", "/livez").expect("livez").status,
        200
    );
    assert_eq!(
        tcp_request(d.port, "GET", "/readyz")
            .expect("readyz")
            .status,
        200
    );

    // Detections over the socket equal `detect`'s, field for field.
    let img = fixtures::image_path("wide_blur.png");
    let body = std::fs::read(&img).expect("img");
    let r = d.request(
        "POST",
        &detect_target(&["a photo of a cat", "person"], "threshold=0.3"),
        Some("image/png"),
        &body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let rj = r.json();
    assert_eq!(rj["width"], 200);
    assert_eq!(rj["height"], 120);
    assert_eq!(rj["backend"], "cpu");
    for k in ["queue", "preprocess", "inference", "postprocess", "total"] {
        assert!(
            rj["timing_ms"][k].as_f64().is_some_and(|v| v >= 0.0),
            "timing_ms.{k}"
        );
    }
    let cli = bin::command()
        .args(["detect", "--model"])
        .arg(fixtures::model_dir("tiny-a"))
        .args([
            "--query",
            "a photo of a cat",
            "--query",
            "person",
            "--threshold",
            "0.3",
        ])
        .arg(&img)
        .output()
        .expect("cli");
    assert!(cli.status.success());
    let cj: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("cli json");
    assert!(!cj["detections"].as_array().expect("arr").is_empty());
    // Exactly equal, not within a tolerance: the README promises the daemon's detections are
    // `detect`'s numbers (both are our engine on the same pixels, one image per run).
    assert_eq!(
        rj["detections"], cj["detections"],
        "daemon and CLI disagree"
    );

    // SIGTERM while a request is in flight (headers sent, body still coming): it completes. The
    // request asks `Expect: 100-continue`, so the daemon's interim `100 Continue` tells when the
    // handler has taken the request and is reading its body; SIGTERM goes only after that.
    let mut slow = UnixStream::connect(&d.socket).expect("connect");
    let plain = request_bytes(
        "POST",
        &detect_target(&["person"], "threshold=0.3"),
        Some("image/png"),
        &body,
    );
    let head_end = plain
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head")
        + 2;
    let mut req = plain[..head_end].to_vec();
    req.extend_from_slice(b"Expect: 100-continue\r\n");
    req.extend_from_slice(&plain[head_end..]);
    let split = req.len() - body.len() / 2;
    slow.write_all(&req[..split]).expect("first half");
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = slow.read(&mut chunk).expect("interim response");
        assert!(
            n > 0,
            "closed before 100 Continue: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&chunk[..n]);
    }
    let interim_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("interim")
        + 4;
    assert!(
        raw.starts_with(b"HTTP/1.1 100"),
        "want 100 Continue first: {:?}",
        String::from_utf8_lossy(&raw)
    );
    raw.drain(..interim_end);
    d.signal(Signal::SIGTERM);
    assert!(
        d.wait_note(|n| n == "STOPPING=1", Duration::from_secs(10)),
        "no STOPPING=1: {:?}",
        d.notes()
    );
    // Readiness is false while draining.
    if let Ok(h) = tcp_request(d.port, "GET", "/readyz") {
        assert_eq!(h.status, 503);
    }
    slow.write_all(&req[split..]).expect("second half");
    slow.read_to_end(&mut raw).expect("response");
    let resp = parse_response(&raw).expect("complete response");
    assert_eq!(
        resp.status,
        200,
        "in-flight request lost: {}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(
        d.wait_exit(Duration::from_secs(30)),
        Some(0),
        "stderr:\n{}",
        d.stderr()
    );
    assert!(!d.socket.exists(), "socket file left behind");
}

#[test]
fn watchdog_pings_while_the_worker_answers() {
    // WATCHDOG_USEC is read from the environment, as systemd passes it.
    let mut d = Daemon::start(&[("WATCHDOG_USEC", "400000")]);
    d.wait_ready();
    // At least 3 pings within 1.2 s of READY (the count only grows, so stopping early at 3 asserts
    // the same as counting after a fixed 1.2 s).
    wait::until_true(Duration::from_millis(1200), || {
        d.count_notes("WATCHDOG=1") >= 3
    });
    let n = d.count_notes("WATCHDOG=1");
    assert!(
        n >= 3,
        "expected several WATCHDOG=1 after 1.2 s at 0.4 s: {:?}",
        d.notes()
    );
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));

    let mut quiet = Daemon::start(&[]);
    quiet.wait_ready();
    // A fixed pause on purpose: the absence of pings over this window is what is tested.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !quiet.notes().iter().any(|n| n == "WATCHDOG=1"),
        "pings without WATCHDOG_USEC"
    );
}

#[test]
fn missing_model_fails_with_a_status_line_naming_the_pull_command() {
    let mut d = Daemon::start_with(
        "acme/no-such-model",
        &[("IV_MODEL_STORE", "/nonexistent/store")],
    );
    let code = d.wait_exit(Duration::from_secs(30));
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}");
    let err = d.stderr();
    assert!(
        err.contains("intelligent-video model pull acme/no-such-model"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    assert!(
        d.notes()
            .iter()
            .any(|n| n.starts_with("STATUS=failed:") && n.contains("model pull")),
        "{:?}",
        d.notes()
    );
    assert!(!d.notes().iter().any(|n| n == "READY=1"));
    assert!(!d.socket.exists(), "socket file left behind");
}

#[test]
fn socket_activation_uses_the_passed_sockets() {
    let Ok(activate) = which("systemd-socket-activate") else {
        panic!("systemd-socket-activate is required (Debian package systemd)");
    };
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("act.sock");
    let port = free_port();
    let notify = dir.path().join("n.sock");
    let nsock = std::os::unix::net::UnixDatagram::bind(&notify).expect("notify");
    nsock
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut serve = bin::command();
    serve
        .arg("serve")
        .env("NOTIFY_SOCKET", &notify)
        .env("IV_MODEL", fixtures::model_dir("tiny-a"))
        .env("IV_WARMUP_ITERATIONS", "1")
        .env("IV_SOCKET_PATH", dir.path().join("unused.sock"))
        .env("IV_HTTP_ADDR", "127.0.0.1:1");
    let http = format!("127.0.0.1:{port}");
    let mut child = bin::under(
        activate,
        &[
            OsStr::new("-l"),
            sock.as_os_str(),
            OsStr::new("-l"),
            OsStr::new(&http),
            OsStr::new("--fdname=detect:http"),
        ],
        &serve,
    )
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("log"))
    .spawn()
    .expect("systemd-socket-activate runs");
    // systemd-socket-activate starts the service on the first connection (like Accept=no).
    let body = fixtures::image("small_pad.png");
    let resp = wait::until(Duration::from_secs(30), || {
        match unix_request(
            &sock,
            "POST",
            &detect_target(&["person"], "threshold=0"),
            Some("image/png"),
            &body,
        ) {
            Ok(r) if r.status == 200 => Some(r),
            Ok(r) => {
                assert_eq!(r.status, 503, "only not-ready answers while loading");
                None
            }
            Err(_) => None,
        }
    })
    .unwrap_or_else(|| {
        let _ = child.kill();
        panic!(
            "no detection over the activated socket; stderr:\n{}",
            std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
        )
    });
    assert_eq!(resp.json()["width"], 50);
    let h = tcp_request(port, "GET", "/api/health").expect("health over the activated port");
    assert_eq!(h.status, 200);
    assert!(
        !dir.path().join("unused.sock").exists(),
        "bound its own socket despite activation"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .expect("term");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|p| p.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn config_check_prints_effective_settings_or_exits_78() {
    let dir = tempfile::tempdir().expect("tmp");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "model = \"/srv/models/owl\"\nmax_batch_size = 8\n").expect("write");
    let out = bin::command()
        .args(["config", "check", "--config"])
        .arg(&good)
        .env("IV_MAX_QUEUE", "12")
        .output()
        .expect("runs");
    bin::assert_success(&out);
    let text = String::from_utf8(out.stdout).expect("utf8");
    let v: toml::Value = toml::from_str(&text).expect("prints TOML");
    assert_eq!(v["model"].as_str(), Some("/srv/models/owl"));
    assert_eq!(v["max_batch_size"].as_integer(), Some(8));
    assert_eq!(v["max_queue"].as_integer(), Some(12));
    assert_eq!(v["socket_mode"].as_str(), Some("0660"));
    assert_eq!(v["http_addr"].as_str(), Some("127.0.0.1:8000"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "modle = \"typo\"\n").expect("write");
    let out = bin::command()
        .args(["config", "check", "--config"])
        .arg(&bad)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("modle"), "{err}");

    let out = bin::command()
        .args(["config", "check", "--config"])
        .arg(&good)
        .env("IV_HTTP_ADDR", "0.0.0.0:8000")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("IV_HTTP_ALLOW_REMOTE"));

    let out = bin::command()
        .args(["config", "check", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78));

    // serve refuses an invalid configuration with the same code.
    let out = bin::command()
        .arg("serve")
        .env("IV_MAX_QUEUE", "zero")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn optimized_artifact_is_cached_reused_and_rebuilt_when_corrupt() {
    let cache = tempfile::tempdir().expect("tmp");
    let cache_s = cache.path().to_str().expect("utf8").to_string();
    let body = fixtures::image("wide_blur.png");
    let target = detect_target(&["person"], "threshold=0.3");
    let boot = |expect_cached: bool| -> serde_json::Value {
        let mut d = Daemon::start(&[
            ("IV_CACHE_DIR", cache_s.as_str()),
            ("IV_WARMUP_ITERATIONS", "1"),
        ]);
        d.wait_ready();
        let h = d.health().json();
        assert_eq!(
            h["optimization"]["cached"],
            expect_cached,
            "{h}; stderr:\n{}",
            d.stderr()
        );
        let r = d.request("POST", &target, Some("image/png"), &body);
        assert_eq!(r.status, 200);
        d.signal(Signal::SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));
        r.json()["detections"].clone()
    };
    let cold = boot(false);
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .expect("ls")
        .map(|e| e.expect("e").path())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "one entry, no temporary folders left: {entries:?}"
    );
    let entry = entries[0].clone();
    for f in [
        "image.onnx",
        "image.weights",
        "text.onnx",
        "text.weights",
        "meta.json",
    ] {
        assert!(entry.join(f).is_file(), "{f} missing");
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.join("meta.json")).expect("meta"))
            .expect("json");
    assert!(meta["optimization_time"].as_f64().is_some_and(|t| t > 0.0));
    // Warm boot: served from the cache, same answers (exactly: the cached artifact is the same
    // graph and weights on the same engine).
    assert_eq!(boot(true), cold);
    // Truncated weights: rebuilt with a warning, never a crash loop.
    let w = entry.join("image.weights");
    let len = std::fs::metadata(&w).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&w)
        .expect("open")
        .set_len(len / 2)
        .expect("truncate");
    assert_eq!(boot(false), cold);
    assert_eq!(boot(true), cold);
    // Garbage graph with matching size: the load fails, the entry is rebuilt.
    let g = entry.join("image.onnx");
    let glen = std::fs::metadata(&g).expect("meta").len() as usize;
    std::fs::write(&g, vec![0xABu8; glen]).expect("garbage");
    assert_eq!(boot(false), cold);
    // An unusable cache directory still serves (built in memory).
    let file = cache.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let mut d = Daemon::start(&[
        ("IV_CACHE_DIR", file.to_str().expect("utf8")),
        ("IV_WARMUP_ITERATIONS", "1"),
    ]);
    d.wait_ready();
    assert_eq!(d.health().json()["optimization"]["cached"], false);
    let r = d.request("POST", &target, Some("image/png"), &body);
    assert_eq!(r.json()["detections"], cold);
}

/// `intelligent-video health` (the container image's HEALTHCHECK): the daemon's health port from
/// `IV_HTTP_ADDR` (all addresses, as in the image: reached on loopback), exit 0 when ready; nothing
/// listening is exit 1 with the URL it tried.
#[test]
fn the_health_command_says_ready_or_why_not() {
    let mut d = Daemon::start(&[]);
    d.wait_ready();
    let health = |addr: &str| {
        bin::command()
            .arg("health")
            .env("IV_HTTP_ADDR", addr)
            .env("IV_HTTP_ALLOW_REMOTE", "true")
            .output()
            .expect("health")
    };
    let out = health(&format!("0.0.0.0:{}", d.port));
    bin::assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\n");
    let nobody = free_port();
    let out = health(&format!("127.0.0.1:{nobody}"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "error: no answer from http://127.0.0.1:{nobody}/readyz"
        )),
        "{err}"
    );
}

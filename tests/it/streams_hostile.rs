//! Streams, followers and state files under a hostile local client: FIFOs as stream files, followers
//! that never read or leave without a word, local files outside the allowed folders, state files
//! that do not parse, racing replacements and teardowns. Each test bounds its time.

use std::io::{BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::streams::{
    encode, file_roots, frames, lossless, open_events, put, status, stream_names, wait_status,
    Follower, FRAMES,
};
use crate::support::daemon::{free_port, Daemon};
use crate::support::{bin, fixtures, wait};

fn write_state(state: &Path, streams: &[Value]) -> PathBuf {
    std::fs::create_dir_all(state).expect("state dir");
    let f = state.join("streams.json");
    std::fs::write(&f, json!({ "streams": streams }).to_string()).expect("state file");
    f
}

/// The daemon's threads and open files now.
fn threads_and_fds(d: &Daemon) -> (usize, usize) {
    let count = |what: &str| {
        std::fs::read_dir(format!("/proc/{}/{what}", d.child.id()))
            .map(|r| r.count())
            .unwrap_or(usize::MAX)
    };
    (count("task"), count("fd"))
}

/// Runs one RTSP stream to a closed port until it fails, then deletes it: GStreamer's one-time
/// set-up (plugins, its main-context threads and files) is then done, so that counts of threads and
/// files taken afterwards are a baseline.
fn warm_up_streams(d: &Daemon) {
    let url = format!("rtsp://127.0.0.1:{}/nobody", free_port());
    assert_eq!(
        put(d, "warmup", &json!({"url": url, "queries": ["a cat"]})).status,
        201
    );
    wait_status(d, "warmup", Duration::from_secs(20), |s| {
        s["last_error"].is_string()
    });
    assert_eq!(
        d.request("DELETE", "/v1/streams/warmup", None, b"").status,
        204
    );
    let idle = wait::until_true(Duration::from_secs(20), || {
        crate::support::metrics::value(&d.metrics(), "iv_stream_pipelines_stopping", &[])
            == Some(0.0)
    });
    assert!(idle, "the warm-up stream's pipeline stops");
}

/// Opens `GET target` on the socket: its status code and the connection, at the body.
fn open_follower(d: &Daemon, target: &str) -> (u16, BufReader<UnixStream>) {
    let (code, _, reader) = open_events(d, target);
    (code, reader)
}

/// A saved stream whose file is a FIFO (what an earlier version accepted): the daemon starts, the
/// stream fails with the reason instead of blocking a worker in `open()`, the API answers, a new
/// FIFO is refused at once, and SIGTERM ends the process. Before the fix two such streams froze
/// every request and the process survived SIGTERM.
#[test]
fn fifo_streams_neither_freeze_the_daemon_nor_come_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let videos = tmp.path().join("videos");
    std::fs::create_dir_all(&videos).expect("mkdir");
    for f in ["f0", "f1", "f2"] {
        nix::unistd::mkfifo(
            &videos.join(f),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
    }
    let state = tmp.path().join("state");
    let saved: Vec<Value> = ["f0", "f1"]
        .iter()
        .map(|f| json!({"name": f, "url": videos.join(f), "queries": ["a dog"]}))
        .collect();
    write_state(&state, &saved);
    let mut d = Daemon::start(&[
        ("IV_STATE_DIR", state.to_str().expect("utf8")),
        ("IV_STREAM_FILE_ROOTS", &file_roots(&[&videos])),
    ]);
    d.wait_ready();
    for f in ["f0", "f1"] {
        let s = wait_status(&d, f, Duration::from_secs(20), |s| s["state"] == "failed");
        assert!(
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("not a regular file")),
            "{s}"
        );
    }
    let r = put(
        &d,
        "f2",
        &json!({"url": videos.join("f2"), "queries": ["a dog"]}),
    );
    assert_eq!(
        (r.status, r.kind().as_str()),
        (400, "invalid_url"),
        "{}",
        r.json()
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("not a regular file")));
    assert_eq!(d.health().status, 200);
    d.assert_detects();
    assert_eq!(d.request("DELETE", "/v1/streams/f0", None, b"").status, 204);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        d.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        d.stderr()
    );
}

/// 260 followers of a finished stream that read the head and leave: each body ends after the
/// replay, nothing is left open, and detections still get a connection (before: fds 16 → 272 and
/// `429 too_many_connections` for everyone). `since` takes plain numbers only.
#[test]
fn followers_of_a_finished_stream_leave_nothing_open() {
    let tmp = tempfile::tempdir().expect("tmp");
    frames(tmp.path(), false);
    let clip = lossless(tmp.path());
    let mut d = Daemon::start(&[
        ("IV_MAX_CONNECTIONS", "8"),
        ("IV_STREAM_FILE_ROOTS", &file_roots(&[tmp.path()])),
    ]);
    d.wait_ready();
    let r = put(&d, "clip", &json!({"url": clip, "queries": ["a cat"]}));
    assert_eq!(r.status, 201, "{}", r.json());
    wait_status(&d, "clip", Duration::from_secs(60), |s| {
        s["state"] == "finished"
    });
    let (_, fds_before) = threads_and_fds(&d);
    for _ in 0..260 {
        let (code, r) = open_follower(&d, "/v1/streams/clip/events");
        assert_eq!(code, 200);
        drop(r);
    }
    // A whole body: the stream's last state line, then its end.
    let (code, mut r) = open_follower(&d, "/v1/streams/clip/events?since=0");
    assert_eq!(code, 200);
    let mut body = Vec::new();
    r.read_to_end(&mut body).expect("the body ends");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.matches("\"frame\":").count(), FRAMES, "{text}");
    let settled = wait::until_true(Duration::from_secs(10), || {
        threads_and_fds(&d).1 <= fds_before + 2
    });
    assert!(settled, "fds {fds_before} → {}", threads_and_fds(&d).1);
    d.assert_detects();
    let r = d.request("GET", "/v1/streams/clip/events?since=%2B5", None, b"");
    assert_eq!((r.status, r.kind().as_str()), (400, "invalid_parameter"));
}

/// Followers of a quiet live stream: at most half of `max_connections` at once (the rest get 429
/// `too_many_followers`, detections still get through), keep-alive lines while nothing happens,
/// and followers that left without a word are noticed at the next keep-alive (before: 8 followers
/// with `max_connections=8` locked the socket for 35 s+).
#[test]
fn followers_of_a_quiet_stream_are_bounded_and_noticed_when_gone() {
    let mut d = Daemon::start(&[
        ("IV_MAX_CONNECTIONS", "8"),
        ("IV_STREAM_KEEPALIVE_MS", "200"),
        ("IV_STREAM_RECONNECT_MAX_MS", "60000"),
    ]);
    d.wait_ready();
    let url = format!("rtsp://127.0.0.1:{}/nobody", free_port());
    let r = put(&d, "quiet", &json!({"url": url, "queries": ["a dog"]}));
    assert_eq!(r.status, 201, "{}", r.json());
    let mut followers = Vec::new();
    for _ in 0..4 {
        let (code, r) = open_follower(&d, "/v1/streams/quiet/events");
        assert_eq!(code, 200);
        followers.push(r);
    }
    let (code, _) = open_follower(&d, "/v1/streams/quiet/events");
    assert_eq!(code, 429, "a fifth follower of 8 connections");
    d.assert_detects();
    // A keep-alive line comes while the stream says nothing new.
    let mut f = Follower::open_reader(followers.remove(0));
    let keepalive = (0..50)
        .flat_map(|_| f.lines(1))
        .find(|l| l["keepalive"] == true)
        .expect("a keep-alive line");
    assert_eq!(keepalive["stream"], "quiet");
    drop(f);
    drop(followers);
    let back = wait::until_true(Duration::from_secs(10), || {
        let (code, r) = open_follower(&d, "/v1/streams/quiet/events");
        drop(r);
        code == 200
    });
    assert!(back, "the followers that left still hold their places");
    let mut again = Vec::new();
    let four = wait::until_true(Duration::from_secs(10), || {
        let (code, r) = open_follower(&d, "/v1/streams/quiet/events");
        if code == 200 {
            again.push(r);
        }
        again.len() == 4
    });
    assert!(four, "every place is free again once the keep-alives fail");
}

/// Local files through the API only inside `stream_file_roots`; a refused path's message does not
/// tell whether it exists or what it is; devices only under /dev/video* and /dev/v4l/. Before, a
/// client could have any file the daemon can read decoded into a snapshot.
#[test]
fn api_streams_read_local_files_only_inside_their_roots() {
    let tmp = tempfile::tempdir().expect("tmp");
    let videos = tmp.path().join("videos");
    let secret = tmp.path().join("secret");
    std::fs::create_dir_all(&videos).expect("mkdir");
    std::fs::create_dir_all(&secret).expect("mkdir");
    frames(&videos, false);
    let clip = lossless(&videos);
    let png = secret.join("secret.png");
    std::fs::copy(fixtures::image_path("small_pad.png"), &png).expect("copy");
    std::fs::set_permissions(&png, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::symlink(&png, videos.join("link.png")).expect("symlink");

    let mut none = Daemon::start(&[]);
    none.wait_ready();
    let r = put(&none, "clip", &json!({"url": clip, "queries": ["a cat"]}));
    assert_eq!((r.status, r.kind().as_str()), (400, "invalid_url"));
    assert!(
        String::from_utf8_lossy(&r.body).contains("none configured"),
        "{}",
        r.json()
    );
    drop(none);

    let mut d = Daemon::start(&[("IV_STREAM_FILE_ROOTS", &file_roots(&[&videos]))]);
    d.wait_ready();
    let refused = |url: &Path| -> String {
        let r = put(&d, "x", &json!({"url": url, "queries": ["a cat"]}));
        assert_eq!(
            (r.status, r.kind().as_str()),
            (400, "invalid_url"),
            "{}",
            r.json()
        );
        let m = r.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        m.replace(&url.display().to_string(), "PATH")
    };
    let m = refused(&png);
    assert!(m.contains("stream_file_roots"), "{m}");
    for other in [
        secret.join("missing.png"),
        secret.clone(),
        videos.join("link.png"),
    ] {
        assert_eq!(refused(&other), m, "{}", other.display());
    }
    for url in [
        "v4l2:///dev/../etc/shadow",
        "v4l2:///dev/null",
        "v4l2:///dev/shm/video0",
    ] {
        let r = put(&d, "cam", &json!({"url": url, "queries": ["a cat"]}));
        assert_eq!((r.status, r.kind().as_str()), (400, "invalid_url"), "{url}");
    }
    let r = put(&d, "clip", &json!({"url": clip, "queries": ["a cat"]}));
    assert_eq!(r.status, 201, "{}", r.json());
    let s = wait_status(&d, "clip", Duration::from_secs(60), |s| {
        s["state"] == "finished"
    });
    assert_eq!(s["frames"], FRAMES);
    assert_eq!(
        d.request("GET", "/v1/streams", None, b"").json()["streams"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

/// Saved definitions are never lost: one that does not parse is shown failed and kept verbatim,
/// one over a lowered `max_streams` is shown failed and starts once there is room, an unreadable
/// file is set aside (never overwritten), temporaries of a killed writer are removed, and the
/// file is the daemon user's alone.
#[test]
fn saved_streams_are_never_lost() {
    let tmp = tempfile::tempdir().expect("tmp");
    frames(tmp.path(), false);
    let clip = lossless(tmp.path());
    let state = tmp.path().join("state");
    let file = write_state(
        &state,
        &[
            json!({"name": "a", "url": clip, "queries": ["a cat"]}),
            json!({"name": "bad", "url": clip, "queries": ["a cat"], "fps": 3}),
            json!({"name": "c", "url": clip, "queries": ["a cat"]}),
        ],
    );
    let stale = state.join(".streams.json.tmp-4194305");
    std::fs::write(&stale, "half").expect("tmp");
    let roots = file_roots(&[tmp.path()]);
    let start = |max: &str| {
        let mut d = Daemon::start(&[
            ("IV_STATE_DIR", state.to_str().expect("utf8")),
            ("IV_STREAM_FILE_ROOTS", &roots),
            ("IV_MAX_STREAMS", max),
        ]);
        d.wait_ready();
        d
    };
    let d = start("2");
    assert!(
        !stale.exists(),
        "a killed writer's temporary file is removed"
    );
    wait_status(&d, "a", Duration::from_secs(60), |s| {
        s["state"] == "finished"
    });
    let bad = status(&d, "bad");
    assert_eq!(bad["state"], "failed");
    assert!(
        bad["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("fps")),
        "{bad}"
    );
    let c = status(&d, "c");
    assert_eq!(c["state"], "failed");
    assert!(
        c["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("max_streams")),
        "{c}"
    );
    let r = put(&d, "d", &json!({"url": clip, "queries": ["a cat"]}));
    assert_eq!((r.status, r.kind().as_str()), (409, "too_many_streams"));
    assert_eq!(d.request("DELETE", "/v1/streams/a", None, b"").status, 204);
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    assert_eq!(stream_names(&saved), vec!["bad", "c"]);
    assert_eq!(saved["streams"][0]["fps"], 3, "kept as it was: {saved}");
    let mode = std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(d);

    let d = start("4");
    let c = wait_status(&d, "c", Duration::from_secs(60), |s| {
        s["state"] == "finished"
    });
    assert_eq!(c["frames"], FRAMES);
    assert_eq!(status(&d, "bad")["state"], "failed");
    drop(d);

    // A truncated file: set aside, never overwritten by the next change or the next bad file.
    let mut asides = Vec::new();
    for round in 0..2 {
        std::fs::write(&file, format!("{{\"streams\": [{round}")).expect("truncate");
        let d = start("4");
        assert_eq!(
            d.request("GET", "/v1/streams", None, b"").json()["streams"],
            json!([])
        );
        let r = put(&d, "new", &json!({"url": clip, "queries": ["a cat"]}));
        assert_eq!(r.status, 201, "{}", r.json());
        asides = std::fs::read_dir(&state)
            .expect("ls")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().contains("streams.json.bad-"))
            .collect();
        assert_eq!(asides.len(), round + 1, "{asides:?}");
    }
    let mut contents: Vec<String> = asides
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect();
    contents.sort();
    assert_eq!(contents, vec!["{\"streams\": [0", "{\"streams\": [1"]);
}

/// PUT and DELETE racing on one name: every PUT answers with the stream it saved (before: 21 of
/// 400 answered 404 although saved), every DELETE 204 or 404.
#[test]
fn racing_puts_and_deletes_answer_what_they_did() {
    let tmp = tempfile::tempdir().expect("tmp");
    frames(tmp.path(), false);
    let clip = lossless(tmp.path());
    let mut d = Daemon::start(&[("IV_STREAM_FILE_ROOTS", &file_roots(&[tmp.path()]))]);
    d.wait_ready();
    let body = json!({"url": clip, "queries": ["a cat"]}).to_string();
    let socket = d.socket.clone();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (socket, body) = (socket.clone(), body.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                for i in 0..50 {
                    let (method, b) = if (i + w) % 2 == 0 {
                        ("PUT", body.as_bytes())
                    } else {
                        ("DELETE", &b""[..])
                    };
                    let r = crate::support::daemon::unix_request(
                        &socket,
                        method,
                        "/v1/streams/cam",
                        Some("application/json"),
                        b,
                    )
                    .expect("request");
                    seen.push((method, r.status, r.body));
                }
                seen
            })
        })
        .collect();
    for w in workers {
        for (method, code, body) in w.join().expect("worker") {
            match method {
                "PUT" => {
                    assert!(
                        code == 200 || code == 201,
                        "PUT {code}: {}",
                        String::from_utf8_lossy(&body)
                    );
                    let v: Value = serde_json::from_slice(&body).expect("json");
                    assert_eq!(v["name"], "cam");
                }
                _ => assert!(code == 204 || code == 404, "DELETE {code}"),
            }
        }
    }
}

/// 100 × (PUT a short clip, at once PUT a long one), 4 clients racing PUT/DELETE, then DELETE: no
/// pipeline is left behind (threads and fds back where they were) and the daemon stops at once.
#[test]
fn replaced_and_deleted_streams_leave_no_pipeline_behind() {
    let tmp = tempfile::tempdir().expect("tmp");
    frames(tmp.path(), false);
    let short = lossless(tmp.path());
    let long = encode(
        tmp.path(),
        "long.mp4",
        &[
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-vf",
            "loop=loop=60:size=8",
        ],
    );
    let mut d = Daemon::start(&[("IV_STREAM_FILE_ROOTS", &file_roots(&[tmp.path()]))]);
    d.wait_ready();
    d.assert_detects();
    warm_up_streams(&d);
    let (threads0, fds0) = threads_and_fds(&d);
    for _ in 0..100 {
        for url in [&short, &long] {
            let r = put(&d, "cam", &json!({"url": url, "queries": ["a cat"]}));
            assert!(r.status == 200 || r.status == 201, "{}", r.json());
        }
    }
    assert_eq!(
        d.request("DELETE", "/v1/streams/cam", None, b"").status,
        204
    );
    let settled = wait::until(Duration::from_secs(30), || {
        let (t, f) = threads_and_fds(&d);
        (t <= threads0 + 2 && f <= fds0 + 2).then_some((t, f))
    });
    assert!(
        settled.is_some(),
        "threads {threads0} → {:?}, fds {fds0}",
        threads_and_fds(&d)
    );
    let m = d.metrics();
    assert_eq!(
        crate::support::metrics::value(&m, "iv_stream_pipelines_abandoned_total", &[]),
        Some(0.0)
    );
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        d.stderr()
    );
}

/// An RTSP "server" that answers one byte a second, then closes each connection after `hold`.
fn trickling_server(hold: Duration) -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", free_port())).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            std::thread::spawn(move || {
                let answer = b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nPublic: OPTIONS, DESCRIBE\r\n\r\n";
                let end = std::time::Instant::now() + hold;
                for b in answer.iter().cycle() {
                    if std::time::Instant::now() >= end || c.write_all(&[*b]).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                let _ = c.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    port
}

/// A trickling RTSP server: the attempt fails within the stall timeout with a reason (before:
/// `starting` with no error for 20 s+); teardowns it holds up are abandoned after
/// `stream_stop_timeout_ms` without holding up the daemon, counted, and reclaimed once the server
/// closes the connections (before: 30 PUT/DELETE cycles leaked threads 7 → 69 for good); SIGTERM
/// does not wait for them.
#[test]
fn a_trickling_rtsp_server_fails_the_attempt_in_time() {
    let port = trickling_server(Duration::from_secs(20));
    let mut d = Daemon::start(&[
        ("IV_STREAM_STALL_TIMEOUT_MS", "2000"),
        ("IV_STREAM_RECONNECT_MAX_MS", "60000"),
        ("IV_STREAM_STOP_TIMEOUT_MS", "1000"),
    ]);
    d.wait_ready();
    d.assert_detects();
    warm_up_streams(&d);
    let (threads0, fds0) = threads_and_fds(&d);
    let url = format!("rtsp://127.0.0.1:{port}/cam");
    let body = json!({"url": url, "queries": ["a cat"]});
    assert_eq!(put(&d, "slow", &body).status, 201);
    let s = wait_status(&d, "slow", Duration::from_secs(10), |s| {
        s["last_error"].is_string()
    });
    assert_eq!(s["state"], "reconnecting", "{s}");
    for _ in 0..10 {
        assert_eq!(
            d.request("DELETE", "/v1/streams/slow", None, b"").status,
            204
        );
        assert_eq!(put(&d, "slow", &body).status, 201);
    }
    assert_eq!(
        d.request("DELETE", "/v1/streams/slow", None, b"").status,
        204
    );
    assert_eq!(d.health().status, 200);
    d.assert_detects();
    let stopping = |d: &Daemon| {
        crate::support::metrics::value(&d.metrics(), "iv_stream_pipelines_stopping", &[])
    };
    let held = stopping(&d).unwrap_or(-1.0);
    assert!((1.0..=11.0).contains(&held), "pipelines stopping: {held}");
    // The server closes each connection 20 s after it came: then everything is reclaimed.
    let settled = wait::until(Duration::from_secs(40), || {
        let (t, f) = threads_and_fds(&d);
        (t <= threads0 + 2 && f <= fds0 + 2 && stopping(&d) == Some(0.0)).then_some(t)
    });
    assert!(
        settled.is_some(),
        "threads {threads0}, fds {fds0} → {:?}, stopping {:?}",
        threads_and_fds(&d),
        stopping(&d)
    );
    // A stuck teardown does not hold up SIGTERM.
    assert_eq!(put(&d, "slow", &body).status, 201);
    wait_status(&d, "slow", Duration::from_secs(10), |s| {
        s["last_error"].is_string()
    });
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        d.wait_exit(Duration::from_secs(8)),
        Some(0),
        "{}",
        d.stderr()
    );
}

/// `config check` shows stream URLs without passwords, in the user information or the query.
#[test]
fn config_check_hides_stream_secrets() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        "[[streams]]\nname = \"cam\"\nurl = \"http://admin:hunter2@cam.local/snap.cgi?user=admin&pwd=s3cr3t\"\nqueries = [\"a dog\"]\n",
    )
    .expect("config");
    let out = bin::command()
        .args([
            "config",
            "check",
            "--config",
            config.to_str().expect("utf8"),
        ])
        .env("IV_MODEL", fixtures::model_dir("tiny-a"))
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("http://admin:***@cam.local/snap.cgi?user=admin&pwd=***"),
        "{text}"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("s3cr3t"),
        "{text}"
    );
}

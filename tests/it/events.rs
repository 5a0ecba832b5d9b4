//! Events end to end (issue 23): a file stream of the `moving` clip (`bench/track_clips.py`: a
//! red square crossing the frame left to right, a blue disc moving down) on the `tiny-track`
//! model, with a line and a zone. The journal's events (`GET /v1/events`) are checked against
//! what the stream's own frame events imply, computed here independently: a crossing where a
//! track's anchor (bottom-centre) changes side of the line within its segment, a zone entry on
//! the third consecutive frame inside, one `new` and one `end` per track. Then the filters, the
//! refusal of bad rules, and the journal after a restart.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::streams::{file_roots, put, wait_status, Follower};
use crate::support::daemon::Daemon;
use crate::support::fixtures;

const W: f64 = 320.0;
const H: f64 = 240.0;
/// The line: x = 160 px from y = 120 up to y = 0 (p0 → p1): left of it is its negative side, so
/// left to right is `in`.
const LINE_X: f64 = 160.0;
const LINE_Y_BOTTOM: f64 = 120.0;
/// The zone: x >= 192 px (0.6 of the width), the full height; red squares only.
const ZONE_X: f64 = 192.0;
const INERTIA: usize = 3;

pub(crate) fn stream_body(clip: &Path) -> Value {
    json!({
        "url": clip.to_str().expect("utf8"),
        "queries": ["a red square", "a blue disc"],
        "threshold": 0.3,
        "lines": {"gate": {"points": [[0.5, LINE_Y_BOTTOM / H], [0.5, 0.0]]}},
        "zones": {"right": {
            "polygon": [[ZONE_X / W, 0.0], [1.0, 0.0], [1.0, 1.0], [ZONE_X / W, 1.0]],
            "labels": ["a red square"],
            "inertia": INERTIA
        }}
    })
}

/// The `moving` clip, made by `bench/track_clips.py` in `dir`.
pub(crate) fn clip(dir: &Path) -> std::path::PathBuf {
    let out = std::process::Command::new("python3")
        .args(["bench/track_clips.py", "--kind", "moving", "--out"])
        .arg(dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("python3 runs (apt install python3 python3-numpy ffmpeg)");
    assert!(
        out.status.success(),
        "track_clips.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("moving.mkv")
}

/// NDJSON lines of `target` until the first keep-alive (the follower has caught up).
pub(crate) fn caught_up(d: &Daemon, target: &str) -> Vec<Value> {
    let mut f = Follower::open(d, target);
    let mut out = Vec::new();
    while let Some(c) = f.chunk() {
        for l in c.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(l).expect("an NDJSON line");
            if v.get("keepalive").is_some() {
                return out;
            }
            out.push(v);
        }
    }
    panic!("the events body ended before a keep-alive: {out:?}");
}

/// One reported detection of a frame event: (frame's pts, track id, label, anchor).
type Seen = (u64, u64, String, (f64, f64));

fn frame_tracks(frames: &[Value]) -> Vec<Seen> {
    let mut out = Vec::new();
    for f in frames {
        for d in f["detections"].as_array().expect("detections") {
            let b: Vec<f64> = d["box"]
                .as_array()
                .expect("box")
                .iter()
                .map(|v| v.as_f64().expect("number"))
                .collect();
            out.push((
                f["pts_ms"].as_u64().expect("pts"),
                d["track_id"].as_u64().expect("track id"),
                d["label"].as_str().expect("label").to_string(),
                ((b[0] + b[2]) / 2.0, b[3]),
            ));
        }
    }
    out
}

/// The crossings the tracks imply: (pts, track, direction).
fn expected_crossings(seen: &[Seen]) -> Vec<(u64, u64, &'static str)> {
    let mut out = Vec::new();
    let mut last: std::collections::BTreeMap<u64, ((f64, f64), f64)> = Default::default();
    for (pts, id, _, a) in seen {
        let side = a.0 - LINE_X; // negative left of the line
        if let Some((prev, prev_side)) = last.get(id).copied() {
            if side != 0.0 && prev_side != 0.0 && side.signum() != prev_side.signum() {
                let t = (LINE_X - prev.0) / (a.0 - prev.0);
                let y = prev.1 + t * (a.1 - prev.1);
                if (0.0..=LINE_Y_BOTTOM).contains(&y) {
                    out.push((*pts, *id, if prev_side < 0.0 { "in" } else { "out" }));
                }
            }
        }
        let kept = if side == 0.0 {
            last.get(id).map_or(0.0, |x| x.1)
        } else {
            side
        };
        last.insert(*id, (*a, kept));
    }
    out
}

/// The zone entries the tracks imply: (pts, track).
fn expected_entries(seen: &[Seen]) -> Vec<(u64, u64)> {
    let mut run: std::collections::BTreeMap<u64, (bool, usize)> = Default::default();
    let mut out = Vec::new();
    for (pts, id, label, a) in seen {
        if label != "a red square" {
            continue;
        }
        let (inside, streak) = run.entry(*id).or_insert((false, 0));
        let now = a.0 >= ZONE_X;
        *streak = if now != *inside { *streak + 1 } else { 0 };
        if *streak >= INERTIA {
            *inside = now;
            *streak = 0;
            if now {
                out.push((*pts, *id));
            }
        }
    }
    out
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

#[test]
fn a_clip_with_a_line_and_a_zone_gives_the_events_its_tracks_imply() {
    let tmp = tempfile::tempdir().expect("tmp");
    let clips = tmp.path().join("clips");
    let video = clip(&clips);
    let state = tmp.path().join("state");
    let state_s = state.to_str().expect("utf8").to_string();
    let roots = file_roots(&[&clips]);
    let env = [
        ("IV_STREAM_FILE_ROOTS", roots.as_str()),
        ("IV_STATE_DIR", state_s.as_str()),
        ("IV_STREAM_KEEPALIVE_MS", "500"),
        ("IV_EVENTS_UPDATE_INTERVAL_S", "0"),
    ];
    let model = fixtures::model_dir("tiny-track");
    let mut d = Daemon::launch(model.to_str().expect("utf8"), &[], &env);
    d.wait_ready();
    let bad = put(
        &d,
        "bad",
        &json!({"url": video.to_str().expect("utf8"), "queries": ["a red square"],
                "zones": {"z": {"polygon": [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.5]]}}}),
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.kind(), "invalid_rule");
    assert!(String::from_utf8_lossy(&bad.body).contains("zone \\\"z\\\": polygon crosses itself"));

    let r = put(&d, "moving", &stream_body(&video));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let s = wait_status(&d, "moving", Duration::from_secs(120), |s| {
        s["state"] == "finished" || s["state"] == "failed"
    });
    assert_eq!(s["state"], "finished", "{s}");
    let mut f = Follower::open(&d, "/v1/streams/moving/events?since=0");
    let mut frames = Vec::new();
    while let Some(c) = f.chunk() {
        for l in c.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(l).expect("json");
            if v.get("frame").is_some() {
                frames.push(v);
            }
        }
    }
    assert_eq!(frames.len(), 40);
    let seen = frame_tracks(&frames);
    let events = caught_up(&d, "/v1/events?since=0");
    check_events(&events, &seen);

    // The best snapshot of a track, from any of its events; none for an unknown id.
    let end = of_type(&events, "end")[0];
    let new = of_type(&events, "new")
        .into_iter()
        .find(|e| e["track_id"] == end["track_id"])
        .expect("its new event");
    for e in [end, new] {
        let r = d.request(
            "GET",
            &format!("/v1/events/{}/snapshot.jpg", e["id"].as_str().expect("id")),
            None,
            b"",
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("content-type"), Some("image/jpeg"));
        let img = image::load_from_memory(&r.body).expect("a JPEG");
        assert_eq!((img.width(), img.height()), (320, 240));
    }
    assert_eq!(end["snapshot"], new["snapshot"]);
    let r = d.request("GET", "/v1/events/moving-999999/snapshot.jpg", None, b"");
    assert_eq!((r.status, r.kind()), (404, "not_found".to_string()));

    // Filters.
    let crossings = caught_up(&d, "/v1/events?since=0&stream=moving&type=line_cross");
    assert_eq!(crossings.len(), of_type(&events, "line_cross").len());
    assert!(caught_up(&d, "/v1/events?since=0&stream=other").is_empty());
    let r = d.request("GET", "/v1/events?type=enter", None, b"");
    assert_eq!((r.status, r.kind()), (400, "invalid_parameter".to_string()));

    // The journal outlives the daemon (and the stream).
    let r = d.request("DELETE", "/v1/streams/moving", None, b"");
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0));
    let mut d = Daemon::launch(model.to_str().expect("utf8"), &[], &env);
    d.wait_ready();
    let again = caught_up(&d, "/v1/events?since=0");
    assert_eq!(again, events);
    let tail = caught_up(&d, &format!("/v1/events?since={}", events.len() - 2));
    assert_eq!(tail[..], events[events.len() - 2..]);
}

/// The journal's events against what the frame events imply.
fn check_events(events: &[Value], seen: &[Seen]) {
    // Numbered 1, 2, 3… with unique ids, every one this stream's.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1, "{e}");
        assert_eq!(e["stream"], "moving");
        assert!(e["time"].as_f64().is_some_and(|t| t > 1.7e9), "{e}");
    }
    let ids: std::collections::BTreeSet<_> = events.iter().map(|e| e["id"].to_string()).collect();
    assert_eq!(ids.len(), events.len());
    // One `new` and one `end` per track of the frame events.
    let tracks: std::collections::BTreeSet<u64> = seen.iter().map(|s| s.1).collect();
    let ids_of = |t: &str| -> Vec<u64> {
        let mut v: Vec<u64> = of_type(events, t)
            .iter()
            .map(|e| e["track_id"].as_u64().expect("track"))
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(ids_of("new"), tracks.iter().copied().collect::<Vec<_>>());
    assert_eq!(ids_of("end"), tracks.iter().copied().collect::<Vec<_>>());
    let crossings: Vec<(u64, u64, &str)> = of_type(events, "line_cross")
        .iter()
        .map(|e| {
            assert_eq!(e["line"], "gate");
            (
                e["pts_ms"].as_u64().expect("pts"),
                e["track_id"].as_u64().expect("track"),
                e["direction"].as_str().expect("direction"),
            )
        })
        .collect();
    let expected = expected_crossings(seen);
    assert!(
        expected.iter().any(|c| c.2 == "in"),
        "the square crosses the line left to right: {seen:?}"
    );
    assert_eq!(crossings, expected);
    let last = of_type(events, "line_cross").last().copied().cloned();
    let ins = expected.iter().filter(|c| c.2 == "in").count() as u64;
    assert_eq!(last.map(|e| e["counts"]["in"].clone()), Some(json!(ins)));
    let entries: Vec<(u64, u64)> = of_type(events, "zone_enter")
        .iter()
        .map(|e| {
            assert_eq!(e["zone"], "right");
            assert_eq!(e["label"], "a red square");
            (
                e["pts_ms"].as_u64().expect("pts"),
                e["track_id"].as_u64().expect("track"),
            )
        })
        .collect();
    let expected = expected_entries(seen);
    // The square (the first red track) enters; so may a brief false detection of the tiny
    // model, which the rules count like any track.
    let square = seen.iter().find(|s| s.2 == "a red square").map(|s| s.1);
    assert!(
        expected.iter().any(|e| Some(e.1) == square),
        "the square enters the zone: {seen:?}"
    );
    assert_eq!(entries, expected);
    // Tracks still in the zone when the clip ends leave it as they end, and the zone is empty.
    let exits = of_type(events, "zone_exit");
    assert_eq!(exits.len(), entries.len());
    assert_eq!(exits.last().map(|e| e["occupancy"].clone()), Some(json!(0)));
    for exit in exits {
        let end = of_type(events, "end")
            .into_iter()
            .find(|e| e["track_id"] == exit["track_id"])
            .expect("the track's end");
        assert_eq!(end["entered_zones"], json!(["right"]));
        assert!(end["seq"].as_u64() > exit["seq"].as_u64());
        assert!(end["current_zones"].as_array().is_some_and(Vec::is_empty));
    }
}

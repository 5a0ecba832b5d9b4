//! The web console in a real browser (Debian's headless Chromium, driven over the DevTools
//! protocol by `support::browser`), through `intelligent-video ui`'s proxy, as a person would use
//! it: add a file stream through the form, see its live view with boxes, draw a zone and a line
//! with the mouse, see the events they cause in the stream's list and the timeline, run a query in
//! "Try it" and count the boxes drawn, read the System page; a stream whose query is HTML is shown
//! as text everywhere. Screenshots of each page go to `target/ui-screenshots/`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use crate::events::clip;
use crate::streams::{file_roots, put};
use crate::support::browser::{Browser, Page};
use crate::support::daemon::{tcp_request, Daemon};
use crate::support::fixtures;
use crate::ui::Proxy;

/// Where the screenshots go (the README shows some of them).
fn shots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots")
}

/// Errors the page logged, less failed image loads (a live track's snapshot is 404 until the
/// track ends, which the page shows as "no snapshot yet").
fn page_errors(p: &Page<'_>) -> Vec<String> {
    p.console_errors()
        .into_iter()
        .filter(|e| !e.contains("Failed to load resource"))
        .collect()
}

/// The daemon's answer to `GET path` on its socket.
fn get(d: &Daemon, path: &str) -> Value {
    let r = d.request("GET", path, None, b"");
    assert_eq!(r.status, 200, "{path}");
    r.json()
}

fn daemon(clips: &Path) -> Daemon {
    let roots = file_roots(&[clips]);
    let env = [
        ("IV_STREAM_FILE_ROOTS", roots.as_str()),
        ("IV_STREAM_KEEPALIVE_MS", "500"),
        ("IV_EVENTS_UPDATE_INTERVAL_S", "0"),
    ];
    let model = fixtures::model_dir("tiny-track");
    let mut d = Daemon::launch(model.to_str().expect("utf8"), &[], &env);
    d.wait_ready();
    d
}

/// Clicks at fractions `(fx, fy)` of the element `selector`.
fn click_in(p: &Page<'_>, selector: &str, fx: f64, fy: f64) {
    let (x, y, w, h) = p.box_of(selector);
    p.mouse_click_at(x + fx * w, y + fy * h);
}

/// Pixels of the page's `#live` picture that differ much from stream `name`'s raw frame (the
/// boxes and captions drawn; both are fetched after each other, so a live camera may move on
/// between them, which only adds differences).
fn drawn_pixels(p: &Page<'_>, name: &str) -> u64 {
    let js = format!(
        "(async () => {{
            const raw = new Image();
            raw.src = '/v1/streams/{name}/snapshot.jpg?raw=1';
            await raw.decode();
            const px = (img) => {{ const c = document.createElement('canvas'); c.width = 320; c.height = 240;
                const x = c.getContext('2d'); x.drawImage(img, 0, 0); return x.getImageData(0, 0, 320, 240).data; }};
            const a = px(document.querySelector('#live')), b = px(raw);
            let n = 0;
            for (let i = 0; i < a.length; i += 4)
                if (Math.max(Math.abs(a[i] - b[i]), Math.abs(a[i + 1] - b[i + 1]), Math.abs(a[i + 2] - b[i + 2])) > 80) n++;
            return n;
        }})()"
    );
    p.eval(&js).as_u64().expect("a count")
}

/// `tests/it/support/mjpeg_server.py` serving the frames of `clip` in a loop (killed on drop).
struct Camera {
    child: std::process::Child,
    port: u16,
}

impl Camera {
    fn start(clip: &Path, dir: &Path) -> Camera {
        let frames = dir.join("camera");
        std::fs::create_dir_all(&frames).expect("mkdir");
        crate::streams::ffmpeg(&[
            "-i",
            clip.to_str().expect("utf8"),
            frames.join("f_%03d.jpg").to_str().expect("utf8"),
        ]);
        let mut jpegs: Vec<PathBuf> = std::fs::read_dir(&frames)
            .expect("frames")
            .map(|e| e.expect("entry").path())
            .collect();
        jpegs.sort();
        let port = crate::support::daemon::free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/mjpeg_server.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .args(&jpegs)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the MJPEG camera starts");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("its ready line");
        assert_eq!(line.trim(), "ready");
        Camera { child, port }
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 0.01
}

#[test]
fn a_person_adds_a_stream_draws_a_zone_and_a_line_and_sees_the_events() {
    let tmp = tempfile::tempdir().expect("tmp");
    let clips = tmp.path().join("clips");
    let video = clip(&clips);
    let d = daemon(&clips);
    // The console is on the socket only: the loopback health port does not serve it.
    let r = tcp_request(d.port, "GET", "/").expect("health port answers");
    assert_eq!((r.status, r.kind().as_str()), (404, "not_found"));
    let proxy = Proxy::start(&d);
    let browser = Browser::launch();
    let p = browser.new_page();
    p.goto(&proxy.url());
    p.wait_for(
        "location.pathname === '/' && !document.querySelector('#no-streams').hidden",
        "the empty stream list",
    );
    // Without the proxy's cookie nothing is served.
    let refused = p.eval("fetch('/v1/streams', {credentials: 'omit'}).then(r => r.status)");
    assert_eq!(refused, json!(403));

    // Add the stream through the form.
    p.click("#add-stream");
    p.wait_for("document.querySelector('#stream-form')", "the form");
    p.type_into("#f-name", "cam");
    p.type_into("#f-url", video.to_str().expect("utf8"));
    p.type_into("#f-queries", "a red square\na blue disc");
    p.type_into("#f-threshold", "0.3");
    p.click("#f-save");
    p.wait_for(
        "document.querySelector('[data-stream=\"cam\"]')",
        "the new stream's card",
    );
    let s = get(&d, "/v1/streams/cam");
    assert_eq!(s["queries"], json!(["a red square", "a blue disc"]));
    assert_eq!(s["threshold"], json!(0.3));
    p.wait_for(
        "(() => { const i = document.querySelector('[data-stream=\"cam\"] img'); return i && i.complete && i.naturalWidth > 0; })()",
        "the card's picture",
    );
    p.screenshot(&shots().join("streams.png"));

    // Edit it: the form sends what changed (a PATCH without the URL), the URL stays.
    p.click("[data-stream=\"cam\"] button.edit");
    p.wait_for("document.querySelector('#stream-form')", "the edit form");
    p.type_into("#f-threshold", "0.31");
    p.click("#f-save");
    p.wait_for(
        "!document.querySelector('#stream-form')",
        "the form closed after saving",
    );
    let s = get(&d, "/v1/streams/cam");
    assert_eq!(s["threshold"], json!(0.31));
    assert_eq!(s["url"], json!(video.to_str().expect("utf8")));
    assert_eq!(s["queries"], json!(["a red square", "a blue disc"]));

    // The stream's page: the file has ended, so its view is its last frame with the boxes drawn
    // (it differs from the raw frame where the boxes and captions are).
    p.click("[data-stream=\"cam\"] h2 a");
    p.wait_for(
        "document.querySelector('#live').naturalWidth > 0",
        "the last frame",
    );
    let size = p.eval("[document.querySelector('#live').naturalWidth, document.querySelector('#live').naturalHeight]");
    assert_eq!(size, json!([320, 240]));
    let changed = drawn_pixels(&p, "cam");
    assert!(
        changed > 150,
        "boxes drawn on the view: {changed} pixels differ from the raw frame"
    );

    // A camera that goes on (MJPEG over HTTP, the clip's frames in a loop): its page is live.
    let camera = Camera::start(&video, tmp.path());
    let r = put(
        &d,
        "door",
        &json!({"url": format!("http://127.0.0.1:{}/video", camera.port),
                "queries": ["a red square", "a blue disc"], "threshold": 0.3}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    p.eval("location.hash = '#/stream/door'");
    let started = Instant::now();
    p.wait_for(
        "(() => { const i = document.querySelector('#live'); return i && i.src.includes('live.mjpeg') && i.naturalWidth > 0; })()",
        "a live frame",
    );
    let first_frame = started.elapsed();
    eprintln!("console: first live frame {first_frame:?} after opening the camera's page");
    let changed = drawn_pixels(&p, "door");
    assert!(changed > 150, "boxes drawn on the live view: {changed}");
    p.screenshot(&shots().join("stream-live.png"));
    let r = d.request("DELETE", "/v1/streams/door", None, b"");
    assert_eq!(r.status, 204);
    drop(camera);
    p.eval("location.hash = '#/stream/cam'");
    p.wait_for(
        "document.querySelector('#live') && document.querySelector('#live').naturalWidth > 0",
        "the file stream's page again",
    );

    // Draw the zone: four corners clicked, then the first again to close it.
    p.click("#draw-zone");
    for (fx, fy) in [
        (0.6, 0.02),
        (0.98, 0.02),
        (0.98, 0.98),
        (0.6, 0.98),
        (0.6, 0.02),
    ] {
        click_in(&p, "#draw", fx, fy);
    }
    p.wait_for(
        "!document.querySelector('#rule-form').hidden",
        "the zone's name form",
    );
    p.type_into("#rule-name", "right");
    p.type_into("#rule-labels", "a red square");
    p.click("#rule-save");
    p.wait_for(
        "document.querySelector('[data-rule=\"zone:right\"]')",
        "the saved zone",
    );
    // Draw the line: a drag from p0 (the middle) up to p1 (the top).
    p.click("#draw-line");
    let (x, y, w, h) = p.box_of("#draw");
    let path: Vec<(f64, f64)> = (0..=8)
        .map(|i| (x + 0.5 * w, y + (0.5 - 0.06 * f64::from(i)) * h))
        .collect();
    p.mouse_path(&path);
    p.wait_for(
        "!document.querySelector('#rule-form').hidden",
        "the line's name form",
    );
    p.type_into("#rule-name", "gate");
    p.click("#rule-save");
    p.wait_for(
        "document.querySelector('[data-rule=\"line:gate\"]')",
        "the saved line",
    );

    let s = get(&d, "/v1/streams/cam");
    let zone = &s["zones"]["right"];
    assert_eq!(zone["labels"], json!(["a red square"]));
    let corners: Vec<(f64, f64)> = zone["polygon"]
        .as_array()
        .expect("a polygon")
        .iter()
        .map(|p| (p[0].as_f64().expect("x"), p[1].as_f64().expect("y")))
        .collect();
    let want = [(0.6, 0.02), (0.98, 0.02), (0.98, 0.98), (0.6, 0.98)];
    assert_eq!(corners.len(), 4, "{zone}");
    for (c, w) in corners.iter().zip(want) {
        assert!(
            close(c.0, w.0) && close(c.1, w.1),
            "{corners:?} vs {want:?}"
        );
    }
    let pts = &s["lines"]["gate"]["points"];
    let f = |v: &Value| v.as_f64().expect("a number");
    assert!(
        close(f(&pts[0][0]), 0.5) && close(f(&pts[0][1]), 0.5),
        "{pts}"
    );
    assert!(
        close(f(&pts[1][0]), 0.5) && close(f(&pts[1][1]), 0.02),
        "{pts}"
    );

    // Saving the rules ran the file again: the red square enters the zone and crosses the line,
    // and the page's own list and counts show it as it happens.
    p.wait_for(
        "document.querySelector('#stream-events li[data-type=\"zone_enter\"]')",
        "a zone_enter event in the stream's list",
    );
    p.wait_for(
        "document.querySelector('#stream-events li[data-type=\"line_cross\"]')",
        "a line_cross event in the stream's list",
    );
    p.wait_for(
        "document.querySelector('#counts').innerText.includes('gate')",
        "the line's count",
    );
    p.eval("window.scrollTo(0, 0)");
    p.screenshot(&shots().join("stream.png"));

    // The timeline, live and filtered.
    p.click("nav a[data-page=\"events\"]");
    p.wait_for(
        "document.querySelector('#event-list li[data-type=\"line_cross\"]')",
        "the timeline's line crossing",
    );
    p.eval("document.querySelector('#ev-type').value = 'zone_enter'");
    p.click("#ev-filters button[type=submit]");
    let types = p.wait_for(
        "(() => { const t = [...document.querySelectorAll('#event-list li')].map(l => l.dataset.type); return t.length ? t : null; })()",
        "the filtered timeline",
    );
    let types = types.as_array().expect("types");
    assert!(types.iter().all(|t| t == "zone_enter"), "{types:?}");
    let journal = get(&d, "/v1/events/history?type=zone_enter&limit=500");
    assert_eq!(
        types.len(),
        journal["events"].as_array().expect("events").len()
    );
    p.screenshot(&shots().join("events.png"));
    assert_eq!(page_errors(&p), Vec::<String>::new());
}

#[test]
fn try_it_draws_the_boxes_of_a_query_and_refilters_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = daemon(tmp.path());
    let proxy = Proxy::start(&d);
    let browser = Browser::launch();
    let p = browser.new_page();
    p.goto(&proxy.url());
    p.click("nav a[data-page=\"try\"]");
    p.wait_for("document.querySelector('#try-file')", "the Try it page");
    let image = fixtures::image_path("photo.jpg");
    p.set_files("#try-file", &[image.as_path()]);
    p.wait_for(
        "!document.querySelector('#try-run').disabled",
        "the image taken",
    );
    p.type_into("#try-queries", "a photo of a cat\na remote control");
    p.eval(
        "{ const s = document.querySelector('#try-threshold'); s.value = '0.05'; s.dispatchEvent(new Event('input')); }",
    );
    p.click("#try-run");
    let shown = p.wait_for(
        "document.querySelector('#try-count').dataset.count",
        "the boxes drawn",
    );
    // The same image and queries through the API: the page shows what the daemon answers.
    let png = fixtures::image("photo.jpg");
    let target = crate::support::daemon::detect_target(
        &["a photo of a cat", "a remote control"],
        "&threshold=0.05",
    );
    let api = d.request("POST", &target, Some("image/jpeg"), &png).json();
    let all: Vec<f64> = api["detections"]
        .as_array()
        .expect("detections")
        .iter()
        .map(|x| x["score"].as_f64().expect("score"))
        .collect();
    assert_eq!(shown, json!(all.len().to_string()));
    let rows = p.eval("document.querySelectorAll('#try-results tr').length - 1");
    assert_eq!(rows, json!(all.len()));
    // The slider re-filters the same answer without a new request.
    p.eval(
        "{ const s = document.querySelector('#try-threshold'); s.value = '0.5'; s.dispatchEvent(new Event('input')); }",
    );
    let above = all.iter().filter(|s| **s >= 0.5).count();
    let shown = p.eval("document.querySelector('#try-count').dataset.count");
    assert_eq!(shown, json!(above.to_string()));
    assert!(
        all.len() > above,
        "the check needs boxes under 0.5 too: {all:?}"
    );
    p.eval(
        "{ const s = document.querySelector('#try-threshold'); s.value = '0.05'; s.dispatchEvent(new Event('input')); }",
    );
    p.screenshot(&shots().join("try.png"));

    // An example dragged on another image: its box is in that image's pixels, and the next run
    // answers what /v1/detect answers with the same example.
    p.set_files("#try-example-file", &[image.as_path()]);
    p.wait_for(
        "(() => { const s = document.querySelector('#try-example-stage'); const i = s.querySelector('img'); return !s.hidden && i.complete && i.naturalWidth > 0 && s.getBoundingClientRect().height > 0; })()",
        "the example image",
    );
    let (x, y, w, h) = p.box_of("#try-example-stage-canvas");
    let path: Vec<(f64, f64)> = (0..=6)
        .map(|i| {
            let t = f64::from(i) / 6.0;
            (x + (0.25 + 0.5 * t) * w, y + (0.2 + 0.6 * t) * h)
        })
        .collect();
    p.mouse_path(&path);
    p.wait_for(
        "!document.querySelector('#try-example-add').disabled",
        "a box to add",
    );
    p.type_into("#try-example-label", "this");
    p.click("#try-example-add");
    let item = p.wait_for(
        "(() => { const l = document.querySelector('#try-examples li'); return l ? l.textContent : null; })()",
        "the example listed",
    );
    let item = item.as_str().expect("text").to_string();
    let inside = item
        .split_once('[')
        .and_then(|(_, r)| r.split_once(']'))
        .map(|(b, _)| b.to_string())
        .expect("a box in the item");
    let bx: Vec<f64> = inside
        .split(", ")
        .map(|v| v.parse().expect("a number"))
        .collect();
    // photo.jpg is 160 x 100: the drag went from (25%, 20%) to (75%, 80%) of it.
    let want = [40.0, 20.0, 120.0, 80.0];
    for (got, want) in bx.iter().zip(want) {
        assert!((got - want).abs() <= 2.0, "{item}: {bx:?} vs {want:?}");
    }
    p.click("#try-run");
    p.wait_for(
        "document.querySelector('#try-results').innerText.includes('this')",
        "the example's boxes",
    );
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &png);
    let body = json!({"image_base64": b64, "queries": ["a photo of a cat", "a remote control"],
                      "query_images": [{"image_base64": b64, "box": bx, "label": "this"}],
                      "threshold": 0.05});
    let api = d
        .request(
            "POST",
            "/v1/detect",
            Some("application/json"),
            body.to_string().as_bytes(),
        )
        .json();
    let want = api["detections"].as_array().expect("detections").len();
    let shown = p.eval("document.querySelector('#try-count').dataset.count");
    assert_eq!(shown, json!(want.to_string()), "{api}");

    // Saved as a query set.
    p.type_into("#try-set-name", "cats");
    p.click("#try-save");
    let set = p.wait_for(
        "fetch('/v1/query-sets').then(r => r.json()).then(j => j.query_sets.find(s => s.name === 'cats') || null)",
        "the saved query set",
    );
    assert_eq!(
        set["queries"],
        json!(["a photo of a cat", "a remote control"])
    );

    // System: the backend serving and why the faster tiers do not.
    p.click("nav a[data-page=\"system\"]");
    let text = p.wait_for(
        "(() => { const t = document.querySelector('#sys-backend').innerText; return t.includes('serving') ? t : null; })()",
        "the backend panel",
    );
    let backend = get(&d, "/api/optimization")["optimization"]["backend"]
        .as_str()
        .expect("a backend")
        .to_string();
    assert!(text.as_str().expect("text").contains(&backend), "{text}");
    p.wait_for(
        "document.querySelector('#chart-p50 span').textContent.includes('ms')",
        "the latency chart",
    );
    // Doctor's checks, as `intelligent-video doctor --json` gives them for this daemon.
    let checks = p.wait_for(
        "(() => { const r = [...document.querySelectorAll('#sys-checks tr')].map(t => [t.dataset.check, t.dataset.status]); return r.length ? r : null; })()",
        "doctor's checks",
    );
    let api = get(&d, "/api/doctor");
    let want: Vec<Value> = api["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| json!([c["name"], c["status"]]))
        .collect();
    assert_eq!(checks, Value::Array(want));
    let model = api["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "model")
        .expect("a model check")
        .clone();
    assert_eq!(
        model["status"], "ok",
        "doctor saw the daemon's model: {model}"
    );
    let r = tcp_request(d.port, "GET", "/api/doctor").expect("health port answers");
    assert_eq!(r.status, 404, "doctor is not on the health port");
    p.screenshot(&shots().join("system.png"));
    // A phone, in the dark.
    p.set_viewport(390, 844, true);
    p.emulate_dark(true);
    p.click("nav a[data-page=\"streams\"]");
    p.wait_for("document.querySelector('#no-streams')", "the stream list");
    p.screenshot(&shots().join("streams-phone-dark.png"));
    let bg = p.eval("getComputedStyle(document.body).backgroundColor");
    assert_eq!(bg, json!("rgb(13, 17, 23)"), "the dark palette");
    assert_eq!(page_errors(&p), Vec::<String>::new());
}

#[test]
fn names_labels_and_errors_are_shown_as_text_never_as_html() {
    let tmp = tempfile::tempdir().expect("tmp");
    let clips = tmp.path().join("clips");
    let video = clip(&clips);
    let d = daemon(&clips);
    let hostile = "<img src=x onerror=\"window.__pwned=1\">";
    let r = put(
        &d,
        "evil",
        &json!({"url": video.to_str().expect("utf8"), "queries": [hostile, "a blue disc"],
                "threshold": 0.3,
                "zones": {"z": {"polygon": [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]}}}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let proxy = Proxy::start(&d);
    let browser = Browser::launch();
    let p = browser.new_page();
    p.goto(&proxy.url());
    let pages = [
        (
            "streams",
            "document.querySelector('[data-stream=\"evil\"] dl')",
        ),
        ("stream/evil", "document.querySelector('#stream-events li')"),
        ("events", "document.querySelector('#event-list li')"),
    ];
    for (page, ready) in pages {
        p.eval(&format!("location.hash = '#/{page}'"));
        p.wait_for(ready, page);
        if page != "events" {
            // The stream's queries are listed on its card and its page.
            p.wait_for(
                &format!("document.body.innerText.includes({})", json!(hostile)),
                "the query shown as text",
            );
        }
        let injected = p.eval(
            "[window.__pwned === undefined, document.querySelectorAll('img[src=\"x\"]').length]",
        );
        assert_eq!(injected, json!([true, 0]), "{page}");
    }
}

/// The two API additions the console stands on, checked without a browser: history pages walk
/// back through exactly the journal (filters included), and `PATCH` changes some fields of a
/// stream, keeping the rest (its URL's credentials too), refusing what a `PUT` would.
#[test]
fn history_pages_walk_the_journal_and_patch_keeps_what_it_does_not_name() {
    let tmp = tempfile::tempdir().expect("tmp");
    let clips = tmp.path().join("clips");
    let video = clip(&clips);
    let d = daemon(&clips);
    let mut body = crate::events::stream_body(&video);
    body["url"] = json!(video.to_str().expect("utf8"));
    assert_eq!(put(&d, "cam", &body).status, 201);
    crate::streams::wait_status(&d, "cam", std::time::Duration::from_secs(60), |s| {
        s["state"] == "finished"
    });
    let all = crate::events::caught_up(&d, "/v1/events?since=0");
    assert!(all.len() > 8, "{}", all.len());
    let walk = |filter: &str| {
        let mut got = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let b = before.map_or(String::new(), |b| format!("&before={b}"));
            let page = get(&d, &format!("/v1/events/history?limit=3{b}{filter}"));
            let events = page["events"].as_array().expect("events").clone();
            assert!(events.len() <= 3);
            got.extend(events);
            match page["next_before"].as_u64() {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        got.reverse();
        got
    };
    assert_eq!(walk(""), all, "every page, oldest last");
    let red: Vec<Value> = all
        .iter()
        .filter(|e| e["label"] == "a red square")
        .cloned()
        .collect();
    assert!(!red.is_empty() && red.len() < all.len());
    assert_eq!(walk("&label=a+red+square"), red);
    let in_zone: Vec<Value> = all
        .iter()
        .filter(|e| {
            e["zone"] == "right"
                || e["current_zones"]
                    .as_array()
                    .is_some_and(|z| z.contains(&json!("right")))
                || e["entered_zones"]
                    .as_array()
                    .is_some_and(|z| z.contains(&json!("right")))
        })
        .cloned()
        .collect();
    assert!(!in_zone.is_empty());
    assert_eq!(walk("&zone=right"), in_zone);
    let r = d.request("GET", "/v1/events/history?since=1", None, b"");
    assert_eq!((r.status, r.kind().as_str()), (400, "invalid_parameter"));

    // PATCH: only what it names changes.
    let patch = |name: &str, body: Value| {
        d.request(
            "PATCH",
            &format!("/v1/streams/{name}"),
            Some("application/json"),
            body.to_string().as_bytes(),
        )
    };
    let r = patch("cam", json!({"threshold": 0.5, "lines": null}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let s = r.json();
    assert_eq!(s["threshold"], json!(0.5));
    assert_eq!(s["url"], body["url"]);
    assert_eq!(s["queries"], body["queries"]);
    assert!(s.get("lines").is_none(), "{s}");
    assert_eq!(s["zones"]["right"]["labels"], json!(["a red square"]));
    for (name, b, status, kind) in [
        ("nope", json!({"threshold": 0.5}), 404, "not_found"),
        ("cam", json!({"name": "other"}), 400, "invalid_json"),
        ("cam", json!({"colour": 1}), 400, "invalid_json"),
        ("cam", json!({"threshold": 7}), 400, "invalid_parameter"),
        ("cam", json!([1, 2]), 400, "invalid_json"),
    ] {
        let r = patch(name, b.clone());
        assert_eq!((r.status, r.kind().as_str()), (status, kind), "{b}");
    }
    assert_eq!(
        get(&d, "/v1/streams/cam")["threshold"],
        json!(0.5),
        "refusals change nothing"
    );
}

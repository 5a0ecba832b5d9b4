//! The headless-Chromium harness itself, against `data:` pages (no network): evaluation and
//! waits, real clicks and drags, typing and keys, file inputs, dialogs, screenshots, console
//! errors, emulation, and failing fast once Chromium is gone.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::browser::Browser;
use crate::support::wait;

/// A `data:` URL holding `html`.
fn data_url(html: &str) -> String {
    let mut url = String::from("data:text/html;charset=utf-8,");
    for b in html.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

const PAGE: &str = r#"<!doctype html>
<html><head><style>body { margin: 0; font: 16px sans-serif; }
@media (prefers-color-scheme: dark) { body { background: #123; color: #eee; } }</style></head>
<body>
<button id="b" onclick="this.textContent = 'clicked'">press me</button>
<canvas id="c" width="400" height="300" style="display: block; background: #cde"></canvas>
<form id="f"><input id="t" value="old text"></form>
<input id="file" type="file">
<div style="height: 2000px"></div>
<button id="far" onclick="window.farClicked = true">far below</button>
<script>
window.pts = [];
const c = document.getElementById('c');
const g = c.getContext('2d');
for (const ty of ['pointerdown', 'pointermove', 'pointerup']) {
  c.addEventListener(ty, e => {
    pts.push([ty, e.clientX, e.clientY, e.buttons]);
    g.fillStyle = 'hsl(' + (pts.length * 37 % 360) + ', 80%, 50%)';
    g.fillRect(e.offsetX - 6, e.offsetY - 6, 12, 12);
  });
}
window.inputs = 0;
window.changes = 0;
const t = document.getElementById('t');
t.addEventListener('input', () => inputs++);
t.addEventListener('change', () => changes++);
document.getElementById('f').addEventListener('submit', e => {
  e.preventDefault();
  window.submitted = t.value;
});
window.fileChanges = 0;
document.getElementById('file').addEventListener('change', () => fileChanges++);
setTimeout(() => { window.later = 'ready'; }, 300);
</script></body></html>"#;

#[test]
fn the_browser_harness_drives_a_real_page() {
    let started = Instant::now();
    let browser = Browser::launch();
    let page = browser.new_page();
    eprintln!("launch + page: {:?}", started.elapsed());
    page.goto(&data_url(PAGE));
    eprintln!("+ goto: {:?}", started.elapsed());

    // Evaluation: plain values, objects, undefined, awaited promises, and throws.
    assert_eq!(page.eval("1 + 2"), json!(3));
    assert_eq!(
        page.eval("({a: [1, 'x'], b: null})"),
        json!({"a": [1, "x"], "b": null})
    );
    assert_eq!(page.eval("undefined"), json!(null));
    assert_eq!(
        page.eval("new Promise(r => setTimeout(() => r('late'), 50))"),
        json!("late")
    );
    assert_eq!(page.eval("document.readyState"), json!("complete"));
    let thrown = catch_unwind(AssertUnwindSafe(|| page.eval("throw new Error('nope')")))
        .expect_err("a throw panics");
    let thrown = thrown.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(thrown.contains("nope"), "{thrown}");
    assert_eq!(
        page.try_eval("null.x").map_err(|e| e.contains("TypeError")),
        Err(true)
    );

    // wait_for returns the first truthy value.
    assert_eq!(
        page.wait_for("window.later", "the 300 ms timer"),
        json!("ready")
    );

    // A real click.
    page.click("#b");
    assert_eq!(
        page.eval("document.getElementById('b').textContent"),
        json!("clicked")
    );
    // Far below the fold: scrolled into view first.
    page.click("#far");
    assert_eq!(page.eval("window.farClicked === true"), json!(true));
    assert!(page.eval("window.scrollY").as_f64().expect("scrollY") > 500.0);

    // A drag over the canvas: pointer events at the coordinates sent.
    let (x, y, w, h) = page.box_of("#c");
    assert_eq!((w, h), (400.0, 300.0));
    let path = [
        (x + 10.0, y + 10.0),
        (x + 60.0, y + 40.0),
        (x + 150.0, y + 120.0),
        (x + 250.5, y + 180.25),
    ];
    page.mouse_path(&path);
    let pts = page.eval("pts");
    let pts = pts.as_array().expect("pointer events");
    let kind = |p: &serde_json::Value| p[0].as_str().unwrap_or("").to_string();
    let at = |p: &serde_json::Value| {
        (
            p[1].as_f64().expect("clientX"),
            p[2].as_f64().expect("clientY"),
        )
    };
    let near = |(ax, ay): (f64, f64), (bx, by): (f64, f64)| {
        (ax - bx).abs() <= 1.0 && (ay - by).abs() <= 1.0
    };
    let down = pts
        .iter()
        .find(|p| kind(p) == "pointerdown")
        .expect("a pointerdown");
    assert!(near(at(down), path[0]), "{down} vs {:?}", path[0]);
    let up = pts.last().expect("pointer events");
    assert_eq!(kind(up), "pointerup", "{pts:?}");
    assert!(near(at(up), path[3]), "{up} vs {:?}", path[3]);
    let dragged_moves = pts
        .iter()
        .filter(|p| kind(p) == "pointermove" && p[3] == json!(1))
        .count();
    assert!(dragged_moves >= 2, "{pts:?}");

    // Typing replaces the text and notifies listeners; Enter submits the form.
    page.type_into("#t", "hello world");
    assert_eq!(
        page.eval("document.getElementById('t').value"),
        json!("hello world")
    );
    assert!(page.eval("inputs").as_u64().expect("inputs") >= 1);
    assert!(page.eval("changes").as_u64().expect("changes") >= 1);
    page.press_key("Enter");
    assert_eq!(
        page.wait_for("window.submitted", "the form's submit handler"),
        json!("hello world")
    );
    page.type_into("#t", "");
    assert_eq!(page.eval("document.getElementById('t').value"), json!(""));
    page.press_key("Tab");
    page.press_key("Escape");

    // A file input gets a real file.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, "file body ✓\n").expect("write the upload");
    page.set_files("#file", &[file.as_path()]);
    assert_eq!(
        page.eval("document.getElementById('file').files[0].name"),
        json!("notes.txt")
    );
    assert_eq!(
        page.eval("document.getElementById('file').files[0].text()"),
        json!("file body ✓\n")
    );
    assert_eq!(
        page.wait_for("fileChanges", "the file input's change"),
        json!(1)
    );

    // Dialogs are accepted.
    assert_eq!(page.eval("confirm('sure?')"), json!(true));
    assert!(
        browser
            .events()
            .iter()
            .any(|e| e["method"] == "Page.javascriptDialogOpening"
                && e["sessionId"] == page.session()
                && e["params"]["message"] == "sure?"),
        "no dialog event recorded"
    );

    // Console errors: an uncaught throw from a timer and console.error.
    assert!(
        page.console_errors().is_empty(),
        "{:?}",
        page.console_errors()
    );
    page.eval("setTimeout(() => { throw new Error('boom from a timer'); }, 0); 0");
    page.eval("console.error('logged', 42)");
    let errors = wait::until(Duration::from_secs(10), || {
        let e = page.console_errors();
        (e.len() >= 2).then_some(e)
    })
    .expect("two console errors");
    assert!(
        errors.iter().any(|e| e.contains("boom from a timer")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e == "logged 42"), "{errors:?}");

    // Emulation.
    page.set_viewport(800, 600, false);
    assert_eq!(page.eval("[innerWidth, innerHeight]"), json!([800, 600]));
    assert_eq!(
        page.eval("matchMedia('(prefers-color-scheme: dark)').matches"),
        json!(false)
    );
    page.emulate_dark(true);
    assert_eq!(
        page.eval("matchMedia('(prefers-color-scheme: dark)').matches"),
        json!(true)
    );
    page.emulate_dark(false);
    assert_eq!(
        page.eval("matchMedia('(prefers-color-scheme: dark)').matches"),
        json!(false)
    );

    // A screenshot is a PNG file, parent directories created.
    page.eval("scrollTo(0, 0)");
    let shot = dir.path().join("shots").join("selftest.png");
    page.screenshot(&shot);
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 1000, "{} bytes", png.len());

    // A second tab has its own session and its own errors.
    let other = browser.new_page();
    assert_ne!(other.session(), page.session());
    other.goto(&data_url("<p id=p>second</p>"));
    assert_eq!(
        other.eval("document.getElementById('p').textContent"),
        json!("second")
    );
    assert!(other.console_errors().is_empty());
    // An error answer is an Err from call.
    let err = browser
        .call(Some(other.session()), "No.suchMethod", json!({}))
        .expect_err("an unknown method is an error");
    assert!(err.contains("No.suchMethod"), "{err}");
    eprintln!("whole self-test: {:?}", started.elapsed());
}

#[test]
fn calls_fail_fast_once_chromium_is_gone() {
    let browser = Browser::launch();
    let page = browser.new_page();
    assert_eq!(page.eval("6 * 7"), json!(42));

    // A crashed tab fails its own calls at once; the others go on.
    let doomed = browser.new_page();
    doomed.goto(&data_url("<p>about to crash</p>"));
    let started = Instant::now();
    let _ = catch_unwind(AssertUnwindSafe(|| {
        browser.call(Some(doomed.session()), "Page.crash", json!({}))
    }));
    let failed = catch_unwind(AssertUnwindSafe(|| doomed.eval("1"))).expect_err("a crashed tab");
    let msg = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("crashed"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(page.eval("6 * 7"), json!(42));
    drop(doomed);

    // Chromium may answer before its pipe closes, or close it first (then the call panics).
    let _ = catch_unwind(AssertUnwindSafe(|| {
        browser.call(None, "Browser.close", json!({}))
    }));
    assert!(
        wait::until_true(Duration::from_secs(20), || !browser.is_alive()),
        "chromium still running after Browser.close"
    );
    let started = Instant::now();
    let failed = catch_unwind(AssertUnwindSafe(|| page.eval("1"))).expect_err("a dead browser");
    assert!(started.elapsed() < Duration::from_secs(2));
    let msg = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("chromium exited"), "{msg}");
    // Its stderr is still readable for the message (the profile lives until the drop).
    let _ = browser.stderr_tail();
}

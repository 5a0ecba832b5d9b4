//! Headless Chromium for the web-console tests: launches Debian's `chromium` with
//! `--remote-debugging-pipe` (through `sh`, so fds 3 and 4 are set without `unsafe`), owns the
//! process and its throw-away profile, and speaks the Chrome DevTools Protocol over that pipe
//! (NUL-terminated JSON both ways). A reader thread routes answers to their callers, keeps every
//! event in a log (console errors are read from it) and accepts every JavaScript dialog; a writer
//! thread owns the pipe, so no one ever blocks on it. [`Page`] is one tab, attached with
//! `flatten`, with the few actions the tests need: navigate, evaluate, wait, real mouse clicks and
//! drags, typing, keys, file inputs, screenshots, viewport and colour-scheme emulation.
//!
//! Every command has a deadline; when Chromium dies, waiting and later calls panic at once with
//! the tail of its stderr, and when a tab's renderer crashes (or the tab is detached), so do that
//! tab's.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// How long one command, a navigation or a [`Page::wait_for`] may take.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

/// How long Chromium may take to answer its first command (it may start next to a busy build).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause between two tries of [`Page::wait_for`] and of the load wait in [`Page::goto`].
const POLL: Duration = Duration::from_millis(100);

/// Wires Chromium's fd 3 (commands in) to our stdin pipe and fd 4 (answers out) to our stdout
/// pipe, then frees its stdin and stdout.
const PIPE_SHIM: &str = r#"exec "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#;

/// Names looked up on `PATH` when `CHROMIUM` is not set, in this order.
const CANDIDATES: [&str; 3] = ["chromium", "chromium-browser", "google-chrome"];

/// Callers waiting for answers: by command id, the session the command went to and where its
/// answer goes.
type Waiters = HashMap<u64, (Option<String>, Sender<Value>)>;

/// What the reader thread and the callers share.
struct Shared {
    /// Messages for the writer thread (which owns Chromium's command pipe).
    out: Mutex<Sender<Vec<u8>>>,
    /// Callers waiting for the answer to their command id, with the session it went to.
    pending: Mutex<Waiters>,
    /// Sessions whose tab crashed or was detached, with what happened.
    lost: Mutex<HashMap<String, &'static str>>,
    /// Every event received, in order.
    events: Mutex<Vec<Value>>,
    next_id: AtomicU64,
    /// Set once Chromium's answer pipe reached EOF (it exited or crashed).
    dead: AtomicBool,
    /// Where Chromium's stderr goes.
    stderr_log: PathBuf,
}

impl Shared {
    /// Queues one message for Chromium (`id` from [`Shared::next_id`]).
    fn send(&self, id: u64, session: Option<&str>, method: &str, params: Value) {
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("a CDP command serializes");
        bytes.push(0);
        // A closed channel means the writer thread is gone (the pipe broke); the reader thread
        // sees EOF and marks Chromium dead, which the caller notices.
        let _ = self.out.lock().expect("writer channel lock").send(bytes);
    }

    /// Queues one message whose answer no one waits for.
    fn send_unanswered(&self, session: Option<&str>, method: &str, params: Value) {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        self.send(id, session, method, params);
    }

    /// The last lines of Chromium's stderr, for panic messages (without its complaints about
    /// the missing D-Bus, which every headless start writes).
    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains(":ERROR:dbus/"))
            .collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Panics when `session`'s tab crashed or was detached.
    fn check_session(&self, session: Option<&str>, method: &str) {
        let Some(session) = session else { return };
        let lost = self
            .lost
            .lock()
            .expect("lost sessions lock")
            .get(session)
            .copied();
        if let Some(what) = lost {
            panic!(
                "the tab of session {session} {what} (at {method}); the end of Chromium's \
                 stderr:\n{}",
                self.stderr_tail()
            );
        }
    }

    fn died(&self, what: &str) -> ! {
        panic!(
            "chromium exited ({what}); the end of its stderr ({}):\n{}",
            self.stderr_log.display(),
            self.stderr_tail()
        )
    }
}

/// Reads NUL-terminated messages until EOF: answers go to their caller, events to the log.
fn read_loop(stdout: ChildStdout, shared: &Shared) {
    let mut r = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(0, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.last() == Some(&0) {
            buf.pop();
        }
        let Ok(msg) = serde_json::from_slice::<Value>(&buf) else {
            continue;
        };
        if let Some(id) = msg.get("id").and_then(Value::as_u64) {
            let waiter = shared.pending.lock().expect("pending lock").remove(&id);
            if let Some((_, tx)) = waiter {
                let _ = tx.send(msg);
            }
            continue;
        }
        if msg["method"] == "Page.javascriptDialogOpening" {
            shared.send_unanswered(
                msg["sessionId"].as_str(),
                "Page.handleJavaScriptDialog",
                json!({"accept": true}),
            );
        }
        let lost = match msg["method"].as_str() {
            Some("Inspector.targetCrashed") => msg["sessionId"].as_str().map(|s| (s, "crashed")),
            Some("Target.detachedFromTarget") => msg["params"]["sessionId"]
                .as_str()
                .map(|s| (s, "was detached")),
            _ => None,
        };
        if let Some((session, what)) = lost {
            // Marked before its waiters are woken, as for `dead` below.
            shared
                .lost
                .lock()
                .expect("lost sessions lock")
                .insert(session.to_string(), what);
            shared
                .pending
                .lock()
                .expect("pending lock")
                .retain(|_, (s, _)| s.as_deref() != Some(session));
        }
        shared.events.lock().expect("event log lock").push(msg);
    }
    shared.dead.store(true, Ordering::SeqCst);
    // Dropping the senders wakes every waiting caller.
    shared.pending.lock().expect("pending lock").clear();
}

/// The Chromium binary: `CHROMIUM`, else the first of [`CANDIDATES`] on `PATH`.
fn chromium_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "CHROMIUM={} is not a file", p.display());
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in CANDIDATES {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "headless Chromium is needed for the console tests: apt install chromium \
         (or set CHROMIUM to its path; looked for {CANDIDATES:?} on PATH)"
    )
}

/// A fresh, empty directory for one browser profile.
fn fresh_profile_dir() -> PathBuf {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "iv-chromium-{}-{nanos}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("create the Chromium profile dir");
    dir
}

/// One headless Chromium; dropping it ends the process and removes its profile.
pub(crate) struct Browser {
    child: Child,
    shared: Arc<Shared>,
    profile: PathBuf,
}

impl Browser {
    /// Starts Chromium on `about:blank` and waits until it answers.
    pub(crate) fn launch() -> Browser {
        let binary = chromium_binary();
        let profile = fresh_profile_dir();
        let stderr_log = profile.join("chromium-stderr.log");
        let stderr = std::fs::File::create(&stderr_log).expect("create Chromium's stderr log");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(PIPE_SHIM)
            .arg("sh")
            .arg(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--hide-scrollbars",
                "--mute-audio",
                "--remote-debugging-pipe",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {} through sh: {e}", binary.display()));
        let mut stdin = child.stdin.take().expect("Chromium's command pipe");
        let stdout = child.stdout.take().expect("Chromium's answer pipe");

        let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name("cdp-writer".into())
            .spawn(move || {
                for msg in out_rx {
                    if stdin.write_all(&msg).and_then(|()| stdin.flush()).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the CDP writer thread");
        let shared = Arc::new(Shared {
            out: Mutex::new(out_tx),
            pending: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            dead: AtomicBool::new(false),
            stderr_log,
        });
        let reader_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("cdp-reader".into())
            .spawn(move || read_loop(stdout, &reader_shared))
            .expect("spawn the CDP reader thread");

        let browser = Browser {
            child,
            shared,
            profile,
        };
        let version = browser
            .call_within(None, "Browser.getVersion", json!({}), LAUNCH_TIMEOUT)
            .unwrap_or_else(|e| panic!("Browser.getVersion: {e}"));
        assert!(
            version["product"].is_string(),
            "Browser.getVersion answered {version}"
        );
        browser
    }

    /// Opens a new tab on `about:blank`, attached with its own session, with the Page, Runtime and
    /// Log domains enabled (so dialogs are accepted and console errors recorded).
    pub(crate) fn new_page(&self) -> Page<'_> {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .unwrap_or_else(|e| panic!("Target.createTarget: {e}"))["targetId"]
            .as_str()
            .expect("Target.createTarget gives a targetId")
            .to_string();
        let session = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .unwrap_or_else(|e| panic!("Target.attachToTarget: {e}"))["sessionId"]
            .as_str()
            .expect("Target.attachToTarget gives a sessionId")
            .to_string();
        let page = Page {
            browser: self,
            session,
            target,
        };
        page.cmd("Page.enable", json!({}));
        page.cmd("Page.setLifecycleEventsEnabled", json!({"enabled": true}));
        page.cmd("Runtime.enable", json!({}));
        page.cmd("Log.enable", json!({}));
        // Headless tabs are never the focused window; without this, focus and blur events and
        // `:focus` would depend on which tab was opened last.
        page.cmd(
            "Emulation.setFocusEmulationEnabled",
            json!({"enabled": true}),
        );
        page
    }

    /// Sends one command (to the browser, or to a page's `session`) and waits up to [`TIMEOUT`]
    /// for its answer: `Err` with Chromium's message when it answers with an error. Panics when
    /// no answer comes in time, when Chromium has exited, or when the session's tab crashed or
    /// was detached.
    pub(crate) fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.call_within(session, method, params, TIMEOUT)
    }

    /// [`call`](Self::call) with another deadline.
    pub(crate) fn call_within(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        let s = &self.shared;
        if s.dead.load(Ordering::SeqCst) {
            s.died(&format!("before {method}"));
        }
        let (tx, rx) = mpsc::channel();
        // Registered before sending (the answer may come at once) and before checking `dead`
        // again: the reader marks Chromium dead before it clears the waiters, so either this
        // waiter is cleared (the receive fails) or the check below sees it.
        let id = s.next_id.fetch_add(1, Ordering::SeqCst);
        s.pending
            .lock()
            .expect("pending lock")
            .insert(id, (session.map(str::to_string), tx));
        if s.dead.load(Ordering::SeqCst) {
            s.died(&format!("before {method}"));
        }
        s.check_session(session, method);
        s.send(id, session, method, params);
        let answer = match rx.recv_timeout(timeout) {
            Ok(a) => a,
            Err(RecvTimeoutError::Disconnected) => {
                if s.dead.load(Ordering::SeqCst) {
                    s.died(&format!("waiting for {method}"));
                }
                s.check_session(session, method);
                unreachable!("a waiter is only dropped when Chromium or its tab is gone")
            }
            Err(RecvTimeoutError::Timeout) => {
                s.pending.lock().expect("pending lock").remove(&id);
                panic!(
                    "CDP {method} got no answer within {timeout:?}; the end of Chromium's \
                     stderr:\n{}",
                    s.stderr_tail()
                )
            }
        };
        match answer.get("error") {
            Some(e) => Err(format!(
                "{method}: {}{}",
                e["message"].as_str().unwrap_or("error"),
                e.get("data")
                    .and_then(Value::as_str)
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            )),
            None => Ok(answer.get("result").cloned().unwrap_or(Value::Null)),
        }
    }

    /// A copy of every event received so far (each with `method`, `params` and, for a page's
    /// events, `sessionId`).
    pub(crate) fn events(&self) -> Vec<Value> {
        self.shared.events.lock().expect("event log lock").clone()
    }

    /// The last lines Chromium wrote to its stderr.
    pub(crate) fn stderr_tail(&self) -> String {
        self.shared.stderr_tail()
    }

    /// Whether Chromium's pipe is still open.
    pub(crate) fn is_alive(&self) -> bool {
        !self.shared.dead.load(Ordering::SeqCst)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask politely (the profile is flushed and the helpers exit), then make sure.
        if self.is_alive() {
            self.shared
                .send_unanswered(None, "Browser.close", json!({}));
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Helper processes may still be writing into the profile for a moment.
        for _ in 0..20 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One tab of a [`Browser`], driven through its own CDP session. Dropping it closes the tab.
pub(crate) struct Page<'a> {
    browser: &'a Browser,
    session: String,
    target: String,
}

impl Page<'_> {
    /// This tab's CDP session id.
    pub(crate) fn session(&self) -> &str {
        &self.session
    }

    /// A command to this tab; panics on an error answer.
    pub(crate) fn cmd(&self, method: &str, params: Value) -> Value {
        self.browser
            .call(Some(&self.session), method, params)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Navigates to `url` and waits until the new document has loaded (`load` fired and
    /// `document.readyState` is `complete`).
    pub(crate) fn goto(&self, url: &str) {
        let seen = self
            .browser
            .shared
            .events
            .lock()
            .expect("event log lock")
            .len();
        let nav = self.cmd("Page.navigate", json!({"url": url}));
        if let Some(err) = nav["errorText"].as_str() {
            panic!("navigating to {url} failed: {err}");
        }
        let end = Instant::now() + TIMEOUT;
        // A new document (not a same-document jump) reports `load` for its loader id; until
        // then `document.readyState` may still be the previous document's.
        if let Some(loader) = nav["loaderId"].as_str() {
            let loaded = || {
                let events = self.browser.shared.events.lock().expect("event log lock");
                events[seen.min(events.len())..].iter().any(|e| {
                    e["sessionId"] == self.session.as_str()
                        && e["method"] == "Page.lifecycleEvent"
                        && e["params"]["name"] == "load"
                        && e["params"]["loaderId"] == loader
                })
            };
            while !loaded() {
                assert!(
                    Instant::now() < end,
                    "{url} did not fire load within {TIMEOUT:?}; console errors: {:?}",
                    self.console_errors()
                );
                std::thread::sleep(POLL);
            }
        }
        loop {
            if let Ok(Value::String(s)) = self.try_eval("document.readyState") {
                if s == "complete" {
                    return;
                }
            }
            assert!(
                Instant::now() < end,
                "{url} did not reach readyState complete within {TIMEOUT:?}; console errors: {:?}",
                self.console_errors()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Evaluates `js` in the page (promises are awaited) and returns its value as JSON
    /// (`undefined` is `null`); `Err` with the exception's description when it throws.
    pub(crate) fn try_eval(&self, js: &str) -> Result<Value, String> {
        let r = self.browser.call(
            Some(&self.session),
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            let text = ex["exception"]["description"]
                .as_str()
                .or_else(|| ex["exception"]["value"].as_str())
                .or_else(|| ex["text"].as_str())
                .unwrap_or("exception");
            return Err(text.to_string());
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// [`try_eval`](Self::try_eval) that panics when `js` throws.
    pub(crate) fn eval(&self, js: &str) -> Value {
        self.try_eval(js)
            .unwrap_or_else(|e| panic!("evaluating `{js}` threw: {e}"))
    }

    /// Evaluates `js` every 100 ms until its value is truthy (not `null`, `false`, `0`, `""`)
    /// and returns that value; a throw counts as not yet. Panics after [`TIMEOUT`] naming
    /// `what`, the last value (or exception) and the page's console errors.
    pub(crate) fn wait_for(&self, js: &str, what: &str) -> Value {
        let end = Instant::now() + TIMEOUT;
        loop {
            let last = self.try_eval(js);
            if let Ok(v) = &last {
                if truthy(v) {
                    return v.clone();
                }
            }
            if Instant::now() >= end {
                let last = match last {
                    Ok(v) => format!("last value {v}"),
                    Err(e) => format!("last threw {e}"),
                };
                panic!(
                    "timed out after {TIMEOUT:?} waiting for {what} (`{js}`): {last}; \
                     console errors: {:?}",
                    self.console_errors()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Scrolls the first element matching `selector` to the middle of the viewport and returns
    /// its box: x, y, width, height in viewport CSS pixels. Panics when nothing matches.
    pub(crate) fn box_of(&self, selector: &str) -> (f64, f64, f64, f64) {
        let sel = serde_json::to_string(selector).expect("a selector serializes");
        let v = self.eval(&format!(
            "(() => {{ const el = document.querySelector({sel}); if (!el) return null; \
             el.scrollIntoView({{block: 'center', inline: 'center', behavior: 'instant'}}); \
             const r = el.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; }})()"
        ));
        let n = |i: usize| {
            v[i].as_f64()
                .unwrap_or_else(|| panic!("no element matches {selector:?}"))
        };
        (n(0), n(1), n(2), n(3))
    }

    /// A real left click (move, press, release) at the centre of the first element matching
    /// `selector`, scrolled into view first. Panics when nothing matches.
    pub(crate) fn click(&self, selector: &str) {
        let (x, y, w, h) = self.box_of(selector);
        self.mouse_click_at(x + w / 2.0, y + h / 2.0);
    }

    /// A real left click at (`x`, `y`), viewport CSS pixels.
    pub(crate) fn mouse_click_at(&self, x: f64, y: f64) {
        self.mouse("mouseMoved", x, y, "none", 0);
        self.mouse("mousePressed", x, y, "left", 1);
        self.mouse("mouseReleased", x, y, "left", 0);
    }

    /// A drag with the left button: pressed at the first point, moved through the others,
    /// released at the last (viewport CSS pixels). Panics on an empty path.
    pub(crate) fn mouse_path(&self, points: &[(f64, f64)]) {
        let (&(x0, y0), rest) = points.split_first().expect("a mouse path needs a point");
        self.mouse("mouseMoved", x0, y0, "none", 0);
        self.mouse("mousePressed", x0, y0, "left", 1);
        for &(x, y) in rest {
            self.mouse("mouseMoved", x, y, "left", 1);
        }
        let &(xn, yn) = points.last().expect("a mouse path needs a point");
        self.mouse("mouseReleased", xn, yn, "left", 0);
    }

    fn mouse(&self, kind: &str, x: f64, y: f64, button: &str, buttons: u32) {
        let mut p = json!({"type": kind, "x": x, "y": y, "button": button, "buttons": buttons});
        if kind != "mouseMoved" {
            p["clickCount"] = json!(1);
        }
        self.cmd("Input.dispatchMouseEvent", p);
    }

    /// Clicks the first element matching `selector`, selects its text, types `text` in its place
    /// (as one insertion, like a paste) and then dispatches `input` and `change` from it.
    pub(crate) fn type_into(&self, selector: &str, text: &str) {
        self.click(selector);
        let sel = serde_json::to_string(selector).expect("a selector serializes");
        let selected = self.eval(&format!(
            "(() => {{ const el = document.querySelector({sel}); if (!el) return false; \
             el.focus(); \
             if (el.isContentEditable) {{ document.execCommand('selectAll'); }} \
             else if (typeof el.select === 'function') {{ el.select(); \
               if (el.selectionStart === null && 'value' in el) el.value = ''; }} \
             return document.activeElement === el; }})()"
        ));
        assert_eq!(
            selected,
            json!(true),
            "{selector:?} did not take the focus, so it cannot be typed into"
        );
        if text.is_empty() {
            self.eval("document.execCommand('delete')");
        } else {
            self.cmd("Input.insertText", json!({"text": text}));
        }
        self.eval(&format!(
            "(() => {{ const el = document.querySelector({sel}); \
             el.dispatchEvent(new Event('input', {{bubbles: true}})); \
             el.dispatchEvent(new Event('change', {{bubbles: true}})); }})()"
        ));
    }

    /// Presses and releases one key on the focused element: `Enter`, `Escape`, `Tab`,
    /// `Backspace`, `Delete`, `Space`/`" "`, the arrows, `Home`, `End`, `PageUp`, `PageDown`, or a
    /// single ASCII letter or digit.
    pub(crate) fn press_key(&self, key: &str) {
        let (key, code, vk, text): (String, String, u32, &str) = match key {
            "Enter" => ("Enter".into(), "Enter".into(), 13, "\r"),
            "Escape" => ("Escape".into(), "Escape".into(), 27, ""),
            "Tab" => ("Tab".into(), "Tab".into(), 9, ""),
            "Backspace" => ("Backspace".into(), "Backspace".into(), 8, ""),
            "Delete" => ("Delete".into(), "Delete".into(), 46, ""),
            "Space" | " " => (" ".into(), "Space".into(), 32, " "),
            "ArrowLeft" => ("ArrowLeft".into(), "ArrowLeft".into(), 37, ""),
            "ArrowUp" => ("ArrowUp".into(), "ArrowUp".into(), 38, ""),
            "ArrowRight" => ("ArrowRight".into(), "ArrowRight".into(), 39, ""),
            "ArrowDown" => ("ArrowDown".into(), "ArrowDown".into(), 40, ""),
            "Home" => ("Home".into(), "Home".into(), 36, ""),
            "End" => ("End".into(), "End".into(), 35, ""),
            "PageUp" => ("PageUp".into(), "PageUp".into(), 33, ""),
            "PageDown" => ("PageDown".into(), "PageDown".into(), 34, ""),
            k if k.len() == 1 && k.as_bytes()[0].is_ascii_alphanumeric() => {
                let c = k.as_bytes()[0];
                let code = if c.is_ascii_digit() {
                    format!("Digit{k}")
                } else {
                    format!("Key{}", k.to_ascii_uppercase())
                };
                (k.into(), code, u32::from(c.to_ascii_uppercase()), k)
            }
            other => panic!("press_key does not know the key {other:?}"),
        };
        let mut down = json!({
            "type": if text.is_empty() { "rawKeyDown" } else { "keyDown" },
            "key": key,
            "code": code,
            "windowsVirtualKeyCode": vk,
            "nativeVirtualKeyCode": vk,
        });
        if !text.is_empty() {
            down["text"] = json!(text);
            down["unmodifiedText"] = json!(text);
        }
        self.cmd("Input.dispatchKeyEvent", down);
        self.cmd(
            "Input.dispatchKeyEvent",
            json!({
                "type": "keyUp",
                "key": key,
                "code": code,
                "windowsVirtualKeyCode": vk,
                "nativeVirtualKeyCode": vk,
            }),
        );
    }

    /// Sets the files of the `<input type=file>` matching `selector` (as if chosen in the file
    /// dialog; `input` and `change` fire). Panics when nothing matches or a file is missing.
    pub(crate) fn set_files(&self, selector: &str, paths: &[&Path]) {
        let files: Vec<String> = paths
            .iter()
            .map(|p| {
                std::fs::canonicalize(p)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let root = self.cmd("DOM.getDocument", json!({"depth": 0}))["root"]["nodeId"].clone();
        let node = self.cmd(
            "DOM.querySelector",
            json!({"nodeId": root, "selector": selector}),
        )["nodeId"]
            .as_u64()
            .unwrap_or(0);
        assert_ne!(node, 0, "no element matches {selector:?}");
        self.cmd(
            "DOM.setFileInputFiles",
            json!({"nodeId": node, "files": files}),
        );
    }

    /// Writes a PNG of the viewport to `path` (its parent directories are created).
    pub(crate) fn screenshot(&self, path: &Path) {
        let shot = self.cmd("Page.captureScreenshot", json!({"format": "png"}));
        let data = shot["data"]
            .as_str()
            .expect("Page.captureScreenshot gives base64 data");
        let png = base64_decode(data);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// This tab's errors so far, as text: uncaught exceptions, `console.error` calls and
    /// error-level log entries (failed loads, CSP violations, …).
    pub(crate) fn console_errors(&self) -> Vec<String> {
        let events = self.browser.shared.events.lock().expect("event log lock");
        events
            .iter()
            .filter(|e| e["sessionId"] == self.session.as_str())
            .filter_map(|e| {
                let p = &e["params"];
                match e["method"].as_str()? {
                    "Runtime.exceptionThrown" => {
                        let d = &p["exceptionDetails"];
                        Some(
                            d["exception"]["description"]
                                .as_str()
                                .or_else(|| d["text"].as_str())
                                .unwrap_or("uncaught exception")
                                .to_string(),
                        )
                    }
                    "Runtime.consoleAPICalled" if p["type"] == "error" => Some(
                        p["args"]
                            .as_array()
                            .map(|args| {
                                args.iter()
                                    .map(|a| match a.get("value") {
                                        Some(Value::String(s)) => s.clone(),
                                        Some(v) => v.to_string(),
                                        None => a["description"]
                                            .as_str()
                                            .unwrap_or_else(|| a["type"].as_str().unwrap_or(""))
                                            .to_string(),
                                    })
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .unwrap_or_default(),
                    ),
                    "Log.entryAdded" if p["entry"]["level"] == "error" => {
                        let entry = &p["entry"];
                        let text = entry["text"].as_str().unwrap_or("").to_string();
                        Some(match entry["url"].as_str() {
                            Some(url) if !url.is_empty() => format!("{text} ({url})"),
                            _ => text,
                        })
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Emulates a `width`×`height` viewport (CSS pixels, device scale factor 1), as a phone when
    /// `mobile`.
    pub(crate) fn set_viewport(&self, width: u32, height: u32, mobile: bool) {
        self.cmd(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    /// Emulates `prefers-color-scheme: dark` (or `light`).
    pub(crate) fn emulate_dark(&self, dark: bool) {
        self.cmd(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme",
                                 "value": if dark { "dark" } else { "light" }}]}),
        );
    }
}

impl Drop for Page<'_> {
    fn drop(&mut self) {
        // Not waited for: a drop must not panic (it may run while a test is unwinding).
        if self.browser.is_alive() {
            self.browser.shared.send_unanswered(
                None,
                "Target.closeTarget",
                json!({"targetId": self.target}),
            );
        }
    }
}

/// Whether a JavaScript value (as JSON) is truthy.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Standard base64 (with or without padding) to bytes; panics on anything else.
fn base64_decode(s: &str) -> Vec<u8> {
    fn sextet(c: u8) -> u32 {
        u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: byte {c:#04x}"),
        })
    }
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= sextet(c) << (18 - 6 * i);
        }
        let n = chunk.len().saturating_sub(1);
        assert!(chunk.len() > 1, "truncated base64");
        out.extend_from_slice(&acc.to_be_bytes()[1..=n]);
    }
    out
}

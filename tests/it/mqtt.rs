//! MQTT (3.1.1 and 5) end to end with Debian's `mosquitto` (started here on 127.0.0.1 at a free port, with
//! persistence, and a `mosquitto_sub` with a persistent QoS 1 session as the reader): the events
//! of a clip arrive on `<prefix>/events` once and in order (their ids are the journal's) with the
//! retained state beside them; the events of a second stream that runs while the broker is
//! stopped arrive once it is started again; then, with the broker down, a second stream's events wait in the outbox, the
//! daemon is killed (`kill -9`), and the restarted daemon delivers them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::events::{caught_up, clip, stream_body};
use crate::streams::{file_roots, put, wait_status};
use crate::support::daemon::{free_port, Daemon};
use crate::support::{fixtures, metrics, wait};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A broker with persistence in `dir`.
struct Broker {
    child: Child,
}

impl Broker {
    fn start(dir: &Path, port: u16) -> Broker {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nlog_dest stderr\n",
                dir.display()
            ),
        )
        .expect("broker config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("mosquitto.log"))
            .expect("broker log");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{MOSQUITTO} does not start ({e}): apt install mosquitto"));
        let up = wait::until_true(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "mosquitto does not listen on {port}");
        Broker { child }
    }

    /// SIGTERM (the broker saves its persistent sessions), then waits.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_sub -v` with a persistent session, appending what it receives to a file (a
/// restarted reader goes on where it left).
struct Subscriber {
    child: Child,
    out: PathBuf,
}

impl Subscriber {
    fn start(dir: &Path, port: u16) -> Subscriber {
        let out = dir.join("sub.txt");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out)
            .expect("sub output");
        let child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args([
                "-i",
                "iv-test-reader",
                "-c",
                "-q",
                "1",
                "-v",
                "-t",
                "iv/#",
                "-t",
                "homeassistant/#",
            ])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("mosquitto_sub does not start ({e}): apt install mosquitto-clients")
            });
        Subscriber { child, out }
    }

    /// SIGTERM: the reader acknowledges what it printed and disconnects cleanly, so its
    /// persistent session holds nothing in flight when the broker saves it.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }

    /// (topic, payload) of each line received so far.
    fn lines(&self) -> Vec<(String, String)> {
        // Snapshot payloads are JPEG bytes: read leniently.
        String::from_utf8_lossy(&std::fs::read(&self.out).unwrap_or_default())
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(t, p)| (t.to_string(), p.to_string()))
            .collect()
    }

    /// The ids of the events received on `iv/events`, in order.
    fn event_ids(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|(t, _)| t == "iv/events")
            .map(|(_, p)| {
                let v: Value = serde_json::from_str(&p).expect("an event");
                v["id"].as_str().expect("id").to_string()
            })
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_string())
        .collect()
}

/// Waits until the reader has exactly the journal's events, in order; fails on a duplicate.
fn delivered(sub: &Subscriber, journal: &[String], d: &Daemon) {
    let ok = wait::until_true(Duration::from_secs(60), || {
        let got = sub.event_ids();
        got.len() >= journal.len()
    });
    let got = sub.event_ids();
    assert!(
        ok && got == journal,
        "the reader got {} events, the journal has {}:\nreader: {got:?}\njournal: {journal:?}\n{}",
        got.len(),
        journal.len(),
        d.stderr()
    );
}

fn outbox(d: &Daemon) -> f64 {
    metrics::value(&d.metrics(), "iv_sink_outbox_events", &[("sink", "mqtt")]).unwrap_or(-1.0)
}

#[test]
fn events_reach_the_broker_once_in_order_across_broker_and_daemon_restarts() {
    across_restarts("3.1.1");
}

#[test]
fn with_mqtt_5_too() {
    across_restarts("5");
}

/// The whole scenario with `protocol` (`[mqtt] protocol`).
fn across_restarts(protocol: &str) {
    let tmp = tempfile::tempdir().expect("tmp");
    let clips = tmp.path().join("clips");
    let video = clip(&clips);
    let broker_dir = tmp.path().join("broker");
    std::fs::create_dir_all(&broker_dir).expect("broker dir");
    let port = free_port();
    let broker = Broker::start(&broker_dir, port);
    let sub = Subscriber::start(tmp.path(), port);
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\ntopic_prefix = \"iv\"\nclient_id = \"iv-under-test-{port}\"\nhome_assistant = true\nprotocol = {protocol:?}\n"),
    )
    .expect("config");
    let state = tmp.path().join("state");
    let (state_s, roots) = (
        state.to_str().expect("utf8").to_string(),
        file_roots(&[&clips]),
    );
    let env = [
        ("IV_STREAM_FILE_ROOTS", roots.as_str()),
        ("IV_STATE_DIR", state_s.as_str()),
        ("IV_STREAM_KEEPALIVE_MS", "500"),
    ];
    let args = ["--config", config.to_str().expect("utf8")];
    let model = fixtures::model_dir("tiny-track");
    let mut d = Daemon::launch(model.to_str().expect("utf8"), &args, &env);
    d.wait_ready();
    let online = wait::until_true(Duration::from_secs(20), || {
        sub.lines()
            .contains(&("iv/available".into(), "online".into()))
    });
    assert!(
        online,
        "no iv/available online: {:?}\n{}",
        sub.lines(),
        d.stderr()
    );

    // Phase 1: a stream's events arrive; the broker stops (nothing in flight: QoS 1 resends
    // what was in flight at a failure, so a message the broker had but did not acknowledge may
    // arrive twice; ids tell a reader) while a second stream runs, and comes back.
    assert_eq!(put(&d, "moving", &stream_body(&video)).status, 201);
    wait_status(&d, "moving", Duration::from_secs(120), |s| {
        s["state"] == "finished"
    });
    let first = ids(&caught_up(&d, "/v1/events?since=0"));
    delivered(&sub, &first, &d);
    assert!(wait::until_true(Duration::from_secs(10), || outbox(&d) == 0.0));
    sub.stop();
    broker.stop();
    assert_eq!(put(&d, "during", &stream_body(&video)).status, 201);
    wait_status(&d, "during", Duration::from_secs(120), |s| {
        s["state"] == "finished"
    });
    let journal = ids(&caught_up(&d, "/v1/events?since=0"));
    assert!(journal.len() > first.len());
    assert!(outbox(&d) > 0.0, "events wait for the broker");
    assert_eq!(
        metrics::value(&d.metrics(), "iv_mqtt_connected", &[]),
        Some(0.0)
    );
    let broker = Broker::start(&broker_dir, port);
    let sub = Subscriber::start(tmp.path(), port);
    delivered(&sub, &journal, &d);
    let lines = sub.lines();
    let retained = |t: &str| {
        lines
            .iter()
            .rev()
            .find(|(topic, _)| topic == t)
            .map(|x| x.1.clone())
    };
    assert_eq!(
        retained("iv/moving/a_red_square").as_deref(),
        Some("0"),
        "no square in view after the end"
    );
    assert_eq!(
        retained("iv/moving/zones/right/a_red_square").as_deref(),
        Some("0")
    );
    assert!(retained("iv/moving/lines/gate").is_some_and(|p| p.contains("\"in\":")));
    assert!(
        retained("homeassistant/binary_sensor/iv_moving_right_a_red_square_present/config")
            .is_some()
    );
    assert!(
        retained("iv/moving/a_red_square/snapshot").is_some_and(|p| !p.is_empty()),
        "the square's best snapshot"
    );
    for name in ["moving", "during"] {
        let r = d.request("DELETE", &format!("/v1/streams/{name}"), None, b"");
        assert_eq!(r.status, 204);
    }

    // Phase 2: events written while the broker is down survive a kill -9 of the daemon.
    assert!(wait::until_true(Duration::from_secs(10), || outbox(&d) == 0.0));
    sub.stop();
    broker.stop();
    assert_eq!(put(&d, "again", &stream_body(&video)).status, 201);
    wait_status(&d, "again", Duration::from_secs(120), |s| {
        s["state"] == "finished"
    });
    let journal = ids(&caught_up(&d, "/v1/events?since=0"));
    assert!(
        outbox(&d) > 0.0,
        "the outbox holds the second stream's events"
    );
    assert_eq!(
        d.request("DELETE", "/v1/streams/again", None, b"").status,
        204
    );
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    let _broker = Broker::start(&broker_dir, port);
    let sub = Subscriber::start(tmp.path(), port);
    let mut d = Daemon::launch(model.to_str().expect("utf8"), &args, &env);
    d.wait_ready();
    delivered(&sub, &journal, &d);
    assert!(wait::until_true(Duration::from_secs(10), || outbox(&d) == 0.0));
    assert_eq!(
        metrics::value(&d.metrics(), "iv_mqtt_connected", &[]),
        Some(1.0)
    );
}

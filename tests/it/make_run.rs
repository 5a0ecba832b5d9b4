//! What `make run` runs, in a fresh folder standing for a checkout: `model pull --if-missing --from`
//! and `serve` with `packaging/run.toml` (relative paths, so everything lands under the folder's
//! `target/`), a detection over the socket it names, `detect` finding the configured model through
//! the same file, and a clean stop.

use std::path::Path;
use std::time::Duration;

use crate::support::daemon::{detect_target, free_port, unix_request};
use crate::support::{bin, fixtures, wait};

fn run_toml() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/run.toml")
}

#[test]
fn make_runs_daemon_keeps_everything_under_target_and_serves() {
    let checkout = tempfile::tempdir().expect("tmp");
    let cwd = checkout.path();
    let config = run_toml();
    let pull = |extra: &[&str]| {
        bin::command()
            .current_dir(cwd)
            .args(["model", "pull", "--if-missing", "--config"])
            .arg(&config)
            .args(extra)
            .env("HF_ENDPOINT", "http://127.0.0.1:1")
            .output()
            .expect("runs")
    };
    // Without the hub and without a copy: the one line that says what to do.
    let out = pull(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HF_ENDPOINT") && err.contains("--from DIR"),
        "{err}"
    );
    // A local copy installs the configured id into ./target/models.
    let src = fixtures::model_dir("tiny-track");
    bin::assert_success(&pull(&["--from", src.to_str().expect("utf8")]));
    let installed = cwd.join("target/models/google/owlv2-base-patch16-ensemble");
    assert!(installed.join("model.safetensors").is_file());

    let port = free_port();
    let mut child = bin::command()
        .current_dir(cwd)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .env("IV_WARMUP_ITERATIONS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve starts");
    let socket = cwd.join("target/run/iv.sock");
    let target = detect_target(&["a red square", "a blue disc"], "&threshold=0.3&nms=0.3");
    let image = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/detect-input.jpg"))
        .expect("the README's frame");
    let answer = wait::until(Duration::from_secs(120), || {
        unix_request(&socket, "POST", &target, Some("image/jpeg"), &image)
            .ok()
            .filter(|r| r.status == 200)
    })
    .expect("the daemon answers on target/run/iv.sock");
    let labels: Vec<String> = answer.json()["detections"]
        .as_array()
        .expect("detections")
        .iter()
        .map(|d| d["label"].as_str().expect("label").to_string())
        .collect();
    // The README's frame holds two red squares and a blue disc, and the trained fixture sees them.
    let count = |l: &str| labels.iter().filter(|x| *x == l).count();
    assert_eq!(
        (count("a red square"), count("a blue disc")),
        (2, 1),
        "{labels:?}"
    );
    assert!(cwd.join("target/run/state").is_dir());
    assert!(cwd.join("target/run/cache").is_dir());

    // `detect` finds the same configured model through the same file.
    let out = bin::command()
        .current_dir(cwd)
        .arg("detect")
        .arg("--config")
        .arg(&config)
        .args([
            "--query",
            "a blue disc",
            "--threshold",
            "0.3",
            "--nms",
            "0.3",
        ])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/detect-input.jpg"))
        .output()
        .expect("detect");
    bin::assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("google/owlv2-base-patch16-ensemble"));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(
        line["detections"].as_array().map(Vec::len),
        Some(1),
        "{line}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal");
    let status = child.wait().expect("exits");
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the socket file is removed at stop");
}

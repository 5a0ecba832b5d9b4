//! `optimize`: builds the artifact into the cache, reuses it, rebuilds with --force, and stores a
//! measured speedup that the daemon then reports as `speedup_estimate`.

use std::time::Duration;

use crate::support::daemon::Daemon;
use crate::support::{bin, fixtures};

fn optimize(cache: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    // The runner passes no IV_MODEL on (it drops every inherited IV_* but the library path).
    let out = bin::command()
        .arg("optimize")
        .arg("--model")
        .arg(fixtures::model_dir("tiny-a"))
        .arg("--cache-dir")
        .arg(cache)
        .args(extra)
        .output()
        .expect("runs");
    bin::assert_success(&out);
    serde_json::from_slice(&out.stdout).expect("json report")
}

#[test]
fn optimize_builds_reuses_forces_and_feeds_the_daemon() {
    let cache = tempfile::tempdir().expect("tmp");
    let first = optimize(cache.path(), &["--benchmark", "--runs", "2"]);
    assert_eq!(first["backend"], "cpu");
    assert_eq!(first["cached"], false);
    let speedup = first["speedup"].as_f64().expect("measured speedup");
    assert!(speedup > 0.0);
    let dir = std::path::PathBuf::from(first["artifact"].as_str().expect("artifact"));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).expect("meta")).expect("json");
    assert_eq!(meta["speedup"].as_f64(), Some(speedup));

    let again = optimize(cache.path(), &[]);
    assert_eq!(again["cached"], true);
    assert_eq!(again["artifact"], first["artifact"]);

    // The daemon reports the measured speedup and cached=true.
    let cache_s = cache.path().to_str().expect("utf8");
    let mut d = Daemon::start(&[("IV_CACHE_DIR", cache_s), ("IV_WARMUP_ITERATIONS", "1")]);
    d.wait_ready();
    let h = d.health().json();
    assert_eq!(h["optimization"]["cached"], true);
    assert_eq!(
        h["optimization"]["speedup_estimate"].as_f64(),
        Some(speedup)
    );
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));

    let forced = optimize(cache.path(), &["--force"]);
    assert_eq!(forced["cached"], false);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).expect("meta")).expect("json");
    assert!(
        meta["speedup"].is_null(),
        "a rebuilt artifact has no measurement yet"
    );
}

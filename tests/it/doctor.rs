//! `doctor`: explains this machine (no GPU: the CPU serves), fails clearly without a model, and
//! refuses an invalid configuration with the configuration exit code.

use serde_json::Value;

use crate::support::{bin, fixtures};

fn doctor(env: &[(&str, &str)]) -> (Option<i32>, Value) {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut c = bin::command();
    c.args(["doctor", "--json"])
        .env("IV_CACHE_DIR", tmp.path().join("cache"))
        .env("IV_STATE_DIR", tmp.path().join("state"))
        .env("IV_SOCKET_PATH", tmp.path().join("run/d.sock"));
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("doctor runs");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

fn find<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report}"))
}

#[test]
fn explains_this_machine_and_fails_without_a_model() {
    let model = fixtures::model_dir("tiny-a");
    let (code, r) = doctor(&[("IV_MODEL", model.to_str().expect("utf8"))]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["ok"], true);
    assert_eq!(find(&r, "model")["status"], "ok");
    let ort = find(&r, "onnxruntime");
    assert_eq!(ort["status"], "ok", "{ort}");
    let detail = ort["detail"].as_str().expect("detail");
    assert!(detail.starts_with("1.31.1 at "), "{detail}");
    assert!(detail.contains("CPUExecutionProvider"), "{detail}");
    for name in ["cache_dir", "state_dir", "socket", "gstreamer"] {
        assert_eq!(find(&r, name)["status"], "ok", "{}", find(&r, name));
    }
    let backend = find(&r, "backend")["detail"]
        .as_str()
        .expect("detail")
        .to_string();
    let gpu = find(&r, "gpu");
    if gpu["status"] == "warn" {
        // No GPU here: the CPU serves, and the skipped tiers say why.
        assert!(
            backend.starts_with("cpu would serve (preference auto)"),
            "{backend}"
        );
        assert!(backend.contains("tensorrt skipped: "), "{backend}");
    }

    let (code, r) = doctor(&[
        ("IV_MODEL", "google/owlv2-base-patch16-ensemble"),
        ("IV_MODEL_STORE", "/nonexistent/store"),
    ]);
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(r["ok"], false);
    let m = find(&r, "model");
    assert_eq!(m["status"], "fail");
    assert_eq!(
        m["fix"],
        "intelligent-video model pull google/owlv2-base-patch16-ensemble"
    );

    let (code, r) = doctor(&[("IV_MAX_QUEUE", "0")]);
    assert_eq!(code, Some(78), "{r}");
    assert_eq!(find(&r, "config")["status"], "fail");
}

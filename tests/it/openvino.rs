//! The OpenVINO tier: PyPI's `openvino` wheel installs with `runtime install --pip` beside ONNX
//! Runtime (from the folder `TEST_OPENVINO_WHEELS` names, through pip's own settings: no network;
//! `.ci/run` downloads it, and it is required under CI); its fp32 engine matches transformers on
//! the held-out fixtures; bf16 (where the CPU has it) drifts within the documented bound;
//! `optimization_backend = "openvino"` serves through it; `auto` uses it only once `optimize`
//! measured it faster on this host, and says why not otherwise.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::runtime::{runtime_command, text};
use crate::support::bin;
use crate::support::daemon::Daemon;
use crate::support::detections::Det;
use crate::support::fixtures::{
    self, golden_json, golden_pixels, golden_queries as queries, goldens, max_abs_diff, model_dir,
};
use intelligent_video::backend::Provider;
use intelligent_video::engine::{load_detector, DetectorOptions};
use intelligent_video::postprocess;
use intelligent_video::vocab::Precision;

const SPEC: &str = "openvino==2026.4.1";

/// The wheel folder, or `None` (skip) outside CI when it is not set.
fn wheels() -> Option<PathBuf> {
    let dir = std::env::var_os("TEST_OPENVINO_WHEELS").map(PathBuf::from);
    if dir.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "TEST_OPENVINO_WHEELS must name the folder of the openvino wheel under CI"
        );
        eprintln!("skipped: TEST_OPENVINO_WHEELS is not set");
    }
    dir
}

/// `runtime ARGS…` with pip pointed at `wheels` only.
fn runtime(state: &Path, wheels: &Path, args: &[&str]) -> std::process::Output {
    runtime_command(state, args)
        .env("PIP_NO_INDEX", "1")
        .env("PIP_FIND_LINKS", wheels)
        .output()
        .expect("runtime runs")
}

/// One OpenVINO runtime installed with `--pip` for the whole test process (OpenVINO loads once
/// per process anyway): its folder.
fn installed() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let wheels = wheels()?;
        let tmp = tempfile::tempdir().expect("tmp").keep();
        let state = tmp.join("state");
        let out = runtime(&state, &wheels, &["install", "--pip", SPEC]);
        assert!(out.status.success(), "{}", text(&out));
        Some(state.join("runtimes/openvino-2026.4.1"))
    })
    .clone()
}

fn ov_options(lib: &Path, precision: Precision) -> DetectorOptions {
    DetectorOptions {
        provider: Provider::OpenVino {
            device: "CPU".into(),
            precision,
            cache_dir: None,
        },
        openvino_library: Some(lib.to_path_buf()),
        ..DetectorOptions::default()
    }
}

#[test]
fn the_openvino_wheel_installs_with_pip_beside_onnx_runtime() {
    let Some(wheels) = wheels() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    let out = runtime(&state, &wheels, &["install", "--pip", SPEC]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("installed openvino-2026.4.1 (OpenVINO 2026.4.1"),
        "{said}"
    );
    assert!(said.contains("devices: CPU"), "{said}");
    let out = runtime(&state, &wheels, &["list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    let l = list.as_array().expect("array");
    assert_eq!(l.len(), 1, "{list}");
    assert_eq!(l[0]["kind"], "openvino");
    assert_eq!(l[0]["active"], true);
    assert!(l[0]["providers"]
        .as_array()
        .expect("devices")
        .contains(&Value::from("CPU")));
    // Only OpenVINO's libraries were kept (numpy's, pip's companion wheel, were not).
    let files: Vec<&str> = l[0]["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        files.iter().any(|f| f.starts_with("libopenvino_c.so")),
        "{files:?}"
    );
    assert!(
        files.contains(&"libopenvino_intel_cpu_plugin.so"),
        "{files:?}"
    );
    assert!(
        files.iter().all(|f| f.starts_with("libopenvino")
            || f.starts_with("libtbb")
            || f.starts_with("libhwloc")),
        "{files:?}"
    );
    // ONNX Runtime's choice is untouched: the packaged library stays the engine's.
    let root = state.join("runtimes");
    assert!(!root.join("active").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("active-openvino")).expect("marker"),
        "openvino-2026.4.1\n"
    );
    let plain = runtime(&state, &wheels, &["list"]);
    assert!(text(&plain).contains("* packaged"), "{}", text(&plain));
    let rm = runtime(&state, &wheels, &["rm", "openvino-2026.4.1"]);
    assert!(rm.status.success(), "{}", text(&rm));
    assert!(!root.join("active-openvino").exists());
}

/// fp32 through OpenVINO is transformers' model: the held-out fixtures' query embeddings, image
/// heads and logits within the same bounds as ONNX Runtime's exact engine.
#[test]
fn openvino_fp32_matches_transformers_on_the_held_out_fixtures() {
    let Some(lib) = installed() else { return };
    for model in ["tiny-a", "tiny-b"] {
        let j = golden_json(model);
        let g = goldens(model);
        let mut det =
            load_detector(&model_dir(model), &ov_options(&lib, Precision::Fp32)).expect("loads");
        assert_eq!(det.backend_name(), "openvino");
        let qs = queries(&j);
        let emb = det.query_embeddings(&qs).expect("embeddings");
        let flat: Vec<f32> = emb.iter().flat_map(|e| e.iter().copied()).collect();
        let d = max_abs_diff(&flat, &g["query_embeds"].data);
        eprintln!("{model}: OpenVINO fp32 query_embeds max |Δ| = {d:.2e}");
        assert!(d <= 1e-5, "{model}: query_embeds max |Δ| = {d}");
        crate::parity::assert_heads_match_transformers(model, &mut det);
    }
}

/// bf16 (only where the CPU computes it): every detection score within 0.02 of transformers'
/// fp32 score (the bound the OpenVINO tier was asked for), boxes within 4% of the image side;
/// elsewhere the setting is refused clearly.
#[test]
fn openvino_bf16_drift_is_bounded_where_the_cpu_has_bf16() {
    let Some(lib) = installed() else { return };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_bf16 = cpuinfo.split_whitespace().any(|f| {
        f == "avx512_bf16" || f == "amx_bf16" || (cfg!(target_arch = "aarch64") && f == "bf16")
    });
    if !has_bf16 {
        let out = bin::command()
            .args(["doctor", "--json"])
            .env("IV_OPENVINO_PRECISION", "bf16")
            .output()
            .expect("doctor runs");
        assert!(!out.status.success());
        assert!(text(&out).contains("openvino_precision"), "{}", text(&out));
        eprintln!("skipped the drift check: this CPU has no bf16 instructions");
        return;
    }
    let mut worst = (0.0f64, 0.0f64);
    for model in ["tiny-a", "tiny-b"] {
        let j = golden_json(model);
        let mut det =
            load_detector(&model_dir(model), &ov_options(&lib, Precision::Bf16)).expect("loads");
        let qs = queries(&j);
        let emb = det.query_embeddings(&qs).expect("embeddings");
        let q: Vec<&[f32]> = emb.iter().map(|e| &e[..]).collect();
        for img in j["images"].as_array().expect("images") {
            let name = img["name"].as_str().expect("name");
            let file = fixtures::fixtures().join(img["file"].as_str().expect("file"));
            if file.extension().is_none_or(|e| e != "png") {
                continue;
            }
            let rgb = intelligent_video::preprocess::decode(
                &std::fs::read(&file).expect("read"),
                &intelligent_video::preprocess::ImageLimits::default(),
            )
            .expect("decode");
            let mut px = Vec::new();
            det.preprocess_into(&rgb, &mut px);
            let out = det.run_images(&px, 1).expect("runs");
            let ours = postprocess::patch_predictions(&out.heads(0), &q, rgb.width, rgb.height);
            let want = Det::list_from_json(&img["detections"]).expect("golden detections");
            assert_eq!(ours.len(), want.len(), "{model}/{name}");
            let side = rgb.width.max(rgb.height) as f64;
            for (o, w) in ours.iter().map(Det::from_patch).zip(&want) {
                worst.0 = worst.0.max((o.score - w.score).abs());
                let b = o
                    .bbox
                    .iter()
                    .zip(&w.bbox)
                    .fold(0.0f64, |m, (a, b)| m.max((a - b).abs() / side));
                worst.1 = worst.1.max(b);
            }
        }
    }
    assert_bf16_is_not_served_from_the_fp32_cache(&lib);
    eprintln!(
        "OpenVINO bf16: max score drift {:.4}, max box drift {:.4} of the side",
        worst.0, worst.1
    );
    assert!(worst.0 <= 0.02, "bf16 score drift {} > 0.02", worst.0);
    // The lossy precisions' box bound (int8's, README "Precision").
    assert!(
        worst.1 <= 0.04,
        "bf16 box drift {} > 4% of the side",
        worst.1
    );
}

/// OpenVINO's model cache keys a blob by the model and device, not by the precision hint: with one
/// cache folder a bf16 engine was the fp32 blob (and a later run crashed). Each setting has its
/// folder, so bf16 after fp32 in one cache gives bf16's outputs, not fp32's.
fn assert_bf16_is_not_served_from_the_fp32_cache(lib: &Path) {
    let cache = tempfile::tempdir().expect("tmp");
    let g = goldens("tiny-a");
    let name = golden_json("tiny-a")["images"][0]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let px = golden_pixels(&g, &name);
    let run = |precision| {
        let mut opts = ov_options(lib, precision);
        if let Provider::OpenVino { cache_dir, .. } = &mut opts.provider {
            *cache_dir = Some(cache.path().to_path_buf());
        }
        let mut det = load_detector(&model_dir("tiny-a"), &opts).expect("loads");
        det.run_images(&px, 1).expect("runs").class_embeds
    };
    let fp32 = run(Precision::Fp32);
    let bf16 = run(Precision::Bf16);
    let again = run(Precision::Bf16);
    assert!(
        max_abs_diff(
            &bf16,
            &fp32.iter().map(|v| f64::from(*v)).collect::<Vec<_>>()
        ) > 1e-4,
        "bf16 gave fp32's outputs"
    );
    assert_eq!(
        bf16, again,
        "a cached bf16 engine gives what the compiled one gave"
    );
    assert!(cache.path().join("CPU-fp32-latency-t0").is_dir());
    assert!(cache.path().join("CPU-bf16-latency-t0").is_dir());
}

fn api_optimization(d: &Daemon) -> Value {
    let r = crate::support::daemon::tcp_request(d.port, "GET", "/api/optimization")
        .expect("optimization answers");
    r.json()
}

/// `optimization_backend = "openvino"` serves through OpenVINO; `auto` keeps ONNX Runtime until
/// `optimize` has measured OpenVINO faster here, then follows the stored measurement either way.
#[test]
fn auto_follows_optimizes_measurement_and_openvino_can_be_forced() {
    let Some(lib) = installed() else { return };
    let lib_s = lib.to_str().expect("utf8");
    let cache = tempfile::tempdir().expect("tmp");
    let cache_s = cache.path().to_str().expect("utf8");
    let env = |backend: &'static str| {
        vec![
            ("IV_OPENVINO_PATH", lib_s),
            ("IV_CACHE_DIR", cache_s),
            ("IV_OPTIMIZATION_BACKEND", backend),
            ("IV_WARMUP_ITERATIONS", "1"),
        ]
    };
    let serve = |backend: &'static str| {
        let mut d = Daemon::start(&env(backend));
        d.wait_ready();
        let o = api_optimization(&d);
        d.assert_detects();
        d.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));
        o
    };
    let forced = serve("openvino");
    assert_eq!(forced["optimization"]["backend"], "openvino", "{forced}");
    assert!(forced["openvino"]["version"]
        .as_str()
        .is_some_and(|v| v.starts_with("2026.4.1")));
    // OpenVINO's compiled-model cache is in the artifact cache, a folder per setting (OpenVINO's
    // own key leaves the precision out).
    let blobs = cache.path().join("openvino/CPU-fp32-latency-t0");
    let count = || std::fs::read_dir(&blobs).map_or(0, |d| d.count());
    assert!(count() >= 2, "{}", blobs.display());

    let before = serve("auto");
    assert_eq!(before["optimization"]["backend"], "cpu", "{before}");
    let why = before["optimization"]["fallbacks"]
        .as_array()
        .expect("fallbacks")
        .iter()
        .find(|f| f["backend"] == "openvino")
        .map(|f| f["reason"].as_str().unwrap_or_default().to_string())
        .expect("openvino skipped with a reason");
    assert!(why.contains("not measured on this host"), "{why}");

    let out = bin::command()
        .arg("optimize")
        .arg("--model")
        .arg(fixtures::model_dir("tiny-a"))
        .arg("--cache-dir")
        .arg(cache.path())
        .env("IV_OPENVINO_PATH", lib_s)
        .output()
        .expect("optimize runs");
    bin::assert_success(&out);
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    let m = &report["cpu_tier"];
    let (ov, ort) = (
        m["openvino_ms"].as_f64().expect("openvino_ms"),
        m["onnxruntime_ms"].as_f64().expect("onnxruntime_ms"),
    );
    assert!(ov > 0.0 && ort > 0.0, "{m}");
    assert_eq!(m["runs"], 3);
    let record = PathBuf::from(report["cpu_tier_record"].as_str().expect("record"));
    assert!(record.starts_with(cache.path().join("cpu-tier")));

    let after = serve("auto");
    let want = if ov < ort { "openvino" } else { "cpu" };
    assert_eq!(after["optimization"]["backend"], want, "{after}");
    assert_eq!(after["openvino"]["measurement"], *m);

    // Both verdicts, whatever this host measured: the stored times decide.
    let mut stored: Value =
        serde_json::from_slice(&std::fs::read(&record).expect("read")).expect("json");
    stored["openvino_ms"] = Value::from(ort * 2.0);
    std::fs::write(&record, stored.to_string()).expect("write");
    let slower = serve("auto");
    assert_eq!(slower["optimization"]["backend"], "cpu");
    let why = slower["optimization"]["fallbacks"].to_string();
    assert!(why.contains("measured slower on this host"), "{why}");
    stored["openvino_ms"] = Value::from(ort / 2.0);
    std::fs::write(&record, stored.to_string()).expect("write");
    assert_eq!(serve("auto")["optimization"]["backend"], "openvino");
    // A record of another OpenVINO is stale.
    stored["openvino_version"] = Value::from("2025.0.0");
    std::fs::write(&record, stored.to_string()).expect("write");
    let stale = serve("auto");
    assert_eq!(stale["optimization"]["backend"], "cpu");
    assert!(
        stale["optimization"]["fallbacks"]
            .to_string()
            .contains("measured with another OpenVINO"),
        "{stale}"
    );
}

/// Forced without a runtime, OpenVINO is skipped with the command that installs one, and the
/// CPU engine serves.
#[test]
fn openvino_without_a_runtime_falls_back_with_the_install_command() {
    let mut d = Daemon::start(&[("IV_OPTIMIZATION_BACKEND", "openvino")]);
    d.wait_ready();
    let o = api_optimization(&d);
    assert_eq!(o["optimization"]["backend"], "cpu", "{o}");
    let fb = &o["optimization"]["fallbacks"][0];
    assert_eq!(fb["backend"], "openvino");
    assert!(
        fb["reason"]
            .as_str()
            .is_some_and(|r| r.contains("runtime install --pip openvino==2026.4.1")),
        "{fb}"
    );
    assert!(o["openvino"].is_null(), "{o}");
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));
}

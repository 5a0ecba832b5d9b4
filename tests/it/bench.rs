//! `bench`: the report's numbers hang together, the backend choice reports the skipped GPU tiers,
//! `--precision int8` reports its drift, and bad arguments fail with a message.

use crate::support::{bin, fixtures};

fn bench(extra: &[&str]) -> std::process::Output {
    bin::command()
        .arg("bench")
        .arg("--model")
        .arg(fixtures::model_dir("tiny-a"))
        .args(["--num-images", "3"])
        .args(extra)
        .output()
        .expect("runs")
}

fn json(out: &std::process::Output) -> serde_json::Value {
    bin::assert_success(out);
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

#[test]
fn compare_report_and_backend_choice() {
    let gpu = intelligent_video::gpu::discover();
    let r = json(&bench(&["--compare", "--json"]));
    let opt = &r["optimized"];
    let eager = &r["eager"];
    assert_eq!(opt["images"], 3);
    assert_eq!(eager["images"], 3);
    let (o, e) = (
        opt["batch_latency"]["p50_ms"].as_f64().expect("p50"),
        eager["batch_latency"]["p50_ms"].as_f64().expect("p50"),
    );
    assert!(o > 0.0 && e > 0.0);
    let speedup = r["speedup"].as_f64().expect("speedup");
    assert!((speedup - e / o).abs() < 1e-9, "{speedup} vs {}", e / o);
    assert!(opt["batch_latency"]["p95_ms"].as_f64() >= opt["batch_latency"]["p50_ms"].as_f64());
    assert!(r["peak_rss_mb"].as_f64().is_some_and(|m| m > 1.0));
    // The rules' cost: 10 zones, 10 lines, the tracking scene's 50 objects, events published.
    let rules = &r["rules"];
    assert_eq!(
        (
            rules["zones"].clone(),
            rules["lines"].clone(),
            rules["objects"].clone()
        ),
        (10.into(), 10.into(), 50.into())
    );
    assert!(
        rules["events_per_frame"].as_f64().is_some_and(|e| e > 0.5),
        "{rules}"
    );
    let us = rules["frame_us"].as_f64().expect("frame_us");
    let share = rules["share_of_frame"].as_f64().expect("share");
    assert!(
        us > 0.0 && (share - us / (o * 1e3)).abs() < 1e-6 * share.max(1.0),
        "{rules}"
    );
    if !gpu.available {
        assert_eq!(r["backend"], "cpu");
        let skipped: Vec<&str> = r["fallbacks"]
            .as_array()
            .expect("fallbacks")
            .iter()
            .map(|f| f["backend"].as_str().expect("name"))
            .collect();
        assert_eq!(skipped, vec!["tensorrt", "tensorrt_rtx", "cuda"]);
        assert_eq!(r["fallbacks"][0]["reason"].as_str(), gpu.reason.as_deref());
    }
    // The one-line summary carries the report's own headline numbers.
    let summary = r["summary"].as_str().expect("summary");
    let ips = opt["images_per_s"].as_f64().expect("images/s");
    for part in [
        format!(
            "tiny-a 96x96 on {} fp32",
            r["backend"].as_str().expect("backend")
        ),
        format!("{ips:.3} images/s"),
        format!("p50 {o:.1} ms per batch of 1"),
        format!("{speedup:.2}x faster than eager"),
    ] {
        assert!(summary.contains(&part), "{part:?} not in {summary:?}");
    }
    assert!(!summary.contains('\n'), "{summary:?}");
    let r = json(&bench(&["--backend", "cpu", "--json"]));
    assert_eq!(r["backend"], "cpu");
    assert_eq!(r["fallbacks"], serde_json::json!([]));
    assert!(r["eager"].is_null() && r["speedup"].is_null());
}

#[test]
fn the_text_report_ends_with_the_summary_line() {
    let out = bench(&["--backend", "cpu"]);
    bin::assert_success(&out);
    let text = String::from_utf8(out.stdout).expect("utf8");
    let last = text.trim_end().lines().last().expect("a line");
    assert!(
        last.starts_with("summary: intelligent-video ") && last.contains(" images/s, p50 "),
        "{text}"
    );
    // Not a terminal: no progress bar, no stage lines on stderr.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains('\r') && !err.contains("loading the model"),
        "{err}"
    );
}

#[test]
fn int8_reports_drift_over_every_patch() {
    let r = json(&bench(&[
        "--backend",
        "cpu",
        "--precision",
        "int8",
        "--json",
    ]));
    let d = &r["int8_drift"];
    // tiny-a: 96×96 at patch 16 → 36 patches.
    assert_eq!(d["patches"], 36);
    let same = d["same_label"].as_f64().expect("same_label");
    assert!((0.0..=1.0).contains(&same));
    let max = d["max_score"].as_f64().expect("max");
    let mean = d["mean_score"].as_f64().expect("mean");
    assert!(0.0 <= mean && mean <= max && max < 1.0, "{mean} {max}");
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let out = bench(&["--backend", "gpu"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--backend"));
    let out = bin::command()
        .args(["bench", "--model", "/nonexistent/model", "--json"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model"), "{err}");
    assert!(out.stdout.is_empty());
}

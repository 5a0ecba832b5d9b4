//! Reads a profile written by ONNX Runtime's profiler (Chrome trace JSON) into per-op-type totals:
//! what `bench --profile` prints. Node events come as `<node>_fence_before`, `<node>_kernel_time`
//! and `<node>_fence_after`; only kernel times count. Session events named `model_run` give the runs
//! and their wall time, so the part of a run spent outside kernels (thread-pool hand-offs, the
//! executor) shows as `(outside kernels)`. The first run (a warm-up: first-touch of buffers) is left
//! out when there are others.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Time of one op type over the profiled runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpTime {
    pub op: String,
    /// Mean per run.
    pub ms_per_run: f64,
    /// Of the mean run's wall time.
    pub share: f64,
    /// Kernel calls per run.
    pub calls_per_run: f64,
}

/// A profile summed by op type, most expensive first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileSummary {
    pub file: String,
    pub runs: usize,
    /// Mean wall time of a run (`model_run`).
    pub run_ms: f64,
    pub ops: Vec<OpTime>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    cat: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    ts: f64,
    #[serde(default)]
    dur: f64,
    #[serde(default)]
    args: Args,
}

#[derive(Deserialize, Default)]
struct Args {
    #[serde(default)]
    op_name: String,
}

/// Sums a profile's kernel times by op type; `file` names it in the summary.
pub fn summarize(json: &str, file: &str) -> Result<ProfileSummary, String> {
    let events: Vec<Event> = serde_json::from_str(json)
        .map_err(|e| format!("{file}: not an ONNX Runtime profile: {e}"))?;
    let all_runs: Vec<&Event> = events
        .iter()
        .filter(|e| e.cat == "Session" && e.name == "model_run")
        .collect();
    // The warm-up run's window, when there are others to count.
    let skip = match all_runs.iter().min_by(|a, b| a.ts.total_cmp(&b.ts)) {
        Some(first) if all_runs.len() > 1 => Some((first.ts, first.ts + first.dur)),
        _ => None,
    };
    let in_skipped = |e: &Event| skip.is_some_and(|(a, b)| e.ts >= a && e.ts <= b);
    let mut runs = 0usize;
    let mut run_us = 0f64;
    let mut by_op: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for e in events.iter().filter(|e| !in_skipped(e)) {
        match e.cat.as_str() {
            "Session" if e.name == "model_run" => {
                runs += 1;
                run_us += e.dur;
            }
            "Node" if e.name.ends_with("_kernel_time") => {
                let t = by_op.entry(e.args.op_name.clone()).or_default();
                t.0 += e.dur;
                t.1 += 1;
            }
            _ => {}
        }
    }
    if runs == 0 {
        return Err(format!("{file}: the profile has no model_run"));
    }
    let n = runs as f64;
    let run_ms = run_us / 1e3 / n;
    let kernels_us: f64 = by_op.values().map(|t| t.0).sum();
    let mut ops: Vec<OpTime> = by_op
        .into_iter()
        .map(|(op, (us, calls))| OpTime {
            op,
            ms_per_run: us / 1e3 / n,
            share: us / run_us.max(f64::MIN_POSITIVE),
            calls_per_run: calls as f64 / n,
        })
        .collect();
    ops.push(OpTime {
        op: "(outside kernels)".into(),
        ms_per_run: (run_us - kernels_us).max(0.0) / 1e3 / n,
        share: ((run_us - kernels_us) / run_us.max(f64::MIN_POSITIVE)).max(0.0),
        calls_per_run: 0.0,
    });
    ops.sort_by(|a, b| b.ms_per_run.total_cmp(&a.ms_per_run));
    Ok(ProfileSummary {
        file: file.to_string(),
        runs,
        run_ms,
        ops,
    })
}

/// The summary as text lines, the `top` most expensive op types.
pub fn render(p: &ProfileSummary, top: usize) -> String {
    let mut s = format!(
        "profile {} ({} runs of {:.1} ms; per run):\n",
        p.file, p.runs, p.run_ms
    );
    for o in p.ops.iter().take(top) {
        s.push_str(&format!(
            "  {:<28} {:>10.1} ms {:>6.1}% {:>7.1} calls\n",
            o.op,
            o.ms_per_run,
            o.share * 100.0,
            o.calls_per_run
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_times_are_summed_by_op_and_the_rest_is_outside_kernels() {
        // A warm-up run (ts 0-5000, left out), then two runs.
        let json = r#"[
          {"cat":"Session","name":"session_initialization","ts":0,"dur":999},
          {"cat":"Node","name":"a_kernel_time","ts":10,"dur":4000,"args":{"op_name":"MatMul"}},
          {"cat":"Session","name":"model_run","ts":5,"dur":5000},
          {"cat":"Node","name":"a_fence_before","ts":6000,"dur":1,"args":{"op_name":"MatMul"}},
          {"cat":"Node","name":"a_kernel_time","ts":6001,"dur":600,"args":{"op_name":"MatMul"}},
          {"cat":"Node","name":"b_kernel_time","ts":6601,"dur":200,"args":{"op_name":"Softmax"}},
          {"cat":"Session","name":"model_run","ts":6000,"dur":1000},
          {"cat":"Node","name":"a_kernel_time","ts":7001,"dur":400,"args":{"op_name":"MatMul"}},
          {"cat":"Node","name":"b_kernel_time","ts":7401,"dur":200,"args":{"op_name":"Softmax"}},
          {"cat":"Session","name":"model_run","ts":7000,"dur":1000}
        ]"#;
        let p = summarize(json, "x.json").expect("parses");
        assert_eq!(p.runs, 2);
        assert_eq!(p.run_ms, 1.0);
        let names: Vec<&str> = p.ops.iter().map(|o| o.op.as_str()).collect();
        assert_eq!(names, vec!["MatMul", "(outside kernels)", "Softmax"]);
        assert_eq!(p.ops[0].ms_per_run, 0.5);
        assert_eq!(p.ops[0].share, 0.5);
        assert_eq!(p.ops[0].calls_per_run, 1.0);
        assert_eq!(p.ops[1].ms_per_run, 0.3);
        assert_eq!(p.ops[2].ms_per_run, 0.2);
        assert!(render(&p, 2).contains("MatMul"));
        assert!(!render(&p, 2).contains("Softmax"));
        assert!(summarize("[]", "e.json").is_err());
        assert!(summarize("{", "b.json").is_err());
    }
}

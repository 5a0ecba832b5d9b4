//! The CPU tier's choice by measurement: `optimize` times ONNX Runtime's CPU engine and OpenVINO
//! side by side on this host and stores the result in the artifact cache
//! (`<cache_dir>/cpu-tier/<model>-<precision>-<device>.json`); `auto` uses OpenVINO only when such
//! a record says it was faster, for this model, these library versions and this CPU. This module
//! owns the record and the verdict.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::sections::EngineSettings;

/// Folder of the records under the cache folder.
const DIR: &str = "cpu-tier";

/// One side-by-side measurement of the two CPU engines on this host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CpuTierMeasurement {
    pub model_fingerprint: String,
    /// The CPU as [`host_cpu`] names it: model, SIMD flags, and oneDNN's ISA limit when set.
    pub cpu: String,
    pub onnxruntime_version: String,
    /// ONNX Runtime's CPU precision as its cache key names it (`fp32`, `int8-7bit`, …).
    pub onnxruntime_precision: String,
    pub openvino_version: String,
    pub openvino_precision: String,
    pub openvino_device: String,
    /// Median milliseconds of the image graph on one 1280x720 frame, each engine.
    pub onnxruntime_ms: f64,
    pub openvino_ms: f64,
    /// Timed runs per engine (interleaved, after one warm-up each).
    pub runs: usize,
    /// Seconds since the Unix epoch.
    pub measured_at: u64,
}

impl CpuTierMeasurement {
    /// OpenVINO's time over ONNX Runtime's (below 1: OpenVINO is faster).
    pub fn ratio(&self) -> f64 {
        self.openvino_ms / self.onnxruntime_ms
    }

    /// Whether OpenVINO measured faster.
    pub fn openvino_faster(&self) -> bool {
        self.openvino_ms < self.onnxruntime_ms
    }
}

/// This host's CPU for a record: its model and the SIMD flags that select either library's kernels,
/// and `ONEDNN_MAX_CPU_ISA` when set (OpenVINO's CPU plugin obeys it: a measurement made under a
/// limit says nothing of the unlimited CPU, and the other way round).
pub fn host_cpu() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let (model, flags) = crate::cpu::describe(&cpuinfo);
    let mut s = format!(
        "{} ({})",
        model.unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        flags.join(" ")
    );
    if let Some(isa) = std::env::var_os("ONEDNN_MAX_CPU_ISA") {
        s.push_str(&format!(" ONEDNN_MAX_CPU_ISA={}", isa.to_string_lossy()));
    }
    s
}

/// The record's file for this model and the configured OpenVINO precision and device.
pub fn record_path(cfg: &EngineSettings, fingerprint: &str) -> PathBuf {
    let short: String = fingerprint.chars().take(16).collect();
    let device: String = cfg
        .openvino_device
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    cfg.cache_dir.join(DIR).join(format!(
        "{short}-{}-{device}.json",
        cfg.openvino_precision.name()
    ))
}

/// The stored measurement, when there is a readable one.
pub fn load(cfg: &EngineSettings, fingerprint: &str) -> Option<CpuTierMeasurement> {
    read(&record_path(cfg, fingerprint))
}

fn read(path: &Path) -> Option<CpuTierMeasurement> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Stores a measurement (atomic replace).
pub fn save(cfg: &EngineSettings, m: &CpuTierMeasurement) -> std::io::Result<PathBuf> {
    let path = record_path(cfg, &m.model_fingerprint);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::to_vec_pretty(m).map_err(std::io::Error::other)?;
    crate::fsutil::write_file_atomic(&path, &json)?;
    Ok(path)
}

/// What the current host and libraries are, to check a record against.
#[derive(Debug, Clone, PartialEq)]
pub struct Host<'a> {
    pub fingerprint: &'a str,
    pub cpu: &'a str,
    pub onnxruntime_version: &'a str,
    pub onnxruntime_precision: &'a str,
    pub openvino_version: &'a str,
}

/// `Ok` when `m` says OpenVINO is faster here, for this model and these libraries; else why
/// ONNX Runtime's CPU engine stays.
pub fn verdict(m: Option<&CpuTierMeasurement>, host: &Host<'_>) -> Result<(), String> {
    let Some(m) = m else {
        return Err("not measured on this host yet: `intelligent-video optimize` times it against ONNX Runtime and `auto` uses the faster".into());
    };
    let stale = [
        ("model", m.model_fingerprint.as_str(), host.fingerprint),
        ("CPU", m.cpu.as_str(), host.cpu),
        (
            "ONNX Runtime",
            m.onnxruntime_version.as_str(),
            host.onnxruntime_version,
        ),
        (
            "cpu_precision",
            m.onnxruntime_precision.as_str(),
            host.onnxruntime_precision,
        ),
        (
            "OpenVINO",
            m.openvino_version.as_str(),
            host.openvino_version,
        ),
    ];
    if let Some((what, then, now)) = stale.iter().find(|(_, a, b)| a != b) {
        return Err(format!(
            "measured with another {what} ({then}; now {now}): run `intelligent-video optimize` again"
        ));
    }
    if m.openvino_faster() {
        Ok(())
    } else {
        Err(format!(
            "measured slower on this host: {:.0} ms against ONNX Runtime's {:.0} ms ({:.2}x)",
            m.openvino_ms,
            m.onnxruntime_ms,
            m.ratio()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn record(ov: f64, ort: f64) -> CpuTierMeasurement {
        CpuTierMeasurement {
            model_fingerprint: "abcd".repeat(16),
            cpu: "cpu x".into(),
            onnxruntime_version: "1.31.1".into(),
            onnxruntime_precision: "fp32".into(),
            openvino_version: "2026.4.1".into(),
            openvino_precision: "bf16".into(),
            openvino_device: "CPU".into(),
            onnxruntime_ms: ort,
            openvino_ms: ov,
            runs: 3,
            measured_at: 1,
        }
    }

    fn host(m: &CpuTierMeasurement) -> Host<'_> {
        Host {
            fingerprint: &m.model_fingerprint,
            cpu: &m.cpu,
            onnxruntime_version: &m.onnxruntime_version,
            onnxruntime_precision: &m.onnxruntime_precision,
            openvino_version: &m.openvino_version,
        }
    }

    #[test]
    fn only_a_faster_matching_record_chooses_openvino() {
        let fast = record(240.0, 494.0);
        assert_eq!(verdict(Some(&fast), &host(&fast)), Ok(()));
        let slow = record(520.0, 494.0);
        let why = verdict(Some(&slow), &host(&slow)).expect_err("slower");
        assert!(
            why.contains("measured slower") && why.contains("1.05x"),
            "{why}"
        );
        let why = verdict(None, &host(&fast)).expect_err("none");
        assert!(why.contains("not measured"), "{why}");
        let mut other = host(&fast);
        other.openvino_version = "2026.5.0";
        let why = verdict(Some(&fast), &other).expect_err("stale");
        assert!(
            why.contains("another OpenVINO (2026.4.1; now 2026.5.0)"),
            "{why}"
        );
        let mut other = host(&fast);
        other.cpu = "cpu y";
        assert!(verdict(Some(&fast), &other).is_err());
    }

    #[test]
    fn records_round_trip_per_precision_and_device() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = Config {
            cache_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let m = record(240.0, 494.0);
        let saved = save(&c.engine(), &m).expect("save");
        assert_eq!(load(&c.engine(), &m.model_fingerprint), Some(m.clone()));
        assert!(
            saved.ends_with("cpu-tier/abcdabcdabcdabcd-fp32-CPU.json"),
            "{}",
            saved.display()
        );
        c.openvino_precision = crate::vocab::Precision::Bf16;
        assert_eq!(load(&c.engine(), &m.model_fingerprint), None);
        c.openvino_device = "GPU.1".into();
        assert!(record_path(&c.engine(), "ff").ends_with("ff-bf16-GPU_1.json"));
    }
}

//! `intelligent-video optimize [--force] [--benchmark]`: builds (or rebuilds) the optimized artifact
//! of the configured backend into the cache, like the Python service's `optimize_model.py`; with
//! `--benchmark` it measures the speedup over the eager baseline and stores it beside the artifact
//! (the daemon then reports it as `speedup_estimate`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Serialize;

use super::bench::{median_ms, synthetic_frame, time_inference};
use crate::config::{Config, ConfigOverrides};
use crate::engine;
use crate::engine::{load_detector, DetectorOptions};

#[derive(Debug, Clone, clap::Args)]
pub struct OptimizeArgs {
    /// Configuration file (default /etc/intelligent-video/config.toml when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Rebuild even when a valid artifact is cached.
    #[arg(long)]
    pub force: bool,
    /// Measure the optimized engine against the eager baseline and store the speedup.
    #[arg(long)]
    pub benchmark: bool,
    /// Inference runs per side for --benchmark.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[command(flatten)]
    pub overrides: ConfigOverrides,
}

/// What `optimize` did.
#[derive(Debug, Serialize)]
pub struct OptimizeReport {
    pub model: String,
    pub backend: String,
    pub cached: bool,
    pub optimization_time: f64,
    pub artifact: Option<String>,
    pub fallbacks: Vec<engine::Fallback>,
    pub optimized_p50_ms: Option<f64>,
    pub eager_p50_ms: Option<f64>,
    pub speedup: Option<f64>,
    /// ONNX Runtime's CPU engine against OpenVINO on this host, when an OpenVINO runtime is
    /// installed and no GPU tier serves; `auto` uses OpenVINO only when it measured faster.
    pub cpu_tier: Option<engine::cpu_tier::CpuTierMeasurement>,
    /// Where that measurement is stored.
    pub cpu_tier_record: Option<String>,
}

pub fn run(args: &OptimizeArgs) -> anyhow::Result<OptimizeReport> {
    let cfg =
        Config::load(args.config.as_deref(), &args.overrides).context("invalid configuration")?;
    let dir = cfg.installed_model_dir().map_err(anyhow::Error::msg)?;
    if !cfg.enable_optimization {
        bail!("enable_optimization is false: there is no optimized artifact to build");
    }
    let mut eng = engine::load(&cfg.engine(), &dir, args.force, &|s: &str| eprintln!("{s}"))
        .map_err(anyhow::Error::msg)?;
    let mut report = OptimizeReport {
        model: cfg.model.clone(),
        backend: eng.backend.clone(),
        cached: eng.cached,
        optimization_time: eng.build_time,
        artifact: eng.entry.as_ref().map(|e| e.dir.display().to_string()),
        fallbacks: eng.fallbacks.clone(),
        optimized_p50_ms: None,
        eager_p50_ms: None,
        speedup: None,
        cpu_tier: None,
        cpu_tier_record: None,
    };
    let gpu_tier = !matches!(eng.backend.as_str(), "cpu" | "openvino");
    let openvino = engine::openvino_library(&cfg.engine());
    if args.benchmark {
        let frame = synthetic_frame(1280, 720);
        let runs = args.runs.max(1);
        eprintln!("benchmark: optimized");
        let opt = median_ms(&time_inference(
            &mut eng.detector,
            &frame,
            runs,
            1,
            &|_| {},
        )?);
        drop(eng.detector);
        eprintln!("benchmark: eager");
        let provider = engine::chain(&cfg.engine())
            .into_iter()
            .find(|p| p.name() == eng.backend)
            .unwrap_or(crate::backend::Provider::Cpu);
        let mut eager = load_detector(
            &dir,
            &DetectorOptions {
                optimize: false,
                // The eager baseline: exact fp32, nothing cached.
                precision: crate::vocab::Precision::Fp32,
                ..DetectorOptions::from_config(&cfg.engine(), provider)
            },
        )?;
        let base = median_ms(&time_inference(&mut eager, &frame, runs, 1, &|_| {})?);
        let speedup = base / opt;
        if let Some(entry) = eng.entry.as_mut() {
            crate::cache::set_speedup(entry, speedup)
                .context("cannot store the measured speedup")?;
        }
        report.optimized_p50_ms = Some(opt);
        report.eager_p50_ms = Some(base);
        report.speedup = Some(speedup);
    } else {
        drop(eng.detector);
    }
    if let (Some(lib), false) = (openvino, gpu_tier) {
        let m = measure_cpu_tiers(&cfg, &dir, &lib, args.runs.max(3))?;
        let path = engine::cpu_tier::save(&cfg.engine(), &m)
            .context("cannot store the CPU tiers' measurement")?;
        eprintln!(
            "OpenVINO {} ({}) {:.0} ms, ONNX Runtime {} ({}) {:.0} ms: {}",
            m.openvino_version,
            m.openvino_precision,
            m.openvino_ms,
            m.onnxruntime_version,
            m.onnxruntime_precision,
            m.onnxruntime_ms,
            if m.openvino_faster() {
                "OpenVINO is faster here; `auto` uses it from the next start"
            } else {
                "ONNX Runtime is faster here; `auto` keeps it"
            }
        );
        report.cpu_tier = Some(m);
        report.cpu_tier_record = Some(path.display().to_string());
    }
    Ok(report)
}

/// Times ONNX Runtime's CPU engine and OpenVINO on this host, interleaved run by run after one
/// warm-up each (so that load and heat fall on both alike), as the daemon would build them.
fn measure_cpu_tiers(
    cfg: &Config,
    dir: &std::path::Path,
    openvino: &std::path::Path,
    runs: usize,
) -> anyhow::Result<engine::cpu_tier::CpuTierMeasurement> {
    use crate::backend::Provider;
    let settings = cfg.engine();
    let fingerprint = crate::cache::model_fingerprint(dir)
        .with_context(|| format!("cannot fingerprint {}", dir.display()))?;
    let ort_opts = DetectorOptions::from_config(&settings, Provider::Cpu);
    let ov_opts = DetectorOptions::from_config(&settings, engine::openvino_provider(&settings));
    eprintln!("measuring: ONNX Runtime's CPU engine against OpenVINO ({runs} runs each)");
    let mut ort = load_detector(dir, &ort_opts).context("ONNX Runtime's CPU engine")?;
    let mut ov = load_detector(dir, &ov_opts).context("OpenVINO")?;
    let frame = synthetic_frame(1280, 720);
    let (mut ort_px, mut ov_px) = (Vec::new(), Vec::new());
    ort.preprocess_into(&frame, &mut ort_px);
    ov.preprocess_into(&frame, &mut ov_px);
    let time = |det: &mut crate::pipeline::Detector, px: &[f32]| {
        let t = std::time::Instant::now();
        det.run_images(px, 1).map(|_| t.elapsed())
    };
    time(&mut ort, &ort_px).context("ONNX Runtime warm-up")?;
    time(&mut ov, &ov_px).context("OpenVINO warm-up")?;
    let (mut ort_t, mut ov_t) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        ort_t.push(time(&mut ort, &ort_px).context("ONNX Runtime")?);
        ov_t.push(time(&mut ov, &ov_px).context("OpenVINO")?);
    }
    Ok(engine::cpu_tier::CpuTierMeasurement {
        model_fingerprint: fingerprint,
        cpu: engine::cpu_tier::host_cpu(),
        onnxruntime_version: crate::backend::ort::runtime_version().unwrap_or_default(),
        onnxruntime_precision: ort_opts.cpu_key_precision().into(),
        openvino_version: crate::backend::openvino::version(openvino)?,
        openvino_precision: cfg.openvino_precision.name().into(),
        openvino_device: cfg.openvino_device.clone(),
        onnxruntime_ms: median_ms(&ort_t),
        openvino_ms: median_ms(&ov_t),
        runs,
        measured_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

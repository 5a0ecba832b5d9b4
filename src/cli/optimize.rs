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
    };
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
    }
    Ok(report)
}

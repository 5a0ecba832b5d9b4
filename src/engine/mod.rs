//! The engine: the one owner of turning a model directory into a running `Detector`. It opens the
//! model directory and tokenizer once, picks the provider (the explicit fallback chain
//! TensorRT → TensorRT-RTX → CUDA → CPU for `auto`, GPU discovery and pre-checks first, each failed tier recorded
//! with its reason for `/api/optimization` and the log) and the cache entry, and hands the backend
//! one `SessionPlan`. `build` decides the graph forms and sources, `artifact` owns the cached
//! artifact's files and key.

mod artifact;
mod build;
mod cached;
mod error;

use std::path::Path;

use serde::Serialize;

pub(crate) use artifact::library;
pub use artifact::{artifact_file, artifact_key, weights_file, Artifact};
pub use build::{int8_range_for_runtime, load_detector, load_detector_with, DetectorOptions};
pub use error::EngineError;

use crate::backend::Provider;
use crate::cache;
use crate::config::sections::EngineSettings;
use crate::config::BackendPreference;
use crate::gpu::{self, GpuInfo};
use crate::model::ModelDir;
use crate::pipeline::Detector;

/// A backend that was tried (or skipped) and not used, with the reason.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Fallback {
    pub backend: String,
    pub reason: String,
}

/// The loaded engine and how it was chosen.
pub struct Engine {
    pub detector: Detector,
    pub backend: String,
    pub fallbacks: Vec<Fallback>,
    pub gpu: GpuInfo,
    /// Seconds spent building the chosen engine (graphs + session creation / optimisation), or
    /// loading it from the cache.
    pub build_time: f64,
    /// The optimised artifact came from the cache.
    pub cached: bool,
    /// The cache entry in use (CPU provider with optimisation enabled).
    pub entry: Option<cache::Entry>,
}

/// Documented static speedup estimates of the optimised engine over the eager baseline, shown
/// until `optimize --benchmark` or `bench --compare` measures one on this machine.
pub fn static_speedup(backend: &str) -> f64 {
    match backend {
        "tensorrt" => 3.0,
        "cuda" => 1.5,
        _ => 1.2,
    }
}

/// The speedup to report: the measured one when the cache entry has it, else the static estimate.
pub fn speedup_estimate(e: &Engine) -> f64 {
    e.entry
        .as_ref()
        .and_then(|x| x.meta.speedup)
        .unwrap_or_else(|| static_speedup(&e.backend))
}

/// The providers to try, in order, for a preference (the CPU always ends the chain).
pub fn chain(cfg: &EngineSettings) -> Vec<Provider> {
    let trt = Provider::TensorRt {
        precision: cfg.tensorrt_precision,
        max_batch: cfg.max_batch,
        max_queries: cfg.max_queries,
        // Shared by all engine builds; created when TensorRT is tried.
        timing_cache: cfg.optimize.then(|| cfg.cache_dir.join("tensorrt-timing")),
    };
    let rtx = Provider::TensorRtRtx {
        max_batch: cfg.max_batch,
        max_queries: cfg.max_queries,
        runtime_cache: cfg
            .optimize
            .then(|| cfg.cache_dir.join("tensorrt-rtx-runtime")),
    };
    let cuda = Provider::Cuda {
        cuda_graphs: cfg.cuda_graphs,
        exhaustive_conv: cfg.exhaustive_conv,
    };
    match cfg.backend {
        BackendPreference::Auto => vec![trt, rtx, cuda, Provider::Cpu],
        BackendPreference::Tensorrt => vec![trt, Provider::Cpu],
        BackendPreference::TensorrtRtx => vec![rtx, Provider::Cpu],
        BackendPreference::Cuda | BackendPreference::TorchCompile => vec![cuda, Provider::Cpu],
        BackendPreference::Cpu | BackendPreference::Eager => vec![Provider::Cpu],
    }
}

/// Logs the one-line notice for the Python service's backend names.
pub fn alias_notice(pref: BackendPreference) -> Option<&'static str> {
    match pref {
        BackendPreference::TorchCompile => {
            Some("optimization_backend \"torch_compile\" is an alias of \"cuda\" here")
        }
        BackendPreference::Eager => {
            Some("optimization_backend \"eager\" is an alias of \"cpu\" here")
        }
        _ => None,
    }
}

/// Why `provider` cannot be tried here, checked before anything is built: no GPU, an ONNX Runtime
/// build without the provider, or (TensorRT) no TensorRT library.
fn unavailable(cfg: &EngineSettings, provider: &Provider, gpu: &GpuInfo) -> Option<String> {
    if *provider == Provider::Cpu {
        return None;
    }
    if !gpu.available {
        return Some(gpu.reason.clone().unwrap_or_else(|| "no GPU".into()));
    }
    if let Err(e) =
        crate::backend::ort::provider_available(provider, artifact::library(cfg).as_deref())
    {
        return Some(e.to_string());
    }
    if let Provider::TensorRt { .. } = provider {
        if let Err(e) = gpu::tensorrt_version(artifact::ort_dir().as_deref()) {
            return Some(e);
        }
    }
    None
}

/// The first provider of `cfg`'s chain that passes the pre-checks, with the skipped tiers (for
/// commands that build their own sessions, like `bench`).
pub fn first_available(cfg: &EngineSettings) -> (Provider, Vec<Fallback>) {
    let gpu = gpu::discover();
    let mut fallbacks = Vec::new();
    for provider in chain(cfg) {
        match unavailable(cfg, &provider, &gpu) {
            None => return (provider, fallbacks),
            Some(reason) => fallbacks.push(Fallback {
                backend: provider.name().into(),
                reason,
            }),
        }
    }
    (Provider::Cpu, fallbacks)
}

/// Logs what GPU discovery found.
fn log_gpu(gpu: &GpuInfo) {
    match &gpu.reason {
        None => {
            tracing::info!(name = ?gpu.name, cc = ?gpu.compute_capability, memory_mb = ?gpu.memory_mb, driver = ?gpu.driver_version, "GPU found")
        }
        Some(r) => tracing::info!(reason = %r, "no GPU"),
    }
}

/// The TensorRT timing cache folder, or none (in memory) when it cannot be created.
fn with_timing_cache_folder(mut provider: Provider) -> Provider {
    if let Provider::TensorRt {
        timing_cache: tc @ Some(_),
        ..
    } = &mut provider
    {
        if let Some(Err(e)) = tc.as_deref().map(std::fs::create_dir_all) {
            tracing::warn!(error = %e, "no TensorRT timing cache folder; timing cache in memory");
            *tc = None;
        }
    }
    if let Provider::TensorRtRtx {
        runtime_cache: rc @ Some(_),
        ..
    } = &mut provider
    {
        if let Some(Err(e)) = rc.as_deref().map(std::fs::create_dir_all) {
            tracing::warn!(error = %e, "no TensorRT-RTX runtime cache folder; its cache stays in memory");
            *rc = None;
        }
    }
    provider
}

/// Builds `opts.provider`'s backend: through the artifact cache when optimisation is on and the
/// provider caches artifacts, else in memory.
fn build_on(
    ctx: &cached::CacheRequest<'_>,
    opts: &DetectorOptions,
    status: &dyn Fn(&str),
) -> Result<cached::Built, EngineError> {
    if ctx.fingerprint.is_some() && opts.provider.caches_artifacts() {
        return cached::load_cached(ctx, opts, status);
    }
    status(&format!("building engine ({})", opts.provider.name()));
    cached::in_memory(ctx.model, opts)
}

/// The model's fingerprint for cache keys, or `None` when nothing is cached (optimisation off, or
/// the files cannot be read: the engine is then built in memory).
fn fingerprint(cfg: &EngineSettings, dir: &Path) -> Option<String> {
    if !cfg.optimize {
        return None;
    }
    match cache::model_fingerprint(dir) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot fingerprint the model; building in memory");
            None
        }
    }
}

/// Loads `dir` on the first provider of the chain that works (`force`: rebuild the cached
/// artifact). The model directory is opened and fingerprinted once, the tokenizer loads beside
/// the first session build.
pub fn load(
    cfg: &EngineSettings,
    dir: &Path,
    force: bool,
    status: &dyn Fn(&str),
) -> Result<Engine, EngineError> {
    if let Some(n) = alias_notice(cfg.backend) {
        tracing::info!("{n}");
    }
    let gpu = gpu::discover();
    log_gpu(&gpu);
    let model = ModelDir::open(dir)?;
    let tokenizer = build::spawn_tokenizer(&model);
    let fingerprint = fingerprint(cfg, dir);
    let ctx = cached::CacheRequest {
        cfg,
        model: &model,
        fingerprint: fingerprint.as_deref(),
        gpu: &gpu,
        force,
    };
    let mut fallbacks = Vec::new();
    for provider in chain(cfg) {
        let name = provider.name();
        if let Some(reason) = unavailable(cfg, &provider, &gpu) {
            tracing::warn!(backend = name, %reason, "backend unavailable; falling back");
            fallbacks.push(Fallback {
                backend: name.into(),
                reason,
            });
            continue;
        }
        let opts = DetectorOptions::from_config(cfg, with_timing_cache_folder(provider));
        let built = build_on(&ctx, &opts, status);
        match built {
            Ok(b) => {
                let detector = build::assemble(&model, tokenizer, Ok(b.backend), &opts)?;
                return Ok(Engine {
                    detector,
                    backend: name.into(),
                    fallbacks,
                    gpu: gpu.clone(),
                    build_time: b.build_time,
                    cached: b.cached,
                    entry: b.entry,
                });
            }
            // A model error is not the provider's fault: the CPU would fail the same way.
            Err(e @ EngineError::Model(_)) => return Err(e),
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(backend = name, %reason, "backend failed; falling back");
                fallbacks.push(Fallback {
                    backend: name.into(),
                    reason,
                });
            }
        }
    }
    // The tokenizer's own error comes first.
    build::join_tokenizer(tokenizer)?;
    Err(EngineError::NoBackend(
        fallbacks
            .last()
            .map(|f| f.reason.clone())
            .unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, TorchCompileMode};

    #[test]
    fn first_available_skips_gpu_tiers_with_reasons_here() {
        let gpu = gpu::discover();
        let mut c = Config {
            enable_optimization: false,
            optimization_backend: BackendPreference::Cpu,
            ..Config::default()
        };
        assert_eq!(first_available(&c.engine()), (Provider::Cpu, Vec::new()));
        if gpu.available {
            return; // the GPU tiers may be usable on this machine
        }
        c.optimization_backend = BackendPreference::Auto;
        let (p, fb) = first_available(&c.engine());
        assert_eq!(p, Provider::Cpu);
        let names: Vec<&str> = fb.iter().map(|f| f.backend.as_str()).collect();
        assert_eq!(names, vec!["tensorrt", "tensorrt_rtx", "cuda"]);
        for f in &fb {
            assert_eq!(Some(&f.reason), gpu.reason.as_ref());
        }
    }

    #[test]
    fn chains_follow_the_preference_and_end_on_cpu() {
        let mut c = Config::default();
        let names = |c: &Config| {
            chain(&c.engine())
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&c), vec!["tensorrt", "tensorrt_rtx", "cuda", "cpu"]);
        c.optimization_backend = BackendPreference::TensorrtRtx;
        assert_eq!(names(&c), vec!["tensorrt_rtx", "cpu"]);
        match &chain(&c.engine())[0] {
            Provider::TensorRtRtx {
                max_batch,
                max_queries,
                runtime_cache,
            } => {
                assert_eq!(
                    (*max_batch, *max_queries),
                    (c.max_batch_size, c.max_queries)
                );
                assert_eq!(
                    runtime_cache.as_deref(),
                    Some(c.cache_dir.join("tensorrt-rtx-runtime").as_path())
                );
            }
            other => panic!("{other:?}"),
        }
        c.optimization_backend = BackendPreference::TorchCompile;
        assert_eq!(names(&c), vec!["cuda", "cpu"]);
        c.optimization_backend = BackendPreference::Eager;
        assert_eq!(names(&c), vec!["cpu"]);
        c.optimization_backend = BackendPreference::Tensorrt;
        c.tensorrt_precision = crate::vocab::Precision::Int8;
        c.max_batch_size = 8;
        match &chain(&c.engine())[0] {
            Provider::TensorRt {
                precision,
                max_batch,
                max_queries,
                timing_cache,
            } => {
                assert_eq!(*precision, crate::vocab::Precision::Int8);
                assert_eq!(*max_batch, 8);
                assert_eq!(*max_queries, c.max_queries);
                assert_eq!(
                    timing_cache.as_deref(),
                    Some(c.cache_dir.join("tensorrt-timing").as_path())
                );
            }
            other => panic!("{other:?}"),
        }
        c.optimization_backend = BackendPreference::Cuda;
        c.torch_compile_mode = TorchCompileMode::ReduceOverhead;
        assert_eq!(
            chain(&c.engine())[0],
            Provider::Cuda {
                cuda_graphs: true,
                exhaustive_conv: false
            }
        );
        c.torch_compile_mode = TorchCompileMode::MaxAutotune;
        assert_eq!(
            chain(&c.engine())[0],
            Provider::Cuda {
                cuda_graphs: false,
                exhaustive_conv: true
            }
        );
    }
}

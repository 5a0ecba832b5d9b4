//! The engine: the one owner of turning a model directory into a running `Detector`. It opens the
//! model directory and tokenizer once, picks the provider (the explicit fallback chain
//! TensorRT → TensorRT-RTX → CUDA → CPU for `auto`, GPU discovery and pre-checks first, each failed tier recorded
//! with its reason for `/api/optimization` and the log) and the cache entry, and hands the backend
//! one `SessionPlan`. `build` decides the graph forms and sources, `artifact` owns the cached
//! artifact's files and key.

mod artifact;
mod build;
mod cached;
pub mod cpu_tier;
mod error;

use std::path::Path;

use serde::Serialize;

pub use artifact::{artifact_file, artifact_key, weights_file, Artifact};
pub(crate) use artifact::{library, openvino_library};
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

/// The providers to try, in order, for a preference (the CPU always ends the chain). Under `auto`,
/// OpenVINO is a tier only where a runtime is installed or configured (an optional download: a
/// host without one is not told about it at every start).
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
    // Its cache folder is created by the backend, per setting (`backend::openvino`).
    let openvino = openvino_provider(cfg);
    match cfg.backend {
        BackendPreference::Auto if openvino_library(cfg).is_some() => {
            vec![trt, rtx, cuda, openvino, Provider::Cpu]
        }
        BackendPreference::Auto => vec![trt, rtx, cuda, Provider::Cpu],
        BackendPreference::Openvino => vec![openvino, Provider::Cpu],
        BackendPreference::Tensorrt => vec![trt, Provider::Cpu],
        BackendPreference::TensorrtRtx => vec![rtx, Provider::Cpu],
        BackendPreference::Cuda | BackendPreference::TorchCompile => vec![cuda, Provider::Cpu],
        BackendPreference::Cpu | BackendPreference::Eager => vec![Provider::Cpu],
    }
}

/// The OpenVINO tier of `cfg`: its device and precision, and its compiled-model cache's root
/// when optimisation is on.
pub fn openvino_provider(cfg: &EngineSettings) -> Provider {
    Provider::OpenVino {
        device: cfg.openvino_device.clone(),
        precision: cfg.openvino_precision,
        cache_dir: cfg.optimize.then(|| cfg.cache_dir.join("openvino")),
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
/// build without the provider, (TensorRT) no TensorRT library, (OpenVINO) no OpenVINO runtime or,
/// under `auto`, no measurement that found it faster here.
fn unavailable(
    cfg: &EngineSettings,
    provider: &Provider,
    gpu: &GpuInfo,
    fingerprint: Option<&str>,
) -> Option<String> {
    if *provider == Provider::Cpu {
        return None;
    }
    if let Provider::OpenVino { .. } = provider {
        return openvino_unavailable(cfg, fingerprint).err();
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

/// `Ok` when OpenVINO may be tried: a runtime is installed (or configured) and, under `auto`,
/// `optimize` measured it faster than ONNX Runtime's CPU engine for this model on this host.
fn openvino_unavailable(cfg: &EngineSettings, fingerprint: Option<&str>) -> Result<(), String> {
    let lib = openvino_library(cfg).ok_or_else(|| {
        "no OpenVINO runtime installed (`intelligent-video runtime install --pip openvino==2026.4.1`)"
            .to_string()
    })?;
    let openvino_version = crate::backend::openvino::version(&lib).map_err(|e| e.to_string())?;
    if cfg.backend != BackendPreference::Auto {
        return Ok(());
    }
    if cfg.cpu_precision == crate::vocab::Precision::Int8 {
        return Err("cpu_precision int8 is ONNX Runtime's int8 engine".into());
    }
    let fingerprint = fingerprint
        .ok_or_else(|| "enable_optimization is off: nothing measured is used".to_string())?;
    let onnxruntime_version =
        crate::backend::ort::ensure_runtime(library(cfg).as_deref()).map_err(|e| e.to_string())?;
    let ort_precision = DetectorOptions::from_config(cfg, Provider::Cpu).cpu_key_precision();
    let cpu = cpu_tier::host_cpu();
    let host = cpu_tier::Host {
        fingerprint,
        cpu: &cpu,
        onnxruntime_version: &onnxruntime_version,
        onnxruntime_precision: ort_precision,
        openvino_version: &openvino_version,
    };
    cpu_tier::verdict(cpu_tier::load(cfg, fingerprint).as_ref(), &host)
}

/// The first provider of `cfg`'s chain that passes the pre-checks, with the skipped tiers (for
/// commands that build their own sessions, like `bench`).
/// `dir` is the model's folder (`None`: no measurement can be matched, so `auto` skips OpenVINO).
pub fn first_available(cfg: &EngineSettings, dir: Option<&Path>) -> (Provider, Vec<Fallback>) {
    let gpu = gpu::discover();
    let fingerprint = dir.and_then(|d| fingerprint(cfg, d));
    let mut fallbacks = Vec::new();
    for provider in chain(cfg) {
        match unavailable(cfg, &provider, &gpu, fingerprint.as_deref()) {
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
        if let Some(reason) = unavailable(cfg, &provider, &gpu, fingerprint.as_deref()) {
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
        assert_eq!(
            first_available(&c.engine(), None),
            (Provider::Cpu, Vec::new())
        );
        if gpu.available {
            return; // the GPU tiers may be usable on this machine
        }
        c.optimization_backend = BackendPreference::Auto;
        // No OpenVINO runtime in an empty state folder: not a tier at all.
        let state = tempfile::tempdir().expect("tmp");
        c.state_dir = state.path().to_path_buf();
        let (p, fb) = first_available(&c.engine(), None);
        assert_eq!(p, Provider::Cpu);
        let names: Vec<&str> = fb.iter().map(|f| f.backend.as_str()).collect();
        assert_eq!(names, vec!["tensorrt", "tensorrt_rtx", "cuda"]);
        for f in &fb {
            assert_eq!(Some(&f.reason), gpu.reason.as_ref());
        }
        // One configured that does not load: skipped with the reason.
        c.openvino_path = Some(state.path().join("nothing-here"));
        let (p, fb) = first_available(&c.engine(), None);
        assert_eq!(p, Provider::Cpu);
        assert_eq!(fb.len(), 4);
        assert_eq!(fb[3].backend, "openvino");
        assert!(
            fb[3].reason.contains("holds no OpenVINO C library"),
            "{}",
            fb[3].reason
        );
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
        c.state_dir = std::path::PathBuf::from("/nonexistent");
        assert_eq!(names(&c), vec!["tensorrt", "tensorrt_rtx", "cuda", "cpu"]);
        c.openvino_path = Some("/opt/openvino".into());
        assert_eq!(
            names(&c),
            vec!["tensorrt", "tensorrt_rtx", "cuda", "openvino", "cpu"]
        );
        c.openvino_path = None;
        c.optimization_backend = BackendPreference::Openvino;
        c.openvino_precision = crate::vocab::Precision::Bf16;
        assert_eq!(names(&c), vec!["openvino", "cpu"]);
        assert_eq!(
            chain(&c.engine())[0],
            Provider::OpenVino {
                device: "CPU".into(),
                precision: crate::vocab::Precision::Bf16,
                cache_dir: Some(c.cache_dir.join("openvino")),
            }
        );
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

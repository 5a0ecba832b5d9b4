//! Backend selection for the daemon and commands: the explicit fallback chain
//! TensorRT → CUDA → CPU (`auto`), GPU discovery first, each failed tier recorded with its reason
//! (shown in `/api/optimization` and logged), aliases of the Python service's names.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::backend::{Provider, TrtPrecision};
use crate::cache;
use crate::config::{BackendPreference, Config, CpuPrecision, TensorrtPrecision, TorchCompileMode};
use crate::gpu::{self, GpuInfo};
use crate::model::graphs::Precision;
use crate::pipeline::{Artifact, Detector, DetectorOptions};

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

/// Folder of the TensorRT libraries' most likely home: beside the loaded ONNX Runtime.
fn ort_dir() -> Option<std::path::PathBuf> {
    crate::backend::ort::runtime_path().and_then(|p| p.parent().map(Path::to_path_buf))
}

/// The GPU as a cache-key part: name and compute capability.
fn gpu_device(gpu: &GpuInfo) -> String {
    format!(
        "{} (sm {})",
        gpu.name.as_deref().unwrap_or("unknown GPU"),
        gpu.compute_capability.as_deref().unwrap_or("?")
    )
}

/// The cache key of `provider`'s artifact for the model in `dir` under `cfg`.
pub fn artifact_key(
    cfg: &Config,
    dir: &Path,
    provider: &Provider,
    gpu: &GpuInfo,
) -> Result<cache::KeyParts, String> {
    let onnxruntime = crate::backend::ort::ensure_runtime(cfg.onnxruntime_path.as_deref())
        .map_err(|e| e.to_string())?;
    let libs = ort_dir();
    let (precision, device, tensorrt, max_queries) = match provider {
        Provider::Cpu => (
            match cfg.cpu_precision {
                CpuPrecision::Fp32 => Precision::Fp32.name(),
                // The weight range depends on the CPU's int8 kernels (7 bits without VNNI).
                CpuPrecision::Int8 => Precision::int8().name(),
            },
            cache::cpu_name(),
            None,
            0,
        ),
        Provider::TensorRt {
            precision,
            max_queries,
            ..
        } => (
            match precision {
                TrtPrecision::Fp32 => "fp32",
                TrtPrecision::Fp16 => "fp16",
                TrtPrecision::Int8 => "int8",
            },
            gpu_device(gpu),
            Some(gpu::tensorrt_version(libs.as_deref())?),
            *max_queries,
        ),
        Provider::Cuda { .. } => ("fp32", gpu_device(gpu), None, 0),
    };
    let on_gpu = *provider != Provider::Cpu;
    Ok(cache::KeyParts {
        layout: cache::LAYOUT,
        model_fingerprint: cache::model_fingerprint(dir)
            .map_err(|e| format!("cannot fingerprint {}: {e}", dir.display()))?,
        onnxruntime,
        provider: provider.name().into(),
        precision: precision.into(),
        max_batch: cfg.max_batch_size,
        max_queries,
        device,
        tensorrt,
        cuda: on_gpu
            .then(|| gpu::cuda_runtime_version(libs.as_deref()).ok())
            .flatten(),
        cudnn: on_gpu
            .then(|| gpu::cudnn_version(libs.as_deref()).ok())
            .flatten(),
        graph_builder: crate::model::graphs::GRAPH_BUILDER_VERSION.into(),
    })
}

type Loaded = (Detector, f64, bool, Option<cache::Entry>);

/// Loads an engine through the artifact cache: a valid entry is loaded without optimising or
/// building again; otherwise the graphs are built, optimised (CPU) or compiled (TensorRT) and saved
/// atomically (in memory only when the cache directory is not writable). A broken entry is rebuilt,
/// never a crash loop. `force` drops the entry first.
fn load_cached(
    cfg: &Config,
    dir: &Path,
    opts: DetectorOptions,
    gpu: &GpuInfo,
    force: bool,
    status: &dyn Fn(&str),
) -> Result<Loaded, crate::pipeline::PipelineError> {
    let name = opts.provider.name();
    let in_memory = |opts: &DetectorOptions| {
        let t = Instant::now();
        Detector::load(dir, opts).map(|d| (d, t.elapsed().as_secs_f64(), false, None))
    };
    let parts = match artifact_key(cfg, dir, &opts.provider, gpu) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "no cache key; building in memory");
            status(&format!("building engine ({name})"));
            return in_memory(&opts);
        }
    };
    let key = parts.key();
    let required = ["image", "text"].map(|g| opts.provider.artifact_file(g));
    if force {
        cache::remove(&cfg.cache_dir, &key);
    }
    if let Some(entry) = cache::lookup(&cfg.cache_dir, &key, &required) {
        status(&format!("loading cached engine ({name})"));
        let t = Instant::now();
        let o = DetectorOptions {
            artifact: Artifact::Load(entry.dir.clone()),
            ..opts.clone()
        };
        match Detector::load(dir, &o) {
            Ok(d) => {
                tracing::info!(entry = %entry.dir.display(), "loaded the optimized engine from the cache");
                return Ok((d, t.elapsed().as_secs_f64(), true, Some(entry)));
            }
            Err(e) => {
                tracing::warn!(entry = %entry.dir.display(), error = %e, "cached engine does not load; rebuilding");
                cache::remove(&cfg.cache_dir, &key);
            }
        }
    }
    status(&format!("building engine ({name})"));
    let Some(st) = cache::staging(&cfg.cache_dir, &key) else {
        return in_memory(&opts);
    };
    let t = Instant::now();
    let o = DetectorOptions {
        artifact: Artifact::Save(st.clone()),
        ..opts
    };
    let d = Detector::load(dir, &o);
    let elapsed = t.elapsed().as_secs_f64();
    let d = match d {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&st);
            return Err(e);
        }
    };
    let entry = match cache::commit(&cfg.cache_dir, &st, &parts, elapsed, &required) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(error = %e, "cannot save the optimized engine; serving from memory");
            let _ = std::fs::remove_dir_all(&st);
            None
        }
    };
    Ok((d, elapsed, false, entry))
}

/// The providers to try, in order, for a preference (the CPU always ends the chain).
pub fn chain(cfg: &Config) -> Vec<Provider> {
    let trt = Provider::TensorRt {
        precision: match cfg.tensorrt_precision {
            TensorrtPrecision::Fp32 => TrtPrecision::Fp32,
            TensorrtPrecision::Fp16 => TrtPrecision::Fp16,
            TensorrtPrecision::Int8 => TrtPrecision::Int8,
        },
        max_batch: cfg.max_batch_size,
        max_queries: cfg.max_queries,
        // Shared by all engine builds; created when TensorRT is tried.
        timing_cache: cfg
            .enable_optimization
            .then(|| cfg.cache_dir.join("tensorrt-timing")),
    };
    let cuda = Provider::Cuda {
        cuda_graphs: cfg.torch_compile_mode == TorchCompileMode::ReduceOverhead,
        exhaustive_conv: cfg.torch_compile_mode == TorchCompileMode::MaxAutotune,
    };
    match cfg.optimization_backend {
        BackendPreference::Auto => vec![trt, cuda, Provider::Cpu],
        BackendPreference::Tensorrt => vec![trt, Provider::Cpu],
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
fn unavailable(cfg: &Config, provider: &Provider, gpu: &GpuInfo) -> Option<String> {
    if *provider == Provider::Cpu {
        return None;
    }
    if !gpu.available {
        return Some(gpu.reason.clone().unwrap_or_else(|| "no GPU".into()));
    }
    if let Err(e) =
        crate::backend::ort::provider_available(provider, cfg.onnxruntime_path.as_deref())
    {
        return Some(e.to_string());
    }
    if let Provider::TensorRt { .. } = provider {
        if let Err(e) = gpu::tensorrt_version(ort_dir().as_deref()) {
            return Some(e);
        }
    }
    None
}

/// The first provider of `cfg`'s chain that passes the pre-checks, with the skipped tiers (for
/// commands that build their own sessions, like `bench`).
pub fn first_available(cfg: &Config) -> (Provider, Vec<Fallback>) {
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

/// Loads `dir` on the first provider of the chain that works (`force`: rebuild the cached
/// artifact).
pub fn load(
    cfg: &Config,
    dir: &Path,
    force: bool,
    status: &dyn Fn(&str),
) -> Result<Engine, String> {
    if let Some(n) = alias_notice(cfg.optimization_backend) {
        tracing::info!("{n}");
    }
    let gpu = gpu::discover();
    match &gpu.reason {
        None => {
            tracing::info!(name = ?gpu.name, cc = ?gpu.compute_capability, memory_mb = ?gpu.memory_mb, driver = ?gpu.driver_version, "GPU found")
        }
        Some(r) => tracing::info!(reason = %r, "no GPU"),
    }
    let mut fallbacks = Vec::new();
    let mut last_err = String::new();
    for mut provider in chain(cfg) {
        let name = provider.name();
        if let Some(reason) = unavailable(cfg, &provider, &gpu) {
            tracing::warn!(backend = name, %reason, "backend unavailable; falling back");
            fallbacks.push(Fallback {
                backend: name.into(),
                reason,
            });
            continue;
        }
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
        let opts = DetectorOptions {
            library: cfg.onnxruntime_path.clone(),
            threads: cfg.threads,
            query_cache: cfg.query_cache_size,
            optimize: cfg.enable_optimization,
            provider: provider.clone(),
            precision: if provider == Provider::Cpu && cfg.cpu_precision == CpuPrecision::Int8 {
                Precision::int8()
            } else {
                Precision::Fp32
            },
            ..DetectorOptions::default()
        };
        let loaded = if cfg.enable_optimization && provider.caches_artifacts() {
            load_cached(cfg, dir, opts, &gpu, force, status)
        } else {
            status(&format!("building engine ({name})"));
            let t = Instant::now();
            Detector::load(dir, &opts).map(|d| (d, t.elapsed().as_secs_f64(), false, None))
        };
        match loaded {
            Ok((detector, build_time, cached, entry)) => {
                return Ok(Engine {
                    detector,
                    backend: name.into(),
                    fallbacks,
                    gpu,
                    build_time,
                    cached,
                    entry,
                })
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(backend = name, %reason, "backend failed; falling back");
                // A model error is not the provider's fault: the CPU would fail the same way.
                if matches!(e, crate::pipeline::PipelineError::Model(_)) {
                    return Err(reason);
                }
                last_err = reason.clone();
                fallbacks.push(Fallback {
                    backend: name.into(),
                    reason,
                });
            }
        }
    }
    Err(format!("no backend could load the model: {last_err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_available_skips_gpu_tiers_with_reasons_here() {
        let gpu = gpu::discover();
        let mut c = Config {
            enable_optimization: false,
            optimization_backend: BackendPreference::Cpu,
            ..Config::default()
        };
        assert_eq!(first_available(&c), (Provider::Cpu, Vec::new()));
        if gpu.available {
            return; // the GPU tiers may be usable on this machine
        }
        c.optimization_backend = BackendPreference::Auto;
        let (p, fb) = first_available(&c);
        assert_eq!(p, Provider::Cpu);
        let names: Vec<&str> = fb.iter().map(|f| f.backend.as_str()).collect();
        assert_eq!(names, vec!["tensorrt", "cuda"]);
        for f in &fb {
            assert_eq!(Some(&f.reason), gpu.reason.as_ref());
        }
    }

    #[test]
    fn chains_follow_the_preference_and_end_on_cpu() {
        let mut c = Config::default();
        let names = |c: &Config| chain(c).iter().map(|p| p.name()).collect::<Vec<_>>();
        assert_eq!(names(&c), vec!["tensorrt", "cuda", "cpu"]);
        c.optimization_backend = BackendPreference::TorchCompile;
        assert_eq!(names(&c), vec!["cuda", "cpu"]);
        c.optimization_backend = BackendPreference::Eager;
        assert_eq!(names(&c), vec!["cpu"]);
        c.optimization_backend = BackendPreference::Tensorrt;
        c.tensorrt_precision = TensorrtPrecision::Int8;
        c.max_batch_size = 8;
        match &chain(&c)[0] {
            Provider::TensorRt {
                precision,
                max_batch,
                max_queries,
                timing_cache,
            } => {
                assert_eq!(*precision, TrtPrecision::Int8);
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
            chain(&c)[0],
            Provider::Cuda {
                cuda_graphs: true,
                exhaustive_conv: false
            }
        );
        c.torch_compile_mode = TorchCompileMode::MaxAutotune;
        assert_eq!(
            chain(&c)[0],
            Provider::Cuda {
                cuda_graphs: false,
                exhaustive_conv: true
            }
        );
    }
}

//! Backend selection for the daemon and commands: the explicit fallback chain
//! TensorRT → CUDA → CPU (`auto`), GPU discovery first, each failed tier recorded with its reason
//! (shown in `/api/optimization` and logged), aliases of the Python service's names.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::backend::{Provider, TrtPrecision};
use crate::config::{BackendPreference, Config, TensorrtPrecision, TorchCompileMode};
use crate::gpu::{self, GpuInfo};
use crate::pipeline::{Detector, DetectorOptions};

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
    /// Seconds spent building the chosen engine (graphs + session creation / optimisation).
    pub build_time: f64,
}

/// The providers to try, in order, for a preference (the CPU always ends the chain).
pub fn chain(cfg: &Config) -> Vec<Provider> {
    let trt = Provider::TensorRt {
        precision: match cfg.tensorrt_precision {
            TensorrtPrecision::Fp32 => TrtPrecision::Fp32,
            TensorrtPrecision::Fp16 => TrtPrecision::Fp16,
            TensorrtPrecision::Int8 => TrtPrecision::Int8,
        },
        cache_dir: cfg.enable_optimization.then(|| cfg.cache_dir.clone()),
        max_batch: cfg.max_batch_size,
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

/// Loads `dir` on the first provider of the chain that works.
pub fn load(cfg: &Config, dir: &Path, status: &dyn Fn(&str)) -> Result<Engine, String> {
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
    for provider in chain(cfg) {
        let name = provider.name();
        if provider != Provider::Cpu && !gpu.available {
            let reason = gpu.reason.clone().unwrap_or_else(|| "no GPU".into());
            tracing::warn!(backend = name, %reason, "backend unavailable; falling back");
            fallbacks.push(Fallback {
                backend: name.into(),
                reason,
            });
            continue;
        }
        status(&format!("building engine ({name})"));
        let t = Instant::now();
        let opts = DetectorOptions {
            library: cfg.onnxruntime_path.clone(),
            threads: cfg.threads,
            query_cache: cfg.query_cache_size,
            max_queries: cfg.max_queries,
            optimize: cfg.enable_optimization,
            provider: provider.clone(),
            ..DetectorOptions::default()
        };
        match Detector::load(dir, &opts) {
            Ok(detector) => {
                return Ok(Engine {
                    detector,
                    backend: name.into(),
                    fallbacks,
                    gpu,
                    build_time: t.elapsed().as_secs_f64(),
                })
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::warn!(backend = name, %reason, "backend failed; falling back");
                // A model error is not the provider's fault: the CPU would fail the same way.
                if matches!(e, crate::pipeline::DetectError::Model(_)) {
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
                cache_dir,
            } => {
                assert_eq!(*precision, TrtPrecision::Int8);
                assert_eq!(*max_batch, 8);
                assert_eq!(cache_dir.as_deref(), Some(c.cache_dir.as_path()));
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

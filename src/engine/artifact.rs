//! The optimized artifact of a provider: what an artifact is (`Artifact`: save into or load from
//! a cache-entry folder), the files of an entry (`artifact_file`, `weights_file`), and the key of
//! everything an artifact depends on (`artifact_key`). `crate::cache` stores entries without
//! knowing what is in them; this module is the one owner of what is.

use std::path::{Path, PathBuf};

use super::error::EngineError;
use crate::backend::Provider;
use crate::cache;
use crate::config::sections::EngineSettings;
use crate::gpu::{self, GpuInfo};
use crate::vocab::{Graph, Precision};

/// What to do with the optimised artifact of both graphs.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Artifact {
    /// Build in memory only.
    #[default]
    None,
    /// Build, and save both graphs' optimised forms into this cache-entry folder.
    Save(PathBuf),
    /// Load both graphs from this cache-entry folder instead of building them.
    Load(PathBuf),
}

impl Artifact {
    /// Where `graph`'s artifact for `provider` lives under this artifact, and its weights file
    /// name (empty paths for an in-memory build).
    pub(super) fn files(&self, provider: &Provider, graph: Graph) -> (PathBuf, String) {
        match self {
            Artifact::Save(d) | Artifact::Load(d) => {
                (d.join(artifact_file(provider, graph)), weights_file(graph))
            }
            Artifact::None => (PathBuf::new(), String::new()),
        }
    }
}

/// File name of `graph`'s artifact inside a cache entry: the optimised ONNX graph (weights in
/// `weights_file` beside it) on the CPU, the EP-context model (engine files beside it) for
/// TensorRT.
pub fn artifact_file(provider: &Provider, graph: Graph) -> String {
    match provider {
        Provider::TensorRt { .. } => format!("{graph}_ctx.onnx"),
        _ => format!("{graph}.onnx"),
    }
}

/// File name of the weights written beside a saved optimised CPU graph.
pub fn weights_file(graph: Graph) -> String {
    format!("{graph}.weights")
}

/// Folder of the TensorRT libraries' most likely home: beside the loaded ONNX Runtime.
pub(super) fn ort_dir() -> Option<std::path::PathBuf> {
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

/// The ONNX Runtime library the engine loads (see `runtimes::library`).
pub(crate) fn library(cfg: &EngineSettings) -> Option<std::path::PathBuf> {
    crate::runtimes::library(cfg.onnxruntime_path.as_deref(), &cfg.state_dir)
}

/// The OpenVINO runtime the engine loads: `openvino_path`, else the one installed under
/// `state_dir` (see `runtimes::openvino_library`).
pub(crate) fn openvino_library(cfg: &EngineSettings) -> Option<std::path::PathBuf> {
    crate::runtimes::openvino_library(cfg.openvino_path.as_deref(), &cfg.state_dir)
}

/// The cache key of `provider`'s artifact (with the CPU engine's precision as
/// `DetectorOptions::cpu_key_precision` names it) for the model with `fingerprint`.
pub fn artifact_key(
    cfg: &EngineSettings,
    fingerprint: &str,
    provider: &Provider,
    cpu_precision: &'static str,
    gpu: &GpuInfo,
) -> Result<cache::KeyParts, EngineError> {
    let onnxruntime = crate::backend::ort::ensure_runtime(library(cfg).as_deref())?;
    let libs = ort_dir();
    let (precision, device, tensorrt, max_queries) = match provider {
        Provider::Cpu => (
            // The int8 weight range depends on the CPU's int8 kernels (7 bits without VNNI); bf16
            // prepacks its GEMM weights differently from fp32.
            cpu_precision,
            cache::cpu_name(),
            None,
            0,
        ),
        Provider::TensorRt {
            precision,
            max_queries,
            ..
        } => (
            precision.name(),
            gpu_device(gpu),
            Some(gpu::tensorrt_version(libs.as_deref()).map_err(EngineError::Key)?),
            *max_queries,
        ),
        // TensorRT-RTX picks its own precisions; it does not cache through here (yet).
        Provider::TensorRtRtx { max_queries, .. } => ("auto", gpu_device(gpu), None, *max_queries),
        Provider::Cuda { .. } => (Precision::Fp32.name(), gpu_device(gpu), None, 0),
        // OpenVINO keys its own compiled-model cache; nothing of it is stored through here.
        Provider::OpenVino {
            device, precision, ..
        } => (precision.name(), device.clone(), None, 0),
    };
    let on_gpu = provider.on_nvidia_gpu();
    Ok(cache::KeyParts {
        layout: cache::LAYOUT,
        model_fingerprint: fingerprint.to_string(),
        onnxruntime,
        provider: provider.name().into(),
        precision: precision.into(),
        max_batch: cfg.max_batch,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_files_per_provider() {
        let trt = Provider::TensorRt {
            precision: Precision::Fp16,
            max_batch: 1,
            max_queries: 1,
            timing_cache: None,
        };
        assert_eq!(artifact_file(&trt, Graph::Image), "image_ctx.onnx");
        assert_eq!(artifact_file(&Provider::Cpu, Graph::Text), "text.onnx");
        assert_eq!(weights_file(Graph::Image), "image.weights");
        assert!(trt.caches_artifacts() && Provider::Cpu.caches_artifacts());
        assert!(!Provider::Cuda {
            cuda_graphs: false,
            exhaustive_conv: false
        }
        .caches_artifacts());
    }
}

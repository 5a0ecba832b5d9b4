//! The typed sections that validation hands to the layers, so that a layer takes what it uses
//! and not the whole `Config`. The flat TOML / `IV_*` keys stay what users know.

use std::path::PathBuf;

use super::{BackendPreference, Config, Precision, TorchCompileMode};

/// What the engine takes: the provider chain, its options and the artifact cache.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// `optimization_backend`.
    pub backend: BackendPreference,
    pub tensorrt_precision: Precision,
    /// `cpu_precision`: `fp32` (exact), `int8` or `bf16`.
    pub cpu_precision: Precision,
    /// CUDA graphs for the CUDA provider (`torch_compile_mode = "reduce-overhead"`).
    pub cuda_graphs: bool,
    /// cuDNN's exhaustive convolution search (`torch_compile_mode = "max-autotune"`).
    pub exhaustive_conv: bool,
    /// `max_batch_size` (TensorRT profiles and cache keys).
    pub max_batch: usize,
    /// `max_queries` (TensorRT profiles).
    pub max_queries: usize,
    /// `enable_optimization`: optimised graphs and the artifact cache.
    pub optimize: bool,
    pub cache_dir: PathBuf,
    /// ONNX Runtime intra-op threads (0: one per core).
    pub threads: usize,
    pub spin_wait: bool,
    /// Text-embedding cache entries.
    pub query_cache: usize,
    /// `onnxruntime_path`; unset: the active installed build under `state_dir`, else the
    /// backend's own search.
    pub onnxruntime_path: Option<PathBuf>,
    /// `openvino_path`; unset: the OpenVINO runtime installed under `state_dir`.
    pub openvino_path: Option<PathBuf>,
    /// `openvino_device`: `CPU`, `GPU`, `NPU`.
    pub openvino_device: String,
    /// `openvino_precision`: `fp32` or `bf16`.
    pub openvino_precision: Precision,
    pub state_dir: PathBuf,
}

impl Config {
    /// The engine's section.
    pub fn engine(&self) -> EngineSettings {
        EngineSettings {
            backend: self.optimization_backend,
            tensorrt_precision: self.tensorrt_precision,
            cpu_precision: self.cpu_precision,
            cuda_graphs: self.torch_compile_mode == TorchCompileMode::ReduceOverhead,
            exhaustive_conv: self.torch_compile_mode == TorchCompileMode::MaxAutotune,
            max_batch: self.max_batch_size,
            max_queries: self.max_queries,
            optimize: self.enable_optimization,
            cache_dir: self.cache_dir.clone(),
            threads: self.threads,
            spin_wait: self.cpu_spin_wait,
            query_cache: self.query_cache_size,
            onnxruntime_path: self.onnxruntime_path.clone(),
            openvino_path: self.openvino_path.clone(),
            openvino_device: self.openvino_device.clone(),
            openvino_precision: self.openvino_precision,
            state_dir: self.state_dir.clone(),
        }
    }
}

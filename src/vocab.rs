//! The shared vocabulary of engine choices, one type each, used as they are by the configuration
//! (serde), command-line flags (clap), the engine and the backends: numeric precision, the backend
//! preference, and the two graphs of a model. Knows nothing else.

use serde::{Deserialize, Serialize};

/// Numeric precision of an engine: `IV_TENSORRT_PRECISION` (fp32, fp16, int8), `IV_CPU_PRECISION`
/// and `--precision` (fp32, int8, bf16 on arm64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Exact: every weight as stored (converted to f32).
    #[default]
    Fp32,
    /// Half precision (TensorRT only).
    Fp16,
    /// Quantized: int8 encoder projections on the CPU, int8 kernels with fp16 fallback in TensorRT.
    Int8,
    /// fp32 graph, GEMMs in bf16 through ONNX Runtime's arm64 fast-math kernels (CPU, arm64 with
    /// BF16 only).
    Bf16,
}

impl Precision {
    /// The lower-case name used in settings, reports and cache keys.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
            Precision::Bf16 => "bf16",
        }
    }

    /// Whether the CPU engine has this precision (fp32, int8, bf16).
    pub fn on_cpu(self) -> bool {
        self != Precision::Fp16
    }

    /// Whether TensorRT has this precision (fp32, fp16, int8).
    pub fn on_tensorrt(self) -> bool {
        self != Precision::Bf16
    }

    /// Whether OpenVINO runs `self` here: fp32, or bf16 (on the CPU device only where the CPU
    /// computes bf16: AVX512-BF16/AMX, arm64 BF16). `Err` says why not.
    pub fn openvino_support(self, on_cpu: bool) -> Result<(), String> {
        match self {
            Precision::Fp32 => Ok(()),
            Precision::Bf16 if on_cpu => crate::cpu::bf16_support(),
            Precision::Bf16 => Ok(()),
            p => Err(format!(
                "{} is not an OpenVINO precision here (fp32 or bf16)",
                p.name()
            )),
        }
    }

    /// Why this CPU cannot run `self`, if it cannot: bf16 needs an arm64 CPU with the BF16
    /// extension (Neoverse V1/V2/N2, Cortex-X925/A725 of GB10, …).
    pub fn cpu_support(self) -> Result<(), String> {
        if self != Precision::Bf16 {
            return Ok(());
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("bf16") {
                return Ok(());
            }
            Err("bf16 needs an arm64 CPU with the BF16 extension; this one has none (use fp32 or int8)".into())
        }
        #[cfg(not(target_arch = "aarch64"))]
        {
            Err(format!(
                "bf16 is offered on arm64 CPUs with BF16 (ONNX Runtime's arm64 fast-math GEMM); this is {} (use fp32 or int8)",
                std::env::consts::ARCH
            ))
        }
    }
}

/// `IV_OPTIMIZATION_BACKEND` and `--backend`: which tiers of the TensorRT → TensorRT-RTX → CUDA →
/// CPU chain to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackendPreference {
    Auto,
    Tensorrt,
    /// TensorRT-RTX through its plugin execution provider.
    #[value(name = "tensorrt_rtx")]
    TensorrtRtx,
    Cuda,
    Cpu,
    /// OpenVINO (installed with `runtime install`), ONNX Runtime's CPU provider behind it.
    Openvino,
    /// Alias of `cuda` kept for the Python service's users.
    #[value(name = "torch_compile")]
    TorchCompile,
    /// Alias of `cpu` kept for the Python service's users.
    Eager,
}

/// The two graphs of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Graph {
    /// Vision tower and heads: `pixel_values` → class embeddings, logit shift/scale, boxes.
    Image,
    /// Text tower: `input_ids` → query embeddings.
    Text,
}

impl Graph {
    /// The lower-case name used in file names, provider options and errors.
    pub fn name(self) -> &'static str {
        match self {
            Graph::Image => "image",
            Graph::Text => "text",
        }
    }
}

impl std::fmt::Display for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

//! The shared vocabulary of engine choices, one type each, used as they are by the configuration
//! (serde), command-line flags (clap), the engine and the backends: numeric precision, the backend
//! preference, and the two graphs of a model. Knows nothing else.

use serde::{Deserialize, Serialize};

/// Numeric precision of an engine: `IV_TENSORRT_PRECISION` (all three), `IV_CPU_PRECISION` and
/// `--precision` (fp32 or int8).
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
}

impl Precision {
    /// The lower-case name used in settings, reports and cache keys.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }

    /// Whether the CPU engine has this precision (fp32 and int8).
    pub fn on_cpu(self) -> bool {
        self != Precision::Fp16
    }
}

/// `IV_OPTIMIZATION_BACKEND` and `--backend`: which tiers of the TensorRT → CUDA → CPU chain to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackendPreference {
    Auto,
    Tensorrt,
    Cuda,
    Cpu,
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

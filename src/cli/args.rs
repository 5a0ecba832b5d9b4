//! Arguments shared by the commands that load the model (`detect`, `bench`): the ONNX Runtime to
//! use and the CPU precision parser.

use std::path::PathBuf;

use clap::ValueEnum;

use crate::vocab::Precision;

/// Settings shared by commands that load the model.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeArgs {
    /// ONNX Runtime shared library (default: next to the binary, then /usr/lib/intelligent-video).
    #[arg(long, env = "IV_ONNXRUNTIME_PATH")]
    pub onnxruntime: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0, env = "IV_THREADS")]
    pub threads: usize,
    /// Let idle ONNX Runtime threads spin-wait for work (faster back-to-back small inferences,
    /// more CPU).
    #[arg(long, env = "IV_CPU_SPIN_WAIT")]
    pub cpu_spin_wait: bool,
}

impl RuntimeArgs {
    /// Detector options on the CPU with this library and thread count (the rest at defaults).
    pub fn detector_options(&self) -> crate::engine::DetectorOptions {
        crate::engine::DetectorOptions {
            library: crate::runtimes::library(
                self.onnxruntime.as_deref(),
                &crate::config::state_dir_from_env(),
            ),
            openvino_library: crate::runtimes::openvino_library(
                std::env::var_os(crate::backend::openvino::LIBRARY_ENV)
                    .map(std::path::PathBuf::from)
                    .as_deref(),
                &crate::config::state_dir_from_env(),
            ),
            threads: self.threads,
            spin_wait: self.cpu_spin_wait,
            ..crate::engine::DetectorOptions::default()
        }
    }
}

/// `--openvino-precision`: `fp32`, or `bf16` on CPUs that compute it (AVX512-BF16/AMX, arm64 BF16).
pub fn openvino_precision(s: &str) -> Result<Precision, String> {
    let p = Precision::from_str(s, true)?;
    p.openvino_support(true).map(|()| p)
}

/// `--precision` of the commands that build a CPU engine: `fp32`, `int8`, or `bf16` on arm64 CPUs
/// with BF16 (fp16 is TensorRT's).
pub fn cpu_precision(s: &str) -> Result<Precision, String> {
    match Precision::from_str(s, true)? {
        p if p.on_cpu() => p.cpu_support().map(|()| p),
        p => Err(format!(
            "{} is not a CPU precision (fp32, int8 or bf16)",
            p.name()
        )),
    }
}

//! Command-line interface: argument definitions and the offline subcommands. `main.rs` only parses,
//! sets up logging and maps errors to exit codes.

pub mod bench;
pub mod detect;
pub mod doctor;
pub mod model;
pub mod optimize;
pub mod ort_profile;
pub mod runtime;
pub mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::vocab::Precision;

/// On-device open-vocabulary object detection (OWLv2).
#[derive(Debug, Parser)]
#[command(name = "intelligent-video", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Detect text queries in image files; prints one JSON object per image, one per line.
    Detect(detect::DetectArgs),
    /// Measure image-side throughput and latency (optionally against the eager baseline).
    Bench(bench::BenchArgs),
    /// Build (or rebuild with --force) the optimized engine into the cache; --benchmark stores the measured speedup.
    Optimize(optimize::OptimizeArgs),
    /// Model store: pull, list, rm.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// ONNX Runtime builds (a GPU build, say): install, list, use, rm.
    #[command(subcommand)]
    Runtime(runtime::RuntimeCommand),
    /// Run the detection daemon (Unix-socket API, loopback health HTTP, systemd notify).
    Serve(serve::ServeArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(serve::ConfigCommand),
    /// Check everything the daemon's start depends on (model, folders, socket, ONNX Runtime, GPU,
    /// CUDA/cuDNN/TensorRT, the backend `auto` picks, GStreamer); exit 1 when it cannot serve.
    Doctor(doctor::DoctorArgs),
}

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
            library: self
                .onnxruntime
                .clone()
                .or_else(|| crate::runtimes::active(&crate::config::state_dir_from_env())),
            threads: self.threads,
            spin_wait: self.cpu_spin_wait,
            ..crate::engine::DetectorOptions::default()
        }
    }
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

//! Command-line interface: argument definitions and the offline subcommands. `main.rs` only parses,
//! sets up logging and maps errors to exit codes.

pub mod args;
pub mod bench;
pub mod detect;
pub mod doctor;
pub mod health;
pub mod model;
pub mod optimize;
pub mod ort_profile;
mod pip;
pub mod runtime;
pub mod serve;
pub mod ui;

use clap::{Parser, Subcommand};

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
    /// The daemon's socket on a loopback port for your browser, behind a random token.
    Ui(ui::UiArgs),
    /// Ask the running daemon whether it is ready (`GET /readyz` on its health port); exit 0 if so.
    Health(health::HealthArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(serve::ConfigCommand),
    /// Check everything the daemon's start depends on (model, folders, socket, ONNX Runtime, GPU,
    /// CUDA/cuDNN/TensorRT, the backend `auto` picks, GStreamer); exit 1 when it cannot serve.
    Doctor(doctor::DoctorArgs),
}

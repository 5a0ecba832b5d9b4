//! Intelligent Video: on-device open-vocabulary object detection with OWLv2.
//!
//! See the README's Architecture section for the code map and invariants.

pub mod backend;
pub mod cache;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod engine;
pub mod fsutil;
pub mod gpu;
pub mod model;
pub mod onnx;
pub mod pacing;
pub mod pipeline;
pub mod postprocess;
pub mod preprocess;
pub mod runtimes;
pub mod server;
pub mod service;
pub mod state_file;
pub mod store;
pub mod video;
pub mod vocab;

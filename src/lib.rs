//! Intelligent Video: on-device open-vocabulary object detection with OWLv2.
//!
//! See the README's Architecture section for the code map and invariants.
//!
//! Public here are the modules the binary and the integration tests use (`cli`, and the model,
//! engine and pipeline layers the tests drive); the daemon's parts are `pub(crate)`, so the
//! compiler's dead-code and `unreachable_pub` lints see them whole.

pub mod backend;
pub(crate) mod cache;
pub mod cli;
pub(crate) mod config;
pub(crate) mod cpu;
pub mod engine;
pub(crate) mod events;
pub(crate) mod fsutil;
pub(crate) mod geometry;
pub mod gpu;
pub mod limits;
pub mod model;
pub(crate) mod onnx;
pub(crate) mod pacing;
pub mod pipeline;
pub mod postprocess;
pub mod preprocess;
pub(crate) mod runtimes;
pub(crate) mod server;
pub(crate) mod service;
pub(crate) mod spec;
pub(crate) mod state_file;
pub(crate) mod store;
pub(crate) mod video;
pub mod vocab;

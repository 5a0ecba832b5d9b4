//! Shared daemon state read by the HTTP handlers without waiting on inference: lifecycle phase,
//! engine facts for the health documents, metrics, queue admission and the worker's heartbeat.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Semaphore;

use super::metrics::Metrics;
use super::worker::WorkerHandle;
use crate::config::Config;
use crate::preprocess::PreprocessConfig;

/// Lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    Ready = 1,
    Stopping = 2,
    Failed = 3,
}

pub use crate::engine::Fallback;

/// Facts about the loaded engine, shown by `/api/health` and `/api/optimization`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct EngineInfo {
    pub model_name: String,
    pub model_dir: String,
    pub backend: String,
    pub device: String,
    pub gpu_available: bool,
    pub optimization_time: f64,
    pub speedup_estimate: f64,
    pub cached: bool,
    pub fallbacks: Vec<Fallback>,
    pub gpu: Option<crate::gpu::GpuInfo>,
    pub onnxruntime_version: Option<String>,
    pub image_size: usize,
    pub warmup_ms: f64,
}

/// Everything the handlers share.
pub struct AppState {
    pub config: Config,
    phase: AtomicU8,
    pub status_line: Mutex<String>,
    pub engine: Mutex<EngineInfo>,
    pub metrics: Metrics,
    /// Admission: one permit per request between acceptance and answer.
    pub queue: Arc<Semaphore>,
    /// Set once the model is loaded.
    pub worker: OnceLock<WorkerHandle>,
    pub preprocess: OnceLock<PreprocessConfig>,
    started: Instant,
    /// Milliseconds since start of the worker's last loop turn.
    pub heartbeat_ms: AtomicU64,
}

impl AppState {
    pub fn new(config: Config) -> Arc<Self> {
        let queue = Arc::new(Semaphore::new(config.max_queue));
        Arc::new(AppState {
            config,
            phase: AtomicU8::new(Phase::Starting as u8),
            status_line: Mutex::new("starting".into()),
            engine: Mutex::new(EngineInfo::default()),
            metrics: Metrics::default(),
            queue,
            worker: OnceLock::new(),
            preprocess: OnceLock::new(),
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
        })
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            2 => Phase::Stopping,
            _ => Phase::Failed,
        }
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::SeqCst);
    }

    /// Milliseconds since the daemon started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Records a worker loop turn.
    pub fn beat(&self) {
        self.heartbeat_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the worker's last loop turn.
    pub fn heartbeat_age_ms(&self) -> u64 {
        self.now_ms()
            .saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed))
    }

    pub fn engine(&self) -> EngineInfo {
        self.engine.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn set_status(&self, s: &str) {
        if let Ok(mut l) = self.status_line.lock() {
            *l = s.to_string();
        }
    }
}

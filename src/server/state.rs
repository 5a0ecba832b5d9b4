//! Shared daemon state read by the HTTP handlers without waiting on inference: lifecycle phase,
//! engine facts for the health documents, the metrics, and the detection service once it runs.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;

use crate::config::Config;
use crate::pipeline::CacheStats;
use crate::service::{DetectService, Metrics, QuerySets};
use crate::video::manager::StreamManager;

/// Lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Starting = 0,
    Ready = 1,
    Stopping = 2,
    Failed = 3,
}

pub(crate) use crate::engine::Fallback;

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
    /// The ONNX Runtime library loaded (packaged, installed with `runtime install`, or configured).
    pub onnxruntime_path: Option<std::path::PathBuf>,
    /// The CUDA libraries preloaded from that library's folder (a build installed with its
    /// `nvidia-*` wheels), each "loaded" or why not; empty when it carries none or there is no driver.
    pub(crate) cuda_libraries: Vec<crate::runtimes::preload::Preloaded>,
    pub image_size: usize,
    pub warmup_ms: f64,
    /// The OpenVINO runtime, when one is installed or configured: what is loaded and what
    /// `optimize` measured of it against ONNX Runtime on this host.
    pub openvino: Option<OpenVinoInfo>,
}

/// What `/api/optimization` shows of OpenVINO.
#[derive(Debug, Clone, Serialize, Default)]
pub struct OpenVinoInfo {
    /// The runtime `auto` or `openvino` would load (`openvino_path` or the installed one).
    pub path: std::path::PathBuf,
    /// OpenVINO's version, when it was loaded in this process.
    pub version: Option<String>,
    pub device: String,
    pub precision: String,
    /// The side-by-side measurement `auto` decides by (none: not measured on this host yet).
    pub measurement: Option<crate::engine::cpu_tier::CpuTierMeasurement>,
}

/// Everything the handlers share.
pub(crate) struct AppState {
    pub config: Config,
    phase: AtomicU8,
    pub status_line: Mutex<String>,
    pub engine: Mutex<EngineInfo>,
    pub metrics: Arc<Metrics>,
    /// Set once the model is loaded.
    pub service: OnceLock<DetectService>,
    /// Set once the daemon is ready.
    pub streams: OnceLock<Arc<StreamManager>>,
    /// The event log (opened just before the streams start).
    pub events: OnceLock<Arc<crate::events::EventLog>>,
    /// Saved query sets (loaded from the state folder at start).
    pub query_sets: Arc<QuerySets>,
    /// Events followers' permits: `max_followers`, at most half of `max_connections`, so that
    /// followers never take every connection slot from detections.
    pub followers: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub(crate) fn new(config: Config) -> Arc<Self> {
        let query_sets = Arc::new(QuerySets::load(
            config
                .state_dir
                .join(crate::service::query_sets::STATE_FILE),
            crate::service::query_sets::Limits {
                max_sets: config.max_query_sets,
                budget_bytes: config.query_sets_budget_mb << 20,
            },
        ));
        let followers = config.follower_limit();
        Arc::new(AppState {
            query_sets,
            followers: Arc::new(tokio::sync::Semaphore::new(followers)),
            config,
            phase: AtomicU8::new(Phase::Starting as u8),
            status_line: Mutex::new("starting".into()),
            engine: Mutex::new(EngineInfo::default()),
            metrics: Arc::new(Metrics::default()),
            service: OnceLock::new(),
            streams: OnceLock::new(),
            events: OnceLock::new(),
        })
    }

    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            2 => Phase::Stopping,
            _ => Phase::Failed,
        }
    }

    pub(crate) fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::SeqCst);
    }

    /// Milliseconds since the inference worker's last loop turn (0 before it runs).
    pub(crate) fn heartbeat_age_ms(&self) -> u64 {
        self.service.get().map_or(0, |s| s.heartbeat().age_ms())
    }

    /// Requests admitted and not yet answered.
    pub(crate) fn queue_depth(&self) -> usize {
        self.service.get().map_or(0, DetectService::queue_depth)
    }

    /// The query-embedding cache's counters (zero before the service starts).
    pub(crate) fn cache_stats(&self) -> CacheStats {
        self.service
            .get()
            .map_or(CacheStats::default(), DetectService::cache_stats)
    }

    pub(crate) fn engine(&self) -> EngineInfo {
        self.engine.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub(crate) fn set_status(&self, s: &str) {
        if let Ok(mut l) = self.status_line.lock() {
            *l = s.to_string();
        }
    }
}

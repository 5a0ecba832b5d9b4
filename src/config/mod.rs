//! Daemon configuration: defaults < TOML file < `IV_*` environment < command-line flags (figment),
//! parsed once into a validated `Config`. Unknown keys are errors. Knows nothing about serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::limits::{ImageLimits, QueryRules, MAX_QUERY_BYTES};
pub(crate) use crate::spec::StreamSpec;
pub(crate) use crate::vocab::{BackendPreference, Precision};

pub(crate) mod mqtt;
pub(crate) mod sections;
mod socket_mode;
mod validate;
pub(crate) mod webhooks;
pub(crate) use socket_mode::SocketMode;

/// Default configuration file.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/intelligent-video/config.toml";
/// Default model (a Hugging Face id resolved in the model store).
pub(crate) const DEFAULT_MODEL: &str = "google/owlv2-base-patch16-ensemble";

/// Errors of configuration loading (exit code 78, EX_CONFIG).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Parse(String),
    #[error("invalid setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Journald,
    Text,
    Json,
}

/// `IV_TORCH_COMPILE_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TorchCompileMode {
    Default,
    ReduceOverhead,
    MaxAutotune,
}

/// The validated daemon configuration. Field names are the TOML keys and, upper-cased with an
/// `IV_` prefix, the environment variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Model directory, or a Hugging Face id looked up in `model_store`.
    pub model: String,
    /// Where `model pull` stores checkpoints (`<store>/<org>/<name>`).
    pub model_store: PathBuf,
    pub socket_path: PathBuf,
    pub socket_mode: SocketMode,
    pub socket_group: Option<String>,
    pub http_addr: SocketAddr,
    pub http_allow_remote: bool,
    pub enable_optimization: bool,
    pub optimization_backend: BackendPreference,
    pub tensorrt_precision: Precision,
    pub torch_compile_mode: TorchCompileMode,
    /// CPU engine precision: `fp32` (exact) or `int8` (opt-in speed mode).
    pub cpu_precision: Precision,
    pub warmup_iterations: u32,
    pub cache_dir: PathBuf,
    pub max_batch_size: usize,
    pub max_batch_wait_ms: u64,
    pub max_queue: usize,
    pub max_body_bytes: usize,
    pub max_pixels: u64,
    pub max_side: u32,
    /// MiB that all concurrent image decodes may take together (estimated from the headers).
    pub decode_budget_mb: u64,
    /// Rotate images by their EXIF orientation tag before detection (off: pixels as stored, as
    /// transformers takes them).
    pub apply_exif_orientation: bool,
    pub max_queries: usize,
    pub max_query_bytes: usize,
    /// Exemplar images (query by example) one detection request may carry.
    pub max_query_images: usize,
    /// Saved query sets (`PUT /v1/query-sets/{name}`) the daemon keeps.
    pub max_query_sets: usize,
    /// Encoded exemplar images all saved query sets may hold together, in MiB.
    pub query_sets_budget_mb: u64,
    pub default_threshold: f32,
    pub log_format: Option<LogFormat>,
    pub log_level: String,
    pub onnxruntime_path: Option<PathBuf>,
    /// OpenVINO's C library or its folder (IV_OPENVINO_PATH); unset: the OpenVINO runtime
    /// installed with `runtime install`.
    pub openvino_path: Option<PathBuf>,
    /// OpenVINO device: `CPU` (measured), `GPU` or `NPU` (Intel's; untested here).
    pub openvino_device: String,
    /// OpenVINO's inference precision: `fp32` (exact) or `bf16` (CPUs with AVX512-BF16/AMX, arm64 BF16).
    pub openvino_precision: Precision,
    pub threads: usize,
    /// Idle ONNX Runtime threads spin-wait for work (off: their cores go to decoding streams).
    pub cpu_spin_wait: bool,
    pub query_cache_size: usize,
    pub max_connections: usize,
    pub header_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    /// The daemon's state: streams added through the API (`streams.json`), saved query sets
    /// (`query-sets.json`), installed ONNX Runtime builds (`runtimes/`), the event journal and the
    /// sinks' positions (`events/`), tracks' best snapshots (`snapshots/`); default: systemd's
    /// `STATE_DIRECTORY`, else `/var/lib/intelligent-video`.
    pub state_dir: PathBuf,
    /// Streams of the config file (`[[streams]]` tables; read-only through the API).
    pub streams: Vec<StreamSpec>,
    /// Streams at most (config file and API together).
    pub max_streams: usize,
    /// Frame events each stream keeps for `?since=N` replays.
    pub stream_events_buffer: usize,
    /// Events an events follower may fall behind before it is disconnected.
    pub stream_follower_lag: usize,
    /// Longest wait between reconnection attempts of a live source.
    pub stream_reconnect_max_ms: u64,
    /// A live source without a frame for this long is reconnected.
    pub stream_stall_timeout_ms: u64,
    /// RTSP connection timeout, and how long UDP may stay silent before rtspsrc falls back to TCP.
    pub stream_rtsp_timeout_ms: u64,
    /// A tracked object unseen for this long loses its track id.
    pub stream_track_lost_ms: u64,
    /// A track and a detection with at least this IoU match.
    pub stream_track_match_iou: f32,
    /// Under that IoU, centres within this many box sizes still match (0: off).
    pub stream_track_match_distance: f32,
    /// A second box over a tracked object (IoU above this) is left out of frame events (1: off).
    pub stream_track_duplicate_iou: f32,
    /// Per-query NMS IoU for streams without their own `nms` (1: off).
    pub stream_nms: f32,
    /// How long a stream pipeline's teardown may take before it is abandoned to its thread.
    pub stream_stop_timeout_ms: u64,
    /// Folders whose files (and their subfolders') streams added through the API may read; none
    /// by default. The config file's `[[streams]]` may name any path.
    pub stream_file_roots: Vec<PathBuf>,
    /// MiB of frame events each stream keeps for replays (with `stream_events_buffer` events).
    pub stream_events_buffer_mb: u64,
    /// Detections one frame event reports at most (the highest scores).
    pub stream_max_detections: usize,
    /// A follower of a quiet stream gets a keep-alive line this often (a closed one is noticed).
    pub stream_keepalive_ms: u64,
    /// Events followers at once, daemon-wide (never more than half of `max_connections`).
    pub max_followers: usize,
    /// Events (zones, lines, track lifecycle) the journal in `state_dir/events/` keeps at most.
    pub events_max: u64,
    /// MiB the event journal keeps at most.
    pub events_max_mb: u64,
    /// Tracks' best snapshots (`state_dir/snapshots/`) kept at most.
    pub snapshots_max: u64,
    /// MiB of snapshots kept at most.
    pub snapshots_max_mb: u64,
    /// A track's `update` events at most this often (seconds of stream time; 0: every change).
    pub events_update_interval_s: f64,
    /// `[mqtt]`: publish events and counts to a broker (absent: no MQTT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<mqtt::MqttConfig>,
    /// `[[webhooks]]`: POST events to these URLs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<webhooks::WebhookConfig>,
}

/// The default state folder: the first of systemd's `STATE_DIRECTORY`, else
/// `/var/lib/intelligent-video`.
fn default_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| "/var/lib/intelligent-video".into())
}

impl Default for Config {
    fn default() -> Self {
        let limits = ImageLimits::default();
        let queries = QueryRules::default();
        Config {
            model: DEFAULT_MODEL.into(),
            model_store: "/var/lib/intelligent-video/models".into(),
            socket_path: "/run/intelligent-video/detect.sock".into(),
            socket_mode: SocketMode(0o660),
            socket_group: None,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            http_allow_remote: false,
            enable_optimization: true,
            optimization_backend: BackendPreference::Auto,
            tensorrt_precision: Precision::Fp16,
            torch_compile_mode: TorchCompileMode::Default,
            cpu_precision: Precision::Fp32,
            warmup_iterations: 5,
            cache_dir: "/var/cache/intelligent-video/optimized".into(),
            max_batch_size: 4,
            max_batch_wait_ms: 5,
            max_queue: 64,
            max_body_bytes: limits.max_encoded_bytes,
            max_pixels: limits.max_pixels,
            max_side: limits.max_side,
            decode_budget_mb: 1024,
            apply_exif_orientation: false,
            max_queries: queries.max_queries,
            max_query_images: 8,
            max_query_sets: 64,
            query_sets_budget_mb: 64,
            max_query_bytes: queries.max_query_bytes,
            default_threshold: 0.1,
            log_format: None,
            log_level: "info".into(),
            onnxruntime_path: None,
            openvino_path: None,
            openvino_device: "CPU".into(),
            openvino_precision: Precision::Fp32,
            threads: 0,
            cpu_spin_wait: false,
            query_cache_size: 1024,
            max_connections: 256,
            header_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
            state_dir: default_state_dir(),
            streams: Vec::new(),
            max_streams: 16,
            stream_events_buffer: 1024,
            stream_follower_lag: 256,
            stream_reconnect_max_ms: 30_000,
            stream_stall_timeout_ms: 10_000,
            stream_rtsp_timeout_ms: 5_000,
            stream_track_lost_ms: 1_000,
            stream_track_match_iou: 0.3,
            stream_track_match_distance: 1.0,
            stream_track_duplicate_iou: 0.5,
            stream_nms: 0.3,
            stream_stop_timeout_ms: 5_000,
            stream_file_roots: Vec::new(),
            stream_events_buffer_mb: 8,
            stream_max_detections: 100,
            stream_keepalive_ms: 15_000,
            max_followers: 64,
            events_max: 100_000,
            events_max_mb: 64,
            events_update_interval_s: 5.0,
            snapshots_max: 1000,
            snapshots_max_mb: 256,
            mqtt: None,
            webhooks: Vec::new(),
        }
    }
}

/// The state folder for commands that read no configuration file (`detect`): `IV_STATE_DIR`,
/// else the default.
pub(crate) fn state_dir_from_env() -> PathBuf {
    std::env::var_os("IV_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(default_state_dir)
}

impl Config {
    /// Loads defaults < `file` (or the default path when it exists) < `IV_*` environment < `overrides`.
    pub fn load(file: Option<&Path>, overrides: &ConfigOverrides) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(p) if !p.is_file() => return Err(ConfigError::MissingFile(p.to_path_buf())),
            Some(p) => fig = fig.merge(Toml::file_exact(p)),
            None if Path::new(DEFAULT_CONFIG_PATH).is_file() => {
                fig = fig.merge(Toml::file_exact(DEFAULT_CONFIG_PATH))
            }
            None => {}
        }
        // IV_SOCKET_MODE is octal text: figment would read `0660` as the integer 660.
        fig = fig.merge(Env::prefixed("IV_").ignore(&["socket_mode"]));
        if let Ok(mode) = std::env::var("IV_SOCKET_MODE") {
            fig = fig.merge(Serialized::default("socket_mode", mode));
        }
        fig = fig.merge(Serialized::defaults(overrides));
        let cfg: Config = fig.extract().map_err(|e| {
            ConfigError::Parse(
                e.into_iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Settings that are valid but unsafe, each a sentence for the log and `config check`.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.socket_mode.grants_other() {
            w.push(format!(
                "socket_mode {:04o} lets every local user run detections (other bits set); 0660 with socket_group is the usual choice",
                self.socket_mode.0
            ));
        }
        w
    }

    /// Events followers at once: `max_followers`, never more than half of `max_connections`.
    pub fn follower_limit(&self) -> usize {
        self.max_followers.min(self.max_connections / 2)
    }

    /// Query limits of the detection API.
    pub fn query_rules(&self) -> QueryRules {
        QueryRules {
            max_queries: self.max_queries,
            max_query_bytes: self.max_query_bytes,
        }
    }

    /// Image limits of the detection API.
    pub fn image_limits(&self) -> ImageLimits {
        ImageLimits {
            max_encoded_bytes: self.max_body_bytes,
            max_pixels: self.max_pixels,
            max_side: self.max_side,
            apply_exif_orientation: self.apply_exif_orientation,
        }
    }

    /// The model directory: `model` itself when it is a directory, else `<model_store>/<model>`.
    pub fn model_dir(&self) -> PathBuf {
        let p = PathBuf::from(&self.model);
        if p.is_dir() || p.is_absolute() {
            p
        } else {
            self.model_store.join(&self.model)
        }
    }

    /// The model directory when the model is installed, else the message that names the command
    /// to install it (the daemon never downloads).
    pub fn installed_model_dir(&self) -> Result<PathBuf, String> {
        let dir = self.model_dir();
        if dir.join("config.json").is_file() {
            Ok(dir)
        } else {
            Err(format!(
                "model {} is not installed at {}; run `intelligent-video model pull {}` first",
                self.model,
                dir.display(),
                self.model
            ))
        }
    }

    /// The effective log format: journald when stderr is the journal, text otherwise.
    pub fn effective_log_format(&self) -> LogFormat {
        self.log_format.unwrap_or_else(|| {
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                LogFormat::Journald
            } else {
                LogFormat::Text
            }
        })
    }

    /// The configuration as TOML (for `config check`), secrets in stream URLs hidden.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.redacted())
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }

    /// A copy to show (logs, `config check`): stream URLs without their passwords and tokens.
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        for s in &mut shown.streams {
            s.url = crate::spec::redacted(&s.url);
        }
        shown
    }
}

/// Command-line overrides (highest precedence); `None` leaves lower layers in place.
#[derive(Debug, Clone, Default, Serialize, clap::Args)]
pub struct ConfigOverrides {
    /// Model directory or Hugging Face id (IV_MODEL).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Detection socket path (IV_SOCKET_PATH).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<PathBuf>,
    /// Health HTTP address (IV_HTTP_ADDR).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
    /// Warmup inferences before READY (IV_WARMUP_ITERATIONS).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_iterations: Option<u32>,
    /// Log format: journald, text or json (IV_LOG_FORMAT).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    /// Optimization backend: auto, tensorrt, cuda, cpu (IV_OPTIMIZATION_BACKEND).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimization_backend: Option<String>,
    /// Optimized-artifact cache directory (IV_CACHE_DIR).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests;

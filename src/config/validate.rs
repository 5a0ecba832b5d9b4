//! Validation of a loaded `Config`: the cross-field rules and bounds that types cannot express,
//! each refusal naming its key.

use super::{Config, ConfigError, MAX_QUERY_BYTES};

impl Config {
    /// `openvino_precision` is fp32 or bf16 (bf16 on the CPU only where the CPU has it), and
    /// `openvino_device` a plain device name.
    fn check_openvino(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: String| Err(ConfigError::Invalid { key, message });
        let d = &self.openvino_device;
        let plain = !d.is_empty()
            && d.len() <= 64
            && d.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | ',' | '_'));
        if !plain {
            return bad(
                "openvino_device",
                format!("{d:?} is not an OpenVINO device name (CPU, GPU, GPU.1, NPU)"),
            );
        }
        if let Err(why) = self.openvino_precision.openvino_support(d == "CPU") {
            return bad("openvino_precision", why);
        }
        Ok(())
    }

    /// Checks cross-field rules that types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: String| Err(ConfigError::Invalid { key, message });
        if !self.http_allow_remote && !self.http_addr.ip().is_loopback() {
            return bad(
                "http_addr",
                format!(
                    "{} is not a loopback address; set IV_HTTP_ALLOW_REMOTE=true to allow it",
                    self.http_addr
                ),
            );
        }
        if !self.cpu_precision.on_cpu() {
            return bad(
                "cpu_precision",
                format!(
                    "{} is not a CPU precision (fp32, int8 or bf16)",
                    self.cpu_precision.name()
                ),
            );
        }
        if let Err(why) = self.cpu_precision.cpu_support() {
            return bad("cpu_precision", why);
        }
        self.check_openvino()?;
        if !self.tensorrt_precision.on_tensorrt() {
            return bad(
                "tensorrt_precision",
                format!(
                    "{} is not a TensorRT precision (fp32, fp16 or int8)",
                    self.tensorrt_precision.name()
                ),
            );
        }
        if self.model.trim().is_empty() {
            return bad("model", "is empty".into());
        }
        self.check_fractions()?;
        self.check_numbers()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return bad(
                "log_level",
                format!(
                    "{:?} is not a log filter ({e}); use error, warn, info, debug or trace",
                    self.log_level
                ),
            );
        }
        if self.max_pixels == 0 || self.max_side == 0 {
            return bad("max_pixels", "image limits must be positive".into());
        }
        if self.socket_path.as_os_str().is_empty() {
            return bad("socket_path", "is empty".into());
        }
        self.check_streams()?;
        self.check_webhooks()?;
        if let Some(m) = &self.mqtt {
            m.check().map_err(|message| ConfigError::Invalid {
                key: "mqtt",
                message,
            })?;
        }
        for (key, v) in [
            ("header_timeout_ms", self.header_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("stream_stall_timeout_ms", self.stream_stall_timeout_ms),
            ("stream_rtsp_timeout_ms", self.stream_rtsp_timeout_ms),
            ("stream_reconnect_max_ms", self.stream_reconnect_max_ms),
            ("stream_stop_timeout_ms", self.stream_stop_timeout_ms),
            ("stream_keepalive_ms", self.stream_keepalive_ms),
        ] {
            if v == 0 {
                return bad(key, "must be positive".into());
            }
        }
        Ok(())
    }

    /// The thresholds and IoUs in [0, 1]; the tracker's distance gate in [0, 10] box sizes.
    fn check_fractions(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: String| Err(ConfigError::Invalid { key, message });
        for (key, v) in [
            ("default_threshold", self.default_threshold),
            ("stream_track_match_iou", self.stream_track_match_iou),
            (
                "stream_track_duplicate_iou",
                self.stream_track_duplicate_iou,
            ),
            ("stream_nms", self.stream_nms),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(key, format!("{v} is not in [0, 1]"));
            }
        }
        let interval = self.events_update_interval_s;
        if !interval.is_finite() || !(0.0..=3600.0).contains(&interval) {
            return bad(
                "events_update_interval_s",
                format!("{interval} is not a number of seconds in [0, 3600]"),
            );
        }
        if !(0.0..=10.0).contains(&self.stream_track_match_distance) {
            return bad(
                "stream_track_match_distance",
                format!(
                    "{} is not in [0, 10] (box sizes)",
                    self.stream_track_match_distance
                ),
            );
        }
        Ok(())
    }

    /// Each `[[webhooks]]` table valid, their names unique, at most `MAX_WEBHOOKS`.
    fn check_webhooks(&self) -> Result<(), ConfigError> {
        use super::webhooks::MAX_WEBHOOKS;
        let bad = |message: String| {
            Err(ConfigError::Invalid {
                key: "webhooks",
                message,
            })
        };
        if self.webhooks.len() > MAX_WEBHOOKS {
            return bad(format!("at most {MAX_WEBHOOKS} webhooks"));
        }
        let kinds: Vec<&str> = crate::spec::rules::EVENT_TYPES.to_vec();
        let mut names = std::collections::BTreeSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            w.check(&kinds).map_err(|m| ConfigError::Invalid {
                key: "webhooks",
                message: format!("webhook {i} ({}): {m}", w.url),
            })?;
            if !names.insert(w.id()) {
                return bad(format!("two webhooks are named {}", w.id()));
            }
        }
        Ok(())
    }

    /// Every number within what the daemon can honour, and counts at least 1.
    fn check_numbers(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: String| Err(ConfigError::Invalid { key, message });
        let counts = self.counts();
        for &(key, v, _) in &counts {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        for (key, v, max) in counts.into_iter().chain(self.bounded()) {
            if v > max {
                return bad(
                    key,
                    format!("{v} is more than the daemon can honour (at most {max})"),
                );
            }
        }
        Ok(())
    }

    /// The counts: (key, value, the most the daemon can honour); each must also be at least 1.
    fn counts(&self) -> Vec<(&'static str, u64, u64)> {
        // (key, value, the most the daemon can honour). Counts must also be at least 1: queue
        // and connection permits, the query cache, batch and query limits (TensorRT profiles are
        // built for them) and the request body (held in memory).
        vec![
            ("max_batch_size", self.max_batch_size as u64, 256),
            ("max_queue", self.max_queue as u64, 1 << 20),
            ("max_body_bytes", self.max_body_bytes as u64, 1 << 30),
            ("max_queries", self.max_queries as u64, 4096),
            ("max_query_images", self.max_query_images as u64, 256),
            ("max_query_sets", self.max_query_sets as u64, 4096),
            ("query_sets_budget_mb", self.query_sets_budget_mb, 1 << 16),
            (
                "max_query_bytes",
                self.max_query_bytes as u64,
                MAX_QUERY_BYTES as u64,
            ),
            ("query_cache_size", self.query_cache_size as u64, 1 << 20),
            ("max_connections", self.max_connections as u64, 1 << 20),
            // Counted in KiB permits of a semaphore.
            ("decode_budget_mb", self.decode_budget_mb, 1 << 22),
            ("max_streams", self.max_streams as u64, 1024),
            (
                "stream_follower_lag",
                self.stream_follower_lag as u64,
                1 << 16,
            ),
            (
                "stream_events_buffer_mb",
                self.stream_events_buffer_mb,
                4096,
            ),
            (
                "stream_max_detections",
                self.stream_max_detections as u64,
                100_000,
            ),
            ("events_max", self.events_max, 1 << 32),
            ("events_max_mb", self.events_max_mb, 1 << 20),
            ("snapshots_max", self.snapshots_max, 1 << 24),
            ("snapshots_max_mb", self.snapshots_max_mb, 1 << 20),
        ]
    }

    /// The other bounded numbers: (key, value, the most the daemon can honour).
    fn bounded(&self) -> Vec<(&'static str, u64, u64)> {
        // Timeouts above an hour are typos; tokio's timers would take them all the same.
        vec![
            ("warmup_iterations", u64::from(self.warmup_iterations), 1000),
            ("threads", self.threads as u64, 1024),
            ("max_batch_wait_ms", self.max_batch_wait_ms, 10_000),
            ("shutdown_grace_ms", self.shutdown_grace_ms, 3_600_000),
            ("header_timeout_ms", self.header_timeout_ms, 3_600_000),
            ("request_timeout_ms", self.request_timeout_ms, 3_600_000),
            ("max_side", u64::from(self.max_side), 65_535),
            ("max_pixels", self.max_pixels, 1 << 32),
            (
                "stream_events_buffer",
                self.stream_events_buffer as u64,
                1 << 20,
            ),
            (
                "stream_reconnect_max_ms",
                self.stream_reconnect_max_ms,
                3_600_000,
            ),
            (
                "stream_stall_timeout_ms",
                self.stream_stall_timeout_ms,
                3_600_000,
            ),
            (
                "stream_rtsp_timeout_ms",
                self.stream_rtsp_timeout_ms,
                3_600_000,
            ),
            ("stream_track_lost_ms", self.stream_track_lost_ms, 3_600_000),
            (
                "stream_stop_timeout_ms",
                self.stream_stop_timeout_ms,
                3_600_000,
            ),
            ("stream_keepalive_ms", self.stream_keepalive_ms, 3_600_000),
            ("max_followers", self.max_followers as u64, 1 << 20),
        ]
    }

    /// Each `[[streams]]` table valid, names unique, within `max_streams`.
    fn check_streams(&self) -> Result<(), ConfigError> {
        let bad = |message: String| {
            Err(ConfigError::Invalid {
                key: "streams",
                message,
            })
        };
        if self.streams.len() > self.max_streams {
            return bad(format!(
                "{} streams are configured, more than max_streams ({})",
                self.streams.len(),
                self.max_streams
            ));
        }
        if let Some(r) = self
            .stream_file_roots
            .iter()
            .find(|r| !r.is_absolute() || r.components().any(|c| c.as_os_str() == ".."))
        {
            return Err(ConfigError::Invalid {
                key: "stream_file_roots",
                message: format!("{} is not an absolute path without '..'", r.display()),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.streams {
            if let Err(e) = s.validate(&self.query_rules()) {
                return bad(format!("stream {:?}: {e}", s.name));
            }
            if !seen.insert(s.name.as_str()) {
                return bad(format!("stream {:?} is defined twice", s.name));
            }
        }
        Ok(())
    }
}

//! The streams' Prometheus families: per-stream counters and latency histograms, and the
//! process-wide pipeline teardown counters.

use std::fmt::Write;

use super::StreamManager;
use crate::service::metrics::header;
use crate::video::attempt::{self, DropReason};
use crate::video::stream::{RunView, State, StreamShared};

/// Renders one of a stream's latency histograms.
type RenderLatency = fn(&StreamShared, &mut String, &str);

/// Reads a counter or gauge off a stream's view.
type ViewCount = fn(&RunView) -> u64;

impl StreamManager {
    /// Per-stream Prometheus metrics.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let map = self.lock();
        // One view per stream (each takes the stream's locks), read by every family below.
        let views: Vec<(&str, RunView)> = map
            .values()
            .map(|e| (e.spec.name.as_str(), e.shared.view()))
            .collect();
        let name = "iv_stream_dropped_frames_total";
        header(
            out,
            name,
            "counter",
            "Frames decoded but not processed per stream, by reason: replaced by a newer live frame, sampled out by max_fps, failed detection.",
        );
        for (stream, v) in &views {
            for (why, n) in DropReason::ALL.iter().zip(v.dropped) {
                let reason = why.name();
                let _ = writeln!(out, "{name}{{stream=\"{stream}\",reason=\"{reason}\"}} {n}");
            }
        }
        let counters: [(&str, &str, ViewCount); 2] = [
            (
                "iv_stream_frames_total",
                "Frames processed per stream.",
                |v| v.frames,
            ),
            (
                "iv_stream_up",
                "1 while the stream is running, else 0.",
                |v| u64::from(v.state == State::Running),
            ),
        ];
        for (name, help, get) in counters {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            header(out, name, kind, help);
            for (stream, v) in &views {
                let _ = writeln!(out, "{name}{{stream=\"{stream}\"}} {}", get(v));
            }
        }
        let name = "iv_stream_pipelines_abandoned_total";
        header(
            out,
            name,
            "counter",
            "Stream pipelines whose teardown did not end within stream_stop_timeout_ms.",
        );
        let _ = writeln!(out, "{name} {}", attempt::abandoned_pipelines());
        let name = "iv_stream_pipelines_stopping";
        header(
            out,
            name,
            "gauge",
            "Stream pipelines being torn down now (abandoned ones until GStreamer lets go).",
        );
        let _ = writeln!(out, "{name} {}", attempt::stopping_pipelines());
        let histograms: [(&str, &str, RenderLatency); 2] = [
            (
                "iv_stream_decode_latency_seconds",
                "Time from a compressed frame entering the decoder to its RGB frame.",
                StreamShared::render_decode_latency,
            ),
            (
                "iv_stream_end_to_end_latency_seconds",
                "Time from a decoded frame to its event being published.",
                StreamShared::render_end_to_end_latency,
            ),
        ];
        for (name, help, render) in histograms {
            header(out, name, "histogram", help);
            for e in map.values() {
                render(&e.shared, out, name);
            }
        }
    }
}

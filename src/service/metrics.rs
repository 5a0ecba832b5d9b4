//! Prometheus text metrics of detection: requests by outcome, latency histograms (queue,
//! inference, total), queue depth, batch sizes, query-cache hits. Filled by the service's worker
//! (queue, inference, batch, cache) and by its callers (outcome, total); rendered by the server.
//! Lock-light: counters are atomics, histograms take a short mutex.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::pipeline::CacheStats;

/// Latency buckets in seconds (Prometheus base units).
pub(crate) const LATENCY_BUCKETS_S: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// A Prometheus histogram (cumulative buckets, sum, count).
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }
    pub(crate) fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        self.render_samples(out, name, "");
    }

    /// The samples of one series; `labels` are `k="v"` pairs joined by commas (or empty).
    pub(crate) fn render_samples(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// The `# HELP` and `# TYPE` lines of a metric family.
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// All daemon metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    outcomes: Mutex<BTreeMap<String, u64>>,
    queue_s: Mutex<Histogram>,
    inference_s: Mutex<Histogram>,
    total_s: Mutex<Histogram>,
    batch_size: Mutex<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            outcomes: Mutex::new(BTreeMap::new()),
            queue_s: Mutex::new(Histogram::new(&LATENCY_BUCKETS_S)),
            inference_s: Mutex::new(Histogram::new(&LATENCY_BUCKETS_S)),
            total_s: Mutex::new(Histogram::new(&LATENCY_BUCKETS_S)),
            batch_size: Mutex::new(Histogram::new(&BATCH_BUCKETS)),
        }
    }
}

fn observe(h: &Mutex<Histogram>, v: f64) {
    if let Ok(mut h) = h.lock() {
        h.observe(v);
    }
}

impl Metrics {
    /// Counts one finished detection request by outcome (`ok` or an error kind).
    pub(crate) fn request(&self, outcome: &str) {
        if let Ok(mut m) = self.outcomes.lock() {
            *m.entry(outcome.to_string()).or_insert(0) += 1;
        }
    }
    /// Records a queue wait in milliseconds (exposed in seconds).
    pub(crate) fn observe_queue(&self, ms: f64) {
        observe(&self.queue_s, ms / 1e3);
    }
    /// Records one batch's image-graph time in milliseconds (exposed in seconds).
    pub(crate) fn observe_inference(&self, ms: f64) {
        observe(&self.inference_s, ms / 1e3);
    }
    /// Records a whole request's time in milliseconds (exposed in seconds).
    pub(crate) fn observe_total(&self, ms: f64) {
        observe(&self.total_s, ms / 1e3);
    }
    pub(crate) fn observe_batch(&self, n: usize) {
        observe(&self.batch_size, n as f64);
    }
    /// Prometheus text exposition; `queue_depth` = requests admitted and not yet answered,
    /// `cache` = the query-embedding cache's counters.
    pub(crate) fn render(&self, queue_depth: u64, cache: CacheStats) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP iv_requests_total Detection requests by outcome."
        );
        let _ = writeln!(out, "# TYPE iv_requests_total counter");
        if let Ok(m) = self.outcomes.lock() {
            for (k, v) in m.iter() {
                let _ = writeln!(out, "iv_requests_total{{outcome=\"{k}\"}} {v}");
            }
        }
        let hist = |out: &mut String, h: &Mutex<Histogram>, name: &str, help: &str| {
            if let Ok(h) = h.lock() {
                h.render(out, name, help);
            }
        };
        hist(
            &mut out,
            &self.queue_s,
            "iv_queue_latency_seconds",
            "Time from admission to the batch start.",
        );
        hist(
            &mut out,
            &self.inference_s,
            "iv_inference_latency_seconds",
            "Image-graph time per batch.",
        );
        hist(
            &mut out,
            &self.total_s,
            "iv_request_latency_seconds",
            "Whole detection request time.",
        );
        hist(
            &mut out,
            &self.batch_size,
            "iv_batch_size",
            "Images per inference batch.",
        );
        let gauge = |out: &mut String, name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {v}");
        };
        gauge(
            &mut out,
            "iv_queue_depth",
            "gauge",
            "Requests admitted and not yet answered.",
            queue_depth,
        );
        gauge(
            &mut out,
            "iv_query_cache_hits_total",
            "counter",
            "Query embeddings served from the cache.",
            cache.hits,
        );
        gauge(
            &mut out,
            "iv_query_cache_misses_total",
            "counter",
            "Query embeddings computed by the text graph.",
            cache.misses,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.request("ok");
        m.request("ok");
        m.request("invalid_image");
        m.observe_total(3.0);
        m.observe_total(700.0);
        let t = m.render(3, CacheStats { hits: 4, misses: 5 });
        assert!(t.contains("iv_queue_depth 3"));
        assert!(t.contains("iv_query_cache_hits_total 4"), "{t}");
        assert!(t.contains("iv_query_cache_misses_total 5"), "{t}");
        assert!(t.contains("iv_requests_total{outcome=\"ok\"} 2"), "{t}");
        assert!(t.contains("iv_requests_total{outcome=\"invalid_image\"} 1"));
        assert!(
            t.contains("iv_request_latency_seconds_bucket{le=\"0.005\"} 1"),
            "{t}"
        );
        assert!(t.contains("iv_request_latency_seconds_bucket{le=\"1\"} 2"));
        assert!(t.contains("iv_request_latency_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(t.contains("iv_request_latency_seconds_count 2"));
        assert!(t.contains("iv_request_latency_seconds_sum 0.703"), "{t}");
        assert!(!t.contains("_ms"), "abbreviated units in {t}");
    }
}

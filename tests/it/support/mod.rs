//! What the integration tests share: fixture paths and golden readers, the one way to run the
//! binary, the daemon harness and its raw HTTP client, the detection comparator, the Prometheus
//! metrics reader, and a bounded wait-until for polling.

pub(crate) mod bin;
pub(crate) mod browser;
pub(crate) mod daemon;
pub(crate) mod detections;
pub(crate) mod fixtures;
pub(crate) mod metrics;
pub(crate) mod wait;

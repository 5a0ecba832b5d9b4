//! Video streams: the daemon's own ingestion of cameras and video files.
//!
//! Owns GStreamer ingestion (`source`, the only
//! GStreamer user) behind one attempt's hand-over and teardown (`attempt`), the tracker (`track`), the event fan-out (`events`) and snapshot drawing
//! (`draw`). Stream definitions and their validation are `crate::spec`, below configuration.

pub(crate) mod attempt;
pub(crate) mod draw;
pub(crate) mod events;
pub(crate) mod manager;
pub(crate) mod rules;
mod saved;
pub(crate) mod source;
pub(crate) mod stream;
pub(crate) mod track;
pub(crate) mod tracking;

#[cfg(test)]
mod tests;

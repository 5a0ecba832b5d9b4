//! Video streams: the daemon's own ingestion of cameras and video files.
//!
//! Owns stream definitions and their validation (`spec`), GStreamer ingestion (`source`, the only
//! GStreamer user) behind one attempt's hand-over and teardown (`attempt`), the tracker (`track`), the event fan-out (`events`) and snapshot drawing
//! (`draw`).

pub mod attempt;
pub mod draw;
pub mod events;
pub mod manager;
mod saved;
pub mod source;
pub mod spec;
pub mod stream;
pub mod track;

#[cfg(test)]
mod tests;

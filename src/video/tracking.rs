//! A stream's tracks and rules together: the tracker gives each detection its id, the rules turn
//! the reported tracks into events (`video::rules`), and the events go to the daemon's event log
//! without waiting for it.

use std::sync::Arc;

use super::events::TrackedDetection;
use super::rules::{Observation, Rules};
use super::track::{TrackInput, Tracker};
use crate::events::EventLog;

pub(crate) struct Tracking {
    tracker: Tracker,
    rules: Rules,
    events: Arc<EventLog>,
    stream: String,
}

impl Tracking {
    pub(crate) fn new(tracker: Tracker, rules: Rules, events: Arc<EventLog>, stream: &str) -> Self {
        Tracking {
            tracker,
            rules,
            events,
            stream: stream.to_string(),
        }
    }

    /// The track id of each input (see `Tracker::update`).
    pub(crate) fn update(&mut self, t_ms: u64, inputs: &[TrackInput]) -> Vec<Option<u64>> {
        self.tracker.update(t_ms, inputs)
    }

    /// The rules' events for the detections a frame event reports (each has a track id).
    pub(crate) fn report(
        &mut self,
        t_ms: u64,
        width: u32,
        height: u32,
        reported: &[TrackedDetection],
    ) {
        let seen: Vec<Observation<'_>> = reported
            .iter()
            .filter_map(|t| {
                Some(Observation {
                    track_id: t.track_id?,
                    label: &t.detection.label,
                    score: t.detection.score,
                    bbox: t.detection.bbox,
                })
            })
            .collect();
        let events = self.rules.frame(t_ms, width, height, &seen);
        self.events.submit(&self.stream, events);
    }

    /// Ends every track (a new attempt, another query set, the end of the run): their `end`
    /// events (and zone exits) are told, and the tracker starts over.
    pub(crate) fn restart(&mut self) {
        self.tracker.reset();
        let events = self.rules.end_all();
        self.events.submit(&self.stream, events);
    }
}

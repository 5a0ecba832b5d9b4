//! A stream's tracks and rules together: the tracker gives each detection its id, the rules turn
//! the reported tracks into events (`video::rules`), each track's best frame is kept for its
//! snapshot, and the events go to the daemon's event log without waiting for it.

use std::collections::HashMap;
use std::sync::Arc;

use super::draw::Annotation;
use super::events::TrackedDetection;
use super::rules::{Kind, Observation, RuleEvent, Rules};
use super::track::{TrackInput, Tracker};
use crate::events::{EventLog, Shot};
use crate::preprocess::Rgb;

/// A live track's best frame so far.
struct Best {
    score: f32,
    rgb: Arc<Rgb>,
    annotation: Annotation,
}

pub(crate) struct Tracking {
    tracker: Tracker,
    rules: Rules,
    events: Arc<EventLog>,
    stream: String,
    best: HashMap<u64, Best>,
}

impl Tracking {
    pub(crate) fn new(tracker: Tracker, rules: Rules, events: Arc<EventLog>, stream: &str) -> Self {
        Tracking {
            tracker,
            rules,
            events,
            stream: stream.to_string(),
            best: HashMap::new(),
        }
    }

    /// The track id of each input (see `Tracker::update`).
    pub(crate) fn update(&mut self, t_ms: u64, inputs: &[TrackInput]) -> Vec<Option<u64>> {
        self.tracker.update(t_ms, inputs)
    }

    /// The rules' events for the detections a frame event reports (each has a track id), with
    /// the snapshots of the tracks that end.
    pub(crate) fn report(&mut self, t_ms: u64, rgb: &Arc<Rgb>, reported: &[TrackedDetection]) {
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
        let events = self.rules.frame(t_ms, rgb.width, rgb.height, &seen);
        self.keep_best(rgb, reported);
        self.submit(events);
    }

    /// Ends every track (a new attempt, another query set, the end of the run): their `end`
    /// events (and zone exits) are told, and the tracker starts over.
    pub(crate) fn restart(&mut self) {
        self.tracker.reset();
        let events = self.rules.end_all();
        self.submit(events);
        self.best.clear();
    }

    /// Keeps the frame where each reported track scored highest so far.
    fn keep_best(&mut self, rgb: &Arc<Rgb>, reported: &[TrackedDetection]) {
        for t in reported {
            let Some(id) = t.track_id else { continue };
            let better = self
                .best
                .get(&id)
                .is_none_or(|b| t.detection.score > b.score);
            if better {
                self.best.insert(
                    id,
                    Best {
                        score: t.detection.score,
                        rgb: rgb.clone(),
                        annotation: Annotation::of(&t.detection, Some(id)),
                    },
                );
            }
        }
    }

    /// Names each event's snapshot, takes the best frames of the tracks that end, and hands
    /// both to the event log.
    fn submit(&mut self, mut events: Vec<RuleEvent>) {
        let mut shots = Vec::new();
        for e in &mut events {
            let file = format!("{}-{}-{}.jpg", self.stream, self.events.boot(), e.track_id);
            if e.kind == Kind::End {
                if let Some(b) = self.best.remove(&e.track_id) {
                    shots.push(Shot {
                        file: file.clone(),
                        rgb: b.rgb,
                        annotation: b.annotation,
                    });
                }
            }
            e.snapshot = Some(file);
        }
        self.events.submit(&self.stream, events, shots);
    }
}

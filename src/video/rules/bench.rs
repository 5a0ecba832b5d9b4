//! What a stream's rules and their publishing cost per frame, for `intelligent-video bench`: the
//! tracker's busy synthetic scene (`track::bench`) through 10 zones and 10 lines, each frame's
//! events serialised as journal lines and turned into MQTT messages (the CPU work of publishing;
//! the disk and the network are other threads' and the broker's).

use std::time::{Duration, Instant};

use super::{Observation, RuleSettings, Rules};
use crate::events::topics::View;
use crate::spec::rules::{LineSpec, ZoneSpec};
use crate::spec::{Lines, Zones};

/// Frames of the scene that are timed.
pub(crate) const FRAMES: u64 = 2000;
/// Zones and lines of the timed stream.
pub(crate) const RULES: usize = 10;

/// `RULES` zones (a grid of rectangles) and `RULES` lines (verticals across the frame).
fn rules() -> (Zones, Lines) {
    let zones = (0..RULES)
        .map(|i| {
            let (x, y) = ((i % 5) as f64 * 0.2, (i / 5) as f64 * 0.5);
            let polygon = vec![[x, y], [x + 0.18, y], [x + 0.18, y + 0.45], [x, y + 0.45]];
            let zone = ZoneSpec {
                polygon,
                labels: vec![],
                inertia: 3,
                loiter_s: Some(5.0),
                min_score: None,
            };
            (format!("zone-{i}"), zone)
        })
        .collect();
    let lines = (0..RULES)
        .map(|i| {
            let x = 0.05 + i as f64 * 0.09;
            let line = LineSpec {
                points: [[x, 0.0], [x, 1.0]],
                labels: vec![],
            };
            (format!("line-{i}"), line)
        })
        .collect();
    (zones, lines)
}

/// Mean time per frame of the rules and the publishing work over `objects` tracks moving across
/// a 1920×1080 frame, and the events per frame.
pub(crate) fn frame_cost(objects: usize) -> (Duration, f64) {
    let (zones, lines) = rules();
    let settings = RuleSettings {
        lost_ms: 1000,
        update_interval_ms: 5000,
    };
    let mut rules = Rules::new(&zones, &lines, settings);
    let mut view = View::new("intelligent-video", Some("homeassistant"));
    let labels = ["a person", "a car", "a dog", "a forklift"];
    let mut spent = Duration::ZERO;
    let mut events = 0usize;
    let mut seq = 0u64;
    for f in 0..FRAMES {
        let seen: Vec<Observation<'_>> = (0..objects)
            .map(|i| {
                let speed = 1.0 + (i % 5) as f32;
                let x = (i as f32 * 97.0 + speed * f as f32) % 1800.0;
                let y = (i as f32 * 53.0) % 900.0;
                Observation {
                    track_id: i as u64 + 1,
                    label: labels[i % labels.len()],
                    score: 0.5 + (f % 7) as f32 * 0.01,
                    bbox: [x, y, x + 60.0, y + 120.0],
                }
            })
            .collect();
        let start = Instant::now();
        let out = rules.frame(f * 33, 1920, 1080, std::hint::black_box(&seen));
        for e in &out {
            seq += 1;
            let line = crate::events::record_line(seq, "bench", 1.0e9, e);
            std::hint::black_box(view.messages(&line));
        }
        spent += start.elapsed();
        events += out.len();
    }
    (spent / FRAMES as u32, events as f64 / FRAMES as f64)
}

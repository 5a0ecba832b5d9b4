//! What one tracker update costs, for `intelligent-video bench`: a busy synthetic scene, timed.

use std::time::{Duration, Instant};

use super::{TrackInput, Tracker, TrackerConfig};

/// Frames of the synthetic scene that are timed.
pub(crate) const FRAMES: u64 = 2000;

/// Mean time of one `Tracker::update` over a scene of `objects` boxes of 4 classes moving at
/// different speeds with a few pixels of jitter, each with a second box over it (a duplicate)
/// and a low-score box: `3 × objects` detections a frame.
pub(crate) fn update_cost(objects: usize) -> Duration {
    let mut tracker = Tracker::new(TrackerConfig::default());
    let mut dets = Vec::with_capacity(3 * objects);
    let mut spent = Duration::ZERO;
    for f in 0..FRAMES {
        dets.clear();
        for i in 0..objects {
            let speed = 1.0 + (i % 5) as f32;
            let jitter = ((f as usize * 7 + i * 13) % 5) as f32 - 2.0;
            let x = (i as f32 * 97.0 + speed * f as f32) % 1800.0 + jitter;
            let y = (i as f32 * 53.0) % 1000.0;
            let b = [x, y, x + 60.0, y + 120.0];
            let class = i % 4;
            dets.push(TrackInput {
                class,
                score: 0.6,
                bbox: b,
            });
            let shifted = [b[0] + 6.0, b[1], b[2] + 6.0, b[3]];
            dets.push(TrackInput {
                class,
                score: 0.4,
                bbox: shifted,
            });
            dets.push(TrackInput {
                class,
                score: 0.07,
                bbox: shifted,
            });
        }
        let start = Instant::now();
        std::hint::black_box(tracker.update(f * 33, std::hint::black_box(&dets)));
        spent += start.elapsed();
    }
    spent / FRAMES as u32
}

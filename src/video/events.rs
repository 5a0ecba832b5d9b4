//! A stream's event fan-out: frame events kept in a bounded ring (for `?since=N` replays) and
//! published, with state changes, to followers through a bounded broadcast channel. A follower
//! that falls further behind than the channel holds is told so and cut off; memory never grows
//! with a slow reader. Events are pre-serialised NDJSON lines.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::postprocess::Detection;

/// One detection of a frame event: `/v1/detect`'s fields plus the track id.
#[derive(Debug, Clone, Serialize)]
pub struct TrackedDetection {
    #[serde(flatten)]
    pub detection: Detection,
    pub track_id: Option<u64>,
}

/// A processed frame.
#[derive(Debug, Serialize)]
pub struct FrameEvent<'a> {
    pub stream: &'a str,
    pub frame: u64,
    pub pts_ms: u64,
    pub width: u32,
    pub height: u32,
    pub detections: &'a [TrackedDetection],
}

/// A state change.
#[derive(Debug, Serialize)]
pub struct StateEvent<'a> {
    pub stream: &'a str,
    pub state: &'a str,
    pub message: &'a str,
}

/// One NDJSON line (with its newline) of a serialisable event.
pub fn line<T: Serialize>(event: &T) -> Bytes {
    let mut v = serde_json::to_vec(event)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode an event: {e}\"}}").into_bytes());
    v.push(b'\n');
    Bytes::from(v)
}

struct Ring {
    frames: VecDeque<(u64, Bytes)>,
    capacity: usize,
}

/// The fan-out of one stream.
pub struct EventHub {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Bytes>,
}

/// What a new follower gets: the replayed frame events, then the live feed.
pub struct Subscription {
    pub replay: Vec<Bytes>,
    pub live: broadcast::Receiver<Bytes>,
}

impl EventHub {
    /// `ring`: frame events kept for replays; `follower_lag`: events a follower may fall behind.
    pub fn new(ring: usize, follower_lag: usize) -> Self {
        let (tx, _) = broadcast::channel(follower_lag.max(1));
        EventHub {
            ring: Mutex::new(Ring {
                frames: VecDeque::with_capacity(ring.min(4096)),
                capacity: ring,
            }),
            tx,
        }
    }

    /// Publishes frame `frame`'s event line (kept in the ring).
    pub fn publish_frame(&self, frame: u64, line: Bytes) {
        if let Ok(mut r) = self.ring.lock() {
            if r.capacity > 0 {
                if r.frames.len() >= r.capacity {
                    r.frames.pop_front();
                }
                r.frames.push_back((frame, line.clone()));
            }
            // Sent under the lock, so a subscription sees each event exactly once.
            let _ = self.tx.send(line);
        }
    }

    /// Publishes a state line (not replayed).
    pub fn publish_state(&self, line: Bytes) {
        if let Ok(_r) = self.ring.lock() {
            let _ = self.tx.send(line);
        }
    }

    /// Follows the stream; with `since`, first the buffered frame events numbered `>= since`.
    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        let r = self.ring.lock();
        let replay = match (&r, since) {
            (Ok(r), Some(n)) => r
                .frames
                .iter()
                .filter(|(f, _)| *f >= n)
                .map(|(_, l)| l.clone())
                .collect(),
            _ => Vec::new(),
        };
        Subscription {
            replay,
            live: self.tx.subscribe(),
        }
    }

    /// Followers now.
    pub fn followers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn replays_from_since_then_follows_live() {
        let hub = EventHub::new(3, 8);
        for f in 0..5 {
            hub.publish_frame(f, l(&format!("f{f}")));
        }
        let mut sub = hub.subscribe(Some(3));
        assert_eq!(sub.replay, vec![l("f3"), l("f4")]);
        // The ring keeps the last 3 only.
        assert_eq!(hub.subscribe(Some(0)).replay.len(), 3);
        assert!(hub.subscribe(None).replay.is_empty());
        hub.publish_state(l("s"));
        hub.publish_frame(5, l("f5"));
        assert_eq!(sub.live.try_recv().ok(), Some(l("s")));
        assert_eq!(sub.live.try_recv().ok(), Some(l("f5")));
        assert!(sub.live.try_recv().is_err());
    }

    #[test]
    fn a_slow_follower_lags_instead_of_growing() {
        let hub = EventHub::new(0, 4);
        let mut sub = hub.subscribe(None);
        for f in 0..10 {
            hub.publish_frame(f, l("x"));
        }
        assert!(matches!(
            sub.live.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(6))
        ));
        assert!(
            hub.subscribe(Some(0)).replay.is_empty(),
            "ring of 0 keeps nothing"
        );
    }

    #[test]
    fn lines_are_ndjson() {
        let d = TrackedDetection {
            detection: Detection {
                label: "a cat".into(),
                query_index: 0,
                score: 0.5,
                bbox: [1.0, 2.0, 3.0, 4.0],
            },
            track_id: Some(7),
        };
        let ev = FrameEvent {
            stream: "s",
            frame: 3,
            pts_ms: 100,
            width: 8,
            height: 6,
            detections: &[d],
        };
        let b = line(&ev);
        assert!(b.ends_with(b"\n"));
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["detections"][0]["box"][3], 4.0);
        assert_eq!(v["detections"][0]["track_id"], 7);
        assert_eq!(v["detections"][0]["label"], "a cat");
        assert_eq!(v["frame"], 3);
    }
}

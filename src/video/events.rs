//! A stream's event fan-out: frame events kept in a bounded ring (for `?since=N` replays) and
//! published, with state changes, to followers through a bounded broadcast channel. A follower
//! that falls further behind than the channel holds is told so and cut off; memory never grows
//! with a slow reader. Events are pre-serialised NDJSON lines.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::postprocess::Detection;

/// One detection of a frame event: `/v1/detect`'s fields plus the track id.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TrackedDetection {
    #[serde(flatten)]
    pub detection: Detection,
    pub track_id: Option<u64>,
}

/// A processed frame.
#[derive(Debug, Serialize)]
pub(crate) struct FrameEvent<'a> {
    pub stream: &'a str,
    pub frame: u64,
    pub pts_ms: u64,
    pub width: u32,
    pub height: u32,
    pub detections: &'a [TrackedDetection],
}

/// A state change.
#[derive(Debug, Serialize)]
pub(crate) struct StateEvent<'a> {
    pub stream: &'a str,
    pub state: &'a str,
    pub message: &'a str,
}

/// One NDJSON line (with its newline) of a serialisable event.
pub(crate) fn line<T: Serialize>(event: &T) -> Bytes {
    let mut v = serde_json::to_vec(event)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode an event: {e}\"}}").into_bytes());
    v.push(b'\n');
    Bytes::from(v)
}

struct Ring {
    frames: VecDeque<(u64, Bytes)>,
    /// Frame events kept at most.
    capacity: usize,
    /// Bytes of the kept events at most (the newest event is kept whatever its size).
    capacity_bytes: usize,
    bytes: usize,
}

/// The fan-out of one stream.
pub(crate) struct EventHub {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Bytes>,
    /// Whether the stream has ended (finished, failed, deleted: followers get what was published,
    /// then their body ends), told to followers as it changes.
    ended_tx: watch::Sender<bool>,
}

/// What a new follower gets: the replayed frame events, then the live feed.
pub(crate) struct Subscription {
    pub replay: Vec<Bytes>,
    pub live: broadcast::Receiver<Bytes>,
    /// True once the stream has ended; every line published before it is in `live`.
    pub ended: watch::Receiver<bool>,
}

impl EventHub {
    /// `ring`: frame events kept for replays, `ring_bytes` their size at most; `follower_lag`:
    /// events a follower may fall behind.
    pub(crate) fn new(ring: usize, ring_bytes: usize, follower_lag: usize) -> Self {
        let (tx, _) = broadcast::channel(follower_lag.max(1));
        EventHub {
            ring: Mutex::new(Ring {
                frames: VecDeque::with_capacity(ring.min(4096)),
                capacity: ring,
                capacity_bytes: ring_bytes,
                bytes: 0,
            }),
            tx,
            ended_tx: watch::channel(false).0,
        }
    }

    /// Publishes frame `frame`'s event line (kept in the ring).
    pub(crate) fn publish_frame(&self, frame: u64, line: Bytes) {
        if let Ok(mut r) = self.ring.lock() {
            if r.capacity > 0 {
                r.bytes += line.len();
                r.frames.push_back((frame, line.clone()));
                while r.frames.len() > r.capacity
                    || (r.bytes > r.capacity_bytes && r.frames.len() > 1)
                {
                    if let Some((_, old)) = r.frames.pop_front() {
                        r.bytes -= old.len();
                    }
                }
            }
            // Sent under the lock, so a subscription sees each event exactly once.
            let _ = self.tx.send(line);
        }
    }

    /// Publishes a state line (not replayed); `ends`: the stream has ended with it (followers'
    /// bodies end after it), else it runs (again).
    pub(crate) fn publish_state(&self, line: Bytes, ends: bool) {
        // Under the ring's lock, like frames: a new subscription sees the line or the end, in order.
        if let Ok(_r) = self.ring.lock() {
            let _ = self.tx.send(line);
            self.ended_tx.send_replace(ends);
        }
    }

    /// Follows the stream; with `since`, first the buffered frame events numbered `>= since`.
    pub(crate) fn subscribe(&self, since: Option<u64>) -> Subscription {
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
            ended: self.ended_tx.subscribe(),
        }
    }

    /// Whether the stream has ended (its last state line was a final one).
    #[cfg(test)]
    pub(crate) fn ended(&self) -> bool {
        *self.ended_tx.borrow()
    }

    /// Followers now.
    pub(crate) fn followers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Bytes of the frame events kept for replays.
    #[cfg(test)]
    pub(crate) fn ring_bytes(&self) -> usize {
        self.ring.lock().map(|r| r.bytes).unwrap_or(0)
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
        let hub = EventHub::new(3, 1 << 20, 8);
        for f in 0..5 {
            hub.publish_frame(f, l(&format!("f{f}")));
        }
        let mut sub = hub.subscribe(Some(3));
        assert_eq!(sub.replay, vec![l("f3"), l("f4")]);
        // The ring keeps the last 3 only.
        assert_eq!(hub.subscribe(Some(0)).replay.len(), 3);
        assert!(hub.subscribe(None).replay.is_empty());
        hub.publish_state(l("s"), false);
        hub.publish_frame(5, l("f5"));
        assert_eq!(sub.live.try_recv().ok(), Some(l("s")));
        assert_eq!(sub.live.try_recv().ok(), Some(l("f5")));
        assert!(sub.live.try_recv().is_err());
    }

    #[test]
    fn a_slow_follower_lags_instead_of_growing() {
        let hub = EventHub::new(0, 1 << 20, 4);
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
    fn the_ring_is_bounded_in_bytes_too() {
        let hub = EventHub::new(100, 10, 4);
        for f in 0..6 {
            hub.publish_frame(f, l("abcd"));
        }
        let kept: Vec<Bytes> = hub.subscribe(Some(0)).replay;
        assert_eq!(kept.len(), 2, "two 4-byte lines fit in 10 bytes");
        assert_eq!(hub.ring_bytes(), 8);
        hub.publish_frame(6, l(&"x".repeat(50)));
        assert_eq!(
            hub.subscribe(Some(0)).replay.len(),
            1,
            "a line over the bound is kept alone"
        );
        assert_eq!(hub.ring_bytes(), 50);
    }

    #[test]
    fn followers_learn_that_the_stream_ended() {
        let hub = EventHub::new(4, 1 << 20, 4);
        let mut sub = hub.subscribe(None);
        assert!(!*sub.ended.borrow());
        hub.publish_state(l("finished"), true);
        assert!(hub.ended());
        assert!(*sub.ended.borrow_and_update());
        assert_eq!(sub.live.try_recv().ok(), Some(l("finished")));
        assert!(*hub.subscribe(None).ended.borrow(), "a late follower too");
        hub.publish_state(l("starting"), false);
        assert!(!hub.ended(), "a replaced definition runs again");
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

//! The appsink's side of an attempt: each decoded sample sampled by stream time (files with
//! `max_fps`), copied into packed RGB and handed to the attempt's frame sink.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;

use crate::preprocess::Rgb;
use crate::video::attempt::{DropReason, Frame, FrameSink, SourceStats};

/// Pipeline timestamps of buffers entering the decoder, to measure decode latency.
pub(super) type Arrivals = Arc<Mutex<VecDeque<(gst::ClockTime, Instant)>>>;

/// When the source last gave a frame, and whether it is handing one over now (a file's frame
/// waits for the detector: that time is not the source's).
#[derive(Debug)]
pub(super) struct Progress {
    last: Mutex<Instant>,
    handing_over: AtomicBool,
}

impl Progress {
    pub(super) fn new() -> Self {
        Progress {
            last: Mutex::new(Instant::now()),
            handing_over: AtomicBool::new(false),
        }
    }

    /// A frame came (or was handed over): the idle clock starts again.
    pub(super) fn frame(&self) {
        if let Ok(mut t) = self.last.lock() {
            *t = Instant::now();
        }
    }

    pub(super) fn handing_over(&self, on: bool) {
        if !on {
            self.frame();
        }
        self.handing_over.store(on, Ordering::SeqCst);
    }

    /// How long the source has given nothing while nobody held it up.
    pub(super) fn idle(&self) -> Duration {
        if self.handing_over.load(Ordering::SeqCst) {
            return Duration::ZERO;
        }
        self.last.lock().map(|t| t.elapsed()).unwrap_or_default()
    }
}

/// The appsink's `new-sample` handler.
pub(super) struct FrameCallback {
    pub(super) sink: FrameSink,
    pub(super) stats: Arc<SourceStats>,
    pub(super) arrivals: Arrivals,
    pub(super) last_frame: Arc<Progress>,
    /// Files with `max_fps`: keep a frame per interval of stream time.
    pub(super) interval_ns: Option<u64>,
    pub(super) sampler: Sampler,
}

/// Keeps one frame per interval of stream time, on a grid anchored at the first frame kept (1 ms
/// of slack, so 30 fps sampled at 10 fps keeps every third frame despite rounded timestamps).
#[derive(Debug, Default)]
pub(super) struct Sampler {
    next_due_ns: Option<u64>,
}

impl Sampler {
    const SLACK_NS: u64 = 1_000_000;

    fn keep(&mut self, t_ns: u64, interval_ns: u64) -> bool {
        let due = self.next_due_ns.unwrap_or(0);
        if self.next_due_ns.is_some() && t_ns + Self::SLACK_NS < due {
            return false;
        }
        let mut next = if self.next_due_ns.is_some() {
            due
        } else {
            t_ns
        };
        while next <= t_ns + Self::SLACK_NS {
            next = next.saturating_add(interval_ns.max(1));
            if next == u64::MAX {
                break;
            }
        }
        self.next_due_ns = Some(next);
        true
    }
}

impl FrameCallback {
    pub(super) fn on_sample(
        &mut self,
        appsink: &gst_app::AppSink,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let sample = appsink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
        let now = Instant::now();
        self.last_frame.frame();
        let seq = self.stats.decoded.fetch_add(1, Ordering::Relaxed);
        let pts = sample.buffer().and_then(|b| b.pts());
        // Running time: a file's first frame is at 0 even when its PTS start later (an MP4 edit
        // list starts them at the B-frame delay).
        let pts_ns = pts
            .and_then(|p| {
                sample
                    .segment()
                    .and_then(|s| s.downcast_ref::<gst::ClockTime>())
                    .and_then(|s| s.to_running_time(p))
                    .or(Some(p))
            })
            .map_or(0, gst::ClockTime::nseconds);
        if let Some(interval) = self.interval_ns {
            if !self.sampler.keep(pts_ns, interval) {
                self.stats.drop_frame(DropReason::Sampled);
                return Ok(gst::FlowSuccess::Ok);
            }
        }
        let rgb = match packed_rgb(&sample) {
            Ok(rgb) => rgb,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a decoded frame");
                return Err(gst::FlowError::Error);
            }
        };
        let frame = Frame {
            seq,
            rgb,
            pts_ms: pts_ns / 1_000_000,
            decoded_at: now,
            decode_latency: pts.and_then(|p| self.decode_latency(p, now)),
        };
        match &self.sink {
            FrameSink::Latest(slot) => {
                if slot.put(frame) {
                    self.stats.drop_frame(DropReason::Replaced);
                }
                Ok(gst::FlowSuccess::Ok)
            }
            FrameSink::Ordered(tx) => {
                // Time spent waiting for the detector is not a stall of the source.
                self.last_frame.handing_over(true);
                let sent = tx.blocking_send(frame);
                self.last_frame.handing_over(false);
                sent.map(|()| gst::FlowSuccess::Ok)
                    .map_err(|_| gst::FlowError::Flushing)
            }
        }
    }

    /// Time since the buffer with this `pts` entered the decoder (forgetting older entries).
    fn decode_latency(&self, pts: gst::ClockTime, now: Instant) -> Option<Duration> {
        let mut a = self.arrivals.lock().ok()?;
        while let Some(&(p, t)) = a.front() {
            if p > pts {
                return None;
            }
            a.pop_front();
            if p == pts {
                return Some(now.saturating_duration_since(t));
            }
        }
        None
    }
}

/// Copies a sample's RGB rows (GStreamer pads each row to 4 bytes) into packed RGB24.
fn packed_rgb(sample: &gst::Sample) -> Result<Rgb, String> {
    let caps = sample.caps().ok_or("the frame has no caps")?;
    let info = gst_video::VideoInfo::from_caps(caps).map_err(|e| e.to_string())?;
    let buffer = sample.buffer().ok_or("the frame has no buffer")?;
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info)
        .map_err(|e| e.to_string())?;
    let (w, h) = (info.width() as usize, info.height() as usize);
    let stride = *frame.plane_stride().first().ok_or("no plane")? as usize;
    let plane = frame.plane_data(0).map_err(|e| e.to_string())?;
    let row = w * 3;
    if stride < row || plane.len() < stride * h.saturating_sub(1) + row {
        return Err(format!(
            "frame plane of {} bytes is too small for {w}x{h}",
            plane.len()
        ));
    }
    let mut data = Vec::with_capacity(row * h);
    if stride == row {
        data.extend_from_slice(&plane[..row * h]);
    } else {
        for y in 0..h {
            data.extend_from_slice(&plane[y * stride..y * stride + row]);
        }
    }
    Ok(Rgb {
        width: info.width(),
        height: info.height(),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::Sampler;

    fn kept(times_ms: &[f64], fps: f64) -> Vec<usize> {
        let mut s = Sampler::default();
        let interval = (1e9 / fps) as u64;
        times_ms
            .iter()
            .enumerate()
            .filter(|(_, t)| s.keep((*t * 1e6) as u64, interval))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn samples_on_a_grid_from_the_first_frame() {
        let ten: Vec<f64> = (0..8).map(|i| 200.0 + i as f64 * 100.0).collect();
        assert_eq!(kept(&ten, 5.0), vec![0, 2, 4, 6]);
        let thirty: Vec<f64> = (0..10).map(|i| i as f64 * 1000.0 / 30.0).collect();
        assert_eq!(kept(&thirty, 10.0), vec![0, 3, 6, 9]);
        // A gap does not make a burst: the grid jumps past it.
        assert_eq!(
            kept(&[0.0, 100.0, 1000.0, 1100.0, 1200.0], 5.0),
            vec![0, 2, 4]
        );
        assert_eq!(kept(&[0.0, 0.0, 0.0], 1.0), vec![0]);
    }
}

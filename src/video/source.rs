//! GStreamer ingestion of one stream attempt: starts it off the async threads within a bound,
//! builds the pipeline for a `Source` (`uridecodebin3`, or `v4l2src ! decodebin3`, then
//! `videoconvert ! video/x-raw,format=RGB ! appsink`), reports the decoder `decodebin3` chose,
//! hands decoded RGB frames to the attempt's hand-over (`video::attempt`), and watches the bus
//! (end, errors, stalls), then tears the pipeline down. The only module that uses GStreamer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use tokio::sync::{mpsc, oneshot};

use super::attempt::{
    check_local, stopping_pipelines, Attempt, DropReason, Frame, FrameSink, FrameSource, Frames,
    LatestSlot, Outcome, SourceError, SourceOptions, SourceStats, Starting, StoppingMark,
    MAX_STOPPING,
};
use super::spec::Source;
use crate::preprocess::Rgb;

static INIT: Once = Once::new();
static INIT_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Initialises GStreamer once per process.
pub(crate) fn init() -> Result<(), SourceError> {
    INIT.call_once(|| {
        if let Err(e) = gst::init() {
            if let Ok(mut slot) = INIT_ERROR.lock() {
                *slot = Some(e.to_string());
            }
        }
    });
    match INIT_ERROR.lock().ok().and_then(|e| e.clone()) {
        Some(e) => Err(SourceError::Init(e)),
        None => Ok(()),
    }
}

/// Which of `names` are not installed GStreamer elements.
pub(crate) fn missing_elements<'a>(names: &[&'a str]) -> Vec<&'a str> {
    if init().is_err() {
        return names.to_vec();
    }
    names
        .iter()
        .copied()
        .filter(|n| gst::ElementFactory::find(n).is_none())
        .collect()
}

/// GStreamer's version, as `1.22.0`.
pub(crate) fn gstreamer_version() -> Option<String> {
    init().ok()?;
    let (a, b, c, _) = gst::version();
    Some(format!("{a}.{b}.{c}"))
}

/// How long a pipeline stopped by its caller may take to finish a state change in progress before
/// it is torn down.
const SETTLE_MS: u64 = 2000;

/// Pipeline timestamps of buffers entering the decoder, to measure decode latency.
type Arrivals = Arc<Mutex<VecDeque<(gst::ClockTime, Instant)>>>;

/// The daemon's frame source: a GStreamer pipeline per attempt ([`start_within`]).
pub(crate) struct Gstreamer;

impl FrameSource for Gstreamer {
    fn start<'a>(
        &'a self,
        source: &'a Source,
        opts: SourceOptions,
        stats: Arc<SourceStats>,
        limit: Duration,
    ) -> Starting<'a> {
        Box::pin(start_within(source, opts, stats, limit))
    }
}

/// Starts an attempt on a thread of its own, never on the async workers: opening a source can
/// block (a FIFO's `open`, a server that answers a byte a second). No answer within `limit` fails
/// the attempt; the thread, if it ever gets its pipeline started, stops it again at once.
pub(crate) async fn start_within(
    source: &Source,
    opts: SourceOptions,
    stats: Arc<SourceStats>,
    limit: Duration,
) -> Result<Attempt, SourceError> {
    let stopping = stopping_pipelines();
    if stopping >= MAX_STOPPING {
        return Err(SourceError::Start(format!(
            "{stopping} stream pipelines are still stopping (their servers do not let go); no new one starts until fewer are"
        )));
    }
    let (tx, rx) = oneshot::channel();
    let source = source.clone();
    std::thread::Builder::new()
        .name("iv-stream-start".into())
        .spawn(move || {
            // A late attempt is dropped here (the receiver is gone), which stops it.
            let _ = tx.send(start(&source, opts, stats));
        })
        .map_err(|e| SourceError::Start(format!("cannot start a thread: {e}")))?;
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(SourceError::Start(
            "the start thread ended without a word".into(),
        )),
        Err(_) => Err(SourceError::Start(format!(
            "the source did not start within {} s",
            limit.as_secs_f64()
        ))),
    }
}

/// Builds the pipeline for `source`, starts it, and returns the running attempt. Blocking: use
/// [`start_within`] from async code.
pub(crate) fn start(
    source: &Source,
    opts: SourceOptions,
    stats: Arc<SourceStats>,
) -> Result<Attempt, SourceError> {
    init()?;
    check_local(source)?;
    let pipeline = gst::Pipeline::new();
    let arrivals: Arrivals = Arc::new(Mutex::new(VecDeque::new()));
    watch_decoder(&pipeline, &stats, &arrivals);
    let (sink, frames) = if source.is_live() {
        let slot = Arc::new(LatestSlot::default());
        (FrameSink::Latest(slot.clone()), Frames::Latest(slot))
    } else {
        let (tx, rx) = mpsc::channel(2);
        (FrameSink::Ordered(tx), Frames::Ordered(rx))
    };
    let last_frame = Arc::new(Progress::new());
    let convert = build_output(
        &pipeline,
        source,
        opts,
        sink,
        &stats,
        &arrivals,
        &last_frame,
    )?;
    build_input(&pipeline, source, opts, &convert)?;
    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        let why = first_error(&pipeline).unwrap_or_else(|| e.to_string());
        let _ = pipeline.set_state(gst::State::Null);
        return Err(SourceError::Start(why));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let stall = opts.stall_timeout;
    let (tx, outcome) = oneshot::channel();
    let (stopped_tx, stopped) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("iv-stream-bus".into())
        .spawn(move || {
            let o = watch_bus(&pipeline, &stop2, stall, &last_frame);
            let _mark = StoppingMark::new();
            let stopped_early = o == Outcome::Stopped;
            // Told before the teardown, which can take long (a server that does not answer).
            let _ = tx.send(o);
            if stopped_early {
                // GStreamer 1.22 can deadlock when a pipeline is set to NULL while decodebin3 is
                // still typefinding (gst_pad_stop_task against a lock the typefind thread waits
                // for): let a starting pipeline finish its state change first, within a bound.
                let _ = pipeline.state(gst::ClockTime::from_mseconds(SETTLE_MS));
            }
            let _ = pipeline.set_state(gst::State::Null);
            drop(pipeline);
            drop(stopped_tx);
        });
    if let Err(e) = spawned {
        return Err(SourceError::Start(format!(
            "cannot start the bus thread: {e}"
        )));
    }
    Ok(Attempt::new(frames, stats, stop, outcome, stopped))
}

/// Records the video decoder `decodebin3` picks, and probes its input for decode latency.
fn watch_decoder(pipeline: &gst::Pipeline, stats: &Arc<SourceStats>, arrivals: &Arrivals) {
    let stats = stats.clone();
    let arrivals = arrivals.clone();
    pipeline.connect_deep_element_added(move |_, _, element| {
        let Some(factory) = element.factory() else {
            return;
        };
        let klass = factory.metadata(gst::ELEMENT_METADATA_KLASS).unwrap_or("");
        // Video decoders, and image decoders fed by a video source (`jpegdec` for MJPEG).
        if !(klass.contains("Decoder") && (klass.contains("Video") || klass.contains("Image"))) {
            return;
        }
        if let Ok(mut d) = stats.decoder.lock() {
            *d = Some(factory.name().to_string());
        }
        let Some(pad) = element.static_pad("sink") else {
            return;
        };
        let arrivals = arrivals.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if let Some(pts) = info.buffer().and_then(|b| b.pts()) {
                if let Ok(mut a) = arrivals.lock() {
                    if a.len() >= 256 {
                        a.pop_front();
                    }
                    a.push_back((pts, Instant::now()));
                }
            }
            gst::PadProbeReturn::Ok
        });
    });
}

fn make(factory: &str) -> Result<gst::Element, SourceError> {
    gst::ElementFactory::make(factory).build().map_err(|_| {
        SourceError::Build(format!(
            "GStreamer element {factory} is missing (install the GStreamer plugins)"
        ))
    })
}

/// `videoconvert ! video/x-raw,format=RGB ! appsink`; returns the converter to link decoded
/// video into.
fn build_output(
    pipeline: &gst::Pipeline,
    source: &Source,
    opts: SourceOptions,
    sink: FrameSink,
    stats: &Arc<SourceStats>,
    arrivals: &Arrivals,
    last_frame: &Arc<Progress>,
) -> Result<gst::Element, SourceError> {
    let convert = make("videoconvert")?;
    let caps = gst_video::VideoCapsBuilder::new()
        .format(gst_video::VideoFormat::Rgb)
        .build();
    let live = source.is_live();
    let appsink = gst_app::AppSink::builder()
        .caps(&caps)
        .sync(false)
        .enable_last_sample(false)
        .max_buffers(if live { 1 } else { 2 })
        .drop(live)
        .build();
    let mut on_frame = FrameCallback {
        sink,
        stats: stats.clone(),
        arrivals: arrivals.clone(),
        last_frame: last_frame.clone(),
        interval_ns: (!live && opts.max_fps > 0.0).then(|| (1e9 / opts.max_fps) as u64),
        sampler: Sampler::default(),
    };
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| on_frame.on_sample(s))
            .build(),
    );
    pipeline
        .add_many([&convert, appsink.upcast_ref()])
        .map_err(|e| SourceError::Build(e.to_string()))?;
    convert
        .link(&appsink)
        .map_err(|e| SourceError::Build(format!("cannot link videoconvert to appsink: {e}")))?;
    Ok(convert)
}

/// The source part: `uridecodebin3 uri=…` or `v4l2src device=… ! decodebin3`, whose video pad is
/// linked to `convert` once it appears (other streams, e.g. audio, go to a `fakesink`).
fn build_input(
    pipeline: &gst::Pipeline,
    source: &Source,
    opts: SourceOptions,
    convert: &gst::Element,
) -> Result<(), SourceError> {
    let decoder = match (source, source.uri()) {
        (Source::V4l2(dev), _) => {
            let src = make("v4l2src")?;
            src.set_property("device", dev.to_string_lossy().to_string());
            let dec = make("decodebin3")?;
            pipeline
                .add_many([&src, &dec])
                .map_err(|e| SourceError::Build(e.to_string()))?;
            src.link(&dec)
                .map_err(|e| SourceError::Build(format!("cannot link v4l2src: {e}")))?;
            dec
        }
        (_, Some(uri)) => {
            let dec = make("uridecodebin3")?;
            dec.set_property("uri", uri);
            let rtsp_timeout = opts.rtsp_timeout;
            dec.connect("source-setup", false, move |args| {
                if let Some(Ok(src)) = args.get(1).map(|v| v.get::<gst::Element>()) {
                    configure_source(&src, rtsp_timeout);
                }
                None
            });
            pipeline
                .add(&dec)
                .map_err(|e| SourceError::Build(e.to_string()))?;
            dec
        }
        (_, None) => return Err(SourceError::Build("the source has no URI".into())),
    };
    let convert = convert.downgrade();
    let bin = pipeline.downgrade();
    decoder.connect_pad_added(move |_, pad| {
        let (Some(convert), Some(bin)) = (convert.upgrade(), bin.upgrade()) else {
            return;
        };
        link_pad(pad, &convert, &bin);
    });
    Ok(())
}

/// Sets RTSP timeouts on `rtspsrc` (UDP first, TCP when UDP gets nothing within the timeout:
/// rtspsrc's own fallback) and a short jitter buffer.
fn configure_source(src: &gst::Element, timeout: Duration) {
    // Only rtspsrc: `set_property` with another element's types would panic.
    if src.factory().is_none_or(|f| f.name() != "rtspsrc") {
        return;
    }
    let us = timeout.as_micros() as u64;
    src.set_property("tcp-timeout", us);
    src.set_property("timeout", us);
    src.set_property("latency", 200u32);
    src.set_property("drop-on-latency", true);
}

/// Links a new decoded pad: the first video pad to the converter, anything else to a fakesink.
fn link_pad(pad: &gst::Pad, convert: &gst::Element, bin: &gst::Pipeline) {
    // decodebin3 names its pads by stream type (`video_0`) and knows their stream before the
    // caps are fixed (RTSP pads can come without caps).
    let is_video = pad
        .stream()
        .map(|s| s.stream_type().contains(gst::StreamType::VIDEO))
        .or_else(|| {
            pad.current_caps()
                .and_then(|c| c.structure(0).map(|s| s.name().starts_with("video/")))
        })
        .unwrap_or_else(|| pad.name().starts_with("video"));
    if is_video {
        if let Some(sinkpad) = convert.static_pad("sink") {
            if !sinkpad.is_linked() {
                if let Err(e) = pad.link(&sinkpad) {
                    tracing::warn!(error = ?e, "cannot link the decoded video pad");
                }
                return;
            }
        }
    }
    let Ok(fake) = gst::ElementFactory::make("fakesink")
        .property("sync", false)
        .property("async", false)
        .build()
    else {
        return;
    };
    if bin.add(&fake).is_ok() {
        let _ = fake.sync_state_with_parent();
        if let Some(sinkpad) = fake.static_pad("sink") {
            let _ = pad.link(&sinkpad);
        }
    }
}

/// The appsink's `new-sample` handler.
struct FrameCallback {
    sink: FrameSink,
    stats: Arc<SourceStats>,
    arrivals: Arrivals,
    last_frame: Arc<Progress>,
    /// Files with `max_fps`: keep a frame per interval of stream time.
    interval_ns: Option<u64>,
    sampler: Sampler,
}

/// Keeps one frame per interval of stream time, on a grid anchored at the first frame kept (1 ms
/// of slack, so 30 fps sampled at 10 fps keeps every third frame despite rounded timestamps).
#[derive(Debug, Default)]
struct Sampler {
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
    fn on_sample(
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

/// The first error message waiting on the pipeline's bus.
fn first_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(e) = msg.view() {
            return Some(error_text(e));
        }
    }
    None
}

fn error_text(e: &gst::message::Error) -> String {
    let src = e
        .src()
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| "pipeline".into());
    format!("{src}: {}", e.error())
}

/// When the source last gave a frame, and whether it is handing one over now (a file's frame
/// waits for the detector: that time is not the source's).
#[derive(Debug)]
struct Progress {
    last: Mutex<Instant>,
    handing_over: AtomicBool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            last: Mutex::new(Instant::now()),
            handing_over: AtomicBool::new(false),
        }
    }

    /// A frame came (or was handed over): the idle clock starts again.
    fn frame(&self) {
        if let Ok(mut t) = self.last.lock() {
            *t = Instant::now();
        }
    }

    fn handing_over(&self, on: bool) {
        if !on {
            self.frame();
        }
        self.handing_over.store(on, Ordering::SeqCst);
    }

    /// How long the source has given nothing while nobody held it up.
    fn idle(&self) -> Duration {
        if self.handing_over.load(Ordering::SeqCst) {
            return Duration::ZERO;
        }
        self.last.lock().map(|t| t.elapsed()).unwrap_or_default()
    }
}

/// Polls the bus until the end, an error, a stall (no frame for `stall` while nothing held the
/// source up: live sources and files alike) or `stop`.
fn watch_bus(
    pipeline: &gst::Pipeline,
    stop: &AtomicBool,
    stall: Duration,
    last_frame: &Progress,
) -> Outcome {
    let Some(bus) = pipeline.bus() else {
        return Outcome::Error("the pipeline has no bus".into());
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            return Outcome::Stopped;
        }
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(100),
            &[gst::MessageType::Error, gst::MessageType::Eos],
        );
        match msg.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Eos(_)) => return Outcome::Eos,
            Some(gst::MessageView::Error(e)) => return Outcome::Error(error_text(e)),
            _ => {}
        }
        if last_frame.idle() > stall {
            return Outcome::Error(format!("no frame for {} s", stall.as_secs_f64()));
        }
    }
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

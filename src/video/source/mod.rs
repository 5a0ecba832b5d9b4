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
use tokio::sync::{mpsc, oneshot};

use super::attempt::{
    check_local, stopping_pipelines, Attempt, FrameSink, FrameSource, Frames, LatestSlot, Outcome,
    SourceError, SourceOptions, SourceStats, Starting, StoppingMark, MAX_STOPPING,
};
use crate::spec::Source;

mod sample;
use sample::{Arrivals, FrameCallback, Progress, Sampler};

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

//! One stream attempt as its run sees it, with no GStreamer in it: the frames it hands over (a
//! one-frame slot for live sources, a bounded channel for files), how it ended, its teardown
//! (bounded by the caller, counted when abandoned, waited for before the stream's next attempt),
//! the daemon-wide count of pipelines still stopping, and the check that a local source is a
//! regular file or a device before anything opens it. `video::source` builds and runs the
//! pipelines behind it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};

use crate::preprocess::Rgb;
use crate::spec::Source;

/// One decoded frame.
#[derive(Debug)]
pub(crate) struct Frame {
    /// The stream's frame number: frames decoded before it, over every attempt.
    pub seq: u64,
    pub rgb: Rgb,
    /// Presentation time in milliseconds from the stream's start (0 when the source gave none).
    pub pts_ms: u64,
    /// When the frame left GStreamer.
    pub decoded_at: Instant,
    /// Time from the compressed buffer entering the decoder to this RGB frame, when known.
    pub decode_latency: Option<Duration>,
}

/// Settings of one attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SourceOptions {
    /// Files only: keep one frame per `1/max_fps` of stream time (0: every frame).
    pub max_fps: f64,
    /// Live sources: no frame for this long ends the attempt with an error.
    pub stall_timeout: Duration,
    /// RTSP: connection and UDP-fallback timeouts.
    pub rtsp_timeout: Duration,
}

/// Counters of one stream, shared by its attempts.
#[derive(Debug, Default)]
pub(crate) struct SourceStats {
    /// Frames decoded and handed over or dropped.
    pub decoded: AtomicU64,
    /// Frames decoded but not processed, by [`DropReason`].
    dropped: [AtomicU64; 3],
    /// The decoder element's factory name (e.g. `avdec_h264`, `nvh264dec`).
    pub decoder: Mutex<Option<String>>,
}

/// Why a decoded frame was not processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// A live source's newer frame took its place while the detector was busy.
    Replaced,
    /// Left out by `max_fps` (a file's sampling by timestamp, or a live source's pacing).
    Sampled,
    /// Its detection failed (`queue_full`, a stopped service, a bad frame).
    Failed,
}

impl DropReason {
    pub(crate) const ALL: [DropReason; 3] = [
        DropReason::Replaced,
        DropReason::Sampled,
        DropReason::Failed,
    ];

    /// The metric label.
    pub(crate) fn name(self) -> &'static str {
        match self {
            DropReason::Replaced => "replaced",
            DropReason::Sampled => "sampled",
            DropReason::Failed => "failed",
        }
    }
}

impl SourceStats {
    /// Counts a frame not processed.
    pub(crate) fn drop_frame(&self, why: DropReason) {
        self.dropped[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Frames not processed for `why`.
    pub(crate) fn dropped(&self, why: DropReason) -> u64 {
        self.dropped[why as usize].load(Ordering::Relaxed)
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// The source ended (end of a file; a live source that hung up).
    Eos,
    Error(String),
    /// Stopped by the caller.
    Stopped,
}

/// Why a pipeline could not be built or started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    #[error("GStreamer is not usable: {0}")]
    Init(String),
    #[error("cannot build the pipeline: {0}")]
    Build(String),
    #[error("cannot start the pipeline: {0}")]
    Start(String),
}

/// The consumer's side of the frame hand-over.
pub(super) enum Frames {
    /// Live: the newest frame only.
    Latest(Arc<LatestSlot>),
    /// Files: every frame, in order.
    Ordered(mpsc::Receiver<Frame>),
}

impl Frames {
    /// The next frame; `None` when the producer is gone and nothing is left.
    async fn next(&mut self) -> Option<Frame> {
        match self {
            Frames::Latest(slot) => Some(slot.take().await),
            Frames::Ordered(rx) => rx.recv().await,
        }
    }

    /// A frame already waiting, if any.
    fn try_next(&mut self) -> Option<Frame> {
        match self {
            Frames::Latest(slot) => slot.try_take(),
            Frames::Ordered(rx) => rx.try_recv().ok(),
        }
    }
}

/// A one-frame slot: a new frame replaces one not yet taken.
#[derive(Default)]
pub(super) struct LatestSlot {
    frame: Mutex<Option<Frame>>,
    notify: Notify,
}

impl LatestSlot {
    /// Puts `f`, returning whether it replaced a frame nobody took.
    pub(super) fn put(&self, f: Frame) -> bool {
        let replaced = match self.frame.lock() {
            Ok(mut slot) => slot.replace(f).is_some(),
            Err(_) => false,
        };
        self.notify.notify_one();
        replaced
    }

    /// The frame waiting, if any.
    fn try_take(&self) -> Option<Frame> {
        self.frame.lock().ok().and_then(|mut s| s.take())
    }

    async fn take(&self) -> Frame {
        loop {
            let notified = self.notify.notified();
            if let Some(f) = self.try_take() {
                return f;
            }
            notified.await;
        }
    }
}

/// The producer's side, owned by the appsink callback.
pub(super) enum FrameSink {
    Latest(Arc<LatestSlot>),
    Ordered(mpsc::Sender<Frame>),
}

/// A running attempt: `next` gives its frames until it ends; `finish` stops it (if it still runs)
/// and says how it ended.
pub(crate) struct Attempt {
    /// `None` once `finish` let go of it.
    frames: Option<Frames>,
    stats: Arc<SourceStats>,
    stop: Arc<AtomicBool>,
    /// How it ended: sent by the bus thread before the teardown.
    outcome: oneshot::Receiver<Outcome>,
    /// Closed once the pipeline has reached the NULL state (the bus thread ends).
    stopped: oneshot::Receiver<()>,
    ended: Option<Outcome>,
}

impl Attempt {
    /// A running attempt: `frames` its hand-over, `stop` read by its bus thread, which sends
    /// `outcome` at the attempt's end and drops `stopped`'s sender once the pipeline is down.
    pub(super) fn new(
        frames: Frames,
        stats: Arc<SourceStats>,
        stop: Arc<AtomicBool>,
        outcome: oneshot::Receiver<Outcome>,
        stopped: oneshot::Receiver<()>,
    ) -> Self {
        Attempt {
            frames: Some(frames),
            stats,
            stop,
            outcome,
            stopped,
            ended: None,
        }
    }

    /// The next frame; `None` once the pipeline has stopped and every frame it gave was taken.
    pub(crate) async fn next(&mut self) -> Option<Frame> {
        let frames = self.frames.as_mut()?;
        if self.ended.is_some() {
            return frames.try_next();
        }
        tokio::select! {
            biased;
            f = frames.next() => match f {
                Some(f) => Some(f),
                None => {
                    self.ended = Some(recv_outcome(&mut self.outcome).await);
                    None
                }
            },
            o = &mut self.outcome => {
                self.ended = Some(o.unwrap_or_else(|_| lost_thread()));
                frames.try_next()
            }
        }
    }

    /// `f`, or a newer frame that arrived while the run waited for its `max_fps` slot (live
    /// sources; `f` then counts as sampled out).
    pub(crate) fn newest(&mut self, f: Frame) -> Frame {
        match &self.frames {
            Some(Frames::Latest(slot)) => match slot.try_take() {
                Some(newer) => {
                    self.stats.drop_frame(DropReason::Sampled);
                    newer
                }
                None => f,
            },
            _ => f,
        }
    }

    /// Stops the pipeline if it still runs and says how the attempt ended, with the pipeline if
    /// it is still being torn down ([`Stopping`]: the caller waits for it before starting another).
    /// An attempt that ended by itself answers at once (its teardown goes on meanwhile); one
    /// stopped here waits for its teardown at most `limit`: a pipeline whose teardown hangs (a
    /// GStreamer deadlock, a server that trickles its answer) is left to its bus thread and counted
    /// in [`abandoned_pipelines`].
    pub(crate) async fn finish(mut self, limit: Duration) -> (Outcome, Option<Stopping>) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblocks a streaming thread waiting to hand over a file's frame.
        self.frames = None;
        let (_, stopped) = oneshot::channel();
        let mut stopped = std::mem::replace(&mut self.stopped, stopped);
        if let Some(o) = self.ended.take() {
            let down = !matches!(stopped.try_recv(), Err(oneshot::error::TryRecvError::Empty));
            return (o, (!down).then_some(Stopping(stopped)));
        }
        let deadline = tokio::time::Instant::now() + limit;
        let outcome = tokio::time::timeout_at(deadline, recv_outcome(&mut self.outcome))
            .await
            .unwrap_or(Outcome::Stopped);
        if tokio::time::timeout_at(deadline, &mut stopped)
            .await
            .is_ok()
        {
            return (outcome, None);
        }
        ABANDONED.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            limit_s = limit.as_secs_f64(),
            "a stream pipeline did not stop in time; it is left to its own thread"
        );
        (outcome, Some(Stopping(stopped)))
    }
}

/// A future that starts an attempt.
pub(crate) type Starting<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Attempt, SourceError>> + Send + 'a>>;

/// Where a stream's attempts come from: GStreamer pipelines in the daemon
/// (`source::Gstreamer`), scripted frames in the in-process tests.
pub(crate) trait FrameSource: Send + Sync {
    /// Starts an attempt of `source`; no attempt within `limit` is an error.
    fn start<'a>(
        &'a self,
        source: &'a Source,
        opts: SourceOptions,
        stats: Arc<SourceStats>,
        limit: Duration,
    ) -> Starting<'a>;
}

/// A pipeline still being torn down by its thread.
pub(crate) struct Stopping(oneshot::Receiver<()>);

impl Stopping {
    /// Waits until the pipeline has stopped.
    pub(crate) async fn wait(self) {
        let _ = self.0.await;
    }
}

impl Drop for Attempt {
    /// An attempt dropped without `finish` (its run cancelled, a start that came too late) stops
    /// its pipeline all the same.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Pipelines whose teardown did not end within its limit, since the process started.
static ABANDONED: AtomicU64 = AtomicU64::new(0);

/// Pipelines abandoned because their teardown hung.
pub(crate) fn abandoned_pipelines() -> u64 {
    ABANDONED.load(Ordering::Relaxed)
}

/// Pipelines being torn down right now (a bus thread between the attempt's end and NULL).
static STOPPING: AtomicU64 = AtomicU64::new(0);

/// Pipelines being torn down right now.
pub(crate) fn stopping_pipelines() -> u64 {
    STOPPING.load(Ordering::Relaxed)
}

/// Counts a pipeline as stopping while it lives.
pub(super) struct StoppingMark;

impl StoppingMark {
    pub(super) fn new() -> Self {
        STOPPING.fetch_add(1, Ordering::Relaxed);
        StoppingMark
    }
}

impl Drop for StoppingMark {
    fn drop(&mut self) {
        STOPPING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Pipelines that may be stopping at once, daemon-wide: beyond it no attempt starts (each one
/// stuck in its teardown holds threads and sockets until its server lets go).
pub(crate) const MAX_STOPPING: u64 = 32;

fn lost_thread() -> Outcome {
    Outcome::Error("the stream's bus thread ended without a word".into())
}

async fn recv_outcome(rx: &mut oneshot::Receiver<Outcome>) -> Outcome {
    rx.await.unwrap_or_else(|_| lost_thread())
}

/// Checks what a local source is before GStreamer opens it: a file stream must be a regular file
/// (a FIFO or a device would block the opening thread, a folder fails obscurely), a V4L2 source
/// a character device.
pub(crate) fn check_local(source: &Source) -> Result<(), SourceError> {
    use std::os::unix::fs::FileTypeExt;
    let (path, want_file) = match source {
        Source::File(p) => (p, true),
        Source::V4l2(p) => (p, false),
        _ => return Ok(()),
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| SourceError::Start(format!("{}: {e}", path.display())))?;
    let ft = meta.file_type();
    match (want_file, ft.is_file(), ft.is_char_device()) {
        (true, true, _) | (false, _, true) => Ok(()),
        (true, ..) => Err(SourceError::Start(format!(
            "{} is not a regular file",
            path.display()
        ))),
        (false, ..) => Err(SourceError::Start(format!(
            "{} is not a video device",
            path.display()
        ))),
    }
}

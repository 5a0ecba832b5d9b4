//! The inference worker: one OS thread owns the `Detector` (and so the ONNX Runtime sessions) and
//! runs a TEI-shaped dynamic batcher: it waits for a first job, gathers more until `max_batch` or
//! `max_wait`, skips jobs whose caller has gone, runs the image tower once for the batch and
//! post-processes each job with its own queries. A batch-wide error is cloned to every job of the
//! batch. It reports through `Metrics` and its `Heartbeat`, nothing else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::error::DetectError;
use super::metrics::Metrics;
use crate::pipeline::{
    Detector, Exemplar, ExemplarSource, ExemplarSpec, PipelineError, PlannedExemplar, QueryPlan,
};
use crate::postprocess::{Detection, PostParams};

/// An exemplar's image, or its embedding when the cache already had it.
pub(crate) enum ExemplarData {
    Decoded(crate::preprocess::Rgb),
    Embedded(Arc<[f32]>),
}

/// An exemplar query of a job.
pub(crate) struct JobExemplar {
    /// SHA-256 of the encoded image (with the box: the embedding cache key).
    pub(crate) key: String,
    pub(crate) data: ExemplarData,
    pub(crate) bbox: Option<[f32; 4]>,
    /// `None` only for a negative that applies to every query.
    pub(crate) label: Option<String>,
    pub(crate) negative: bool,
}

/// One admitted request, already decoded and preprocessed.
pub(crate) struct Job {
    pub(crate) pixels: Vec<f32>,
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) queries: Vec<String>,
    /// Exemplar queries (positives after the text ones; negatives).
    pub(crate) exemplars: Vec<JobExemplar>,
    pub(crate) params: PostParams,
    pub(crate) enqueued: Instant,
    pub(crate) reply: oneshot::Sender<Result<JobOutput, DetectError>>,
    /// The request's queue slot: freed when the job is answered or dropped, not before.
    pub(crate) _permit: OwnedSemaphorePermit,
}

impl Job {
    /// Frees the queue slot, then answers: a caller that reads the queue depth right after its
    /// answer no longer counts itself.
    fn answer(self, result: Result<JobOutput, DetectError>) {
        let Job { reply, _permit, .. } = self;
        drop(_permit);
        let _ = reply.send(result);
    }
}

/// What the worker answers for a job.
#[derive(Debug, Clone)]
pub(crate) struct JobOutput {
    pub(crate) detections: Vec<Detection>,
    pub(crate) queue_ms: f64,
    pub(crate) inference_ms: f64,
    pub(crate) postprocess_ms: f64,
    pub(crate) batch_size: usize,
}

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchConfig {
    pub(crate) max_batch: usize,
    pub(crate) max_wait: Duration,
}

/// When the worker last turned its loop (read by the watchdog: a stuck inference stops it).
#[derive(Debug)]
pub(crate) struct Heartbeat {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Heartbeat {
    fn new() -> Self {
        Heartbeat {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn beat(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the worker's last loop turn.
    pub(crate) fn age_ms(&self) -> u64 {
        self.now_ms()
            .saturating_sub(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The running worker thread; it stops once every sender is dropped and the queue is empty.
pub(crate) struct Worker {
    /// Read by [`Worker::join`], which tests call; the daemon detaches the worker.
    #[cfg_attr(not(test), allow(dead_code))]
    join: JoinHandle<()>,
}

impl Worker {
    /// Waits until the worker has answered every queued job and stopped.
    #[cfg(test)]
    pub(crate) fn join(self) {
        if self.join.join().is_err() {
            tracing::error!("the inference worker panicked");
        }
    }
}

/// Starts the worker thread.
pub(crate) fn spawn(
    det: Detector,
    metrics: Arc<Metrics>,
    cfg: BatchConfig,
) -> std::io::Result<(Sender<Job>, Arc<Heartbeat>, Worker)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let heartbeat = Arc::new(Heartbeat::new());
    let hb = heartbeat.clone();
    let join = std::thread::Builder::new()
        .name("iv-inference".into())
        .spawn(move || worker_loop(det, rx, &metrics, &hb, cfg))?;
    Ok((tx, heartbeat, Worker { join }))
}

/// A duration in milliseconds.
pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Waits for a first job, then gathers more until the batch is full or `max_wait` has passed;
/// `None` when every sender is gone.
fn next_batch(rx: &Receiver<Job>, hb: &Heartbeat, cfg: BatchConfig) -> Option<Vec<Job>> {
    let first = loop {
        hb.beat();
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(j) => break j,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    };
    let mut batch = vec![first];
    let deadline = Instant::now() + cfg.max_wait;
    while batch.len() < cfg.max_batch.max(1) {
        let now = Instant::now();
        let next = if now >= deadline {
            // Take what is already queued without waiting.
            rx.try_recv().ok()
        } else {
            rx.recv_timeout(deadline - now).ok()
        };
        match next {
            Some(j) => batch.push(j),
            None => break,
        }
    }
    Some(batch)
}

fn worker_loop(
    mut det: Detector,
    rx: Receiver<Job>,
    metrics: &Metrics,
    hb: &Heartbeat,
    cfg: BatchConfig,
) {
    while let Some(mut batch) = next_batch(&rx, hb, cfg) {
        batch.retain(|j| !j.reply.is_closed());
        if !batch.is_empty() {
            run_batch(&mut det, batch, metrics);
        }
    }
    tracing::info!("inference worker stopped");
}

/// A job's queries as embeddings ([`Detector::plan`]): its exemplars found in the cache before
/// it was queued come embedded, the others decoded.
fn plan(det: &mut Detector, job: &Job) -> Result<QueryPlan, PipelineError> {
    let exemplars: Vec<PlannedExemplar<'_>> = job
        .exemplars
        .iter()
        .map(|x| PlannedExemplar {
            spec: ExemplarSpec {
                label: x.label.as_deref(),
                negative: x.negative,
            },
            source: match &x.data {
                ExemplarData::Decoded(image) => ExemplarSource::Image(Exemplar {
                    content_key: &x.key,
                    image,
                    bbox: x.bbox,
                }),
                ExemplarData::Embedded(e) => ExemplarSource::Embedded(e.clone()),
            },
        })
        .collect();
    det.plan(&job.queries, &exemplars)
}

fn run_batch(det: &mut Detector, batch: Vec<Job>, metrics: &Metrics) {
    let start = Instant::now();
    // Query embeddings per job (cached; a bad query fails only its own job).
    let mut ready = Vec::with_capacity(batch.len());
    for job in batch {
        match plan(det, &job) {
            Ok(e) => ready.push((job, e)),
            Err(e) => job.answer(Err(e.into())),
        }
    }
    if ready.is_empty() {
        return;
    }
    let n = ready.len();
    let mut pixels = Vec::with_capacity(n * ready[0].0.pixels.len());
    for (job, _) in &ready {
        pixels.extend_from_slice(&job.pixels);
    }
    let t0 = Instant::now();
    let out = det.run_images(&pixels, n);
    let inference_ms = ms(t0.elapsed());
    metrics.observe_batch(n);
    metrics.observe_inference(inference_ms);
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            tracing::error!(error = %e, batch = n, "inference failed");
            let err = DetectError::from(e);
            for (job, _) in ready {
                job.answer(Err(err.clone()));
            }
            return;
        }
    };
    for (i, (job, plan)) in ready.into_iter().enumerate() {
        let t = Instant::now();
        let detections =
            Detector::postprocess(&out, i, &plan, (job.width, job.height), &job.params);
        let queue_ms = ms(start.saturating_duration_since(job.enqueued));
        metrics.observe_queue(queue_ms);
        job.answer(Ok(JobOutput {
            detections,
            queue_ms,
            inference_ms,
            postprocess_ms: ms(t.elapsed()),
            batch_size: n,
        }));
    }
}

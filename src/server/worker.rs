//! The inference worker: one OS thread owns the `Detector` (and so the ONNX Runtime sessions) and
//! runs a TEI-shaped dynamic batcher: it waits for a first job, gathers more until
//! `max_batch_size` or `max_batch_wait`, skips jobs whose client hung up, runs the image tower
//! once for the batch and post-processes each job with its own queries. A batch-wide error is
//! cloned to every job of the batch.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::error::ApiError;
use super::state::AppState;
use crate::pipeline::Detector;
use crate::postprocess::{Detection, PostParams};

/// One admitted request, already decoded and preprocessed.
pub struct Job {
    pub pixels: Vec<f32>,
    pub width: u32,
    pub height: u32,
    pub queries: Vec<String>,
    pub params: PostParams,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<JobOutput, ApiError>>,
}

/// What the worker answers for a job.
#[derive(Debug, Clone)]
pub struct JobOutput {
    pub detections: Vec<Detection>,
    pub queue_ms: f64,
    pub inference_ms: f64,
    pub postprocess_ms: f64,
    pub batch_size: usize,
}

/// Sends jobs to the worker.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: Sender<Job>,
}

impl WorkerHandle {
    /// Queues a job; gives it back if the worker has stopped.
    pub fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        self.tx.send(job).map_err(|e| Box::new(e.0))
    }
}

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_wait: Duration,
}

/// Starts the worker thread. It stops when every `WorkerHandle` is dropped.
pub fn spawn(
    det: Detector,
    state: Arc<AppState>,
    cfg: BatchConfig,
) -> std::io::Result<(WorkerHandle, JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::Builder::new()
        .name("iv-inference".into())
        .spawn(move || worker_loop(det, rx, state, cfg))?;
    Ok((WorkerHandle { tx }, h))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn worker_loop(mut det: Detector, rx: Receiver<Job>, state: Arc<AppState>, cfg: BatchConfig) {
    loop {
        state.beat();
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + cfg.max_wait;
        while batch.len() < cfg.max_batch.max(1) {
            let now = Instant::now();
            if now >= deadline {
                // Take what is already queued without waiting.
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
                continue;
            }
            match rx.recv_timeout(deadline - now) {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        batch.retain(|j| !j.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        run_batch(&mut det, batch, &state);
    }
    tracing::info!("inference worker stopped");
}

fn run_batch(det: &mut Detector, batch: Vec<Job>, state: &AppState) {
    let start = Instant::now();
    // Query embeddings per job (cached; a bad query fails only its own job).
    let before = det.cache_stats();
    let mut ready = Vec::with_capacity(batch.len());
    for job in batch {
        match det.query_embeddings(&job.queries) {
            Ok(e) => ready.push((job, e)),
            Err(e) => {
                let _ = job.reply.send(Err(ApiError::from(&e)));
            }
        }
    }
    let after = det.cache_stats();
    state
        .metrics
        .cache_hits
        .fetch_add(after.hits - before.hits, Ordering::Relaxed);
    state
        .metrics
        .cache_misses
        .fetch_add(after.misses - before.misses, Ordering::Relaxed);
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
    state.metrics.observe_batch(n);
    state.metrics.observe_inference(inference_ms);
    match out {
        Err(e) => {
            let err = ApiError::from(&e);
            tracing::error!(error = %e, batch = n, "inference failed");
            for (job, _) in ready {
                let _ = job.reply.send(Err(err.clone()));
            }
        }
        Ok(out) => {
            for (i, (job, emb)) in ready.into_iter().enumerate() {
                let t = Instant::now();
                let detections = Detector::postprocess(
                    &out,
                    i,
                    &emb,
                    &job.queries,
                    (job.width, job.height),
                    &job.params,
                );
                let queue_ms = ms(start.saturating_duration_since(job.enqueued));
                state.metrics.observe_queue(queue_ms);
                let _ = job.reply.send(Ok(JobOutput {
                    detections,
                    queue_ms,
                    inference_ms,
                    postprocess_ms: ms(t.elapsed()),
                    batch_size: n,
                }));
            }
        }
    }
}

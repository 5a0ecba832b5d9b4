//! The detection service: the one entry point for a detection, shaped like text-embeddings-inference's
//! `Infer`. `DetectService` is a `Clone` handle used by the HTTP API, the warmup and the video
//! streams' runs alike. It owns, in this order: validation (thresholds, query rules: once), admission
//! (a semaphore of `max_queue` slots, failing fast with `queue_full`), decoding and preprocessing
//! on the blocking pool, and the batcher with its worker thread (`batcher`). It returns a typed
//! `DetectError` and knows nothing about HTTP, listeners or the daemon's lifecycle.

mod batcher;
pub(crate) mod error;
mod exemplar;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod metrics;
pub(crate) mod query_sets;

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use batcher::ms;
pub(crate) use batcher::{Heartbeat, Worker};
pub(crate) use error::DetectError;
pub(crate) use exemplar::ExemplarInput;
pub(crate) use metrics::Metrics;
pub(crate) use query_sets::{QuerySet, QuerySets};

use crate::config::Config;
use crate::model::tokenizer::QueryRules;
use crate::pipeline::{CacheStats, Detector, EmbeddingCache, Exemplar, ExemplarSpec};
use crate::postprocess::{Detection, PostParams};
use crate::preprocess::{self, Header, ImageError, ImageLimits, PreprocessConfig, Rgb};

/// The service's limits and defaults (from the daemon's `Config`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ServiceConfig {
    /// Requests admitted at once (between admission and answer).
    pub max_queue: usize,
    pub max_batch: usize,
    pub max_batch_wait: Duration,
    pub queries: QueryRules,
    pub default_threshold: f32,
    pub image_limits: ImageLimits,
    /// Deadline of a request, counted from `DetectRequest::received`.
    pub request_timeout: Duration,
    /// Memory all concurrent decodes may take together (estimated from each image's header); a
    /// request waits for its share, within its deadline.
    pub decode_budget_bytes: u64,
    /// Exemplar images (query by example) one request may carry.
    pub max_query_images: usize,
}

impl ServiceConfig {
    pub(crate) fn from_config(c: &Config) -> Self {
        ServiceConfig {
            max_queue: c.max_queue,
            max_batch: c.max_batch_size,
            max_batch_wait: Duration::from_millis(c.max_batch_wait_ms),
            queries: QueryRules {
                max_queries: c.max_queries,
                max_query_bytes: c.max_query_bytes,
            },
            default_threshold: c.default_threshold,
            image_limits: c.image_limits(),
            request_timeout: Duration::from_millis(c.request_timeout_ms),
            decode_budget_bytes: c.decode_budget_mb << 20,
            max_query_images: c.max_query_images,
        }
    }
}

/// The image of a request.
#[derive(Debug, Clone)]
pub(crate) enum ImageInput {
    /// Encoded bytes (JPEG, PNG, WebP, BMP), decoded with the limits.
    Encoded(Bytes),
    /// Packed RGB24 rows.
    Raw {
        width: u32,
        height: u32,
        data: Bytes,
    },
    /// An already decoded frame (warmup); its size is checked against the limits.
    Decoded(Rgb),
    /// A decoded frame the caller keeps too (video streams keep it for snapshots); read, not
    /// copied.
    Shared(Arc<Rgb>),
}

/// One detection request.
#[derive(Debug, Clone)]
pub(crate) struct DetectRequest {
    pub image: ImageInput,
    pub queries: Vec<String>,
    /// Exemplar queries, after the text queries (their `query_index` follows the text ones).
    pub exemplars: Vec<ExemplarInput>,
    /// A saved query set: its text queries come before the request's, its exemplars before the
    /// request's.
    pub query_set: Option<Arc<QuerySet>>,
    /// Score threshold (default: the configured one).
    pub threshold: Option<f32>,
    /// Per-query NMS IoU (default: none).
    pub nms: Option<f32>,
    /// When the request arrived: the deadline and the total time count from here.
    pub received: Instant,
}

impl DetectRequest {
    /// A request received now, with the default threshold and no NMS.
    pub(crate) fn new(image: ImageInput, queries: Vec<String>) -> Self {
        DetectRequest {
            image,
            queries,
            exemplars: Vec::new(),
            query_set: None,
            threshold: None,
            nms: None,
            received: Instant::now(),
        }
    }
}

/// Milliseconds spent in each stage of one request.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub(crate) struct Timing {
    pub queue: f64,
    pub preprocess: f64,
    pub inference: f64,
    pub postprocess: f64,
    pub total: f64,
}

/// The answer to one request.
#[derive(Debug, Clone)]
pub(crate) struct DetectOutput {
    pub width: u32,
    pub height: u32,
    pub detections: Vec<Detection>,
    /// Images in the inference batch this request ran in.
    pub batch_size: usize,
    pub timing_ms: Timing,
}

struct Inner {
    cfg: ServiceConfig,
    pre: PreprocessConfig,
    queue: Arc<Semaphore>,
    /// The decode budget in KiB permits.
    decode_budget: Arc<Semaphore>,
    tx: Sender<batcher::Job>,
    heartbeat: Arc<Heartbeat>,
    /// The detector's embedding cache: an exemplar found there is neither decoded nor embedded.
    cache: EmbeddingCache,
}

/// A handle on the running detection service. Cheap to clone; the worker stops once every handle
/// is dropped and the queued requests are answered (`Worker::join` waits for that).
#[derive(Clone)]
pub(crate) struct DetectService {
    inner: Arc<Inner>,
}

impl DetectService {
    /// Starts the worker thread around `det`.
    pub(crate) fn start(
        det: Detector,
        cfg: ServiceConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, Worker)> {
        let pre = *det.preprocess_config();
        let cache = det.embedding_cache();
        let batch = batcher::BatchConfig {
            max_batch: cfg.max_batch,
            max_wait: cfg.max_batch_wait,
        };
        let (tx, heartbeat, worker) = batcher::spawn(det, metrics, batch)?;
        let inner = Inner {
            queue: Arc::new(Semaphore::new(cfg.max_queue)),
            decode_budget: Arc::new(Semaphore::new(budget_kib(cfg.decode_budget_bytes) as usize)),
            cfg,
            pre,
            tx,
            heartbeat,
            cache,
        };
        Ok((
            DetectService {
                inner: Arc::new(inner),
            },
            worker,
        ))
    }

    /// The limits this service runs under.
    pub(crate) fn config(&self) -> &ServiceConfig {
        &self.inner.cfg
    }

    /// Requests admitted and not yet answered.
    pub(crate) fn queue_depth(&self) -> usize {
        self.inner
            .cfg
            .max_queue
            .saturating_sub(self.inner.queue.available_permits())
    }

    /// The query-embedding cache's hits and misses so far.
    pub(crate) fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    /// The worker's heartbeat.
    pub(crate) fn heartbeat(&self) -> &Heartbeat {
        &self.inner.heartbeat
    }

    /// Detects the request's queries in its image, within its deadline
    /// (`received + request_timeout`).
    pub(crate) async fn detect(&self, req: DetectRequest) -> Result<DetectOutput, DetectError> {
        self.run_by_deadline(req, None).await
    }

    /// [`detect`](Self::detect) that waits for a queue slot instead of failing with
    /// `queue_full` (a file stream's frames: nothing is lost by waiting); the deadline starts
    /// once the request has its slot.
    pub(crate) async fn detect_waiting(
        &self,
        mut req: DetectRequest,
    ) -> Result<DetectOutput, DetectError> {
        let permit = self
            .inner
            .queue
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DetectError::Stopped)?;
        req.received = Instant::now();
        self.run_by_deadline(req, Some(permit)).await
    }

    /// [`run`](Self::run) within the request's deadline (`received + request_timeout`).
    async fn run_by_deadline(
        &self,
        req: DetectRequest,
        admitted: Option<OwnedSemaphorePermit>,
    ) -> Result<DetectOutput, DetectError> {
        let timeout = self.inner.cfg.request_timeout;
        let deadline = tokio::time::Instant::from_std(req.received + timeout);
        match tokio::time::timeout_at(deadline, self.run(req, admitted)).await {
            Ok(r) => r,
            Err(_) => Err(DetectError::Timeout(timeout.as_millis() as u64)),
        }
    }

    /// `detect` without the deadline (the daemon's warmup, bounded by systemd's start timeout).
    pub(crate) async fn detect_untimed(
        &self,
        req: DetectRequest,
    ) -> Result<DetectOutput, DetectError> {
        self.run(req, None).await
    }

    /// Validates, admits (unless `admitted` is the request's queue slot already), preprocesses,
    /// queues and waits for the answer.
    async fn run(
        &self,
        req: DetectRequest,
        admitted: Option<OwnedSemaphorePermit>,
    ) -> Result<DetectOutput, DetectError> {
        let DetectRequest {
            image,
            queries,
            exemplars,
            query_set,
            threshold,
            nms,
            received,
        } = req;
        let cfg = &self.inner.cfg;
        let params = PostParams::new(threshold.unwrap_or(cfg.default_threshold), nms)
            .map_err(DetectError::InvalidParameter)?;
        let (queries, exemplars, known_keys) = match query_set {
            Some(set) => (
                [set.queries(), &queries[..]].concat(),
                [set.exemplars(), &exemplars[..]].concat(),
                set.content_keys().to_vec(),
            ),
            None => (queries, exemplars, Vec::new()),
        };
        self.check_queries(&queries, &exemplars)?;
        let permit = match admitted {
            Some(p) => p,
            None => self
                .inner
                .queue
                .clone()
                .try_acquire_owned()
                .map_err(|_| DetectError::QueueFull)?,
        };
        let t_pre = Instant::now();
        let exemplars = self.decode_exemplars(exemplars, known_keys).await?;
        let (pixels, width, height, permit) = self.preprocess(image, permit).await?;
        let preprocess_ms = ms(t_pre.elapsed());
        let (reply, rx) = oneshot::channel();
        let job = batcher::Job {
            pixels,
            width,
            height,
            queries,
            exemplars,
            params,
            enqueued: Instant::now(),
            reply,
            _permit: permit,
        };
        self.inner.tx.send(job).map_err(|_| DetectError::Stopped)?;
        let out = rx.await.map_err(|_| DetectError::Stopped)??;
        Ok(DetectOutput {
            width,
            height,
            detections: out.detections,
            batch_size: out.batch_size,
            timing_ms: Timing {
                queue: out.queue_ms,
                preprocess: preprocess_ms,
                inference: out.inference_ms,
                postprocess: out.postprocess_ms,
                total: ms(received.elapsed()),
            },
        })
    }

    /// The checks a request's queries get before admission: the text rules (unless exemplars
    /// alone are the queries), the exemplar count, labels (`pipeline::plan_exemplars`).
    fn check_queries(
        &self,
        queries: &[String],
        exemplars: &[ExemplarInput],
    ) -> Result<(), DetectError> {
        let cfg = &self.inner.cfg;
        if exemplars.iter().all(|e| e.negative) || !queries.is_empty() {
            cfg.queries.check(queries)?;
        }
        if exemplars.len() > cfg.max_query_images {
            return Err(DetectError::InvalidParameter(format!(
                "{} query images, more than the limit of {} (max_query_images)",
                exemplars.len(),
                cfg.max_query_images
            )));
        }
        let labels: Vec<Option<String>> = exemplars.iter().enumerate().map(label_of).collect();
        for (n, l) in labels.iter().enumerate() {
            let Some(l) = l else { continue };
            cfg.queries.check_text(n, l).map_err(|_| {
                DetectError::InvalidParameter(format!(
                    "query image {n}: a label must be non-blank text of at most {} bytes without control characters",
                    cfg.queries.max_query_bytes
                ))
            })?;
        }
        let specs: Vec<ExemplarSpec<'_>> = exemplars
            .iter()
            .zip(&labels)
            .map(|(e, l)| ExemplarSpec {
                label: l.as_deref(),
                negative: e.negative,
            })
            .collect();
        crate::pipeline::plan_exemplars(queries, &specs)?;
        Ok(())
    }

    /// Checks queries that will be used with a query set (a stream's), as a request's would be.
    pub(crate) fn check_with_set(
        &self,
        set: &QuerySet,
        queries: &[String],
    ) -> Result<(), DetectError> {
        self.check_queries(&[set.queries(), queries].concat(), set.exemplars())
    }

    /// Checks a query set before it is saved: its queries as a request's, and every exemplar
    /// decoded within the limits with its box inside the image, so that a saved set cannot fail
    /// later for its content.
    pub(crate) async fn check_query_set(&self, set: &QuerySet) -> Result<(), DetectError> {
        if set.queries().is_empty() && set.exemplars().is_empty() {
            return Err(DetectError::InvalidParameter(
                "a query set needs queries or query_images".into(),
            ));
        }
        self.check_queries(set.queries(), set.exemplars())?;
        for (n, e) in set.exemplars().iter().enumerate() {
            let rgb = self
                .decode_exemplar(&format!("query_images[{n}]"), e.image.clone())
                .await?;
            crate::pipeline::normalised_box(e.bbox, rgb.width, rgb.height).map_err(|err| {
                DetectError::InvalidParameter(format!("query_images[{n}]: {err}"))
            })?;
        }
        Ok(())
    }

    /// Decodes and preprocesses on the blocking pool, once the image's estimated decoding memory
    /// fits in the decode budget. The queue slot and the budget share travel with the work, so a
    /// request that timed out keeps both until its decoding has actually stopped.
    async fn preprocess(
        &self,
        image: ImageInput,
        permit: OwnedSemaphorePermit,
    ) -> Result<(Vec<f32>, u32, u32, OwnedSemaphorePermit), DetectError> {
        let limits = self.inner.cfg.image_limits;
        let pre = self.inner.pre;
        let header = match &image {
            ImageInput::Encoded(bytes) => Some(preprocess::probe(bytes, &limits)?),
            _ => None,
        };
        let share = self.decode_share(header.as_ref()).await?;
        tokio::task::spawn_blocking(move || {
            let rgb = decode(image, header.as_ref(), &limits)?;
            let pixels = preprocess::preprocess(&rgb, &pre);
            drop(share);
            Ok((pixels, rgb.width, rgb.height, permit))
        })
        .await
        .map_err(|e| DetectError::Internal(format!("preprocessing task failed: {e}")))?
    }

    /// Turns exemplars into the worker's form: an exemplar whose embedding is cached (keyed by the
    /// SHA-256 of its bytes and its box) carries that embedding and is not decoded; the others are
    /// decoded within the image limits and the decode budget, like the target image. The first
    /// exemplars are a query set's when `known_keys` (their hashes, computed when the set was
    /// saved) is not empty; the others are hashed on the blocking pool.
    async fn decode_exemplars(
        &self,
        exemplars: Vec<ExemplarInput>,
        known_keys: Vec<String>,
    ) -> Result<Vec<batcher::JobExemplar>, DetectError> {
        let from_set = known_keys.len();
        let mut known = known_keys.into_iter();
        let mut out = Vec::with_capacity(exemplars.len());
        for (n, e) in exemplars.into_iter().enumerate() {
            let label = label_of((n, &e));
            let key = match known.next() {
                Some(k) => k,
                None => {
                    let bytes = e.image.clone();
                    tokio::task::spawn_blocking(move || Exemplar::content_key(&bytes))
                        .await
                        .map_err(|err| {
                            DetectError::Internal(format!("exemplar hashing failed: {err}"))
                        })?
                }
            };
            let data = match self.inner.cache.lookup(&Exemplar::key_of(&key, e.bbox)) {
                Some(embedding) => batcher::ExemplarData::Embedded(embedding),
                None => {
                    let name = match n.checked_sub(from_set) {
                        Some(i) => format!("query_images[{i}]"),
                        None => format!("query set image {n}"),
                    };
                    batcher::ExemplarData::Decoded(self.decode_exemplar(&name, e.image).await?)
                }
            };
            out.push(batcher::JobExemplar {
                key,
                data,
                bbox: e.bbox,
                label,
                negative: e.negative,
            });
        }
        Ok(out)
    }

    /// Decodes an exemplar (`name`d in errors) on the blocking pool, within the image limits and
    /// the decode budget.
    async fn decode_exemplar(&self, name: &str, bytes: Bytes) -> Result<Rgb, DetectError> {
        let limits = self.inner.cfg.image_limits;
        let which = |err: ImageError| DetectError::InvalidParameter(format!("{name}: {err}"));
        let header = preprocess::probe(&bytes, &limits).map_err(which)?;
        let share = self.decode_share(Some(&header)).await?;
        let rgb = tokio::task::spawn_blocking(move || {
            let rgb = preprocess::decode_probed(&bytes, &header, &limits);
            drop(share);
            rgb
        })
        .await
        .map_err(|err| DetectError::Internal(format!("exemplar decoding failed: {err}")))?;
        rgb.map_err(which)
    }

    /// Waits for the decode budget's share of an encoded image, given its checked `header`
    /// (nothing for frames already in memory); an image that needs more than the whole budget is
    /// refused at once.
    async fn decode_share(
        &self,
        header: Option<&Header>,
    ) -> Result<Option<OwnedSemaphorePermit>, DetectError> {
        let Some(header) = header else {
            return Ok(None);
        };
        let cost = header.decode_cost();
        let budget = self.inner.cfg.decode_budget_bytes;
        if cost > budget {
            return Err(ImageError::OverBudget {
                need: cost.div_ceil(1 << 20),
                budget: budget >> 20,
            }
            .into());
        }
        let share = self
            .inner
            .decode_budget
            .clone()
            .acquire_many_owned(budget_kib(cost))
            .await
            .map_err(|_| DetectError::Stopped)?;
        Ok(Some(share))
    }
}

/// The label an exemplar's detections get: its own, else `image:<n>` for a positive; a negative
/// without one applies to every query.
fn label_of((n, e): (usize, &ExemplarInput)) -> Option<String> {
    match (&e.label, e.negative) {
        (Some(l), _) => Some(l.clone()),
        (None, false) => Some(Exemplar::default_label(n)),
        (None, true) => None,
    }
}

/// Bytes as KiB permits of the decode budget (rounded up, at least 1, within a semaphore's range).
fn budget_kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;

/// The request's image as RGB, within the limits (`header`: an encoded image's, already probed).
/// A shared frame is only checked, never copied.
fn decode(
    image: ImageInput,
    header: Option<&Header>,
    limits: &ImageLimits,
) -> Result<Arc<Rgb>, DetectError> {
    let rgb = match (image, header) {
        (ImageInput::Encoded(b), Some(h)) => preprocess::decode_probed(&b, h, limits)?,
        (ImageInput::Encoded(b), None) => preprocess::decode(&b, limits)?,
        (
            ImageInput::Raw {
                width,
                height,
                data,
            },
            _,
        ) => Rgb::from_raw(width, height, data.to_vec(), limits)?,
        (ImageInput::Decoded(rgb), _) => {
            limits.check(rgb.width, rgb.height)?;
            rgb
        }
        (ImageInput::Shared(rgb), _) => {
            limits.check(rgb.width, rgb.height)?;
            return Ok(rgb);
        }
    };
    Ok(Arc::new(rgb))
}

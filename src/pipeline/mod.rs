//! The detection pipeline: a loaded model's tokenizer, preprocessing numbers and `Backend`, plus
//! the query-embedding cache. Turns decoded images and text queries into detections. It knows no
//! execution providers, artifact files or configuration (the engine builds it), and no batching or
//! HTTP (the service drives it). Owned by one thread (`&mut self`), like the backend it drives.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::backend::{Backend, BackendError, ImageBatch};
use crate::model::tokenizer::{QueryError, QueryRules};
use crate::model::{OwlConfig, QueryTokenizer};
use crate::postprocess::{self, Detection, Negative, PostParams, Queries};
use crate::preprocess::{self, PreprocessConfig, Rgb};

mod error;
mod plan;
pub use error::PipelineError;
pub use plan::*;

/// Query-cache counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// The query-embedding cache (text queries and exemplars), shared by the detector and whoever
/// wants to know before a request is queued whether an exemplar needs decoding at all. It counts
/// its own hits and misses, whoever looks.
#[derive(Debug, Clone)]
pub struct EmbeddingCache(Arc<CacheInner>);

#[derive(Debug)]
struct CacheInner {
    map: Mutex<LruCache<String, Arc<[f32]>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl EmbeddingCache {
    fn new(size: usize) -> Self {
        let n = NonZeroUsize::new(size.max(1)).unwrap_or(NonZeroUsize::MIN);
        EmbeddingCache(Arc::new(CacheInner {
            map: Mutex::new(LruCache::new(n)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Arc<[f32]>>> {
        // A panic while holding the lock cannot leave the map inconsistent: take it anyway.
        self.0
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached embedding of `key` (marked recently used), counted as a hit when found.
    pub fn lookup(&self, key: &str) -> Option<Arc<[f32]>> {
        let found = self.lock().get(key).cloned();
        if found.is_some() {
            self.count(1, 0);
        }
        found
    }

    /// Whether `key` is cached, without counting.
    fn contains(&self, key: &str) -> bool {
        self.lock().contains(key)
    }

    /// The embedding of `key`, just inserted or looked up (not counted again).
    fn get(&self, key: &str) -> Option<Arc<[f32]>> {
        self.lock().get(key).cloned()
    }

    fn put(&self, key: String, e: Arc<[f32]>) {
        self.lock().put(key, e);
    }

    fn count(&self, hits: u64, misses: u64) {
        self.0.hits.fetch_add(hits, Ordering::Relaxed);
        self.0.misses.fetch_add(misses, Ordering::Relaxed);
    }

    /// Hits and misses so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.0.hits.load(Ordering::Relaxed),
            misses: self.0.misses.load(Ordering::Relaxed),
        }
    }
}

/// A loaded OWLv2 detector.
pub struct Detector {
    pub config: OwlConfig,
    pre: PreprocessConfig,
    tokenizer: QueryTokenizer,
    backend: Box<dyn Backend>,
    cache: EmbeddingCache,
    truncation_warnings: std::sync::Mutex<crate::pacing::LogLimiter>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl Detector {
    /// Assembles a detector around a backend, keeping `query_cache` query embeddings.
    pub fn new(
        config: OwlConfig,
        tokenizer: QueryTokenizer,
        backend: Box<dyn Backend>,
        query_cache: usize,
    ) -> Self {
        Detector {
            pre: PreprocessConfig {
                size: config.image_size,
                mean: config.image_mean,
                std: config.image_std,
                rescale: config.rescale_factor,
            },
            config,
            tokenizer,
            backend,
            cache: EmbeddingCache::new(query_cache),
            truncation_warnings: std::sync::Mutex::new(crate::pacing::LogLimiter::new(
                std::time::Duration::from_secs(10),
            )),
        }
    }

    /// Ends the image session's profile (`DetectorOptions::profile`); the file it wrote.
    pub fn end_profiling(&mut self) -> Result<Option<std::path::PathBuf>, PipelineError> {
        Ok(self.backend.end_profiling()?)
    }

    /// Name of the backend in use.
    pub fn backend_name(&self) -> &str {
        self.backend.name()
    }

    /// The preprocessing numbers.
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.pre
    }

    /// The query-embedding cache's counters so far (every user's lookups).
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The query-embedding cache, shared.
    pub fn embedding_cache(&self) -> EmbeddingCache {
        self.cache.clone()
    }

    /// Token ids of one query (`len` ids), with truncation reported by a warning.
    pub fn tokenize(&self, index: usize, text: &str) -> Result<Vec<i64>, QueryError> {
        let t = self.tokenizer.encode(index, text)?;
        if t.truncated {
            let admitted = self
                .truncation_warnings
                .lock()
                .map_or(Some(0), |mut w| w.admit(std::time::Instant::now(), false));
            if let Some(held_back) = admitted {
                tracing::warn!(query = ?text, held_back, "query is longer than {} tokens and was truncated (at most one such warning per 10 s; held_back: since the last one)", self.tokenizer.len() - 2);
            }
        }
        Ok(t.ids)
    }

    /// Query embeddings for `queries`, from the cache or one text-graph run for the missing ones.
    /// The list is assumed to follow the `QueryRules` (checked by the caller, once).
    pub fn query_embeddings(
        &mut self,
        queries: &[String],
    ) -> Result<Vec<Arc<[f32]>>, PipelineError> {
        // A query repeated in the list is computed once: its other places count as hits.
        let mut missing: Vec<&String> = Vec::new();
        for q in queries {
            if !self.cache.contains(q) && !missing.contains(&q) {
                missing.push(q);
            }
        }
        self.cache
            .count((queries.len() - missing.len()) as u64, missing.len() as u64);
        if !missing.is_empty() {
            let mut ids = Vec::with_capacity(missing.len() * self.tokenizer.len());
            for q in &missing {
                let index = queries.iter().position(|x| x == *q).unwrap_or(0);
                ids.extend(self.tokenize(index, q)?);
            }
            let emb = self.backend.run_text(&ids, missing.len())?;
            let c = emb.len() / missing.len();
            for (q, row) in missing.iter().zip(emb.chunks_exact(c)) {
                self.cache.put((*q).clone(), Arc::from(row));
            }
        }
        self.cached(queries)
    }

    /// The cached embeddings of `keys`, all just looked up or inserted.
    fn cached(&mut self, keys: &[String]) -> Result<Vec<Arc<[f32]>>, PipelineError> {
        keys.iter()
            .map(|k| {
                self.cache.get(k).ok_or_else(|| {
                    PipelineError::Backend(BackendError::Run(
                        "query cache smaller than the request".into(),
                    ))
                })
            })
            .collect()
    }

    /// The one planning call (the worker's and the CLI's): the text queries' embeddings, then the
    /// exemplars' (given, or one image-graph batch for those with an image), laid out by
    /// [`QueryPlan::build`] (itself checked by [`plan_exemplars`], which the service calls before
    /// a request is queued).
    pub fn plan(
        &mut self,
        text: &[String],
        exemplars: &[PlannedExemplar<'_>],
    ) -> Result<QueryPlan, PipelineError> {
        let text_embeddings = self.query_embeddings(text)?;
        if exemplars.is_empty() {
            return Ok(QueryPlan::text(text, text_embeddings));
        }
        let images: Vec<Exemplar<'_>> = exemplars
            .iter()
            .filter_map(|e| match &e.source {
                ExemplarSource::Image(x) => Some(x.clone()),
                ExemplarSource::Embedded(_) => None,
            })
            .collect();
        let mut fresh = self.exemplar_embeddings(&images)?.into_iter();
        let embeddings = exemplars
            .iter()
            .map(|e| match &e.source {
                ExemplarSource::Embedded(v) => Some(v.clone()),
                ExemplarSource::Image(_) => fresh.next(),
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                PipelineError::Backend(BackendError::Run("an exemplar embedding is missing".into()))
            })?;
        let specs: Vec<ExemplarSpec<'_>> = exemplars.iter().map(|e| e.spec).collect();
        QueryPlan::build(text, text_embeddings, &specs, &embeddings)
    }

    /// Query embeddings of exemplar images: from the cache (keyed by content and box), or one
    /// image-graph batch for the missing ones.
    pub fn exemplar_embeddings(
        &mut self,
        exemplars: &[Exemplar<'_>],
    ) -> Result<Vec<Arc<[f32]>>, PipelineError> {
        let keys: Vec<String> = exemplars.iter().map(Exemplar::cache_key).collect();
        let boxes = exemplars
            .iter()
            .map(Exemplar::normalised_box)
            .collect::<Result<Vec<_>, _>>()?;
        let mut missing: Vec<usize> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if !self.cache.contains(k) && !missing.iter().any(|&m| keys[m] == *k) {
                missing.push(i);
            }
        }
        self.cache
            .count((keys.len() - missing.len()) as u64, missing.len() as u64);
        if !missing.is_empty() {
            let images: Vec<&Rgb> = missing.iter().map(|&i| exemplars[i].image).collect();
            let out = self.run_images(&self.preprocess_batch(&images), missing.len())?;
            for (j, &i) in missing.iter().enumerate() {
                let heads = out.heads(j);
                let emb = postprocess::exemplar_patch(&heads, boxes[i])
                    .and_then(|p| postprocess::exemplar_embedding(&heads, p))
                    .ok_or_else(|| {
                        PipelineError::Backend(BackendError::Run(
                            "the image graph gave no patches for the exemplar".into(),
                        ))
                    })?;
                self.cache.put(keys[i].clone(), Arc::from(emb));
            }
        }
        self.cached(&keys)
    }

    /// Detects the queries given as embeddings (text and exemplars) in every image (one
    /// image-graph batch).
    pub fn detect_embedded(
        &mut self,
        images: &[&Rgb],
        plan: &QueryPlan,
        params: &PostParams,
    ) -> Result<Vec<Vec<Detection>>, PipelineError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.run_images(&self.preprocess_batch(images), images.len())?;
        Ok(images
            .iter()
            .enumerate()
            .map(|(i, img)| Self::postprocess(&out, i, plan, (img.width, img.height), params))
            .collect())
    }

    /// `pixel_values` of a batch of images.
    fn preprocess_batch(&self, images: &[&Rgb]) -> Vec<f32> {
        let s = self.pre.size;
        let mut px = Vec::with_capacity(images.len() * 3 * s * s);
        for img in images {
            self.preprocess_into(img, &mut px);
        }
        px
    }

    /// Preprocesses an image into `pixel_values` rows appended to `out`.
    pub fn preprocess_into(&self, img: &Rgb, out: &mut Vec<f32>) {
        preprocess::preprocess_into(img, &self.pre, out);
    }

    /// Runs the image graph on preprocessed images.
    pub fn run_images(
        &mut self,
        pixel_values: &[f32],
        batch: usize,
    ) -> Result<ImageBatch, PipelineError> {
        Ok(self.backend.run_image(pixel_values, batch)?)
    }

    /// Post-processes image `i` of a batch against the query plan.
    pub fn postprocess(
        batch: &ImageBatch,
        i: usize,
        plan: &QueryPlan,
        img: (u32, u32),
        params: &PostParams,
    ) -> Vec<Detection> {
        let q: Vec<&[f32]> = plan.embeddings.iter().map(|e| &e[..]).collect();
        let negatives: Vec<Negative<'_>> = plan
            .negatives
            .iter()
            .map(|(e, target)| Negative {
                embedding: e,
                target: *target,
            })
            .collect();
        let queries = Queries {
            embeddings: &q,
            labels: &plan.labels,
            negatives: &negatives,
        };
        postprocess::detect(&batch.heads(i), &queries, img.0, img.1, params)
    }

    /// Detects `queries` in every image (one image-graph batch), after checking them against
    /// `rules`.
    pub fn detect(
        &mut self,
        images: &[&Rgb],
        queries: &[String],
        rules: &QueryRules,
        params: &PostParams,
    ) -> Result<Vec<Vec<Detection>>, PipelineError> {
        rules.check(queries)?;
        let emb = self.query_embeddings(queries)?;
        self.detect_embedded(images, &QueryPlan::text(queries, emb), params)
    }
}

#[cfg(test)]
mod tests;

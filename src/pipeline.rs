//! The detection pipeline: a loaded model's tokenizer, preprocessing numbers and `Backend`, plus
//! the query-embedding cache. Turns decoded images and text queries into detections. It knows no
//! execution providers, artifact files or configuration (the engine builds it), and no batching or
//! HTTP (the service drives it). Owned by one thread (`&mut self`), like the backend it drives.

use std::num::NonZeroUsize;
use std::sync::Arc;

use lru::LruCache;

use crate::backend::{Backend, BackendError, ImageBatch};
use crate::model::tokenizer::{QueryError, QueryRules};
use crate::model::{OwlConfig, QueryTokenizer};
use crate::postprocess::{self, Detection, PostParams};
use crate::preprocess::{self, PreprocessConfig, Rgb};

/// Errors of running the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// An exemplar image that cannot be a query (its box outside the image or empty).
    #[error("{0}")]
    Exemplar(String),
}

impl PipelineError {
    /// Stable snake_case name for APIs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineError::Query(e) => e.kind(),
            PipelineError::Backend(e) => e.kind(),
            PipelineError::Exemplar(_) => "invalid_exemplar",
        }
    }
}

/// Query-cache counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// An example image used as a query (query by example).
#[derive(Debug, Clone)]
pub struct Exemplar<'a> {
    /// Identifies the image's content (e.g. a hash of its encoded bytes): the embedding cache key,
    /// with the box.
    pub content_key: &'a str,
    pub image: &'a Rgb,
    /// `[x0, y0, x1, y1]` in the exemplar's pixels: the query is the object there; `None`: the
    /// exemplar's most object-like patch (transformers' `embed_image_query`).
    pub bbox: Option<[f32; 4]>,
}

impl Exemplar<'_> {
    /// The content key of an exemplar's encoded bytes (SHA-256, hex): what the CLI and the
    /// service pass as `content_key`.
    pub fn content_key(bytes: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    }

    /// The label of the request's `n`-th exemplar when the client names none.
    pub fn default_label(n: usize) -> String {
        format!("image:{n}")
    }

    /// The embedding cache key: never equal to a text query (those have no NUL).
    fn cache_key(&self) -> String {
        match self.bbox {
            Some(b) => format!(
                "\0image:{}#{},{},{},{}",
                self.content_key, b[0], b[1], b[2], b[3]
            ),
            None => format!("\0image:{}", self.content_key),
        }
    }

    /// The box divided by `max(H, W)` (the padded square the boxes are predicted in), after
    /// checking it is a non-empty box inside the image.
    fn normalised_box(&self) -> Result<Option<[f32; 4]>, PipelineError> {
        let Some(b) = self.bbox else { return Ok(None) };
        let (w, h) = (self.image.width as f32, self.image.height as f32);
        let finite = b.iter().all(|v| v.is_finite());
        if !finite || b[0] < 0.0 || b[1] < 0.0 || b[2] > w || b[3] > h {
            return Err(PipelineError::Exemplar(format!(
                "exemplar box {b:?} is outside the {}x{} image",
                self.image.width, self.image.height
            )));
        }
        if b[2] <= b[0] || b[3] <= b[1] {
            return Err(PipelineError::Exemplar(format!(
                "exemplar box {b:?} is empty (it needs x0 < x1 and y0 < y1)"
            )));
        }
        let side = w.max(h);
        Ok(Some([b[0] / side, b[1] / side, b[2] / side, b[3] / side]))
    }
}

/// Lets a repeated warning through once per `every`, counting the ones held back: a client
/// sending many different over-long queries cannot flood the log.
#[derive(Debug)]
struct WarnLimiter {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl WarnLimiter {
    fn new(every: std::time::Duration) -> Self {
        WarnLimiter {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(n)`: log now, mentioning `n` warnings held back since the last one; `None`: hold
    /// this one back.
    fn admit(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// A loaded OWLv2 detector.
pub struct Detector {
    pub config: OwlConfig,
    pre: PreprocessConfig,
    tokenizer: QueryTokenizer,
    backend: Box<dyn Backend>,
    cache: LruCache<String, Arc<[f32]>>,
    stats: CacheStats,
    truncation_warnings: std::sync::Mutex<WarnLimiter>,
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
            cache: LruCache::new(
                NonZeroUsize::new(query_cache.max(1)).unwrap_or(NonZeroUsize::MIN),
            ),
            stats: CacheStats::default(),
            truncation_warnings: std::sync::Mutex::new(WarnLimiter::new(
                std::time::Duration::from_secs(10),
            )),
        }
    }

    /// Name of the backend in use.
    pub fn backend_name(&self) -> &str {
        self.backend.name()
    }

    /// The preprocessing numbers.
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.pre
    }

    /// Query-cache counters so far.
    pub fn cache_stats(&self) -> CacheStats {
        self.stats
    }

    /// Token ids of one query (`len` ids), with truncation reported by a warning.
    pub fn tokenize(&self, index: usize, text: &str) -> Result<Vec<i64>, QueryError> {
        let t = self.tokenizer.encode(index, text)?;
        if t.truncated {
            let admitted = self
                .truncation_warnings
                .lock()
                .map_or(Some(0), |mut w| w.admit(std::time::Instant::now()));
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
        let mut missing: Vec<&String> = Vec::new();
        for q in queries {
            if self.cache.get(q).is_some() {
                self.stats.hits += 1;
            } else if !missing.contains(&q) {
                self.stats.misses += 1;
                missing.push(q);
            } else {
                self.stats.hits += 1;
            }
        }
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
                self.cache.get(k).cloned().ok_or_else(|| {
                    PipelineError::Backend(BackendError::Run(
                        "query cache smaller than the request".into(),
                    ))
                })
            })
            .collect()
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
            if self.cache.get(k).is_some() || missing.iter().any(|&m| keys[m] == *k) {
                self.stats.hits += 1;
            } else {
                self.stats.misses += 1;
                missing.push(i);
            }
        }
        if !missing.is_empty() {
            let s = self.pre.size;
            let mut px = Vec::with_capacity(missing.len() * 3 * s * s);
            for &i in &missing {
                self.preprocess_into(exemplars[i].image, &mut px);
            }
            let out = self.run_images(&px, missing.len())?;
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

    /// Detects the queries given as embeddings (text and exemplars), labelled `labels`, in every
    /// image (one image-graph batch).
    pub fn detect_embedded(
        &mut self,
        images: &[&Rgb],
        embeddings: &[Arc<[f32]>],
        labels: &[String],
        params: &PostParams,
    ) -> Result<Vec<Vec<Detection>>, PipelineError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.pre.size;
        let mut px = Vec::with_capacity(images.len() * 3 * s * s);
        for img in images {
            self.preprocess_into(img, &mut px);
        }
        let out = self.run_images(&px, images.len())?;
        Ok(images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                Self::postprocess(&out, i, embeddings, labels, (img.width, img.height), params)
            })
            .collect())
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

    /// Post-processes image `i` of a batch against query embeddings.
    pub fn postprocess(
        batch: &ImageBatch,
        i: usize,
        embeddings: &[Arc<[f32]>],
        labels: &[String],
        img: (u32, u32),
        params: &PostParams,
    ) -> Vec<Detection> {
        let q: Vec<&[f32]> = embeddings.iter().map(|e| &e[..]).collect();
        postprocess::detect(&batch.heads(i), &q, labels, img.0, img.1, params)
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
        self.detect_embedded(images, &emb, queries, params)
    }
}

#[cfg(test)]
mod tests {
    use super::WarnLimiter;
    use std::time::{Duration, Instant};

    #[test]
    fn repeated_warnings_pass_once_per_period_with_the_count_held_back() {
        let mut w = WarnLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(w.admit(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(w.admit(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(w.admit(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(w.admit(t0 + Duration::from_secs(11)), None);
        assert_eq!(w.admit(t0 + Duration::from_secs(25)), Some(1));
    }
}

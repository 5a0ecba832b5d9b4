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
}

impl PipelineError {
    /// Stable snake_case name for APIs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineError::Query(e) => e.kind(),
            PipelineError::Backend(e) => e.kind(),
        }
    }
}

/// Query-cache counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

/// A loaded OWLv2 detector.
pub struct Detector {
    pub config: OwlConfig,
    pre: PreprocessConfig,
    tokenizer: QueryTokenizer,
    backend: Box<dyn Backend>,
    cache: LruCache<String, Arc<[f32]>>,
    stats: CacheStats,
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
            tracing::warn!(query = ?text, "query is longer than {} tokens and was truncated", self.tokenizer.len() - 2);
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
        queries
            .iter()
            .map(|q| {
                self.cache.get(q).cloned().ok_or_else(|| {
                    PipelineError::Backend(BackendError::Run(
                        "query cache smaller than the request".into(),
                    ))
                })
            })
            .collect()
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
                Self::postprocess(&out, i, &emb, queries, (img.width, img.height), params)
            })
            .collect())
    }
}

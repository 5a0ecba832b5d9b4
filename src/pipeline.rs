//! The detection pipeline: a loaded model (tokenizer, preprocessing numbers, a `Backend`) plus the
//! query-embedding cache. Turns decoded images and text queries into detections; batching, HTTP and
//! configuration live elsewhere. Owned by one thread (`&mut self`), like the backend it drives.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lru::LruCache;

use crate::backend::ort::{CpuOptions, OrtBackend};
use crate::backend::{Backend, BackendError, GraphSource, ImageBatch, Provider};
use crate::model::graphs::{self, Attention};
use crate::model::tokenizer::{QueryError, QueryRules};
use crate::model::{ModelDir, ModelError, OwlConfig, QueryTokenizer};
use crate::postprocess::{self, Detection, PostParams};
use crate::preprocess::{self, PreprocessConfig, Rgb};

/// Errors of loading the pipeline or of running it.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl PipelineError {
    /// Stable snake_case name for APIs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineError::Model(e) => e.kind(),
            PipelineError::Query(e) => e.kind(),
            PipelineError::Backend(e) => e.kind(),
        }
    }
}

/// Settings for loading a detector.
#[derive(Debug, Clone)]
pub struct DetectorOptions {
    /// ONNX Runtime library (else `IV_ONNXRUNTIME_PATH`, next to the binary, the package folder).
    pub library: Option<PathBuf>,
    /// Intra-op threads for ONNX Runtime (0 = one per core).
    pub threads: usize,
    /// Query embeddings kept in the LRU cache.
    pub query_cache: usize,
    /// Attention form of the image graph.
    pub attention: Attention,
    /// Full ONNX Runtime graph optimisations (false = basic only, the eager baseline).
    pub optimize: bool,
    /// Execution provider.
    pub provider: Provider,
    /// Precision of the image tower (int8 is an opt-in speed mode).
    pub precision: graphs::Precision,
    /// Optimised artifact of both graphs: save it into this cache-entry folder, or load it from
    /// one (file names from `Provider::artifact_file`).
    pub artifact: Artifact,
}

/// What to do with the optimised artifact.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Artifact {
    /// Build in memory only.
    #[default]
    None,
    /// Build, and save both graphs' optimised forms into this folder.
    Save(PathBuf),
    /// Load both graphs from this folder instead of building them.
    Load(PathBuf),
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            library: None,
            threads: 0,
            query_cache: 1024,
            attention: Attention::Fused,
            optimize: true,
            provider: Provider::Cpu,
            artifact: Artifact::None,
            precision: graphs::Precision::Fp32,
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
    pub model_dir: PathBuf,
    pre: PreprocessConfig,
    tokenizer: QueryTokenizer,
    backend: Box<dyn Backend>,
    cache: LruCache<String, Arc<[f32]>>,
    stats: CacheStats,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("model_dir", &self.model_dir)
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl Detector {
    /// Loads a model directory onto ONNX Runtime with the chosen execution provider.
    pub fn load(dir: &Path, opts: &DetectorOptions) -> Result<Self, PipelineError> {
        let t = std::time::Instant::now();
        let model = ModelDir::open(dir)?;
        // The tokenizer (tens of milliseconds of JSON) loads while the sessions are created.
        let text_len = model.config.text_len;
        let (tokenizer, backend) = std::thread::scope(|scope| {
            let tokenizer = scope.spawn(move || QueryTokenizer::from_dir(dir, text_len));
            let backend = Self::load_backend(&model, opts, t);
            let tokenizer = tokenizer.join().unwrap_or_else(|_| {
                Err(ModelError::Tokenizer(
                    "the tokenizer loader panicked".into(),
                ))
            });
            (tokenizer, backend)
        });
        // A model error comes first: it is not the execution provider's fault.
        let (tokenizer, backend) = (tokenizer?, backend?);
        Ok(Self::with_backend(
            model,
            tokenizer,
            Box::new(backend),
            opts,
        ))
    }

    /// Builds (or loads) both graphs and creates their sessions.
    fn load_backend(
        model: &ModelDir,
        opts: &DetectorOptions,
        t: std::time::Instant,
    ) -> Result<OrtBackend, PipelineError> {
        // TensorRT has no kernel for com.microsoft.MultiHeadAttention (the node would fall back to
        // CUDA between TensorRT islands); it fuses plain attention itself.
        let attention = match opts.provider {
            Provider::TensorRt { .. } => Attention::Unfused,
            _ => opts.attention,
        };
        let (image_bytes, text_bytes) = match &opts.artifact {
            Artifact::Load(_) => (Vec::new(), Vec::new()),
            _ => (
                graphs::build_image_graph(
                    &model.config,
                    &model.checkpoint,
                    attention,
                    opts.precision,
                )?,
                graphs::build_text_graph(&model.config, &model.checkpoint)?,
            ),
        };
        let dir = match &opts.artifact {
            Artifact::Save(d) | Artifact::Load(d) => d.as_path(),
            Artifact::None => Path::new(""),
        };
        let image_file = dir.join(opts.provider.artifact_file("image"));
        let text_file = dir.join(opts.provider.artifact_file("text"));
        let (image, text) = match &opts.artifact {
            Artifact::None => (
                GraphSource::Build(&image_bytes),
                GraphSource::Build(&text_bytes),
            ),
            Artifact::Save(_) => (
                GraphSource::BuildAndSave {
                    bytes: &image_bytes,
                    path: &image_file,
                },
                GraphSource::BuildAndSave {
                    bytes: &text_bytes,
                    path: &text_file,
                },
            ),
            Artifact::Load(_) => (
                GraphSource::Load(&image_file),
                GraphSource::Load(&text_file),
            ),
        };
        tracing::debug!(
            ms = t.elapsed().as_millis() as u64,
            "model opened and graphs built"
        );
        let backend = OrtBackend::new(
            opts.library.as_deref(),
            image,
            text,
            &model.dir,
            model.config.image_size,
            model.config.text_len,
            &CpuOptions {
                threads: opts.threads,
                optimize: opts.optimize,
                provider: opts.provider.clone(),
            },
        )?;
        Ok(backend)
    }

    /// Assembles a detector around any backend (tests use fakes).
    pub fn with_backend(
        model: ModelDir,
        tokenizer: QueryTokenizer,
        backend: Box<dyn Backend>,
        opts: &DetectorOptions,
    ) -> Self {
        let c = &model.config;
        Detector {
            pre: PreprocessConfig {
                size: c.image_size,
                mean: c.image_mean,
                std: c.image_std,
                rescale: c.rescale_factor,
            },
            config: model.config.clone(),
            model_dir: model.dir,
            tokenizer,
            backend,
            cache: LruCache::new(
                NonZeroUsize::new(opts.query_cache.max(1)).unwrap_or(NonZeroUsize::MIN),
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
            tracing::warn!(query = %text, "query is longer than {} tokens and was truncated", self.tokenizer.len() - 2);
        }
        Ok(t.ids)
    }

    /// Query embeddings for `queries`, from the cache or one text-graph run for the missing ones.
    /// The list is assumed to follow the `QueryRules` (checked by the caller, once).
    pub fn query_embeddings(&mut self, queries: &[String]) -> Result<Vec<Arc<[f32]>>, PipelineError> {
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

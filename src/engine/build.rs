//! Building one detector on one provider: the graph forms that provider needs (plain attention for
//! TensorRT, the int8 weight range of this CPU), where each graph comes from (built in memory,
//! built and saved into a cache entry, or loaded from one), and the `SessionPlan` handed to the
//! backend. The model directory and tokenizer are opened by the caller, once.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use super::artifact::Artifact;
use super::error::EngineError;
use crate::backend::openvino::{OvBackend, OvPlan};
use crate::backend::ort::OrtBackend;
use crate::backend::{Backend, GraphSource, Provider, SessionPlan};
use crate::config::sections::EngineSettings;
use crate::model::graphs::{self, Attention, Int8Weights};
use crate::model::{ModelDir, ModelError, QueryTokenizer};
use crate::pipeline::Detector;
use crate::vocab::{Graph, Precision};

/// How to build a detector.
#[derive(Debug, Clone)]
pub struct DetectorOptions {
    /// ONNX Runtime library (else `IV_ONNXRUNTIME_PATH`, next to the binary, the package folder).
    pub library: Option<PathBuf>,
    /// OpenVINO's library or folder (the OpenVINO provider needs one).
    pub openvino_library: Option<PathBuf>,
    /// Intra-op threads for ONNX Runtime (0 = one per core).
    pub threads: usize,
    /// Idle intra-op threads spin-wait for work (default off: the cores go to decoding).
    pub spin_wait: bool,
    /// Query embeddings kept in the LRU cache.
    pub query_cache: usize,
    /// Attention form of the image graph on providers that run the fused kernel (TensorRT always
    /// gets plain attention).
    pub attention: Attention,
    /// Full ONNX Runtime graph optimisations (false = basic only, the eager baseline).
    pub optimize: bool,
    /// Execution provider.
    pub provider: Provider,
    /// Precision of the CPU image tower (int8 is an opt-in speed mode; TensorRT's precision is
    /// part of its provider).
    pub precision: Precision,
    /// Weight range of int8; `None` (the default): the one the loaded runtime's kernels need
    /// ([`int8_range_for_runtime`]).
    pub int8_range: Option<Int8Weights>,
    /// Record ONNX Runtime's per-node profile of the image session into a file with this prefix
    /// (`bench --profile`); `Detector::end_profiling` closes it.
    pub profile: Option<PathBuf>,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        DetectorOptions {
            library: None,
            openvino_library: None,
            threads: 0,
            spin_wait: false,
            query_cache: 1024,
            attention: Attention::Fused,
            optimize: true,
            provider: Provider::Cpu,
            precision: Precision::Fp32,
            int8_range: None,
            profile: None,
        }
    }
}

impl DetectorOptions {
    /// The daemon's options for `provider` under `cfg`.
    pub fn from_config(cfg: &EngineSettings, provider: Provider) -> Self {
        DetectorOptions {
            library: super::artifact::library(cfg),
            openvino_library: super::artifact::openvino_library(cfg),
            threads: cfg.threads,
            spin_wait: cfg.spin_wait,
            query_cache: cfg.query_cache,
            optimize: cfg.optimize,
            precision: if provider == Provider::Cpu {
                cfg.cpu_precision
            } else {
                Precision::Fp32
            },
            provider,
            ..DetectorOptions::default()
        }
    }

    /// The CPU engine's precision as its cache key names it: the int8 weight range (which
    /// depends on the CPU's int8 kernels), `bf16`, or `fp32`.
    pub fn cpu_key_precision(&self) -> &'static str {
        match (self.int8_weights(), self.precision) {
            (Some(w), _) => w.name(),
            (None, Precision::Bf16) => Precision::Bf16.name(),
            _ => Precision::Fp32.name(),
        }
    }

    /// The int8 weight range of the image tower, or `None` for exact f32.
    pub fn int8_weights(&self) -> Option<Int8Weights> {
        (self.precision == Precision::Int8).then(|| {
            self.int8_range
                .unwrap_or_else(|| int8_range_for_runtime(self.library.as_deref()))
        })
    }

    /// The attention form the provider needs: TensorRT has no kernel for
    /// `com.microsoft.MultiHeadAttention` (the node would fall back to CUDA between TensorRT
    /// islands); it fuses plain attention itself. OpenVINO reads standard ONNX only (and fuses
    /// the attention pattern into its own SDPA).
    fn attention(&self) -> Attention {
        match self.provider {
            Provider::TensorRt { .. }
            | Provider::TensorRtRtx { .. }
            | Provider::OpenVino { .. } => Attention::Unfused,
            _ => self.attention,
        }
    }
}

/// The int8 weight range the loaded ONNX Runtime's u8×s8 kernel needs, found once per process by
/// running [`graphs::saturation_probe`] through it: its kernel dispatch, not the CPU flags as this
/// program reads them, decides whether pair sums saturate (the two can disagree, e.g. when a
/// runtime's AVX-512 kernels are not used). When the probe cannot run, the CPU-flag rule
/// ([`Int8Weights::for_host`]). Cached for the process, like the runtime itself: ONNX Runtime is
/// loaded once per process (`backend::ort::runtime`), so `library` matters only on the first call.
pub fn int8_range_for_runtime(library: Option<&Path>) -> Int8Weights {
    static PROBED: std::sync::OnceLock<Int8Weights> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| {
        let probe = graphs::saturation_probe();
        let run = crate::backend::ort::run_cpu_check(
            library,
            &probe.graph,
            ("x", &probe.dims, &probe.input),
            "y",
        );
        match run {
            Ok(y) => {
                let range = graphs::SaturationProbe::verdict(&y);
                tracing::debug!(range = range.name(), "int8 weight range from the kernel probe");
                range
            }
            Err(e) => {
                let range = Int8Weights::for_host();
                tracing::warn!(error = %e, range = range.name(), "int8 kernel probe failed; weight range from the CPU flags");
                range
            }
        }
    })
}

/// Loads the tokenizer on its own thread (tens of milliseconds of JSON), beside session creation.
pub(super) fn spawn_tokenizer(model: &ModelDir) -> JoinHandle<Result<QueryTokenizer, ModelError>> {
    let (dir, len) = (model.dir.clone(), model.config.text_len);
    std::thread::spawn(move || QueryTokenizer::from_dir(&dir, len))
}

/// Waits for the tokenizer.
pub(super) fn join_tokenizer(
    h: JoinHandle<Result<QueryTokenizer, ModelError>>,
) -> Result<QueryTokenizer, ModelError> {
    h.join().unwrap_or_else(|_| {
        Err(ModelError::Tokenizer(
            "the tokenizer loader panicked".into(),
        ))
    })
}

/// Builds (or loads) both graphs for `opts.provider` and creates their sessions.
pub(super) fn backend(
    model: &ModelDir,
    opts: &DetectorOptions,
    artifact: &Artifact,
) -> Result<Box<dyn Backend>, EngineError> {
    if let Provider::OpenVino { .. } = opts.provider {
        return Ok(Box::new(openvino_backend(model, opts)?));
    }
    Ok(Box::new(ort_backend(model, opts, artifact)?))
}

/// Builds both graphs in their plain-ONNX form, weights embedded, and compiles them with
/// OpenVINO (its own model cache makes a later start fast).
fn openvino_backend(model: &ModelDir, opts: &DetectorOptions) -> Result<OvBackend, EngineError> {
    let Provider::OpenVino {
        device,
        precision,
        cache_dir,
    } = &opts.provider
    else {
        return Err(EngineError::NoBackend("not an OpenVINO provider".into()));
    };
    let library = opts.openvino_library.as_deref().ok_or_else(|| {
        EngineError::NoBackend("no OpenVINO runtime installed (`intelligent-video runtime install --pip openvino==2026.4.1`)".into())
    })?;
    let t = std::time::Instant::now();
    let embed = |g: Vec<u8>| {
        crate::onnx::embed::embed_external(&g, &model.dir)
            .map_err(|e| ModelError::Safetensors(format!("reading the weights for OpenVINO: {e}")))
    };
    let image = embed(graphs::build_image_graph(
        &model.config,
        &model.checkpoint,
        opts.attention(),
        None,
        false,
    )?)?;
    let text = embed(graphs::build_text_graph(&model.config, &model.checkpoint)?)?;
    tracing::debug!(
        ms = t.elapsed().as_millis() as u64,
        "graphs built for OpenVINO"
    );
    let plan = OvPlan {
        library,
        device,
        precision: *precision,
        threads: opts.threads,
        cache_dir: cache_dir.as_deref(),
        image: &image,
        text: &text,
        image_size: model.config.image_size,
        text_len: model.config.text_len,
    };
    Ok(OvBackend::new(&plan)?)
}

/// Builds (or loads) both graphs for ONNX Runtime's `opts.provider` and creates their sessions.
fn ort_backend(
    model: &ModelDir,
    opts: &DetectorOptions,
    artifact: &Artifact,
) -> Result<OrtBackend, EngineError> {
    let t = std::time::Instant::now();
    let (image_bytes, text_bytes) = match artifact {
        Artifact::Load(_) => (Vec::new(), Vec::new()),
        _ => (
            graphs::build_image_graph(
                &model.config,
                &model.checkpoint,
                opts.attention(),
                opts.int8_weights(),
                opts.provider == Provider::Cpu && opts.precision == Precision::Bf16,
            )?,
            graphs::build_text_graph(&model.config, &model.checkpoint)?,
        ),
    };
    tracing::debug!(ms = t.elapsed().as_millis() as u64, "graphs built");
    let (image_path, image_weights) = artifact.files(&opts.provider, Graph::Image);
    let (text_path, text_weights) = artifact.files(&opts.provider, Graph::Text);
    let plan = SessionPlan {
        library: opts.library.as_deref(),
        provider: opts.provider.clone(),
        threads: opts.threads,
        spin_wait: opts.spin_wait,
        bf16_fastmath: opts.provider == Provider::Cpu && opts.precision == Precision::Bf16,
        optimize: opts.optimize,
        image: graph_source(artifact, &image_bytes, &image_path, &image_weights),
        text: graph_source(artifact, &text_bytes, &text_path, &text_weights),
        weights_dir: &model.dir,
        profile: opts.profile.as_deref(),
        image_size: model.config.image_size,
        text_len: model.config.text_len,
    };
    Ok(OrtBackend::new(&plan)?)
}

/// Where one graph's session comes from under `artifact`.
fn graph_source<'a>(
    artifact: &Artifact,
    bytes: &'a [u8],
    path: &'a Path,
    weights: &'a str,
) -> GraphSource<'a> {
    match artifact {
        Artifact::None => GraphSource::Build(bytes),
        Artifact::Save(_) => GraphSource::BuildAndSave {
            bytes,
            path,
            weights,
        },
        Artifact::Load(_) => GraphSource::Load(path),
    }
}

/// A detector on an opened model, its tokenizer still loading on `tokenizer`. A model error
/// (tokenizer) comes first: it is not the execution provider's fault.
pub(super) fn detector(
    model: &ModelDir,
    tokenizer: JoinHandle<Result<QueryTokenizer, ModelError>>,
    opts: &DetectorOptions,
    artifact: &Artifact,
) -> Result<Detector, EngineError> {
    let backend = backend(model, opts, artifact);
    assemble(model, tokenizer, backend, opts)
}

/// The detector from a backend build's result, once the tokenizer has loaded. A model error
/// (tokenizer) comes first: it is not the execution provider's fault.
pub(super) fn assemble(
    model: &ModelDir,
    tokenizer: JoinHandle<Result<QueryTokenizer, ModelError>>,
    backend: Result<Box<dyn Backend>, EngineError>,
    opts: &DetectorOptions,
) -> Result<Detector, EngineError> {
    let tokenizer = join_tokenizer(tokenizer)?;
    Ok(Detector::new(
        model.config.clone(),
        tokenizer,
        backend?,
        opts.query_cache,
    ))
}

/// Opens `dir` and builds a detector on `opts.provider` in memory (no cache): for the offline
/// commands and tests.
pub fn load_detector(dir: &Path, opts: &DetectorOptions) -> Result<Detector, EngineError> {
    load_detector_with(dir, opts, &Artifact::None)
}

/// `load_detector`, saving the optimised artifact into a folder or loading it from one (the
/// cache's entries use this; tests use it directly).
pub fn load_detector_with(
    dir: &Path,
    opts: &DetectorOptions,
    artifact: &Artifact,
) -> Result<Detector, EngineError> {
    let model = ModelDir::open(dir)?;
    let tokenizer = spawn_tokenizer(&model);
    detector(&model, tokenizer, opts, artifact)
}

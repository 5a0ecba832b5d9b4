//! Inference backends: the synchronous interface the pipeline drives (`Backend`), its outputs and
//! errors, the execution providers, and the plan a backend is created from (`SessionPlan`: where
//! each graph comes from and how its session is set up). `ort.rs` is the ONNX Runtime
//! implementation and the only module that imports `ort`; `library_trust` decides whether a process
//! running as root may load a given library. Which provider, which files and which
//! graph forms to use is the engine's decision, not the backend's.

pub mod library_guard;
pub(crate) mod library_trust;
pub mod openvino;
pub mod options;
pub mod ort;

use std::path::{Path, PathBuf};

use crate::vocab::{Graph, Precision};

/// The shared library `name` (`libonnxruntime.so`, `libopenvino_c.so`) in `dir`: the plain name
/// when it is there, else the newest versioned file (`name.<version>`, as the PyPI wheels ship
/// them).
pub(crate) fn library_in(dir: &Path, name: &str) -> Option<PathBuf> {
    let plain = dir.join(name);
    if plain.is_file() {
        return Some(plain);
    }
    let prefix = format!("{name}.");
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && p.is_file())
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

/// Image-graph outputs for one image (views into a batch).
#[derive(Debug, Clone, Copy)]
pub struct ImageHeads<'a> {
    /// `[P, C]`, L2-normalised rows.
    pub class_embeds: &'a [f32],
    /// `[P]`
    pub logit_shift: &'a [f32],
    /// `[P]`, already `elu + 1`.
    pub logit_scale: &'a [f32],
    /// `[P, 4]` as `(cx, cy, w, h)` in `[0, 1]` of the padded square.
    pub pred_boxes: &'a [f32],
    /// `[P]` (used to pick an exemplar's query patch).
    pub objectness_logits: &'a [f32],
}

/// Outputs of the image graph for a batch, row-major.
#[derive(Debug, Clone, Default)]
pub struct ImageBatch {
    pub batch: usize,
    pub num_patches: usize,
    pub class_dim: usize,
    /// `[B, P, C]`
    pub class_embeds: Vec<f32>,
    /// `[B, P]`
    pub logit_shift: Vec<f32>,
    /// `[B, P]`
    pub logit_scale: Vec<f32>,
    /// `[B, P, 4]`
    pub pred_boxes: Vec<f32>,
    /// `[B, P]`
    pub objectness_logits: Vec<f32>,
}

impl ImageBatch {
    /// A batch from the image graph's five outputs in [`IMAGE_OUTPUTS`] order, once their sizes
    /// agree with each other and with `batch`.
    ///
    /// [`IMAGE_OUTPUTS`]: crate::model::graphs::IMAGE_OUTPUTS
    pub fn from_outputs(batch: usize, outputs: [Vec<f32>; 5]) -> Result<Self, BackendError> {
        let [class_embeds, logit_shift, logit_scale, pred_boxes, objectness_logits] = outputs;
        let p = logit_shift.len() / batch.max(1);
        let c = class_embeds.len() / (batch * p).max(1);
        let sizes_ok = p > 0
            && logit_shift.len() == batch * p
            && class_embeds.len() == batch * p * c
            && logit_scale.len() == batch * p
            && pred_boxes.len() == batch * p * 4
            && objectness_logits.len() == batch * p;
        if !sizes_ok {
            return Err(BackendError::Output {
                graph: Graph::Image,
                message: format!("output sizes do not agree for batch {batch}"),
            });
        }
        Ok(ImageBatch {
            batch,
            num_patches: p,
            class_dim: c,
            class_embeds,
            logit_shift,
            logit_scale,
            pred_boxes,
            objectness_logits,
        })
    }

    /// The heads of image `i` of the batch.
    pub fn heads(&self, i: usize) -> ImageHeads<'_> {
        let (p, c) = (self.num_patches, self.class_dim);
        ImageHeads {
            class_embeds: &self.class_embeds[i * p * c..(i + 1) * p * c],
            logit_shift: &self.logit_shift[i * p..(i + 1) * p],
            logit_scale: &self.logit_scale[i * p..(i + 1) * p],
            pred_boxes: &self.pred_boxes[i * p * 4..(i + 1) * p * 4],
            objectness_logits: self
                .objectness_logits
                .get(i * p..(i + 1) * p)
                .unwrap_or(&[]),
        }
    }
}

/// Which ONNX Runtime execution provider runs the graphs, with its knobs.
#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    /// TensorRT EP (CUDA EP behind it for unsupported nodes).
    TensorRt {
        precision: Precision,
        /// Largest image batch of the optimisation profile (profiles cover 1..=max_batch).
        max_batch: usize,
        /// Largest query count of the text graph's profile (1..=max_queries).
        max_queries: usize,
        /// TensorRT timing cache folder (shared by every engine build; none = in memory).
        timing_cache: Option<PathBuf>,
    },
    /// TensorRT-RTX's plugin EP (ONNX Runtime's EP ABI, registered from the loaded build's folder):
    /// engines built just in time, their kernels kept in its runtime cache.
    TensorRtRtx {
        /// Largest image batch of the optimisation profile (profiles cover 1..=max_batch).
        max_batch: usize,
        /// Largest query count of the text graph's profile (1..=max_queries).
        max_queries: usize,
        /// TensorRT-RTX's runtime cache folder (none = in memory).
        runtime_cache: Option<PathBuf>,
    },
    /// CUDA EP; TF32 is always off (exact fp32).
    Cuda {
        /// `reduce-overhead`: capture CUDA graphs.
        cuda_graphs: bool,
        /// `max-autotune`: exhaustive cuDNN convolution search.
        exhaustive_conv: bool,
    },
    /// ONNX Runtime's CPU provider.
    Cpu,
    /// OpenVINO (not ONNX Runtime: `backend::openvino`), on one of its devices.
    OpenVino {
        /// OpenVINO device name (`CPU`, `GPU`, `NPU`).
        device: String,
        /// Inference precision: fp32 or bf16.
        precision: Precision,
        /// OpenVINO's compiled-model cache folder (none: compile at every start).
        cache_dir: Option<PathBuf>,
    },
}

/// The execution provider name TensorRT-RTX's plugin registers its devices under.
pub const TENSORRT_RTX_EP: &str = "NvTensorRTRTXExecutionProvider";
/// Its plugin library in an installed build's folder.
pub const TENSORRT_RTX_PLUGIN: &str = "libonnxruntime_providers_nv_tensorrt_rtx.so";

impl Provider {
    /// Short name shown in APIs.
    pub fn name(&self) -> &'static str {
        match self {
            Provider::TensorRt { .. } => "tensorrt",
            Provider::TensorRtRtx { .. } => "tensorrt_rtx",
            Provider::Cuda { .. } => "cuda",
            Provider::Cpu => "cpu",
            Provider::OpenVino { .. } => "openvino",
        }
    }

    /// Whether this provider has a saved artifact worth caching: the ONNX Runtime-optimised graphs
    /// on the CPU, the built engines (as EP-context models) for TensorRT. The CUDA provider's
    /// session set-up is cheap and its optimised graph is not portable, so it is not cached;
    /// TensorRT-RTX keeps its own runtime cache (EP-context models for it are not written yet);
    /// so does OpenVINO (its compiled-model cache, in a folder of the artifact cache).
    pub fn caches_artifacts(&self) -> bool {
        !matches!(
            self,
            Provider::Cuda { .. } | Provider::TensorRtRtx { .. } | Provider::OpenVino { .. }
        )
    }

    /// Whether this provider runs on an NVIDIA GPU.
    pub fn on_nvidia_gpu(&self) -> bool {
        !matches!(self, Provider::Cpu | Provider::OpenVino { .. })
    }
}

/// Where a graph's session comes from.
#[derive(Debug, Clone, Copy)]
pub enum GraphSource<'a> {
    /// Serialised graph built from the checkpoint.
    Build(&'a [u8]),
    /// Built graph whose optimised form is saved at `path` while the session is created: the ONNX
    /// Runtime-optimised graph (CPU; weights, prepacked too, in the file `weights` beside it) or
    /// the TensorRT EP-context model (engine files beside it).
    BuildAndSave {
        bytes: &'a [u8],
        path: &'a Path,
        weights: &'a str,
    },
    /// A previously saved artifact (nothing is optimised or built again).
    Load(&'a Path),
}

/// Everything a backend is created from: the runtime, the provider and session settings, and where
/// each graph comes from.
#[derive(Debug, Clone)]
pub struct SessionPlan<'a> {
    /// ONNX Runtime library (else the usual search).
    pub library: Option<&'a Path>,
    pub provider: Provider,
    /// Intra-op threads (0 = ONNX Runtime's default: one per core).
    pub threads: usize,
    /// Whether idle intra-op threads spin-wait for work (CPU provider).
    pub spin_wait: bool,
    /// GEMMs in bf16 through ONNX Runtime's arm64 fast-math kernels (CPU provider on arm64).
    pub bf16_fastmath: bool,
    /// Full graph optimisations (`true`) or only the basic, semantics-preserving rewrites (the
    /// eager baseline of `bench --compare`).
    pub optimize: bool,
    pub image: GraphSource<'a>,
    pub text: GraphSource<'a>,
    /// Folder of the checkpoint that built graphs point into for their external weights.
    pub weights_dir: &'a Path,
    /// Profile the image session into a file with this prefix (ONNX Runtime's profiler).
    pub profile: Option<&'a Path>,
    pub image_size: usize,
    pub text_len: usize,
}

/// Errors of an inference backend.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("ONNX Runtime library: {0}")]
    Library(String),
    #[error("cannot create the {graph} session: {message}")]
    Session { graph: Graph, message: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("unexpected output from the {graph} graph: {message}")]
    Output { graph: Graph, message: String },
}

impl BackendError {
    /// Stable snake_case name for APIs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Library(_) => "runtime_library",
            BackendError::Session { .. } => "backend_session",
            BackendError::Run(_) => "inference_failed",
            BackendError::Output { .. } => "inference_output",
        }
    }
}

/// A loaded model ready to run, owned by one thread.
pub trait Backend: Send {
    /// Short name shown in APIs (`cpu`, `cuda`, `tensorrt`).
    fn name(&self) -> &str;
    /// Runs the image graph on `batch` preprocessed images (`[B,3,S,S]` contiguous).
    fn run_image(&mut self, pixel_values: &[f32], batch: usize)
        -> Result<ImageBatch, BackendError>;
    /// Runs the text graph on `n` rows of token ids; returns `[n, C]` query embeddings.
    fn run_text(&mut self, input_ids: &[i64], n: usize) -> Result<Vec<f32>, BackendError>;
    /// Ends the image session's profile (when `SessionPlan::profile` asked for one) and returns
    /// the file it wrote.
    fn end_profiling(&mut self) -> Result<Option<std::path::PathBuf>, BackendError> {
        Ok(None)
    }
}

//! OpenVINO backend (the only module that imports `openvino`): loading `libopenvino_c.so` from an
//! installed OpenVINO runtime (`runtime install --pip openvino==…`; the crate's `runtime-linking`,
//! so the binary does not link OpenVINO), reading the natively built ONNX graphs from memory
//! (their weights embedded: OpenVINO's ONNX reader has no folder to resolve external data
//! against when it reads from a buffer), compiling them for a device with an explicit inference
//! precision (`f32` unless asked: OpenVINO's CPU plugin picks bf16 by itself where the CPU has
//! it), OpenVINO's own compiled-model cache in a folder of the artifact cache, and running them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use openvino::{
    CompiledModel, Core, DeviceType, ElementType, InferRequest, RwPropertyKey, Shape, Tensor,
};

use super::{Backend, BackendError, ImageBatch};
use crate::vocab::{Graph, Precision};

/// Environment variable naming OpenVINO's C library (or a folder holding it).
pub const LIBRARY_ENV: &str = "IV_OPENVINO_PATH";
/// The C API library's file name prefix (the PyPI wheel ships `libopenvino_c.so.<version>`).
const C_LIBRARY: &str = "libopenvino_c.so";

/// The library loaded in this process (OpenVINO loads once per process), or why it failed.
static LOADED: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// How an OpenVINO backend is set up.
#[derive(Debug, Clone)]
pub struct OvPlan<'a> {
    /// `libopenvino_c.so*` or the folder holding it.
    pub library: &'a Path,
    /// OpenVINO device name: `CPU`, `GPU`, `NPU`, …
    pub device: &'a str,
    /// Inference precision hint: fp32 (exact) or bf16.
    pub precision: Precision,
    /// Threads (0 = OpenVINO's default).
    pub threads: usize,
    /// OpenVINO's compiled-model cache folder (none: compile every start).
    pub cache_dir: Option<&'a Path>,
    /// The image graph, weights embedded.
    pub image: &'a [u8],
    /// The text graph, weights embedded.
    pub text: &'a [u8],
    pub image_size: usize,
    pub text_len: usize,
}

/// The C library at `path` (a file, or a folder holding one).
pub fn find_library(path: &Path) -> Result<PathBuf, BackendError> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        if let Some(l) = super::library_in(path, C_LIBRARY) {
            return Ok(l);
        }
    }
    Err(BackendError::Library(format!(
        "{} holds no OpenVINO C library ({C_LIBRARY}*; install one with `intelligent-video runtime install --pip openvino==2026.4.1`)",
        path.display()
    )))
}

/// Loads OpenVINO's C library once per process; a later call with another path reports the
/// one loaded. As root, a library another user could replace is refused (`library_trust`).
fn load(path: &Path) -> Result<PathBuf, BackendError> {
    let lib = find_library(path)?;
    let loaded = LOADED.get_or_init(|| {
        let lib =
            super::library_trust::loadable_by_this_process(&lib).map_err(|e| e.to_string())?;
        openvino_sys::library::load_from(lib.clone())
            .map(|_| lib.clone())
            .map_err(|e| format!("cannot load {}: {e}", lib.display()))
    });
    loaded.clone().map_err(BackendError::Library)
}

/// The version of the OpenVINO library loaded in this process, if one is.
pub fn loaded_version() -> Option<String> {
    matches!(LOADED.get(), Some(Ok(_))).then(|| openvino::version().build_number)
}

/// The version of OpenVINO's library at `path` (loaded, once per process; no device is
/// enumerated: the engine's pre-check needs only this).
pub fn version(path: &Path) -> Result<String, BackendError> {
    load(path)?;
    Ok(openvino::version().build_number)
}

/// OpenVINO's version and devices, from the library at `path` (`doctor`, `runtime install`).
/// Listing the devices loads every device plugin (GPU, NPU), which a start does not need.
pub fn describe(path: &Path) -> Result<(String, Vec<String>), BackendError> {
    let version = version(path)?;
    let core = Core::new().map_err(|e| BackendError::Library(e.to_string()))?;
    let devices = core
        .available_devices()
        .map_err(|e| BackendError::Library(e.to_string()))?
        .iter()
        .map(|d| d.as_ref().to_string())
        .collect();
    Ok((version, devices))
}

/// The model cache's folder for `plan`'s settings under `root`. OpenVINO keys a cached blob by the
/// model, the device and its own version, but not by the properties set on the device before
/// compiling: a bf16 request found the fp32 blob of the same model (and a later run of it crashed),
/// so every setting passed is part of the folder.
fn cache_folder(root: &Path, plan: &OvPlan<'_>) -> PathBuf {
    let device: String = plan
        .device
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    root.join(format!(
        "{device}-{}-latency-t{}",
        plan.precision.name(),
        plan.threads
    ))
}

/// OpenVINO's name of an inference precision; fp32 and bf16 only (our int8 path is ONNX
/// Runtime's, and fp16 is a GPU precision).
fn precision_hint(p: Precision) -> Result<&'static str, BackendError> {
    match p {
        Precision::Fp32 => Ok("f32"),
        Precision::Bf16 => Ok("bf16"),
        other => Err(BackendError::Library(format!(
            "OpenVINO runs fp32 or bf16 here, not {}",
            other.name()
        ))),
    }
}

/// An OpenVINO compiled model pair, ready to run.
pub struct OvBackend {
    image: InferRequest,
    text: InferRequest,
    // The requests keep their compiled models alive; these are held for clarity of ownership.
    _models: (CompiledModel, CompiledModel),
    image_size: usize,
    text_len: usize,
}

fn session_err(graph: Graph) -> impl Fn(openvino::InferenceError) -> BackendError {
    move |e| BackendError::Session {
        graph,
        message: format!("OpenVINO: {e}"),
    }
}

fn compile(
    core: &mut Core,
    graph: Graph,
    bytes: &[u8],
    device: &DeviceType<'_>,
) -> Result<CompiledModel, BackendError> {
    let model = core
        .read_model_from_buffer(bytes, None)
        .map_err(session_err(graph))?;
    core.compile_model(&model, device.to_owned())
        .map_err(session_err(graph))
}

impl OvBackend {
    /// Loads the library and compiles both graphs for `plan.device`.
    pub fn new(plan: &OvPlan<'_>) -> Result<Self, BackendError> {
        load(plan.library)?;
        let mut core = Core::new().map_err(|e| BackendError::Library(e.to_string()))?;
        let device = DeviceType::from(plan.device);
        let mut props: Vec<(RwPropertyKey, String)> = vec![
            (
                RwPropertyKey::HintInferencePrecision,
                precision_hint(plan.precision)?.into(),
            ),
            // One request at a time per backend: the batcher hands whole batches.
            (RwPropertyKey::HintPerformanceMode, "LATENCY".into()),
        ];
        if plan.threads > 0 {
            props.push((RwPropertyKey::InferenceNumThreads, plan.threads.to_string()));
        }
        for (k, v) in &props {
            core.set_property(&device, k, v)
                .map_err(|e| BackendError::Library(format!("OpenVINO {}: {e}", k.as_ref())))?;
        }
        if let Some(dir) = plan.cache_dir.map(|d| cache_folder(d, plan)) {
            let set = std::fs::create_dir_all(&dir)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    core.set_property(&device, &RwPropertyKey::CacheDir, &dir.to_string_lossy())
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = set {
                tracing::warn!(error = %e, folder = %dir.display(), "OpenVINO's model cache is off");
            }
        }
        let mut image = compile(&mut core, Graph::Image, plan.image, &device)?;
        let mut text = compile(&mut core, Graph::Text, plan.text, &device)?;
        let image_req = image
            .create_infer_request()
            .map_err(session_err(Graph::Image))?;
        let text_req = text
            .create_infer_request()
            .map_err(session_err(Graph::Text))?;
        Ok(OvBackend {
            image: image_req,
            text: text_req,
            _models: (image, text),
            image_size: plan.image_size,
            text_len: plan.text_len,
        })
    }
}

fn run_err(e: openvino::InferenceError) -> BackendError {
    BackendError::Run(format!("OpenVINO: {e}"))
}

/// A tensor of `shape` holding a copy of `data`.
fn tensor<T: Copy>(ty: ElementType, shape: &[i64], data: &[T]) -> Result<Tensor, BackendError> {
    let shape = Shape::new(shape).map_err(run_err)?;
    let mut t = Tensor::new(ty, &shape).map_err(run_err)?;
    let dst = t.get_data_mut::<T>().map_err(run_err)?;
    if dst.len() != data.len() {
        return Err(BackendError::Run(format!(
            "OpenVINO tensor holds {} values, {} given",
            dst.len(),
            data.len()
        )));
    }
    dst.copy_from_slice(data);
    Ok(t)
}

/// Output `index` of `req` as f32 values.
fn output(req: &InferRequest, index: usize, graph: Graph) -> Result<Vec<f32>, BackendError> {
    let out_err = |message: String| BackendError::Output { graph, message };
    let t = req
        .get_output_tensor_by_index(index)
        .map_err(|e| out_err(format!("output {index}: {e}")))?;
    match t.get_element_type() {
        Ok(ElementType::F32) => {}
        other => return Err(out_err(format!("output {index} is {other:?}, not f32"))),
    }
    let v = t
        .get_data::<f32>()
        .map_err(|e| out_err(format!("output {index}: {e}")))?;
    Ok(v.to_vec())
}

impl Backend for OvBackend {
    fn name(&self) -> &str {
        "openvino"
    }

    fn run_image(
        &mut self,
        pixel_values: &[f32],
        batch: usize,
    ) -> Result<ImageBatch, BackendError> {
        let s = self.image_size;
        if batch == 0 || pixel_values.len() != batch * 3 * s * s {
            return Err(BackendError::Run(format!(
                "pixel_values has {} values, expected {batch}x3x{s}x{s}",
                pixel_values.len()
            )));
        }
        let dims = [batch as i64, 3, s as i64, s as i64];
        let input = tensor(ElementType::F32, &dims, pixel_values)?;
        self.image.set_input_tensor(&input).map_err(run_err)?;
        self.image.infer().map_err(run_err)?;
        // The compiled model keeps the graph's output order (`IMAGE_OUTPUTS`).
        let out = |i: usize| output(&self.image, i, Graph::Image);
        ImageBatch::from_outputs(batch, [out(0)?, out(1)?, out(2)?, out(3)?, out(4)?])
    }

    fn run_text(&mut self, input_ids: &[i64], n: usize) -> Result<Vec<f32>, BackendError> {
        if n == 0 || input_ids.len() != n * self.text_len {
            return Err(BackendError::Run(format!(
                "{} token ids are not {n} rows of {}",
                input_ids.len(),
                self.text_len
            )));
        }
        let input = tensor(
            ElementType::I64,
            &[n as i64, self.text_len as i64],
            input_ids,
        )?;
        self.text.set_input_tensor(&input).map_err(run_err)?;
        self.text.infer().map_err(run_err)?;
        output(&self.text, 0, Graph::Text)
    }
}

//! ONNX Runtime backend (the only module that imports `ort`): finding and loading the shared
//! library (`load-dynamic`; as root, only a library no other user can replace, see
//! `library_trust`), creating sessions for the natively built graphs with their weights as
//! external data in the checkpoint folder, and running them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use ort::ep::{ArbitrarilyConfigurableExecutionProvider, ExecutionProvider};

use super::options::{cuda_options, tensorrt_options, tensorrt_rtx_options, ProfileInput};
use super::{Backend, BackendError, GraphSource, ImageBatch, Provider, SessionPlan};
use crate::model::graphs::IMAGE_OUTPUTS;
use crate::vocab::Graph;

/// Environment variable naming the ONNX Runtime shared library to load.
pub const LIBRARY_ENV: &str = "IV_ONNXRUNTIME_PATH";
/// Where the Debian package installs the library.
pub const PACKAGED_LIBRARY_DIR: &str = "/usr/lib/intelligent-video";

static RUNTIME: OnceLock<Result<(ort::environment::Environment, PathBuf), String>> =
    OnceLock::new();
/// The CUDA libraries preloaded from the loaded build's folder (empty: none carried, or no driver).
static PRELOADED: OnceLock<Vec<crate::runtimes::preload::Preloaded>> = OnceLock::new();

/// The CUDA libraries preloaded from the loaded build's folder, once ONNX Runtime is loaded.
pub(crate) fn preloaded_cuda_libraries() -> Vec<crate::runtimes::preload::Preloaded> {
    PRELOADED.get().cloned().unwrap_or_default()
}

/// Preloads the CUDA libraries `folder` carries when the NVIDIA driver is there to use them (no
/// driver: the GPU tiers are skipped anyway, and nothing is mapped for nothing).
fn preload_cuda(folder: &Path) -> Vec<crate::runtimes::preload::Preloaded> {
    use crate::runtimes::preload;
    if preload::carried(folder).is_empty() {
        return Vec::new();
    }
    // SAFETY: the NVIDIA driver's library, opened as ONNX Runtime's CUDA provider opens it; it is
    // closed again at once (the GPU probe and the providers open it themselves).
    if unsafe { libloading::Library::new("libcuda.so.1") }.is_err() {
        tracing::info!(folder = %folder.display(), "the build carries CUDA libraries; no NVIDIA driver, so they are not loaded");
        return Vec::new();
    }
    let report = preload::preload(folder);
    for p in &report {
        if p.status == "loaded" {
            tracing::debug!(library = %p.library, "preloaded from the build");
        } else {
            tracing::warn!(library = %p.library, reason = %p.status, "a CUDA library of the build does not load");
        }
    }
    tracing::info!(folder = %folder.display(), libraries = report.len(), "CUDA libraries preloaded from the build");
    report
}

/// ONNX Runtime's library in `dir`.
fn lib_in(dir: &Path) -> Option<PathBuf> {
    super::library_in(dir, "libonnxruntime.so")
}

/// Finds the ONNX Runtime library: `explicit` (from `IV_ONNXRUNTIME_PATH` or config), then next to
/// the executable (and its parent folder, for test binaries in `target/*/deps`), then
/// `/usr/lib/intelligent-video`.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, BackendError> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        if p.is_dir() {
            if let Some(l) = lib_in(p) {
                return Ok(l);
            }
        }
        return Err(BackendError::Library(format!(
            "{} is not an ONNX Runtime library (set {LIBRARY_ENV} to libonnxruntime.so)",
            p.display()
        )));
    }
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
            if let Some(pp) = d.parent() {
                dirs.push(pp.to_path_buf());
            }
        }
    }
    dirs.push(PathBuf::from(PACKAGED_LIBRARY_DIR));
    for d in &dirs {
        if let Some(l) = lib_in(d) {
            return Ok(l);
        }
    }
    Err(BackendError::Library(format!(
        "libonnxruntime.so not found next to the executable or in {PACKAGED_LIBRARY_DIR}; set {LIBRARY_ENV} (searched {})",
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
    )))
}

/// Loads ONNX Runtime once per process; later calls return the first result. As root, a library
/// another user could replace is refused (`library_trust`).
pub fn runtime(
    explicit: Option<&Path>,
) -> Result<(ort::environment::Environment, PathBuf), BackendError> {
    let env_path = std::env::var_os(LIBRARY_ENV).map(PathBuf::from);
    let explicit = explicit.map(Path::to_path_buf).or(env_path);
    RUNTIME
        .get_or_init(|| {
            let path = find_library(explicit.as_deref()).map_err(|e| e.to_string())?;
            let path =
                super::library_trust::loadable_by_this_process(&path).map_err(|e| e.to_string())?;
            if let Some(folder) = path.parent() {
                let _ = PRELOADED.set(preload_cuda(folder));
            }
            let builder = ort::init_from(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let env = builder
                .with_name("intelligent-video")
                .build()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((env, path))
        })
        .clone()
        .map_err(BackendError::Library)
}

/// Loads ONNX Runtime (once) and returns its version.
pub fn ensure_runtime(explicit: Option<&Path>) -> Result<String, BackendError> {
    runtime(explicit)?;
    Ok(runtime_version().unwrap_or_else(|| "unknown".into()))
}

/// ONNX Runtime's version (from the loaded library's file name, else its build info), once loaded.
pub fn runtime_version() -> Option<String> {
    let (_, path) = RUNTIME.get()?.as_ref().ok()?;
    let name = path.file_name()?.to_string_lossy().to_string();
    match name.strip_prefix("libonnxruntime.so.") {
        Some(v) if !v.is_empty() => Some(v.to_string()),
        _ => Some(ort::info().to_string()),
    }
}

/// Path of the loaded ONNX Runtime library, once loaded.
pub fn runtime_path() -> Option<PathBuf> {
    RUNTIME.get()?.as_ref().ok().map(|(_, p)| p.clone())
}

/// Intra-op threads and their affinity: the configured count; or, by default on the CPU provider
/// of a heterogeneous CPU, one thread per performance core, pinned there (GB10: 41.6 vs 32.9 FPS
/// for a YOLO model pinned to the 10 X925 cores, ultralytics' DGX Spark report).
fn intra_op_threads(plan: &SessionPlan<'_>) -> (usize, Option<String>) {
    if plan.threads > 0 || plan.provider != Provider::Cpu {
        return (plan.threads, None);
    }
    match crate::cpu::performance_cores(Path::new(crate::cpu::SYSFS_CPU)) {
        Some(big) => {
            tracing::info!(cores = ?big, "heterogeneous CPU: inference threads on the performance cores");
            (big.len(), crate::cpu::affinity_string(&big))
        }
        None => (0, None),
    }
}

/// Registers a plugin execution-provider library (ONNX Runtime's EP ABI, e.g. TensorRT-RTX's
/// `libonnxruntime_providers_nv_tensorrt_rtx.so`) with the loaded runtime and returns the devices
/// it offers as "EP on vendor type" lines; `Err` holds ONNX Runtime's reason (a missing library,
/// typically the NVIDIA driver's).
pub(crate) fn register_plugin(
    name: &str,
    library: &Path,
    explicit: Option<&Path>,
) -> Result<Vec<String>, BackendError> {
    let (env, _) = runtime(explicit)?;
    env.register_ep_library(name, library)
        .map_err(|e| BackendError::Library(e.to_string()))?;
    Ok(env
        .devices()
        .filter_map(|d| {
            let ep = d.ep().ok()?;
            (ep != "CPUExecutionProvider").then(|| {
                let hw = d.hardware_device();
                format!(
                    "{ep} on {} {:?} {}",
                    hw.vendor().unwrap_or("?"),
                    hw.ty(),
                    hw.id()
                )
            })
        })
        .collect())
}

/// The execution providers the loaded ONNX Runtime was built with, among those the daemon uses.
pub fn compiled_providers() -> Vec<&'static str> {
    let mut v = vec!["CPUExecutionProvider"];
    if matches!(ort::ep::CUDA::is_available(), Ok(true)) {
        v.push("CUDAExecutionProvider");
    }
    if matches!(ort::ep::TensorRT::is_available(), Ok(true)) {
        v.push("TensorrtExecutionProvider");
    }
    v
}

/// Fails with a clear reason when the loaded ONNX Runtime was built without `provider`'s
/// execution provider (the PyPI `onnxruntime` wheel is CPU-only).
pub fn provider_available(provider: &Provider, library: Option<&Path>) -> Result<(), BackendError> {
    runtime(library)?;
    let (ep_name, available) = match provider {
        Provider::Cpu => return Ok(()),
        Provider::TensorRtRtx { .. } => return tensorrt_rtx_available(library),
        Provider::TensorRt { .. } => (
            "TensorrtExecutionProvider",
            ort::ep::TensorRT::is_available(),
        ),
        Provider::Cuda { .. } => ("CUDAExecutionProvider", ort::ep::CUDA::is_available()),
        Provider::OpenVino { .. } => {
            return Err(BackendError::Library(
                "OpenVINO is not an ONNX Runtime provider here (backend::openvino runs it)".into(),
            ))
        }
    };
    match available {
        Ok(true) => Ok(()),
        Ok(false) => Err(BackendError::Library(format!(
            "{} execution provider unavailable: the ONNX Runtime at {} was built without {ep_name} (install a GPU build, see the README)",
            provider.name(),
            runtime_path().map(|p| p.display().to_string()).unwrap_or_default()
        ))),
        Err(e) => Err(BackendError::Library(format!("{}: {e}", provider.name()))),
    }
}

/// TensorRT-RTX's plugin, registered once per process from the loaded build's folder.
static RTX_PLUGIN: OnceLock<Result<(), String>> = OnceLock::new();

/// Whether TensorRT-RTX's plugin EP is in the loaded build, registers, and offers a GPU.
fn tensorrt_rtx_available(library: Option<&Path>) -> Result<(), BackendError> {
    let unavailable = |why: String| BackendError::Library(format!("tensorrt_rtx: {why}"));
    let plugin = runtime_path()
        .and_then(|p| p.parent().map(|d| d.join(super::TENSORRT_RTX_PLUGIN)))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            unavailable(format!(
                "the loaded ONNX Runtime build has no TensorRT-RTX plugin ({}; x86_64: intelligent-video runtime install --pip onnxruntime-gpu==1.31.1 onnxruntime-ep-nv-tensorrt-rtx-cu13)",
                super::TENSORRT_RTX_PLUGIN
            ))
        })?;
    RTX_PLUGIN
        .get_or_init(|| {
            let (env, _) = runtime(library).map_err(|e| e.to_string())?;
            env.register_ep_library("NvTensorRtRtx", &plugin)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| unavailable(format!("its plugin cannot be registered: {e}")))?;
    let (env, _) = runtime(library)?;
    if env
        .devices()
        .any(|d| d.ep().is_ok_and(|ep| ep == super::TENSORRT_RTX_EP))
    {
        Ok(())
    } else {
        Err(unavailable("its plugin offers no device here".into()))
    }
}

/// The execution providers to register for `provider`, each failing loudly (no silent CPU fallback
/// inside ONNX Runtime: the daemon's own fallback chain records the reason).
fn execution_providers(
    provider: &Provider,
    graph: Graph,
    input: &ProfileInput,
    source: GraphSource<'_>,
) -> Vec<ort::ep::ExecutionProviderDispatch> {
    fn cuda(o: Vec<(&'static str, String)>) -> ort::ep::ExecutionProviderDispatch {
        o.into_iter()
            .fold(ort::ep::CUDA::default(), |ep, (k, v)| {
                ep.with_arbitrary_config(k, v)
            })
            .build()
            .error_on_failure()
    }
    match provider {
        // Plugin EPs are chosen by device (`SessionBuilder::with_devices`), not registered here.
        Provider::Cpu | Provider::TensorRtRtx { .. } | Provider::OpenVino { .. } => Vec::new(),
        Provider::Cuda {
            cuda_graphs,
            exhaustive_conv,
        } => vec![cuda(cuda_options(*cuda_graphs, *exhaustive_conv, graph))],
        Provider::TensorRt {
            precision,
            timing_cache,
            ..
        } => {
            let trt = tensorrt_options(*precision, graph, input, source, timing_cache.as_deref())
                .into_iter()
                .fold(ort::ep::TensorRT::default(), |ep, (k, v)| {
                    ep.with_arbitrary_config(k, v)
                });
            vec![
                trt.build().error_on_failure(),
                cuda(cuda_options(false, false, graph)),
            ]
        }
    }
}

/// The image and text sessions of one model on one execution provider.
pub struct OrtBackend {
    image: Session,
    text: Session,
    image_size: usize,
    name: &'static str,
    profiling: bool,
}

/// The session's configuration entries (`SessionOptions::AddConfigEntry`) for a graph built
/// or loaded from `source` under `plan`.
fn config_entries(
    source: GraphSource<'_>,
    plan: &SessionPlan<'_>,
    trt: bool,
) -> Vec<(&'static str, String)> {
    let mut entries = Vec::new();
    if !matches!(source, GraphSource::Load(_)) {
        entries.push((
            "session.model_external_initializers_file_folder_path",
            plan.weights_dir.to_string_lossy().into_owned(),
        ));
    }
    // ONNX Runtime's optimised-model saving (CPU); TensorRT saves through its EP-context options.
    if let (GraphSource::BuildAndSave { weights, .. }, false) = (source, trt) {
        entries.extend([
            (
                "session.optimized_model_external_initializers_file_name",
                weights.to_string(),
            ),
            (
                "session.optimized_model_external_initializers_min_size_in_bytes",
                "1024".to_string(),
            ),
            // Prepacked GEMM weights go into the weights file too, so a warm start maps them
            // instead of packing every matrix again.
            (
                "session.save_external_prepacked_constant_initializers",
                "1".to_string(),
            ),
        ]);
    }
    if plan.bf16_fastmath {
        // ONNX Runtime's bf16 fast path is in its MatMul kernel only; MatMul+Add fusion would turn
        // every projection into a Gemm, which keeps fp32 (measured: no drift at all with it on).
        entries.extend([
            ("mlas.enable_gemm_fastmath_arm64_bfloat16", "1".to_string()),
            (
                "optimization.disable_specified_optimizers",
                "MatMulAddFusion".to_string(),
            ),
        ]);
    }
    if let (_, Some(affinity)) = intra_op_threads(plan) {
        entries.push(("session.intra_op_thread_affinities", affinity));
    }
    entries
}

fn session(
    env: &ort::environment::Environment,
    graph: Graph,
    source: GraphSource<'_>,
    plan: &SessionPlan<'_>,
    input: &ProfileInput,
) -> Result<Session, BackendError> {
    let err = |e: String| BackendError::Session { graph, message: e };
    let ort_err = |e: ort::Error<ort::session::builder::SessionBuilder>| err(e.to_string());
    let trt = matches!(plan.provider, Provider::TensorRt { .. });
    let level = match source {
        // Already optimised (or compiled) when it was saved.
        GraphSource::Load(_) => GraphOptimizationLevel::Disable,
        _ if plan.optimize => GraphOptimizationLevel::All,
        _ => GraphOptimizationLevel::Level1,
    };
    let mut b = Session::builder(env)
        .map_err(|e| err(e.to_string()))?
        .with_optimization_level(level)
        .map_err(ort_err)?;
    for (key, value) in config_entries(source, plan, trt) {
        b = b.with_config_entry(key, value).map_err(ort_err)?;
    }
    if let (GraphSource::BuildAndSave { path, .. }, false) = (source, trt) {
        b = b.with_optimized_model_path(path).map_err(ort_err)?;
    }
    // Idle intra-op threads spin for work unless told not to: faster back-to-back inferences of
    // small graphs, but cores taken from video decoding and preprocessing (README, "CPU threads").
    b = b.with_intra_op_spinning(plan.spin_wait).map_err(ort_err)?;
    if let (Graph::Image, Some(prefix)) = (graph, plan.profile) {
        b = b.with_profiling(prefix).map_err(ort_err)?;
    }
    let (threads, _) = intra_op_threads(plan);
    if threads > 0 {
        b = b.with_intra_threads(threads).map_err(ort_err)?;
    }
    let eps = execution_providers(&plan.provider, graph, input, source);
    if !eps.is_empty() {
        b = b
            .with_execution_providers(eps)
            .map_err(|e| err(format!("{} execution provider: {e}", plan.provider.name())))?;
    }
    if let Provider::TensorRtRtx { runtime_cache, .. } = &plan.provider {
        let options = tensorrt_rtx_options(input, graph, runtime_cache.as_deref());
        let devices = env
            .devices()
            .filter(|d| d.ep().is_ok_and(|ep| ep == super::TENSORRT_RTX_EP));
        b = b
            .with_devices(devices, Some(&options))
            .map_err(|e| err(format!("tensorrt_rtx execution provider: {e}")))?;
    }
    match source {
        GraphSource::Build(bytes) | GraphSource::BuildAndSave { bytes, .. } => {
            b.commit_from_memory(bytes).map_err(|e| err(e.to_string()))
        }
        GraphSource::Load(path) => b
            .commit_from_file(path)
            .map_err(|e| err(format!("{}: {e}", path.display()))),
    }
}

impl OrtBackend {
    /// Creates the image and text sessions of `plan` (side by side: they are independent).
    pub fn new(plan: &SessionPlan<'_>) -> Result<Self, BackendError> {
        let (env, _) = runtime(plan.library)?;
        provider_available(&plan.provider, plan.library)?;
        let (max_batch, max_queries) = match &plan.provider {
            Provider::TensorRt {
                max_batch,
                max_queries,
                ..
            }
            | Provider::TensorRtRtx {
                max_batch,
                max_queries,
                ..
            } => (*max_batch, *max_queries),
            _ => (1, 1),
        };
        let s = plan.image_size;
        let image_input = ProfileInput {
            name: "pixel_values",
            dims: format!("3x{s}x{s}"),
            max_batch,
        };
        let text_input = ProfileInput {
            name: "input_ids",
            dims: plan.text_len.to_string(),
            max_batch: max_queries,
        };
        let (image, text) = std::thread::scope(|scope| {
            let env = &env;
            let text = scope.spawn(move || {
                let t = std::time::Instant::now();
                let r = session(env, Graph::Text, plan.text, plan, &text_input);
                tracing::debug!(ms = t.elapsed().as_millis() as u64, "text session created");
                r
            });
            let t = std::time::Instant::now();
            let image = session(env, Graph::Image, plan.image, plan, &image_input);
            tracing::debug!(ms = t.elapsed().as_millis() as u64, "image session created");
            let text = text.join().unwrap_or_else(|_| {
                Err(BackendError::Session {
                    graph: Graph::Text,
                    message: "session creation panicked".into(),
                })
            });
            (image, text)
        });
        let (image, text) = (image?, text?);
        Ok(OrtBackend {
            image,
            text,
            image_size: s,
            name: plan.provider.name(),
            profiling: plan.profile.is_some(),
        })
    }
}

fn extract(
    outputs: &ort::session::SessionOutputs<'_>,
    name: &str,
    graph: Graph,
) -> Result<Vec<f32>, BackendError> {
    let out_err = |message: String| BackendError::Output { graph, message };
    let v = outputs
        .get(name)
        .ok_or_else(|| out_err(format!("missing output {name}")))?;
    let (_, data) = v
        .try_extract_tensor::<f32>()
        .map_err(|e| out_err(format!("{name}: {e}")))?;
    Ok(data.to_vec())
}

/// Runs a small one-input, one-output f32 graph once on the CPU provider with one thread and full
/// graph optimisations (as the engine builds its graphs): a check of the loaded runtime's own
/// kernels, such as `model::quant::saturation_probe`.
pub fn run_cpu_check(
    library: Option<&Path>,
    graph: &[u8],
    input: (&str, &[usize], &[f32]),
    output: &str,
) -> Result<Vec<f32>, BackendError> {
    let (env, _) = runtime(library)?;
    let (name, dims, data) = input;
    fn err(e: impl std::fmt::Display) -> BackendError {
        BackendError::Run(format!("runtime check: {e}"))
    }
    let mut session = Session::builder(&env)
        .map_err(err)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(err)?
        .with_intra_threads(1)
        .map_err(err)?
        .commit_from_memory(graph)
        .map_err(err)?;
    let x = TensorRef::from_array_view((dims.to_vec(), data)).map_err(err)?;
    let outputs = session.run(ort::inputs![name => x]).map_err(err)?;
    let v = outputs
        .get(output)
        .ok_or_else(|| BackendError::Run(format!("runtime check: no output {output}")))?;
    let (_, values) = v.try_extract_tensor::<f32>().map_err(err)?;
    Ok(values.to_vec())
}

impl Backend for OrtBackend {
    fn name(&self) -> &str {
        self.name
    }

    fn run_image(
        &mut self,
        pixel_values: &[f32],
        batch: usize,
    ) -> Result<ImageBatch, BackendError> {
        let s = self.image_size;
        if pixel_values.len() != batch * 3 * s * s {
            return Err(BackendError::Run(format!(
                "pixel_values has {} values, expected {batch}x3x{s}x{s}",
                pixel_values.len()
            )));
        }
        let input = TensorRef::from_array_view(([batch, 3, s, s], pixel_values))
            .map_err(|e| BackendError::Run(e.to_string()))?;
        let outputs = self
            .image
            .run(ort::inputs!["pixel_values" => input])
            .map_err(|e| BackendError::Run(e.to_string()))?;
        let [a, b, c, d, e] = IMAGE_OUTPUTS.map(|name| extract(&outputs, name, Graph::Image));
        ImageBatch::from_outputs(batch, [a?, b?, c?, d?, e?])
    }

    fn end_profiling(&mut self) -> Result<Option<PathBuf>, BackendError> {
        if !std::mem::take(&mut self.profiling) {
            return Ok(None);
        }
        let file = self
            .image
            .end_profiling()
            .map_err(|e| BackendError::Run(format!("cannot end the profile: {e}")))?;
        Ok(Some(PathBuf::from(file)))
    }

    fn run_text(&mut self, input_ids: &[i64], n: usize) -> Result<Vec<f32>, BackendError> {
        if n == 0 || !input_ids.len().is_multiple_of(n) {
            return Err(BackendError::Run(format!(
                "{} token ids do not split into {n} rows",
                input_ids.len()
            )));
        }
        let len = input_ids.len() / n;
        let input = TensorRef::from_array_view(([n, len], input_ids))
            .map_err(|e| BackendError::Run(e.to_string()))?;
        let outputs = self
            .text
            .run(ort::inputs!["input_ids" => input])
            .map_err(|e| BackendError::Run(e.to_string()))?;
        extract(&outputs, "query_embeds", Graph::Text)
    }
}

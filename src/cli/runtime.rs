//! `intelligent-video runtime install|list|use|rm`: ONNX Runtime builds installed under the state
//! folder (a GPU build for CUDA/TensorRT, say), checked in a child process before they are used.
//! The store itself is `crate::runtimes`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::backend::ort as ort_backend;
use crate::config::{Config, ConfigOverrides};
use crate::runtimes::preload::{self, Preloaded};
use crate::runtimes::{self, RuntimeInfo};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum RuntimeCommand {
    /// Install an ONNX Runtime build from an `onnxruntime-gpu`/`onnxruntime` wheel, a tarball or a
    /// folder with libonnxruntime.so* and its provider libraries; check that it loads; make the
    /// daemon use it from its next start.
    Install {
        /// Wheels (.whl), tarballs (.tar, .tar.gz, .tgz) or folders, installed together as one
        /// build: ONNX Runtime's and the CUDA libraries beside it (e.g. `onnxruntime-gpu` and the
        /// `nvidia-*` wheels of its `cuda` and `cudnn` extras, copied from a machine with pip).
        #[arg(required_unless_present = "pip", conflicts_with = "pip")]
        sources: Vec<PathBuf>,
        /// Download with pip for this machine's architecture and install, e.g.
        /// `onnxruntime-gpu==1.31.1` (its `cuda` and `cudnn` extras are added: the CUDA 13 runtime,
        /// cuBLAS, cuRAND, cuFFT, NVRTC, cuDNN 9). pip's own configuration applies (index,
        /// `PIP_FIND_LINKS`, `PIP_NO_INDEX`, proxies).
        #[arg(long, num_args = 1.., value_name = "SPEC")]
        pip: Vec<String>,
        /// Name of the installed build (default: from the source's file name).
        #[arg(long)]
        name: Option<String>,
        /// Replace an installed build of the same name.
        #[arg(long)]
        force: bool,
        /// Install without making it the active build.
        #[arg(long)]
        no_activate: bool,
        #[command(flatten)]
        place: StateArgs,
    },
    /// List the installed builds (the active one is marked with `*`).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: StateArgs,
    },
    /// Make an installed build the active one (`packaged`: the library shipped with the package).
    Use {
        name: String,
        #[command(flatten)]
        place: StateArgs,
    },
    /// Remove an installed build (when it was active, the packaged library is used again).
    Rm {
        name: String,
        #[command(flatten)]
        place: StateArgs,
    },
    /// Load the ONNX Runtime in FOLDER and print its version and providers as JSON (used by
    /// `install`, in a child process).
    #[command(hide = true)]
    Probe { folder: PathBuf },
}

/// Where the state folder is.
#[derive(Debug, Clone, clap::Args)]
pub struct StateArgs {
    /// Configuration file (default /etc/intelligent-video/config.toml when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// State folder (default: `state_dir` from the configuration).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl StateArgs {
    fn resolve(&self) -> anyhow::Result<(PathBuf, Config)> {
        let cfg = Config::load(self.config.as_deref(), &ConfigOverrides::default())
            .context("invalid configuration")?;
        Ok((
            self.state_dir
                .clone()
                .unwrap_or_else(|| cfg.state_dir.clone()),
            cfg,
        ))
    }
}

/// What `runtime probe` prints.
#[derive(Debug, Serialize, Deserialize)]
struct Probe {
    version: String,
    path: PathBuf,
    providers: Vec<String>,
    provider_libraries: Vec<(String, String)>,
    #[serde(default)]
    cuda_libraries: Vec<Preloaded>,
    #[serde(default)]
    cuda: Option<String>,
    #[serde(default)]
    cudnn: Option<String>,
    #[serde(default)]
    plugins: Vec<(String, String)>,
    #[serde(default)]
    kind: runtimes::RuntimeKind,
}

/// Runs a runtime command; prints its result on stdout.
pub fn run(cmd: &RuntimeCommand) -> anyhow::Result<()> {
    match cmd {
        RuntimeCommand::Install {
            sources,
            pip,
            name,
            force,
            no_activate,
            place,
        } => {
            let (state, cfg) = place.resolve()?;
            let downloaded;
            let sources = if pip.is_empty() {
                sources.clone()
            } else {
                let into = runtimes::root(&state).join(format!(".wheels-{}", std::process::id()));
                downloaded = super::pip::download(pip, into)?;
                downloaded.wheels.clone()
            };
            install(&state, &sources, name.as_deref(), *force, !*no_activate)?;
            if let Some(p) = &cfg.onnxruntime_path {
                eprintln!(
                    "warning: onnxruntime_path ({}) is configured and takes precedence over installed builds",
                    p.display()
                );
            }
        }
        RuntimeCommand::List { json, place } => {
            let (state, _) = place.resolve()?;
            let all = runtimes::list(&state)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for r in &all {
                    let cuda = match (&r.info.cuda, &r.info.cudnn) {
                        (Some(c), Some(d)) => format!("CUDA {c}, cuDNN {d}"),
                        (Some(c), None) => format!("CUDA {c}"),
                        _ => "no CUDA libraries".to_string(),
                    };
                    println!(
                        "{} {}\t{}\t{}\t{cuda}\t{}",
                        if r.active { "*" } else { " " },
                        r.info.name,
                        r.info.version,
                        r.info.providers.join(","),
                        r.path.display()
                    );
                }
                let ort_active = all
                    .iter()
                    .any(|r| r.active && r.info.kind == runtimes::RuntimeKind::Onnxruntime);
                if !ort_active {
                    println!("* packaged (the library next to the binary or in /usr/lib/intelligent-video)");
                }
            }
        }
        RuntimeCommand::Use { name, place } => {
            let (state, _) = place.resolve()?;
            let chosen = (name != "packaged").then_some(name.as_str());
            runtimes::set_active(&state, chosen)?;
            println!("active: {name} (restart the daemon to load it)");
        }
        RuntimeCommand::Rm { name, place } => {
            let (state, _) = place.resolve()?;
            let was_active = runtimes::remove(&state, name)?;
            println!(
                "removed {name}{}",
                if was_active {
                    "; the packaged library is active again (restart the daemon)"
                } else {
                    ""
                }
            );
        }
        RuntimeCommand::Probe { folder }
            if runtimes::RuntimeKind::of_folder(folder) == runtimes::RuntimeKind::Openvino =>
        {
            println!("{}", serde_json::to_string(&probe_openvino(folder)?)?);
        }
        RuntimeCommand::Probe { folder } => {
            let version = ort_backend::ensure_runtime(Some(folder))?;
            // The CUDA libraries the build carries, loaded as the daemon loads them (here even
            // without a driver), so the providers' check below sees what the daemon would.
            let cuda_libraries = preload::preload(folder);
            let carried = |stem: &str| {
                cuda_libraries
                    .iter()
                    .any(|p| p.library.starts_with(stem) && p.status == "loaded")
            };
            let probe = Probe {
                cuda: carried("libcudart.so.")
                    .then(|| crate::gpu::cuda_runtime_version(Some(folder)).ok())
                    .flatten(),
                cudnn: carried("libcudnn.so.")
                    .then(|| crate::gpu::cudnn_version(Some(folder)).ok())
                    .flatten(),
                plugins: plugins(folder),
                cuda_libraries,
                version,
                path: ort_backend::runtime_path().unwrap_or_default(),
                providers: ort_backend::compiled_providers()
                    .into_iter()
                    .map(String::from)
                    .collect(),
                provider_libraries: provider_libraries(folder),
                kind: runtimes::RuntimeKind::Onnxruntime,
            };
            println!("{}", serde_json::to_string(&probe)?);
        }
    }
    Ok(())
}

/// Extracts, probes and commits a build; makes it active when asked.
fn install(
    state: &Path,
    sources: &[PathBuf],
    name: Option<&str>,
    force: bool,
    activate: bool,
) -> anyhow::Result<()> {
    let main = main_source(sources);
    let name = name
        .map(String::from)
        .unwrap_or_else(|| runtimes::default_name(main));
    runtimes::check_name(&name)?;
    if !force && runtimes::root(state).join(&name).exists() {
        bail!(runtimes::RuntimeError::Exists(name));
    }
    let staging = runtimes::staging_dir(state)?;
    let result = (|| {
        let files = runtimes::extract::extract_all(sources, &staging, runtimes::Limits::DEFAULT)?;
        let probe =
            probe(state, &staging).with_context(|| format!("{} does not load", main.display()))?;
        let info = RuntimeInfo {
            name: name.clone(),
            kind: probe.kind,
            version: probe.version,
            providers: probe.providers,
            provider_libraries: probe.provider_libraries,
            cuda_libraries: probe.cuda_libraries,
            cuda: probe.cuda,
            cudnn: probe.cudnn,
            plugins: probe.plugins,
            source: sources
                .iter()
                .map(|s| {
                    s.canonicalize()
                        .unwrap_or_else(|_| s.clone())
                        .display()
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join(" "),
            files,
        };
        let dir = runtimes::commit(state, &staging, &info, force)?;
        anyhow::Ok((info, dir))
    })();
    let (info, dir) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if activate {
        runtimes::set_active(state, Some(&info.name))?;
    }
    let (runtime, offers) = match info.kind {
        runtimes::RuntimeKind::Onnxruntime => ("ONNX Runtime", "providers"),
        runtimes::RuntimeKind::Openvino => ("OpenVINO", "devices"),
    };
    println!(
        "installed {} ({runtime} {}) in {}",
        info.name,
        info.version,
        dir.display()
    );
    println!("{offers}: {}", info.providers.join(", "));
    if let Some(c) = &info.cuda {
        println!(
            "carries CUDA {c}{} ({} libraries)",
            info.cudnn
                .as_deref()
                .map(|v| format!(", cuDNN {v}"))
                .unwrap_or_default(),
            info.cuda_libraries.len()
        );
    }
    for (lib, status) in &info.plugins {
        println!("  plugin {lib}: {status}");
    }
    for p in info.cuda_libraries.iter().filter(|p| p.status != "loaded") {
        println!("  {}: {}", p.library, p.status);
    }
    for (lib, status) in &info.provider_libraries {
        println!("  {lib}: {status}");
    }
    match (activate, info.kind) {
        (false, _) => {}
        (true, runtimes::RuntimeKind::Onnxruntime) => println!("active: the daemon loads it at its next start (systemctl restart intelligent-video); `intelligent-video doctor` shows which backend it will use"),
        (true, runtimes::RuntimeKind::Openvino) => println!("active: optimization_backend = \"openvino\" uses it; `auto` uses it once `intelligent-video optimize` has measured it faster than ONNX Runtime on this host"),
    }
    Ok(())
}

/// The source that names the build: ONNX Runtime's own wheel or archive (`onnxruntime_gpu-…`,
/// `onnxruntime-…`), not a plugin EP's (`onnxruntime_ep_…`) nor an `nvidia-*` one; else
/// OpenVINO's (`openvino-…`, not `openvino_telemetry-…`, one of its dependencies); else the first.
fn main_source(sources: &[PathBuf]) -> &Path {
    let named = |test: fn(&str) -> bool| {
        sources.iter().find(|s| {
            s.file_name()
                .is_some_and(|n| test(&n.to_string_lossy().replace('-', "_")))
        })
    };
    named(|n| n.starts_with("onnxruntime") && !n.starts_with("onnxruntime_ep_"))
        .or_else(|| named(|n| n.starts_with("openvino_") && !n.starts_with("openvino_telemetry")))
        .or(sources.first())
        .map_or(Path::new("onnxruntime"), PathBuf::as_path)
}

/// What `runtime probe` reports of an OpenVINO runtime: its version and the devices it offers
/// here (`CPU`; `GPU`/`NPU` with Intel's drivers).
fn probe_openvino(folder: &Path) -> anyhow::Result<Probe> {
    let lib = crate::backend::openvino::find_library(folder)?;
    let (version, devices) = crate::backend::openvino::describe(&lib)?;
    Ok(Probe {
        version,
        path: lib,
        providers: devices,
        provider_libraries: Vec::new(),
        cuda_libraries: Vec::new(),
        cuda: None,
        cudnn: None,
        plugins: Vec::new(),
        kind: runtimes::RuntimeKind::Openvino,
    })
}

/// The build in `folder`'s provider libraries, each "ok" or the loader's reason, as a child
/// process that preloads its CUDA libraries finds them now (`doctor`).
pub(crate) fn probe_provider_libraries(
    state: &Path,
    folder: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    Ok(probe(state, folder)?.provider_libraries)
}

/// Loads the build in a child process (`runtime probe`): a process loads ONNX Runtime only once,
/// and a broken library must not take this one down. Run as root, the child runs as the state
/// folder's owner when that is another user (the service user, in the packaged layout): root does
/// not load code from a folder another user can change (`backend::library_trust`), and that user
/// is the one the daemon loads the build as.
fn probe(state: &Path, folder: &Path) -> anyhow::Result<Probe> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["runtime", "probe"])
        .arg(folder)
        .env_remove(ort_backend::LIBRARY_ENV);
    let owner = probe_user(state)?;
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    let out = cmd.output().with_context(|| match owner {
        Some((uid, _)) => format!(
            "cannot start the probe as uid {uid}, the owner of {}",
            state.display()
        ),
        None => "cannot start the probe".to_string(),
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "the probe failed ({}): {}",
            out.status,
            err.trim().lines().last().unwrap_or("no message")
        );
    }
    serde_json::from_slice(&out.stdout).context("unreadable probe answer")
}

/// The user and group the probe runs as: the state folder's owner when this process is root and
/// the folder is another user's; `None`: this process's own.
fn probe_user(state: &Path) -> anyhow::Result<Option<(u32, u32)>> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let meta = std::fs::metadata(state).with_context(|| format!("{}", state.display()))?;
    Ok((meta.uid() != 0).then_some((meta.uid(), meta.gid())))
}

/// The plugin execution providers of the build (ONNX Runtime's EP ABI: TensorRT-RTX's
/// `libonnxruntime_providers_nv_tensorrt_rtx.so`), each registered with the loaded runtime: the
/// devices it offers, or ONNX Runtime's reason it cannot be registered.
fn plugins(folder: &Path) -> Vec<(String, String)> {
    const PLUGINS: [(&str, &str); 1] = [(
        "libonnxruntime_providers_nv_tensorrt_rtx.so",
        "NvTensorRtRtx",
    )];
    PLUGINS
        .iter()
        .filter(|(lib, _)| folder.join(lib).is_file())
        .map(|(lib, name)| {
            let status = match ort_backend::register_plugin(name, &folder.join(lib), Some(folder)) {
                Ok(devices) if devices.is_empty() => {
                    "registered; it offers no device here".to_string()
                }
                Ok(devices) => format!("registered; devices: {}", devices.join(", ")),
                // ONNX Runtime's message names the staging folder; keep the loader's words.
                Err(e) => {
                    let e = e.to_string();
                    let why = e.rsplit_once("with error: ").map_or(e.as_str(), |(_, w)| w);
                    format!("cannot be registered: {why}")
                }
            };
            (lib.to_string(), status)
        })
        .collect()
}

/// Each execution-provider library of the build (other than the shared helper) with "ok" when
/// the system loader can load it with its dependencies, else the loader's reason (a CUDA, cuDNN
/// or TensorRT library missing, typically).
fn provider_libraries(folder: &Path) -> Vec<(String, String)> {
    let mut libs: Vec<PathBuf> = std::fs::read_dir(folder)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with("libonnxruntime_providers_")
                            && n != "libonnxruntime_providers_shared.so"
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    libs.sort();
    libs.iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let status = match runtimes::check_loadable(p) {
                Ok(()) => "ok".to_string(),
                Err(e) => e,
            };
            (name, status)
        })
        .collect()
}

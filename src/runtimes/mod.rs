//! Installed ONNX Runtime builds (`intelligent-video runtime install/list/use/rm`), and OpenVINO
//! runtimes beside them (the `openvino` wheel's libraries, `kind: "openvino"` in `runtime.json`,
//! chosen by `runtimes/active-openvino`: an OpenVINO runtime is used beside ONNX Runtime, not
//! instead of it).
//!
//! Each build lives in `<state_dir>/runtimes/<name>/`: its `libonnxruntime*.so*` files (the library
//! and its execution-provider libraries, which ONNX Runtime loads from the library's own folder)
//! and `runtime.json` (version, providers, where it came from). `<state_dir>/runtimes/active` names
//! the build the daemon loads. This module owns that layout: extracting a wheel, tarball or folder
//! into a staging folder, committing it atomically, choosing the active build, listing and removing.
//! Checking that a build loads is done by the CLI in a child process (`runtime probe`), since a
//! process loads ONNX Runtime once.
//!
//! What is installed is new files with fixed modes ([`FILE_MODE`], [`DIR_MODE`]), whatever the
//! source's modes and the umask. From a folder, a symbolic link is followed only when its target is
//! inside the folder (its content is copied as a plain file; a link to a sibling library, such as
//! `libonnxruntime.so -> libonnxruntime.so.1.31.1`, is skipped, the sibling being copied anyway); a
//! link that leads out of the folder fails the install, naming it. From a wheel or tarball only
//! regular members are written, under their file name alone (no links, no paths), and the members'
//! count and uncompressed size are bounded ([`Limits`]) as they are read.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Folder of the installed builds under the state folder.
pub(crate) const RUNTIMES_DIR: &str = "runtimes";
/// File naming the active build.
const ACTIVE_FILE: &str = "active";
/// File naming the active OpenVINO runtime.
const ACTIVE_OPENVINO_FILE: &str = "active-openvino";

/// What an installed build is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RuntimeKind {
    /// ONNX Runtime (the engine's runtime; one active build).
    #[default]
    Onnxruntime,
    /// OpenVINO (the `openvino` backend's runtime; one active beside ONNX Runtime's).
    Openvino,
}

impl RuntimeKind {
    /// The marker file naming the active build of this kind.
    fn marker(self) -> &'static str {
        match self {
            RuntimeKind::Onnxruntime => ACTIVE_FILE,
            RuntimeKind::Openvino => ACTIVE_OPENVINO_FILE,
        }
    }

    /// What an extracted folder holds: OpenVINO when it has OpenVINO's C library and no ONNX
    /// Runtime.
    pub(crate) fn of_folder(dir: &Path) -> RuntimeKind {
        let names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
        if has("libopenvino_c.so") && !has("libonnxruntime.so") {
            RuntimeKind::Openvino
        } else {
            RuntimeKind::Onnxruntime
        }
    }
}
/// Description of a build, next to its libraries.
const INFO_FILE: &str = "runtime.json";
/// Mode of every installed file: read by all, written by its owner only (a library is mapped, not
/// executed, so it needs no execute bit).
const FILE_MODE: u32 = 0o644;
/// Mode of the runtimes folder and of each build's folder.
const DIR_MODE: u32 = 0o755;

/// Bounds on what one wheel or tarball may unpack to, checked at each member's header before its
/// content is read, so an archive bomb is refused before it fills the disk. Far above a real
/// build: PyPI's `onnxruntime-gpu` 1.31.1 wheel (x86_64) has 355 members and 350 MB unpacked
/// (its CUDA provider alone is 284 MB); the largest CUDA wheel, `nvidia-cudnn-cu13` 9.28, 33
/// members and 941 MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Sum of the members' uncompressed sizes, of those skipped too (a tarball is read through).
    pub(crate) total_bytes: u64,
    /// Number of members, of every kind.
    pub(crate) members: u64,
}

impl Limits {
    pub(crate) const DEFAULT: Limits = Limits {
        total_bytes: 4 << 30,
        members: 10_000,
    };
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RuntimeError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    BadSource(String),
    #[error("no installed runtime named {0:?} (see `intelligent-video runtime list`)")]
    NotFound(String),
    #[error("a runtime named {0:?} is installed already (use --force to replace it, or --name)")]
    Exists(String),
    #[error("invalid runtime name {0:?}: use letters, digits, '.', '_' and '-'")]
    BadName(String),
    #[error("{archive}: refused: {what} (a bound against archive bombs; a real onnxruntime-gpu wheel has about 360 members and 350 MB, cuDNN's 941 MB)")]
    ArchiveLimit { archive: String, what: String },
    #[error("{path} is a symbolic link to {target}, outside the source folder {folder}: refused (copy the file itself into the folder)")]
    OutsideSource {
        path: String,
        target: String,
        folder: String,
    },
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.to_string();
    move |e| RuntimeError::Io(what, e)
}

/// What `runtime.json` records of a build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct RuntimeInfo {
    pub name: String,
    /// ONNX Runtime or OpenVINO (absent in files written before OpenVINO: ONNX Runtime).
    #[serde(default)]
    pub kind: RuntimeKind,
    /// ONNX Runtime's version, as the library reports it.
    pub version: String,
    /// Execution providers compiled into the library.
    pub providers: Vec<String>,
    /// Provider libraries shipped with it, each with "ok" or why the system loader refused it
    /// (e.g. a CUDA or TensorRT library missing).
    #[serde(default)]
    pub provider_libraries: Vec<(String, String)>,
    /// The CUDA libraries it carries (from the `nvidia-*` wheels), each "loaded" or why not.
    #[serde(default)]
    pub cuda_libraries: Vec<preload::Preloaded>,
    /// The CUDA runtime version it carries (`libcudart`), when it carries one.
    #[serde(default)]
    pub cuda: Option<String>,
    /// The cuDNN version it carries, when it carries one.
    #[serde(default)]
    pub cudnn: Option<String>,
    /// Plugin execution providers it carries (TensorRT-RTX's), each with the devices it offered
    /// when registered with ONNX Runtime, or ONNX Runtime's reason it could not be.
    #[serde(default)]
    pub plugins: Vec<(String, String)>,
    /// The wheels, tarballs or folders it was installed from (space-separated).
    pub source: String,
    /// Library files installed.
    pub files: Vec<String>,
}

/// One installed build, as `runtime list` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Installed {
    #[serde(flatten)]
    pub info: RuntimeInfo,
    pub path: PathBuf,
    pub active: bool,
}

/// `<state_dir>/runtimes`.
pub(crate) fn root(state_dir: &Path) -> PathBuf {
    state_dir.join(RUNTIMES_DIR)
}

/// Checks a build name: a single path component of safe characters.
pub(crate) fn check_name(name: &str) -> Result<(), RuntimeError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name != ACTIVE_FILE
        && name != ACTIVE_OPENVINO_FILE
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::BadName(name.to_string()))
    }
}

/// The folder of the active build, when one is set and still installed.
/// The ONNX Runtime to load: `explicit` (`onnxruntime_path`, IV_ONNXRUNTIME_PATH) when set, else
/// the active build installed with `intelligent-video runtime install`; `None` leaves the search
/// to the backend (next to the binary, then /usr/lib/intelligent-video).
pub(crate) fn library(explicit: Option<&Path>, state_dir: &Path) -> Option<PathBuf> {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| active(state_dir))
}

pub(crate) fn active(state_dir: &Path) -> Option<PathBuf> {
    active_of(state_dir, RuntimeKind::Onnxruntime)
}

/// The OpenVINO runtime to load: `explicit` (`openvino_path`, IV_OPENVINO_PATH) when set, else
/// the active OpenVINO runtime installed with `intelligent-video runtime install`.
pub(crate) fn openvino_library(explicit: Option<&Path>, state_dir: &Path) -> Option<PathBuf> {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| active_of(state_dir, RuntimeKind::Openvino))
}

fn active_of(state_dir: &Path, kind: RuntimeKind) -> Option<PathBuf> {
    let name = active_name(state_dir, kind)?;
    let dir = root(state_dir).join(name);
    dir.join(INFO_FILE).is_file().then_some(dir)
}

fn active_name(state_dir: &Path, kind: RuntimeKind) -> Option<String> {
    let text = std::fs::read_to_string(root(state_dir).join(kind.marker())).ok()?;
    let name = text.trim().to_string();
    check_name(&name).ok().map(|_| name)
}

/// The kind of the installed build `name`.
pub(crate) fn kind_of(state_dir: &Path, name: &str) -> Result<RuntimeKind, RuntimeError> {
    check_name(name)?;
    let path = root(state_dir).join(name).join(INFO_FILE);
    let text =
        std::fs::read_to_string(&path).map_err(|_| RuntimeError::NotFound(name.to_string()))?;
    serde_json::from_str::<RuntimeInfo>(&text)
        .map(|i| i.kind)
        .map_err(|e| RuntimeError::BadSource(format!("{}: {e}", path.display())))
}

/// Makes `name` the active build of its kind (`None`: the packaged ONNX Runtime again).
pub(crate) fn set_active(state_dir: &Path, name: Option<&str>) -> Result<(), RuntimeError> {
    let kind = match name {
        Some(n) => kind_of(state_dir, n)?,
        None => RuntimeKind::Onnxruntime,
    };
    set_active_kind(state_dir, kind, name)
}

/// Makes `name` the active build of `kind` (`None`: none of that kind).
fn set_active_kind(
    state_dir: &Path,
    kind: RuntimeKind,
    name: Option<&str>,
) -> Result<(), RuntimeError> {
    let root = root(state_dir);
    let marker = root.join(kind.marker());
    match name {
        Some(n) => {
            check_name(n)?;
            if !root.join(n).join(INFO_FILE).is_file() {
                return Err(RuntimeError::NotFound(n.to_string()));
            }
            crate::fsutil::write_file_atomic(&marker, format!("{n}\n").as_bytes())
                .map_err(io(marker.display()))
        }
        None => match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RuntimeError::Io(marker.display().to_string(), e))
            }
            _ => Ok(()),
        },
    }
}

/// The installed builds, by name.
pub(crate) fn list(state_dir: &Path) -> Result<Vec<Installed>, RuntimeError> {
    let root = root(state_dir);
    let active =
        [RuntimeKind::Onnxruntime, RuntimeKind::Openvino].map(|k| active_name(state_dir, k));
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(RuntimeError::Io(root.display().to_string(), e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(text) = std::fs::read_to_string(path.join(INFO_FILE)) else {
            continue; // staging folders and anything else without a description
        };
        let Ok(info) = serde_json::from_str::<RuntimeInfo>(&text) else {
            continue;
        };
        let is_active = active.iter().flatten().any(|a| *a == info.name);
        out.push(Installed {
            info,
            path,
            active: is_active,
        });
    }
    out.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    Ok(out)
}

/// Removes an installed build; when it was the active one, the packaged library is used again.
/// Returns whether it was active. A daemon that has it loaded keeps its mapped files.
pub(crate) fn remove(state_dir: &Path, name: &str) -> Result<bool, RuntimeError> {
    check_name(name)?;
    let dir = root(state_dir).join(name);
    if !dir.join(INFO_FILE).is_file() {
        return Err(RuntimeError::NotFound(name.to_string()));
    }
    let kind = kind_of(state_dir, name)?;
    let was_active = active_name(state_dir, kind).as_deref() == Some(name);
    if was_active {
        set_active_kind(state_dir, kind, None)?;
    }
    std::fs::remove_dir_all(&dir).map_err(io(dir.display()))?;
    Ok(was_active)
}

/// A staging folder under the runtimes folder (same file system as the destination), mode
/// [`DIR_MODE`]; the runtimes folder gets that mode too when this creates it.
pub(crate) fn staging_dir(state_dir: &Path) -> Result<PathBuf, RuntimeError> {
    let root = root(state_dir);
    if !root.is_dir() {
        std::fs::create_dir_all(&root).map_err(io(root.display()))?;
        set_mode(&root, DIR_MODE)?;
    }
    let dir = root.join(format!(".staging-{}", std::process::id()));
    if dir.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&dir).map_err(io(dir.display()))?;
    }
    std::fs::create_dir(&dir).map_err(io(dir.display()))?;
    set_mode(&dir, DIR_MODE)?;
    Ok(dir)
}

/// Sets `path`'s mode exactly (the umask narrows the mode a file or folder is created with).
fn set_mode(path: &Path, mode: u32) -> Result<(), RuntimeError> {
    std::fs::set_permissions(path, Permissions::from_mode(mode)).map_err(io(path.display()))
}

/// Moves a probed staging folder into place as `info.name` (replacing an older copy when
/// `replace`), with its `runtime.json`.
pub(crate) fn commit(
    state_dir: &Path,
    staging: &Path,
    info: &RuntimeInfo,
    replace: bool,
) -> Result<PathBuf, RuntimeError> {
    check_name(&info.name)?;
    let dest = root(state_dir).join(&info.name);
    if dest.exists() && !replace {
        return Err(RuntimeError::Exists(info.name.clone()));
    }
    let json = serde_json::to_vec_pretty(info).map_err(|e| {
        RuntimeError::Io(
            INFO_FILE.into(),
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    let info_path = staging.join(INFO_FILE);
    crate::fsutil::write_file_atomic(&info_path, &json).map_err(io(info_path.display()))?;
    set_mode(&info_path, FILE_MODE)?;
    crate::fsutil::replace_dir(staging, &dest).map_err(io(dest.display()))?;
    Ok(dest)
}

/// A name for a build from its source's file name: `onnxruntime_gpu-1.31.1-cp311-…whl` →
/// `onnxruntime-gpu-1.31.1`, `onnxruntime-linux-aarch64-gpu-1.23.0.tgz` → the same without the
/// extension, a folder → its name.
pub(crate) fn default_name(source: &Path) -> String {
    let file = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "onnxruntime".into());
    let stem = if let Some(w) = file.strip_suffix(".whl") {
        // Wheel names: distribution-version-pythontag-abitag-platform.
        let mut parts = w.split('-');
        let dist = parts.next().unwrap_or("onnxruntime").replace('_', "-");
        match parts.next() {
            Some(v) => format!("{dist}-{v}"),
            None => dist,
        }
    } else {
        [".tar.gz", ".tgz", ".tar"]
            .iter()
            .find_map(|ext| file.strip_suffix(ext))
            .unwrap_or(&file)
            .to_string()
    };
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_start_matches('.').to_string();
    if check_name(&clean).is_ok() {
        clean
    } else {
        "onnxruntime".into()
    }
}

/// Loads a provider library with the system loader, resolving every dependency now, and keeps it
/// loaded (this runs in the short-lived `runtime probe` process). `Err` holds the loader's
/// message, e.g. "libcublasLt.so.13: cannot open shared object file".
pub(crate) fn check_loadable(path: &Path) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_LOCAL, RTLD_NOW};
    // ONNX Runtime loads its providers' shared helper first, globally; do the same.
    let shared = path.with_file_name("libonnxruntime_providers_shared.so");
    if shared.is_file() {
        // SAFETY: loading a shared library runs its initialisers; this is ONNX Runtime's own
        // helper from the build being installed, loaded in the probe process only.
        let lib = unsafe { Library::open(Some(&shared), RTLD_NOW | RTLD_GLOBAL) }
            .map_err(|e| loader_message(&e))?;
        std::mem::forget(lib);
    }
    // SAFETY: as above; the probe process exits right after, so the library is never unloaded
    // while in use.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
        .map_err(|e| loader_message(&e))?;
    std::mem::forget(lib);
    Ok(())
}

/// The loader's own words (`dlerror`), which libloading keeps as the error's source.
fn loader_message(e: &libloading::Error) -> String {
    std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string())
}

/// Whether a file name is one of ONNX Runtime's libraries (`libonnxruntime.so*`,
/// `libonnxruntime_providers_*.so`).
pub(crate) fn is_runtime_library(name: &str) -> bool {
    name.starts_with("libonnxruntime") && is_shared_object(name)
}

/// The NVIDIA libraries a build carries beside ONNX Runtime (from the `nvidia-*` wheels or a
/// folder): what its CUDA and TensorRT providers link or open. Not cuBLAS's BLAS wrapper
/// (`libnvblas`) nor cuFFT's FFTW layer (`libcufftw`), which nothing here loads. TensorRT-RTX's
/// plugin wheel adds its TensorRT-RTX, parser, plugins and shim libraries.
const NVIDIA_LIBRARIES: [&str; 15] = [
    "libcudart.so",
    "libcublas.so",
    "libcublasLt.so",
    "libcurand.so",
    "libcufft.so",
    "libnvrtc.so",
    "libnvrtc-builtins.so",
    "libnvJitLink.so",
    "libcudnn",
    "libnvinfer",
    "libnvonnxparser",
    "libtensorrt_rtx.so",
    "libtensorrt_onnxparser_rtx.so",
    "libtensorrt_plugins.so",
    "libtensorrt_shim.so",
];

/// OpenVINO's libraries in its PyPI wheel (`openvino/libs/`): the core, its C API, the device
/// plugins and frontends (found beside the core by name), and the TBB and hwloc libraries they
/// link.
const OPENVINO_LIBRARIES: [&str; 3] = ["libopenvino", "libtbb", "libhwloc.so"];

/// Whether `runtime install` keeps a file: ONNX Runtime's libraries, [`NVIDIA_LIBRARIES`] and
/// [`OPENVINO_LIBRARIES`].
pub(crate) fn is_installed_library(name: &str) -> bool {
    is_runtime_library(name)
        || (is_shared_object(name)
            && NVIDIA_LIBRARIES
                .iter()
                .chain(OPENVINO_LIBRARIES.iter())
                .any(|p| name.starts_with(p)))
}

fn is_shared_object(name: &str) -> bool {
    name.ends_with(".so") || name.contains(".so.")
}

/// Copying a source's library files into a staging folder (it imports this module; this module
/// imports nothing of it).
pub(crate) mod extract;
/// Loading a build's CUDA libraries before its providers.
pub(crate) mod preload;
#[cfg(test)]
mod tests;

//! Installed ONNX Runtime builds (`intelligent-video runtime install/list/use/rm`).
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

use std::fs::{File, OpenOptions, Permissions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Folder of the installed builds under the state folder.
pub const RUNTIMES_DIR: &str = "runtimes";
/// File naming the active build.
const ACTIVE_FILE: &str = "active";
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
/// (its CUDA provider alone is 284 MB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Sum of the members' uncompressed sizes, of those skipped too (a tarball is read through).
    pub(crate) total_bytes: u64,
    /// Number of members, of every kind.
    pub(crate) members: u64,
}

impl Limits {
    pub(crate) const DEFAULT: Limits = Limits {
        total_bytes: 1 << 30,
        members: 10_000,
    };
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
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
    #[error("{archive}: refused: {what} (a bound against archive bombs; a real onnxruntime-gpu wheel has about 360 members and 350 MB)")]
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
pub struct RuntimeInfo {
    pub name: String,
    /// ONNX Runtime's version, as the library reports it.
    pub version: String,
    /// Execution providers compiled into the library.
    pub providers: Vec<String>,
    /// Provider libraries shipped with it, each with "ok" or why the system loader refused it
    /// (e.g. a CUDA or TensorRT library missing).
    #[serde(default)]
    pub provider_libraries: Vec<(String, String)>,
    /// The wheel, tarball or folder it was installed from.
    pub source: String,
    /// Library files installed.
    pub files: Vec<String>,
}

/// One installed build, as `runtime list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Installed {
    #[serde(flatten)]
    pub info: RuntimeInfo,
    pub path: PathBuf,
    pub active: bool,
}

/// `<state_dir>/runtimes`.
pub fn root(state_dir: &Path) -> PathBuf {
    state_dir.join(RUNTIMES_DIR)
}

/// Checks a build name: a single path component of safe characters.
pub fn check_name(name: &str) -> Result<(), RuntimeError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name != ACTIVE_FILE
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
pub fn active(state_dir: &Path) -> Option<PathBuf> {
    let name = active_name(state_dir)?;
    let dir = root(state_dir).join(name);
    dir.join(INFO_FILE).is_file().then_some(dir)
}

fn active_name(state_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root(state_dir).join(ACTIVE_FILE)).ok()?;
    let name = text.trim().to_string();
    check_name(&name).ok().map(|_| name)
}

/// Makes `name` the active build (`None`: the packaged library again).
pub fn set_active(state_dir: &Path, name: Option<&str>) -> Result<(), RuntimeError> {
    let root = root(state_dir);
    let marker = root.join(ACTIVE_FILE);
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
pub fn list(state_dir: &Path) -> Result<Vec<Installed>, RuntimeError> {
    let root = root(state_dir);
    let active = active_name(state_dir);
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
        let is_active = active.as_deref() == Some(info.name.as_str());
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
pub fn remove(state_dir: &Path, name: &str) -> Result<bool, RuntimeError> {
    check_name(name)?;
    let dir = root(state_dir).join(name);
    if !dir.join(INFO_FILE).is_file() {
        return Err(RuntimeError::NotFound(name.to_string()));
    }
    let was_active = active_name(state_dir).as_deref() == Some(name);
    if was_active {
        set_active(state_dir, None)?;
    }
    std::fs::remove_dir_all(&dir).map_err(io(dir.display()))?;
    Ok(was_active)
}

/// A staging folder under the runtimes folder (same file system as the destination), mode
/// [`DIR_MODE`]; the runtimes folder gets that mode too when this creates it.
pub fn staging_dir(state_dir: &Path) -> Result<PathBuf, RuntimeError> {
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
pub fn commit(
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
pub fn default_name(source: &Path) -> String {
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
pub fn check_loadable(path: &Path) -> Result<(), String> {
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
pub fn is_runtime_library(name: &str) -> bool {
    name.starts_with("libonnxruntime") && (name.ends_with(".so") || name.contains(".so."))
}

/// The kind of source `runtime install` was given.
enum SourceKind {
    Wheel,
    Tar { gzip: bool },
    Folder,
}

fn source_kind(source: &Path) -> Result<SourceKind, RuntimeError> {
    if source.is_dir() {
        return Ok(SourceKind::Folder);
    }
    if !source.is_file() {
        return Err(RuntimeError::BadSource(format!(
            "{}: no such file or folder",
            source.display()
        )));
    }
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if name.ends_with(".whl") || name.ends_with(".zip") {
        Ok(SourceKind::Wheel)
    } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Ok(SourceKind::Tar { gzip: true })
    } else if name.ends_with(".tar") {
        Ok(SourceKind::Tar { gzip: false })
    } else {
        Err(RuntimeError::BadSource(format!(
            "{}: expected an onnxruntime wheel (.whl), a tarball (.tar, .tar.gz, .tgz) or a folder with libonnxruntime.so*",
            source.display()
        )))
    }
}

/// Copies ONNX Runtime's library files from `source` (wheel, tarball or folder) into `staging`.
/// Returns the file names; fails when there is no `libonnxruntime.so*` among them.
pub fn extract(source: &Path, staging: &Path) -> Result<Vec<String>, RuntimeError> {
    extract_with(source, staging, Limits::DEFAULT)
}

/// [`extract`] with the archive bounds given.
pub(crate) fn extract_with(
    source: &Path,
    staging: &Path,
    limits: Limits,
) -> Result<Vec<String>, RuntimeError> {
    let mut budget = Budget {
        archive: source,
        limits,
        members: 0,
        bytes: 0,
    };
    let mut files = match source_kind(source)? {
        SourceKind::Wheel => extract_zip(source, staging, &mut budget)?,
        SourceKind::Tar { gzip } => extract_tar(source, staging, gzip, &mut budget)?,
        SourceKind::Folder => copy_folder(source, staging)?,
    };
    files.sort();
    files.dedup();
    if !files
        .iter()
        .any(|f| f == "libonnxruntime.so" || f.starts_with("libonnxruntime.so."))
    {
        return Err(RuntimeError::BadSource(format!(
            "{}: no libonnxruntime.so* inside (found: {})",
            source.display(),
            if files.is_empty() {
                "no ONNX Runtime library".to_string()
            } else {
                files.join(", ")
            }
        )));
    }
    Ok(files)
}

/// What an archive has used of its [`Limits`] so far.
struct Budget<'a> {
    archive: &'a Path,
    limits: Limits,
    members: u64,
    bytes: u64,
}

impl Budget<'_> {
    /// Counts one more member of `size` uncompressed bytes, before its content is read.
    fn member(&mut self, size: u64) -> Result<(), RuntimeError> {
        self.members += 1;
        self.bytes = self.bytes.saturating_add(size);
        let what = if self.members > self.limits.members {
            format!("more than {} members", self.limits.members)
        } else if self.bytes > self.limits.total_bytes {
            format!("more than {} bytes once unpacked", self.limits.total_bytes)
        } else {
            return Ok(());
        };
        Err(RuntimeError::ArchiveLimit {
            archive: self.archive.display().to_string(),
            what,
        })
    }
}

/// Creates `dest` afresh with [`FILE_MODE`] exactly, whatever the umask (a file of that name from
/// an earlier member is replaced).
fn create_installed_file(dest: &Path) -> Result<File, RuntimeError> {
    match std::fs::remove_file(dest) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(RuntimeError::Io(dest.display().to_string(), e))
        }
        _ => {}
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(dest)
        .map_err(io(dest.display()))?;
    file.set_permissions(Permissions::from_mode(FILE_MODE))
        .map_err(io(dest.display()))?;
    Ok(file)
}

/// Writes one library file of `size` bytes (as its archive header or file size says; anything
/// past it is refused) into `staging`.
fn write_member(
    reader: &mut dyn Read,
    size: u64,
    staging: &Path,
    name: &str,
) -> Result<(), RuntimeError> {
    let dest = staging.join(name);
    let mut out = create_installed_file(&dest)?;
    let copied = std::io::copy(&mut reader.take(size.saturating_add(1)), &mut out)
        .map_err(io(dest.display()))?;
    if copied > size {
        return Err(RuntimeError::BadSource(format!(
            "{name} has more than the {size} bytes it announced"
        )));
    }
    out.sync_all().map_err(io(dest.display()))
}

fn extract_zip(
    source: &Path,
    staging: &Path,
    budget: &mut Budget<'_>,
) -> Result<Vec<String>, RuntimeError> {
    let file = File::open(source).map_err(io(source.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| RuntimeError::BadSource(format!("{}: not a wheel: {e}", source.display())))?;
    let mut files = Vec::new();
    for i in 0..zip.len() {
        let mut member = zip.by_index(i).map_err(|e| {
            RuntimeError::BadSource(format!("{}: damaged wheel: {e}", source.display()))
        })?;
        let size = member.size();
        budget.member(size)?;
        // Regular files only (no links, no folders), under their file name alone.
        if !member.is_file() {
            continue;
        }
        let Some(name) = member
            .enclosed_name()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        else {
            continue;
        };
        if !is_runtime_library(&name) {
            continue;
        }
        write_member(&mut member, size, staging, &name)?;
        files.push(name);
    }
    Ok(files)
}

fn extract_tar(
    source: &Path,
    staging: &Path,
    gzip: bool,
    budget: &mut Budget<'_>,
) -> Result<Vec<String>, RuntimeError> {
    let file = File::open(source).map_err(io(source.display()))?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    let bad = |e: std::io::Error| {
        RuntimeError::BadSource(format!("{}: damaged tarball: {e}", source.display()))
    };
    let mut files = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let size = entry.header().size().map_err(bad)?;
        budget.member(size)?;
        // Only regular files: the versioned library is one, its .so/.so.1 names are links.
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = match entry.path() {
            Ok(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Err(_) => continue,
        };
        if !is_runtime_library(&name) {
            continue;
        }
        write_member(&mut entry, size, staging, &name)?;
        files.push(name);
    }
    Ok(files)
}

fn copy_folder(source: &Path, staging: &Path) -> Result<Vec<String>, RuntimeError> {
    let folder = source.canonicalize().map_err(io(source.display()))?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&folder).map_err(io(source.display()))? {
        let entry = entry.map_err(io(source.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_runtime_library(&name) {
            continue;
        }
        let Some((mut file, size)) = open_in_folder(&entry.path(), &folder)? else {
            continue;
        };
        write_member(&mut file, size, staging, &name)?;
        files.push(name);
    }
    Ok(files)
}

/// Opens a library file of the (canonical) source `folder` for copying, with its size. A symbolic
/// link is followed only to a file inside the folder; one that leads out of it is an error naming
/// it. `None` for what is not copied: anything but a regular file, a dangling link, and a link to
/// a sibling library (a second name of a file copied under its own name).
fn open_in_folder(path: &Path, folder: &Path) -> Result<Option<(File, u64)>, RuntimeError> {
    let is_link = std::fs::symlink_metadata(path)
        .map_err(io(path.display()))?
        .file_type()
        .is_symlink();
    let target = match path.canonicalize() {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RuntimeError::Io(path.display().to_string(), e)),
    };
    let outside = |target: &Path| RuntimeError::OutsideSource {
        path: path.display().to_string(),
        target: target.display().to_string(),
        folder: folder.display().to_string(),
    };
    if !target.starts_with(folder) {
        return Err(outside(&target));
    }
    let sibling_library = target.parent() == Some(folder)
        && target
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_runtime_library);
    if (is_link && sibling_library) || !target.is_file() {
        return Ok(None);
    }
    // Non-blocking: a FIFO put there since the check must not hang the open.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(io(path.display()))?;
    // The links may have changed since they were resolved: check the file actually opened, as
    // the kernel names it (without /proc, the resolution above stands).
    if let Ok(opened) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        if !opened.starts_with(folder) {
            return Err(outside(&opened));
        }
    }
    let meta = file.metadata().map_err(io(path.display()))?;
    Ok(meta.is_file().then_some((file, meta.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> RuntimeInfo {
        RuntimeInfo {
            name: name.into(),
            version: "1.31.1".into(),
            providers: vec!["CPUExecutionProvider".into()],
            provider_libraries: Vec::new(),
            source: "test".into(),
            files: vec!["libonnxruntime.so.1.31.1".into()],
        }
    }

    #[test]
    fn names_come_from_the_source_file() {
        assert_eq!(
            default_name(Path::new(
                "/x/onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl"
            )),
            "onnxruntime-gpu-1.31.1"
        );
        assert_eq!(
            default_name(Path::new("onnxruntime-linux-aarch64-gpu-1.23.0.tgz")),
            "onnxruntime-linux-aarch64-gpu-1.23.0"
        );
        assert_eq!(default_name(Path::new("/opt/my ort/")), "my-ort");
        assert!(check_name("../x").is_err());
        assert!(check_name("active").is_err());
        assert!(check_name(".staging-1").is_err());
        assert!(check_name("ort-1.31.1_gpu").is_ok());
    }

    #[test]
    fn folders_tarballs_and_wheels_give_the_library_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        std::fs::write(src.join("libonnxruntime.so.1.31.1"), b"lib").expect("write");
        std::fs::write(src.join("libonnxruntime_providers_cuda.so"), b"cuda").expect("write");
        std::fs::write(src.join("README"), b"x").expect("write");
        std::os::unix::fs::symlink("libonnxruntime.so.1.31.1", src.join("libonnxruntime.so"))
            .expect("link");

        let out = tmp.path().join("a");
        std::fs::create_dir(&out).expect("mkdir");
        let files = extract(&src, &out).expect("folder");
        assert_eq!(
            files,
            [
                "libonnxruntime.so.1.31.1",
                "libonnxruntime_providers_cuda.so"
            ]
        );
        assert_eq!(
            std::fs::read(out.join("libonnxruntime_providers_cuda.so")).expect("read"),
            b"cuda"
        );

        // The same as a gzip tarball with a top folder and the links.
        let tgz = tmp.path().join("onnxruntime-linux-x64-gpu-1.31.1.tgz");
        {
            let f = std::fs::File::create(&tgz).expect("create");
            let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            let mut b = tar::Builder::new(gz);
            b.follow_symlinks(false);
            b.append_dir_all("onnxruntime-linux-x64-gpu-1.31.1/lib", &src)
                .expect("append");
            b.into_inner().expect("tar").finish().expect("gz");
        }
        let out = tmp.path().join("b");
        std::fs::create_dir(&out).expect("mkdir");
        assert_eq!(
            extract(&tgz, &out).expect("tarball"),
            [
                "libonnxruntime.so.1.31.1",
                "libonnxruntime_providers_cuda.so"
            ]
        );

        // A wheel is a zip with the libraries under onnxruntime/capi/.
        let whl = tmp
            .path()
            .join("onnxruntime_gpu-1.31.1-cp311-cp311-linux_x86_64.whl");
        {
            let f = std::fs::File::create(&whl).expect("create");
            let mut z = zip::ZipWriter::new(f);
            let opts = zip::write::SimpleFileOptions::default();
            for (n, d) in [
                ("onnxruntime/capi/libonnxruntime.so.1.31.1", &b"lib"[..]),
                ("onnxruntime/capi/libonnxruntime_providers_shared.so", b"s"),
                ("onnxruntime/capi/onnxruntime_pybind11_state.so", b"py"),
            ] {
                z.start_file(n, opts).expect("start");
                std::io::Write::write_all(&mut z, d).expect("write");
            }
            z.finish().expect("finish");
        }
        let out = tmp.path().join("c");
        std::fs::create_dir(&out).expect("mkdir");
        assert_eq!(
            extract(&whl, &out).expect("wheel"),
            [
                "libonnxruntime.so.1.31.1",
                "libonnxruntime_providers_shared.so"
            ]
        );

        // No library inside, or an unknown kind of file: clear errors.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        let e = extract(&empty, &out).expect_err("empty").to_string();
        assert!(e.contains("no libonnxruntime.so* inside"), "{e}");
        let e = extract(&src.join("README"), &out)
            .expect_err("kind")
            .to_string();
        assert!(e.contains("expected an onnxruntime wheel"), "{e}");
        let e = extract(&tmp.path().join("missing.whl"), &out)
            .expect_err("missing")
            .to_string();
        assert!(e.contains("no such file or folder"), "{e}");
    }

    #[test]
    fn installed_files_get_fixed_modes_whatever_the_source_had() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        for (name, m) in [
            ("libonnxruntime.so.1.31.1", 0o777),
            ("libonnxruntime_providers_shared.so", 0o4700),
            ("libonnxruntime_providers_cuda.so", 0o600),
        ] {
            let p = src.join(name);
            std::fs::write(&p, name).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).expect("chmod");
        }
        let state = tmp.path().join("state");
        let staging = staging_dir(&state).expect("staging");
        extract(&src, &staging).expect("folder");
        for name in [
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_shared.so",
            "libonnxruntime_providers_cuda.so",
        ] {
            assert_eq!(mode(&staging.join(name)), 0o644, "{name}");
        }
        let dest = commit(&state, &staging, &info("modes"), false).expect("commit");
        assert_eq!(mode(&dest), 0o755);
        assert_eq!(mode(&root(&state)), 0o755);
        assert_eq!(mode(&dest.join("libonnxruntime.so.1.31.1")), 0o644);
        assert_eq!(mode(&dest.join(INFO_FILE)), 0o644);
    }

    #[test]
    fn links_out_of_a_source_folder_are_refused_and_links_inside_are_copied() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("sub")).expect("mkdir");
        std::fs::write(src.join("libonnxruntime.so.1.31.1"), b"lib").expect("write");
        std::fs::write(src.join("sub/cuda.so"), b"cuda").expect("write");
        std::os::unix::fs::symlink("libonnxruntime.so.1.31.1", src.join("libonnxruntime.so"))
            .expect("link");
        std::os::unix::fs::symlink("sub/cuda.so", src.join("libonnxruntime_providers_cuda.so"))
            .expect("link");
        // Inside: the sibling's second name is skipped, a link to a file elsewhere in the folder
        // is copied as a plain file with its content.
        let out = tmp.path().join("a");
        std::fs::create_dir(&out).expect("mkdir");
        assert_eq!(
            extract(&src, &out).expect("links inside"),
            [
                "libonnxruntime.so.1.31.1",
                "libonnxruntime_providers_cuda.so"
            ]
        );
        let cuda = out.join("libonnxruntime_providers_cuda.so");
        assert!(!cuda.is_symlink());
        assert_eq!(std::fs::read(&cuda).expect("read"), b"cuda");
        assert!(!out.join("libonnxruntime.so").exists());

        // A link that leaves the folder (directly, or through `..`) is refused, naming the link.
        let secret = tmp.path().join("shadow");
        std::fs::write(&secret, b"root:secret").expect("write");
        for target in [secret.clone(), PathBuf::from("../shadow")] {
            let link = src.join("libonnxruntime_providers_x.so");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link).expect("link");
            let out = tmp.path().join("b");
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir(&out).expect("mkdir");
            let e = extract(&src, &out).expect_err("outside").to_string();
            assert!(e.contains(&link.display().to_string()), "{e}");
            assert!(e.contains("outside the source folder"), "{e}");
            assert!(!out.join("libonnxruntime_providers_x.so").exists());
        }
    }

    /// A gzip tarball and a wheel of `n` members of `size` zero bytes each, all named like
    /// provider libraries: a few KB on disk, `n * size` bytes unpacked.
    fn bombs(dir: &Path, n: usize, size: usize) -> [PathBuf; 2] {
        let zeros = vec![0u8; size];
        let tgz = dir.join(format!("bomb-{n}.tgz"));
        {
            let f = File::create(&tgz).expect("create");
            let gz = flate2::write::GzEncoder::new(f, flate2::Compression::best());
            let mut b = tar::Builder::new(gz);
            for i in 0..n {
                let mut h = tar::Header::new_gnu();
                h.set_size(size as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(
                    &mut h,
                    format!("lib/libonnxruntime_providers_{i}.so"),
                    &zeros[..],
                )
                .expect("append");
            }
            b.into_inner().expect("tar").finish().expect("gz");
        }
        let whl = dir.join(format!("bomb-{n}.whl"));
        {
            let f = File::create(&whl).expect("create");
            let mut z = zip::ZipWriter::new(f);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            for i in 0..n {
                z.start_file(
                    format!("onnxruntime/capi/libonnxruntime_providers_{i}.so"),
                    opts,
                )
                .expect("start");
                std::io::Write::write_all(&mut z, &zeros).expect("write");
            }
            z.finish().expect("finish");
        }
        [tgz, whl]
    }

    /// Bytes and files written into `dir`.
    fn written(dir: &Path) -> (u64, usize) {
        let sizes: Vec<u64> = std::fs::read_dir(dir)
            .expect("ls")
            .map(|e| e.expect("entry").metadata().expect("stat").len())
            .collect();
        (sizes.iter().sum(), sizes.len())
    }

    #[test]
    fn archive_bombs_are_refused_while_they_unpack() {
        let tmp = tempfile::tempdir().expect("tmp");
        // 8 members of 1 MiB: over a 3 MiB bound at the fourth, before its content is read.
        let limits = Limits {
            total_bytes: 3 << 20,
            members: 100,
        };
        for bomb in bombs(tmp.path(), 8, 1 << 20) {
            assert!(std::fs::metadata(&bomb).expect("stat").len() < 64 << 10);
            let out = tmp.path().join("out");
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir(&out).expect("mkdir");
            let e = extract_with(&bomb, &out, limits).expect_err("bomb");
            assert!(
                matches!(&e, RuntimeError::ArchiveLimit { what, .. } if what == "more than 3145728 bytes once unpacked"),
                "{e}"
            );
            assert!(e.to_string().contains(&bomb.display().to_string()), "{e}");
            assert_eq!(written(&out), (3 << 20, 3), "{}", bomb.display());
            // The same archive unpacks under a bound above its size.
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir(&out).expect("mkdir");
            let big_enough = Limits {
                total_bytes: 8 << 20,
                members: 8,
            };
            let e = extract_with(&bomb, &out, big_enough).expect_err("no main library");
            assert!(
                e.to_string().contains("no libonnxruntime.so* inside"),
                "{e}"
            );
            assert_eq!(written(&out), (8 << 20, 8));
        }
        // 50 empty members: over a bound of 10 members at the eleventh.
        let limits = Limits {
            total_bytes: 1 << 20,
            members: 10,
        };
        for bomb in bombs(tmp.path(), 50, 0) {
            let out = tmp.path().join("out");
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir(&out).expect("mkdir");
            let e = extract_with(&bomb, &out, limits).expect_err("bomb");
            assert!(
                matches!(&e, RuntimeError::ArchiveLimit { what, .. } if what == "more than 10 members"),
                "{e}"
            );
            assert_eq!(written(&out), (0, 10), "{}", bomb.display());
        }
    }

    #[test]
    fn commit_activate_list_and_remove() {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = tmp.path();
        assert!(active(state).is_none());
        assert!(list(state).expect("empty list").is_empty());

        let staging = staging_dir(state).expect("staging");
        std::fs::write(staging.join("libonnxruntime.so.1.31.1"), b"lib").expect("write");
        let dir = commit(state, &staging, &info("gpu"), false).expect("commit");
        assert!(!staging.exists());
        assert!(dir.join("runtime.json").is_file());
        // Installed but not active until chosen.
        assert!(active(state).is_none());
        set_active(state, Some("gpu")).expect("use");
        assert_eq!(active(state), Some(dir.clone()));
        let l = list(state).expect("list");
        assert_eq!(l.len(), 1);
        assert!(l[0].active);
        assert_eq!(l[0].info, info("gpu"));

        // Same name again: refused unless replacing.
        let staging = staging_dir(state).expect("staging");
        assert!(matches!(
            commit(state, &staging, &info("gpu"), false),
            Err(RuntimeError::Exists(_))
        ));
        commit(state, &staging, &info("gpu"), true).expect("replace");

        assert!(matches!(
            set_active(state, Some("other")),
            Err(RuntimeError::NotFound(_))
        ));
        assert!(remove(state, "gpu").expect("rm"), "it was active");
        assert!(active(state).is_none());
        assert!(list(state).expect("list").is_empty());
        assert!(matches!(
            remove(state, "gpu"),
            Err(RuntimeError::NotFound(_))
        ));
    }
}

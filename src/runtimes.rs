//! Installed ONNX Runtime builds (`intelligent-video runtime install/list/use/rm`).
//!
//! Each build lives in `<state_dir>/runtimes/<name>/`: its `libonnxruntime*.so*` files (the library
//! and its execution-provider libraries, which ONNX Runtime loads from the library's own folder)
//! and `runtime.json` (version, providers, where it came from). `<state_dir>/runtimes/active` names
//! the build the daemon loads. This module owns that layout: extracting a wheel, tarball or folder
//! into a staging folder, committing it atomically, choosing the active build, listing and removing.
//! Checking that a build loads is done by the CLI in a child process (`runtime probe`), since a
//! process loads ONNX Runtime once.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Folder of the installed builds under the state folder.
pub const RUNTIMES_DIR: &str = "runtimes";
/// File naming the active build.
const ACTIVE_FILE: &str = "active";
/// Description of a build, next to its libraries.
const INFO_FILE: &str = "runtime.json";
/// Largest library file accepted from an archive (the CUDA provider of onnxruntime-gpu is 284 MB).
const MAX_LIBRARY_BYTES: u64 = 2 << 30;

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

/// A staging folder under the runtimes folder (same file system as the destination).
pub fn staging_dir(state_dir: &Path) -> Result<PathBuf, RuntimeError> {
    let root = root(state_dir);
    std::fs::create_dir_all(&root).map_err(io(root.display()))?;
    let dir = root.join(format!(".staging-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(dir.display()))?;
    }
    std::fs::create_dir(&dir).map_err(io(dir.display()))?;
    Ok(dir)
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
    let mut files = match source_kind(source)? {
        SourceKind::Wheel => extract_zip(source, staging)?,
        SourceKind::Tar { gzip } => extract_tar(source, staging, gzip)?,
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

/// Writes one library file from an archive member, refusing oversized members.
fn write_member(
    reader: &mut dyn Read,
    size: u64,
    staging: &Path,
    name: &str,
) -> Result<(), RuntimeError> {
    if size > MAX_LIBRARY_BYTES {
        return Err(RuntimeError::BadSource(format!(
            "{name} is {size} bytes, over the {MAX_LIBRARY_BYTES}-byte limit for one library"
        )));
    }
    let dest = staging.join(name);
    let mut out = std::fs::File::create(&dest).map_err(io(dest.display()))?;
    let copied = std::io::copy(&mut reader.take(MAX_LIBRARY_BYTES + 1), &mut out)
        .map_err(io(dest.display()))?;
    if copied > MAX_LIBRARY_BYTES {
        return Err(RuntimeError::BadSource(format!(
            "{name} is over the {MAX_LIBRARY_BYTES}-byte limit for one library"
        )));
    }
    out.sync_all().map_err(io(dest.display()))
}

fn extract_zip(source: &Path, staging: &Path) -> Result<Vec<String>, RuntimeError> {
    let file = std::fs::File::open(source).map_err(io(source.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| RuntimeError::BadSource(format!("{}: not a wheel: {e}", source.display())))?;
    let mut files = Vec::new();
    for i in 0..zip.len() {
        let mut member = zip.by_index(i).map_err(|e| {
            RuntimeError::BadSource(format!("{}: damaged wheel: {e}", source.display()))
        })?;
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
        let size = member.size();
        write_member(&mut member, size, staging, &name)?;
        files.push(name);
    }
    Ok(files)
}

fn extract_tar(source: &Path, staging: &Path, gzip: bool) -> Result<Vec<String>, RuntimeError> {
    let file = std::fs::File::open(source).map_err(io(source.display()))?;
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
        let size = entry.header().size().map_err(bad)?;
        write_member(&mut entry, size, staging, &name)?;
        files.push(name);
    }
    Ok(files)
}

fn copy_folder(source: &Path, staging: &Path) -> Result<Vec<String>, RuntimeError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(source).map_err(io(source.display()))? {
        let entry = entry.map_err(io(source.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_runtime_library(&name) {
            continue;
        }
        let path = entry.path();
        // A link to a sibling (libonnxruntime.so -> libonnxruntime.so.1.31.1) is a second name
        // of a file copied anyway; a link elsewhere is followed.
        if let Ok(target) = std::fs::read_link(&path) {
            if target.parent().is_none_or(|p| p.as_os_str().is_empty()) {
                continue;
            }
        }
        if !path.is_file() {
            continue;
        }
        let dest = staging.join(&name);
        std::fs::copy(&path, &dest).map_err(io(path.display()))?;
        files.push(name);
    }
    Ok(files)
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

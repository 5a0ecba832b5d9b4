//! Copying ONNX Runtime's library files, and the CUDA libraries its GPU providers need, out of
//! what `runtime install` is given (wheels, tarballs or folders: `onnxruntime-gpu` and the
//! `nvidia-*` wheels of its `cuda`/`cudnn` extras, say) into one staging folder, within the
//! archive [`Limits`] (each source its own).

use std::fs::{File, OpenOptions, Permissions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{io, is_installed_library, Limits, RuntimeError, FILE_MODE};

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
#[cfg(test)]
pub(crate) fn extract(source: &Path, staging: &Path) -> Result<Vec<String>, RuntimeError> {
    extract_with(source, staging, Limits::DEFAULT)
}

/// [`extract`] with the archive bounds given.
#[cfg(test)]
pub(crate) fn extract_with(
    source: &Path,
    staging: &Path,
    limits: Limits,
) -> Result<Vec<String>, RuntimeError> {
    extract_all(&[source.to_path_buf()], staging, limits)
}

/// Copies the libraries of every source into `staging`, as one build: ONNX Runtime's own and the
/// CUDA libraries beside it ([`is_installed_library`]). Sources without any (the `numpy` or
/// `protobuf` wheels pip brings along) add nothing. Fails when no source had `libonnxruntime.so*`
/// nor OpenVINO's C library (`libopenvino_c.so*`, the `openvino` wheel).
pub(crate) fn extract_all(
    sources: &[std::path::PathBuf],
    staging: &Path,
    limits: Limits,
) -> Result<Vec<String>, RuntimeError> {
    let mut files = Vec::new();
    for source in sources {
        files.extend(extract_one(source, staging, limits)?);
    }
    files.sort();
    files.dedup();
    let runtime = |f: &String| {
        f == "libonnxruntime.so"
            || f.starts_with("libonnxruntime.so.")
            || f == "libopenvino_c.so"
            || f.starts_with("libopenvino_c.so.")
    };
    if !files.iter().any(runtime) {
        let names: Vec<String> = sources.iter().map(|s| s.display().to_string()).collect();
        return Err(RuntimeError::BadSource(format!(
            "{}: no libonnxruntime.so* nor libopenvino_c.so* inside (found: {})",
            names.join(", "),
            if files.is_empty() {
                "no ONNX Runtime library".to_string()
            } else {
                files.join(", ")
            }
        )));
    }
    Ok(files)
}

/// The library files of one source, written into `staging`.
fn extract_one(source: &Path, staging: &Path, limits: Limits) -> Result<Vec<String>, RuntimeError> {
    let mut budget = Budget {
        archive: source,
        limits,
        members: 0,
        bytes: 0,
    };
    match source_kind(source)? {
        SourceKind::Wheel => extract_zip(source, staging, &mut budget),
        SourceKind::Tar { gzip } => extract_tar(source, staging, gzip, &mut budget),
        SourceKind::Folder => copy_folder(source, staging),
    }
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
        if !is_installed_library(&name) {
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
        if !is_installed_library(&name) {
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
        if !is_installed_library(&name) {
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
            .is_some_and(is_installed_library);
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

//! Whether a process running as root may load an ONNX Runtime library. Loading a library runs its
//! initialisers, so a library that a less privileged user can replace (a file, a provider library
//! beside it, or a folder above them, such as `<state_dir>/runtimes/`, which the service user
//! owns) would run that user's code as root. [`check`] accepts a library only when the file, every
//! `libonnxruntime*` file beside it (the providers ONNX Runtime loads from its own folder), every
//! CUDA library beside it (what a GPU build preloads, `runtimes::preload`) and
//! every folder above them up to `/` are owned by root (or the process's own user) and not
//! writable by group or others; a root-owned sticky folder (`/tmp`) may be writable, since nobody
//! else can rename or remove what is not theirs in it. Links are resolved first: what is checked is
//! the path to load. `ort.rs` and `openvino.rs` call it for the library they are about to load when
//! the effective uid is 0 (OpenVINO's plugins and TBB beside its C library are checked like ONNX
//! Runtime's providers); the daemon runs as the service user and loads its own files unchecked.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::runtimes::is_installed_library;

/// Write permission for group or others.
const GROUP_OTHER_WRITE: u32 = 0o022;
/// The sticky bit: in such a folder only an entry's owner (or root) may rename or remove it.
const STICKY: u32 = 0o1000;
/// What to do about a refused library.
const FIX: &str = "make it root's and not writable by others (chown root, chmod go-w), or run this command as the user that owns it (the service user: sudo -u intelligent-video …)";

#[derive(Debug, thiserror::Error)]
pub(crate) enum UntrustedLibrary {
    #[error("cannot check {path} before loading it: {err}")]
    Unreadable {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    #[error("refusing to load {library} as root: {path} is owned by uid {uid}, who could replace the code root would run; {fix}", fix = FIX)]
    Owner {
        library: PathBuf,
        path: PathBuf,
        uid: u32,
    },
    #[error("refusing to load {library} as root: {path} is writable by other users (mode {mode:04o}), who could replace the code root would run; {fix}", fix = FIX)]
    Writable {
        library: PathBuf,
        path: PathBuf,
        mode: u32,
    },
    #[error("refusing to load {library}: {path} is not a regular file")]
    NotAFile { library: PathBuf, path: PathBuf },
}

/// The path to load `path` from: as root, its links resolved, once [`check`] has found that no
/// other user can replace it; otherwise `path` itself.
pub(crate) fn loadable_by_this_process(path: &Path) -> Result<PathBuf, UntrustedLibrary> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        check(path, euid.as_raw())
    } else {
        Ok(path.to_path_buf())
    }
}

/// Checks that a process with effective uid `euid` may load `library` (see the module's doc).
/// Returns the library's path with its links resolved: the path that was checked, to be loaded.
pub(crate) fn check(library: &Path, euid: u32) -> Result<PathBuf, UntrustedLibrary> {
    let unreadable = |path: &Path| {
        let path = path.to_path_buf();
        move |err| UntrustedLibrary::Unreadable { path, err }
    };
    let resolved = library.canonicalize().map_err(unreadable(library))?;
    let mut files = vec![resolved.clone()];
    if let Some(folder) = resolved.parent() {
        for entry in std::fs::read_dir(folder).map_err(unreadable(folder))? {
            let entry = entry.map_err(unreadable(folder))?;
            let name = entry.file_name();
            if !name.to_str().is_some_and(is_installed_library) {
                continue;
            }
            match entry.path().canonicalize() {
                Ok(p) if p != resolved => files.push(p),
                Ok(_) => {}
                // A dangling link loads nothing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(unreadable(&entry.path())(e)),
            }
        }
    }
    let mut folders = HashSet::new();
    for file in &files {
        let meta = std::fs::metadata(file).map_err(unreadable(file))?;
        if !meta.is_file() {
            return Err(UntrustedLibrary::NotAFile {
                library: library.to_path_buf(),
                path: file.clone(),
            });
        }
        check_one(library, file, &meta, euid, false)?;
        for folder in file.ancestors().skip(1) {
            if folder.as_os_str().is_empty() || !folders.insert(folder.to_path_buf()) {
                continue;
            }
            let meta = std::fs::metadata(folder).map_err(unreadable(folder))?;
            check_one(library, folder, &meta, euid, true)?;
        }
    }
    Ok(resolved)
}

/// One file or folder: its owner and its write permissions.
fn check_one(
    library: &Path,
    path: &Path,
    meta: &std::fs::Metadata,
    euid: u32,
    is_folder: bool,
) -> Result<(), UntrustedLibrary> {
    let uid = meta.uid();
    if uid != 0 && uid != euid {
        return Err(UntrustedLibrary::Owner {
            library: library.to_path_buf(),
            path: path.to_path_buf(),
            uid,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    let sticky_root_folder = is_folder && uid == 0 && mode & STICKY != 0;
    if mode & GROUP_OTHER_WRITE != 0 && !sticky_root_folder {
        return Err(UntrustedLibrary::Writable {
            library: library.to_path_buf(),
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{chown, symlink};

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// `root/lib/libonnxruntime.so.1.31.1` and a provider library, in a temporary folder (under
    /// the root-owned sticky /tmp) that only root can write.
    fn layout() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("tmp");
        chmod(tmp.path(), 0o755);
        let dir = tmp.path().join("lib");
        std::fs::create_dir(&dir).expect("mkdir");
        chmod(&dir, 0o755);
        for name in [
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_cuda.so",
        ] {
            std::fs::write(dir.join(name), name).expect("write");
            chmod(&dir.join(name), 0o644);
        }
        let lib = dir.join("libonnxruntime.so.1.31.1");
        (tmp, lib)
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn root_owned_files_in_folders_only_root_can_write_are_accepted() {
        let (tmp, lib) = layout();
        if !is_root() {
            eprintln!("skipped: the files must be root's");
            return;
        }
        assert_eq!(check(&lib, 0).expect("trusted"), lib);
        // A link is resolved: the path to load is the file checked.
        let link = tmp.path().join("libonnxruntime.so");
        symlink(&lib, &link).expect("link");
        assert_eq!(check(&link, 0).expect("trusted link"), lib);
        // Another user may check their own files.
        chown(tmp.path(), Some(65534), None).expect("chown");
        assert!(check(&lib, 0).is_err());
        assert_eq!(check(&lib, 65534).expect("own folder"), lib);
    }

    #[test]
    fn folders_and_files_others_can_write_are_refused() {
        let (tmp, lib) = layout();
        if !is_root() {
            eprintln!("skipped: the files must be root's");
            return;
        }
        let dir = tmp.path().join("lib");
        for mode in [0o775, 0o777, 0o757] {
            chmod(&dir, mode);
            let e = check(&lib, 0).expect_err("writable folder");
            assert!(
                matches!(&e, UntrustedLibrary::Writable { path, mode: m, .. } if path == &dir && *m == mode),
                "{e}"
            );
            let text = e.to_string();
            assert!(
                text.contains(&format!(
                    "{} is writable by other users (mode 0{mode:o})",
                    dir.display()
                )),
                "{text}"
            );
            assert!(text.contains("chown root"), "{text}");
        }
        // A sticky folder is writable safely only when root owns it.
        chmod(&dir, 0o1777);
        assert_eq!(check(&lib, 0).expect("sticky root folder"), lib);
        chown(&dir, Some(65534), None).expect("chown");
        assert!(matches!(
            check(&lib, 0),
            Err(UntrustedLibrary::Owner { path, uid: 65534, .. }) if path == dir
        ));
        chown(&dir, Some(0), None).expect("chown");
        chmod(&dir, 0o755);

        // The library itself, or a provider library beside it.
        for name in [
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_cuda.so",
        ] {
            let file = dir.join(name);
            chmod(&file, 0o664);
            assert!(matches!(
                check(&lib, 0),
                Err(UntrustedLibrary::Writable { path, mode: 0o664, .. }) if path == file
            ));
            chmod(&file, 0o644);
            chown(&file, Some(65534), Some(65534)).expect("chown");
            let e = check(&lib, 0).expect_err("another user's file");
            assert!(
                matches!(&e, UntrustedLibrary::Owner { path, uid: 65534, .. } if path == &file),
                "{e}"
            );
            assert!(
                e.to_string()
                    .contains(&format!("{} is owned by uid 65534", file.display())),
                "{e}"
            );
            chown(&file, Some(0), Some(0)).expect("chown");
        }
        assert_eq!(check(&lib, 0).expect("trusted again"), lib);
    }

    #[test]
    fn a_link_to_a_library_others_can_write_is_refused() {
        let (tmp, lib) = layout();
        if !is_root() {
            eprintln!("skipped: the files must be root's");
            return;
        }
        // The link sits in a trusted folder; its target's folder is not.
        let safe = tmp.path().join("safe");
        std::fs::create_dir(&safe).expect("mkdir");
        chmod(&safe, 0o755);
        let link = safe.join("libonnxruntime.so");
        symlink(&lib, &link).expect("link");
        chown(lib.parent().expect("folder"), Some(65534), None).expect("chown");
        assert!(matches!(
            check(&link, 0),
            Err(UntrustedLibrary::Owner { uid: 65534, .. })
        ));
        assert!(matches!(
            check(&tmp.path().join("missing.so"), 0),
            Err(UntrustedLibrary::Unreadable { .. })
        ));
    }
}

//! Atomic installs of a folder or a file: a complete staging copy takes the destination's place by
//! rename, and a previous copy is removed only once the new one is in place, so a reader sees
//! either the old version or the new one, never a half-written one. Used by the model store, the
//! artifact cache, installed runtimes and the state files (`state_file`).

use std::io;
use std::path::Path;

/// Replaces `dest` with `staging` (both in the same file system).
pub(crate) fn replace_dir(staging: &Path, dest: &Path) -> io::Result<()> {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let old = dest.with_file_name(format!(".old-{name}-{}", std::process::id()));
    let had_old = dest.exists();
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dest, &old)?;
    }
    if let Err(e) = std::fs::rename(staging, dest) {
        if had_old {
            // Put the previous copy back: the install failed, the old one is still good.
            let _ = std::fs::rename(&old, dest);
        }
        return Err(e);
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Writes `bytes` to `dest` atomically and durably: a temporary file in the same folder, synced,
/// renamed over `dest`, then the folder synced.
pub(crate) fn write_file_atomic(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file_atomic_mode(dest, bytes, 0o644)
}

/// [`write_file_atomic`] with the file's permission bits set to `mode` whatever the umask.
pub(crate) fn write_file_atomic_mode(dest: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_files_atomically() {
        let root = tempfile::tempdir().expect("tmp");
        let dest = root.path().join("state.json");
        write_file_atomic(&dest, b"one").expect("first");
        write_file_atomic(&dest, b"two").expect("second");
        assert_eq!(std::fs::read(&dest).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(root.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        // A folder that does not exist fails and leaves nothing behind.
        assert!(write_file_atomic(&root.path().join("no/x"), b"x").is_err());
    }

    #[test]
    fn replaces_an_existing_folder_and_installs_a_new_one() {
        let root = tempfile::tempdir().expect("tmp");
        let dest = root.path().join("entry");
        let stage = |content: &str| {
            let s = root.path().join(format!(".stage-{content}"));
            std::fs::create_dir_all(&s).expect("mkdir");
            std::fs::write(s.join("f"), content).expect("write");
            s
        };
        replace_dir(&stage("one"), &dest).expect("install");
        assert_eq!(
            std::fs::read_to_string(dest.join("f")).expect("read"),
            "one"
        );
        replace_dir(&stage("two"), &dest).expect("replace");
        assert_eq!(
            std::fs::read_to_string(dest.join("f")).expect("read"),
            "two"
        );
        let left: Vec<_> = std::fs::read_dir(root.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("entry")]);
        // A missing staging folder fails and keeps the installed copy.
        assert!(replace_dir(&root.path().join("nope"), &dest).is_err());
        assert_eq!(
            std::fs::read_to_string(dest.join("f")).expect("read"),
            "two"
        );
    }
}

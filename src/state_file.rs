//! The daemon's JSON state files (`streams.json`, `query-sets.json`): read at start, written
//! atomically and durably (`fsutil::write_file_atomic`) with owner-only modes whatever the umask
//! (they hold camera URLs with passwords), an unreadable file set aside under a name that is never
//! reused (`<file>.bad-<unix seconds>[-N]`) so the next change cannot overwrite what was there,
//! and the temporary files a killed writer left behind removed at start.

use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Mode of every state file: the daemon's user only.
pub(crate) const MODE: u32 = 0o600;

/// One state file.
#[derive(Debug, Clone)]
pub(crate) struct StateFile {
    path: PathBuf,
}

/// What reading a state file gave.
#[derive(Debug)]
pub(crate) enum Loaded<T> {
    /// No file yet.
    Missing,
    Read(T),
    /// The file could not be read or parsed; it was renamed to `aside` (when `aside` is `Some`).
    SetAside {
        error: String,
        aside: Option<PathBuf>,
    },
}

impl StateFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        StateFile { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the temporary files of writers that are gone (a `kill -9` during a write), then
    /// reads the file with `parse`; a file that does not parse is set aside.
    pub(crate) fn load<T>(&self, parse: impl FnOnce(&[u8]) -> Result<T, String>) -> Loaded<T> {
        self.remove_stale_temporaries();
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return self.set_aside(e.to_string()),
        };
        match parse(&bytes) {
            Ok(v) => Loaded::Read(v),
            Err(e) => self.set_aside(e),
        }
    }

    /// Reads a JSON value of type `T`.
    pub(crate) fn load_json<T: DeserializeOwned>(&self) -> Loaded<T> {
        self.load(|b| serde_json::from_slice(b).map_err(|e| e.to_string()))
    }

    /// Renames the file to a `.bad-<secs>[-N]` name no other file has.
    fn set_aside<T>(&self, error: String) -> Loaded<T> {
        let aside = set_aside(&self.path).ok();
        Loaded::SetAside { error, aside }
    }

    /// Writes `value` as JSON (a trailing newline), atomically and durably, mode 0600.
    pub(crate) fn save<T: Serialize>(&self, value: &T, pretty: bool) -> Result<(), String> {
        let mut text = if pretty {
            serde_json::to_vec_pretty(value)
        } else {
            serde_json::to_vec(value)
        }
        .map_err(|e| e.to_string())?;
        text.push(b'\n');
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        crate::fsutil::write_file_atomic_mode(&self.path, &text, MODE).map_err(|e| e.to_string())
    }

    /// Removes `.<name>.tmp-<pid>` files beside the state file whose writer no longer runs.
    fn remove_stale_temporaries(&self) {
        let (Some(dir), Some(name)) = (self.path.parent(), self.path.file_name()) else {
            return;
        };
        let prefix = format!(".{}.tmp-", name.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(pid) = file
                .to_str()
                .and_then(|f| f.strip_prefix(&prefix))
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() as i32 || process_runs(pid) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed a state file's stale temporary copy")
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale temporary file")
                }
            }
        }
    }
}

/// Whether a process with this id exists.
fn process_runs(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        // EPERM: it exists, owned by someone else.
        Err(_) => true,
    }
}

/// Renames `path` to `<path>.bad-<unix seconds>`, or `…-2`, `…-3`, … when that name is taken: a
/// file set aside earlier is never overwritten (a hard link refuses an existing name; the
/// original name is then removed).
pub(crate) fn set_aside(path: &Path) -> io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{}.bad-{secs}", path.display());
    for n in 1..1000u32 {
        let aside = PathBuf::from(if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        match std::fs::hard_link(path, &aside) {
            Ok(()) => {
                std::fs::remove_file(path)?;
                return Ok(aside);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "too many set-aside copies",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_owner_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = StateFile::new(dir.path().join("s/streams.json"));
        f.save(&serde_json::json!({"a": 1}), false).expect("save");
        let mode = std::fs::metadata(f.path())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "not the umask's 0644");
        assert!(matches!(f.load_json::<serde_json::Value>(), Loaded::Read(v) if v["a"] == 1));
    }

    #[test]
    fn bad_files_are_set_aside_under_new_names() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("streams.json");
        let f = StateFile::new(path.clone());
        assert!(matches!(f.load_json::<Vec<u8>>(), Loaded::Missing));
        let mut asides = Vec::new();
        for content in ["{not json", "{\"also\": \"bad\""] {
            std::fs::write(&path, content).expect("write");
            match f.load_json::<Vec<u8>>() {
                Loaded::SetAside {
                    aside: Some(a),
                    error,
                } => {
                    assert!(!error.is_empty());
                    assert_eq!(std::fs::read_to_string(&a).expect("read"), content);
                    asides.push(a);
                }
                other => panic!("{other:?}"),
            }
            assert!(!path.exists());
        }
        assert_ne!(
            asides[0], asides[1],
            "the second never overwrites the first"
        );
    }

    #[test]
    fn stale_temporaries_are_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("streams.json");
        // No process has pid 2^22 + 1 (above pid_max's largest value).
        let stale = dir.path().join(".streams.json.tmp-4194305");
        let live = dir
            .path()
            .join(format!(".streams.json.tmp-{}", std::process::id()));
        let other = dir.path().join(".query-sets.json.tmp-4194305");
        for p in [&stale, &live, &other] {
            std::fs::write(p, "x").expect("write");
        }
        assert!(matches!(
            StateFile::new(path).load_json::<Vec<u8>>(),
            Loaded::Missing
        ));
        assert!(!stale.exists());
        assert!(live.exists(), "our own writer's file stays");
        assert!(other.exists(), "another state file's is not ours to judge");
    }
}

//! Guards the daemon against its ONNX Runtime library files being rewritten in place while they
//! are loaded. Owns finding the loaded runtime files (`/proc/self/maps`) and the watching thread.
//!
//! Why: truncating a mapped file makes the kernel drop even the process's private copy-on-write
//! pages of it (`truncate_pagecache` unmaps COW pages too), so after `cp new.so loaded.so` the
//! next touch of a relocated page (the `OrtApi` function table, vtables, the GOT) reads the
//! file's on-disk bytes: unrelocated link-time addresses. The daemon then jumps to one, e.g.
//! `segfault at cf76c0 ip 0000000000cf76c0 … error 14` (entry 68 of the table in 1.31.1's file).
//! Replacing a file by rename (dpkg, pip, `runtime install`, `make build`) is safe: the loaded
//! inode stays intact.
//!
//! The guard watches every loaded `libonnxruntime*` file for a write (`IN_MODIFY`, which a
//! truncate raises too) and then logs why and ends the process at once with
//! [`EXIT_LIBRARY_REWRITTEN`] (no destructors: they would call through the damaged tables);
//! systemd's `Restart=on-failure` starts it again on the new file. Besides `main`, this is the only
//! place that ends the daemon.
//!
//! It is a race the guard can lose: a thread running inside ONNX Runtime when the file is truncated
//! faults on its next instruction fetch (SIGBUS) before this thread is scheduled (`bench/soak.py
//! --rewrite-library` under load: about half the cycles). An idle daemon always ends here, with the
//! reason in its log.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::runtimes::is_runtime_library;

/// The exit status after a loaded runtime library was rewritten in place (sysexits' `EX_TEMPFAIL`:
/// a restart fixes it).
pub const EXIT_LIBRARY_REWRITTEN: i32 = 75;

/// A mapped file as `/proc/self/maps` names it: its path and the device and inode it was loaded
/// from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    pub path: PathBuf,
    /// `(major, minor)` of the device.
    pub dev: (u64, u64),
    pub inode: u64,
}

/// The ONNX Runtime library files mapped in `maps` (the text of `/proc/self/maps`), each once.
/// Files already deleted or replaced (`(deleted)`) are left out: nothing can rewrite them.
pub fn runtime_files_in(maps: &str) -> Vec<MappedFile> {
    let mut files: Vec<MappedFile> = Vec::new();
    for line in maps.lines() {
        if let Some(f) = parse_maps_line(line) {
            let named = f
                .path
                .file_name()
                .is_some_and(|n| is_runtime_library(&n.to_string_lossy()));
            if named && !files.contains(&f) {
                files.push(f);
            }
        }
    }
    files
}

/// `address perms offset dev inode path` → the mapped file; `None` for anonymous and special
/// mappings, deleted files and unparsable lines. The path is the rest of the line after the
/// padding (it may hold spaces).
fn parse_maps_line(line: &str) -> Option<MappedFile> {
    let mut fields = line.splitn(6, ' ');
    let (_addr, _perms, _offset) = (fields.next()?, fields.next()?, fields.next()?);
    let (dev, inode) = (fields.next()?, fields.next()?);
    let path = fields.next()?.trim_start_matches(' ');
    if !path.starts_with('/') || path.ends_with(" (deleted)") {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    Some(MappedFile {
        path: PathBuf::from(path),
        dev: (
            u64::from_str_radix(major, 16).ok()?,
            u64::from_str_radix(minor, 16).ok()?,
        ),
        inode: inode.parse().ok()?,
    })
}

/// The guard: one inotify instance, its thread, and which watch is which file.
struct Guard {
    inotify: Inotify,
    watched: Mutex<HashMap<WatchDescriptor, PathBuf>>,
}

static GUARD: OnceLock<Option<Guard>> = OnceLock::new();

fn guard() -> Option<&'static Guard> {
    GUARD
        .get_or_init(|| {
            let inotify = match Inotify::init(InitFlags::IN_CLOEXEC) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot use inotify; runtime library guard off");
                    return None;
                }
            };
            let spawned = std::thread::Builder::new()
                .name("iv-library-guard".into())
                .spawn(wait_for_rewrite);
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the runtime library guard");
                return None;
            }
            Some(Guard {
                inotify,
                watched: Mutex::new(HashMap::new()),
            })
        })
        .as_ref()
}

/// Watches the runtime library files loaded now and not watched yet. Call it once ONNX Runtime is
/// loaded and again after the sessions are built (the execution providers' libraries load then).
/// Returns every file watched so far; a file that cannot be watched is skipped with a warning.
pub fn watch_loaded() -> Vec<PathBuf> {
    let files = match std::fs::read_to_string("/proc/self/maps") {
        Ok(maps) => runtime_files_in(&maps),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /proc/self/maps; runtime library guard off");
            return Vec::new();
        }
    };
    if files.is_empty() {
        return Vec::new();
    }
    let Some(g) = guard() else {
        return Vec::new();
    };
    let Ok(mut watched) = g.watched.lock() else {
        return Vec::new();
    };
    for f in files {
        if watched.values().any(|p| *p == f.path) {
            continue;
        }
        match watch_one(&g.inotify, &f) {
            Ok(wd) => {
                watched.insert(wd, f.path);
            }
            Err(why) => tracing::warn!(file = %f.path.display(), "{why}; not guarded"),
        }
    }
    let mut paths: Vec<PathBuf> = watched.values().cloned().collect();
    paths.sort();
    paths
}

/// Watches `f` if its path still names the inode that was loaded (a file replaced by rename in the
/// meantime needs no guard, and the new one must not be watched).
fn watch_one(inotify: &Inotify, f: &MappedFile) -> Result<WatchDescriptor, String> {
    let wd = inotify
        .add_watch(f.path.as_path(), AddWatchFlags::IN_MODIFY)
        .map_err(|e| format!("cannot watch: {e}"))?;
    let same = std::fs::metadata(&f.path).is_ok_and(|m| {
        m.ino() == f.inode
            && (
                nix::sys::stat::major(m.dev()),
                nix::sys::stat::minor(m.dev()),
            ) == f.dev
    });
    if !same {
        let _ = inotify.rm_watch(wd);
        return Err("replaced since it was loaded".into());
    }
    Ok(wd)
}

/// The guard thread: blocks until a watched file is written, then ends the process.
fn wait_for_rewrite() {
    // The thread starts while `GUARD` is being initialised; wait for it.
    let g = loop {
        match GUARD.get() {
            Some(Some(g)) => break g,
            Some(None) => return,
            None => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    };
    loop {
        match g.inotify.read_events() {
            Ok(events) => {
                let Some(e) = events
                    .iter()
                    .find(|e| e.mask.contains(AddWatchFlags::IN_MODIFY))
                else {
                    continue;
                };
                let file = g
                    .watched
                    .lock()
                    .ok()
                    .and_then(|w| w.get(&e.wd).map(|p| p.display().to_string()))
                    .unwrap_or_else(|| "a runtime library".into());
                rewritten(&file);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "runtime library guard stopped");
                return;
            }
        }
    }
}

/// Logs why and ends the process at once.
fn rewritten(file: &str) -> ! {
    tracing::error!(
        library = %file,
        "a loaded ONNX Runtime library was rewritten in place; its loaded code is no longer intact, \
         so the daemon exits now (status {EXIT_LIBRARY_REWRITTEN}) to be restarted on the new file. \
         Replace runtime libraries with a new file (rename, or remove first), never by copying over them"
    );
    // SAFETY: `_exit` ends the process without running destructors or atexit handlers, which could
    // call into the library's damaged pages; nothing is left to flush (the log line above is
    // written synchronously).
    unsafe { nix::libc::_exit(EXIT_LIBRARY_REWRITTEN) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_loaded_runtime_file_once() {
        let maps = "\
5583a000-5583b000 r--p 00000000 08:01 123                        /usr/bin/intelligent-video
7f0000000000-7f0000100000 r--p 00000000 08:01 77                 /usr/lib/intelligent-video/libonnxruntime.so.1.31.1
7f0000100000-7f0000900000 r-xp 00100000 08:01 77                 /usr/lib/intelligent-video/libonnxruntime.so.1.31.1
7f0000a00000-7f0000a10000 r--p 00000000 fd:1a 78                 /opt/my runtimes/libonnxruntime_providers_shared.so
7f0000b00000-7f0000b10000 r--p 00000000 08:01 79                 /old/libonnxruntime.so.1.30.0 (deleted)
7f0000c00000-7f0000c10000 r--p 00000000 08:01 80                 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000d00000-7f0000d10000 rw-p 00000000 00:00 0 
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                  [stack]
";
        assert_eq!(
            runtime_files_in(maps),
            vec![
                MappedFile {
                    path: PathBuf::from("/usr/lib/intelligent-video/libonnxruntime.so.1.31.1"),
                    dev: (8, 1),
                    inode: 77
                },
                MappedFile {
                    path: PathBuf::from("/opt/my runtimes/libonnxruntime_providers_shared.so"),
                    dev: (0xfd, 0x1a),
                    inode: 78
                },
            ]
        );
    }

    #[test]
    fn nothing_is_found_without_a_runtime() {
        assert!(runtime_files_in("").is_empty());
        assert!(runtime_files_in("garbage\n\n1 2 3\n").is_empty());
        assert!(runtime_files_in("a b c zz:zz 1 /x/libonnxruntime.so\n").is_empty());
    }

    #[test]
    fn a_file_replaced_since_it_was_loaded_is_not_watched() {
        let dir = tempfile::tempdir().expect("tmp");
        let lib = dir.path().join("libonnxruntime.so.1");
        std::fs::write(&lib, b"old").expect("write");
        let m = std::fs::metadata(&lib).expect("stat");
        let loaded = MappedFile {
            path: lib.clone(),
            dev: (
                nix::sys::stat::major(m.dev()),
                nix::sys::stat::minor(m.dev()),
            ),
            inode: m.ino(),
        };
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC).expect("inotify");
        assert!(watch_one(&inotify, &loaded).is_ok());
        let fresh = dir.path().join("fresh");
        std::fs::write(&fresh, b"new").expect("write");
        std::fs::rename(&fresh, &lib).expect("rename");
        assert_eq!(
            watch_one(&inotify, &loaded),
            Err("replaced since it was loaded".to_string())
        );
    }
}

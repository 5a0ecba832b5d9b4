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

use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::runtimes::is_runtime_library;

/// The exit status after a loaded runtime library was rewritten in place (sysexits' `EX_TEMPFAIL`:
/// a restart fixes it).
pub const EXIT_LIBRARY_REWRITTEN: i32 = 75;

/// The ONNX Runtime library files mapped in `maps` (the text of `/proc/self/maps`), each once.
/// Files already deleted or replaced (`(deleted)`) are left out: nothing can rewrite them.
pub fn runtime_files_in(maps: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path: the path is the sixth field and may hold spaces.
        let Some(path) = line.splitn(6, char::is_whitespace).nth(5).map(str::trim) else {
            continue;
        };
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let p = Path::new(path);
        let named = p
            .file_name()
            .is_some_and(|n| is_runtime_library(&n.to_string_lossy()));
        if named && !files.iter().any(|f| f == p) {
            files.push(p.to_path_buf());
        }
    }
    files
}

/// Starts watching the runtime library files loaded now (call it after the sessions are built,
/// when the execution providers' libraries are loaded too). Returns the files watched; an empty
/// list when none is loaded or the kernel refuses inotify (logged; the daemon runs unguarded).
pub fn start() -> Vec<PathBuf> {
    let files = match std::fs::read_to_string("/proc/self/maps") {
        Ok(maps) => runtime_files_in(&maps),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /proc/self/maps; runtime library guard off");
            return Vec::new();
        }
    };
    if files.is_empty() {
        return files;
    }
    let inotify = match watch(&files) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the runtime libraries; guard off");
            return Vec::new();
        }
    };
    let watched = files.clone();
    let spawned = std::thread::Builder::new()
        .name("iv-library-guard".into())
        .spawn(move || wait_for_rewrite(&inotify, &watched));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the runtime library guard");
        return Vec::new();
    }
    files
}

fn watch(files: &[PathBuf]) -> nix::Result<Inotify> {
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC)?;
    for f in files {
        inotify.add_watch(f.as_path(), AddWatchFlags::IN_MODIFY)?;
    }
    Ok(inotify)
}

/// Blocks until a watched file is written, then ends the process.
fn wait_for_rewrite(inotify: &Inotify, files: &[PathBuf]) {
    loop {
        match inotify.read_events() {
            Ok(events)
                if events
                    .iter()
                    .any(|e| e.mask.contains(AddWatchFlags::IN_MODIFY)) =>
            {
                let names = files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                tracing::error!(
                    libraries = %names,
                    "a loaded ONNX Runtime library was rewritten in place; its loaded code is no longer \
                     intact, so the daemon exits now (status {EXIT_LIBRARY_REWRITTEN}) to be restarted \
                     on the new file. Replace runtime libraries by rename (install, dpkg, pip), never \
                     by copying over them"
                );
                eprintln!(
                    "error: a loaded ONNX Runtime library ({names}) was rewritten in place; exiting"
                );
                // SAFETY: `_exit` ends the process without running destructors or atexit handlers,
                // which could call into the library's damaged pages; nothing is left to flush (the
                // log line above is written synchronously).
                unsafe { libc::_exit(EXIT_LIBRARY_REWRITTEN) }
            }
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "runtime library guard stopped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_loaded_runtime_file_once() {
        let maps = "\
5583a000-5583b000 r--p 00000000 08:01 123 /usr/bin/intelligent-video
7f0000000000-7f0000100000 r--p 00000000 08:01 77 /usr/lib/intelligent-video/libonnxruntime.so.1.31.1
7f0000100000-7f0000900000 r-xp 00100000 08:01 77 /usr/lib/intelligent-video/libonnxruntime.so.1.31.1
7f0000a00000-7f0000a10000 r--p 00000000 08:01 78 /opt/my runtimes/libonnxruntime_providers_shared.so
7f0000b00000-7f0000b10000 r--p 00000000 08:01 79 /old/libonnxruntime.so.1.30.0 (deleted)
7f0000c00000-7f0000c10000 r--p 00000000 08:01 80 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000d00000-7f0000d10000 rw-p 00000000 00:00 0 
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            runtime_files_in(maps),
            vec![
                PathBuf::from("/usr/lib/intelligent-video/libonnxruntime.so.1.31.1"),
                PathBuf::from("/opt/my runtimes/libonnxruntime_providers_shared.so"),
            ]
        );
    }

    #[test]
    fn nothing_is_found_without_a_runtime() {
        assert!(runtime_files_in("").is_empty());
        assert!(runtime_files_in("garbage\n\n1 2 3\n").is_empty());
    }
}

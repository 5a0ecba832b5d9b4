//! The daemon and its ONNX Runtime library file: replacing the file by rename leaves the running
//! daemon intact and serving; rewriting the loaded file in place (what `cp` onto it does, and what
//! once made the daemon jump to an unrelocated address) makes it exit at once with status 75 and
//! say why, instead of crashing later or running damaged code.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::bin;
use crate::support::daemon::Daemon;

/// The ONNX Runtime library the binary under test loads: `IV_ONNXRUNTIME_PATH`, else the one
/// next to the executable.
fn runtime_library() -> PathBuf {
    if let Some(p) = std::env::var_os("IV_ONNXRUNTIME_PATH") {
        return PathBuf::from(p);
    }
    let dir = std::path::Path::new(bin::PATH)
        .parent()
        .expect("binary folder");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("binary folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                && p.is_file()
        })
        .collect();
    libs.sort();
    libs.pop()
        .expect("libonnxruntime.so* next to the test binary")
}

#[test]
fn a_runtime_library_rewritten_in_place_ends_the_daemon_and_a_rename_does_not() {
    let dir = tempfile::tempdir().expect("tmp");
    let lib = dir.path().join("libonnxruntime.so.1.31.1");
    let bytes = std::fs::read(runtime_library()).expect("read the runtime library");
    std::fs::write(&lib, &bytes).expect("private copy");
    // A second name for the inode the daemon will load, to reach it after the rename below.
    let loaded = dir.path().join("loaded.so");
    std::fs::hard_link(&lib, &loaded).expect("hard link");

    let mut d = Daemon::start(&[("IV_ONNXRUNTIME_PATH", lib.to_str().expect("utf8"))]);
    d.wait_ready();
    assert!(
        d.stderr()
            .contains("watching the loaded ONNX Runtime libraries"),
        "{}",
        d.stderr()
    );
    d.assert_detects();

    // Replaced by rename (dpkg, pip, `runtime install`): the loaded inode is untouched.
    let fresh = dir.path().join("fresh.so");
    std::fs::write(&fresh, &bytes).expect("new file");
    std::fs::rename(&fresh, &lib).expect("rename");
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.running(), "exited after a rename: {}", d.stderr());
    d.assert_detects();
    // The guard wins its race against ONNX Runtime's own threads when the daemon is idle (its
    // module docs): let the inference threads that just answered park before the rewrite, which
    // otherwise can fault on the truncated file first (seen 1 run in 16 on a loaded machine).
    std::thread::sleep(Duration::from_millis(500));

    // Rewritten in place, as `cp` onto it does: truncate, then write the same bytes.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&loaded)
        .expect("open the loaded inode");
    f.write_all(&bytes).expect("rewrite");
    drop(f);
    assert_eq!(
        d.wait_exit(Duration::from_secs(30)),
        Some(75),
        "stderr:\n{}",
        d.stderr()
    );
    let log = d.stderr();
    assert!(log.contains("was rewritten in place"), "{log}");
    // The line names the loaded library (the watch is on the name it was loaded by).
    assert!(
        log.lines()
            .any(|l| l.contains("rewritten in place") && l.contains(lib.to_str().expect("utf8"))),
        "{log}"
    );
}

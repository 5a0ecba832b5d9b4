//! The one way the tests run the `intelligent-video` binary.

use std::ffi::OsStr;
use std::process::Command;

/// The binary Cargo built for these tests.
pub(crate) const PATH: &str = env!("CARGO_BIN_EXE_intelligent-video");

/// Variables the binary gets from the test's environment; nothing else is passed on, so a
/// developer's `IV_*` settings, `JOURNAL_STREAM` (journald logging), `NOTIFY_SOCKET`, `LISTEN_FDS`
/// or `WATCHDOG_USEC` cannot change what a test sees. `IV_ONNXRUNTIME_PATH` is passed on so the
/// binary loads the same ONNX Runtime as the in-process tests (without it, both find the library
/// next to the executables in `target/debug`); the CUDA variables keep GPU discovery the same in
/// both.
const PASSED_ON: [&str; 6] = [
    "PATH",
    "HOME",
    "RUST_BACKTRACE",
    "IV_ONNXRUNTIME_PATH",
    "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES",
];

/// A `Command` for the binary under test with the common test environment; callers add the
/// subcommand, arguments and their own `env`.
pub(crate) fn command() -> Command {
    with_passed_env(Command::new(PATH))
}

/// `c` with a cleared environment plus the [`PASSED_ON`] variables of the test's own.
fn with_passed_env(mut c: Command) -> Command {
    c.env_clear();
    for k in PASSED_ON {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
    c
}

/// Asserts that the binary exited 0, showing its stderr otherwise.
pub(crate) fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `launcher launcher_args… <binary> <args…>` for a launcher that execs the binary itself with
/// only the variables given as `-E NAME=VALUE` (systemd-socket-activate): `inner` (from
/// [`command`]) supplies the program, its arguments and its whole environment.
pub(crate) fn under(
    launcher: impl AsRef<OsStr>,
    launcher_args: &[&OsStr],
    inner: &Command,
) -> Command {
    let mut c = with_passed_env(Command::new(launcher));
    c.args(launcher_args);
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            let mut kv = k.to_os_string();
            kv.push("=");
            kv.push(v);
            c.arg("-E").arg(kv);
        }
    }
    c.arg(inner.get_program()).args(inner.get_args());
    c
}

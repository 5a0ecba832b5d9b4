//! `GET /api/doctor` (Unix socket only): `intelligent-video doctor --json` for the running daemon's
//! configuration, run as a child process with the daemon's own `serve` arguments and environment
//! (less systemd's notification and socket variables), so the console's System page shows the
//! same checks as the command. Doctor loads nothing into the daemon: its runtime probes are child
//! processes of its own. One at a time (429 `busy` meanwhile), bounded by [`LIMIT`].

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::error::ApiError;
use super::request::{blocking, error_response, json_response, Resp};

/// How long a doctor run may take before it is killed.
const LIMIT: Duration = Duration::from_secs(60);

/// Variables that belong to the daemon's service manager, not to a child.
const DAEMON_ONLY: [&str; 7] = [
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
];

static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The arguments `serve` was started with (after the subcommand's name).
fn serve_args() -> Vec<std::ffi::OsString> {
    let all: Vec<std::ffi::OsString> = std::env::args_os().collect();
    all.iter()
        .position(|a| a == "serve")
        .map(|i| all[i + 1..].to_vec())
        .unwrap_or_default()
}

/// Runs doctor and returns its JSON report.
fn run_doctor() -> Result<String, ApiError> {
    let internal = |m: String| ApiError::new(500, "doctor_failed", m);
    let exe = std::env::current_exe()
        .map_err(|e| internal(format!("cannot find this executable: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.args(["doctor", "--json"])
        .args(serve_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for k in DAEMON_ONLY {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| internal(format!("cannot start doctor: {e}")))?;
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| internal("doctor has no output".into()))?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).map(|_| s)
    });
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < LIMIT => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ApiError::new(
                    504,
                    "timeout",
                    format!("doctor did not finish in {} s", LIMIT.as_secs()),
                ));
            }
        }
    }
    let text = reader
        .join()
        .map_err(|_| internal("doctor's output reader failed".into()))?
        .map_err(|e| internal(format!("cannot read doctor's output: {e}")))?;
    // Doctor exits non-zero when a check fails; its report is still the answer.
    serde_json::from_str::<serde_json::Value>(&text)
        .map(|v| v.to_string())
        .map_err(|e| internal(format!("doctor's output is not its report: {e}")))
}

/// `GET /api/doctor`.
pub(super) async fn doctor() -> Resp {
    let Ok(_one) = RUNNING.try_lock() else {
        return error_response(&ApiError::new(
            429,
            "busy",
            "doctor is already running for another request",
        ));
    };
    match blocking("doctor", run_doctor).await {
        Ok(Ok(body)) => json_response(200, body),
        Ok(Err(e)) | Err(e) => error_response(&e),
    }
}

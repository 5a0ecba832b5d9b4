//! `intelligent-video doctor [--json]`: every check the daemon's start depends on, each `ok`,
//! `warn` or `fail` with what was found and the fix — the README's troubleshooting as one command.
//! Exit 0 when the daemon can serve with this configuration (falling back to another backend
//! counts), 1 when it cannot.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use super::serve::EX_CONFIG;
use crate::backend::ort as ort_backend;
use crate::config::{Config, ConfigOverrides};
use crate::{engine, gpu, video};

#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Configuration file (default /etc/intelligent-video/config.toml when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub overrides: ConfigOverrides,
}

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(
    name: &'static str,
    status: Status,
    detail: impl Into<String>,
    fix: Option<String>,
) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
        fix,
    }
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Whether the daemon can serve with this configuration.
    pub ok: bool,
    pub checks: Vec<Check>,
}

/// Runs `doctor` and prints its report.
pub fn run(args: &DoctorArgs) -> ExitCode {
    let cfg = match Config::load(args.config.as_deref(), &args.overrides) {
        Ok(c) => c,
        Err(e) => {
            let r = Report {
                ok: false,
                checks: vec![check(
                    "config",
                    Status::Fail,
                    e.to_string(),
                    Some("fix the setting; `intelligent-video config check` shows the effective configuration".into()),
                )],
            };
            print(&r, args.json);
            return ExitCode::from(EX_CONFIG);
        }
    };
    let r = diagnose(&cfg);
    print(&r, args.json);
    if r.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print(r: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    for c in &r.checks {
        let tag = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        println!("[{tag}] {:<12} {}", c.name, c.detail);
        if let Some(f) = &c.fix {
            println!("       {:<12} fix: {f}", "");
        }
    }
    println!(
        "{}",
        if r.ok {
            "the daemon can serve with this configuration"
        } else {
            "the daemon cannot serve with this configuration: see FAIL above"
        }
    );
}

/// Every check, in the order the daemon meets them at start.
pub fn diagnose(cfg: &Config) -> Report {
    let mut checks = vec![check("config", Status::Ok, "valid".to_string(), None)];
    for w in cfg.warnings() {
        checks.push(check("config", Status::Warn, w, None));
    }
    checks.push(model(cfg));
    checks.push(writable_dir(
        "cache_dir",
        &cfg.cache_dir,
        "engines are built in memory at every start",
    ));
    checks.push(writable_dir(
        "state_dir",
        &cfg.state_dir,
        "streams added through the API cannot be saved",
    ));
    checks.push(socket(cfg));
    let ort = onnxruntime(cfg);
    let ort_dir = ort_backend::runtime_path().and_then(|p| p.parent().map(Path::to_path_buf));
    checks.push(ort);
    checks.push(cpu_check(cfg));
    checks.push(gpu_check());
    checks.extend(gpu_libraries(ort_dir.as_deref()));
    checks.extend(installed_runtimes(cfg));
    checks.extend(openvino_check(cfg));
    checks.push(backend_choice(cfg));
    checks.push(gstreamer(cfg));
    let ok = checks.iter().all(|c| c.status != Status::Fail);
    Report { ok, checks }
}

fn model(cfg: &Config) -> Check {
    match cfg.installed_model_dir() {
        Ok(dir) => check(
            "model",
            Status::Ok,
            format!("{} at {}", cfg.model, dir.display()),
            None,
        ),
        Err(e) => check(
            "model",
            Status::Fail,
            e,
            Some(format!("intelligent-video model pull {}", cfg.model)),
        ),
    }
}

/// The nearest existing folder of `dir` (itself when it exists), and whether this process may
/// write there: in `dir`, or create it. Nothing is created.
fn may_write(dir: &Path) -> (&Path, Result<(), std::io::Error>) {
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let access = nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK);
    (existing, access.map_err(std::io::Error::from))
}

fn writable_dir(name: &'static str, dir: &Path, consequence: &str) -> Check {
    match may_write(dir).1 {
        Ok(()) => check(name, Status::Ok, format!("{} is writable", dir.display()), None),
        Err(e) => check(
            name,
            Status::Warn,
            format!("{} is not writable by this user ({e}): {consequence}", dir.display()),
            Some(format!(
                "run doctor as the service user (sudo -u intelligent-video intelligent-video doctor), or give it {}",
                dir.display()
            )),
        ),
    }
}

fn socket(cfg: &Config) -> Check {
    if let Some(g) = &cfg.socket_group {
        if !matches!(nix::unistd::Group::from_name(g), Ok(Some(_))) {
            return check(
                "socket",
                Status::Fail,
                format!("socket_group {g:?} does not exist"),
                Some(format!("groupadd --system {g}, or unset socket_group")),
            );
        }
    }
    let dir = cfg.socket_path.parent().unwrap_or(Path::new("/"));
    let detail = format!(
        "{} (mode {:04o}{})",
        cfg.socket_path.display(),
        cfg.socket_mode.0,
        cfg.socket_group
            .as_ref()
            .map(|g| format!(", group {g}"))
            .unwrap_or_default()
    );
    let (existing, access) = may_write(dir);
    if std::env::var_os("LISTEN_FDS").is_some() || access.is_ok() {
        check("socket", Status::Ok, detail, None)
    } else {
        check(
            "socket",
            Status::Fail,
            format!("{detail}: this user cannot create it in {}", existing.display()),
            Some("use the packaged socket unit (systemctl start intelligent-video.socket), or set IV_SOCKET_PATH to a writable place".into()),
        )
    }
}

fn onnxruntime(cfg: &Config) -> Check {
    match ort_backend::ensure_runtime(engine::library(&cfg.engine()).as_deref()) {
        Ok(v) => check(
            "onnxruntime",
            Status::Ok,
            format!(
                "{} at {}; providers: {}",
                v,
                ort_backend::runtime_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                ort_backend::compiled_providers().join(", ")
            ),
            None,
        ),
        Err(e) => check(
            "onnxruntime",
            Status::Fail,
            e.to_string(),
            Some("reinstall the package (it ships /usr/lib/intelligent-video/libonnxruntime.so.1.31.1), set IV_ONNXRUNTIME_PATH, or go back to the packaged library with `intelligent-video runtime use packaged`".into()),
        ),
    }
}

fn cpu_check(cfg: &Config) -> Check {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let detail = match (
        cfg.threads,
        crate::cpu::performance_cores(Path::new(crate::cpu::SYSFS_CPU)),
    ) {
        (0, Some(big)) => format!(
            "{cores} cores, heterogeneous: inference threads on the performance cores {big:?}"
        ),
        (0, None) => format!("{cores} cores: one inference thread per core"),
        (n, _) => format!("{cores} cores: {n} inference threads (threads)"),
    };
    check("cpu", Status::Ok, detail, None)
}

fn gpu_check() -> Check {
    let g = gpu::discover();
    match &g.reason {
        None => check(
            "gpu",
            Status::Ok,
            format!(
                "{} (compute capability {}, {} MiB, driver {}, {} device(s))",
                g.name.as_deref().unwrap_or("unknown"),
                g.compute_capability.as_deref().unwrap_or("?"),
                g.memory_mb
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "?".into()),
                g.driver_version.as_deref().unwrap_or("?"),
                g.device_count
            ),
            None,
        ),
        Some(r) => check(
            "gpu",
            Status::Warn,
            format!("no GPU: {r}; the CPU serves"),
            None,
        ),
    }
}

/// CUDA runtime, cuDNN and TensorRT as ONNX Runtime's GPU providers need them.
fn gpu_libraries(ort_dir: Option<&Path>) -> Vec<Check> {
    let lib = |name: &'static str, r: Result<String, String>, fix: &str| match r {
        Ok(v) => check(name, Status::Ok, v, None),
        Err(e) => check(name, Status::Warn, e, Some(fix.to_string())),
    };
    let mut v = vec![
        lib(
            "cuda",
            gpu::cuda_runtime_version(ort_dir),
            "for the CUDA and TensorRT backends: intelligent-video runtime install --pip onnxruntime-gpu==1.31.1 (brings the CUDA 13 libraries), or install the CUDA 13 runtime (libcudart.so.13)",
        ),
        lib(
            "cudnn",
            gpu::cudnn_version(ort_dir),
            "for the CUDA backend: intelligent-video runtime install --pip onnxruntime-gpu==1.31.1 (brings cuDNN 9), or install cuDNN 9 for CUDA 13 (libcudnn.so.9)",
        ),
    ];
    let trt = match (gpu::tensorrt_version(ort_dir), gpu::tensorrt11_version(ort_dir)) {
        (Ok(v), _) => check("tensorrt", Status::Ok, v, None),
        (Err(_), Ok(v11)) => check(
            "tensorrt",
            Status::Warn,
            format!("TensorRT {v11} found, but ONNX Runtime's TensorRT provider needs TensorRT 10 (libnvinfer.so.10)"),
            Some("install TensorRT 10 (libnvinfer10, libnvonnxparsers10) beside it".into()),
        ),
        (Err(e), Err(_)) => check(
            "tensorrt",
            Status::Warn,
            e,
            Some("for the TensorRT backend: install TensorRT 10 (libnvinfer10, libnvonnxparsers10)".into()),
        ),
    };
    v.push(trt);
    v
}

/// Each installed build's providers: which load on this host and, for the others, the library the
/// loader misses and what installs it. The active build is probed again now (in a child process, its
/// CUDA libraries preloaded as the daemon does); the others show what their install found.
fn installed_runtimes(cfg: &Config) -> Vec<Check> {
    let Ok(all) = crate::runtimes::list(&cfg.state_dir) else {
        return Vec::new();
    };
    all.iter()
        .filter(|r| r.info.kind == crate::runtimes::RuntimeKind::Onnxruntime)
        .map(|r| {
            let (libs, when) = if r.active {
                match super::runtime::probe_provider_libraries(&cfg.state_dir, &r.path) {
                    Ok(libs) => (libs, "now"),
                    Err(e) => {
                        return check(
                            "runtime",
                            Status::Warn,
                            format!("{} (active) does not load: {e:#}", r.info.name),
                            Some(
                                "intelligent-video runtime use packaged, or install it again"
                                    .into(),
                            ),
                        )
                    }
                }
            } else {
                (r.info.provider_libraries.clone(), "at install")
            };
            runtime_check(&r.info.name, r.active, &libs, when)
        })
        .collect()
}

/// The OpenVINO runtime, when one is installed or configured (or asked for): its version and
/// devices, and what `optimize` measured of it against ONNX Runtime on this host.
fn openvino_check(cfg: &Config) -> Option<Check> {
    let engine = cfg.engine();
    let forced = cfg.optimization_backend == crate::config::BackendPreference::Openvino;
    let Some(lib) = engine::openvino_library(&engine) else {
        return forced.then(|| {
            check(
                "openvino",
                Status::Warn,
                "optimization_backend is openvino but no OpenVINO runtime is installed: the CPU engine serves",
                Some("intelligent-video runtime install --pip openvino==2026.4.1".into()),
            )
        });
    };
    let (version, devices) = match crate::backend::openvino::describe(&lib) {
        Ok(v) => v,
        Err(e) => {
            return Some(check(
                "openvino",
                Status::Warn,
                format!("{}: {e}", lib.display()),
                Some("install it again: intelligent-video runtime install --pip openvino==2026.4.1 --force".into()),
            ))
        }
    };
    let measured = cfg
        .installed_model_dir()
        .ok()
        .and_then(|d| crate::cache::model_fingerprint(&d).ok())
        .and_then(|f| engine::cpu_tier::load(&engine, &f));
    let (what, fix) = match &measured {
        Some(m) => (
            format!(
                "measured here: OpenVINO {} {:.0} ms, ONNX Runtime {} {:.0} ms ({:.2}x): {}",
                m.openvino_precision,
                m.openvino_ms,
                m.onnxruntime_precision,
                m.onnxruntime_ms,
                m.ratio(),
                if m.openvino_faster() {
                    "auto uses OpenVINO"
                } else {
                    "auto keeps ONNX Runtime"
                }
            ),
            None,
        ),
        None => (
            "not measured on this host yet: auto keeps ONNX Runtime".to_string(),
            Some(
                "intelligent-video optimize (times both engines and stores the result)".to_string(),
            ),
        ),
    };
    Some(check(
        "openvino",
        Status::Ok,
        format!(
            "OpenVINO {version} at {} (devices: {}; {} {}); {what}",
            lib.display(),
            devices.join(", "),
            cfg.openvino_device,
            cfg.openvino_precision.name()
        ),
        fix,
    ))
}

/// One build's verdict from its provider libraries' statuses ("ok" or the loader's reason).
fn runtime_check(name: &str, active: bool, libs: &[(String, String)], when: &str) -> Check {
    let provider = |lib: &str| {
        lib.trim_start_matches("libonnxruntime_providers_")
            .trim_end_matches(".so")
            .to_string()
    };
    if libs.is_empty() {
        return check(
            "runtime",
            Status::Ok,
            format!(
                "{name}{}: CPU only (no GPU provider libraries)",
                if active { " (active)" } else { "" }
            ),
            None,
        );
    }
    let ok: Vec<String> = libs
        .iter()
        .filter(|(_, s)| s == "ok")
        .map(|(l, _)| provider(l))
        .collect();
    let missing: Vec<&(String, String)> = libs.iter().filter(|(_, s)| s != "ok").collect();
    let mut detail = format!(
        "{name}{}: providers that load {when}: {}",
        if active { " (active)" } else { "" },
        if ok.is_empty() {
            "none".to_string()
        } else {
            ok.join(", ")
        }
    );
    for (lib, why) in &missing {
        detail.push_str(&format!("; {} cannot: {why}", provider(lib)));
    }
    let fix = missing
        .first()
        .map(|(_, why)| missing_library_fix(why).to_string());
    let status = if missing.is_empty() {
        Status::Ok
    } else {
        Status::Warn
    };
    check("runtime", status, detail, fix)
}

/// The one command (or step) that supplies the library a loader message names.
fn missing_library_fix(why: &str) -> &'static str {
    if why.contains("libcuda.so") {
        "install the NVIDIA driver (it provides libcuda.so.1; the build carries the rest of CUDA)"
    } else if why.contains("libnvinfer") || why.contains("libnvonnxparser") {
        "TensorRT 10: sudo apt install libnvinfer10 libnvonnxparsers10 (NVIDIA's repository); the CUDA tier does not need it"
    } else {
        "install the build again with its CUDA libraries: intelligent-video runtime install --pip onnxruntime-gpu==1.31.1 --force"
    }
}

fn backend_choice(cfg: &Config) -> Check {
    let dir = cfg.installed_model_dir().ok();
    let (chosen, fallbacks) = engine::first_available(&cfg.engine(), dir.as_deref());
    let why = fallbacks
        .iter()
        .map(|f| format!("{} skipped: {}", f.backend, f.reason))
        .collect::<Vec<_>>()
        .join("; ");
    let detail = format!(
        "{} would serve (preference {}){}",
        chosen.name(),
        serde_json::to_value(cfg.optimization_backend)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        if why.is_empty() {
            String::new()
        } else {
            format!("; {why}")
        }
    );
    let status = if fallbacks.is_empty() {
        Status::Ok
    } else {
        Status::Warn
    };
    check("backend", status, detail, None)
}

/// GStreamer, for video streams: fails only when streams are configured and cannot be decoded.
fn gstreamer(cfg: &Config) -> Check {
    // Without streams configured, a GStreamer problem only stops streams added later.
    let blocked = |detail: String, fix: &str| {
        let status = if cfg.streams.is_empty() {
            Status::Warn
        } else {
            Status::Fail
        };
        check("gstreamer", status, detail, Some(fix.to_string()))
    };
    let Some(version) = video::source::gstreamer_version() else {
        return blocked(
            "GStreamer cannot be initialised: video streams cannot run".into(),
            "apt install gstreamer1.0-plugins-base gstreamer1.0-plugins-good",
        );
    };
    let core = video::source::missing_elements(&[
        "uridecodebin3",
        "decodebin3",
        "videoconvert",
        "appsink",
    ]);
    let optional = video::source::missing_elements(&[
        "rtspsrc",
        "souphttpsrc",
        "v4l2src",
        "avdec_h264",
        "avdec_h265",
    ]);
    let nvidia = ["nvh264dec", "nvh265dec", "nvv4l2decoder"];
    let absent = video::source::missing_elements(&nvidia);
    let hardware: Vec<&str> = nvidia.into_iter().filter(|e| !absent.contains(e)).collect();
    let hw = if hardware.is_empty() {
        "no NVIDIA hardware decoder (software decoding)".to_string()
    } else {
        format!("NVIDIA decoders: {}", hardware.join(", "))
    };
    if !core.is_empty() {
        return blocked(
            format!(
                "{version}; missing elements {}: video streams cannot run",
                core.join(", ")
            ),
            "apt install gstreamer1.0-plugins-base",
        );
    }
    if !optional.is_empty() {
        return check(
            "gstreamer",
            Status::Warn,
            format!(
                "{version}; {hw}; missing {} (those sources or codecs will fail)",
                optional.join(", ")
            ),
            Some("apt install gstreamer1.0-plugins-good gstreamer1.0-libav".into()),
        );
    }
    check("gstreamer", Status::Ok, format!("{version}; {hw}"), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_check_names_each_missing_library_and_its_fix() {
        let libs = vec![
            (
                "libonnxruntime_providers_cuda.so".to_string(),
                "libcuda.so.1: cannot open shared object file: No such file or directory"
                    .to_string(),
            ),
            (
                "libonnxruntime_providers_tensorrt.so".to_string(),
                "libnvinfer.so.10: cannot open shared object file: No such file or directory"
                    .to_string(),
            ),
        ];
        let c = runtime_check("onnxruntime-gpu-1.31.1", true, &libs, "now");
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.detail,
            "onnxruntime-gpu-1.31.1 (active): providers that load now: none; cuda cannot: libcuda.so.1: cannot open shared object file: No such file or directory; tensorrt cannot: libnvinfer.so.10: cannot open shared object file: No such file or directory"
        );
        assert!(c
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("NVIDIA driver")));
        assert!(missing_library_fix("libnvinfer.so.10: cannot open").contains("libnvinfer10"));
        assert!(missing_library_fix("libcublasLt.so.13: cannot open").contains("--pip"));
        let ok = runtime_check(
            "b",
            false,
            &[("libonnxruntime_providers_cuda.so".into(), "ok".into())],
            "at install",
        );
        assert_eq!(
            (ok.status, ok.detail.as_str()),
            (Status::Ok, "b: providers that load at install: cuda")
        );
    }
}

//! `runtime install|list|use|rm`: a build installed from PyPI's CPU wheel is the one the daemon
//! and `doctor` load; the real `onnxruntime-gpu` wheel and its CUDA wheels install with `--pip`,
//! list CUDA and TensorRT, preload the CUDA libraries so that the CUDA provider misses only the
//! driver, and the daemon falls back to the CPU with the reasons;
//! bad sources and names (and a folder's link out of it) are refused clearly; installed files get
//! fixed modes whatever the source's and the umask; as root, a build another user could replace is
//! not loaded, and a root install into the service user's state folder is probed as that user.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::daemon::{tcp_request, Daemon};
use crate::support::{bin, fixtures};

fn runtime(state: &Path, args: &[&str]) -> std::process::Output {
    runtime_command(state, args).output().expect("runtime runs")
}

/// `runtime ARGS… --state-dir STATE`, the ONNX Runtime path of the test's environment left out.
pub(crate) fn runtime_command(state: &Path, args: &[&str]) -> std::process::Command {
    let mut c = bin::command();
    c.arg("runtime")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env_remove("IV_ONNXRUNTIME_PATH");
    c
}

/// A command's stdout and stderr, for assertion messages.
pub(crate) fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The first wheel in `dir` whose name starts with `prefix`.
fn wheel_in(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut w: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".whl"))
        })
        .collect();
    w.sort();
    w.pop()
}

fn list(state: &Path) -> Value {
    let out = runtime(state, &["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("list JSON")
}

/// `doctor --json` with `state` as the state folder and the rest under `tmp`.
fn doctor_report(state: &Path, tmp: &Path) -> Value {
    let doc = bin::command()
        .args(["doctor", "--json"])
        .env("IV_STATE_DIR", state)
        .env("IV_CACHE_DIR", tmp.join("cache"))
        .env("IV_SOCKET_PATH", tmp.join("run/d.sock"))
        .env("IV_MODEL", fixtures::model_dir("tiny-a"))
        .output()
        .expect("doctor runs");
    serde_json::from_slice(&doc.stdout).expect("doctor JSON")
}

/// The CPU wheel the Makefile downloads (`make ort`).
fn cpu_wheel() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/onnxruntime/wheel");
    wheel_in(&dir, "onnxruntime-")
        .expect("the onnxruntime wheel in target/onnxruntime/wheel (make ort)")
}

#[test]
fn an_installed_cpu_wheel_is_what_doctor_and_the_daemon_load() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    let out = runtime(&state, &["install", cpu_wheel().to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("installed onnxruntime-1.31.1 (ONNX Runtime 1.31.1)"),
        "{t}"
    );

    let l = list(&state);
    assert_eq!(l.as_array().map(Vec::len), Some(1), "{l}");
    assert_eq!(l[0]["name"], "onnxruntime-1.31.1");
    assert_eq!(l[0]["active"], true);
    assert_eq!(l[0]["version"], "1.31.1");
    assert_eq!(
        l[0]["providers"],
        serde_json::json!(["CPUExecutionProvider"])
    );
    let lib = state.join("runtimes/onnxruntime-1.31.1/libonnxruntime.so.1.31.1");
    assert!(lib.is_file());

    // doctor names it as the library it loads.
    let report = doctor_report(&state, tmp.path());
    let ort = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "onnxruntime"))
        .expect("onnxruntime check");
    assert_eq!(ort["status"], "ok", "{ort}");
    let detail = ort["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with(&format!("1.31.1 at {}", lib.display())),
        "{detail}"
    );

    // The daemon loads the installed build, and detects as usual.
    let model = fixtures::model_dir("tiny-a");
    let state_s = state.to_str().expect("utf8");
    let mut d = Daemon::start_with(model.to_str().expect("utf8"), &[("IV_STATE_DIR", state_s)]);
    d.wait_ready();
    let o = tcp_request(d.port, "GET", "/api/optimization")
        .expect("optimization")
        .json();
    assert_eq!(o["onnxruntime_path"], lib.to_str().expect("utf8"), "{o}");
    d.assert_detects();
    drop(d);

    // Installing the same name again is refused; --force replaces it.
    let again = runtime(&state, &["install", cpu_wheel().to_str().expect("utf8")]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("is installed already"),
        "{}",
        text(&again)
    );
    let forced = runtime(
        &state,
        &["install", "--force", cpu_wheel().to_str().expect("utf8")],
    );
    assert!(forced.status.success(), "{}", text(&forced));

    // `use packaged` goes back to the shipped library without removing anything; rm removes.
    let u = runtime(&state, &["use", "packaged"]);
    assert!(u.status.success(), "{}", text(&u));
    assert_eq!(list(&state)[0]["active"], false);
    let u = runtime(&state, &["use", "onnxruntime-1.31.1"]);
    assert!(u.status.success(), "{}", text(&u));
    let rm = runtime(&state, &["rm", "onnxruntime-1.31.1"]);
    assert!(rm.status.success(), "{}", text(&rm));
    assert!(
        text(&rm).contains("packaged library is active again"),
        "{}",
        text(&rm)
    );
    assert_eq!(list(&state), serde_json::json!([]));
    assert!(!state.join("runtimes/onnxruntime-1.31.1").exists());
}

#[test]
fn bad_sources_and_names_are_refused_and_leave_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    let not_ort = tmp.path().join("libs");
    std::fs::create_dir(&not_ort).expect("mkdir");
    std::fs::write(not_ort.join("libfoo.so"), b"x").expect("write");
    // A library file that is not a shared object: found, but it does not load.
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).expect("mkdir");
    std::fs::write(broken.join("libonnxruntime.so.1.31.1"), b"not an ELF").expect("write");
    // A provider "library" that is a link to a file outside the folder (/etc/shadow, say).
    let leaky = tmp.path().join("leaky");
    std::fs::create_dir(&leaky).expect("mkdir");
    std::fs::write(leaky.join("libonnxruntime.so.1.31.1"), b"not an ELF").expect("write");
    std::fs::write(tmp.path().join("secret"), b"root:x").expect("write");
    std::os::unix::fs::symlink(
        tmp.path().join("secret"),
        leaky.join("libonnxruntime_providers_x.so"),
    )
    .expect("link");
    let cases: [(&[&str], &str); 7] = [
        (
            &["install", "/nonexistent/ort.whl"],
            "no such file or folder",
        ),
        (
            &["install", not_ort.to_str().expect("utf8")],
            "no libonnxruntime.so* nor libopenvino_c.so* inside",
        ),
        (
            &["install", broken.to_str().expect("utf8")],
            "does not load",
        ),
        (
            &["install", leaky.to_str().expect("utf8")],
            "libonnxruntime_providers_x.so is a symbolic link to",
        ),
        (
            &["install", "--name", "../x", broken.to_str().expect("utf8")],
            "invalid runtime name",
        ),
        (&["use", "nothing-here"], "no installed runtime named"),
        (&["rm", "nothing-here"], "no installed runtime named"),
    ];
    for (args, want) in cases {
        let out = runtime(&state, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(want), "{args:?}: {}", text(&out));
    }
    // --pip: a Python without pip, and a spec pip cannot find (offline, an empty link folder), are
    // clear errors that leave no download folder.
    let empty = tmp.path().join("no-wheels");
    std::fs::create_dir(&empty).expect("mkdir");
    let pip = |python: &str| {
        bin::command()
            .args([
                "runtime",
                "install",
                "--pip",
                "onnxruntime-gpu==1.31.1",
                "--state-dir",
            ])
            .arg(&state)
            .env("PYTHON", python)
            .env("PIP_NO_INDEX", "1")
            .env("PIP_FIND_LINKS", &empty)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .output()
            .expect("runtime runs")
    };
    let out = pip("/nonexistent/python3");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("install python3-pip, or download the wheels on another machine"),
        "{}",
        text(&out)
    );
    let out = pip("python3");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("pip download failed"), "{}", text(&out));
    // No staging folder or half install is left behind.
    let left: Vec<_> = std::fs::read_dir(state.join("runtimes"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// The mode bits of a path (permissions, setuid/setgid and sticky), in octal.
fn mode(p: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    format!(
        "{:o}",
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    )
}

/// The CPU library the Makefile extracts (`make ort`).
fn cpu_library() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/onnxruntime/libonnxruntime.so.1.31.1")
}

#[test]
fn installed_files_get_fixed_modes_whatever_the_source_and_umask() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    let lib = src.join("libonnxruntime.so.1.31.1");
    std::fs::copy(cpu_library(), &lib).expect("copy the library");
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let state = tmp.path().join("state");
    // `sh` sets a tight umask and runs the binary with the test environment.
    let inner = bin::command();
    let mut c = std::process::Command::new("sh");
    c.env_clear();
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    let out = c
        .args(["-c", "umask 077 && exec \"$0\" \"$@\"", bin::PATH])
        .args(["runtime", "install", "--name", "modes", "--state-dir"])
        .arg(&state)
        .arg(&src)
        .output()
        .expect("install runs");
    assert!(out.status.success(), "{}", text(&out));
    let dir = state.join("runtimes/modes");
    assert_eq!(mode(&dir.join("libonnxruntime.so.1.31.1")), "644");
    assert_eq!(mode(&dir.join("runtime.json")), "644");
    assert_eq!(mode(&dir), "755");
    assert_eq!(mode(&state.join("runtimes")), "755");
}

/// Run as root (as the tests are here): a library that another user could replace is not loaded,
/// naming the path and why; a root install into a state folder the service user owns probes the
/// build as that user, and the service user loads it.
#[test]
fn root_does_not_load_a_runtime_other_users_can_write() {
    use std::os::unix::fs::{chown, PermissionsExt};
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // A folder anyone can write to.
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::copy(cpu_library(), open.join("libonnxruntime.so.1.31.1")).expect("copy");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = bin::command()
        .args(["runtime", "probe"])
        .arg(&open)
        .output()
        .expect("probe runs");
    assert!(!out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "{} is writable by other users (mode 0777)",
            open.display()
        )),
        "{t}"
    );

    // The packaged layout: the state folder belongs to the service user (65534 here).
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    chown(&state, Some(65534), Some(65534)).expect("chown");
    let out = runtime(&state, &["install", cpu_wheel().to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out));
    let doctor = |uid: u32| {
        let out = bin::command()
            .args(["doctor", "--json"])
            .env("IV_STATE_DIR", &state)
            .env("IV_CACHE_DIR", tmp.path().join("cache"))
            .env("IV_SOCKET_PATH", tmp.path().join("run/d.sock"))
            .env("IV_MODEL", fixtures::model_dir("tiny-a"))
            .uid(uid)
            .gid(uid)
            .output()
            .expect("doctor runs");
        let report: Value = serde_json::from_slice(&out.stdout).expect("doctor JSON");
        report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "onnxruntime"))
            .expect("onnxruntime check")
            .clone()
    };
    let as_root = doctor(0);
    assert_eq!(as_root["status"], "fail", "{as_root}");
    let detail = as_root["detail"].as_str().expect("detail");
    assert!(
        detail.contains(&format!("{} is owned by uid 65534", state.display())),
        "{detail}"
    );
    let as_service = doctor(65534);
    assert_eq!(as_service["status"], "ok", "{as_service}");
}

/// The real `onnxruntime-gpu` wheel (CUDA 13, TensorRT 10 provider) and the `nvidia-*` wheels of its
/// `cuda` and `cudnn` extras, installed with `runtime install --pip` from the folder
/// `TEST_ONNXRUNTIME_GPU_WHEELS` names through pip's own settings (`PIP_NO_INDEX`,
/// `PIP_FIND_LINKS`: no network); `.ci/run` downloads them, and they are required under CI.
#[test]
fn the_gpu_wheels_install_with_pip_and_the_daemon_falls_back_with_reasons() {
    let Some(wheels) = std::env::var_os("TEST_ONNXRUNTIME_GPU_WHEELS").map(PathBuf::from) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "TEST_ONNXRUNTIME_GPU_WHEELS must name the folder of the GPU wheels under CI"
        );
        eprintln!("skipped: TEST_ONNXRUNTIME_GPU_WHEELS is not set");
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    // TensorRT-RTX's plugin EP wheel is published for x86_64 only.
    let rtx = wheel_in(&wheels, "onnxruntime_ep_nv_tensorrt_rtx").is_some();
    let mut specs = vec!["onnxruntime-gpu==1.31.1"];
    if rtx {
        specs.push("onnxruntime-ep-nv-tensorrt-rtx-cu13==0.5.0");
    }
    let out = bin::command()
        .args(["runtime", "install", "--pip"])
        .args(&specs)
        .arg("--state-dir")
        .arg(&state)
        .env("PIP_NO_INDEX", "1")
        .env("PIP_FIND_LINKS", &wheels)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .output()
        .expect("runtime runs");
    assert!(out.status.success(), "{}", text(&out));
    let l = list(&state);
    assert_eq!(l[0]["name"], "onnxruntime-gpu-1.31.1", "{l}");
    assert_eq!(
        l[0]["providers"],
        serde_json::json!([
            "CPUExecutionProvider",
            "CUDAExecutionProvider",
            "TensorrtExecutionProvider"
        ])
    );
    let files = l[0]["files"].to_string();
    for f in [
        "libonnxruntime.so.1.31.1",
        "libonnxruntime_providers_cuda.so",
        "libonnxruntime_providers_shared.so",
        "libonnxruntime_providers_tensorrt.so",
        "libcudnn_graph.so.9",
    ] {
        assert!(files.contains(f), "{f} not installed: {files}");
    }
    assert!(
        !files.contains("numpy") && !files.contains("libnvblas"),
        "{files}"
    );
    // The CUDA libraries it carries load from its folder, in dependency order, with no driver.
    let carried: Vec<(String, String)> = l[0]["cuda_libraries"]
        .as_array()
        .expect("cuda_libraries")
        .iter()
        .map(|p| {
            (
                p["library"].as_str().expect("library").to_string(),
                p["status"].as_str().expect("status").to_string(),
            )
        })
        .collect();
    let names: Vec<&str> = carried.iter().map(|(n, _)| n.as_str()).collect();
    let mut expected = vec!["libcudart.so.13"];
    if rtx {
        expected.extend([
            "libtensorrt_rtx.so.1.7.1",
            "libtensorrt_onnxparser_rtx.so.1.7.1",
        ]);
    }
    expected.extend([
        "libnvJitLink.so.13",
        "libcublasLt.so.13",
        "libcublas.so.13",
        "libcurand.so.10",
        "libcufft.so.12",
        "libnvrtc.so.13",
        "libcudnn.so.9",
    ]);
    assert_eq!(names, expected);
    assert!(carried.iter().all(|(_, s)| s == "loaded"), "{carried:?}");
    // The plugin EP registers with ONNX Runtime, or its registration error is the reason given.
    let plugins = l[0]["plugins"].as_array().expect("plugins");
    assert_eq!(plugins.len(), usize::from(rtx), "{plugins:?}");
    if let Some(p) = plugins.first() {
        assert_eq!(p[0], "libonnxruntime_providers_nv_tensorrt_rtx.so");
        let status = p[1].as_str().expect("status");
        if intelligent_video::gpu::discover().available {
            assert!(status.starts_with("registered"), "{status}");
        } else {
            assert_eq!(
                status,
                "cannot be registered: libcuda.so.1: cannot open shared object file: No such file or directory"
            );
        }
    }
    assert!(
        l[0]["cuda"].as_str().is_some_and(|v| v.starts_with("13.")),
        "{l}"
    );
    assert!(
        l[0]["cudnn"].as_str().is_some_and(|v| v.starts_with("9.")),
        "{l}"
    );
    // With them preloaded, the CUDA provider misses nothing but the NVIDIA driver (where there is
    // none); the TensorRT provider misses TensorRT 10, which no wheel here carries.
    let libs = l[0]["provider_libraries"]
        .as_array()
        .expect("provider_libraries");
    assert_eq!(libs.len(), 2 + usize::from(rtx), "{libs:?}");
    let gpu = intelligent_video::gpu::discover();
    for pair in libs {
        let (lib, status) = (
            pair[0].as_str().expect("name"),
            pair[1].as_str().expect("status"),
        );
        match lib {
            "libonnxruntime_providers_cuda.so" | "libonnxruntime_providers_nv_tensorrt_rtx.so"
                if !gpu.available =>
            {
                assert_eq!(
                    status,
                    "libcuda.so.1: cannot open shared object file: No such file or directory"
                )
            }
            "libonnxruntime_providers_tensorrt.so" => assert!(
                status == "ok" || status.starts_with("libnvinfer.so.10: cannot open"),
                "{pair}"
            ),
            _ => assert!(status == "ok" || status.contains("cannot open"), "{pair}"),
        }
    }
    // doctor probes the active build again and names what each provider misses, with the fix.
    let report = doctor_report(&state, tmp.path());
    let rt = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "runtime"))
        .expect("runtime check");
    let detail = rt["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with("onnxruntime-gpu-1.31.1 (active): providers that load now: "),
        "{rt}"
    );
    if !gpu.available {
        assert_eq!(rt["status"], "warn", "{rt}");
        assert!(
            detail.contains("cuda cannot: libcuda.so.1: cannot open shared object file"),
            "{rt}"
        );
        assert!(
            rt["fix"]
                .as_str()
                .is_some_and(|f| f.contains("NVIDIA driver")),
            "{rt}"
        );
    }
    let leftovers: Vec<String> = std::fs::read_dir(state.join("runtimes"))
        .expect("runtimes")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "downloads or staging left: {leftovers:?}"
    );

    // The daemon loads it, and with no usable GPU here serves on the CPU, saying why.
    let model = fixtures::model_dir("tiny-a");
    let mut d = Daemon::start_with(
        model.to_str().expect("utf8"),
        &[
            ("IV_STATE_DIR", state.to_str().expect("utf8")),
            ("IV_OPTIMIZATION_BACKEND", "auto"),
        ],
    );
    d.wait_ready();
    let o = tcp_request(d.port, "GET", "/api/optimization")
        .expect("optimization")
        .json();
    assert!(
        o["onnxruntime_path"].as_str().is_some_and(
            |p| p.ends_with("runtimes/onnxruntime-gpu-1.31.1/libonnxruntime.so.1.31.1")
        ),
        "{o}"
    );
    let backend = o["optimization"]["backend"].as_str().expect("backend");
    if o["gpu_available"] == false {
        assert_eq!(backend, "cpu", "{o}");
        let fallbacks = o["optimization"]["fallbacks"]
            .as_array()
            .expect("fallbacks");
        let names: Vec<_> = fallbacks.iter().map(|f| f["backend"].clone()).collect();
        assert_eq!(names, ["tensorrt", "tensorrt_rtx", "cuda"], "{o}");
        assert!(
            fallbacks.iter().all(|f| f["reason"]
                .as_str()
                .is_some_and(|r| r.contains("NVIDIA driver"))),
            "{o}"
        );
    }
    if o["gpu_available"] == false {
        assert_eq!(
            o["cuda_libraries"],
            serde_json::json!([]),
            "no driver: nothing preloaded"
        );
    }
    d.assert_detects();
}

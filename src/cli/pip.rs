//! `runtime install --pip SPEC…`: the wheels of a GPU build fetched with pip for this machine's
//! architecture and C library (`pip download --platform`), whatever Python runs pip. The project
//! never names an index: pip's own configuration decides (`pip.conf`, `PIP_INDEX_URL`,
//! `PIP_FIND_LINKS`, `PIP_NO_INDEX`, proxies).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// The extras added to a bare `onnxruntime-gpu` spec: its CUDA 13 libraries and cuDNN 9 (which
/// brings cuBLAS).
const GPU_EXTRAS: &str = "[cuda,cudnn]";

/// Wheels pip downloaded into a folder of their own (removed when this is dropped).
pub(crate) struct Downloaded {
    dir: PathBuf,
    pub(crate) wheels: Vec<PathBuf>,
}

impl Drop for Downloaded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `spec` with [`GPU_EXTRAS`] when it names `onnxruntime-gpu` without extras.
pub(crate) fn with_gpu_extras(spec: &str) -> String {
    let end = spec
        .find(|c: char| "[=<>!~; @".contains(c))
        .unwrap_or(spec.len());
    let (name, rest) = spec.split_at(end);
    let normalized = name.to_ascii_lowercase().replace(['_', '.'], "-");
    if normalized == "onnxruntime-gpu" && !rest.starts_with('[') {
        format!("{name}{GPU_EXTRAS}{rest}")
    } else {
        spec.to_string()
    }
}

/// pip's `--platform` tags this machine can load: `manylinux_2_N_<arch>` for every glibc up to
/// this one's, and the legacy aliases (manylinux2014 = 2.17, manylinux2010 = 2.12, manylinux1 =
/// 2.5), newest first.
pub(crate) fn platform_tags(arch: &str, glibc_minor: u32) -> Vec<String> {
    let mut tags: Vec<String> = (5..=glibc_minor)
        .rev()
        .map(|m| format!("manylinux_2_{m}_{arch}"))
        .collect();
    for (alias, minor) in [
        ("manylinux2014", 17),
        ("manylinux2010", 12),
        ("manylinux1", 5),
    ] {
        if glibc_minor >= minor && (minor != 12 && minor != 5 || arch == "x86_64") {
            tags.push(format!("{alias}_{arch}"));
        }
    }
    tags
}

/// This process's glibc minor version (2.x).
fn glibc_minor() -> anyhow::Result<u32> {
    // SAFETY: gnu_get_libc_version takes no arguments and returns a static NUL-terminated string.
    let v = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    let text = v.to_string_lossy();
    text.split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the C library's version from {text:?}"))
}

/// Downloads `specs` (with their dependencies) for this machine with `python3 -m pip download`
/// (`$PYTHON` to use another interpreter) into a new folder `dir` (beside where they will be
/// installed: gigabytes, which a tmpfs `/tmp` may not hold).
pub(crate) fn download(specs: &[String], dir: PathBuf) -> anyhow::Result<Downloaded> {
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = Downloaded {
        dir,
        wheels: Vec::new(),
    };
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "pip", "download", "--only-binary=:all:", "--dest"])
        .arg(&dir.dir);
    for tag in platform_tags(std::env::consts::ARCH, glibc_minor()?) {
        cmd.args(["--platform", &tag]);
    }
    cmd.args(specs.iter().map(|s| with_gpu_extras(s)));
    // pip's progress and messages go to stderr; stdout stays this command's.
    cmd.stdout(Stdio::from(std::io::stderr().as_fd_owned()?));
    eprintln!("downloading with pip: {}", specs.join(" "));
    let status = cmd.status().with_context(|| {
        format!(
            "cannot run {} -m pip (install python3-pip, or download the wheels on another machine and run `intelligent-video runtime install FILE…`)",
            python.to_string_lossy()
        )
    })?;
    if !status.success() {
        bail!("pip download failed ({status}); its messages are above");
    }
    let mut dir = dir;
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(&dir.dir)
        .context("cannot list the downloaded wheels")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    wheels.sort();
    dir.wheels = wheels;
    Ok(dir)
}

/// A duplicate of stderr, to hand to a child as its stdout.
trait StderrFd {
    fn as_fd_owned(&self) -> anyhow::Result<std::os::fd::OwnedFd>;
}

impl StderrFd for std::io::Stderr {
    fn as_fd_owned(&self) -> anyhow::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        Ok(self.as_fd().try_clone_to_owned()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_gpu_spec_gets_the_cuda_extras() {
        assert_eq!(
            with_gpu_extras("onnxruntime-gpu==1.31.1"),
            "onnxruntime-gpu[cuda,cudnn]==1.31.1"
        );
        assert_eq!(
            with_gpu_extras("onnxruntime_gpu"),
            "onnxruntime_gpu[cuda,cudnn]"
        );
        for kept in [
            "onnxruntime-gpu[cuda]==1.31.1",
            "onnxruntime==1.31.1",
            "nvidia-cudnn-cu13",
            "onnxruntime-gpu-extra==1",
        ] {
            assert_eq!(with_gpu_extras(kept), kept);
        }
    }

    #[test]
    fn platform_tags_stop_at_this_glibc() {
        let arm = platform_tags("aarch64", 36);
        assert_eq!(
            arm.first().map(String::as_str),
            Some("manylinux_2_36_aarch64")
        );
        assert!(arm.contains(&"manylinux_2_34_aarch64".to_string()));
        assert!(arm.contains(&"manylinux2014_aarch64".to_string()));
        assert!(!arm
            .iter()
            .any(|t| t.contains("x86_64") || t.starts_with("manylinux1")));
        let old = platform_tags("x86_64", 28);
        assert!(!old.contains(&"manylinux_2_34_x86_64".to_string()));
        assert!(old.contains(&"manylinux1_x86_64".to_string()));
    }
}

//! Loading the CUDA libraries a GPU build carries before ONNX Runtime loads its CUDA or TensorRT
//! provider, as ONNX Runtime's Python package does with the `nvidia-*` wheels
//! (`onnxruntime.preload_dlls`). The providers name their dependencies by soname (`libcublas.so.13`)
//! and have no search path of their own, so without this the system loader would look only in
//! `LD_LIBRARY_PATH` and `ldconfig`'s cache. Each library is opened from the build's folder by its
//! path, dependencies first, and stays loaded: when the provider is loaded, the loader finds each
//! soname already there, and a copy elsewhere on the system is used only for what the build does
//! not carry. The NVIDIA driver (`libcuda.so.1`) is never carried: it comes with the driver.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The libraries preloaded, each one's dependencies before it, by the soname's stem
/// (`<stem>.so.<major>`): the CUDA runtime, TensorRT-RTX and its ONNX parser (the plugin EP's),
/// the JIT linker cuFFT and cuBLAS use, cuBLAS (Lt first), cuRAND, cuFFT, NVRTC, cuDNN (which
/// opens its own sub-libraries beside it).
const ORDER: [&str; 10] = [
    "libcudart",
    "libtensorrt_rtx",
    "libtensorrt_onnxparser_rtx",
    "libnvJitLink",
    "libcublasLt",
    "libcublas",
    "libcurand",
    "libcufft",
    "libnvrtc",
    "libcudnn",
];

/// One library a build carries and what preloading it gave.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Preloaded {
    /// Its file name in the build's folder (`libcublas.so.13`).
    pub library: String,
    /// "loaded", or the loader's reason it was not (a dependency missing, typically).
    pub status: String,
}

/// The CUDA libraries `folder` carries, in [`ORDER`]; of several files with one stem
/// (`libnvrtc.so.13`, `libnvrtc.so.13.5`) the shortest name, the soname.
pub(crate) fn carried(folder: &Path) -> Vec<PathBuf> {
    let names: Vec<String> = std::fs::read_dir(folder)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ORDER
        .iter()
        .filter_map(|stem| {
            let prefix = format!("{stem}.so.");
            names
                .iter()
                .filter(|n| n.starts_with(&prefix))
                .min_by_key(|n| n.len())
                .map(|n| folder.join(n))
        })
        .collect()
}

/// Opens every library `folder` carries ([`carried`]) globally and for good, in order. A library
/// that fails is reported and the rest are still tried (the provider's own load then names what is
/// missing). Nothing is done when the folder carries none (a CPU build, or a GPU build that relies
/// on the system's CUDA).
pub(crate) fn preload(folder: &Path) -> Vec<Preloaded> {
    carried(folder)
        .into_iter()
        .map(|path| Preloaded {
            library: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            status: match open_for_good(&path) {
                Ok(()) => "loaded".to_string(),
                Err(e) => e,
            },
        })
        .collect()
}

/// `dlopen(path, RTLD_NOW | RTLD_GLOBAL)`, never closed.
fn open_for_good(path: &Path) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's CUDA libraries
    // installed with the build (`runtime install`, whose folder `library_trust` checks when root
    // loads it), opened exactly as ONNX Runtime's providers would open them. The handle is
    // forgotten, so the library is never unloaded while a provider uses it.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }
        .map_err(|e| super::loader_message(&e))?;
    std::mem::forget(lib);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_libraries_come_in_dependency_order_by_soname() {
        let dir = tempfile::tempdir().expect("tmp");
        for f in [
            "libcudnn_adv.so.9",
            "libcudnn.so.9",
            "libcublasLt.so.13",
            "libcublas.so.13",
            "libnvrtc.so.13",
            "libnvrtc-builtins.so.13.5",
            "libnvrtc.so.13.5",
            "libcudart.so.13",
            "libonnxruntime.so.1.31.1",
            "libnvblas.so.13",
        ] {
            std::fs::write(dir.path().join(f), b"").expect("write");
        }
        let names: Vec<String> = carried(dir.path())
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "libcudart.so.13",
                "libcublasLt.so.13",
                "libcublas.so.13",
                "libnvrtc.so.13",
                "libcudnn.so.9"
            ]
        );
    }

    #[test]
    fn a_library_that_does_not_load_is_reported_with_the_loaders_reason() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("libcudart.so.13"), b"not an ELF file").expect("write");
        let report = preload(dir.path());
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].library, "libcudart.so.13");
        assert!(
            report[0].status.contains("libcudart.so.13") && report[0].status != "loaded",
            "{report:?}"
        );
        assert!(preload(tempfile::tempdir().expect("tmp").path()).is_empty());
    }
}

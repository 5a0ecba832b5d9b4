//! NVIDIA GPU discovery through the CUDA driver API (`cudarc`, loaded dynamically at run time, so
//! the binary builds and runs with no CUDA installed). Reports the first device's name, compute
//! capability, memory and the driver version, or why no GPU is usable; and the versions of the
//! TensorRT, CUDA runtime and cuDNN libraries the GPU execution providers would load (they are part
//! of the optimized-engine cache key). Knows nothing of inference.

use serde::Serialize;

/// What the machine offers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GpuInfo {
    pub available: bool,
    pub name: Option<String>,
    pub compute_capability: Option<String>,
    pub memory_mb: Option<u64>,
    pub driver_version: Option<String>,
    pub device_count: u32,
    /// Why no GPU is usable, when `available` is false.
    pub reason: Option<String>,
}

impl GpuInfo {
    fn none(reason: impl Into<String>) -> Self {
        GpuInfo {
            available: false,
            name: None,
            compute_capability: None,
            memory_mb: None,
            driver_version: None,
            device_count: 0,
            reason: Some(reason.into()),
        }
    }
}

/// Probes the CUDA driver. Never panics: cudarc's dynamic loader panics when `libcuda.so` is
/// missing, so its presence is checked first.
pub fn discover() -> GpuInfo {
    use cudarc::driver::{result, sys};
    // SAFETY: `is_culib_present` only tries to dlopen the CUDA driver library and reports whether it
    // loaded; it touches no other state.
    if !unsafe { sys::is_culib_present() } {
        return GpuInfo::none("libcuda.so (the NVIDIA driver) not found");
    }
    if let Err(e) = result::init() {
        return GpuInfo::none(format!("cuInit failed: {e:?}"));
    }
    let count = match result::device::get_count() {
        Ok(n) if n > 0 => n,
        Ok(_) => return GpuInfo::none("the NVIDIA driver reports no device"),
        Err(e) => return GpuInfo::none(format!("cuDeviceGetCount failed: {e:?}")),
    };
    let dev = match result::device::get(0) {
        Ok(d) => d,
        Err(e) => return GpuInfo::none(format!("cuDeviceGet(0) failed: {e:?}")),
    };
    let name = result::device::get_name(dev).ok();
    // SAFETY: `dev` was returned by `cuDeviceGet` above, as these driver calls require.
    let (major, minor, mem) = unsafe {
        (
            result::device::get_attribute(
                dev,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            )
            .ok(),
            result::device::get_attribute(
                dev,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            )
            .ok(),
            result::device::total_mem(dev).ok(),
        )
    };
    let mut version: std::ffi::c_int = 0;
    // SAFETY: FFI call writing one int through a valid pointer to a local.
    let driver_version = unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .ok()
        .map(|_| format!("{}.{}", version / 1000, (version % 1000) / 10));
    GpuInfo {
        available: true,
        name,
        compute_capability: major.zip(minor).map(|(a, b)| format!("{a}.{b}")),
        memory_mb: mem.map(|m| (m / (1024 * 1024)) as u64),
        driver_version,
        device_count: count as u32,
        reason: None,
    }
}

/// A GPU library's version, read by calling its version function after `dlopen`.
#[derive(Debug, Clone, Copy)]
enum VersionFn {
    /// `int32_t getInferLibVersion()` (TensorRT).
    TensorRt,
    /// `cudaError_t cudaRuntimeGetVersion(int*)` (CUDA runtime).
    CudaRuntime,
    /// `size_t cudnnGetVersion()` (cuDNN).
    Cudnn,
}

/// The sonames tried, newest first, for each library.
const TENSORRT_LIBS: &[&str] = &["libnvinfer.so.10", "libnvinfer.so"];
const CUDART_LIBS: &[&str] = &["libcudart.so.13", "libcudart.so.12", "libcudart.so"];
const CUDNN_LIBS: &[&str] = &["libcudnn.so.9", "libcudnn.so"];

/// TensorRT's `NV_TENSORRT_VERSION` as `major.minor.patch` (10.x encodes `M*10000+m*100+p`, 8.x
/// `M*1000+m*100+p`).
pub fn format_tensorrt_version(v: i64) -> String {
    if v >= 100_000 {
        format!("{}.{}.{}", v / 10_000, (v / 100) % 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v / 100) % 10, v % 100)
    }
}

/// `cudaRuntimeGetVersion`'s `1000*major + 10*minor` as `major.minor`.
pub fn format_cuda_version(v: i64) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// cuDNN 9's `major*10000 + minor*100 + patch` (8.x: `major*1000 + minor*100 + patch`).
pub fn format_cudnn_version(v: i64) -> String {
    if v >= 90_000 {
        format!("{}.{}.{}", v / 10_000, (v / 100) % 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v / 100) % 10, v % 100)
    }
}

/// Loads the first library of `names` found (first in `extra_dir`, then the loader's search path)
/// and reads its version; the error names the first soname, like the loader would.
fn library_version(
    names: &[&str],
    extra_dir: Option<&std::path::Path>,
    f: VersionFn,
) -> Result<String, String> {
    let mut candidates: Vec<std::ffi::OsString> = Vec::new();
    for n in names {
        if let Some(d) = extra_dir {
            candidates.push(d.join(n).into_os_string());
        }
        candidates.push((*n).into());
    }
    for c in candidates {
        // SAFETY: loading a vendor library runs its initialisers; these are NVIDIA's own libraries,
        // opened exactly as ONNX Runtime's GPU providers would open them.
        let Ok(lib) = (unsafe { libloading::Library::new(&c) }) else {
            continue;
        };
        // SAFETY: each symbol is looked up with the C signature documented by its vendor header
        // (NvInfer.h, cuda_runtime_api.h, cudnn.h) and called with valid arguments.
        let v: Option<i64> = unsafe {
            match f {
                VersionFn::TensorRt => lib
                    .get::<unsafe extern "C" fn() -> i32>(b"getInferLibVersion\0")
                    .ok()
                    .map(|s| i64::from(s())),
                VersionFn::CudaRuntime => lib
                    .get::<unsafe extern "C" fn(*mut std::ffi::c_int) -> std::ffi::c_int>(
                        b"cudaRuntimeGetVersion\0",
                    )
                    .ok()
                    .and_then(|s| {
                        let mut v: std::ffi::c_int = 0;
                        (s(&mut v) == 0).then_some(i64::from(v))
                    }),
                VersionFn::Cudnn => lib
                    .get::<unsafe extern "C" fn() -> usize>(b"cudnnGetVersion\0")
                    .ok()
                    .map(|s| s() as i64),
            }
        };
        let name = std::path::Path::new(&c).display().to_string();
        return match (v, f) {
            (Some(v), VersionFn::TensorRt) => Ok(format_tensorrt_version(v)),
            (Some(v), VersionFn::CudaRuntime) => Ok(format_cuda_version(v)),
            (Some(v), VersionFn::Cudnn) => Ok(format_cudnn_version(v)),
            (None, _) => Err(format!("{name} loaded but reports no version")),
        };
    }
    Err(format!("{} not found", names[0]))
}

/// TensorRT's version (`libnvinfer`), looked up beside ONNX Runtime first.
pub fn tensorrt_version(ort_dir: Option<&std::path::Path>) -> Result<String, String> {
    library_version(TENSORRT_LIBS, ort_dir, VersionFn::TensorRt)
}

/// TensorRT 11's version when `libnvinfer.so.11` is present (ONNX Runtime 1.31's TensorRT EP
/// links `libnvinfer.so.10` and cannot use it).
pub fn tensorrt11_version(ort_dir: Option<&std::path::Path>) -> Result<String, String> {
    library_version(&["libnvinfer.so.11"], ort_dir, VersionFn::TensorRt)
}

/// The CUDA runtime's version (`libcudart`), looked up beside ONNX Runtime first.
pub fn cuda_runtime_version(ort_dir: Option<&std::path::Path>) -> Result<String, String> {
    library_version(CUDART_LIBS, ort_dir, VersionFn::CudaRuntime)
}

/// cuDNN's version (`libcudnn`), looked up beside ONNX Runtime first.
pub fn cudnn_version(ort_dir: Option<&std::path::Path>) -> Result<String, String> {
    library_version(CUDNN_LIBS, ort_dir, VersionFn::Cudnn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_versions_are_decoded() {
        assert_eq!(format_tensorrt_version(101_300), "10.13.0");
        assert_eq!(format_tensorrt_version(100_902), "10.9.2");
        assert_eq!(format_tensorrt_version(8_601), "8.6.1");
        assert_eq!(format_cuda_version(12_080), "12.8");
        assert_eq!(format_cuda_version(13_000), "13.0");
        assert_eq!(format_cudnn_version(90_800), "9.8.0");
        assert_eq!(format_cudnn_version(8_907), "8.9.7");
    }

    #[test]
    fn missing_libraries_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = library_version(
            &["libiv-does-not-exist.so.7"],
            Some(dir.path()),
            VersionFn::TensorRt,
        )
        .expect_err("no such library");
        assert_eq!(e, "libiv-does-not-exist.so.7 not found");
        // A library without the symbol is found but reports no version.
        let e =
            library_version(&["libc.so.6"], None, VersionFn::Cudnn).expect_err("libc has no cuDNN");
        assert!(e.ends_with("loaded but reports no version"), "{e}");
        // Whatever this machine has, the probe answers with a version or the missing soname.
        match tensorrt_version(None) {
            Ok(v) => assert!(v.split('.').count() == 3, "{v}"),
            Err(e) => assert!(e.contains("libnvinfer"), "{e}"),
        }
    }

    #[test]
    fn discovery_never_panics_and_explains_absence() {
        let g = super::discover();
        if !g.available {
            let r = g.reason.expect("a reason when unavailable");
            assert!(!r.is_empty());
            assert_eq!(g.device_count, 0);
        } else {
            assert!(g.device_count >= 1 && g.name.is_some());
        }
    }
}

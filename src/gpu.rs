//! NVIDIA GPU discovery through the CUDA driver API (`cudarc`, loaded dynamically at run time, so
//! the binary builds and runs with no CUDA installed). Reports the first device's name, compute
//! capability, memory and the driver version, or why no GPU is usable. Knows nothing of inference.

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

#[cfg(test)]
mod tests {
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

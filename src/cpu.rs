//! CPU topology for the inference threads: on heterogeneous CPUs (Arm big.LITTLE / DynamIQ, such as
//! DGX Spark's GB10 with 10 Cortex-X925 and 10 Cortex-A725 cores), the performance cores, read from
//! sysfs (`cpu_capacity`, else `cpufreq/cpuinfo_max_freq`); and ONNX Runtime's affinity string
//! that pins its intra-op threads to them. Pure reads; no effect on homogeneous CPUs. Also the CPU's
//! model and the SIMD flags that decide which kernels run, for benchmark reports.

use std::path::Path;

/// The `/proc/cpuinfo` flags that select ONNX Runtime's and PyTorch's kernels (x86-64 `flags`,
/// arm64 `Features`).
const SIMD_FLAGS: [&str; 18] = [
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "sve",
    "sve2",
    "i8mm",
    "bf16",
];

/// The value of the first `/proc/cpuinfo` line whose key is one of `names` (the first CPU's).
pub(crate) fn cpuinfo_field(cpuinfo: &str, names: &[&str]) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        names.contains(&k.trim()).then(|| v.trim().to_string())
    })
}

/// The CPU's model name and the SIMD flags it has, from `/proc/cpuinfo` text (the first CPU).
pub(crate) fn describe(cpuinfo: &str) -> (Option<String>, Vec<&'static str>) {
    let model = cpuinfo_field(cpuinfo, &["model name", "Model", "CPU part"]);
    let flags = cpuinfo_field(cpuinfo, &["flags", "Features"]).unwrap_or_default();
    let have: Vec<&str> = flags.split_whitespace().collect();
    let simd = SIMD_FLAGS
        .iter()
        .copied()
        .filter(|f| have.contains(f))
        .collect();
    (model, simd)
}

/// Whether this CPU computes bf16 natively (x86-64: AVX512-BF16 or AMX-BF16; arm64: BF16), as
/// OpenVINO's bf16 inference needs; `Err` says what is missing.
pub(crate) fn bf16_support() -> Result<(), String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    bf16_support_in(&cpuinfo, std::env::consts::ARCH)
}

/// [`bf16_support`] for `/proc/cpuinfo` text of an `arch` machine.
pub(crate) fn bf16_support_in(cpuinfo: &str, arch: &str) -> Result<(), String> {
    let (_, flags) = describe(cpuinfo);
    let wanted: &[&str] = if arch == "aarch64" {
        &["bf16"]
    } else {
        &["avx512_bf16", "amx_bf16"]
    };
    if wanted.iter().any(|w| flags.contains(w)) {
        Ok(())
    } else {
        Err(format!(
            "bf16 needs a CPU with {} ({arch}; this one has none): use fp32",
            wanted.join(" or ")
        ))
    }
}

/// Where Linux lists the CPUs.
pub(crate) const SYSFS_CPU: &str = "/sys/devices/system/cpu";

/// CPU ids in a sysfs list such as `0-3,8,10-11`.
fn parse_list(s: &str) -> Vec<usize> {
    let mut v = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    if b >= a && b - a < 65_536 {
                        v.extend(a..=b);
                    }
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    v.push(a);
                }
            }
        }
    }
    v
}

/// A CPU's relative performance: its capacity (Arm), else its maximum frequency.
fn performance_of(root: &Path, cpu: usize) -> Option<u64> {
    let dir = root.join(format!("cpu{cpu}"));
    ["cpu_capacity", "cpufreq/cpuinfo_max_freq"]
        .iter()
        .find_map(|f| {
            std::fs::read_to_string(dir.join(f))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
}

/// The online CPUs of the fastest kind, when the online CPUs are not all alike (`None` on a
/// homogeneous CPU or when sysfs does not say).
pub(crate) fn performance_cores(root: &Path) -> Option<Vec<usize>> {
    let online = parse_list(&std::fs::read_to_string(root.join("online")).ok()?);
    let perf: Vec<(usize, u64)> = online
        .iter()
        .map(|&c| performance_of(root, c).map(|p| (c, p)))
        .collect::<Option<_>>()?;
    let max = perf.iter().map(|&(_, p)| p).max()?;
    let min = perf.iter().map(|&(_, p)| p).min()?;
    if max == min {
        return None;
    }
    Some(
        perf.into_iter()
            .filter(|&(_, p)| p == max)
            .map(|(c, _)| c)
            .collect(),
    )
}

/// ONNX Runtime's `session.intra_op_thread_affinities` for one intra-op thread per core of
/// `cores`: one entry per thread but the first (the calling thread), `;`-separated, with 1-based
/// processor ids (ONNX Runtime's `ReadThreadAffinityConfig`). `None` for fewer than two cores.
pub(crate) fn affinity_string(cores: &[usize]) -> Option<String> {
    (cores.len() > 1).then(|| {
        cores[1..]
            .iter()
            .map(|c| (c + 1).to_string())
            .collect::<Vec<_>>()
            .join(";")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_needs_the_cpus_own_bf16_instructions() {
        let zen4 = "flags\t: fpu avx2 fma avx512f avx512bw avx512_vnni avx512_bf16\n";
        let avx2 = "flags\t: fpu avx2 fma\n";
        let spr = "flags\t: avx512f amx_tile amx_bf16 amx_int8\n";
        let gb10 = "Features\t: fp asimd asimddp sve sve2 i8mm bf16\n";
        assert_eq!(bf16_support_in(zen4, "x86_64"), Ok(()));
        assert_eq!(bf16_support_in(spr, "x86_64"), Ok(()));
        assert_eq!(bf16_support_in(gb10, "aarch64"), Ok(()));
        let e = bf16_support_in(avx2, "x86_64").expect_err("no bf16 on AVX2");
        assert!(e.contains("avx512_bf16 or amx_bf16"), "{e}");
        assert!(bf16_support_in("Features\t: fp asimd\n", "aarch64").is_err());
    }

    fn fake(cpus: &[(usize, &str, &str)], online: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("online"), online).expect("online");
        for (c, file, v) in cpus {
            let p = d.path().join(format!("cpu{c}")).join(file);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
            std::fs::write(p, v).expect("write");
        }
        d
    }

    #[test]
    fn lists_parse() {
        assert_eq!(parse_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_list(""), Vec::<usize>::new());
        assert_eq!(parse_list("3-1,x,5"), vec![5]);
    }

    #[test]
    fn gb10_like_capacities_pick_the_big_cores() {
        // 20 cores, little ones first (as GB10 numbers them): capacity 1024 big, 718 little.
        let cpus: Vec<(usize, &str, &str)> = (0..20)
            .map(|c| (c, "cpu_capacity", if c < 10 { "718\n" } else { "1024\n" }))
            .collect();
        let d = fake(&cpus, "0-19\n");
        let big = performance_cores(d.path()).expect("heterogeneous");
        assert_eq!(big, (10..20).collect::<Vec<_>>());
        assert_eq!(
            affinity_string(&big).as_deref(),
            Some("12;13;14;15;16;17;18;19;20")
        );
    }

    #[test]
    fn frequencies_when_there_is_no_capacity() {
        let d = fake(
            &[
                (0, "cpufreq/cpuinfo_max_freq", "3900000"),
                (1, "cpufreq/cpuinfo_max_freq", "2800000"),
                (2, "cpufreq/cpuinfo_max_freq", "3900000"),
            ],
            "0-2",
        );
        assert_eq!(performance_cores(d.path()), Some(vec![0, 2]));
    }

    #[test]
    fn homogeneous_or_unknown_is_none() {
        let d = fake(
            &[(0, "cpu_capacity", "1024"), (1, "cpu_capacity", "1024")],
            "0-1",
        );
        assert_eq!(performance_cores(d.path()), None);
        let d = fake(&[(0, "cpu_capacity", "1024")], "0-1");
        assert_eq!(performance_cores(d.path()), None, "cpu1 unreadable");
        assert_eq!(affinity_string(&[4]), None);
    }

    #[test]
    fn cpuinfo_gives_the_model_and_the_simd_flags() {
        let x86 = "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse avx avx2 fma avx512f avx512bw avx512_vnni\n\nprocessor\t: 1\nmodel name\t: other\n";
        let (m, f) = describe(x86);
        assert_eq!(m.as_deref(), Some("AMD EPYC 9R14"));
        assert_eq!(
            f,
            vec!["avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"]
        );
        let arm =
            "processor\t: 0\nFeatures\t: fp asimd asimddp sve sve2 i8mm bf16\nCPU part\t: 0xd85\n";
        let (m, f) = describe(arm);
        assert_eq!(m.as_deref(), Some("0xd85"));
        assert_eq!(f, vec!["asimd", "asimddp", "sve", "sve2", "i8mm", "bf16"]);
        assert_eq!(describe(""), (None, vec![]));
    }
}

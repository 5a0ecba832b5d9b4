use std::fs::File;

use super::extract::{extract, extract_with};
use super::*;

fn info(name: &str) -> RuntimeInfo {
    RuntimeInfo {
        kind: RuntimeKind::Onnxruntime,
        name: name.into(),
        version: "1.31.1".into(),
        providers: vec!["CPUExecutionProvider".into()],
        provider_libraries: Vec::new(),
        cuda_libraries: Vec::new(),
        cuda: None,
        cudnn: None,
        plugins: Vec::new(),
        source: "test".into(),
        files: vec!["libonnxruntime.so.1.31.1".into()],
    }
}

#[test]
fn names_come_from_the_source_file() {
    assert_eq!(
        default_name(Path::new(
            "/x/onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl"
        )),
        "onnxruntime-gpu-1.31.1"
    );
    assert_eq!(
        default_name(Path::new("onnxruntime-linux-aarch64-gpu-1.23.0.tgz")),
        "onnxruntime-linux-aarch64-gpu-1.23.0"
    );
    assert_eq!(default_name(Path::new("/opt/my ort/")), "my-ort");
    assert!(check_name("../x").is_err());
    assert!(check_name("active").is_err());
    assert!(check_name(".staging-1").is_err());
    assert!(check_name("ort-1.31.1_gpu").is_ok());
}

#[test]
fn folders_tarballs_and_wheels_give_the_library_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("libonnxruntime.so.1.31.1"), b"lib").expect("write");
    std::fs::write(src.join("libonnxruntime_providers_cuda.so"), b"cuda").expect("write");
    std::fs::write(src.join("README"), b"x").expect("write");
    std::os::unix::fs::symlink("libonnxruntime.so.1.31.1", src.join("libonnxruntime.so"))
        .expect("link");

    let out = tmp.path().join("a");
    std::fs::create_dir(&out).expect("mkdir");
    let files = extract(&src, &out).expect("folder");
    assert_eq!(
        files,
        [
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_cuda.so"
        ]
    );
    assert_eq!(
        std::fs::read(out.join("libonnxruntime_providers_cuda.so")).expect("read"),
        b"cuda"
    );

    // The same as a gzip tarball with a top folder and the links.
    let tgz = tmp.path().join("onnxruntime-linux-x64-gpu-1.31.1.tgz");
    {
        let f = std::fs::File::create(&tgz).expect("create");
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        b.follow_symlinks(false);
        b.append_dir_all("onnxruntime-linux-x64-gpu-1.31.1/lib", &src)
            .expect("append");
        b.into_inner().expect("tar").finish().expect("gz");
    }
    let out = tmp.path().join("b");
    std::fs::create_dir(&out).expect("mkdir");
    assert_eq!(
        extract(&tgz, &out).expect("tarball"),
        [
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_cuda.so"
        ]
    );

    // A wheel is a zip with the libraries under onnxruntime/capi/.
    let whl = tmp
        .path()
        .join("onnxruntime_gpu-1.31.1-cp311-cp311-linux_x86_64.whl");
    {
        let f = std::fs::File::create(&whl).expect("create");
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default();
        for (n, d) in [
            ("onnxruntime/capi/libonnxruntime.so.1.31.1", &b"lib"[..]),
            ("onnxruntime/capi/libonnxruntime_providers_shared.so", b"s"),
            ("onnxruntime/capi/onnxruntime_pybind11_state.so", b"py"),
        ] {
            z.start_file(n, opts).expect("start");
            std::io::Write::write_all(&mut z, d).expect("write");
        }
        z.finish().expect("finish");
    }
    let out = tmp.path().join("c");
    std::fs::create_dir(&out).expect("mkdir");
    assert_eq!(
        extract(&whl, &out).expect("wheel"),
        [
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_shared.so"
        ]
    );

    // No library inside, or an unknown kind of file: clear errors.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let e = extract(&empty, &out).expect_err("empty").to_string();
    assert!(
        e.contains("no libonnxruntime.so* nor libopenvino_c.so* inside"),
        "{e}"
    );
    let e = extract(&src.join("README"), &out)
        .expect_err("kind")
        .to_string();
    assert!(e.contains("expected an onnxruntime wheel"), "{e}");
    let e = extract(&tmp.path().join("missing.whl"), &out)
        .expect_err("missing")
        .to_string();
    assert!(e.contains("no such file or folder"), "{e}");
}

#[test]
fn several_wheels_make_one_build_with_the_nvidia_libraries() {
    let tmp = tempfile::tempdir().expect("tmp");
    let wheel = |name: &str, members: &[&str]| {
        let path = tmp.path().join(name);
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).expect("create"));
        for m in members {
            z.start_file(*m, zip::write::SimpleFileOptions::default())
                .expect("start");
            std::io::Write::write_all(&mut z, m.as_bytes()).expect("write");
        }
        z.finish().expect("finish");
        path
    };
    let sources = [
        wheel(
            "onnxruntime_gpu-1.31.1-cp311-cp311-linux_x86_64.whl",
            &[
                "onnxruntime/capi/libonnxruntime.so.1.31.1",
                "onnxruntime/capi/libonnxruntime_providers_cuda.so",
            ],
        ),
        wheel(
            "nvidia_cublas-13.10.0.20-py3-none-manylinux_2_5_x86_64.whl",
            &[
                "nvidia/cu13/lib/libcublas.so.13",
                "nvidia/cu13/lib/libcublasLt.so.13",
                "nvidia/cu13/lib/libnvblas.so.13",
                "nvidia/cu13/include/cublas_api.h",
            ],
        ),
        wheel(
            "nvidia_cudnn_cu13-9.28.1.4-py3-none-manylinux_2_27_x86_64.whl",
            &[
                "nvidia/cudnn/lib/libcudnn.so.9",
                "nvidia/cudnn/lib/libcudnn_graph.so.9",
            ],
        ),
        wheel(
            "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl",
            &["numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so"],
        ),
    ];
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    let files = extract::extract_all(&sources, &out, Limits::DEFAULT).expect("one build");
    assert_eq!(
        files,
        [
            "libcublas.so.13",
            "libcublasLt.so.13",
            "libcudnn.so.9",
            "libcudnn_graph.so.9",
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_cuda.so"
        ]
    );
    assert_eq!(
        std::fs::read(out.join("libcudnn_graph.so.9")).expect("copied"),
        b"nvidia/cudnn/lib/libcudnn_graph.so.9"
    );
    // The CUDA wheels alone are no build.
    let e = extract::extract_all(&sources[1..], &out, Limits::DEFAULT)
        .expect_err("no ONNX Runtime")
        .to_string();
    assert!(
        e.contains("no libonnxruntime.so* nor libopenvino_c.so* inside"),
        "{e}"
    );
}

#[test]
fn installed_files_get_fixed_modes_whatever_the_source_had() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    for (name, m) in [
        ("libonnxruntime.so.1.31.1", 0o777),
        ("libonnxruntime_providers_shared.so", 0o4700),
        ("libonnxruntime_providers_cuda.so", 0o600),
    ] {
        let p = src.join(name);
        std::fs::write(&p, name).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).expect("chmod");
    }
    let state = tmp.path().join("state");
    let staging = staging_dir(&state).expect("staging");
    extract(&src, &staging).expect("folder");
    for name in [
        "libonnxruntime.so.1.31.1",
        "libonnxruntime_providers_shared.so",
        "libonnxruntime_providers_cuda.so",
    ] {
        assert_eq!(mode(&staging.join(name)), 0o644, "{name}");
    }
    let dest = commit(&state, &staging, &info("modes"), false).expect("commit");
    assert_eq!(mode(&dest), 0o755);
    assert_eq!(mode(&root(&state)), 0o755);
    assert_eq!(mode(&dest.join("libonnxruntime.so.1.31.1")), 0o644);
    assert_eq!(mode(&dest.join(INFO_FILE)), 0o644);
}

#[test]
fn links_out_of_a_source_folder_are_refused_and_links_inside_are_copied() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("libonnxruntime.so.1.31.1"), b"lib").expect("write");
    std::fs::write(src.join("sub/cuda.so"), b"cuda").expect("write");
    std::os::unix::fs::symlink("libonnxruntime.so.1.31.1", src.join("libonnxruntime.so"))
        .expect("link");
    std::os::unix::fs::symlink("sub/cuda.so", src.join("libonnxruntime_providers_cuda.so"))
        .expect("link");
    // Inside: the sibling's second name is skipped, a link to a file elsewhere in the folder
    // is copied as a plain file with its content.
    let out = tmp.path().join("a");
    std::fs::create_dir(&out).expect("mkdir");
    assert_eq!(
        extract(&src, &out).expect("links inside"),
        [
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_cuda.so"
        ]
    );
    let cuda = out.join("libonnxruntime_providers_cuda.so");
    assert!(!cuda.is_symlink());
    assert_eq!(std::fs::read(&cuda).expect("read"), b"cuda");
    assert!(!out.join("libonnxruntime.so").exists());

    // A link that leaves the folder (directly, or through `..`) is refused, naming the link.
    let secret = tmp.path().join("shadow");
    std::fs::write(&secret, b"root:secret").expect("write");
    for target in [secret.clone(), PathBuf::from("../shadow")] {
        let link = src.join("libonnxruntime_providers_x.so");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).expect("link");
        let out = tmp.path().join("b");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir(&out).expect("mkdir");
        let e = extract(&src, &out).expect_err("outside").to_string();
        assert!(e.contains(&link.display().to_string()), "{e}");
        assert!(e.contains("outside the source folder"), "{e}");
        assert!(!out.join("libonnxruntime_providers_x.so").exists());
    }
}

/// A gzip tarball and a wheel of `n` members of `size` zero bytes each, all named like
/// provider libraries: a few KB on disk, `n * size` bytes unpacked.
fn bombs(dir: &Path, n: usize, size: usize) -> [PathBuf; 2] {
    let zeros = vec![0u8; size];
    let tgz = dir.join(format!("bomb-{n}.tgz"));
    {
        let f = File::create(&tgz).expect("create");
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::best());
        let mut b = tar::Builder::new(gz);
        for i in 0..n {
            let mut h = tar::Header::new_gnu();
            h.set_size(size as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(
                &mut h,
                format!("lib/libonnxruntime_providers_{i}.so"),
                &zeros[..],
            )
            .expect("append");
        }
        b.into_inner().expect("tar").finish().expect("gz");
    }
    let whl = dir.join(format!("bomb-{n}.whl"));
    {
        let f = File::create(&whl).expect("create");
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for i in 0..n {
            z.start_file(
                format!("onnxruntime/capi/libonnxruntime_providers_{i}.so"),
                opts,
            )
            .expect("start");
            std::io::Write::write_all(&mut z, &zeros).expect("write");
        }
        z.finish().expect("finish");
    }
    [tgz, whl]
}

/// Bytes and files written into `dir`.
fn written(dir: &Path) -> (u64, usize) {
    let sizes: Vec<u64> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").metadata().expect("stat").len())
        .collect();
    (sizes.iter().sum(), sizes.len())
}

#[test]
fn archive_bombs_are_refused_while_they_unpack() {
    let tmp = tempfile::tempdir().expect("tmp");
    // 8 members of 1 MiB: over a 3 MiB bound at the fourth, before its content is read.
    let limits = Limits {
        total_bytes: 3 << 20,
        members: 100,
    };
    for bomb in bombs(tmp.path(), 8, 1 << 20) {
        assert!(std::fs::metadata(&bomb).expect("stat").len() < 64 << 10);
        let out = tmp.path().join("out");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir(&out).expect("mkdir");
        let e = extract_with(&bomb, &out, limits).expect_err("bomb");
        assert!(
            matches!(&e, RuntimeError::ArchiveLimit { what, .. } if what == "more than 3145728 bytes once unpacked"),
            "{e}"
        );
        assert!(e.to_string().contains(&bomb.display().to_string()), "{e}");
        assert_eq!(written(&out), (3 << 20, 3), "{}", bomb.display());
        // The same archive unpacks under a bound above its size.
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir(&out).expect("mkdir");
        let big_enough = Limits {
            total_bytes: 8 << 20,
            members: 8,
        };
        let e = extract_with(&bomb, &out, big_enough).expect_err("no main library");
        assert!(
            e.to_string()
                .contains("no libonnxruntime.so* nor libopenvino_c.so* inside"),
            "{e}"
        );
        assert_eq!(written(&out), (8 << 20, 8));
    }
    // 50 empty members: over a bound of 10 members at the eleventh.
    let limits = Limits {
        total_bytes: 1 << 20,
        members: 10,
    };
    for bomb in bombs(tmp.path(), 50, 0) {
        let out = tmp.path().join("out");
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir(&out).expect("mkdir");
        let e = extract_with(&bomb, &out, limits).expect_err("bomb");
        assert!(
            matches!(&e, RuntimeError::ArchiveLimit { what, .. } if what == "more than 10 members"),
            "{e}"
        );
        assert_eq!(written(&out), (0, 10), "{}", bomb.display());
    }
}

#[test]
fn commit_activate_list_and_remove() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path();
    assert!(active(state).is_none());
    assert!(list(state).expect("empty list").is_empty());

    let staging = staging_dir(state).expect("staging");
    std::fs::write(staging.join("libonnxruntime.so.1.31.1"), b"lib").expect("write");
    let dir = commit(state, &staging, &info("gpu"), false).expect("commit");
    assert!(!staging.exists());
    assert!(dir.join("runtime.json").is_file());
    // Installed but not active until chosen.
    assert!(active(state).is_none());
    set_active(state, Some("gpu")).expect("use");
    assert_eq!(active(state), Some(dir.clone()));
    let l = list(state).expect("list");
    assert_eq!(l.len(), 1);
    assert!(l[0].active);
    assert_eq!(l[0].info, info("gpu"));

    // Same name again: refused unless replacing.
    let staging = staging_dir(state).expect("staging");
    assert!(matches!(
        commit(state, &staging, &info("gpu"), false),
        Err(RuntimeError::Exists(_))
    ));
    commit(state, &staging, &info("gpu"), true).expect("replace");

    assert!(matches!(
        set_active(state, Some("other")),
        Err(RuntimeError::NotFound(_))
    ));
    assert!(remove(state, "gpu").expect("rm"), "it was active");
    assert!(active(state).is_none());
    assert!(list(state).expect("list").is_empty());
    assert!(matches!(
        remove(state, "gpu"),
        Err(RuntimeError::NotFound(_))
    ));
}

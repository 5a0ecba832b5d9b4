use super::*;

fn spec(name: &str, url: &str) -> StreamSpec {
    StreamSpec {
        name: name.into(),
        url: url.into(),
        queries: vec!["a person".into()],
        query_set: None,
        threshold: None,
        nms: None,
        max_fps: 0.0,
        zones: Default::default(),
        lines: Default::default(),
    }
}

#[test]
fn names() {
    for ok in ["a", "cam-1", "front_door", &"x".repeat(64)] {
        assert!(check_name(ok).is_ok(), "{ok}");
    }
    for bad in ["", "Cam", "a b", "a/b", "é", &"x".repeat(65), "a.b"] {
        assert!(matches!(check_name(bad), Err(SpecError::Name(_))), "{bad}");
    }
}

#[test]
fn urls() {
    assert_eq!(
        parse_url("rtsp://127.0.0.1:8554/cam"),
        Ok(Source::Rtsp("rtsp://127.0.0.1:8554/cam".into()))
    );
    assert!(parse_url("RTSPS://host/x").is_ok());
    assert_eq!(
        parse_url("/srv/v.mkv"),
        Ok(Source::File("/srv/v.mkv".into()))
    );
    assert_eq!(
        parse_url("file:///srv/a%20b.mp4"),
        Ok(Source::File("/srv/a b.mp4".into()))
    );
    assert_eq!(
        parse_url("v4l2:///dev/video0"),
        Ok(Source::V4l2("/dev/video0".into()))
    );
    assert!(parse_url("https://cam.local/mjpeg").is_ok_and(|s| s.is_live()));
    for bad in [
        "",
        "ftp://x/y",
        "relative/path.mp4",
        "file://relative",
        "v4l2://video0",
        "rtsp://",
        "rtsp://a\nb",
    ] {
        assert!(matches!(parse_url(bad), Err(SpecError::Url(_))), "{bad}");
    }
    assert!(!parse_url("/a.mp4").is_ok_and(|s| s.is_live()));
    assert_eq!(
        Source::File("/a b/%.mp4".into()).uri().as_deref(),
        Some("file:///a%20b/%25.mp4")
    );
}

#[test]
fn passwords_are_redacted() {
    assert_eq!(
        redacted("rtsp://admin:s3cr3t@10.0.0.5:554/Streaming/101"),
        "rtsp://admin:***@10.0.0.5:554/Streaming/101"
    );
    assert_eq!(redacted("rtsp://user@cam/x"), "rtsp://user@cam/x");
    assert_eq!(redacted("rtsp://cam/a@b"), "rtsp://cam/a@b");
    assert_eq!(redacted("/srv/v.mp4"), "/srv/v.mp4");
    assert_eq!(redacted("http://a:b:c@h"), "http://a:***@h");
}

#[test]
fn credentials_in_query_strings_are_redacted() {
    assert_eq!(
        redacted("http://cam/snap.cgi?user=admin&pwd=s3cr3t&chn=1"),
        "http://cam/snap.cgi?user=admin&pwd=***&chn=1"
    );
    assert_eq!(
        redacted("rtsp://a:b@cam/x?Password=p;token=t&keep=1&=&x"),
        "rtsp://a:***@cam/x?Password=***;token=***&keep=1&=&x"
    );
    assert_eq!(redacted("http://h/?%70wd=x"), "http://h/?%70wd=***");
    assert_eq!(redacted("http://h/a?b"), "http://h/a?b");
}

#[test]
fn dot_dot_paths_are_refused() {
    for bad in [
        "v4l2:///dev/../etc/shadow",
        "/srv/../etc/shadow",
        "file:///srv/%2E%2E/etc/shadow",
    ] {
        assert!(matches!(parse_url(bad), Err(SpecError::Url(_))), "{bad}");
    }
    assert!(parse_url("/srv/a..b/c.mp4").is_ok());
}

#[test]
fn api_streams_read_files_inside_their_roots_only() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("videos");
    let outside = tmp.path().join("secret");
    std::fs::create_dir_all(root.join("sub")).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(root.join("sub/a.mp4"), b"x").expect("write");
    std::fs::write(outside.join("s.png"), b"x").expect("write");
    std::os::unix::fs::symlink(outside.join("s.png"), root.join("link.png")).expect("link");
    let api = LocalPolicy::Roots(vec![root.clone()]);
    let file = |p: &Path| Source::File(p.to_path_buf());
    assert_eq!(
        check_local_access(&file(&root.join("sub/a.mp4")), &api),
        Ok(file(
            &std::fs::canonicalize(root.join("sub/a.mp4")).expect("real")
        ))
    );
    // Outside, through a link, or anything at all without roots: one message, whatever is
    // there.
    let msg = |p: &Path, policy: &LocalPolicy| match check_local_access(&file(p), policy) {
        Err(SpecError::Url(m)) => m.replace(&p.display().to_string(), "P"),
        other => panic!("{other:?}"),
    };
    let none = LocalPolicy::Roots(Vec::new());
    let m = msg(&outside.join("s.png"), &api);
    assert!(m.contains("stream_file_roots"), "{m}");
    assert_eq!(msg(&outside.join("missing.png"), &api), m);
    assert_eq!(msg(&outside, &api), m);
    assert_eq!(msg(&root.join("link.png"), &api), m);
    assert!(msg(&root.join("sub/a.mp4"), &none).contains("none configured"));
    // The config file may name any path.
    assert!(check_local_access(&file(&outside.join("s.png")), &LocalPolicy::Any).is_ok());
    // Devices: /dev/videoN and /dev/v4l/ only, resolved.
    assert!(check_local_access(&Source::V4l2("/dev/null".into()), &none).is_err());
    assert!(is_video_device_path(Path::new("/dev/video12")));
    assert!(is_video_device_path(Path::new("/dev/v4l/by-id/usb-cam")));
    assert!(!is_video_device_path(Path::new("/dev/videox")));
    assert!(!is_video_device_path(Path::new("/dev/shm/video0")));
}

#[test]
fn validate_numbers_and_queries() {
    let rules = QueryRules::default();
    assert!(spec("a", "/v.mp4").validate(&rules).is_ok());
    let mut s = spec("a", "/v.mp4");
    s.queries.clear();
    assert!(matches!(s.validate(&rules), Err(SpecError::Queries(_))));
    s.query_set = Some("parts".into());
    assert!(s.validate(&rules).is_ok(), "a query set alone is enough");
    s.query_set = Some("Bad Name".into());
    assert!(matches!(s.validate(&rules), Err(SpecError::Queries(_))));
    let mut s = spec("a", "/v.mp4");
    s.threshold = Some(1.5);
    assert!(matches!(s.validate(&rules), Err(SpecError::Number(_))));
    let mut s = spec("a", "/v.mp4");
    s.nms = Some(-0.1);
    assert!(matches!(s.validate(&rules), Err(SpecError::Number(_))));
    for fps in [-1.0, f64::NAN, 1e9] {
        let mut s = spec("a", "/v.mp4");
        s.max_fps = fps;
        assert!(matches!(s.validate(&rules), Err(SpecError::Number(_))));
    }
}

#[test]
fn unknown_keys_are_refused() {
    let e = serde_json::from_str::<StreamBody>(r#"{"url":"/a","queries":["x"],"fps":3}"#);
    assert!(e.is_err_and(|e| e.to_string().contains("fps")));
}

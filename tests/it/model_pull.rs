//! `model pull|list|rm` against a local stand-in for the Hugging Face hub on 127.0.0.1 serving the
//! tiny fixture checkpoint in the hub's URL layout (API listing with sizes and hashes, `resolve`
//! downloads, a redirect for the LFS file). No network beyond loopback.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::support::{bin, fixtures};

const FILES: [&str; 6] = [
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors",
];

/// Serves `acme/tiny-owl` at revision `main`; with `corrupt`, model.safetensors has a flipped byte.
fn stand_in_hub(corrupt: Arc<AtomicBool>) -> u16 {
    let l = TcpListener::bind(("127.0.0.1", crate::support::daemon::free_port())).expect("bind");
    let port = l.local_addr().expect("addr").port();
    let dir = fixtures::model_dir("tiny-a");
    let siblings: Vec<serde_json::Value> = FILES
        .iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(f)).expect("fixture");
            if *f == "model.safetensors" {
                serde_json::json!({"rfilename": f, "size": bytes.len(),
                    "lfs": {"sha256": hex::encode(Sha256::digest(&bytes)), "size": bytes.len(), "pointerSize": 134}})
            } else {
                let mut h = sha1::Sha1::new();
                sha1::Digest::update(&mut h, format!("blob {}\0", bytes.len()).as_bytes());
                sha1::Digest::update(&mut h, &bytes);
                serde_json::json!({"rfilename": f, "size": bytes.len(), "blobId": hex::encode(sha1::Digest::finalize(h))})
            }
        })
        .chain([serde_json::json!({"rfilename": "README.md", "size": 10})])
        .collect();
    let info =
        serde_json::json!({"id": "acme/tiny-owl", "sha": "0123456789abcdef", "siblings": siblings})
            .to_string();
    std::thread::spawn(move || {
        for stream in l.incoming().take(200) {
            let Ok(mut s) = stream else { continue };
            let mut line = String::new();
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            let (status, headers, body): (&str, String, Vec<u8>) =
                if path == "/api/models/acme/tiny-owl/revision/main?blobs=true" {
                    (
                        "200 OK",
                        "Content-Type: application/json\r\n".into(),
                        info.clone().into_bytes(),
                    )
                } else if path == "/acme/tiny-owl/resolve/main/model.safetensors" {
                    (
                        "302 Found",
                        "Location: /cdn/blob/model.safetensors\r\n".into(),
                        Vec::new(),
                    )
                } else if let Some(f) = path
                    .strip_prefix("/acme/tiny-owl/resolve/main/")
                    .or(path.strip_prefix("/cdn/blob/"))
                {
                    match std::fs::read(dir.join(f)) {
                        Ok(mut b) if FILES.contains(&f) => {
                            if f == "model.safetensors" && corrupt.load(Ordering::SeqCst) {
                                let last = b.len() - 1;
                                b[last] ^= 0xff;
                            }
                            ("200 OK", String::new(), b)
                        }
                        _ => ("404 Not Found", String::new(), Vec::new()),
                    }
                } else {
                    ("404 Not Found", String::new(), b"not found".to_vec())
                };
            let head = format!(
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    port
}

fn model(args: &[&str], store: &std::path::Path, port: u16) -> Output {
    bin::command()
        .arg("model")
        .args(args)
        .arg("--store")
        .arg(store)
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .output()
        .expect("runs")
}

/// `detect` with the installed model folder succeeds.
fn assert_detects_with(dir: &std::path::Path) {
    let det = bin::command()
        .args(["detect", "--query", "person", "--model"])
        .arg(dir)
        .arg(fixtures::image_path("small_pad.png"))
        .output()
        .expect("detect");
    bin::assert_success(&det);
}

#[test]
fn pull_verifies_installs_atomically_lists_and_removes() {
    let corrupt = Arc::new(AtomicBool::new(false));
    let port = stand_in_hub(corrupt.clone());
    let store = tempfile::tempdir().expect("tmp");

    let out = model(&["pull", "acme/tiny-owl"], store.path(), port);
    bin::assert_success(&out);
    let dir = store.path().join("acme/tiny-owl");
    for f in FILES {
        assert_eq!(
            std::fs::read(dir.join(f)).expect("pulled"),
            std::fs::read(fixtures::model_dir("tiny-a").join(f)).expect("fixture"),
            "{f}"
        );
    }
    assert!(
        !dir.join("README.md").exists(),
        "only the files the pipeline needs"
    );
    // The pulled model serves detections.
    assert_detects_with(&dir);

    let list = model(&["list"], store.path(), port);
    let text = String::from_utf8(list.stdout).expect("utf8");
    assert!(
        text.starts_with("acme/tiny-owl\t") && text.contains("0123456789abcdef"),
        "{text}"
    );

    // A corrupted download is refused and leaves the installed copy untouched, and no partial folder.
    corrupt.store(true, Ordering::SeqCst);
    let out = model(&["pull", "acme/tiny-owl"], store.path(), port);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model.safetensors") && err.contains("sha256"),
        "{err}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(store.path().join("acme"))
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        leftovers,
        vec!["tiny-owl".to_string()],
        "partial folders left: {leftovers:?}"
    );
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).expect("kept"),
        std::fs::read(fixtures::model_dir("tiny-a").join("model.safetensors")).expect("fixture")
    );

    // Unknown model: a clear 404 message; bad ids are refused before any request.
    let out = model(&["pull", "acme/nope"], store.path(), port);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    let out = model(&["pull", "../etc"], store.path(), port);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid model id"));

    let out = model(&["rm", "acme/tiny-owl"], store.path(), port);
    assert!(out.status.success());
    assert!(!dir.exists());
    let out = model(&["rm", "acme/tiny-owl"], store.path(), port);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not installed"));
}

/// Port 1 on loopback: nothing listens there, so a pull fails to connect (no network involved).
const NO_HUB: u16 = 1;

#[test]
fn an_unreachable_hub_is_one_line_that_says_what_to_do() {
    let store = tempfile::tempdir().expect("tmp");
    let out = model(&["pull", "acme/tiny-owl"], store.path(), NO_HUB);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for needle in ["HF_ENDPOINT", "--endpoint", "model pull --from DIR"] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    assert!(!store.path().join("acme/tiny-owl").exists());
}

#[test]
fn pull_from_a_local_folder_installs_without_the_hub() {
    let store = tempfile::tempdir().expect("tmp");
    let src = fixtures::model_dir("tiny-b"); // vocab.json + merges.txt, no tokenizer.json
    let out = model(
        &[
            "pull",
            "acme/local-owl",
            "--from",
            src.to_str().expect("utf8"),
        ],
        store.path(),
        NO_HUB,
    );
    bin::assert_success(&out);
    let dir = store.path().join("acme/local-owl");
    for f in [
        "config.json",
        "preprocessor_config.json",
        "vocab.json",
        "merges.txt",
        "model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(dir.join(f)).expect("copied"),
            std::fs::read(src.join(f)).expect("fixture"),
            "{f}"
        );
    }
    let list = model(&["list"], store.path(), NO_HUB);
    let text = String::from_utf8(list.stdout).expect("utf8");
    assert!(
        text.starts_with("acme/local-owl\t") && text.contains("local:"),
        "{text}"
    );
    assert_detects_with(&dir);

    // --if-missing keeps what is there (and needs no hub); without it, --from replaces it whole.
    let before = std::fs::metadata(dir.join("model.safetensors"))
        .and_then(|m| m.modified())
        .expect("mtime");
    let out = model(
        &["pull", "acme/local-owl", "--if-missing"],
        store.path(),
        NO_HUB,
    );
    bin::assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already installed"));
    let after = std::fs::metadata(dir.join("model.safetensors"))
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(before, after);

    // A folder that is not a model is refused by name, and leaves neither a model nor a partial folder.
    let not_model = tempfile::tempdir().expect("tmp");
    std::fs::copy(
        src.join("config.json"),
        not_model.path().join("config.json"),
    )
    .expect("copy");
    let out = model(
        &[
            "pull",
            "acme/broken",
            "--from",
            not_model.path().to_str().expect("utf8"),
        ],
        store.path(),
        NO_HUB,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no preprocessor_config.json"), "{err}");
    let names: Vec<_> = std::fs::read_dir(store.path().join("acme"))
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, vec!["local-owl".to_string()]);
}

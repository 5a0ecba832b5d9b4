//! The model store (`model_store`, `/var/lib/intelligent-video/models` under systemd): Hugging Face
//! checkpoints kept as `<store>/<org>/<name>`. `pull` downloads the files the pipeline needs from a
//! hub endpoint (`HF_ENDPOINT`, default `https://huggingface.co`), verifies each file's size and hash
//! (LFS sha256, or the git blob sha1 for small files), writes into a partial folder and renames it into
//! place, so a failed or interrupted pull never leaves a half model. `copy_from` installs the same
//! files from a local model folder (a machine without the hub). The daemon never downloads.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Default hub.
pub(crate) const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Metadata written beside the files.
pub(crate) const META_FILE: &str = ".iv-model.json";

/// Errors of the model store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("invalid model id {0:?} (expected ORG/NAME)")]
    BadId(String),
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{0}")]
    Missing(String),
    #[error("{file}: {message}")]
    Verify { file: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks `ORG/NAME` (no traversal, no empty parts).
pub(crate) fn parse_id(id: &str) -> Result<(&str, &str), StoreError> {
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    match id.split_once('/') {
        Some((org, name)) if ok(org) && ok(name) => Ok((org, name)),
        _ => Err(StoreError::BadId(id.to_string())),
    }
}

#[derive(Debug, Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(Debug, Deserialize)]
struct RepoInfo {
    sha: Option<String>,
    siblings: Vec<Sibling>,
}

/// What `pull` wrote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Pulled {
    pub id: String,
    pub revision: String,
    pub commit: Option<String>,
    pub files: Vec<(String, u64)>,
    pub dir: PathBuf,
}

/// The files the pipeline reads, in download order (tokenizer: `tokenizer.json`, else vocab+merges).
fn wanted(siblings: &[Sibling]) -> Result<Vec<&Sibling>, StoreError> {
    let names = wanted_names("the repository", |n| {
        siblings.iter().any(|s| s.rfilename == n)
    })?;
    Ok(names
        .into_iter()
        .filter_map(|n| siblings.iter().find(|s| s.rfilename == n))
        .collect())
}

/// The names of the files the pipeline reads among those `has` says are there; the optional
/// tokenizer configs are listed and left to the caller to skip when absent.
fn wanted_names(what: &str, has: impl Fn(&str) -> bool) -> Result<Vec<&'static str>, StoreError> {
    for req in [
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
    ] {
        if !has(req) {
            return Err(StoreError::Missing(format!(
                "{what} has no {req} (only safetensors checkpoints are supported)"
            )));
        }
    }
    let mut names = vec![
        "config.json",
        "preprocessor_config.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ];
    if has("tokenizer.json") {
        names.push("tokenizer.json");
    } else if has("vocab.json") && has("merges.txt") {
        names.extend(["vocab.json", "merges.txt"]);
    } else {
        return Err(StoreError::Missing(format!(
            "{what} has neither tokenizer.json nor vocab.json + merges.txt"
        )));
    }
    names.push("model.safetensors");
    Ok(names)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(600)))
        .user_agent(concat!("intelligent-video/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn http_err(url: &str, e: ureq::Error) -> StoreError {
    let message = match e {
        ureq::Error::StatusCode(404) => {
            "not found (404): check the model id and revision".to_string()
        }
        ureq::Error::StatusCode(401 | 403) => {
            "access denied: gated or private models need a token, not supported yet".to_string()
        }
        ureq::Error::StatusCode(code) => format!("the hub answered {code}"),
        other => format!(
            "{other}: the hub cannot be reached from here. Set HF_ENDPOINT (or --endpoint) to a \
             reachable mirror, or copy the model folder to this machine and install it with \
             `intelligent-video model pull --from DIR`"
        ),
    };
    StoreError::Http {
        url: url.to_string(),
        message,
    }
}

/// Downloads `id` at `revision` from `endpoint` into `<store>/<org>/<name>`; `progress(file, done, total)`.
pub(crate) fn pull(
    store: &Path,
    id: &str,
    revision: &str,
    endpoint: &str,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<Pulled, StoreError> {
    parse_id(id)?;
    let endpoint = endpoint.trim_end_matches('/');
    let agent = agent();
    let info = repo_info(&agent, endpoint, id, revision)?;
    let files = wanted(&info.siblings)?;
    install(store, id, revision, info.sha.clone(), |partial| {
        let mut written = Vec::new();
        for f in files {
            let url = format!("{endpoint}/{id}/resolve/{revision}/{}", f.rfilename);
            let n = download(&agent, &url, f, &partial.join(&f.rfilename), progress)?;
            written.push((f.rfilename.clone(), n));
        }
        Ok(written)
    })
}

/// Installs `id` from a local model folder `src` (a copy of the hub's folder, e.g. made where the
/// hub is reachable): the same files `pull` takes, copied; the revision records where from.
pub(crate) fn copy_from(store: &Path, id: &str, src: &Path) -> Result<Pulled, StoreError> {
    parse_id(id)?;
    if !src.is_dir() {
        return Err(StoreError::Missing(format!(
            "{} is not a folder (expected a model folder with config.json and model.safetensors)",
            src.display()
        )));
    }
    let names = wanted_names(&src.display().to_string(), |n| src.join(n).is_file())?;
    let source = std::fs::canonicalize(src).map_err(io(src))?;
    let revision = format!("local:{}", source.display());
    install(store, id, &revision, None, |partial| {
        let mut written = Vec::new();
        for name in names.into_iter().filter(|n| src.join(n).is_file()) {
            let (from, to) = (src.join(name), partial.join(name));
            let n = std::fs::copy(&from, &to).map_err(io(&from))?;
            std::fs::File::open(&to)
                .and_then(|f| f.sync_all())
                .map_err(io(&to))?;
            written.push((name.to_string(), n));
        }
        Ok(written)
    })
}

/// Whether `id` is installed in `store` (its folder has `config.json`).
pub(crate) fn is_installed(store: &Path, id: &str) -> Result<bool, StoreError> {
    let (org, name) = parse_id(id)?;
    Ok(store.join(org).join(name).join("config.json").is_file())
}

/// Fills a partial folder with `fill`, writes the metadata and swaps it into `<store>/<org>/<name>`;
/// the partial folder is removed when anything fails, so the previous copy stays whole.
fn install(
    store: &Path,
    id: &str,
    revision: &str,
    commit: Option<String>,
    fill: impl FnOnce(&Path) -> Result<Vec<(String, u64)>, StoreError>,
) -> Result<Pulled, StoreError> {
    let (org, name) = parse_id(id)?;
    let final_dir = store.join(org).join(name);
    let parent = store.join(org);
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let partial = parent.join(format!(".partial-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    let result = (|| {
        let pulled = Pulled {
            id: id.to_string(),
            revision: revision.to_string(),
            commit,
            files: fill(&partial)?,
            dir: final_dir.clone(),
        };
        let meta = partial.join(META_FILE);
        let json = serde_json::to_vec_pretty(&pulled).map_err(|e| StoreError::Io {
            path: meta.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&meta, json).map_err(io(&meta))?;
        // Swap into place: the old copy (if any) is removed only after the new one is complete.
        crate::fsutil::replace_dir(&partial, &final_dir).map_err(io(&final_dir))?;
        Ok(pulled)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result
}

/// The hub's file list of `id` at `revision`.
fn repo_info(
    agent: &ureq::Agent,
    endpoint: &str,
    id: &str,
    revision: &str,
) -> Result<RepoInfo, StoreError> {
    let url = format!("{endpoint}/api/models/{id}/revision/{revision}?blobs=true");
    let mut resp = agent.get(&url).call().map_err(|e| http_err(&url, e))?;
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| http_err(&url, e))?;
    serde_json::from_str(&text).map_err(|e| StoreError::Http {
        url,
        message: format!("unexpected answer: {e}"),
    })
}

/// Downloads one file to `path` and verifies it (size; sha256 for LFS files, the git blob hash
/// for the others); returns its size.
fn download(
    agent: &ureq::Agent,
    url: &str,
    f: &Sibling,
    path: &Path,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<u64, StoreError> {
    let expected = f.lfs.as_ref().map(|l| l.size).or(f.size);
    let resp = agent.get(url).call().map_err(|e| http_err(url, e))?;
    let mut out = std::fs::File::create(path).map_err(io(path))?;
    let mut reader = resp.into_body().into_reader();
    let (mut sha256, mut n) = (Sha256::new(), 0u64);
    let mut buf = vec![0u8; 1 << 20];
    let mut content = Vec::new(); // small files: kept for the git blob hash
    loop {
        let k = reader.read(&mut buf).map_err(|e| StoreError::Http {
            url: url.to_string(),
            message: format!("download interrupted: {e}"),
        })?;
        if k == 0 {
            break;
        }
        out.write_all(&buf[..k]).map_err(io(path))?;
        sha256.update(&buf[..k]);
        if f.lfs.is_none() {
            content.extend_from_slice(&buf[..k]);
        }
        n += k as u64;
        progress(&f.rfilename, n, expected.unwrap_or(0));
    }
    out.sync_all().map_err(io(path))?;
    verify(f, n, expected, &sha256.finalize(), &content)?;
    Ok(n)
}

/// Checks a downloaded file against the hub's size and hashes.
fn verify(
    f: &Sibling,
    n: u64,
    expected: Option<u64>,
    sha256: &[u8],
    content: &[u8],
) -> Result<(), StoreError> {
    let bad = |message: String| StoreError::Verify {
        file: f.rfilename.clone(),
        message,
    };
    if let Some(e) = expected {
        if n != e {
            return Err(bad(format!("size {n} bytes, expected {e}")));
        }
    }
    if let Some(l) = &f.lfs {
        let got = hex::encode(sha256);
        if !got.eq_ignore_ascii_case(&l.sha256) {
            return Err(bad(format!("sha256 {got} does not match {}", l.sha256)));
        }
    } else if let Some(blob) = &f.blob_id {
        let mut h = Sha1::new();
        h.update(format!("blob {}\0", content.len()).as_bytes());
        h.update(content);
        let got = hex::encode(h.finalize());
        if !got.eq_ignore_ascii_case(blob) {
            return Err(bad(format!("git blob hash {got} does not match {blob}")));
        }
    }
    Ok(())
}

/// Installed models: `(id, total bytes, revision)`.
pub(crate) fn list(store: &Path) -> Vec<(String, u64, Option<String>)> {
    let mut out = Vec::new();
    let Ok(orgs) = std::fs::read_dir(store) else {
        return out;
    };
    for org in orgs.flatten() {
        let Ok(names) = std::fs::read_dir(org.path()) else {
            continue;
        };
        for m in names.flatten() {
            let p = m.path();
            let n = m.file_name().to_string_lossy().to_string();
            if n.starts_with('.') || !p.join("config.json").is_file() {
                continue;
            }
            let size = std::fs::read_dir(&p)
                .map(|it| {
                    it.flatten()
                        .filter_map(|f| f.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            let rev = std::fs::read(p.join(META_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice::<Pulled>(&b).ok())
                .map(|m| m.commit.unwrap_or(m.revision));
            out.push((
                format!("{}/{n}", org.file_name().to_string_lossy()),
                size,
                rev,
            ));
        }
    }
    out.sort();
    out
}

/// Removes an installed model.
pub(crate) fn remove(store: &Path, id: &str) -> Result<PathBuf, StoreError> {
    let (org, name) = parse_id(id)?;
    let dir = store.join(org).join(name);
    if !dir.join("config.json").is_file() {
        return Err(StoreError::Missing(format!(
            "model {id} is not installed in {}",
            store.display()
        )));
    }
    std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_org_slash_name_without_traversal() {
        assert_eq!(
            parse_id("google/owlv2-base-patch16-ensemble").expect("ok"),
            ("google", "owlv2-base-patch16-ensemble")
        );
        for bad in ["owlv2", "../etc", "a/..", "a/b/c", "/abs", "a/", "a b/c"] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }
}

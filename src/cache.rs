//! The optimized-artifact cache (`IV_CACHE_DIR`): one folder per key holding a provider's saved
//! graphs and `meta.json` (created, optimization_time, measured speedup, and the size of every file
//! of the entry). CPU entries hold the ONNX Runtime-optimised image and text graphs with their
//! weights (prepacked too); TensorRT entries hold EP-context models with their engine files. The
//! key hashes everything that makes an artifact valid: the model files, ONNX Runtime's version, the
//! provider and its precision/batch profile, the GPU (name, compute capability) or CPU it was built
//! on, the TensorRT/CUDA/cuDNN versions, and the graph builder's version. Writes are atomic (a
//! temporary folder renamed into place); a corrupt, truncated or mismatched entry is removed and
//! rebuilt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const META_FILE: &str = "meta.json";
/// Version of the entry layout; part of the key so an older layout is never read.
pub(crate) const LAYOUT: u32 = 2;

/// Everything an artifact depends on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyParts {
    pub layout: u32,
    pub model_fingerprint: String,
    pub onnxruntime: String,
    pub provider: String,
    pub precision: String,
    /// Largest image batch of the engine's profile.
    pub max_batch: usize,
    /// Largest query batch of the text engine's profile (TensorRT; 0 where shapes are dynamic).
    pub max_queries: usize,
    /// CPU model name, or GPU name with compute capability.
    pub device: String,
    pub tensorrt: Option<String>,
    pub cuda: Option<String>,
    pub cudnn: Option<String>,
    pub graph_builder: String,
}

impl KeyParts {
    /// The cache key: SHA-256 of the parts (hex, 32 chars kept).
    pub fn key(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&Sha256::digest(&json)[..16])
    }
}

/// Fingerprint of a model directory: SHA-256 over the small files' contents and, for the weights,
/// the safetensors header plus the file's size and modification time (hashing gigabytes at every
/// boot would cost seconds).
pub(crate) fn model_fingerprint(dir: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    for name in ["config.json", "preprocessor_config.json"] {
        h.update(name.as_bytes());
        h.update(std::fs::read(dir.join(name))?);
    }
    let st = dir.join("model.safetensors");
    let meta = std::fs::metadata(&st)?;
    h.update(meta.len().to_le_bytes());
    if let Ok(m) = meta.modified() {
        let ns = m
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        h.update(ns.to_le_bytes());
    }
    let mut f = std::fs::File::open(&st)?;
    let mut len = [0u8; 8];
    std::io::Read::read_exact(&mut f, &mut len)?;
    let n = u64::from_le_bytes(len).min(100 << 20);
    let mut header = vec![0u8; n as usize];
    std::io::Read::read_exact(&mut f, &mut header)?;
    h.update(header);
    Ok(hex::encode(h.finalize()))
}

/// The CPU model name (optimised CPU graphs may use instructions of the machine they were built on).
pub(crate) fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| crate::cpu::cpuinfo_field(&s, &["model name"]))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// `meta.json` of an entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub key: String,
    pub parts: serde_json::Value,
    pub created: u64,
    pub optimization_time: f64,
    /// Every file of the entry with its size in bytes.
    pub files: BTreeMap<String, u64>,
    pub speedup: Option<f64>,
}

/// A complete, validated entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub meta: Meta,
}

fn entry_dir(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join(key)
}

fn file_len(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

/// The files of a folder (not recursive) with their sizes.
fn list_files(dir: &Path) -> std::io::Result<BTreeMap<String, u64>> {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        if m.is_file() {
            files.insert(e.file_name().to_string_lossy().into_owned(), m.len());
        }
    }
    Ok(files)
}

/// Looks an entry up. A present but invalid entry (bad meta, other key, a `required` file missing,
/// any file missing or of another size) is removed with a warning and `None` is returned, so the
/// caller rebuilds it.
pub(crate) fn lookup(cache_dir: &Path, key: &str, required: &[String]) -> Option<Entry> {
    let dir = entry_dir(cache_dir, key);
    if !dir.exists() {
        return None;
    }
    let valid = (|| {
        let meta: Meta = serde_json::from_slice(&std::fs::read(dir.join(META_FILE)).ok()?).ok()?;
        let complete = meta.key == key
            && required.iter().all(|r| meta.files.contains_key(r))
            && meta
                .files
                .iter()
                .all(|(name, len)| file_len(&dir.join(name)) == Some(*len));
        complete.then_some(meta)
    })();
    match valid {
        Some(meta) => Some(Entry { dir, meta }),
        None => {
            tracing::warn!(entry = %dir.display(), "cached artifact is corrupt, truncated or mismatched; rebuilding");
            remove(cache_dir, key);
            None
        }
    }
}

/// Removes an entry (best effort).
pub(crate) fn remove(cache_dir: &Path, key: &str) {
    let dir = entry_dir(cache_dir, key);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(entry = %dir.display(), error = %e, "cannot remove cache entry");
        }
    }
}

/// A folder to build a new entry in; `None` when the cache directory is not writable.
pub(crate) fn staging(cache_dir: &Path, key: &str) -> Option<PathBuf> {
    let tmp = cache_dir.join(format!(".tmp-{key}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    match std::fs::create_dir_all(&tmp) {
        Ok(()) => Some(tmp),
        Err(e) => {
            tracing::warn!(cache_dir = %cache_dir.display(), error = %e, "cache directory is not writable; building in memory");
            None
        }
    }
}

/// Records the staging folder's files in `meta.json` and renames the folder into place. Fails when
/// a `required` file was not written.
pub(crate) fn commit(
    cache_dir: &Path,
    staging: &Path,
    parts: &KeyParts,
    optimization_time: f64,
    required: &[String],
) -> std::io::Result<Entry> {
    let key = parts.key();
    let files = list_files(staging)?;
    if let Some(missing) = required.iter().find(|r| !files.contains_key(*r)) {
        return Err(std::io::Error::other(format!(
            "the optimized artifact {missing} was not written"
        )));
    }
    let meta = Meta {
        key: key.clone(),
        parts: serde_json::to_value(parts).map_err(std::io::Error::other)?,
        created: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        optimization_time,
        files,
        speedup: None,
    };
    write_meta(staging, &meta)?;
    let dir = entry_dir(cache_dir, &key);
    crate::fsutil::replace_dir(staging, &dir)?;
    Ok(Entry { dir, meta })
}

fn write_meta(dir: &Path, meta: &Meta) -> std::io::Result<()> {
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(tmp, dir.join(META_FILE))
}

/// Records a measured speedup in an entry's metadata (atomic replace).
pub(crate) fn set_speedup(entry: &mut Entry, speedup: f64) -> std::io::Result<()> {
    entry.meta.speedup = Some(speedup);
    write_meta(&entry.dir, &entry.meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> KeyParts {
        KeyParts {
            layout: LAYOUT,
            model_fingerprint: "m".into(),
            onnxruntime: "1.31.1".into(),
            provider: "cpu".into(),
            precision: "fp32".into(),
            max_batch: 4,
            max_queries: 0,
            device: "cpu x".into(),
            tensorrt: None,
            cuda: None,
            cudnn: None,
            graph_builder: "g1".into(),
        }
    }

    #[test]
    fn key_changes_with_every_part() {
        let base = parts().key();
        let variants = [
            KeyParts {
                layout: LAYOUT + 1,
                ..parts()
            },
            KeyParts {
                model_fingerprint: "m2".into(),
                ..parts()
            },
            KeyParts {
                onnxruntime: "1.32.0".into(),
                ..parts()
            },
            KeyParts {
                provider: "tensorrt".into(),
                ..parts()
            },
            KeyParts {
                precision: "int8".into(),
                ..parts()
            },
            KeyParts {
                max_batch: 8,
                ..parts()
            },
            KeyParts {
                max_queries: 64,
                ..parts()
            },
            KeyParts {
                device: "NVIDIA GB10 (sm 12.1)".into(),
                ..parts()
            },
            KeyParts {
                tensorrt: Some("10.13.0".into()),
                ..parts()
            },
            KeyParts {
                cuda: Some("13.0".into()),
                ..parts()
            },
            KeyParts {
                cudnn: Some("9.8.0".into()),
                ..parts()
            },
            KeyParts {
                graph_builder: "g2".into(),
                ..parts()
            },
        ];
        let mut keys: Vec<String> = variants.iter().map(KeyParts::key).collect();
        for (v, k) in variants.iter().zip(&keys) {
            assert_ne!(*k, base, "{v:?}");
        }
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), variants.len(), "every variant has its own key");
        assert_eq!(parts().key(), base);
    }

    #[test]
    fn commit_lookup_and_corruption() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = parts();
        let key = p.key();
        let required = vec!["image.onnx".to_string(), "text.onnx".to_string()];
        assert!(lookup(dir.path(), &key, &required).is_none());
        let st = staging(dir.path(), &key).expect("writable");
        std::fs::write(st.join("image.onnx"), b"graph").expect("w");
        std::fs::write(st.join("image.weights"), b"weights!").expect("w");
        // A required file missing: nothing is committed.
        let err = commit(dir.path(), &st, &p, 1.5, &required).expect_err("text.onnx missing");
        assert!(err.to_string().contains("text.onnx"), "{err}");
        std::fs::write(st.join("text.onnx"), b"text").expect("w");
        let mut e = commit(dir.path(), &st, &p, 1.5, &required).expect("commit");
        assert!(!st.exists(), "staging renamed away");
        assert_eq!(e.meta.files.get("image.weights"), Some(&8));
        assert_eq!(e.meta.files.len(), 3);
        set_speedup(&mut e, 1.7).expect("speedup");
        let found = lookup(dir.path(), &key, &required).expect("found");
        assert_eq!(found.meta.optimization_time, 1.5);
        assert_eq!(found.meta.speedup, Some(1.7));
        // An entry lacking what another provider requires is not valid for it.
        let trt = vec!["image_ctx.onnx".to_string()];
        assert!(lookup(dir.path(), &key, &trt).is_none());
        assert!(!found.dir.exists(), "the unusable entry is removed");
        // Truncate a weights file: the entry is dropped.
        let st = staging(dir.path(), &key).expect("writable");
        for f in ["image.onnx", "text.onnx", "image.weights"] {
            std::fs::write(st.join(f), b"data").expect("w");
        }
        let e = commit(dir.path(), &st, &p, 1.0, &required).expect("commit");
        std::fs::write(e.dir.join("image.weights"), b"w").expect("w");
        assert!(lookup(dir.path(), &key, &required).is_none());
        assert!(!e.dir.exists());
        // An unreadable meta.json: dropped too.
        let st = staging(dir.path(), &key).expect("writable");
        for f in ["image.onnx", "text.onnx"] {
            std::fs::write(st.join(f), b"data").expect("w");
        }
        let e = commit(dir.path(), &st, &p, 1.0, &required).expect("commit");
        std::fs::write(e.dir.join(META_FILE), b"{not json").expect("w");
        assert!(lookup(dir.path(), &key, &required).is_none());
    }

    #[test]
    fn read_only_cache_dir_gives_no_staging() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("w");
        assert!(staging(&file, "k").is_none());
    }
}

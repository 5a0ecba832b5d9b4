//! The optimized-artifact cache (`IV_CACHE_DIR`): one folder per key holding the ONNX Runtime-
//! optimised image graph (`image.onnx` + `image.weights`) and `meta.json` (created,
//! optimization_time, measured speedup). The key hashes everything that makes an artifact valid:
//! the model files, ONNX Runtime's version, the provider and its precision/batch profile, the GPU or
//! CPU it was built on, and the graph builder's version. Writes are atomic (a temporary folder
//! renamed into place); a corrupt, truncated or mismatched entry is removed and rebuilt.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::OPTIMIZED_WEIGHTS_FILE;

/// The graph file inside an entry.
pub const GRAPH_FILE: &str = "image.onnx";
const META_FILE: &str = "meta.json";

/// Everything an artifact depends on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyParts {
    pub model_fingerprint: String,
    pub onnxruntime: String,
    pub provider: String,
    pub precision: String,
    pub max_batch: usize,
    pub device: String,
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
pub fn model_fingerprint(dir: &Path) -> std::io::Result<String> {
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
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// `meta.json` of an entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub key: String,
    pub parts: serde_json::Value,
    pub created: u64,
    pub optimization_time: f64,
    pub graph_bytes: u64,
    pub weights_bytes: u64,
    pub speedup: Option<f64>,
}

/// A complete, validated entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub meta: Meta,
}

impl Entry {
    pub fn graph(&self) -> PathBuf {
        self.dir.join(GRAPH_FILE)
    }
}

fn entry_dir(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join(key)
}

fn file_len(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

/// Looks an entry up. A present but invalid entry (bad meta, missing or truncated files, other
/// key) is removed with a warning and `None` is returned, so the caller rebuilds it.
pub fn lookup(cache_dir: &Path, key: &str) -> Option<Entry> {
    let dir = entry_dir(cache_dir, key);
    if !dir.exists() {
        return None;
    }
    let valid = (|| {
        let meta: Meta = serde_json::from_slice(&std::fs::read(dir.join(META_FILE)).ok()?).ok()?;
        (meta.key == key
            && file_len(&dir.join(GRAPH_FILE)) == Some(meta.graph_bytes)
            && file_len(&dir.join(OPTIMIZED_WEIGHTS_FILE)).unwrap_or(0) == meta.weights_bytes)
            .then_some(meta)
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
pub fn remove(cache_dir: &Path, key: &str) {
    let dir = entry_dir(cache_dir, key);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(entry = %dir.display(), error = %e, "cannot remove cache entry");
        }
    }
}

/// A folder to build a new entry in; `None` when the cache directory is not writable.
pub fn staging(cache_dir: &Path, key: &str) -> Option<PathBuf> {
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

/// Writes `meta.json` into the staging folder and renames it into place.
pub fn commit(
    cache_dir: &Path,
    staging: &Path,
    parts: &KeyParts,
    optimization_time: f64,
) -> std::io::Result<Entry> {
    let key = parts.key();
    let meta = Meta {
        key: key.clone(),
        parts: serde_json::to_value(parts).unwrap_or_default(),
        created: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        optimization_time,
        graph_bytes: file_len(&staging.join(GRAPH_FILE))
            .ok_or_else(|| std::io::Error::other("optimised graph was not written"))?,
        weights_bytes: file_len(&staging.join(OPTIMIZED_WEIGHTS_FILE)).unwrap_or(0),
        speedup: None,
    };
    write_meta(staging, &meta)?;
    let dir = entry_dir(cache_dir, &key);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(staging, &dir)?;
    Ok(Entry { dir, meta })
}

fn write_meta(dir: &Path, meta: &Meta) -> std::io::Result<()> {
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(meta).unwrap_or_default())?;
    std::fs::rename(tmp, dir.join(META_FILE))
}

/// Records a measured speedup in an entry's metadata (atomic replace).
pub fn set_speedup(entry: &mut Entry, speedup: f64) -> std::io::Result<()> {
    entry.meta.speedup = Some(speedup);
    write_meta(&entry.dir, &entry.meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> KeyParts {
        KeyParts {
            model_fingerprint: "m".into(),
            onnxruntime: "1.31.1".into(),
            provider: "cpu".into(),
            precision: "fp32".into(),
            max_batch: 4,
            device: "cpu x".into(),
            graph_builder: "g1".into(),
        }
    }

    #[test]
    fn key_changes_with_every_part() {
        let base = parts().key();
        let variants = [
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
                device: "NVIDIA GB10 12.1".into(),
                ..parts()
            },
            KeyParts {
                graph_builder: "g2".into(),
                ..parts()
            },
        ];
        for v in variants {
            assert_ne!(v.key(), base, "{v:?}");
        }
        assert_eq!(parts().key(), base);
    }

    #[test]
    fn commit_lookup_and_corruption() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = parts();
        let key = p.key();
        assert!(lookup(dir.path(), &key).is_none());
        let st = staging(dir.path(), &key).expect("writable");
        std::fs::write(st.join(GRAPH_FILE), b"graph").expect("w");
        std::fs::write(st.join(OPTIMIZED_WEIGHTS_FILE), b"weights!").expect("w");
        let mut e = commit(dir.path(), &st, &p, 1.5).expect("commit");
        assert!(!st.exists(), "staging renamed away");
        set_speedup(&mut e, 1.7).expect("speedup");
        let found = lookup(dir.path(), &key).expect("found");
        assert_eq!(found.meta.optimization_time, 1.5);
        assert_eq!(found.meta.speedup, Some(1.7));
        // Truncate the weights: the entry is dropped.
        std::fs::write(found.dir.join(OPTIMIZED_WEIGHTS_FILE), b"w").expect("w");
        assert!(lookup(dir.path(), &key).is_none());
        assert!(!found.dir.exists());
    }

    #[test]
    fn read_only_cache_dir_gives_no_staging() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("w");
        assert!(staging(&file, "k").is_none());
    }
}

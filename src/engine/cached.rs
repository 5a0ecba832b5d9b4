//! Building a backend through the artifact cache: a valid entry is loaded without optimising or
//! building again; otherwise the graphs are built, optimised (CPU) or compiled (TensorRT) and
//! saved atomically. Also the in-memory build, for providers and settings that cache nothing.

use std::time::Instant;

use super::artifact::{artifact_file, artifact_key, Artifact};
use super::build::{self, DetectorOptions};
use super::error::EngineError;
use crate::backend::Backend;
use crate::cache;
use crate::config::sections::EngineSettings;
use crate::gpu::GpuInfo;
use crate::model::ModelDir;
use crate::vocab::Graph;

/// A backend built (or loaded) for the engine, and how.
pub(super) struct Built {
    pub(super) backend: Box<dyn Backend>,
    /// Seconds spent building, or loading from the cache.
    pub(super) build_time: f64,
    /// The artifact came from the cache.
    pub(super) cached: bool,
    /// The cache entry in use.
    pub(super) entry: Option<cache::Entry>,
}

fn timed(
    model: &ModelDir,
    opts: &DetectorOptions,
    artifact: &Artifact,
) -> Result<(Box<dyn Backend>, f64), EngineError> {
    let t = Instant::now();
    let b = build::backend(model, opts, artifact)?;
    Ok((b, t.elapsed().as_secs_f64()))
}

/// Builds in memory (no cache).
pub(super) fn in_memory(model: &ModelDir, opts: &DetectorOptions) -> Result<Built, EngineError> {
    let (backend, build_time) = timed(model, opts, &Artifact::None)?;
    Ok(Built {
        backend,
        build_time,
        cached: false,
        entry: None,
    })
}

/// What `load_cached` works from.
pub(super) struct CacheRequest<'a> {
    pub(super) cfg: &'a EngineSettings,
    pub(super) model: &'a ModelDir,
    /// The model's fingerprint (`None`: optimisation is off, nothing is cached).
    pub(super) fingerprint: Option<&'a str>,
    pub(super) gpu: &'a GpuInfo,
    /// Drop the entry first.
    pub(super) force: bool,
}

/// Builds a backend through the artifact cache: a valid entry is loaded without optimising or
/// building again; otherwise the graphs are built, optimised (CPU) or compiled (TensorRT) and saved
/// atomically (in memory only when the cache directory is not writable). A broken entry is rebuilt,
/// never a crash loop.
pub(super) fn load_cached(
    req: &CacheRequest<'_>,
    opts: &DetectorOptions,
    status: &dyn Fn(&str),
) -> Result<Built, EngineError> {
    let name = opts.provider.name();
    let parts = match artifact_key(
        req.cfg,
        req.fingerprint.unwrap_or_default(),
        &opts.provider,
        opts.cpu_key_precision(),
        req.gpu,
    ) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "no cache key; building in memory");
            status(&format!("building engine ({name})"));
            return in_memory(req.model, opts);
        }
    };
    let key = parts.key();
    let cache_dir = &req.cfg.cache_dir;
    let required = [Graph::Image, Graph::Text].map(|g| artifact_file(&opts.provider, g));
    if req.force {
        cache::remove(cache_dir, &key);
    }
    if let Some(entry) = cache::lookup(cache_dir, &key, &required) {
        status(&format!("loading cached engine ({name})"));
        match timed(req.model, opts, &Artifact::Load(entry.dir.clone())) {
            Ok((backend, build_time)) => {
                tracing::info!(entry = %entry.dir.display(), "loaded the optimized engine from the cache");
                return Ok(Built {
                    backend,
                    build_time,
                    cached: true,
                    entry: Some(entry),
                });
            }
            Err(e) => {
                tracing::warn!(entry = %entry.dir.display(), error = %e, "cached engine does not load; rebuilding");
                cache::remove(cache_dir, &key);
            }
        }
    }
    status(&format!("building engine ({name})"));
    let Some(st) = cache::staging(cache_dir, &key) else {
        return in_memory(req.model, opts);
    };
    let (backend, build_time) = match timed(req.model, opts, &Artifact::Save(st.clone())) {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&st);
            return Err(e);
        }
    };
    let entry = match cache::commit(cache_dir, &st, &parts, build_time, &required) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::warn!(error = %e, "cannot save the optimized engine; serving from memory");
            let _ = std::fs::remove_dir_all(&st);
            None
        }
    };
    Ok(Built {
        backend,
        build_time,
        cached: false,
        entry,
    })
}

//! Saved query sets: named lists of text queries and exemplar images that `/v1/detect` and stream
//! definitions reference by name (`query_set=NAME`), so exemplars are sent once. This module owns
//! the registry and its state file (`<state_dir>/query-sets.json`, written atomically before a
//! change takes effect); checking a set's content against the model is the service's
//! (`DetectService::check_query_set`), and the HTTP mapping is the server's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::exemplar::ExemplarInput;

/// The state file's name in the state folder.
pub(crate) const STATE_FILE: &str = "query-sets.json";

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QuerySetError {
    #[error("invalid query set name {0:?} (1-64 characters of a-z, 0-9, '_' and '-')")]
    Name(String),
    #[error("{0} query sets are saved, the limit (max_query_sets)")]
    Full(usize),
    #[error("the saved query sets would hold {need} MiB of exemplar images, more than query_sets_budget_mb = {budget}")]
    OverBudget { need: u64, budget: u64 },
    #[error("cannot save the query sets to {path}: {message}")]
    Persist { path: String, message: String },
}

impl QuerySetError {
    /// Stable snake_case name for APIs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            QuerySetError::Name(_) => "invalid_name",
            QuerySetError::Full(_) => "too_many_query_sets",
            QuerySetError::OverBudget { .. } => "query_sets_full",
            QuerySetError::Persist { .. } => "persist_failed",
        }
    }
}

/// A saved query set. Exemplars keep their encoded bytes and their SHA-256, computed once (the
/// embedding cache is keyed by it, so a set in use costs no hashing, no decoding and no
/// image-tower pass).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuerySet {
    queries: Vec<String>,
    exemplars: Vec<ExemplarInput>,
    /// `Exemplar::content_key` of each exemplar's bytes (private: always the exemplars' own).
    content_keys: Vec<String>,
}

/// A set as the API lists it (no image bytes).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QuerySetSummary {
    pub name: String,
    pub queries: Vec<String>,
    pub query_images: Vec<ExemplarSummary>,
}

/// An exemplar as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ExemplarSummary {
    pub label: Option<String>,
    #[serde(rename = "box")]
    pub bbox: Option<[f32; 4]>,
    pub negative: bool,
    pub bytes: usize,
    pub sha256: String,
}

impl QuerySet {
    /// A set of these queries and exemplars (hashing each exemplar once).
    pub(crate) fn new(queries: Vec<String>, exemplars: Vec<ExemplarInput>) -> Self {
        let content_keys = exemplars
            .iter()
            .map(|e| crate::pipeline::Exemplar::content_key(&e.image))
            .collect();
        QuerySet {
            queries,
            exemplars,
            content_keys,
        }
    }

    /// Its text queries.
    pub(crate) fn queries(&self) -> &[String] {
        &self.queries
    }

    /// Its exemplars.
    pub(crate) fn exemplars(&self) -> &[ExemplarInput] {
        &self.exemplars
    }

    /// `Exemplar::content_key` of each exemplar, in order.
    pub(crate) fn content_keys(&self) -> &[String] {
        &self.content_keys
    }

    /// Encoded bytes of its exemplar images.
    pub(crate) fn image_bytes(&self) -> u64 {
        self.exemplars.iter().map(|e| e.image.len() as u64).sum()
    }

    /// The set as the API lists it (no image bytes).
    pub(crate) fn summary(&self, name: &str) -> QuerySetSummary {
        QuerySetSummary {
            name: name.to_string(),
            queries: self.queries.clone(),
            query_images: self
                .exemplars
                .iter()
                .zip(&self.content_keys)
                .map(|(e, key)| ExemplarSummary {
                    label: e.label.clone(),
                    bbox: e.bbox,
                    negative: e.negative,
                    bytes: e.image.len(),
                    sha256: key.clone(),
                })
                .collect(),
        }
    }
}

/// A set in the state file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSet {
    queries: Vec<String>,
    query_images: Vec<StoredExemplar>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredExemplar {
    image_base64: String,
    #[serde(rename = "box")]
    bbox: Option<[f32; 4]>,
    label: Option<String>,
    negative: bool,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StateFile {
    sets: BTreeMap<String, StoredSet>,
}

impl From<&QuerySet> for StoredSet {
    fn from(s: &QuerySet) -> Self {
        StoredSet {
            queries: s.queries.clone(),
            query_images: s
                .exemplars
                .iter()
                .map(|e| StoredExemplar {
                    image_base64: base64::engine::general_purpose::STANDARD.encode(&e.image),
                    bbox: e.bbox,
                    label: e.label.clone(),
                    negative: e.negative,
                })
                .collect(),
        }
    }
}

impl TryFrom<StoredSet> for QuerySet {
    type Error = base64::DecodeError;

    fn try_from(s: StoredSet) -> Result<Self, Self::Error> {
        let exemplars = s
            .query_images
            .into_iter()
            .map(|e| {
                Ok(ExemplarInput {
                    image: Bytes::from(
                        base64::engine::general_purpose::STANDARD.decode(e.image_base64)?,
                    ),
                    bbox: e.bbox,
                    label: e.label,
                    negative: e.negative,
                })
            })
            .collect::<Result<_, base64::DecodeError>>()?;
        Ok(QuerySet::new(s.queries, exemplars))
    }
}

/// Checks a set name (the rule of stream names).
pub(crate) fn check_name(name: &str) -> Result<(), QuerySetError> {
    if crate::limits::is_valid_name(name) {
        Ok(())
    } else {
        Err(QuerySetError::Name(name.chars().take(80).collect()))
    }
}

/// The registry's limits (from `Config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_sets: usize,
    /// Encoded exemplar bytes of all sets together.
    pub budget_bytes: u64,
}

/// The registry of saved query sets. Readers (every detection that names a set) take the map's
/// lock only to clone an `Arc`; a change is written to the file under a separate writer lock and
/// swapped in afterwards, so a slow write never holds detections up.
#[derive(Debug)]
pub(crate) struct QuerySets {
    /// `None`: kept in memory only (tests).
    file: Option<PathBuf>,
    limits: Limits,
    sets: Mutex<BTreeMap<String, Arc<QuerySet>>>,
    /// Serialises changes (and their file writes).
    writer: Mutex<()>,
}

impl QuerySets {
    /// An empty registry kept in memory only.
    #[cfg(test)]
    pub(crate) fn in_memory(limits: Limits) -> Self {
        QuerySets {
            file: None,
            limits,
            sets: Mutex::new(BTreeMap::new()),
            writer: Mutex::new(()),
        }
    }

    /// The registry saved in `file`, with the sets it holds. An unreadable file is renamed aside
    /// (`<file>.bad-<unix seconds>`, with an error logged) and the daemon starts without its sets:
    /// the next change cannot overwrite what was there.
    pub(crate) fn load(file: PathBuf, limits: Limits) -> Self {
        let state = crate::state_file::StateFile::new(file.clone());
        let sets = match state.load(parse_state) {
            crate::state_file::Loaded::Read(s) => s,
            crate::state_file::Loaded::Missing => BTreeMap::new(),
            crate::state_file::Loaded::SetAside { error, aside } => {
                let kept_as = aside.map(|a| a.display().to_string()).unwrap_or_default();
                tracing::error!(path = %file.display(), error = %error, kept_as = %kept_as, "query set state file is not valid; its sets are not loaded");
                BTreeMap::new()
            }
        };
        QuerySets {
            file: Some(file),
            limits,
            sets: Mutex::new(sets),
            writer: Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<QuerySet>>> {
        self.sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The set named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<QuerySet>> {
        self.lock().get(name).cloned()
    }

    /// Every set, by name, without image bytes.
    pub(crate) fn list(&self) -> Vec<QuerySetSummary> {
        self.lock().iter().map(|(n, s)| s.summary(n)).collect()
    }

    /// One set without image bytes.
    pub(crate) fn summary(&self, name: &str) -> Option<QuerySetSummary> {
        self.lock().get(name).map(|s| s.summary(name))
    }

    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Saves `set` as `name` (already checked by the service); `true` when it is new. The state
    /// file is written first: a set that could not be saved is not used either. Blocking (a file
    /// write): call it off the async threads.
    pub(crate) fn put(&self, name: &str, set: QuerySet) -> Result<bool, QuerySetError> {
        check_name(name)?;
        let _writer = self.write_lock();
        let mut next = self.lock().clone();
        let created = !next.contains_key(name);
        if created && next.len() >= self.limits.max_sets {
            return Err(QuerySetError::Full(next.len()));
        }
        next.insert(name.to_string(), Arc::new(set));
        let need: u64 = next.values().map(|s| s.image_bytes()).sum();
        if need > self.limits.budget_bytes {
            return Err(QuerySetError::OverBudget {
                need: need.div_ceil(1 << 20),
                budget: self.limits.budget_bytes >> 20,
            });
        }
        self.save(&next)?;
        *self.lock() = next;
        Ok(created)
    }

    /// Deletes the set `name`; `false` when there was none. Blocking, like `put`.
    pub(crate) fn delete(&self, name: &str) -> Result<bool, QuerySetError> {
        let _writer = self.write_lock();
        let mut next = self.lock().clone();
        if next.remove(name).is_none() {
            return Ok(false);
        }
        self.save(&next)?;
        *self.lock() = next;
        Ok(true)
    }

    fn save(&self, sets: &BTreeMap<String, Arc<QuerySet>>) -> Result<(), QuerySetError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let fail = |message: String| QuerySetError::Persist {
            path: path.display().to_string(),
            message,
        };
        let state = StateFile {
            sets: sets
                .iter()
                .map(|(n, s)| (n.clone(), StoredSet::from(&**s)))
                .collect(),
        };
        crate::state_file::StateFile::new(path.clone())
            .save(&state, false)
            .map_err(fail)
    }
}

/// The sets of a state file's content.
fn parse_state(bytes: &[u8]) -> Result<BTreeMap<String, Arc<QuerySet>>, String> {
    let state: StateFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    state
        .sets
        .into_iter()
        .map(|(n, s)| {
            check_name(&n).map_err(|e| e.to_string())?;
            let set = QuerySet::try_from(s).map_err(|e| format!("set {n:?}: {e}"))?;
            Ok((n, Arc::new(set)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(label: &str) -> QuerySet {
        QuerySet::new(
            vec!["a cat".into()],
            vec![ExemplarInput {
                image: Bytes::from_static(b"\x89PNG not really"),
                bbox: Some([1.0, 2.0, 3.0, 4.0]),
                label: Some(label.into()),
                negative: true,
            }],
        )
    }

    const LIMITS: Limits = Limits {
        max_sets: 4,
        budget_bytes: 1 << 20,
    };

    #[test]
    fn sets_survive_a_reload_and_deletes_too() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("state").join(STATE_FILE);
        let r = QuerySets::load(file.clone(), LIMITS);
        assert!(r.put("parts", set("bolt")).expect("put"));
        assert!(!r.put("parts", set("nut")).expect("replace"));
        assert!(r.put("logos", set("x")).expect("put"));
        let again = QuerySets::load(file.clone(), LIMITS);
        assert_eq!(again.get("parts").as_deref(), Some(&set("nut")));
        let names: Vec<String> = again.list().into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["logos", "parts"]);
        assert!(again.delete("logos").expect("delete"));
        assert!(!again.delete("logos").expect("gone"));
        assert!(QuerySets::load(file.clone(), LIMITS).get("logos").is_none());
    }

    #[test]
    fn names_and_the_count_are_limited() {
        let r = QuerySets::in_memory(Limits {
            max_sets: 1,
            budget_bytes: 20,
        });
        assert_eq!(
            r.put("Bad Name", set("a")).expect_err("name").kind(),
            "invalid_name"
        );
        r.put("a", set("a")).expect("first");
        assert_eq!(
            r.put("b", set("b")).expect_err("full").kind(),
            "too_many_query_sets"
        );
        r.put("a", set("c")).expect("replacing is not adding");
        let mut ex = set("d").exemplars;
        ex[0].image = Bytes::from(vec![0u8; 21]);
        let big = QuerySet::new(vec!["a cat".into()], ex);
        assert_eq!(
            r.put("a", big).expect_err("budget").kind(),
            "query_sets_full"
        );
        assert_eq!(r.get("a").as_deref(), Some(&set("c")), "unchanged");
    }

    #[test]
    fn an_unreadable_state_file_loads_no_set() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join(STATE_FILE);
        std::fs::write(&file, b"{\"sets\": 3}").expect("write");
        let r = QuerySets::load(file.clone(), LIMITS);
        assert!(r.list().is_empty());
        // Kept aside, not overwritten by the next change.
        r.put("a", set("a")).expect("put");
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("query-sets.json.bad-")
            })
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(
            std::fs::read(aside[0].path()).expect("read"),
            b"{\"sets\": 3}"
        );
    }
}

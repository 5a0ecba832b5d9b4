//! Saved API stream definitions as read from `streams.json`: each definition on its own, so that
//! one that does not parse is kept (as it was) and shown, not lost with the others.

use crate::spec::{check_name, StreamSpec};
use crate::state_file::{Loaded, StateFile};
use serde::{Deserialize, Serialize};

/// The state file's content, each definition read on its own: one that does not parse is kept,
/// as it was, until it is deleted.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StateFileContent {
    pub(super) streams: Vec<serde_json::Value>,
}

/// One saved definition as read.
pub(super) enum Saved {
    Spec(StreamSpec, serde_json::Value),
    /// Does not parse: its name when it has a valid one, the JSON, the parse error.
    Unreadable(Option<String>, serde_json::Value, String),
}

/// The saved definitions; none (with an error logged) when the file is unreadable, which is
/// then set aside so that no change overwrites it.
pub(super) fn read(state: &StateFile) -> Vec<Saved> {
    let content = match state.load_json::<StateFileContent>() {
        Loaded::Read(c) => c,
        Loaded::Missing => return Vec::new(),
        Loaded::SetAside { error, aside } => {
            let kept_as = aside.map(|a| a.display().to_string()).unwrap_or_default();
            tracing::error!(path = %state.path().display(), error = %error, kept_as = %kept_as, "stream state file is not valid; it is set aside and its streams are not started");
            return Vec::new();
        }
    };
    content
        .streams
        .into_iter()
        .map(
            |raw| match serde_json::from_value::<StreamSpec>(raw.clone()) {
                Ok(spec) => Saved::Spec(spec, raw),
                Err(e) => {
                    let name = raw["name"]
                        .as_str()
                        .filter(|n| check_name(n).is_ok())
                        .map(str::to_string);
                    Saved::Unreadable(name, raw, e.to_string())
                }
            },
        )
        .collect()
}

/// A definition for the status of a saved one that does not parse: its name, and its URL and
/// queries when they are there.
pub(super) fn lenient_spec(name: &str, raw: &serde_json::Value) -> StreamSpec {
    StreamSpec {
        name: name.to_string(),
        url: raw["url"].as_str().unwrap_or_default().to_string(),
        queries: raw["queries"]
            .as_array()
            .map(|q| {
                q.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        query_set: raw["query_set"].as_str().map(str::to_string),
        threshold: None,
        nms: None,
        max_fps: 0.0,
        zones: Default::default(),
        lines: Default::default(),
    }
}

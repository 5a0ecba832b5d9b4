//! Stream definitions: what a `[[streams]]` table of the config file, a `PUT /v1/streams/{name}`
//! body and the persisted state file hold, and their validation (name, URL scheme, queries,
//! numbers). Knows nothing about GStreamer.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::limits::QueryRules;

pub(crate) mod rules;
pub(crate) use rules::{Lines, Zones};

/// The most frames per second `max_fps` may ask for.
pub(crate) const MAX_FPS_LIMIT: f64 = 1000.0;

/// One stream's definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// `[a-z0-9_-]{1,64}`.
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub queries: Vec<String>,
    /// A saved query set (`/v1/query-sets`) whose queries come before `queries`; read at every
    /// frame, so changing the set changes what the stream looks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_set: Option<String>,
    /// Score threshold (default: the daemon's `default_threshold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    /// Per-query NMS IoU (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nms: Option<f32>,
    /// Frames per second to process at most (0: as fast as inference allows).
    #[serde(default)]
    pub max_fps: f64,
    /// Zones by name (`video::rules` decides presence, loitering and occupancy).
    #[serde(default, skip_serializing_if = "Zones::is_empty")]
    pub(crate) zones: Zones,
    /// Directed lines by name (crossings and counts).
    #[serde(default, skip_serializing_if = "Lines::is_empty")]
    pub(crate) lines: Lines,
}

/// A `PUT /v1/streams/{name}` body: a definition without its name (the path gives it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamBody {
    pub url: String,
    #[serde(default)]
    pub queries: Vec<String>,
    #[serde(default)]
    pub query_set: Option<String>,
    #[serde(default)]
    pub threshold: Option<f32>,
    #[serde(default)]
    pub nms: Option<f32>,
    #[serde(default)]
    pub max_fps: f64,
    #[serde(default)]
    pub(crate) zones: Zones,
    #[serde(default)]
    pub(crate) lines: Lines,
}

impl StreamBody {
    pub(crate) fn named(self, name: &str) -> StreamSpec {
        StreamSpec {
            name: name.to_string(),
            url: self.url,
            queries: self.queries,
            query_set: self.query_set,
            threshold: self.threshold,
            nms: self.nms,
            max_fps: self.max_fps,
            zones: self.zones,
            lines: self.lines,
        }
    }
}

/// Where a stream's frames come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `rtsp://` or `rtsps://`.
    Rtsp(String),
    /// `http://` or `https://` (MJPEG, HLS…).
    Http(String),
    /// A local file (a path or `file://`).
    File(PathBuf),
    /// `v4l2:///dev/videoN`.
    V4l2(PathBuf),
}

impl Source {
    /// Live sources keep only the newest frame and reconnect forever; files end.
    pub fn is_live(&self) -> bool {
        !matches!(self, Source::File(_))
    }

    /// A URI GStreamer's `uridecodebin3` takes (`None` for V4L2 devices, which get `v4l2src`).
    pub fn uri(&self) -> Option<String> {
        match self {
            Source::Rtsp(u) | Source::Http(u) => Some(u.clone()),
            Source::File(p) => Some(file_uri(p)),
            Source::V4l2(_) => None,
        }
    }
}

/// `file://` URI of an absolute path, percent-encoding what a URI path cannot hold.
fn file_uri(p: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut s = String::from("file://");
    for &b in p.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Query-string keys whose values are credentials (compared without case; cameras use all of
/// them: `?user=admin&pwd=…`, `?token=…`).
const SECRET_KEYS: [&str; 14] = [
    "password",
    "passwd",
    "pwd",
    "pass",
    "psw",
    "secret",
    "token",
    "access_token",
    "auth",
    "authorization",
    "key",
    "apikey",
    "api_key",
    "signature",
];

/// `url` with its secrets hidden, for logs and status documents: the password of its user
/// information (`rtsp://admin:***@cam/…`) and the values of credential keys in its query string
/// (`?user=admin&pwd=***`); other URLs unchanged.
pub(crate) fn redacted(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = redacted_userinfo(base);
    if let Some(q) = query {
        out.push('?');
        out.push_str(&redacted_query(q));
    }
    out
}

fn redacted_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// A query string with the values of [`SECRET_KEYS`] replaced by `***` (`&` and `;` separate).
fn redacted_query(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    let mut rest = q;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let (pair, tail) = rest.split_at(end);
        match pair.split_once('=') {
            Some((k, _)) if is_secret_key(k) => {
                out.push_str(k);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
        let Some(sep) = tail.chars().next() else {
            return out;
        };
        out.push(sep);
        rest = &tail[1..];
    }
}

fn is_secret_key(k: &str) -> bool {
    let k = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
    SECRET_KEYS.iter().any(|s| k.eq_ignore_ascii_case(s))
}

/// Where the local sources (files, V4L2 devices) of a stream definition may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LocalPolicy {
    /// The config file's streams (the file is root's): any path.
    Any,
    /// Streams added through the API: files inside these folders (`stream_file_roots`; none by
    /// default), V4L2 devices `/dev/videoN` and `/dev/v4l/…` only.
    Roots(Vec<PathBuf>),
}

/// Checks `source` against `policy` on the file system as it is now, and returns it with its path
/// resolved (links followed), which is what the pipeline then opens. A refused path's error does
/// not tell whether it exists or what it is.
pub(crate) fn check_local_access(
    source: &Source,
    policy: &LocalPolicy,
) -> Result<Source, SpecError> {
    let LocalPolicy::Roots(roots) = policy else {
        return Ok(source.clone());
    };
    match source {
        Source::File(p) => {
            let refused = || {
                SpecError::Url(format!(
                    "{} is not inside a folder of stream_file_roots ({}): streams added through the API may read local files only there",
                    p.display(),
                    if roots.is_empty() {
                        "none configured".to_string()
                    } else {
                        roots
                            .iter()
                            .map(|r| r.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ))
            };
            if !roots.iter().any(|r| p.starts_with(r)) {
                return Err(refused());
            }
            // Inside a root as written: what is there may be told; a link out of it may not.
            let real = std::fs::canonicalize(p)
                .map_err(|e| SpecError::Url(format!("{}: {e}", p.display())))?;
            let inside = roots
                .iter()
                .any(|r| std::fs::canonicalize(r).is_ok_and(|r| real.starts_with(&r) && real != r));
            if inside {
                Ok(Source::File(real))
            } else {
                Err(refused())
            }
        }
        Source::V4l2(p) => {
            let refused = || {
                SpecError::Url(format!(
                    "{} is not a video device: streams added through the API may use /dev/videoN and /dev/v4l/… only",
                    p.display()
                ))
            };
            let real = std::fs::canonicalize(p).map_err(|_| refused())?;
            if is_video_device_path(&real) {
                Ok(Source::V4l2(real))
            } else {
                Err(refused())
            }
        }
        _ => Ok(source.clone()),
    }
}

/// `/dev/videoN` or a path under `/dev/v4l/`.
fn is_video_device_path(p: &Path) -> bool {
    if p.starts_with("/dev/v4l") {
        return true;
    }
    p.parent() == Some(Path::new("/dev"))
        && p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("video"))
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Why a stream definition is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("stream name {0:?} is invalid: use 1 to 64 of a-z, 0-9, '_' and '-'")]
    Name(String),
    #[error("{0}")]
    Url(String),
    #[error("{0}")]
    Queries(String),
    /// A `query_set` that does not exist.
    #[error("{0}")]
    QuerySet(String),
    #[error("{0}")]
    Number(String),
    /// A zone or line that is not valid.
    #[error("{0}")]
    Rules(String),
}

/// Checks a stream name: `[a-z0-9_-]{1,64}`.
pub(crate) fn check_name(name: &str) -> Result<(), SpecError> {
    if crate::limits::is_valid_name(name) {
        Ok(())
    } else {
        Err(SpecError::Name(name.chars().take(80).collect()))
    }
}

/// Parses a stream URL into its source.
pub(crate) fn parse_url(url: &str) -> Result<Source, SpecError> {
    let bad = |m: String| Err(SpecError::Url(m));
    if url.is_empty() || url.len() > 4096 {
        return bad("url must be 1 to 4096 bytes".into());
    }
    if url.chars().any(char::is_control) {
        return bad("url contains control characters".into());
    }
    let lower = url.to_ascii_lowercase();
    let rest = |scheme: &str| &url[scheme.len()..];
    if lower.starts_with("rtsp://") || lower.starts_with("rtsps://") {
        let scheme_len = if lower.starts_with("rtsp://") { 7 } else { 8 };
        if url.len() == scheme_len {
            return bad(format!("url {url:?} has no host"));
        }
        return Ok(Source::Rtsp(url.to_string()));
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let scheme_len = if lower.starts_with("http://") { 7 } else { 8 };
        if url.len() == scheme_len {
            return bad(format!("url {url:?} has no host"));
        }
        return Ok(Source::Http(url.to_string()));
    }
    if lower.starts_with("v4l2://") {
        let dev = rest("v4l2://");
        if !dev.starts_with("/dev/") || dev.len() <= 5 || has_dot_dot(dev) {
            return bad(format!("url {url:?}: a V4L2 camera is v4l2:///dev/videoN"));
        }
        return Ok(Source::V4l2(PathBuf::from(dev)));
    }
    if lower.starts_with("file://") {
        let path = rest("file://");
        if !path.starts_with('/') {
            return bad(format!(
                "url {url:?}: a file URL needs an absolute path (file:///path)"
            ));
        }
        let decoded = percent_encoding::percent_decode_str(path).collect::<Vec<u8>>();
        use std::os::unix::ffi::OsStringExt;
        let p = PathBuf::from(std::ffi::OsString::from_vec(decoded));
        if has_dot_dot(&p.to_string_lossy()) {
            return bad(format!("url {url:?}: a path may not contain '..'"));
        }
        return Ok(Source::File(p));
    }
    if url.starts_with('/') {
        if has_dot_dot(url) {
            return bad(format!("url {url:?}: a path may not contain '..'"));
        }
        return Ok(Source::File(PathBuf::from(url)));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return bad(format!(
            "url scheme {scheme:?} is not supported (rtsp, rtsps, http, https, file, v4l2, or an absolute path)"
        ));
    }
    bad(format!(
        "url {url:?} is neither a supported URL (rtsp, rtsps, http, https, file, v4l2) nor an absolute path"
    ))
}

/// Whether a path has a `..` component.
fn has_dot_dot(p: &str) -> bool {
    p.split('/').any(|c| c == "..")
}

impl StreamSpec {
    /// Checks the whole definition against the daemon's query rules; returns its source.
    pub fn validate(&self, rules: &QueryRules) -> Result<Source, SpecError> {
        check_name(&self.name)?;
        let source = parse_url(&self.url)?;
        match &self.query_set {
            Some(set) if !crate::limits::is_valid_name(set) => {
                return Err(SpecError::Queries(format!(
                    "query_set: invalid query set name {:?} (1-64 characters of a-z, 0-9, '_' and '-')",
                    set.chars().take(80).collect::<String>()
                )))
            }
            Some(_) => {}
            None if self.queries.is_empty() => {
                return Err(SpecError::Queries(
                    "queries must not be empty (or name a query_set)".into(),
                ))
            }
            None => {}
        }
        if !self.queries.is_empty() {
            rules
                .check(&self.queries)
                .map_err(|e| SpecError::Queries(e.to_string()))?;
        }
        for (what, v) in [("threshold", self.threshold), ("nms IoU", self.nms)] {
            match v {
                Some(v) if !v.is_finite() || !(0.0..=1.0).contains(&v) => {
                    return Err(SpecError::Number(format!(
                        "{what} must be a number in [0, 1], got {v}"
                    )))
                }
                _ => {}
            }
        }
        if !self.max_fps.is_finite() || !(0.0..=MAX_FPS_LIMIT).contains(&self.max_fps) {
            return Err(SpecError::Number(format!(
                "max_fps must be a number in [0, {MAX_FPS_LIMIT}], got {}",
                self.max_fps
            )));
        }
        rules::check(&self.zones, &self.lines).map_err(SpecError::Rules)?;
        Ok(source)
    }
}

#[cfg(test)]
mod tests;

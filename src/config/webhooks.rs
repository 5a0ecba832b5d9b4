//! `[[webhooks]]` tables: where events are POSTed (`events::webhook`), which ones, signed with
//! which secret (a file: never in the config file), retried for how long.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Webhooks at most.
pub(crate) const MAX_WEBHOOKS: usize = 32;

/// One `[[webhooks]]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://`.
    pub url: String,
    /// Its name in metrics and its position file (default: derived from the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Event types to send (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Streams whose events to send (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<String>,
    /// A file holding the HMAC-SHA256 key for `X-IV-Signature` (absent: unsigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// After an event of a stream and type is sent, others of the same stream and type within
    /// this many seconds are skipped (0: none).
    #[serde(default)]
    pub cooldown_s: f64,
    /// 5xx answers and timeouts are retried (with backoff) until the event is this old.
    #[serde(default = "default_max_age_s")]
    pub max_age_s: f64,
    /// One attempt's time limit.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
}

fn default_max_age_s() -> f64 {
    3600.0
}

fn default_timeout_s() -> f64 {
    10.0
}

impl WebhookConfig {
    /// The webhook's name: `name`, else `webhook-` and 12 hex digits of the URL's SHA-256.
    pub(crate) fn id(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let h = Sha256::digest(self.url.as_bytes());
            format!("webhook-{}", &hex::encode(h)[..12])
        })
    }

    /// Checks the table; the message names what is wrong.
    pub(crate) fn check(&self, kinds: &[&str]) -> Result<(), String> {
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
            return Err(format!(
                "url {:?} must be http:// or https:// with a host",
                self.url
            ));
        }
        if let Some(n) = &self.name {
            if !crate::limits::is_valid_name(n) {
                return Err(format!(
                    "name {n:?} must be 1-64 characters of a-z, 0-9, '_' and '-'"
                ));
            }
        }
        if let Some(e) = self.events.iter().find(|e| !kinds.contains(&e.as_str())) {
            return Err(format!(
                "unknown event type {e:?} (one of {})",
                kinds.join(", ")
            ));
        }
        if let Some(s) = self
            .streams
            .iter()
            .find(|s| !crate::limits::is_valid_name(s))
        {
            return Err(format!("{s:?} is not a stream name"));
        }
        if self.secret_file.as_ref().is_some_and(|f| !f.is_absolute()) {
            return Err("secret_file must be an absolute path".into());
        }
        for (key, v, max) in [
            ("cooldown_s", self.cooldown_s, 86_400.0),
            ("max_age_s", self.max_age_s, 30.0 * 86_400.0),
            ("timeout_s", self.timeout_s, 600.0),
        ] {
            if !v.is_finite() || v < 0.0 || v > max {
                return Err(format!(
                    "{key} must be a number of seconds in [0, {max}], got {v}"
                ));
            }
        }
        if self.timeout_s == 0.0 {
            return Err("timeout_s must be positive".into());
        }
        Ok(())
    }

    /// The signing key, read from `secret_file` (trailing newline removed).
    pub(crate) fn secret(&self) -> Result<Option<Vec<u8>>, String> {
        match &self.secret_file {
            None => Ok(None),
            Some(f) => std::fs::read(f)
                .map(|mut b| {
                    while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                        b.pop();
                    }
                    Some(b)
                })
                .map_err(|e| format!("cannot read the webhook secret {}: {e}", f.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str) -> WebhookConfig {
        toml::from_str(&format!("url = {url:?}")).expect("parses")
    }

    #[test]
    fn webhooks_are_checked_with_defaults() {
        let kinds = ["new", "end"];
        let h = hook("http://127.0.0.1:9/hook");
        assert_eq!(
            (h.max_age_s, h.timeout_s, h.cooldown_s),
            (3600.0, 10.0, 0.0)
        );
        assert_eq!(h.check(&kinds), Ok(()));
        assert!(
            h.id().starts_with("webhook-") && h.id().len() == 20,
            "{}",
            h.id()
        );
        assert!(hook("ftp://x").check(&kinds).is_err());
        assert!(hook("https://").check(&kinds).is_err());
        let mut h = hook("https://x/y");
        h.events = vec!["enter".into()];
        assert!(h
            .check(&kinds)
            .expect_err("type")
            .contains("unknown event type"));
        let mut h = hook("https://x/y");
        h.max_age_s = f64::INFINITY;
        assert!(h.check(&kinds).expect_err("age").contains("max_age_s"));
        let mut h = hook("https://x/y");
        h.secret_file = Some("secret".into());
        assert!(h.check(&kinds).is_err());
    }
}

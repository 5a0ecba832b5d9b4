//! The `[mqtt]` table: where events are published (`events::mqtt`) and how the daemon signs in.
//! A password is never in the config file: `password_file` names a file (with systemd,
//! `LoadCredential=mqtt-password:…` puts one in `$CREDENTIALS_DIRECTORY`, read when
//! `password_file` is unset).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Credential name looked up in `$CREDENTIALS_DIRECTORY` when `password_file` is unset.
pub(crate) const PASSWORD_CREDENTIAL: &str = "mqtt-password";

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]` (TLS with the system's roots).
    pub url: String,
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Every topic starts with it.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A file holding the password (one line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Home Assistant MQTT discovery (sensors per stream and label, zone occupancy and presence).
    #[serde(default)]
    pub home_assistant: bool,
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
    /// `"3.1.1"` (default) or `"5"`.
    #[serde(default)]
    pub protocol: MqttProtocol,
}

/// The MQTT protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MqttProtocol {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

/// `intelligent-video-<hostname>`: one per machine (and per container), because a broker drops the
/// older connection of a client id, so daemons sharing a broker must not share one.
fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    client_id_for(host.trim())
}

/// The client id of host `host`: its letters, digits, `-`, `_` and `.` (at most 100), else the plain
/// `intelligent-video`.
fn client_id_for(host: &str) -> String {
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(100)
        .collect();
    if host.is_empty() {
        "intelligent-video".into()
    } else {
        format!("intelligent-video-{host}")
    }
}

fn default_prefix() -> String {
    "intelligent-video".into()
}

fn default_discovery_prefix() -> String {
    "homeassistant".into()
}

/// Where a broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Broker {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl MqttConfig {
    /// The broker of `url`.
    pub(crate) fn broker(&self) -> Result<Broker, String> {
        let (tls, rest) = if let Some(r) = self.url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = self.url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(format!(
                "url {:?} must start with mqtt:// or mqtts://",
                self.url
            ));
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains(['/', '@', '?', '#']) {
            return Err(format!(
                "url {:?} must be mqtt[s]://host[:port] (credentials go in username and password_file)",
                self.url
            ));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => match p.parse::<u16>() {
                Ok(port) if port > 0 => (h, port),
                _ => return Err(format!("url {:?} has a bad port", self.url)),
            },
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Broker {
            host: host.to_string(),
            port,
            tls,
        })
    }

    /// Checks the table; the message names the key.
    pub(crate) fn check(&self) -> Result<(), String> {
        self.broker()?;
        if self.client_id.is_empty() || self.client_id.len() > 128 {
            return Err("client_id must be 1 to 128 bytes".into());
        }
        for (key, p) in [
            ("topic_prefix", &self.topic_prefix),
            ("discovery_prefix", &self.discovery_prefix),
        ] {
            if p.is_empty()
                || p.starts_with('/')
                || p.ends_with('/')
                || p.contains(['+', '#', '\0'])
            {
                return Err(format!(
                    "{key} {p:?} must be a topic without wildcards or leading/trailing '/'"
                ));
            }
        }
        if let Some(f) = &self.password_file {
            if !f.is_absolute() {
                return Err(format!(
                    "password_file {} is not an absolute path",
                    f.display()
                ));
            }
        }
        Ok(())
    }

    /// The password: `password_file`, else the `mqtt-password` systemd credential, else none.
    pub(crate) fn password(&self) -> Result<Option<String>, String> {
        let file = self.password_file.clone().or_else(|| {
            std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(|d| PathBuf::from(d).join(PASSWORD_CREDENTIAL))
                .filter(|p| p.is_file())
        });
        match file {
            None => Ok(None),
            Some(f) => std::fs::read_to_string(&f)
                .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_string()))
                .map_err(|e| format!("cannot read the MQTT password from {}: {e}", f.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> MqttConfig {
        MqttConfig {
            url: url.into(),
            client_id: default_client_id(),
            topic_prefix: default_prefix(),
            username: None,
            password_file: None,
            home_assistant: false,
            discovery_prefix: default_discovery_prefix(),
            protocol: MqttProtocol::V311,
        }
    }

    #[test]
    fn default_client_ids_carry_the_host_name() {
        assert_eq!(client_id_for("spark-01"), "intelligent-video-spark-01");
        assert_eq!(client_id_for("a b/c#"), "intelligent-video-abc");
        assert_eq!(client_id_for(""), "intelligent-video");
        assert_eq!(client_id_for(&"x".repeat(300)).len(), 118);
        assert!(default_client_id().starts_with("intelligent-video"));
    }

    #[test]
    fn broker_urls() {
        let b = |u: &str| cfg(u).broker();
        assert_eq!(
            b("mqtt://127.0.0.1:1884"),
            Ok(Broker {
                host: "127.0.0.1".into(),
                port: 1884,
                tls: false
            })
        );
        assert_eq!(
            b("mqtts://broker.lan").map(|b| (b.port, b.tls)),
            Ok((8883, true))
        );
        assert_eq!(b("mqtt://[::1]:1883").map(|b| b.host), Ok("::1".into()));
        assert!(b("tcp://x").is_err());
        assert!(b("mqtt://user:pw@host").is_err());
        assert!(b("mqtt://host:0").is_err());
        assert!(b("mqtt://").is_err());
        let mut c = cfg("mqtt://h");
        c.topic_prefix = "a/#".into();
        assert!(c.check().expect_err("wildcard").contains("topic_prefix"));
        c.topic_prefix = "iv".into();
        c.password_file = Some("pw".into());
        assert!(c.check().expect_err("relative").contains("password_file"));
    }
}

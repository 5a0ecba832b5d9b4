//! What an event becomes on MQTT, as pure functions: the topics and payloads, the retained state
//! derived from the events (tracks in view per stream and label, zone occupancy, line counts), and
//! Home Assistant discovery configs the first time a stream/label or zone/label is seen.
//!
//! Topics (`P` = `topic_prefix`):
//! - `P/available`: `online` (retained), `offline` (retained, also the last will);
//! - `P/events`: every event, the journal's JSON line;
//! - `P/<stream>/<label>`: tracks of that label in view (retained);
//! - `P/<stream>/zones/<zone>/<label>`: the zone's occupancy by that label (retained);
//! - `P/<stream>/lines/<line>`: `{"<label>": {"in": N, "out": M}, …}` (retained);
//! - `P/<stream>/<label>/snapshot`: the JPEG of the last ended track's best frame (retained).
//!
//! Labels are made topic-safe one way: lower-cased, every character other than `a-z`, `0-9`, `_`
//! and `-` becomes `_` ("a red square" → `a_red_square`). Stream, zone and line names are already
//! `[a-z0-9_-]`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// A label as it appears in topics.
pub(crate) fn topic_safe(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The state the retained topics show, rebuilt from the events a sink delivers.
#[derive(Debug, Default)]
pub(crate) struct View {
    prefix: String,
    /// Home Assistant discovery prefix, when discovery is on.
    discovery: Option<String>,
    in_view: BTreeMap<(String, String), u64>,
    lines: BTreeMap<(String, String), BTreeMap<String, Value>>,
    announced: BTreeSet<String>,
}

impl View {
    pub(crate) fn new(prefix: &str, discovery: Option<&str>) -> Self {
        View {
            prefix: prefix.to_string(),
            discovery: discovery.map(str::to_string),
            ..View::default()
        }
    }

    /// The retained snapshot message of a track of `label` on `stream` that ended.
    pub(crate) fn snapshot(&self, stream: &str, label: &str, jpeg: Vec<u8>) -> Message {
        Message {
            topic: format!("{}/{stream}/{}/snapshot", self.prefix, topic_safe(label)),
            payload: jpeg,
            retain: true,
        }
    }

    pub(crate) fn available(&self, online: bool) -> Message {
        Message {
            topic: format!("{}/available", self.prefix),
            payload: if online {
                b"online".to_vec()
            } else {
                b"offline".to_vec()
            },
            retain: true,
        }
    }

    /// The messages of one journal line: the event itself, then the retained state it changes
    /// (after its discovery config, the first time). A line that is not an event gives none.
    pub(crate) fn messages(&mut self, line: &[u8]) -> Vec<Message> {
        match serde_json::from_slice::<Value>(line) {
            Ok(e) => self.messages_of(&e, line),
            Err(_) => Vec::new(),
        }
    }

    /// [`View::messages`] of a line already parsed as `e`.
    pub(crate) fn messages_of(&mut self, e: &Value, line: &[u8]) -> Vec<Message> {
        let (Some(kind), Some(stream), Some(label)) = (
            e["type"].as_str(),
            e["stream"].as_str(),
            e["label"].as_str(),
        ) else {
            return Vec::new();
        };
        let body = line.strip_suffix(b"\n").unwrap_or(line).to_vec();
        let mut out = vec![Message {
            topic: format!("{}/events", self.prefix),
            payload: body,
            retain: false,
        }];
        let safe = topic_safe(label);
        match kind {
            "new" | "end" => {
                let n = self
                    .in_view
                    .entry((stream.into(), safe.clone()))
                    .or_insert(0);
                *n = if kind == "new" {
                    *n + 1
                } else {
                    n.saturating_sub(1)
                };
                let n = *n;
                let topic = format!("{}/{stream}/{safe}", self.prefix);
                out.extend(self.discover_count(stream, &safe, label, &topic));
                out.push(retained(topic, n.to_string()));
            }
            "zone_enter" | "zone_exit" => {
                let (Some(zone), Some(n)) = (e["zone"].as_str(), e["occupancy"].as_u64()) else {
                    return out;
                };
                let topic = format!("{}/{stream}/zones/{zone}/{safe}", self.prefix);
                out.extend(self.discover_zone(stream, zone, &safe, label, &topic));
                out.push(retained(topic, n.to_string()));
            }
            "line_cross" => {
                let Some(line_name) = e["line"].as_str() else {
                    return out;
                };
                let counts = self
                    .lines
                    .entry((stream.into(), line_name.into()))
                    .or_default();
                counts.insert(label.to_string(), e["counts"].clone());
                let payload = Value::Object(counts.clone().into_iter().collect()).to_string();
                out.push(retained(
                    format!("{}/{stream}/lines/{line_name}", self.prefix),
                    payload,
                ));
            }
            _ => {}
        }
        out
    }

    fn device(&self) -> Value {
        json!({"identifiers": [format!("intelligent-video-{}", self.prefix)], "name": "Intelligent Video", "manufacturer": "Intelligent Video"})
    }

    fn availability(&self) -> Value {
        json!([{"topic": format!("{}/available", self.prefix)}])
    }

    /// A sensor of the tracks of `label` in view on `stream` (first time only).
    fn discover_count(
        &mut self,
        stream: &str,
        safe: &str,
        label: &str,
        topic: &str,
    ) -> Option<Message> {
        let discovery = self.discovery.clone()?;
        let id = format!("iv_{stream}_{safe}");
        if !self.announced.insert(id.clone()) {
            return None;
        }
        let config = json!({
            "name": format!("{stream} {label}"),
            "unique_id": id,
            "state_topic": topic,
            "state_class": "measurement",
            "availability": self.availability(),
            "device": self.device(),
        });
        Some(retained(
            format!("{discovery}/sensor/{id}/config"),
            config.to_string(),
        ))
    }

    /// A sensor of the zone's occupancy and a binary sensor of its presence (first time only).
    fn discover_zone(
        &mut self,
        stream: &str,
        zone: &str,
        safe: &str,
        label: &str,
        topic: &str,
    ) -> Vec<Message> {
        let Some(discovery) = self.discovery.clone() else {
            return Vec::new();
        };
        let id = format!("iv_{stream}_{zone}_{safe}");
        if !self.announced.insert(id.clone()) {
            return Vec::new();
        }
        let sensor = json!({
            "name": format!("{stream} {zone} {label}"),
            "unique_id": id,
            "state_topic": topic,
            "state_class": "measurement",
            "availability": self.availability(),
            "device": self.device(),
        });
        let presence = json!({
            "name": format!("{stream} {zone} {label} present"),
            "unique_id": format!("{id}_present"),
            "state_topic": topic,
            "device_class": "occupancy",
            "value_template": "{{ 'ON' if value | int > 0 else 'OFF' }}",
            "availability": self.availability(),
            "device": self.device(),
        });
        vec![
            retained(
                format!("{discovery}/sensor/{id}/config"),
                sensor.to_string(),
            ),
            retained(
                format!("{discovery}/binary_sensor/{id}_present/config"),
                presence.to_string(),
            ),
        ]
    }
}

fn retained(topic: String, payload: String) -> Message {
    Message {
        topic,
        payload: payload.into_bytes(),
        retain: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(v: Value) -> Vec<u8> {
        let mut b = v.to_string().into_bytes();
        b.push(b'\n');
        b
    }

    fn topics(m: &[Message]) -> Vec<(&str, String, bool)> {
        m.iter()
            .map(|m| {
                (
                    m.topic.as_str(),
                    String::from_utf8_lossy(&m.payload).to_string(),
                    m.retain,
                )
            })
            .collect()
    }

    #[test]
    fn labels_become_topic_safe_one_way() {
        assert_eq!(topic_safe("a red square"), "a_red_square");
        assert_eq!(topic_safe("Forklift/#1+"), "forklift__1_");
        assert_eq!(topic_safe("café"), "caf_");
    }

    #[test]
    fn events_give_their_line_and_the_retained_state() {
        let mut v = View::new("iv", None);
        let new = ev(json!({"seq": 1, "stream": "dock", "type": "new", "label": "a forklift"}));
        let m = v.messages(&new);
        assert_eq!(
            topics(&m),
            vec![
                (
                    "iv/events",
                    String::from_utf8_lossy(&new[..new.len() - 1]).to_string(),
                    false
                ),
                ("iv/dock/a_forklift", "1".to_string(), true),
            ]
        );
        let zone = ev(
            json!({"seq": 2, "stream": "dock", "type": "zone_enter", "label": "a forklift", "zone": "bay", "occupancy": 1}),
        );
        assert_eq!(
            topics(&v.messages(&zone))[1],
            ("iv/dock/zones/bay/a_forklift", "1".into(), true)
        );
        let cross = ev(
            json!({"seq": 3, "stream": "dock", "type": "line_cross", "label": "a forklift", "line": "door", "direction": "in", "counts": {"in": 1, "out": 0}}),
        );
        assert_eq!(
            topics(&v.messages(&cross))[1],
            (
                "iv/dock/lines/door",
                r#"{"a forklift":{"in":1,"out":0}}"#.into(),
                true
            )
        );
        let end = ev(json!({"seq": 4, "stream": "dock", "type": "end", "label": "a forklift"}));
        assert_eq!(
            topics(&v.messages(&end))[1],
            ("iv/dock/a_forklift", "0".into(), true)
        );
        assert!(v.messages(b"{\"keepalive\":true}\n").is_empty());
    }

    #[test]
    fn home_assistant_configs_come_once_before_the_state() {
        let mut v = View::new("iv", Some("homeassistant"));
        let zone = ev(
            json!({"seq": 1, "stream": "porch", "type": "zone_enter", "label": "a package", "zone": "step", "occupancy": 1}),
        );
        let m = v.messages(&zone);
        let t = topics(&m);
        assert_eq!(
            t[1].0,
            "homeassistant/sensor/iv_porch_step_a_package/config"
        );
        assert_eq!(
            t[2].0,
            "homeassistant/binary_sensor/iv_porch_step_a_package_present/config"
        );
        assert_eq!(t[3].0, "iv/porch/zones/step/a_package");
        let config: Value = serde_json::from_slice(&m[2].payload).expect("json");
        assert_eq!(config["state_topic"], "iv/porch/zones/step/a_package");
        assert_eq!(config["availability"][0]["topic"], "iv/available");
        assert_eq!(config["device_class"], "occupancy");
        assert_eq!(v.messages(&zone).len(), 2, "no second config");
    }
}

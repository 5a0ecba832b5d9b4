//! The MQTT sink: delivers the journal's events to a broker in order, QoS 1, at least once, from
//! its durable position (`cursor`), so events wait in the journal while the broker is down or
//! slow, and after a daemon restart (the outbox is the journal: bounded by its retention; events
//! retention drops before delivery are counted and logged). Detection never waits for it. A
//! session: connect (last will `offline`), `online` (retained), the unacknowledged messages again,
//! then new events as they are written; a broker acknowledges QoS 1 messages in order, so each
//! PUBACK delivers the oldest message in flight. Any error ends the session; the next one starts
//! after a capped backoff with a fresh client (nothing is resent twice by the client itself).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cursor::Position;
use super::mqtt_link::{Heard, Link, LinkOptions, Said};
use super::topics::{Message, View};
use super::{EventLog, SinkStats};
use crate::config::mqtt::MqttConfig;
use crate::pacing::Backoff;

/// Messages in flight at most (the client's request queue holds 64).
const WINDOW: usize = 32;
/// A broker that has not accepted the connection by then is tried again later.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the sink; it runs until `stop`.
pub(crate) fn spawn(
    cfg: MqttConfig,
    log: Arc<EventLog>,
    cursor_file: &std::path::Path,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let position = Position::open(&log, "mqtt", cursor_file, "MQTT sink")?;
    let stats = position.stats().clone();
    let view = View::new(
        &cfg.topic_prefix,
        cfg.home_assistant.then_some(cfg.discovery_prefix.as_str()),
    );
    let sink = Sink {
        cfg,
        log,
        taken: position.get(),
        position,
        view,
        unacked: VecDeque::new(),
        stats,
    };
    Ok(tokio::spawn(sink.run(stop)))
}

struct Sink {
    cfg: MqttConfig,
    log: Arc<EventLog>,
    position: Position,
    /// The last sequence number taken from the journal.
    taken: u64,
    view: View,
    /// Events taken from the journal and not yet acknowledged, with their messages (made once:
    /// the view has counted them).
    unacked: VecDeque<(u64, Vec<Message>)>,
    stats: Arc<SinkStats>,
}

impl Sink {
    async fn run(mut self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let result = self.session(&stop).await;
            self.stats.connected.store(false, Ordering::Relaxed);
            match result {
                Ok(()) => return,
                Err((e, delivered)) => {
                    if delivered {
                        backoff.reset();
                    }
                    let wait = backoff.advance();
                    tracing::warn!(error = %e, retry_in_s = wait.as_secs_f64(), "MQTT broker unavailable; events wait in the journal");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    fn options(&self) -> Result<LinkOptions, String> {
        let broker = self.cfg.broker()?;
        let credentials = match &self.cfg.username {
            Some(user) => Some((user.clone(), self.cfg.password()?.unwrap_or_default())),
            None => None,
        };
        Ok(LinkOptions {
            client_id: self.cfg.client_id.clone(),
            host: broker.host,
            port: broker.port,
            tls: broker.tls.then(tls_config),
            credentials,
            will_topic: format!("{}/available", self.cfg.topic_prefix),
            protocol: self.cfg.protocol,
        })
    }

    /// One connection; `Ok` when stopped, else the error and whether anything was delivered.
    async fn session(&mut self, stop: &CancellationToken) -> Result<(), (String, bool)> {
        let (client, mut rx, _poller) = Link::open(self.options().map_err(|e| (e, false))?);
        connected(&mut rx, stop).await.map_err(|e| (e, false))?;
        self.stats.connected.store(true, Ordering::Relaxed);
        tracing::info!(url = %self.cfg.url, "MQTT connected");
        let mut inflight: VecDeque<Option<u64>> = VecDeque::new();
        let mut delivered = false;
        let online = self.view.available(true);
        client.publish(&online).map_err(|e| (e, false))?;
        inflight.push_back(None);
        for (seq, messages) in &self.unacked {
            for (i, m) in messages.iter().enumerate() {
                client.publish(m).map_err(|e| (e, false))?;
                inflight.push_back((i + 1 == messages.len()).then_some(*seq));
            }
        }
        let mut written = self.log.watch();
        loop {
            self.take_new(&client, &mut inflight)
                .await
                .map_err(|e| (e, delivered))?;
            let idle = inflight.len() >= WINDOW || self.taken >= self.log.last_seq();
            tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    let _ = client.publish(&self.view.available(false));
                    client.disconnect();
                    // Let the event loop send them.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Some(Ok(_)) = rx.recv().await {}
                    }).await;
                    return Ok(());
                }
                ev = rx.recv() => match ev {
                    Some(Ok(Said::PubAck)) => {
                        if let Some(Some(seq)) = inflight.pop_front() {
                            self.delivered(seq).map_err(|e| (e, delivered))?;
                            delivered = true;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err((e, delivered)),
                    None => return Err(("the MQTT event loop ended".into(), delivered)),
                },
                r = written.changed(), if idle => {
                    if r.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Publishes events written since the last one taken, while the window has room.
    async fn take_new(
        &mut self,
        client: &Link,
        inflight: &mut VecDeque<Option<u64>>,
    ) -> Result<(), String> {
        let after = self.taken;
        if inflight.len() >= WINDOW || after >= self.log.last_seq() {
            return Ok(());
        }
        let log = self.log.clone();
        let lines = tokio::task::spawn_blocking(move || {
            log.read_after(after, WINDOW).map(|lines| {
                lines
                    .into_iter()
                    .map(|(seq, line)| {
                        // Parsed once here, off the async threads: for the messages and the snapshot.
                        let event = serde_json::from_slice::<serde_json::Value>(&line).ok();
                        let shot = event.as_ref().and_then(|e| ended_snapshot(&log, e));
                        (seq, line, event, shot)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if let Some(&(first, ..)) = lines.first() {
            if first > after.saturating_add(1) {
                let lost = first - after.saturating_add(1);
                self.stats.dropped.fetch_add(lost, Ordering::Relaxed);
                tracing::warn!(lost, "MQTT: events were dropped by the journal's retention before delivery (events_max, events_max_mb)");
            }
        }
        for (seq, line, event, shot) in lines {
            self.taken = seq;
            let mut messages = event
                .map(|e| self.view.messages_of(&e, &line))
                .unwrap_or_default();
            if let Some((stream, label, jpeg)) = shot {
                messages.push(self.view.snapshot(&stream, &label, jpeg));
            }
            for (i, m) in messages.iter().enumerate() {
                client.publish(m)?;
                inflight.push_back((i + 1 == messages.len()).then_some(seq));
            }
            if messages.is_empty() {
                // Nothing to send for it (not an event): delivered as it is.
                self.delivered_now(seq)?;
                continue;
            }
            self.unacked.push_back((seq, messages));
            if inflight.len() >= WINDOW {
                break;
            }
        }
        Ok(())
    }

    /// The oldest unacknowledged event was acknowledged.
    fn delivered(&mut self, seq: u64) -> Result<(), String> {
        match self.unacked.pop_front() {
            Some((s, _)) if s == seq => {}
            other => {
                return Err(format!(
                    "MQTT acknowledgements out of order (expected {seq}, had {:?})",
                    other.map(|o| o.0)
                ))
            }
        }
        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        self.delivered_now(seq)
    }

    fn delivered_now(&mut self, seq: u64) -> Result<(), String> {
        if self.unacked.front().is_some_and(|(s, _)| *s < seq) {
            return Ok(()); // an older event still waits: the position stays before it
        }
        self.position
            .advance(seq)
            .map_err(|e| format!("cannot record the MQTT position: {e}"))
    }
}

/// For an `end` event whose track's snapshot was saved: its stream, label and JPEG.
fn ended_snapshot(log: &EventLog, v: &serde_json::Value) -> Option<(String, String, Vec<u8>)> {
    if v["type"] != "end" {
        return None;
    }
    let path = log.snapshot_path(v["snapshot"].as_str()?)?;
    let jpeg = std::fs::read(path).ok()?;
    Some((
        v["stream"].as_str()?.to_string(),
        v["label"].as_str()?.to_string(),
        jpeg,
    ))
}

/// Waits for the broker's CONNACK.
async fn connected(rx: &mut mpsc::Receiver<Heard>, stop: &CancellationToken) -> Result<(), String> {
    let wait = async {
        loop {
            match rx.recv().await {
                Some(Ok(Said::ConnAck)) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err("the MQTT event loop ended".to_string()),
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => Err("stopping".into()),
        r = tokio::time::timeout(CONNECT_TIMEOUT, wait) => r.map_err(|_| "the broker did not answer CONNECT".to_string())?,
    }
}

/// TLS with the system's root certificates.
fn tls_config() -> tokio_rustls::rustls::ClientConfig {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "a system root certificate could not be read");
    }
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!("no system root certificates; mqtts:// connections will fail");
    }
    tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

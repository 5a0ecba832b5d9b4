//! A webhook sink: POSTs the journal's events that its filter takes (types, streams), one at a
//! time and in order, from its durable position (`cursor`; the journal is the outbox), with
//! `X-IV-Event-Id` and, when a secret is configured, `X-IV-Signature: sha256=<hex HMAC-SHA256 of
//! the body>`. A 2xx answer delivers the event; a 4xx drops it (logged, counted: the receiver
//! refused it); a 5xx, a timeout or a connection error is retried with capped backoff until the
//! event is `max_age_s` old, then dropped (logged, counted). `cooldown_s` skips an event when one
//! of the same stream and type was sent less than that long before. The HTTP call runs on the
//! blocking pool; detection never waits for it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use super::cursor::Position;
use super::{EventLog, Head, SinkStats};
use crate::config::webhooks::WebhookConfig;
use crate::pacing::Backoff;

/// Journal lines read at once.
const READ_BATCH: usize = 64;

/// What one attempt gave.
#[derive(Debug, Clone, PartialEq)]
enum Attempt {
    Delivered,
    /// Refused for good (4xx and other non-retryable answers): the status.
    Refused(u16),
    /// Worth retrying: the failure class for metrics and the message.
    Retry(&'static str, String),
}

/// Starts the sink; it runs until `stop`.
pub(crate) fn spawn(
    cfg: WebhookConfig,
    log: Arc<EventLog>,
    cursor_file: &std::path::Path,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let position = Position::open(&log, &cfg.id(), cursor_file, "webhook")?;
    let stats = position.stats().clone();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs_f64(cfg.timeout_s)))
        .http_status_as_error(false)
        .user_agent(concat!("intelligent-video/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let sink = Hook {
        cfg,
        log,
        position,
        stats,
        agent,
        last_sent: BTreeMap::new(),
    };
    Ok(tokio::spawn(sink.run(stop)))
}

struct Hook {
    cfg: WebhookConfig,
    log: Arc<EventLog>,
    position: Position,
    stats: Arc<SinkStats>,
    agent: ureq::Agent,
    /// Wall time (s) an event of (stream, type) was last sent, for `cooldown_s`.
    last_sent: BTreeMap<(String, String), f64>,
}

/// The signature header's value for `body` under `key`.
pub(crate) fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Hook {
    async fn run(mut self, stop: CancellationToken) {
        let mut written = self.log.watch();
        loop {
            let after = self.position.get();
            let log = self.log.clone();
            let lines = match tokio::task::spawn_blocking(move || log.read_after(after, READ_BATCH))
                .await
            {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => {
                    tracing::error!(webhook = %self.cfg.id(), error = %e, "cannot read the event journal");
                    return;
                }
                Err(_) => return,
            };
            if lines.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = written.changed() => if r.is_err() { return },
                }
                continue;
            }
            if let Some(&(first, _)) = lines.first() {
                if first > after.saturating_add(1) {
                    self.stats
                        .dropped
                        .fetch_add(first - after.saturating_add(1), Ordering::Relaxed);
                    tracing::warn!(webhook = %self.cfg.id(), lost = first - after.saturating_add(1), "events were dropped by the journal's retention before delivery");
                }
            }
            for (seq, line) in lines {
                if !self.handle(&line, &stop).await {
                    return;
                }
                if let Err(e) = self.position.advance(seq) {
                    tracing::error!(webhook = %self.cfg.id(), error = %e, "cannot record the webhook position");
                    return;
                }
            }
        }
    }

    /// Sends one journal line if the filter takes it; false when stopping.
    async fn handle(&mut self, line: &[u8], stop: &CancellationToken) -> bool {
        let body = line.strip_suffix(b"\n").unwrap_or(line).to_vec();
        let Ok(head) = serde_json::from_slice::<Head>(&body) else {
            return true;
        };
        let wanted = (self.cfg.events.is_empty() || self.cfg.events.contains(&head.kind))
            && (self.cfg.streams.is_empty() || self.cfg.streams.contains(&head.stream));
        if !wanted {
            return true;
        }
        let key = (head.stream.clone(), head.kind.clone());
        let now = now_s();
        if self.cfg.cooldown_s > 0.0
            && self
                .last_sent
                .get(&key)
                .is_some_and(|t| now - t < self.cfg.cooldown_s)
        {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let sent = self.deliver(&head, body, stop).await;
        if sent == Some(true) {
            self.last_sent.insert(key, now_s());
        }
        sent.is_some()
    }

    /// Delivers (true), drops (false) or stops (None), retrying as the answer allows.
    async fn deliver(
        &mut self,
        head: &Head,
        body: Vec<u8>,
        stop: &CancellationToken,
    ) -> Option<bool> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let secret = match self.cfg.secret() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(webhook = %self.cfg.id(), error = %e, "event not sent");
                self.stats.failure("secret");
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return Some(false);
            }
        };
        let body = Arc::new(body);
        loop {
            let attempt = self.attempt(head, body.clone(), secret.as_deref()).await;
            match attempt {
                Attempt::Delivered => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    return Some(true);
                }
                Attempt::Refused(status) => {
                    self.stats.failure("4xx");
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(webhook = %self.cfg.id(), event = %head.id, status, "the receiver refused the event; dropped");
                    return Some(false);
                }
                Attempt::Retry(class, message) => {
                    self.stats.failure(class);
                    let age = now_s() - head.time;
                    if age >= self.cfg.max_age_s {
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(webhook = %self.cfg.id(), event = %head.id, error = %message, "event older than max_age_s; dropped");
                        return Some(false);
                    }
                    let wait = backoff.advance();
                    tracing::warn!(webhook = %self.cfg.id(), event = %head.id, error = %message, retry_in_s = wait.as_secs_f64(), "webhook delivery failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// One POST, on the blocking pool.
    async fn attempt(&self, head: &Head, body: Arc<Vec<u8>>, secret: Option<&[u8]>) -> Attempt {
        let mut req = self
            .agent
            .post(&self.cfg.url)
            .header("Content-Type", "application/json")
            .header("X-IV-Event-Id", &head.id);
        if let Some(key) = secret {
            req = req.header("X-IV-Signature", &signature(key, &body));
        }
        let sent =
            tokio::task::spawn_blocking(move || req.send(&body[..]).map(|r| r.status().as_u16()))
                .await;
        match sent {
            Ok(Ok(s)) if (200..300).contains(&s) => Attempt::Delivered,
            Ok(Ok(s)) if s >= 500 || s == 408 || s == 429 => {
                Attempt::Retry("5xx", format!("HTTP {s}"))
            }
            Ok(Ok(s)) => Attempt::Refused(s),
            Ok(Err(ureq::Error::Timeout(_))) => Attempt::Retry("timeout", "timed out".into()),
            Ok(Err(e)) => Attempt::Retry("connect", e.to_string()),
            Err(e) => Attempt::Retry("connect", e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_rfc_4231s_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

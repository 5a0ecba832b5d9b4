//! MQTT 3.1.1 and 5 behind one seam (rumqttc's two clients): connect with a last will, publish at
//! QoS 1, disconnect, and what the broker says (CONNACK, PUBACK, an error), polled on a task of its
//! own that ends with the link.

use std::time::Duration;

use tokio::sync::mpsc;

use super::topics::Message;
use crate::config::mqtt::MqttProtocol;

/// The client's request queue.
const CLIENT_QUEUE: usize = 64;

/// What the broker said.
#[derive(Debug)]
pub(super) enum Said {
    ConnAck,
    PubAck,
    Other,
}

pub(super) type Heard = Result<Said, String>;

/// How to reach the broker.
pub(super) struct LinkOptions {
    pub client_id: String,
    pub host: String,
    pub port: u16,
    pub tls: Option<tokio_rustls::rustls::ClientConfig>,
    /// User name and password.
    pub credentials: Option<(String, String)>,
    /// Where the last will (`offline`, retained) goes.
    pub will_topic: String,
    pub protocol: MqttProtocol,
}

/// A connected (or connecting) client.
pub(super) enum Link {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// Aborts the event loop's task when the link goes.
pub(super) struct Poller(tokio::task::JoinHandle<()>);

impl Drop for Poller {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Link {
    /// A client and its event loop's reports (the connection is made by the loop).
    pub(super) fn open(o: LinkOptions) -> (Link, mpsc::Receiver<Heard>, Poller) {
        match o.protocol {
            MqttProtocol::V311 => open_v311(o),
            MqttProtocol::V5 => open_v5(o),
        }
    }

    /// Queues `m` at QoS 1 (never waits: the caller keeps fewer messages in flight than the queue
    /// holds).
    pub(super) fn publish(&self, m: &Message) -> Result<(), String> {
        let r = match self {
            Link::V311(c) => c
                .try_publish(
                    m.topic.clone(),
                    rumqttc::QoS::AtLeastOnce,
                    m.retain,
                    m.payload.clone(),
                )
                .map_err(|e| e.to_string()),
            Link::V5(c) => c
                .try_publish(
                    m.topic.clone(),
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    m.retain,
                    m.payload.clone(),
                )
                .map_err(|e| e.to_string()),
        };
        r.map_err(|e| format!("cannot publish to {}: {e}", m.topic))
    }

    pub(super) fn disconnect(&self) {
        let _ = match self {
            Link::V311(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Link::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

fn open_v311(o: LinkOptions) -> (Link, mpsc::Receiver<Heard>, Poller) {
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    let mut m = rumqttc::MqttOptions::new(&o.client_id, &o.host, o.port);
    m.set_keep_alive(Duration::from_secs(30));
    m.set_clean_session(true);
    m.set_max_packet_size(1 << 20, 1 << 20);
    m.set_last_will(rumqttc::LastWill::new(
        &o.will_topic,
        "offline",
        rumqttc::QoS::AtLeastOnce,
        true,
    ));
    if let Some((u, p)) = o.credentials {
        m.set_credentials(u, p);
    }
    if let Some(tls) = o.tls {
        m.set_transport(rumqttc::Transport::Tls(tls.into()));
    }
    let (client, eventloop) = rumqttc::AsyncClient::new(m, CLIENT_QUEUE);
    let task = spawn_poller(eventloop, tx);
    (Link::V311(client), rx, Poller(task))
}

fn open_v5(o: LinkOptions) -> (Link, mpsc::Receiver<Heard>, Poller) {
    use rumqttc::v5::mqttbytes::v5::LastWill;
    use rumqttc::v5::mqttbytes::QoS;
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    let mut m = rumqttc::v5::MqttOptions::new(&o.client_id, &o.host, o.port);
    m.set_keep_alive(Duration::from_secs(30));
    m.set_clean_start(true);
    m.set_max_packet_size(Some(1 << 20));
    m.set_last_will(LastWill::new(
        &o.will_topic,
        "offline",
        QoS::AtLeastOnce,
        true,
        None,
    ));
    if let Some((u, p)) = o.credentials {
        m.set_credentials(u, p);
    }
    if let Some(tls) = o.tls {
        m.set_transport(rumqttc::Transport::Tls(tls.into()));
    }
    let (client, eventloop) = rumqttc::v5::AsyncClient::new(m, CLIENT_QUEUE);
    let task = spawn_poller(eventloop, tx);
    (Link::V5(client), rx, Poller(task))
}

/// An event loop of either version, as what the broker says.
trait Listen: Send + 'static {
    fn next(&mut self) -> impl std::future::Future<Output = Heard> + Send;
}

impl Listen for rumqttc::EventLoop {
    async fn next(&mut self) -> Heard {
        use rumqttc::{Event, Packet};
        self.poll()
            .await
            .map_err(|e| e.to_string())
            .map(|e| match e {
                Event::Incoming(Packet::ConnAck(_)) => Said::ConnAck,
                Event::Incoming(Packet::PubAck(_)) => Said::PubAck,
                _ => Said::Other,
            })
    }
}

impl Listen for rumqttc::v5::EventLoop {
    async fn next(&mut self) -> Heard {
        use rumqttc::v5::mqttbytes::v5::Packet;
        use rumqttc::v5::Event;
        self.poll()
            .await
            .map_err(|e| e.to_string())
            .map(|e| match e {
                Event::Incoming(Packet::ConnAck(_)) => Said::ConnAck,
                Event::Incoming(Packet::PubAck(_)) => Said::PubAck,
                _ => Said::Other,
            })
    }
}

/// Polls `eventloop` on a task, forwarding what the broker says until the first error.
fn spawn_poller(
    mut eventloop: impl Listen,
    tx: mpsc::Sender<Heard>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let heard = eventloop.next().await;
            let failed = heard.is_err();
            if tx.send(heard).await.is_err() || failed {
                return;
            }
        }
    })
}

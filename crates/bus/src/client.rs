//! A reconnecting MQTT client for both ends of the bus.
//!
//! [`connect`] spawns a task that drives rumqttc's event loop: it reconnects with capped
//! backoff, subscribes again after every CONNACK (a broker that restarted has forgotten the
//! session), and reports [`BusEvent`]s on one channel. Everything is QoS 1. Dropping the
//! receiver, or [`BusClient::disconnect`], ends the task and closes the socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter,
};
use tokio::sync::{Notify, mpsc};

/// A message the broker publishes for a client when its connection drops.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `false` keeps the session (subscriptions and queued messages) across disconnects.
    pub clean_session: bool,
    pub keep_alive: Duration,
    pub will: Option<Will>,
    /// Filters subscribed (QoS 1) after every connect.
    pub subscriptions: Vec<String>,
    /// Unacknowledged QoS 1 publishes in flight at once.
    pub inflight: u16,
    /// Requests (publishes) that may wait for the event loop.
    pub request_capacity: usize,
    /// Events that may wait for the reader before the event loop pauses.
    pub event_capacity: usize,
    /// MQTT over TLS, trusting the CA certificates of this PEM (empty: the system's roots;
    /// `None`: plain TCP).
    pub tls_ca: Option<Vec<u8>>,
}

impl ClientConfig {
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> ClientConfig {
        ClientConfig {
            host: host.into(),
            port,
            client_id: client_id.into(),
            username: None,
            password: None,
            clean_session: false,
            keep_alive: Duration::from_secs(10),
            will: None,
            subscriptions: Vec::new(),
            inflight: 100,
            request_capacity: 1024,
            event_capacity: 1024,
            tls_ca: None,
        }
    }
}

/// What the connection task reports.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// Connected (again); subscriptions were re-sent.
    Connected { session_present: bool },
    /// The connection dropped or could not be made; the task keeps retrying.
    Disconnected { reason: String },
    /// A message arrived on a subscribed topic.
    Message { topic: String, payload: Bytes },
    /// [`BusClient::disconnect`] finished: the connection is closed for good.
    Closed,
}

/// Why a publish was not queued.
#[derive(Debug, thiserror::Error)]
#[error("bus publish to {topic} was not queued: the connection is down, slow or closed")]
pub struct PublishError {
    topic: String,
}

/// A handle for publishing; cheap to clone.
#[derive(Clone)]
pub struct BusClient {
    inner: AsyncClient,
    shared: Arc<Shared>,
}

/// What the handles and the connection task share for a graceful close.
#[derive(Default)]
struct Shared {
    /// Publishes queued by this client.
    queued: AtomicU64,
    /// PUBACKs received.
    acked: AtomicU64,
    closing: AtomicBool,
    wake: Notify,
}

impl std::fmt::Debug for BusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusClient")
    }
}

impl BusClient {
    /// Queues a QoS 1 publish; waits only if the request queue is full.
    pub async fn publish(&self, topic: impl Into<String>, payload: Vec<u8>, retain: bool) -> Result<(), PublishError> {
        let topic = topic.into();
        self.inner.publish(topic.clone(), QoS::AtLeastOnce, retain, payload).await.map_err(|_| PublishError { topic })?;
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Queues a QoS 1 publish without waiting; fails if the request queue is full (the
    /// connection is down or slow). For messages the caller can send again later.
    pub fn try_publish(&self, topic: impl Into<String>, payload: Vec<u8>, retain: bool) -> Result<(), PublishError> {
        let topic = topic.into();
        self.inner.try_publish(topic.clone(), QoS::AtLeastOnce, retain, payload).map_err(|_| PublishError { topic })?;
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Closes gracefully: once the broker has acknowledged every publish queued so far, sends
    /// DISCONNECT (so no last will is published) and ends the connection task, which then
    /// reports `Closed`. (A broker may drop publishes that arrive right before a
    /// DISCONNECT, so the wait matters.) Callers bound the wait with a timeout.
    pub fn disconnect(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
    }
}

/// Starts connecting in the background.
pub fn connect(config: ClientConfig) -> (BusClient, mpsc::Receiver<BusEvent>) {
    let mut options = MqttOptions::new(config.client_id.clone(), config.host.clone(), config.port);
    options.set_clean_session(config.clean_session);
    options.set_keep_alive(config.keep_alive.max(Duration::from_secs(1)));
    options.set_inflight(config.inflight.max(1));
    let max_packet = clawfleet_proto::MAX_BUS_PAYLOAD_BYTES + 4096;
    options.set_max_packet_size(max_packet, max_packet);
    if let Some(user) = &config.username {
        options.set_credentials(user.clone(), config.password.clone().unwrap_or_default());
    }
    if let Some(will) = &config.will {
        options.set_last_will(LastWill::new(will.topic.clone(), will.payload.clone(), QoS::AtLeastOnce, will.retain));
    }
    let (client, mut eventloop) = AsyncClient::new(options, config.request_capacity.max(1));
    // Small messages, latency-sensitive: no Nagle delays.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    if let Some(ca) = &config.tls_ca {
        // rumqttc builds its rustls configuration with the process's provider: ring, as everywhere here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = if ca.is_empty() {
            // The system's roots.
            rumqttc::TlsConfiguration::default()
        } else {
            rumqttc::TlsConfiguration::Simple { ca: ca.clone(), alpn: None, client_auth: None }
        };
        eventloop.mqtt_options.set_transport(rumqttc::Transport::tls_with_config(tls));
    }
    let (tx, rx) = mpsc::channel(config.event_capacity.max(1));
    let shared = Arc::new(Shared::default());
    tokio::spawn(drive(eventloop, client.clone(), shared.clone(), config.subscriptions, tx));
    (BusClient { inner: client, shared }, rx)
}

async fn drive(mut eventloop: EventLoop, client: AsyncClient, shared: Arc<Shared>, subscriptions: Vec<String>, tx: mpsc::Sender<BusEvent>) {
    const MIN_BACKOFF: Duration = Duration::from_millis(50);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    let mut backoff = MIN_BACKOFF;
    let mut reported_down = false;
    let mut disconnect_sent = false;
    loop {
        if !disconnect_sent
            && shared.closing.load(Ordering::SeqCst)
            && shared.acked.load(Ordering::SeqCst) >= shared.queued.load(Ordering::SeqCst)
        {
            disconnect_sent = client.try_disconnect().is_ok();
        }
        let event = tokio::select! {
            event = eventloop.poll() => event,
            () = tx.closed() => return,
            () = shared.wake.notified(), if !disconnect_sent => continue,
        };
        let report = match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = MIN_BACKOFF;
                if !ack.session_present {
                    // rumqttc drops unacknowledged publishes with the old session: stop waiting for them.
                    shared.acked.store(shared.queued.load(Ordering::SeqCst), Ordering::SeqCst);
                }
                reported_down = false;
                if !subscriptions.is_empty() {
                    let filters = subscriptions.iter().map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                    if client.try_subscribe_many(filters).is_err() {
                        tracing::warn!("Bus request queue full; subscriptions will be retried on reconnect");
                    }
                }
                BusEvent::Connected { session_present: ack.session_present }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => BusEvent::Message { topic: p.topic, payload: p.payload },
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                    tracing::error!(?subscriptions, "The broker refused a bus subscription");
                }
                continue;
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                shared.acked.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Read until the broker closes the connection: dropping a socket with unread
                // data (late PUBACKs) makes the kernel send RST, and a broker that sees a reset
                // before it reads the DISCONNECT publishes the last will.
                // Every PUBACK is in before DISCONNECT goes out, so a short quiet period suffices.
                let drain = async { while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await {} };
                let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
                let _ = tx.send(BusEvent::Closed).await;
                return;
            }
            Ok(_) => continue,
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                let reason = describe(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if reported_down {
                    continue;
                }
                reported_down = true;
                BusEvent::Disconnected { reason }
            }
        };
        if tx.send(report).await.is_err() {
            return;
        }
    }
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized) => {
            "the broker refused the bus credentials".into()
        }
        other => other.to_string(),
    }
}

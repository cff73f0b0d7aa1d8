//! The embedded MQTT broker (rmqtt), as `clawfleet up` runs it.
//!
//! rmqtt has no stop call, so the broker owns a tokio runtime of its own: dropping
//! [`EmbeddedBroker`] drops the runtime, which closes the listener and every connection.
//! Its defaults lose messages silently (a 1,000-message queue per offline session, 5-minute
//! expiry), so every limit is set here on purpose; see [`BrokerConfig`].
//!
//! Authentication and authorization are clawfleet's: an [`Authenticator`] says who a client
//! is, and `clawfleet_core::acl` says which topics that identity may publish and subscribe.
//! Anonymous clients are refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clawfleet_core::acl::{self, BusIdentity};
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::Builder;
use rmqtt::retain::{DefaultRetainStorage, RetainStorage};
use rmqtt::server::MqttServer;
use rmqtt::types::{AuthResult, LastWill, PublishAclResult, Retain, SubscribeAclResult, TopicFilter, TopicName};

/// Decides who a connecting client is.
pub trait Authenticator: Send + Sync + 'static {
    /// The identity of a client that presents these credentials, or `None` to refuse it.
    fn authenticate(&self, client_id: &str, username: &str, password: &[u8]) -> Option<BusIdentity>;
}

/// Limits of the embedded broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    /// Messages kept for one offline persistent session before the oldest are dropped.
    pub max_queued_per_session: usize,
    /// How long a disconnected persistent session (and its queue) is kept.
    pub session_expiry: Duration,
    /// How long an undelivered message is kept.
    pub message_expiry: Duration,
    pub max_connections: usize,
    pub max_packet_size: u32,
    /// Serve MQTT over TLS on `listen` with this configuration (the broker itself then listens
    /// on a loopback port of its own, for the TLS front and the control plane).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl BrokerConfig {
    pub fn new(listen: SocketAddr) -> BrokerConfig {
        BrokerConfig {
            listen,
            max_queued_per_session: 100_000,
            session_expiry: Duration::from_secs(7 * 24 * 3600),
            message_expiry: Duration::from_secs(7 * 24 * 3600),
            max_connections: 100_000,
            max_packet_size: clawfleet_proto::MAX_BUS_PAYLOAD_BYTES as u32 + 4096,
            tls: None,
        }
    }
}

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("could not start the bus runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("could not listen for MQTT on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

/// A running embedded broker; dropping it stops it.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    /// Where it speaks plain MQTT (`addr` unless a TLS front serves `addr`).
    plain: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker").field("addr", &self.addr).finish()
    }
}

impl EmbeddedBroker {
    /// Binds the listener and starts serving; returns once the port is bound.
    ///
    /// May be called from inside or outside a tokio runtime: the setup runs on a thread of
    /// its own, which blocks the caller for the few milliseconds it takes.
    pub fn start(config: BrokerConfig, auth: Arc<dyn Authenticator>) -> Result<EmbeddedBroker, BrokerError> {
        std::thread::scope(|s| s.spawn(|| Self::start_here(config, auth)).join().expect("broker setup does not panic"))
    }

    fn start_here(config: BrokerConfig, auth: Arc<dyn Authenticator>) -> Result<EmbeddedBroker, BrokerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("clawfleet-bus")
            .enable_all()
            .build()
            .map_err(BrokerError::Runtime)?;
        let listen = if config.tls.is_some() { SocketAddr::from(([127, 0, 0, 1], 0)) } else { config.listen };
        let (addr, plain) = runtime.block_on(async {
            let scx = ServerContext::new().build().await;
            *scx.extends.retain_mut().await = Box::new(MemoryRetain(DefaultRetainStorage::new()));
            let register = scx.extends.hook_mgr().register();
            for typ in [Type::ClientAuthenticate, Type::ClientSubscribeCheckAcl, Type::MessagePublishCheckAcl] {
                register.add_priority(typ, 100, Box::new(AclHook { auth: auth.clone() })).await;
            }
            register.start().await;

            let listen_err = |e: rmqtt::Error| BrokerError::Listen { addr: listen, reason: format!("{e:#}") };
            let listener = Builder::new()
                .name("clawfleet")
                .laddr(listen)
                .reuseaddr(Some(true))
                .nodelay(true)
                .allow_anonymous(false)
                .max_connections(config.max_connections)
                .max_handshaking_limit(config.max_connections)
                .max_mqueue_len(config.max_queued_per_session)
                .session_expiry_interval(config.session_expiry)
                .max_session_expiry_interval(config.session_expiry)
                .message_expiry_interval(config.message_expiry)
                .max_packet_size(config.max_packet_size)
                .max_clientid_len(128)
                .max_inflight(std::num::NonZeroU16::new(256).expect("non-zero"))
                .bind()
                .and_then(|l| l.tcp())
                .map_err(listen_err)?;
            let addr = listener.local_addr().map_err(listen_err)?;
            let server = MqttServer::new(scx).listener_by_id(listener, addr.port()).build();
            tokio::spawn(async move {
                if let Err(e) = server.run().await {
                    tracing::error!(error = %e, "Embedded MQTT broker stopped");
                }
            });
            match &config.tls {
                None => Ok::<_, BrokerError>((addr, addr)),
                Some(tls) => {
                    let front = tokio::net::TcpListener::bind(config.listen)
                        .await
                        .map_err(|e| BrokerError::Listen { addr: config.listen, reason: e.to_string() })?;
                    let public = front.local_addr().map_err(|e| BrokerError::Listen { addr: config.listen, reason: e.to_string() })?;
                    crate::tls::serve_front(front, tls.clone(), addr);
                    Ok((public, addr))
                }
            }
        })?;
        tracing::info!(%addr, tls = config.tls.is_some(), "Embedded MQTT broker listening");
        Ok(EmbeddedBroker { addr, plain, runtime: Some(runtime) })
    }

    /// Where clients reach it (over TLS when it has a TLS front).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it speaks plain MQTT: its own address, or a loopback port behind its TLS front.
    pub fn plain_addr(&self) -> SocketAddr {
        self.plain
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// What the broker answers a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Admitted as this identity (the control plane is the broker's superuser).
    Admitted(BusIdentity),
    /// Its credentials are good, but its last will is not its to publish (or to retain).
    WillRefused,
    /// Unknown credentials, or an agent's password under another agent's username.
    Refused,
}

/// Decides a CONNECT: its credentials, then its last will (`(topic, retain)`), which the broker
/// would otherwise publish unchecked when the client drops.
pub fn login(auth: &dyn Authenticator, client_id: &str, username: &str, password: &[u8], will: Option<(&str, bool)>) -> Login {
    let Some(who) = auth.authenticate(client_id, username, password) else { return Login::Refused };
    if let BusIdentity::Agent(agent) = &who
        && acl::agent_username(agent) != username
    {
        return Login::Refused;
    }
    match will {
        Some((topic, retain)) if !acl::may_will(&who, topic, retain) => Login::WillRefused,
        _ => Login::Admitted(who),
    }
}

/// Answers rmqtt's authentication and ACL hooks from the [`Authenticator`] and core's rules.
struct AclHook {
    auth: Arc<dyn Authenticator>,
}

/// Who a session is, from the username it logged in with (checked at connect).
fn session_identity(username: Option<&str>) -> Option<BusIdentity> {
    match username? {
        crate::auth::OBSERVER_USER => Some(BusIdentity::Observer),
        agent => acl::parse_agent_username(agent).map(BusIdentity::Agent),
    }
}

#[async_trait]
impl Handler for AclHook {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) => {
                let id = info.id();
                let username = info.username().map(|u| u.as_ref()).unwrap_or("");
                let password = info.password().map(|p| p.as_ref()).unwrap_or(b"");
                let will = info.last_will().map(|w| match w {
                    LastWill::V3(w) => (w.topic.to_string(), w.retain),
                    LastWill::V5(w) => (w.topic.to_string(), w.retain),
                });
                let result = match login(&*self.auth, &id.client_id, username, password, will.as_ref().map(|(t, r)| (t.as_str(), *r))) {
                    Login::Admitted(BusIdentity::Control) => AuthResult::Allow(true, None),
                    Login::Admitted(_) => AuthResult::Allow(false, None),
                    Login::WillRefused => {
                        let (topic, retain) = will.expect("a will was refused");
                        tracing::warn!(client_id = %id.client_id, username, %topic, retain, "Bus login refused: its last will is not its to publish");
                        AuthResult::NotAuthorized
                    }
                    Login::Refused => {
                        tracing::warn!(client_id = %id.client_id, username, remote = ?id.remote_addr, "Bus login refused");
                        AuthResult::BadUsernameOrPassword
                    }
                };
                (false, Some(HookResult::AuthResult(result)))
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let allowed =
                    session_identity(session.id.username.as_deref()).is_some_and(|who| acl::may_subscribe(&who, &subscribe.topic_filter));
                let result = if allowed {
                    SubscribeAclResult::new_success(subscribe.opts.qos(), None)
                } else {
                    tracing::warn!(client_id = %session.id.client_id, filter = %subscribe.topic_filter, "Bus subscribe refused");
                    SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized)
                };
                (false, Some(HookResult::SubscribeAclResult(result)))
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let allowed = session_identity(session.id.username.as_deref()).is_some_and(|who| {
                    acl::may_publish(&who, &publish.topic) && (!publish.retain || acl::may_retain(&who, &publish.topic))
                });
                let result = if allowed {
                    PublishAclResult::allow()
                } else {
                    tracing::warn!(client_id = %session.id.client_id, topic = %publish.topic, "Bus publish refused; disconnecting");
                    PublishAclResult::rejected(true, None)
                };
                (false, Some(HookResult::PublishAclResult(result)))
            }
            _ => (true, acc),
        }
    }
}

/// Retained messages, in memory (heartbeats are re-published every few seconds anyway).
struct MemoryRetain(DefaultRetainStorage);

#[async_trait]
impl RetainStorage for MemoryRetain {
    fn enable(&self) -> bool {
        true
    }

    async fn set(&self, topic: &TopicName, retain: Retain, expiry: Option<Duration>) -> rmqtt::Result<()> {
        self.0.set_with_timeout(topic, retain, expiry).await
    }

    async fn get(&self, filter: &TopicFilter) -> rmqtt::Result<Vec<(TopicName, Retain)>> {
        self.0.get_message(filter).await
    }

    async fn count(&self) -> isize {
        self.0.count().await
    }

    async fn max(&self) -> isize {
        self.0.max().await
    }
}

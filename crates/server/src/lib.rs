//! The clawfleet control plane: `clawfleet up`.
//!
//! [`Server::start`] opens the data directory (database, operator token), starts the embedded
//! MQTT broker (or connects to an external one), and runs its loops on one runtime, each owning
//! its own state:
//!
//! - **ingest** ([`ingest`]): bus and mailboxes → store, exactly once per agent event, then
//!   broadcast;
//! - **mailbox** ([`mailbox`]): follows slurm fleets' mailboxes into ingest;
//! - **outbox** ([`outbox`]): resends directives until their agent acknowledges them;
//! - **deploy** ([`deploy`]): gates the running deploy, reverts it when it fails;
//! - **migrate** ([`migrate`]): drives each open migration between racks one durable step on;
//! - **retention** ([`retention`]): drops events past their retention, never an open turn's;
//! - **reconcile** ([`reconcile`]): drives each fleet's backend toward its desired state, and
//!   on a tick of its own reports agents' availability changes;
//! - **HTTP** ([`api`]): the API, the dashboard, `/healthz`, `/metrics`.
//!
//! **Architecture invariant:** every event is persisted before anyone sees it, and is seen in
//! id order ([`hub`]). The store is the record; memory holds only what heartbeats rebuild.

mod api;
mod app;
mod approval;
mod auth;
mod clock;
mod council;
mod db;
mod delegation;
mod deploy;
mod dynsec;
mod error;
mod hub;
mod ingest;
mod leader;
mod live;
mod mailbox;
mod metrics;
mod migrate;
mod outbound;
mod outbox;
mod peer;
mod project;
mod queue;
mod reconcile;
mod retention;
mod scenario;
mod tls;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clawfleet_backend::local::{LocalBackend, LocalConfig};
pub use clawfleet_backend::sandbox::SandboxMode;
use clawfleet_backend::sandbox::{Sandbox, SandboxError};
use clawfleet_backend::{Backend, Credentials, Endpoints};
use clawfleet_bus::broker::{BrokerConfig, BrokerError, EmbeddedBroker};
use clawfleet_bus::client::{self, BusEvent, ClientConfig};
use clawfleet_bus::{BusSecret, BusUrl};
use clawfleet_core::BrainSpec;
use clawfleet_proto::topic::{self, Channel};
use clawfleet_store::{Store, StoreError};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::app::App;
use crate::db::Db;
use crate::hub::Hub;
use crate::live::Live;
pub use crate::mailbox::MailboxOptions;
pub use crate::peer::{PeerConfig, RackConfig};
pub use crate::retention::Retention;
pub use crate::tls::TlsFiles;
use clawfleet_bus::{CONTROL_USER, FleetAuth};

/// Which broker the control plane and its agents use.
#[derive(Debug, Clone)]
pub enum BusMode {
    /// Start the embedded broker on this address.
    Embedded { listen: SocketAddr },
    /// Use an external broker.
    External(BusUrl),
    /// Use an external Mosquitto whose dynamic-security plugin has the file
    /// [`mosquitto_config`] wrote: the control plane, the observer and every agent log in with
    /// their own derived passwords, and the control plane adds and removes agents' logins as
    /// fleets change.
    MosquittoDynsec(BusUrl),
}

/// How to run the control plane.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub bus: BusMode,
    /// The host agents use to reach the bus (default: the broker's own address).
    pub agent_bus_host: Option<String>,
    /// The shared model service agents of the `model` brain use (OpenAI-compatible base URL).
    pub model_url: Option<String>,
    pub model_name: String,
    /// Whether `model_url` is this control plane's own model service (which takes llama-server's
    /// sampling options).
    pub model_builtin: bool,
    /// How the local backend starts an agent runtime.
    pub agent_program: PathBuf,
    pub agent_args: Vec<String>,
    pub heartbeat: Duration,
    /// The brain of fleets launched without one.
    pub default_brain: BrainSpec,
    /// Backends besides local and external (docker, slurm), built by the caller.
    pub backends: Vec<Arc<dyn Backend>>,
    /// How mailboxes (agents with no route to the bus) are followed.
    pub mailbox: MailboxOptions,
    /// How local agents are confined.
    pub agent_sandbox: SandboxMode,
    /// Directories local agents may write besides their workspace.
    pub agent_writable: Vec<PathBuf>,
    /// What agents' own tokens may do to other fleets (default: nothing).
    pub agent_policy: clawfleet_core::authz::Policy,
    /// How long an agent's execution approval waits for an answer before it is refused.
    pub approval_timeout: Duration,
    /// Serve the API and dashboard over HTTPS, and the embedded broker over TLS, with these.
    pub tls: Option<TlsFiles>,
    /// The CA certificate (PEM) agents trust for the embedded broker's TLS (`None`: the system's).
    pub bus_ca: Option<String>,
    /// This rack's name and the peer racks it knows.
    pub rack: RackConfig,
    /// How long a migration out of this rack waits for its agent to finish its work, and then
    /// for the peer's copy to be ready, before it is aborted.
    pub migrate_within: Duration,
    /// Export each agent's heartbeat (uptime, memory, load) as metrics of its own: three
    /// series an agent.
    pub agent_metrics: bool,
    /// What the events table keeps.
    pub retention: Retention,
}

/// Why the control plane did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("cannot reach the bus at {url}: {reason}")]
    BusUnreachable { url: String, reason: String },
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Http { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A running control plane.
pub struct Server {
    app: Arc<App>,
    http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    http_task: JoinHandle<()>,
    loops: Vec<JoinHandle<()>>,
    ingest_task: JoinHandle<()>,
    broker: Option<EmbeddedBroker>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("http", &self.http_addr).field("bus", &self.app.bus_url).finish()
    }
}

fn data_dir_error(path: &std::path::Path) -> impl Fn(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::DataDir { path: path.display().to_string(), source }
}

impl Server {
    /// This control plane's rack name.
    pub fn rack(&self) -> &str {
        &self.app.peers.config.name
    }

    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(data_dir_error(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(data_dir_error(&dir))?;
        let db_path = dir.join("clawfleet.db");
        // The database holds the bus secret: only the operator may read it, its WAL included.
        private_file(&db_path).map_err(data_dir_error(&dir))?;
        let store = Store::open(&db_path)?;
        for path in [db_path.clone(), dir.join("clawfleet.db-wal"), dir.join("clawfleet.db-shm")] {
            if path.exists() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(data_dir_error(&dir))?;
            }
        }
        let token = auth::load_or_create_token(&dir).map_err(data_dir_error(&dir))?;
        // The token file's token is the operator's first token (rotated by replacing the file).
        store.put_token(&clawfleet_store::TokenRow {
            name: auth::FILE_TOKEN_NAME.into(),
            role: clawfleet_core::authz::Role::Operator.as_str().into(),
            fleet: None,
            hash: clawfleet_bus::credentials::token_hash(&token),
            created_at: clock::now_rfc3339(),
            expires_at: None,
            created_by: "clawfleet up (the token file)".into(),
        })?;
        let secret = bus_secret(&store)?;
        let install_id = match store.meta("install_id")? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
                store.set_meta("install_id", id.as_bytes())?;
                id
            }
        };
        let auth = Arc::new(FleetAuth::new(secret.clone()));
        for f in store.fleets()? {
            auth.allow_fleet(&f.name, &f.uid);
        }

        // The bus: where we connect, and how agents reach it and log in.
        let tls = match &config.tls {
            Some(files) => Some(clawfleet_bus::tls::server_config(&files.cert, &files.key).map_err(tls::TlsError)?),
            None => None,
        };
        // Where the control plane connects (`connect_port`) and where agents do (`port`): behind
        // the embedded broker's TLS front, the control plane speaks plain MQTT on loopback.
        let (broker, connect_host, port, login, credentials, embedded) = match &config.bus {
            BusMode::Embedded { listen } => {
                let mut broker_config = BrokerConfig::new(*listen);
                broker_config.tls = tls.clone();
                let broker = EmbeddedBroker::start(broker_config, auth.clone())?;
                let addr = broker.local_addr();
                let local = if addr.ip().is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { addr.ip() };
                let login = (Some(CONTROL_USER.to_owned()), Some(secret.control_password()));
                (Some(broker), local.to_string(), addr.port(), login, Credentials::PerAgent(secret.clone()), true)
            }
            BusMode::External(url) => {
                let creds = match (&url.username, &url.password) {
                    (Some(u), p) => Credentials::Shared { username: u.clone(), password: p.clone().unwrap_or_default() },
                    _ => Credentials::Anonymous,
                };
                (None, url.host.clone(), url.port, (url.username.clone(), url.password.clone()), creds, false)
            }
            BusMode::MosquittoDynsec(url) => {
                let login = (Some(CONTROL_USER.to_owned()), Some(secret.control_password()));
                (None, url.host.clone(), url.port, login, Credentials::PerAgent(secret.clone()), false)
            }
        };
        let agent_host = config.agent_bus_host.clone().unwrap_or_else(|| connect_host.clone());
        // An external broker's URL says whether it speaks TLS (`mqtts://`); the embedded one does
        // when the control plane has a certificate.
        let external_tls = matches!(&config.bus, BusMode::External(u) | BusMode::MosquittoDynsec(u) if u.tls);
        let bus_tls = (embedded && tls.is_some()) || external_tls;
        let bus_url = format!("{}://{}:{}", if bus_tls { "mqtts" } else { "mqtt" }, bracket(&agent_host), port);
        let (connect_host, connect_port) = match &broker {
            Some(b) if bus_tls => (b.plain_addr().ip().to_string(), b.plain_addr().port()),
            _ => (connect_host, port),
        };

        let mut bus_config = ClientConfig::new(connect_host.clone(), connect_port, format!("clawfleet-control-{install_id}"));
        (bus_config.username, bus_config.password) = login;
        bus_config.clean_session = false;
        bus_config.subscriptions = vec![topic::all_agents(Channel::Events), topic::all_agents(Channel::Heartbeat)];
        let dynsec = matches!(config.bus, BusMode::MosquittoDynsec(_));
        if dynsec {
            bus_config.subscriptions.push(clawfleet_bus::dynsec::RESPONSE_TOPIC.into());
        }
        if external_tls {
            // The control plane trusts the CA it gives its agents, or the system's roots.
            bus_config.tls_ca = Some(config.bus_ca.clone().unwrap_or_default().into_bytes());
        }
        bus_config.inflight = 1000;
        bus_config.request_capacity = 16 * 1024;
        bus_config.event_capacity = 16 * 1024;
        let (bus, mut bus_rx) = client::connect(bus_config);
        wait_connected(&mut bus_rx, &format!("mqtt://{}:{connect_port}", bracket(&connect_host))).await?;

        let sandbox = Sandbox::new(config.agent_sandbox, &dir, config.agent_writable.clone())?;
        match sandbox.isolation() {
            clawfleet_proto::api::Isolation::None => tracing::warn!(
                "Local agents are NOT sandboxed: their brains can read this control plane's token and database (--agent-sandbox off, or no Landlock and not root)"
            ),
            isolation => tracing::info!(%isolation, "Local agents are sandboxed"),
        }
        let local: Arc<dyn Backend> = Arc::new(LocalBackend::new(LocalConfig {
            program: config.agent_program.clone(),
            args: config.agent_args.clone(),
            root: dir.join("agents"),
            grace: Duration::from_secs(10),
            sandbox: Arc::new(sandbox),
        }));
        let store_tokens = store.tokens()?;
        let secrets = store.secret_values()?;
        let db = Db::new(store);
        let app = Arc::new(App {
            hub: Hub::new(db.clone()),
            db,
            live: Live::default(),
            outbound: outbound::Outbound::new(bus.clone()),
            bus,
            backends: [local, Arc::new(clawfleet_backend::external::ExternalBackend) as Arc<dyn Backend>]
                .into_iter()
                .chain(config.backends.iter().cloned())
                .map(|b| (b.kind(), b))
                .collect(),
            auth,
            token,
            tokens: auth::Tokens::new(store_tokens),
            policy: config.agent_policy.clone(),
            approval_timeout: config.approval_timeout,
            endpoints: Endpoints {
                bus_host: agent_host,
                bus_port: port,
                bus_ca: if bus_tls { config.bus_ca.clone() } else { None },
                bus_tls,
                credentials,
                model_url: config.model_url.clone(),
                model_name: config.model_name.clone(),
                model_builtin: config.model_builtin,
                heartbeat_ms: config.heartbeat.as_millis() as u64,
            },
            default_brain: config.default_brain.clone(),
            reconcile: Notify::new(),
            projects_due: Notify::new(),
            councils_due: Notify::new(),
            sent: Default::default(),
            conditions: Default::default(),
            secrets: std::sync::RwLock::new(secrets),
            data_dir: dir.clone(),
            bus_url,
            embedded_bus: embedded,
            metrics: metrics::Metrics::new(config.agent_metrics),
            dynsec: dynsec.then(|| dynsec::Dynsec::new(secret.clone())),
            peers: peer::Peers::new(config.rack.clone()),
            holds: Default::default(),
            migrations_due: Notify::new(),
            migrate_within: config.migrate_within,
            retention: config.retention,
        });
        // Agents that were moving when the control plane stopped still are: their injections
        // wait from the first send on.
        migrate::refresh(&app).await?;

        let listener =
            tokio::net::TcpListener::bind(config.http).await.map_err(|source| ServerError::Http { addr: config.http, source })?;
        let http_addr = listener.local_addr().map_err(|source| ServerError::Http { addr: config.http, source })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (mail_tx, mail_rx) = tokio::sync::mpsc::channel(4096);
        let ingest_task = tokio::spawn(ingest::run(app.clone(), bus_rx, mail_rx));
        let loops = vec![
            tokio::spawn(mailbox::run(app.clone(), mail_tx, config.mailbox, shutdown_rx.clone())),
            tokio::spawn(outbox::run(app.clone(), shutdown_rx.clone())),
            tokio::spawn(deploy::run(app.clone(), shutdown_rx.clone())),
            tokio::spawn(leader::run(app.clone(), shutdown_rx.clone())),
            tokio::spawn(scenario::run(app.clone(), shutdown_rx.clone())),
            tokio::spawn(council::run(app.clone(), shutdown_rx.clone())),
            tokio::spawn(project::run(app.clone(), shutdown_rx.clone())),
            tokio::spawn(migrate::run(app.clone(), shutdown_rx.clone())),
            tokio::spawn(retention::run(app.clone(), shutdown_rx.clone())),
            tokio::spawn(reconcile::run(app.clone(), shutdown_rx.clone())),
            tokio::spawn(reconcile::watch_liveness(app.clone(), shutdown_rx.clone())),
        ];
        let router = api::router(app.clone());
        let mut stop_http = shutdown_rx.clone();
        let stopped = async move {
            let _ = stop_http.changed().await;
        };
        let http_task = match &tls {
            None => {
                // Event streams are many small writes: no Nagle delays.
                let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                let serve =
                    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(stopped);
                tokio::spawn(async move {
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "HTTP server failed");
                    }
                })
            }
            Some(server_config) => {
                let listener =
                    tls::TlsListener::new(listener, server_config).map_err(|source| ServerError::Http { addr: config.http, source })?;
                let serve = axum::serve(listener, router.into_make_service()).with_graceful_shutdown(stopped);
                tokio::spawn(async move {
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "HTTPS server failed");
                    }
                })
            }
        };
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let info = serde_json::json!({
            "http": format!("{scheme}://{http_addr}"),
            "bus": app.bus_url,
            "pid": std::process::id(),
        });
        std::fs::write(dir.join("server.json"), info.to_string() + "\n").map_err(data_dir_error(&dir))?;
        tracing::info!(http = %http_addr, bus = %app.bus_url, data = %dir.display(), "Control plane serving");
        Ok(Server { app, http_addr, shutdown, http_task, loops, ingest_task, broker })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bus URL agents are given.
    pub fn bus_url(&self) -> &str {
        &self.app.bus_url
    }

    /// The embedded broker's address, if it runs one.
    pub fn broker_addr(&self) -> Option<SocketAddr> {
        self.broker.as_ref().map(EmbeddedBroker::local_addr)
    }

    pub fn token(&self) -> &str {
        &self.app.token
    }

    /// How local agents are confined.
    pub fn agent_isolation(&self) -> clawfleet_proto::api::Isolation {
        self.app.backends.get(&clawfleet_core::BackendKind::Local).map_or(clawfleet_proto::api::Isolation::None, |b| b.isolation())
    }

    /// Stops in order: HTTP, the loops, the agents of backends that run them (which flush
    /// their last events through the bus), then the bus.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        // Open event streams would hold a graceful HTTP shutdown forever.
        if tokio::time::timeout(Duration::from_secs(3), self.http_task).await.is_err() {
            tracing::info!("Closed the remaining HTTP streams");
        }
        for task in self.loops {
            let _ = task.await;
        }
        for backend in self.app.backends.values() {
            backend.shutdown().await;
        }
        // Let the agents' last events reach the store.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.app.bus.disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.ingest_task).await;
        drop(self.broker);
        let _ = std::fs::remove_file(self.app.data_dir.join("server.json"));
        tracing::info!("Control plane stopped");
    }
}

async fn wait_connected(rx: &mut tokio::sync::mpsc::Receiver<BusEvent>, url: &str) -> Result<(), ServerError> {
    let mut last = "no answer".to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(BusEvent::Connected { .. })) => return Ok(()),
            Ok(Some(BusEvent::Disconnected { reason })) => last = reason,
            Ok(Some(BusEvent::Message { .. } | BusEvent::Closed)) => {}
            Ok(None) | Err(_) => {
                return Err(ServerError::BusUnreachable { url: url.to_owned(), reason: format!("{last} (gave up after 10 s)") });
            }
        }
    }
}

/// Creates `path` empty with mode 0600 if it does not exist (so SQLite's files start private).
fn private_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

/// Makes a `peer` token for rack `peer` in the control plane of `data_dir` (before it starts,
/// which reads its tokens then): what `up --racks 2` hands each of its racks for the other.
/// Only its hash is stored; a token of that name before is replaced.
pub fn mint_peer_token(data_dir: &std::path::Path, peer: &str, by: &str) -> Result<String, ServerError> {
    std::fs::create_dir_all(data_dir).map_err(data_dir_error(data_dir))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).map_err(data_dir_error(data_dir))?;
    let db_path = data_dir.join("clawfleet.db");
    private_file(&db_path).map_err(data_dir_error(data_dir))?;
    let store = Store::open(&db_path)?;
    let token = auth::new_token();
    store.put_token(&clawfleet_store::TokenRow {
        name: peer.to_owned(),
        role: clawfleet_core::authz::Role::Peer.as_str().into(),
        fleet: None,
        hash: clawfleet_bus::credentials::token_hash(&token),
        created_at: clock::now_rfc3339(),
        expires_at: None,
        created_by: by.to_owned(),
    })?;
    Ok(token)
}

/// The dynamic-security plugin's file for a Mosquitto that serves this data directory's
/// control plane (`clawfleet bus config --mosquitto DIR`): every current agent, the control
/// plane and the observer. Creates the data directory and its bus secret if need be.
pub fn mosquitto_dynsec_file(data_dir: &std::path::Path) -> Result<serde_json::Value, ServerError> {
    std::fs::create_dir_all(data_dir).map_err(data_dir_error(data_dir))?;
    let db_path = data_dir.join("clawfleet.db");
    private_file(&db_path).map_err(data_dir_error(data_dir))?;
    let store = Store::open(&db_path)?;
    let secret = bus_secret(&store)?;
    let mut agents = Vec::new();
    for f in store.fleets()? {
        let fleet: clawfleet_core::FleetName = match f.name.parse() {
            Ok(n) => n,
            Err(_) => continue,
        };
        for slot in 0..f.replicas {
            agents.push(clawfleet_bus::dynsec::AgentLogin {
                agent: clawfleet_core::AgentRef { fleet: fleet.clone(), slot },
                fleet_uid: f.uid.clone(),
            });
        }
    }
    Ok(clawfleet_bus::dynsec::config_file(&secret, &agents))
}

/// The control plane's bus secret, made on first use.
fn bus_secret(store: &Store) -> Result<BusSecret, StoreError> {
    Ok(match store.meta("bus_secret")? {
        Some(bytes) if bytes.len() == 32 => BusSecret::from_bytes(bytes.try_into().expect("checked length")),
        _ => {
            let s = BusSecret::generate();
            store.set_meta("bus_secret", s.as_bytes())?;
            s
        }
    })
}

//! Where agents run.
//!
//! A [`Backend`] makes a fleet's agents match a [`Deployment`] (level-triggered, idempotent:
//! `apply` is called again and again with the desired state, never told why), reports what
//! runs ([`Backend::observe`]) and removes fleets. The control plane's reconciler drives every
//! backend the same way. [`local`] runs agents as supervised child processes; [`external`]
//! leaves starting them to the user (`clawfleet agent --join`); the Docker and
//! Slurm backends implement the same trait, and [`conformance`] is the suite all of them pass.
//!
//! **API boundary:** backends start agent runtimes and hand them their configuration
//! ([`env`]); they never read the bus. Whether an agent is *healthy* is the control plane's
//! judgement, from heartbeats; a backend only knows whether its process, container or job runs.

pub mod conformance;
pub mod env;
pub mod external;
pub mod local;
pub mod sandbox;
pub mod slurm;

use std::path::PathBuf;

use async_trait::async_trait;
use clawfleet_bus::BusSecret;
use clawfleet_core::{AgentRef, BackendKind, BrainSpec, FleetName};
pub use clawfleet_proto::api::Isolation;
use clawfleet_proto::cluster::ClusterSpec;

/// Everything a backend needs to run a fleet's agents.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub fleet: FleetName,
    /// The fleet incarnation (part of each agent's bus identity and workspace path).
    pub uid: String,
    pub replicas: u32,
    pub brain: BrainSpec,
    pub prompt: Option<String>,
    pub version: String,
    /// The container image (container backends; `None`: the backend's default agent image).
    pub image: Option<String>,
    /// Where and how the slurm backend runs the fleet (`None`: the backend's defaults).
    pub cluster: Option<ClusterSpec>,
    pub endpoints: Endpoints,
}

/// How agents reach the control plane's services.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub bus_host: String,
    pub bus_port: u16,
    /// The bus speaks MQTT over TLS (`mqtts://`).
    pub bus_tls: bool,
    /// The CA certificate (PEM) agents trust for it (`None`: the system's roots).
    pub bus_ca: Option<String>,
    pub credentials: Credentials,
    /// The shared model service (OpenAI-compatible base URL), for the `model` brain.
    pub model_url: Option<String>,
    pub model_name: String,
    /// Whether `model_url` is the control plane's own model service.
    pub model_builtin: bool,
    pub heartbeat_ms: u64,
}

/// How agents log in to the bus.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Each agent gets its own password, derived from the control plane's secret.
    PerAgent(BusSecret),
    /// Every agent logs in with the same account (an external broker's).
    Shared { username: String, password: String },
    /// The broker takes anonymous clients.
    Anonymous,
}

impl Deployment {
    pub fn agent(&self, slot: u32) -> AgentRef {
        AgentRef { fleet: self.fleet.clone(), slot }
    }

    /// The environment of one agent runtime (see [`env`]).
    pub fn agent_env(&self, slot: u32) -> Vec<(&'static str, String)> {
        let e = &self.endpoints;
        let mut vars = vec![
            (env::FLEET, self.fleet.to_string()),
            (env::SLOT, slot.to_string()),
            (env::FLEET_UID, self.uid.clone()),
            (env::BUS, format!("{}://{}:{}", if e.bus_tls { "mqtts" } else { "mqtt" }, bracket(&e.bus_host), e.bus_port)),
            (env::BRAIN, self.brain.to_string()),
            (env::FLEET_VERSION, self.version.clone()),
            (env::HEARTBEAT_MS, e.heartbeat_ms.to_string()),
            (env::MODEL_NAME, e.model_name.clone()),
        ];
        match &e.credentials {
            Credentials::PerAgent(secret) => {
                let agent = self.agent(slot);
                vars.push((env::BUS_USERNAME, clawfleet_core::acl::agent_username(&agent)));
                vars.push((env::BUS_PASSWORD, secret.agent_password(&agent, &self.uid)));
                vars.push((env::AGENT_TOKEN, secret.agent_token(&agent, &self.uid)));
            }
            Credentials::Shared { username, password } => {
                vars.push((env::BUS_USERNAME, username.clone()));
                vars.push((env::BUS_PASSWORD, password.clone()));
            }
            Credentials::Anonymous => {}
        }
        if let Some(ca) = &e.bus_ca {
            vars.push((env::BUS_CA, ca.clone()));
        }
        if let Some(url) = &e.model_url {
            vars.push((env::MODEL_URL, url.clone()));
            if e.model_builtin {
                vars.push((env::MODEL_BUILTIN, "1".into()));
            }
        }
        if let Some(prompt) = &self.prompt {
            vars.push((env::SYSTEM_PROMPT, prompt.clone()));
        }
        vars
    }
}

/// A 64-bit digest that is the same in every build (FNV-1a; std's hasher is not), for keys
/// that say whether a running agent's configuration changed.
pub fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

fn bracket(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

/// One agent as its backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub slot: u32,
    /// The backend's handle on it: a pid, a container or task id, a job step.
    pub instance: Option<String>,
    pub state: ReplicaState,
    /// Times the backend restarted it.
    pub restarts: u32,
    /// The machine it runs on, where the backend has several (a Swarm node id).
    pub node: Option<String>,
}

/// Whether a replica's process (container, job) runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaState {
    Starting,
    Running,
    /// Exited and waiting to be started again.
    Restarting {
        last_exit: String,
    },
    Stopping,
    /// Could not be started; the reason is shown to the operator.
    Failed(String),
}

impl ReplicaState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReplicaState::Starting => "starting",
            ReplicaState::Running => "running",
            ReplicaState::Restarting { .. } => "restarting",
            ReplicaState::Stopping => "stopping",
            ReplicaState::Failed(_) => "failed",
        }
    }
}

/// What a call of [`Backend::apply`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The agents are started, or on their way (`observe` shows them).
    Started,
    /// The backend must get something ready before it can start any agent (the agent image,
    /// built on first use); what it is doing, for the operator. The control plane calls
    /// `apply` again until it answers `Started`.
    Preparing(String),
}

/// Why a backend call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("the {0} backend is not available here: {1}")]
    Unavailable(BackendKind, String),
    #[error("{0}")]
    Failed(String),
}

/// A place where agents run.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    fn kind(&self) -> BackendKind;

    /// How this backend's agents are kept from the control plane's secrets and each other.
    fn isolation(&self) -> Isolation;

    /// Makes the fleet's agents match `deployment`: starts missing slots, stops extra ones.
    /// Idempotent and quick: it starts work and returns; `observe` shows progress, and
    /// [`Applied::Preparing`] says what comes before the first agent can start.
    async fn apply(&self, deployment: &Deployment) -> Result<Applied, BackendError>;

    /// The fleet's agents, as they are now, by slot.
    async fn observe(&self, fleet: &FleetName) -> Result<Vec<Replica>, BackendError>;

    /// Stops every agent of the fleet (gracefully, then by force) and releases what it held.
    /// Returns `true` once nothing of the fleet is left; called again until then.
    async fn remove(&self, fleet: &FleetName) -> Result<bool, BackendError>;

    /// The control plane is stopping: stop what must not outlive it.
    async fn shutdown(&self);

    /// Learns a stored fleet's deployment before anything else is asked of it (the control
    /// plane calls it for every fleet, terminating ones too, on each reconcile pass).
    fn prepare(&self, _deployment: &Deployment) {}

    /// The directory holding the fleet's mailbox (`<dir>/mailbox/{inbox,outbox,archive}`), for
    /// backends whose agents may have no route to the bus. The control plane follows it.
    fn mailbox(&self, _deployment: &Deployment) -> Option<PathBuf> {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stable_hash_is_fnv1a() {
        assert_eq!(super::stable_hash(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::stable_hash(*b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}

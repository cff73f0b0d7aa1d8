//! Where agents run.
//!
//! A [`Backend`] reports what runs of a fleet ([`Backend::observe`]), carries out the steps
//! `core::plan` computes from that and the [`Deployment`] ([`Backend::execute`]) and removes
//! fleets. [`converge`] is that contract, level-triggered: called again and again with the
//! desired state, never told why; the control plane's reconciler and the [`conformance`]
//! suite drive every backend through it. [`local`] runs agents as supervised child processes; [`external`]
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
pub use clawfleet_core::plan::{Action, ConfigKey, Instance, InstanceState, Memory, Plan, Policy, StopReason};
use clawfleet_core::{AgentRef, BackendKind, BrainSpec, FleetName};
pub use clawfleet_proto::api::{Canary, Isolation};
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
    /// Agents that run another version than `version` (a deploy's canaries).
    pub canary: Option<Canary>,
    /// How its agents are replaced (by the plan, or by a backend that rolls out by itself).
    pub policy: Policy,
    pub endpoints: Endpoints,
    /// What its brains get in their environment beyond clawfleet's own.
    pub brain_env: BrainEnvironment,
    /// Slots whose agents moved to another rack: never started here again.
    pub vacated: std::collections::BTreeSet<u32>,
}

/// A fleet's brains' environment: its variables, and its secrets with their values (which
/// travel only through each backend's secret channel, and which `Debug` never shows).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct BrainEnvironment {
    pub vars: Vec<(String, String)>,
    pub secrets: Vec<(String, String)>,
}

impl std::fmt::Debug for BrainEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secrets: Vec<&str> = self.secrets.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("BrainEnvironment").field("vars", &self.vars).field("secrets", &secrets).finish()
    }
}

impl BrainEnvironment {
    fn json(pairs: &[(String, String)]) -> Option<String> {
        (!pairs.is_empty()).then(|| {
            let map: std::collections::BTreeMap<&str, &str> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            serde_json::to_string(&map).expect("string maps serialize")
        })
    }
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

    /// The version one agent runs: its canary's, or the fleet's.
    pub fn version_of(&self, slot: u32) -> &str {
        match &self.canary {
            Some(c) if c.slots.contains(&slot) => &c.version,
            _ => &self.version,
        }
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
            (env::FLEET_VERSION, self.version_of(slot).to_owned()),
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
        if let Some(json) = BrainEnvironment::json(&self.brain_env.vars) {
            vars.push((env::BRAIN_ENV, json));
        }
        if let Some(json) = BrainEnvironment::json(&self.brain_env.secrets) {
            vars.push((env::BRAIN_SECRETS, json));
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

/// What a call of [`Backend::execute`] achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The agents are started, or on their way (`observe` shows them).
    Started,
    /// The backend must get something ready before it can start any agent (the agent image,
    /// built on first use); what it is doing, for the operator. The control plane calls
    /// `apply` again until it answers `Started`.
    Preparing(String),
}

/// Why a backend call failed, and so what the reconciler does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot work here at all (not installed, no permission, not a Swarm
    /// manager): the fleet's problem until the operator acts.
    #[error("the {0} backend is not available here: {1}")]
    Unavailable(BackendKind, String),
    /// Likely to pass if tried again (a login node or a controller that did not answer, a
    /// timeout): retried with backoff.
    #[error("{0}")]
    Transient(String),
    /// Fails the same way until the desired state or the cluster changes (a refused job, a
    /// missing image): the fleet's problem.
    #[error("{0}")]
    Permanent(String),
}

impl BackendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Transient(_))
    }
}

/// How a backend replaces agents whose configuration changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    /// By the plan: the reconciler stops and starts instances slot by slot.
    Planned,
    /// By itself (Swarm's rolling update): it is given no actions and converges the whole
    /// deployment on every pass.
    Native,
}

/// A place where agents run.
///
/// The reconcile contract ([`converge`]): the backend says what runs ([`Backend::observe`]),
/// `core::plan` decides what to start, stop and forget, and the backend carries that out
/// ([`Backend::execute`]). Backends keep no plan of their own.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    fn kind(&self) -> BackendKind;

    /// How this backend's agents are kept from the control plane's secrets and each other.
    fn isolation(&self) -> Isolation;

    fn rollout(&self) -> Rollout {
        Rollout::Planned
    }

    /// The configuration key of a slot's agent under `deployment`: an instance with another
    /// key is replaced.
    fn key(&self, deployment: &Deployment, slot: u32) -> ConfigKey {
        config_key(&deployment.agent_env(slot))
    }

    /// The fleet's instances, as they are now (a slot may have several while one replaces
    /// another, and dead ones until they are forgotten).
    async fn observe(&self, deployment: &Deployment) -> Result<Vec<Instance>, BackendError>;

    /// Carries out `actions` (a [`Rollout::Native`] backend gets none and converges the whole
    /// deployment). Quick: it starts work and returns; `observe` shows progress, and
    /// [`Applied::Preparing`] says what comes before the first agent can start.
    async fn execute(&self, deployment: &Deployment, actions: &[Action]) -> Result<Applied, BackendError>;

    /// Checks, before a change is stored, what the backend can tell will not work for
    /// `deployment` (an image this Docker Engine does not have); the error says what to do.
    async fn check(&self, _deployment: &Deployment) -> Result<(), BackendError> {
        Ok(())
    }

    /// Whether a rollout the backend runs by itself (Swarm's update) is over: a deploy is not
    /// called a success while the backend may still roll it back. Planned backends have none.
    async fn settled(&self, _deployment: &Deployment) -> Result<bool, BackendError> {
        Ok(true)
    }

    /// Stops every agent of the fleet (gracefully, then by force) and releases what it held.
    /// Returns `true` once nothing of the fleet is left; called again until then.
    async fn remove(&self, deployment: &Deployment) -> Result<bool, BackendError>;

    /// The control plane is stopping: stop what must not outlive it.
    async fn shutdown(&self);

    /// The directory holding the fleet's mailbox (`<dir>/mailbox/{inbox,outbox,archive}`), for
    /// backends whose agents may have no route to the bus. The control plane follows it.
    fn mailbox(&self, _deployment: &Deployment) -> Option<PathBuf> {
        None
    }

    /// An agent's workspace as the control plane can reach it, for backends whose agents'
    /// workspaces are on this machine's filesystem: where a project prepares its clone.
    fn workspace(&self, _deployment: &Deployment, _slot: u32) -> Option<PathBuf> {
        None
    }

    /// Where the agent itself sees that workspace, when not at the same path (a container's
    /// volume, mounted elsewhere): a project's clone then fetches from a mirror inside it.
    fn workspace_inside(&self) -> Option<PathBuf> {
        None
    }
}

/// A stable key of an agent's configuration (its environment): a changed key means the
/// agent must be replaced.
pub fn config_key(vars: &[(&'static str, String)]) -> ConfigKey {
    ConfigKey(stable_hash(vars.iter().flat_map(|(k, v)| k.bytes().chain([0]).chain(v.bytes()).chain([0]))))
}

/// What one reconcile step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub applied: Applied,
    pub plan: Plan,
}

/// One reconcile step of a fleet, the same for every backend: observe, plan (with the
/// deployment's policy), execute. `memory` is the fleet's (kept by the caller between steps),
/// `now_ms` a monotonic clock.
pub async fn converge(backend: &dyn Backend, deployment: &Deployment, memory: &mut Memory, now_ms: u64) -> Result<Step, BackendError> {
    let plan = match backend.rollout() {
        Rollout::Native => Plan::default(),
        Rollout::Planned => {
            let observed = backend.observe(deployment).await?;
            let desired: Vec<Option<ConfigKey>> =
                (0..deployment.replicas).map(|slot| (!deployment.vacated.contains(&slot)).then(|| backend.key(deployment, slot))).collect();
            clawfleet_core::plan::plan(memory, &desired, &observed, deployment.policy, now_ms)
        }
    };
    for action in &plan.actions {
        tracing::info!(fleet = %deployment.fleet, %action, "Reconcile");
    }
    let applied = backend.execute(deployment, &plan.actions).await?;
    Ok(Step { applied, plan })
}

#[cfg(test)]
mod tests {
    use super::{BrainEnvironment, config_key};

    #[test]
    fn a_brains_secrets_never_show_in_debug_output() {
        let env = BrainEnvironment { vars: vec![("PROJECT".into(), "climate".into())], secrets: vec![("API_KEY".into(), "s3cr3t".into())] };
        let shown = format!("{env:?}");
        assert!(shown.contains("PROJECT") && shown.contains("climate") && shown.contains("API_KEY"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn config_keys_are_stable_and_sensitive() {
        let a = vec![("A", "1".to_owned()), ("B", "2".to_owned())];
        let b = vec![("A", "1".to_owned()), ("B", "3".to_owned())];
        assert_eq!(config_key(&a), config_key(&a.clone()));
        assert_ne!(config_key(&a), config_key(&b));
        // Field boundaries matter: ("AB","") differs from ("A","B").
        assert_ne!(config_key(&[("AB", String::new())]), config_key(&[("A", "B".to_owned())]));
    }

    #[test]
    fn the_stable_hash_is_fnv1a() {
        assert_eq!(super::stable_hash(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::stable_hash(*b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}

//! The control plane's shared state, handed to every task and handler as `Arc<App>`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use clawfleet_backend::{Backend, Deployment, Endpoints};
use clawfleet_bus::BusClient;
use clawfleet_core::{BackendKind, BrainSpec, FleetSpec};
use clawfleet_proto::api::{BrainEnv, DeployPolicy, FleetState};
use clawfleet_store::FleetRow;
use tokio::sync::Notify;

use crate::db::Db;
use crate::hub::Hub;
use crate::live::Live;
use clawfleet_bus::FleetAuth;

pub(crate) struct App {
    pub db: Db,
    pub hub: Hub,
    pub live: Live,
    /// The control plane's own bus connection.
    pub bus: BusClient,
    pub backends: HashMap<BackendKind, Arc<dyn Backend>>,
    /// Which fleets exist (name -> uid); the embedded broker's authenticator reads it too.
    pub auth: Arc<FleetAuth>,
    /// The operator's token file's token.
    pub token: String,
    /// Every stored API token (hashes).
    pub tokens: crate::auth::Tokens,
    /// What agents may do to other fleets.
    pub policy: clawfleet_core::authz::Policy,
    /// How long an execution approval waits for an answer before it is refused.
    pub approval_timeout: std::time::Duration,
    /// How agents reach the bus and the model service.
    pub endpoints: Endpoints,
    pub default_brain: BrainSpec,
    /// Wakes the reconciler early.
    pub reconcile: Notify,
    /// Wakes the project loop early (a project started, an answer to a task arrived).
    pub projects_due: Notify,
    /// Wakes the council loop early (a council opened).
    pub councils_due: Notify,
    /// When each outbox row was last published.
    pub sent: Mutex<HashMap<i64, Instant>>,
    /// What a fleet's backend last said that the operator should see in `ls` and `status`:
    /// a complaint, or what it prepares. Cleared when the fleet's desired state changes.
    pub conditions: Mutex<HashMap<String, Condition>>,
    /// Every secret's value (`clawfleet secret set`), as stored: what brains get by name.
    pub secrets: std::sync::RwLock<std::collections::BTreeMap<String, String>>,
    pub data_dir: PathBuf,
    pub bus_url: String,
    pub embedded_bus: bool,
    pub metrics: crate::metrics::Metrics,
    /// Mailbox fleets and their agents' current jobs.
    /// Where directives leave: the bus, and mailbox agents' inboxes.
    pub outbound: crate::outbound::Outbound,
    /// With Mosquitto's dynamic-security plugin: the agent logins it has been given.
    pub dynsec: Option<crate::dynsec::Dynsec>,
    /// This rack's name and its peers.
    pub peers: crate::peer::Peers,
    /// Agents whose injections wait while they move between racks.
    pub holds: crate::migrate::Holds,
    /// Wakes the migration loop early (a migration began or moved).
    pub migrations_due: Notify,
    /// How long a migration out waits for its agent to finish its work, and then for the
    /// peer's copy to be ready, before it is aborted.
    pub migrate_within: std::time::Duration,
    /// What the events table keeps.
    pub retention: crate::retention::Retention,
}

/// A fleet's condition, as its backend last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Condition {
    /// The backend cannot do what the fleet asks (the operator must act).
    Problem(String),
    /// The backend is getting ready to start the fleet's agents.
    Preparing(String),
}

impl App {
    /// The fleet's problem, if its backend has one.
    pub(crate) fn problem(&self, fleet: &str) -> Option<String> {
        match self.conditions.lock().expect("not poisoned").get(fleet) {
            Some(Condition::Problem(p)) => Some(p.clone()),
            _ => None,
        }
    }

    /// What the fleet's backend prepares, if anything.
    pub(crate) fn preparing(&self, fleet: &str) -> Option<String> {
        match self.conditions.lock().expect("not poisoned").get(fleet) {
            Some(Condition::Preparing(p)) => Some(p.clone()),
            _ => None,
        }
    }

    /// The fleet's desired state changed: what its backend said about the old one no longer
    /// holds (the next reconcile pass, woken now, says it again if it still does).
    pub(crate) fn desired_changed(&self, fleet: &str) {
        self.conditions.lock().expect("not poisoned").remove(fleet);
        self.reconcile.notify_one();
    }
}

impl App {
    /// What a backend needs to run a stored fleet.
    pub(crate) fn deployment(&self, row: &FleetRow) -> Result<Deployment, String> {
        Ok(Deployment {
            fleet: row.name.parse().map_err(|e| format!("stored fleet name: {e}"))?,
            uid: row.uid.clone(),
            replicas: row.replicas,
            brain: row.brain.parse().map_err(|e| format!("stored brain: {e}"))?,
            prompt: row.prompt.clone(),
            version: row.version.clone(),
            image: row.image.clone(),
            cluster: row.cluster.as_deref().map(serde_json::from_str).transpose().map_err(|e| format!("stored cluster profile: {e}"))?,
            canary: canary(row),
            policy: self.policy(row),
            endpoints: self.endpoints.clone(),
            brain_env: self.brain_env(row)?,
            vacated: Default::default(),
        })
    }

    /// What a fleet's brains get: its variables, and its secrets' values.
    fn brain_env(&self, row: &FleetRow) -> Result<clawfleet_backend::BrainEnvironment, String> {
        let declared = BrainEnv::from_column(row.brain_env.as_deref());
        let values = self.secrets.read().expect("not poisoned");
        let secrets = declared
            .secrets
            .iter()
            .map(|name| match values.get(name) {
                Some(v) => Ok((name.clone(), v.clone())),
                None => Err(format!("the secret '{name}' its brains get is not set: clawfleet secret set {name}")),
            })
            .collect::<Result<_, _>>()?;
        Ok(clawfleet_backend::BrainEnvironment { vars: declared.env.into_iter().collect(), secrets })
    }

    /// A stored fleet's desired state, as validated specs are.
    pub(crate) fn spec(&self, row: &FleetRow) -> Result<FleetSpec, String> {
        let brain_env = BrainEnv::from_column(row.brain_env.as_deref());
        Ok(FleetSpec {
            name: row.name.parse().map_err(|e| format!("stored fleet name: {e}"))?,
            replicas: row.replicas,
            backend: row.backend.parse().map_err(|e| format!("stored backend: {e}"))?,
            brain: row.brain.parse().map_err(|e| format!("stored brain: {e}"))?,
            prompt: row.prompt.clone(),
            version: row.version.clone(),
            image: row.image.clone(),
            cluster: row.cluster.as_deref().map(serde_json::from_str).transpose().map_err(|e| format!("stored cluster profile: {e}"))?,
            deploy: deploy_policy(row),
            env: brain_env.env,
            secrets: brain_env.secrets,
        })
    }

    /// How long the fleet's agents have to take an injection (its cluster profile's).
    /// Which control plane this is, as a snapshot's manifest names it: its host and its data
    /// directory.
    pub(crate) fn identity(&self) -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "localhost".into());
        format!("{host}:{}", self.data_dir.display())
    }

    pub(crate) fn inject_timeout(&self, row: &FleetRow) -> Option<std::time::Duration> {
        let seconds = self.deployment(row).ok()?.cluster?.inject_timeout_seconds?;
        Some(std::time::Duration::from_secs(seconds))
    }

    /// The plan's policy for a fleet: its deploy policy resolved against its replicas.
    pub(crate) fn policy(&self, row: &FleetRow) -> clawfleet_backend::Policy {
        let max = deploy_policy(row).max_unavailable.map_or(1, |m| m.of(row.replicas));
        clawfleet_backend::Policy { max_unavailable: max }
    }

    pub(crate) fn backend(&self, kind: &str) -> Result<&Arc<dyn Backend>, String> {
        let kind: BackendKind = kind.parse().map_err(|e: clawfleet_core::SpecError| e.to_string())?;
        self.backends.get(&kind).ok_or_else(|| {
            format!("the {kind} backend is not enabled in this control plane (enabled: {})", self.backend_names().join(", "))
        })
    }

    pub(crate) fn backend_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.backends.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }
}

/// A fleet's agents on another version (none when unreadable).
pub(crate) fn canary(row: &FleetRow) -> Option<clawfleet_proto::api::Canary> {
    row.canary.as_deref().and_then(|c| serde_json::from_str(c).ok())
}

/// A stored deploy policy (the defaults when none, or when unreadable).
pub(crate) fn deploy_policy(row: &FleetRow) -> DeployPolicy {
    row.deploy.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or_default()
}

/// A validated spec as a stored row of a new fleet incarnation.
pub(crate) fn new_row(spec: &FleetSpec, uid: String, created_at: String) -> FleetRow {
    FleetRow {
        name: spec.name.to_string(),
        uid,
        backend: spec.backend.to_string(),
        brain: spec.brain.to_string(),
        prompt: spec.prompt.clone(),
        version: spec.version.clone(),
        replicas: spec.replicas,
        state: FleetState::Active,
        created_at,
        image: spec.image.clone(),
        previous: None,
        cluster: spec.cluster.as_ref().map(|c| serde_json::to_string(c).expect("cluster specs serialize")),
        deploy: (spec.deploy != DeployPolicy::default()).then(|| serde_json::to_string(&spec.deploy).expect("policies serialize")),
        canary: None,
        brain_env: BrainEnv { env: spec.env.clone(), secrets: spec.secrets.clone() }.to_column(),
        leader: None,
        leader_epoch: 0,
        leader_preferred: None,
    }
}

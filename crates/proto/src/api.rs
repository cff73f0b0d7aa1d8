//! Bodies of the control plane's HTTP API (`/api/v1/...`).
//!
//! Every call carries `Authorization: Bearer <token>`. Errors are `{"error": "...", "code": "..."}`
//! with an HTTP status that fits (400 bad input, 401 token, 404 unknown fleet or agent,
//! 409 conflict, 413 too large, 500 internal).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bus::BrainStatus;
use crate::event::Usage;

/// `POST /api/v1/fleets`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    pub name: String,
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brain: Option<String>,
    /// System prompt of every agent of the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The container image (docker backend) [default: the control plane's agent image].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Where and how the slurm backend runs this fleet (a cluster file's profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterSpec>,
    /// How the fleet's agents are replaced when its configuration changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployPolicy>,
    /// Environment variables its brains get (not secret: shown in status and kept in files).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Control-plane secrets (`clawfleet secret set NAME`) its brains get as environment
    /// variables of the same names; only the names are stored with the fleet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

/// What a fleet's brains get in their environment beyond clawfleet's own: variables, and the
/// names of the secrets they get (their values stay in the `secrets` table).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrainEnv {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
}

impl BrainEnv {
    /// The column's value: `None` when there is nothing.
    pub fn to_column(&self) -> Option<String> {
        (self != &BrainEnv::default()).then(|| serde_json::to_string(self).expect("brain environments serialize"))
    }

    pub fn from_column(column: Option<&str>) -> BrainEnv {
        column.and_then(|c| serde_json::from_str(c).ok()).unwrap_or_default()
    }
}

/// `PUT /api/v1/secrets/{name}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRequest {
    pub value: String,
}

/// A secret, as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    /// Its value's length in bytes.
    pub bytes: usize,
    pub updated_at: String,
    pub updated_by: String,
    /// The fleets whose brains get it.
    pub fleets: Vec<String>,
}

/// `GET /api/v1/secrets`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretList {
    pub secrets: Vec<SecretInfo>,
}

/// How a fleet's agents are replaced when its configuration changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployPolicy {
    /// The most agents down at once during a rollout: a count (`2`) or a share of the
    /// replicas (`"25%"`, rounded down, at least 1) [default: 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<MaxUnavailable>,
    /// A deploy of this fleet moves this many agents first, then waits for `deploy promote`
    /// (as `deploy --canary N`, which overrides it) [default: none].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u32>,
    /// How long a deploy of this fleet may go without one more agent passing its health check
    /// before it reverts (as `deploy --deadline`, which overrides it) [default: 120].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_s: Option<u64>,
}

/// A count of agents, or a percentage of the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxUnavailable {
    Count(u32),
    Percent(u32),
}

impl MaxUnavailable {
    /// How many agents of `replicas` this is (at least 1).
    pub fn of(self, replicas: u32) -> u32 {
        match self {
            MaxUnavailable::Count(n) => n.max(1),
            MaxUnavailable::Percent(p) => ((u64::from(replicas) * u64::from(p) / 100) as u32).max(1),
        }
    }
}

impl std::fmt::Display for MaxUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxUnavailable::Count(n) => write!(f, "{n}"),
            MaxUnavailable::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for MaxUnavailable {
    type Err = String;

    fn from_str(s: &str) -> Result<MaxUnavailable, String> {
        let bad = || {
            format!(
                "max_unavailable must be a count of at least 1 or a percentage from 1% to 100%, got '{}'",
                s.chars().take(32).collect::<String>()
            )
        };
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<u32>() {
                Ok(p @ 1..=100) => Ok(MaxUnavailable::Percent(p)),
                _ => Err(bad()),
            },
            None => match s.parse::<u32>() {
                Ok(n @ 1..) => Ok(MaxUnavailable::Count(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl Serialize for MaxUnavailable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxUnavailable::Count(n) => s.serialize_u32(*n),
            MaxUnavailable::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for MaxUnavailable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MaxUnavailable, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MaxUnavailable;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a count of agents (2) or a percentage of the replicas (\"25%\")")
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<MaxUnavailable, E> {
                u32::try_from(n).map_err(|_| E::custom("max_unavailable is too large"))?.to_string().parse().map_err(E::custom)
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<MaxUnavailable, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format!("max_unavailable must be at least 1, got {n}")))
                    .and_then(|n| self.visit_u64(n))
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<MaxUnavailable, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `POST /api/v1/deploys`: move fleets to a new version (and image), gated by their agents'
/// health, reverted by itself when it fails.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// `all` or a fleet (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The new version label [default: the current one plus one].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The new image (docker fleets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Seconds the deploy may go without an agent more passing the gate before it reverts
    /// [default: 120].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_s: Option<u64>,
    /// Move only this many agents of each fleet first (slots 0..N; on a backend that rolls out
    /// by itself, N of its choosing); the deploy then waits for `promote` (the rest follow) or
    /// `abort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<u32>,
}

/// Agents of a fleet that run another version than the fleet's: a deploy's canaries, or one
/// agent deployed on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The agents that move (none when `count` is given).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<u32>,
    /// How many agents move, chosen by a backend that rolls out by itself (Swarm updates that
    /// many tasks, then holds its update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

crate::named_enum! {
    /// Where a deploy is.
    pub enum DeployState ("deploy state") {
        /// Agents are being replaced and checked.
        Running = "running",
        /// Its canaries passed: it waits for `promote` (the rest follow) or `abort`.
        Paused = "paused",
        /// Every agent runs the new version and answered its health check.
        Succeeded = "succeeded",
        /// It failed its gate or its deadline: the fleets were returned to their versions before.
        Reverted = "reverted",
        /// Stopped by an operator: the fleets were returned to their versions before.
        Aborted = "aborted",
        /// It could not go on (a fleet was terminated under it); nothing was reverted.
        Failed = "failed",
    }
}

impl DeployState {
    /// Running or paused: not over.
    pub fn is_active(self) -> bool {
        matches!(self, DeployState::Running | DeployState::Paused)
    }
}

/// One fleet of a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployFleet {
    pub fleet: String,
    pub from_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image: Option<String>,
    pub to_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_image: Option<String>,
    /// Agents on the new version that answered their health check, of `replicas` (of
    /// `slots`' while only they move).
    pub ready: u32,
    pub replicas: u32,
    /// Only these agents move (canaries, or the one agent deployed); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<Vec<u32>>,
    /// Only this many canaries move, which the backend picks (Swarm's); `slots` is absent then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canaries: Option<u32>,
    /// What `rollback` returned the fleet to before this deploy (its version, and image), which
    /// a revert restores: a rollback after a revert never goes to the version that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<(String, Option<String>)>,
}

impl DeployFleet {
    /// Whether only some of its agents move (canaries, or one agent).
    pub fn partial(&self) -> bool {
        self.slots.is_some() || self.canaries.is_some()
    }

    /// How many of its agents this deploy gates now.
    pub fn gated(&self) -> u32 {
        match (&self.slots, self.canaries) {
            (Some(slots), _) => slots.len() as u32,
            (None, Some(n)) => n,
            (None, None) => self.replicas,
        }
    }
}

/// A deploy, running or done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deploy {
    pub id: u64,
    pub target: String,
    /// Who asked for it (the token's name and role).
    pub actor: String,
    pub state: DeployState,
    /// Why it ended as it did, when not a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub deadline_s: u64,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub fleets: Vec<DeployFleet>,
}

/// `GET /api/v1/deploys`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployList {
    pub deploys: Vec<Deploy>,
}

/// `POST /api/v1/apply`: make the fleets match these declarations (a fleet.toml), or with
/// `dry_run` only say what would change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    pub fleets: Vec<LaunchRequest>,
    /// Terminate fleets that are not declared (otherwise they are left alone).
    #[serde(default)]
    pub prune: bool,
    #[serde(default)]
    pub dry_run: bool,
}

/// What an apply changes (or, dry, would change), fleet by fleet, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyPlan {
    pub changes: Vec<FleetChange>,
    /// Fleets that exist but are not declared, left alone (no `prune`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_alone: Vec<String>,
    /// Whether the changes were made (`false` for a dry run).
    pub applied: bool,
}

/// One fleet's change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetChange {
    pub fleet: String,
    pub op: ChangeOp,
    /// The fields that change (for `create`, every field declared).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    Create,
    Update,
    Terminate,
}

impl ChangeOp {
    /// Terraform's sign for it: `+`, `~`, `-`.
    pub fn sign(self) -> char {
        match self {
            ChangeOp::Create => '+',
            ChangeOp::Update => '~',
            ChangeOp::Terminate => '-',
        }
    }
}

/// One field's old and new value, as text (`None`: unset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// `POST /api/v1/fleets/{name}/update`: a rolling update to a new image and/or version label.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A fleet, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    pub name: String,
    pub backend: String,
    pub brain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub version: String,
    /// The container image (container backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Desired number of agents.
    pub replicas: u32,
    pub state: FleetState,
    pub created_at: String,
    /// Agents whose last heartbeat is fresh and who are idle or busy.
    pub ready: u32,
    /// What the fleet's backend last complained about, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// What the fleet's backend is getting ready before it can start agents (the agent image,
    /// built on first use), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preparing: Option<String>,
    /// How its agents are replaced when its configuration changes (absent: the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployPolicy>,
    /// Agents that run another version than the fleet's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// The version `rollback` returns to (absent: there is none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<String>,
    /// Environment variables its brains get.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The secrets its brains get (names only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// The agent that leads it (clawbucket's MANAGER), and in which epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderInfo>,
    /// The agent the operator wants to lead, while it is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_preferred: Option<u32>,
}

fn armed_by_default() -> bool {
    true
}

/// `POST /api/v1/fleets/{name}/agents/{slot}/arm`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmRequest {
    pub armed: bool,
}

/// `POST /api/v1/fleets/{name}/chat`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatPost {
    pub text: String,
}

/// One message of a fleet's chat panel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Its event id (messages are events: they stream with the rest).
    pub id: u64,
    pub from: String,
    /// The agent that posted it, if an agent did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<u32>,
    pub text: String,
    pub at: String,
}

/// `GET /api/v1/fleets/{name}/chat`: the newest messages, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatList {
    pub messages: Vec<ChatMessage>,
}

/// `POST /api/v1/fleets/{name}/chime`: ask agents (`targets`, all when absent) to post to the
/// chat what their brain answers to `prompt` (absent: the newest message, to reply to).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChimeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<u32>>,
}

/// A Rock/Paper/Scissors round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundView {
    pub round: u64,
    /// The leader it was opened for, and its epoch.
    pub leader: u32,
    pub epoch: u64,
    /// The leader's move, once it moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<crate::scenario::Rps>,
    pub opened_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub led_at: Option<String>,
    /// How many agents played it.
    pub plays: u64,
}

/// One agent's line of a fleet's scoreboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreView {
    pub slot: u32,
    /// Its generated name (clawbucket's).
    pub name: String,
    pub score: i64,
    pub wins: u64,
    pub draws: u64,
    pub losses: u64,
    pub last_round: u64,
}

/// `GET /api/v1/fleets/{name}/rps`: the fleet's scenarios, its newest round and its scoreboard
/// (best first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpsView {
    pub scenarios: crate::scenario::Scenarios,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<RoundView>,
    pub scoreboard: Vec<ScoreView>,
}

/// One haiku of a fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaikuView {
    pub id: u64,
    pub at: String,
    /// The leader that wrote it, in its epoch.
    pub agent: u32,
    pub epoch: u64,
    pub text: String,
}

/// `GET /api/v1/fleets/{name}/haiku`: the newest haiku, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaikuList {
    pub haiku: Vec<HaikuView>,
}

/// A fleet's leader: its slot and the epoch (fencing token) it leads in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub slot: u32,
    pub epoch: u64,
}

/// `POST /api/v1/fleets/{name}/leader`: the agent the operator wants to lead (`None`: the
/// rule alone, the lowest healthy slot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderRequest {
    pub slot: Option<u32>,
}

crate::named_enum! {
    /// Whether a fleet is wanted.
    pub enum FleetState ("fleet state") {
        Active = "active",
        /// Its agents are being stopped; then it is deleted.
        Terminating = "terminating",
    }
}

/// `GET /api/v1/fleets`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetList {
    pub fleets: Vec<Fleet>,
}

/// `GET /api/v1/fleets/{name}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub fleet: Fleet,
    /// What keeps the fleet's agents (and their brains) from the control plane's secrets and
    /// from each other.
    pub isolation: Isolation,
    pub agents: Vec<AgentStatus>,
    /// The deploy that moves this fleet now, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
}

/// How a backend confines its agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Isolation {
    /// Each agent is a Landlock domain of its own: its workspace, and read-only access outside
    /// the control plane's data directory.
    Landlock { abi: u32 },
    /// Each agent runs as an unprivileged user of its own.
    User,
    /// Each agent is a container with its own filesystem (docker).
    Container,
    /// Each agent is a batch job of the cluster's, as the cluster's user (slurm).
    BatchJob,
    /// Agents someone started by hand, wherever they run (external).
    External,
    /// None: agents run as the control plane's user and can read what it can.
    None,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Isolation::Landlock { abi } => write!(f, "landlock (ABI {abi}): own workspace, no access to the data directory"),
            Isolation::User => f.write_str("an unprivileged user per agent"),
            Isolation::Container => f.write_str("a container per agent"),
            Isolation::BatchJob => f.write_str("a batch job per agent, as the cluster user"),
            Isolation::External => f.write_str("none known (agents started by hand)"),
            Isolation::None => f.write_str("NONE: agents run as the control plane's user (--agent-sandbox off)"),
        }
    }
}

/// One agent, as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub slot: u32,
    /// Whether it takes part in the fleet's scenarios (clawbucket's ARM; on unless disarmed).
    #[serde(default = "armed_by_default")]
    pub armed: bool,
    /// `fleet/slot`.
    pub id: String,
    /// A stable, readable name made from `id` (clawbucket's generated replica names).
    #[serde(default)]
    pub name: String,
    /// `pending` (no heartbeat yet), `starting`, `idle`, `busy`, `stopping`, `stopped`, `lost`.
    pub state: String,
    /// The backend's handle on it (a pid for local agents), when running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Times the backend restarted it.
    pub restarts: u32,
    /// The machine it runs on, where the backend has several (a Swarm node id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_age_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brain: Option<BrainStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_injection: Option<String>,
    pub queued: u32,
    /// Why the backend cannot run it, or how it last exited, when that matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// What it says it is doing, in three words (the three-words scenario).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub three_words: Option<String>,
    /// Its Rock/Paper/Scissors score, once it played.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<i64>,
    /// Where it came from or went to, when it moved between racks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub badge: Option<crate::rack::Badge>,
}

/// `POST /api/v1/fleets/{name}/scale`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub replicas: u32,
}

/// `POST /api/v1/fleets/{name}/inject`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectRequest {
    pub prompt: String,
    /// Slots to send to; absent means every agent of the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<u32>>,
    /// The role whose holder, in the fleet's active council, it goes to (instead of `agents`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The caller's correlation id, repeated in every `inject_ack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The answer to an inject: the injection is persisted and queued for every target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InjectResponse {
    pub injection_id: String,
    pub fleet: String,
    pub targets: Vec<u32>,
    /// Id of the first `inject_ack` event: `attach --since` one less sees the whole lifecycle.
    pub first_event_id: u64,
}

/// `GET /api/v1/injections/{id}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InjectionStatus {
    pub injection_id: String,
    pub fleet: String,
    pub prompt: String,
    pub created_at: String,
    pub agents: Vec<InjectionTarget>,
}

/// Where one agent is in an injection's lifecycle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InjectionTarget {
    pub agent: u32,
    /// `queued`, `delivered`, `running`, `complete`, `failed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// `POST /api/v1/fleets/{name}/command`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<u32>>,
    /// How long to wait for replies before answering with what came (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Replies gathered for a command. Agents that did not answer in time are `pending`:
/// the command stays queued for them and their reply is recorded as an event later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResponse {
    pub command_id: String,
    pub command: String,
    pub results: Vec<CommandResult>,
    pub pending: Vec<u32>,
}

/// One agent's reply to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub agent: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub result: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /api/v1/info`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub version: String,
    /// The bus URL agents are given.
    pub bus: String,
    /// Whether the bus is the control plane's embedded broker.
    pub embedded_bus: bool,
    pub data_dir: String,
    pub backends: Vec<String>,
    pub brains: Vec<String>,
}

/// `GET /api/v1/fleets/{name}/join?slots=A-B`: what agents started by hand (`clawfleet agent
/// --join`) need to run as slots of a fleet. Operator only: it carries bus passwords.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub fleet: String,
    pub fleet_uid: String,
    /// `mqtt://host:port` (or `mqtts://`) as agents reach the bus.
    pub bus: String,
    /// The CA certificate (PEM) to trust for `mqtts://`, when not the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus_ca: Option<String>,
    pub brain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_url: Option<String>,
    pub model_name: String,
    /// Whether `model_url` is the control plane's own model service.
    #[serde(default)]
    pub model_builtin: bool,
    pub heartbeat_ms: u64,
    pub agents: Vec<JoinAgent>,
}

/// One slot's bus login.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinAgent {
    pub slot: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The agent's own API token (role `agent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `GET /api/v1/bus/observer`: the read-only bus login (operator only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusLogin {
    /// Where MQTT clients reach the broker.
    pub host: String,
    pub port: u16,
    /// MQTT over TLS.
    #[serde(default)]
    pub tls: bool,
    pub username: String,
    pub password: String,
    /// What it may subscribe to.
    pub topics: String,
}

/// A role an API token is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything (within its fleet, when it has one).
    Operator,
    /// Reading only: status, events, injections, the audit log.
    Observer,
    /// One agent's own token: its own fleet's status and events, and what the policy allows
    /// on other fleets.
    Agent,
    /// Another control plane (a rack): its rack information, and offering and completing
    /// migrations into this one; nothing else.
    Peer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Observer => "observer",
            Role::Agent => "agent",
            Role::Peer => "peer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "operator" => Ok(Role::Operator),
            "observer" => Ok(Role::Observer),
            "agent" => Ok(Role::Agent),
            "peer" => Ok(Role::Peer),
            other => Err(format!("unknown role '{other}': the roles are operator, observer, agent and peer")),
        }
    }
}

/// `POST /api/v1/tokens`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Unique; a name is made up when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: Role,
    /// The only fleet the token may touch (for `agent`: the fleet whose agent it acts as).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<String>,
    /// How long it is valid (`30d`, `12h`); never expires when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// A token as `GET /api/v1/tokens` lists it: never the token itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Who created it (`name (role)`).
    pub created_by: String,
}

/// `GET /api/v1/tokens`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// The answer to `POST /api/v1/tokens`: the token, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
}

/// One line of the audit log (`GET /api/v1/audit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// Every API error body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub code: String,
}

/// A plain acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub ok: bool,
    pub message: String,
}

/// `POST /api/v1/fleets/{fleet}/agents/{slot}/restore`: what the agent took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreResponse {
    /// The agent restored into, `fleet/slot`.
    pub agent: String,
    /// The agent the snapshot was of.
    pub from: String,
    pub turns: u64,
    pub files: usize,
    /// Whether the agent read its workspace again (`config-reload`).
    pub reloaded: bool,
    /// How many messages its conversation holds now, as it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_messages: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

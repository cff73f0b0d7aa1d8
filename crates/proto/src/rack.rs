//! Racks and migrations between them: control planes that know each other as peers
//! (`up --rack NAME --peer NAME=URL`), what one tells another about itself, and the two-phase
//! handoff of an agent from one rack to another (`clawfleet migrate FLEET/SLOT --to RACK`).

use serde::{Deserialize, Serialize};

/// The longest rack name.
pub const MAX_RACK_NAME: usize = 64;

/// A rack's name: 1-64 of a-z, 0-9 and `-`, starting with a letter or digit.
pub fn check_rack_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_RACK_NAME
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        return Ok(());
    }
    Err(format!(
        "rack name '{}' must be 1-{MAX_RACK_NAME} of a-z, 0-9 and '-', starting with a letter or digit",
        name.chars().take(80).collect::<String>()
    ))
}

/// `GET /api/v1/rack`: what a control plane says of itself (to its operators and its peers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RackInfo {
    pub rack: String,
    pub clawfleet_version: String,
    /// The snapshot format version it reads and writes.
    pub snapshot_version: u32,
}

/// One peer as `GET /api/v1/racks` shows it: whether it answers now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub url: String,
    pub answers: bool,
    /// What it says of itself, when it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<RackInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Why it does not answer, or why it is not one this rack can migrate to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// `GET /api/v1/racks`: this rack and its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Racks {
    pub rack: String,
    pub peers: Vec<PeerStatus>,
}

crate::named_enum! {
    /// Which side of a migration a control plane holds.
    pub enum Direction ("migration direction") {
        /// The agent leaves this rack.
        Out = "out",
        /// The agent arrives in this rack.
        In = "in",
    }
}

crate::named_enum! {
    /// Where a migration is. The source (`Out`) drives it: `offered` (the peer accepted; the
    /// agent takes no new injection) → `transferred` (the peer holds the snapshot and starts
    /// its copy) → `committing` (the decision: the source's copy stops for good) → `committed`
    /// (the peer's copy took over; held injections go to it) → `done`; or, before
    /// `committing`, `aborting` (the source's copy answers again; the peer is told) →
    /// `aborted`. The peer (`In`) goes `offered` → `transferred` → `ready` (its copy is idle
    /// and holds the snapshot's state, answering nothing) → `committed`, or `aborted`.
    pub enum MigrationState ("migration state") {
        Offered = "offered",
        Transferred = "transferred",
        Ready = "ready",
        Committing = "committing",
        Committed = "committed",
        Done = "done",
        Aborting = "aborting",
        Aborted = "aborted",
    }
}

impl MigrationState {
    /// Whether it has ended (on this side).
    pub fn is_final(self) -> bool {
        matches!(self, MigrationState::Done | MigrationState::Aborted)
    }
}

/// A migration as the API shows it (on either side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub id: String,
    pub direction: Direction,
    /// The other rack.
    pub peer: String,
    /// The agent on this rack: the source agent (`out`), or the peer's new one (`in`, once
    /// it has a slot).
    pub fleet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// The agent on the other rack.
    pub remote_fleet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_slot: Option<u32>,
    pub state: MigrationState,
    /// Why it was aborted, or what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Injections held during the handoff and sent on to the copy that took over.
    pub forwarded: u32,
    pub created_at: String,
    pub updated_at: String,
}

/// `GET /api/v1/migrations`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationList {
    pub migrations: Vec<Migration>,
}

/// `POST /api/v1/fleets/{name}/agents/{slot}/migrate`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The peer rack.
    pub to: String,
    /// The fleet on the peer that takes the agent (default: one of the same name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<String>,
    /// Move the fleet's last available agent too (refused by default: the fleet would have
    /// no agent left here).
    #[serde(default)]
    pub allow_last: bool,
}

/// `POST /api/v1/migrations` (peer to peer): the source asks whether the peer takes an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// Chosen by the source; the same offer again is the same migration.
    pub id: String,
    /// The source's rack.
    pub from: String,
    /// The agent on the source.
    pub fleet: String,
    pub slot: u32,
    /// The fleet that should take it on the peer.
    pub target_fleet: String,
    pub clawfleet_version: String,
    pub snapshot_version: u32,
}

/// `POST /api/v1/migrations/{id}/inject` (peer to peer): an injection the source accepted
/// for the agent while it moved, for the copy that took over. The same one again is the same
/// injection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forwarded {
    /// The source's injection id.
    pub injection_id: String,
    pub prompt: String,
}

/// The answer to a forwarded injection: its id on the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedAnswer {
    pub injection_id: String,
}

/// What an agent's tile shows about a migration: where it came from, or where it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Badge {
    /// It arrived from another rack (`FROM <rack>`).
    From { rack: String },
    /// It left for another rack (`DEFECTED`); its slot here stays empty.
    Defected { rack: String },
    /// It is moving now.
    Migrating { rack: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rack_names() {
        for ok in ["a", "rack-b", "r2"] {
            check_rack_name(ok).unwrap();
        }
        for bad in ["", "-a", "Rack", "a_b", &"x".repeat(65)] {
            assert!(check_rack_name(bad).unwrap_err().contains("rack name"), "{bad}");
        }
    }

    #[test]
    fn states_read_back() {
        for s in ["offered", "transferred", "ready", "committing", "committed", "done", "aborting", "aborted"] {
            assert_eq!(s.parse::<MigrationState>().unwrap().as_str(), s);
        }
        assert!("gone".parse::<MigrationState>().is_err());
    }
}

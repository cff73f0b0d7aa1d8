//! A council (seed 002, WHOOSH/CHORUS): the control plane broadcasts an opportunity to a fleet,
//! its agents claim the roles they would take, and the council is active once every core role is
//! held. These are its wire shapes: what an operator asks for, what the API shows, and the
//! states a council goes through. The rules are `clawfleet_core::council`'s.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// At most this many roles in a council.
pub const MAX_ROLES: usize = 16;
/// A role's name: 1 to this many characters of `a-z`, `0-9`, `-` and `_`, starting with a letter.
pub const MAX_ROLE_CHARS: usize = 32;
/// At most this many characters in a council's brief.
pub const MAX_BRIEF_CHARS: usize = 2000;
/// At most this many characters of the reason an agent gives for its claim (longer ones are cut).
pub const MAX_REASON_CHARS: usize = 280;
/// How long a council may wait for its core roles, in seconds.
pub const TIMEOUT_SECONDS: RangeInclusive<u32> = 1..=3600;
/// How long it waits when the operator does not say.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 60;

named_enum! {
    /// Where a council is in its life.
    pub enum CouncilState ("council state") {
        /// Broadcast; waiting for its core roles to be claimed.
        Open = "open",
        /// Every core role is held: the council works (injections may address its roles).
        Active = "active",
        /// Its timeout passed with core roles unclaimed.
        Failed = "failed",
        /// Closed by an operator.
        Closed = "closed",
    }
}

impl CouncilState {
    /// Whether the council is over (failed or closed).
    pub fn is_over(self) -> bool {
        matches!(self, CouncilState::Failed | CouncilState::Closed)
    }
}

/// An operator's request to open a council on a fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouncilOpen {
    pub roles: Vec<String>,
    /// The roles that must be held for the council to be active; empty: every role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub core: Vec<String>,
    /// How long to wait for the core roles (default 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// What the council is for, as the agents are told.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub brief: String,
}

/// One role of a council, and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seat {
    pub role: String,
    /// A core role (the council is active when every one is held).
    pub core: bool,
    /// The slot of the agent that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// Why the agent claimed it, in its words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// A council as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouncilView {
    pub id: u64,
    pub fleet: String,
    pub state: CouncilState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub brief: String,
    pub seats: Vec<Seat>,
    pub opened_at: String,
    /// When it fails if its core roles are not all held by then.
    pub deadline: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// The token name and role that opened it.
    pub by: String,
}

/// A fleet's councils, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouncilList {
    pub councils: Vec<CouncilView>,
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn shapes() {
        let open: CouncilOpen = serde_json::from_str(r#"{"roles":["planner","reviewer"],"core":["planner"]}"#).unwrap();
        assert_eq!((open.timeout_seconds, open.brief.as_str()), (None, ""));
        expect![[r#"{"roles":["planner","reviewer"],"core":["planner"]}"#]].assert_eq(&serde_json::to_string(&open).unwrap());
        let err = serde_json::from_str::<CouncilOpen>(r#"{"roles":[],"quorum":2}"#).unwrap_err().to_string();
        assert!(err.starts_with("unknown field `quorum`"), "{err}");
        assert_eq!(
            "waiting".parse::<CouncilState>().unwrap_err(),
            "unknown council state 'waiting' (expected open, active, failed or closed)"
        );
        let seat = Seat { role: "planner".into(), core: true, slot: Some(2), reason: Some("I plan".into()), since: None };
        expect![[r#"{"role":"planner","core":true,"slot":2,"reason":"I plan"}"#]].assert_eq(&serde_json::to_string(&seat).unwrap());
    }
}

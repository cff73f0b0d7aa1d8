//! The queue of injections that wait for an idle agent (codeswarm's `enqueue_inject` and
//! `queue_list`): an item names its fleet and, or not, the agent it is for; the control plane
//! keeps it until that agent (or, for an item for no agent in particular, the fleet's first
//! idle one) is idle, then injects it. These are its wire shapes.

use serde::{Deserialize, Serialize};

/// At most this many items wait for one fleet; more are refused until some are dispatched.
pub const MAX_QUEUED_PER_FLEET: usize = 1000;
/// The finished items (done, cancelled, dropped) kept per fleet, newest first; older ones are
/// forgotten.
pub const FINISHED_KEPT_PER_FLEET: usize = 1000;

crate::named_enum! {
    /// Where a queued item is in its life.
    pub enum QueueStatus ("queue status") {
        /// Waiting for its agent (or any agent of its fleet) to be idle.
        Queued = "queued",
        /// Injected into its agent, which is working on it.
        Dispatched = "dispatched",
        /// Its agent finished its turn (or failed it).
        Done = "done",
        /// Cancelled before it was dispatched.
        Cancelled = "cancelled",
        /// Dropped before it was dispatched: its fleet or its agent is gone.
        Dropped = "dropped",
    }
}

/// `POST /api/v1/fleets/{fleet}/queue`: what to queue. With neither `agents` nor `all`, one
/// item for the fleet's first idle agent; with `agents`, one item for each; with `all`, one
/// for each of the fleet's agents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueAdd {
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// The fleet the work comes from (an agent's token: its own fleet, whatever is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The caller's correlation id, in every event of the item and of its injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One queued item, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueItem {
    pub queue_id: String,
    pub fleet: String,
    /// The agent it waits for; none: the fleet's first idle agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub status: QueueStatus,
    /// The agent it was dispatched to, with its injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_to: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection_id: Option<String>,
    /// Why it was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    /// Who queued it (a token's name and role).
    pub by: String,
    /// The agent (`fleet/slot`) its answer goes back to, when a delegation said `/reply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// `GET /api/v1/queue`: the items waiting (or, with `?all=true`, the newest items of every
/// status), oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueList {
    pub items: Vec<QueueItem>,
    /// Of an enqueue's items, how many were already queued by a delegation read from the same
    /// answer (the same work from the same source, moments before): taken as those, not twice.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub joined: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_add_names_only_its_own_fields() {
        let add: QueueAdd = serde_json::from_str(r#"{"prompt": "hi", "agents": [1]}"#).unwrap();
        assert_eq!(add.agents, Some(vec![1]));
        let err = serde_json::from_str::<QueueAdd>(r#"{"prompt": "hi", "selector": "idle"}"#).unwrap_err().to_string();
        assert!(err.starts_with("unknown field `selector`"), "{err}");
        assert_eq!("dispatched".parse::<QueueStatus>(), Ok(QueueStatus::Dispatched));
        assert_eq!(
            "gone".parse::<QueueStatus>().unwrap_err(),
            "unknown queue status 'gone' (expected queued, dispatched, done, cancelled or dropped)"
        );
    }
}

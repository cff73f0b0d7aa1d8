//! Execution approvals (codeswarm's `approvals_list` and `approve_execution`): an agent whose
//! brain asks before it runs a command raises an approval and waits; an operator (or an agent
//! the policy lets approve) answers it, or it times out as a refusal; the answer goes to the
//! agent, which runs the command or ends the turn refused. These are its wire shapes.

use serde::{Deserialize, Serialize};

/// The longest call id an agent may give an approval.
pub const MAX_CALL_ID_BYTES: usize = 64;
/// The longest command an approval shows (a `cmd:` brain's whole command fits).
pub const MAX_COMMAND_BYTES: usize = 4096;
/// The longest working directory or reason an approval shows.
pub const MAX_DETAIL_BYTES: usize = 1024;
/// The longest decision word (`accept`, `cancel`, `acceptForSession`, ...).
pub const MAX_DECISION_BYTES: usize = 64;

crate::named_enum! {
    /// Where an approval is in its life.
    pub enum ApprovalStatus ("approval status") {
        /// Waiting for an answer.
        Pending = "pending",
        /// Answered (or timed out): the answer is on its way to the agent.
        Submitted = "submitted",
        /// The agent took the answer.
        Resolved = "resolved",
    }
}

/// One approval, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub approval_id: u64,
    pub fleet: String,
    pub agent: u32,
    /// The agent's own id for the step it asks about.
    pub call_id: String,
    /// The turn that waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection_id: Option<String>,
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub status: ApprovalStatus,
    /// The answer, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// Who answered (a token's name and role, or the control plane for a timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    /// Grows with every change of any approval: a client polling the list compares it.
    pub version: u64,
}

/// `GET /api/v1/approvals`: those not yet taken by their agents (or, with `?all=true`, the
/// newest of every status), oldest first, and the approvals' version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalList {
    pub approvals: Vec<Approval>,
    pub version: u64,
}

/// `POST /api/v1/approvals/{id}`: the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalAnswer {
    pub approved: bool,
    /// The reference's decision word, kept with the answer; `approved` is what counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_says_yes_or_no() {
        let a: ApprovalAnswer = serde_json::from_str(r#"{"approved": true, "decision": "accept"}"#).unwrap();
        assert!(a.approved);
        let err = serde_json::from_str::<ApprovalAnswer>(r#"{"decision": "accept"}"#).unwrap_err().to_string();
        assert!(err.starts_with("missing field `approved`"), "{err}");
        assert_eq!("submitted".parse::<ApprovalStatus>(), Ok(ApprovalStatus::Submitted));
    }
}

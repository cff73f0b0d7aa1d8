//! Payloads of the clawfleet bus (MQTT), JSON-encoded.
//!
//! - [`Directive`]: control plane → agent, on the agent's `cmd` topic or its fleet's.
//! - [`AgentEnvelope`]: agent → control plane on `events`; sequenced per agent epoch so the
//!   control plane can find gaps and ask for a [`Directive::Replay`].
//! - [`Heartbeat`]: agent → control plane on `heartbeat`, retained; also the last will.
//!
//! Decoding is total: any byte string gives a value or a [`DecodeError`] naming the problem.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::MAX_BUS_PAYLOAD_BYTES;
use crate::event::EventBody;

/// A message from the control plane to agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Directive {
    /// Run a prompt as one turn. Agents run turns one at a time, in arrival order, and
    /// de-duplicate by `injection_id`: a redelivered injection runs once.
    Inject {
        injection_id: String,
        prompt: String,
        /// On a fleet topic: the slots this is for (others ignore it). Absent on an agent topic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        targets: Option<Vec<u32>>,
        /// RFC 3339: past it the control plane has failed the injection with `"timeout"` (its
        /// fleet's inject timeout), and an agent that reads it late drops it instead of running it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
    /// A command of the fixed vocabulary; agents refuse anything else with an error reply.
    Command {
        command_id: String,
        command: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        targets: Option<Vec<u32>>,
    },
    /// Publish again every journaled event with a sequence number above `after_seq`.
    Replay { after_seq: u64 },
    /// The answer to an approval the agent asked for (sent on its own topic, again until its
    /// `exec_approval_resolved` is stored).
    Approval {
        call_id: String,
        approved: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decision: Option<String>,
    },
    /// Do something for a scenario (clawbucket's simulation); not a turn of the conversation.
    /// An agent plays each `play_id` once, and drops one that arrives after `expires_at`.
    Play {
        play_id: String,
        #[serde(flatten)]
        play: crate::scenario::Play,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        targets: Option<Vec<u32>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<String>,
    },
}

impl Directive {
    /// Whether a directive read from a fleet topic is meant for `slot`.
    pub fn is_for(&self, slot: u32) -> bool {
        match self {
            Directive::Inject { targets, .. } | Directive::Command { targets, .. } | Directive::Play { targets, .. } => {
                targets.as_ref().is_none_or(|t| t.contains(&slot))
            }
            Directive::Replay { .. } | Directive::Approval { .. } => true,
        }
    }
}

/// One event from an agent, with its place in the agent's journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEnvelope {
    /// Identifies one agent workspace; a new workspace starts a new epoch at seq 1.
    pub epoch: String,
    /// Position in the agent's journal, from 1, without gaps.
    pub seq: u64,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection_id: Option<String>,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What an agent says it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentActivity {
    Starting,
    Idle,
    Busy,
    Stopping,
    /// Exited cleanly.
    Stopped,
    /// Published by the broker as the agent's last will: the connection dropped.
    Disconnected,
}

impl AgentActivity {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentActivity::Starting => "starting",
            AgentActivity::Idle => "idle",
            AgentActivity::Busy => "busy",
            AgentActivity::Stopping => "stopping",
            AgentActivity::Stopped => "stopped",
            AgentActivity::Disconnected => "disconnected",
        }
    }
}

/// An agent's periodic, retained status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub epoch: String,
    /// Highest journal sequence number the agent has published.
    pub seq: u64,
    pub at: String,
    pub state: AgentActivity,
    /// Milliseconds between heartbeats; three missed ones mark the agent lost.
    pub interval_ms: u64,
    /// clawfleet version of the agent runtime.
    pub version: String,
    /// Version label of the fleet spec the agent runs.
    pub fleet_version: String,
    pub pid: u32,
    pub hostname: String,
    pub uptime_s: u64,
    pub rss_bytes: u64,
    pub load1: f64,
    pub brain: BrainStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_injection: Option<String>,
    pub queued: u32,
}

/// The health of an agent's brain, as last observed by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrainStatus {
    pub spec: String,
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why a bus payload was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The payload is larger than [`MAX_BUS_PAYLOAD_BYTES`].
    #[error("payload of {0} bytes is over the {MAX_BUS_PAYLOAD_BYTES}-byte limit")]
    TooLarge(usize),
    /// The payload is not UTF-8 JSON of the expected shape.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_BUS_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid { what, reason: e.to_string() })
}

/// Decodes a directive read by an agent.
pub fn decode_directive(bytes: &[u8]) -> Result<Directive, DecodeError> {
    decode("directive", bytes)
}

/// Decodes an agent event read by the control plane.
pub fn decode_envelope(bytes: &[u8]) -> Result<AgentEnvelope, DecodeError> {
    decode("agent event", bytes)
}

/// Decodes a heartbeat read by the control plane.
pub fn decode_heartbeat(bytes: &[u8]) -> Result<Heartbeat, DecodeError> {
    decode("heartbeat", bytes)
}

/// Encodes any bus payload.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("bus payloads serialize infallibly")
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn directive_shapes() {
        let d = Directive::Inject { injection_id: "i1".into(), prompt: "hi".into(), targets: Some(vec![0, 2]), expires_at: None };
        expect![[r#"{"type":"inject","injection_id":"i1","prompt":"hi","targets":[0,2]}"#]]
            .assert_eq(&String::from_utf8(encode(&d)).unwrap());
        assert!(d.is_for(2) && !d.is_for(1));
        assert_eq!(decode_directive(&encode(&d)).unwrap(), d);
        let direct = decode_directive(br#"{"type":"command","command_id":"c","command":"health-check"}"#).unwrap();
        assert!(direct.is_for(99));
        let play = Directive::Play {
            play_id: "p1".into(),
            play: crate::scenario::Play::Rps { round: 4, brain: false },
            targets: Some(vec![1]),
            expires_at: None,
        };
        expect![[r#"{"type":"play","play_id":"p1","play":"rps","round":4,"brain":false,"targets":[1]}"#]]
            .assert_eq(&String::from_utf8(encode(&play)).unwrap());
        assert_eq!(decode_directive(&encode(&play)).unwrap(), play);
        assert!(play.is_for(1) && !play.is_for(0));
    }

    #[test]
    fn envelope_shape() {
        let e = AgentEnvelope {
            epoch: "ep".into(),
            seq: 4,
            at: "t".into(),
            injection_id: Some("i1".into()),
            body: EventBody::AssistantDelta { content: "x".into() },
        };
        expect![[r#"{"epoch":"ep","seq":4,"at":"t","injection_id":"i1","event":"assistant_delta","data":{"content":"x"}}"#]]
            .assert_eq(&String::from_utf8(encode(&e)).unwrap());
        assert_eq!(decode_envelope(&encode(&e)).unwrap(), e);
    }

    #[test]
    fn bad_payloads_name_the_problem() {
        let err = decode_directive(b"{\"type\":\"reboot\"}").unwrap_err();
        assert!(err.to_string().starts_with("invalid directive: unknown variant `reboot`"), "{err}");
        let err = decode_heartbeat(b"\xff\xfe").unwrap_err();
        assert!(err.to_string().starts_with("invalid heartbeat:"), "{err}");
        let big = vec![b' '; MAX_BUS_PAYLOAD_BYTES + 1];
        assert_eq!(decode_envelope(&big).unwrap_err(), DecodeError::TooLarge(MAX_BUS_PAYLOAD_BYTES + 1));
    }
}

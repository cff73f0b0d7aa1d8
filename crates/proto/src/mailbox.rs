//! Lines of the shared-filesystem mailbox (codeswarm's layout, PROTOCOLS.md): what the control
//! plane appends to a worker's inbox, and what a worker appends to its outbox.
//!
//! Inbox (control plane → worker):
//! `{"type":"user","content","injection_id"}` (an injection), `{"type":"control","payload":{…}}`
//! (a vocabulary command `{"command","command_id"}` or a replay request `{"replay_after_seq"}`),
//! `{"type":"play","directive":{…}}` (a scenario's play, clawfleet's own: the bus directive),
//! `{"type":"shutdown"}`.
//!
//! Outbox (worker → control plane): `{"type":"start","job_id","node_id","hostname","timestamp"}`;
//! `{"type":"worker_event","job_id","node_id","injection_id","event","payload",…}` (codeswarm's
//! event line, carrying clawfleet's journal position `epoch`, `seq`, `at` besides);
//! `{"type":"heartbeat",…}`; `{"type":"worker_error","error"}`; `{"type":"complete"}` (the worker
//! has stopped; its outbox moves to the archive next).
//!
//! Parsing is total: any JSON value gives an item or an error naming what is wrong.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::bus::{AgentEnvelope, Directive, Heartbeat};

/// What a worker reads from its inbox.
#[derive(Debug, Clone, PartialEq)]
pub enum InboxItem {
    Directive(Directive),
    /// Stop after the current turn, like SIGTERM.
    Shutdown,
}

/// What the control plane reads from an outbox.
#[derive(Debug, Clone, PartialEq)]
pub enum OutboxItem {
    Start {
        job_id: String,
        node_id: u32,
        hostname: String,
    },
    Event(AgentEnvelope),
    Heartbeat(Heartbeat),
    /// The worker (or its job script) failed outside any turn it could report itself.
    WorkerError {
        injection_id: Option<String>,
        error: String,
    },
    /// The worker has stopped.
    Complete,
}

/// Why a mailbox line was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    #[error("a mailbox line must be a JSON object")]
    NotAnObject,
    #[error("the line has no \"type\"")]
    NoType,
    #[error("unknown line type '{0}'")]
    UnknownType(String),
    #[error("invalid '{kind}' line: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

fn object(v: &Value) -> Result<&Map<String, Value>, LineError> {
    v.as_object().ok_or(LineError::NotAnObject)
}

fn kind(o: &Map<String, Value>) -> Result<&str, LineError> {
    o.get("type").and_then(Value::as_str).ok_or(LineError::NoType)
}

fn string(o: &Map<String, Value>, kind: &'static str, field: &str) -> Result<String, LineError> {
    o.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| LineError::Invalid { kind, reason: format!("\"{field}\" must be a string") })
}

/// The inbox line that delivers `directive`.
pub fn inbox_line(directive: &Directive) -> Value {
    match directive {
        Directive::Inject { injection_id, prompt, expires_at, .. } => {
            let mut line = json!({"type": "user", "content": prompt, "injection_id": injection_id});
            if let Some(at) = expires_at {
                line["expires_at"] = json!(at);
            }
            line
        }
        Directive::Command { command_id, command, .. } => {
            json!({"type": "control", "payload": {"command": command, "command_id": command_id}})
        }
        Directive::Replay { after_seq } => json!({"type": "control", "payload": {"replay_after_seq": after_seq}}),
        Directive::Play { play_id, play, expires_at, .. } => {
            let one = Directive::Play { play_id: play_id.clone(), play: play.clone(), targets: None, expires_at: expires_at.clone() };
            json!({"type": "play", "directive": one})
        }
        Directive::Approval { .. } => json!({"type": "approval", "directive": directive}),
    }
}

pub fn shutdown_line() -> Value {
    json!({"type": "shutdown"})
}

/// Reads one inbox line.
pub fn parse_inbox(line: &Value) -> Result<InboxItem, LineError> {
    let o = object(line)?;
    match kind(o)? {
        "user" => Ok(InboxItem::Directive(Directive::Inject {
            injection_id: string(o, "user", "injection_id")?,
            prompt: string(o, "user", "content")?,
            targets: None,
            expires_at: match o.get("expires_at") {
                None | Some(Value::Null) => None,
                Some(Value::String(at)) => Some(at.clone()),
                Some(_) => return Err(LineError::Invalid { kind: "user", reason: "\"expires_at\" must be a string".into() }),
            },
        })),
        "control" => {
            let p = o
                .get("payload")
                .and_then(Value::as_object)
                .ok_or_else(|| LineError::Invalid { kind: "control", reason: "\"payload\" must be an object".into() })?;
            if let Some(after) = p.get("replay_after_seq") {
                let after_seq = after
                    .as_u64()
                    .ok_or_else(|| LineError::Invalid { kind: "control", reason: "\"replay_after_seq\" must be a whole number".into() })?;
                return Ok(InboxItem::Directive(Directive::Replay { after_seq }));
            }
            Ok(InboxItem::Directive(Directive::Command {
                command_id: string(p, "control", "command_id")?,
                command: string(p, "control", "command")?,
                targets: None,
            }))
        }
        "play" => {
            let invalid = |reason: String| LineError::Invalid { kind: "play", reason };
            let d = o.get("directive").ok_or_else(|| invalid("\"directive\" is missing".into()))?;
            match Directive::deserialize(d).map_err(|e| invalid(e.to_string()))? {
                play @ Directive::Play { .. } => Ok(InboxItem::Directive(play)),
                _ => Err(invalid("\"directive\" must be a play".into())),
            }
        }
        "approval" => {
            let invalid = |reason: String| LineError::Invalid { kind: "approval", reason };
            let d = o.get("directive").ok_or_else(|| invalid("\"directive\" is missing".into()))?;
            match Directive::deserialize(d).map_err(|e| invalid(e.to_string()))? {
                answer @ Directive::Approval { .. } => Ok(InboxItem::Directive(answer)),
                _ => Err(invalid("\"directive\" must be an approval".into())),
            }
        }
        "shutdown" => Ok(InboxItem::Shutdown),
        other => Err(LineError::UnknownType(other.to_owned())),
    }
}

/// The first line a worker writes.
pub fn start_line(job_id: &str, node_id: u32, hostname: &str, timestamp: &str) -> Value {
    json!({"type": "start", "job_id": job_id, "node_id": node_id, "hostname": hostname, "timestamp": timestamp})
}

/// An agent event as codeswarm's `worker_event` line: the event's `data` is its `payload`.
pub fn event_line(job_id: &str, node_id: u32, envelope: &AgentEnvelope) -> Value {
    let mut v = serde_json::to_value(envelope).expect("envelopes serialize");
    let o = v.as_object_mut().expect("an envelope is an object");
    let payload = o.remove("data").unwrap_or_else(|| json!({}));
    o.insert("payload".into(), payload);
    o.insert("injection_id".into(), envelope.injection_id.clone().map_or(Value::Null, Value::String));
    with_header(v, "worker_event", job_id, node_id)
}

pub fn heartbeat_line(job_id: &str, node_id: u32, heartbeat: &Heartbeat) -> Value {
    with_header(serde_json::to_value(heartbeat).expect("heartbeats serialize"), "heartbeat", job_id, node_id)
}

pub fn worker_error_line(job_id: &str, node_id: u32, injection_id: Option<&str>, error: &str) -> Value {
    json!({"type": "worker_error", "job_id": job_id, "node_id": node_id, "injection_id": injection_id, "error": error})
}

pub fn complete_line(job_id: &str, node_id: u32) -> Value {
    json!({"type": "complete", "job_id": job_id, "node_id": node_id})
}

/// `{"type","job_id","node_id", ...v}`: the header first, as codeswarm writes it.
fn with_header(v: Value, kind: &str, job_id: &str, node_id: u32) -> Value {
    let mut o = Map::new();
    o.insert("type".into(), kind.into());
    o.insert("job_id".into(), job_id.into());
    o.insert("node_id".into(), node_id.into());
    if let Value::Object(rest) = v {
        o.extend(rest);
    }
    Value::Object(o)
}

/// Reads one outbox line.
pub fn parse_outbox(line: &Value) -> Result<OutboxItem, LineError> {
    let o = object(line)?;
    match kind(o)? {
        "start" => Ok(OutboxItem::Start {
            job_id: match o.get("job_id") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err(LineError::Invalid { kind: "start", reason: "\"job_id\" must be a string or a number".into() }),
            },
            node_id: o
                .get("node_id")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| LineError::Invalid { kind: "start", reason: "\"node_id\" must be a whole number".into() })?,
            hostname: o.get("hostname").and_then(Value::as_str).unwrap_or_default().to_owned(),
        }),
        "worker_event" => {
            let mut o = o.clone();
            let payload = o.remove("payload").unwrap_or_else(|| json!({}));
            o.insert("data".into(), payload);
            if o.get("injection_id").is_some_and(Value::is_null) {
                o.remove("injection_id");
            }
            serde_json::from_value(Value::Object(o))
                .map(OutboxItem::Event)
                .map_err(|e| LineError::Invalid { kind: "worker_event", reason: e.to_string() })
        }
        "heartbeat" => serde_json::from_value(line.clone())
            .map(OutboxItem::Heartbeat)
            .map_err(|e| LineError::Invalid { kind: "heartbeat", reason: e.to_string() }),
        "worker_error" => Ok(OutboxItem::WorkerError {
            injection_id: o.get("injection_id").and_then(Value::as_str).map(str::to_owned),
            error: o.get("error").map_or_else(
                || "the worker failed (it gave no reason)".into(),
                |e| match e {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                },
            ),
        }),
        "complete" => Ok(OutboxItem::Complete),
        other => Err(LineError::UnknownType(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventBody;
    use expect_test::expect;

    #[test]
    fn inbox_lines_round_trip() {
        for d in [
            Directive::Inject { injection_id: "i1".into(), prompt: "hi".into(), targets: None, expires_at: None },
            Directive::Inject {
                injection_id: "i2".into(),
                prompt: "hi".into(),
                targets: None,
                expires_at: Some("2026-11-22T10:00:00Z".into()),
            },
            Directive::Command { command_id: "c1".into(), command: "health-check".into(), targets: None },
            Directive::Replay { after_seq: 7 },
            Directive::Play {
                play_id: "p1".into(),
                play: crate::scenario::Play::Haiku { epoch: 3 },
                targets: None,
                expires_at: Some("2026-11-22T10:00:00Z".into()),
            },
            Directive::Approval { call_id: "c7".into(), approved: false, decision: Some("cancel".into()) },
        ] {
            assert_eq!(parse_inbox(&inbox_line(&d)).unwrap(), InboxItem::Directive(d));
        }
        for (line, why) in [
            (json!({"type": "play"}), "invalid 'play' line: \"directive\" is missing"),
            (json!({"type": "play", "directive": {"type": "replay", "after_seq": 1}}), "invalid 'play' line: \"directive\" must be a play"),
        ] {
            assert_eq!(parse_inbox(&line).unwrap_err().to_string(), why);
        }
        expect![[r#"{"type":"user","content":"hi","injection_id":"i1"}"#]].assert_eq(
            &inbox_line(&Directive::Inject { injection_id: "i1".into(), prompt: "hi".into(), targets: Some(vec![1]), expires_at: None })
                .to_string(),
        );
        assert_eq!(parse_inbox(&shutdown_line()).unwrap(), InboxItem::Shutdown);
    }

    #[test]
    fn outbox_lines_round_trip_and_match_codeswarm() {
        let e = AgentEnvelope {
            epoch: "ep".into(),
            seq: 3,
            at: "t".into(),
            injection_id: Some("i1".into()),
            body: EventBody::AssistantDelta { content: "x".into() },
        };
        let line = event_line("42", 1, &e);
        expect![[r#"{"type":"worker_event","job_id":"42","node_id":1,"epoch":"ep","seq":3,"at":"t","injection_id":"i1","event":"assistant_delta","payload":{"content":"x"}}"#]]
            .assert_eq(&line.to_string());
        assert_eq!(parse_outbox(&line).unwrap(), OutboxItem::Event(e.clone()));
        let bare = AgentEnvelope { injection_id: None, body: EventBody::TurnComplete {}, ..e };
        assert_eq!(parse_outbox(&event_line("42", 1, &bare)).unwrap(), OutboxItem::Event(bare));
        assert_eq!(
            parse_outbox(&start_line("42", 1, "vm", "t")).unwrap(),
            OutboxItem::Start { job_id: "42".into(), node_id: 1, hostname: "vm".into() }
        );
        assert_eq!(parse_outbox(&complete_line("42", 1)).unwrap(), OutboxItem::Complete);
        assert_eq!(
            parse_outbox(&worker_error_line("42", 1, None, "boom")).unwrap(),
            OutboxItem::WorkerError { injection_id: None, error: "boom".into() }
        );
    }

    #[test]
    fn bad_lines_name_the_problem() {
        assert_eq!(parse_inbox(&json!([1])).unwrap_err(), LineError::NotAnObject);
        assert_eq!(parse_inbox(&json!({"content": "x"})).unwrap_err(), LineError::NoType);
        assert_eq!(parse_inbox(&json!({"type": "reboot"})).unwrap_err().to_string(), "unknown line type 'reboot'");
        assert_eq!(
            parse_inbox(&json!({"type": "user", "content": 3, "injection_id": "i"})).unwrap_err().to_string(),
            "invalid 'user' line: \"content\" must be a string"
        );
        assert!(
            parse_outbox(&json!({"type": "worker_event", "event": "nonsense"}))
                .unwrap_err()
                .to_string()
                .starts_with("invalid 'worker_event' line")
        );
        assert!(parse_outbox(&json!({"type": "start", "job_id": "1", "node_id": -1})).is_err());
        assert!(parse_outbox(&json!({"type": "heartbeat"})).is_err());
    }
}

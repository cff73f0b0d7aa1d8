//! The codeswarm router protocol, `codeswarm.router.v1`: JSON Lines in both directions.
//!
//! Input lines are commands, in the full envelope
//! `{"protocol":"codeswarm.router.v1","type":"command","command":"inject","request_id":"…","payload":{…}}`
//! or in the seed's two short daemon forms,
//! `{"action":"inject","job_id":"272900","node_id":0,"content":"Hello"}` and
//! `{"command":"inject","swarm_id":"…","nodes":0,"content":"Hello"}`.
//! [`parse_line`] turns any line into a [`Request`] or a [`Rejection`] that names what is
//! wrong; it never panics, whatever the bytes. Output lines are [`RouterEvent`]s.
//!
//! A rejection's `reason` is the reference router's own words wherever it has a refusal for the
//! case (codeswarm's clients compare them: its web backend drops a swarm on exactly
//! `unknown swarm_id`); what exactly is wrong goes in `detail`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{MAX_REQUEST_ID_BYTES, MAX_ROUTER_LINE_BYTES};

/// The protocol string of every envelope.
pub const PROTOCOL: &str = "codeswarm.router.v1";

/// A parsed command and the id the client will match replies by.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub request_id: Option<String>,
    pub command: Command,
}

/// How a command names a swarm: by its id, or (seed daemon form) by its job id.
#[derive(Debug, Clone, PartialEq)]
pub enum SwarmRef {
    Swarm(String),
    Job(String),
}

/// Which nodes of a swarm.
#[derive(Debug, Clone, PartialEq)]
pub enum Nodes {
    All,
    List(Vec<u32>),
}

/// How `enqueue_inject` picks its targets.
#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// The first idle node.
    Idle,
    All,
    Nodes(Vec<u32>),
}

/// The router's command set.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    SwarmLaunch {
        nodes: u32,
        system_prompt: Option<String>,
        provider: Option<String>,
        /// `name`, `brain`, `version` are read from here; the rest is ignored.
        provider_params: Map<String, Value>,
    },
    Inject {
        swarm: SwarmRef,
        nodes: Nodes,
        content: String,
    },
    EnqueueInject {
        source_swarm_id: Option<String>,
        target_swarm_id: String,
        selector: Selector,
        content: String,
    },
    QueueList,
    SwarmList,
    SwarmStatus {
        swarm_id: String,
    },
    ApproveExecution {
        job_id: String,
        call_id: String,
        node_id: Option<u32>,
        injection_id: Option<String>,
        /// As the reference reads it (`bool(approved)`): missing, null or false is a refusal.
        approved: bool,
        /// The reference's decision word (`accept`, `cancel`, ...), when it is a word.
        decision: Option<String>,
    },
    /// The executions waiting for an operator's approval.
    ApprovalsList,
    SwarmTerminate {
        swarm_id: String,
    },
    ProvidersList,
    /// Orchestrated projects (codeswarm's task graphs).
    ProjectList,
    /// `project_start`, `project_resume`, `project_resume_preview`: one project, by id (with
    /// what a resume asks for, read as the reference reads it; a start ignores it).
    Project {
        command: ProjectCommand,
        project_id: String,
        resume: crate::project::ResumeRequest,
    },
    /// `project_create`, `project_plan`: a new project, from the payload's fields.
    ProjectNew {
        command: ProjectCommand,
        payload: Map<String, Value>,
    },
}

/// The project commands of codeswarm's router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectCommand {
    Create,
    Plan,
    Start,
    Resume,
    ResumePreview,
}

impl ProjectCommand {
    pub fn name(self) -> &'static str {
        match self {
            ProjectCommand::Create => "project_create",
            ProjectCommand::Plan => "project_plan",
            ProjectCommand::Start => "project_start",
            ProjectCommand::Resume => "project_resume",
            ProjectCommand::ResumePreview => "project_resume_preview",
        }
    }
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::SwarmLaunch { .. } => "swarm_launch",
            Command::Inject { .. } => "inject",
            Command::EnqueueInject { .. } => "enqueue_inject",
            Command::QueueList => "queue_list",
            Command::SwarmList => "swarm_list",
            Command::SwarmStatus { .. } => "swarm_status",
            Command::ApproveExecution { .. } => "approve_execution",
            Command::ApprovalsList => "approvals_list",
            Command::SwarmTerminate { .. } => "swarm_terminate",
            Command::ProvidersList => "providers_list",
            Command::ProjectList => "project_list",
            Command::Project { command, .. } | Command::ProjectNew { command, .. } => command.name(),
        }
    }
}

/// A line the router refuses, answered with `command_rejected`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub request_id: Option<String>,
    /// The reference router's reason where it has one for the case (clients compare it).
    pub reason: String,
    /// What exactly is wrong, when `reason` is the reference's shorter word for it.
    pub detail: Option<String>,
}

impl Rejection {
    fn new(request_id: &Option<String>, reason: impl Into<String>) -> Self {
        Rejection { request_id: request_id.clone(), reason: reason.into(), detail: None }
    }

    /// A refusal in the reference router's words, with the particulars beside them.
    pub fn with_detail(request_id: &Option<String>, reason: impl Into<String>, detail: impl Into<String>) -> Self {
        Rejection { request_id: request_id.clone(), reason: reason.into(), detail: Some(detail.into()) }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{}: {detail}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for Rejection {}

/// The reference router's reasons that clients compare as exact strings.
pub mod reasons {
    pub const UNKNOWN_SWARM: &str = "unknown swarm_id";
    pub const SWARM_TERMINATING: &str = "swarm is terminating or terminated";
    pub const INVALID_ENQUEUE: &str = "invalid enqueue payload";
    pub const UNKNOWN_TARGET_SWARM: &str = "unknown target_swarm_id";
    pub const TARGET_TERMINATING: &str = "target swarm is terminating or terminated";
    pub const UNKNOWN_APPROVAL: &str = "unknown approval request";
    pub const UNKNOWN_PROJECT: &str = "unknown project_id";
}

/// An event line the router writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterEvent {
    pub protocol: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: String,
    pub event: String,
    pub data: Value,
}

impl RouterEvent {
    pub fn new(timestamp: String, event: impl Into<String>, data: Value) -> Self {
        RouterEvent { protocol: PROTOCOL.into(), kind: "event".into(), timestamp, event: event.into(), data }
    }

    /// The `command_rejected` event for a refused line.
    pub fn rejected(timestamp: String, rejection: &Rejection) -> Self {
        let mut data = Map::new();
        data.insert("request_id".into(), rejection.request_id.clone().map_or(Value::Null, Value::String));
        data.insert("reason".into(), Value::String(rejection.reason.clone()));
        if let Some(detail) = &rejection.detail {
            data.insert("detail".into(), Value::String(detail.clone()));
        }
        RouterEvent::new(timestamp, "command_rejected", Value::Object(data))
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("router events serialize infallibly")
    }
}

const COMMANDS: &str = "swarm_launch, inject, enqueue_inject, queue_list, swarm_list, swarm_status, \
                        approve_execution, approvals_list, swarm_terminate, providers_list, project_list, \
                        project_create, project_plan, project_start, project_resume, project_resume_preview";

/// Parses one input line (without its newline).
pub fn parse_line(line: &str) -> Result<Request, Rejection> {
    let none = None;
    if line.len() > MAX_ROUTER_LINE_BYTES {
        return Err(Rejection::new(&none, format!("line of {} bytes is over the {MAX_ROUTER_LINE_BYTES}-byte limit", line.len())));
    }
    let value: Value = serde_json::from_str(line).map_err(|e| Rejection::new(&none, format!("invalid json: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(Rejection::new(&none, "a command must be a JSON object"));
    };
    let request_id = match obj.get("request_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(Rejection::new(&none, "request_id must be a string")),
    };
    if let Some(id) = request_id.as_ref().filter(|id| id.len() > MAX_REQUEST_ID_BYTES) {
        let reason = format!("request_id is {} bytes, over the {MAX_REQUEST_ID_BYTES}-byte limit", id.len());
        return Err(Rejection::new(&none, reason));
    }
    let rid = &request_id;

    if let Some(action) = obj.get("action") {
        // Seed daemon form: {"action":"inject","job_id":"…","node_id":0,"content":"…"}
        let Some(action) = action.as_str() else { return Err(Rejection::new(rid, "action must be a string")) };
        if action != "inject" {
            return Err(Rejection::new(rid, format!("unknown action '{action}' (only 'inject' has the short form)")));
        }
        let job = string_field(&obj, "job_id", rid)?;
        let nodes = match obj.get("node_id") {
            Some(v) => nodes(v, "node_id", rid)?,
            None => Nodes::All,
        };
        let content = string_field(&obj, "content", rid)?;
        return Ok(Request { request_id, command: Command::Inject { swarm: SwarmRef::Job(job), nodes, content } });
    }

    if let Some(protocol) = obj.get("protocol")
        && protocol.as_str() != Some(PROTOCOL)
    {
        return Err(Rejection::new(rid, format!("unsupported protocol {protocol}: this router speaks {PROTOCOL}")));
    }
    if let Some(kind) = obj.get("type")
        && kind.as_str() != Some("command")
    {
        return Err(Rejection::new(rid, format!("unsupported message type {kind}: expected \"command\"")));
    }
    let Some(command) = obj.get("command") else {
        return Err(Rejection::new(rid, "missing field 'command'"));
    };
    let Some(command) = command.as_str() else { return Err(Rejection::new(rid, "command must be a string")) };
    // The envelope carries arguments in `payload`; the short form carries them inline.
    let empty = Map::new();
    let payload = match obj.get("payload") {
        None | Some(Value::Null) if obj.contains_key("protocol") || obj.contains_key("type") => &empty,
        None | Some(Value::Null) => &obj,
        Some(Value::Object(p)) => p,
        Some(_) => return Err(Rejection::new(rid, "payload must be an object")),
    };
    let command = parse_command(command, payload, rid)?;
    Ok(Request { request_id, command })
}

fn parse_command(command: &str, p: &Map<String, Value>, rid: &Option<String>) -> Result<Command, Rejection> {
    Ok(match command {
        "swarm_launch" => {
            let nodes = match p.get("nodes") {
                Some(v) => u32_value(v, "payload.nodes", rid)?,
                None => return Err(Rejection::new(rid, "payload.nodes is required")),
            };
            let provider_params = match p.get("provider_params") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(m)) => m.clone(),
                Some(_) => return Err(Rejection::new(rid, "payload.provider_params must be an object")),
            };
            Command::SwarmLaunch {
                nodes,
                system_prompt: opt_string(p, "system_prompt", rid)?,
                provider: opt_string(p, "provider", rid)?,
                provider_params,
            }
        }
        "inject" => {
            let swarm = match (opt_string(p, "swarm_id", rid)?, opt_string(p, "job_id", rid)?) {
                (Some(s), _) => SwarmRef::Swarm(s),
                (None, Some(j)) => SwarmRef::Job(j),
                (None, None) => return Err(Rejection::new(rid, "payload.swarm_id is required")),
            };
            let nodes = match p.get("nodes").or_else(|| p.get("node_id")) {
                Some(v) => nodes(v, "payload.nodes", rid)?,
                None => Nodes::All,
            };
            let content = match opt_string(p, "content", rid)?.or(opt_string(p, "prompt", rid)?) {
                Some(c) => c,
                None => return Err(Rejection::new(rid, "payload.content is required")),
            };
            Command::Inject { swarm, nodes, content }
        }
        "enqueue_inject" => {
            // The reference refuses a missing target or blank content in one word.
            let enqueue = |r: Rejection| Rejection::with_detail(rid, reasons::INVALID_ENQUEUE, r.reason);
            let target_swarm_id = string_field(p, "target_swarm_id", rid).map_err(enqueue)?;
            let content = string_field(p, "content", rid).map_err(enqueue)?;
            if content.trim().is_empty() {
                return Err(Rejection::with_detail(rid, reasons::INVALID_ENQUEUE, "content is blank"));
            }
            let selector = match opt_string(p, "selector", rid)?.as_deref() {
                None | Some("idle") | Some("first-idle") => Selector::Idle,
                Some("all") => Selector::All,
                Some("nodes") => match nodes(p.get("nodes").unwrap_or(&Value::Null), "payload.nodes", rid)? {
                    Nodes::List(list) => Selector::Nodes(list),
                    Nodes::All => Selector::All,
                },
                Some(other) => {
                    return Err(Rejection::new(rid, format!("unknown selector '{other}' (expected idle, all or nodes)")));
                }
            };
            Command::EnqueueInject { source_swarm_id: opt_string(p, "source_swarm_id", rid)?, target_swarm_id, selector, content }
        }
        "queue_list" => Command::QueueList,
        "swarm_list" => Command::SwarmList,
        "swarm_status" => Command::SwarmStatus { swarm_id: string_field(p, "swarm_id", rid)? },
        "approve_execution" => Command::ApproveExecution {
            job_id: string_field(p, "job_id", rid)?,
            call_id: string_field(p, "call_id", rid)?,
            // The reference reads node ids loosely (a number, or a string of one).
            node_id: p.get("node_id").and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok())).and_then(|n| u32::try_from(n).ok()),
            injection_id: opt_string(p, "injection_id", rid)?,
            approved: p.get("approved").is_some_and(truthy),
            decision: p.get("decision").and_then(Value::as_str).map(|d| d.chars().take(crate::approval::MAX_DECISION_BYTES).collect()),
        },
        "approvals_list" => Command::ApprovalsList,
        "swarm_terminate" => Command::SwarmTerminate { swarm_id: string_field(p, "swarm_id", rid)? },
        "providers_list" => Command::ProvidersList,
        "project_list" => Command::ProjectList,
        "project_create" => Command::ProjectNew { command: ProjectCommand::Create, payload: p.clone() },
        "project_plan" => Command::ProjectNew { command: ProjectCommand::Plan, payload: p.clone() },
        "project_start" | "project_resume" | "project_resume_preview" => {
            let command = match command {
                "project_start" => ProjectCommand::Start,
                "project_resume" => ProjectCommand::Resume,
                _ => ProjectCommand::ResumePreview,
            };
            // The reference answers an empty payload as an unknown project.
            let project_id = opt_string(p, "project_id", rid)?.unwrap_or_default();
            // Python's truth: false, 0, "" and null are false.
            let truthy = |v: &Value| match v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => !o.is_empty(),
            };
            let worker_swarm_ids = match p.get("worker_swarm_ids") {
                None | Some(Value::Null) => None,
                // Not a list: no workers, which the resume refuses as the reference does.
                Some(Value::Array(ids)) => Some(ids.iter().filter_map(Value::as_str).map(str::to_owned).collect()),
                Some(_) => Some(Vec::new()),
            };
            let resume = crate::project::ResumeRequest {
                worker_swarm_ids,
                retry_failed: p.get("retry_failed").is_some_and(truthy),
                reverify_completed: p.get("reverify_completed").is_none_or(truthy),
            };
            Command::Project { command, project_id, resume }
        }
        other => return Err(Rejection::new(rid, format!("unknown command '{other}' (known: {COMMANDS})"))),
    })
}

fn opt_string(p: &Map<String, Value>, key: &str, rid: &Option<String>) -> Result<Option<String>, Rejection> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        // Job ids are often numbers in hand-written lines.
        Some(Value::Number(n)) if key.ends_with("_id") => Ok(Some(n.to_string())),
        Some(_) => Err(Rejection::new(rid, format!("{key} must be a string"))),
    }
}

/// Python's truth of a JSON value, as the reference's `bool(...)` reads it.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn string_field(p: &Map<String, Value>, key: &str, rid: &Option<String>) -> Result<String, Rejection> {
    opt_string(p, key, rid)?.ok_or_else(|| Rejection::new(rid, format!("{key} is required")))
}

fn u32_value(v: &Value, what: &str, rid: &Option<String>) -> Result<u32, Rejection> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| Rejection::new(rid, format!("{what} must be a non-negative integer, got {v}")))
}

fn nodes(v: &Value, what: &str, rid: &Option<String>) -> Result<Nodes, Rejection> {
    match v {
        Value::String(s) if s == "all" => Ok(Nodes::All),
        Value::Number(_) => Ok(Nodes::List(vec![u32_value(v, what, rid)?])),
        Value::Array(items) if !items.is_empty() => {
            items.iter().map(|i| u32_value(i, what, rid)).collect::<Result<_, _>>().map(Nodes::List)
        }
        _ => Err(Rejection::new(rid, format!("{what} must be \"all\", a node number or a non-empty list of node numbers, got {v}"))),
    }
}

/// Whether a line is an HTTP request line (`POST / HTTP/1.1`). Any web page the operator opens
/// can make the browser send one to a loopback port, with router commands in its body: a TCP
/// client whose first line is one is closed before anything runs.
pub fn looks_like_http(line: &str) -> bool {
    const METHODS: [&str; 10] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "PRI"];
    let line = line.trim_start();
    let method = line.split(' ').next().unwrap_or_default();
    METHODS.contains(&method) || line.split(' ').any(|word| word.starts_with("HTTP/"))
}

/// The token of an authentication line, `{"auth":"TOKEN"}`: what a TCP client of a router that
/// has a token must send first.
pub fn auth_token(line: &str) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Auth {
        auth: String,
    }
    serde_json::from_str::<Auth>(line).ok().map(|a| a.auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_request_lines_are_recognised() {
        for http in ["POST / HTTP/1.1", "GET /x HTTP/1.0", "OPTIONS * HTTP/1.1", "PRI * HTTP/2.0", "  PUT /", "x HTTP/1.1"] {
            assert!(looks_like_http(http), "{http}");
        }
        for router in [r#"{"type":"command"}"#, "", "{}", r#"{"auth":"t"}"#, "GETTING"] {
            assert!(!looks_like_http(router), "{router}");
        }
    }

    #[test]
    fn auth_lines() {
        assert_eq!(auth_token(r#"{"auth":"s3cret"}"#).as_deref(), Some("s3cret"));
        for not in [r#"{"auth":1}"#, r#"{"auth":"t","x":1}"#, r#"{"type":"command"}"#, "auth"] {
            assert_eq!(auth_token(not), None, "{not}");
        }
    }

    fn ok(line: &str) -> Request {
        parse_line(line).unwrap_or_else(|r| panic!("{line}: {}", r.reason))
    }

    fn reason(line: &str) -> String {
        parse_line(line).expect_err(line).reason
    }

    #[test]
    fn envelope_inject() {
        let r = ok(
            r#"{"protocol":"codeswarm.router.v1","type":"command","command":"inject","request_id":"r1","payload":{"swarm_id":"squad","nodes":[0,2],"content":"hi"}}"#,
        );
        assert_eq!(r.request_id.as_deref(), Some("r1"));
        assert_eq!(
            r.command,
            Command::Inject { swarm: SwarmRef::Swarm("squad".into()), nodes: Nodes::List(vec![0, 2]), content: "hi".into() }
        );
    }

    #[test]
    fn short_forms() {
        let r = ok(r#"{"action":"inject","job_id":"272900","node_id":0,"content":"Hello"}"#);
        assert_eq!(
            r.command,
            Command::Inject { swarm: SwarmRef::Job("272900".into()), nodes: Nodes::List(vec![0]), content: "Hello".into() }
        );
        let r = ok(r#"{"command":"inject","swarm_id":"squad","nodes":"all","content":"Hello"}"#);
        assert_eq!(r.command, Command::Inject { swarm: SwarmRef::Swarm("squad".into()), nodes: Nodes::All, content: "Hello".into() });
        let r = ok(r#"{"action":"inject","job_id":272900,"content":"Hello"}"#);
        assert_eq!(r.command, Command::Inject { swarm: SwarmRef::Job("272900".into()), nodes: Nodes::All, content: "Hello".into() });
    }

    #[test]
    fn every_command_parses() {
        for (cmd, payload) in [
            ("swarm_launch", r#"{"nodes":4,"system_prompt":"You are a scout.","provider":"local","provider_params":{"brain":"echo"}}"#),
            ("enqueue_inject", r#"{"target_swarm_id":"s","selector":"nodes","nodes":[1],"content":"c"}"#),
            ("queue_list", "{}"),
            ("swarm_list", "{}"),
            ("swarm_status", r#"{"swarm_id":"s"}"#),
            ("approve_execution", r#"{"job_id":"1","call_id":"c","approved":true,"decision":"approved"}"#),
            ("approvals_list", "{}"),
            ("swarm_terminate", r#"{"swarm_id":"s","terminate_params":{}}"#),
            ("providers_list", "{}"),
            ("project_list", "{}"),
            ("project_create", r#"{"title":"t","repo_path":"/r","worker_swarm_ids":["s"],"tasks":[]}"#),
            ("project_plan", r#"{"title":"t"}"#),
            ("project_start", r#"{"project_id":"p"}"#),
            ("project_resume", r#"{"project_id":"p","retry_failed":true}"#),
            ("project_resume_preview", "{}"),
        ] {
            let line =
                format!(r#"{{"protocol":"codeswarm.router.v1","type":"command","command":"{cmd}","request_id":"x","payload":{payload}}}"#);
            assert_eq!(ok(&line).command.name(), cmd);
        }
    }

    #[test]
    fn bad_lines_are_refused_with_a_reason() {
        assert!(reason("{nope").starts_with("invalid json:"));
        assert_eq!(reason("[1]"), "a command must be a JSON object");
        assert_eq!(reason(r#"{"request_id":"r"}"#), "missing field 'command'");
        assert!(reason(r#"{"command":"reboot"}"#).starts_with("unknown command 'reboot' (known: swarm_launch"));
        assert_eq!(reason(r#"{"command":"inject","nodes":0,"content":"x"}"#), "payload.swarm_id is required");
        assert_eq!(
            reason(r#"{"command":"inject","swarm_id":"s","nodes":-1,"content":"x"}"#),
            "payload.nodes must be a non-negative integer, got -1"
        );
        assert_eq!(
            reason(r#"{"command":"inject","swarm_id":"s","nodes":[],"content":"x"}"#),
            "payload.nodes must be \"all\", a node number or a non-empty list of node numbers, got []"
        );
        assert_eq!(reason(r#"{"command":"inject","swarm_id":"s"}"#), "payload.content is required");
        assert!(reason(r#"{"protocol":"codeswarm.router.v2","command":"swarm_list"}"#).starts_with("unsupported protocol"));
        assert_eq!(
            reason(r#"{"protocol":"codeswarm.router.v1","type":"command","command":"swarm_status","request_id":"r9","payload":{}}"#),
            "swarm_id is required"
        );
        assert_eq!(parse_line(r#"{"command":"swarm_status","request_id":"r9"}"#).unwrap_err().request_id.as_deref(), Some("r9"));
        assert!(reason(r#"{"action":"terminate"}"#).starts_with("unknown action 'terminate'"));
        let long = format!(r#"{{"command":"swarm_list","request_id":"{}"}}"#, "r".repeat(MAX_REQUEST_ID_BYTES + 1));
        assert_eq!(parse_line(&long).unwrap_err(), Rejection::new(&None, "request_id is 257 bytes, over the 256-byte limit"));
        // The reference's own words where it has a refusal, the particulars beside them.
        let r = parse_line(r#"{"command":"enqueue_inject","request_id":"q","target_swarm_id":"s","content":"  "}"#).unwrap_err();
        assert_eq!((r.reason.as_str(), r.detail.as_deref()), (reasons::INVALID_ENQUEUE, Some("content is blank")));
        let r = parse_line(r#"{"command":"enqueue_inject","content":"c"}"#).unwrap_err();
        assert_eq!((r.reason.as_str(), r.detail.as_deref()), (reasons::INVALID_ENQUEUE, Some("target_swarm_id is required")));
    }

    #[test]
    fn approvals_and_projects_parse_loosely_as_the_reference_does() {
        let r = ok(r#"{"command":"approve_execution","job_id":"j","call_id":"c","node_id":"3","injection_id":"i"}"#);
        let approve = |approved, decision: Option<&str>| Command::ApproveExecution {
            job_id: "j".into(),
            call_id: "c".into(),
            node_id: Some(3),
            injection_id: Some("i".into()),
            approved,
            decision: decision.map(str::to_owned),
        };
        // No `approved` is a refusal, as the reference's bool(None) is.
        assert_eq!(r.command, approve(false, None));
        for (approved, expected) in
            [("true", true), ("1", true), ("\"yes\"", true), ("false", false), ("0", false), ("null", false), ("\"\"", false)]
        {
            let line = format!(
                r#"{{"command":"approve_execution","job_id":"j","call_id":"c","node_id":3,"injection_id":"i","approved":{approved},"decision":"accept"}}"#
            );
            assert_eq!(ok(&line).command, approve(expected, Some("accept")), "{approved}");
        }
        let r = ok(r#"{"protocol":"codeswarm.router.v1","type":"command","command":"project_resume_preview","payload":{}}"#);
        assert_eq!(
            r.command,
            Command::Project {
                command: ProjectCommand::ResumePreview,
                project_id: String::new(),
                resume: crate::project::ResumeRequest { worker_swarm_ids: None, retry_failed: false, reverify_completed: true }
            }
        );
        let r = ok(
            r#"{"command":"project_resume","payload":{"project_id":"p","worker_swarm_ids":["a",3,"b"],"retry_failed":1,"reverify_completed":null}}"#,
        );
        assert_eq!(
            r.command,
            Command::Project {
                command: ProjectCommand::Resume,
                project_id: "p".into(),
                resume: crate::project::ResumeRequest {
                    worker_swarm_ids: Some(vec!["a".into(), "b".into()]),
                    retry_failed: true,
                    reverify_completed: false
                }
            }
        );
    }

    #[test]
    fn rejection_event_shape() {
        let ev =
            RouterEvent::rejected("t".into(), &Rejection { request_id: Some("r".into()), reason: "unknown swarm_id".into(), detail: None });
        assert_eq!(
            ev.to_line(),
            r#"{"protocol":"codeswarm.router.v1","type":"event","timestamp":"t","event":"command_rejected","data":{"request_id":"r","reason":"unknown swarm_id"}}"#
        );
        let ev = RouterEvent::rejected("t".into(), &Rejection::with_detail(&None, "unknown swarm_id", "no fleet named 'x'"));
        assert_eq!(ev.data["detail"], "no fleet named 'x'");
    }
}

//! `clawfleet router`: the codeswarm router protocol (`codeswarm.router.v1`) over stdio and
//! TCP, so tools built for codeswarm (OpenClaw's skill, scripts) drive clawfleet unchanged.
//!
//! The router is a client of the control plane. It follows the event stream and translates
//! each event for its clients ([`translate`]); it turns each command line into API calls.
//! Every output line goes to every connected client; clients match replies by `request_id`.
//! Every bad line gets `command_rejected` with the reason (the reference router's words where it
//! has a refusal for the case, the particulars in `detail`), and the router keeps going.
//! Execution approvals are the control plane's (`approvals_list` its snapshot, grouped by
//! swarm and node as the reference groups them; `approve_execution` an answer, where a missing
//! `approved` is a refusal); orchestrated projects are the control plane's too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clawfleet_core::BrainSpec;
use clawfleet_proto::MAX_ROUTER_LINE_BYTES;
use clawfleet_proto::api::{Ack, Fleet, FleetList, FleetState, FleetStatus, InjectRequest, InjectResponse, LaunchRequest, ServerInfo};
use clawfleet_proto::approval::{Approval, ApprovalAnswer, ApprovalList, ApprovalStatus};
use clawfleet_proto::event::{Event, EventBody};
use clawfleet_proto::project::{PlanCreate, PlanStatus, PlanView, ProjectCreate, ProjectList, ProjectStatus, ProjectView, ResumePreview};
use clawfleet_proto::queue::{QueueAdd, QueueList};
use clawfleet_proto::router::{
    self as proto, Command, Nodes, ProjectCommand, Rejection, Request, RouterEvent, Selector, SwarmRef, reasons,
};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::broadcast;

use crate::args::RouterArgs;
use crate::client::{Client, is_not_found};

/// The answers an approval takes, as the reference offers them by default.
const DECISIONS: [&str; 2] = ["accept", "cancel"];

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// What the router remembers to correlate replies.
#[derive(Debug, Default)]
pub struct Correlation {
    /// injection id -> the request id that created it
    injections: HashMap<String, String>,
    /// fleet -> the request id that asked to terminate it
    terminations: HashMap<String, String>,
    /// (fleet, call id) -> the request id that answered its approval
    approvals: HashMap<(String, String), String>,
}

fn runtime_data(e: &Event) -> Map<String, Value> {
    let mut d = Map::new();
    d.insert("swarm_id".into(), json!(e.fleet));
    d.insert("job_id".into(), json!(e.fleet));
    if let Some(a) = e.agent {
        d.insert("node_id".into(), json!(a));
    }
    if let Some(i) = &e.injection_id {
        d.insert("injection_id".into(), json!(i));
    }
    d.insert("event_id".into(), json!(e.id));
    d
}

/// Translates a control-plane event into the router event codeswarm clients expect.
pub fn translate(e: &Event, c: &mut Correlation) -> Option<RouterEvent> {
    let mut d = runtime_data(e);
    let request_of = |c: &Correlation| e.injection_id.as_ref().and_then(|i| c.injections.get(i)).map_or(Value::Null, |r| json!(r));
    let name = match &e.body {
        EventBody::InjectAck { prompt, request_id } => {
            if let (Some(r), Some(i)) = (request_id, &e.injection_id) {
                c.injections.insert(i.clone(), r.clone());
            }
            d.insert("request_id".into(), request_id.clone().map_or(Value::Null, Value::String));
            d.insert("prompt".into(), json!(prompt));
            "inject_ack"
        }
        EventBody::InjectDelivered {} => {
            d.insert("request_id".into(), request_of(c));
            "inject_delivered"
        }
        EventBody::InjectFailed { error } => {
            d.insert("request_id".into(), request_of(c));
            d.insert("error".into(), json!(error));
            "inject_failed"
        }
        EventBody::TurnStarted {} => "turn_started",
        EventBody::AssistantDelta { content } => {
            d.insert("content".into(), json!(content));
            "assistant_delta"
        }
        EventBody::Assistant { content } => {
            d.insert("content".into(), json!(content));
            // An agent's `assistant` is its turn's whole answer (codeswarm's phase "final_answer").
            d.insert("final_answer".into(), json!(true));
            "assistant"
        }
        EventBody::TurnComplete {} => "turn_complete",
        EventBody::Usage(u) => {
            d.insert("input_tokens".into(), json!(u.input_tokens));
            d.insert("output_tokens".into(), json!(u.output_tokens));
            d.insert("total_tokens".into(), json!(u.total_tokens.unwrap_or(u.input_tokens + u.output_tokens)));
            if let Some(cached) = u.cached_input_tokens {
                d.insert("cached_input_tokens".into(), json!(cached));
            }
            d.insert("usage_source".into(), json!("clawfleet"));
            "usage"
        }
        EventBody::AgentError { message } => {
            d.insert("message".into(), json!(message));
            "agent_error"
        }
        EventBody::AgentState { state, previous } => {
            d.insert("state".into(), json!(state));
            d.insert("previous".into(), json!(previous));
            "node_state"
        }
        EventBody::FleetTerminating {} => {
            d.insert("request_id".into(), c.terminations.get(&e.fleet).map_or(Value::Null, |r| json!(r)));
            d.insert("stage".into(), json!("terminating"));
            d.insert("message".into(), json!("stopping every node"));
            "swarm_terminate_progress"
        }
        EventBody::FleetTerminated {} => {
            d.insert("request_id".into(), c.terminations.remove(&e.fleet).map_or(Value::Null, |r| json!(r)));
            "swarm_terminated"
        }
        EventBody::FleetScaled { replicas, previous } => {
            d.insert("node_count".into(), json!(replicas));
            d.insert("previous_node_count".into(), json!(previous));
            "swarm_scaled"
        }
        EventBody::QueueEnqueued { queue_id, agent, source, request_id, .. } => {
            d.insert("request_id".into(), json!(request_id));
            d.insert("queue_id".into(), json!(queue_id));
            d.insert("source_swarm_id".into(), json!(source));
            d.insert("target_swarm_id".into(), json!(e.fleet));
            d.insert("selector".into(), json!(if agent.is_some() { "nodes" } else { "idle" }));
            d.insert("nodes".into(), json!(agent.map(|a| vec![a])));
            "inter_swarm_enqueued"
        }
        EventBody::QueueDispatched { queue_id, source, request_id } => {
            d.insert("request_id".into(), json!(request_id));
            d.insert("queue_id".into(), json!(queue_id));
            d.insert("source_swarm_id".into(), json!(source));
            d.insert("target_swarm_id".into(), json!(e.fleet));
            "inter_swarm_dispatched"
        }
        EventBody::QueueDropped { queue_id, source, request_id, reason } => {
            d.insert("request_id".into(), json!(request_id));
            d.insert("queue_id".into(), json!(queue_id));
            d.insert("source_swarm_id".into(), json!(source));
            d.insert("target_swarm_id".into(), json!(e.fleet));
            d.insert("reason".into(), json!(reason));
            "inter_swarm_dropped"
        }
        EventBody::DelegationRefused { target, reason } => {
            d.insert("source_swarm_id".into(), json!(e.fleet));
            d.insert("target_swarm_id".into(), json!(target));
            d.insert("reason".into(), json!(reason));
            "inter_swarm_blocked"
        }
        EventBody::ExecApprovalRequired { approval_id, call_id, command, cwd, reason } => {
            d.insert("approval_id".into(), json!(approval_id.map(|a| a.to_string())));
            // The approvals' version is set by the follower, as `approvals_list` counts it.
            d.insert("approvals_version".into(), Value::Null);
            d.insert("turn_id".into(), Value::Null);
            d.insert("call_id".into(), json!(call_id));
            d.insert("command".into(), json!(command));
            d.insert("reason".into(), json!(reason));
            d.insert("cwd".into(), json!(cwd));
            d.insert("proposed_execpolicy_amendment".into(), Value::Null);
            d.insert("available_decisions".into(), json!(DECISIONS));
            "exec_approval_required"
        }
        EventBody::ExecApprovalSubmitted { approval_id, call_id, approved, decision, .. } => {
            let request = c.approvals.get(&(e.fleet.clone(), call_id.clone())).cloned();
            d.insert("request_id".into(), json!(request));
            d.insert("approval_id".into(), json!(approval_id.to_string()));
            d.insert("call_id".into(), json!(call_id));
            d.insert("approved".into(), json!(approved));
            d.insert("decision".into(), json!(decision));
            d.insert("approvals_version".into(), Value::Null);
            "exec_approval_submitted"
        }
        EventBody::ExecApprovalResolved { call_id, approved, .. } => {
            let request = c.approvals.remove(&(e.fleet.clone(), call_id.clone()));
            d.insert("request_id".into(), json!(request));
            d.insert("call_id".into(), json!(call_id));
            d.insert("approved".into(), json!(approved));
            d.insert("source".into(), json!("worker"));
            d.insert("approvals_version".into(), Value::Null);
            "exec_approval_resolved"
        }
        // A cancelled item shows as the queue_updated that follows every queue event.
        EventBody::QueueCancelled { .. }
        // Launches are answered from the launch call itself, with the request id.
        | EventBody::FleetLaunched { .. }
        // The reference router has no racks.
        | EventBody::Migration { .. }
        | EventBody::InjectForwarded { .. }
        | EventBody::FleetUpdated { .. }
        | EventBody::FleetChanged { .. }
        | EventBody::LeaderChanged { .. }
        | EventBody::Chat { .. }
        | EventBody::Arm { .. }
        | EventBody::RpsMove { .. }
        | EventBody::Haiku { .. }
        | EventBody::ThreeWords { .. }
        | EventBody::PlayRefused { .. }
        | EventBody::ScenariosSet { .. }
        | EventBody::CouncilOpened { .. }
        | EventBody::CouncilClaim { .. }
        | EventBody::CouncilRoleFreed { .. }
        | EventBody::CouncilActivated { .. }
        | EventBody::CouncilFailed { .. }
        | EventBody::CouncilClosed { .. }
        | EventBody::ProjectCreated { .. }
        | EventBody::ProjectStatus { .. }
        // A resume is answered by the command that asked for it, with its request id.
        | EventBody::ProjectResumed { .. }
        | EventBody::ProjectTaskAssigned { .. }
        | EventBody::ProjectTaskResult { .. }
        // Plans are followed by the command that queued them, with its request id.
        | EventBody::PlanQueued { .. }
        | EventBody::PlanStarted { .. }
        | EventBody::PlanCompleted { .. }
        | EventBody::PlanFailed { .. }
        | EventBody::DeployStarted { .. }
        | EventBody::DeployProgress { .. }
        | EventBody::DeployFinished { .. }
        | EventBody::CommandSent { .. }
        | EventBody::CommandReply { .. } => return None,
    };
    Some(RouterEvent::new(e.at.clone(), name, Value::Object(d)))
}

/// `agent_runtime` and `agent_model` of a fleet's brain, as codeswarm names them.
fn runtime(brain: &str) -> [(String, Value); 2] {
    let brain: Option<BrainSpec> = brain.parse().ok();
    let model = match &brain {
        Some(BrainSpec::OpenAi { model, .. } | BrainSpec::Ollama { model, .. }) => json!(model),
        Some(BrainSpec::Codex { model } | BrainSpec::Claude { model }) => json!(model),
        _ => Value::Null,
    };
    [("agent_runtime".into(), json!(brain.as_ref().map_or("unknown", BrainSpec::kind))), ("agent_model".into(), model)]
}

/// How a command refuses a fleet it cannot talk to, in the reference router's words.
#[derive(Debug, Clone, Copy)]
struct FleetWords {
    unknown: &'static str,
    /// `None`: a terminating fleet is still answered (status, terminate).
    terminating: Option<&'static str>,
}

impl FleetWords {
    const TALK: FleetWords = FleetWords { unknown: reasons::UNKNOWN_SWARM, terminating: Some(reasons::SWARM_TERMINATING) };
    const TARGET: FleetWords = FleetWords { unknown: reasons::UNKNOWN_TARGET_SWARM, terminating: Some(reasons::TARGET_TERMINATING) };
    const STATUS: FleetWords = FleetWords { unknown: reasons::UNKNOWN_SWARM, terminating: None };
}

/// `swarm_status` as the reference shapes it (flat, every value a string, number or list of
/// them, so codeswarm's CLI prints each as `key: value`), with each node's state, and for a
/// slurm fleet each node's job id, as lists in node order.
fn swarm_status(s: &FleetStatus, status: Option<&str>) -> Map<String, Value> {
    let fleet = &s.fleet;
    let mut d = Map::new();
    d.insert("swarm_id".into(), json!(fleet.name));
    d.insert("job_id".into(), json!(fleet.name));
    d.insert("node_count".into(), json!(fleet.replicas));
    let running = if fleet.state == FleetState::Active { "running" } else { "terminating" };
    d.insert("status".into(), json!(status.unwrap_or(running)));
    d.insert("nodes_ready".into(), json!(fleet.ready));
    d.insert("node_states".into(), json!(s.agents.iter().map(|a| a.state.as_str()).collect::<Vec<_>>()));
    // One entry per node, in node order (null where a node has none yet). A slurm agent is a
    // job of its own: its id, as codeswarm's clients expect one.
    let jobs: Vec<Option<&str>> = s.agents.iter().map(|a| a.instance.as_deref()?.strip_prefix("job ")).collect();
    if jobs.iter().any(Option::is_some) {
        d.insert("node_job_ids".into(), json!(jobs));
    }
    let hosts: Vec<Option<&str>> = s.agents.iter().map(|a| a.hostname.as_deref().or(a.node.as_deref())).collect();
    if hosts.iter().any(Option::is_some) {
        d.insert("node_hostnames".into(), json!(hosts));
    }
    if let Some(problem) = &fleet.problem {
        d.insert("error".into(), json!(problem));
    }
    d
}

/// A `project_create` payload as a project request: its repository a local path (the
/// reference's GitHub mode needs `gh` and the network), its tasks objects.
fn project_request(p: &Map<String, Value>) -> anyhow::Result<ProjectCreate> {
    let github = p.get("repo_mode").and_then(Value::as_str).is_some_and(|m| m.eq_ignore_ascii_case("github"))
        || (p.get("github_owner").is_some_and(|v| !v.is_null()) && p.get("github_repo").is_some_and(|v| !v.is_null()));
    if github {
        anyhow::bail!("GitHub repositories are not supported here: give repo_path, a local git repository");
    }
    let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
    if text("title").is_none_or(|t| t.trim().is_empty()) || text("repo_path").is_none_or(|r| r.trim().is_empty()) {
        anyhow::bail!("project requires title and repo_path");
    }
    let tasks = match p.get("tasks") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if !t.is_object() {
                    anyhow::bail!("Task #{} must be an object", i + 1);
                }
                serde_json::from_value(t.clone()).map_err(|e| anyhow::anyhow!("Task #{}: {e}", i + 1))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    let workers = match p.get("worker_swarm_ids") {
        Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    Ok(ProjectCreate {
        title: text("title").unwrap_or_default(),
        repo_path: text("repo_path").unwrap_or_default(),
        worker_swarm_ids: workers,
        tasks,
        base_branch: text("base_branch"),
        workspace_subdir: text("workspace_subdir"),
        auto_start: p.get("auto_start").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// A `project_plan` payload as a plan request, refused in the reference's words.
fn plan_request(p: &Map<String, Value>) -> anyhow::Result<PlanCreate> {
    let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned).filter(|s| !s.trim().is_empty());
    let (Some(title), Some(repo_path), Some(spec), Some(planner)) =
        (text("title"), text("repo_path"), text("spec"), text("planner_swarm_id"))
    else {
        anyhow::bail!("project_plan requires title, repo_path, spec, and planner_swarm_id");
    };
    let workers = match p.get("worker_swarm_ids") {
        Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    Ok(PlanCreate {
        title,
        repo_path,
        spec,
        planner_swarm_id: planner,
        worker_swarm_ids: workers,
        base_branch: text("base_branch"),
        workspace_subdir: text("workspace_subdir"),
        auto_start: p.get("auto_start").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// The router's shared state.
/// Approvals as the reference's `approvals_list` shows them: swarm -> node -> approvals,
/// oldest first.
fn approvals_snapshot(approvals: &[Approval]) -> Value {
    let ms = |at: &str| {
        humantime::parse_rfc3339(at).ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as u64)
    };
    let mut swarms: Map<String, Value> = Map::new();
    for a in approvals {
        let status = match (a.status, a.approved) {
            (ApprovalStatus::Pending, _) => "pending",
            (_, Some(true)) => "approved_pending_ack",
            _ => "denied_pending_ack",
        };
        let approval = json!({
            "job_id": a.fleet,
            "approval_id": a.approval_id.to_string(),
            "approval_status": status,
            "call_id": a.call_id,
            "injection_id": a.injection_id,
            "turn_id": null,
            "command": a.command,
            "reason": a.reason,
            "cwd": a.cwd,
            "proposed_execpolicy_amendment": null,
            "available_decisions": DECISIONS,
            "created_at_ms": ms(&a.created_at),
            "updated_at_ms": ms(&a.updated_at),
        });
        let nodes = swarms.entry(a.fleet.clone()).or_insert_with(|| json!({}));
        let list = nodes.as_object_mut().expect("an object").entry(a.agent.to_string()).or_insert_with(|| json!([]));
        list.as_array_mut().expect("an array").push(approval);
    }
    Value::Object(swarms)
}

struct Router {
    client: Client,
    out: broadcast::Sender<Arc<String>>,
    correlation: Mutex<Correlation>,
}

impl Router {
    fn emit(&self, event: RouterEvent) {
        let _ = self.out.send(Arc::new(event.to_line()));
    }

    fn reject(&self, rejection: &Rejection) {
        self.emit(RouterEvent::rejected(now(), rejection));
    }

    /// What waits in the queue, as the reference's `queue_list` shows it.
    async fn queue_items(&self) -> anyhow::Result<Value> {
        let list: QueueList = self.client.get("/api/v1/queue").await?;
        let items: Vec<Value> = list
            .items
            .iter()
            .map(|i| {
                let created = humantime::parse_rfc3339(&i.created_at)
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                json!({
                    "queue_id": i.queue_id,
                    "request_id": i.request_id,
                    "source_swarm_id": i.source,
                    "target_swarm_id": i.fleet,
                    "selector": if i.agent.is_some() { "nodes" } else { "idle" },
                    "nodes": i.agent.map(|a| vec![a]),
                    "content": i.prompt,
                    "created_at": created,
                })
            })
            .collect();
        Ok(Value::Array(items))
    }

    /// The reference's `projects_updated`, for one project.
    fn updated(&self, p: &ProjectView) {
        self.emit(RouterEvent::new(now(), "projects_updated", json!({"projects": {&p.project_id: p}})));
    }

    /// Follows a starting project until its workers are prepared: the project then, or the
    /// reason it could not start.
    async fn settled(&self, rid: &Option<String>, mut p: ProjectView) -> Result<ProjectView, Rejection> {
        let path = format!("/api/v1/projects/{}", p.project_id);
        for _ in 0..2000 {
            if p.status != ProjectStatus::Starting {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            match self.client.get::<ProjectView>(&path).await {
                Ok(now) => p = now,
                Err(e) => return Err(Rejection { request_id: rid.clone(), reason: format!("{e:#}"), detail: None }),
            }
        }
        self.updated(&p);
        if p.status == ProjectStatus::Error {
            let reason = p.last_error.clone().unwrap_or_else(|| "the project could not start".to_owned());
            return Err(Rejection { request_id: rid.clone(), reason, detail: None });
        }
        Ok(p)
    }

    /// `project_started` once a starting project's workers are prepared.
    async fn started(self: Arc<Self>, rid: Option<String>, p: ProjectView) {
        match self.settled(&rid, p).await {
            Ok(p) => {
                // The reference says `running` as it starts: a project this quick may be
                // completed by the time its workers' clones were seen prepared.
                let status = if p.status == ProjectStatus::Starting { p.status } else { ProjectStatus::Running };
                let mut d = Map::new();
                d.insert("project_id".into(), json!(p.project_id));
                d.insert("status".into(), json!(status));
                self.reply(&rid, "project_started", d);
            }
            Err(r) => self.reject(&r),
        }
    }

    /// `project_resumed` once a resumed project's workers are prepared.
    async fn resumed(self: Arc<Self>, rid: Option<String>, p: ProjectView) {
        match self.settled(&rid, p).await {
            Ok(p) => {
                let mut d = Map::new();
                d.insert("project_id".into(), json!(p.project_id));
                d.insert("status".into(), json!(p.status));
                d.insert("resume_summary".into(), json!(p.resume_summary.unwrap_or_default()));
                self.reply(&rid, "project_resumed", d);
            }
            Err(r) => self.reject(&r),
        }
    }

    /// Follows a plan: `project_plan_started` when a planner has it, then `project_created` and
    /// `project_plan_completed` (and the project's start with `auto_start`), or
    /// `project_plan_failed` with the reason.
    async fn planned(self: Arc<Self>, rid: Option<String>, mut p: PlanView) {
        let path = format!("/api/v1/plans/{}", p.plan_id);
        let mut started = false;
        for _ in 0..6000 {
            if !started && p.status != PlanStatus::Queued {
                started = true;
                let mut d = Map::new();
                d.insert("plan_id".into(), json!(p.plan_id));
                d.insert("planner_swarm_id".into(), json!(p.planner_swarm_id));
                d.insert("planner_node_id".into(), json!(p.planner_node_id));
                d.insert("injection_id".into(), json!(p.injection_id));
                self.reply(&rid, "project_plan_started", d);
            }
            match p.status {
                PlanStatus::Completed => {
                    let id = p.project_id.clone().unwrap_or_default();
                    let project = match self.client.get::<ProjectView>(&format!("/api/v1/projects/{id}")).await {
                        Ok(project) => project,
                        Err(e) => return self.reject(&Rejection { request_id: rid, reason: format!("{e:#}"), detail: None }),
                    };
                    self.updated(&project);
                    let mut d = Map::new();
                    d.insert("project_id".into(), json!(id));
                    d.insert("title".into(), json!(project.title));
                    self.reply(&rid, "project_created", d);
                    self.emit(RouterEvent::new(now(), "project_plan_completed", json!({"plan_id": p.plan_id, "project_id": id})));
                    if project.status == ProjectStatus::Starting {
                        self.clone().started(rid, project).await;
                    }
                    return;
                }
                PlanStatus::Failed => {
                    let reason = p.last_error.clone().unwrap_or_default();
                    self.emit(RouterEvent::new(now(), "project_plan_failed", json!({"plan_id": p.plan_id, "reason": reason})));
                    return;
                }
                _ => {}
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            match self.client.get::<PlanView>(&path).await {
                Ok(now) => p = now,
                Err(e) => return self.reject(&Rejection { request_id: rid, reason: format!("{e:#}"), detail: None }),
            }
        }
    }

    fn reply(&self, request_id: &Option<String>, name: &str, mut data: Map<String, Value>) {
        data.insert("request_id".into(), request_id.clone().map_or(Value::Null, Value::String));
        self.emit(RouterEvent::new(now(), name, Value::Object(data)));
    }

    async fn handle_line(self: &Arc<Self>, line: &str) {
        match proto::parse_line(line) {
            Ok(req) => {
                let rid = req.request_id.clone();
                if let Err(e) = self.handle(req).await {
                    let rejection = match e.downcast::<Rejection>() {
                        Ok(r) => r,
                        Err(e) => Rejection { request_id: rid, reason: format!("{e:#}"), detail: None },
                    };
                    self.reject(&rejection);
                }
            }
            Err(rejection) => self.reject(&rejection),
        }
    }

    /// The fleet a command names (a fleet's job id is its name), refused in the reference's
    /// words (`unknown` or `terminating`) when there is none to talk to.
    async fn fleet_of(&self, rid: &Option<String>, swarm: &str, words: FleetWords) -> anyhow::Result<FleetStatus> {
        match self.client.get::<FleetStatus>(&format!("/api/v1/fleets/{swarm}")).await {
            Ok(s) if words.terminating.is_some() && s.fleet.state != FleetState::Active => {
                let reason = words.terminating.unwrap_or_default();
                Err(Rejection::with_detail(rid, reason, format!("fleet '{swarm}' is {}", s.fleet.state)).into())
            }
            Ok(s) => Ok(s),
            Err(e) if is_not_found(&e) => Err(Rejection::with_detail(rid, words.unknown, format!("{e:#}")).into()),
            Err(e) => Err(e),
        }
    }

    async fn inject(&self, rid: &Option<String>, fleet: &str, agents: Option<Vec<u32>>, content: String) -> anyhow::Result<InjectResponse> {
        let req = InjectRequest { prompt: content, agents, role: None, request_id: rid.clone() };
        let resp: InjectResponse = self.client.post(&format!("/api/v1/fleets/{fleet}/inject"), &req).await?;
        if let Some(r) = rid {
            self.correlation.lock().expect("not poisoned").injections.insert(resp.injection_id.clone(), r.clone());
        }
        Ok(resp)
    }

    async fn handle(self: &Arc<Self>, req: Request) -> anyhow::Result<()> {
        let rid = req.request_id;
        match req.command {
            Command::SwarmLaunch { nodes, system_prompt, provider, provider_params } => {
                let backend = provider.unwrap_or_else(|| "local".into());
                let info: ServerInfo = self.client.get("/api/v1/info").await?;
                if !info.backends.contains(&backend) {
                    let detail = format!("this control plane runs the backends {}", info.backends.join(", "));
                    return Err(Rejection::with_detail(&rid, format!("unknown provider: {backend}"), detail).into());
                }
                let name = match provider_params.get("name").and_then(Value::as_str) {
                    Some(n) => n.to_owned(),
                    None => format!("swarm-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
                };
                let param = |k: &str| provider_params.get(k).and_then(Value::as_str).map(str::to_owned);
                let mut progress = Map::new();
                progress.insert("provider".into(), json!(backend));
                progress.insert("provider_id".into(), json!(backend));
                progress.insert("stage".into(), json!("submitting"));
                progress.insert("message".into(), json!(format!("launching {nodes} nodes as fleet '{name}'")));
                self.reply(&rid, "swarm_launch_progress", progress);
                let cluster = if backend == "slurm" { slurm_profile(&provider_params)? } else { None };
                let launch = LaunchRequest {
                    name: name.clone(),
                    replicas: nodes,
                    backend: Some(backend.clone()),
                    // codeswarm's worker_mode (codex, claude, mock) names the brain, unless a
                    // brain is given.
                    brain: param("brain").or_else(|| param("worker_mode").filter(|m| ["codex", "claude", "mock"].contains(&m.as_str()))),
                    prompt: system_prompt,
                    version: param("version"),
                    image: param("image"),
                    cluster,
                    ..LaunchRequest::default()
                };
                let fleet: Fleet = self.client.post("/api/v1/fleets", &launch).await?;
                let mut d = Map::new();
                d.insert("swarm_id".into(), json!(fleet.name));
                d.insert("job_id".into(), json!(fleet.name));
                d.insert("node_count".into(), json!(fleet.replicas));
                d.insert("provider".into(), json!(fleet.backend));
                d.insert("provider_id".into(), json!(fleet.backend));
                d.extend(runtime(&fleet.brain));
                d.insert("pricing_model".into(), Value::Null);
                self.reply(&rid, "swarm_launched", d);
            }
            Command::Inject { swarm, nodes, content } => {
                let (SwarmRef::Swarm(name) | SwarmRef::Job(name)) = &swarm;
                let fleet = self.fleet_of(&rid, name, FleetWords::TALK).await?.fleet.name;
                let agents = match nodes {
                    Nodes::All => None,
                    Nodes::List(list) => Some(list),
                };
                self.inject(&rid, &fleet, agents, content).await?;
            }
            Command::EnqueueInject { source_swarm_id, target_swarm_id, selector, content } => {
                // Queued in the control plane, per agent until it is idle; the events that
                // follow (inter_swarm_enqueued, inter_swarm_dispatched, queue_updated) come
                // from its event stream, with this request's id.
                let fleet = self.fleet_of(&rid, &target_swarm_id, FleetWords::TARGET).await?.fleet.name;
                let (agents, all) = match selector {
                    Selector::Idle => (None, false),
                    Selector::All => (None, true),
                    Selector::Nodes(list) => (Some(list), false),
                };
                let add = QueueAdd { prompt: content, agents, all, source: source_swarm_id, request_id: rid.clone() };
                let queued: QueueList = self.client.post(&format!("/api/v1/fleets/{fleet}/queue"), &add).await?;
                if queued.joined > 0 {
                    // The same work a delegation read from the same answer had queued already
                    // (the client routes directives itself): no new item, so no event follows;
                    // the snapshot shows the item, now with this request's id.
                    let items = self.queue_items().await?;
                    self.emit(RouterEvent::new(now(), "queue_updated", json!({"items": items})));
                }
            }
            Command::QueueList => {
                let items = self.queue_items().await?;
                let mut d = Map::new();
                d.insert("items".into(), items.clone());
                self.reply(&rid, "queue_list", d);
                self.emit(RouterEvent::new(now(), "queue_updated", json!({"items": items})));
            }
            Command::SwarmList => {
                let list: FleetList = self.client.get("/api/v1/fleets").await?;
                let swarms: Map<String, Value> = list
                    .fleets
                    .into_iter()
                    .map(|f| {
                        let status = if f.state == FleetState::Active { "running" } else { "terminating" };
                        let mut v = Map::new();
                        v.insert("job_id".into(), json!(f.name));
                        v.insert("node_count".into(), json!(f.replicas));
                        v.insert("system_prompt".into(), json!(f.prompt));
                        v.insert("status".into(), json!(status));
                        v.extend(runtime(&f.brain));
                        v.insert("pricing_model".into(), Value::Null);
                        v.insert("provider".into(), json!(f.backend));
                        v.insert("provider_backend".into(), json!(f.backend));
                        v.insert("provider_id".into(), json!(f.backend));
                        (f.name, Value::Object(v))
                    })
                    .collect();
                let mut d = Map::new();
                d.insert("swarms".into(), Value::Object(swarms));
                self.reply(&rid, "swarm_list", d);
            }
            Command::SwarmStatus { swarm_id } => {
                let s = self.fleet_of(&rid, &swarm_id, FleetWords::STATUS).await?;
                self.reply(&rid, "swarm_status", swarm_status(&s, None));
            }
            Command::ApproveExecution { job_id, call_id, node_id, injection_id, approved, decision } => {
                let list: ApprovalList = self
                    .client
                    .get(&format!("/api/v1/approvals?fleet={job_id}&all=true"))
                    .await
                    .or_else(|e| if is_not_found(&e) { Ok(ApprovalList { approvals: vec![], version: 0 }) } else { Err(e) })?;
                let candidates: Vec<&Approval> = list.approvals.iter().filter(|a| a.call_id == call_id).collect();
                let found = candidates.iter().rev().find(|a| {
                    node_id.is_none_or(|n| n == a.agent) && injection_id.as_ref().is_none_or(|i| a.injection_id.as_ref() == Some(i))
                });
                let Some(found) = found else {
                    // The reference's refusal, with its fields.
                    let mut d = Map::new();
                    d.insert("reason".into(), json!(reasons::UNKNOWN_APPROVAL));
                    d.insert("detail".into(), json!(format!("no approval of fleet '{job_id}' has call id '{call_id}'")));
                    d.insert("job_id".into(), json!(job_id));
                    d.insert("call_id".into(), json!(call_id));
                    d.insert("node_id".into(), json!(node_id));
                    d.insert("injection_id".into(), json!(injection_id));
                    d.insert("pending_candidates".into(), json!(candidates.iter().filter(|a| a.status == ApprovalStatus::Pending).count()));
                    self.reply(&rid, "command_rejected", d);
                    return Ok(());
                };
                if found.status != ApprovalStatus::Pending {
                    // Answered already: the reference answers again, idempotently.
                    let mut d = Map::new();
                    d.insert("approval_id".into(), json!(found.approval_id.to_string()));
                    d.insert("job_id".into(), json!(job_id));
                    d.insert("call_id".into(), json!(call_id));
                    d.insert("node_id".into(), json!(found.agent));
                    d.insert("injection_id".into(), json!(found.injection_id));
                    d.insert("approved".into(), json!(found.approved));
                    d.insert("decision".into(), json!(found.decision));
                    d.insert("idempotent".into(), json!(true));
                    d.insert("approvals_version".into(), json!(list.version));
                    self.reply(&rid, "exec_approval_resolved", d);
                    return Ok(());
                }
                if let Some(r) = &rid {
                    self.correlation.lock().expect("not poisoned").approvals.insert((job_id.clone(), call_id.clone()), r.clone());
                }
                let answer = ApprovalAnswer { approved, decision };
                // exec_approval_submitted and exec_approval_resolved follow from the event stream.
                let _: Approval = self.client.post(&format!("/api/v1/approvals/{}", found.approval_id), &answer).await?;
            }
            Command::ApprovalsList => {
                let list: ApprovalList = self.client.get("/api/v1/approvals").await?;
                let mut d = Map::new();
                d.insert("approvals_version".into(), json!(list.version));
                d.insert("approvals".into(), approvals_snapshot(&list.approvals));
                self.reply(&rid, "approvals_list", d);
            }
            Command::ProjectList => {
                let list: ProjectList = self.client.get("/api/v1/projects").await?;
                let mut d = Map::new();
                d.insert("projects".into(), json!(list.projects));
                self.reply(&rid, "project_list", d);
                // The reference follows every list with the snapshot for everyone.
                self.emit(RouterEvent::new(now(), "projects_updated", json!({"projects": list.projects})));
            }
            Command::Project { command, project_id, resume } => {
                let found = self.client.get::<ProjectView>(&format!("/api/v1/projects/{project_id}")).await;
                if let Err(e) = &found
                    && is_not_found(e)
                {
                    return Err(Rejection::with_detail(&rid, reasons::UNKNOWN_PROJECT, format!("{}: {e:#}", command.name())).into());
                }
                found?;
                match command {
                    ProjectCommand::Start => {
                        let p: ProjectView = self.client.post(&format!("/api/v1/projects/{project_id}/start"), &json!({})).await?;
                        self.updated(&p);
                        tokio::spawn(self.clone().started(rid, p));
                    }
                    ProjectCommand::Resume => {
                        let p: ProjectView = self.client.post(&format!("/api/v1/projects/{project_id}/resume"), &resume).await?;
                        self.updated(&p);
                        tokio::spawn(self.clone().resumed(rid, p));
                    }
                    ProjectCommand::ResumePreview => {
                        let preview: ResumePreview =
                            self.client.post(&format!("/api/v1/projects/{project_id}/resume-preview"), &resume).await?;
                        let mut d = Map::new();
                        d.insert("project_id".into(), json!(preview.project_id));
                        d.insert("preview".into(), json!(preview));
                        self.reply(&rid, "project_resume_preview", d);
                    }
                    other => anyhow::bail!("{} takes no project_id: it makes a project", other.name()),
                }
            }
            Command::ProjectNew { command: ProjectCommand::Create, payload } => {
                let req = project_request(&payload)?;
                let p: ProjectView = self.client.post("/api/v1/projects", &req).await?;
                self.updated(&p);
                let mut d = Map::new();
                d.insert("project_id".into(), json!(p.project_id));
                d.insert("title".into(), json!(p.title));
                self.reply(&rid, "project_created", d);
                if p.status == ProjectStatus::Starting {
                    tokio::spawn(self.clone().started(rid, p));
                }
            }
            Command::ProjectNew { command: _, payload } => {
                let req = plan_request(&payload)?;
                let p: PlanView = self.client.post("/api/v1/plans", &req).await?;
                let mut d = Map::new();
                d.insert("plan_id".into(), json!(p.plan_id));
                d.insert("planner_swarm_id".into(), json!(p.planner_swarm_id));
                self.reply(&rid, "project_plan_queued", d);
                tokio::spawn(self.clone().planned(rid, p));
            }
            Command::SwarmTerminate { swarm_id } => {
                let s = self.fleet_of(&rid, &swarm_id, FleetWords::STATUS).await?;
                let fleet = s.fleet.name.clone();
                if let Some(r) = &rid {
                    self.correlation.lock().expect("not poisoned").terminations.insert(fleet.clone(), r.clone());
                }
                let _: Ack = self.client.delete(&format!("/api/v1/fleets/{fleet}")).await?;
                self.reply(&rid, "swarm_status", swarm_status(&s, Some("terminating")));
            }
            Command::ProvidersList => {
                let info: ServerInfo = self.client.get("/api/v1/info").await?;
                let providers: Vec<Value> = info
                    .backends
                    .iter()
                    .map(|b| {
                        json!({
                            "id": b, "label": format!("clawfleet {b} backend"), "backend": b, "defaults": {},
                            "launch_fields": [
                                {"key": "name", "label": "Fleet name", "type": "text"},
                                {"key": "brain", "label": "Brain", "type": "text"},
                                {"key": "version", "label": "Version label", "type": "text"}
                            ]
                        })
                    })
                    .collect();
                let mut d = Map::new();
                d.insert("providers".into(), Value::Array(providers));
                self.reply(&rid, "providers_list", d);
            }
        }
        Ok(())
    }
}

/// Follows the control plane's events and translates them, reconnecting after failures.
async fn follow(router: Arc<Router>) {
    let mut since: Option<u64> = None;
    loop {
        let mut query = vec![("follow", "true".to_owned())];
        query.extend(since.map(|s| ("since", s.to_string())));
        match router.client.events(&query).await {
            Ok(stream) => {
                let mut stream = Box::pin(stream);
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(e) => {
                            since = Some(e.id);
                            let translated = translate(&e, &mut router.correlation.lock().expect("not poisoned"));
                            if let Some(mut ev) = translated {
                                // The approvals' version, as `approvals_list` says it.
                                if ev.event.starts_with("exec_approval_")
                                    && let Ok(list) = router.client.get::<ApprovalList>("/api/v1/approvals").await
                                {
                                    ev.data["approvals_version"] = json!(list.version);
                                }
                                router.emit(ev);
                            }
                            // The reference follows every change of a project with the snapshot
                            // of them all.
                            if matches!(
                                e.body,
                                EventBody::ProjectCreated { .. }
                                    | EventBody::ProjectStatus { .. }
                                    | EventBody::ProjectResumed { .. }
                                    | EventBody::ProjectTaskAssigned { .. }
                                    | EventBody::ProjectTaskResult { .. }
                            ) {
                                match router.client.get::<ProjectList>("/api/v1/projects").await {
                                    Ok(list) => {
                                        router.emit(RouterEvent::new(now(), "projects_updated", json!({"projects": list.projects})))
                                    }
                                    Err(err) => tracing::warn!(error = %err, "Could not read the projects for projects_updated"),
                                }
                            }
                            // The reference follows every change of its queue with a snapshot.
                            if e.body.name().starts_with("queue_") {
                                match router.queue_items().await {
                                    Ok(items) => router.emit(RouterEvent::new(now(), "queue_updated", json!({"items": items}))),
                                    Err(err) => tracing::warn!(error = %err, "Could not read the queue for queue_updated"),
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Event stream failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "Cannot follow the control plane's events; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads one line of at most `MAX_ROUTER_LINE_BYTES`; longer lines are consumed and reported.
async fn read_line(reader: &mut (impl AsyncBufRead + Unpin), buf: &mut Vec<u8>) -> std::io::Result<Option<Result<String, String>>> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() && !too_long { None } else { Some(finish(buf, too_long)) });
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i)),
            None => (available, None),
        };
        if !too_long {
            buf.extend_from_slice(chunk);
            if buf.len() > MAX_ROUTER_LINE_BYTES {
                too_long = true;
                buf.clear();
            }
        }
        let used = found.map_or(chunk.len(), |i| i + 1);
        reader.consume(used);
        if found.is_some() {
            return Ok(Some(finish(buf, too_long)));
        }
    }
}

fn finish(buf: &[u8], too_long: bool) -> Result<String, String> {
    if too_long {
        return Err(format!("line is over the {MAX_ROUTER_LINE_BYTES}-byte limit"));
    }
    let line = buf.strip_suffix(b"\r").unwrap_or(buf);
    String::from_utf8(line.to_vec()).map_err(|_| "line is not UTF-8".to_owned())
}

/// What a client must show before the router acts on its lines.
#[derive(Clone)]
enum Admission {
    /// Standard input: the process that started the router.
    Trusted,
    /// A TCP client of a router without a token (on loopback only): anything but an HTTP request.
    NotHttp,
    /// A TCP client of a router with a token: `{"auth":"TOKEN"}` first, before it sees or
    /// sends anything.
    Token(Arc<str>),
}

/// Reads (and drops) what a refused client already sent, briefly, after its sending half is
/// shut, so that the close is an orderly one: closing with unread input would reset the
/// connection, losing a refusal and failing the client's write of the rest of its request.
async fn linger(reader: &mut (impl AsyncBufRead + Unpin)) {
    let mut sink = [0u8; 4096];
    let mut left = 64 * 1024usize;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match tokio::io::AsyncReadExt::read(reader, &mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Serves one client: its lines in, every router event out. Returns when its input ends, or at
/// once when it is not admitted.
async fn serve(
    router: Arc<Router>,
    mut reader: impl AsyncBufRead + Unpin,
    mut writer: impl AsyncWrite + Unpin + Send + 'static,
    admission: Admission,
) {
    let mut buf = Vec::new();
    if let Admission::Token(token) = &admission {
        let presented = match read_line(&mut reader, &mut buf).await {
            Ok(Some(Ok(line))) => proto::auth_token(&line),
            _ => return,
        };
        if !presented.is_some_and(|p| clawfleet_bus::credentials::constant_time_eq(p.as_bytes(), token.as_bytes())) {
            tracing::warn!("Refused a router client that did not authenticate");
            let refusal = Rejection::with_detail(
                &None,
                "unauthorized",
                r#"this router needs {"auth":"TOKEN"} as the first line (its token is CODESWARM_ROUTER_TOKEN)"#,
            );
            let _ = writer.write_all((RouterEvent::rejected(now(), &refusal).to_line() + "\n").as_bytes()).await;
            let _ = writer.shutdown().await;
            linger(&mut reader).await;
            return;
        }
    }
    let mut rx = router.out.subscribe();
    let writer_task = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(line) => {
                    if writer.write_all(line.as_bytes()).await.is_err()
                        || writer.write_all(b"\n").await.is_err()
                        || writer.flush().await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => tracing::warn!(missed = n, "A router client fell behind"),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let mut first = matches!(admission, Admission::NotHttp);
    loop {
        let line = read_line(&mut reader, &mut buf).await;
        // A first line that is an HTTP request, or that cannot be read as a line (an HTTP
        // request line over the limit, bytes that are not UTF-8), closes the connection: the
        // lines after it may be a request's body.
        if std::mem::take(&mut first) && !matches!(&line, Ok(Some(Ok(l))) if !proto::looks_like_http(l)) {
            tracing::warn!("Closed a router client whose first line was HTTP or unreadable (a web page can make a browser send that)");
            // Dropping the writer shuts the connection's sending half.
            writer_task.abort();
            let _ = writer_task.await;
            linger(&mut reader).await;
            return;
        }
        match line {
            Ok(None) | Err(_) => break,
            Ok(Some(Err(reason))) => router.reject(&Rejection { request_id: None, reason, detail: None }),
            Ok(Some(Ok(line))) if line.trim().is_empty() => {}
            Ok(Some(Ok(line))) => {
                let r = router.clone();
                tokio::spawn(async move { r.handle_line(&line).await });
            }
        }
    }
    // Let replies to the last lines go out before the writer stops.
    tokio::time::sleep(Duration::from_millis(200)).await;
    writer_task.abort();
}

fn default_listen() -> anyhow::Result<SocketAddr> {
    let host = std::env::var("CODESWARM_ROUTER_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("CODESWARM_ROUTER_PORT").unwrap_or_else(|_| "8765".into());
    format!("{host}:{port}").parse().with_context(|| format!("CODESWARM_ROUTER_HOST/PORT give an invalid address {host}:{port}"))
}

pub(crate) async fn run(args: RouterArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let _: ServerInfo = client.get("/api/v1/info").await?;
    let (out, _) = broadcast::channel(16 * 1024);
    let router = Arc::new(Router { client, out, correlation: Mutex::default() });
    tokio::spawn(follow(router.clone()));

    let listen = match (args.listen, args.stdio) {
        (Some(addr), _) => Some(addr),
        (None, false) => Some(default_listen()?),
        (None, true) => None,
    };
    if let Some(addr) = listen {
        let admission = match &args.router_token {
            Some(token) => Admission::Token(token.as_str().into()),
            None if addr.ip().is_loopback() => Admission::NotHttp,
            None => anyhow::bail!(
                "the router would listen on {addr}, which is not loopback, without a token: anyone who can reach it \
                 could launch agents; set CODESWARM_ROUTER_TOKEN (clients then send {{\"auth\":\"TOKEN\"}} first)"
            ),
        };
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "Router listening");
        let r = router.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((socket, peer)) => {
                        tracing::info!(%peer, "Router client connected");
                        let (read, write) = socket.into_split();
                        tokio::spawn(serve(r.clone(), BufReader::new(read), write, admission.clone()));
                    }
                    Err(e) => tracing::warn!(error = %e, "Accept failed"),
                }
            }
        });
    }
    if args.stdio {
        tokio::select! {
            () = serve(router.clone(), BufReader::new(tokio::io::stdin()), tokio::io::stdout(), Admission::Trusted) => {}
            () = crate::shutdown_signal() => {}
        }
    } else {
        crate::shutdown_signal().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// The cluster profile in a slurm `swarm_launch`'s `provider_params` (codeswarm's profile fields:
/// login_host, partition, workspace_root, time_limit, ...; other parameters are the launch's own).
fn slurm_profile(params: &Map<String, Value>) -> anyhow::Result<Option<clawfleet_proto::cluster::ClusterSpec>> {
    const FIELDS: [&str; 9] = [
        "login_host",
        "partition",
        "workspace_root",
        "cluster_subdir",
        "account",
        "qos",
        "time_limit",
        "inject_timeout_seconds",
        "transport",
    ];
    let profile: Map<String, Value> =
        params.iter().filter(|(k, _)| FIELDS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    if profile.is_empty() {
        return Ok(None);
    }
    let spec: clawfleet_proto::cluster::ClusterSpec =
        serde_json::from_value(Value::Object(profile)).map_err(|e| anyhow::anyhow!("provider_params: {e}"))?;
    spec.check().map_err(|e| anyhow::anyhow!("provider_params: {e}"))?;
    Ok(Some(spec))
}

#[cfg(test)]
mod tests {
    use clawfleet_proto::event::Usage;

    use super::*;

    fn ev(body: EventBody) -> Event {
        Event { id: 9, at: "t".into(), fleet: "squad".into(), agent: Some(2), injection_id: Some("i1".into()), body }
    }

    #[test]
    fn lifecycle_translation_carries_correlation() {
        let mut c = Correlation::default();
        let ack = translate(&ev(EventBody::InjectAck { prompt: "hi".into(), request_id: Some("r1".into()) }), &mut c).unwrap();
        assert_eq!(
            ack.to_line(),
            r#"{"protocol":"codeswarm.router.v1","type":"event","timestamp":"t","event":"inject_ack","data":{"swarm_id":"squad","job_id":"squad","node_id":2,"injection_id":"i1","event_id":9,"request_id":"r1","prompt":"hi"}}"#
        );
        let delivered = translate(&ev(EventBody::InjectDelivered {}), &mut c).unwrap();
        assert_eq!(delivered.data["request_id"], "r1");
        let delta = translate(&ev(EventBody::AssistantDelta { content: "x".into() }), &mut c).unwrap();
        assert_eq!((delta.event.as_str(), delta.data["content"].as_str()), ("assistant_delta", Some("x")));
        let usage = translate(&ev(EventBody::Usage(Usage { input_tokens: 3, output_tokens: 4, ..Usage::default() })), &mut c).unwrap();
        assert_eq!(usage.data["total_tokens"], 7);
        assert!(translate(&ev(EventBody::CommandSent { command_id: "c".into(), command: "health-check".into() }), &mut c).is_none());
    }

    #[tokio::test]
    async fn long_and_binary_lines_are_refused_and_reading_goes_on() {
        let mut input = Vec::new();
        input.extend(vec![b'x'; MAX_ROUTER_LINE_BYTES + 10]);
        input.extend(b"\n\xff\xfe\nnext\n");
        let mut reader = BufReader::new(&input[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut reader, &mut buf).await.unwrap(),
            Some(Err(format!("line is over the {MAX_ROUTER_LINE_BYTES}-byte limit")))
        );
        assert_eq!(read_line(&mut reader, &mut buf).await.unwrap(), Some(Err("line is not UTF-8".into())));
        assert_eq!(read_line(&mut reader, &mut buf).await.unwrap(), Some(Ok("next".into())));
        assert_eq!(read_line(&mut reader, &mut buf).await.unwrap(), None);
    }
}

//! Events: everything that happens in a fleet, as stored by the control plane and streamed
//! to `attach`, `logs`, the router and the dashboard.
//!
//! JSON shape (one object a line in streams):
//! `{"id":42,"at":"2026-11-22T17:00:00.123Z","fleet":"squad","agent":3,"injection_id":"…",
//!   "event":"assistant_delta","data":{"content":"Hi"}}`.
//! `id` is assigned by the control plane, strictly increasing: `--since ID` resumes after it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    /// RFC 3339 UTC timestamp, millisecond precision.
    pub at: String,
    pub fleet: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection_id: Option<String>,
    #[serde(flatten)]
    pub body: EventBody,
}

/// The longest chat message, in characters (clawbucket's limit).
pub const MAX_CHAT_CHARS: usize = 280;

/// What happened. The injection lifecycle, in order: `inject_ack`, `inject_delivered`,
/// `turn_started`, `assistant_delta`…, `assistant`, `turn_complete`, `usage`; a turn that
/// fails ends with `agent_error` (after it started) or `inject_failed` (before).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum EventBody {
    /// The control plane persisted the injection for this agent. `request_id` is the
    /// caller's own correlation id, when it gave one (the router does).
    InjectAck {
        prompt: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// The agent received the injection and journaled it.
    InjectDelivered {},
    /// The agent's brain started working on it.
    TurnStarted {},
    /// A piece of the answer, as the brain streams it.
    AssistantDelta { content: String },
    /// The whole answer.
    Assistant { content: String },
    /// The turn ended normally.
    TurnComplete {},
    /// Tokens used by the turn, when the brain reports them.
    Usage(Usage),
    /// The turn, or the agent, failed after the turn started.
    AgentError { message: String },
    /// The injection could not start (timeout, agent removed, agent stopped).
    InjectFailed { error: String },
    /// A vocabulary command was queued for this agent.
    CommandSent { command_id: String, command: String },
    /// An agent's answer to a vocabulary command.
    CommandReply {
        command_id: String,
        command: String,
        ok: bool,
        #[serde(default, skip_serializing_if = "Value::is_null")]
        result: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The control plane saw an agent change state (online, lost, stopped…).
    AgentState {
        state: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<String>,
    },
    /// A fleet was created.
    FleetLaunched { replicas: u32, backend: String, brain: String, version: String },
    /// A fleet's replica count changed.
    FleetScaled { replicas: u32, previous: u32 },
    /// A fleet moves to a new image or version (an update, or a rollback).
    FleetUpdated {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<String>,
        version: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_image: Option<String>,
        previous_version: String,
    },
    /// Fields of a fleet's desired state other than its replicas, image and version changed
    /// (an apply): `"brain: echo → model"`, one per field.
    FleetChanged { changes: Vec<String> },
    /// A deploy started to move this fleet to a new version.
    DeployStarted {
        deploy: u64,
        target: String,
        version: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<String>,
    },
    /// More (or fewer) of the fleet's agents passed the deploy's gate.
    DeployProgress { deploy: u64, ready: u32, replicas: u32 },
    /// A deploy ended for this fleet: `succeeded`, or why not.
    DeployFinished {
        deploy: u64,
        outcome: crate::api::DeployState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The fleet's leader (clawbucket's MANAGER) changed: `slot` leads in `epoch` (none when no
    /// agent is healthy); every change has a higher epoch than the last.
    LeaderChanged {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slot: Option<u32>,
        epoch: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<u32>,
    },
    /// An agent was armed or disarmed (clawbucket's ARM) by someone (a token's name and role).
    Arm { armed: bool, by: String },
    /// A message in the fleet's chat panel: who posted it (a token's name and role, or an
    /// agent) and its text (at most [`MAX_CHAT_CHARS`] characters).
    Chat { from: String, text: String },
    /// An agent's Rock/Paper/Scissors move in `round`: the leader's (with its `epoch`), which
    /// opens the round to the others, or a player's, which the control plane scores against it
    /// (`delta` +1/0/−1 and the agent's new `score`, filled in by the control plane).
    RpsMove {
        round: u64,
        choice: crate::scenario::Rps,
        by: crate::scenario::Chooser,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delta: Option<i8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        score: Option<i64>,
    },
    /// A haiku the leader wrote in `epoch`.
    Haiku { epoch: u64, text: String },
    /// What an agent says it is doing, in three words.
    ThreeWords { text: String },
    /// The control plane refused what an agent did for a scenario (a move from an agent that is
    /// not the leader, in a stale epoch, twice in a round, from a disarmed agent…).
    PlayRefused { play: String, reason: String },
    /// The fleet's scenarios were set (by a token's name and role).
    ScenariosSet { scenarios: crate::scenario::Scenarios, by: String },
    /// A council was opened on the fleet (by a token's name and role): its roles, the core
    /// ones, what it is for and when it fails without them.
    CouncilOpened { council: u64, roles: Vec<String>, core: Vec<String>, brief: String, deadline: String, by: String },
    /// An agent's claim in a council: the roles it would take, most wanted first, and why. The
    /// control plane fills in the `role` it got and whether that made the council `activated`
    /// (a claim that gets no role is refused, a `play_refused`).
    CouncilClaim {
        council: u64,
        roles: Vec<String>,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        activated: bool,
    },
    /// A council's role is free again: its holder was lost before the council was active.
    CouncilRoleFreed { council: u64, role: String, slot: u32 },
    /// A council's core roles are all held: it is active.
    CouncilActivated { council: u64, seats: Vec<crate::council::Seat> },
    /// A council's deadline passed with core roles no one holds.
    CouncilFailed { council: u64, unclaimed: Vec<String> },
    /// An operator closed a council.
    CouncilClosed { council: u64, by: String },
    /// A project was created (on its home fleet: its first worker fleet).
    ProjectCreated { project_id: String, title: String, tasks: u32 },
    /// A project's status changed (started, completed, needs attention, failed to start).
    ProjectStatus {
        project_id: String,
        status: crate::project::ProjectStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_error: Option<String>,
    },
    /// A project was resumed: its status after, and what the resume did to its tasks.
    ProjectResumed { project_id: String, status: crate::project::ProjectStatus, resume_summary: crate::project::ResumeSummary },
    /// A task was assigned to an agent (this event's), carried by the event's injection.
    ProjectTaskAssigned { project_id: String, task_id: String, attempt: u32 },
    /// An attempt of a task ended: the task's new status, the result's status (the worker's
    /// `TASK_RESULT` status, `invalid_result`, `agent_error` or `worker_lost`) and why not done.
    ProjectTaskResult {
        project_id: String,
        task_id: String,
        status: crate::project::TaskStatus,
        result_status: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A plan was queued (on its planner fleet), given to a planner agent (the event's, with
    /// its injection), turned into its project, or refused with the reason.
    #[serde(rename = "project_plan_queued")]
    PlanQueued { plan_id: String, title: String },
    #[serde(rename = "project_plan_started")]
    PlanStarted { plan_id: String },
    #[serde(rename = "project_plan_completed")]
    PlanCompleted { plan_id: String, project_id: String },
    #[serde(rename = "project_plan_failed")]
    PlanFailed { plan_id: String, reason: String },
    /// An item was queued for the fleet (for its `agent`, or its first idle one), from a
    /// `source` fleet or an operator (by a token's name and role).
    QueueEnqueued {
        queue_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        by: String,
    },
    /// A queued item was injected into an agent (this event's, with its injection).
    QueueDispatched {
        queue_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// A queued item was cancelled before it was dispatched.
    QueueCancelled { queue_id: String, by: String },
    /// A queued item was dropped: its fleet or its agent is gone.
    QueueDropped {
        queue_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        reason: String,
    },
    /// An agent's delegation (a directive in its answer, this event's injection) was refused:
    /// the fleet it named, and why.
    DelegationRefused { target: String, reason: String },
    /// An agent asks before it runs a command (its brain's declared step); its turn (this
    /// event's injection) waits for the answer.
    ExecApprovalRequired {
        /// Given by the control plane when it stores the event (what an agent says is not taken).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval_id: Option<u64>,
        call_id: String,
        command: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An approval was answered (by `by`; the control plane's own answer to one that waited
    /// too long is a refusal) and the answer sent to its agent.
    ExecApprovalSubmitted {
        approval_id: u64,
        call_id: String,
        approved: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decision: Option<String>,
        by: String,
    },
    /// The agent took the answer: it runs the command, or ends its turn refused. `waiting`:
    /// a turn of it was waiting (not, after the agent restarted).
    ExecApprovalResolved { call_id: String, approved: bool, waiting: bool },
    /// A step of an agent's migration between racks (this event's agent: the one on this
    /// rack), for the activity feed.
    Migration {
        id: String,
        state: crate::rack::MigrationState,
        /// The other rack.
        peer: String,
        detail: String,
    },
    /// An injection held while its agent moved went to the copy that took over, on `rack`
    /// (its id there): its life on this rack ended.
    InjectForwarded { rack: String, agent: String, injection_id: String },
    /// A fleet is being removed.
    FleetTerminating {},
    /// A fleet is gone: every agent stopped.
    FleetTerminated {},
}

impl EventBody {
    /// The `event` name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            EventBody::InjectAck { .. } => "inject_ack",
            EventBody::InjectDelivered {} => "inject_delivered",
            EventBody::TurnStarted {} => "turn_started",
            EventBody::AssistantDelta { .. } => "assistant_delta",
            EventBody::Assistant { .. } => "assistant",
            EventBody::TurnComplete {} => "turn_complete",
            EventBody::Usage(_) => "usage",
            EventBody::AgentError { .. } => "agent_error",
            EventBody::InjectFailed { .. } => "inject_failed",
            EventBody::CommandSent { .. } => "command_sent",
            EventBody::CommandReply { .. } => "command_reply",
            EventBody::AgentState { .. } => "agent_state",
            EventBody::FleetLaunched { .. } => "fleet_launched",
            EventBody::FleetScaled { .. } => "fleet_scaled",
            EventBody::FleetUpdated { .. } => "fleet_updated",
            EventBody::FleetChanged { .. } => "fleet_changed",
            EventBody::LeaderChanged { .. } => "leader_changed",
            EventBody::Chat { .. } => "chat",
            EventBody::Arm { .. } => "arm",
            EventBody::RpsMove { .. } => "rps_move",
            EventBody::Haiku { .. } => "haiku",
            EventBody::ThreeWords { .. } => "three_words",
            EventBody::PlayRefused { .. } => "play_refused",
            EventBody::ScenariosSet { .. } => "scenarios_set",
            EventBody::CouncilOpened { .. } => "council_opened",
            EventBody::CouncilClaim { .. } => "council_claim",
            EventBody::CouncilRoleFreed { .. } => "council_role_freed",
            EventBody::CouncilActivated { .. } => "council_activated",
            EventBody::CouncilFailed { .. } => "council_failed",
            EventBody::CouncilClosed { .. } => "council_closed",
            EventBody::ProjectCreated { .. } => "project_created",
            EventBody::ProjectStatus { .. } => "project_status",
            EventBody::ProjectResumed { .. } => "project_resumed",
            EventBody::ProjectTaskAssigned { .. } => "project_task_assigned",
            EventBody::ProjectTaskResult { .. } => "project_task_result",
            EventBody::PlanQueued { .. } => "project_plan_queued",
            EventBody::PlanStarted { .. } => "project_plan_started",
            EventBody::PlanCompleted { .. } => "project_plan_completed",
            EventBody::PlanFailed { .. } => "project_plan_failed",
            EventBody::DeployStarted { .. } => "deploy_started",
            EventBody::DeployProgress { .. } => "deploy_progress",
            EventBody::DeployFinished { .. } => "deploy_finished",
            EventBody::QueueEnqueued { .. } => "queue_enqueued",
            EventBody::QueueDispatched { .. } => "queue_dispatched",
            EventBody::QueueCancelled { .. } => "queue_cancelled",
            EventBody::QueueDropped { .. } => "queue_dropped",
            EventBody::DelegationRefused { .. } => "delegation_refused",
            EventBody::ExecApprovalRequired { .. } => "exec_approval_required",
            EventBody::ExecApprovalSubmitted { .. } => "exec_approval_submitted",
            EventBody::ExecApprovalResolved { .. } => "exec_approval_resolved",
            EventBody::Migration { .. } => "migration",
            EventBody::InjectForwarded { .. } => "inject_forwarded",
            EventBody::FleetTerminating {} => "fleet_terminating",
            EventBody::FleetTerminated {} => "fleet_terminated",
        }
    }

    /// Whether an agent may report this event about itself. The rest are the control
    /// plane's own, and an agent that sends one is refused.
    pub fn is_agent_reportable(&self) -> bool {
        matches!(
            self,
            EventBody::InjectDelivered {}
                | EventBody::TurnStarted {}
                | EventBody::AssistantDelta { .. }
                | EventBody::Assistant { .. }
                | EventBody::TurnComplete {}
                | EventBody::Usage(_)
                | EventBody::AgentError { .. }
                | EventBody::InjectFailed { .. }
                | EventBody::CommandReply { .. }
                | EventBody::RpsMove { .. }
                | EventBody::Haiku { .. }
                | EventBody::ThreeWords { .. }
                | EventBody::CouncilClaim { .. }
                // Judged where it is stored, which gives its approval id.
                | EventBody::ExecApprovalRequired { .. }
                | EventBody::ExecApprovalResolved { .. }
                // Its `from` is set by the control plane to the agent's name.
                | EventBody::Chat { .. }
        )
    }

    /// Whether this event ends an injection's life on one agent.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventBody::TurnComplete {} | EventBody::AgentError { .. } | EventBody::InjectFailed { .. } | EventBody::InjectForwarded { .. }
        )
    }
}

/// Token counts of one turn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn event(body: EventBody) -> Event {
        Event {
            id: 7,
            at: "2026-11-22T17:00:00.123Z".into(),
            fleet: "squad".into(),
            agent: Some(3),
            injection_id: Some("inj-1".into()),
            body,
        }
    }

    #[test]
    fn wire_shape() {
        let line = serde_json::to_string(&event(EventBody::AssistantDelta { content: "Hi".into() })).unwrap();
        expect![[r#"{"id":7,"at":"2026-11-22T17:00:00.123Z","fleet":"squad","agent":3,"injection_id":"inj-1","event":"assistant_delta","data":{"content":"Hi"}}"#]].assert_eq(&line);
        let line = serde_json::to_string(&event(EventBody::TurnComplete {})).unwrap();
        expect![[
            r#"{"id":7,"at":"2026-11-22T17:00:00.123Z","fleet":"squad","agent":3,"injection_id":"inj-1","event":"turn_complete","data":{}}"#
        ]]
        .assert_eq(&line);
    }

    #[test]
    fn round_trips_every_kind() {
        let bodies = [
            EventBody::InjectAck { prompt: "p".into(), request_id: Some("r1".into()) },
            EventBody::InjectDelivered {},
            EventBody::TurnStarted {},
            EventBody::AssistantDelta { content: "a".into() },
            EventBody::Assistant { content: "a".into() },
            EventBody::TurnComplete {},
            EventBody::Usage(Usage { input_tokens: 1, output_tokens: 2, ..Usage::default() }),
            EventBody::AgentError { message: "m".into() },
            EventBody::InjectFailed { error: "timeout".into() },
            EventBody::CommandSent { command_id: "c".into(), command: "health-check".into() },
            EventBody::CommandReply {
                command_id: "c".into(),
                command: "health-check".into(),
                ok: true,
                result: serde_json::json!({"healthy": true}),
                error: None,
            },
            EventBody::AgentState { state: "online".into(), previous: Some("starting".into()) },
            EventBody::FleetLaunched { replicas: 2, backend: "local".into(), brain: "echo".into(), version: "1".into() },
            EventBody::FleetScaled { replicas: 3, previous: 2 },
            EventBody::FleetUpdated { image: Some("a:2".into()), version: "2".into(), previous_image: None, previous_version: "1".into() },
            EventBody::FleetChanged { changes: vec!["brain: echo → model".into()] },
            EventBody::DeployStarted { deploy: 3, target: "all".into(), version: "2".into(), image: None },
            EventBody::DeployProgress { deploy: 3, ready: 1, replicas: 2 },
            EventBody::DeployFinished { deploy: 3, outcome: crate::api::DeployState::Reverted, reason: Some("no progress".into()) },
            EventBody::RpsMove {
                round: 2,
                choice: crate::scenario::Rps::Paper,
                by: crate::scenario::Chooser::Random,
                epoch: None,
                delta: Some(-1),
                score: Some(3),
            },
            EventBody::Haiku { epoch: 1, text: "old pond".into() },
            EventBody::ThreeWords { text: "guarding the gate".into() },
            EventBody::PlayRefused { play: "rps_move".into(), reason: "stale".into() },
            EventBody::ScenariosSet { scenarios: crate::scenario::Scenarios::default(), by: "admin".into() },
            EventBody::CouncilOpened {
                council: 1,
                roles: vec!["planner".into(), "coder".into()],
                core: vec!["planner".into()],
                brief: "ship it".into(),
                deadline: "2026-01-01T00:01:00Z".into(),
                by: "admin".into(),
            },
            EventBody::CouncilClaim {
                council: 1,
                roles: vec!["coder".into()],
                reason: "I code".into(),
                role: Some("coder".into()),
                activated: true,
            },
            EventBody::CouncilRoleFreed { council: 1, role: "coder".into(), slot: 2 },
            EventBody::CouncilActivated {
                council: 1,
                seats: vec![crate::council::Seat { role: "planner".into(), core: true, slot: Some(0), reason: None, since: None }],
            },
            EventBody::CouncilFailed { council: 1, unclaimed: vec!["planner".into()] },
            EventBody::CouncilClosed { council: 1, by: "admin".into() },
            EventBody::ProjectCreated { project_id: "p".into(), title: "t".into(), tasks: 3 },
            EventBody::PlanQueued { plan_id: "pl".into(), title: "t".into() },
            EventBody::PlanStarted { plan_id: "pl".into() },
            EventBody::PlanCompleted { plan_id: "pl".into(), project_id: "p".into() },
            EventBody::PlanFailed { plan_id: "pl".into(), reason: "TASK_GRAPH_JSON block missing or malformed".into() },
            EventBody::ProjectStatus { project_id: "p".into(), status: crate::project::ProjectStatus::Attention, last_error: None },
            EventBody::ProjectResumed {
                project_id: "p".into(),
                status: crate::project::ProjectStatus::Running,
                resume_summary: crate::project::ResumeSummary { reset_assigned: 1, ..Default::default() },
            },
            EventBody::ProjectTaskAssigned { project_id: "p".into(), task_id: "T-001".into(), attempt: 1 },
            EventBody::ProjectTaskResult {
                project_id: "p".into(),
                task_id: "T-001".into(),
                status: crate::project::TaskStatus::Pending,
                result_status: "failed".into(),
                error: Some("tests fail".into()),
            },
            EventBody::Chat { from: "a".into(), text: "hi".into() },
            EventBody::Arm { armed: false, by: "admin".into() },
            EventBody::QueueEnqueued {
                queue_id: "q".into(),
                agent: Some(1),
                source: Some("ops".into()),
                request_id: Some("r".into()),
                by: "admin".into(),
            },
            EventBody::QueueDispatched { queue_id: "q".into(), source: None, request_id: None },
            EventBody::QueueCancelled { queue_id: "q".into(), by: "admin".into() },
            EventBody::QueueDropped { queue_id: "q".into(), source: None, request_id: None, reason: "gone".into() },
            EventBody::DelegationRefused { target: "crew".into(), reason: "a loop".into() },
            EventBody::FleetTerminating {},
            EventBody::FleetTerminated {},
        ];
        for body in bodies {
            let e = event(body);
            let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
            assert_eq!(back, e);
            assert_eq!(serde_json::to_value(&e).unwrap()["event"], e.body.name());
        }
    }
}

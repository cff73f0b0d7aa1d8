//! Orchestrated projects (codeswarm's router, `router/router.py`): a task graph whose tasks
//! the control plane hands, one at a time, to idle agents of the project's worker fleets. These
//! are the shapes clients send and read, named as the reference router names them; the rules
//! are `clawfleet_core::project`'s.

use serde::{Deserialize, Serialize};

/// At most this many tasks in a project (the integration task included).
pub const MAX_TASKS: usize = 5000;
/// A task id: 1 to this many characters of `A-Z`, `a-z`, `0-9`, `.`, `_` and `-`.
pub const MAX_TASK_ID_CHARS: usize = 64;
/// At most this many characters in a project's or a task's title.
pub const MAX_TITLE_CHARS: usize = 200;
/// At most this many entries in a task's acceptance criteria, dependencies or path lists.
pub const MAX_LIST: usize = 64;
/// At most this many characters in one acceptance criterion or path.
pub const MAX_ITEM_CHARS: usize = 500;
/// How often a task is tried before it is left failed.
pub const MAX_ATTEMPTS: u32 = 3;

named_enum! {
    /// Where a task is.
    pub enum TaskStatus ("task status") {
        /// Waiting for its dependencies, a worker, or its retry.
        Pending = "pending",
        /// With a worker, which has not answered yet.
        Assigned = "assigned",
        Completed = "completed",
        /// Given up on: its last result was `failed`, `blocked` or `needs_followups`, or it
        /// failed every attempt.
        Failed = "failed",
    }
}

named_enum! {
    /// Where a project is.
    pub enum ProjectStatus ("project status") {
        /// Created, not started.
        Draft = "draft",
        /// Its workers' repositories are being prepared.
        Starting = "starting",
        Running = "running",
        /// Tasks failed and nothing else can run: it needs an operator (resume).
        Attention = "attention",
        Completed = "completed",
        Resuming = "resuming",
        /// Starting or resuming failed (`last_error` says why).
        Error = "error",
    }
}

named_enum! {
    /// What kind of task it is.
    pub enum TaskKind ("task kind") {
        Implementation = "implementation",
        /// The final task: merge every task branch into the integration branch.
        Integration = "integration",
    }
}

/// A task as a client writes it (a plan's `tasks`, or `project_create`'s), read as leniently as
/// the reference reads it: `task_id` or `id` (default `T-001`, …), `task_kind` or `kind`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInput {
    #[serde(default, alias = "id", skip_serializing_if = "Option::is_none", deserialize_with = "id_string")]
    pub task_id: Option<String>,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "strings")]
    pub acceptance_criteria: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "strings")]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "strings")]
    pub owned_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "strings")]
    pub expected_touch_paths: Vec<String>,
    #[serde(default, alias = "kind", skip_serializing_if = "Option::is_none")]
    pub task_kind: Option<TaskKind>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub system_generated: bool,
}

/// An id given as a string or a number (`"T-001"` or `7`).
fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(other) => return Err(serde::de::Error::custom(format!("a task id is a string, not {other}"))),
    })
}

/// A list of strings, numbers taken as their text (the reference's `[str(x) for x in …]`); a
/// value that is not a list is no list.
fn strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// A request to create a project (the API's body; the router's `project_create` payload).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectCreate {
    pub title: String,
    /// The repository: a local path with a `.git`, which each worker clones. None (empty): a
    /// project of plain tasks, with no code (the reference router always has one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repo_path: String,
    /// The fleets whose agents work on it (the router's swarm ids or aliases: fleet names).
    pub worker_swarm_ids: Vec<String>,
    pub tasks: Vec<TaskInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_branch: Option<String>,
    /// Where each worker's clone is, under its workspace (default `repo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_subdir: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_start: bool,
}

/// How many tasks are where: `pending` counts every task not assigned, completed or failed,
/// split into `ready` (it could run now) and `blocked` (it waits on a dependency, a path an
/// assigned task owns, or its retry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    pub pending: u32,
    pub ready: u32,
    pub assigned: u32,
    pub completed: u32,
    pub failed: u32,
    pub blocked: u32,
}

/// A task as the API and the router show it (the reference router's fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub task_id: String,
    pub title: String,
    pub prompt: String,
    pub acceptance_criteria: Vec<String>,
    pub depends_on: Vec<String>,
    pub owned_paths: Vec<String>,
    pub expected_touch_paths: Vec<String>,
    pub task_kind: TaskKind,
    pub system_generated: bool,
    pub status: TaskStatus,
    /// How often it was assigned.
    pub attempts: u32,
    pub assigned_swarm_id: Option<String>,
    pub assigned_node_id: Option<u32>,
    pub last_assigned_swarm_id: Option<String>,
    pub last_assigned_node_id: Option<u32>,
    /// The injection that carries the running attempt.
    pub assignment_injection_id: Option<String>,
    pub branch: Option<String>,
    pub base_commit: Option<String>,
    pub head_commit: Option<String>,
    pub result_status: Option<String>,
    /// The worker's whole last answer.
    pub result_raw: Option<String>,
    pub last_error: Option<String>,
    /// When a pending task that was tried may run again (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// Seconds since the Unix epoch, as the reference keeps them.
    pub created_at: f64,
    pub updated_at: f64,
}

/// A project as the API and the router show it (the reference router's fields, and `stuck`:
/// what holds it up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectView {
    pub project_id: String,
    pub title: String,
    pub repo_path: String,
    pub repo_mode: String,
    pub repo_label: String,
    pub base_branch: String,
    pub worker_swarm_ids: Vec<String>,
    pub status: ProjectStatus,
    pub workspace_subdir: String,
    pub task_order: Vec<String>,
    pub tasks: std::collections::BTreeMap<String, TaskView>,
    pub task_counts: TaskCounts,
    pub integration_branch: Option<String>,
    pub integration_head_commit: Option<String>,
    pub final_result_branch: Option<String>,
    pub final_result_head_commit: Option<String>,
    /// Each worker fleet's prepared clones (the reference's `repo_preparation`).
    pub repo_preparation: std::collections::BTreeMap<String, serde_json::Value>,
    pub resume_count: u32,
    /// What the last resume did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_summary: Option<ResumeSummary>,
    /// When it was last resumed (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resume_at: Option<f64>,
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stuck: Vec<String>,
    pub created_at: f64,
    pub updated_at: f64,
}

named_enum! {
    /// Where a plan is: waiting for an idle planner, with one, turned into its project, or
    /// refused (its answer was no valid task graph: it can be retried).
    pub enum PlanStatus ("plan status") {
        Queued = "queued",
        Planning = "planning",
        Completed = "completed",
        Failed = "failed",
    }
}

/// A request to plan a project (codeswarm's `project_plan`): a planner agent turns `spec`
/// into the task graph.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanCreate {
    pub title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repo_path: String,
    pub spec: String,
    /// The fleet whose agent plans it.
    pub planner_swarm_id: String,
    pub worker_swarm_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_subdir: Option<String>,
    /// Start the project as soon as it is planned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_start: bool,
}

/// A plan as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanView {
    pub plan_id: String,
    pub title: String,
    pub repo_path: String,
    pub planner_swarm_id: String,
    pub planner_node_id: Option<u32>,
    pub worker_swarm_ids: Vec<String>,
    pub status: PlanStatus,
    pub attempts: u32,
    pub injection_id: Option<String>,
    /// The project it became.
    pub project_id: Option<String>,
    pub last_error: Option<String>,
    pub created_at: f64,
    pub updated_at: f64,
}

/// Every plan the caller may read, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanList {
    pub plans: Vec<PlanView>,
}

/// Every project the caller may read, by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectList {
    pub projects: std::collections::BTreeMap<String, ProjectView>,
}

/// A request to resume a project (codeswarm's `project_resume` and `project_resume_preview`
/// payloads, less `project_id`, which the path names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    /// Other worker fleets for it from now on (absent: the ones it has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_swarm_ids: Option<Vec<String>>,
    /// Try its failed tasks again.
    #[serde(default)]
    pub retry_failed: bool,
    /// Check completed (and assigned) tasks against their branches in the project's
    /// repository: a completed task whose branch shows no work goes back to pending, an
    /// assigned one whose branch does is completed (default true, as the reference's).
    #[serde(default = "yes")]
    pub reverify_completed: bool,
}

fn yes() -> bool {
    true
}

named_enum! {
    /// What a resume did to a task (the reference's `resume_decision`).
    pub enum ResumeDecision ("resume decision") {
        /// Completed, and its branch (or its recorded answer) shows the work.
        KeptCompleted = "kept_completed",
        /// Completed, but its branch shows no work: pending again.
        DowngradedToPending = "downgraded_to_pending",
        /// Assigned to a worker that is gone, and its branch shows the work: completed.
        RecoveredFromBranch = "recovered_from_branch",
        /// Assigned to a worker that is gone: pending again.
        ResetAssigned = "reset_assigned",
        /// Failed, tried again on request.
        RetriedFailed = "retried_failed",
        /// Completed, but a task it depends on is no longer: pending again.
        DependencyReset = "dependency_reset",
    }
}

/// How many tasks each decision took (a dependency reset counts as a downgrade, as the
/// reference counts it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeSummary {
    pub kept_completed: u32,
    pub recovered_from_branch: u32,
    pub downgraded_to_pending: u32,
    pub reset_assigned: u32,
    pub retried_failed: u32,
}

/// One task a resume looks at, and what it does to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskChange {
    pub task_id: String,
    pub title: String,
    pub before_status: TaskStatus,
    pub after_status: TaskStatus,
    pub resume_decision: Option<ResumeDecision>,
    pub reason: Option<String>,
    pub branch: Option<String>,
    pub assigned_swarm_id: Option<String>,
    pub assigned_node_id: Option<u32>,
}

/// A task still with a worker that is alive: a resume waits for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockingAssignment {
    pub task_id: String,
    pub title: String,
    pub swarm_id: String,
    pub swarm_alias: String,
    pub swarm_status: String,
    pub node_id: Option<u32>,
    pub branch: Option<String>,
}

/// A fleet whose live workers hold tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockingSwarm {
    pub swarm_id: String,
    pub swarm_alias: String,
    pub swarm_status: String,
}

/// What a resume would do, nothing changed (the reference's `project_resume_preview`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePreview {
    pub project_id: String,
    pub title: String,
    /// The project's status after the resume.
    pub status: ProjectStatus,
    pub blocked: bool,
    pub blocked_reason: Option<String>,
    pub has_live_assignments: bool,
    pub blocking_assignments: Vec<BlockingAssignment>,
    pub blocking_swarms: Vec<BlockingSwarm>,
    pub retry_failed: bool,
    pub reverify_completed: bool,
    pub worker_swarm_ids: Vec<String>,
    pub counts_before: TaskCounts,
    pub counts_after: TaskCounts,
    pub summary: ResumeSummary,
    pub changed_task_ids: Vec<String>,
    pub task_changes: Vec<TaskChange>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_read_as_leniently_as_the_reference_reads_them() {
        let t: TaskInput = serde_json::from_str(
            r#"{"id": 7, "title": "t", "prompt": "p", "depends_on": ["T-001", 2], "owned_paths": "src", "kind": "integration", "extra": 1}"#,
        )
        .unwrap();
        assert_eq!(t.task_id.as_deref(), Some("7"));
        assert_eq!(t.depends_on, ["T-001", "2"]);
        assert!(t.owned_paths.is_empty(), "not a list: no paths");
        assert_eq!(t.task_kind, Some(TaskKind::Integration));
        assert!(serde_json::from_str::<TaskInput>(r#"{"task_id": {"a": 1}}"#).unwrap_err().to_string().contains("a task id is a string"));
        assert_eq!(
            "done".parse::<TaskStatus>().unwrap_err(),
            "unknown task status 'done' (expected pending, assigned, completed or failed)"
        );
    }
}

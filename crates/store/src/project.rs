//! Orchestrated projects, stored: each project and its tasks, with every attempt's worker,
//! injection and result. A task is assigned in the transaction that creates its injection, and
//! an agent holds at most one task of any project (a unique index says so); a worker's answer
//! is taken once, only while its injection is still the task's, so an attempt given back (its
//! worker lost) never completes the task after another attempt began. Project events are
//! stored on the project's home fleet (its first worker fleet), task events on the worker's.

use clawfleet_core::project::{self as rules, Change, Outcome, TaskSpec, TaskState};
use clawfleet_proto::event::EventBody;
use clawfleet_proto::project::{ProjectStatus, ProjectView, ResumeDecision, ResumeSummary, TaskInput, TaskKind, TaskStatus, TaskView};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{Audit, Event, NewEvent, NewInjection, Result, Store, StoreError, fleet_event, insert_event, insert_injection, write_audit};

/// A project to create, its graph checked.
#[derive(Debug, Clone)]
pub struct NewProject<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub repo_path: &'a str,
    pub base_branch: &'a str,
    pub workspace_subdir: &'a str,
    pub workers: &'a [String],
    pub tasks: &'a [TaskSpec],
}

/// A task's attempt that has ended, as stored events show it: the worker's answer, or why
/// there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub project: String,
    pub task_id: String,
    pub injection_id: String,
    pub answer: std::result::Result<String, String>,
}

/// What a stored event that ends an injection says: the agent's answer, or why there is none
/// (a row that does not read ends it all the same, saying so); `None` for other events.
pub(crate) fn answer_of(name: &str, data: &str) -> Option<std::result::Result<String, String>> {
    let body = serde_json::from_str::<serde_json::Value>(data)
        .and_then(|data| serde_json::from_value::<EventBody>(serde_json::json!({"event": name, "data": data})));
    match body {
        Ok(EventBody::Assistant { content }) => Some(Ok(content)),
        Ok(EventBody::AgentError { message }) => Some(Err(message)),
        Ok(EventBody::InjectFailed { error }) => Some(Err(error)),
        Ok(_) => None,
        Err(e) => Some(Err(format!("its answer could not be read: {e}"))),
    }
}

/// Seconds since the Unix epoch of a millisecond clock, as the reference keeps times.
pub(crate) fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

pub(crate) fn parse<T: std::str::FromStr<Err = String>>(col: usize, text: String) -> rusqlite::Result<T> {
    text.parse().map_err(|e: String| rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, e.into()))
}

pub(crate) fn json<T: serde::de::DeserializeOwned>(col: usize, text: String) -> rusqlite::Result<T> {
    serde_json::from_str(&text).map_err(|e| rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, e.into()))
}

const TASK_COLUMNS: &str = "task_id, spec, status, attempts, not_before, fleet, slot, last_fleet, last_slot, injection_id, branch, \
     base_commit, head_commit, result_status, result_raw, last_error, created_at, updated_at";

fn task_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskView> {
    let spec: TaskInput = json(1, r.get(1)?)?;
    let not_before: Option<i64> = r.get(4)?;
    let view = TaskView {
        task_id: r.get(0)?,
        title: spec.title,
        prompt: spec.prompt,
        acceptance_criteria: spec.acceptance_criteria,
        depends_on: spec.depends_on,
        owned_paths: spec.owned_paths,
        expected_touch_paths: spec.expected_touch_paths,
        task_kind: spec.task_kind.unwrap_or(clawfleet_proto::project::TaskKind::Implementation),
        system_generated: spec.system_generated,
        status: parse(2, r.get(2)?)?,
        attempts: r.get(3)?,
        assigned_swarm_id: r.get(5)?,
        assigned_node_id: r.get(6)?,
        last_assigned_swarm_id: r.get(7)?,
        last_assigned_node_id: r.get(8)?,
        assignment_injection_id: r.get(9)?,
        branch: r.get(10)?,
        base_commit: r.get(11)?,
        head_commit: r.get(12)?,
        result_status: r.get(13)?,
        result_raw: r.get(14)?,
        last_error: r.get(15)?,
        retry_at: not_before
            .map(|ms| humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)).to_string()),
        created_at: r.get(16)?,
        updated_at: r.get(17)?,
    };
    Ok(view)
}

/// One project as stored, its tasks in order, with what the rules say of it now.
fn load(c: &Connection, id: &str, now_ms: u64) -> Result<ProjectView> {
    let row = c
        .query_row(
            "SELECT id, title, repo_path, base_branch, workspace_subdir, workers, status, last_error, integration_branch,
                    integration_head_commit, preparation, resume_count, created_at, updated_at, resume_summary, last_resume_at
             FROM projects WHERE id = ?1",
            [id],
            |r| {
                let workers: Vec<String> = json(5, r.get(5)?)?;
                Ok(ProjectView {
                    project_id: r.get(0)?,
                    title: r.get(1)?,
                    repo_label: r.get(2)?,
                    repo_path: r.get(2)?,
                    repo_mode: if r.get::<_, String>(2)?.is_empty() { "none" } else { "local_path" }.to_owned(),
                    base_branch: r.get(3)?,
                    workspace_subdir: r.get(4)?,
                    worker_swarm_ids: workers,
                    status: parse(6, r.get(6)?)?,
                    last_error: r.get(7)?,
                    integration_branch: r.get(8)?,
                    integration_head_commit: r.get(9)?,
                    final_result_branch: r.get(8)?,
                    final_result_head_commit: r.get(9)?,
                    repo_preparation: json(10, r.get(10)?)?,
                    resume_count: r.get(11)?,
                    resume_summary: r.get::<_, Option<String>>(14)?.map(|t| json(14, t)).transpose()?,
                    last_resume_at: r.get(15)?,
                    created_at: r.get(12)?,
                    updated_at: r.get(13)?,
                    task_order: Vec::new(),
                    tasks: Default::default(),
                    task_counts: Default::default(),
                    stuck: Vec::new(),
                })
            },
        )
        .optional()?
        .ok_or_else(|| StoreError::NoProject(id.chars().take(64).collect()))?;
    let mut project = row;
    let mut stmt = c.prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM project_tasks WHERE project = ?1 ORDER BY position"))?;
    let tasks: Vec<TaskView> = stmt.query_map([id], task_row)?.collect::<rusqlite::Result<_>>()?;
    let states: Vec<TaskState> = tasks.iter().map(TaskState::of_view).collect();
    project.task_counts = rules::counts(&states, now_ms);
    project.status = rules::status(project.status, &states, now_ms);
    let errors = |tid: &str| tasks.iter().find(|v| v.task_id == tid).and_then(|v| v.last_error.clone());
    project.stuck = rules::stuck(&states, &errors, now_ms);
    project.task_order = tasks.iter().map(|v| v.task_id.clone()).collect();
    project.tasks = tasks.into_iter().map(|v| (v.task_id.clone(), v)).collect();
    Ok(project)
}

/// Stores a new project in `draft`, with its `project_created` event on its home fleet.
pub(crate) fn insert_project(tx: &Transaction<'_>, p: &NewProject<'_>, now_ms: u64, at: &str, by: &str) -> Result<Event> {
    for fleet in p.workers {
        if tx.query_row("SELECT 1 FROM fleets WHERE name = ?1", [fleet], |_| Ok(())).optional()?.is_none() {
            return Err(StoreError::NoFleet(fleet.clone()));
        }
    }
    let now = secs(now_ms);
    tx.execute(
        "INSERT INTO projects (id, title, repo_path, base_branch, workspace_subdir, workers, status, preparation, created_at,
                               updated_at, by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'draft', '{}', ?7, ?7, ?8)",
        params![p.id, p.title, p.repo_path, p.base_branch, p.workspace_subdir, serde_json::to_string(p.workers).expect("names"), now, by],
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO project_tasks (project, position, task_id, spec, status, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
    )?;
    for (i, t) in p.tasks.iter().enumerate() {
        let spec = serde_json::to_string(&t.to_input()).expect("a task serializes");
        insert.execute(params![p.id, i as i64, t.task_id, spec, now])?;
    }
    let body = EventBody::ProjectCreated { project_id: p.id.to_owned(), title: p.title.to_owned(), tasks: p.tasks.len() as u32 };
    fleet_event(tx, &p.workers[0], at, body)
}

/// The stored status, and the fleet project events go to.
fn head(tx: &Transaction<'_>, id: &str) -> Result<(ProjectStatus, String)> {
    let (status, workers): (String, String) = tx
        .query_row("SELECT status, workers FROM projects WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .ok_or_else(|| StoreError::NoProject(id.chars().take(64).collect()))?;
    let workers: Vec<String> = json(1, workers)?;
    Ok((parse(0, status)?, workers.into_iter().next().unwrap_or_default()))
}

/// Brings the stored status to what the rules say (a running project that completed, or needs
/// attention), with a `project_status` event when it changed.
fn refresh(tx: &Transaction<'_>, id: &str, now_ms: u64, at: &str) -> Result<Option<Event>> {
    let (stored, home) = head(tx, id)?;
    // Most answers change nothing: a running project with tasks left and none failed runs on.
    let (total, completed, failed): (u32, u32, u32) = tx.query_row(
        "SELECT COUNT(*), COALESCE(SUM(status = 'completed'), 0), COALESCE(SUM(status = 'failed'), 0) FROM project_tasks WHERE project = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    if stored == ProjectStatus::Running && failed == 0 && completed < total {
        return Ok(None);
    }
    let now = load(tx, id, now_ms)?.status;
    if now == stored {
        return Ok(None);
    }
    tx.execute("UPDATE projects SET status = ?2, updated_at = ?3 WHERE id = ?1", params![id, now.as_str(), secs(now_ms)])?;
    let body = EventBody::ProjectStatus { project_id: id.to_owned(), status: now, last_error: None };
    Ok(Some(fleet_event(tx, &home, at, body)?))
}

impl Store {
    /// Creates a project in `draft` (a `project_created` event on its home fleet, an audit line).
    pub fn create_project(&self, p: &NewProject<'_>, now_ms: u64, at: &str, audit: &Audit<'_>) -> Result<(ProjectView, Event)> {
        self.tx(|tx| {
            let ev = insert_project(tx, p, now_ms, at, audit.actor)?;
            write_audit(tx, audit)?;
            Ok((load(tx, p.id, now_ms)?, ev))
        })
    }

    /// Every project, oldest first.
    pub fn projects(&self, now_ms: u64) -> Result<Vec<ProjectView>> {
        self.with(|c| {
            let ids: Vec<String> = c
                .prepare_cached("SELECT id FROM projects ORDER BY rowid")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            ids.iter().map(|id| load(c, id, now_ms)).collect()
        })
    }

    /// The projects whose stored status is running, oldest first: those the project loop serves.
    pub fn running_projects(&self, now_ms: u64) -> Result<Vec<ProjectView>> {
        self.with(|c| {
            let ids: Vec<String> = c
                .prepare_cached("SELECT id FROM projects WHERE status = 'running' ORDER BY rowid")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            ids.iter().map(|id| load(c, id, now_ms)).collect()
        })
    }

    /// A project's repository (empty: a project of plain tasks).
    pub fn project_repo(&self, id: &str) -> Result<String> {
        self.with(|c| {
            c.query_row("SELECT repo_path FROM projects WHERE id = ?1", [id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::NoProject(id.chars().take(64).collect()))
        })
    }

    /// One project.
    pub fn project(&self, id: &str, now_ms: u64) -> Result<ProjectView> {
        self.with(|c| load(c, id, now_ms))
    }

    /// Sets a project's status (an operator's start, or what preparing its repository gave), with
    /// a `project_status` event; then brings it to what its tasks say.
    pub fn set_project_status(&self, id: &str, status: ProjectStatus, error: Option<&str>, now_ms: u64, at: &str) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let (_, home) = head(tx, id)?;
            tx.execute(
                "UPDATE projects SET status = ?2, last_error = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, status.as_str(), error, secs(now_ms)],
            )?;
            let body = EventBody::ProjectStatus { project_id: id.to_owned(), status, last_error: error.map(str::to_owned) };
            let mut events = vec![fleet_event(tx, &home, at, body)?];
            events.extend(refresh(tx, id, now_ms, at)?);
            Ok(events)
        })
    }

    /// Records what preparing one worker fleet's repositories gave.
    pub fn set_project_preparation(&self, id: &str, fleet: &str, prepared: &serde_json::Value) -> Result<()> {
        self.tx(|tx| {
            let text: String = tx
                .query_row("SELECT preparation FROM projects WHERE id = ?1", [id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::NoProject(id.to_owned()))?;
            let mut all: serde_json::Map<String, serde_json::Value> = json(0, text)?;
            all.insert(fleet.to_owned(), prepared.clone());
            tx.execute("UPDATE projects SET preparation = ?2 WHERE id = ?1", params![id, serde_json::Value::Object(all).to_string()])?;
            Ok(())
        })
    }

    /// The agents that hold work: a task of any project, a plan, or a queued item dispatched to
    /// them and not yet done.
    pub fn task_holders(&self) -> Result<std::collections::HashSet<(String, u32)>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT fleet, slot FROM project_tasks WHERE status = 'assigned'
                 UNION SELECT planner, slot FROM project_plans WHERE status = 'planning'
                 UNION SELECT fleet, slot FROM queue_items WHERE status = 'dispatched'",
            )?;
            let held = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
            Ok(held)
        })
    }

    /// Assigns a pending task to an agent that holds none, with the injection that carries its
    /// prompt, in one transaction; `None` (nothing written) when the task is no longer pending
    /// or the agent holds a task already. Returns the injection's outbox rows and events.
    pub fn assign_task(
        &self,
        project: &str,
        task_id: &str,
        injection: &NewInjection<'_>,
        branch: &str,
        now_ms: u64,
    ) -> Result<Option<(Vec<i64>, Vec<Event>)>> {
        let [slot] = injection.targets else { panic!("a task goes to one agent") };
        self.tx(|tx| {
            let status: Option<String> = tx
                .query_row("SELECT status FROM project_tasks WHERE project = ?1 AND task_id = ?2", params![project, task_id], |r| r.get(0))
                .optional()?;
            let held = tx.query_row(super::queue::HOLDS, params![injection.fleet, slot], |_| Ok(())).optional()?;
            if status.as_deref() != Some("pending") || held.is_some() {
                return Ok(None);
            }
            let (rows, mut events) = insert_injection(tx, injection)?;
            let attempts: u32 = tx.query_row(
                "UPDATE project_tasks SET status = 'assigned', attempts = attempts + 1, not_before = NULL, fleet = ?3, slot = ?4,
                        last_fleet = ?3, last_slot = ?4, injection_id = ?5, branch = ?6, last_error = NULL, updated_at = ?7
                 WHERE project = ?1 AND task_id = ?2 RETURNING attempts",
                params![project, task_id, injection.fleet, slot, injection.id, branch, secs(now_ms)],
                |r| r.get(0),
            )?;
            let ev = NewEvent {
                at: injection.at.to_owned(),
                fleet: injection.fleet.to_owned(),
                agent: Some(*slot),
                injection_id: Some(injection.id.to_owned()),
                body: EventBody::ProjectTaskAssigned { project_id: project.to_owned(), task_id: task_id.to_owned(), attempt: attempts },
            };
            let id = insert_event(tx, &ev, None)?;
            events.push(ev.stored(id));
            Ok(Some((rows, events)))
        })
    }

    /// The attempts that have ended: each assigned task whose injection has its worker's
    /// answer (`assistant`) or its end without one (`agent_error`, `inject_failed`) stored.
    pub fn ended_attempts(&self) -> Result<Vec<Ended>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT t.project, t.task_id, t.injection_id, e.event, e.data FROM project_tasks t
                 JOIN events e ON e.injection_id = t.injection_id AND e.fleet = t.fleet AND e.agent = t.slot
                 WHERE t.status = 'assigned' AND e.event IN ('assistant', 'agent_error', 'inject_failed')
                 ORDER BY e.id",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut out: Vec<Ended> = Vec::new();
            for (project, task_id, injection_id, name, data) in rows {
                if out.iter().any(|e| e.injection_id == injection_id) {
                    continue;
                }
                let Some(answer) = answer_of(&name, &data) else { continue };
                out.push(Ended { project, task_id, injection_id, answer });
            }
            Ok(out)
        })
    }

    /// Takes an attempt's end, once: judged with `core::project` only while `injection_id` is
    /// still the task's. Returns its events (`project_task_result`, and the project's status
    /// when that changed).
    pub fn end_attempt(&self, ended: &Ended, now_ms: u64, at: &str) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let current: Option<(String, u32, Option<String>, Option<u32>)> = tx
                .query_row(
                    "SELECT status, attempts, fleet, slot FROM project_tasks WHERE project = ?1 AND task_id = ?2 AND injection_id = ?3",
                    params![ended.project, ended.task_id, ended.injection_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((status, attempts, Some(fleet), slot)) = current.filter(|c| c.0 == "assigned") else { return Ok(Vec::new()) };
            let outcome = match &ended.answer {
                Ok(answer) => rules::judge(answer, attempts),
                Err(reason) => rules::attempt_failed(reason, attempts),
            };
            let _ = status;
            let raw = ended.answer.as_ref().ok().map(|a| a.chars().take(64 * 1024).collect::<String>());
            apply(tx, &ended.project, &ended.task_id, &outcome, raw.as_deref(), now_ms)?;
            let mut events = vec![task_event(tx, &ended.project, &ended.task_id, &fleet, slot, Some(&ended.injection_id), &outcome, at)?];
            events.extend(refresh(tx, &ended.project, now_ms, at)?);
            Ok(events)
        })
    }

    /// Stores a resume: each task's change, made only if the task is still as the rules saw
    /// it (else nothing is written and the resume is refused, naming the task); the worker
    /// fleets replaced if `workers` names others; the project completed if every task is,
    /// else `starting` (its workers' clones are prepared again) or, with no repository,
    /// `running`; with a `project_resumed` event and an audit line.
    #[allow(clippy::too_many_arguments)]
    pub fn resume_project(
        &self,
        id: &str,
        changes: &[Change],
        workers: Option<&[String]>,
        summary: &ResumeSummary,
        now_ms: u64,
        at: &str,
        audit: &Audit<'_>,
    ) -> Result<(ProjectView, Vec<Event>)> {
        self.tx(|tx| {
            let (stored, _) = head(tx, id)?;
            if stored == ProjectStatus::Completed {
                return Err(StoreError::ProjectCompleted(id.to_owned()));
            }
            let before = load(tx, id, now_ms)?;
            let now = secs(now_ms);
            for c in changes {
                let Some(task_id) = before.task_order.get(c.index) else { return Err(StoreError::ProjectChanged(format!("#{}", c.index))) };
                let changed = match (c.after, c.decision) {
                    (TaskStatus::Completed, ResumeDecision::KeptCompleted) => tx.execute(
                        "UPDATE project_tasks SET updated_at = updated_at WHERE project = ?1 AND task_id = ?2 AND status = ?3",
                        params![id, task_id, c.before.as_str()],
                    )?,
                    (TaskStatus::Completed, _) => tx.execute(
                        "UPDATE project_tasks SET status = 'completed', fleet = NULL, slot = NULL, injection_id = NULL, not_before = NULL,
                                result_status = COALESCE(result_status, 'recovered_from_branch'), head_commit = COALESCE(head_commit, ?4),
                                last_error = NULL, updated_at = ?5
                         WHERE project = ?1 AND task_id = ?2 AND status = ?3",
                        params![id, task_id, c.before.as_str(), c.tip, now],
                    )?,
                    _ => tx.execute(
                        "UPDATE project_tasks SET status = ?4, fleet = NULL, slot = NULL, injection_id = NULL, not_before = NULL,
                                last_error = CASE WHEN ?5 THEN NULL ELSE last_error END, updated_at = ?6
                         WHERE project = ?1 AND task_id = ?2 AND status = ?3",
                        params![id, task_id, c.before.as_str(), c.after.as_str(), c.decision == ResumeDecision::RetriedFailed, now],
                    )?,
                };
                if changed == 0 {
                    return Err(StoreError::ProjectChanged(task_id.clone()));
                }
            }
            let workers = match workers {
                Some(list) => {
                    for fleet in list {
                        if tx.query_row("SELECT 1 FROM fleets WHERE name = ?1", [fleet], |_| Ok(())).optional()?.is_none() {
                            return Err(StoreError::NoFleet(fleet.clone()));
                        }
                    }
                    list.to_vec()
                }
                None => before.worker_swarm_ids.clone(),
            };
            // The project's result is its integration task's branch, while that task is completed.
            let integration = before.tasks.values().find(|t| t.task_kind == TaskKind::Integration).map(|t| t.task_id.clone());
            let integrated = match &integration {
                Some(tid) => tx.query_row(
                    "SELECT status = 'completed', branch, head_commit FROM project_tasks WHERE project = ?1 AND task_id = ?2",
                    params![id, tid],
                    |r| {
                        Ok(if r.get::<_, bool>(0)? {
                            (r.get::<_, Option<String>>(1)?, r.get::<_, Option<String>>(2)?)
                        } else {
                            (None, None)
                        })
                    },
                )?,
                None => (None, None),
            };
            let (total, completed): (u32, u32) =
                tx.query_row("SELECT COUNT(*), COALESCE(SUM(status = 'completed'), 0) FROM project_tasks WHERE project = ?1", [id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let status = if total > 0 && completed == total {
                ProjectStatus::Completed
            } else if before.repo_path.is_empty() {
                ProjectStatus::Running
            } else {
                ProjectStatus::Starting
            };
            tx.execute(
                "UPDATE projects SET status = ?2, workers = ?3, resume_count = resume_count + 1, resume_summary = ?4, last_resume_at = ?5,
                        last_error = NULL, integration_branch = ?6, integration_head_commit = ?7, updated_at = ?5
                 WHERE id = ?1",
                params![
                    id,
                    status.as_str(),
                    serde_json::to_string(&workers).expect("names"),
                    serde_json::to_string(summary).expect("a summary serializes"),
                    now,
                    integrated.0,
                    integrated.1
                ],
            )?;
            write_audit(tx, audit)?;
            let home = workers.first().cloned().unwrap_or_default();
            let body = EventBody::ProjectResumed { project_id: id.to_owned(), status, resume_summary: *summary };
            let events = vec![fleet_event(tx, &home, at, body)?];
            Ok((load(tx, id, now_ms)?, events))
        })
    }

    /// Gives back the task a lost agent holds: pending again after a backoff, or failed after
    /// its last attempt. Its injection is no longer the task's, so a late answer is not taken.
    pub fn give_back_task(&self, fleet: &str, slot: u32, now_ms: u64, at: &str) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let held: Option<(String, String, u32, Option<String>)> = tx
                .query_row(
                    "SELECT project, task_id, attempts, injection_id FROM project_tasks WHERE fleet = ?1 AND slot = ?2 AND status = 'assigned'",
                    params![fleet, slot],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((project, task_id, attempts, injection)) = held else { return Ok(Vec::new()) };
            let (status, retry_in) = rules::worker_lost(attempts);
            let outcome = Outcome {
                status,
                result_status: "worker_lost".to_owned(),
                last_error: Some(format!("agent {fleet}/{slot} was lost during attempt {attempts}")),
                branch: None,
                base_commit: None,
                head_commit: None,
                retry_in,
            };
            apply(tx, &project, &task_id, &outcome, None, now_ms)?;
            let mut events = vec![task_event(tx, &project, &task_id, fleet, Some(slot), injection.as_deref(), &outcome, at)?];
            events.extend(refresh(tx, &project, now_ms, at)?);
            Ok(events)
        })
    }
}

fn apply(tx: &Transaction<'_>, project: &str, task_id: &str, o: &Outcome, raw: Option<&str>, now_ms: u64) -> Result<()> {
    let not_before = o.retry_in.map(|d| (now_ms + d.as_millis() as u64) as i64);
    tx.execute(
        "UPDATE project_tasks SET status = ?3, not_before = ?4, fleet = NULL, slot = NULL, injection_id = NULL,
                branch = COALESCE(?5, branch), base_commit = COALESCE(?6, base_commit), head_commit = COALESCE(?7, head_commit),
                result_status = ?8, result_raw = COALESCE(?9, result_raw), last_error = ?10, updated_at = ?11
         WHERE project = ?1 AND task_id = ?2",
        params![
            project,
            task_id,
            o.status.as_str(),
            not_before,
            o.branch,
            o.base_commit,
            o.head_commit,
            o.result_status,
            raw,
            o.last_error,
            secs(now_ms)
        ],
    )?;
    // A completed integration task's branch is the project's result.
    if o.status == TaskStatus::Completed {
        let spec: String =
            tx.query_row("SELECT spec FROM project_tasks WHERE project = ?1 AND task_id = ?2", params![project, task_id], |r| r.get(0))?;
        let spec: TaskInput = json(0, spec)?;
        if spec.task_kind == Some(clawfleet_proto::project::TaskKind::Integration) {
            tx.execute(
                "UPDATE projects SET integration_branch = (SELECT branch FROM project_tasks WHERE project = ?1 AND task_id = ?2),
                        integration_head_commit = ?3 WHERE id = ?1",
                params![project, task_id, o.head_commit],
            )?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn task_event(
    tx: &Transaction<'_>,
    project: &str,
    task_id: &str,
    fleet: &str,
    slot: Option<u32>,
    injection: Option<&str>,
    o: &Outcome,
    at: &str,
) -> Result<Event> {
    let ev = NewEvent {
        at: at.to_owned(),
        fleet: fleet.to_owned(),
        agent: slot,
        injection_id: injection.map(str::to_owned),
        body: EventBody::ProjectTaskResult {
            project_id: project.to_owned(),
            task_id: task_id.to_owned(),
            status: o.status,
            result_status: o.result_status.clone(),
            error: o.last_error.clone(),
        },
    };
    let id = insert_event(tx, &ev, None)?;
    Ok(ev.stored(id))
}

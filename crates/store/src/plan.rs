//! Plans (codeswarm's `project_plan`), stored: a planner agent's task, whose answer becomes a
//! project. A plan is given to an agent in the transaction that creates its injection (an
//! agent that holds a task or a plan gets no other), and its answer is taken once, only while
//! its injection is still the plan's; the project it becomes is stored in that transaction.

use clawfleet_proto::event::EventBody;
use clawfleet_proto::project::{PlanStatus, PlanView};
use rusqlite::{Connection, OptionalExtension, params};

use super::project::{NewProject, answer_of, insert_project, json, parse, secs};
use super::{Audit, Event, NewEvent, NewInjection, Result, Store, StoreError, fleet_event, insert_event, insert_injection, write_audit};

/// A plan to queue.
#[derive(Debug, Clone)]
pub struct NewPlan<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub repo_path: &'a str,
    pub base_branch: &'a str,
    pub workspace_subdir: &'a str,
    pub spec: &'a str,
    pub planner: &'a str,
    pub workers: &'a [String],
    pub auto_start: bool,
}

/// What a plan's project is made of, as stored with it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRow {
    pub view: PlanView,
    pub spec: String,
    pub base_branch: String,
    pub workspace_subdir: String,
    pub auto_start: bool,
}

/// A plan whose planner has answered (or failed to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEnded {
    pub plan_id: String,
    pub injection_id: String,
    pub answer: std::result::Result<String, String>,
}

const COLUMNS: &str = "id, title, repo_path, planner, slot, workers, status, attempts, injection_id, project_id, last_error, created_at, \
                       updated_at, spec, base_branch, workspace_subdir, auto_start";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PlanRow> {
    Ok(PlanRow {
        view: PlanView {
            plan_id: r.get(0)?,
            title: r.get(1)?,
            repo_path: r.get(2)?,
            planner_swarm_id: r.get(3)?,
            planner_node_id: r.get(4)?,
            worker_swarm_ids: json(5, r.get(5)?)?,
            status: parse(6, r.get(6)?)?,
            attempts: r.get(7)?,
            injection_id: r.get(8)?,
            project_id: r.get(9)?,
            last_error: r.get(10)?,
            created_at: r.get(11)?,
            updated_at: r.get(12)?,
        },
        spec: r.get(13)?,
        base_branch: r.get(14)?,
        workspace_subdir: r.get(15)?,
        auto_start: r.get(16)?,
    })
}

fn one(c: &Connection, id: &str) -> Result<PlanRow> {
    c.query_row(&format!("SELECT {COLUMNS} FROM project_plans WHERE id = ?1"), [id], row)
        .optional()?
        .ok_or_else(|| StoreError::NoPlan(id.chars().take(64).collect()))
}

impl Store {
    /// Queues a plan (a `project_plan_queued` event on its planner fleet, an audit line).
    pub fn create_plan(&self, p: &NewPlan<'_>, now_ms: u64, at: &str, audit: &Audit<'_>) -> Result<(PlanView, Event)> {
        self.tx(|tx| {
            for fleet in std::iter::once(&p.planner.to_owned()).chain(p.workers) {
                if tx.query_row("SELECT 1 FROM fleets WHERE name = ?1", [fleet], |_| Ok(())).optional()?.is_none() {
                    return Err(StoreError::NoFleet(fleet.clone()));
                }
            }
            tx.execute(
                "INSERT INTO project_plans (id, title, repo_path, base_branch, workspace_subdir, spec, planner, workers, auto_start, status,
                                            created_at, updated_at, by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued', ?10, ?10, ?11)",
                params![
                    p.id,
                    p.title,
                    p.repo_path,
                    p.base_branch,
                    p.workspace_subdir,
                    p.spec,
                    p.planner,
                    serde_json::to_string(p.workers).expect("names"),
                    p.auto_start,
                    secs(now_ms),
                    audit.actor
                ],
            )?;
            write_audit(tx, audit)?;
            let ev = fleet_event(tx, p.planner, at, EventBody::PlanQueued { plan_id: p.id.to_owned(), title: p.title.to_owned() })?;
            Ok((one(tx, p.id)?.view, ev))
        })
    }

    /// Every plan, newest first.
    pub fn plans(&self) -> Result<Vec<PlanView>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!("SELECT {COLUMNS} FROM project_plans ORDER BY rowid DESC LIMIT 100"))?;
            let rows = stmt.query_map([], row)?.map(|r| r.map(|r| r.view)).collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    /// One plan, with what its project is made of.
    pub fn plan(&self, id: &str) -> Result<PlanRow> {
        self.with(|c| one(c, id))
    }

    /// The plans waiting for a planner agent, oldest first.
    pub fn queued_plans(&self) -> Result<Vec<PlanRow>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!("SELECT {COLUMNS} FROM project_plans WHERE status = 'queued' ORDER BY rowid"))?;
            let rows = stmt.query_map([], row)?.collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    /// Gives a queued plan to an agent that holds no task and no plan, with the injection that
    /// carries the planner's prompt; `None` (nothing written) when either has moved on.
    pub fn assign_plan(&self, plan: &str, injection: &NewInjection<'_>, now_ms: u64) -> Result<Option<(Vec<i64>, Vec<Event>)>> {
        let [slot] = injection.targets else { panic!("a plan goes to one agent") };
        self.tx(|tx| {
            let status: Option<String> = tx.query_row("SELECT status FROM project_plans WHERE id = ?1", [plan], |r| r.get(0)).optional()?;
            let held = tx.query_row(super::queue::HOLDS, params![injection.fleet, slot], |_| Ok(())).optional()?;
            if status.as_deref() != Some("queued") || held.is_some() {
                return Ok(None);
            }
            let (rows, mut events) = insert_injection(tx, injection)?;
            tx.execute(
                "UPDATE project_plans SET status = 'planning', slot = ?2, injection_id = ?3, attempts = attempts + 1, last_error = NULL,
                        updated_at = ?4 WHERE id = ?1",
                params![plan, slot, injection.id, secs(now_ms)],
            )?;
            let ev = NewEvent {
                at: injection.at.to_owned(),
                fleet: injection.fleet.to_owned(),
                agent: Some(*slot),
                injection_id: Some(injection.id.to_owned()),
                body: EventBody::PlanStarted { plan_id: plan.to_owned() },
            };
            let id = insert_event(tx, &ev, None)?;
            events.push(ev.stored(id));
            Ok(Some((rows, events)))
        })
    }

    /// The plans whose planner's answer (or failure) is stored.
    pub fn ended_plans(&self) -> Result<Vec<PlanEnded>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT p.id, p.injection_id, e.event, e.data FROM project_plans p
                 JOIN events e ON e.injection_id = p.injection_id AND e.fleet = p.planner AND e.agent = p.slot
                 WHERE p.status = 'planning' AND e.event IN ('assistant', 'agent_error', 'inject_failed')
                 ORDER BY e.id",
            )?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut out: Vec<PlanEnded> = Vec::new();
            for (plan_id, injection_id, name, data) in rows {
                if out.iter().any(|e| e.injection_id == injection_id) {
                    continue;
                }
                let Some(answer) = answer_of(&name, &data) else { continue };
                out.push(PlanEnded { plan_id, injection_id, answer });
            }
            Ok(out)
        })
    }

    /// The planner's answer was a valid graph: the project is stored, the plan completed, in
    /// one transaction, once (nothing when the plan is no longer waiting on `injection_id`).
    pub fn complete_plan(&self, ended: &PlanEnded, project: &NewProject<'_>, now_ms: u64, at: &str) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let current: Option<(String, Option<String>, String)> = tx
                .query_row("SELECT status, injection_id, planner FROM project_plans WHERE id = ?1", [&ended.plan_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            let Some((_, _, planner)) = current.filter(|c| c.0 == "planning" && c.1.as_deref() == Some(&ended.injection_id)) else {
                return Ok(Vec::new());
            };
            let by: String = tx.query_row("SELECT by FROM project_plans WHERE id = ?1", [&ended.plan_id], |r| r.get(0))?;
            let created = insert_project(tx, project, now_ms, at, &by)?;
            tx.execute(
                "UPDATE project_plans SET status = 'completed', project_id = ?2, slot = NULL, injection_id = NULL, updated_at = ?3 WHERE id = ?1",
                params![ended.plan_id, project.id, secs(now_ms)],
            )?;
            let done = EventBody::PlanCompleted { plan_id: ended.plan_id.clone(), project_id: project.id.to_owned() };
            Ok(vec![created, fleet_event(tx, &planner, at, done)?])
        })
    }

    /// The planner's answer was no valid graph (or none came): the plan fails with the reason,
    /// once. It can be retried.
    pub fn fail_plan(&self, ended: &PlanEnded, reason: &str, now_ms: u64, at: &str) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let planner: Option<String> = tx
                .query_row(
                    "SELECT planner FROM project_plans WHERE id = ?1 AND status = 'planning' AND injection_id = ?2",
                    params![ended.plan_id, ended.injection_id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(planner) = planner else { return Ok(Vec::new()) };
            let reason: String = reason.chars().take(500).collect();
            tx.execute(
                "UPDATE project_plans SET status = 'failed', last_error = ?2, slot = NULL, injection_id = NULL, updated_at = ?3 WHERE id = ?1",
                params![ended.plan_id, reason, secs(now_ms)],
            )?;
            Ok(vec![fleet_event(tx, &planner, at, EventBody::PlanFailed { plan_id: ended.plan_id.clone(), reason })?])
        })
    }

    /// Queues a failed plan again (a `project_plan_queued` event).
    pub fn retry_plan(&self, id: &str, now_ms: u64, at: &str, audit: &Audit<'_>) -> Result<(PlanView, Event)> {
        self.tx(|tx| {
            let p = one(tx, id)?;
            if p.view.status != PlanStatus::Failed {
                return Err(StoreError::PlanNotFailed(id.to_owned(), p.view.status));
            }
            tx.execute("UPDATE project_plans SET status = 'queued', updated_at = ?2 WHERE id = ?1", params![id, secs(now_ms)])?;
            write_audit(tx, audit)?;
            let ev = fleet_event(tx, &p.view.planner_swarm_id, at, EventBody::PlanQueued { plan_id: id.to_owned(), title: p.view.title })?;
            Ok((one(tx, id)?.view, ev))
        })
    }

    /// A lost planner's plan goes back to the queue.
    pub fn give_back_plan(&self, fleet: &str, slot: u32, now_ms: u64, at: &str) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let held: Option<(String, String)> = tx
                .query_row(
                    "SELECT id, title FROM project_plans WHERE planner = ?1 AND slot = ?2 AND status = 'planning'",
                    params![fleet, slot],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((id, title)) = held else { return Ok(Vec::new()) };
            tx.execute(
                "UPDATE project_plans SET status = 'queued', slot = NULL, injection_id = NULL,
                        last_error = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, format!("its planner {fleet}/{slot} was lost; it is queued again"), secs(now_ms)],
            )?;
            Ok(vec![fleet_event(tx, fleet, at, EventBody::PlanQueued { plan_id: id, title })?])
        })
    }
}

//! Orchestrated projects over the API: create one from a task graph, list them, see one, start
//! one. A project's caller must be allowed to inject every worker fleet to create or start it
//! (its tasks are injections), and to read every worker fleet to see it; a code project, whose
//! repository the control plane reads from its own machine, needs a token that may launch
//! fleets anywhere. The loop that runs
//! projects is `crate::project`.

use std::path::Path;

use clawfleet_core::project as rules;
use clawfleet_proto::project::{
    BlockingSwarm, MAX_TITLE_CHARS, PlanCreate, PlanList, PlanView, ProjectCreate, ProjectList, ProjectStatus, ProjectView, ResumePreview,
    ResumeRequest, TaskChange,
};

use super::*;
use crate::project::{git, now_ms};

/// At most this many worker fleets in a project.
const MAX_WORKER_FLEETS: usize = 8;

/// Whether `name` is a plain branch or directory name: `a-z A-Z 0-9 . _ - /`, no `..`, not
/// starting with `-` or `/`.
fn plain(name: &str, slash: bool) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with(['-', '/', '.'])
        && !name.contains("..")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (slash && c == '/'))
}

fn may_all(app: &App, caller: &Caller, action: Action, fleets: &[String]) -> Result<(), ApiError> {
    fleets.iter().try_for_each(|f| caller.may(app, action, Target::Fleet(f)))
}

/// Worker fleets, checked: at most [`MAX_WORKER_FLEETS`], each one the caller may inject and
/// an active fleet.
async fn check_workers(app: &App, caller: &Caller, workers: &[String]) -> Result<(), ApiError> {
    if workers.len() > MAX_WORKER_FLEETS {
        return Err(ApiError::bad_request(format!("a project has at most {MAX_WORKER_FLEETS} worker fleets")));
    }
    may_all(app, caller, Action::Inject, workers)?;
    let rows = app.db.run(|s| s.fleets()).await?;
    let unknown: Vec<String> = workers
        .iter()
        .filter(|w| !rows.iter().any(|r| &r.name == *w && r.state == FleetState::Active))
        .take(8)
        .map(|u| u.chars().take(64).collect())
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::bad_request(format!("unknown worker_swarm_ids: {}", unknown.join(", "))));
    }
    Ok(())
}

/// A project's settings, checked: title, worker fleets (each one the caller may inject), base
/// branch, workspace directory and repository (none: plain tasks).
struct Settings {
    title: String,
    workers: Vec<String>,
    base: String,
    subdir: String,
    repo_path: String,
}

async fn settings(
    app: &App,
    caller: &Caller,
    title: &str,
    worker_swarm_ids: &[String],
    base_branch: Option<&str>,
    workspace_subdir: Option<&str>,
    repo_path: &str,
) -> Result<Settings, ApiError> {
    let title = title.trim().to_owned();
    if title.is_empty() {
        return Err(ApiError::bad_request("project requires title"));
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(ApiError::bad_request(format!("a project's title has at most {MAX_TITLE_CHARS} characters")));
    }
    let mut workers: Vec<String> = Vec::new();
    for w in worker_swarm_ids {
        if !workers.contains(w) {
            workers.push(w.clone());
        }
    }
    if workers.is_empty() {
        return Err(ApiError::bad_request("project requires worker_swarm_ids"));
    }
    check_workers(app, caller, &workers).await?;
    let base = base_branch.filter(|b| !b.is_empty()).unwrap_or("main").to_owned();
    if !plain(&base, true) {
        return Err(ApiError::bad_request(format!(
            "base_branch '{}' is not a plain branch name",
            base.chars().take(64).collect::<String>()
        )));
    }
    let subdir = workspace_subdir.filter(|s| !s.is_empty()).unwrap_or("repo").to_owned();
    if !plain(&subdir, false) {
        return Err(ApiError::bad_request("workspace_subdir must be one plain directory name, such as repo"));
    }
    // No repository: a project of plain tasks (no clones, no branches, no integration task).
    let repo_path = if repo_path.trim().is_empty() {
        String::new()
    } else {
        // The control plane reads the repository from its own machine and hands it to agents:
        // only a token that may launch fleets anywhere names one.
        caller.may(app, Action::Launch, Target::All)?;
        let repo = Path::new(repo_path.trim());
        if !repo.is_absolute() {
            return Err(ApiError::bad_request("repo_path must be an absolute path"));
        }
        let repo = repo.canonicalize().map_err(|e| ApiError::bad_request(format!("repo_path {}: {e}", repo.display())))?;
        let (r, b) = (repo.clone(), base.clone());
        tokio::task::spawn_blocking(move || git::check_repo(&r, &b))
            .await
            .map_err(|e| ApiError::internal("checking the repository", e))?
            .map_err(ApiError::bad_request)?;
        repo.display().to_string()
    };
    Ok(Settings { title, workers, base, subdir, repo_path })
}

/// Creates a project in `draft` (started at once with `auto_start`).
pub(super) async fn create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<ProjectCreate>,
) -> Result<(StatusCode, Json<ProjectView>), ApiError> {
    let Settings { title, workers, base, subdir, repo_path } = settings(
        &app,
        &caller,
        &req.title,
        &req.worker_swarm_ids,
        req.base_branch.as_deref(),
        req.workspace_subdir.as_deref(),
        &req.repo_path,
    )
    .await?;
    let id = uuid::Uuid::new_v4().to_string();
    let tasks = rules::normalize(req.tasks).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let tasks = if repo_path.is_empty() { tasks } else { rules::with_integration(tasks, &id, &base) };
    let actor = caller.0.audit_name();
    let (pid, t) = (id.clone(), title.clone());
    let (view, _) = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let p = clawfleet_store::NewProject {
                id: &pid,
                title: &t,
                repo_path: &repo_path,
                base_branch: &base,
                workspace_subdir: &subdir,
                workers: &workers,
                tasks: &tasks,
            };
            let detail = format!("project={pid} tasks={}", tasks.len());
            let (view, event) = s.create_project(&p, now_ms(), &at, &audit(&at, &actor, "project-create", &workers[0], detail))?;
            Ok((view, vec![event]))
        })
        .await?;
    let view = if req.auto_start { begin(&app, view).await? } else { view };
    Ok((StatusCode::CREATED, Json(view)))
}

/// Queues a plan: an idle agent of the planner fleet turns its spec into the project's task
/// graph (who may inject the planner and every worker fleet may).
pub(super) async fn plan(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<PlanCreate>,
) -> Result<(StatusCode, Json<PlanView>), ApiError> {
    if req.spec.trim().is_empty() {
        return Err(ApiError::bad_request("project_plan requires a spec"));
    }
    spec::check_prompt("spec", &req.spec)?;
    caller.may(&app, Action::Inject, Target::Fleet(&req.planner_swarm_id))?;
    let planner = req.planner_swarm_id.clone();
    if app.db.run(move |s| s.fleet(&planner)).await?.is_none_or(|r| r.state != FleetState::Active) {
        return Err(ApiError::bad_request("unknown planner_swarm_id"));
    }
    let Settings { title, workers, base, subdir, repo_path } = settings(
        &app,
        &caller,
        &req.title,
        &req.worker_swarm_ids,
        req.base_branch.as_deref(),
        req.workspace_subdir.as_deref(),
        &req.repo_path,
    )
    .await?;
    let id = uuid::Uuid::new_v4().to_string();
    let actor = caller.0.audit_name();
    let (view, _) = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let p = clawfleet_store::NewPlan {
                id: &id,
                title: &title,
                repo_path: &repo_path,
                base_branch: &base,
                workspace_subdir: &subdir,
                spec: &req.spec,
                planner: &req.planner_swarm_id,
                workers: &workers,
                auto_start: req.auto_start,
            };
            let detail = format!("plan={id} planner={}", req.planner_swarm_id);
            let (view, event) = s.create_plan(&p, now_ms(), &at, &audit(&at, &actor, "project-plan", &req.planner_swarm_id, detail))?;
            Ok((view, vec![event]))
        })
        .await?;
    app.projects_due.notify_one();
    Ok((StatusCode::CREATED, Json(view)))
}

fn may_see_plan(app: &App, caller: &Caller, p: &PlanView, action: Action) -> Result<(), ApiError> {
    caller.may(app, action, Target::Fleet(&p.planner_swarm_id))?;
    may_all(app, caller, action, &p.worker_swarm_ids)
}

/// Every plan the caller may read, newest first.
pub(super) async fn plans(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Result<Json<PlanList>, ApiError> {
    let plans = app.db.run(|s| s.plans()).await?;
    Ok(Json(PlanList { plans: plans.into_iter().filter(|p| may_see_plan(&app, &caller, p, Action::Read).is_ok()).collect() }))
}

/// One plan.
pub(super) async fn plan_one(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> Result<Json<PlanView>, ApiError> {
    let p = app.db.run(move |s| s.plan(&id)).await?.view;
    may_see_plan(&app, &caller, &p, Action::Read)?;
    Ok(Json(p))
}

/// Queues a failed plan again.
pub(super) async fn plan_retry(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> Result<Json<PlanView>, ApiError> {
    let i = id.clone();
    let p = app.db.run(move |s| s.plan(&i)).await?.view;
    may_see_plan(&app, &caller, &p, Action::Inject)?;
    let actor = caller.0.audit_name();
    let (view, _) = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let (view, event) =
                s.retry_plan(&id, now_ms(), &at, &audit(&at, &actor, "project-plan-retry", &p.planner_swarm_id, format!("plan={id}")))?;
            Ok((view, vec![event]))
        })
        .await?;
    app.projects_due.notify_one();
    Ok(Json(view))
}

/// Every project whose worker fleets the caller may all read.
pub(super) async fn list(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Result<Json<ProjectList>, ApiError> {
    let projects = app.db.run(|s| s.projects(now_ms())).await?;
    let projects = projects
        .into_iter()
        .filter(|p| may_all(&app, &caller, Action::Read, &p.worker_swarm_ids).is_ok())
        .map(|p| (p.project_id.clone(), p))
        .collect();
    Ok(Json(ProjectList { projects }))
}

async fn readable(app: &App, caller: &Caller, id: String, action: Action) -> Result<ProjectView, ApiError> {
    let p = app.db.run(move |s| s.project(&id, now_ms())).await?;
    may_all(app, caller, action, &p.worker_swarm_ids)?;
    Ok(p)
}

/// One project.
pub(super) async fn get_one(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> Result<Json<ProjectView>, ApiError> {
    Ok(Json(readable(&app, &caller, id, Action::Read).await?))
}

/// Starts a project: `starting` while its workers' clones are prepared, then `running`. A
/// running project is left as it is.
pub(super) async fn start(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> Result<(StatusCode, Json<ProjectView>), ApiError> {
    let p = readable(&app, &caller, id, Action::Inject).await?;
    match p.status {
        ProjectStatus::Running => Ok((StatusCode::OK, Json(p))),
        ProjectStatus::Starting | ProjectStatus::Resuming => {
            Err(ApiError::conflict(format!("project {} is {} already", p.project_id, p.status)))
        }
        ProjectStatus::Completed => Err(ApiError::conflict(format!("project {} is completed", p.project_id))),
        _ => Ok((StatusCode::ACCEPTED, Json(begin(&app, p).await?))),
    }
}

/// The worker fleets a resume names, checked as the reference checks them (none: the
/// project's own), each one the caller may inject.
async fn resume_workers(app: &App, caller: &Caller, p: &ProjectView, req: &ResumeRequest) -> Result<Vec<String>, ApiError> {
    let Some(list) = &req.worker_swarm_ids else { return Ok(p.worker_swarm_ids.clone()) };
    if list.is_empty() {
        return Err(ApiError::bad_request("project_resume requires at least one worker_swarm_id when overriding workers"));
    }
    let mut workers: Vec<String> = Vec::new();
    for w in list.iter().map(|w| w.trim()).filter(|w| !w.is_empty()) {
        if !workers.iter().any(|x| x == w) {
            workers.push(w.to_owned());
        }
    }
    if workers.is_empty() {
        return Err(ApiError::bad_request("project_resume requires at least one valid worker_swarm_id"));
    }
    check_workers(app, caller, &workers).await?;
    Ok(workers)
}

/// What a resume would do, and why it cannot be done now if it cannot.
async fn assess(
    app: &App,
    caller: &Caller,
    id: String,
    req: &ResumeRequest,
) -> Result<(ProjectView, Vec<String>, crate::project::Assessment, Option<&'static str>), ApiError> {
    let p = readable(app, caller, id, Action::Inject).await?;
    let workers = resume_workers(app, caller, &p, req).await?;
    let opts = rules::ResumeOptions { retry_failed: req.retry_failed, reverify_completed: req.reverify_completed };
    let a = if p.status == ProjectStatus::Completed {
        crate::project::Assessment { blocking: Vec::new(), tasks: Vec::new(), changes: Vec::new() }
    } else {
        crate::project::assess(app, &p, opts).await?
    };
    let blocked = rules::resume_blocked(p.status, !a.blocking.is_empty(), workers.len());
    Ok((p, workers, a, blocked))
}

/// Resumes a project (codeswarm's `project_resume`): tasks whose workers are gone go back to
/// pending or, if their branches show the work, are completed; completed tasks are checked
/// against their branches; failed ones are tried again if asked; the worker fleets are
/// replaced if the request names others. Refused, with nothing changed, while a task is with a
/// live worker, or once the project is completed.
pub(super) async fn resume(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
    JsonBody(req): JsonBody<ResumeRequest>,
) -> Result<Json<ProjectView>, ApiError> {
    let (p, workers, a, blocked) = assess(&app, &caller, id, &req).await?;
    if let Some(reason) = blocked {
        return Err(ApiError::conflict(reason));
    }
    // Its workers' clones are being prepared: a second preparation would race the first.
    if p.status == ProjectStatus::Starting {
        return Err(ApiError::conflict(format!("project {} is starting: resume it once it has started", p.project_id)));
    }
    let summary = rules::resume_summary(&a.changes);
    let actor = caller.0.audit_name();
    let override_workers = req.worker_swarm_ids.is_some().then_some(workers);
    let pid = p.project_id.clone();
    let (view, _) = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let detail = format!("project={pid} retry_failed={} reverify_completed={}", req.retry_failed, req.reverify_completed);
            let home = override_workers.as_ref().unwrap_or(&p.worker_swarm_ids)[0].clone();
            let audit = audit(&at, &actor, "project-resume", &home, detail);
            s.resume_project(&pid, &a.changes, override_workers.as_deref(), &summary, now_ms(), &at, &audit)
        })
        .await?;
    if view.status == ProjectStatus::Starting {
        tokio::spawn(crate::project::start(app.clone(), view.clone()));
    }
    app.projects_due.notify_one();
    Ok(Json(view))
}

/// What a resume would do, nothing changed (codeswarm's `project_resume_preview`). Like the
/// reference's, it may bring a gone worker's task branch into the project's repository.
pub(super) async fn resume_preview(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
    JsonBody(req): JsonBody<ResumeRequest>,
) -> Result<Json<ResumePreview>, ApiError> {
    let (p, workers, a, blocked) = assess(&app, &caller, id, &req).await?;
    let now = now_ms();
    let after = rules::resumed(&a.tasks, &a.changes);
    let status = match blocked {
        Some(_) => p.status,
        None => rules::status(ProjectStatus::Running, &after, now),
    };
    let mut blocking_swarms: Vec<BlockingSwarm> = Vec::new();
    for b in &a.blocking {
        if !blocking_swarms.iter().any(|s| s.swarm_id == b.swarm_id) {
            blocking_swarms.push(BlockingSwarm {
                swarm_id: b.swarm_id.clone(),
                swarm_alias: b.swarm_alias.clone(),
                swarm_status: b.swarm_status.clone(),
            });
        }
    }
    let mut changed_task_ids: Vec<String> =
        a.changes.iter().filter(|c| c.before != c.after).map(|c| a.tasks[c.index].spec.task_id.clone()).collect();
    changed_task_ids.sort();
    let task_changes = a
        .changes
        .iter()
        .map(|c| {
            let t = &p.tasks[&a.tasks[c.index].spec.task_id];
            TaskChange {
                task_id: t.task_id.clone(),
                title: t.title.clone(),
                before_status: c.before,
                after_status: c.after,
                resume_decision: Some(c.decision),
                reason: Some(c.reason.clone()),
                branch: t.branch.clone(),
                assigned_swarm_id: t.assigned_swarm_id.clone(),
                assigned_node_id: t.assigned_node_id,
            }
        })
        .collect();
    let counts_after = if blocked.is_some() { p.task_counts } else { rules::counts(&after, now) };
    Ok(Json(ResumePreview {
        project_id: p.project_id.clone(),
        title: p.title.clone(),
        status,
        blocked: blocked.is_some(),
        blocked_reason: blocked.map(str::to_owned),
        has_live_assignments: !a.blocking.is_empty(),
        blocking_assignments: a.blocking,
        blocking_swarms,
        retry_failed: req.retry_failed,
        reverify_completed: req.reverify_completed,
        worker_swarm_ids: workers,
        counts_before: p.task_counts,
        counts_after,
        summary: rules::resume_summary(&a.changes),
        changed_task_ids,
        task_changes,
    }))
}

/// Marks a project `starting` and prepares it in a task of its own.
async fn begin(app: &Arc<App>, p: ProjectView) -> Result<ProjectView, ApiError> {
    let id = p.project_id.clone();
    app.hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            Ok(((), s.set_project_status(&id, ProjectStatus::Starting, None, now_ms(), &at)?))
        })
        .await?;
    let id = p.project_id.clone();
    let view = app.db.run(move |s| s.project(&id, now_ms())).await?;
    tokio::spawn(crate::project::start(app.clone(), view.clone()));
    Ok(view)
}

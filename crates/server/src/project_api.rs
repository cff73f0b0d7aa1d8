//! Orchestrated projects over the API: create one from a task graph, list them, see one, start
//! one. A project's caller must be allowed to inject every worker fleet to create or start it
//! (its tasks are injections), and to read every worker fleet to see it. The loop that runs
//! projects is `crate::project`.

use std::path::Path;

use clawfleet_core::project as rules;
use clawfleet_proto::project::{MAX_TITLE_CHARS, ProjectCreate, ProjectList, ProjectStatus, ProjectView};

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

/// Creates a project in `draft` (started at once with `auto_start`).
pub(super) async fn create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<ProjectCreate>,
) -> Result<(StatusCode, Json<ProjectView>), ApiError> {
    let title = req.title.trim().to_owned();
    if title.is_empty() {
        return Err(ApiError::bad_request("project requires title"));
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(ApiError::bad_request(format!("a project's title has at most {MAX_TITLE_CHARS} characters")));
    }
    let mut workers: Vec<String> = Vec::new();
    for w in &req.worker_swarm_ids {
        if !workers.contains(w) {
            workers.push(w.clone());
        }
    }
    if workers.is_empty() {
        return Err(ApiError::bad_request("project requires worker_swarm_ids"));
    }
    if workers.len() > MAX_WORKER_FLEETS {
        return Err(ApiError::bad_request(format!("a project has at most {MAX_WORKER_FLEETS} worker fleets")));
    }
    may_all(&app, &caller, Action::Inject, &workers)?;
    let rows = app.db.run(|s| s.fleets()).await?;
    let unknown: Vec<&str> =
        workers.iter().filter(|w| !rows.iter().any(|r| &r.name == *w && r.state == FleetState::Active)).map(|w| w.as_str()).collect();
    if !unknown.is_empty() {
        let shown: Vec<String> = unknown.iter().take(8).map(|u| u.chars().take(64).collect()).collect();
        return Err(ApiError::bad_request(format!("unknown worker_swarm_ids: {}", shown.join(", "))));
    }
    let base = req.base_branch.clone().filter(|b| !b.is_empty()).unwrap_or_else(|| "main".to_owned());
    if !plain(&base, true) {
        return Err(ApiError::bad_request(format!(
            "base_branch '{}' is not a plain branch name",
            base.chars().take(64).collect::<String>()
        )));
    }
    let subdir = req.workspace_subdir.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "repo".to_owned());
    if !plain(&subdir, false) {
        return Err(ApiError::bad_request("workspace_subdir must be one plain directory name, such as repo"));
    }
    // No repository: a project of plain tasks (no clones, no branches, no integration task).
    let repo_path = if req.repo_path.trim().is_empty() {
        String::new()
    } else {
        let repo = Path::new(req.repo_path.trim());
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

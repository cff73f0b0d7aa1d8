//! The project loop (codeswarm's orchestrated projects, with the control plane as the runtime
//! authority): on every tick it takes the attempts that ended (each assigned task whose
//! injection has its worker's answer stored; the answer judged by `store::project` with
//! `core::project`'s rules), gives back the tasks of lost workers, and assigns ready tasks of
//! running projects to idle agents of their worker fleets, one task an agent, each in one
//! transaction with the injection that carries the reference's task prompt.
//!
//! Code projects: [`start`] prepares a clone of the project's repository in every worker's
//! workspace (`git clone --no-local`, on the base branch; pushes go to a bare repository in the
//! workspace, so no agent writes outside its own), and the control plane, which can read every
//! workspace, brings each completed task's branch into the project's repository, where the
//! integration task's worker fetches it from. Agents never share a checkout.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clawfleet_core::liveness::AgentState;
use clawfleet_core::project::{self as rules, ProjectInfo, TaskSpec, TaskState};
use clawfleet_proto::project::{BlockingAssignment, ProjectStatus, ProjectView, TaskKind, TaskStatus};
use clawfleet_store::{Ended, NewInjection, NewProject, Pending, StoreError};
use tokio::sync::watch;

use crate::app::App;
use crate::{clock, outbox};

const TICK: Duration = Duration::from_millis(250);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub(crate) async fn run(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    // Projects a stopped control plane was starting are prepared again (a clone is reused).
    match app.db.run(|s| s.projects(now_ms())).await {
        Ok(projects) => {
            for p in projects.into_iter().filter(|p| p.status == ProjectStatus::Starting) {
                tokio::spawn(start(app.clone(), p));
            }
        }
        Err(e) => tracing::error!(error = %e, "Could not read the projects to go on starting"),
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = app.projects_due.notified() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = step(&app).await {
            tracing::error!(error = %e, "The project loop failed a step");
        }
    }
}

async fn step(app: &Arc<App>) -> Result<(), StoreError> {
    plans(app).await?;
    for ended in app.db.run(|s| s.ended_attempts()).await? {
        let ended = collect_branch(app, ended).await;
        let at = clock::now_rfc3339();
        app.hub.write(move |s| Ok(((), s.end_attempt(&ended, now_ms(), &at)?))).await?;
    }
    let holders = app.db.run(|s| s.task_holders()).await?;
    let mono = clock::mono_ms();
    for (fleet, slot) in &holders {
        if app.live.state(fleet, *slot, mono) == AgentState::Lost {
            let (f, s, at) = (fleet.clone(), *slot, clock::now_rfc3339());
            let (_, events) = app
                .hub
                .write(move |st| {
                    let mut events = st.give_back_task(&f, s, now_ms(), &at)?;
                    events.extend(st.give_back_plan(&f, s, now_ms(), &at)?);
                    Ok(((), events))
                })
                .await?;
            if !events.is_empty() {
                tracing::warn!(fleet, slot, "A worker was lost during its task; the task goes back");
            }
        }
    }
    let projects = app.db.run(|s| s.running_projects(now_ms())).await?;
    let mut busy: HashSet<(String, u32)> = app.db.run(|s| s.task_holders()).await?;
    for project in projects.iter().filter(|p| p.status == ProjectStatus::Running) {
        dispatch(app, project, &mut busy).await?;
    }
    crate::queue::step(app).await?;
    crate::approval::step(app).await
}

/// Plans: each planner's answer taken (a valid graph becomes its project, started at once with
/// `auto_start`; anything else fails the plan with the reason), and each queued plan given to
/// an idle agent of its planner fleet, with the reference's planner prompt.
async fn plans(app: &Arc<App>) -> Result<(), StoreError> {
    for ended in app.db.run(|s| s.ended_plans()).await? {
        let id = ended.plan_id.clone();
        let plan = app.db.run(move |s| s.plan(&id)).await?;
        let project_id = uuid::Uuid::new_v4().to_string();
        let graph = match &ended.answer {
            Ok(answer) => {
                rules::parse_task_graph(answer).map_err(str::to_owned).and_then(|t| rules::normalize(t).map_err(|e| e.to_string()))
            }
            Err(e) => Err(format!("the planner failed: {e}")),
        };
        let at = clock::now_rfc3339();
        let events = match graph {
            Ok(tasks) => {
                let tasks =
                    if plan.view.repo_path.is_empty() { tasks } else { rules::with_integration(tasks, &project_id, &plan.base_branch) };
                let (e, pl, pid) = (ended.clone(), plan.clone(), project_id.clone());
                let completed = app
                    .hub
                    .write(move |s| {
                        let p = NewProject {
                            id: &pid,
                            title: &pl.view.title,
                            repo_path: &pl.view.repo_path,
                            base_branch: &pl.base_branch,
                            workspace_subdir: &pl.workspace_subdir,
                            workers: &pl.view.worker_swarm_ids,
                            tasks: &tasks,
                        };
                        Ok(((), s.complete_plan(&e, &p, now_ms(), &at)?))
                    })
                    .await;
                match completed {
                    Ok((_, events)) => events,
                    // Its project cannot be stored (a worker fleet is gone): the plan fails, saying why.
                    Err(why) => {
                        let (e, at) = (ended.clone(), clock::now_rfc3339());
                        app.hub.write(move |s| Ok(((), s.fail_plan(&e, &why.to_string(), now_ms(), &at)?))).await?.1
                    }
                }
            }
            Err(reason) => {
                let e = ended.clone();
                app.hub.write(move |s| Ok(((), s.fail_plan(&e, &reason, now_ms(), &at)?))).await?.1
            }
        };
        if plan.auto_start && events.iter().any(|e| matches!(e.body, clawfleet_proto::event::EventBody::PlanCompleted { .. })) {
            let pid = project_id.clone();
            let at = clock::now_rfc3339();
            app.hub.write(move |s| Ok(((), s.set_project_status(&pid, ProjectStatus::Starting, None, now_ms(), &at)?))).await?;
            let view = app.db.run(move |s| s.project(&project_id, now_ms())).await?;
            tokio::spawn(start(app.clone(), view));
        }
    }
    let queued = app.db.run(|s| s.queued_plans()).await?;
    if queued.is_empty() {
        return Ok(());
    }
    let mut busy = app.db.run(|s| s.task_holders()).await?;
    let mono = clock::mono_ms();
    for plan in queued {
        let fleet = plan.view.planner_swarm_id.clone();
        let f = fleet.clone();
        let Some(row) = app.db.run(move |s| s.fleet(&f)).await? else { continue };
        let Some(slot) =
            (0..row.replicas).find(|s| app.live.state(&fleet, *s, mono) == AgentState::Idle && !busy.contains(&(fleet.clone(), *s)))
        else {
            continue;
        };
        let repo = if plan.view.repo_path.is_empty() { "none (a project of plain tasks)".to_owned() } else { plan.view.repo_path.clone() };
        if !plan.view.repo_path.is_empty()
            && let Some((clone, inside)) = clone_dirs(app, &fleet, slot, &plan.workspace_subdir).await
        {
            // The planner may look at the repository before it plans.
            let (r, b, who) = (PathBuf::from(&plan.view.repo_path), plan.base_branch.clone(), format!("{fleet}/{slot}"));
            let prepared = tokio::task::spawn_blocking(move || git::prepare_clone(&r, &clone, inside.as_deref(), &b, &who)).await;
            if let Ok(Err(e)) | Err(e) = prepared.map_err(|e| e.to_string()) {
                tracing::warn!(plan = %plan.view.plan_id, error = %e, "Could not prepare the planner's clone; it plans without one");
            }
        }
        let prompt = rules::plan_prompt(&plan.view.title, &repo, &plan.workspace_subdir, &plan.base_branch, &plan.spec);
        let id = uuid::Uuid::now_v7().to_string();
        let (pid, iid, pr, at) = (plan.view.plan_id.clone(), id.clone(), prompt.clone(), clock::now_rfc3339());
        let (f, caller) = (fleet.clone(), format!("plan {}", plan.view.plan_id));
        let (assigned, _) = app
            .hub
            .write(move |s| {
                let targets = [slot];
                let inj = NewInjection { id: &iid, fleet: &f, prompt: &pr, at: &at, caller: &caller, targets: &targets, request_id: None };
                match s.assign_plan(&pid, &inj, now_ms())? {
                    Some((rows, events)) => Ok((Some(rows), events)),
                    None => Ok((None, Vec::new())),
                }
            })
            .await?;
        let Some(rows) = assigned else { continue };
        busy.insert((fleet.clone(), slot));
        let pending = Pending::Inject { injection_id: id, prompt };
        let expires = outbox::expires_at(SystemTime::now(), app.inject_timeout(&row));
        outbox::send_now(app, &fleet, row.replicas, &[slot], &pending, &rows, expires).await;
    }
    Ok(())
}

/// The project's tasks as the rules schedule them.
fn states(p: &ProjectView) -> Vec<TaskState> {
    p.task_order.iter().filter_map(|id| p.tasks.get(id)).map(TaskState::of_view).collect()
}

/// Assigns the project's ready tasks to the idle agents of its worker fleets, in order.
async fn dispatch(app: &App, p: &ProjectView, busy: &mut HashSet<(String, u32)>) -> Result<(), StoreError> {
    let now = now_ms();
    let tasks = states(p);
    if rules::ready(&tasks, now).is_empty() {
        return Ok(());
    }
    let mono = clock::mono_ms();
    let mut idle: Vec<(clawfleet_store::FleetRow, u32)> = Vec::new();
    for fleet in &p.worker_swarm_ids {
        let f = fleet.clone();
        let Some(row) = app.db.run(move |s| s.fleet(&f)).await? else { continue };
        for slot in 0..row.replicas {
            if app.live.state(fleet, slot, mono) == AgentState::Idle && !busy.contains(&(fleet.clone(), slot)) {
                idle.push((row.clone(), slot));
            }
        }
    }
    let info =
        ProjectInfo { project_id: &p.project_id, title: &p.title, base_branch: &p.base_branch, workspace_subdir: &p.workspace_subdir };
    let code = !p.repo_path.is_empty();
    for (t, w) in rules::assign(&tasks, idle.len(), now) {
        let (row, slot) = &idle[w];
        let spec = &tasks[t].spec;
        let prompt = if code { rules::task_prompt(info, spec) } else { rules::plain_task_prompt(info, spec) };
        let branch = branch_of(&p.project_id, spec);
        let id = uuid::Uuid::now_v7().to_string();
        let request_id = format!("project:{}:{}:{}", p.project_id, spec.task_id, &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let (pid, tid, fleet, slot_n, at) = (p.project_id.clone(), spec.task_id.clone(), row.name.clone(), *slot, clock::now_rfc3339());
        let (iid, pr, rid, br) = (id.clone(), prompt.clone(), request_id.clone(), branch.clone());
        let caller = format!("project {}", p.project_id);
        let (assigned, _) = app
            .hub
            .write(move |s| {
                let targets = [slot_n];
                let inj = NewInjection {
                    id: &iid,
                    fleet: &fleet,
                    prompt: &pr,
                    at: &at,
                    caller: &caller,
                    targets: &targets,
                    request_id: Some(&rid),
                };
                match s.assign_task(&pid, &tid, &inj, &br, now_ms())? {
                    Some((rows, events)) => Ok((Some(rows), events)),
                    None => Ok((None, Vec::new())),
                }
            })
            .await?;
        let Some(rows) = assigned else { continue };
        if code {
            refresh_mirror(app, p, &row.name, *slot).await;
        }
        busy.insert((row.name.clone(), *slot));
        app.metrics.injection(crate::metrics::InjectOutcome::Accepted, 1);
        let pending = Pending::Inject { injection_id: id, prompt };
        let expires = outbox::expires_at(SystemTime::now(), app.inject_timeout(row));
        outbox::send_now(app, &row.name, row.replicas, &[*slot], &pending, &rows, expires).await;
    }
    Ok(())
}

fn branch_of(project_id: &str, t: &TaskSpec) -> String {
    if t.kind == TaskKind::Integration { rules::integration_branch(project_id) } else { rules::task_branch(project_id, &t.task_id) }
}

/// A worker's clone, if the control plane can reach its workspace.
async fn clone_dir(app: &App, fleet: &str, slot: u32, subdir: &str) -> Option<PathBuf> {
    clone_dirs(app, fleet, slot, subdir).await.map(|(here, _)| here)
}

/// A worker's clone as the control plane reaches it, and where its agent sees it when that
/// is elsewhere (in a container).
async fn clone_dirs(app: &App, fleet: &str, slot: u32, subdir: &str) -> Option<(PathBuf, Option<PathBuf>)> {
    let f = fleet.to_owned();
    let row = app.db.run(move |s| s.fleet(&f)).await.ok()??;
    let backend = app.backend(&row.backend).ok()?;
    let d = app.deployment(&row).ok()?;
    let here = backend.workspace(&d, slot)?.join(subdir);
    Some((here, backend.workspace_inside().map(|w| w.join(subdir))))
}

/// Before a worker in a container starts a task, the mirror its clone fetches from is brought
/// up to the project's repository (the branches other workers' tasks brought there).
async fn refresh_mirror(app: &App, p: &ProjectView, fleet: &str, slot: u32) {
    let Some((clone, Some(_))) = clone_dirs(app, fleet, slot, &p.workspace_subdir).await else { return };
    let repo = PathBuf::from(&p.repo_path);
    let refreshed = tokio::task::spawn_blocking(move || git::refresh_mirror(&repo, &git::mirror_of(&clone))).await;
    if let Ok(Err(e)) | Err(e) = refreshed.map_err(|e| e.to_string()) {
        tracing::warn!(project = %p.project_id, fleet, slot, error = %e, "Could not bring a worker's mirror up to the project");
    }
}

/// Before a `done` answer is taken, the task's branch is brought from the worker's clone into
/// the project's repository; a branch that is not there makes the attempt a failed one.
async fn collect_branch(app: &App, ended: Ended) -> Ended {
    let Ok(answer) = &ended.answer else { return ended };
    let project = ended.project.clone();
    if app.db.run(move |s| s.project_repo(&project)).await.is_ok_and(|r| r.is_empty()) {
        return ended;
    }
    let (project, task_id) = (ended.project.clone(), ended.task_id.clone());
    let Ok(p) = app.db.run(move |s| s.project(&project, now_ms())).await else { return ended };
    let Some(task) = p.tasks.get(&task_id) else { return ended };
    let attempts = task.attempts;
    let outcome = rules::judge(answer, attempts);
    if outcome.status != TaskStatus::Completed {
        return ended;
    }
    let (Some(fleet), Some(slot)) = (task.assigned_swarm_id.clone(), task.assigned_node_id) else { return ended };
    let Some(clone) = clone_dir(app, &fleet, slot, &p.workspace_subdir).await else {
        // Not on this machine's filesystem: the worker pushes where it can.
        return ended;
    };
    let branch = outcome.branch.clone().or_else(|| task.branch.clone()).unwrap_or_default();
    // A worker writes only its project's branches in the project's repository (never `main`).
    let namespace = format!("codeswarm/{}/", rules::token(&p.project_id));
    if !branch.starts_with(&namespace) {
        let shown: String = branch.chars().take(80).collect();
        return Ended {
            answer: Err(format!("its answer was done, but its branch '{shown}' is not one of the project's ({namespace}…)")),
            ..ended
        };
    }
    let repo = PathBuf::from(&p.repo_path);
    let fetched = tokio::task::spawn_blocking(move || git::fetch_branch(&repo, &clone, &branch)).await;
    match fetched {
        Ok(Ok(())) => ended,
        Ok(Err(e)) => Ended { answer: Err(format!("its answer was done, but {e}")), ..ended },
        Err(e) => Ended { answer: Err(format!("collecting its branch failed: {e}")), ..ended },
    }
}

/// What a resume of a project would do now: the tasks still with live workers (a resume
/// waits for them), and each task's change.
pub(crate) struct Assessment {
    pub blocking: Vec<BlockingAssignment>,
    pub tasks: Vec<TaskState>,
    pub changes: Vec<rules::Change>,
}

/// Assesses a resume of `p`. For a code project, the branch of a task whose worker is gone is
/// first brought from that worker's clone into the project's repository (as a done attempt's
/// is), while its fleet is still known; then every branch is verified there.
pub(crate) async fn assess(app: &App, p: &ProjectView, opts: rules::ResumeOptions) -> Result<Assessment, StoreError> {
    let mono = clock::mono_ms();
    let mut blocking = Vec::new();
    for t in p.tasks.values().filter(|t| t.status == TaskStatus::Assigned) {
        let Some(fleet) = t.assigned_swarm_id.clone() else { continue };
        let f = fleet.clone();
        let row = app.db.run(move |s| s.fleet(&f)).await?;
        let live = row.as_ref().is_some_and(|r| {
            r.state == clawfleet_proto::api::FleetState::Active
                && t.assigned_node_id.is_some_and(|slot| slot < r.replicas && app.live.state(&fleet, slot, mono) != AgentState::Lost)
        });
        if live {
            // Only an active fleet's agents are live.
            let status = "running";
            blocking.push(BlockingAssignment {
                task_id: t.task_id.clone(),
                title: t.title.clone(),
                swarm_alias: fleet.clone(),
                swarm_id: fleet,
                swarm_status: status.to_owned(),
                node_id: t.assigned_node_id,
                branch: t.branch.clone(),
            });
        }
    }
    let tasks = states(p);
    if !blocking.is_empty() {
        return Ok(Assessment { blocking, tasks, changes: Vec::new() });
    }
    let mut verdicts: Vec<Option<rules::Verified>> = vec![None; tasks.len()];
    let wanted = |t: &TaskState| matches!(t.status, TaskStatus::Completed | TaskStatus::Assigned) && opts.reverify_completed;
    if p.repo_path.is_empty() {
        for (i, t) in tasks.iter().enumerate().filter(|(_, t)| wanted(t)) {
            verdicts[i] = Some(match t.status {
                TaskStatus::Completed => rules::Verified {
                    recoverable: true,
                    reason: "A task of plain prompts has no branch: its recorded answer stands".into(),
                    tip: None,
                },
                _ => {
                    rules::Verified { recoverable: false, reason: "A task of plain prompts has no branch: it runs again".into(), tip: None }
                }
            });
        }
    } else {
        let repo = PathBuf::from(&p.repo_path);
        for (i, t) in tasks.iter().enumerate().filter(|(_, t)| wanted(t)) {
            let view = &p.tasks[&t.spec.task_id];
            let branch = view.branch.clone().unwrap_or_else(|| branch_of(&p.project_id, &t.spec));
            if t.status == TaskStatus::Assigned
                && let (Some(fleet), Some(slot)) = (&view.assigned_swarm_id, view.assigned_node_id)
                && let Some(clone) = clone_dir(app, fleet, slot, &p.workspace_subdir).await
            {
                let (r, b) = (repo.clone(), branch.clone());
                let _ = tokio::task::spawn_blocking(move || git::fetch_branch(&r, &clone, &b)).await;
            }
            let (r, base, head) = (repo.clone(), p.base_branch.clone(), view.head_commit.clone());
            let b = view.branch.clone();
            let v = tokio::task::spawn_blocking(move || git::verify_branch(&r, b.as_deref(), &base, head.as_deref()))
                .await
                .unwrap_or_else(|e| rules::Verified { recoverable: false, reason: format!("verifying its branch failed: {e}"), tip: None });
            verdicts[i] = Some(v);
        }
    }
    let changes = rules::resume(&tasks, opts, &mut |i| {
        verdicts[i].clone().unwrap_or(rules::Verified { recoverable: false, reason: "not verified".into(), tip: None })
    });
    Ok(Assessment { blocking, tasks, changes })
}

/// Starts a project: it is `starting` while every worker's clone is prepared, then `running`
/// (or `error`, saying which worker could not be prepared and why).
pub(crate) async fn start(app: Arc<App>, project: ProjectView) {
    let id = project.project_id.clone();
    let result = prepare(&app, &project).await;
    let (status, error) = match &result {
        Ok(()) => (ProjectStatus::Running, None),
        Err(e) => (ProjectStatus::Error, Some(e.clone())),
    };
    let at = clock::now_rfc3339();
    let written = app.hub.write(move |s| Ok(((), s.set_project_status(&id, status, error.as_deref(), now_ms(), &at)?))).await;
    if let Err(e) = written {
        tracing::error!(project = %project.project_id, error = %e, "Could not store a project's start");
    }
    app.projects_due.notify_one();
}

async fn prepare(app: &App, p: &ProjectView) -> Result<(), String> {
    if p.repo_path.is_empty() {
        return Ok(());
    }
    let repo = PathBuf::from(&p.repo_path);
    for fleet in &p.worker_swarm_ids {
        let f = fleet.clone();
        let row =
            app.db.run(move |s| s.fleet(&f)).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("worker fleet '{fleet}' is gone"))?;
        let mut paths = Vec::new();
        for slot in 0..row.replicas {
            let Some((clone, inside)) = clone_dirs(app, fleet, slot, &p.workspace_subdir).await else {
                return Err(format!(
                    "worker fleet '{fleet}' runs on the {} backend, whose workspaces this control plane cannot reach: code projects run on local fleets, slurm fleets whose Slurm commands run here, and docker fleets of a single-node Swarm whose engine is here",
                    row.backend
                ));
            };
            let (r, c, base, who) = (repo.clone(), clone.clone(), p.base_branch.clone(), format!("{fleet}/{slot}"));
            tokio::task::spawn_blocking(move || git::prepare_clone(&r, &c, inside.as_deref(), &base, &who))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("preparing the clone of agent {fleet}/{slot}: {e}"))?;
            paths.push(clone.display().to_string());
        }
        let prepared = serde_json::json!({
            "mode": "per_agent_clone", "source": p.repo_path, "source_kind": "local_path", "origin": p.repo_path,
            "branch": p.base_branch, "subdir": p.workspace_subdir, "worker_paths": paths,
        });
        let (id, f) = (p.project_id.clone(), fleet.clone());
        app.db.run(move |s| s.set_project_preparation(&id, &f, &prepared)).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The git the control plane runs: Debian's `git`, with no prompts and no user configuration.
pub(crate) mod git {
    use super::*;

    fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
        let mut cmd = std::process::Command::new("git");
        if let Some(d) = dir {
            cmd.arg("-C").arg(d);
        }
        cmd.args(args).env("GIT_TERMINAL_PROMPT", "0").env("GIT_CONFIG_GLOBAL", "/dev/null").env("GIT_CONFIG_NOSYSTEM", "1");
        let out = cmd.output().map_err(|e| format!("cannot run git: {e} (apt-get install git)"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!("git {} failed: {}", args.first().unwrap_or(&""), err.trim().chars().take(300).collect::<String>()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Whether `repo` is a git repository with a commit on `branch`.
    pub(crate) fn check_repo(repo: &Path, branch: &str) -> Result<(), String> {
        if !repo.join(".git").exists() {
            return Err(format!("{} is not a git repository (it has no .git)", repo.display()));
        }
        git(Some(repo), &["rev-parse", "--verify", "--quiet", &format!("refs/heads/{branch}")])
            .map(|_| ())
            .map_err(|_| format!("{} has no branch '{branch}'", repo.display()))
    }

    /// A clone of `repo` at `clone` on `base` (fetched again if it is there already), its
    /// pushes going to a bare repository beside it, its commits by the agent.
    /// Prepares a worker's clone of `repo` at `clone` on branch `base`, pushing to a bare
    /// repository beside it. With `inside` (where the agent sees the clone, in a container),
    /// the clone fetches from a mirror beside it ([`mirror_of`]) instead of from `repo`, which
    /// the agent cannot reach, and its remotes name the paths the agent sees.
    pub(crate) fn prepare_clone(repo: &Path, clone: &Path, inside: Option<&Path>, base: &str, who: &str) -> Result<(), String> {
        let source = match inside {
            Some(_) => {
                let mirror = mirror_of(clone);
                if !mirror.exists() {
                    git(None, &["init", "--quiet", "--bare", &mirror.display().to_string()])?;
                }
                refresh_mirror(repo, &mirror)?;
                mirror
            }
            None => repo.to_owned(),
        };
        let origin = match inside {
            Some(i) => mirror_of(i).display().to_string(),
            None => repo.display().to_string(),
        };
        let reuse = clone.join(".git").exists() && git(Some(clone), &["remote", "get-url", "origin"]).is_ok_and(|o| o == origin);
        if reuse {
            git(Some(clone), &["fetch", "--quiet", "--prune", &source.display().to_string(), "+refs/heads/*:refs/remotes/origin/*"])?;
        } else {
            if clone.exists() {
                std::fs::remove_dir_all(clone).map_err(|e| format!("cannot remove {}: {e}", clone.display()))?;
            }
            git(None, &["clone", "--quiet", "--no-local", &source.display().to_string(), &clone.display().to_string()])?;
            git(Some(clone), &["remote", "set-url", "origin", &origin])?;
        }
        let sink = clone.with_extension("pushed.git");
        if !sink.exists() {
            git(None, &["init", "--quiet", "--bare", &sink.display().to_string()])?;
        }
        // The push remote as the agent names it.
        let push = inside.map_or_else(|| sink.clone(), |i| i.with_extension("pushed.git"));
        git(Some(clone), &["remote", "set-url", "--push", "origin", &push.display().to_string()])?;
        git(Some(clone), &["checkout", "--quiet", "-B", base, &format!("origin/{base}")])?;
        git(Some(clone), &["config", "user.name", &format!("clawfleet agent {who}")])?;
        git(Some(clone), &["config", "user.email", &format!("{}@agents.clawfleet", who.replace('/', "-"))])?;
        if let Some(parent) = clone.parent() {
            own_like(parent, clone)?;
            own_like(parent, &sink)?;
            if inside.is_some() {
                own_like(parent, &mirror_of(clone))?;
            }
        }
        Ok(())
    }

    /// The bare mirror of the project's repository beside a clone in a container's workspace.
    pub(crate) fn mirror_of(clone: &Path) -> PathBuf {
        clone.with_extension("origin.git")
    }

    /// Brings a mirror's branches up to the project's repository.
    pub(crate) fn refresh_mirror(repo: &Path, mirror: &Path) -> Result<(), String> {
        git(Some(repo), &["push", "--quiet", "--force", "--prune", &mirror.display().to_string(), "+refs/heads/*:refs/heads/*"]).map(drop)
    }

    /// Gives `path` (recursively) the owner of `like`: an agent that runs as a user of its own
    /// owns its clone.
    fn own_like(like: &Path, path: &Path) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(like).map_err(|e| e.to_string())?;
        let (uid, gid) = (meta.uid(), meta.gid());
        if std::fs::metadata(path).is_ok_and(|m| m.uid() == uid && m.gid() == gid) {
            return Ok(());
        }
        let mut stack = vec![path.to_owned()];
        while let Some(p) = stack.pop() {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).map_err(|e| format!("cannot give {} to its agent: {e}", p.display()))?;
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                for entry in std::fs::read_dir(&p).map_err(|e| e.to_string())?.flatten() {
                    stack.push(entry.path());
                }
            }
        }
        Ok(())
    }

    /// What `branch` in `repo` shows of a task's work, as the reference's resume asks it: the
    /// recorded head reachable from it, or a tip apart from the base branch's.
    pub(crate) fn verify_branch(repo: &Path, branch: Option<&str>, base: &str, head: Option<&str>) -> rules::Verified {
        let not = |reason: String| rules::Verified { recoverable: false, reason, tip: None };
        let Some(b) = branch.filter(|b| !b.is_empty()) else { return not("No task branch recorded".into()) };
        let tip_of = |name: &str| {
            [name.to_owned(), format!("refs/heads/{name}"), format!("origin/{name}"), format!("refs/remotes/origin/{name}")]
                .iter()
                .find_map(|r| git(Some(repo), &["rev-parse", "--verify", "--quiet", &format!("{r}^{{commit}}")]).ok())
        };
        let Some(tip) = tip_of(b) else { return not(format!("Task branch {b} was not found")) };
        let yes = |reason: String| rules::Verified { recoverable: true, reason, tip: Some(tip.clone()) };
        if let Some(h) = head.filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()) && !h.is_empty())
            && git(Some(repo), &["merge-base", "--is-ancestor", h, &tip]).is_ok()
        {
            return yes(format!("Recorded head commit is reachable from {b}"));
        }
        let base_tip = tip_of(base).or_else(|| git(Some(repo), &["rev-parse", "--verify", "--quiet", "HEAD"]).ok());
        if base_tip.as_deref() != Some(tip.as_str()) {
            return yes(format!("Task branch {b} diverges from base branch {base}"));
        }
        not(format!("Task branch {b} does not contain durable progress beyond {base}"))
    }

    /// Brings `branch` from a worker's clone (or the bare repository its pushes went to) into
    /// the project's repository.
    pub(crate) fn fetch_branch(repo: &Path, clone: &Path, branch: &str) -> Result<(), String> {
        let plain = branch.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if branch.is_empty() || !plain || branch.starts_with(['-', '/']) || branch.contains("..") {
            return Err(format!("'{branch}' is not a branch name"));
        }
        let refspec = format!("+refs/heads/{branch}:refs/heads/{branch}");
        let from_clone = git(Some(repo), &["fetch", "--quiet", &clone.display().to_string(), &refspec]);
        if from_clone.is_ok() {
            return Ok(());
        }
        git(Some(repo), &["fetch", "--quiet", &clone.with_extension("pushed.git").display().to_string(), &refspec])
            .map(|_| ())
            .map_err(|_| format!("its branch '{branch}' is not in its clone"))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::git;

    fn run(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).output().expect("git (apt-get install git)");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A resume's branch checks, on a real repository: the reference's four answers.
    #[test]
    fn branches_are_verified_as_the_reference_verifies_them() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        run(repo, &["init", "-q", "-b", "main"]);
        run(repo, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "start"]);
        run(repo, &["branch", "empty"]);
        run(repo, &["checkout", "-q", "-b", "work"]);
        run(repo, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "work"]);
        let head = run(repo, &["rev-parse", "HEAD"]);
        let base = run(repo, &["rev-parse", "main"]);
        let cases = [
            (None, None, false, "No task branch recorded"),
            (Some("gone"), None, false, "Task branch gone was not found"),
            (Some("work"), Some(head.as_str()), true, "Recorded head commit is reachable from work"),
            (Some("work"), Some("deadbeef"), true, "Task branch work diverges from base branch main"),
            (Some("empty"), None, false, "Task branch empty does not contain durable progress beyond main"),
            (Some("main"), Some(base.as_str()), true, "Recorded head commit is reachable from main"),
        ];
        for (branch, recorded, recoverable, reason) in cases {
            let v = git::verify_branch(repo, branch, "main", recorded);
            assert_eq!((v.recoverable, v.reason.as_str()), (recoverable, reason), "{branch:?}");
            assert_eq!(v.tip.is_some(), recoverable);
        }
        assert_eq!(git::verify_branch(repo, Some("work"), "main", None).tip.as_deref(), Some(head.as_str()));
    }

    /// A clone in a container's workspace: it fetches from a mirror beside it, named as the
    /// agent sees it, which a refresh brings up to the project's repository.
    #[test]
    fn a_clone_a_container_sees_elsewhere_fetches_from_a_mirror_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("project");
        std::fs::create_dir(&repo).unwrap();
        run(&repo, &["init", "-q", "-b", "main"]);
        run(&repo, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "start"]);
        let volume = dir.path().join("volume");
        std::fs::create_dir(&volume).unwrap();
        let clone = volume.join("repo");
        let inside = Path::new("/workspace/repo");
        git::prepare_clone(&repo, &clone, Some(inside), "main", "crew/0").unwrap();
        assert_eq!(run(&clone, &["remote", "get-url", "origin"]), "/workspace/repo.origin.git");
        assert_eq!(run(&clone, &["remote", "get-url", "--push", "origin"]), "/workspace/repo.pushed.git");
        assert_eq!(run(&clone, &["rev-parse", "--abbrev-ref", "HEAD"]), "main");
        let mirror = git::mirror_of(&clone);
        assert_eq!(run(&mirror, &["rev-parse", "main"]), run(&repo, &["rev-parse", "main"]));
        // A branch another worker brought to the project reaches the mirror with a refresh.
        run(&repo, &["branch", "codeswarm/p/T-001"]);
        git::refresh_mirror(&repo, &mirror).unwrap();
        assert!(!run(&mirror, &["branch", "--list", "codeswarm/p/T-001"]).is_empty());
        // Prepared again, the clone is kept (same origin) and its base reset.
        std::fs::write(clone.join("mine.txt"), "x").unwrap();
        git::prepare_clone(&repo, &clone, Some(inside), "main", "crew/0").unwrap();
        assert!(clone.join("mine.txt").exists(), "the clone was reused");
        assert!(!run(&clone, &["branch", "-r", "--list", "origin/codeswarm/p/T-001"]).is_empty());
    }
}

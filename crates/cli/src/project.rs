//! `clawfleet project create|list|status|start`: orchestrated projects.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clawfleet_proto::project::{
    PlanCreate, PlanList, PlanStatus, PlanView, ProjectCreate, ProjectList, ProjectStatus, ProjectView, ResumePreview, ResumeRequest,
    ResumeSummary, TaskStatus,
};

use crate::args::{
    PlanRetryArgs, ProjectCommand, ProjectCreateArgs, ProjectListArgs, ProjectPlanArgs, ProjectResumeArgs, ProjectStartArgs,
    ProjectStatusArgs,
};
use crate::client::Client;
use crate::fleet::print_json;
use crate::output::{Progress, table};

pub(crate) async fn run(command: ProjectCommand) -> anyhow::Result<ExitCode> {
    match command {
        ProjectCommand::Create(a) => create(a).await,
        ProjectCommand::List(a) => list(a).await,
        ProjectCommand::Status(a) => status(a).await,
        ProjectCommand::Start(a) => start(a).await,
        ProjectCommand::Resume(a) => resume(a).await,
        ProjectCommand::ResumePreview(a) => resume_preview(a).await,
        ProjectCommand::Plan(a) => plan(a).await,
        ProjectCommand::Plans(a) => plans(a).await,
        ProjectCommand::PlanRetry(a) => plan_retry(a).await,
    }
}

fn print_plan(p: &PlanView) {
    let project = p.project_id.as_deref().map(|id| format!(", project {id}")).unwrap_or_default();
    outln!("plan {}: {} (attempt {}{project})", p.plan_id, p.status, p.attempts);
    outln!("title: {} · planner: {} · workers: {}", p.title, p.planner_swarm_id, p.worker_swarm_ids.join(", "));
    if let Some(e) = &p.last_error {
        outln!("error: {e}");
    }
}

async fn plan(args: ProjectPlanArgs) -> anyhow::Result<ExitCode> {
    let spec = if args.spec.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the spec from stdin")?
    } else {
        std::fs::read_to_string(&args.spec).with_context(|| format!("reading the spec {}", args.spec.display()))?
    };
    let repo_path = match &args.repo {
        Some(r) => std::fs::canonicalize(r).with_context(|| format!("--repo {}", r.display()))?.display().to_string(),
        None => String::new(),
    };
    let req = PlanCreate {
        title: args.title.clone(),
        repo_path,
        spec,
        planner_swarm_id: args.planner.clone(),
        worker_swarm_ids: args.workers.clone(),
        base_branch: args.base_branch.clone(),
        workspace_subdir: None,
        auto_start: args.start,
    };
    let client = args.client.client()?;
    let mut p: PlanView = client.post("/api/v1/plans", &req).await?;
    if !args.wait {
        if args.json {
            print_json(&p);
        } else {
            print_plan(&p);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let began = Instant::now();
    let timeout = Duration::from_secs(args.timeout);
    while matches!(p.status, PlanStatus::Queued | PlanStatus::Planning) {
        if began.elapsed() > timeout {
            bail!("plan {} is still {} after {} s", p.plan_id, p.status, timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        p = client.get(&format!("/api/v1/plans/{}", p.plan_id)).await?;
    }
    match (&p.project_id, args.start) {
        (Some(id), true) => {
            let project: ProjectView = client.get(&format!("/api/v1/projects/{id}")).await?;
            let project = wait(&client, project, timeout.saturating_sub(began.elapsed())).await?;
            finish(&project, args.json, true)
        }
        _ => {
            if args.json {
                print_json(&p);
            } else {
                print_plan(&p);
            }
            Ok(if p.status == PlanStatus::Completed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

async fn plans(args: ProjectListArgs) -> anyhow::Result<ExitCode> {
    let list: PlanList = args.client.client()?.get("/api/v1/plans").await?;
    if args.json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .plans
        .iter()
        .map(|p| {
            vec![
                p.plan_id.clone(),
                p.status.to_string(),
                p.project_id.clone().unwrap_or_default(),
                p.title.clone(),
                p.last_error.clone().unwrap_or_default().chars().take(60).collect(),
            ]
        })
        .collect();
    out!("{}", table(&["ID", "STATUS", "PROJECT", "TITLE", "ERROR"], &rows));
    Ok(ExitCode::SUCCESS)
}

async fn plan_retry(args: PlanRetryArgs) -> anyhow::Result<ExitCode> {
    let p: PlanView = args.client.client()?.post(&format!("/api/v1/plans/{}/retry", args.id), &serde_json::json!({})).await?;
    if args.json {
        print_json(&p);
    } else {
        print_plan(&p);
    }
    Ok(ExitCode::SUCCESS)
}

fn counts_line(p: &ProjectView) -> String {
    let c = p.task_counts;
    format!("{}/{} tasks completed, {} assigned, {} failed", c.completed, p.tasks.len(), c.assigned, c.failed)
}

fn print(p: &ProjectView) {
    outln!("project {}: {} ({})", p.project_id, p.status, counts_line(p));
    outln!("title: {} · repository {} ({}) · workers: {}", p.title, p.repo_path, p.base_branch, p.worker_swarm_ids.join(", "));
    let rows: Vec<Vec<String>> = p
        .task_order
        .iter()
        .filter_map(|id| p.tasks.get(id))
        .map(|t| {
            let agent = match (&t.assigned_swarm_id, t.assigned_node_id, &t.last_assigned_swarm_id, t.last_assigned_node_id) {
                (Some(f), Some(s), ..) | (None, _, Some(f), Some(s)) => format!("{f}/{s}"),
                _ => "-".to_owned(),
            };
            vec![
                t.task_id.clone(),
                t.status.to_string(),
                t.attempts.to_string(),
                agent,
                t.result_status.clone().unwrap_or_default(),
                t.last_error.clone().unwrap_or_default().chars().take(80).collect(),
            ]
        })
        .collect();
    out!("{}", table(&["TASK", "STATUS", "ATTEMPTS", "AGENT", "RESULT", "ERROR"], &rows));
    for s in &p.stuck {
        outln!("waiting: {s}");
    }
    if let Some(b) = &p.integration_branch {
        outln!("integration branch: {b} ({})", p.integration_head_commit.as_deref().unwrap_or("?"));
    }
    if let Some(e) = &p.last_error {
        outln!("error: {e}");
    }
}

async fn create(args: ProjectCreateArgs) -> anyhow::Result<ExitCode> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the project from stdin")?
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("reading the project file {}", args.file.display()))?
    };
    let mut body: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("the project file {} is not JSON", args.file.display()))?;
    let Some(obj) = body.as_object_mut() else { bail!("the project file {} is not a JSON object", args.file.display()) };
    if let Some(t) = &args.title {
        obj.insert("title".into(), t.clone().into());
    }
    if let Some(r) = &args.repo {
        let r = std::fs::canonicalize(r).with_context(|| format!("--repo {}", r.display()))?;
        obj.insert("repo_path".into(), r.display().to_string().into());
    }
    if !args.workers.is_empty() {
        obj.insert("worker_swarm_ids".into(), serde_json::json!(args.workers));
    }
    if let Some(b) = &args.base_branch {
        obj.insert("base_branch".into(), b.clone().into());
    }
    if args.start {
        obj.insert("auto_start".into(), true.into());
    }
    for (field, flag) in [("title", "--title"), ("worker_swarm_ids", "--workers")] {
        if !obj.contains_key(field) {
            bail!("the project has no {field}: give it in the file or with {flag}");
        }
    }
    let req: ProjectCreate = serde_json::from_value(body).with_context(|| format!("the project file {}", args.file.display()))?;
    let client = args.client.client()?;
    let mut project: ProjectView = client.post("/api/v1/projects", &req).await?;
    if args.wait {
        project = wait(&client, project, Duration::from_secs(args.timeout)).await?;
    }
    finish(&project, args.json, args.wait)
}

fn finish(p: &ProjectView, json: bool, waited: bool) -> anyhow::Result<ExitCode> {
    if json {
        print_json(p);
    } else {
        print(p);
    }
    Ok(if waited && p.status != ProjectStatus::Completed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Polls a project until it is completed, needs attention or failed to start.
async fn wait(client: &Client, mut p: ProjectView, timeout: Duration) -> anyhow::Result<ProjectView> {
    let began = Instant::now();
    let mut progress = Progress::new(p.tasks.len() as u64, "tasks completed");
    loop {
        progress.set(u64::from(p.task_counts.completed));
        let working: Vec<String> = p
            .tasks
            .values()
            .filter(|t| t.status == TaskStatus::Assigned)
            .map(|t| format!("{} on {}/{}", t.task_id, t.assigned_swarm_id.as_deref().unwrap_or("?"), t.assigned_node_id.unwrap_or(0)))
            .collect();
        progress.note((!working.is_empty()).then(|| working.join(", ")).as_deref());
        if matches!(p.status, ProjectStatus::Completed | ProjectStatus::Attention | ProjectStatus::Error) {
            break;
        }
        if began.elapsed() > timeout {
            progress.finish();
            bail!("project {} is still {} after {} s ({})", p.project_id, p.status, timeout.as_secs(), counts_line(&p));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        p = client.get(&format!("/api/v1/projects/{}", p.project_id)).await?;
    }
    progress.finish();
    Ok(p)
}

async fn list(args: ProjectListArgs) -> anyhow::Result<ExitCode> {
    let list: ProjectList = args.client.client()?.get("/api/v1/projects").await?;
    if args.json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    if list.projects.is_empty() {
        outln!("no project");
        return Ok(ExitCode::SUCCESS);
    }
    let mut projects: Vec<&ProjectView> = list.projects.values().collect();
    projects.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
    let rows: Vec<Vec<String>> =
        projects.iter().map(|p| vec![p.project_id.clone(), p.status.to_string(), counts_line(p), p.title.clone()]).collect();
    out!("{}", table(&["ID", "STATUS", "TASKS", "TITLE"], &rows));
    Ok(ExitCode::SUCCESS)
}

async fn status(args: ProjectStatusArgs) -> anyhow::Result<ExitCode> {
    let p: ProjectView = args.client.client()?.get(&format!("/api/v1/projects/{}", args.id)).await?;
    finish(&p, args.json, false)
}

/// What a resume did (or would do) to the tasks, in a line.
pub(crate) fn summary_line(s: &ResumeSummary) -> String {
    format!(
        "{} kept, {} recovered from branches, {} back to pending, {} reset, {} retried",
        s.kept_completed, s.recovered_from_branch, s.downgraded_to_pending, s.reset_assigned, s.retried_failed
    )
}

fn resume_request(args: &ProjectResumeArgs) -> ResumeRequest {
    ResumeRequest { worker_swarm_ids: args.workers.clone(), retry_failed: args.retry_failed, reverify_completed: !args.no_reverify }
}

async fn resume(args: ProjectResumeArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut p: ProjectView = client.post(&format!("/api/v1/projects/{}/resume", args.id), &resume_request(&args)).await?;
    if let (Some(s), false) = (&p.resume_summary, args.json) {
        outln!("resumed: {}", summary_line(s));
    }
    if args.wait {
        p = wait(&client, p, Duration::from_secs(args.timeout)).await?;
    }
    finish(&p, args.json, args.wait)
}

async fn resume_preview(args: ProjectResumeArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let v: ResumePreview = client.post(&format!("/api/v1/projects/{}/resume-preview", args.id), &resume_request(&args)).await?;
    if args.json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("project {}: {} after a resume, workers {}", v.project_id, v.status, v.worker_swarm_ids.join(", "));
    if let Some(why) = &v.blocked_reason {
        outln!("blocked: {why}");
        for b in &v.blocking_assignments {
            outln!("  {} is with {}/{}", b.task_id, b.swarm_id, b.node_id.map_or("?".to_owned(), |n| n.to_string()));
        }
    }
    let rows: Vec<Vec<String>> = v
        .task_changes
        .iter()
        .map(|c| {
            vec![
                c.task_id.clone(),
                format!("{} → {}", c.before_status, c.after_status),
                c.resume_decision.map(|d| d.to_string()).unwrap_or_default(),
                c.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out!("{}", table(&["TASK", "STATUS", "DECISION", "WHY"], &rows));
    }
    outln!("{}", summary_line(&v.summary));
    Ok(ExitCode::SUCCESS)
}

async fn start(args: ProjectStartArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut p: ProjectView = client.post(&format!("/api/v1/projects/{}/start", args.id), &serde_json::json!({})).await?;
    if args.wait {
        p = wait(&client, p, Duration::from_secs(args.timeout)).await?;
    }
    finish(&p, args.json, args.wait)
}

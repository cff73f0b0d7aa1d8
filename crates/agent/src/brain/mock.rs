//! The `mock` brain: codeswarm's mock worker (`worker_mode=mock`, its `agent/mock_worker.py`),
//! for tests and protocol checks of orchestrated projects without a model. A planner prompt is
//! answered with the graph its specification gives after `MOCK_TASK_GRAPH_JSON:` (or the
//! reference's two-task default); a project task commits `mock_tasks/<task>.txt` on its branch
//! in the prepared clone; the integration task merges the task branches (fetched from `origin`
//! when missing) into the integration branch; anything else is acknowledged. Git runs in the
//! agent's own process tree, in its workspace.

use std::path::{Path, PathBuf};
use std::process::Command;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Brain, BrainError, BrainHealth, Progress, ProgressSender, TurnRequest, TurnResult};

pub(super) struct MockBrain;

#[async_trait]
impl Brain for MockBrain {
    async fn turn(&self, request: TurnRequest, progress: ProgressSender) -> Result<TurnResult, BrainError> {
        let content = tokio::task::spawn_blocking(move || answer(&request.prompt, &request.workspace))
            .await
            .map_err(|e| BrainError(format!("the mock worker failed: {e}")))?;
        let _ = progress.send(Progress::Delta(content.clone())).await;
        Ok(TurnResult { content, usage: None })
    }

    async fn health(&self) -> BrainHealth {
        BrainHealth::ok()
    }
}

/// The mock worker's answer to a prompt, as the reference's answers it.
pub(crate) fn answer(prompt: &str, workspace: &Path) -> String {
    if prompt.contains("Return the task graph as JSON") || prompt.contains("TASK_GRAPH_JSON") {
        return format!("TASK_GRAPH_JSON\n```json\n{}\n```", serde_json::to_string_pretty(&graph(prompt)).expect("json"));
    }
    if prompt.contains("You are executing orchestrated project task") {
        let repo = workspace.join(line_after(prompt, "Prepared checkout label: ./").filter(|s| !s.is_empty()).unwrap_or("repo"));
        return if prompt.contains("This is the final integration task for the project.") {
            integrate(prompt, &repo)
        } else {
            task(prompt, &repo)
        };
    }
    let text = prompt.split_whitespace().collect::<Vec<_>>().join(" ");
    let shown: String = if text.chars().count() > 180 { text.chars().take(177).chain("...".chars()).collect() } else { text };
    format!("Mock worker received prompt: {shown}")
}

fn line_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(prefix)).map(str::trim)
}

/// The graph after `MOCK_TASK_GRAPH_JSON:` (its first JSON value), else the reference's default.
fn graph(spec: &str) -> Value {
    let given = spec.split_once("MOCK_TASK_GRAPH_JSON:").and_then(|(_, raw)| {
        serde_json::Deserializer::from_str(raw.trim_start()).into_iter::<Value>().next().and_then(Result::ok).filter(Value::is_object)
    });
    given.unwrap_or_else(|| {
        json!({"tasks": [
            {"task_id": "T-001", "title": "Create project scaffold marker",
             "prompt": "Create a mock implementation marker file for the project scaffold.",
             "acceptance_criteria": ["A mock marker file exists in the repo clone.", "The change is committed on the assigned branch."],
             "depends_on": [], "owned_paths": ["mock_tasks/scaffold.txt"]},
            {"task_id": "T-002", "title": "Create feature marker",
             "prompt": "Create a second mock marker file representing a downstream feature task.",
             "acceptance_criteria": ["A second mock marker file exists in the repo clone.", "The change is committed on the assigned branch."],
             "depends_on": ["T-001"], "owned_paths": ["mock_tasks/feature.txt"]}
        ]})
    })
}

/// Runs git in `repo`: whether it succeeded, and what it said.
fn git(repo: &Path, args: &[&str]) -> (bool, String) {
    match Command::new("git").arg("-C").arg(repo).args(args).env("GIT_TERMINAL_PROMPT", "0").output() {
        Ok(out) => {
            let said = if out.stdout.is_empty() { &out.stderr } else { &out.stdout };
            (out.status.success(), String::from_utf8_lossy(said).trim().to_owned())
        }
        Err(e) => (false, format!("cannot run git: {e}")),
    }
}

fn head(repo: &Path, rev: &str) -> String {
    match git(repo, &["rev-parse", rev]) {
        (true, sha) if !sha.is_empty() => sha,
        _ => "unknown".into(),
    }
}

fn identity(repo: &Path) {
    git(repo, &["config", "user.email", "codeswarm-mock@example.test"]);
    git(repo, &["config", "user.name", "Codeswarm Mock Worker"]);
}

fn task_id(prompt: &str) -> String {
    line_after(prompt, "You are executing orchestrated project task ")
        .and_then(|s| s.split('.').next())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("T-UNKNOWN")
        .to_owned()
}

/// A `TASK_RESULT` block, as the reference's mock worker writes it.
struct Report<'a> {
    task: &'a str,
    status: &'a str,
    branch: &'a str,
    base: String,
    head: String,
    files: Vec<String>,
    checks: Vec<String>,
    notes: String,
}

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Report { task, status, branch, base, head, .. } = self;
        write!(
            f,
            "TASK_RESULT\ntask_id: {task}\nstatus: {status}\nbranch: {branch}\nbase_commit: {base}\nhead_commit: {head}\nfiles_changed:\n"
        )?;
        if self.files.is_empty() {
            f.write_str("- none\n")?;
        }
        for file in &self.files {
            writeln!(f, "- {file}")?;
        }
        f.write_str("verification:\n")?;
        for check in &self.checks {
            writeln!(f, "- {check}")?;
        }
        writeln!(f, "notes: {}", self.notes)
    }
}

fn task(prompt: &str, repo: &Path) -> String {
    let id = task_id(prompt);
    let branch =
        line_after(prompt, "Working branch to create/use: ").map_or_else(|| format!("codeswarm/mock/{}", id.to_lowercase()), str::to_owned);
    let title = line_after(prompt, "Task title: ").unwrap_or(&id).to_owned();
    identity(repo);
    git(repo, &["checkout", "-B", &branch]);
    let token: String = id.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    let token = token.trim_matches('_');
    let rel = format!("mock_tasks/{}.txt", if token.is_empty() { "task" } else { token });
    let target: PathBuf = repo.join(&rel);
    let written =
        target.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&target, format!("{id}\n{title}\n")));
    let (status, notes) = match written {
        Err(e) => ("failed", format!("cannot write {rel}: {e}")),
        Ok(()) => {
            git(repo, &["add", &rel]);
            match git(repo, &["commit", "-m", &format!("mock complete {id}")]) {
                (false, said) if !said.to_lowercase().contains("nothing to commit") => ("failed", format!("git commit failed: {said}")),
                _ => ("done", "Mock worker completed the task.".to_owned()),
            }
        }
    };
    let checks = vec!["mock worker created and committed the file".to_owned()];
    Report { task: &id, status, branch: &branch, base: head(repo, "HEAD~1"), head: head(repo, "HEAD"), files: vec![rel], checks, notes }
        .to_string()
}

fn integrate(prompt: &str, repo: &Path) -> String {
    let id = task_id(prompt);
    let branch = line_after(prompt, "Working branch to create/use: ").unwrap_or("codeswarm/mock/integration").to_owned();
    let base = line_after(prompt, "Base branch: ").unwrap_or("main").to_owned();
    // The bullets under "Integration source branches:", each `- T-001: codeswarm/...`.
    let sources: Vec<String> = prompt
        .lines()
        .skip_while(|l| l.trim() != "Integration source branches:")
        .skip(1)
        .map_while(|l| l.trim_start().strip_prefix("- "))
        .map(|item| item.split_once(':').map_or(item, |(_, b)| b).trim().to_owned())
        .filter(|b| !b.is_empty() && b != "none")
        .collect();
    identity(repo);
    let existed = git(repo, &["rev-parse", "--verify", &branch]).0;
    if let (false, said) = git(repo, &["checkout", "-B", &branch, &base]) {
        let at = head(repo, "HEAD");
        let checks = vec!["integration branch checkout attempted".to_owned()];
        let notes = format!("git checkout failed: {said}");
        return Report { task: &id, status: "failed", branch: &branch, base: at.clone(), head: at, files: vec![], checks, notes }
            .to_string();
    }
    let start = head(repo, "HEAD");
    let mut checks = vec![format!("integration branch {} from base branch", if existed { "reset" } else { "created" })];
    let (mut status, mut notes) = ("done", "Mock worker merged task branches into the integration branch.".to_owned());
    for source in &sources {
        if !git(repo, &["rev-parse", "--verify", source]).0 {
            let fetched = git(repo, &["fetch", "origin", &format!("{source}:{source}")]);
            checks.push(format!("fetched {source} from origin"));
            if !fetched.0 {
                (status, notes) = ("blocked", format!("git fetch failed for {source}: {}", fetched.1));
                break;
            }
        }
        let merged = git(repo, &["merge", "--no-ff", "--no-edit", source]);
        checks.push(format!("merged {source}"));
        if !merged.0 {
            (status, notes) = ("blocked", format!("git merge failed for {source}: {}", merged.1));
            git(repo, &["merge", "--abort"]);
            break;
        }
    }
    let end = head(repo, "HEAD");
    let (_, diff) = git(repo, &["diff", "--name-only", &start, &end]);
    let files: Vec<String> = diff.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    Report { task: &id, status, branch: &branch, base: start, head: end, files, checks, notes }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planner_gets_the_graph_its_spec_gives() {
        let given = r#"Specification:
Make it. MOCK_TASK_GRAPH_JSON: {"tasks": [{"task_id": "T-001", "title": "one"}]} and more text
Return the task graph as JSON"#;
        let answer = answer(given, Path::new("/nowhere"));
        assert!(answer.starts_with("TASK_GRAPH_JSON\n```json\n"), "{answer}");
        let graph = clawfleet_core::project::parse_task_graph(&answer).unwrap();
        assert_eq!(graph.len(), 1);
        let default = super::answer("TASK_GRAPH_JSON please", Path::new("/nowhere"));
        assert_eq!(clawfleet_core::project::parse_task_graph(&default).unwrap().len(), 2);
        assert_eq!(super::answer("  hello\n there ", Path::new("/")), "Mock worker received prompt: hello there");
    }
}

//! The rules of orchestrated projects (codeswarm's router), pure: which task graphs are valid,
//! which task runs next and on which idle worker, what a worker is told and how its
//! `TASK_RESULT` answer is read, what a planner is told and how its `TASK_GRAPH_JSON` answer is
//! read, and where a project stands.
//!
//! The prompts and both parsers follow the reference router (`router/router.py`) so that its
//! workers and planners work unchanged. Where clawfleet differs it is stricter or kinder: a
//! dependency cycle is refused (the reference runs it forever), a bullet under a one-line key
//! is kept (the reference crashes), and a task that fails, answers malformed or loses its worker
//! is tried again after a backoff, up to [`MAX_ATTEMPTS`] attempts (the reference leaves it
//! failed); `blocked` and `needs_followups` need an operator, and are left failed at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use clawfleet_proto::MAX_PROMPT_BYTES;
pub use clawfleet_proto::project::{MAX_ATTEMPTS, ProjectStatus, TaskCounts};
use clawfleet_proto::project::{
    MAX_ITEM_CHARS, MAX_LIST, MAX_TASK_ID_CHARS, MAX_TASKS, MAX_TITLE_CHARS, ResumeDecision, ResumeSummary, TaskInput, TaskKind,
    TaskStatus, TaskView,
};

/// A task of a valid graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    pub task_id: String,
    pub title: String,
    pub prompt: String,
    pub acceptance_criteria: Vec<String>,
    pub depends_on: Vec<String>,
    pub owned_paths: Vec<String>,
    pub expected_touch_paths: Vec<String>,
    pub kind: TaskKind,
    pub system_generated: bool,
}

impl TaskSpec {
    /// The task as stored and shown (every field explicit).
    pub fn to_input(&self) -> TaskInput {
        TaskInput {
            task_id: Some(self.task_id.clone()),
            title: self.title.clone(),
            prompt: self.prompt.clone(),
            acceptance_criteria: self.acceptance_criteria.clone(),
            depends_on: self.depends_on.clone(),
            owned_paths: self.owned_paths.clone(),
            expected_touch_paths: self.expected_touch_paths.clone(),
            task_kind: Some(self.kind),
            system_generated: self.system_generated,
        }
    }

    /// A task stored by [`TaskSpec::to_input`], read back as it was checked.
    pub fn from_stored(t: TaskInput) -> TaskSpec {
        TaskSpec {
            task_id: t.task_id.unwrap_or_default(),
            title: t.title,
            prompt: t.prompt,
            acceptance_criteria: t.acceptance_criteria,
            depends_on: t.depends_on,
            owned_paths: t.owned_paths,
            expected_touch_paths: t.expected_touch_paths,
            kind: t.task_kind.unwrap_or(TaskKind::Implementation),
            system_generated: t.system_generated,
        }
    }
}

/// Why a task graph is refused; the texts are the reference router's where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("project requires at least one task")]
    NoTasks,
    #[error("a project has at most {MAX_TASKS} tasks, got {0}")]
    TooManyTasks(usize),
    #[error("Task #{0} has an id of more than {MAX_TASK_ID_CHARS} characters, or with spaces or control characters")]
    BadId(usize),
    #[error("Task {0} is missing title")]
    NoTitle(String),
    #[error("Task {0} is missing prompt")]
    NoPrompt(String),
    #[error("Task {0}: {1}")]
    TooLong(String, String),
    #[error("Duplicate task_id: {0}")]
    Duplicate(String),
    #[error("Task {0} references unknown dependencies: {1}")]
    UnknownDependencies(String, String),
    #[error("Tasks form a dependency cycle: {0}")]
    Cycle(String),
}

fn check_len(id: &str, what: &str, text: &str, max: usize) -> Result<(), GraphError> {
    let n = text.chars().count();
    if n > max {
        return Err(GraphError::TooLong(id.to_owned(), format!("{what} has {n} characters (at most {max})")));
    }
    Ok(())
}

fn check_list(id: &str, what: &str, items: &[String]) -> Result<(), GraphError> {
    if items.len() > MAX_LIST {
        return Err(GraphError::TooLong(id.to_owned(), format!("{what} has {} entries (at most {MAX_LIST})", items.len())));
    }
    items.iter().try_for_each(|i| check_len(id, what, i, MAX_ITEM_CHARS))
}

/// Checks and normalizes a task graph as the reference does (ids default to `T-001`, …;
/// titles and prompts trimmed and required; kinds default to implementation), within bounds,
/// and refuses dependency cycles.
pub fn normalize(tasks: Vec<TaskInput>) -> Result<Vec<TaskSpec>, GraphError> {
    if tasks.is_empty() {
        return Err(GraphError::NoTasks);
    }
    if tasks.len() > MAX_TASKS {
        return Err(GraphError::TooManyTasks(tasks.len()));
    }
    let mut out: Vec<TaskSpec> = Vec::with_capacity(tasks.len());
    for (i, raw) in tasks.into_iter().enumerate() {
        let task_id = raw.task_id.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).unwrap_or_else(|| format!("T-{:03}", i + 1));
        if task_id.chars().count() > MAX_TASK_ID_CHARS || task_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(GraphError::BadId(i + 1));
        }
        let (title, prompt) = (raw.title.trim().to_owned(), raw.prompt.trim().to_owned());
        if title.is_empty() {
            return Err(GraphError::NoTitle(task_id));
        }
        if prompt.is_empty() {
            return Err(GraphError::NoPrompt(task_id));
        }
        check_len(&task_id, "title", &title, MAX_TITLE_CHARS)?;
        if prompt.len() > MAX_PROMPT_BYTES / 2 {
            return Err(GraphError::TooLong(task_id, format!("prompt has {} bytes (at most {})", prompt.len(), MAX_PROMPT_BYTES / 2)));
        }
        check_list(&task_id, "acceptance_criteria", &raw.acceptance_criteria)?;
        check_list(&task_id, "depends_on", &raw.depends_on)?;
        check_list(&task_id, "owned_paths", &raw.owned_paths)?;
        check_list(&task_id, "expected_touch_paths", &raw.expected_touch_paths)?;
        if out.iter().any(|t| t.task_id == task_id) {
            return Err(GraphError::Duplicate(task_id));
        }
        out.push(TaskSpec {
            task_id,
            title,
            prompt,
            acceptance_criteria: raw.acceptance_criteria,
            depends_on: raw.depends_on,
            owned_paths: raw.owned_paths,
            expected_touch_paths: raw.expected_touch_paths,
            kind: raw.task_kind.unwrap_or(TaskKind::Implementation),
            system_generated: raw.system_generated,
        });
    }
    let ids: HashSet<&str> = out.iter().map(|t| t.task_id.as_str()).collect();
    for t in &out {
        let unknown: Vec<&str> = t.depends_on.iter().map(String::as_str).filter(|d| !ids.contains(d)).collect();
        if !unknown.is_empty() {
            return Err(GraphError::UnknownDependencies(t.task_id.clone(), unknown.join(", ")));
        }
    }
    if let Some(cycle) = find_cycle(&out) {
        return Err(GraphError::Cycle(cycle.join(" → ")));
    }
    Ok(out)
}

/// A dependency cycle, as the ids around it (the first repeated at the end), if there is one.
fn find_cycle(tasks: &[TaskSpec]) -> Option<Vec<String>> {
    let index: HashMap<&str, usize> = tasks.iter().enumerate().map(|(i, t)| (t.task_id.as_str(), i)).collect();
    // 0: not seen, 1: on the current path, 2: done.
    let mut mark = vec![0u8; tasks.len()];
    for start in 0..tasks.len() {
        if mark[start] != 0 {
            continue;
        }
        // An explicit stack of (task, next dependency to look at): graphs of thousands of tasks need no
        // recursion.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = 1;
        while let Some(&mut (t, ref mut next)) = stack.last_mut() {
            if let Some(dep) = tasks[t].depends_on.get(*next) {
                *next += 1;
                let d = index[dep.as_str()];
                match mark[d] {
                    0 => {
                        mark[d] = 1;
                        stack.push((d, 0));
                    }
                    1 => {
                        let from = stack.iter().position(|&(s, _)| s == d).expect("on the path");
                        let mut ids: Vec<String> = stack[from..].iter().map(|&(s, _)| tasks[s].task_id.clone()).collect();
                        ids.push(tasks[d].task_id.clone());
                        return Some(ids);
                    }
                    _ => {}
                }
            } else {
                mark[t] = 2;
                stack.pop();
            }
        }
    }
    None
}

/// A branch-name token of an id, as the reference makes it.
pub fn token(id: &str) -> String {
    let mut out = String::new();
    let mut gap = false;
    for c in id.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            out.push(c);
            gap = false;
        } else if !gap {
            out.push('-');
            gap = true;
        }
    }
    let t = out.trim_matches(|c| matches!(c, '-' | '.' | '_'));
    if t.is_empty() { "task".to_owned() } else { t.to_owned() }
}

/// The branch a task's worker commits to.
pub fn task_branch(project_id: &str, task_id: &str) -> String {
    format!("codeswarm/{}/{}", token(project_id), token(task_id))
}

/// The branch the integration task merges every task branch into.
pub fn integration_branch(project_id: &str) -> String {
    format!("codeswarm/{}/integration", token(project_id))
}

/// The graph with the reference's final integration task appended, unless it has one: it
/// depends on every other task and merges their branches in order.
pub fn with_integration(mut tasks: Vec<TaskSpec>, project_id: &str, base_branch: &str) -> Vec<TaskSpec> {
    if tasks.iter().any(|t| t.kind == TaskKind::Integration) {
        return tasks;
    }
    let highest = tasks
        .iter()
        .filter_map(|t| t.task_id.strip_prefix("T-").filter(|n| n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit())))
        .filter_map(|n| n.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    let mut n = highest + 1;
    while tasks.iter().any(|t| t.task_id == format!("T-{n:03}")) {
        n += 1;
    }
    let sources: Vec<String> = tasks.iter().map(|t| format!("- {}: {}", t.task_id, task_branch(project_id, &t.task_id))).collect();
    let ib = integration_branch(project_id);
    let prompt = format!(
        "This is the final integration task for the project.\n\
         Create or reset the integration branch `{ib}` from the base branch `{base_branch}`.\n\
         Merge the completed task branches listed below in the listed order. Fetch any source branch from `origin` first if it is not already available locally. Resolve merge conflicts carefully without rewriting the source task branches.\n\
         After merging, run the strongest repository-level verification you can find. Prefer an existing `verify` or smoke target, otherwise run the most appropriate test/build commands available in the repo.\n\
         If verification fails, either fix the integrated branch and rerun verification or return status `blocked` with a concise explanation.\n\
         Do not create a pull request; the required output is the integrated branch and merge commit.\n\
         \n\
         Integration source branches:\n{}",
        if sources.is_empty() { "- none".to_owned() } else { sources.join("\n") }
    );
    let depends_on = tasks.iter().map(|t| t.task_id.clone()).collect();
    tasks.push(TaskSpec {
        task_id: format!("T-{n:03}"),
        title: "Integrate completed task branches".to_owned(),
        prompt,
        acceptance_criteria: [
            "Create or update the project integration branch from the base branch.",
            "Merge every completed task branch into the integration branch in dependency order.",
            "Run the strongest repo-level verification you can find and report what ran.",
            "Push the integration branch when an origin remote exists.",
        ]
        .map(String::from)
        .to_vec(),
        depends_on,
        owned_paths: Vec::new(),
        expected_touch_paths: Vec::new(),
        kind: TaskKind::Integration,
        system_generated: true,
    });
    tasks
}

/// A task as the control plane keeps it, to schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    pub spec: TaskSpec,
    pub status: TaskStatus,
    pub attempts: u32,
    /// A pending task tried before waits until then (ms on the caller's clock).
    pub not_before_ms: Option<u64>,
}

impl TaskState {
    /// A task as the API shows it, back into what the rules schedule.
    pub fn of_view(t: &TaskView) -> TaskState {
        let spec = TaskSpec::from_stored(TaskInput {
            task_id: Some(t.task_id.clone()),
            title: t.title.clone(),
            prompt: t.prompt.clone(),
            acceptance_criteria: t.acceptance_criteria.clone(),
            depends_on: t.depends_on.clone(),
            owned_paths: t.owned_paths.clone(),
            expected_touch_paths: t.expected_touch_paths.clone(),
            task_kind: Some(t.task_kind),
            system_generated: t.system_generated,
        });
        let not_before_ms = t
            .retry_at
            .as_deref()
            .and_then(|r| humantime::parse_rfc3339_weak(r).ok())
            .map(|at| at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64));
        TaskState { spec, status: t.status, attempts: t.attempts, not_before_ms }
    }
}

/// The paths a task claims: its owned paths, else those it expects to touch (the reference
/// always has the first, so it never reads the second); `/` trimmed.
fn paths(t: &TaskSpec) -> Vec<&str> {
    let list = if t.owned_paths.is_empty() { &t.expected_touch_paths } else { &t.owned_paths };
    list.iter().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()).collect()
}

/// Whether two path lists overlap: one path equal to, or under, the other.
fn overlap(a: &[&str], b: &[&str]) -> bool {
    let under = |x: &str, y: &str| x.len() > y.len() && x.starts_with(y) && x.as_bytes()[y.len()] == b'/';
    a.iter().any(|x| b.iter().any(|y| x == y || under(x, y) || under(y, x)))
}

/// What scheduling looks up, built once for a graph: each task's status by id, and the paths
/// of the assigned tasks that claim some.
struct Board<'a> {
    status: HashMap<&'a str, TaskStatus>,
    /// (task id, paths) of each assigned task with paths.
    claimed: Vec<(&'a str, Vec<&'a str>)>,
}

impl<'a> Board<'a> {
    fn of(tasks: &'a [TaskState]) -> Board<'a> {
        let status = tasks.iter().map(|t| (t.spec.task_id.as_str(), t.status)).collect();
        let claimed = tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Assigned)
            .map(|t| (t.spec.task_id.as_str(), paths(&t.spec)))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        Board { status, claimed }
    }

    /// Why a pending task cannot run now, if it cannot.
    fn obstacle(&self, t: &TaskState, now_ms: u64) -> Option<String> {
        if t.status != TaskStatus::Pending {
            return Some(format!("it is {}", t.status));
        }
        let status_of = |id: &str| self.status.get(id).copied();
        if let Some(dep) = t.spec.depends_on.iter().find(|d| status_of(d) != Some(TaskStatus::Completed)) {
            let s = status_of(dep).map_or("unknown".to_owned(), |s| s.to_string());
            return Some(format!("it waits on {dep}, which is {s}"));
        }
        let mine = paths(&t.spec);
        if !mine.is_empty()
            && let Some((other, _)) = self.claimed.iter().find(|(_, theirs)| overlap(&mine, theirs))
        {
            return Some(format!("{other} (assigned) owns a path it owns"));
        }
        match t.not_before_ms {
            Some(at) if at > now_ms => Some(format!("its retry is due in {} s", (at - now_ms).div_ceil(1000))),
            _ => None,
        }
    }
}

/// The tasks that could run now, in the graph's order.
pub fn ready(tasks: &[TaskState], now_ms: u64) -> Vec<usize> {
    let board = Board::of(tasks);
    (0..tasks.len()).filter(|&i| board.obstacle(&tasks[i], now_ms).is_none()).collect()
}

/// Assigns ready tasks, in the graph's order, to `idle` workers, in their order: at most one
/// task a worker, and no two assigned tasks owning one path. Returns (task, worker) indices;
/// the caller marks them assigned.
pub fn assign(tasks: &[TaskState], idle: usize, now_ms: u64) -> Vec<(usize, usize)> {
    let mut board = Board::of(tasks);
    let mut out = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        if out.len() == idle {
            break;
        }
        if board.obstacle(t, now_ms).is_none() {
            let mine = paths(&t.spec);
            if !mine.is_empty() {
                board.claimed.push((t.spec.task_id.as_str(), mine));
            }
            out.push((i, out.len()));
        }
    }
    out
}

/// How many tasks are where (the reference's `task_counts`).
pub fn counts(tasks: &[TaskState], now_ms: u64) -> TaskCounts {
    let board = Board::of(tasks);
    let mut c = TaskCounts::default();
    for t in tasks {
        match t.status {
            TaskStatus::Assigned => c.assigned += 1,
            TaskStatus::Completed => c.completed += 1,
            TaskStatus::Failed => c.failed += 1,
            TaskStatus::Pending => {
                c.pending += 1;
                if board.obstacle(t, now_ms).is_none() { c.ready += 1 } else { c.blocked += 1 }
            }
        }
    }
    c
}

/// Where a project stands: draft, starting, resuming and error stay until an operator moves
/// them; else completed when every task is, attention when tasks failed and nothing can run or
/// will (no task assigned, ready, or waiting on its retry), running otherwise.
pub fn status(stored: ProjectStatus, tasks: &[TaskState], now_ms: u64) -> ProjectStatus {
    use ProjectStatus::*;
    if matches!(stored, Draft | Starting | Resuming | Error) {
        return stored;
    }
    let c = counts(tasks, now_ms);
    let retrying = tasks.iter().any(|t| t.status == TaskStatus::Pending && t.not_before_ms.is_some_and(|at| at > now_ms));
    if !tasks.is_empty() && c.completed as usize == tasks.len() {
        Completed
    } else if c.failed > 0 && c.assigned == 0 && c.ready == 0 && !retrying {
        Attention
    } else {
        Running
    }
}

/// What holds a project up: each task that cannot run, and why (a failed task with its error).
pub fn stuck(tasks: &[TaskState], errors: &dyn Fn(&str) -> Option<String>, now_ms: u64) -> Vec<String> {
    let board = Board::of(tasks);
    let mut out = Vec::new();
    for t in tasks {
        match t.status {
            TaskStatus::Failed => {
                let why = errors(&t.spec.task_id).unwrap_or_else(|| "no reason given".to_owned());
                out.push(format!(
                    "{} failed after {} attempt{}: {why}",
                    t.spec.task_id,
                    t.attempts,
                    if t.attempts == 1 { "" } else { "s" }
                ));
            }
            TaskStatus::Pending => {
                if let Some(why) = board.obstacle(t, now_ms) {
                    out.push(format!("{}: {why}", t.spec.task_id));
                }
            }
            _ => {}
        }
    }
    out
}

/// How long a task waits before its next attempt: 2 s, doubling, at most a minute.
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs((2u64 << attempts.saturating_sub(1).min(5)).min(60))
}

/// What the project tells a worker about itself, for its task prompt.
#[derive(Debug, Clone, Copy)]
pub struct ProjectInfo<'a> {
    pub project_id: &'a str,
    pub title: &'a str,
    pub base_branch: &'a str,
    pub workspace_subdir: &'a str,
}

/// Items as `- item` lines, or `- none` when there are none.
fn bullets(items: &[String], none: &str) -> String {
    if items.is_empty() { format!("- {none}") } else { items.iter().map(|i| format!("- {i}")).collect::<Vec<_>>().join("\n") }
}

/// The task prompt of a project with no repository: the reference's, without its git.
pub fn plain_task_prompt(p: ProjectInfo<'_>, t: &TaskSpec) -> String {
    format!(
        "You are executing orchestrated project task {id}.\n\nProject: {title}\n\nTask title: {task_title}\nTask prompt:\n{prompt}\n\n\
         Dependencies:\n{deps}\n\nAcceptance criteria:\n{criteria}\n\n\
         Operate only on this task's scope.\n\
         Your final answer must be the TASK_RESULT block only, with no extra prose before or after it.\n\
         Return a structured result using this exact header and keys:\n\n\
         TASK_RESULT\ntask_id: {id}\nstatus: done|blocked|failed|needs_followups\nverification:\n- <command or check>\nnotes: <short summary>",
        id = t.task_id,
        title = p.title,
        task_title = t.title,
        prompt = t.prompt,
        deps = bullets(&t.depends_on, "none"),
        criteria = bullets(&t.acceptance_criteria, "Satisfy the task prompt and describe any verification you ran."),
    )
}

/// The reference router's task prompt, word for word (its workers read it).
pub fn task_prompt(p: ProjectInfo<'_>, t: &TaskSpec) -> String {
    let branch = if t.kind == TaskKind::Integration { integration_branch(p.project_id) } else { task_branch(p.project_id, &t.task_id) };
    let base = if p.base_branch.is_empty() { "current checkout" } else { p.base_branch };
    format!(
        "You are executing orchestrated project task {id}.\n\
         \n\
         Project: {title}\n\
         Repository workspace: your current working directory is already the prepared repository root.\n\
         Prepared checkout label: ./{subdir}\n\
         Base branch: {base}\n\
         Working branch to create/use: {branch}\n\
         \n\
         Task title: {task_title}\n\
         Task prompt:\n\
         {prompt}\n\
         \n\
         Dependencies:\n\
         {deps}\n\
         \n\
         Acceptance criteria:\n\
         {criteria}\n\
         \n\
         Operate only on this task's scope. If you need to run commands or edit files, work in the current working directory unless a command explicitly requires another path.\n\
         Use or create the branch `{branch}` in the repository workspace before making changes.\n\
         Commit your changes on that branch. If git user identity is missing, configure repository-local user.name and user.email first.\n\
         If the repository has an origin remote, push the branch with upstream tracking before you finish.\n\
         Your final answer must be the TASK_RESULT block only, with no extra prose before or after it.\n\
         Return a structured result using this exact header and keys:\n\
         \n\
         TASK_RESULT\n\
         task_id: {id}\n\
         status: done|blocked|failed|needs_followups\n\
         branch: {branch}\n\
         base_commit: <commit>\n\
         head_commit: <commit>\n\
         files_changed:\n\
         - <path>\n\
         verification:\n\
         - <command or check>\n\
         notes: <short summary>",
        id = t.task_id,
        title = p.title,
        subdir = p.workspace_subdir,
        task_title = t.title,
        prompt = t.prompt,
        deps = bullets(&t.depends_on, "none"),
        criteria = bullets(&t.acceptance_criteria, "Satisfy the task prompt and describe any verification you ran."),
    )
}

/// A `TASK_RESULT` block's value: one line, or a list (`files_changed`, `verification`, or a
/// key with bullets under it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Line(String),
    List(Vec<String>),
}

/// Reads the first `TASK_RESULT` block of a worker's answer as the reference does: `key: value`
/// lines (keys in any case, `-` read as `_`), `- item` bullets under the key before them, up to
/// the next all-caps header line; `None` when there is no block or nothing in it.
pub fn parse_task_result(text: &str) -> Option<BTreeMap<String, Field>> {
    let mut lines = text.lines();
    lines.by_ref().find(|l| l.trim() == "TASK_RESULT")?;
    let mut parsed: BTreeMap<String, Field> = BTreeMap::new();
    let mut current: Option<String> = None;
    for raw in lines {
        let line = raw.trim_end();
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            break;
        }
        if let (Some(item), Some(key)) = (line.trim_start().strip_prefix("- "), &current) {
            let item = item.trim().to_owned();
            match parsed.entry(key.clone()).or_insert_with(|| Field::List(Vec::new())) {
                Field::List(items) => items.push(item),
                // The reference crashes here; a bullet under a one-line key joins its line.
                Field::Line(value) => {
                    value.push_str(if value.is_empty() { "" } else { "; " });
                    value.push_str(&item);
                }
            }
            continue;
        }
        let Some((key, value)) = line.split_once(':') else { continue };
        let key = key.trim().to_lowercase().replace('-', "_");
        let value = value.trim().to_owned();
        let field = if key == "files_changed" || key == "verification" {
            Field::List(if value.is_empty() { Vec::new() } else { vec![value] })
        } else {
            Field::Line(value)
        };
        parsed.insert(key.clone(), field);
        current = Some(key);
    }
    (!parsed.is_empty()).then_some(parsed)
}

/// What a worker's answer does to its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: TaskStatus,
    /// The block's status (lowercased), `invalid_result` or `unknown`.
    pub result_status: String,
    pub last_error: Option<String>,
    pub branch: Option<String>,
    pub base_commit: Option<String>,
    pub head_commit: Option<String>,
    /// When a retried task may run again (`status` pending).
    pub retry_in: Option<Duration>,
}

/// Judges a worker's answer to attempt `attempts` of its task: `done` completes it; `blocked`
/// and `needs_followups` leave it failed; `failed`, a malformed block or an unknown status
/// send it back for another attempt after [`backoff`], until the last.
pub fn judge(answer: &str, attempts: u32) -> Outcome {
    let parsed = parse_task_result(answer);
    let line = |k: &str| match parsed.as_ref().and_then(|p| p.get(k)) {
        Some(Field::Line(v)) if !v.is_empty() => Some(v.chars().take(MAX_ITEM_CHARS).collect::<String>()),
        _ => None,
    };
    let (branch, base_commit, head_commit) = (line("branch"), line("base_commit"), line("head_commit"));
    let (result_status, error, retry) = match &parsed {
        None => ("invalid_result".to_owned(), Some("TASK_RESULT block missing or malformed".to_owned()), true),
        Some(_) => match line("status").map(|s| s.to_lowercase()) {
            Some(s) if s == "done" => (s, None, false),
            Some(s) if s == "blocked" || s == "needs_followups" => (s.clone(), Some(line("notes").unwrap_or(s)), false),
            Some(s) if s == "failed" => (s.clone(), Some(line("notes").unwrap_or(s)), true),
            other => (other.unwrap_or_else(|| "unknown".to_owned()), Some("Unrecognized TASK_RESULT status".to_owned()), true),
        },
    };
    let (status, retry_in) = match (&error, retry && attempts < MAX_ATTEMPTS) {
        (None, _) => (TaskStatus::Completed, None),
        (Some(_), true) => (TaskStatus::Pending, Some(backoff(attempts))),
        (Some(_), false) => (TaskStatus::Failed, None),
    };
    Outcome { status, result_status, last_error: error, branch, base_commit, head_commit, retry_in }
}

/// Attempt `attempts` ended without an answer (the brain failed, or the injection did):
/// another attempt after a backoff, or failed after the last.
pub fn attempt_failed(reason: &str, attempts: u32) -> Outcome {
    let (status, retry_in) = worker_lost(attempts);
    let last_error = Some(reason.chars().take(MAX_ITEM_CHARS).collect());
    Outcome { status, result_status: "agent_error".to_owned(), last_error, branch: None, base_commit: None, head_commit: None, retry_in }
}

/// A worker lost with attempt `attempts` of its task: the task goes back (after a backoff), or
/// is left failed after its last attempt.
pub fn worker_lost(attempts: u32) -> (TaskStatus, Option<Duration>) {
    if attempts < MAX_ATTEMPTS { (TaskStatus::Pending, Some(backoff(attempts))) } else { (TaskStatus::Failed, None) }
}

/// What a task's branch (or, for a task of plain prompts, its record) says of its work, for a
/// resume: whether the work is there to keep, why, and the branch's tip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub recoverable: bool,
    pub reason: String,
    pub tip: Option<String>,
}

/// What a resume is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeOptions {
    pub retry_failed: bool,
    pub reverify_completed: bool,
}

/// What a resume does to one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The task's index in the graph.
    pub index: usize,
    pub before: TaskStatus,
    pub after: TaskStatus,
    pub decision: ResumeDecision,
    pub reason: String,
    /// A recovered task's head commit (its branch's tip).
    pub tip: Option<String>,
}

/// Why a resume cannot be done now (the reference's words), else `None`.
pub fn resume_blocked(stored: ProjectStatus, live_assignments: bool, workers: usize) -> Option<&'static str> {
    if stored == ProjectStatus::Completed {
        Some("project is already completed")
    } else if live_assignments {
        Some("project has tasks still assigned to active swarms; terminate or wait for them before resuming")
    } else if workers == 0 {
        Some("project has no worker swarms configured")
    } else {
        None
    }
}

/// Resumes a project's tasks as the reference does, its caller having checked that no task is
/// with a live worker: a completed task stays if `verify` finds its work, else goes back to
/// pending; an assigned task (its worker is gone) is completed if `verify` finds its work,
/// else goes back to pending; a failed task goes back to pending if asked; then every
/// completed task whose dependency is no longer completed goes back to pending, until none
/// does. Without `reverify_completed`, completed tasks stay and assigned ones go back.
/// `verify` is asked only about completed and assigned tasks. Attempts are kept: a retried
/// task that had its last attempt has one more.
pub fn resume(tasks: &[TaskState], opts: ResumeOptions, verify: &mut dyn FnMut(usize) -> Verified) -> Vec<Change> {
    use ResumeDecision::*;
    let mut changes: Vec<Change> = Vec::new();
    let mut change = |index: usize, after: TaskStatus, decision: ResumeDecision, reason: String, tip: Option<String>| {
        changes.push(Change { index, before: tasks[index].status, after, decision, reason, tip });
    };
    for (i, t) in tasks.iter().enumerate() {
        match t.status {
            TaskStatus::Completed if opts.reverify_completed => {
                let v = verify(i);
                if v.recoverable {
                    change(i, TaskStatus::Completed, KeptCompleted, v.reason, None);
                } else {
                    change(i, TaskStatus::Pending, DowngradedToPending, v.reason, None);
                }
            }
            TaskStatus::Assigned if opts.reverify_completed => {
                let v = verify(i);
                if v.recoverable {
                    change(i, TaskStatus::Completed, RecoveredFromBranch, v.reason, v.tip);
                } else {
                    change(i, TaskStatus::Pending, ResetAssigned, v.reason, None);
                }
            }
            TaskStatus::Assigned => change(i, TaskStatus::Pending, ResetAssigned, "Assigned task reset for resume".into(), None),
            TaskStatus::Failed if opts.retry_failed => {
                change(i, TaskStatus::Pending, RetriedFailed, "Failed task reset to pending during resume".into(), None)
            }
            _ => {}
        }
    }
    let mut after: Vec<TaskStatus> = tasks.iter().map(|t| t.status).collect();
    for c in &changes {
        after[c.index] = c.after;
    }
    let index: HashMap<&str, usize> = tasks.iter().enumerate().map(|(i, t)| (t.spec.task_id.as_str(), i)).collect();
    loop {
        let reset = (0..tasks.len()).find_map(|i| {
            let dep = tasks[i].spec.depends_on.iter().find(|d| index.get(d.as_str()).is_none_or(|&j| after[j] != TaskStatus::Completed));
            (after[i] == TaskStatus::Completed).then_some(dep).flatten().map(|d| (i, d))
        });
        let Some((i, dep)) = reset else { break };
        after[i] = TaskStatus::Pending;
        let reason = format!("Dependency {dep} is no longer completed");
        match changes.iter_mut().find(|c| c.index == i) {
            Some(c) => {
                (c.after, c.decision, c.reason, c.tip) = (TaskStatus::Pending, DependencyReset, reason, None);
            }
            None => changes.push(Change {
                index: i,
                before: tasks[i].status,
                after: TaskStatus::Pending,
                decision: DependencyReset,
                reason,
                tip: None,
            }),
        }
    }
    changes.sort_by_key(|c| c.index);
    changes
}

/// How many tasks each decision took.
pub fn resume_summary(changes: &[Change]) -> ResumeSummary {
    let mut s = ResumeSummary::default();
    for c in changes {
        match c.decision {
            ResumeDecision::KeptCompleted => s.kept_completed += 1,
            ResumeDecision::RecoveredFromBranch => s.recovered_from_branch += 1,
            ResumeDecision::DowngradedToPending | ResumeDecision::DependencyReset => s.downgraded_to_pending += 1,
            ResumeDecision::ResetAssigned => s.reset_assigned += 1,
            ResumeDecision::RetriedFailed => s.retried_failed += 1,
        }
    }
    s
}

/// The tasks as they are after `changes` (reset ones with no retry wait).
pub fn resumed(tasks: &[TaskState], changes: &[Change]) -> Vec<TaskState> {
    let mut out = tasks.to_vec();
    for c in changes {
        out[c.index].status = c.after;
        if c.after == TaskStatus::Pending {
            out[c.index].not_before_ms = None;
        }
    }
    out
}

/// Reads a planner's answer as the reference does: each `TASK_GRAPH_JSON` segment's fenced
/// ```` ```json ```` blocks (or the whole segment), the last graph with tasks winning, else the
/// first with none (`{"tasks": [...]}`, `{"graph": {"tasks": [...]}}` or a bare list).
pub fn parse_task_graph(text: &str) -> Result<Vec<TaskInput>, &'static str> {
    let mut graphs: Vec<Vec<serde_json::Value>> = Vec::new();
    for segment in text.split("TASK_GRAPH_JSON").skip(1) {
        let fenced = fenced_json(segment);
        let candidates = if fenced.is_empty() { vec![segment.trim()] } else { fenced };
        for c in candidates {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(c) else { continue };
            let tasks = match v {
                serde_json::Value::Array(list) => Some(list),
                serde_json::Value::Object(mut o) => match o.remove("tasks") {
                    Some(serde_json::Value::Array(list)) => Some(list),
                    _ => match o.remove("graph").and_then(|mut g| g.get_mut("tasks").map(serde_json::Value::take)) {
                        Some(serde_json::Value::Array(list)) => Some(list),
                        _ => None,
                    },
                },
                _ => None,
            };
            graphs.extend(tasks);
        }
    }
    let chosen = match graphs.iter().rposition(|g| !g.is_empty()) {
        Some(i) => graphs.swap_remove(i),
        None if !graphs.is_empty() => return Err("TASK_GRAPH_JSON must contain at least one task"),
        None => return Err("TASK_GRAPH_JSON block missing or malformed"),
    };
    chosen.into_iter().map(|t| serde_json::from_value(t).map_err(|_| "TASK_GRAPH_JSON block missing or malformed")).collect()
}

/// The bodies of a segment's ```` ```json … ``` ```` fences (the tag in any case).
fn fenced_json(segment: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = segment;
    while let Some(open) = rest.find("```") {
        let after = &rest[open + 3..];
        if !after.get(..4).is_some_and(|tag| tag.eq_ignore_ascii_case("json")) {
            rest = after;
            continue;
        }
        let body = &after[4..];
        let Some(close) = body.find("```") else { break };
        let inner = body[..close].trim();
        if !inner.is_empty() {
            out.push(inner);
        }
        rest = &body[close + 3..];
    }
    out
}

/// The reference router's planner prompt, word for word.
pub fn plan_prompt(title: &str, repo: &str, workspace_subdir: &str, base_branch: &str, spec: &str) -> String {
    format!(
        "You are the planning swarm for an orchestrated project.\n\
         Decompose the specification into implementation-ready tasks for the referenced repository.\n\
         Do not include the final merge/integration task yourself; Codeswarm appends that automatically after planning.\n\
         A clone of the repository is available in your workspace for inspection before planning.\n\
         Each task must include task_id, title, prompt, acceptance_criteria, depends_on, and optional owned_paths.\n\
         Do not return an empty task list.\n\
         If the specification requires an exact task count, produce exactly that many tasks.\n\
         Do not use generic graph schemas such as `nodes` and `edges`.\n\
         Your final answer must begin with `TASK_GRAPH_JSON` on its own line.\n\
         The JSON top-level object must contain a `tasks` array.\n\
         \n\
         Project title: {title}\n\
         Repository reference: {repo}\n\
         Repository workspace: ./{workspace_subdir}\n\
         Repository local path: {repo}\n\
         Base branch: {base}\n\
         \n\
         Specification:\n\
         {spec}\n\
         \n\
         Return the task graph as JSON using this exact header and a JSON code fence:\n\
         TASK_GRAPH_JSON\n\
         ```json\n\
         {{\n  \"tasks\": [\n    {{\n      \"task_id\": \"T-001\",\n      \"title\": \"...\",\n      \"prompt\": \"...\",\n      \"acceptance_criteria\": [\"...\"],\n      \"depends_on\": [],\n      \"owned_paths\": [\"optional/path\"]\n    }}\n  ]\n}}\n\
         ```",
        base = if base_branch.is_empty() { "main" } else { base_branch },
    )
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use expect_test::expect;

    use super::*;

    fn task(id: &str, deps: &[&str], paths: &[&str]) -> TaskInput {
        TaskInput {
            task_id: Some(id.to_owned()),
            title: format!("do {id}"),
            prompt: format!("please do {id}"),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            owned_paths: paths.iter().map(|p| p.to_string()).collect(),
            ..TaskInput::default()
        }
    }

    fn states(specs: Vec<TaskSpec>) -> Vec<TaskState> {
        specs.into_iter().map(|spec| TaskState { spec, status: TaskStatus::Pending, attempts: 0, not_before_ms: None }).collect()
    }

    #[test]
    fn graphs_are_checked() {
        let cases: Vec<(&str, Vec<TaskInput>)> = vec![
            ("empty", vec![]),
            ("ok", vec![task("T-001", &[], &[]), task("T-002", &["T-001"], &[])]),
            ("default ids", vec![TaskInput { title: "a".into(), prompt: "b".into(), ..TaskInput::default() }]),
            ("no title", vec![TaskInput { task_id: Some("x".into()), prompt: "b".into(), ..TaskInput::default() }]),
            ("no prompt", vec![TaskInput { task_id: Some("x".into()), title: "  a ".into(), prompt: " ".into(), ..TaskInput::default() }]),
            ("duplicate", vec![task("a", &[], &[]), task("a", &[], &[])]),
            ("dangling", vec![task("a", &["b", "c"], &[])]),
            ("self", vec![task("a", &["a"], &[])]),
            ("cycle", vec![task("a", &["c"], &[]), task("b", &["a"], &[]), task("c", &["b"], &[]), task("d", &[], &[])]),
            ("bad id", vec![task("a b", &[], &[])]),
            ("long title", vec![TaskInput { title: "t".repeat(201), ..task("a", &[], &[]) }]),
            ("many paths", vec![task("a", &[], &["p"; 65])]),
        ];
        let mut out = String::new();
        for (name, tasks) in cases {
            match normalize(tasks) {
                Ok(specs) => writeln!(out, "{name}: {:?}", specs.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>()).unwrap(),
                Err(e) => writeln!(out, "{name}: {e}").unwrap(),
            }
        }
        expect![[r#"
            empty: project requires at least one task
            ok: ["T-001", "T-002"]
            default ids: ["T-001"]
            no title: Task x is missing title
            no prompt: Task x is missing prompt
            duplicate: Duplicate task_id: a
            dangling: Task a references unknown dependencies: b, c
            self: Tasks form a dependency cycle: a → a
            cycle: Tasks form a dependency cycle: a → c → b → a
            bad id: Task #1 has an id of more than 64 characters, or with spaces or control characters
            long title: Task a: title has 201 characters (at most 200)
            many paths: Task a: owned_paths has 65 entries (at most 64)
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn the_integration_task_is_appended_and_merges_every_branch() {
        let specs =
            normalize(vec![task("T-001", &[], &[]), task("T-007", &[], &[]), task("T-008", &[], &[]), task("setup", &[], &[])]).unwrap();
        let all = with_integration(specs, "p 1!", "main");
        let it = all.last().unwrap();
        assert_eq!((it.task_id.as_str(), it.kind, it.system_generated), ("T-009", TaskKind::Integration, true));
        assert_eq!(it.depends_on, ["T-001", "T-007", "T-008", "setup"]);
        assert!(it.prompt.ends_with("Integration source branches:\n- T-001: codeswarm/p-1/T-001\n- T-007: codeswarm/p-1/T-007\n- T-008: codeswarm/p-1/T-008\n- setup: codeswarm/p-1/setup"), "{}", it.prompt);
        assert_eq!(with_integration(all.clone(), "p", "main").len(), all.len(), "one integration task");
        assert_eq!((token("--a b/c__"), token("!!!")), ("a-b-c".to_owned(), "task".to_owned()));
    }

    /// A run of the scheduler: ready tasks to idle workers, one each, paths never shared by
    /// two assigned tasks, dependents after their dependencies.
    #[test]
    fn tasks_are_assigned_in_order_one_a_worker_and_never_on_one_path() {
        let specs = normalize(vec![
            task("a", &[], &["src/core"]),
            task("b", &[], &["src/core/x.rs"]),
            task("c", &[], &["docs"]),
            task("d", &["a"], &[]),
            task("e", &[], &["src/corex"]),
        ])
        .unwrap();
        let mut tasks = states(specs);
        let mut out = String::new();
        let show = |tasks: &[TaskState], out: &mut String, step: &str, pairs: &[(usize, usize)]| {
            let names: Vec<String> = pairs.iter().map(|(t, w)| format!("{}→w{w}", tasks[*t].spec.task_id)).collect();
            let c = counts(tasks, 0);
            writeln!(
                out,
                "{step}: {} | ready {} blocked {} assigned {} done {} | {}",
                names.join(" "),
                c.ready,
                c.blocked,
                c.assigned,
                c.completed,
                status(ProjectStatus::Running, tasks, 0)
            )
            .unwrap();
        };
        let step = |tasks: &mut Vec<TaskState>, out: &mut String, name: &str, idle: usize| {
            let pairs = assign(tasks, idle, 0);
            for (t, _) in &pairs {
                tasks[*t].status = TaskStatus::Assigned;
            }
            show(tasks, out, name, &pairs);
        };
        step(&mut tasks, &mut out, "two idle", 2);
        step(&mut tasks, &mut out, "three more", 3);
        tasks[0].status = TaskStatus::Completed;
        step(&mut tasks, &mut out, "a done", 3);
        for t in &mut tasks {
            t.status = TaskStatus::Completed;
        }
        show(&tasks, &mut out, "all done", &[]);
        expect![[r#"
            two idle: a→w0 c→w1 | ready 1 blocked 2 assigned 2 done 0 | running
            three more: e→w0 | ready 0 blocked 2 assigned 3 done 0 | running
            a done: b→w0 d→w1 | ready 0 blocked 0 assigned 4 done 1 | running
            all done:  | ready 0 blocked 0 assigned 0 done 5 | completed
        "#]]
        .assert_eq(&out);
        let reasons = stuck(&states(normalize(vec![task("a", &[], &[]), task("b", &["a"], &[])]).unwrap()), &|_| None, 0);
        assert_eq!(reasons, ["b: it waits on a, which is pending"]);
    }

    #[test]
    fn results_complete_retry_or_fail_tasks() {
        let block = |status: &str| {
            format!(
                "Working on it.\n```\nTASK_RESULT\ntask_id: T-001\nstatus: {status}\nbranch: codeswarm/p/T-001\nHead-Commit: abc123\nfiles_changed: a.rs\n- b.rs\nverification:\n- cargo test\nnotes: all good\n- really\n```\nDONE\nbranch: ignored"
            )
        };
        let mut out = String::new();
        for (answer, attempts) in [
            (block("done"), 1),
            (block("DONE"), 1),
            (block("blocked"), 1),
            (block("needs_followups"), 1),
            (block("failed"), 1),
            (block("failed"), MAX_ATTEMPTS),
            (block("maybe"), 1),
            ("no block here".to_owned(), 2),
            ("TASK_RESULT\n\n".to_owned(), 1),
        ] {
            let o = judge(&answer, attempts);
            writeln!(
                out,
                "{} (attempt {attempts}) -> {} {:?} retry {:?} branch {:?} head {:?}",
                o.result_status, o.status, o.last_error, o.retry_in, o.branch, o.head_commit
            )
            .unwrap();
        }
        expect![[r#"
            done (attempt 1) -> completed None retry None branch Some("codeswarm/p/T-001") head Some("abc123")
            done (attempt 1) -> completed None retry None branch Some("codeswarm/p/T-001") head Some("abc123")
            blocked (attempt 1) -> failed Some("all good; really") retry None branch Some("codeswarm/p/T-001") head Some("abc123")
            needs_followups (attempt 1) -> failed Some("all good; really") retry None branch Some("codeswarm/p/T-001") head Some("abc123")
            failed (attempt 1) -> pending Some("all good; really") retry Some(2s) branch Some("codeswarm/p/T-001") head Some("abc123")
            failed (attempt 3) -> failed Some("all good; really") retry None branch Some("codeswarm/p/T-001") head Some("abc123")
            maybe (attempt 1) -> pending Some("Unrecognized TASK_RESULT status") retry Some(2s) branch Some("codeswarm/p/T-001") head Some("abc123")
            invalid_result (attempt 2) -> pending Some("TASK_RESULT block missing or malformed") retry Some(4s) branch None head None
            invalid_result (attempt 1) -> pending Some("TASK_RESULT block missing or malformed") retry Some(2s) branch None head None
        "#]]
        .assert_eq(&out);
        let parsed = parse_task_result(&block("done")).unwrap();
        assert_eq!(parsed["files_changed"], Field::List(vec!["a.rs".into(), "b.rs".into()]));
        assert_eq!(parsed["verification"], Field::List(vec!["cargo test".into()]));
        assert_eq!(worker_lost(1), (TaskStatus::Pending, Some(Duration::from_secs(2))));
        assert_eq!(worker_lost(MAX_ATTEMPTS), (TaskStatus::Failed, None));
        assert_eq!([1, 2, 3, 6, 9].map(|a| backoff(a).as_secs()), [2, 4, 8, 60, 60]);
    }

    #[test]
    fn a_failed_task_with_nothing_else_to_do_needs_attention_unless_a_retry_is_due() {
        let mut tasks = states(normalize(vec![task("a", &[], &[]), task("b", &["a"], &[]), task("c", &[], &[])]).unwrap());
        tasks[0].status = TaskStatus::Failed;
        tasks[2].not_before_ms = Some(5000);
        assert_eq!(status(ProjectStatus::Running, &tasks, 1000), ProjectStatus::Running, "c's retry is due");
        tasks[2].status = TaskStatus::Completed;
        assert_eq!(status(ProjectStatus::Running, &tasks, 1000), ProjectStatus::Attention);
        assert_eq!(status(ProjectStatus::Draft, &tasks, 1000), ProjectStatus::Draft);
        let why = stuck(&tasks, &|id| (id == "a").then(|| "tests fail".to_owned()), 1000);
        assert_eq!(why, ["a failed after 0 attempts: tests fail", "b: it waits on a, which is failed"]);
    }

    #[test]
    fn plans_are_read_as_the_reference_reads_them() {
        let cases = [
            "TASK_GRAPH_JSON\n```json\n{\"tasks\": [{\"task_id\": \"T-001\", \"title\": \"a\", \"prompt\": \"b\"}]}\n```",
            "I think.\nTASK_GRAPH_JSON\n{\"graph\": {\"tasks\": [{\"title\": \"a\", \"prompt\": \"b\"}]}}",
            "TASK_GRAPH_JSON\n```JSON\n[{\"title\": \"x\", \"prompt\": \"y\"}]\n```\nTASK_GRAPH_JSON\n```json\n{\"tasks\": []}\n```",
            "TASK_GRAPH_JSON\n```json\n{\"tasks\": []}\n```",
            "no graph",
            "TASK_GRAPH_JSON\n```json\n{\"tasks\": [1]}\n```",
        ];
        let mut out = String::new();
        for c in cases {
            match parse_task_graph(c) {
                Ok(tasks) => writeln!(out, "{:?}", tasks.iter().map(|t| t.title.as_str()).collect::<Vec<_>>()).unwrap(),
                Err(e) => writeln!(out, "{e}").unwrap(),
            }
        }
        expect![[r#"
            ["a"]
            ["a"]
            ["x"]
            TASK_GRAPH_JSON must contain at least one task
            TASK_GRAPH_JSON block missing or malformed
            TASK_GRAPH_JSON block missing or malformed
        "#]]
        .assert_eq(&out);
        let prompt = plan_prompt("Smoke", "/repo", "repo", "", "Make two files.");
        assert!(prompt.contains("Return the task graph as JSON") && prompt.contains("Base branch: main\n"), "{prompt}");
    }

    #[test]
    fn the_task_prompt_is_the_reference_routers() {
        let spec = normalize(vec![task("T-001", &[], &[]), task("T-002", &["T-001"], &[])]).unwrap().remove(1);
        let info = ProjectInfo { project_id: "p1", title: "Smoke", base_branch: "main", workspace_subdir: "repo" };
        let p = task_prompt(info, &spec);
        assert!(p.starts_with("You are executing orchestrated project task T-002.\n\nProject: Smoke\n"), "{p}");
        for line in [
            "Working branch to create/use: codeswarm/p1/T-002\n",
            "Base branch: main\n",
            "Task title: do T-002\n",
            "Task prompt:\nplease do T-002\n\nDependencies:\n- T-001\n",
            "- Satisfy the task prompt and describe any verification you ran.\n",
            "\nTASK_RESULT\ntask_id: T-002\n",
        ] {
            assert!(p.contains(line), "{line:?} in {p}");
        }
    }

    #[test]
    fn resumes_keep_what_branches_show_and_reset_the_rest() {
        use TaskStatus::*;
        // (task, depends on, status, whether its branch shows work)
        type Row = (&'static str, &'static [&'static str], TaskStatus, bool);
        let cases: Vec<(&str, ResumeOptions, Vec<Row>)> = vec![
            (
                "reverify",
                ResumeOptions { retry_failed: false, reverify_completed: true },
                vec![
                    ("A", &[], Completed, true),
                    ("B", &[], Completed, false),
                    ("C", &["B"], Completed, true),
                    ("D", &["C"], Completed, true),
                    ("E", &["A"], Assigned, true),
                    ("F", &["A"], Assigned, false),
                    ("G", &[], Failed, true),
                    ("H", &["G"], Pending, true),
                ],
            ),
            (
                "retry failed, no reverify",
                ResumeOptions { retry_failed: true, reverify_completed: false },
                vec![
                    ("A", &[], Completed, false),
                    ("B", &["A"], Assigned, true),
                    ("C", &[], Failed, false),
                    ("D", &["C"], Completed, true),
                ],
            ),
            ("nothing to do", ResumeOptions { retry_failed: false, reverify_completed: false }, vec![("A", &[], Pending, true)]),
        ];
        let mut out = String::new();
        for (name, opts, rows) in cases {
            let specs = normalize(rows.iter().map(|(id, deps, _, _)| task(id, deps, &[])).collect()).unwrap();
            let mut tasks = states(specs);
            for (t, row) in tasks.iter_mut().zip(&rows) {
                t.status = row.2;
            }
            let mut asked = Vec::new();
            let changes = resume(&tasks, opts, &mut |i| {
                asked.push(rows[i].0);
                let (recoverable, tip) = (rows[i].3, rows[i].3.then(|| format!("tip-{}", rows[i].0)));
                Verified { recoverable, reason: format!("branch {}", if recoverable { "has work" } else { "is empty" }), tip }
            });
            writeln!(out, "{name} (asked about {}):", asked.join(" ")).unwrap();
            for c in &changes {
                let tip = c.tip.as_deref().map(|t| format!(" @{t}")).unwrap_or_default();
                writeln!(out, "  {} {} -> {} {}: {}{tip}", tasks[c.index].spec.task_id, c.before, c.after, c.decision, c.reason).unwrap();
            }
            let s = resume_summary(&changes);
            let after = resumed(&tasks, &changes);
            writeln!(out, "  {s:?}\n  ready after: {:?}", ready(&after, 0).iter().map(|&i| &after[i].spec.task_id).collect::<Vec<_>>())
                .unwrap();
        }
        expect![[r#"
            reverify (asked about A B C D E F):
              A completed -> completed kept_completed: branch has work
              B completed -> pending downgraded_to_pending: branch is empty
              C completed -> pending dependency_reset: Dependency B is no longer completed
              D completed -> pending dependency_reset: Dependency C is no longer completed
              E assigned -> completed recovered_from_branch: branch has work @tip-E
              F assigned -> pending reset_assigned: branch is empty
              ResumeSummary { kept_completed: 1, recovered_from_branch: 1, downgraded_to_pending: 3, reset_assigned: 1, retried_failed: 0 }
              ready after: ["B", "F"]
            retry failed, no reverify (asked about ):
              B assigned -> pending reset_assigned: Assigned task reset for resume
              C failed -> pending retried_failed: Failed task reset to pending during resume
              D completed -> pending dependency_reset: Dependency C is no longer completed
              ResumeSummary { kept_completed: 0, recovered_from_branch: 0, downgraded_to_pending: 1, reset_assigned: 1, retried_failed: 1 }
              ready after: ["B", "C"]
            nothing to do (asked about ):
              ResumeSummary { kept_completed: 0, recovered_from_branch: 0, downgraded_to_pending: 0, reset_assigned: 0, retried_failed: 0 }
              ready after: ["A"]
        "#]]
        .assert_eq(&out);
        let blocked = [
            resume_blocked(ProjectStatus::Completed, false, 1),
            resume_blocked(ProjectStatus::Attention, true, 1),
            resume_blocked(ProjectStatus::Error, false, 0),
            resume_blocked(ProjectStatus::Running, false, 2),
        ];
        expect![[r#"
            [
                Some(
                    "project is already completed",
                ),
                Some(
                    "project has tasks still assigned to active swarms; terminate or wait for them before resuming",
                ),
                Some(
                    "project has no worker swarms configured",
                ),
                None,
            ]
        "#]]
        .assert_debug_eq(&blocked);
    }
}

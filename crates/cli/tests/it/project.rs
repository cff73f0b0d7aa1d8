//! Orchestrated projects on real agents and real git: a task graph run by a fleet whose brain
//! is a script that does what codeswarm's mock worker does (a branch, a commit, a TASK_RESULT
//! block; the integration task merges every task branch), each agent in its own clone. The
//! control plane assigns one task an agent, unlocks dependents, retries a malformed answer,
//! gives back the task of a lost worker and refuses its late answer, and finishes with the
//! integration branch in the project's repository.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Plane, PlaneOptions, eventually};

/// The test's worker brain: the reference's mock worker, in bash. A task whose prompt says
/// FLAKY answers without a TASK_RESULT block the first time each agent sees it; one that says
/// SLOW takes its time; one that says HANG never ends on an agent of the fleet `crew`.
const WORKER: &str = r#"#!/bin/bash
prompt=$(cat)
cd repo || { echo "no clone here"; exit 1; }
task=$(printf '%s\n' "$prompt" | sed -n 's/^You are executing orchestrated project task \(.*\)\.$/\1/p')
branch=$(printf '%s\n' "$prompt" | sed -n 's/^Working branch to create\/use: //p')
base=$(printf '%s\n' "$prompt" | sed -n 's/^Base branch: //p')
case "$prompt" in *FLAKY*) if [ ! -f ../flaky.seen ]; then touch ../flaky.seen; echo "I forgot the format."; exit 0; fi;; esac
case "$prompt" in *SLOW*) sleep 4;; esac
case "$prompt" in *HANG*) case "$PWD" in */crew-*) sleep 300;; esac;; esac
case "$prompt" in *EVIL*) git checkout -q -B main; echo evil >> evil.txt; git add evil.txt; git commit -q -m evil; branch=main;; esac
if printf '%s' "$prompt" | grep -q "This is the final integration task for the project."; then
  git fetch -q origin
  git checkout -q -B "$branch" "origin/$base"
  for b in $(printf '%s\n' "$prompt" | sed -n 's/^- [^:]*: \(codeswarm\/.*\)$/\1/p'); do
    git merge -q --no-ff --no-edit "origin/$b" || { printf 'TASK_RESULT\ntask_id: %s\nstatus: blocked\nnotes: merging %s failed\n' "$task" "$b"; exit 0; }
  done
else
  git checkout -q -B "$branch"
  mkdir -p tasks && echo "$task" > "tasks/$task.txt" && git add tasks && git commit -q -m "$task"
fi
printf 'TASK_RESULT\ntask_id: %s\nstatus: done\nbranch: %s\nbase_commit: %s\nhead_commit: %s\nfiles_changed:\n- tasks/%s.txt\nverification:\n- git log\nnotes: did %s\n' \
  "$task" "$branch" "$(git merge-base HEAD "origin/$base")" "$(git rev-parse HEAD)" "$task" "$task"
"#;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("git (apt-get install git)");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A repository with one commit on main.
fn repository(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["config", "user.name", "test"]);
    git(dir, &["config", "user.email", "test@example.com"]);
    std::fs::write(dir.join("README.md"), "# project\n").unwrap();
    git(dir, &["add", "README.md"]);
    git(dir, &["commit", "-q", "-m", "start"]);
}

fn task(id: &str, prompt: &str, deps: &[&str]) -> Value {
    json!({"task_id": id, "title": format!("make {id}"), "prompt": prompt, "depends_on": deps, "owned_paths": [format!("tasks/{id}.txt")]})
}

/// A plane with a fleet of worker agents whose brain is the script.
fn workers(dir: &Path, fleet: &str, replicas: u32) -> Plane {
    let script = dir.join("worker.sh");
    std::fs::write(&script, WORKER).unwrap();
    let plane = Plane::with(PlaneOptions { heartbeat_ms: 200, ..PlaneOptions::default() });
    let brain = format!("cmd:bash {}", script.display());
    plane.ok(&["launch", fleet, "--replicas", &replicas.to_string(), "--brain", &brain, "--wait"]);
    plane
}

#[test]
fn a_project_runs_its_graph_one_task_an_agent_and_integrates_every_branch() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    repository(&repo);
    let plane = workers(dir.path(), "crew", 2);
    let repo_s = repo.display().to_string();

    // Bad graphs and requests are refused, saying what is wrong.
    let bad = |body: Value| {
        let file = dir.path().join("bad.json");
        std::fs::write(&file, body.to_string()).unwrap();
        plane.fails(&["project", "create", "-f", file.to_str().unwrap()])
    };
    let cyclic =
        json!({"title": "c", "repo_path": repo_s, "worker_swarm_ids": ["crew"], "tasks": [task("a", "x", &["b"]), task("b", "y", &["a"])]});
    assert!(bad(cyclic).contains("Tasks form a dependency cycle: a → b → a"));
    let dangling = json!({"title": "c", "repo_path": repo_s, "worker_swarm_ids": ["crew"], "tasks": [task("a", "x", &["zz"])]});
    assert!(bad(dangling).contains("Task a references unknown dependencies: zz"));
    let nobody = json!({"title": "c", "repo_path": repo_s, "worker_swarm_ids": ["ghost"], "tasks": [task("a", "x", &[])]});
    assert!(bad(nobody).contains("unknown worker_swarm_ids: ghost"));
    let not_git =
        json!({"title": "c", "repo_path": dir.path().display().to_string(), "worker_swarm_ids": ["crew"], "tasks": [task("a", "x", &[])]});
    assert!(bad(not_git).contains("is not a git repository (it has no .git)"));
    let no_branch =
        json!({"title": "c", "repo_path": repo_s, "base_branch": "trunk", "worker_swarm_ids": ["crew"], "tasks": [task("a", "x", &[])]});
    assert!(bad(no_branch).contains("has no branch 'trunk'"));
    assert!(bad(json!({"tasks": []})).contains("the project has no title: give it in the file or with --title"));
    assert!(plane.json(&["project", "list", "--json"])["projects"].as_object().unwrap().is_empty(), "nothing was created");

    // Three tasks (T-002 after T-001; T-003 answers malformed once) and the integration task.
    let plan = json!({"tasks": [task("T-001", "Write the first file.", &[]), task("T-002", "Write the second file.", &["T-001"]),
        task("T-003", "Write the third file. FLAKY", &[])]});
    let file = dir.path().join("plan.json");
    std::fs::write(&file, plan.to_string()).unwrap();
    let done = plane.json(&[
        "project",
        "create",
        "-f",
        file.to_str().unwrap(),
        "--title",
        "Smoke",
        "--repo",
        &repo_s,
        "--workers",
        "crew",
        "--start",
        "--wait",
        "--timeout",
        "240",
        "--json",
    ]);
    assert_eq!(done["status"], "completed", "{done:#}");
    let id = done["project_id"].as_str().unwrap().to_owned();
    assert_eq!(done["task_order"], json!(["T-001", "T-002", "T-003", "T-004"]));
    assert_eq!(done["task_counts"]["completed"], 4);
    let tasks = &done["tasks"];
    assert_eq!(tasks["T-004"]["task_kind"], "integration");
    assert!(tasks["T-003"]["attempts"].as_u64().unwrap() >= 2, "the malformed answer was tried again: {:#}", tasks["T-003"]);
    assert_eq!(tasks["T-001"]["attempts"], 1);
    assert_eq!(tasks["T-001"]["branch"], format!("codeswarm/{id}/T-001"));
    // The integration branch is in the project's repository, with every task's file.
    let ib = done["integration_branch"].as_str().unwrap();
    assert_eq!(ib, format!("codeswarm/{id}/integration"));
    for t in ["T-001", "T-002", "T-003"] {
        assert_eq!(git(&repo, &["show", &format!("{ib}:tasks/{t}.txt")]), t);
    }
    assert_eq!(git(&repo, &["rev-parse", ib]), done["integration_head_commit"].as_str().unwrap());
    // Each agent worked in a clone of its own.
    let paths = &done["repo_preparation"]["crew"]["worker_paths"];
    assert_eq!(paths.as_array().map(Vec::len), Some(2), "{done:#}");

    // Events: an agent never held two tasks at once, and T-002 started after T-001 ended.
    let events = crate::support::events(&plane, "crew");
    let mut holding: std::collections::HashMap<u64, String> = Default::default();
    let mut order = Vec::new();
    for e in &events {
        let (agent, task) = (e["agent"].as_u64(), e["data"]["task_id"].as_str());
        match e["event"].as_str() {
            Some("project_task_assigned") => {
                let (agent, task) = (agent.unwrap(), task.unwrap());
                assert!(holding.insert(agent, task.to_owned()).is_none(), "agent {agent} got {task} while holding another: {events:#?}");
                order.push(format!("+{task}"));
            }
            Some("project_task_result") => {
                holding.remove(&agent.unwrap());
                order.push(format!("-{}:{}", task.unwrap(), e["data"]["result_status"].as_str().unwrap()));
            }
            _ => {}
        }
    }
    let pos = |s: &str| order.iter().position(|o| o == s).unwrap_or_else(|| panic!("{s} in {order:?}"));
    assert!(pos("-T-001:done") < pos("+T-002"), "{order:?}");
    assert!(order.contains(&"-T-003:invalid_result".to_owned()), "{order:?}");
    let text = plane.ok(&["project", "status", &id]);
    assert!(text.contains(&format!("project {id}: completed (4/4 tasks completed")) && text.contains("integration branch: "), "{text}");
    assert!(plane.ok(&["project", "list"]).contains("Smoke"));
    let err = plane.fails(&["project", "start", &id]);
    assert!(err.contains(&format!("project {id} is completed")), "{err}");
    let err = plane.fails(&["project", "status", "nope"]);
    assert!(err.contains("no project 'nope'"), "{err}");
}

/// A worker lost mid-task gives its task back to another; its late answer is not taken.
#[test]
fn a_lost_workers_task_goes_to_another_and_its_late_answer_is_refused() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    repository(&repo);
    let plane = workers(dir.path(), "pair", 2);
    let plan = json!({"title": "Slow", "repo_path": repo.display().to_string(), "worker_swarm_ids": ["pair"],
        "tasks": [task("T-001", "Take your time. SLOW", &[])]});
    let file = dir.path().join("plan.json");
    std::fs::write(&file, plan.to_string()).unwrap();
    let created = plane.json(&["project", "create", "-f", file.to_str().unwrap(), "--start", "--json"]);
    let id = created["project_id"].as_str().unwrap().to_owned();
    let t = Duration::from_secs(60);
    // Frozen once its turn has begun.
    let (first, injection) = eventually(t, "T-001 assigned", || {
        let p = plane.json(&["project", "status", &id, "--json"]);
        let task = &p["tasks"]["T-001"];
        Some((task["assigned_node_id"].as_u64()?, task["assignment_injection_id"].as_str()?.to_owned()))
    });
    eventually(t, "its turn to begin", || {
        let events = crate::support::events(&plane, "pair");
        events.iter().any(|e| e["event"] == "turn_started" && e["injection_id"] == injection.as_str()).then_some(())
    });
    let pid = Pid::from_raw(plane.agent_pid("pair", first as u32).unwrap() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let p = eventually(t, "T-001 given back and done by the other agent", || {
        let p = plane.json(&["project", "status", &id, "--json"]);
        (p["tasks"]["T-001"]["status"] == "completed").then_some(p)
    });
    kill(pid, Signal::SIGCONT).unwrap();
    assert_eq!(p["tasks"]["T-001"]["attempts"], 2, "{p:#}");
    assert_eq!(p["tasks"]["T-001"]["last_assigned_node_id"], 1 - first, "{p:#}");
    let done = eventually(Duration::from_secs(120), "the project completed", || {
        let p = plane.json(&["project", "status", &id, "--json"]);
        (p["status"] == "completed").then_some(p)
    });
    // The frozen agent, back, answers its old attempt: stored, and not taken.
    eventually(t, "the late answer", || {
        let events = crate::support::events(&plane, "pair");
        events.iter().any(|e| e["event"] == "assistant" && e["injection_id"] == injection.as_str()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let events = crate::support::events(&plane, "pair");
    let results: Vec<(u64, &str)> = events
        .iter()
        .filter(|e| e["event"] == "project_task_result" && e["data"]["task_id"] == "T-001")
        .map(|e| (e["agent"].as_u64().unwrap(), e["data"]["result_status"].as_str().unwrap()))
        .collect();
    // The attempt ends as the project loop sees the worker lost, or as the liveness watcher's
    // `agent_error` for the turn it lost ("the agent was lost ... during this turn"): either
    // way once, before the other agent's.
    let errors: Vec<&Value> = events.iter().filter(|e| e["event"] == "project_task_result" || e["event"] == "agent_error").collect();
    assert!(
        results.len() == 2
            && results[0].0 == first
            && matches!(results[0].1, "worker_lost" | "agent_error")
            && results[1] == (1 - first, "done"),
        "{errors:#?}"
    );
    assert_eq!(plane.json(&["project", "status", &id, "--json"])["tasks"], done["tasks"], "nothing changed after the late answer");
}

/// A project survives a kill -9 of the control plane: the attempt under way when it died is
/// taken when the control plane is back, and the project goes on to the end.
#[test]
fn a_project_survives_a_killed_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    repository(&repo);
    let mut plane = workers(dir.path(), "solo", 1);
    let plan = json!({"title": "Survivor", "repo_path": repo.display().to_string(), "worker_swarm_ids": ["solo"],
        "tasks": [task("T-001", "Take your time. SLOW", &[]), task("T-002", "Then this.", &["T-001"])]});
    let file = dir.path().join("plan.json");
    std::fs::write(&file, plan.to_string()).unwrap();
    let created = plane.json(&["project", "create", "-f", file.to_str().unwrap(), "--start", "--json"]);
    let id = created["project_id"].as_str().unwrap().to_owned();
    let t = Duration::from_secs(60);
    eventually(t, "T-001 under way", || {
        let events = crate::support::events(&plane, "solo");
        events.iter().any(|e| e["event"] == "turn_started").then_some(())
    });
    plane.kill();
    std::thread::sleep(Duration::from_secs(1));
    plane.spawn();
    let done = eventually(Duration::from_secs(120), "the project completed after the restart", || {
        let p = plane.json(&["project", "status", &id, "--json"]);
        (p["status"] == "completed").then_some(p)
    });
    assert_eq!(done["tasks"]["T-001"]["attempts"], 1, "the attempt under way was taken, not run again: {done:#}");
    assert_eq!(done["task_counts"]["completed"], 3);
    let ib = done["integration_branch"].as_str().unwrap();
    assert_eq!(git(&repo, &["show", &format!("{ib}:tasks/T-002.txt")]), "T-002");
}

/// codeswarm's router commands: `project_create` (with `auto_start`), `project_list` and
/// `project_start`, answered with the reference's events, on the same projects as the CLI.
#[test]
fn the_router_creates_starts_and_lists_projects() {
    use std::io::Write;

    use crate::router::{command, stdio_router, wait_for, wait_within};
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    repository(&repo);
    let plane = workers(dir.path(), "swarm1", 2);
    let (mut router, mut stdin, rx) = stdio_router(&plane);
    let mut send = |name: &str, rid: &str, payload: Value| stdin.write_all(command(name, rid, payload).as_bytes()).unwrap();

    send(
        "project_create",
        "c0",
        json!({"title": "t", "repo_path": repo.display().to_string(), "worker_swarm_ids": ["swarm1"], "tasks": [7]}),
    );
    let r = wait_for(&rx, "a refusal", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "c0");
    assert_eq!(r["data"]["reason"], "Task #1 must be an object", "{r}");
    send(
        "project_create",
        "c1",
        json!({"title": "t", "repo_path": repo.display().to_string(), "worker_swarm_ids": ["swarm1"], "tasks": []}),
    );
    let r = wait_for(&rx, "a refusal", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "c1");
    assert_eq!(r["data"]["reason"], "project requires at least one task", "{r}");
    send(
        "project_create",
        "c2",
        json!({"title": "t", "repo_mode": "github", "github_owner": "o", "github_repo": "r", "worker_swarm_ids": ["swarm1"], "tasks": []}),
    );
    let r = wait_for(&rx, "a refusal", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "c2");
    assert!(r["data"]["reason"].as_str().unwrap().starts_with("GitHub repositories are not supported here"), "{r}");

    let tasks = json!([task("T-001", "Write it.", &[]), task("T-002", "Then this.", &["T-001"])]);
    send(
        "project_create",
        "c3",
        json!({"title": "Routed", "repo_path": repo.display().to_string(), "worker_swarm_ids": ["swarm1"],
        "base_branch": "main", "workspace_subdir": "repo", "tasks": tasks, "auto_start": true}),
    );
    let created = wait_for(&rx, "project_created", |v| v["event"] == "project_created" && v["data"]["request_id"] == "c3");
    let id = created["data"]["project_id"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["title"], "Routed");
    let started = wait_for(&rx, "project_started", |v| v["event"] == "project_started" && v["data"]["request_id"] == "c3");
    assert_eq!((started["data"]["project_id"].as_str(), started["data"]["status"].as_str()), (Some(id.as_str()), Some("running")));
    let done = crate::support::eventually(Duration::from_secs(120), "the project completed", || {
        send("project_list", "l1", json!({}));
        let list = wait_for(&rx, "project_list", |v| v["event"] == "project_list" && v["data"]["request_id"] == "l1");
        let p = list["data"]["projects"][&id].clone();
        (p["status"] == "completed").then_some(p)
    });
    assert_eq!(done["task_counts"]["completed"], 3, "{done:#}");
    assert_eq!(plane.json(&["project", "status", &id, "--json"])["status"], "completed");
    send("project_plan", "pl1", json!({"title": "t"}));
    let r = wait_within(&rx, 30, "a refusal", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "pl1");
    assert_eq!(r["data"]["reason"], "project_plan requires title, repo_path, spec, and planner_swarm_id", "{r}");
    send("project_start", "s1", json!({"project_id": "nope"}));
    let r = wait_within(&rx, 30, "a refusal", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "s1");
    assert_eq!(r["data"]["reason"], "unknown project_id", "{r}");
    // A completed project: the preview says a resume is blocked, the resume is refused.
    send("project_resume_preview", "rp1", json!({"project_id": id}));
    let r = wait_within(&rx, 30, "a preview", |v| v["event"] == "project_resume_preview" && v["data"]["request_id"] == "rp1");
    let preview = &r["data"]["preview"];
    assert_eq!(
        (preview["blocked"].as_bool(), preview["blocked_reason"].as_str()),
        (Some(true), Some("project is already completed")),
        "{r}"
    );
    assert_eq!(preview["counts_before"]["completed"], 3, "{r}");
    send("project_resume", "r1", json!({"project_id": id, "retry_failed": true}));
    let r = wait_within(&rx, 30, "a refusal", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "r1");
    assert!(r["data"]["reason"].as_str().unwrap().contains("project is already completed"), "{r}");
    send("project_resume", "r2", json!({"project_id": "nope"}));
    let r = wait_within(&rx, 30, "a refusal", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "r2");
    assert_eq!(r["data"]["reason"], "unknown project_id", "{r}");
    drop(stdin);
    let _ = router.wait();
}

/// A project of plain tasks (no repository) on agents joined by hand: no clones, no branches,
/// no integration task; the prompt without its git.
#[test]
fn a_plain_project_runs_on_joined_agents() {
    let plane = Plane::with(PlaneOptions { heartbeat_ms: 200, ..PlaneOptions::default() });
    let brain = r#"cmd:grep -q 'Working branch' && echo "git in a plain task" || printf 'TASK_RESULT\nstatus: done\nnotes: ok\n'"#;
    plane.ok(&["launch", "hands", "--backend", "external", "--replicas", "3", "--brain", brain]);
    let mut agents = Command::new(crate::support::BIN)
        .args(["agent", "--join", "hands", "--count", "3"])
        .env("CLAWFLEET_DATA", plane.data())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tasks: Vec<Value> = (1..=9).map(|i| task(&format!("T-{i:03}"), "Say done.", if i > 3 { &["T-001"] } else { &[] })).collect();
    let file = dir.path().join("plan.json");
    std::fs::write(&file, json!({"title": "Plain", "worker_swarm_ids": ["hands"], "tasks": tasks}).to_string()).unwrap();
    let done = plane.json(&["project", "create", "-f", file.to_str().unwrap(), "--start", "--wait", "--timeout", "120", "--json"]);
    assert_eq!((done["status"].as_str(), done["task_counts"]["completed"].as_u64()), (Some("completed"), Some(9)), "{done:#}");
    assert_eq!(done["repo_mode"], "none");
    assert!(done["tasks"].as_object().unwrap().values().all(|t| t["attempts"] == 1 && t["result_status"] == "done"), "{done:#}");
    let _ = agents.kill();
    let _ = agents.wait();
}

/// The test's planner brain: codeswarm's mock planner (it answers the graph its spec carries
/// after `MOCK_TASK_GRAPH_JSON: `), which the first time it is asked forgets the format.
const PLANNER: &str = r#"#!/bin/bash
prompt=$(cat)
if [ ! -f plan.seen ]; then touch plan.seen; echo "Let me think about it first."; exit 0; fi
graph=$(printf '%s\n' "$prompt" | sed -n 's/^MOCK_TASK_GRAPH_JSON: //p')
printf 'Here is the plan.\nTASK_GRAPH_JSON\n```json\n%s\n```\n' "$graph"
"#;

/// A planner agent turns a spec into the project: a malformed answer fails the plan with the
/// reason, a retry plans it, the project runs to the end; a cyclic graph is refused.
#[test]
fn a_planner_turns_a_spec_into_a_project_and_a_bad_plan_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    repository(&repo);
    let plane = workers(dir.path(), "crew", 2);
    let planner = dir.path().join("planner.sh");
    std::fs::write(&planner, PLANNER).unwrap();
    plane.ok(&["launch", "thinkers", "--brain", &format!("cmd:bash {}", planner.display()), "--wait"]);
    let graph = json!({"tasks": [task("T-001", "Write the first file.", &[]), task("T-002", "Write the second.", &["T-001"])]});
    let spec = dir.path().join("spec.txt");
    std::fs::write(&spec, format!("Make two files, one after the other.\nMOCK_TASK_GRAPH_JSON: {graph}\n")).unwrap();
    let repo_s = repo.display().to_string();
    let args = ["project", "plan", "--spec", spec.to_str().unwrap(), "--planner", "thinkers", "--workers", "crew", "--title", "Planned"];
    let out = plane.cli(&[&args[..], &["--repo", &repo_s, "--start", "--wait", "--timeout", "120", "--json"]].concat());
    assert!(!out.status.success(), "the first answer is no plan");
    let failed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (failed["status"].as_str(), failed["last_error"].as_str()),
        (Some("failed"), Some("TASK_GRAPH_JSON block missing or malformed")),
        "{failed:#}"
    );
    let id = failed["plan_id"].as_str().unwrap().to_owned();
    let retried = plane.json(&["project", "plan-retry", &id, "--json"]);
    assert_eq!(retried["status"], "queued");
    let err = plane.fails(&["project", "plan-retry", &id]);
    assert!(err.contains("only a failed plan is retried"), "{err}");
    let plan = crate::support::eventually(Duration::from_secs(60), "the plan completed", || {
        let list = plane.json(&["project", "plans", "--json"]);
        list["plans"].as_array().unwrap().iter().find(|p| p["plan_id"] == id.as_str() && p["status"] == "completed").cloned()
    });
    assert_eq!(plan["attempts"], 2, "{plan:#}");
    let project = plan["project_id"].as_str().unwrap().to_owned();
    let done = crate::support::eventually(Duration::from_secs(120), "the planned project completed", || {
        let p = plane.json(&["project", "status", &project, "--json"]);
        (p["status"] == "completed").then_some(p)
    });
    assert_eq!(done["task_order"], json!(["T-001", "T-002", "T-003"]), "the planner's two tasks and the integration task");
    assert_eq!(done["title"], "Planned");

    // A cyclic graph is refused with the reason (the planner answers at once now).
    let cyclic = json!({"tasks": [task("a", "x", &["b"]), task("b", "y", &["a"])]});
    std::fs::write(&spec, format!("Loop.\nMOCK_TASK_GRAPH_JSON: {cyclic}\n")).unwrap();
    let out = plane.cli(&[&args[..], &["--wait", "--timeout", "60", "--json"]].concat());
    let failed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(failed["last_error"], "Tasks form a dependency cycle: a → b → a", "{failed:#}");
    let err =
        plane.fails(&["project", "plan", "--spec", spec.to_str().unwrap(), "--planner", "ghost", "--workers", "crew", "--title", "x"]);
    assert!(err.contains("unknown planner_swarm_id"), "{err}");
    let events = crate::support::events(&plane, "thinkers");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).filter(|k| k.starts_with("project_plan_")).collect();
    assert!(kinds.contains(&"project_plan_failed") && kinds.contains(&"project_plan_completed"), "{kinds:?}");
}

/// A worker that answers done with a branch outside its project's (its clone's `main`) does not
/// get it into the project's repository: the attempt fails, and after the last the project
/// needs attention.
#[test]
fn a_worker_cannot_write_the_projects_main_branch() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    repository(&repo);
    let main = git(&repo, &["rev-parse", "main"]);
    git(&repo, &["checkout", "-q", "--detach"]);
    let plane = workers(dir.path(), "rogue", 1);
    let plan = json!({"title": "Evil", "repo_path": repo.display().to_string(), "worker_swarm_ids": ["rogue"],
        "tasks": [task("T-001", "Do it. EVIL", &[])]});
    let file = dir.path().join("plan.json");
    std::fs::write(&file, plan.to_string()).unwrap();
    let out = plane.cli(&["project", "create", "-f", file.to_str().unwrap(), "--start", "--wait", "--timeout", "120", "--json"]);
    assert!(!out.status.success(), "the project cannot complete: {}", String::from_utf8_lossy(&out.stdout));
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["status"], "attention", "{p:#}");
    let t = &p["tasks"]["T-001"];
    assert_eq!((t["status"].as_str(), t["attempts"].as_u64()), (Some("failed"), Some(3)), "{t:#}");
    assert!(t["last_error"].as_str().unwrap().contains("its branch 'main' is not one of the project's"), "{t:#}");
    assert_eq!(git(&repo, &["rev-parse", "main"]), main, "the project's main is untouched");
}

/// codeswarm's resume smoke, on clawfleet: a project whose worker fleet is terminated with a
/// task under way is resumed on another fleet. While the task's worker is alive a resume is
/// refused and the preview says why; then the preview shows the completed task kept (its
/// branch has the work), the resume moves the project to the new fleet, and it completes.
#[test]
fn a_project_resumes_on_another_fleet_once_its_workers_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    repository(&repo);
    let plane = workers(dir.path(), "crew", 1);
    let plan = json!({"title": "Resume", "repo_path": repo.display().to_string(), "worker_swarm_ids": ["crew"],
        "tasks": [task("T-001", "Write the first file.", &[]), task("T-002", "Write the second file. HANG", &["T-001"])]});
    let file = dir.path().join("plan.json");
    std::fs::write(&file, plan.to_string()).unwrap();
    let created = plane.json(&["project", "create", "-f", file.to_str().unwrap(), "--start", "--json"]);
    let id = created["project_id"].as_str().unwrap().to_owned();
    let t = Duration::from_secs(60);
    eventually(t, "T-001 done and T-002 under way", || {
        let p = plane.json(&["project", "status", &id, "--json"]);
        (p["tasks"]["T-001"]["status"] == "completed" && p["tasks"]["T-002"]["status"] == "assigned").then_some(())
    });
    let preview = plane.json(&["project", "resume-preview", &id, "--json"]);
    assert_eq!((preview["blocked"].as_bool(), preview["has_live_assignments"].as_bool()), (Some(true), Some(true)), "{preview:#}");
    assert_eq!(preview["blocking_assignments"][0]["task_id"], "T-002");
    let err = plane.fails(&["project", "resume", &id]);
    assert!(err.contains("project has tasks still assigned to active swarms"), "{err}");
    let err = plane.fails(&["project", "resume", &id, "--workers", "ghost"]);
    assert!(err.contains("unknown worker_swarm_ids: ghost"), "{err}");

    let script = dir.path().join("worker.sh");
    plane.ok(&["launch", "crew2", "--replicas", "1", "--brain", &format!("cmd:bash {}", script.display()), "--wait"]);
    plane.ok(&["terminate", "crew", "--wait"]);
    let preview = plane.json(&["project", "resume-preview", &id, "--workers", "crew2", "--json"]);
    assert_eq!(preview["blocked"], false, "{preview:#}");
    assert_eq!(preview["worker_swarm_ids"], json!(["crew2"]));
    let kept = preview["task_changes"].as_array().unwrap().iter().find(|c| c["task_id"] == "T-001").cloned().unwrap_or_default();
    assert_eq!(kept["resume_decision"], "kept_completed", "{preview:#}");
    assert!(kept["reason"].as_str().unwrap().contains(&format!("codeswarm/{id}/T-001")), "{kept:#}");
    assert_eq!(plane.json(&["project", "status", &id, "--json"])["resume_count"], 0, "a preview changes nothing");
    let text = plane.ok(&["project", "resume-preview", &id, "--workers", "crew2"]);
    assert!(text.contains("kept_completed") && text.contains("1 kept"), "{text}");

    let done = plane.json(&["project", "resume", &id, "--workers", "crew2", "--wait", "--timeout", "120", "--json"]);
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["worker_swarm_ids"], json!(["crew2"]));
    assert_eq!(done["resume_count"], 1);
    assert!(done["resume_summary"]["kept_completed"].as_u64() >= Some(1), "{done:#}");
    assert!(done["tasks"]["T-002"]["attempts"].as_u64() >= Some(2), "{done:#}");
    assert_eq!(done["tasks"]["T-002"]["last_assigned_swarm_id"], "crew2");
    let ib = done["integration_branch"].as_str().unwrap();
    for t in ["T-001", "T-002"] {
        assert_eq!(git(&repo, &["show", &format!("{ib}:tasks/{t}.txt")]), t);
    }
    let err = plane.fails(&["project", "resume", &id]);
    assert!(err.contains("project is already completed"), "{err}");
    let events = crate::support::events(&plane, "crew2");
    assert!(events.iter().any(|e| e["event"] == "project_resumed"), "{events:#?}");
}

/// A plain project whose task failed (its worker said blocked) needs attention; a resume with
/// --retry-failed tries it again, and it completes.
#[test]
fn a_failed_task_is_tried_again_on_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("unblocked");
    let brain = format!(
        "cmd:if [ -f {} ]; then printf 'TASK_RESULT\\nstatus: done\\nnotes: ok\\n'; else printf 'TASK_RESULT\\nstatus: blocked\\nnotes: no access\\n'; fi",
        flag.display()
    );
    let plane = Plane::with(PlaneOptions { heartbeat_ms: 200, ..PlaneOptions::default() });
    plane.ok(&["launch", "hands", "--replicas", "1", "--brain", &brain, "--wait"]);
    let file = dir.path().join("plan.json");
    std::fs::write(&file, json!({"title": "Plain", "worker_swarm_ids": ["hands"], "tasks": [task("T-001", "Do it.", &[])]}).to_string())
        .unwrap();
    let created = plane.json(&["project", "create", "-f", file.to_str().unwrap(), "--start", "--json"]);
    let id = created["project_id"].as_str().unwrap().to_owned();
    let p = eventually(Duration::from_secs(60), "the project to need attention", || {
        let p = plane.json(&["project", "status", &id, "--json"]);
        (p["status"] == "attention").then_some(p)
    });
    assert_eq!(p["tasks"]["T-001"]["last_error"], "no access", "{p:#}");
    let preview = plane.json(&["project", "resume-preview", &id, "--json"]);
    assert_eq!(preview["summary"]["retried_failed"], 0, "not without --retry-failed: {preview:#}");
    std::fs::write(&flag, "").unwrap();
    let done = plane.json(&["project", "resume", &id, "--retry-failed", "--wait", "--timeout", "60", "--json"]);
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["resume_summary"]["retried_failed"], 1, "{done:#}");
    assert_eq!(done["tasks"]["T-001"]["attempts"], 2);
}

/// codeswarm's own smoke (`tools/orchestrated_project_smoke.py`), step by step through the
/// router: two swarms of mock workers launched with `worker_mode: mock`, a plan whose spec
/// carries the graph, completed with three tasks, the marker files in the workers' clones and
/// on the integration branch.
#[test]
fn codeswarms_smoke_passes_through_the_router_with_mock_workers() {
    use std::io::Write;

    use crate::router::{command, stdio_router, wait_for, wait_within};
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    repository(&repo);
    let plane = Plane::with(PlaneOptions { heartbeat_ms: 200, ..PlaneOptions::default() });
    let (mut router, mut stdin, rx) = stdio_router(&plane);
    let mut send = |name: &str, rid: &str, payload: Value| stdin.write_all(command(name, rid, payload).as_bytes()).unwrap();
    let params = json!({"worker_mode": "mock", "mock_push_branches": true});
    send("swarm_launch", "l1", json!({"nodes": 1, "system_prompt": "You are a mock planner worker.", "provider_params": params}));
    send("swarm_launch", "l2", json!({"nodes": 2, "system_prompt": "You are a mock task worker.", "provider_params": params}));
    // The two launches answer in either order.
    let mut launched = std::collections::HashMap::new();
    while launched.len() < 2 {
        let v = wait_for(&rx, "both swarms", |v| v["event"] == "swarm_launched");
        assert_eq!(v["data"]["agent_runtime"], "mock", "{v}");
        launched.insert(v["data"]["request_id"].as_str().unwrap().to_owned(), v["data"]["swarm_id"].as_str().unwrap().to_owned());
    }
    let (planner, worker) = (launched["l1"].clone(), launched["l2"].clone());
    for fleet in [&planner, &worker] {
        eventually(Duration::from_secs(60), "the swarm's agents to be idle", || {
            let s = plane.json(&["status", fleet, "--json"]);
            s["agents"].as_array().unwrap().iter().all(|a| a["state"] == "idle").then_some(())
        });
    }
    let graph = json!({"tasks": [
        {"task_id": "T-001", "title": "Create marker one", "prompt": "Create the first smoke marker file.",
         "acceptance_criteria": ["mock_tasks/T-001.txt exists"], "depends_on": [], "owned_paths": ["mock_tasks/T-001.txt"]},
        {"task_id": "T-002", "title": "Create marker two", "prompt": "Create the second smoke marker file.",
         "acceptance_criteria": ["mock_tasks/T-002.txt exists"], "depends_on": ["T-001"], "owned_paths": ["mock_tasks/T-002.txt"]},
    ]});
    let spec = format!("Create a deterministic smoke-test task graph.\nMOCK_TASK_GRAPH_JSON: {graph}");
    send(
        "project_plan",
        "p1",
        json!({"title": "Smoke Project", "repo_path": repo.display().to_string(), "spec": spec, "planner_swarm_id": planner,
               "worker_swarm_ids": [worker], "base_branch": "main", "workspace_subdir": "repo", "auto_start": true}),
    );
    let done = wait_within(&rx, 120, "the project completed", |v| {
        v["event"] == "projects_updated"
            && v["data"]["projects"]
                .as_object()
                .is_some_and(|ps| ps.values().any(|p| p["title"] == "Smoke Project" && p["status"] == "completed"))
    });
    let project = done["data"]["projects"].as_object().unwrap().values().find(|p| p["title"] == "Smoke Project").unwrap().clone();
    assert_eq!(project["task_counts"]["completed"], 3, "{project:#}");
    let paths: Vec<std::path::PathBuf> = project["repo_preparation"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p["worker_paths"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().into()))
        .collect();
    assert!(!paths.is_empty(), "{project:#}");
    let ib = project["integration_branch"].as_str().unwrap();
    for rel in ["mock_tasks/T-001.txt", "mock_tasks/T-002.txt"] {
        assert!(paths.iter().any(|p| p.join(rel).exists()), "{rel} in no worker's clone");
        let on_branch =
            |r: &Path| Command::new("git").arg("-C").arg(r).args(["show", &format!("{ib}:{rel}")]).output().unwrap().status.success();
        assert!(paths.iter().any(|p| on_branch(p)), "{rel} not on {ib} in any worker's clone");
        assert!(on_branch(&repo), "{rel} not on {ib} in the project's repository");
    }
    send("swarm_terminate", "t1", json!({"swarm_id": planner}));
    send("swarm_terminate", "t2", json!({"swarm_id": worker}));
    wait_for(&rx, "the planner gone", |v| v["event"] == "swarm_terminated" && v["data"]["request_id"] == "t1");
    let _ = router.kill();
}

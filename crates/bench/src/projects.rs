//! Agents working together at scale (issue #14): 1,000 tiny tasks (a project of plain tasks,
//! with no dependencies) over 100 joined agents whose brain answers `TASK_RESULT ... done` at
//! once, from `project start` until the project is completed (quiescence), with the
//! assignments a second and a check, from the stored events, that no agent ever held two tasks;
//! 1,000 half-second tasks, and the same with 10 % of the workers killed a third of the way
//! through (their tasks given back and done by the others); and a council of 5 roles over 100
//! echo agents, from `council open` until it is active.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clawfleet_proto::api::LaunchRequest;
use clawfleet_proto::council::{CouncilOpen, CouncilState, CouncilView};
use clawfleet_proto::event::{Event, EventBody};
use clawfleet_proto::project::{ProjectCreate, ProjectStatus, ProjectView, TaskInput};

use crate::{Args, Plane, Row, percentile};

const AGENTS: u32 = 100;
/// Agents a `agent --join` process runs: killing one process kills a tenth of the workers.
const PER_PROCESS: u32 = 10;

pub(crate) async fn run(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let plane = Plane::start(&a.bin, 1000, None).await?;
    let tasks = if a.quick { 300 } else { 1000 };
    let clean = tasks_run(a, &plane, "works", tasks, INSTANT, false).await?;
    let steady = tasks_run(a, &plane, "works2", tasks, HALF_SECOND, false).await?;
    let killed = tasks_run(a, &plane, "works3", tasks, HALF_SECOND, true).await?;
    rows.push(Row {
        name: "1,000 tiny tasks over 100 agents: project start until completed",
        result: format!(
            "{:.1} s, {:.0} assignments/s, {} double assignments",
            clean.seconds,
            clean.assignments as f64 / clean.seconds,
            clean.doubles
        ),
        goal: "no task run twice at once, none lost; as fast as the agents answer",
        notes: format!(
            "{tasks} plain tasks, no dependencies; 100 agents joined in 10 processes, brain `cmd:` printing a done TASK_RESULT (a process a task); \
             each assignment is one transaction with its injection; {} attempts in all",
            clean.assignments
        ),
    });
    rows.push(Row {
        name: "1,000 half-second tasks over 100 agents, then the same with 10 % of the workers killed a third of the way through",
        result: format!(
            "{:.1} s, then {:.1} s with {} tasks tried again; {} double assignments",
            steady.seconds,
            killed.seconds,
            killed.retried,
            steady.doubles + killed.doubles
        ),
        goal: "every task completed; the killed workers' tasks given back (at least 5 s: 1,000 × 0.5 s over 100 agents)",
        notes: format!(
            "the brain sleeps 0.5 s, so agents hold their tasks; one `agent --join` process of 10 agents killed (SIGKILL): their tasks \
             go back once they are seen lost (three missed heartbeats, 3 s) after a 2 s backoff; ratio of times, killed/steady: {:.2}",
            killed.seconds / steady.seconds
        ),
    });
    council(a, &plane, rows).await?;
    plane.stop().await;
    Ok(())
}

struct Outcome {
    seconds: f64,
    assignments: usize,
    doubles: usize,
    retried: usize,
}

/// Agent processes, killed when dropped (a failed run leaves none behind).
pub(crate) struct Agents(pub Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Joined agents of `fleet`, `PER_PROCESS` a process.
fn join(a: &Args, plane: &Plane, fleet: &str, extra: &[&str]) -> anyhow::Result<Agents> {
    let children = (0..AGENTS / PER_PROCESS)
        .map(|i| {
            Command::new(&a.bin)
                .args(["agent", "--join", fleet, "--slot", &(i * PER_PROCESS).to_string(), "--count", &PER_PROCESS.to_string(), "--data"])
                .arg(&plane.data)
                .args(extra)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting joined agents")
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Agents(children))
}

async fn launch(plane: &Plane, fleet: &str, brain: &str) -> anyhow::Result<()> {
    let req = LaunchRequest {
        name: fleet.into(),
        replicas: AGENTS,
        backend: Some("external".into()),
        brain: Some(brain.into()),
        ..LaunchRequest::default()
    };
    let _: serde_json::Value = plane.client.post("/api/v1/fleets", &req).await?;
    Ok(())
}

/// A worker brain that answers done at once, and one that takes half a second.
const INSTANT: &str = r"cmd:printf 'TASK_RESULT\nstatus: done\nnotes: ok\n'";
const HALF_SECOND: &str = r"cmd:sleep 0.5; printf 'TASK_RESULT\nstatus: done\nnotes: ok\n'";

async fn tasks_run(a: &Args, plane: &Plane, fleet: &str, tasks: usize, brain: &str, kill: bool) -> anyhow::Result<Outcome> {
    launch(plane, fleet, brain).await?;
    let mut agents = join(a, plane, fleet, &[])?;
    plane.wait_ready(fleet, AGENTS, Duration::from_secs(120)).await?;
    let graph: Vec<TaskInput> = (1..=tasks)
        .map(|i| TaskInput {
            task_id: Some(format!("T-{i:04}")),
            title: format!("task {i}"),
            prompt: "Say done.".into(),
            ..TaskInput::default()
        })
        .collect();
    let req = ProjectCreate {
        title: format!("{tasks} tiny tasks"),
        worker_swarm_ids: vec![fleet.into()],
        tasks: graph,
        ..ProjectCreate::default()
    };
    let created: ProjectView = plane.client.post("/api/v1/projects", &req).await?;
    let path = format!("/api/v1/projects/{}", created.project_id);
    let began = Instant::now();
    let _: ProjectView = plane.client.post(&format!("{path}/start"), &serde_json::json!({})).await?;
    let mut killed = false;
    let seconds = loop {
        let p: ProjectView = plane.client.get(&path).await?;
        if p.status == ProjectStatus::Completed {
            break began.elapsed().as_secs_f64();
        }
        if p.status != ProjectStatus::Running && p.status != ProjectStatus::Starting {
            bail!("the project is {} ({:?})", p.status, p.stuck.first());
        }
        if kill && !killed && p.task_counts.completed as usize >= tasks / 3 {
            let victim = &mut agents.0[3];
            victim.kill()?;
            victim.wait()?;
            killed = true;
        }
        if began.elapsed() > Duration::from_secs(600) {
            bail!("the project is not completed after 600 s: {:?}", p.task_counts);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let p: ProjectView = plane.client.get(&path).await?;
    let retried = p.tasks.values().filter(|t| t.attempts > 1).count();
    let (assignments, doubles) = holdings(plane, fleet).await?;
    drop(agents);
    plane.terminate(fleet).await?;
    Ok(Outcome { seconds, assignments, doubles, retried })
}

/// From the fleet's stored events: how many tasks were assigned, and how often an agent was
/// given one while it still held another.
async fn holdings(plane: &Plane, fleet: &str) -> anyhow::Result<(usize, usize)> {
    let events: Vec<Event> = plane.events(fleet).await?;
    let mut holding: HashMap<u32, String> = HashMap::new();
    let (mut assignments, mut doubles) = (0, 0);
    for e in events {
        match (&e.body, e.agent) {
            (EventBody::ProjectTaskAssigned { task_id, .. }, Some(agent)) => {
                assignments += 1;
                if holding.insert(agent, task_id.clone()).is_some() {
                    doubles += 1;
                }
            }
            (EventBody::ProjectTaskResult { .. }, Some(agent)) => {
                holding.remove(&agent);
            }
            _ => {}
        }
    }
    Ok((assignments, doubles))
}

/// A council of 5 roles over 100 echo agents: open until active, over a few trials.
async fn council(a: &Args, plane: &Plane, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let fleet = "senate";
    launch(plane, fleet, "echo").await?;
    let agents = join(a, plane, fleet, &[])?;
    plane.wait_ready(fleet, AGENTS, Duration::from_secs(120)).await?;
    let trials = if a.quick { 3 } else { 10 };
    let mut took = Vec::new();
    for _ in 0..trials {
        let req = CouncilOpen {
            roles: ["planner", "architect", "coder", "reviewer", "tester"].map(String::from).to_vec(),
            core: Vec::new(),
            timeout_seconds: Some(60),
            brief: "ship the release".into(),
        };
        let began = Instant::now();
        let mut c: CouncilView = plane.client.post(&format!("/api/v1/fleets/{fleet}/councils"), &req).await?;
        let path = format!("/api/v1/fleets/{fleet}/councils/{}", c.id);
        while c.state == CouncilState::Open {
            tokio::time::sleep(Duration::from_millis(5)).await;
            c = plane.client.get(&path).await?;
        }
        if c.state != CouncilState::Active {
            bail!("council {} is {}", c.id, c.state);
        }
        took.push(began.elapsed().as_secs_f64() * 1000.0);
        let _: CouncilView = plane.client.post(&format!("{path}/close"), &serde_json::json!({})).await?;
    }
    let (p50, p99) = (percentile(&mut took, 0.5), percentile(&mut took, 0.99));
    rows.push(Row {
        name: "a council of 5 roles over 100 agents: council open until active",
        result: format!("p50 {p50:.0} ms, p99 {p99:.0} ms over {trials} councils"),
        goal: "within a heartbeat or two (1 s here)",
        notes: "100 joined echo agents (the brain answers with the roles in the order it was told them); one play directive on the fleet's topic \
                asks them all; claims judged in the ingest transaction; polled every 5 ms"
            .to_owned(),
    });
    drop(agents);
    plane.terminate(fleet).await?;
    Ok(())
}

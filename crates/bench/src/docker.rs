//! The docker backend on this machine's single-node Swarm: launch to all-ready (every agent
//! answered with a heartbeat, not just a started container) for 10 and 50 replicas, and
//! discovery of 10, 50 and 100 tasks by the swarm method (the task list, from the host) and by
//! the dns method (`tasks.NAME`, resolved from a container on the fleet's network, which is the
//! only place it resolves).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clawfleet_docker::discover::{self, Discovery, Method, Query};
use clawfleet_docker::{Engine, swarm};
use serde_json::Value;

use crate::{Args, Plane, Row};

const IMAGE: &str = "clawfleet-agent:bench";
const NETWORK: &str = "clawfleet-bench";

pub(crate) async fn run(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let engine = Engine::from_env();
    let info: Value = engine.get("/info").await.context("the docker benchmarks need a Docker Engine")?;
    if info["Swarm"]["LocalNodeState"] != "active" {
        bail!("the docker benchmarks need Swarm mode (docker swarm init)");
    }
    let host = swarm::gateway(&engine).await?;
    let started = Instant::now();
    let out = Command::new(&a.bin).args(["image", "build", "--tag", IMAGE, "--json"]).output()?;
    if !out.status.success() {
        bail!("image build failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let build_s = started.elapsed().as_secs_f64();
    let plane = Plane::start_with(&a.bin, 2000, None, Some((&host, NETWORK)), &[]).await?;
    let result = measure(a, &plane, &engine, rows, build_s).await;
    for fleet in ["d10", "d50"] {
        let _ = plane.terminate(fleet).await;
    }
    plane.stop().await;
    let _ = Command::new("docker").args(["network", "rm", NETWORK]).output();
    result
}

async fn measure(a: &Args, plane: &Plane, engine: &Engine, rows: &mut Vec<Row>, build_s: f64) -> anyhow::Result<()> {
    let reps = if a.quick { 5 } else { 20 };
    let mut discovery = Vec::new();
    for (fleet, n) in [("d10", 10u32), ("d50", 50)] {
        let started = Instant::now();
        plane.launch_image(fleet, n, "docker", Some(IMAGE)).await?;
        plane.wait_ready(fleet, n, Duration::from_secs(300)).await?;
        let ready_s = started.elapsed().as_secs_f64();
        rows.push(Row {
            name: if n == 10 { "docker: launch 10 agents to all ready" } else { "docker: launch 50 agents to all ready" },
            result: format!("{ready_s:.1} s"),
            goal: "-",
            notes: format!(
                "a Swarm service on 1 node, image FROM scratch (built in {build_s:.1} s); ready = every agent sent an idle heartbeat"
            ),
        });
        discovery.push((fleet, n, discover_both(engine, fleet, n, reps).await?));
    }
    let (fleet, _) = ("d50", 50);
    let _: Value = plane.client.post(&format!("/api/v1/fleets/{fleet}/scale"), &serde_json::json!({"replicas": 100})).await?;
    plane.wait_ready(fleet, 100, Duration::from_secs(600)).await?;
    discovery.push((fleet, 100, discover_both(engine, fleet, 100, reps).await?));
    for (_, n, (swarm, dns)) in discovery {
        rows.push(Row {
            name: match n {
                10 => "docker: discover 10 tasks, swarm vs dns",
                50 => "docker: discover 50 tasks, swarm vs dns",
                _ => "docker: discover 100 tasks, swarm vs dns",
            },
            result: format!(
                "swarm {}/{n} found in {:.1} ms; dns {}/{n} in {:.1} ms",
                swarm.found, swarm.median_ms, dns.found, dns.median_ms
            ),
            goal: "100% found, < 100 ms at 100",
            notes: format!(
                "medians; swarm: {reps} runs of GET /services + GET /tasks from the host (max {:.1} ms); dns: {} runs resolving tasks.NAME in a container on the network",
                swarm.max_ms,
                reps.min(5)
            ),
        });
    }
    Ok(())
}

struct Measured {
    found: usize,
    median_ms: f64,
    max_ms: f64,
}

async fn discover_both(engine: &Engine, fleet: &str, n: u32, reps: usize) -> anyhow::Result<(Measured, Measured)> {
    let service = format!("clawfleet-{fleet}");
    let query = Query { service: service.clone(), method: Method::Swarm, network: None, verify_health: false, health_port: None };
    let ro = engine.read_only();
    // Swarm counts a task running once its health check passed.
    let deadline = Instant::now() + Duration::from_secs(120);
    while discover::discover(&ro, &query).await?.tasks.len() < n as usize {
        if Instant::now() > deadline {
            bail!("swarm discovery did not see {n} running tasks of {service}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..reps {
        let d = discover::discover(&ro, &query).await?;
        found = d.tasks.len();
        times.push(d.elapsed_ms);
    }
    let swarm = summarize(found, times);
    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..reps.min(5) {
        let out = Command::new("docker")
            .args(["run", "--rm", "--network", NETWORK, "--entrypoint", "/clawfleet", IMAGE])
            .args(["discover", "--service", &service, "--method", "dns", "--json"])
            .output()?;
        if !out.status.success() {
            bail!("dns discovery in a container failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let d: Discovery = serde_json::from_slice(&out.stdout)?;
        found = d.tasks.len();
        times.push(d.elapsed_ms);
    }
    Ok((swarm, summarize(found, times)))
}

fn summarize(found: usize, mut times: Vec<f64>) -> Measured {
    times.sort_by(f64::total_cmp);
    Measured { found, median_ms: times[times.len() / 2], max_ms: *times.last().unwrap_or(&0.0) }
}

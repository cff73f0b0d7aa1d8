//! Desired state and rollouts (issue #12): a rollout of 50 local agents to a new version with
//! `max_unavailable` 1 and 25 %, side by side; planning and applying a declaration of 100
//! fleets; how late a lost local agent is noticed while another fleet's backend hangs, against
//! the same control plane with no hanging fleet; and a deploy of 20 docker agents with
//! `max_unavailable` 2 against `docker service update --update-parallelism 2` of the same
//! service (same image, same health check).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clawfleet_proto::api::{ApplyPlan, ApplyRequest, DeployPolicy, FleetStatus, LaunchRequest, MaxUnavailable, UpdateRequest};

use crate::{Args, Plane, Row, median};

pub(crate) async fn run(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    rollout(a, rows).await?;
    plan_hundred(a, rows).await?;
    detection_beside_a_hang(a, rows).await?;
    docker_rollout(a, rows).await
}

/// Seconds from `update --version 2` until every agent of the fleet is ready on version 2.
async fn one_rollout(plane: &Plane, name: &str, replicas: u32, max_unavailable: MaxUnavailable) -> anyhow::Result<f64> {
    let req = LaunchRequest {
        name: name.into(),
        replicas,
        backend: Some("local".into()),
        brain: Some("echo".into()),
        deploy: Some(DeployPolicy { max_unavailable: Some(max_unavailable), ..Default::default() }),
        ..LaunchRequest::default()
    };
    let _: serde_json::Value = plane.client.post("/api/v1/fleets", &req).await?;
    plane.wait_ready(name, replicas, Duration::from_secs(180)).await?;
    let t0 = Instant::now();
    let update = UpdateRequest { image: None, version: Some("2".into()) };
    let _: serde_json::Value = plane.client.post(&format!("/api/v1/fleets/{name}/update"), &update).await?;
    let deadline = t0 + Duration::from_secs(600);
    loop {
        let status: FleetStatus = plane.client.get(&format!("/api/v1/fleets/{name}")).await?;
        let done = status
            .agents
            .iter()
            .filter(|a| a.slot < replicas && matches!(a.state.as_str(), "idle" | "busy") && a.fleet_version.as_deref() == Some("2"))
            .count();
        if done == replicas as usize {
            let took = t0.elapsed().as_secs_f64();
            plane.terminate(name).await?;
            return Ok(took);
        }
        if Instant::now() > deadline {
            bail!("{name}: only {done} of {replicas} agents on version 2 after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rollout(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let replicas = if a.quick { 20 } else { 50 };
    let runs = if a.quick { 1 } else { 3 };
    let plane = Plane::start(&a.bin, 500, None).await?;
    let (mut one, mut quarter) = (Vec::new(), Vec::new());
    for run in 0..runs {
        // Alternately, so that drift on a noisy machine falls on both.
        one.push(one_rollout(&plane, &format!("r1-{run}"), replicas, MaxUnavailable::Count(1)).await?);
        quarter.push(one_rollout(&plane, &format!("rq-{run}"), replicas, MaxUnavailable::Percent(25)).await?);
    }
    plane.stop().await;
    let show = |v: &[f64]| v.iter().map(|s| format!("{s:.1}")).collect::<Vec<_>>().join(", ");
    let (m1, mq) = (median(one.clone()), median(quarter.clone()));
    rows.push(Row {
        name: "rollout of local agents to a new version, until all are ready on it (max_unavailable 1)",
        result: format!("{replicas} agents: {m1:.1} s"),
        goal: "side by side",
        notes: format!(
            "median of {runs}: {} s; heartbeats every 500 ms; each agent stopped (SIGTERM), then its successor started",
            show(&one)
        ),
    });
    rows.push(Row {
        name: "the same rollout with max_unavailable 25 %",
        result: format!("{replicas} agents: {mq:.1} s ({:.1}× faster)", m1 / mq),
        goal: "faster than 1 at a time",
        notes: format!("median of {runs}: {} s; {} agents down at once", show(&quarter), MaxUnavailable::Percent(25).of(replicas)),
    });
    Ok(())
}

/// Planning (`diff`) and applying a declaration of 100 fleets against 100 that exist.
async fn plan_hundred(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let plane = Plane::start(&a.bin, 2000, None).await?;
    let declare = |version: &str| -> Vec<LaunchRequest> {
        (0..100)
            .map(|i| LaunchRequest {
                name: format!("f{i:03}"),
                replicas: 4,
                backend: Some("external".into()),
                brain: Some("echo".into()),
                version: Some(version.into()),
                prompt: Some(format!("You are fleet {i}.")),
                ..LaunchRequest::default()
            })
            .collect()
    };
    let apply = |fleets: Vec<LaunchRequest>, dry_run: bool| ApplyRequest { fleets, prune: false, dry_run };
    let created: ApplyPlan = plane.client.post("/api/v1/apply", &apply(declare("1"), false)).await?;
    if created.changes.len() != 100 {
        bail!("creating 100 fleets planned {} changes", created.changes.len());
    }
    let runs = if a.quick { 5 } else { 20 };
    let mut diffs = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let plan: ApplyPlan = plane.client.post("/api/v1/apply", &apply(declare("2"), true)).await?;
        diffs.push(t.elapsed().as_secs_f64() * 1000.0);
        if plan.changes.len() != 100 {
            bail!("a dry run planned {} changes, not 100", plan.changes.len());
        }
    }
    let mut applies = Vec::new();
    for run in 0..runs.min(5) {
        let t = Instant::now();
        let plan: ApplyPlan = plane.client.post("/api/v1/apply", &apply(declare(&format!("{}", run + 2)), false)).await?;
        applies.push(t.elapsed().as_secs_f64() * 1000.0);
        if !plan.applied || plan.changes.len() != 100 {
            bail!("an apply made {} changes", plan.changes.len());
        }
    }
    plane.stop().await;
    rows.push(Row {
        name: "diff of a fleet file of 100 fleets, each changed (the API's dry run, over HTTP)",
        result: format!("{:.1} ms", median(diffs.clone())),
        goal: "< 1 s",
        notes: format!("median of {runs}; the CLI adds reading and checking the file"),
    });
    rows.push(Row {
        name: "apply of the same 100 changes (one transaction, fsync)",
        result: format!("{:.1} ms", median(applies.clone())),
        goal: "< 1 s",
        notes: format!("median of {}; 100 fleet_updated and fleet_changed events, 100 audit lines", applies.len()),
    });
    Ok(())
}

/// Seconds from freezing a local agent (SIGSTOP) to its `lost` state, as `status` shows it.
async fn detection(plane: &Plane, fleet: &str) -> anyhow::Result<f64> {
    let pid = crate::agent_pids(&plane.data, fleet).into_iter().next().context("an agent pid")?;
    let t0 = Instant::now();
    nix_kill(pid, "-STOP")?;
    let deadline = t0 + Duration::from_secs(60);
    let took = loop {
        let status: FleetStatus = plane.client.get(&format!("/api/v1/fleets/{fleet}")).await?;
        if status.agents.iter().any(|a| a.state == "lost") {
            break t0.elapsed().as_secs_f64();
        }
        if Instant::now() > deadline {
            bail!("a frozen agent of {fleet} was not seen lost in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    nix_kill(pid, "-CONT")?;
    Ok(took)
}

fn nix_kill(pid: u32, signal: &str) -> anyhow::Result<()> {
    let ok = std::process::Command::new("kill").args([signal, &pid.to_string()]).status()?.success();
    if !ok {
        bail!("kill {signal} {pid} failed");
    }
    Ok(())
}

async fn detection_beside_a_hang(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    // An `ssh` first on the control plane's PATH that never answers: a login node that hangs.
    let bin = tempfile::tempdir()?;
    let ssh = bin.path().join("ssh");
    std::fs::write(&ssh, "#!/bin/sh\nexec sleep 3600\n")?;
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let runs = if a.quick { 2 } else { 5 };
    let mut measured = [Vec::new(), Vec::new()];
    for hang in [false, true] {
        let plane = crate::Plane::start_env(&a.bin, 200, &["--slurm"], &[("PATH", &path)]).await?;
        plane.launch("quick", 1, "local").await?;
        plane.wait_ready("quick", 1, Duration::from_secs(60)).await?;
        if hang {
            let req = LaunchRequest {
                name: "stuck".into(),
                replicas: 1,
                backend: Some("slurm".into()),
                brain: Some("echo".into()),
                cluster: Some(serde_json::from_value(serde_json::json!({"login_host": "hanging-login-node"}))?),
                ..LaunchRequest::default()
            };
            let _: serde_json::Value = plane.client.post("/api/v1/fleets", &req).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        for _ in 0..runs {
            measured[usize::from(hang)].push(detection(&plane, "quick").await?);
            // Back to ready before the next freeze.
            plane.wait_ready("quick", 1, Duration::from_secs(30)).await?;
        }
        plane.stop().await;
    }
    let [alone, beside] = measured;
    let (m0, m1) = (median(alone.clone()), median(beside.clone()));
    rows.push(Row {
        name: "lost-agent detection on a local fleet while a slurm fleet's login node hangs",
        result: format!("{:.2} s beside the hang, {:.2} s alone ({:.2}×)", m1, m0, m1 / m0),
        goal: "unchanged (1.0×)",
        notes: format!(
            "median of {runs} each; heartbeats every 200 ms (lost after 3 missed), status polled every 20 ms; \
             the hanging fleet's pass waits on ssh (timeout 300 s)"
        ),
    });
    Ok(())
}

const DOCKER_IMAGE: &str = "clawfleet-agent:bench";
const DOCKER_NETWORK: &str = "clawfleet-bench-deploy";

/// Waits until `docker service inspect` says the service's update completed; returns the
/// update's own duration, as Swarm recorded it (from its start to its completion).
async fn swarm_update_completed(service: &str, since: Instant, timeout: Duration) -> anyhow::Result<f64> {
    loop {
        let out = std::process::Command::new("docker")
            .args([
                "service",
                "inspect",
                "--format",
                "{{.UpdateStatus.State}} {{.UpdateStatus.StartedAt.UnixNano}} {{.UpdateStatus.CompletedAt.UnixNano}}",
                service,
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let f: Vec<&str> = text.split_whitespace().collect();
        match f.first().copied() {
            Some("completed") if f.len() == 3 => {
                let (start, end): (i128, i128) = (f[1].parse()?, f[2].parse()?);
                return Ok((end - start) as f64 / 1e9);
            }
            Some(s @ ("paused" | "rollback_started" | "rollback_completed" | "rollback_paused")) => {
                bail!("the service's update did not complete: {s}")
            }
            _ if since.elapsed() > timeout => bail!("the service's update did not complete in {timeout:?}: {text}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn docker_rollout(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let engine = clawfleet_docker::Engine::from_env();
    let swarm_on = engine.get::<serde_json::Value>("/info").await.is_ok_and(|i| i["Swarm"]["LocalNodeState"] == "active");
    if !swarm_on {
        rows.push(Row {
            name: "deploy 20 docker agents, max_unavailable 2, against docker service update --update-parallelism 2",
            result: "not measured".into(),
            goal: "ratio near 1",
            notes: "no Docker Engine in Swarm mode here".into(),
        });
        return Ok(());
    }
    let host = clawfleet_docker::swarm::gateway(&engine).await?;
    let out = std::process::Command::new(&a.bin).args(["image", "build", "--tag", DOCKER_IMAGE]).output()?;
    if !out.status.success() {
        bail!("image build failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let replicas = if a.quick { 6 } else { 20 };
    let plane = Plane::start_with(&a.bin, 1000, None, Some((&host, DOCKER_NETWORK)), &[]).await?;
    let result = async {
        let req = LaunchRequest {
            name: "dr".into(),
            replicas,
            backend: Some("docker".into()),
            brain: Some("echo".into()),
            image: Some(DOCKER_IMAGE.into()),
            deploy: Some(DeployPolicy { max_unavailable: Some(MaxUnavailable::Count(2)), ..Default::default() }),
            ..LaunchRequest::default()
        };
        let _: serde_json::Value = plane.client.post("/api/v1/fleets", &req).await?;
        plane.wait_ready("dr", replicas, Duration::from_secs(600)).await?;
        let service = clawfleet_docker::swarm::service_name(&"dr".parse()?);
        let timeout = Duration::from_secs(900);

        // clawfleet: a deploy, done when every agent runs the new version and answered its
        // health check (Swarm replaces the tasks two at a time underneath).
        let t0 = Instant::now();
        let deploy: clawfleet_proto::api::Deploy = plane
            .client
            .post(
                "/api/v1/deploys",
                &clawfleet_proto::api::DeployRequest {
                    target: Some("dr".into()),
                    version: Some("2".into()),
                    deadline_s: Some(600),
                    ..Default::default()
                },
            )
            .await?;
        let (clawfleet_s, swarm_part_s) = loop {
            let d: clawfleet_proto::api::Deploy = plane.client.get(&format!("/api/v1/deploys/{}", deploy.id)).await?;
            match d.state {
                clawfleet_proto::api::DeployState::Succeeded => {
                    break (t0.elapsed().as_secs_f64(), swarm_update_completed(&service, t0, timeout).await?);
                }
                clawfleet_proto::api::DeployState::Running => {}
                other => bail!("the docker deploy ended {other}: {:?}", d.reason),
            }
            if t0.elapsed() > timeout {
                bail!("the docker deploy did not end in {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };

        // The peer: Swarm alone, on the same service, two tasks at a time.
        let t1 = Instant::now();
        let out = std::process::Command::new("docker")
            .args(["service", "update", "--detach", "--update-parallelism", "2", "--env-add", "CLAWFLEET_BENCH_ROUND=2", &service])
            .output()?;
        if !out.status.success() {
            bail!("docker service update failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let docker_s = swarm_update_completed(&service, t1, timeout).await?;
        Ok::<_, anyhow::Error>((clawfleet_s, swarm_part_s, docker_s))
    }
    .await;
    let _ = plane.terminate("dr").await;
    plane.stop().await;
    let _ = std::process::Command::new("docker").args(["network", "rm", DOCKER_NETWORK]).output();
    let (clawfleet_s, swarm_part_s, docker_s) = result?;
    rows.push(Row {
        name: "deploy 20 docker agents, max_unavailable 2, against docker service update --update-parallelism 2",
        result: format!("{replicas} agents: clawfleet {clawfleet_s:.1} s, docker {docker_s:.1} s ({:.2}×)", clawfleet_s / docker_s),
        goal: "ratio near 1",
        notes: format!(
            "the same service, image and health check, stop-first, Swarm's monitor as clawfleet sets it; clawfleet is done when every \
             agent heartbeats the new version and answered a health-check and Swarm's update under it completed ({swarm_part_s:.1} s by \
             Swarm's record); docker: the update's duration as Swarm records it (started to completed)"
        ),
    });
    Ok(())
}

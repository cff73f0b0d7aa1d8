//! Docker commands: `image build`, `discover`, and the docker backend `up --docker` runs.

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clawfleet_backend::Backend;
use clawfleet_docker::discover::{self, Method, Query, TaskState};
use clawfleet_docker::swarm::{self, DockerBackend, DockerConfig};
use clawfleet_docker::{Engine, image};
use serde_json::Value;

use crate::args::{DiscoverArgs, DockerArgs, ImageBuildArgs, UpArgs};
use crate::output::table;

fn engine(args: &DockerArgs) -> Engine {
    match &args.docker_socket {
        Some(path) => Engine::new(path),
        None => Engine::from_env(),
    }
}

/// The docker backend of `up --docker`, and what `up` says about it.
pub(crate) struct UpDocker {
    pub backend: Arc<dyn Backend>,
    /// The address agents in containers reach this machine at.
    pub host: IpAddr,
    pub summary: String,
}

pub(crate) async fn backend_for_up(args: &UpArgs) -> anyhow::Result<UpDocker> {
    let engine = engine(&args.docker_args);
    let info: Value = engine.get("/info").await.context("--docker")?;
    let swarm = &info["Swarm"];
    if swarm["LocalNodeState"] != "active" {
        bail!(
            "--docker: this Docker Engine is not in Swarm mode (state '{}'): run `docker swarm init` first",
            swarm["LocalNodeState"].as_str().unwrap_or("?")
        );
    }
    if swarm["ControlAvailable"] != true {
        bail!("--docker: this node is a Swarm worker; run the control plane on a manager node");
    }
    let host = match args.docker_host {
        Some(h) => h,
        None => {
            let gw = swarm::gateway(&engine).await.context("--docker: finding the address containers reach this machine at")?;
            gw.parse().map_err(|_| anyhow!("--docker: the Docker gateway address '{gw}' is not an IP address; pass --docker-host"))?
        }
    };
    let mut config = DockerConfig::new(engine.clone(), host.to_string());
    config.network = args.docker_network.clone();
    if let Some(tag) = &args.docker_image {
        clawfleet_core::spec::check_image(tag).context("--docker-image")?;
        config.default_image = tag.clone();
    }
    // The default image is made from this binary, on first use.
    config.build_from = Some(std::env::current_exe().context("finding this clawfleet binary")?);
    // Swarm's nodes are this one here; a kernel without Landlock would stop every agent.
    config.sandbox_brains = args.agent_sandbox != clawfleet_server::SandboxMode::Off && clawfleet_backend::sandbox::landlock_abi() > 0;
    // A single-node Swarm whose engine is here keeps agents' volumes on this filesystem.
    let root = info["DockerRootDir"].as_str().map(|r| std::path::Path::new(r).join("volumes"));
    config.volumes = root.filter(|v| swarm["Nodes"] == 1 && v.is_dir());
    // Swarm watches each updated agent for a few heartbeats before it moves on.
    config.update_monitor = Duration::from_millis(args.heartbeat_ms.max(100) * 5).max(Duration::from_secs(15));
    let image_state = match image::exists(&engine, &config.default_image).await {
        Ok(true) => "present".to_owned(),
        Ok(false) => "not built yet: it is built from this binary when the first fleet needs it".to_owned(),
        Err(e) => format!("unknown: {e}"),
    };
    let summary = format!(
        "Swarm node {}; agents join network '{}' and reach this machine at {host}; default image {} ({image_state})",
        swarm["NodeID"].as_str().unwrap_or("?"),
        config.network,
        config.default_image
    );
    Ok(UpDocker { backend: Arc::new(DockerBackend::new(config)), host, summary })
}

pub(crate) async fn image_build(args: ImageBuildArgs) -> anyhow::Result<ExitCode> {
    let engine = engine(&args.docker);
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("finding this clawfleet binary")?,
    };
    let tag = args.tag.clone().unwrap_or_else(image::default_tag);
    clawfleet_core::spec::check_image(&tag)?;
    let started = std::time::Instant::now();
    let quiet = args.json;
    let id = image::build(&engine, &tag, &binary, |line| {
        if !quiet {
            eprintln!("  {line}");
        }
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        outln!("{}", serde_json::json!({ "tag": tag, "id": id, "binary": binary, "seconds": secs }));
    } else {
        eprintln!("built {tag} ({id}) from {} in {secs:.1} s", binary.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn discover(args: DiscoverArgs) -> anyhow::Result<ExitCode> {
    let method: Method = args.method.parse().map_err(|e: String| anyhow!(e))?;
    let query = Query {
        service: args.service.clone(),
        method,
        network: args.network.clone(),
        verify_health: args.verify_health,
        health_port: args.health_port,
    };
    let found = discover::discover(&engine(&args.docker).read_only(), &query).await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&found).expect("serializable"));
        return Ok(ExitCode::SUCCESS);
    }
    let method = serde_json::to_value(found.method).expect("serializable");
    eprintln!(
        "{} task(s) of '{}' found by {} in {:.1} ms",
        found.tasks.len(),
        found.service,
        method.as_str().unwrap_or("?"),
        found.elapsed_ms
    );
    if let Some(why) = &found.fallback_reason {
        eprintln!("(fell back to dns because swarm discovery failed: {why})");
    }
    if let Some(note) = &found.note {
        eprintln!("{note}");
    }
    let starting = found.tasks.iter().filter(|t| t.state == Some(TaskState::Starting)).count();
    if starting > 0 {
        eprintln!("({starting} task(s) starting: up and addressable, their health check has not passed yet)");
    }
    let dash = || "-".to_owned();
    let rows: Vec<Vec<String>> = found
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.address.to_string(),
                t.slot.map_or_else(dash, |s| s.to_string()),
                t.state.map_or_else(dash, |s| s.as_str().to_owned()),
                t.task_id.clone().unwrap_or_else(dash),
                t.node_id.clone().unwrap_or_else(dash),
                t.network.clone().unwrap_or_else(dash),
                match (t.healthy, &t.health_detail) {
                    (Some(true), _) => "healthy".into(),
                    (Some(false), Some(d)) => format!("unhealthy: {d}"),
                    _ => dash(),
                },
            ]
        })
        .collect();
    if !rows.is_empty() {
        out!("{}", table(&["ADDRESS", "SLOT", "STATE", "TASK", "NODE", "NETWORK", "HEALTH"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}

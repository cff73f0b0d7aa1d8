//! `deploy`, `deploy abort` and `history`: deploys as the control plane's deploy loop runs them.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clawfleet_proto::api::{Deploy, DeployList, DeployRequest, DeployState};

use crate::args::{DeployAbortArgs, DeployAction, DeployArgs, HistoryArgs};
use crate::client::{ApiFailure, Client};
use crate::fleet::print_json;
use crate::output::{Progress, table};

pub(crate) async fn run(args: DeployArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(DeployAction::Abort(a)) => return end(a, "abort").await,
        Some(DeployAction::Promote(a)) => return end(a, "promote").await,
        None => {}
    }
    if let Some(t) = args.target.as_deref() {
        check_target(t.split_once('/').map_or(t, |(fleet, _)| fleet))?;
    }
    let client = args.client.client()?;
    let started = Instant::now();
    let timeout = Duration::from_secs(args.timeout);
    let req = DeployRequest {
        target: args.target.clone(),
        version: args.version.clone(),
        image: args.image.clone(),
        deadline_s: args.deadline,
        canary: args.canary,
    };
    let mut said_waiting = false;
    let deploy: Deploy = loop {
        match client.post("/api/v1/deploys", &req).await {
            Ok(d) => break d,
            // Another deploy runs (one at a time): with --wait, queue behind it.
            Err(e) if args.wait && is_deploy_running(&e) && started.elapsed() < timeout => {
                if !said_waiting {
                    eprintln!("{e}; waiting");
                    said_waiting = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    };
    if !args.json {
        for f in &deploy.fleets {
            eprintln!(
                "deploy #{} of {}: version {} → {} ({} agents; reverts after {} s without progress)",
                deploy.id, f.fleet, f.from_version, f.to_version, f.replicas, deploy.deadline_s
            );
        }
    }
    let deploy = if args.detach { deploy } else { follow(&client, deploy, timeout.saturating_sub(started.elapsed())).await? };
    if args.json {
        print_json(&deploy);
    }
    match deploy.state {
        DeployState::Running | DeployState::Paused | DeployState::Succeeded => Ok(ExitCode::SUCCESS),
        outcome => bail!("deploy #{} {outcome}: {}", deploy.id, deploy.reason.as_deref().unwrap_or("no reason given")),
    }
}

fn is_deploy_running(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiFailure>()
        .is_some_and(|f| f.status == reqwest::StatusCode::CONFLICT && f.message.contains("is running: wait for it"))
}

/// Follows a deploy until it ends, showing how many agents passed its gate.
async fn follow(client: &Client, mut deploy: Deploy, timeout: Duration) -> anyhow::Result<Deploy> {
    let started = Instant::now();
    let total: u32 = deploy.fleets.iter().map(|f| f.replicas).sum();
    let mut progress = Progress::new(u64::from(total), "agents passed the gate (new version, healthy)");
    loop {
        let passed: u32 = deploy.fleets.iter().map(|f| f.ready).sum();
        progress.set(u64::from(passed));
        if deploy.state == DeployState::Paused {
            progress.finish();
            eprintln!(
                "deploy #{} paused: its {passed} canaries run the new version and pass; go on with `clawfleet deploy promote {}`, or `abort`",
                deploy.id, deploy.target
            );
            return Ok(deploy);
        }
        if !deploy.state.is_active() {
            progress.finish();
            if deploy.state == DeployState::Succeeded {
                eprintln!("deploy #{} succeeded: all {total} agents pass ({:.1} s)", deploy.id, started.elapsed().as_secs_f64());
            }
            return Ok(deploy);
        }
        if started.elapsed() > timeout {
            progress.finish();
            bail!(
                "deploy #{} still runs after {} s ({passed} of {total} agents passed); it goes on: clawfleet history {}",
                deploy.id,
                timeout.as_secs(),
                deploy.target
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        deploy = client.get(&format!("/api/v1/deploys/{}", deploy.id)).await?;
    }
}

/// The running deploy of `target` (a deploy of `all` runs for every fleet).
async fn running(client: &Client, target: &str) -> anyhow::Result<Deploy> {
    check_target(target)?;
    let list: DeployList = client.get(&format!("/api/v1/deploys?fleet={target}&limit=1")).await?;
    match list.deploys.into_iter().next() {
        Some(d) if d.state.is_active() => Ok(d),
        _ => bail!("no deploy of {target} is running"),
    }
}

/// `abort` or `promote` the running deploy of a target.
async fn end(args: DeployAbortArgs, verb: &str) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let deploy = running(&client, &args.target).await?;
    let deploy: Deploy = client.post(&format!("/api/v1/deploys/{}/{verb}", deploy.id), &serde_json::json!({})).await?;
    if args.json {
        print_json(&deploy);
    } else if verb == "abort" {
        outln!("deploy #{} aborted: its fleets return to their versions before", deploy.id);
    } else {
        outln!("deploy #{} promoted: every agent moves to the new version (follow it: clawfleet history {})", deploy.id, deploy.target);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    check_target(&args.target)?;
    let client = args.client.client()?;
    let list: DeployList = client.get(&format!("/api/v1/deploys?fleet={}&limit={}", args.target, args.limit)).await?;
    if args.json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .deploys
        .iter()
        .map(|d| {
            let versions =
                d.fleets.iter().map(|f| format!("{} {} → {}", f.fleet, f.from_version, f.to_version)).collect::<Vec<_>>().join(", ");
            vec![
                format!("#{}", d.id),
                d.created_at.get(..19).unwrap_or(&d.created_at).replace('T', " "),
                d.actor.clone(),
                versions,
                d.state.to_string(),
                d.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out!("{}", table(&["DEPLOY", "AT", "WHO", "VERSIONS", "OUTCOME", "REASON"], &rows));
    Ok(ExitCode::SUCCESS)
}

/// `all`, or a fleet's name.
fn check_target(target: &str) -> anyhow::Result<()> {
    if target != "all" {
        target.parse::<clawfleet_core::FleetName>()?;
    }
    Ok(())
}

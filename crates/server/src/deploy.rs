//! The deploy loop: it watches the one running deploy (the store has it, so a restarted control
//! plane picks it up where it was) and gates it, the same way for every backend. An agent counts
//! for the deploy only once it heartbeats the new version and answers a `health-check` with a
//! healthy brain; the backends replace the agents meanwhile, within each fleet's
//! `max_unavailable`. A deploy whose every agent passed succeeds once the backend's own rollout
//! (Swarm's) is over too; one with an agent that fails its health check, or that goes `deadline_s` without one more agent passing, is reverted: its
//! fleets return to their versions before, and it says why. A deploy with canaries gates only
//! them (the given slots, or as many agents on the new version as a backend that rolls out by
//! itself moved), then pauses until `promote` moves every agent (and gates them all) or `abort`
//! reverts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawfleet_core::CommandName;
use clawfleet_proto::api::{Deploy, DeployFleet, DeployState, FleetState};
use clawfleet_proto::event::EventBody;
use clawfleet_store::{Audit, Pending, StoreError};
use tokio::sync::{broadcast, watch};

use crate::app::App;
use crate::{clock, outbox};

const TICK: Duration = Duration::from_millis(250);
/// A health check unanswered this long is sent again.
const CHECK_AGAIN: Duration = Duration::from_secs(10);

/// A health check sent to one agent incarnation (its heartbeat epoch).
#[derive(Debug)]
struct Check {
    command_id: String,
    epoch: String,
    sent: Instant,
    /// `Ok` healthy, `Err` why not; `None` until it answers.
    answer: Option<Result<(), String>>,
}

/// What the loop knows of the running deploy beyond the store.
#[derive(Debug)]
struct Tracking {
    id: u64,
    /// When one more agent last passed the gate (or the deploy was picked up).
    progressed: Instant,
    passed: u32,
    checks: HashMap<(String, u32), Check>,
}

pub(crate) async fn run(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut events = app.hub.subscribe();
    let mut tracking: Option<Tracking> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
        answers(&mut events, &mut tracking);
        if let Err(e) = step(&app, &mut tracking).await {
            tracing::error!(error = %e, "Deploy step failed");
        }
    }
}

/// Takes the health checks' answers from the event stream.
fn answers(events: &mut broadcast::Receiver<Arc<clawfleet_proto::event::Event>>, tracking: &mut Option<Tracking>) {
    loop {
        let e = match events.try_recv() {
            Ok(e) => e,
            Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        let (Some(t), EventBody::CommandReply { command_id, ok, result, error, .. }, Some(slot)) = (tracking.as_mut(), &e.body, e.agent)
        else {
            continue;
        };
        let Some(check) = t.checks.get_mut(&(e.fleet.clone(), slot)).filter(|c| c.command_id == *command_id) else { continue };
        check.answer = Some(match (ok, result.get("healthy").and_then(serde_json::Value::as_bool)) {
            (true, Some(false)) => {
                let detail = result.pointer("/brain/detail").and_then(serde_json::Value::as_str).unwrap_or("its brain is not healthy");
                Err(detail.to_owned())
            }
            (true, _) => Ok(()),
            (false, _) => Err(error.clone().unwrap_or_else(|| "it refused the health check".into())),
        });
    }
}

async fn step(app: &App, tracking: &mut Option<Tracking>) -> Result<(), StoreError> {
    let Some(deploy) = app.db.run(|s| s.active_deploy()).await? else {
        *tracking = None;
        return Ok(());
    };
    if deploy.state == DeployState::Paused {
        // Its canaries passed: nothing moves until promote or abort.
        *tracking = None;
        return Ok(());
    }
    let t = match tracking {
        Some(t) if t.id == deploy.id => t,
        _ => {
            tracing::info!(deploy = deploy.id, target = %deploy.target, "Watching a deploy");
            tracking.insert(Tracking { id: deploy.id, progressed: Instant::now(), passed: 0, checks: HashMap::new() })
        }
    };
    let now = clock::mono_ms();
    let mut ready = Vec::with_capacity(deploy.fleets.len());
    let mut passed = 0;
    let mut total = 0;
    for f in &deploy.fleets {
        let name = f.fleet.clone();
        let row = app.db.run(move |s| s.fleet(&name)).await?;
        let Some(row) = row.filter(|r| r.state == FleetState::Active) else {
            let reason = format!("fleet '{}' was terminated during the deploy", f.fleet);
            return finish(app, &deploy, DeployState::Failed, Some(reason)).await;
        };
        let mut fleet_passed = 0;
        let mut to_check = Vec::new();
        // The agents that move: the given ones, or any of the fleet (all, or as many canaries
        // as its backend picked).
        let slots: Vec<u32> = match &f.slots {
            Some(slots) => slots.iter().copied().filter(|s| *s < row.replicas).collect(),
            None => (0..row.replicas).collect(),
        };
        let gated = f.gated().min(slots.len() as u32);
        for &slot in &slots {
            let Some(agent) = app.live.get(&row.name, slot) else { continue };
            if !agent.state(now).is_ready() || agent.hb.fleet_version != f.to_version {
                continue;
            }
            let key = (row.name.clone(), slot);
            match t.checks.get(&key) {
                Some(c) if c.epoch == agent.hb.epoch => match &c.answer {
                    Some(Ok(())) => fleet_passed += 1,
                    Some(Err(why)) => {
                        let reason = format!("agent {}/{slot} on version {} failed its health check: {why}", row.name, f.to_version);
                        return finish(app, &deploy, DeployState::Reverted, Some(reason)).await;
                    }
                    None if c.sent.elapsed() >= CHECK_AGAIN => to_check.push((slot, agent.hb.epoch.clone())),
                    None => {}
                },
                _ => to_check.push((slot, agent.hb.epoch.clone())),
            }
        }
        for (slot, epoch) in to_check {
            let command_id = health_check(app, &row.name, row.replicas, slot, deploy.id).await?;
            t.checks.insert((row.name.clone(), slot), Check { command_id, epoch, sent: Instant::now(), answer: None });
        }
        let fleet_passed = fleet_passed.min(gated);
        ready.push((f.fleet.clone(), fleet_passed));
        passed += fleet_passed;
        total += gated;
    }
    let id = deploy.id;
    // Written (with its fsync) only when a count changed, not on every tick.
    let changed = ready.iter().any(|(name, n)| deploy.fleets.iter().any(|f| f.fleet == *name && f.ready != *n));
    if changed {
        app.hub.write(move |s| Ok(((), s.deploy_progress(id, &ready, &clock::now_rfc3339())?))).await?;
    }
    if passed > t.passed {
        t.passed = passed;
        t.progressed = Instant::now();
    }
    if passed == total {
        // A deploy's canaries wait for promote; one agent deployed on its own stays so.
        let canaries = deploy.fleets.iter().any(DeployFleet::partial) && !deploy.target.contains('/');
        if canaries {
            tracing::info!(deploy = id, "Deploy's canaries passed; waiting for promote");
            app.hub.write(move |s| Ok(((), s.pause_deploy(id, &clock::now_rfc3339())?))).await?;
            return Ok(());
        }
        // A backend that rolls out by itself (Swarm) may still roll back until it is done.
        for f in &deploy.fleets {
            if !settled(app, &f.fleet).await {
                return Ok(());
            }
        }
        return finish(app, &deploy, DeployState::Succeeded, None).await;
    }
    if t.progressed.elapsed() > Duration::from_secs(deploy.deadline_s) {
        let version = deploy.fleets.iter().map(|f| f.to_version.as_str()).next().unwrap_or("?");
        let reason = format!(
            "no progress in {} s: {passed} of {total} agents run version {version} and answered their health check",
            deploy.deadline_s
        );
        return finish(app, &deploy, DeployState::Reverted, Some(reason)).await;
    }
    Ok(())
}

/// Whether the fleet's backend has finished its own rollout (unknown: not yet).
async fn settled(app: &App, fleet: &str) -> bool {
    let name = fleet.to_owned();
    let Ok(Some(row)) = app.db.run(move |s| s.fleet(&name)).await else { return false };
    let (Ok(backend), Ok(d)) = (app.backend(&row.backend), app.deployment(&row)) else { return false };
    // A backend that hangs holds up only this deploy's end, not the loop for long.
    matches!(tokio::time::timeout(Duration::from_secs(10), backend.settled(&d)).await, Ok(Ok(true)))
}

/// Sends a `health-check` to one agent, as the deploy; returns the command's id.
async fn health_check(app: &App, fleet: &str, replicas: u32, slot: u32, deploy: u64) -> Result<String, StoreError> {
    let id = uuid::Uuid::now_v7().to_string();
    let command = CommandName::HealthCheck.as_str();
    let (cid, f) = (id.clone(), fleet.to_owned());
    let (rows, _) = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let actor = format!("deploy #{deploy}");
            let audit =
                Audit { at: &at, actor: &actor, action: "command", target: &f, detail: format!("{command} command={cid} agent={slot}") };
            s.create_command(&cid, &f, command, &at, &[slot], &audit)
        })
        .await?;
    let pending = Pending::Command { command_id: id.clone(), command: command.into() };
    outbox::send_now(app, fleet, replicas, &[slot], &pending, &rows, None).await;
    Ok(id)
}

async fn finish(app: &App, deploy: &Deploy, outcome: DeployState, reason: Option<String>) -> Result<(), StoreError> {
    match &reason {
        Some(r) => tracing::warn!(deploy = deploy.id, %outcome, reason = %r, "Deploy ended"),
        None => tracing::info!(deploy = deploy.id, %outcome, "Deploy ended"),
    }
    let (id, target) = (deploy.id, deploy.target.clone());
    app.hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let audit = Audit { at: &at, actor: "deploy loop (system)", action: "deploy", target: &target, detail: String::new() };
            Ok(((), s.finish_deploy(id, outcome, reason.as_deref(), &at, &audit)?))
        })
        .await?;
    for f in &deploy.fleets {
        app.desired_changed(&f.fleet);
    }
    Ok(())
}

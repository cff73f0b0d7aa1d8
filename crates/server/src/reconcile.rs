//! The reconcile loop: level-triggered, every second or when woken. For each stored fleet it
//! drives the fleet's backend one step toward the desired state (`backend::converge`: observe,
//! `core::plan`, execute), or asks it to remove a terminating fleet, which is deleted once the
//! backend reports nothing left. The loop owns each fleet's plan memory (what it saw, what it
//! stopped, crashes in a row) and hands it to the fleet's pass. Each fleet's pass runs in a
//! task of its own, bounded by [`PASS_TIMEOUT`], and a fleet whose last pass still runs is left
//! to it: a backend that hangs (a login node that never answers) holds up only its own fleets.
//! Changes of agents' availability become `agent_state` events on a tick of their own
//! ([`watch_liveness`]), whatever the backends do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clawfleet_backend::{Applied, Memory, Policy};
use clawfleet_proto::event::EventBody;
use clawfleet_proto::topic::{self, Channel};
use clawfleet_store::{FleetRow, NewEvent};
use tokio::sync::watch;

use crate::app::{App, Condition};
use crate::clock;

const PERIOD: Duration = Duration::from_secs(1);
/// The longest one fleet's pass may take before it counts as the backend's failure.
const PASS_TIMEOUT: Duration = Duration::from_secs(300);
/// How soon a fleet whose plan acted is looked at again.
const STEP_AGAIN: Duration = Duration::from_millis(200);
/// How often agents' availability is looked at.
const LIVENESS_TICK: Duration = Duration::from_millis(250);

/// What the loop keeps of a fleet incarnation (name, uid) between its passes.
type Memories = HashMap<(String, String), Memory>;

/// A fleet's pass in its task: the incarnation it is for, and the task, which hands the
/// fleet's memory back.
type Running = HashMap<String, (String, tokio::task::JoinHandle<Memory>)>;

pub(crate) async fn run(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut running = Running::new();
    let mut memories = Memories::new();
    loop {
        if let Err(e) = once(&app, &mut running, &mut memories).await {
            tracing::error!(error = %e, "Reconcile pass failed");
        }
        tokio::select! {
            () = app.reconcile.notified() => {}
            () = tokio::time::sleep(PERIOD) => {}
            _ = shutdown.changed() => break,
        }
    }
    // Backends shut down next: no pass may still be talking to one.
    for (_, pass) in running.into_values() {
        pass.abort();
    }
}

/// Turns agents' availability changes into events, on its own tick.
pub(crate) async fn watch_liveness(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    loop {
        report_transitions(&app).await;
        tokio::select! {
            () = tokio::time::sleep(LIVENESS_TICK) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn once(app: &Arc<App>, running: &mut Running, memories: &mut Memories) -> Result<(), clawfleet_store::StoreError> {
    let fleets = app.db.run(|s| s.fleets()).await?;
    if let Some(dynsec) = &app.dynsec {
        dynsec.sync(app, &fleets).await;
    }
    let finished: Vec<String> = running.iter().filter(|(_, (_, pass))| pass.is_finished()).map(|(name, _)| name.clone()).collect();
    for name in finished {
        let (uid, pass) = running.remove(&name).expect("listed");
        if let Ok(memory) = pass.await {
            memories.insert((name, uid), memory);
        }
    }
    memories.retain(|(name, uid), _| fleets.iter().any(|f| &f.name == name && &f.uid == uid));
    for fleet in fleets {
        if running.contains_key(&fleet.name) {
            continue;
        }
        let app = app.clone();
        let (name, uid) = (fleet.name.clone(), fleet.uid.clone());
        let memory = memories.remove(&(name.clone(), uid.clone())).unwrap_or_default();
        running.insert(name, (uid, tokio::spawn(async move { reconcile_fleet(&app, fleet, memory).await })));
    }
    Ok(())
}

/// One pass over one fleet: its backend driven one step, what it said kept as the fleet's
/// condition. Returns the fleet's memory, once the pass's next one is due.
async fn reconcile_fleet(app: &App, fleet: FleetRow, mut memory: Memory) -> Memory {
    let pass = async {
        match fleet.state.as_str() {
            "terminating" => remove(app, &fleet).await.map(|()| (Applied::Started, None)),
            _ => converge(app, &fleet, &mut memory).await,
        }
    };
    let (outcome, next) = match tokio::time::timeout(PASS_TIMEOUT, pass).await {
        Ok(Ok((applied, next))) => (Ok(applied), next),
        Ok(Err(e)) => (Err(e), None),
        Err(_) => (Err(format!("the {} backend did not finish within {} s; trying again", fleet.backend, PASS_TIMEOUT.as_secs())), None),
    };
    let news = {
        let mut conditions = app.conditions.lock().expect("not poisoned");
        match outcome {
            Ok(Applied::Started) => {
                conditions.remove(&fleet.name);
                None
            }
            Ok(Applied::Preparing(what)) => {
                if conditions.get(&fleet.name) != Some(&Condition::Preparing(what.clone())) {
                    tracing::info!(fleet = %fleet.name, %what, "Backend preparing");
                }
                conditions.insert(fleet.name.clone(), Condition::Preparing(what));
                None
            }
            Err(problem) => {
                let condition = Condition::Problem(problem.clone());
                let new = conditions.get(&fleet.name) != Some(&condition);
                conditions.insert(fleet.name.clone(), condition);
                new.then_some(problem)
            }
        }
    };
    // A new complaint is said once, as an event, besides showing in `ls` and `status`.
    if let Some(problem) = news {
        tracing::error!(fleet = %fleet.name, %problem, "Backend problem");
        let event = NewEvent {
            at: clock::now_rfc3339(),
            fleet: fleet.name.clone(),
            agent: None,
            injection_id: None,
            body: EventBody::AgentError { message: format!("{} backend: {problem}", fleet.backend) },
        };
        if let Err(e) = app.hub.append(vec![event]).await {
            tracing::error!(error = %e, "Could not store a backend problem");
        }
    }
    // Sooner than the loop's period when the plan has more to do (the next slot of a rollout,
    // a crashed agent's backoff).
    if let Some(next) = next.filter(|n| *n < PERIOD) {
        tokio::time::sleep(next).await;
        app.reconcile.notify_one();
    }
    memory
}

/// One reconcile step of a fleet, and when the next is due sooner than the loop's period.
async fn converge(app: &App, fleet: &FleetRow, memory: &mut Memory) -> Result<(Applied, Option<Duration>), String> {
    let backend = app.backend(&fleet.backend)?;
    let deployment = app.deployment(fleet)?;
    let step = clawfleet_backend::converge(&**backend, &deployment, memory, Policy::default(), clock::mono_ms())
        .await
        .map_err(|e| e.to_string())?;
    let next = match (step.plan.actions.is_empty(), step.plan.requeue_after_ms) {
        (false, _) => Some(STEP_AGAIN),
        (true, Some(ms)) => Some(Duration::from_millis(ms)),
        (true, None) => None,
    };
    Ok((step.applied, next))
}

async fn remove(app: &App, fleet: &FleetRow) -> Result<(), String> {
    let backend = app.backend(&fleet.backend)?;
    let deployment = app.deployment(fleet)?;
    if !backend.remove(&deployment).await.map_err(|e| e.to_string())? {
        return Ok(());
    }
    let fname = fleet.name.clone();
    app.hub.write(move |s| Ok(((), vec![s.delete_fleet(&fname, &clock::now_rfc3339())?]))).await.map_err(|e| e.to_string())?;
    app.auth.forget_fleet(&fleet.name);
    app.live.forget_fleet(&fleet.name);
    // Retained heartbeats of the removed agents would greet a future fleet of the same name.
    for slot in 0..fleet.replicas.max(1) {
        let _ = app.bus.publish(topic::agent(&fleet.name, slot, Channel::Heartbeat), Vec::new(), true).await;
    }
    tracing::info!(fleet = %fleet.name, "Fleet terminated");
    app.conditions.lock().expect("not poisoned").remove(&fleet.name);
    Ok(())
}

async fn report_transitions(app: &App) {
    let transitions = app.live.scan(clock::mono_ms());
    if transitions.is_empty() {
        return;
    }
    let at = clock::now_rfc3339();
    let mut events = Vec::new();
    for t in transitions.into_iter().filter(|t| app.auth.knows(&t.fleet)) {
        if t.state == "lost" {
            tracing::warn!(fleet = %t.fleet, slot = t.slot, "Agent lost");
            // A worker that died in a turn: the turn ends here, for whoever waits on it (unless
            // it already did: a worker_error, or the agent's own last words).
            let ended = match &t.injection {
                Some(id) => {
                    let (f, slot, i) = (t.fleet.clone(), t.slot, id.clone());
                    app.db.run(move |s| s.turn_ended(&f, slot, &i)).await.unwrap_or(false)
                }
                None => true,
            };
            if let (Some(id), false) = (&t.injection, ended) {
                events.push(NewEvent {
                    at: at.clone(),
                    fleet: t.fleet.clone(),
                    agent: Some(t.slot),
                    injection_id: Some(id.clone()),
                    body: EventBody::AgentError { message: "the agent was lost (its heartbeats stopped) during this turn".into() },
                });
            }
        }
        events.push(NewEvent {
            at: at.clone(),
            fleet: t.fleet,
            agent: Some(t.slot),
            injection_id: None,
            body: EventBody::AgentState { state: t.state.to_owned(), previous: t.previous.map(str::to_owned) },
        });
    }
    if let Err(e) = app.hub.append(events).await {
        tracing::error!(error = %e, "Could not store agent state changes");
    }
}

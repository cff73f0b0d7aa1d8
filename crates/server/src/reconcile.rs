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

use clawfleet_backend::{Applied, BackendError, Memory};
use clawfleet_core::liveness::Availability;
use clawfleet_proto::api::FleetState;
use clawfleet_proto::event::EventBody;
use clawfleet_proto::topic::{self, Channel};
use clawfleet_store::{FleetRow, NewEvent};
use tokio::sync::watch;

use crate::app::{App, Condition};
use crate::clock;

const PERIOD: Duration = Duration::from_secs(1);
/// The longest one fleet's pass may take before it counts as the backend's failure.
const PASS_TIMEOUT: Duration = Duration::from_secs(300);
/// The first and the longest wait after a transient failure.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Transient failures in a row that make an event.
const TRANSIENT_EVENT_AFTER: u32 = 3;
/// How soon a fleet whose plan acted is looked at again.
const STEP_AGAIN: Duration = Duration::from_millis(200);
/// How often agents' availability is looked at.
const LIVENESS_TICK: Duration = Duration::from_millis(250);

/// What the loop keeps of a fleet incarnation between its passes.
#[derive(Debug, Default)]
struct FleetMemory {
    plan: Memory,
    /// Transient failures in a row, and the monotonic time before which no pass is tried.
    failures: u32,
    not_before_ms: u64,
}

/// By fleet incarnation (name, uid).
type Memories = HashMap<(String, String), FleetMemory>;

/// A fleet's pass in its task: the incarnation it is for, and the task, which hands the
/// fleet's memory back.
type Running = HashMap<String, (String, tokio::task::JoinHandle<FleetMemory>)>;

/// The wait before the next pass after `failures` transient failures in a row.
fn retry_after(failures: u32) -> Duration {
    (RETRY_MIN * 2u32.saturating_pow(failures.saturating_sub(1).min(10))).min(RETRY_MAX)
}

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
    let now = clock::mono_ms();
    for fleet in fleets {
        let key = (fleet.name.clone(), fleet.uid.clone());
        if running.contains_key(&fleet.name) || memories.get(&key).is_some_and(|m| now < m.not_before_ms) {
            continue;
        }
        let app = app.clone();
        let (name, uid) = key;
        let memory = memories.remove(&(name.clone(), uid.clone())).unwrap_or_default();
        running.insert(name, (uid, tokio::spawn(async move { reconcile_fleet(&app, fleet, memory).await })));
    }
    Ok(())
}

/// One pass over one fleet: its backend driven one step, what it said kept as the fleet's
/// condition. Returns the fleet's memory, once the pass's next one is due. A transient failure
/// is tried again after a backoff (1 s doubling to 60 s), a permanent one on the next pass.
async fn reconcile_fleet(app: &App, fleet: FleetRow, mut memory: FleetMemory) -> FleetMemory {
    let pass = async {
        match fleet.state {
            FleetState::Terminating => remove(app, &fleet).await.map(|()| (Applied::Started, None)),
            FleetState::Active => converge(app, &fleet, &mut memory.plan).await,
        }
    };
    let started = std::time::Instant::now();
    let timed = tokio::time::timeout(PASS_TIMEOUT, pass).await;
    app.metrics.reconciled(&fleet.backend, started.elapsed());
    let (outcome, next) = match timed {
        Ok(Ok((applied, next))) => (Ok(applied), next),
        Ok(Err(e)) => (Err(e), None),
        Err(_) => (
            Err(BackendError::Transient(format!("the {} backend did not finish within {} s", fleet.backend, PASS_TIMEOUT.as_secs()))),
            None,
        ),
    };
    match &outcome {
        Err(e) if e.is_transient() => {
            memory.failures += 1;
            memory.not_before_ms = clock::mono_ms() + retry_after(memory.failures).as_millis() as u64;
        }
        _ => memory.failures = 0,
    }
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
            Err(e) if e.is_transient() => {
                let wait = retry_after(memory.failures).as_secs();
                tracing::warn!(fleet = %fleet.name, error = %e, failures = memory.failures, "Backend failed; trying again in {wait} s");
                let problem = format!("{e} (try {} failed; trying again in {wait} s)", memory.failures);
                conditions.insert(fleet.name.clone(), Condition::Problem(problem.clone()));
                // Said as an event once a streak is long enough not to be a blip.
                (memory.failures == TRANSIENT_EVENT_AFTER).then_some(problem)
            }
            Err(e) => {
                let problem = e.to_string();
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
async fn converge(app: &App, fleet: &FleetRow, memory: &mut Memory) -> Result<(Applied, Option<Duration>), BackendError> {
    let backend = app.backend(&fleet.backend).map_err(BackendError::Permanent)?;
    let mut deployment = app.deployment(fleet).map_err(BackendError::Permanent)?;
    let name = fleet.name.clone();
    deployment.vacated = app.db.run(move |s| s.vacated_slots(&name)).await.map_err(|e| BackendError::Transient(e.to_string()))?;
    let step = clawfleet_backend::converge(&**backend, &deployment, memory, clock::mono_ms()).await?;
    let next = match (step.plan.actions.is_empty(), step.plan.requeue_after_ms) {
        (false, _) => Some(STEP_AGAIN),
        (true, Some(ms)) => Some(Duration::from_millis(ms)),
        (true, None) => None,
    };
    Ok((step.applied, next))
}

async fn remove(app: &App, fleet: &FleetRow) -> Result<(), BackendError> {
    let backend = app.backend(&fleet.backend).map_err(BackendError::Permanent)?;
    let deployment = app.deployment(fleet).map_err(BackendError::Permanent)?;
    if !backend.remove(&deployment).await? {
        return Ok(());
    }
    let fname = fleet.name.clone();
    app.hub
        .write(move |s| Ok(((), vec![s.delete_fleet(&fname, &clock::now_rfc3339())?])))
        .await
        .map_err(|e| BackendError::Transient(format!("cannot delete the fleet's record: {e}")))?;
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
        if t.state == Availability::Lost {
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
            body: EventBody::AgentState { state: t.state.as_str().to_owned(), previous: t.previous.map(|p| p.as_str().to_owned()) },
        });
    }
    if let Err(e) = app.hub.append(events).await {
        tracing::error!(error = %e, "Could not store agent state changes");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn transient_failures_back_off_to_a_minute() {
        let waits: Vec<u64> = (1..=8).map(|n| super::retry_after(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(super::retry_after(u32::MAX), Duration::from_secs(60));
    }
}

//! The leader loop: on every tick it elects each fleet's leader (`core::leader`: the leader
//! stays while healthy, else the operator's preferred agent, else the lowest healthy slot) from
//! the agents' liveness and ARM (a disarmed agent does not lead), and stores each change with its new epoch and a `leader_changed`
//! event. It keeps each fleet's `Leadership` in memory, seeded from the store (so epochs only
//! grow across restarts), and writes only when the leader changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawfleet_core::leader::{Leader, Leadership};
use clawfleet_proto::api::FleetState;
use clawfleet_store::FleetRow;
use tokio::sync::watch;

use crate::app::App;
use crate::clock;

const TICK: Duration = Duration::from_millis(250);

pub(crate) async fn run(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    // A control plane that just started has heard no heartbeat yet: it does not depose a
    // stored leader before its agents had the time to be heard (three heartbeats).
    let grace = Duration::from_millis(app.endpoints.heartbeat_ms * 3) + Duration::from_secs(1);
    let started = Instant::now();
    let mut fleets: HashMap<String, (String, Leadership)> = HashMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
        if started.elapsed() < grace {
            continue;
        }
        if let Err(e) = step(&app, &mut fleets).await {
            tracing::error!(error = %e, "Leader election failed");
        }
    }
}

/// A stored fleet's leadership.
fn stored(row: &FleetRow) -> Leadership {
    Leadership {
        leader: row.leader.map(|slot| Leader { slot, epoch: row.leader_epoch }),
        epoch: row.leader_epoch,
        preferred: row.leader_preferred,
    }
}

async fn step(app: &App, fleets: &mut HashMap<String, (String, Leadership)>) -> Result<(), clawfleet_store::StoreError> {
    let rows = app.db.run(|s| s.fleets()).await?;
    fleets.retain(|name, (uid, _)| rows.iter().any(|r| r.name == *name && r.uid == *uid && r.state == FleetState::Active));
    let now = clock::mono_ms();
    for row in rows.iter().filter(|r| r.state == FleetState::Active) {
        let (_, l) = fleets.entry(row.name.clone()).or_insert_with(|| (row.uid.clone(), stored(row)));
        l.preferred = row.leader_preferred;
        // A disarmed agent takes part in no scenario, so it does not lead them either.
        let n = row.name.clone();
        let disarmed = app.db.run(move |s| s.disarmed(&n)).await?;
        let healthy: Vec<u32> =
            (0..row.replicas).filter(|&s| !disarmed.contains(&s) && app.live.state(&row.name, s, now).is_ready()).collect();
        let Some(leader) = l.elect(&healthy) else { continue };
        match leader {
            Some(l) => tracing::info!(fleet = %row.name, slot = l.slot, epoch = l.epoch, "New leader"),
            None => tracing::warn!(fleet = %row.name, "No leader: no agent is healthy"),
        }
        let (name, epoch) = (row.name.clone(), l.epoch);
        app.hub.write(move |s| Ok(((), s.set_leader(&name, leader.map(|l| l.slot), epoch, &clock::now_rfc3339())?.1))).await?;
    }
    Ok(())
}

//! The queue's dispatcher (codeswarm's `enqueue_inject`), a step of the work loop
//! (`crate::project::run`): it frees the agents whose queued injection's turn is over, drops
//! the items that can never go (their fleet gone or terminating, their agent scaled away),
//! forgets finished items beyond each fleet's newest `FINISHED_KEPT_PER_FLEET`, and gives
//! waiting items, oldest first by `core::queue::place`, to idle agents that hold no work,
//! each in one transaction with its injection (`store::dispatch_queued`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use clawfleet_core::liveness::AgentState;
use clawfleet_core::queue::{self as rules, Wants};
use clawfleet_proto::api::FleetState;
use clawfleet_proto::queue::{FINISHED_KEPT_PER_FLEET, QueueItem};
use clawfleet_store::{NewInjection, Pending, StoreError};

use crate::app::App;
use crate::{clock, outbox};

fn wants(item: &QueueItem) -> Wants {
    item.agent.map_or(Wants::Any, Wants::Agent)
}

pub(crate) async fn step(app: &Arc<App>) -> Result<(), StoreError> {
    let at = clock::now_rfc3339();
    if app.db.run(move |s| s.finish_dispatched(&at)).await? > 0 {
        app.db.run(|s| s.prune_queue(FINISHED_KEPT_PER_FLEET)).await?;
    }
    let waiting = app.db.run(|s| s.queue(None, false)).await?;
    if waiting.is_empty() {
        return Ok(());
    }
    let mut by_fleet: BTreeMap<String, Vec<QueueItem>> = BTreeMap::new();
    for item in waiting {
        by_fleet.entry(item.fleet.clone()).or_default().push(item);
    }
    let busy: HashSet<(String, u32)> = app.db.run(|s| s.task_holders()).await?;
    let mono = clock::mono_ms();
    for (fleet, items) in by_fleet {
        let f = fleet.clone();
        let row = app.db.run(move |s| s.fleet(&f)).await?.filter(|r| r.state == FleetState::Active);
        let Some(row) = row else {
            for item in &items {
                drop_item(app, item, &format!("fleet '{fleet}' is terminating or gone")).await?;
            }
            continue;
        };
        let mut live = Vec::with_capacity(items.len());
        for item in items {
            match rules::stranded(wants(&item), &fleet, row.replicas) {
                Some(why) => drop_item(app, &item, &why).await?,
                None => live.push(item),
            }
        }
        let free: Vec<u32> = (0..row.replicas)
            .filter(|s| app.live.state(&fleet, *s, mono) == AgentState::Idle && !busy.contains(&(fleet.clone(), *s)))
            .collect();
        let order: Vec<Wants> = live.iter().map(wants).collect();
        for (i, slot) in rules::place(&order, &free) {
            let item = &live[i];
            let id = uuid::Uuid::now_v7().to_string();
            let (qid, iid, f, pr, rid, at) =
                (item.queue_id.clone(), id.clone(), fleet.clone(), item.prompt.clone(), item.request_id.clone(), clock::now_rfc3339());
            let caller = format!("queue {} ({})", item.queue_id, item.by);
            let (dispatched, _) = app
                .hub
                .write(move |s| {
                    let targets = [slot];
                    let inj = NewInjection {
                        id: &iid,
                        fleet: &f,
                        prompt: &pr,
                        at: &at,
                        caller: &caller,
                        targets: &targets,
                        request_id: rid.as_deref(),
                    };
                    match s.dispatch_queued(&qid, &inj)? {
                        Some((rows, events)) => Ok((Some(rows), events)),
                        None => Ok((None, Vec::new())),
                    }
                })
                .await?;
            let Some(rows) = dispatched else { continue };
            app.metrics.injection(crate::metrics::InjectOutcome::Accepted, 1);
            let pending = Pending::Inject { injection_id: id, prompt: item.prompt.clone() };
            let expires = outbox::expires_at(SystemTime::now(), app.inject_timeout(&row));
            outbox::send_now(app, &fleet, row.replicas, &[slot], &pending, &rows, expires).await;
        }
    }
    Ok(())
}

async fn drop_item(app: &App, item: &QueueItem, why: &str) -> Result<(), StoreError> {
    let (id, why, at) = (item.queue_id.clone(), why.to_owned(), clock::now_rfc3339());
    tracing::warn!(queue_id = %id, fleet = %item.fleet, reason = %why, "Dropped a queued injection");
    app.hub.write(move |s| Ok(((), s.drop_queued(&id, &why, &at)?))).await?;
    Ok(())
}

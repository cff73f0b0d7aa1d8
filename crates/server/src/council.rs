//! The council loop (seed 002): it offers an open council's free roles to the fleet's healthy
//! agents that hold none (a `play` directive, as soon as the council opens: the API wakes the
//! loop; then to each agent that becomes healthy), frees the role of a member lost before the council is active (and offers
//! the free roles again to every agent without one), and fails a council still open at its
//! deadline.
//! Claims come back as `council_claim` events, judged where ingest stores them
//! (`store::council`, with `core::council`'s rules); the claim that makes a council active is
//! followed by a `council_activated` event ([`claimed`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clawfleet_core::liveness::AgentState;
use clawfleet_proto::council::{CouncilState, CouncilView};
use clawfleet_proto::scenario::Play;
use clawfleet_store::StoreError;
use tokio::sync::watch;

use crate::app::App;
use crate::clock;

const TICK: Duration = Duration::from_millis(500);

pub(crate) async fn run(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut offered = Offered::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = app.councils_due.notified() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = step(&app, &mut offered).await {
            tracing::error!(error = %e, "The council loop failed a step");
        }
    }
}

/// The agents each open council was offered to since its roles last changed hands.
type Offered = HashMap<u64, HashSet<u32>>;

fn passed(deadline: &str, now: SystemTime) -> bool {
    humantime::parse_rfc3339_weak(deadline).is_ok_and(|d| now >= d)
}

/// The fleet's healthy agents that hold no role in the council.
async fn candidates(app: &App, council: &CouncilView) -> Result<Vec<u32>, StoreError> {
    let f = council.fleet.clone();
    let Some(row) = app.db.run(move |s| s.fleet(&f)).await? else { return Ok(Vec::new()) };
    let mono = clock::mono_ms();
    let held: HashSet<u32> = council.seats.iter().filter_map(|s| s.slot).collect();
    Ok((0..row.replicas).filter(|s| !held.contains(s) && app.live.state(&council.fleet, *s, mono).is_ready()).collect())
}

async fn step(app: &App, offered: &mut Offered) -> Result<(), StoreError> {
    let councils = app.db.run(|s| s.live_councils()).await?;
    let now = SystemTime::now();
    offered.retain(|id, _| councils.iter().any(|c| c.id == *id && c.state == CouncilState::Open));
    for mut council in councils.into_iter().filter(|c| c.state == CouncilState::Open) {
        let (fleet, id) = (council.fleet.clone(), council.id);
        if passed(&council.deadline, now) {
            let (f, at) = (fleet.clone(), clock::now_rfc3339());
            let (_, failed) = app.hub.write(move |s| Ok(((), s.expire_council(&f, id, &at)?.into_iter().collect()))).await?;
            if !failed.is_empty() {
                tracing::info!(fleet, council = id, "A council failed at its deadline");
            }
            continue;
        }
        let mono = clock::mono_ms();
        let lost: Vec<u32> =
            council.seats.iter().filter_map(|s| s.slot).filter(|&slot| app.live.state(&fleet, slot, mono) == AgentState::Lost).collect();
        if !lost.is_empty() {
            let (f, at) = (fleet.clone(), clock::now_rfc3339());
            let (_, freed) = app
                .hub
                .write(move |s| {
                    let mut freed = Vec::new();
                    for slot in lost {
                        freed.extend(s.free_council_role(&f, id, slot, &at)?);
                    }
                    Ok(((), freed))
                })
                .await?;
            if !freed.is_empty() {
                // Roles changed hands: every agent without one hears of them again.
                offered.insert(id, HashSet::new());
                let f = fleet.clone();
                council = app.db.run(move |s| s.council(&f, id)).await?;
            }
        }
        let agents = candidates(app, &council).await?;
        let seen = offered.entry(id).or_default();
        let new: Vec<u32> = agents.into_iter().filter(|s| seen.insert(*s)).collect();
        offer_to(app, &council, &new).await;
    }
    Ok(())
}

/// Offers a council's free roles to `agents`, to answer before its deadline.
async fn offer_to(app: &App, council: &CouncilView, agents: &[u32]) {
    let rules = clawfleet_core::council::Council { state: council.state, seats: council.seats.clone() };
    let roles: Vec<String> = rules.open_roles().into_iter().map(str::to_owned).collect();
    if roles.is_empty() || agents.is_empty() || council.state.is_over() {
        return;
    }
    let within = humantime::parse_rfc3339_weak(&council.deadline)
        .ok()
        .and_then(|d| d.duration_since(SystemTime::now()).ok())
        .unwrap_or(Duration::from_secs(1));
    let play = Play::Council { council: council.id, roles, brief: council.brief.clone() };
    app.outbound.to_fleet(&council.fleet, agents, false, &crate::scenario::play(play, within)).await;
}

/// A claim was stored: the one that made its council active is followed by the council's
/// `council_activated` event, with its seats.
pub(crate) async fn claimed(app: &App, fleet: &str, council: u64) {
    let (f, at) = (fleet.to_owned(), clock::now_rfc3339());
    if let Err(e) = app.hub.write(move |s| Ok(((), vec![s.council_activated(&f, council, &at)?]))).await {
        tracing::error!(fleet, council, error = %e, "Could not record that a council is active");
    }
}

//! The scenario loop (clawbucket's simulation): on every tick, for each fleet that plays some,
//! it opens a Rock/Paper/Scissors round for the leader when one is due, asks the leader for a
//! haiku and each healthy armed agent for its three-word phrase when theirs are due. Everything goes
//! through the control plane: it asks (a `play` directive), the agent answers with an event,
//! and ingest judges the answer (`store::scenario`, with `core::scenario`'s rules) where it
//! stores it. When a leader's move is stored, [`round_led`] asks every other armed agent to play.
//!
//! Timers live in memory: a control plane that restarts opens its next round at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clawfleet_proto::api::FleetState;
use clawfleet_proto::bus::Directive;
use clawfleet_proto::scenario::{Play, Scenarios};
use clawfleet_store::StoreError;
use tokio::sync::watch;

use crate::app::App;
use crate::clock;

const TICK: Duration = Duration::from_millis(250);
/// How long a leader has to write its haiku, and an agent its phrase or chat message.
pub(crate) const WRITE_WITHIN: Duration = Duration::from_secs(120);

/// When each fleet last did what.
#[derive(Default)]
struct Timers {
    uid: String,
    round: Option<Instant>,
    haiku: Option<Instant>,
    words: HashMap<u32, Instant>,
}

fn due(last: Option<Instant>, every: Duration, now: Instant) -> bool {
    last.is_none_or(|l| now.duration_since(l) >= every)
}

pub(crate) async fn run(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut timers: HashMap<String, Timers> = HashMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = step(&app, &mut timers).await {
            tracing::error!(error = %e, "The scenario loop failed a step");
        }
    }
}

/// A fleet's stored scenarios; a stored value that does not parse is logged and played as none.
pub(crate) fn parse(fleet: &str, json: &str) -> Scenarios {
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::error!(fleet, error = %e, "Stored scenarios do not parse; playing none");
        Scenarios::default()
    })
}

/// One fleet's scenarios (none set: all off).
pub(crate) async fn of(app: &App, fleet: &str) -> Result<Scenarios, StoreError> {
    let f = fleet.to_owned();
    let json = app.db.run(move |s| s.fleet_scenarios(&f)).await?;
    Ok(json.map(|j| parse(fleet, &j)).unwrap_or_default())
}

/// An RFC 3339 stamp `within` from now: a play's deadline.
fn deadline(within: Duration) -> String {
    humantime::format_rfc3339_millis(SystemTime::now() + within).to_string()
}

/// A `play` directive for the agents it is sent to, dropped by them after `within`.
pub(crate) fn play(play: Play, within: Duration) -> Directive {
    Directive::Play { play_id: uuid::Uuid::new_v4().to_string(), play, targets: None, expires_at: Some(deadline(within)) }
}

async fn step(app: &App, timers: &mut HashMap<String, Timers>) -> Result<(), StoreError> {
    let (settings, rows) = app.db.run(|s| Ok((s.scenarios()?, s.fleets()?))).await?;
    let now = Instant::now();
    timers.retain(|name, t| rows.iter().any(|r| r.name == *name && r.uid == t.uid));
    for (fleet, json) in settings {
        let Some(row) = rows.iter().find(|r| r.name == fleet && r.state == FleetState::Active) else { continue };
        let scenarios = parse(&fleet, &json);
        let t = timers.entry(fleet.clone()).or_insert_with(|| Timers { uid: row.uid.clone(), ..Timers::default() });
        if let Some(rps) = scenarios.rps {
            let every = Duration::from_secs(rps.interval_seconds.into());
            if due(t.round, every, now) {
                t.round = Some(now);
                let f = fleet.clone();
                if let Some((round, leader)) = app.db.run(move |s| s.open_round(&f, &clock::now_rfc3339())).await? {
                    let lead = Play::RpsLead { round, epoch: leader.epoch, brain: rps.brain };
                    app.outbound.to_agents(&fleet, &[leader.slot], &play(lead, every)).await;
                }
            }
        }
        if let Some(haiku) = scenarios.haiku {
            let every = Duration::from_secs(u64::from(haiku.interval_minutes) * 60);
            if let Some(slot) = row.leader
                && due(t.haiku, every, now)
            {
                t.haiku = Some(now);
                app.outbound.to_agents(&fleet, &[slot], &play(Play::Haiku { epoch: row.leader_epoch }, WRITE_WITHIN)).await;
            }
        }
        if let Some(words) = scenarios.three_words {
            let every = Duration::from_secs(u64::from(words.interval_minutes) * 60);
            let mono = clock::mono_ms();
            let f = fleet.clone();
            let disarmed = app.db.run(move |s| s.disarmed(&f)).await?;
            t.words.retain(|slot, _| *slot < row.replicas);
            let ready: Vec<u32> = (0..row.replicas)
                .filter(|&s| {
                    !disarmed.contains(&s) && app.live.state(&fleet, s, mono).is_ready() && due(t.words.get(&s).copied(), every, now)
                })
                .collect();
            if !ready.is_empty() {
                for s in &ready {
                    t.words.insert(*s, now);
                }
                app.outbound.to_fleet(&fleet, &ready, false, &play(Play::ThreeWords {}, WRITE_WITHIN)).await;
            }
        } else {
            t.words.clear();
        }
    }
    Ok(())
}

/// The leader moved in `round`: every other armed agent of the fleet is asked to play it, in
/// one message on the fleet's topic.
pub(crate) async fn round_led(app: &App, fleet: &str, round: u64, leader: u32) {
    let f = fleet.to_owned();
    let found = app.db.run(move |s| Ok((s.fleet(&f)?, s.disarmed(&f)?, s.fleet_scenarios(&f)?))).await;
    let (row, disarmed, settings) = match found {
        Ok((Some(row), disarmed, Some(settings))) => (row, disarmed, settings),
        Ok(_) => return,
        Err(e) => return tracing::error!(fleet, error = %e, "Could not read the fleet to publish its round"),
    };
    let Some(rps) = parse(fleet, &settings).rps else { return };
    let players: Vec<u32> = (0..row.replicas).filter(|s| *s != leader && !disarmed.contains(s)).collect();
    if players.is_empty() {
        return;
    }
    let every = Duration::from_secs(rps.interval_seconds.into());
    app.outbound.to_fleet(fleet, &players, false, &play(Play::Rps { round, brain: rps.brain }, every)).await;
}

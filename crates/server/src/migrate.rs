//! The migration loop: drives every open migration one step at a time, from what the store
//! says of it, so a control plane killed at any step goes on from where it was.
//!
//! The source (`out`) decides; the peer (`in`) only answers it. The invariant, **exactly one
//! copy answering**, holds because of three rules:
//!
//! - the source's agent takes no injection from `offered` on (its injections are held, see
//!   [`Holds`]), and its snapshot is taken only once it has acknowledged every earlier one and
//!   is idle;
//! - the peer's copy takes no injection until the source says `commit`, which the source says
//!   only after its own `committing` is stored (its slot vacated, its agent stopped for good);
//! - the peer's copy is never given up on by the peer once it is `ready` (only the source's
//!   `abort` ends it), and the source aborts only before `committing`.
//!
//! So whichever side dies, or whatever cuts them apart, the source's stored state says which
//! copy is the one: before `committing` its own, from then on the peer's, and the loop tells
//! the peer again until it has heard.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use clawfleet_proto::rack::{Direction, Forwarded, ForwardedAnswer, Migration, MigrationState as S};
use clawfleet_store::{Advance, StoreError};
use tokio::sync::watch;

use crate::app::App;
use crate::clock;
use crate::peer::PeerError;

/// How often open migrations are looked at (woken early by each step), and how often the
/// store is asked whether there is one.
const TICK: Duration = Duration::from_millis(100);
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How long the peer keeps an offer, or a snapshot it could not restore yet, before it gives
/// the slot back (never once its copy is ready).
pub(crate) const ARRIVAL_WITHIN: Duration = Duration::from_secs(300);

/// Which injections of which agents are held: not sent to their agent while it moves.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    inner: Mutex<HoldState>,
}

#[derive(Debug, Default)]
struct HoldState {
    /// From the store's open migrations: the source's agent holds the outbox rows after its
    /// position (`Some`), the peer's new agent every row (`None`).
    stored: HashMap<(String, u32), Option<i64>>,
    /// Agents whose migration is being begun: every new injection held, before the store has
    /// the position.
    beginning: HashSet<(String, u32)>,
    /// Slots vacated by migrations, by fleet: a fleet's "every agent" leaves them out.
    vacated: HashMap<String, std::collections::BTreeSet<u32>>,
}

impl Holds {
    /// Whether outbox row `row` (`None`: one just made) for `fleet/slot` must wait.
    pub(crate) fn holds(&self, fleet: &str, slot: u32, row: Option<i64>) -> bool {
        let h = self.inner.lock().expect("not poisoned");
        if h.stored.is_empty() && h.beginning.is_empty() {
            return false;
        }
        let key = (fleet.to_owned(), slot);
        if h.beginning.contains(&key) {
            return true;
        }
        match h.stored.get(&key) {
            None => false,
            Some(None) => true,
            Some(Some(from)) => row.is_none_or(|id| id > *from),
        }
    }

    /// Holds every new injection of `fleet/slot` until [`Holds::begun`].
    pub(crate) fn begin(&self, fleet: &str, slot: u32) {
        self.inner.lock().expect("not poisoned").beginning.insert((fleet.to_owned(), slot));
    }

    /// The migration of `fleet/slot` is stored (`from`: its held-from position), or was not
    /// begun after all (`None`).
    pub(crate) fn begun(&self, fleet: &str, slot: u32, from: Option<i64>) {
        let mut h = self.inner.lock().expect("not poisoned");
        let key = (fleet.to_owned(), slot);
        h.beginning.remove(&key);
        if let Some(from) = from {
            h.stored.insert(key, Some(from));
        }
    }

    /// Whether any agent's injections are held (a migration is open).
    pub(crate) fn any(&self) -> bool {
        let h = self.inner.lock().expect("not poisoned");
        !h.stored.is_empty() || !h.beginning.is_empty()
    }

    /// The fleet's slots vacated by migrations.
    pub(crate) fn vacated(&self, fleet: &str) -> std::collections::BTreeSet<u32> {
        self.inner.lock().expect("not poisoned").vacated.get(fleet).cloned().unwrap_or_default()
    }

    /// Rebuilt from the store's live migrations and vacated slots.
    pub(crate) fn refresh(&self, live: &[(Migration, i64)], vacated: &[clawfleet_store::Vacated]) {
        let mut slots: HashMap<String, std::collections::BTreeSet<u32>> = HashMap::new();
        for v in vacated {
            slots.entry(v.fleet.clone()).or_default().insert(v.slot);
        }
        let stored = live
            .iter()
            .filter_map(|(m, from)| {
                let slot = m.slot?;
                let held = match (m.direction, m.state) {
                    (Direction::Out, S::Offered | S::Transferred | S::Committing | S::Committed) => Some(*from),
                    (Direction::In, S::Offered | S::Transferred | S::Ready) => None,
                    _ => return None,
                };
                Some(((m.fleet.clone(), slot), held))
            })
            .collect();
        let mut h = self.inner.lock().expect("not poisoned");
        h.stored = stored;
        h.vacated = slots;
    }
}

/// What a failpoint does when it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    /// The control plane dies, as `kill -9` would.
    Abort,
    /// The step waits this long before it goes on (a test cuts the network meanwhile).
    Pause(Duration),
}

/// The failpoints named in `CLAWFLEET_FAILPOINTS` (comma-separated `NAME` to die there, or
/// `NAME=pause:MS` to wait there), so tests can stop a control plane after each durable step
/// of a migration, or hold it there while they cut the network.
fn failpoints() -> &'static HashMap<String, Fail> {
    static POINTS: OnceLock<HashMap<String, Fail>> = OnceLock::new();
    POINTS.get_or_init(|| parse_failpoints(&std::env::var("CLAWFLEET_FAILPOINTS").unwrap_or_default()))
}

fn parse_failpoints(text: &str) -> HashMap<String, Fail> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .filter_map(|entry| match entry.split_once('=') {
            None => Some((entry.to_owned(), Fail::Abort)),
            Some((name, how)) => match how.strip_prefix("pause:").and_then(|ms| ms.parse().ok()) {
                Some(ms) => Some((name.to_owned(), Fail::Pause(Duration::from_millis(ms)))),
                None => {
                    tracing::warn!(failpoint = entry, "A failpoint is NAME or NAME=pause:MS; this one is ignored");
                    None
                }
            },
        })
        .collect()
}

/// Dies, or waits, here if the failpoint `name` is set.
pub(crate) async fn failpoint(name: &str) {
    match failpoints().get(name) {
        None => {}
        Some(Fail::Abort) => {
            tracing::error!(failpoint = name, "Failpoint reached: the control plane dies here");
            std::process::abort();
        }
        Some(Fail::Pause(wait)) => {
            tracing::warn!(failpoint = name, ms = wait.as_millis() as u64, "Failpoint reached: waiting here");
            tokio::time::sleep(*wait).await;
        }
    }
}

/// The failpoint after a migration reached `state` on one side: `migrate.out.committing`.
pub(crate) async fn after(direction: Direction, state: S) {
    if !failpoints().is_empty() {
        failpoint(&format!("migrate.{}.{}", direction.as_str(), state.as_str())).await;
    }
}

/// The holds rebuilt from the store.
pub(crate) async fn refresh(app: &App) -> Result<(), StoreError> {
    let (live, vacated) = app.db.run(|s| Ok((s.live_migrations()?, s.vacated()?))).await?;
    app.holds.refresh(&live, &vacated);
    Ok(())
}

/// Where the peer keeps an arrived snapshot until its copy is committed or aborted.
pub(crate) fn archive_path(app: &App, id: &str) -> PathBuf {
    app.data_dir.join("migrations").join(format!("{id}.cfsnap"))
}

/// How long after a peer did not hear a step it is tried again: 300 ms doubling to 10 s.
fn retry_after(failures: u32) -> Duration {
    (Duration::from_millis(300) * 2u32.saturating_pow(failures.saturating_sub(1).min(6))).min(Duration::from_secs(10))
}

pub(crate) async fn run(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    // By migration: the state whose step the peer did not hear, how many times in a row, and
    // when to try again.
    let mut retries: HashMap<String, (S, u32, u64)> = HashMap::new();
    loop {
        match app.db.run(|s| Ok((s.live_migrations()?, s.vacated()?))).await {
            Ok((live, vacated)) => {
                app.holds.refresh(&live, &vacated);
                retries.retain(|id, (state, ..)| live.iter().any(|(m, _)| &m.id == id && m.state == *state));
                for (m, held_from) in live {
                    let now = clock::mono_ms();
                    if m.state.is_final() || retries.get(&m.id).is_some_and(|(_, _, not_before)| now < *not_before) {
                        continue;
                    }
                    let result = match m.direction {
                        Direction::Out => out_step(&app, &m, held_from).await,
                        Direction::In => in_step(&app, &m).await.map(|()| None),
                    };
                    match result {
                        Ok(None) => {
                            retries.remove(&m.id);
                        }
                        Ok(Some(unheard)) => {
                            let (_, failures, not_before) = retries.entry(m.id.clone()).or_insert((m.state, 0, 0));
                            *failures += 1;
                            *not_before = clock::mono_ms() + retry_after(*failures).as_millis() as u64;
                            // Said once, then at each doubling: a long partition is not a flood.
                            if failures.is_power_of_two() {
                                tracing::warn!(migration = %m.id, state = %m.state, failures = *failures, error = %unheard, "The peer did not hear this step; trying again");
                            }
                        }
                        Err(e) => tracing::warn!(migration = %m.id, state = %m.state, error = %e, "Migration step failed; trying again"),
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "Could not read the open migrations"),
        }
        let tick = if retries.is_empty() && !app.holds.any() { IDLE_TICK } else { TICK };
        tokio::select! {
            () = app.migrations_due.notified() => {}
            () = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// How long ago an RFC 3339 time was.
fn age(at: &str) -> Duration {
    humantime::parse_rfc3339_weak(at).ok().and_then(|t| SystemTime::now().duration_since(t).ok()).unwrap_or_default()
}

/// Moves migration `m` on this side from its current state to `to`; its events published.
pub(crate) async fn advance(
    app: &App,
    m: &Migration,
    to: S,
    error: Option<String>,
    detail: String,
    remote_slot: Option<u32>,
) -> Result<Option<Migration>, StoreError> {
    let (id, direction, from) = (m.id.clone(), m.direction, m.state);
    let (moved, _) = app
        .hub
        .write(move |s| {
            let step = Advance { from: &[from], to, error: error.as_deref(), detail, remote_slot };
            Ok(match s.advance_migration(&id, direction, step, &clock::now_rfc3339())? {
                Some((m, events)) => (Some(m), events),
                None => (None, Vec::new()),
            })
        })
        .await?;
    if let Some(moved) = &moved {
        tracing::info!(migration = %moved.id, direction = %moved.direction, state = %moved.state, peer = %moved.peer, "Migration step");
        refresh(app).await?;
        app.reconcile.notify_one();
        after(moved.direction, moved.state).await;
    }
    Ok(moved)
}

/// Aborts a migration out of this rack (before its commit): its agent answers again.
async fn abort(app: &App, m: &Migration, why: String) -> Result<(), StoreError> {
    tracing::warn!(migration = %m.id, reason = %why, "Aborting a migration");
    let detail = format!("aborted: {why}; the agent stays here");
    advance(app, m, S::Aborting, Some(why), detail, None).await?;
    app.migrations_due.notify_one();
    Ok(())
}

/// A path of the peer's migration API.
fn path(id: &str, what: &str) -> String {
    format!("/api/v1/migrations/{id}/{what}")
}

/// What a step says beside its move: `Some` when the peer did not hear it (tried again later).
type Stepped = Result<Option<PeerError>, StoreError>;

async fn out_step(app: &Arc<App>, m: &Migration, held_from: i64) -> Stepped {
    let slot = m.slot.expect("a migration out has its slot");
    match m.state {
        S::Offered => {
            let within = app.migrate_within;
            if age(&m.created_at) > within {
                let why = format!("agent {}/{slot} did not finish its work within {}", m.fleet, humantime::format_duration(within));
                return abort(app, m, why).await.map(|()| None);
            }
            let (fleet, f) = (m.fleet.clone(), m.fleet.clone());
            let (unacknowledged, cursor) =
                app.db.run(move |s| Ok((s.unacknowledged_before(&f, slot, held_from)?, s.cursor(&f, slot)?))).await?;
            let Some(agent) = app.live.get(&fleet, slot) else { return Ok(None) };
            // Idle as a heartbeat says that was sent after everything the agent journaled
            // (its taking of each injection among it), so not one from before a delivery.
            let current = cursor.is_none_or(|c| c.epoch != agent.hb.epoch || agent.hb.seq >= c.seq);
            let idle = agent.state(clock::mono_ms()) == clawfleet_core::liveness::AgentState::Idle
                && agent.hb.queued == 0
                && agent.hb.current_injection.is_none();
            if unacknowledged > 0 || !idle || !current {
                return Ok(None);
            }
            let row = match crate::api::load_active(app, &fleet).await {
                Ok(row) => row,
                Err(e) => return abort(app, m, e.to_string()).await.map(|()| None),
            };
            let taken = match crate::api::reachable(app, &fleet, slot).await {
                Ok((_, workspace)) => crate::api::take_snapshot(app, &row, slot, workspace).await,
                Err(e) => Err(e),
            };
            let (manifest, archive) = match taken {
                Ok(t) => t,
                Err(e) => return abort(app, m, format!("its snapshot: {}", e.message())).await.map(|()| None),
            };
            let bytes = archive.len();
            match app.peers.post_archive::<Migration>(&m.peer, &path(&m.id, "transfer"), archive).await {
                Ok(_) => {
                    let detail = format!("snapshot sent to {} ({} turns, {bytes} bytes); its copy is starting", m.peer, manifest.turns);
                    advance(app, m, S::Transferred, None, detail, None).await?;
                    app.migrations_due.notify_one();
                }
                Err(e @ PeerError::Unreachable { .. }) => return Ok(Some(e)),
                Err(e) => return abort(app, m, e.to_string()).await.map(|()| None),
            }
        }
        S::Transferred => {
            match app.peers.get::<Migration>(&m.peer, &path(&m.id, "arrival")).await {
                Ok(there) if there.state == S::Ready => {
                    let agent = format!("{}/{}", there.fleet, there.slot.unwrap_or(0));
                    let detail = format!("the copy {agent} on {} is ready: this agent stops for good (DEFECTED)", m.peer);
                    advance(app, m, S::Committing, None, detail, there.slot).await?;
                    app.migrations_due.notify_one();
                    return Ok(None);
                }
                Ok(there) if there.state == S::Aborted => {
                    let why = there.error.unwrap_or_else(|| "it gave the slot back".into());
                    return abort(app, m, format!("{} aborted it: {why}", m.peer)).await.map(|()| None);
                }
                Ok(_) => {}
                Err(e @ PeerError::Unreachable { .. }) => {
                    if age(&m.updated_at) <= app.migrate_within {
                        return Ok(Some(e));
                    }
                }
                Err(e) => return abort(app, m, e.to_string()).await.map(|()| None),
            }
            if age(&m.updated_at) > app.migrate_within {
                let within = humantime::format_duration(app.migrate_within);
                return abort(app, m, format!("the copy on {} was not ready within {within}", m.peer)).await.map(|()| None);
            }
        }
        S::Committing => match app.peers.post::<Migration>(&m.peer, &path(&m.id, "commit"), &serde_json::json!({})).await {
            Ok(there) if there.state == S::Committed => {
                let agent = format!("{}/{}", there.fleet, there.slot.unwrap_or(0));
                let detail = format!("{} committed: {agent} answers for it now", m.peer);
                advance(app, m, S::Committed, None, detail, there.slot).await?;
                app.migrations_due.notify_one();
            }
            Ok(there) => {
                let message = format!("it answered the commit, but is {} there", there.state);
                return Ok(Some(PeerError::Refused { peer: m.peer.clone(), status: 200, message }));
            }
            // The decision is made: the peer is told until it hears.
            Err(e) => return Ok(Some(e)),
        },
        S::Committed => {
            let (f, from) = (m.fleet.clone(), held_from);
            let held = app.db.run(move |s| s.held_injections(&f, slot, from)).await?;
            let agent = format!("{}/{}", m.remote_fleet, m.remote_slot.unwrap_or(0));
            for h in held {
                let body = Forwarded { injection_id: h.injection_id.clone(), prompt: h.prompt.clone() };
                let answer: ForwardedAnswer = match app.peers.post(&m.peer, &path(&m.id, "inject"), &body).await {
                    Ok(a) => a,
                    Err(e) => return Ok(Some(e)),
                };
                let (id, a) = (m.id.clone(), agent.clone());
                app.hub
                    .write(move |s| {
                        let e = s.injection_forwarded(&id, &h, &a, &answer.injection_id, &clock::now_rfc3339())?;
                        Ok(((), e.into_iter().collect()))
                    })
                    .await?;
                failpoint("migrate.out.forwarded").await;
            }
            let detail = format!("done: {agent} on {} took over", m.peer);
            advance(app, m, S::Done, None, detail, None).await?;
        }
        S::Aborting => match app.peers.post::<Migration>(&m.peer, &path(&m.id, "abort"), &serde_json::json!({})).await {
            Ok(_) | Err(PeerError::Refused { status: 404, .. }) => {
                advance(app, m, S::Aborted, None, "aborted on both racks; the agent stayed here".into(), None).await?;
            }
            Err(e) => return Ok(Some(e)),
        },
        S::Ready | S::Done | S::Aborted => {}
    }
    Ok(None)
}

async fn in_step(app: &Arc<App>, m: &Migration) -> Result<(), StoreError> {
    let give_up = |why: String| async move {
        let detail = format!("gave the slot back: {why}");
        advance(app, m, S::Aborted, Some(why), detail, None).await.map(|_| ())
    };
    match m.state {
        S::Offered if age(&m.updated_at) > ARRIVAL_WITHIN => {
            give_up(format!("no snapshot came from {} within {} s", m.peer, ARRIVAL_WITHIN.as_secs())).await?;
        }
        S::Transferred => {
            let slot = m.slot.expect("an arrived migration has its slot");
            if age(&m.updated_at) > ARRIVAL_WITHIN {
                give_up(format!("its copy did not start within {} s", ARRIVAL_WITHIN.as_secs())).await?;
                let _ = std::fs::remove_file(archive_path(app, &m.id));
                return Ok(());
            }
            if app.live.state(&m.fleet, slot, clock::mono_ms()) != clawfleet_core::liveness::AgentState::Idle {
                return Ok(());
            }
            failpoint("migrate.in.restore").await;
            let file = archive_path(app, &m.id);
            let snapshot = match std::fs::read(&file)
                .map_err(|e| e.to_string())
                .and_then(|b| clawfleet_snapshot::read(&b[..]).map_err(|e| e.to_string()))
            {
                Ok(s) => s,
                Err(e) => {
                    give_up(format!("its snapshot ({}) cannot be read: {e}", file.display())).await?;
                    return Ok(());
                }
            };
            let row = match crate::api::load_active(app, &m.fleet).await {
                Ok(row) => row,
                Err(e) => return give_up(e.to_string()).await,
            };
            let restored = match crate::api::reachable(app, &m.fleet, slot).await {
                Ok((_, workspace)) => {
                    crate::api::restore_into(app, &row, slot, workspace, snapshot, format!("rack {} (migration)", m.peer)).await
                }
                Err(e) => Err(e),
            };
            match restored {
                Ok(r) if r.reloaded => {
                    let detail = format!(
                        "{}/{slot} holds the state of {} from {} ({} turns); waiting for its commit",
                        m.fleet, r.from, m.peer, r.turns
                    );
                    advance(app, m, S::Ready, None, detail, None).await?;
                }
                Ok(r) => tracing::warn!(migration = %m.id, error = ?r.error, "The arrived agent did not read its state yet"),
                Err(e) => tracing::warn!(migration = %m.id, error = %e.message(), "The arrived agent is not restored yet"),
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(direction: Direction, state: S, slot: u32) -> Migration {
        Migration {
            id: "m".into(),
            direction,
            peer: "b".into(),
            fleet: "f".into(),
            slot: Some(slot),
            remote_fleet: "f".into(),
            remote_slot: None,
            state,
            error: None,
            forwarded: 0,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn a_peer_that_does_not_hear_is_asked_again_less_and_less_often() {
        let waits: Vec<u64> = [1, 2, 3, 6, 7, 20].map(|n| retry_after(n).as_millis() as u64).to_vec();
        assert_eq!(waits, [300, 600, 1200, 9600, 10_000, 10_000]);
    }

    #[test]
    fn failpoints_die_or_wait() {
        let points = parse_failpoints("migrate.out.offered,migrate.in.ready=pause:1500,bad=sleep,");
        assert_eq!(points.get("migrate.out.offered"), Some(&Fail::Abort));
        assert_eq!(points.get("migrate.in.ready"), Some(&Fail::Pause(Duration::from_millis(1500))));
        assert_eq!(points.len(), 2, "{points:?}");
    }

    #[test]
    fn holds_follow_each_side_of_a_migration() {
        let holds = Holds::default();
        assert!(!holds.holds("f", 0, None));
        // Begun, not yet stored: every new injection waits.
        holds.begin("f", 0);
        assert!(holds.holds("f", 0, None) && holds.holds("f", 0, Some(3)));
        holds.begun("f", 0, Some(5));
        // Stored: earlier rows go on (the agent must finish them), later ones wait.
        assert!(!holds.holds("f", 0, Some(5)) && holds.holds("f", 0, Some(6)) && holds.holds("f", 0, None));
        // The source's agent answers again once its migration is aborting; the peer's
        // new agent takes nothing until it is committed.
        holds.refresh(&[(migration(Direction::Out, S::Aborting, 0), 5), (migration(Direction::In, S::Ready, 1), 0)], &[]);
        assert!(!holds.holds("f", 0, Some(9)));
        assert!(holds.holds("f", 1, Some(1)) && holds.holds("f", 1, None));
        let gone = clawfleet_store::Vacated { fleet: "f".into(), slot: 0, peer: "b".into(), defected: true };
        holds.refresh(&[(migration(Direction::In, S::Committed, 1), 0)], &[gone]);
        assert_eq!(holds.vacated("f"), [0].into());
        assert!(!holds.holds("f", 1, None));
        // A begin that did not store anything holds nothing.
        holds.begin("f", 2);
        holds.begun("f", 2, None);
        assert!(!holds.holds("f", 2, None));
    }
}

//! Reads the bus: heartbeats update the live view; agent events are validated and stored
//! exactly once, in journal order, then broadcast. A gap in an agent's journal, seen in an
//! event or in a heartbeat's `seq`, gets a `replay` directive; a gap the agent cannot fill
//! (its journal rotated) is skipped after a while and recorded as lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawfleet_bus::BusEvent;
use clawfleet_proto::bus::{self as wire, AgentEnvelope, Directive, Heartbeat};
use clawfleet_proto::event::EventBody;
use clawfleet_proto::topic::{self, Channel};
use clawfleet_store::{AgentEvent, Cursor, Ingested, NewEvent};
use tokio::sync::mpsc;

use crate::app::App;
use crate::clock;
use crate::metrics::{BusKind, BusRefusal, InjectOutcome};

const BATCH: usize = 512;
/// A heartbeat ahead of the stored events is normal while events are in flight.
const QUIET_BEFORE_REPLAY: Duration = Duration::from_secs(2);
const REPLAY_EVERY: Duration = Duration::from_secs(5);
/// Replays requested before a gap is declared lost.
const REPLAYS_BEFORE_SKIP: u32 = 3;

#[derive(Default)]
struct AgentTrack {
    cursor: Option<Cursor>,
    last_event: Option<Instant>,
    last_replay: Option<Instant>,
    replays: u32,
}

type Key = (String, u32);

/// What ingest reads besides the bus: what the mailbox loop read from agents' outboxes, the
/// same messages as agents publish, already decoded.
pub(crate) enum Inbound {
    Event { fleet: String, slot: u32, envelope: AgentEnvelope },
    Heartbeat { fleet: String, slot: u32, heartbeat: Heartbeat },
}

/// Reads the bus (`rx`) and what the mailbox loop read (`mail`); ends when the bus connection
/// closes.
pub(crate) async fn run(app: Arc<App>, mut rx: mpsc::Receiver<BusEvent>, mut mail: mpsc::Receiver<Inbound>) {
    let mut tracks: HashMap<Key, AgentTrack> = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut mailed = Vec::with_capacity(BATCH);
    let mut mail_open = true;
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
            n = mail.recv_many(&mut mailed, BATCH), if mail_open => if n == 0 { mail_open = false },
        }
        let arrived = Instant::now();
        let mut inbound = Vec::with_capacity(batch.len() + mailed.len());
        for ev in batch.drain(..) {
            match ev {
                BusEvent::Connected { session_present } => tracing::info!(session_present, "Control plane connected to the bus"),
                BusEvent::Disconnected { reason } => tracing::warn!(%reason, "Control plane lost the bus; reconnecting"),
                BusEvent::Closed => tracing::info!("Control plane disconnected from the bus"),
                BusEvent::Message { topic, payload } => inbound.extend(decode(&app, &topic, &payload)),
            }
        }
        inbound.append(&mut mailed);
        let mut events: Vec<AgentEvent> = Vec::new();
        let mut beats: Vec<(Key, Heartbeat)> = Vec::new();
        for item in inbound {
            match accept(&app, &mut tracks, item) {
                Some(Accepted::Event(e)) => events.push(e),
                Some(Accepted::Heartbeat(key, hb)) => beats.push((key, hb)),
                None => {}
            }
        }
        if !events.is_empty() {
            store(&app, &mut tracks, events, arrived).await;
        }
        // After the events of the same batch are stored, so a heartbeat that only ran ahead
        // of them does not look like a gap.
        for (key, hb) in beats {
            heartbeat(&app, &mut tracks, key, hb).await;
        }
    }
}

enum Accepted {
    Event(AgentEvent),
    Heartbeat(Key, Heartbeat),
}

async fn heartbeat(app: &App, tracks: &mut HashMap<Key, AgentTrack>, key: Key, hb: Heartbeat) {
    let (epoch, seq) = (hb.epoch.clone(), hb.seq);
    let now = clock::mono_ms();
    if let Some(previous) = app.live.heartbeat(&key.0, key.1, hb, now) {
        app.metrics.heartbeat_age.observe(now.saturating_sub(previous) as f64 / 1000.0);
    }
    let track = tracks.entry(key.clone()).or_default();
    if track.cursor.is_none() {
        let (f, s) = key.clone();
        track.cursor = app.db.run(move |st| st.cursor(&f, s)).await.ok().flatten();
    }
    let stored = match &track.cursor {
        Some(c) if c.epoch == epoch => c.seq,
        _ => 0,
    };
    if seq > stored && track.last_event.is_none_or(|at| at.elapsed() > QUIET_BEFORE_REPLAY) {
        request_replay(app, track, &key, &epoch, stored, seq).await;
    }
}

/// Decodes one bus message from an agent.
fn decode(app: &App, topic: &str, payload: &[u8]) -> Option<Inbound> {
    if topic == clawfleet_bus::dynsec::RESPONSE_TOPIC {
        app.metrics.bus_message(BusKind::Other);
        crate::dynsec::response(payload);
        return None;
    }
    let Some(t) = topic::parse_agent(topic) else {
        app.metrics.bus_message(BusKind::Other);
        return reject(app, topic, BusRefusal::Malformed, "not an agent topic");
    };
    app.metrics.bus_message(match t.channel {
        Channel::Heartbeat => BusKind::Heartbeat,
        Channel::Events => BusKind::Event,
        Channel::Cmd => BusKind::Other,
    });
    if payload.is_empty() || !app.auth.knows(t.fleet) {
        // An empty retained message, or a leftover agent of a fleet that no longer exists.
        return None;
    }
    let (fleet, slot) = (t.fleet.to_owned(), t.slot);
    match t.channel {
        Channel::Heartbeat => match wire::decode_heartbeat(payload) {
            Ok(heartbeat) => Some(Inbound::Heartbeat { fleet, slot, heartbeat }),
            Err(e) => reject(app, topic, BusRefusal::Malformed, &e.to_string()),
        },
        Channel::Events => match wire::decode_envelope(payload) {
            Ok(envelope) => Some(Inbound::Event { fleet, slot, envelope }),
            Err(e) => reject(app, topic, BusRefusal::Malformed, &e.to_string()),
        },
        Channel::Cmd => None,
    }
}

/// Validates what an agent said, from the bus or its mailbox.
fn accept(app: &App, tracks: &mut HashMap<Key, AgentTrack>, item: Inbound) -> Option<Accepted> {
    match item {
        Inbound::Heartbeat { fleet, slot, heartbeat } => app.auth.knows(&fleet).then(|| Accepted::Heartbeat((fleet, slot), heartbeat)),
        Inbound::Event { fleet, slot, envelope } => {
            if !app.auth.knows(&fleet) {
                return None;
            }
            if !envelope.body.is_agent_reportable() {
                let topic = topic::agent(&fleet, slot, Channel::Events);
                return reject(app, &topic, BusRefusal::Forbidden, &format!("an agent may not report '{}' events", envelope.body.name()));
            }
            tracks.entry((fleet.clone(), slot)).or_default().last_event = Some(Instant::now());
            let mut body = envelope.body;
            if let EventBody::Chat { from, .. } = &mut body {
                // An agent posts as itself, whatever it says.
                *from = crate::api::agent_name(&fleet, slot);
            }
            Some(Accepted::Event(AgentEvent {
                epoch: envelope.epoch,
                seq: envelope.seq,
                event: NewEvent { at: envelope.at, fleet, agent: Some(slot), injection_id: envelope.injection_id, body },
            }))
        }
    }
}

fn reject<T>(app: &App, topic: &str, reason: BusRefusal, why: &str) -> Option<T> {
    app.metrics.bus_refused(reason);
    tracing::warn!(%topic, reason = why, "Refused a bus message");
    None
}

/// Asks an agent to replay, or after enough tries declares the range lost.
async fn request_replay(app: &App, track: &mut AgentTrack, key: &Key, epoch: &str, after: u64, upto: u64) {
    if track.last_replay.is_some_and(|at| at.elapsed() < REPLAY_EVERY) {
        return;
    }
    track.last_replay = Some(Instant::now());
    if track.replays >= REPLAYS_BEFORE_SKIP {
        let (fleet, slot) = key.clone();
        let message = format!("events {}..{} of this agent were lost (it could not replay them)", after + 1, upto);
        tracing::error!(%fleet, slot, %message, "Skipping a journal gap");
        let loss = NewEvent {
            at: clock::now_rfc3339(),
            fleet: fleet.clone(),
            agent: Some(slot),
            injection_id: None,
            body: EventBody::AgentError { message },
        };
        let epoch2 = epoch.to_owned();
        let written = app.hub.write(move |s| Ok(((), vec![s.skip_to(&fleet, slot, &epoch2, upto, loss)?]))).await;
        if written.is_ok() {
            track.cursor = Some(Cursor { epoch: epoch.to_owned(), seq: upto });
        }
        track.replays = 0;
        return;
    }
    track.replays += 1;
    app.metrics.replays_requested.inc();
    tracing::info!(fleet = %key.0, slot = key.1, after, upto, "Asking an agent to replay its journal");
    app.outbound.to_agents(&key.0, &[key.1], &Directive::Replay { after_seq: after }).await;
}

async fn store(app: &App, tracks: &mut HashMap<Key, AgentTrack>, events: Vec<AgentEvent>, arrived: Instant) {
    let positions: Vec<(Key, String, u64)> =
        events.iter().map(|e| ((e.event.fleet.clone(), e.event.agent.unwrap_or(0)), e.epoch.clone(), e.seq)).collect();
    let result = app
        .hub
        .write(move |s| {
            let results = s.ingest(events)?;
            let stored = results.iter().filter_map(|r| if let Ingested::Stored(e) = r { Some((**e).clone()) } else { None }).collect();
            Ok((results, stored))
        })
        .await;
    let results = match result {
        Ok((results, stored)) => {
            for e in &stored {
                scenario_event(app, e).await;
            }
            results
        }
        Err(e) => {
            // Not stored, so not acknowledged: the agent's journal and our replays recover them.
            tracing::error!(error = %e, "Could not store agent events");
            return;
        }
    };
    let mut gaps: HashMap<Key, (String, u64, u64)> = HashMap::new();
    for ((key, epoch, seq), r) in positions.into_iter().zip(results) {
        let track = tracks.entry(key.clone()).or_default();
        match r {
            Ingested::Stored(e) => {
                app.metrics.events_ingested.inc();
                app.metrics.ingest_lag.observe(arrived.elapsed().as_secs_f64());
                if let Some(id) = &e.injection_id {
                    match &e.body {
                        EventBody::InjectDelivered {} => app.metrics.delivered(id),
                        EventBody::TurnComplete {} => app.metrics.ended(id, InjectOutcome::Completed),
                        EventBody::InjectFailed { .. } | EventBody::AgentError { .. } => app.metrics.ended(id, InjectOutcome::Failed),
                        _ => {}
                    }
                }
                track.cursor = Some(Cursor { epoch, seq });
                track.replays = 0;
                gaps.remove(&key);
            }
            Ingested::Duplicate => {
                app.metrics.duplicates.inc();
            }
            Ingested::Refused { injection_id } => {
                // The agent's journal moved past it all the same.
                track.cursor = Some(Cursor { epoch, seq });
                app.metrics.bus_refused(BusRefusal::Forbidden);
                tracing::warn!(fleet = %key.0, slot = key.1, %injection_id, "Refused an agent event for an injection that was not sent to it");
            }
            Ingested::Gap { after_seq } => {
                gaps.entry(key).or_insert((epoch, after_seq, seq));
            }
        }
    }
    for (key, (epoch, after, upto)) in gaps {
        let track = tracks.entry(key.clone()).or_default();
        request_replay(app, track, &key, &epoch, after, upto).await;
    }
}

/// What a stored scenario event sets off: a leader's move opens its round to the others; the
/// claim that makes a council active is followed by its `council_activated`; a refusal is
/// logged and counted.
async fn scenario_event(app: &App, e: &clawfleet_proto::event::Event) {
    match (&e.body, e.agent) {
        (EventBody::RpsMove { round, epoch: Some(_), .. }, Some(leader)) => crate::scenario::round_led(app, &e.fleet, *round, leader).await,
        (EventBody::CouncilClaim { council, activated: true, .. }, _) => crate::council::claimed(app, &e.fleet, *council).await,
        // It may delegate work to another fleet.
        (EventBody::Assistant { .. }, Some(_)) if e.injection_id.is_some() => {
            crate::delegation::answered(app, e).await;
            app.projects_due.notify_one()
        }
        // It may end a project task's attempt, or free an agent for the queue.
        (EventBody::Assistant { .. } | EventBody::TurnComplete {} | EventBody::AgentError { .. } | EventBody::InjectFailed { .. }, _)
            if e.injection_id.is_some() =>
        {
            app.projects_due.notify_one()
        }
        (EventBody::PlayRefused { play, reason }, slot) => {
            app.metrics.bus_refused(BusRefusal::Play);
            tracing::warn!(fleet = %e.fleet, slot, %play, %reason, "Refused an agent's play");
        }
        _ => {}
    }
}

//! Migrations over the API: the operator's `POST /api/v1/fleets/{name}/agents/{slot}/migrate`
//! (who may update the agent's fleet moves it), `GET /api/v1/migrations[/{id}]` (who reads
//! every fleet), and what racks ask each other under their `peer` tokens: an offer, the
//! snapshot's transfer, whether its copy is ready, the commit or the abort, and the injections
//! held during the handoff. A peer's token name is its rack's name: it sees and moves only
//! the migrations it offered. The loop in [`crate::migrate`] drives each step.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use clawfleet_proto::rack::{
    Direction, Forwarded, ForwardedAnswer, MigrateRequest, Migration, MigrationList, MigrationState as S, Offer, RackInfo,
};
use clawfleet_store::{NewMigration, StoreError};

use super::*;
use crate::migrate;
use crate::peer::PeerError;

/// How many migrations `GET /api/v1/migrations` lists.
const LIST_MOST: usize = 200;
/// How many migrations into this rack one peer may have open at once.
const MAX_OPEN_FROM_A_RACK: usize = 64;

fn peer_error(e: PeerError) -> ApiError {
    match e {
        PeerError::Unknown(_) => ApiError::bad_request(e.to_string()),
        PeerError::Unreachable { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "peer_unreachable", e.to_string()),
        PeerError::Refused { .. } => ApiError::new(StatusCode::CONFLICT, "peer_refused", e.to_string()),
    }
}

/// `POST /api/v1/fleets/{name}/agents/{slot}/migrate`: every precondition checked here first,
/// then the peer asked; only once it accepted is the migration stored (and the agent's
/// injections held from then on). 202 with the migration; the loop moves it on.
pub(super) async fn start(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P((name, slot)): P<(String, u32)>,
    JsonBody(req): JsonBody<MigrateRequest>,
) -> Result<(StatusCode, Json<Migration>), ApiError> {
    caller.may(&app, Action::Update, Target::Agent(&name, slot))?;
    clawfleet_proto::rack::check_rack_name(&req.to).map_err(ApiError::bad_request)?;
    let target_fleet = req.fleet.clone().unwrap_or_else(|| name.clone());
    target_fleet.parse::<clawfleet_core::FleetName>().map_err(|e| ApiError::bad_request(format!("the fleet on {}: {e}", req.to)))?;
    if !app.peers.config.peers.iter().any(|p| p.name == req.to) {
        return Err(peer_error(PeerError::Unknown(req.to.clone())));
    }
    let row = load_active(&app, &name).await?;
    spec::resolve_targets(&name, row.replicas, Some(&[slot]))?;
    let backend = app.backend(&row.backend).map_err(ApiError::bad_request)?;
    if backend.rollout() != clawfleet_backend::Rollout::Planned {
        return Err(ApiError::conflict(format!(
            "agent {name}/{slot} runs on the {} backend, which starts and stops its agents itself: only agents whose slots this control plane starts and stops (local, slurm) migrate",
            row.backend
        )));
    }
    super::snapshot_api::reachable(&app, &name, slot).await?;
    let (n, s) = (name.clone(), slot);
    let (vacated, live) = app.db.run(move |st| Ok((st.vacated_slots(&n)?, st.live_migrations()?))).await?;
    if vacated.contains(&slot) {
        return Err(ApiError::conflict(format!("agent {name}/{slot} is not here: its slot was vacated by a migration")));
    }
    if let Some((m, _)) =
        live.iter().find(|(m, _)| m.direction == Direction::Out && m.fleet == name && m.slot == Some(s) && !m.state.is_final())
    {
        return Err(StoreError::Migrating { agent: format!("{name}/{slot}"), id: m.id.clone() }.into());
    }
    let now = clock::mono_ms();
    let state = app.live.state(&name, slot, now);
    if !state.is_ready() {
        return Err(ApiError::conflict(format!("agent {name}/{slot} is {}: only a running agent migrates", state.as_str())));
    }
    let others = (0..row.replicas).filter(|&o| o != slot && !vacated.contains(&o) && app.live.state(&name, o, now).is_ready()).count();
    if others == 0 && !req.allow_last {
        return Err(ApiError::conflict(format!(
            "agent {name}/{slot} is the last available agent of fleet '{name}' here; --allow-last moves it anyway"
        )));
    }
    // The peer: reachable, of a compatible release, and willing.
    let info: RackInfo = app.peers.get(&req.to, "/api/v1/rack").await.map_err(peer_error)?;
    crate::peer::compatible(&info).map_err(|why| ApiError::conflict(format!("rack '{}' cannot take the agent: {why}", req.to)))?;
    let ours = crate::peer::info(&app.peers.config.name);
    let id = uuid::Uuid::now_v7().to_string();
    let offer = Offer {
        id: id.clone(),
        from: ours.rack.clone(),
        fleet: name.clone(),
        slot,
        target_fleet: target_fleet.clone(),
        clawfleet_version: ours.clawfleet_version,
        snapshot_version: ours.snapshot_version,
    };
    let _: Migration = app.peers.post(&req.to, "/api/v1/migrations", &offer).await.map_err(peer_error)?;
    app.holds.begin(&name, slot);
    let actor = caller.0.audit_name();
    let (mid, peer, fleet, remote) = (id.clone(), req.to.clone(), name.clone(), target_fleet.clone());
    let begun = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let detail = format!("agent {slot} to rack {peer} (fleet {remote}), migration {mid}");
            let new = NewMigration { id: &mid, peer: &peer, fleet: &fleet, slot, remote_fleet: &remote };
            let (m, e) = s.begin_migration(&new, &at, &audit(&at, &actor, "migrate", &fleet, detail))?;
            Ok((m, vec![e]))
        })
        .await;
    let m = match begun {
        Ok((m, _)) => m,
        Err(e) => {
            app.holds.begun(&name, slot, None);
            return Err(e.into());
        }
    };
    let i = id.clone();
    let held_from = app.db.run(move |s| s.migration(&i, Direction::Out)).await?.map(|(_, from)| from);
    app.holds.begun(&name, slot, held_from);
    migrate::after(Direction::Out, S::Offered).await;
    app.migrations_due.notify_one();
    Ok((StatusCode::ACCEPTED, Json(m)))
}

/// `GET /api/v1/migrations`: the newest, both ways.
pub(super) async fn list(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Result<Json<MigrationList>, ApiError> {
    caller.may(&app, Action::Read, Target::All)?;
    Ok(Json(MigrationList { migrations: app.db.run(|s| s.migrations(LIST_MOST)).await? }))
}

/// `GET /api/v1/migrations/{id}`: this rack's side of one (its side out, if it has both).
pub(super) async fn get_one(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> Result<Json<Migration>, ApiError> {
    caller.may(&app, Action::Read, Target::All)?;
    let i = id.clone();
    let found = app.db.run(move |s| Ok(s.migration(&i, Direction::Out)?.or(s.migration(&i, Direction::In)?))).await?;
    found.map(|(m, _)| Json(m)).ok_or_else(|| ApiError::not_found(format!("no migration {}", clip(&id))))
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The rack a peer call comes from: the name of its `peer` token.
fn rack_of(app: &App, caller: &Caller) -> Result<String, ApiError> {
    caller.may(app, Action::Peer, Target::All)?;
    if caller.0.role != Role::Peer {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "racks ask this of each other: it takes a peer token"));
    }
    Ok(caller.0.name.clone())
}

/// This rack's side of migration `id` into it, offered by `rack` (404 for any other rack).
async fn arriving(app: &App, rack: &str, id: &str) -> Result<Migration, ApiError> {
    let i = id.to_owned();
    match app.db.run(move |s| s.migration(&i, Direction::In)).await? {
        Some((m, _)) if m.peer == rack => Ok(m),
        _ => Err(ApiError::not_found(format!("no migration {} from rack '{rack}'", clip(id)))),
    }
}

/// `POST /api/v1/migrations` (peer): takes an offer if the target fleet is here, active and
/// has room, and the racks are compatible. The same offer again answers the same migration.
pub(super) async fn offer(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(offer): JsonBody<Offer>,
) -> Result<Json<Migration>, ApiError> {
    let rack = rack_of(&app, &caller)?;
    if offer.from != rack {
        return Err(ApiError::bad_request(format!("the offer says it comes from '{}', but its token is rack '{rack}'", clip(&offer.from))));
    }
    uuid::Uuid::parse_str(&offer.id).map_err(|e| ApiError::bad_request(format!("migration id: {e}")))?;
    offer.fleet.parse::<clawfleet_core::FleetName>().map_err(|e| ApiError::bad_request(format!("the source fleet: {e}")))?;
    offer.target_fleet.parse::<clawfleet_core::FleetName>().map_err(|e| ApiError::bad_request(format!("the target fleet: {e}")))?;
    let theirs =
        RackInfo { rack: rack.clone(), clawfleet_version: offer.clawfleet_version.clone(), snapshot_version: offer.snapshot_version };
    if offer.clawfleet_version.len() > 64 {
        return Err(ApiError::bad_request("clawfleet_version is longer than 64 bytes"));
    }
    crate::peer::compatible(&theirs).map_err(ApiError::conflict)?;
    let row = load_active(&app, &offer.target_fleet).await?;
    let backend = app.backend(&row.backend).map_err(ApiError::bad_request)?;
    if backend.rollout() != clawfleet_backend::Rollout::Planned {
        return Err(ApiError::conflict(format!(
            "fleet '{}' here runs on the {} backend, which takes no migrated agent",
            row.name, row.backend
        )));
    }
    if row.replicas >= spec::MAX_REPLICAS {
        return Err(ApiError::conflict(format!("fleet '{}' here has no room: {} replicas", row.name, row.replicas)));
    }
    let (r, i) = (rack.clone(), offer.id.clone());
    let open = app
        .db
        .run(move |s| {
            Ok(s.live_migrations()?
                .iter()
                .filter(|(m, _)| m.direction == Direction::In && m.peer == r && m.id != i && !m.state.is_final() && m.state != S::Committed)
                .count())
        })
        .await?;
    if open >= MAX_OPEN_FROM_A_RACK {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_migrations",
            format!("rack '{rack}' has {open} migrations into this rack open, the most it may: let some end first"),
        ));
    }
    let (id, fleet, source, at) = (offer.id.clone(), row.name.clone(), offer.fleet.clone(), clock::now_rfc3339());
    let actor = caller.0.audit_name();
    let m = app
        .db
        .run(move |s| {
            let m = s.offered_migration(&id, &rack, (&source, offer.slot), &fleet, &at)?;
            let detail = format!("offer of {source}/{} into fleet {fleet}, migration {id}", offer.slot);
            s.audit(&audit(&at, &actor, "migration_offer", &fleet, detail))?;
            Ok(m)
        })
        .await?;
    migrate::after(Direction::In, S::Offered).await;
    Ok(Json(m))
}

/// `POST /api/v1/migrations/{id}/transfer` (peer; the archive as the body, its sha256 in
/// `x-clawfleet-sha256`): the snapshot checked, kept durably (owner-only), and the target
/// fleet grown by the slot its copy starts in. The same transfer again answers the same.
pub(super) async fn transfer(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Migration>, ApiError> {
    let rack = rack_of(&app, &caller)?;
    let m = arriving(&app, &rack, &id).await?;
    match m.state {
        S::Offered => {}
        S::Transferred | S::Ready => return Ok(Json(m)),
        other => return Err(ApiError::conflict(format!("migration {id} is {other} here: it takes no snapshot"))),
    }
    let body = body.map_err(|e| ApiError::new(e.status(), "bad_body", format!("the archive: {}", e.body_text())))?;
    let claimed = headers.get(crate::peer::SHA256_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    let actual = clawfleet_snapshot::sha256_hex(&body);
    if claimed != actual {
        return Err(ApiError::bad_request(format!(
            "the archive's sha256 is {actual}, not the {} its sender gave ({}): it changed on the way",
            clip(claimed),
            crate::peer::SHA256_HEADER
        )));
    }
    let snapshot = clawfleet_snapshot::read(body.as_ref()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let origin = &snapshot.manifest.origin;
    if origin.fleet != m.remote_fleet || Some(origin.slot) != m.remote_slot {
        return Err(ApiError::bad_request(format!(
            "the snapshot is of {}/{}, the offer of {}/{}",
            origin.fleet,
            origin.slot,
            m.remote_fleet,
            m.remote_slot.unwrap_or(0)
        )));
    }
    let file = migrate::archive_path(&app, &id);
    tokio::task::spawn_blocking(move || keep(&file, &body))
        .await
        .map_err(|e| ApiError::internal("keeping a migration's snapshot", e))?
        .map_err(|e| ApiError::internal("keeping a migration's snapshot", e))?;
    let actor = caller.0.audit_name();
    let (i, fleet) = (id.clone(), m.fleet.clone());
    let (arrived, _) = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let a = audit(&at, &actor, "scale", &fleet, String::new());
            Ok(match s.migration_arrived(&i, &at, &a)? {
                Some((m, events)) => (Some(m), events),
                None => (None, Vec::new()),
            })
        })
        .await?;
    let Some(arrived) = arrived else {
        // It moved meanwhile (given up on): the archive is of no use.
        let now = arriving(&app, &rack, &id).await?;
        if !matches!(now.state, S::Transferred | S::Ready) {
            let _ = std::fs::remove_file(migrate::archive_path(&app, &id));
        }
        return Ok(Json(now));
    };
    // Its new slot's injections wait from now on, before its agent starts.
    migrate::refresh(&app).await?;
    app.desired_changed(&arrived.fleet);
    migrate::after(Direction::In, S::Transferred).await;
    app.migrations_due.notify_one();
    Ok(Json(arrived))
}

/// Writes `bytes` to `file` (its directory made owner-only), synced before it answers.
fn keep(file: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = file.parent().expect("an archive path has a directory");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = file.with_extension("part");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)?;
    std::fs::File::open(dir)?.sync_all()
}

/// `GET /api/v1/migrations/{id}/arrival` (peer): where its copy is.
pub(super) async fn arrival(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> Result<Json<Migration>, ApiError> {
    let rack = rack_of(&app, &caller)?;
    Ok(Json(arriving(&app, &rack, &id).await?))
}

/// `POST /api/v1/migrations/{id}/commit` (peer): the source's copy stopped for good; this
/// rack's copy takes over (its held injections go to it).
pub(super) async fn commit(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> Result<Json<Migration>, ApiError> {
    let rack = rack_of(&app, &caller)?;
    let m = arriving(&app, &rack, &id).await?;
    match m.state {
        S::Committed => Ok(Json(m)),
        S::Ready => {
            let agent = format!("{}/{}", m.fleet, m.slot.unwrap_or(0));
            let detail = format!("{agent} took over from {}/{} of {rack} (FROM {rack})", m.remote_fleet, m.remote_slot.unwrap_or(0));
            settle(&app, &rack, &m, S::Committed, None, detail).await
        }
        other => Err(ApiError::conflict(format!("migration {id} is {other} here: only a ready copy is committed"))),
    }
}

/// Ends an arrival as its source says (`to`: committed or aborted), its archive no longer
/// needed; 409 if it moved otherwise meanwhile.
async fn settle(app: &App, rack: &str, m: &Migration, to: S, error: Option<String>, detail: String) -> Result<Json<Migration>, ApiError> {
    let moved = match migrate::advance(app, m, to, error, detail, None).await? {
        Some(moved) => moved,
        None => arriving(app, rack, &m.id).await?,
    };
    let _ = std::fs::remove_file(migrate::archive_path(app, &m.id));
    if moved.state != to {
        return Err(ApiError::conflict(format!("migration {} is {} here, not {to}", m.id, moved.state)));
    }
    Ok(Json(moved))
}

/// `POST /api/v1/migrations/{id}/abort` (peer): the slot given back, unless its copy took
/// over already.
pub(super) async fn abort(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> Result<Json<Migration>, ApiError> {
    let rack = rack_of(&app, &caller)?;
    let m = arriving(&app, &rack, &id).await?;
    match m.state {
        S::Aborted => Ok(Json(m)),
        S::Committed => Err(ApiError::conflict(format!("migration {id} is committed here: its copy answers for the agent now"))),
        _ => {
            let why = format!("{rack} aborted it");
            let detail = format!("gave the slot back: {why}");
            settle(&app, &rack, &m, S::Aborted, Some(why), detail).await
        }
    }
}

/// `POST /api/v1/migrations/{id}/inject` (peer): an injection the source held for the agent,
/// for the copy that took over; the same one again is the same injection here.
pub(super) async fn inject(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
    JsonBody(req): JsonBody<Forwarded>,
) -> Result<(StatusCode, Json<ForwardedAnswer>), ApiError> {
    let rack = rack_of(&app, &caller)?;
    check_injection(&req.prompt, None)?;
    if req.injection_id.is_empty() || req.injection_id.len() > 64 {
        return Err(ApiError::bad_request("injection_id must be 1-64 bytes"));
    }
    let m = arriving(&app, &rack, &id).await?;
    if m.state != S::Committed {
        return Err(ApiError::conflict(format!("migration {id} is {} here: injections go to a copy that took over", m.state)));
    }
    let slot = m.slot.expect("a committed arrival has its slot");
    let (i, source) = (id.clone(), req.injection_id.clone());
    if let Some(known) = app.db.run(move |s| s.forwarded_here(&i, &source)).await? {
        return Ok((StatusCode::OK, Json(ForwardedAnswer { injection_id: known })));
    }
    let row = load_active(&app, &m.fleet).await?;
    let new_id = uuid::Uuid::now_v7().to_string();
    let actor = caller.0.audit_name();
    let (mid, iid, fleet, prompt, source) = (id.clone(), new_id.clone(), m.fleet.clone(), req.prompt.clone(), req.injection_id.clone());
    let (rows, _) = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let targets = [slot];
            let inj =
                NewInjection { id: &iid, fleet: &fleet, prompt: &prompt, at: &at, caller: &actor, targets: &targets, request_id: None };
            let detail = format!("injection={iid} forwarded by {} (its {source}), migration {mid}", actor);
            s.take_forwarded(&mid, &source, &inj, &audit(&at, &actor, "inject", &fleet, detail))
        })
        .await?;
    app.metrics.injection(crate::metrics::InjectOutcome::Accepted, 1);
    let pending = Pending::Inject { injection_id: new_id.clone(), prompt: req.prompt };
    let expires = outbox::expires_at(std::time::SystemTime::now(), app.inject_timeout(&row));
    outbox::send_now(&app, &m.fleet, row.replicas, &[slot], &pending, &rows, expires).await;
    Ok((StatusCode::ACCEPTED, Json(ForwardedAnswer { injection_id: new_id })))
}

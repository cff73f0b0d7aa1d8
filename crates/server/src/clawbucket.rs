//! The clawbucket-compatible endpoints (shared/PROTOCOLS.md), over the same fleets, checks and
//! store as `/api/v1`, behind the same token: `/api/swarm`, `/api/scale`, `/api/chat`,
//! `/api/arm`, `/api/arm/events`, `/api/rps`, `/api/rps/config`, `/api/haiku`, `/api/scoreboard`
//! (and `/healthz`, which needs no token). The fleet is clawbucket's "service": a `service` field in the
//! body or a `?service=` query parameter (the fleet's name, or its Swarm service's,
//! `clawfleet-NAME`), the only fleet when there is just one. Errors are `{"error": "..."}`.

use clawfleet_proto::scenario::RpsSettings;
use serde_json::{Value, json};

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceQuery {
    service: Option<String>,
    limit: Option<usize>,
}

/// The fleet a clawbucket request names, or the only one the caller may read. A fleet the
/// caller may not read is refused (403) whether or not it exists, and never listed.
async fn fleet_of(app: &App, caller: &Caller, service: Option<&str>) -> Result<FleetRow, ApiError> {
    let rows: Vec<FleetRow> = app.db.run(|s| s.fleets()).await?.into_iter().filter(|r| r.state == FleetState::Active).collect();
    match service.map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => {
            let name = s.strip_prefix("clawfleet-").filter(|n| !rows.iter().any(|r| r.name == s) && rows.iter().any(|r| r.name == *n));
            let name = name.unwrap_or(s);
            caller.reads(app, name)?;
            rows.into_iter().find(|r| r.name == name).ok_or_else(|| ApiError::no_fleet(name))
        }
        None => {
            let readable: Vec<FleetRow> = rows.into_iter().filter(|r| caller.reads(app, &r.name).is_ok()).collect();
            match <[FleetRow; 1]>::try_from(readable) {
                Ok([only]) => Ok(only),
                Err(rows) if rows.is_empty() => Err(ApiError::not_found("there is no fleet")),
                Err(rows) => Err(ApiError::bad_request(format!(
                    "{} fleets run: name one as service ({})",
                    rows.len(),
                    rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    }
}

/// A stable, readable name for an agent (clawbucket's generated replica names).
pub(crate) fn agent_name(fleet: &str, slot: u32) -> String {
    const ADJECTIVES: [&str; 16] = [
        "brave", "calm", "eager", "fuzzy", "gentle", "happy", "jolly", "keen", "lucky", "merry", "nimble", "proud", "quiet", "swift",
        "witty", "zesty",
    ];
    const ANIMALS: [&str; 16] = [
        "otter", "badger", "crab", "lynx", "heron", "ibis", "koala", "lemur", "marten", "newt", "panda", "quail", "raven", "seal", "tapir",
        "wren",
    ];
    let h = clawfleet_backend::stable_hash(format!("{fleet}/{slot}").into_bytes());
    format!("{}-{}-{slot}", ADJECTIVES[(h & 15) as usize], ANIMALS[((h >> 4) & 15) as usize])
}

/// `GET /api/swarm`: the fleet's agents as clawbucket's replica tiles `{service,
/// desired_replicas, running_count, replicas: [{id, slot, state, node_id, name, color,
/// is_manager, score}]}`, with clawfleet's `armed`, `three_words`, `version` and the manager's epoch.
pub(super) async fn swarm(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ServiceQuery>,
) -> Result<Json<Value>, ApiError> {
    let row = fleet_of(&app, &caller, q.service.as_deref()).await?;
    let Json(status) = super::status(State(app.clone()), Extension(caller), P(row.name.clone())).await?;
    let leader = status.fleet.leader;
    let replicas: Vec<Value> = status
        .agents
        .iter()
        .map(|a| {
            let id = a.instance.clone().unwrap_or_else(|| a.id.clone());
            json!({
                "id": id,
                "task_id": id,
                "slot": a.slot,
                "state": a.state,
                "node_id": a.node.clone().unwrap_or_else(|| a.hostname.clone().unwrap_or_default()),
                "name": agent_name(&row.name, a.slot),
                "color": color(&id),
                "is_manager": leader.is_some_and(|l| l.slot == a.slot),
                "score": a.score.unwrap_or(0),
                "armed": a.armed,
                "three_words": a.three_words,
                "version": a.fleet_version,
            })
        })
        .collect();
    Ok(Json(json!({
        "service": row.name,
        "desired_replicas": status.fleet.replicas,
        "running_count": status.fleet.ready,
        "manager": leader.map(|l| json!({ "slot": l.slot, "epoch": l.epoch })),
        "replicas": replicas,
    })))
}

/// A tile's color from its task id, as clawbucket makes it (`#` and six hex digits).
fn color(id: &str) -> String {
    format!("#{:06x}", clawfleet_backend::stable_hash(id.as_bytes().to_vec()) & 0xff_ffff)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScaleBody {
    service: Option<String>,
    replicas: u32,
}

/// `POST /api/scale {service, replicas}`: 202 `{ok, service, desired_replicas, status}`.
pub(super) async fn scale(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<ScaleBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let row = fleet_of(&app, &caller, req.service.as_deref()).await?;
    let body = JsonBody(ScaleRequest { replicas: req.replicas });
    let Json(fleet) = super::scale(State(app.clone()), Extension(caller), P(row.name.clone()), body).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "ok": true, "service": fleet.name, "desired_replicas": fleet.replicas, "status": "scaling" }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChatBody {
    service: Option<String>,
    text: String,
}

fn chat_line(m: &ChatMessage) -> Value {
    json!({ "id": m.id, "from": m.from, "host": m.agent.map(|s| s.to_string()).unwrap_or_else(|| "control-plane".into()), "text": m.text, "at": m.at })
}

/// `GET /api/chat`: the newest messages `{id, from, host, text, at}`.
pub(super) async fn chat_get(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ServiceQuery>,
) -> Result<Json<Value>, ApiError> {
    let row = fleet_of(&app, &caller, q.service.as_deref()).await?;
    let query = Query(ChatQuery { limit: q.limit });
    let Json(list) = super::chat_list(State(app.clone()), Extension(caller), P(row.name), query).await?;
    Ok(Json(json!({ "messages": list.messages.iter().map(chat_line).collect::<Vec<_>>() })))
}

/// `POST /api/chat {text}`: 201 `{ok, message}`.
pub(super) async fn chat_post(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<ChatBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let row = fleet_of(&app, &caller, req.service.as_deref()).await?;
    let body = JsonBody(ChatPost { text: req.text });
    let (code, Json(m)) = super::chat_post(State(app.clone()), Extension(caller), P(row.name), body).await?;
    Ok((code, Json(json!({ "ok": true, "message": chat_line(&m) }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ArmBody {
    service: Option<String>,
    /// The agent: its task (instance) id, its `fleet/slot`, or its slot.
    task_id: Option<String>,
    /// The agent's generated name, when no task id is given.
    bot: Option<String>,
    state: String,
}

/// `POST /api/arm {task_id, bot, state: "on"|"off"}`: 201 `{ok, event}`.
pub(super) async fn arm(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<ArmBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let armed = match req.state.as_str() {
        "on" => true,
        "off" => false,
        other => {
            return Err(ApiError::bad_request(format!(
                "state must be \"on\" or \"off\", got {:?}",
                other.chars().take(20).collect::<String>()
            )));
        }
    };
    let row = fleet_of(&app, &caller, req.service.as_deref()).await?;
    let Json(status) = super::status(State(app.clone()), Extension(caller.clone()), P(row.name.clone())).await?;
    let wanted = req.task_id.as_deref().or(req.bot.as_deref()).ok_or_else(|| ApiError::bad_request("name the agent: task_id or bot"))?;
    let agent = status
        .agents
        .iter()
        .find(|a| {
            a.instance.as_deref() == Some(wanted)
                || a.id == wanted
                || a.slot.to_string() == wanted
                || agent_name(&row.name, a.slot) == wanted
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_agent",
                format!("fleet '{}' has no agent {:?}", row.name, wanted.chars().take(80).collect::<String>()),
            )
        })?;
    let slot = agent.slot;
    let source = caller.0.audit_name();
    let _ack = super::arm(State(app.clone()), Extension(caller), P((row.name.clone(), slot)), JsonBody(ArmRequest { armed })).await?;
    let event = json!({
        "task_id": agent.instance.clone().unwrap_or_else(|| agent.id.clone()), "slot": slot, "bot": agent_name(&row.name, slot),
        "state": req.state, "at": clock::now_rfc3339(), "source": source,
    });
    Ok((StatusCode::CREATED, Json(json!({ "ok": true, "event": event }))))
}

/// `GET /api/arm/events`: every ARM change of the fleet, oldest first.
pub(super) async fn arm_events(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ServiceQuery>,
) -> Result<Json<Value>, ApiError> {
    let row = fleet_of(&app, &caller, q.service.as_deref()).await?;
    caller.may(&app, Action::Read, Target::Fleet(&row.name))?;
    let name = row.name.clone();
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let n = name.clone();
    let events = app.db.run(move |s| s.arm_changes(&n, limit)).await?;
    let out: Vec<Value> = events
        .into_iter()
        .filter_map(|e| match (&e.body, e.agent) {
            (EventBody::Arm { armed, by }, Some(slot)) => Some(json!({
                "id": e.id, "at": e.at, "slot": slot, "bot": agent_name(&name, slot),
                "state": if *armed { "on" } else { "off" }, "by": by,
            })),
            _ => None,
        })
        .collect();
    Ok(Json(json!({ "events": out })))
}

/// `GET /api/rps`: the newest round `{state: {choice, from, at, round, epoch}, interval_seconds,
/// ttl_seconds, enabled}` (`state` null before the first round).
pub(super) async fn rps(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ServiceQuery>,
) -> Result<Json<Value>, ApiError> {
    let row = fleet_of(&app, &caller, q.service.as_deref()).await?;
    let Json(view) = super::rps(State(app.clone()), Extension(caller), P(row.name.clone())).await?;
    let interval = view.scenarios.rps.map_or(DEFAULT_RPS_INTERVAL, |r| r.interval_seconds);
    let state = view.round.map(|r| {
        json!({
            "choice": r.choice, "from": agent_name(&row.name, r.leader), "at": r.led_at.unwrap_or(r.opened_at),
            "round": r.round, "epoch": r.epoch, "slot": r.leader, "plays": r.plays, "publisher": "leader",
        })
    });
    Ok(Json(json!({
        "service": row.name, "state": state, "interval_seconds": interval, "ttl_seconds": interval * 2,
        "enabled": view.scenarios.rps.is_some(),
    })))
}

/// clawbucket's interval before one is set.
const DEFAULT_RPS_INTERVAL: u32 = 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RpsConfigBody {
    service: Option<String>,
    interval_seconds: u32,
    /// Off stops the rounds (on by default: setting the interval starts them).
    #[serde(default)]
    enabled: Option<bool>,
    /// Moves through the agents' brains instead of at random.
    #[serde(default)]
    brain: Option<bool>,
}

/// `POST /api/rps/config {interval_seconds}`: starts the rounds at that interval (refused out
/// of its bounds, unlike clawbucket, which clamps); `{ok, interval_seconds}`.
pub(super) async fn rps_config(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<RpsConfigBody>,
) -> Result<Json<Value>, ApiError> {
    let row = fleet_of(&app, &caller, req.service.as_deref()).await?;
    let only = Scenarios { rps: Some(RpsSettings { interval_seconds: req.interval_seconds, brain: false }), ..Scenarios::default() };
    clawfleet_core::scenario::validate(&only).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let rps = match (req.enabled.unwrap_or(true), req.brain) {
        (false, _) => Value::Null,
        (true, Some(brain)) => json!({ "interval_seconds": req.interval_seconds, "brain": brain }),
        (true, None) => json!({ "interval_seconds": req.interval_seconds }),
    };
    let patch = JsonBody(json!({ "rps": rps }));
    let Json(set) = super::scenarios_patch(State(app.clone()), Extension(caller), P(row.name.clone()), patch).await?;
    Ok(Json(json!({ "ok": true, "service": row.name, "interval_seconds": req.interval_seconds, "enabled": set.rps.is_some() })))
}

/// `GET /api/haiku`: the newest haiku `{haiku: [{text, from, at, epoch}], latest}`.
pub(super) async fn haiku(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ServiceQuery>,
) -> Result<Json<Value>, ApiError> {
    let row = fleet_of(&app, &caller, q.service.as_deref()).await?;
    let Json(list) =
        super::haiku(State(app.clone()), Extension(caller), P(row.name.clone()), Query(super::HaikuQuery { limit: q.limit })).await?;
    let lines: Vec<Value> = list
        .haiku
        .iter()
        .map(|h| json!({ "id": h.id, "text": h.text, "from": agent_name(&row.name, h.agent), "slot": h.agent, "at": h.at, "epoch": h.epoch }))
        .collect();
    Ok(Json(json!({ "service": row.name, "latest": lines.last().cloned(), "haiku": lines })))
}

/// `GET /api/scoreboard`: clawbucket's aggregator, over the stored scores (best first).
pub(super) async fn scoreboard(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ServiceQuery>,
) -> Result<Json<Value>, ApiError> {
    let row = fleet_of(&app, &caller, q.service.as_deref()).await?;
    let Json(view) = super::rps(State(app.clone()), Extension(caller.clone()), P(row.name.clone())).await?;
    let Json(status) = super::status(State(app.clone()), Extension(caller), P(row.name.clone())).await?;
    let task = |slot: u32| status.agents.iter().find(|a| a.slot == slot).map(|a| a.instance.clone().unwrap_or_else(|| a.id.clone()));
    let board: Vec<Value> = view
        .scoreboard
        .iter()
        .map(|r| {
            json!({
                "bot": r.name, "task_id": task(r.slot).unwrap_or_else(|| format!("{}/{}", row.name, r.slot)), "slot": r.slot,
                "score": r.score, "wins": r.wins, "draws": r.draws, "losses": r.losses, "last_round": r.last_round,
            })
        })
        .collect();
    Ok(Json(json!({
        "service": row.name,
        "rounds": view.round.map_or(0, |r| r.round),
        "scoreboard": board,
        "scoring": "+1 a win, 0 a draw, -1 a loss against the leader's move, each round",
        "source": "clawfleet",
    })))
}

//! The clawbucket-compatible endpoints (shared/PROTOCOLS.md), over the same fleets, checks and
//! store as `/api/v1`, behind the same token: `/api/swarm`, `/api/scale`, `/api/chat`,
//! `/api/arm`, `/api/arm/events`. The fleet is clawbucket's "service": a `service` field in the
//! body or a `?service=` query parameter (the fleet's name, or its Swarm service's,
//! `clawfleet-NAME`), the only fleet when there is just one. Errors are `{"error": "..."}`.

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

/// `GET /api/swarm`: the fleet's agents as clawbucket's replica tiles.
pub(super) async fn swarm(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ServiceQuery>,
) -> Result<Json<Value>, ApiError> {
    let row = fleet_of(&app, &caller, q.service.as_deref()).await?;
    let Json(status) = super::status(State(app.clone()), Extension(caller), P(row.name.clone())).await?;
    let leader = status.fleet.leader;
    let tasks: Vec<Value> = status
        .agents
        .iter()
        .map(|a| {
            json!({
                "slot": a.slot,
                "task_id": a.instance.clone().unwrap_or_else(|| a.id.clone()),
                "node_id": a.node,
                "name": agent_name(&row.name, a.slot),
                "state": a.state,
                "manager": leader.is_some_and(|l| l.slot == a.slot),
                "armed": a.armed,
                "version": a.fleet_version,
            })
        })
        .collect();
    Ok(Json(json!({
        "service": row.name,
        "replicas": status.fleet.replicas,
        "ready": status.fleet.ready,
        "manager": leader.map(|l| json!({ "slot": l.slot, "epoch": l.epoch })),
        "tasks": tasks,
    })))
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

/// `POST /api/chat {text}`.
pub(super) async fn chat_post(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<ChatBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let row = fleet_of(&app, &caller, req.service.as_deref()).await?;
    let body = JsonBody(ChatPost { text: req.text });
    let (code, Json(m)) = super::chat_post(State(app.clone()), Extension(caller), P(row.name), body).await?;
    Ok((code, Json(chat_line(&m))))
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

/// `POST /api/arm {task_id, bot, state: "on"|"off"}`.
pub(super) async fn arm(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<ArmBody>,
) -> Result<Json<Value>, ApiError> {
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
    let _ack = super::arm(State(app.clone()), Extension(caller), P((row.name.clone(), slot)), JsonBody(ArmRequest { armed })).await?;
    Ok(Json(
        json!({ "ok": true, "task_id": agent.instance.clone().unwrap_or_else(|| agent.id.clone()), "bot": agent_name(&row.name, slot), "state": req.state }),
    ))
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

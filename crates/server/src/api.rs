//! The HTTP API (`/api/v1/...`), the dashboard page, `/healthz` and `/metrics`.
//!
//! Every `/api` call needs a token (`Authorization: Bearer …`; 401 without a valid one), and
//! each handler asks `core::authz` whether the token's role may do what it asks (403 if not);
//! every control action is written to the audit log with the token's name and role. Bodies and errors are the wire types
//! of `clawfleet_proto::api`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use clawfleet_backend::{Instance, InstanceState};
use clawfleet_core::authz::{self, Action, Principal, Target};
use clawfleet_core::desired::{self, Existing};
use clawfleet_core::spec::{self, FleetSpec};
use clawfleet_core::{BrainSpec, CommandName};
use clawfleet_proto::api::{
    Ack, AgentStatus, ApplyPlan, ApplyRequest, ArmRequest, AuditEntry, BrainEnv, BusLogin, ChangeOp, ChatList, ChatMessage, ChatPost,
    ChimeRequest, CommandRequest, CommandResponse, CommandResult, Deploy, DeployFleet, DeployList, DeployRequest, DeployState, Fleet,
    FleetList, FleetState, FleetStatus, HaikuList, HaikuView, InjectRequest, InjectResponse, InjectionStatus, InjectionTarget, JoinAgent,
    JoinResponse, LaunchRequest, LeaderInfo, LeaderRequest, NewToken, Role, RoundView, RpsView, ScaleRequest, ScoreView, SecretInfo,
    SecretList, SecretRequest, ServerInfo, TokenInfo, TokenList, TokenRequest, UpdateRequest,
};
use clawfleet_proto::event::{Event, EventBody, MAX_CHAT_CHARS};
use clawfleet_proto::scenario::{Play, Scenarios};
use clawfleet_store::{Audit, EventFilter, FleetApply, FleetRow, FleetUpdate, NewEvent, NewInjection, Pending, TokenRow};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;

use crate::app::App;
use crate::auth::Unknown;
use crate::error::ApiError;
use crate::hub::StreamRequest;
use crate::{clock, outbox};

#[path = "approval_api.rs"]
mod approval_api;
#[path = "clawbucket.rs"]
mod clawbucket;
#[path = "council_api.rs"]
mod council_api;
#[path = "migrate_api.rs"]
mod migrate_api;
#[path = "project_api.rs"]
mod project_api;
#[path = "queue_api.rs"]
mod queue_api;
#[path = "snapshot_api.rs"]
mod snapshot_api;
pub(crate) use clawbucket::agent_name;
pub(crate) use snapshot_api::{reachable, restore_into, take_snapshot};

/// How long `status` waits for a fleet's backend to say what it runs.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request body.
const MAX_BODY: usize = 2 * 1024 * 1024;

pub(crate) fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/api/v1/info", get(info))
        .route("/api/v1/rack", get(rack_info))
        .route("/api/v1/racks", get(racks))
        .route("/api/v1/fleets", get(list).post(launch))
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/deploys", get(deploy_list).post(deploy_start))
        .route("/api/v1/deploys/{id}", get(deploy_get))
        .route("/api/v1/deploys/{id}/abort", post(deploy_abort))
        .route("/api/v1/deploys/{id}/promote", post(deploy_promote))
        .route("/api/v1/fleets/{name}", get(status).delete(terminate))
        .route("/api/v1/fleets/{name}/scale", post(scale))
        .route("/api/v1/fleets/{name}/update", post(update))
        .route("/api/v1/fleets/{name}/rollback", post(rollback))
        .route("/api/v1/fleets/{name}/leader", post(leader))
        .route("/api/v1/fleets/{name}/chat", get(chat_list).post(chat_post))
        .route("/api/v1/fleets/{name}/agents/{slot}/arm", post(arm))
        .route("/api/v1/fleets/{name}/agents/{slot}/snapshot", get(snapshot_api::take))
        .route(
            "/api/v1/fleets/{name}/agents/{slot}/restore",
            post(snapshot_api::restore).layer(axum::extract::DefaultBodyLimit::max(snapshot_api::MAX_ARCHIVE_BYTES)),
        )
        .route("/api/v1/fleets/{name}/agents/{slot}/migrate", post(migrate_api::start))
        .route("/api/v1/migrations", get(migrate_api::list).post(migrate_api::offer))
        .route("/api/v1/migrations/{id}", get(migrate_api::get_one))
        .route(
            "/api/v1/migrations/{id}/transfer",
            post(migrate_api::transfer).layer(axum::extract::DefaultBodyLimit::max(snapshot_api::MAX_ARCHIVE_BYTES)),
        )
        .route("/api/v1/migrations/{id}/arrival", get(migrate_api::arrival))
        .route("/api/v1/migrations/{id}/commit", post(migrate_api::commit))
        .route("/api/v1/migrations/{id}/abort", post(migrate_api::abort))
        .route("/api/v1/migrations/{id}/inject", post(migrate_api::inject))
        .route("/api/v1/fleets/{name}/scenarios", get(scenarios_get).put(scenarios_set).patch(scenarios_patch))
        .route("/api/v1/fleets/{name}/rps", get(rps))
        .route("/api/v1/fleets/{name}/haiku", get(haiku))
        .route("/api/v1/fleets/{name}/chime", post(chime))
        .route("/api/v1/fleets/{name}/councils", get(council_api::list).post(council_api::open))
        .route("/api/v1/fleets/{name}/councils/{id}", get(council_api::get_one))
        .route("/api/v1/fleets/{name}/councils/{id}/close", post(council_api::close))
        .route("/api/v1/fleets/{name}/queue", post(queue_api::add))
        .route("/api/v1/queue", get(queue_api::list))
        .route("/api/v1/queue/{id}", get(queue_api::get_one).delete(queue_api::cancel))
        .route("/api/v1/approvals", get(approval_api::list))
        .route("/api/v1/approvals/{id}", get(approval_api::get_one).post(approval_api::answer))
        .route("/api/v1/projects", get(project_api::list).post(project_api::create))
        .route("/api/v1/projects/{id}", get(project_api::get_one))
        .route("/api/v1/projects/{id}/start", post(project_api::start))
        .route("/api/v1/projects/{id}/resume", post(project_api::resume))
        .route("/api/v1/projects/{id}/resume-preview", post(project_api::resume_preview))
        .route("/api/v1/plans", get(project_api::plans).post(project_api::plan))
        .route("/api/v1/plans/{id}", get(project_api::plan_one))
        .route("/api/v1/plans/{id}/retry", post(project_api::plan_retry))
        .route("/api/v1/fleets/{name}/inject", post(inject))
        .route("/api/v1/fleets/{name}/command", post(command))
        .route("/api/v1/fleets/{name}/join", get(join))
        .route("/api/v1/injections/{id}", get(injection))
        .route("/api/v1/events", get(events))
        .route("/api/v1/audit", get(audit_log))
        .route("/api/v1/tokens", get(token_list).post(token_create))
        .route("/api/v1/bus/observer", get(bus_observer))
        .route("/api/v1/tokens/{name}", axum::routing::delete(token_revoke))
        .route("/api/v1/secrets", get(secret_list))
        .route("/api/v1/secrets/{name}", axum::routing::put(secret_set).delete(secret_delete))
        .route("/api/swarm", get(clawbucket::swarm))
        .route("/api/scale", post(clawbucket::scale))
        .route("/api/chat", get(clawbucket::chat_get).post(clawbucket::chat_post))
        .route("/api/arm", post(clawbucket::arm))
        .route("/api/arm/events", get(clawbucket::arm_events))
        .route("/api/rps", get(clawbucket::rps))
        .route("/api/rps/config", post(clawbucket::rps_config))
        .route("/api/haiku", get(clawbucket::haiku))
        .route("/api/scoreboard", get(clawbucket::scoreboard))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .merge(api)
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        // Every route timed, by its pattern (what matches none is refused before it is).
        .route_layer(middleware::from_fn_with_state(app.clone(), count_requests))
        .fallback(|| async { ApiError::not_found("no such endpoint; the API is under /api/v1") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// Who made a request: what it may do, and its name in the audit log.
#[derive(Debug, Clone)]
struct Caller(Principal);

impl Caller {
    /// 403 unless the caller may do `action` to `target`.
    fn may(&self, app: &App, action: Action, target: Target<'_>) -> Result<(), ApiError> {
        authz::authorize(&self.0, action, target, &app.policy).map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()))
    }

    /// What of `fleet` the caller may read: all of it (`None`), or only its own agent (an
    /// agent's own token); 403 when neither.
    fn reads(&self, app: &App, fleet: &str) -> Result<Option<u32>, ApiError> {
        match self.may(app, Action::Read, Target::Fleet(fleet)) {
            Ok(()) => Ok(None),
            Err(denied) => {
                let own = self.0.slot.filter(|_| self.0.fleet.as_ref().is_some_and(|f| f.as_str() == fleet));
                let slot = own.ok_or(denied)?;
                self.may(app, Action::Read, Target::Agent(fleet, slot))?;
                Ok(Some(slot))
            }
        }
    }
}

/// Times each request, by its route's pattern (an unknown path is `other`).
async fn count_requests(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("other", |p| p.as_str()).to_owned();
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    app.metrics.http(crate::metrics::RouteLabel { route, method }, resp.status().as_u16(), started.elapsed());
    resp
}

async fn require_token(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let presented =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    match presented.map(|t| app.tokens.resolve(t, &app.auth, clock::unix_now())) {
        Some(Ok(principal)) => {
            req.extensions_mut().insert(Caller(principal));
            next.run(req).await
        }
        Some(Err(Unknown::Invalid)) => ApiError::unauthorized("invalid token").into_response(),
        Some(Err(Unknown::Expired { name, at })) => {
            ApiError::unauthorized(format!("the token '{name}' expired at {}", clock::rfc3339(at))).into_response()
        }
        Some(Err(Unknown::Corrupt(why))) => ApiError::internal("a stored token is unreadable", why).into_response(),
        None => ApiError::unauthorized(format!(
            "missing token: send 'Authorization: Bearer <token>' (the token is in {})",
            app.data_dir.join("token").display()
        ))
        .into_response(),
    }
}

/// A JSON body whose rejections become [`ApiError`]s.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state).await.map(|Json(v)| JsonBody(v)).map_err(ApiError::from)
    }
}

/// `?fleet=&all=`: a list of one fleet's records or of every fleet's the caller may read, of
/// what is still going on or (`all`) of the newest of every status.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    fleet: Option<String>,
    #[serde(default)]
    all: bool,
}

/// A query string whose rejections become [`ApiError`]s.
struct Q<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state).await.map(|Query(v)| Q(v)).map_err(ApiError::from)
    }
}

/// A path whose rejections (a bad percent-encoding, say) become [`ApiError`]s.
struct P<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S> for P<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state).await.map(|Path(v)| P(v)).map_err(ApiError::from)
    }
}

/// The audit line of an action, written in the action's own transaction.
fn audit<'a>(at: &'a str, actor: &'a str, action: &'a str, target: &'a str, detail: String) -> Audit<'a> {
    Audit { at, actor, action, target, detail }
}

fn fleet_view(app: &App, row: &FleetRow) -> Fleet {
    let brain_env = BrainEnv::from_column(row.brain_env.as_deref());
    let now = clock::mono_ms();
    let ready = (0..row.replicas).filter(|&s| app.live.state(&row.name, s, now).is_ready()).count() as u32;
    Fleet {
        name: row.name.clone(),
        backend: row.backend.clone(),
        brain: row.brain.clone(),
        prompt: row.prompt.clone(),
        version: row.version.clone(),
        image: row.image.clone(),
        replicas: row.replicas,
        state: row.state,
        created_at: row.created_at.clone(),
        ready,
        problem: app.problem(&row.name),
        preparing: app.preparing(&row.name),
        deploy: row.deploy.is_some().then(|| crate::app::deploy_policy(row)),
        canary: crate::app::canary(row),
        rollback_to: row.previous.as_ref().map(|(_, version)| version.clone()),
        env: brain_env.env,
        secrets: brain_env.secrets,
        leader: row.leader.map(|slot| LeaderInfo { slot, epoch: row.leader_epoch }),
        leader_preferred: row.leader_preferred,
    }
}

/// A new fleet incarnation's uid.
fn new_uid() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

async fn load(app: &App, name: &str) -> Result<FleetRow, ApiError> {
    let n = name.to_owned();
    app.db.run(move |s| s.fleet(&n)).await?.ok_or_else(|| ApiError::no_fleet(name))
}

pub(crate) async fn load_active(app: &App, name: &str) -> Result<FleetRow, ApiError> {
    let row = load(app, name).await?;
    if row.state != FleetState::Active {
        return Err(ApiError::conflict(format!("fleet '{name}' is terminating")));
    }
    Ok(row)
}

// ---- handlers ----

async fn healthz() -> Json<Ack> {
    Json(Ack { ok: true, message: "clawfleet control plane is serving".into() })
}

const DASHBOARD: &str = include_str!("dashboard.html");

/// The dashboard's Content-Security-Policy: its one inline script and one inline stylesheet,
/// by hash; requests to this origin only; never framed.
fn dashboard_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine;
        let hash = |open: &str, close: &str| {
            let start = DASHBOARD.find(open).expect("the dashboard has it") + open.len();
            let end = start + DASHBOARD[start..].find(close).expect("closed");
            let digest = ring::digest::digest(&ring::digest::SHA256, &DASHBOARD.as_bytes()[start..end]);
            format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest.as_ref()))
        };
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("<script>", "</script>"),
            hash("<style>", "</style>")
        )
    })
}

async fn dashboard() -> Response {
    let headers = [
        (header::CONTENT_SECURITY_POLICY, dashboard_csp()),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (headers, Html(DASHBOARD)).into_response()
}

async fn info(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Result<Json<ServerInfo>, ApiError> {
    caller.may(&app, Action::Read, Target::All)?;
    Ok(Json(ServerInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        bus: app.bus_url.clone(),
        embedded_bus: app.embedded_bus,
        data_dir: app.data_dir.display().to_string(),
        backends: app.backend_names(),
        brains: ["model", "openai:URL#MODEL", "ollama:URL#MODEL", "codex", "claude", "cmd:COMMAND", "echo"].map(String::from).to_vec(),
    }))
}

async fn list(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Result<Json<FleetList>, ApiError> {
    // A token bound to one fleet lists that fleet only.
    let only = match (caller.may(&app, Action::Read, Target::All), &caller.0.fleet) {
        (Ok(()), _) => None,
        (Err(_), Some(f)) => {
            caller.may(&app, Action::Read, Target::Fleet(f.as_str()))?;
            Some(f.to_string())
        }
        (Err(e), None) => return Err(e),
    };
    let rows = app.db.run(|s| s.fleets()).await?;
    Ok(Json(FleetList {
        fleets: rows.iter().filter(|r| only.as_ref().is_none_or(|f| *f == r.name)).map(|r| fleet_view(&app, r)).collect(),
    }))
}

async fn launch(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<LaunchRequest>,
) -> Result<(StatusCode, Json<Fleet>), ApiError> {
    caller.may(&app, Action::Launch, Target::Fleet(&req.name))?;
    let actor = caller.0.audit_name();
    let spec = FleetSpec::from_request(&req, &app.default_brain)?;
    app.backend(spec.backend.as_str()).map_err(ApiError::bad_request)?;
    if spec.brain == BrainSpec::Model && app.endpoints.model_url.is_none() {
        return Err(ApiError::bad_request(
            "brain 'model' needs the shared model service, and this control plane has none: \
             start it with --model-url URL, or launch with --brain (e.g. echo, openai:URL#MODEL)",
        ));
    }
    let at = clock::now_rfc3339();
    let row = crate::app::new_row(&spec, new_uid(), at.clone());
    let event = row.launched(&at);
    let r = row.clone();
    app.hub
        .write(move |s| {
            let detail = format!("replicas={} backend={} brain={} version={}", r.replicas, r.backend, r.brain, r.version);
            Ok(((), vec![s.insert_fleet(&r, event, &audit(&r.created_at, &actor, "launch", &r.name, detail))?]))
        })
        .await?;
    app.auth.allow_fleet(&row.name, &row.uid);
    app.desired_changed(&row.name);
    Ok((StatusCode::CREATED, Json(fleet_view(&app, &row))))
}

/// Most fleets one apply may declare.
const MAX_APPLY_FLEETS: usize = 1_000;

/// Makes the fleets match a declaration (a fleet.toml) in one transaction, or with `dry_run`
/// says what would change. Every fleet is checked before anything is written: one bad fleet
/// refuses the whole apply. A dry run needs only read access; an apply, the right to each
/// change (launch, scale, update, terminate).
async fn apply(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<ApplyRequest>,
) -> Result<Json<ApplyPlan>, ApiError> {
    caller.may(&app, Action::Read, Target::All)?;
    if req.fleets.len() > MAX_APPLY_FLEETS {
        return Err(ApiError::bad_request(format!("{} fleets declared, over the {MAX_APPLY_FLEETS}-fleet limit", req.fleets.len())));
    }
    let mut wanted = Vec::with_capacity(req.fleets.len());
    for declared in &req.fleets {
        let name: String = declared.name.chars().take(64).collect();
        let invalid = |e: &dyn std::fmt::Display, field: Option<&str>| {
            ApiError::bad_request(format!("fleet '{name}': {}{e}", field.map(|f| format!("{f}: ")).unwrap_or_default()))
        };
        let spec = FleetSpec::from_request(declared, &app.default_brain).map_err(|e| invalid(&e, e.field()))?;
        app.backend(spec.backend.as_str()).map_err(|e| invalid(&e, Some("backend")))?;
        if spec.brain == BrainSpec::Model && app.endpoints.model_url.is_none() {
            return Err(invalid(&"brain 'model' needs the shared model service, and this control plane has none", Some("brain")));
        }
        wanted.push(spec);
    }
    let rows = app.db.run(|s| s.fleets()).await?;
    let existing = rows
        .iter()
        .map(|r| Ok(Existing { spec: app.spec(r)?, terminating: r.state == FleetState::Terminating }))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| ApiError::internal("a stored fleet", e))?;
    let mut plan = desired::diff(&existing, &wanted, req.prune).map_err(|e| ApiError::conflict(e.to_string()))?;
    if req.dry_run || plan.changes.is_empty() {
        plan.applied = !req.dry_run;
        return Ok(Json(plan));
    }
    let at = clock::now_rfc3339();
    let mut changes = Vec::with_capacity(plan.changes.len());
    for change in &plan.changes {
        let target = Target::Fleet(&change.fleet);
        let spec = wanted.iter().find(|s| s.name.as_str() == change.fleet);
        let old = rows.iter().find(|r| r.name == change.fleet);
        changes.push(match (change.op, spec, old) {
            (ChangeOp::Create, Some(spec), _) => {
                caller.may(&app, Action::Launch, target)?;
                FleetApply::Create(crate::app::new_row(spec, new_uid(), at.clone()))
            }
            (ChangeOp::Update, Some(spec), Some(old)) => {
                let only_scale = change.fields.iter().all(|f| f.field == "replicas");
                caller.may(&app, if only_scale { Action::Scale } else { Action::Update }, target)?;
                let new = crate::app::new_row(spec, old.uid.clone(), old.created_at.clone());
                let described = change
                    .fields
                    .iter()
                    .map(|f| format!("{}: {} → {}", f.field, f.from.as_deref().unwrap_or("(unset)"), f.to.as_deref().unwrap_or("(unset)")))
                    .collect();
                FleetApply::Update { row: FleetRow { previous: old.previous.clone(), ..new }, changes: described }
            }
            (ChangeOp::Terminate, _, Some(_)) => {
                caller.may(&app, Action::Terminate, target)?;
                FleetApply::Terminate(change.fleet.clone())
            }
            _ => return Err(ApiError::internal("an apply plan", format!("{change:?} does not match what is stored"))),
        });
    }
    let actor = caller.0.audit_name();
    let applied = changes.clone();
    app.hub.write(move |s| Ok(((), s.apply_fleets(&applied, &at, &actor)?))).await?;
    for change in &changes {
        match change {
            FleetApply::Create(row) => {
                app.auth.allow_fleet(&row.name, &row.uid);
                app.desired_changed(&row.name);
            }
            FleetApply::Update { row, .. } => app.desired_changed(&row.name),
            FleetApply::Terminate(name) => app.desired_changed(name),
        }
    }
    plan.applied = true;
    Ok(Json(plan))
}

/// How long a deploy may go without progress when neither it nor its fleets say.
const DEPLOY_DEADLINE_S: u64 = 120;

/// Starts a deploy of `all` fleets or of one: each moves to its new version (and image) at
/// once, its agents replaced within its `max_unavailable`, and the deploy loop gates it.
async fn deploy_start(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<DeployRequest>,
) -> Result<(StatusCode, Json<Deploy>), ApiError> {
    let target = req
        .target
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "target_required", "target required: all, or a fleet"))?;
    let target: String = target.chars().take(128).collect();
    // One agent (`fleet/slot`) moves on its own: a canary that stays.
    let mut agent: Option<u32> = None;
    let rows = if target == "all" {
        caller.may(&app, Action::Update, Target::All)?;
        let rows: Vec<FleetRow> = app.db.run(|s| s.fleets()).await?.into_iter().filter(|r| r.state == FleetState::Active).collect();
        if rows.is_empty() {
            return Err(ApiError::bad_request("there is no fleet to deploy"));
        }
        rows
    } else if let Some((fleet, slot)) = target.split_once('/') {
        caller.may(&app, Action::Update, Target::Fleet(fleet))?;
        let row = load_active(&app, fleet).await?;
        let slot: u32 = slot.parse().map_err(|_| ApiError::bad_request(format!("'{target}': an agent is FLEET/SLOT, SLOT a number")))?;
        spec::resolve_targets(fleet, row.replicas, Some(&[slot]))?;
        agent = Some(slot);
        vec![row]
    } else {
        caller.may(&app, Action::Update, Target::Fleet(&target))?;
        vec![load_active(&app, &target).await?]
    };
    // What the request leaves out, the fleets' deploy policies give (the longest deadline of
    // them, for several), then the defaults.
    let policies: Vec<clawfleet_proto::api::DeployPolicy> = rows.iter().map(crate::app::deploy_policy).collect();
    let deadline_s = req.deadline_s.or_else(|| policies.iter().filter_map(|p| p.deadline_s).max()).unwrap_or(DEPLOY_DEADLINE_S);
    if !(1..=spec::MAX_DEPLOY_DEADLINE_S).contains(&deadline_s) {
        return Err(ApiError::bad_request(format!(
            "deadline_s must be between 1 and {} seconds, got {deadline_s}",
            spec::MAX_DEPLOY_DEADLINE_S
        )));
    }
    if let Some(image) = &req.image {
        spec::check_image(image)?;
    }
    if let Some(version) = &req.version {
        spec::check_version(version)?;
    }
    if req.canary == Some(0) {
        return Err(ApiError::bad_request("canary must be at least 1 agent"));
    }
    if req.canary.is_some() && agent.is_some() {
        return Err(ApiError::bad_request("a deploy of one agent has no canaries: it is one"));
    }
    let mut fleets = Vec::with_capacity(rows.len());
    for (row, policy) in rows.iter().zip(&policies) {
        // One agent deployed on its own has no canaries; a fleet's own canary count applies
        // to deploys of the fleet or of all.
        let canary = match agent {
            Some(_) => req.canary,
            None => req.canary.or(policy.canary),
        };
        if let Some(n) = canary.filter(|n| *n >= row.replicas) {
            return Err(ApiError::bad_request(format!(
                "canary {n} of fleet '{}', which has {} agents: canaries are fewer than its agents",
                row.name, row.replicas
            )));
        }
        // Swarm replaces a service's tasks in an order of its own: it moves N canaries of its
        // choosing, and no agent by its slot.
        let native = app.backend(&row.backend).is_ok_and(|b| b.rollout() == clawfleet_backend::Rollout::Native);
        let (slots, canaries) = match (agent, canary) {
            (Some(_), _) if native => {
                return Err(ApiError::bad_request(format!(
                    "fleet '{}' runs on {}, which picks the agents it replaces: deploy {} --canary 1 moves one of them",
                    row.name, row.backend, row.name
                )));
            }
            (Some(slot), _) => (Some(vec![slot]), None),
            (None, Some(n)) if native => (None, Some(n)),
            (None, Some(n)) => (Some((0..n).collect()), None),
            (None, None) => (None, None),
        };
        if req.image.is_some() && row.backend != clawfleet_core::BackendKind::Docker.as_str() {
            return Err(ApiError::bad_request(format!("fleet '{}' runs on {}: an image is for docker fleets", row.name, row.backend)));
        }
        let to_version = req.version.clone().unwrap_or_else(|| next_version(&row.version));
        let to_image = req.image.clone().or_else(|| row.image.clone());
        if to_version == row.version && to_image == row.image {
            return Err(ApiError::conflict(format!("fleet '{}' already runs version {to_version}", row.name)));
        }
        // What the backend can tell will fail (an image it does not have) is refused now,
        // not found out by the gate.
        if let (Ok(backend), Ok(d)) = (app.backend(&row.backend), app.deployment(row)) {
            let next = clawfleet_backend::Deployment { version: to_version.clone(), image: to_image.clone(), ..d };
            backend.check(&next).await.map_err(|e| ApiError::bad_request(format!("fleet '{}': {e}", row.name)))?;
        }
        fleets.push(DeployFleet {
            fleet: row.name.clone(),
            from_version: row.version.clone(),
            from_image: row.image.clone(),
            to_version,
            to_image,
            ready: 0,
            replicas: row.replicas,
            slots,
            canaries,
            rollback_to: None,
        });
    }
    let actor = caller.0.audit_name();
    let deploy = Deploy {
        id: 0,
        target: target.clone(),
        actor: actor.clone(),
        state: DeployState::Running,
        reason: None,
        deadline_s,
        created_at: clock::now_rfc3339(),
        finished_at: None,
        fleets,
    };
    let (deploy, _) = app
        .hub
        .write(move |s| {
            let detail =
                deploy.fleets.iter().map(|f| format!("{} {} -> {}", f.fleet, f.from_version, f.to_version)).collect::<Vec<_>>().join(", ");
            let (d, events) = s.start_deploy(&deploy, &audit(&deploy.created_at, &actor, "deploy", &deploy.target, detail))?;
            Ok((d, events))
        })
        .await?;
    for f in &deploy.fleets {
        app.desired_changed(&f.fleet);
    }
    Ok((StatusCode::CREATED, Json(deploy)))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployQuery {
    fleet: Option<String>,
    limit: Option<usize>,
}

async fn deploy_list(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<DeployQuery>,
) -> Result<Json<DeployList>, ApiError> {
    match &q.fleet {
        Some(f) if f != "all" => caller.may(&app, Action::Read, Target::Fleet(f))?,
        _ => caller.may(&app, Action::Read, Target::All)?,
    }
    let fleet = q.fleet.filter(|f| f != "all");
    let limit = q.limit.unwrap_or(100).min(1_000);
    let deploys = app.db.run(move |s| s.deploys(fleet.as_deref(), limit)).await?;
    Ok(Json(DeployList { deploys }))
}

async fn load_deploy(app: &App, caller: &Caller, id: &str, action: Action) -> Result<Deploy, ApiError> {
    let n: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("a deploy id is a number, got '{}'", id.chars().take(32).collect::<String>())))?;
    let deploy = app
        .db
        .run(move |s| s.deploy(n))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no_deploy", format!("no deploy #{n}")))?;
    match deploy.fleets.as_slice() {
        [one] if deploy.target != "all" => caller.may(app, action, Target::Fleet(&one.fleet))?,
        _ => caller.may(app, action, Target::All)?,
    }
    Ok(deploy)
}

async fn deploy_get(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, P(id): P<String>) -> Result<Json<Deploy>, ApiError> {
    Ok(Json(load_deploy(&app, &caller, &id, Action::Read).await?))
}

/// A paused deploy (its canaries passed) goes on to every agent.
async fn deploy_promote(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> Result<Json<Deploy>, ApiError> {
    change_deploy(&app, &caller, &id, |s, n, at, actor, target| {
        s.promote_deploy(n, at, &audit(at, actor, "deploy promote", target, String::new()))
    })
    .await
}

/// Stops a running deploy and returns its fleets to their versions before.
async fn deploy_abort(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> Result<Json<Deploy>, ApiError> {
    change_deploy(&app, &caller, &id, |s, n, at, actor, target| {
        let reason = format!("aborted by {actor}");
        s.finish_deploy(n, DeployState::Aborted, Some(&reason), at, &audit(at, actor, "deploy abort", target, String::new()))
    })
    .await
}

/// Makes `change` (given the store, the deploy's id, the time, the caller's audit name and the
/// deploy's target) to a deploy the caller may update; its fleets' desired state changed.
async fn change_deploy(
    app: &Arc<App>,
    caller: &Caller,
    id: &str,
    change: impl FnOnce(&clawfleet_store::Store, u64, &str, &str, &str) -> Result<Vec<Event>, clawfleet_store::StoreError> + Send + 'static,
) -> Result<Json<Deploy>, ApiError> {
    let deploy = load_deploy(app, caller, id, Action::Update).await?;
    let actor = caller.0.audit_name();
    let (n, target) = (deploy.id, deploy.target.clone());
    app.hub.write(move |s| Ok(((), change(s, n, &clock::now_rfc3339(), &actor, &target)?))).await?;
    for f in &deploy.fleets {
        app.desired_changed(&f.fleet);
    }
    let deploy = app.db.run(move |s| s.deploy(n)).await?.ok_or_else(|| ApiError::internal("a deploy", "vanished"))?;
    Ok(Json(deploy))
}

async fn status(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
) -> Result<Json<FleetStatus>, ApiError> {
    // An agent's own token sees its own agent only.
    let only = caller.reads(&app, &name)?;
    let row = load(&app, &name).await?;
    let observed = match (app.backend(&row.backend), app.deployment(&row)) {
        (Ok(backend), Ok(deployment)) => {
            // A backend that hangs (a login node that never answers) does not hang `status`:
            // the agents are then shown from their heartbeats alone.
            match tokio::time::timeout(OBSERVE_TIMEOUT, backend.observe(&deployment)).await {
                Ok(Ok(instances)) => instances,
                Ok(Err(e)) => {
                    tracing::warn!(fleet = %name, error = %e, "Backend could not report");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!(fleet = %name, seconds = OBSERVE_TIMEOUT.as_secs(), "Backend did not report in time");
                    Vec::new()
                }
            }
        }
        _ => Vec::new(),
    };
    // A slot being replaced shows its live instance that is not stopping, else its newest.
    let mut by_slot: BTreeMap<u32, Instance> = BTreeMap::new();
    for i in observed {
        let rank = |i: &Instance| (i.state.is_live(), i.state != InstanceState::Stopping);
        if by_slot.get(&i.slot).is_none_or(|seen| rank(&i) >= rank(seen)) {
            by_slot.insert(i.slot, i);
        }
    }
    let observed = by_slot;
    let n = row.name.clone();
    let (disarmed, phrases, scores, moves) =
        app.db.run(move |s| Ok((s.disarmed(&n)?, s.phrases(&n)?, s.scoreboard(&n)?, (s.live_migrations()?, s.vacated()?)))).await?;
    let badges = badges(&row.name, moves);
    let phrases: BTreeMap<u32, String> = phrases.into_iter().map(|p| (p.slot, p.text)).collect();
    let scores: BTreeMap<u32, i64> = scores.into_iter().map(|r| (r.slot, r.score)).collect();
    let slots: BTreeSet<u32> = (0..row.replicas).chain(observed.keys().copied()).filter(|s| only.is_none_or(|mine| mine == *s)).collect();
    let now = clock::mono_ms();
    let agents = slots
        .into_iter()
        .map(|slot| {
            let live = app.live.get(&row.name, slot);
            let replica = observed.get(&slot);
            let mut state = live.as_ref().map_or("pending", |a| a.state(now).as_str()).to_owned();
            let problem = match replica.map(|r| &r.state) {
                Some(InstanceState::Failed(why)) => {
                    state = "failed".into();
                    Some(why.clone())
                }
                Some(InstanceState::Restarting { last_exit } | InstanceState::Exited { last_exit }) => {
                    Some(format!("restarting after it {last_exit}"))
                }
                _ => None,
            };
            let hb = live.as_ref().map(|a| &a.hb);
            let badge = badges.get(&slot).cloned();
            if matches!(badge, Some(clawfleet_proto::rack::Badge::Defected { .. })) {
                state = "defected".into();
            }
            AgentStatus {
                slot,
                armed: !disarmed.contains(&slot),
                id: format!("{}/{slot}", row.name),
                name: agent_name(&row.name, slot),
                state,
                instance: replica.map(|r| r.id.clone()).filter(|id| !id.is_empty()),
                restarts: replica.map_or(0, |r| r.restarts),
                node: replica.and_then(|r| r.node.clone()),
                last_heartbeat: hb.map(|h| h.at.clone()),
                heartbeat_age_ms: live.as_ref().map(|a| now.saturating_sub(a.received_ms)),
                version: hb.map(|h| h.version.clone()),
                fleet_version: hb.map(|h| h.fleet_version.clone()),
                hostname: hb.map(|h| h.hostname.clone()),
                uptime_s: hb.map(|h| h.uptime_s),
                rss_bytes: hb.map(|h| h.rss_bytes),
                load1: hb.map(|h| h.load1),
                brain: hb.map(|h| h.brain.clone()),
                current_injection: hb.and_then(|h| h.current_injection.clone()),
                queued: hb.map_or(0, |h| h.queued),
                problem,
                three_words: phrases.get(&slot).cloned(),
                score: scores.get(&slot).copied(),
                badge,
            }
        })
        .collect();
    let isolation = app.backend(&row.backend).map_or(clawfleet_proto::api::Isolation::None, |b| b.isolation());
    let deploy = app.db.run(|s| s.active_deploy()).await?.filter(|d| d.fleets.iter().any(|f| f.fleet == row.name));
    Ok(Json(FleetStatus { fleet: fleet_view(&app, &row), isolation, agents, deploy }))
}

/// What each agent of `fleet` shows of migrations: `MIGRATING` while it moves (either way),
/// `DEFECTED` where it left, `FROM <rack>` where it arrived.
fn badges(
    fleet: &str,
    (live, vacated): (Vec<(clawfleet_proto::rack::Migration, i64)>, Vec<clawfleet_store::Vacated>),
) -> BTreeMap<u32, clawfleet_proto::rack::Badge> {
    use clawfleet_proto::rack::{Badge, Direction, MigrationState};
    let mut badges = BTreeMap::new();
    // Later says more: FROM, then MIGRATING (it may move on again), then DEFECTED.
    for (m, _) in live.into_iter().filter(|(m, _)| m.fleet == fleet) {
        let Some(slot) = m.slot else { continue };
        match (m.direction, m.state) {
            (Direction::In, MigrationState::Committed) => {
                badges.entry(slot).or_insert(Badge::From { rack: m.peer });
            }
            (_, s) if !s.is_final() => {
                badges.insert(slot, Badge::Migrating { rack: m.peer });
            }
            _ => {}
        }
    }
    for v in vacated.into_iter().filter(|v| v.fleet == fleet && v.defected) {
        badges.insert(v.slot, Badge::Defected { rack: v.peer });
    }
    badges
}

async fn update(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    JsonBody(req): JsonBody<UpdateRequest>,
) -> Result<Json<Fleet>, ApiError> {
    caller.may(&app, Action::Update, Target::Fleet(&name))?;
    let row = load_active(&app, &name).await?;
    if let Some(image) = &req.image {
        spec::check_image(image)?;
        let backend: clawfleet_core::BackendKind = row.backend.parse()?;
        if backend != clawfleet_core::BackendKind::Docker {
            return Err(spec::SpecError::ImageNotForBackend(backend).into());
        }
    }
    if req.image.is_none() && req.version.is_none() {
        return Err(ApiError::bad_request("an update needs a new image, a new version, or both"));
    }
    let version = req.version.clone().unwrap_or_else(|| next_version(&row.version));
    spec::check_version(&version)?;
    change(&app, caller, &name, "update", FleetUpdate::To { image: req.image, version }).await
}

/// The version label an update gets when none is given: "3" after "2", else "<old>+1".
fn next_version(v: &str) -> String {
    match v.parse::<u64>() {
        Ok(n) if n < u64::MAX => (n + 1).to_string(),
        _ => format!("{v}+1").chars().take(spec::MAX_VERSION_LEN).collect(),
    }
}

async fn rollback(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, P(name): P<String>) -> Result<Json<Fleet>, ApiError> {
    caller.may(&app, Action::Update, Target::Fleet(&name))?;
    load_active(&app, &name).await?;
    change(&app, caller, &name, "rollback", FleetUpdate::Rollback).await
}

/// Arms or disarms one agent (clawbucket's ARM): a disarmed agent takes part in none of the
/// fleet's scenarios, and still answers what is sent to it.
async fn arm(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P((name, slot)): P<(String, u32)>,
    JsonBody(req): JsonBody<ArmRequest>,
) -> Result<Json<Ack>, ApiError> {
    caller.may(&app, Action::Command, Target::Agent(&name, slot))?;
    let row = load_active(&app, &name).await?;
    spec::resolve_targets(&name, row.replicas, Some(&[slot]))?;
    let actor = caller.0.audit_name();
    let n = name.clone();
    let what = if req.armed { "armed" } else { "disarmed" };
    app.hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            Ok(((), s.set_armed(&n, slot, req.armed, &at, &audit(&at, &actor, "arm", &n, format!("agent {slot} {what}")))?))
        })
        .await?;
    Ok(Json(Ack { ok: true, message: format!("agent {name}/{slot} {what}") }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatQuery {
    limit: Option<usize>,
}

/// The newest messages of a fleet's chat panel (100 by default, 1000 at most).
async fn chat_list(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    Query(q): Query<ChatQuery>,
) -> Result<Json<ChatList>, ApiError> {
    caller.may(&app, Action::Read, Target::Fleet(&name))?;
    load(&app, &name).await?;
    let limit = q.limit.unwrap_or(100).min(1000);
    let n = name.clone();
    let events = app.db.run(move |s| s.chat(&n, limit)).await?;
    let messages = events
        .into_iter()
        .filter_map(|e| match e.body {
            EventBody::Chat { from, text } => Some(ChatMessage { id: e.id, from, agent: e.agent, text, at: e.at }),
            _ => None,
        })
        .collect();
    Ok(Json(ChatList { messages }))
}

/// Posts to a fleet's chat panel, as the caller (who may inject the fleet): at most 280
/// characters, not empty.
async fn chat_post(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    JsonBody(req): JsonBody<ChatPost>,
) -> Result<(StatusCode, Json<ChatMessage>), ApiError> {
    caller.may(&app, Action::Inject, Target::Fleet(&name))?;
    load_active(&app, &name).await?;
    let text = req.text.trim();
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_CHAT_CHARS {
        return Err(ApiError::bad_request(format!("a chat message is 1 to {MAX_CHAT_CHARS} characters, got {chars}")));
    }
    let (from, at) = (caller.0.audit_name(), clock::now_rfc3339());
    let body = EventBody::Chat { from: from.clone(), text: text.to_owned() };
    let stored = app.hub.append(vec![NewEvent { at: at.clone(), fleet: name.clone(), agent: None, injection_id: None, body }]).await?;
    let id = stored.first().map_or(0, |e| e.id);
    Ok((StatusCode::CREATED, Json(ChatMessage { id, from, agent: None, text: text.to_owned(), at })))
}

/// The scenarios a fleet plays (none set: all off).
async fn scenarios_get(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
) -> Result<Json<Scenarios>, ApiError> {
    caller.may(&app, Action::Read, Target::Fleet(&name))?;
    load(&app, &name).await?;
    Ok(Json(crate::scenario::of(&app, &name).await?))
}

/// Sets the scenarios a fleet plays (who may update the fleet may): each in its bounds.
async fn scenarios_set(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    JsonBody(req): JsonBody<Scenarios>,
) -> Result<Json<Scenarios>, ApiError> {
    caller.may(&app, Action::Update, Target::Fleet(&name))?;
    load_active(&app, &name).await?;
    clawfleet_core::scenario::validate(&req).map_err(|e| ApiError::bad_request(e.to_string()))?;
    change_scenarios(&app, &caller, &name, move |_| Ok(req)).await
}

/// Changes the scenarios a fleet plays by a JSON merge patch (RFC 7396): what it does not name
/// is kept, so concurrent changes to different scenarios do not undo each other.
async fn scenarios_patch(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    JsonBody(patch): JsonBody<serde_json::Value>,
) -> Result<Json<Scenarios>, ApiError> {
    caller.may(&app, Action::Update, Target::Fleet(&name))?;
    load_active(&app, &name).await?;
    change_scenarios(&app, &caller, &name, move |now| clawfleet_core::scenario::merge(now, &patch).map_err(|e| e.to_string())).await
}

/// Reads a fleet's scenarios, changes them and stores the result in one store write (so no
/// other change lands between the read and the write); a change refused is a 400.
async fn change_scenarios(
    app: &App,
    caller: &Caller,
    name: &str,
    change: impl FnOnce(&Scenarios) -> Result<Scenarios, String> + Send + 'static,
) -> Result<Json<Scenarios>, ApiError> {
    let (actor, n) = (caller.0.audit_name(), name.to_owned());
    let (changed, _) = app
        .hub
        .write(move |s| {
            let now = s.fleet_scenarios(&n)?.map(|json| crate::scenario::parse(&n, &json)).unwrap_or_default();
            let next = match change(&now) {
                Ok(next) => next,
                Err(refused) => return Ok((Err(refused), vec![])),
            };
            let at = clock::now_rfc3339();
            let detail = serde_json::to_string(&next).expect("scenarios serialize");
            let event = s.set_scenarios(&n, &next, &at, &audit(&at, &actor, "scenarios", &n, detail))?;
            Ok((Ok(next), vec![event]))
        })
        .await?;
    changed.map(Json).map_err(ApiError::bad_request)
}

/// A fleet's Rock/Paper/Scissors: its scenarios, newest round and scoreboard.
async fn rps(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, P(name): P<String>) -> Result<Json<RpsView>, ApiError> {
    caller.may(&app, Action::Read, Target::Fleet(&name))?;
    load(&app, &name).await?;
    let scenarios = crate::scenario::of(&app, &name).await?;
    let n = name.clone();
    let (round, board) = app.db.run(move |s| Ok((s.latest_round(&n)?, s.scoreboard(&n)?))).await?;
    let round = round.map(|r| RoundView {
        round: r.round,
        leader: r.leader,
        epoch: r.epoch,
        choice: r.choice,
        opened_at: r.opened_at,
        led_at: r.led_at,
        plays: r.plays,
    });
    let scoreboard = board
        .into_iter()
        .map(|r| ScoreView {
            slot: r.slot,
            name: agent_name(&name, r.slot),
            score: r.score,
            wins: r.wins,
            draws: r.draws,
            losses: r.losses,
            last_round: r.last_round,
        })
        .collect();
    Ok(Json(RpsView { scenarios, round, scoreboard }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HaikuQuery {
    limit: Option<usize>,
}

/// A fleet's newest haiku (the last five by default, ten at most: what is kept).
async fn haiku(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    Query(q): Query<HaikuQuery>,
) -> Result<Json<HaikuList>, ApiError> {
    caller.may(&app, Action::Read, Target::Fleet(&name))?;
    load(&app, &name).await?;
    let limit = q.limit.unwrap_or(5).min(clawfleet_proto::scenario::HAIKU_KEPT);
    let n = name.clone();
    let events = app.db.run(move |s| s.haiku(&n, limit)).await?;
    let haiku = events
        .into_iter()
        .filter_map(|e| match (e.body, e.agent) {
            (EventBody::Haiku { epoch, text }, Some(agent)) => Some(HaikuView { id: e.id, at: e.at, agent, epoch, text }),
            _ => None,
        })
        .collect();
    Ok(Json(HaikuList { haiku }))
}

/// Asks agents to chime in to the chat through their brain (who may inject the fleet may): to
/// `prompt`, or else to the newest message. Each agent's answer is posted as itself.
async fn chime(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    JsonBody(req): JsonBody<ChimeRequest>,
) -> Result<(StatusCode, Json<Ack>), ApiError> {
    caller.may(&app, Action::Inject, Target::Fleet(&name))?;
    let row = load_active(&app, &name).await?;
    let targets = spec::resolve_targets(&name, row.replicas, req.targets.as_deref())?;
    let prompt = match req.prompt.as_deref().map(str::trim) {
        Some("") => return Err(ApiError::bad_request("the prompt is empty")),
        Some(p) if p.chars().count() > MAX_CHAT_CHARS => {
            return Err(ApiError::bad_request(format!("a chime prompt is at most {MAX_CHAT_CHARS} characters")));
        }
        Some(p) => p.to_owned(),
        None => {
            let n = name.clone();
            let last = app.db.run(move |s| s.chat(&n, 1)).await?;
            match last.into_iter().next().map(|e| e.body) {
                Some(EventBody::Chat { from, text }) => {
                    format!("{from} said in your fleet's chat: \"{text}\". Reply in one short sentence.")
                }
                _ => "Say hello to your fleet's chat in one short sentence.".to_owned(),
            }
        }
    };
    let directive = crate::scenario::play(Play::Chime { prompt }, crate::scenario::WRITE_WITHIN);
    app.outbound.to_fleet(&name, &targets, false, &directive).await;
    let message = format!("asked {} agent{} of {name} to chime in", targets.len(), if targets.len() == 1 { "" } else { "s" });
    Ok((StatusCode::ACCEPTED, Json(Ack { ok: true, message })))
}

/// Sets (or clears) the agent the operator wants to lead the fleet; the leader loop moves the
/// leadership there while that agent is healthy, with a new epoch.
async fn leader(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    JsonBody(req): JsonBody<LeaderRequest>,
) -> Result<Json<Fleet>, ApiError> {
    caller.may(&app, Action::Update, Target::Fleet(&name))?;
    let row = load_active(&app, &name).await?;
    if let Some(slot) = req.slot {
        spec::resolve_targets(&name, row.replicas, Some(&[slot]))?;
    }
    let actor = caller.0.audit_name();
    let n = name.clone();
    app.db
        .run(move |s| {
            let at = clock::now_rfc3339();
            let detail = req.slot.map_or("the lowest healthy agent".to_owned(), |s| format!("agent {s}"));
            s.set_leader_preferred(&n, req.slot, &audit(&at, &actor, "leader", &n, detail))
        })
        .await?;
    let row = load(&app, &name).await?;
    Ok(Json(fleet_view(&app, &row)))
}

async fn change(app: &Arc<App>, caller: Caller, name: &str, action: &'static str, update: FleetUpdate) -> Result<Json<Fleet>, ApiError> {
    let actor = caller.0.audit_name();
    let n = name.to_owned();
    app.hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            Ok(((), vec![s.update_fleet(&n, update, &at, &audit(&at, &actor, action, &n, String::new()))?]))
        })
        .await?;
    app.desired_changed(name);
    let row = load(app, name).await?;
    Ok(Json(fleet_view(app, &row)))
}

async fn scale(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    JsonBody(req): JsonBody<ScaleRequest>,
) -> Result<Json<Fleet>, ApiError> {
    caller.may(&app, Action::Scale, Target::Fleet(&name))?;
    let actor = caller.0.audit_name();
    let replicas = spec::check_replicas(req.replicas)?;
    let row = load_active(&app, &name).await?;
    let n = name.clone();
    app.hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            Ok(((), s.scale_fleet(&n, replicas, &at, &audit(&at, &actor, "scale", &n, String::new()))?))
        })
        .await?;
    app.desired_changed(&name);
    Ok(Json(fleet_view(&app, &FleetRow { replicas, ..row })))
}

async fn terminate(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
) -> Result<(StatusCode, Json<Ack>), ApiError> {
    caller.may(&app, Action::Terminate, Target::Fleet(&name))?;
    let actor = caller.0.audit_name();
    let row = load(&app, &name).await?;
    if row.state == FleetState::Active {
        let n = name.clone();
        app.hub
            .write(move |s| {
                let at = clock::now_rfc3339();
                Ok(((), s.mark_terminating(&n, &at, &audit(&at, &actor, "terminate", &n, format!("replicas={}", row.replicas)))?))
            })
            .await?;
    }
    app.desired_changed(&name);
    Ok((StatusCode::ACCEPTED, Json(Ack { ok: true, message: format!("fleet '{name}' is terminating") })))
}

/// What an injection (or a queued one) carries, checked: a prompt that is not blank and not
/// too large, a correlation id within bounds.
fn check_injection(prompt: &str, request_id: Option<&str>) -> Result<(), ApiError> {
    if prompt.trim().is_empty() {
        return Err(ApiError::bad_request("prompt is empty"));
    }
    spec::check_prompt("prompt", prompt)?;
    if let Some(id) = request_id.filter(|id| id.len() > clawfleet_proto::MAX_REQUEST_ID_BYTES) {
        return Err(ApiError::bad_request(format!(
            "request_id is {} bytes, over the {}-byte limit",
            id.len(),
            clawfleet_proto::MAX_REQUEST_ID_BYTES
        )));
    }
    Ok(())
}

/// `GET /api/v1/rack`: what this control plane says of itself, to its peers (the `peer` role)
/// and to whoever reads everything here.
async fn rack_info(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<clawfleet_proto::rack::RackInfo>, ApiError> {
    caller.may(&app, Action::Peer, Target::All).or_else(|_| caller.may(&app, Action::Read, Target::All))?;
    Ok(Json(crate::peer::info(&app.peers.config.name)))
}

/// `GET /api/v1/racks`: this rack and its peers, each asked now whether it answers.
async fn racks(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Result<Json<clawfleet_proto::rack::Racks>, ApiError> {
    caller.may(&app, Action::Read, Target::All)?;
    Ok(Json(clawfleet_proto::rack::Racks { rack: app.peers.config.name.clone(), peers: app.peers.status().await }))
}

/// The agents `agents` names, or (`None`) every agent of the fleet that is here: a slot its
/// agent left for another rack has none.
fn targets_here(app: &App, name: &str, replicas: u32, agents: Option<&[u32]>) -> Result<Vec<u32>, ApiError> {
    let mut targets = spec::resolve_targets(name, replicas, agents)?;
    if agents.is_none() {
        let vacated = app.holds.vacated(name);
        targets.retain(|t| !vacated.contains(t));
        if targets.is_empty() && !vacated.is_empty() {
            return Err(ApiError::conflict(format!("fleet '{name}' has no agent here: each of its agents moved to another rack")));
        }
    }
    Ok(targets)
}

async fn inject(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    JsonBody(req): JsonBody<InjectRequest>,
) -> Result<(StatusCode, Json<InjectResponse>), ApiError> {
    caller.may(&app, Action::Inject, Target::Fleet(&name))?;
    let actor = caller.0.audit_name();
    check_injection(&req.prompt, req.request_id.as_deref())?;
    let row = load_active(&app, &name).await?;
    let targets = match &req.role {
        Some(_) if req.agents.is_some() => return Err(ApiError::bad_request("give agents or a role, not both")),
        Some(role) => {
            let (n, r) = (name.clone(), role.clone());
            vec![app.db.run(move |s| s.role_holder(&n, &r)).await?]
        }
        None => targets_here(&app, &name, row.replicas, req.agents.as_deref())?,
    };
    let id = uuid::Uuid::now_v7().to_string();
    let (iid, fleet, prompt, t, rid) = (id.clone(), name.clone(), req.prompt.clone(), targets.clone(), req.request_id.clone());
    let (rows, acks) = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let detail = format!("injection={iid} agents={}", t.len());
            let inj =
                NewInjection { id: &iid, fleet: &fleet, prompt: &prompt, at: &at, caller: &actor, targets: &t, request_id: rid.as_deref() };
            s.create_injection(&inj, &audit(&at, &actor, "inject", &fleet, detail))
        })
        .await?;
    app.metrics.injection(crate::metrics::InjectOutcome::Accepted, 1);
    let pending = Pending::Inject { injection_id: id.clone(), prompt: req.prompt.clone() };
    let expires = outbox::expires_at(std::time::SystemTime::now(), app.inject_timeout(&row));
    outbox::send_now(&app, &name, row.replicas, &targets, &pending, &rows, expires).await;
    let first_event_id = acks.first().map_or(0, |e| e.id);
    Ok((StatusCode::ACCEPTED, Json(InjectResponse { injection_id: id, fleet: name, targets, first_event_id })))
}

async fn command(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    JsonBody(req): JsonBody<CommandRequest>,
) -> Result<Json<CommandResponse>, ApiError> {
    caller.may(&app, Action::Command, Target::Fleet(&name))?;
    let actor = caller.0.audit_name();
    let cmd: CommandName = req
        .command
        .parse()
        .map_err(|e: clawfleet_core::command::UnknownCommand| ApiError::new(StatusCode::BAD_REQUEST, "unknown_command", e.to_string()))?;
    let row = load_active(&app, &name).await?;
    let targets = targets_here(&app, &name, row.replicas, req.agents.as_deref())?;
    let wait = Duration::from_millis(req.timeout_ms.unwrap_or(10_000).min(120_000));
    Ok(Json(send_command(&app, &row, targets, cmd, actor, wait).await?))
}

/// Sends a command of the vocabulary to agents of a fleet and waits, at most `wait`, for
/// their replies (as the store has them).
pub(super) async fn send_command(
    app: &Arc<App>,
    row: &FleetRow,
    targets: Vec<u32>,
    cmd: CommandName,
    actor: String,
    wait: Duration,
) -> Result<CommandResponse, ApiError> {
    let name = row.name.clone();
    let id = uuid::Uuid::now_v7().to_string();
    let mut live = app.hub.subscribe();
    let (cid, fleet, t) = (id.clone(), name.clone(), targets.clone());
    let (rows, sent) = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let detail = format!("{cmd} command={cid} agents={}", t.len());
            s.create_command(&cid, &fleet, cmd.as_str(), &at, &t, &audit(&at, &actor, "command", &fleet, detail))
        })
        .await?;
    let pending = Pending::Command { command_id: id.clone(), command: cmd.as_str().into() };
    outbox::send_now(app, &name, row.replicas, &targets, &pending, &rows, None).await;

    // Wait for every reply or the deadline, watching the live stream.
    let deadline = Instant::now() + wait;
    let mut answered = BTreeSet::new();
    while answered.len() < targets.len() {
        match tokio::time::timeout_at(deadline.into(), live.recv()).await {
            Ok(Ok(e)) => {
                if let EventBody::CommandReply { command_id, .. } = &e.body
                    && *command_id == id
                    && e.fleet == name
                {
                    answered.extend(e.agent);
                }
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    // The store is the record: read the replies from it.
    let after = sent.first().map_or(0, |e| e.id);
    let filter = EventFilter { fleet: Some(name.clone()), ..EventFilter::default() };
    let events = app.db.run(move |s| s.events_after(&filter, after, usize::MAX >> 1)).await?;
    let mut results: BTreeMap<u32, CommandResult> = BTreeMap::new();
    for e in events {
        if let (EventBody::CommandReply { command_id, ok, result, error, .. }, Some(agent)) = (e.body, e.agent)
            && command_id == id
        {
            results.entry(agent).or_insert(CommandResult { agent, ok, result, error });
        }
    }
    let pending = targets.iter().copied().filter(|t| !results.contains_key(t)).collect();
    Ok(CommandResponse { command_id: id, command: cmd.as_str().into(), results: results.into_values().collect(), pending })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinQuery {
    /// `A-B` or `N`; every slot of the fleet by default.
    slots: Option<String>,
}

async fn join(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    Q(q): Q<JoinQuery>,
) -> Result<Json<JoinResponse>, ApiError> {
    caller.may(&app, Action::Join, Target::Fleet(&name))?;
    let actor = caller.0.audit_name();
    let row = load_active(&app, &name).await?;
    let slots = match q.slots.as_deref() {
        None => spec::resolve_targets(&name, row.replicas, None)?,
        Some(range) => spec::slot_range(&name, row.replicas, range)?,
    };
    let deployment = app.deployment(&row).map_err(|e| ApiError::internal("stored fleet", e))?;
    let agents = slots
        .iter()
        .map(|&slot| {
            let env: BTreeMap<_, _> = deployment.agent_env(slot).into_iter().collect();
            JoinAgent {
                slot,
                username: env.get(clawfleet_backend::env::BUS_USERNAME).cloned(),
                password: env.get(clawfleet_backend::env::BUS_PASSWORD).cloned(),
                token: app.auth.agent_token(&clawfleet_core::AgentRef { fleet: deployment.fleet.clone(), slot }),
            }
        })
        .collect();
    let (n, count) = (name.clone(), slots.len());
    app.db.run(move |s| s.audit(&audit(&clock::now_rfc3339(), &actor, "join", &n, format!("slots={count}")))).await?;
    let e = &app.endpoints;
    Ok(Json(JoinResponse {
        fleet: row.name.clone(),
        fleet_uid: row.uid.clone(),
        bus: format!("{}://{}:{}", if e.bus_tls { "mqtts" } else { "mqtt" }, e.bus_host, e.bus_port),
        bus_ca: e.bus_ca.clone(),
        brain: row.brain.clone(),
        prompt: row.prompt.clone(),
        version: row.version.clone(),
        model_url: e.model_url.clone(),
        model_name: e.model_name.clone(),
        model_builtin: e.model_builtin,
        heartbeat_ms: e.heartbeat_ms,
        agents,
    }))
}

async fn injection(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> Result<Json<InjectionStatus>, ApiError> {
    let i = id.clone();
    let found = app
        .db
        .run(move |s| match s.injection(&i)? {
            Some(row) => {
                let events = s.injection_events(&row.fleet, &i)?;
                Ok(Some((row, events)))
            }
            None => Ok(None),
        })
        .await?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "unknown_injection", format!("no injection with id '{id}'"));
    let (row, events) = found.ok_or_else(not_found)?;
    // Another fleet's injection is no different from one that does not exist; an agent's own
    // token sees only its own agent's part.
    let only = caller.reads(&app, &row.fleet).map_err(|_| not_found())?;
    let mut agents: BTreeMap<u32, InjectionTarget> = BTreeMap::new();
    for e in events {
        let Some(agent) = e.agent.filter(|a| only.is_none_or(|mine| mine == *a)) else { continue };
        let t = agents.entry(agent).or_insert(InjectionTarget { agent, state: "queued".into(), answer: None, error: None, usage: None });
        match e.body {
            EventBody::InjectDelivered {} if t.state == "queued" => t.state = "delivered".into(),
            EventBody::TurnStarted {} => t.state = "running".into(),
            EventBody::Assistant { content } => t.answer = Some(content),
            EventBody::TurnComplete {} => t.state = "complete".into(),
            EventBody::Usage(u) => t.usage = Some(u),
            EventBody::AgentError { message } => {
                t.state = "failed".into();
                t.error = Some(message);
            }
            EventBody::InjectFailed { error } => {
                t.state = "failed".into();
                t.error = Some(error);
            }
            _ => {}
        }
    }
    if only.is_some() && agents.is_empty() {
        // Not sent to this agent: not its to see.
        return Err(not_found());
    }
    Ok(Json(InjectionStatus {
        injection_id: row.id,
        fleet: row.fleet,
        prompt: row.prompt,
        created_at: row.created_at,
        agents: agents.into_values().collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    fleet: Option<String>,
    agent: Option<u32>,
    injection: Option<String>,
    /// Replay stored events after this id first (0: all history).
    since: Option<u64>,
    /// Replay the last N matching events first (when `since` is not given).
    tail: Option<usize>,
    /// Keep the stream open for new events (default true).
    follow: Option<bool>,
}

/// How often an idle event stream sends an empty line, so dead clients are noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);

async fn events(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>, Q(q): Q<EventsQuery>) -> Result<Response, ApiError> {
    let target = match (&q.fleet, q.agent) {
        (Some(f), Some(a)) => Target::Agent(f, a),
        (Some(f), None) => Target::Fleet(f),
        (None, _) => Target::All,
    };
    caller.may(&app, Action::Read, target)?;
    if let Some(f) = &q.fleet {
        f.parse::<clawfleet_core::FleetName>().map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let filter = EventFilter { fleet: q.fleet, agent: q.agent, injection_id: q.injection };
    let since = match (q.since, q.tail) {
        // Event ids are SQLite rowids: positive and below 2^63.
        (Some(since), _) if since > i64::MAX as u64 => {
            return Err(ApiError::bad_request(format!("since is {since}; event ids are at most {}", i64::MAX)));
        }
        (Some(since), _) => Some(since),
        (None, Some(n)) => {
            let f = filter.clone();
            Some(app.db.run(move |s| s.tail_start(&f, n)).await?)
        }
        (None, None) => None,
    };
    let request = StreamRequest { filter, since, follow: q.follow.unwrap_or(true) };
    let rx = app.hub.stream(request);
    let lines = ReceiverStream::new(rx).map(|item| {
        let line = match item {
            Ok(e) => serde_json::to_string(&*e as &Event).expect("events serialize"),
            Err(e) => {
                tracing::error!(error = %e, "Event stream failed");
                serde_json::json!({"error": "the event stream failed; see the control plane's log", "code": "internal"}).to_string()
            }
        };
        Ok::<_, std::convert::Infallible>(Bytes::from(line + "\n"))
    });
    let keepalive =
        tokio_stream::wrappers::IntervalStream::new(tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE))
            .map(|_| Ok(Bytes::from_static(b"\n")));
    let body = Body::from_stream(merge_until_first_ends(lines, keepalive));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// Interleaves `main` with `side` and ends when `main` ends.
fn merge_until_first_ends<T: Send + 'static>(
    main: impl futures_util::Stream<Item = T> + Send + 'static,
    side: impl futures_util::Stream<Item = T> + Send + 'static,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    let main = main.map(Some).chain(futures_util::stream::once(async { None }));
    futures_util::stream::select(main, side.map(Some)).take_while(|x| std::future::ready(x.is_some())).map(|x| x.expect("checked"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit_log(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    caller.may(&app, Action::ReadAudit, Target::All)?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let rows = app.db.run(move |s| s.audit_log(limit)).await?;
    Ok(Json(
        rows.into_iter().map(|r| AuditEntry { at: r.at, actor: r.actor, action: r.action, target: r.target, detail: r.detail }).collect(),
    ))
}

async fn bus_observer(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Result<Json<BusLogin>, ApiError> {
    // A bus login, like `join`'s: for unscoped operators.
    caller.may(&app, Action::Join, Target::All)?;
    if !app.embedded_bus && app.dynsec.is_none() {
        return Err(ApiError::conflict(
            "this control plane uses an external broker with its own logins: set it up with clawfleet bus config --mosquitto and up --bus-dynsec for the observer login",
        ));
    }
    let e = &app.endpoints;
    Ok(Json(BusLogin {
        host: e.bus_host.clone(),
        port: e.bus_port,
        tls: e.bus_tls,
        username: clawfleet_bus::OBSERVER_USER.into(),
        password: app.auth.observer_password(),
        topics: "clawfleet/v1/#".into(),
    }))
}

fn token_info(row: &TokenRow) -> Result<TokenInfo, ApiError> {
    Ok(TokenInfo {
        name: row.name.clone(),
        role: row.role.parse().map_err(|e: String| ApiError::internal("a stored token's role", e))?,
        fleet: row.fleet.clone(),
        created_at: row.created_at.clone(),
        expires_at: row.expires_at.map(clock::rfc3339),
        created_by: row.created_by.clone(),
    })
}

async fn token_list(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Result<Json<TokenList>, ApiError> {
    caller.may(&app, Action::ManageTokens, Target::All)?;
    let rows = app.db.run(|s| s.tokens()).await?;
    Ok(Json(TokenList { tokens: rows.iter().map(token_info).collect::<Result<_, _>>()? }))
}

async fn secret_list(State(app): State<Arc<App>>, Extension(caller): Extension<Caller>) -> Result<Json<SecretList>, ApiError> {
    caller.may(&app, Action::ManageSecrets, Target::All)?;
    let (rows, fleets) = app.db.run(|s| Ok((s.secrets()?, s.fleets()?))).await?;
    let secrets = rows
        .into_iter()
        .map(|r| SecretInfo {
            fleets: fleets
                .iter()
                .filter(|f| BrainEnv::from_column(f.brain_env.as_deref()).secrets.contains(&r.name))
                .map(|f| f.name.clone())
                .collect(),
            name: r.name,
            bytes: r.bytes,
            updated_at: r.updated_at,
            updated_by: r.updated_by,
        })
        .collect();
    Ok(Json(SecretList { secrets }))
}

/// Sets a secret; fleets whose brains get it are replaced (their configuration changed).
async fn secret_set(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    JsonBody(req): JsonBody<SecretRequest>,
) -> Result<Json<Ack>, ApiError> {
    caller.may(&app, Action::ManageSecrets, Target::All)?;
    spec::check_var_name(&name)?;
    spec::check_secret_value(&name, &req.value)?;
    let actor = caller.0.audit_name();
    let (n, value) = (name.clone(), req.value.clone());
    let users = app
        .db
        .run(move |s| {
            let at = clock::now_rfc3339();
            s.set_secret(&n, &value, &at, &audit(&at, &actor, "secret-set", &n, format!("{} bytes", value.len())))?;
            Ok(s.fleets()?.into_iter().filter(|f| BrainEnv::from_column(f.brain_env.as_deref()).secrets.contains(&n)).collect::<Vec<_>>())
        })
        .await?;
    let bytes = req.value.len();
    app.secrets.write().expect("not poisoned").insert(name.clone(), req.value);
    for f in &users {
        app.desired_changed(&f.name);
    }
    let names: Vec<&str> = users.iter().map(|f| f.name.as_str()).collect();
    let message = match names.is_empty() {
        true => format!("secret '{name}' set ({bytes} bytes)"),
        false => format!("secret '{name}' set ({bytes} bytes); the agents of {} get it as they are replaced", names.join(", ")),
    };
    Ok(Json(Ack { ok: true, message }))
}

async fn secret_delete(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
) -> Result<Json<Ack>, ApiError> {
    caller.may(&app, Action::ManageSecrets, Target::All)?;
    let actor = caller.0.audit_name();
    let n = name.clone();
    app.db
        .run(move |s| {
            let at = clock::now_rfc3339();
            s.delete_secret(&n, &audit(&at, &actor, "secret-remove", &n, String::new()))
        })
        .await
        .map_err(|e| match e {
            clawfleet_store::StoreError::NoSecret(_) => ApiError::new(StatusCode::NOT_FOUND, "unknown_secret", e.to_string()),
            other => other.into(),
        })?;
    app.secrets.write().expect("not poisoned").remove(&name);
    Ok(Json(Ack { ok: true, message: format!("secret '{name}' removed") }))
}

async fn token_create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    JsonBody(req): JsonBody<TokenRequest>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    caller.may(&app, Action::ManageTokens, Target::All)?;
    let name = match req.name {
        Some(n) => n,
        None => format!("{}-{}", req.role, &uuid::Uuid::new_v4().simple().to_string()[..8]),
    };
    authz::check_token_name(&name).map_err(ApiError::bad_request)?;
    if name == crate::auth::FILE_TOKEN_NAME {
        return Err(ApiError::conflict(format!("'{name}' is the token file's token; choose another name")));
    }
    let fleet =
        req.fleet.as_deref().map(str::parse::<clawfleet_core::FleetName>).transpose().map_err(|e| ApiError::bad_request(e.to_string()))?;
    if req.role == Role::Agent && fleet.is_none() {
        return Err(ApiError::bad_request("an agent token acts as an agent of one fleet: give its fleet (--fleet)"));
    }
    if req.role == Role::Peer && fleet.is_some() {
        return Err(ApiError::bad_request("a peer token is another rack's, for no fleet in particular: give no --fleet"));
    }
    let expires_at = match req.expires.as_deref() {
        None => None,
        Some(expires) => Some(clock::unix_now() + authz::token_lifetime(expires).map_err(ApiError::bad_request)?.as_secs() as i64),
    };
    let token = crate::auth::new_token();
    let row = TokenRow {
        name: name.clone(),
        role: req.role.as_str().into(),
        fleet: fleet.map(|f| f.to_string()),
        hash: clawfleet_bus::credentials::token_hash(&token),
        created_at: clock::now_rfc3339(),
        expires_at,
        created_by: caller.0.audit_name(),
    };
    let (r, actor) = (row.clone(), caller.0.audit_name());
    app.db
        .run(move |s| {
            let detail = format!("role={} fleet={}", r.role, r.fleet.as_deref().unwrap_or("*"));
            s.insert_token(&r, &audit(&r.created_at, &actor, "token-create", &r.name, detail))
        })
        .await?;
    let info = token_info(&row)?;
    app.tokens.insert(row);
    Ok((StatusCode::CREATED, Json(NewToken { info, token })))
}

async fn token_revoke(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
) -> Result<Json<Ack>, ApiError> {
    caller.may(&app, Action::ManageTokens, Target::All)?;
    if name == crate::auth::FILE_TOKEN_NAME {
        return Err(ApiError::conflict(format!(
            "'{name}' is the token file's token: to replace it, delete {} and restart the control plane",
            app.data_dir.join("token").display()
        )));
    }
    let (n, actor) = (name.clone(), caller.0.audit_name());
    let removed = app.db.run(move |s| s.delete_token(&n, &audit(&clock::now_rfc3339(), &actor, "token-revoke", &n, String::new()))).await?;
    if !removed {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_token", format!("no token named '{name}'")));
    }
    app.tokens.remove(&name);
    Ok(Json(Ack { ok: true, message: format!("token '{name}' revoked") }))
}

/// `GET /metrics`: OpenMetrics to a scraper that asks for it (Prometheus), else the classic
/// text format. Open to anyone who reaches the API's address, as scrapers are: counts and
/// latencies only, no fleet's name unless `--agent-metrics`.
async fn metrics(State(app): State<Arc<App>>, headers: axum::http::HeaderMap) -> Result<Response, ApiError> {
    let now = clock::mono_ms();
    let counts = app.live.counts(now);
    let agents: Vec<(&'static str, u64)> =
        clawfleet_core::liveness::AgentState::ALL.iter().map(|s| (s.as_str(), counts.get(s.as_str()).copied().unwrap_or(0))).collect();
    let (depth, open, newest) = app
        .db
        .run(|s| {
            let open = s
                .live_migrations()?
                .iter()
                .filter(|(m, _)| !m.state.is_final() && m.state != clawfleet_proto::rack::MigrationState::Committed)
                .count();
            Ok((s.outbox_depth()?, open, s.newest_event_id()?))
        })
        .await?;
    let samples = app.live.samples();
    let per_agent: Vec<crate::metrics::AgentSample> = samples
        .iter()
        .map(|(fleet, slot, hb)| crate::metrics::AgentSample {
            fleet: fleet.clone(),
            slot: *slot,
            uptime_s: hb.uptime_s,
            rss_bytes: hb.rss_bytes,
            load1: hb.load1,
        })
        .collect();
    let queued = samples.iter().map(|(_, _, hb)| u64::from(hb.queued)).sum();
    let in_flight = app.sent.lock().expect("not poisoned").len() as u64;
    let openmetrics = clawfleet_proto::exposition::wants_openmetrics(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let gauges = crate::metrics::Now {
        agents: &agents,
        outbox_depth: depth,
        in_flight,
        queued,
        migrations_open: open as u64,
        newest_event: newest,
        per_agent: &per_agent,
    };
    let body = app.metrics.render(gauges, openmetrics);
    let kind = if openmetrics { clawfleet_proto::exposition::OPENMETRICS } else { clawfleet_proto::exposition::TEXT };
    Ok(([(header::CONTENT_TYPE, kind)], body).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_count_up() {
        assert_eq!(super::next_version("2"), "3");
        assert_eq!(super::next_version("v2"), "v2+1");
        assert_eq!(super::next_version(&u64::MAX.to_string()), format!("{}+1", u64::MAX));
    }
}

//! The queue over the API (codeswarm's `enqueue_inject` and `queue_list`): queue injections
//! for a fleet's idle agents (who may inject the fleet may; an agent's token only where its
//! policy lets its fleet inject, and always as coming from its own fleet), list what waits
//! (each item its fleet's readers see), see one, cancel one still waiting (as injecting). The
//! dispatcher is `crate::queue`.

use clawfleet_core::FleetName;
use clawfleet_proto::queue::{QueueAdd, QueueItem, QueueList};
use clawfleet_store::{Enqueue, NewQueueItem};

use super::*;

/// Queues a prompt for a fleet's first idle agent, for named agents, or for all of them.
pub(super) async fn add(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    JsonBody(req): JsonBody<QueueAdd>,
) -> Result<(StatusCode, Json<QueueList>), ApiError> {
    caller.may(&app, Action::Inject, Target::Fleet(&name))?;
    check_injection(&req.prompt, req.request_id.as_deref())?;
    // An agent's work comes from its own fleet, whatever it says.
    let source = match (caller.0.role, &caller.0.fleet, req.source) {
        (Role::Agent, Some(own), _) => Some(own.to_string()),
        (_, _, Some(s)) => Some(s.parse::<FleetName>().map_err(|e| ApiError::bad_request(format!("source: {e}")))?.to_string()),
        (_, _, None) => None,
    };
    let row = load_active(&app, &name).await?;
    let wants = clawfleet_core::queue::items(req.agents.as_deref(), req.all, row.replicas, &name).map_err(ApiError::bad_request)?;
    let ids: Vec<String> = wants.iter().map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let actor = caller.0.audit_name();
    let (prompt, rid, n) = (req.prompt, req.request_id, name.clone());
    let since = clock::rfc3339_ago(clawfleet_core::queue::JOIN_WINDOW_SECONDS);
    let (queued, _) = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let items: Vec<NewQueueItem<'_>> = ids.iter().zip(&wants).map(|(id, w)| NewQueueItem { id, agent: w.agent() }).collect();
            let e = Enqueue {
                fleet: &n,
                prompt: &prompt,
                source: source.as_deref(),
                request_id: rid.as_deref(),
                at: &at,
                by: &actor,
                delegated: None,
                join_since: source.is_some().then_some(since.as_str()),
            };
            let detail = format!("queue={} items={}", ids.first().map_or("", String::as_str), ids.len());
            s.enqueue(&e, &items, &audit(&at, &actor, "queue", &n, detail))
        })
        .await?;
    app.projects_due.notify_one();
    // All of it was queued already: nothing was created.
    let status = if queued.joined == queued.items.len() { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(QueueList { items: queued.items, joined: queued.joined })))
}

/// What waits (or, with `all`, the newest items of every status), oldest first, of the
/// fleets the caller may read.
pub(super) async fn list(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<ListQuery>,
) -> Result<Json<QueueList>, ApiError> {
    if let Some(f) = &q.fleet {
        caller.may(&app, Action::Read, Target::Fleet(f))?;
    }
    let items = app.db.run(move |s| s.queue(q.fleet.as_deref(), q.all)).await?;
    let items = items.into_iter().filter(|i| caller.may(&app, Action::Read, Target::Fleet(&i.fleet)).is_ok()).collect();
    Ok(Json(QueueList { items, joined: 0 }))
}

async fn readable(app: &App, caller: &Caller, id: String, action: Action) -> Result<QueueItem, ApiError> {
    let item = app.db.run(move |s| s.queue_item(&id)).await?;
    caller.may(app, action, Target::Fleet(&item.fleet))?;
    Ok(item)
}

/// One item, whatever its status.
pub(super) async fn get_one(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> Result<Json<QueueItem>, ApiError> {
    Ok(Json(readable(&app, &caller, id, Action::Read).await?))
}

/// Cancels an item still waiting.
pub(super) async fn cancel(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> Result<Json<QueueItem>, ApiError> {
    let item = readable(&app, &caller, id, Action::Inject).await?;
    let actor = caller.0.audit_name();
    let (item, _) = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let audit = audit(&at, &actor, "queue-cancel", &item.fleet, format!("queue={}", item.queue_id));
            let (item, event) = s.cancel_queued(&item.queue_id, &at, &audit)?;
            Ok((item, vec![event]))
        })
        .await?;
    Ok(Json(item))
}

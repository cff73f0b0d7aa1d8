//! A fleet's councils over the API: open one (who may inject the fleet may; its agents are
//! asked through their brains), list them, see one, close one. The loop that offers roles and
//! fails councils at their deadline is `crate::council`.

use clawfleet_proto::council::{CouncilList, CouncilOpen, CouncilView};

use super::*;

/// Opens a council on a fleet and offers its roles to the fleet's healthy agents.
pub(super) async fn open(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
    JsonBody(req): JsonBody<CouncilOpen>,
) -> Result<(StatusCode, Json<CouncilView>), ApiError> {
    caller.may(&app, Action::Inject, Target::Fleet(&name))?;
    load_active(&app, &name).await?;
    let spec = clawfleet_core::council::validate(req).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let actor = caller.0.audit_name();
    let n = name.clone();
    let (view, _) = app
        .hub
        .write(move |s| {
            let now = std::time::SystemTime::now();
            let at = humantime::format_rfc3339_millis(now).to_string();
            let deadline = humantime::format_rfc3339_millis(now + Duration::from_secs(spec.timeout_seconds.into())).to_string();
            let detail = format!("roles={} core={} timeout={}s", spec.roles.join(","), spec.core.join(","), spec.timeout_seconds);
            let (view, event) = s.open_council(&n, &spec, &at, &deadline, &audit(&at, &actor, "council-open", &n, detail))?;
            Ok((view, vec![event]))
        })
        .await?;
    app.councils_due.notify_one();
    Ok((StatusCode::CREATED, Json(view)))
}

/// A fleet's councils, newest first.
pub(super) async fn list(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(name): P<String>,
) -> Result<Json<CouncilList>, ApiError> {
    caller.may(&app, Action::Read, Target::Fleet(&name))?;
    load(&app, &name).await?;
    let councils = app.db.run(move |s| s.councils(&name)).await?;
    Ok(Json(CouncilList { councils }))
}

/// One council of a fleet.
pub(super) async fn get_one(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P((name, id)): P<(String, u64)>,
) -> Result<Json<CouncilView>, ApiError> {
    caller.may(&app, Action::Read, Target::Fleet(&name))?;
    load(&app, &name).await?;
    Ok(Json(app.db.run(move |s| s.council(&name, id)).await?))
}

/// Closes a council that is not over.
pub(super) async fn close(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P((name, id)): P<(String, u64)>,
) -> Result<Json<CouncilView>, ApiError> {
    caller.may(&app, Action::Inject, Target::Fleet(&name))?;
    load(&app, &name).await?;
    let actor = caller.0.audit_name();
    let n = name.clone();
    app.hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let event = s.close_council(&n, id, &at, &audit(&at, &actor, "council-close", &n, format!("council={id}")))?;
            Ok(((), vec![event]))
        })
        .await?;
    Ok(Json(app.db.run(move |s| s.council(&name, id)).await?))
}

//! Snapshots over the API (`clawfleet snapshot FLEET/SLOT`): the agent's state as the archive of
//! `clawfleet_snapshot`, taken from its workspace where the control plane reaches it (local,
//! slurm and docker agents, as projects reach them), while it runs. Who may update the agent's
//! fleet takes one (an agent never of its own fleet); a workspace that holds the value of any
//! stored secret is refused, naming the secret, never its value.

use clawfleet_proto::snapshot::Origin;

use super::*;

/// An agent of an active fleet, and its workspace where this control plane reaches it.
pub(crate) async fn reachable(app: &App, name: &str, slot: u32) -> Result<(FleetRow, std::path::PathBuf), ApiError> {
    let row = load_active(app, name).await?;
    spec::resolve_targets(name, row.replicas, Some(&[slot]))?;
    let backend = app.backend(&row.backend).map_err(ApiError::bad_request)?;
    let d = app.deployment(&row).map_err(ApiError::bad_request)?;
    match backend.workspace(&d, slot) {
        Some(workspace) => Ok((row, workspace)),
        None => Err(ApiError::conflict(format!(
            "agent {name}/{slot} runs on the {} backend, whose workspaces this control plane cannot reach: snapshots are of local \
             agents, slurm agents whose Slurm commands run here, and docker agents of a single-node Swarm whose engine is here",
            row.backend
        ))),
    }
}

/// `GET /api/v1/fleets/{name}/agents/{slot}/snapshot`: the archive (`application/gzip`).
pub(super) async fn take(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P((name, slot)): P<(String, u32)>,
) -> Result<Response, ApiError> {
    caller.may(&app, Action::Update, Target::Agent(&name, slot))?;
    let (row, workspace) = reachable(&app, &name, slot).await?;
    let (manifest, bytes) = take_snapshot(&app, &row, slot, workspace).await?;
    let actor = caller.0.audit_name();
    let detail = format!("agent {slot}: {} files, {} turns, {} bytes", manifest.files.len(), manifest.turns, bytes.len());
    let n = name.clone();
    app.db.run(move |s| s.audit(&audit(&clock::now_rfc3339(), &actor, "snapshot", &n, detail))).await?;
    let file = format!("attachment; filename=\"{name}-{slot}.cfsnap\"");
    let mut resp = (StatusCode::OK, bytes).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    if let Ok(v) = HeaderValue::from_str(&file) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// The archive of agent `slot` of `row`, read from its `workspace` while it runs; refused when
/// the workspace holds the value of a stored secret.
pub(crate) async fn take_snapshot(
    app: &App,
    row: &FleetRow,
    slot: u32,
    workspace: std::path::PathBuf,
) -> Result<(clawfleet_proto::snapshot::Manifest, Vec<u8>), ApiError> {
    let name = row.name.clone();
    let secrets: Vec<(String, String)> = app.secrets.read().expect("not poisoned").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let origin = Origin {
        clawfleet_version: env!("CARGO_PKG_VERSION").into(),
        created_at: clock::now_rfc3339(),
        source: app.identity(),
        fleet: name.clone(),
        slot,
        brain: row.brain.clone(),
        system_prompt: row.prompt.clone(),
        fleet_version: row.version.clone(),
    };
    let (agent, ws) = (format!("{name}/{slot}"), workspace.clone());
    tokio::task::spawn_blocking(move || {
        let files = clawfleet_snapshot::files_of(&ws).map_err(|e| ApiError::conflict(e.to_string()))?;
        if let Some((secret, path)) = clawfleet_snapshot::holds_secret(&files, secrets.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            return Err(ApiError::conflict(format!(
                "the workspace of agent {agent} holds the value of the secret '{secret}' (in {path}): a snapshot never carries a secret"
            )));
        }
        let mut out = Vec::new();
        let manifest = clawfleet_snapshot::write(&ws, origin, &mut out).map_err(|e| ApiError::conflict(e.to_string()))?;
        Ok((manifest, out))
    })
    .await
    .map_err(|e| ApiError::internal("taking a snapshot", e))?
}

/// The largest archive a restore takes (compressed).
pub(crate) const MAX_ARCHIVE_BYTES: usize = 128 * 1024 * 1024;

/// `POST /api/v1/fleets/{name}/agents/{slot}/restore` (the archive as the body): the agent takes
/// the snapshot's state: its files written into its workspace (the conversation replaced; its
/// own journal, inbox and identity kept, so its events go on where they were), then read again
/// (`config-reload`). Only into an idle agent, so no turn of its own mixes with the restored
/// conversation. Who may update the agent's fleet restores into it.
pub(super) async fn restore(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P((name, slot)): P<(String, u32)>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<clawfleet_proto::api::RestoreResponse>, ApiError> {
    caller.may(&app, Action::Update, Target::Agent(&name, slot))?;
    let body = body.map_err(|e| ApiError::new(e.status(), "bad_body", format!("the archive: {}", e.body_text())))?;
    let snapshot = clawfleet_snapshot::read(body.as_ref()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (row, workspace) = reachable(&app, &name, slot).await?;
    Ok(Json(restore_into(&app, &row, slot, workspace, snapshot, caller.0.audit_name()).await?))
}

/// Restores `snapshot` into agent `slot` of `row`, whose workspace is `workspace`, if it is
/// idle, and has the agent read it (`config-reload`); audited as `actor`'s.
pub(crate) async fn restore_into(
    app: &Arc<App>,
    row: &FleetRow,
    slot: u32,
    workspace: std::path::PathBuf,
    snapshot: clawfleet_snapshot::Snapshot,
    actor: String,
) -> Result<clawfleet_proto::api::RestoreResponse, ApiError> {
    let name = row.name.clone();
    let state = app.live.state(&name, slot, clock::mono_ms());
    if state != clawfleet_core::liveness::AgentState::Idle {
        return Err(ApiError::conflict(format!("agent {name}/{slot} is {}: a snapshot is restored into an idle agent", state.as_str())));
    }
    let m = snapshot.manifest.clone();
    tokio::task::spawn_blocking(move || clawfleet_snapshot::unpack(&snapshot, &workspace))
        .await
        .map_err(|e| ApiError::internal("restoring a snapshot", e))?
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    let o = &m.origin;
    let detail = format!("agent {slot}: from {}/{} of {}, {} turns, {} files", o.fleet, o.slot, o.source, m.turns, m.files.len());
    let (n, a) = (name.clone(), actor.clone());
    app.db.run(move |s| s.audit(&audit(&clock::now_rfc3339(), &a, "restore", &n, detail))).await?;
    let reload = super::send_command(app, row, vec![slot], CommandName::ConfigReload, actor, Duration::from_secs(30)).await?;
    let reply = reload.results.into_iter().next();
    let messages = reply.as_ref().and_then(|r| r.result["conversation_messages"].as_u64());
    Ok(clawfleet_proto::api::RestoreResponse {
        agent: format!("{name}/{slot}"),
        from: format!("{}/{}", m.origin.fleet, m.origin.slot),
        turns: m.turns,
        files: m.files.len(),
        reloaded: reply.as_ref().is_some_and(|r| r.ok),
        conversation_messages: messages,
        error: reply.and_then(|r| r.error),
    })
}

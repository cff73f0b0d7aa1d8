//! Execution approvals over the API (codeswarm's `approvals_list` and `approve_execution`):
//! list the approvals not yet taken by their agents (each its fleet's readers see), see one,
//! answer one while it is pending (who may approve the agent: an operator of its fleet, or an
//! agent of another fleet the policy lets approve it; never an agent of its own fleet). The
//! answer goes to the agent at once (`crate::approval`).

use clawfleet_proto::approval::{Approval, ApprovalAnswer, ApprovalList, MAX_DECISION_BYTES};
use clawfleet_store::{Answer, StoreError};

use super::*;

pub(super) async fn list(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Q(q): Q<ListQuery>,
) -> Result<Json<ApprovalList>, ApiError> {
    if let Some(f) = &q.fleet {
        caller.may(&app, Action::Read, Target::Fleet(f))?;
    }
    let mut list = app.db.run(move |s| s.approvals(q.fleet.as_deref(), q.all)).await?;
    list.approvals.retain(|a| caller.may(&app, Action::Read, Target::Agent(&a.fleet, a.agent)).is_ok());
    Ok(Json(list))
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| ApiError::bad_request(format!("approval id '{}' is not a number", id.chars().take(32).collect::<String>())))
}

pub(super) async fn get_one(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
) -> Result<Json<Approval>, ApiError> {
    let id = parse_id(&id)?;
    let a = app.db.run(move |s| s.approval(id)).await?;
    caller.may(&app, Action::Read, Target::Agent(&a.fleet, a.agent))?;
    Ok(Json(a))
}

pub(super) async fn answer(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    P(id): P<String>,
    JsonBody(req): JsonBody<ApprovalAnswer>,
) -> Result<Json<Approval>, ApiError> {
    let id = parse_id(&id)?;
    if let Some(d) = &req.decision
        && (d.is_empty() || d.len() > MAX_DECISION_BYTES)
    {
        return Err(ApiError::bad_request(format!("decision must be 1-{MAX_DECISION_BYTES} bytes")));
    }
    let a = app.db.run(move |s| s.approval(id)).await?;
    // Who may not see it learns nothing of it.
    caller.may(&app, Action::Read, Target::Agent(&a.fleet, a.agent)).map_err(|_| StoreError::NoApproval(id))?;
    caller.may(&app, Action::Approve, Target::Agent(&a.fleet, a.agent))?;
    let actor = caller.0.audit_name();
    let (answered, _) = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let answer = Answer { approved: req.approved, decision: req.decision.as_deref(), by: &actor, at: &at };
            let verb = if req.approved { "approve" } else { "deny" };
            let audit = audit(&at, &actor, verb, &a.fleet, format!("approval={id} agent={} call={}", a.agent, a.call_id));
            let (approval, event) = s.answer_approval(id, &answer, &audit)?;
            Ok((approval, vec![event]))
        })
        .await?;
    crate::approval::send(&app, &answered).await?;
    Ok(Json(answered))
}

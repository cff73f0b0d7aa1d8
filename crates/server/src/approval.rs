//! Execution approvals, a step of the work loop (`crate::project::run`): an approval pending
//! longer than the control plane's `--approval-timeout` is refused (a timeout is a no), and
//! every answer its agent has not taken yet is sent to it (at once, then again every
//! [`RESEND_SECONDS`] until the agent's `exec_approval_resolved` is stored, or its agent is
//! gone); each fleet keeps its newest [`RESOLVED_KEPT_PER_FLEET`] resolved approvals.

use std::sync::Arc;

use clawfleet_proto::approval::Approval;
use clawfleet_proto::bus::Directive;
use clawfleet_store::StoreError;

use crate::app::App;
use crate::clock;

/// How long an answer waits for its agent to take it before it is sent again.
const RESEND_SECONDS: u64 = 5;
/// The resolved approvals kept per fleet, newest first.
const RESOLVED_KEPT_PER_FLEET: usize = 1000;

pub(crate) async fn step(app: &Arc<App>) -> Result<(), StoreError> {
    let timeout = app.approval_timeout.as_secs();
    let (asked_before, at) = (clock::rfc3339_ago(timeout), clock::now_rfc3339());
    let by = format!("the control plane (no answer in {timeout} s)");
    let (expired, _) = app
        .hub
        .write(move |s| {
            let expired = s.expire_approvals(&asked_before, &at, &by)?;
            let events = expired.iter().map(|(_, e)| e.clone()).collect();
            Ok((expired, events))
        })
        .await?;
    for (a, _) in &expired {
        tracing::warn!(fleet = %a.fleet, agent = a.agent, approval = a.approval_id, "An approval waited too long: refused");
    }
    let sent_before = clock::rfc3339_ago(RESEND_SECONDS);
    for a in app.db.run(move |s| s.unsent_approvals(&sent_before)).await? {
        let f = a.fleet.clone();
        let row = app.db.run(move |s| s.fleet(&f)).await?;
        if row.is_none_or(|r| a.agent >= r.replicas) {
            // Its agent is gone: no one will take the answer.
            let id = a.approval_id;
            app.db.run(move |s| s.abandon_approval(id)).await?;
            continue;
        }
        send(app, &a).await?;
    }
    Ok(())
}

/// Sends an answered approval's answer to its agent.
pub(crate) async fn send(app: &App, a: &Approval) -> Result<(), StoreError> {
    let directive = Directive::Approval { call_id: a.call_id.clone(), approved: a.approved == Some(true), decision: a.decision.clone() };
    if app.outbound.to_agents(&a.fleet, &[a.agent], &directive).await {
        let (id, at) = (a.approval_id, clock::now_rfc3339());
        app.db.run(move |s| s.approval_sent(id, &at)).await?;
    }
    // With each answer, what answers resolved beyond each fleet's newest is forgotten.
    app.db.run(|s| s.prune_approvals(RESOLVED_KEPT_PER_FLEET)).await?;
    Ok(())
}

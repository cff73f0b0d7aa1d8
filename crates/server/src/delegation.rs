//! Delegation: an agent's answer may hand work to another fleet (codeswarm's inter-swarm
//! directives, read by `core::delegation`); each directive is checked (the agent policy, no
//! loop, depth and rate, `core::delegation::check`) and queued for its fleet, as coming from the
//! agent's, or refused with a `delegation_refused` event on the answering agent. A directive
//! makes its items once (keyed by the answer's injection), whatever reads the answer again;
//! a client that routes the same directive itself (codeswarm's web backend) joins those items
//! instead of queueing the work twice (`store::Enqueue::join_since`).
//!
//! A directive with `/reply` sends its answer back: when the agent that took the item
//! answers, its answer is queued for the delegating agent as the reference words it
//! (`[Reply from /swarm[F]/node[N] for request I]`), once, as coming from the answering fleet,
//! with the work's chain (so the reply's own directives cannot go back the way it came).

use clawfleet_core::authz::{self, Action, Principal, Target};
use clawfleet_core::delegation::{self as rules, Nodes, RATE_WINDOW_SECONDS};
use clawfleet_core::queue::JOIN_WINDOW_SECONDS;
use clawfleet_core::{AgentRef, FleetName};
use clawfleet_proto::api::FleetState;
use clawfleet_proto::event::{Event, EventBody};
use clawfleet_store::{Delegated, Enqueue, NewEvent, NewQueueItem, ReplyTo, StoreError, reply_origin};

use crate::app::App;
use crate::clock;

/// Reads an agent's answer for directives and acts on each.
pub(crate) async fn answered(app: &App, e: &Event) {
    let (EventBody::Assistant { content }, Some(slot), Some(injection)) = (&e.body, e.agent, &e.injection_id) else { return };
    if let Err(err) = reply(app, e, slot, injection, content).await {
        tracing::error!(fleet = %e.fleet, slot, error = %err, "Could not store a delegation's reply");
    }
    let (directives, unreadable) = rules::parse(content);
    for u in unreadable {
        refuse(app, e, slot, "?", &format!("unreadable directive '{}': {}", u.line, u.reason)).await;
    }
    for (n, d) in directives.into_iter().enumerate() {
        if let Err(err) = delegate(app, e, slot, injection, n, d).await {
            tracing::error!(fleet = %e.fleet, slot, error = %err, "Could not store a delegation");
        }
    }
}

async fn delegate(app: &App, e: &Event, slot: u32, injection: &str, n: usize, d: rules::Directive) -> Result<(), StoreError> {
    let target = d.fleet.clone().unwrap_or_else(|| e.fleet.clone());
    let Ok(agent) = format!("{}/{slot}", e.fleet).parse::<AgentRef>() else { return Ok(()) };
    if target.parse::<FleetName>().is_err() {
        refuse(app, e, slot, &target, "not a fleet name").await;
        return Ok(());
    }
    let policy =
        authz::authorize(&Principal::agent(&agent), Action::Inject, Target::Fleet(&target), &app.policy).map_err(|d| d.to_string());
    let iid = injection.to_owned();
    let mut chain = app.db.run(move |s| s.chain_of(&iid)).await?;
    // The work this answer is part of came through `chain`; it now leaves from this fleet.
    if chain.last() != Some(&e.fleet) {
        chain.push(e.fleet.clone());
    }
    let since = clock::rfc3339_ago(RATE_WINDOW_SECONDS);
    let source = e.fleet.clone();
    let recent = app.db.run(move |s| s.delegations_since(&source, &since)).await?;
    if let Err(why) = rules::check(&chain, &target, policy, recent) {
        refuse(app, e, slot, &target, &why.to_string()).await;
        return Ok(());
    }
    let t = target.clone();
    let Some(row) = app.db.run(move |s| s.fleet(&t)).await?.filter(|r| r.state == FleetState::Active) else {
        refuse(app, e, slot, &target, &format!("no fleet named '{target}'")).await;
        return Ok(());
    };
    let (agents, all) = match &d.nodes {
        Nodes::Idle => (None, false),
        Nodes::All => (None, true),
        Nodes::List(list) => (Some(list.as_slice()), false),
    };
    let wants = match clawfleet_core::queue::items(agents, all, row.replicas, &target) {
        Ok(w) => w,
        Err(why) => {
            refuse(app, e, slot, &target, &why).await;
            return Ok(());
        }
    };
    let prompt = d.prompt.chars().take(clawfleet_proto::MAX_PROMPT_BYTES / 4).collect::<String>();
    let ids: Vec<String> = wants.iter().map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let (source, origin, by) = (e.fleet.clone(), format!("{injection}#{n}"), format!("agent {agent} (delegation)"));
    let (reply_to, for_injection) = (agent.to_string(), injection.to_owned());
    let join_since = clock::rfc3339_ago(JOIN_WINDOW_SECONDS);
    let queued = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let items: Vec<NewQueueItem<'_>> = ids.iter().zip(&wants).map(|(id, w)| NewQueueItem { id, agent: w.agent() }).collect();
            let reply = d.reply.then_some(ReplyTo { agent: &reply_to, injection: &for_injection });
            let e = Enqueue {
                fleet: &target,
                prompt: &prompt,
                source: Some(&source),
                request_id: None,
                at: &at,
                by: &by,
                delegated: Some(Delegated { chain: &chain, origin: &origin, reply }),
                join_since: Some(&join_since),
            };
            let audit =
                clawfleet_store::Audit { at: &at, actor: &by, action: "delegate", target: &target, detail: format!("from={origin}") };
            s.enqueue(&e, &items, &audit)
        })
        .await;
    match queued {
        Ok(_) => app.projects_due.notify_one(),
        Err(why @ (StoreError::QueueFull(..) | StoreError::NoFleet(_))) => refuse(app, e, slot, &row.name, &why.to_string()).await,
        Err(other) => return Err(other),
    }
    Ok(())
}

/// Sends an answer back to the agent that delegated its work, if its directive said `/reply`.
async fn reply(app: &App, e: &Event, slot: u32, injection: &str, content: &str) -> Result<(), StoreError> {
    let answer = content.trim();
    if answer.is_empty() {
        return Ok(());
    }
    let iid = injection.to_owned();
    let Some(route) = app.db.run(move |s| s.reply_route(&iid)).await? else { return Ok(()) };
    let Ok(to) = route.agent.parse::<AgentRef>() else { return Ok(()) };
    let head = format!("[Reply from /swarm[{}]/node[{slot}] for request {}]\n", e.fleet, route.injection);
    let room = clawfleet_proto::MAX_PROMPT_BYTES.saturating_sub(head.len());
    let mut prompt = head;
    prompt.extend(answer.chars().scan(0, |used, c| {
        *used += c.len_utf8();
        (*used <= room).then_some(c)
    }));
    let mut chain = route.chain;
    if chain.last() != Some(&e.fleet) {
        chain.push(e.fleet.clone());
    }
    let (fleet, source, origin) = (to.fleet.to_string(), e.fleet.clone(), reply_origin(injection));
    let by = format!("agent {}/{slot} (reply)", e.fleet);
    let id = uuid::Uuid::now_v7().to_string();
    let queued = app
        .hub
        .write(move |s| {
            let at = clock::now_rfc3339();
            let e = Enqueue {
                fleet: &fleet,
                prompt: &prompt,
                source: Some(&source),
                request_id: None,
                at: &at,
                by: &by,
                delegated: Some(Delegated { chain: &chain, origin: &origin, reply: None }),
                join_since: None,
            };
            let audit =
                clawfleet_store::Audit { at: &at, actor: &by, action: "delegate-reply", target: &fleet, detail: format!("to={to}") };
            s.enqueue(&e, &[NewQueueItem { id: &id, agent: Some(to.slot) }], &audit)
        })
        .await;
    match queued {
        Ok(_) => app.projects_due.notify_one(),
        Err(why @ (StoreError::QueueFull(..) | StoreError::NoFleet(_))) => {
            refuse(app, e, slot, &route.agent, &format!("could not send the reply back: {why}")).await
        }
        Err(other) => return Err(other),
    }
    Ok(())
}

async fn refuse(app: &App, e: &Event, slot: u32, target: &str, reason: &str) {
    tracing::warn!(fleet = %e.fleet, slot, target, reason, "Refused a delegation");
    let ev = NewEvent {
        at: clock::now_rfc3339(),
        fleet: e.fleet.clone(),
        agent: Some(slot),
        injection_id: e.injection_id.clone(),
        body: EventBody::DelegationRefused { target: target.chars().take(64).collect(), reason: reason.chars().take(300).collect() },
    };
    if let Err(err) = app.hub.write(move |s| Ok(((), s.append(vec![ev])?))).await {
        tracing::error!(error = %err, "Could not store a refused delegation");
    }
}

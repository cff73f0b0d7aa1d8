//! The outbox: every directive an agent has not acknowledged yet is stored, and sent again
//! (with backoff) whenever its agent is reachable, until the agent's journaled answer arrives
//! and the store removes it. The broker's own queue is only the fast path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clawfleet_proto::bus::Directive;
use clawfleet_store::{OutboxRow, Pending};
use tokio::sync::watch;

use crate::app::App;
use crate::clock;

const TICK: Duration = Duration::from_millis(500);

/// How long to wait for an acknowledgement before sending again.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(2).saturating_mul(1 << attempts.min(5)).min(Duration::from_secs(60))
}

/// The directive that delivers a pending row; `targets` when sent on a fleet topic,
/// `expires_at` when its fleet has an inject timeout.
pub(crate) fn directive(pending: &Pending, targets: Option<Vec<u32>>, expires_at: Option<String>) -> Directive {
    match pending.clone() {
        Pending::Inject { injection_id, prompt } => Directive::Inject { injection_id, prompt, targets, expires_at },
        Pending::Command { command_id, command } => Directive::Command { command_id, command, targets },
    }
}

/// When an injection accepted at `accepted` expires, for a fleet whose inject timeout is `timeout`.
pub(crate) fn expires_at(accepted: SystemTime, timeout: Option<Duration>) -> Option<String> {
    timeout.map(|t| humantime::format_rfc3339_millis(accepted + t).to_string())
}

/// Sends a new directive to its targets right away (one fleet broadcast when it goes to every
/// agent, else one message per agent) and notes the rows as sent. An injection for an agent
/// that moves between racks is not sent: its row waits (see [`crate::migrate::Holds`]).
pub(crate) async fn send_now(
    app: &App,
    fleet: &str,
    replicas: u32,
    targets: &[u32],
    pending: &Pending,
    rows: &[i64],
    expires: Option<String>,
) {
    // An injection for an agent that moves between racks waits in the outbox (commands do not).
    let held: Vec<u32> = match pending {
        Pending::Inject { .. } => targets.iter().copied().filter(|&t| app.holds.holds(fleet, t, None)).collect(),
        Pending::Command { .. } => Vec::new(),
    };
    // A held row is not marked sent: once its hold ends, the outbox sends it at once. (Rows
    // are made one a target, in the targets' order.)
    let rows: Vec<i64> = match held.is_empty() || rows.len() != targets.len() {
        true => rows.to_vec(),
        false => rows.iter().zip(targets).filter(|(_, t)| !held.contains(t)).map(|(r, _)| *r).collect(),
    };
    let kept: Vec<u32>;
    let targets = if held.is_empty() {
        targets
    } else {
        kept = targets.iter().copied().filter(|t| !held.contains(t)).collect();
        &kept
    };
    let whole_fleet = targets.len() as u32 == replicas && targets.len() > 1;
    let d = directive(pending, None, expires);
    if whole_fleet {
        app.outbound.to_fleet(fleet, targets, true, &d).await;
    } else {
        app.outbound.to_agents(fleet, targets, &d).await;
    }
    app.metrics.directives_sent.inc_by(if whole_fleet { 1 } else { targets.len() as u64 });
    if let Pending::Inject { injection_id, .. } = pending {
        app.metrics.sent(injection_id);
    }
    let now = Instant::now();
    let mut sent = app.sent.lock().expect("not poisoned");
    for id in rows {
        sent.insert(id, now);
    }
}

pub(crate) async fn run(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = resend(&app).await {
            tracing::error!(error = %e, "Outbox pass failed");
        }
        app.metrics.sweep();
    }
}

/// Injections waiting longer than their fleet's inject timeout fail with `"timeout"`; returns
/// the rows still waiting, and the fleets' timeouts.
async fn expire(app: &App, rows: Vec<OutboxRow>) -> Result<(Vec<OutboxRow>, HashMap<String, Duration>), clawfleet_store::StoreError> {
    if rows.is_empty() {
        return Ok((rows, HashMap::new()));
    }
    let fleets = app.db.run(|s| s.fleets()).await?;
    let timeouts: HashMap<String, Duration> = fleets.iter().filter_map(|f| Some((f.name.clone(), app.inject_timeout(f)?))).collect();
    if timeouts.is_empty() {
        return Ok((rows, timeouts));
    }
    let now = SystemTime::now();
    let (expired, waiting): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| {
        matches!(r.directive, Pending::Inject { .. })
            && timeouts.get(&r.fleet).is_some_and(|limit| {
                humantime::parse_rfc3339_weak(&r.created_at).is_ok_and(|at| now.duration_since(at).is_ok_and(|age| age > *limit))
            })
    });
    if !expired.is_empty() {
        let ids: Vec<i64> = expired.iter().map(|r| r.id).collect();
        tracing::warn!(count = ids.len(), "Injections not taken by their agents in time");
        app.metrics.injection(crate::metrics::InjectOutcome::Timeout, ids.len() as u64);
        app.hub.write(move |s| Ok(((), s.expire_outbox(&ids, &clock::now_rfc3339(), "timeout")?))).await?;
    }
    Ok((waiting, timeouts))
}

async fn resend(app: &App) -> Result<(), clawfleet_store::StoreError> {
    let rows = app.db.run(|s| s.outbox()).await?;
    let (rows, timeouts) = expire(app, rows).await?;
    let now = clock::mono_ms();
    let due: Vec<_> = {
        let mut sent = app.sent.lock().expect("not poisoned");
        let live: std::collections::HashSet<i64> = rows.iter().map(|r| r.id).collect();
        sent.retain(|id, _| live.contains(id));
        rows.into_iter()
            .filter(|r| app.live.reachable(&r.fleet, r.slot, now))
            .filter(|r| matches!(r.directive, Pending::Command { .. }) || !app.holds.holds(&r.fleet, r.slot, Some(r.id)))
            .filter(|r| sent.get(&r.id).is_none_or(|at| at.elapsed() >= backoff(r.attempts)))
            .collect()
    };
    if due.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(due.len());
    for row in due {
        let accepted = humantime::parse_rfc3339_weak(&row.created_at).unwrap_or_else(|_| SystemTime::now());
        let d = directive(&row.directive, None, expires_at(accepted, timeouts.get(&row.fleet).copied()));
        if app.outbound.to_agents(&row.fleet, &[row.slot], &d).await {
            app.metrics.directives_sent.inc();
            if let Pending::Inject { injection_id, .. } = &row.directive {
                app.metrics.sent(injection_id);
            }
            app.sent.lock().expect("not poisoned").insert(row.id, Instant::now());
            ids.push(row.id);
        }
    }
    tracing::debug!(count = ids.len(), "Resent unacknowledged directives");
    app.db.run(move |s| s.outbox_attempted(&ids)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(2));
        assert_eq!(backoff(1), Duration::from_secs(4));
        assert_eq!(backoff(4), Duration::from_secs(32));
        assert_eq!(backoff(9), Duration::from_secs(60));
    }
}

//! The retention loop (`up --retain-events 7d`, `--retain-events-rows N`): on a tick of its
//! own it notes how far the events table reached (so age is the control plane's clock, not
//! agents'), finds the cutoff, and drops what is below it in batches of [`BATCH`], each a short
//! transaction of its own with a pause after it, so ingest and the API write between them. An
//! event of an injection that waits for an agent, or whose turn has not ended, is never
//! dropped (`Store::drop_events`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::app::App;
use crate::clock;

/// Events looked at in one transaction.
const BATCH: usize = 2_000;
/// The pause after each batch.
const BREATHE: Duration = Duration::from_millis(5);

/// What the events table keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Events older than this may go.
    pub max_age: Option<Duration>,
    /// All but the newest this many may go.
    pub max_rows: Option<u64>,
}

impl Retention {
    /// How often a pass runs: a twentieth of the age kept, between a second and a minute (five
    /// seconds when only rows are capped).
    fn every(&self) -> Duration {
        self.max_age.map_or(Duration::from_secs(5), |age| (age / 20).clamp(Duration::from_secs(1), Duration::from_secs(60)))
    }
}

pub(crate) async fn run(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let policy = app.retention;
    if policy.max_age.is_none() && policy.max_rows.is_none() {
        return;
    }
    loop {
        if let Err(e) = pass(&app, policy, &mut shutdown).await {
            tracing::error!(error = %e, "Retention pass failed; trying again");
        }
        tokio::select! {
            () = tokio::time::sleep(policy.every()) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn pass(app: &App, policy: Retention, shutdown: &mut watch::Receiver<bool>) -> Result<(), clawfleet_store::StoreError> {
    let started = Instant::now();
    let now = clock::unix_ms();
    let horizon = policy.max_age.map(|age| now - age.as_millis() as i64);
    let rows = policy.max_rows;
    let cutoff = app
        .db
        .run(move |s| {
            s.mark_events(now, horizon.unwrap_or(now))?;
            s.retention_cutoff(horizon, rows)
        })
        .await?;
    let Some(cutoff) = cutoff else { return Ok(()) };
    app.metrics.retention_cutoff.set(cutoff);
    let (mut after, mut dropped) = (0, 0);
    loop {
        let (n, last) = app.db.run(move |s| s.drop_events(after, cutoff, BATCH)).await?;
        app.metrics.events_dropped.inc_by(n as u64);
        dropped += n;
        let Some(last) = last else { break };
        after = last;
        if *shutdown.borrow() {
            break;
        }
        tokio::time::sleep(BREATHE).await;
    }
    app.metrics.retention_pass.observe(started.elapsed().as_secs_f64());
    if dropped > 0 {
        tracing::info!(dropped, cutoff, ms = started.elapsed().as_millis() as u64, "Dropped events past their retention");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_runs_a_twentieth_of_the_age_kept() {
        let r = |age: Option<u64>| Retention { max_age: age.map(Duration::from_secs), max_rows: None }.every();
        assert_eq!(r(Some(7 * 24 * 3600)), Duration::from_secs(60));
        assert_eq!(r(Some(100)), Duration::from_secs(5));
        assert_eq!(r(Some(2)), Duration::from_secs(1));
        assert_eq!(r(None), Duration::from_secs(5));
    }
}

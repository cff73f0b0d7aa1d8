//! Migration between two racks on this machine (issue #15): `clawfleet migrate F/S --to
//! rack-b`, end to end, from the request until the source's side is `done` (the peer's copy
//! restored, heartbeating and committed, the source's stopped), 20 trials; beside it, the
//! same state moved by hand with the two racks' own snapshot and restore calls (snapshot on
//! rack-a, a new slot on rack-b, restore into it once it runs), which has none of the
//! handoff's guarantees (both copies answer until the old one is scaled away).

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clawfleet_proto::api::{FleetStatus, NewToken, ScaleRequest, TokenRequest};
use clawfleet_proto::rack::{MigrateRequest, Migration, MigrationState};

use crate::{Args, Plane, Row, percentile};

const TRIALS: u32 = 20;
/// Turns of each agent's conversation before it moves.
const TURNS: usize = 20;

pub(crate) async fn run(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let trials = if a.quick { 5 } else { TRIALS };
    let b = Plane::start_args(&a.bin, 500, &["--rack", "rack-b"]).await?;
    let req = TokenRequest { name: Some("rack-a".into()), role: clawfleet_proto::api::Role::Peer, fleet: None, expires: None };
    let token: NewToken = b.client.post("/api/v1/tokens", &req).await?;
    let scratch = tempfile::tempdir()?;
    let file = scratch.path().join("rack-b.token");
    std::fs::write(&file, &token.token)?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    let peer = format!("rack-b={}", b.url);
    let peer_token = format!("rack-b={}", file.display());
    let a_plane = Plane::start_args(&a.bin, 500, &["--rack", "rack-a", "--peer", &peer, "--peer-token", &peer_token]).await?;
    b.launch("mig", 1, "local").await?;
    // Every trial moves one agent; one more stays, so none is the last.
    a_plane.launch("mig", trials + 1, "local").await?;
    b.wait_ready("mig", 1, Duration::from_secs(60)).await?;
    a_plane.wait_ready("mig", trials + 1, Duration::from_secs(120)).await?;
    for i in 0..TURNS {
        a_plane.inject("mig", &format!("turn {i}: what did the fleet do in the last hour?"), None).await?;
    }
    wait_answered(&a_plane, "mig", TURNS * (trials as usize + 1)).await?;

    let mut took = Vec::new();
    for slot in 0..trials {
        let start = Instant::now();
        let req = MigrateRequest { to: "rack-b".into(), fleet: None, allow_last: false };
        let mut m: Migration = a_plane.client.post(&format!("/api/v1/fleets/mig/agents/{slot}/migrate"), &req).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !m.state.is_final() {
            if Instant::now() > deadline {
                bail!("migration {} of mig/{slot} is still {} after 120 s", m.id, m.state);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            m = a_plane.client.get(&format!("/api/v1/migrations/{}", m.id)).await?;
        }
        if m.state != MigrationState::Done {
            bail!("migration of mig/{slot} was aborted: {}", m.error.unwrap_or_default());
        }
        took.push(start.elapsed().as_secs_f64() * 1000.0);
    }

    // By hand: the snapshot, a new slot there, the restore once it runs.
    let mut manual = Vec::new();
    let by_hand = if a.quick { 3 } else { 5 };
    for n in 0..by_hand {
        let start = Instant::now();
        let archive = a_plane.client.get_bytes(&format!("/api/v1/fleets/mig/agents/{trials}/snapshot")).await?;
        let status: FleetStatus = b.client.get("/api/v1/fleets/mig").await?;
        let slot = status.fleet.replicas;
        let _: serde_json::Value = b.client.post("/api/v1/fleets/mig/scale", &ScaleRequest { replicas: slot + 1 }).await?;
        b.wait_ready("mig", slot + 1, Duration::from_secs(60)).await?;
        let path = format!("/api/v1/fleets/mig/agents/{slot}/restore");
        let done: clawfleet_proto::api::RestoreResponse =
            b.client.post_bytes(&path, "application/gzip", archive).await.with_context(|| format!("restore {n}"))?;
        anyhow::ensure!(done.reloaded, "the restored agent did not read it again");
        manual.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p99) = (percentile(&mut took, 0.5), percentile(&mut took, 0.99));
    let hand = percentile(&mut manual, 0.5);
    rows.push(Row {
        name: "migrate an agent between two racks on this machine",
        result: format!("p50 {:.2} s, p99 {:.2} s", p50 / 1000.0, p99 / 1000.0),
        goal: "seconds, with exactly one copy answering throughout",
        notes: format!(
            "{trials} trials of `migrate mig/N --to rack-b` between two control planes on loopback, each agent a local echo agent with \
             a {TURNS}-turn conversation, heartbeats every 500 ms: from the request until the source's side is done (the peer's new \
             agent started, restored and committed, the source's stopped); the peer's new agent starting is most of it. By hand with \
             the racks' own snapshot, scale and restore calls (no holds, no commit: both copies answer until the old one is removed): \
             p50 {:.2} s over {by_hand} runs; ratio handoff/by hand {:.2}",
            hand / 1000.0,
            p50 / hand
        ),
    });
    a_plane.stop().await;
    b.stop().await;
    Ok(())
}

/// Until the fleet's agents have completed `turns` turns in all.
async fn wait_answered(plane: &Plane, fleet: &str, turns: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = plane.events(fleet).await?.iter().filter(|e| e.body.name() == "turn_complete").count();
        if done >= turns {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("fleet {fleet}: {done} of {turns} turns completed after 180 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

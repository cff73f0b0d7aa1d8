//! Snapshots (issue #15): an agent with a 1,000-turn conversation, snapshotted through the API
//! (`GET .../agents/0/snapshot`, the archive clawfleet's CLI saves), against the hatchery way on
//! the same workspace: a copy of the agent's state directory (as `docker cp` makes one) and
//! `tar -czf` of the copy. Times are p50 over 7 runs; sizes are the archives'. Then that
//! snapshot restored into every agent of a 100-agent fleet at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{Args, Plane, Row, percentile};

const TURNS: usize = 1000;
const RUNS: usize = 7;

fn workspace(data: &Path, fleet: &str) -> anyhow::Result<PathBuf> {
    let agents = data.join("agents");
    for entry in std::fs::read_dir(&agents)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&format!("{fleet}-")) {
            return Ok(entry.path().join("0"));
        }
    }
    bail!("no workspace of {fleet} under {}", agents.display())
}

fn lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|c| **c == b'\n').count())
}

fn du(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if meta.is_dir() { std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| du(&e.path())).sum() } else { meta.len() }
}

pub(crate) async fn run(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let plane = Plane::start(&a.bin, 1000, None).await?;
    plane.launch("snap", 1, "local").await?;
    plane.wait_ready("snap", 1, Duration::from_secs(60)).await?;
    let turns = if a.quick { 200 } else { TURNS };
    for i in 0..turns {
        let prompt =
            format!("turn {i}: summarise what the fleet did in the last hour, which agents were lost and why, and what comes next.");
        plane.inject("snap", &prompt, None).await?;
    }
    let ws = workspace(&plane.data, "snap")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while lines(&ws.join("conversation.jsonl")) < 2 * turns {
        if Instant::now() > deadline {
            bail!("the agent did not answer {turns} turns in 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut ours, mut size, mut archive) = (Vec::new(), 0, Vec::new());
    for _ in 0..RUNS {
        let start = Instant::now();
        let bytes = plane.client.get_bytes("/api/v1/fleets/snap/agents/0/snapshot").await?;
        ours.push(start.elapsed().as_secs_f64() * 1000.0);
        size = bytes.len();
        archive = bytes;
    }
    let scratch = tempfile::tempdir()?;
    let (mut theirs, mut their_size) = (Vec::new(), 0);
    for n in 0..RUNS {
        let copy = scratch.path().join(format!("state-{n}"));
        let out = scratch.path().join(format!("state-{n}.tar.gz"));
        let start = Instant::now();
        let cp = Command::new("cp").arg("-a").arg(&ws).arg(&copy).status().context("cp")?;
        let tar = Command::new("tar").arg("-czf").arg(&out).arg("-C").arg(&copy).arg(".").status().context("tar")?;
        theirs.push(start.elapsed().as_secs_f64() * 1000.0);
        if !cp.success() || !tar.success() {
            bail!("the hatchery way failed (cp {cp}, tar {tar})");
        }
        their_size = std::fs::metadata(&out)?.len() as usize;
    }
    let (o50, t50) = (percentile(&mut ours, 0.5), percentile(&mut theirs, 0.5));
    rows.push(Row {
        name: "snapshot of an agent with a 1,000-turn conversation",
        result: format!("p50 {o50:.1} ms, {:.0} KiB", size as f64 / 1024.0),
        goal: "no slower than the hatchery way, and smaller",
        notes: format!(
            "{turns} turns of a local echo agent, through the API (the workspace read, scanned for secrets, tarred and gzip'd); the hatchery way on the same \
             workspace (cp -a of the state directory, as docker cp makes one, then tar -czf): p50 {t50:.1} ms, {:.0} KiB; time ratio \
             clawfleet/hatchery {:.2}, size ratio {:.2} (the snapshot leaves out the event journal and inbox: the workspace is {:.0} KiB); \
             {RUNS} runs each",
            their_size as f64 / 1024.0,
            o50 / t50,
            size as f64 / their_size as f64,
            du(&ws) as f64 / 1024.0
        ),
    });
    restore_many(a, &plane, &archive, rows).await?;
    plane.stop().await;
    Ok(())
}

/// The snapshot restored into each agent of a 100-agent fleet at once: until every one has
/// taken it and read its workspace again.
async fn restore_many(a: &Args, plane: &Plane, archive: &[u8], rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let agents: u32 = if a.quick { 20 } else { 100 };
    plane.launch("many", agents, "local").await?;
    plane.wait_ready("many", agents, Duration::from_secs(300)).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for slot in 0..agents {
        let (client, body) = (plane.client.clone(), archive.to_vec());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let path = format!("/api/v1/fleets/many/agents/{slot}/restore");
            let done: clawfleet_proto::api::RestoreResponse = client.post_bytes(&path, "application/gzip", body).await?;
            anyhow::ensure!(done.reloaded, "agent {slot} did not read it again: {:?}", done.error);
            Ok::<f64, anyhow::Error>(t.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut each = Vec::new();
    for t in tasks {
        each.push(t.await??);
    }
    let all = start.elapsed().as_secs_f64();
    rows.push(Row {
        name: "restore of 100 agents from a snapshot",
        result: format!("{all:.2} s until all {agents} had it, p50 {:.0} ms a restore", percentile(&mut each, 0.5)),
        goal: "seconds, not minutes",
        notes: format!(
            "the 1,000-turn snapshot above ({:.0} KiB) restored into each idle agent of a {agents}-agent local echo fleet at once: \
             verified, unpacked beside each agent's journal, and each agent's config-reload answered (p99 {:.0} ms)",
            archive.len() as f64 / 1024.0,
            percentile(&mut each, 0.99)
        ),
    });
    Ok(())
}

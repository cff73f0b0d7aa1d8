//! The slurm backend and the mailbox transport (issue #5), on this machine's single-node Slurm:
//!
//! - submit to all-ready for 4 agents, over the bus and over the mailbox;
//! - outbox append to event on the router's stdout (`clawfleet router --stdio`), p50/p99, with
//!   the control plane polling alone (`--no-inotify`) and with the inotify hint; and throughput
//!   with 4 and 64 writers appending as fast as they can. Writers stand in for agents: each
//!   appends codeswarm `worker_event` lines, carrying its write time, to an outbox of its own;
//! - the same scenario through codeswarm's own follower (`agent/outbox_follower.py` of
//!   kalowery/codeswarm, from a local mirror, never committed), whose stdout is measured
//!   directly: it only relays lines, where clawfleet also stores every event before the router
//!   sees it; so the followers are also compared alone, like for like, with `clawfleet mailbox
//!   follow` (the same follower the control plane runs, printing lines as codeswarm's does).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clawfleet_proto::api::LaunchRequest;
use clawfleet_proto::cluster::ClusterSpec;
use serde_json::{Value, json};

use crate::{Args, Plane, Row};

/// Where `fetch` put codeswarm (override with CODESWARM_REPO, a git directory).
const CODESWARM: &str = "/work/.mirror/kalowery+codeswarm/repo";

pub(crate) async fn run(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let sinfo = Command::new("sinfo").args(["-h", "-o", "%T"]).output().context("the slurm benchmarks need Slurm (scripts/slurm-setup)")?;
    if !String::from_utf8_lossy(&sinfo.stdout).trim().starts_with(|c: char| c.is_ascii_alphabetic()) {
        bail!("the slurm benchmarks need a running single-node Slurm (scripts/slurm-setup)");
    }
    submit_to_ready(a, rows).await?;
    let lines = if a.quick { 100 } else { 300 };
    let (poll50, poll99, _) = through_clawfleet(a, false, 4, lines, Some(Duration::from_millis(20))).await?;
    let (hint50, hint99, _) = through_clawfleet(a, true, 4, lines, Some(Duration::from_millis(20))).await?;
    let codeswarm = through_codeswarm(4, lines, Some(Duration::from_millis(20)));
    let (cs50, cs99) = match &codeswarm {
        Ok((p50, p99, _)) => (format!("{p50:.1}"), format!("{p99:.1}")),
        Err(_) => ("-".into(), "-".into()),
    };
    rows.push(Row {
        name: "mailbox: outbox append to event on the router's stdout, polling",
        result: format!("p50 {poll50:.1} ms, p99 {poll99:.1} ms"),
        goal: "side by side",
        notes: format!(
            "4 writers, {lines} lines each, one every 20 ms; `up --no-inotify`, polled every 100 ms; the line is stored before the router sees it. codeswarm's follower (polls every 100 ms, relays only): p50 {cs50} ms, p99 {cs99} ms"
        ),
    });
    rows.push(Row {
        name: "mailbox: outbox append to event on the router's stdout, inotify hint",
        result: format!("p50 {hint50:.1} ms, p99 {hint99:.1} ms"),
        goal: "side by side",
        notes: match &codeswarm {
            Ok((p50, _, _)) => format!(
                "same, with inotify waking the follower (polling stays on); p50 ratio, codeswarm's follower/clawfleet: {:.1}x",
                p50 / hint50
            ),
            Err(e) => format!("same, with inotify waking the follower; codeswarm's follower did not run: {e:#}"),
        },
    });
    // The followers alone, like for like: ours (`clawfleet mailbox follow`) and codeswarm's.
    let (fp50, fp99, _) = through_our_follower(&a.bin, false, 4, lines, Some(Duration::from_millis(20)))?;
    let (fh50, fh99, _) = through_our_follower(&a.bin, true, 4, lines, Some(Duration::from_millis(20)))?;
    rows.push(Row {
        name: "mailbox follower alone: outbox append to its stdout",
        result: format!("polling p50 {fp50:.1} ms, p99 {fp99:.1} ms; inotify hint p50 {fh50:.1} ms, p99 {fh99:.1} ms"),
        goal: "side by side",
        notes: format!(
            "`clawfleet mailbox follow` (a drop-in for codeswarm's `outbox_follower.py`), same writers; codeswarm's follower: p50 {cs50} ms, p99 {cs99} ms (polls every 100 ms, as ours does with --no-inotify)"
        ),
    });
    let total = if a.quick { 2048 } else { 8192 };
    for writers in [4usize, 64] {
        let each = total / writers;
        let (_, _, ours) = through_clawfleet(a, true, writers, each, None).await?;
        // The followers alone move more lines, in turns (ours, theirs, three times): medians.
        let many = total * 8 / writers;
        let (mut alone, mut theirs) = (Vec::new(), Vec::new());
        let mut codeswarm_error = None;
        for _ in 0..3 {
            alone.push(through_our_follower(&a.bin, true, writers, many, None)?.2);
            match through_codeswarm(writers, many, None) {
                Ok((_, _, rate)) => theirs.push(rate),
                Err(e) => codeswarm_error = Some(e),
            }
        }
        let alone = median(alone);
        rows.push(Row {
            name: if writers == 4 { "mailbox: throughput, 4 writers" } else { "mailbox: throughput, 64 writers" },
            result: format!("{ours:.0} events/s"),
            goal: "side by side",
            notes: match codeswarm_error {
                None => {
                    let theirs = median(theirs);
                    format!(
                        "{writers} writers appending {each} lines each at full speed, to events on the router's stdout (each stored in SQLite first). Followers alone ({} lines, medians of 3 in turns): `clawfleet mailbox follow` {alone:.0} lines/s, codeswarm's {theirs:.0} lines/s (ours/theirs {:.2}x)",
                        many * writers,
                        alone / theirs
                    )
                }
                Some(e) => format!("{writers} writers, {each} lines each; `clawfleet mailbox follow` alone {alone:.0} lines/s; codeswarm's follower did not run: {e:#}"),
            },
        });
    }
    Ok(())
}

async fn launch(plane: &Plane, name: &str, replicas: u32, transport: &str) -> anyhow::Result<()> {
    let req = LaunchRequest {
        name: name.into(),
        replicas,
        backend: Some("slurm".into()),
        brain: Some("echo".into()),
        cluster: Some(ClusterSpec { transport: Some(transport.parse().map_err(anyhow::Error::msg)?), ..ClusterSpec::default() }),
        ..LaunchRequest::default()
    };
    let _: Value = plane.client.post("/api/v1/fleets", &req).await?;
    Ok(())
}

async fn submit_to_ready(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let plane = Plane::start_args(&a.bin, 500, &["--slurm"]).await?;
    let reps = if a.quick { 2 } else { 5 };
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let result: anyhow::Result<()> = async {
        // In turns, bus then mailbox, with a pause between runs: Slurm holds jobs submitted
        // right after others ended PENDING until its next scheduling pass (about 2 s here).
        for i in 0..reps {
            for (t, transport) in ["bus", "mailbox"].into_iter().enumerate() {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let name = format!("s{}{i}", &transport[..1]);
                let started = Instant::now();
                launch(&plane, &name, 4, transport).await?;
                plane.wait_ready(&name, 4, Duration::from_secs(300)).await?;
                times[t].push(started.elapsed().as_secs_f64());
                eprintln!("clawfleet-bench: {name}: {:.2} s", started.elapsed().as_secs_f64());
                plane.terminate(&name).await?;
            }
        }
        Ok(())
    }
    .await;
    plane.stop().await;
    result?;
    for (t, transport) in ["bus", "mailbox"].into_iter().enumerate() {
        let mut v = times[t].clone();
        v.sort_by(f64::total_cmp);
        rows.push(Row {
            name: if transport == "bus" { "slurm: submit to all ready, 4 agents, bus" } else { "slurm: submit to all ready, 4 agents, mailbox" },
            result: format!("median {:.2} s, min {:.2} s", v[v.len() / 2], v[0]),
            goal: "-",
            notes: format!(
                "launch (4 sbatch calls) to every agent's idle heartbeat, on the local single-node Slurm; {reps} runs in turns with the other transport, 3 s apart; max {:.2} s",
                v[v.len() - 1]
            ),
        });
    }
    Ok(())
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_nanos()
}

/// Appends `lines` worker_event lines to each of `writers` outboxes (one thread each), one
/// every `gap` or as fast as possible; each carries its write time.
fn write_outboxes(outbox: &Path, writers: usize, lines: usize, gap: Option<Duration>) -> Vec<std::thread::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let path = outbox.join(format!("900_{w:02}.jsonl"));
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("outbox");
                for seq in 1..=lines {
                    let line = json!({
                        "type": "worker_event", "job_id": "900", "node_id": w, "injection_id": null,
                        "epoch": format!("bench{w}"), "seq": seq, "at": "2026-01-01T00:00:00Z",
                        "event": "assistant_delta", "payload": {"content": format!("t{}", now_ns())},
                    });
                    f.write_all(format!("{line}\n").as_bytes()).expect("append");
                    if let Some(gap) = gap {
                        std::thread::sleep(gap);
                    }
                }
            })
        })
        .collect()
}

/// Reads lines of `child`'s stdout: latency of every line carrying a `t<ns>` write time.
fn read_latencies(child: &mut Child, expected: usize, started: Instant) -> anyhow::Result<(Vec<f64>, Duration)> {
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let now = now_ns();
            let Some(i) = line.find("\"content\":\"t") else { continue };
            let digits: String = line[i + 12..].chars().take_while(char::is_ascii_digit).collect();
            if let Ok(t) = digits.parse::<u128>()
                && tx.send(now.saturating_sub(t) as f64 / 1e6).is_err()
            {
                return;
            }
        }
    });
    let mut lat = Vec::with_capacity(expected);
    let deadline = Instant::now() + Duration::from_secs(300);
    while lat.len() < expected {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(ms) => lat.push(ms),
            Err(_) => bail!("only {} of {expected} lines came out", lat.len()),
        }
    }
    Ok((lat, started.elapsed()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentiles(mut lat: Vec<f64>) -> (f64, f64) {
    lat.sort_by(f64::total_cmp);
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    (at(0.5), at(0.99))
}

/// The scenario through clawfleet: a slurm fleet on the mailbox, the control plane following it,
/// `clawfleet router --stdio` printing its events. Returns p50, p99 (ms) and events/s.
async fn through_clawfleet(
    a: &Args,
    inotify: bool,
    writers: usize,
    lines: usize,
    gap: Option<Duration>,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut extra = vec!["--slurm"];
    if !inotify {
        extra.push("--no-inotify");
    }
    let plane = Plane::start_args(&a.bin, 2000, &extra).await?;
    let result = async {
        launch(&plane, "mb", 0, "mailbox").await?;
        let base = find_fleet_dir(&plane.data.join("slurm"), "mb-").await?;
        let outbox = base.join("mailbox").join("outbox");
        let mut router = Command::new(&a.bin);
        router.args(["router", "--stdio", "--data"]).arg(&plane.data).env("RUST_LOG", "warn").stdin(Stdio::piped());
        // The control plane picks the fleet's mailbox up within its rescan period.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        tokio::task::spawn_blocking(move || through_follower(router, &outbox, writers, lines, gap)).await?
    }
    .await;
    let _ = plane.terminate("mb").await;
    plane.stop().await;
    result
}

async fn find_fleet_dir(root: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(entries) = std::fs::read_dir(root) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(prefix) && e.path().join("mailbox/outbox").is_dir() {
                    return Ok(e.path());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the fleet's mailbox did not appear under {}", root.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fresh mailbox under a temporary directory: (the directory, its outbox).
fn scratch_mailbox() -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let outbox = dir.path().join("mailbox").join("outbox");
    std::fs::create_dir_all(&outbox)?;
    std::fs::create_dir_all(dir.path().join("mailbox").join("archive"))?;
    Ok((dir, outbox))
}

/// The scenario through a follower process that prints outbox lines on its stdout.
fn through_follower(
    mut cmd: Command,
    outbox: &Path,
    writers: usize,
    lines: usize,
    gap: Option<Duration>,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().context("starting the follower")?;
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let handles = write_outboxes(outbox, writers, lines, gap);
    let measured = read_latencies(&mut child, writers * lines, started);
    let _ = child.kill();
    let _ = child.wait();
    for h in handles {
        let _ = h.join();
    }
    let (lat, took) = measured?;
    let rate = lat.len() as f64 / took.as_secs_f64();
    let (p50, p99) = percentiles(lat);
    Ok((p50, p99, rate))
}

/// `clawfleet mailbox follow` on its own: the like-for-like peer of codeswarm's follower.
fn through_our_follower(bin: &Path, inotify: bool, writers: usize, lines: usize, gap: Option<Duration>) -> anyhow::Result<(f64, f64, f64)> {
    let (_dir, outbox) = scratch_mailbox()?;
    let mut cmd = Command::new(bin);
    cmd.args(["mailbox", "follow"]).arg(&outbox);
    if !inotify {
        cmd.arg("--no-inotify");
    }
    through_follower(cmd, &outbox, writers, lines, gap)
}

/// The same scenario through codeswarm's `outbox_follower.py`.
fn through_codeswarm(writers: usize, lines: usize, gap: Option<Duration>) -> anyhow::Result<(f64, f64, f64)> {
    let repo = std::env::var("CODESWARM_REPO").unwrap_or_else(|_| CODESWARM.into());
    let script = Command::new("git").args(["--git-dir", &repo, "show", "HEAD:agent/outbox_follower.py"]).output()?;
    if !script.status.success() {
        bail!("no codeswarm mirror at {repo} (fetch kalowery/codeswarm)");
    }
    let (dir, outbox) = scratch_mailbox()?;
    let follower = dir.path().join("outbox_follower.py");
    std::fs::write(&follower, &script.stdout)?;
    let mut cmd = Command::new("python3");
    cmd.arg("-u").arg(&follower).arg(&outbox);
    through_follower(cmd, &outbox, writers, lines, gap)
}

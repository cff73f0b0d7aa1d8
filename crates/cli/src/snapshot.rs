//! `clawfleet snapshot FLEET/SLOT`: an agent's state as an archive, verified as it arrives
//! (`clawfleet_snapshot::read`) and written only to a new file, readable by its owner alone;
//! `clawfleet restore FILE --into FLEET [--slot N]`: the archive, verified here first, into an
//! idle agent. `--format af` writes a Letta Agent File instead, and `restore` takes one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

use anyhow::Context;
use clawfleet_core::AgentRef;

use crate::args::{RestoreArgs, SnapshotArgs};
use crate::fleet::print_json;

pub(crate) async fn run(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let agent: AgentRef = args.agent.parse()?;
    let client = args.client.client()?;
    let bytes = client.get_bytes(&format!("/api/v1/fleets/{}/agents/{}/snapshot", agent.fleet, agent.slot)).await?;
    let snapshot = clawfleet_snapshot::read(bytes.as_slice()).context("the control plane's snapshot")?;
    let path = args.output.unwrap_or_else(|| format!("{}-{}.{}", agent.fleet, agent.slot, args.format).into());
    if args.format == "af" {
        let (file, unmapped) = clawfleet_snapshot::af::to_agent_file(&snapshot);
        let text = serde_json::to_vec_pretty(&file).expect("json");
        save(&path, &text)?;
        if args.json {
            print_json(&serde_json::json!({"file": path, "bytes": text.len(), "format": "af", "unmapped": unmapped}));
        } else {
            outln!("agent file of {agent}: {} turns, {} bytes in {}", snapshot.manifest.turns, text.len(), path.display());
            for u in &unmapped {
                outln!("  not in it: {u}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    save(&path, &bytes)?;
    let m = &snapshot.manifest;
    if args.json {
        print_json(&serde_json::json!({"file": path, "bytes": bytes.len(), "manifest": m}));
    } else {
        outln!(
            "snapshot of {agent}: {} turns, {} files, {} bytes in {} (format {}, brain {})",
            m.turns,
            m.files.len(),
            bytes.len(),
            path.display(),
            m.version,
            m.origin.brain
        );
        for s in &m.skipped {
            outln!("  left out: {s}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Grows `fleet` by one agent and waits until the new agent is idle; its slot.
async fn new_agent(client: &crate::client::Client, fleet: &str, timeout: std::time::Duration) -> anyhow::Result<u32> {
    use clawfleet_proto::api::{Fleet, FleetStatus, ScaleRequest};
    let status: FleetStatus = client.get(&format!("/api/v1/fleets/{fleet}")).await?;
    let slot = status.fleet.replicas;
    let _: Fleet = client.post(&format!("/api/v1/fleets/{fleet}/scale"), &ScaleRequest { replicas: slot + 1 }).await?;
    outln!("{fleet} grows to {} agents; waiting for {fleet}/{slot} to be idle", slot + 1);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let status: FleetStatus = client.get(&format!("/api/v1/fleets/{fleet}")).await?;
        if status.agents.iter().any(|a| a.slot == slot && a.state == "idle") {
            return Ok(slot);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "{fleet}/{slot} was not idle within {} s; nothing was restored (the fleet keeps its new agent)",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Writes a new file, readable by its owner only.
fn save(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {} (an existing file is not overwritten)", path.display()))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", path.display()))
}

/// A Letta Agent File as a snapshot archive, what it held that has no counterpart, and the brain
/// its `llm_config` becomes.
fn from_agent_file(bytes: &[u8], path: &std::path::Path) -> anyhow::Result<(Vec<u8>, Vec<String>, Option<String>)> {
    let imported = clawfleet_snapshot::af::from_agent_file(bytes).with_context(|| format!("{}", path.display()))?;
    let origin = clawfleet_proto::snapshot::Origin {
        clawfleet_version: env!("CARGO_PKG_VERSION").into(),
        created_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        source: format!("Letta agent file {}", path.display()),
        fleet: imported.name.clone(),
        slot: 0,
        brain: imported.brain.clone().unwrap_or_default(),
        system_prompt: imported.system_prompt.clone(),
        fleet_version: String::new(),
    };
    let files = clawfleet_snapshot::af::files_of(&imported);
    let mut out = Vec::new();
    clawfleet_snapshot::write_files(&files, vec![], None, origin, &mut out)?;
    Ok((out, imported.unmapped, imported.brain))
}

pub(crate) async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let read = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    // An Agent File is JSON (an object, or some published ones a string of it); a snapshot is gzip.
    let (bytes, unmapped, brain) = if matches!(read.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'"')) {
        from_agent_file(&read, &args.file)?
    } else {
        (read, Vec::new(), None)
    };
    // Verified here first: a bad file is refused before anything is sent.
    clawfleet_snapshot::read(bytes.as_slice()).with_context(|| format!("{}", args.file.display()))?;
    let client = args.client.client()?;
    let slot = match args.slot {
        Some(slot) => slot,
        None => new_agent(&client, &args.into, args.timeout).await?,
    };
    let path = format!("/api/v1/fleets/{}/agents/{slot}/restore", args.into);
    let done: clawfleet_proto::api::RestoreResponse = client.post_bytes(&path, "application/gzip", bytes).await?;
    if args.json {
        let mut v = serde_json::to_value(&done).expect("json");
        v["unmapped"] = serde_json::json!(unmapped);
        v["brain"] = serde_json::json!(brain);
        print_json(&v);
    } else {
        outln!("restored {} into {}: {} turns, {} files", done.from, done.agent, done.turns, done.files);
        if let Some(b) = &brain {
            outln!("  its llm_config became its brain: {b} (in its workspace config.json)");
        }
        for u in &unmapped {
            outln!("  not restored: {u}");
        }
        match (&done.error, done.reloaded) {
            (_, true) => {
                outln!("{} read it again: its conversation holds {} messages", done.agent, done.conversation_messages.unwrap_or(0))
            }
            (Some(e), false) => outln!("{} could not read it again: {e}", done.agent),
            (None, false) => outln!("{} did not answer in time; it reads its workspace again when it restarts", done.agent),
        }
    }
    Ok(if done.reloaded { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

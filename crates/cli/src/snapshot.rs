//! `clawfleet snapshot FLEET/SLOT`: an agent's state as an archive, verified as it arrives
//! (`clawfleet_snapshot::read`) and written only to a new file, readable by its owner alone;
//! `clawfleet restore FILE --into FLEET [--slot N]`: the archive, verified here first, into an
//! idle agent.

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
    let path = args.output.unwrap_or_else(|| format!("{}-{}.cfsnap", agent.fleet, agent.slot).into());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {} (an existing file is not overwritten)", path.display()))?;
    file.write_all(&bytes).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", path.display()))?;
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

pub(crate) async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    // Verified here first: a bad file is refused before anything is sent.
    clawfleet_snapshot::read(bytes.as_slice()).with_context(|| format!("{}", args.file.display()))?;
    let client = args.client.client()?;
    let path = format!("/api/v1/fleets/{}/agents/{}/restore", args.into, args.slot);
    let done: clawfleet_proto::api::RestoreResponse = client.post_bytes(&path, "application/gzip", bytes).await?;
    if args.json {
        print_json(&done);
    } else {
        outln!("restored {} into {}: {} turns, {} files", done.from, done.agent, done.turns, done.files);
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

//! `clawfleet snapshot FLEET/SLOT`: an agent's state as an archive, verified as it arrives
//! (`clawfleet_snapshot::read`) and written only to a new file, readable by its owner alone.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

use anyhow::Context;
use clawfleet_core::AgentRef;

use crate::args::SnapshotArgs;
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
            m.brain
        );
        for s in &m.skipped {
            outln!("  left out: {s}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! Desired state from a file: `diff -f fleet.toml` and `apply -f fleet.toml`.
//!
//! The file is read and every fleet checked here first, so an error names its place
//! (`fleet.toml:7:9: fleets.web.brain: ...`); the control plane then plans (and applies) the
//! whole file in one transaction: nothing is half-applied.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clawfleet_core::{BrainSpec, FleetSpec};
use clawfleet_proto::api::{AgentStatus, ApplyPlan, ApplyRequest, ChangeOp, FleetStatus, LaunchRequest};
use clawfleet_proto::fleetfile::{self, MAX_FLEET_FILE_BYTES};

use crate::args::{ApplyArgs, DiffArgs};
use crate::fleet::{print_json, ready, wait_for};

/// Exit code of `diff` when applying would change something (as `terraform plan -detailed-exitcode`).
const CHANGES: u8 = 2;

/// The fleets a file declares, each checked, or an error that says where.
pub(crate) fn read(path: &Path) -> anyhow::Result<Vec<LaunchRequest>> {
    let file = path.display();
    let size = std::fs::metadata(path).with_context(|| format!("reading the fleet file {file}"))?.len();
    if size > MAX_FLEET_FILE_BYTES as u64 {
        bail!("{file}: the file is {size} bytes, over the {MAX_FLEET_FILE_BYTES}-byte limit");
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the fleet file {file}"))?;
    let declared = fleetfile::parse(&text).map_err(|e| match e.at {
        Some(at) => anyhow::anyhow!("{file}:{}:{}: {}", at.line, at.column, e.message),
        None => anyhow::anyhow!("{file}: {}", e.message),
    })?;
    for fleet in &declared {
        // The brain the control plane defaults to does not change what is valid.
        if let Err(e) = FleetSpec::from_request(&fleet.request, &BrainSpec::Echo) {
            let field = e.field().unwrap_or("name");
            let at = fleet.locate(field);
            let name = &fleet.request.name;
            bail!("{file}:{}:{}: fleets.{name}.{field}: {e}", at.line, at.column);
        }
    }
    Ok(declared.into_iter().map(|d| d.request).collect())
}

async fn plan(client: &crate::client::Client, path: &Path, prune: bool, dry_run: bool) -> anyhow::Result<ApplyPlan> {
    let fleets = read(path)?;
    client.post("/api/v1/apply", &ApplyRequest { fleets, prune, dry_run }).await
}

pub(crate) async fn diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let plan = plan(&client, &args.file, args.prune, true).await?;
    if args.json {
        print_json(&plan);
    } else {
        out!("{}", clawfleet_core::desired::render(&plan));
    }
    Ok(if plan.changes.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(CHANGES) })
}

pub(crate) async fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let started = Instant::now();
    let plan = plan(&client, &args.file, args.prune, false).await?;
    if args.json {
        print_json(&plan);
    } else {
        eprint!("{}", clawfleet_core::desired::render(&plan));
    }
    if args.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = Duration::from_secs(args.timeout);
    for change in &plan.changes {
        let left = timeout.saturating_sub(started.elapsed());
        let name = &change.fleet;
        match change.op {
            ChangeOp::Terminate => gone(&client, name, left).await?,
            ChangeOp::Create => drop(wait_for(&client, name, left, "are ready", &ready).await?),
            ChangeOp::Update => {
                // A change of anything but the replica count or the deploy policy replaces
                // every agent: wait for agents started since.
                let replaced = change.fields.iter().any(|f| f.field != "replicas" && !f.field.starts_with("deploy."));
                let version = change.fields.iter().find(|f| f.field == "version").and_then(|f| f.to.clone());
                let since = started.elapsed();
                let current = move |a: &AgentStatus| {
                    ready(a)
                        && version.as_ref().is_none_or(|v| a.fleet_version.as_ref() == Some(v))
                        && (!replaced
                            || a.uptime_s.is_some_and(|u| {
                                Duration::from_secs(u) <= started.elapsed().saturating_sub(since) + Duration::from_secs(1)
                            }))
                };
                drop(wait_for(&client, name, left, "run the new configuration", &current).await?);
            }
        }
    }
    if !args.json && !plan.changes.is_empty() {
        eprintln!("applied: every fleet matches {}", args.file.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until a terminated fleet is gone.
async fn gone(client: &crate::client::Client, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        match client.get::<FleetStatus>(&format!("/api/v1/fleets/{name}")).await {
            Err(e) if crate::client::is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e),
            Ok(s) if started.elapsed() > timeout => {
                bail!("fleet '{name}' still has {} agents after {} s", s.agents.len(), timeout.as_secs())
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    fn error(text: &str, expected: Expect) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.toml");
        std::fs::write(&path, text).unwrap();
        let err = super::read(&path).unwrap_err().to_string();
        expected.assert_eq(&err.replace(&path.display().to_string(), "fleet.toml"));
    }

    #[test]
    fn errors_name_the_file_line_column_and_field() {
        error(
            "[fleets.web]\nreplicas = 2\nbrain = \"gpt\"\n",
            expect![
                "fleet.toml:3:9: fleets.web.brain: invalid brain spec 'gpt': unknown kind (expected model, openai:URL#MODEL, ollama:URL#MODEL, codex, claude, cmd:COMMAND, approve:cmd:COMMAND, echo or mock)"
            ],
        );
        error(
            "[fleets.web]\nreplicas = 20000\n",
            expect!["fleet.toml:2:12: fleets.web.replicas: replicas must be between 0 and 10000, got 20000"],
        );
        error(
            "[fleets.Web]\nreplicas = 2\n",
            expect![
                "fleet.toml:1:9: fleets.Web.name: fleet name 'Web' may only contain a-z, 0-9, '-' and '_', and must start with a letter or digit"
            ],
        );
        error(
            "[fleets.web]\nreplicas = 2\nimage = \"x:1\"\n",
            expect![
                "fleet.toml:3:9: fleets.web.image: --image is for container backends (docker); the local backend runs the clawfleet binary itself"
            ],
        );
        error(
            "[fleets.web]\nreplicas = 2\nversion = \"a b\"\n",
            expect!["fleet.toml:3:11: fleets.web.version: version label must be 1-64 printable characters without spaces, got 'a b'"],
        );
        error(
            "[fleets.web]\nreplicas = 2\nreplcas = 3\n",
            expect![
                "fleet.toml:3:1: unknown field `replcas`, expected one of `backend`, `replicas`, `brain`, `prompt`, `version`, `image`, `cluster`, `deploy`, `env`, `secrets`"
            ],
        );
    }
}

//! `clawfleet agent`: agent runtimes. Backends start one per process with its configuration
//! in the environment; `--join FLEET` starts agents by hand for a fleet of the control plane
//! (fetching their bus logins with the operator token); `--count N` runs N independent agents
//! in one process, each with its own bus connection and identity.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clawfleet_agent::{AgentConfig, MailboxSpec, Transport, runtime, sandbox};
use clawfleet_bus::{BusUrl, FleetKey};
use clawfleet_core::{AgentRef, BrainSpec, FleetName};
use clawfleet_proto::api::JoinResponse;
use clawfleet_proto::cluster::TransportMode;
use tokio::sync::watch;

use crate::args::AgentArgs;

/// Reads the fleet's key from its file (a Docker secret) into the arguments, before the agent
/// confines itself away from that file.
pub(crate) fn read_key_file(args: &mut AgentArgs) -> anyhow::Result<()> {
    if let (None, Some(path)) = (&args.bus_fleet_key, args.bus_fleet_key_file.take()) {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading the fleet's key from {}", path.display()))?;
        args.bus_fleet_key = Some(text.trim().to_owned());
    }
    if let (None, Some(path)) = (&args.brain_secrets, args.brain_secrets_file.take()) {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading the brains' secrets from {}", path.display()))?;
        args.brain_secrets = Some(text.trim().to_owned());
    }
    Ok(())
}

/// Confines this agent process with Landlock when its backend asked (`--sandbox-hide`). Runs
/// before any other thread exists; an agent that cannot be confined does not run.
pub(crate) fn confine(args: &AgentArgs) -> anyhow::Result<()> {
    let Some(hide) = &args.sandbox_hide else { return Ok(()) };
    let write: Vec<PathBuf> = args.sandbox_write.as_deref().map(|w| std::env::split_paths(w).collect()).unwrap_or_default();
    let confinement = sandbox::Confinement { hide: hide.clone(), write };
    sandbox::confine(&confinement).with_context(|| format!("cannot sandbox this agent away from {}", hide.display()))
}

/// `clawfleet brain-exec PROGRAM ARGS...`: nests the process in a sandbox of its own, then
/// becomes the brain's program.
pub(crate) fn brain_exec(args: &crate::args::BrainExecArgs) -> ExitCode {
    use std::os::unix::process::CommandExt;
    if let Err(e) = sandbox::nest() {
        eprintln!("error: cannot sandbox the brain: {e}");
        return ExitCode::from(126);
    }
    let (program, rest) = args.command.split_first().expect("clap requires a program");
    let err = std::process::Command::new(program).args(rest).exec();
    eprintln!("error: cannot run {}: {err}", program.to_string_lossy());
    // The shell's codes: 127 when there is no such program, 126 when it cannot run.
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 })
}

pub(crate) async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if args.health {
        return health(&args);
    }
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let mut configs = match &args.join {
        Some(fleet) => join(&args, fleet).await?,
        None => from_env(&args)?,
    };
    for c in &mut configs {
        c.transport = transport(&args, c).await?;
    }
    let (stop, stopped) = watch::channel(false);
    let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build().context("building the HTTP client")?;
    let mut tasks = tokio::task::JoinSet::new();
    for config in configs {
        let mut stopped = stopped.clone();
        let http = http.clone();
        let agent = config.agent.clone();
        tasks.spawn(async move {
            let result = runtime::run(config, http, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
            (agent, result)
        });
    }
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        let _ = stop.send(true);
    });
    let mut failed = false;
    while let Some(done) = tasks.join_next().await {
        if let Ok((agent, Err(e))) = done {
            eprintln!("error: agent {agent}: {e}");
            failed = true;
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The way to the control plane: `auto` tries the bus first.
async fn transport(args: &AgentArgs, c: &AgentConfig) -> anyhow::Result<Transport> {
    let mailbox = || -> anyhow::Result<Transport> {
        let base = args.mailbox.clone().ok_or_else(|| anyhow!("the mailbox transport needs --mailbox DIR (CLAWFLEET_MAILBOX)"))?;
        let job_id = args
            .mailbox_job
            .clone()
            .filter(|j| !j.is_empty() && !j.contains(['/', '\0']))
            .ok_or_else(|| anyhow!("the mailbox transport needs --mailbox-job ID (SLURM_JOB_ID): a run id without '/'"))?;
        Ok(Transport::Mailbox(MailboxSpec { base, job_id, node: c.agent.slot }))
    };
    match args.transport {
        TransportMode::Bus => Ok(Transport::Bus),
        TransportMode::Mailbox => mailbox(),
        TransportMode::Auto => {
            let addr = (c.bus_host.as_str(), c.bus_port);
            match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(Transport::Bus),
                outcome => {
                    let why = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer in 5 s".into(),
                    };
                    tracing::warn!(bus = %format!("{}:{}", c.bus_host, c.bus_port), %why, "The bus is out of reach; using the mailbox");
                    mailbox()
                }
            }
        }
    }
}

/// `--health`: the container health check.
fn health(args: &AgentArgs) -> anyhow::Result<ExitCode> {
    let workspace = args.workspace.clone().map_or_else(std::env::current_dir, Ok).context("finding the workspace")?;
    let max_age = Duration::from_millis(args.heartbeat_ms.max(100) * 3 + 2000);
    match clawfleet_agent::workspace::check_alive(&workspace, max_age) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(why) => {
            eprintln!("unhealthy: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `ca`: the CA (PEM) to trust when `bus` is `mqtts://`.
fn base(agent: AgentRef, uid: &str, bus: &BusUrl, ca: Option<&str>, workspace: PathBuf, args: &AgentArgs) -> anyhow::Result<AgentConfig> {
    let mut c = AgentConfig::new(agent, uid, bus.host.clone(), bus.port, workspace);
    if bus.tls {
        let ca = ca.ok_or_else(|| anyhow!("{bus} is MQTT over TLS: give the CA to trust with --bus-ca (CLAWFLEET_BUS_CA, PEM)"))?;
        c.bus_tls_ca = Some(ca.as_bytes().to_vec());
    }
    c.brain = args.brain.parse::<BrainSpec>()?;
    c.model_url = args.model_url.clone();
    c.model_name = args.model_name.clone();
    c.model_builtin = args.model_builtin;
    c.system_prompt = args.system_prompt.clone().filter(|p| !p.is_empty());
    if let Some(bad) = args.capabilities.iter().find(|c| !clawfleet_core::council::is_role(c)) {
        bail!("--capabilities: '{bad}' is not a role name (1 to 32 characters of a-z, 0-9, - and _, starting with a letter)");
    }
    c.capabilities = args.capabilities.clone();
    c.fleet_version = args.fleet_version.clone();
    c.heartbeat_interval = Duration::from_millis(args.heartbeat_ms.max(100));
    c.watchdog = Duration::from_secs(args.watchdog.max(1));
    if args.sandbox_hide.is_some() {
        c.brain_exec = Some(std::env::current_exe().context("finding this binary to run brains in their sandboxes")?);
    }
    Ok(c)
}

/// A JSON object of variables for the brains (`what` names where it came from, for errors).
fn vars(what: &str, json: Option<&str>) -> anyhow::Result<Vec<(String, String)>> {
    let Some(json) = json.filter(|j| !j.is_empty()) else { return Ok(Vec::new()) };
    let map: std::collections::BTreeMap<String, String> =
        serde_json::from_str(json).map_err(|e| anyhow!("{what} is not a JSON object of strings: {e}"))?;
    Ok(map.into_iter().collect())
}

/// Reads the `NAME=value` lines of a secrets file, then removes it: what the agent's brains
/// will start later must not find it.
fn take_secrets(path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the agent's secrets file {}", path.display()))?;
    std::fs::remove_file(path).with_context(|| format!("removing the agent's secrets file {}", path.display()))?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow!("the secrets file {} has a line that is not NAME=value", path.display()))
        })
        .collect()
}

fn from_env(args: &AgentArgs) -> anyhow::Result<Vec<AgentConfig>> {
    let fleet: FleetName = args
        .fleet
        .as_deref()
        .ok_or_else(|| anyhow!("no fleet: pass --join FLEET, or --fleet (CLAWFLEET_FLEET) with the bus settings a backend gives"))?
        .parse()?;
    let bus: BusUrl = args.bus.as_deref().ok_or_else(|| anyhow!("no bus: pass --bus mqtt://host:port (CLAWFLEET_BUS)"))?.parse()?;
    let uid = args.fleet_uid.clone().unwrap_or_else(|| "manual".into());
    let first = match args.swarm_slot {
        Some(0) => bail!("CLAWFLEET_SWARM_SLOT is 0, but Swarm numbers slots from 1"),
        Some(s) => s - 1,
        None => args.slot,
    };
    // A key file was read before the agent confined itself (`read_key_file`).
    let key = match &args.bus_fleet_key {
        Some(hex) => Some(
            FleetKey::from_hex(hex).ok_or_else(|| anyhow!("the fleet's key (CLAWFLEET_BUS_FLEET_KEY or its file) is not 64 hex digits"))?,
        ),
        None => None,
    };
    let last = first.checked_add(args.count - 1).ok_or_else(|| anyhow!("--slot plus --count is too large"))?;
    let (mut bus_password, mut api_token) = (args.bus_password.clone(), args.agent_token.clone());
    // A docker agent read its brains' secrets from their Docker secret before it confined itself.
    let mut brain_secrets = args.brain_secrets.clone();
    if let Some(path) = &args.secrets_file {
        for (name, value) in take_secrets(path)? {
            match name.as_str() {
                clawfleet_backend::env::BUS_PASSWORD => bus_password = Some(value),
                clawfleet_backend::env::AGENT_TOKEN => api_token = Some(value),
                clawfleet_backend::env::BRAIN_SECRETS => brain_secrets = Some(value),
                other => tracing::warn!(name = other, "Ignoring an unknown secret"),
            }
        }
    }
    let mut brain_env = vars(clawfleet_backend::env::BRAIN_ENV, args.brain_env.as_deref())?;
    brain_env.extend(vars(clawfleet_backend::env::BRAIN_SECRETS, brain_secrets.as_deref())?);
    (first..=last)
        .map(|slot| {
            let workspace = match (&args.workspace, args.count) {
                (Some(w), 1) => w.clone(),
                (Some(w), _) => w.join(slot.to_string()),
                (None, _) => std::env::current_dir()?.join(format!("{fleet}-{slot}")),
            };
            let mut c = base(AgentRef { fleet: fleet.clone(), slot }, &uid, &bus, args.bus_ca.as_deref(), workspace, args)?;
            c.bus_username = args.bus_username.clone();
            c.bus_password = bus_password.clone();
            c.api_token = api_token.clone();
            c.brain_env = brain_env.clone();
            if let (Some(key), None) = (&key, &c.bus_password) {
                c.bus_username = Some(clawfleet_core::acl::agent_username(&c.agent));
                c.bus_password = Some(key.agent_password(slot));
                c.api_token = Some(key.agent_token(&c.agent, &uid));
            }
            Ok(c)
        })
        .collect()
}

async fn join(args: &AgentArgs, fleet: &str) -> anyhow::Result<Vec<AgentConfig>> {
    let client = args.client.client()?;
    let last = args.slot.checked_add(args.count - 1).ok_or_else(|| anyhow!("--slot plus --count is too large"))?;
    let join: JoinResponse = client.get(&format!("/api/v1/fleets/{fleet}/join?slots={}-{last}", args.slot)).await?;
    let bus: BusUrl = join.bus.parse()?;
    let name: FleetName = join.fleet.parse()?;
    let root = args.workspace.clone().unwrap_or_else(|| {
        args.client
            .data
            .clone()
            .unwrap_or_else(crate::client::default_data_dir)
            .join("joined")
            .join(format!("{}-{}", join.fleet, join.fleet_uid))
    });
    join.agents
        .iter()
        .map(|a| {
            let ca = args.bus_ca.as_deref().or(join.bus_ca.as_deref());
            let mut c =
                base(AgentRef { fleet: name.clone(), slot: a.slot }, &join.fleet_uid, &bus, ca, root.join(a.slot.to_string()), args)?;
            c.brain = join.brain.parse()?;
            c.system_prompt = join.prompt.clone();
            c.fleet_version = join.version.clone();
            c.model_url = join.model_url.clone();
            c.model_name = join.model_name.clone();
            c.model_builtin = join.model_builtin;
            c.heartbeat_interval = Duration::from_millis(join.heartbeat_ms.max(100));
            c.bus_username = a.username.clone();
            c.bus_password = a.password.clone();
            c.api_token = a.token.clone();
            Ok(c)
        })
        .collect()
}

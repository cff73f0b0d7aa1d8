//! Racks: `up --rack NAME --peer NAME=URL --peer-token NAME=FILE` makes this control plane
//! one rack among peers; `clawfleet racks` shows them and whether each answers now;
//! `clawfleet migrate FLEET/SLOT --to RACK` moves an agent to one, showing each step, and
//! `clawfleet migrations` lists what moved.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clawfleet_core::AgentRef;
use clawfleet_proto::rack::{MigrateRequest, Migration, MigrationList, MigrationState, Racks, check_rack_name};
use clawfleet_server::{PeerConfig, RackConfig, ServerConfig};

use crate::args::{MigrateArgs, RacksArgs, UpArgs};
use crate::fleet::print_json;

/// The rack and its peers from `up`'s flags: every peer a rack name and an http(s) URL, with
/// exactly one token file (read here, owner-only); names unique and not this rack's own.
pub(crate) fn config(args: &UpArgs) -> anyhow::Result<RackConfig> {
    let name = match &args.rack {
        Some(n) => n.clone(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "local".into());
            let clean: String = host.trim().to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
            let clean = clean.trim_matches('-').chars().take(64).collect::<String>();
            if clean.is_empty() { "local".into() } else { clean }
        }
    };
    check_rack_name(&name).map_err(|e| anyhow::anyhow!("--rack: {e}"))?;
    let mut tokens = std::collections::BTreeMap::new();
    for t in &args.peer_tokens {
        let (peer, file) = t.split_once('=').with_context(|| format!("--peer-token '{t}': expected NAME=FILE"))?;
        let token = read_token(std::path::Path::new(file)).with_context(|| format!("--peer-token {peer}"))?;
        if tokens.insert(peer.to_owned(), token).is_some() {
            bail!("--peer-token {peer} is given twice");
        }
    }
    let mut peers: Vec<PeerConfig> = Vec::new();
    for p in &args.peers {
        let (peer, url) = p.split_once('=').with_context(|| format!("--peer '{p}': expected NAME=URL"))?;
        check_rack_name(peer).map_err(|e| anyhow::anyhow!("--peer {p}: {e}"))?;
        if peer == name {
            bail!("--peer {peer}: that is this rack's own name");
        }
        if peers.iter().any(|q| q.name == peer) {
            bail!("--peer {peer} is given twice");
        }
        let parsed = reqwest::Url::parse(url).with_context(|| format!("--peer {peer}: '{url}' is not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            bail!("--peer {peer}: '{url}' must be an http:// or https:// URL with a host");
        }
        let token = tokens
            .remove(peer)
            .with_context(|| format!("--peer {peer} needs --peer-token {peer}=FILE (a peer token it made for this rack)"))?;
        peers.push(PeerConfig { name: peer.to_owned(), url: url.trim_end_matches('/').to_owned(), token });
    }
    if let Some(extra) = tokens.keys().next() {
        bail!("--peer-token {extra} names no --peer");
    }
    Ok(RackConfig { name, peers })
}

/// A token file: one line, which only its owner may read.
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!("{} is readable by others (mode {:o}): chmod 600 it", path.display(), meta.permissions().mode() & 0o777);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.len() > 512 || token.contains(char::is_whitespace) {
        bail!("{} does not hold one token", path.display());
    }
    Ok(token.to_owned())
}

pub(crate) async fn racks(args: RacksArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let racks: Racks = client.get("/api/v1/racks").await?;
    if args.json {
        print_json(&racks);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("rack {} ({} peers)", racks.rack, racks.peers.len());
    for p in &racks.peers {
        let latency = p.latency_ms.map_or(String::new(), |ms| format!(" in {ms} ms"));
        match (&p.info, &p.problem) {
            (Some(info), None) => outln!("  {:<16} {:<28} answers{latency} (clawfleet {})", p.name, p.url, info.clawfleet_version),
            (Some(_), Some(problem)) => outln!("  {:<16} {:<28} answers{latency}, but cannot take agents: {problem}", p.name, p.url),
            (None, problem) => outln!("  {:<16} {:<28} does not answer: {}", p.name, p.url, problem.as_deref().unwrap_or("?")),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `up --racks 2` keeps rack-b's data: under this rack's.
pub(crate) fn second_dir(data: &std::path::Path) -> std::path::PathBuf {
    data.join("racks").join("rack-b")
}

/// `up --racks 2`: rack-b's configuration beside this one's (`config`, which becomes rack-a
/// unless named), each the other's peer with a token minted in the other's store; rack-b's
/// API and embedded bus on the ports after this one's.
pub(crate) fn second_rack(args: &UpArgs, config: &mut ServerConfig, scheme: &str) -> anyhow::Result<ServerConfig> {
    let clawfleet_server::BusMode::Embedded { listen } = config.bus else {
        bail!("--racks 2 runs each rack's own embedded broker: give no --bus");
    };
    if !args.peers.is_empty() {
        bail!("--racks 2 makes each rack the other's peer: give no --peer");
    }
    let next = |addr: std::net::SocketAddr, flag: &str| match addr.port() {
        0 | u16::MAX => bail!("--racks 2 puts rack-b on the port after {flag}'s: give {flag} a port below 65535, not {addr}"),
        port => Ok(std::net::SocketAddr::new(addr.ip(), port + 1)),
    };
    let a = args.rack.clone().unwrap_or_else(|| "rack-a".into());
    let b = "rack-b".to_owned();
    if a == b {
        bail!("--racks 2 names the second rack rack-b: give this one another --rack");
    }
    let mut second = config.clone();
    second.data_dir = second_dir(&config.data_dir);
    second.http = next(config.http, "--http")?;
    second.bus = clawfleet_server::BusMode::Embedded { listen: next(listen, "--mqtt-listen")? };
    let by = "clawfleet up --racks 2";
    let for_a = clawfleet_server::mint_peer_token(&second.data_dir, &a, by)?;
    let for_b = clawfleet_server::mint_peer_token(&config.data_dir, &b, by)?;
    let url = |addr: std::net::SocketAddr| {
        let host = if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
        format!("{scheme}://{}:{}", if host.contains(':') { format!("[{host}]") } else { host }, addr.port())
    };
    second.rack = RackConfig { name: b.clone(), peers: vec![PeerConfig { name: a.clone(), url: url(config.http), token: for_b }] };
    config.rack = RackConfig { name: a, peers: vec![PeerConfig { name: b, url: url(second.http), token: for_a }] };
    Ok(second)
}

/// How far along the source's side of a migration is, of [`STEPS`].
fn step(state: MigrationState) -> u64 {
    match state {
        MigrationState::Offered => 1,
        MigrationState::Transferred => 2,
        MigrationState::Ready | MigrationState::Committing => 3,
        MigrationState::Committed => 4,
        MigrationState::Done | MigrationState::Aborting | MigrationState::Aborted => STEPS,
    }
}

/// offered, transferred, committing, committed, done.
const STEPS: u64 = 5;

pub(crate) async fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let agent: AgentRef = args.agent.parse()?;
    let client = args.client.client()?;
    let req = MigrateRequest { to: args.to.clone(), fleet: args.fleet.clone(), allow_last: args.allow_last };
    let mut m: Migration = client.post(&format!("/api/v1/fleets/{}/agents/{}/migrate", agent.fleet, agent.slot), &req).await?;
    if !args.no_wait {
        let mut progress = crate::output::Progress::new(STEPS, &format!("migrating {agent} to {}", args.to));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        while !m.state.is_final() && std::time::Instant::now() < deadline {
            progress.set(step(m.state));
            progress.note(Some(m.state.as_str()));
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            m = client.get(&format!("/api/v1/migrations/{}", m.id)).await?;
        }
        progress.set(step(m.state));
        progress.finish();
    }
    if args.json {
        print_json(&m);
    } else {
        match m.state {
            MigrationState::Done => outln!(
                "{agent} moved to {}: it is {}/{} there now ({} held injections sent on); DEFECTED here",
                m.peer,
                m.remote_fleet,
                m.remote_slot.map_or("?".into(), |s| s.to_string()),
                m.forwarded
            ),
            MigrationState::Aborted => outln!("{agent} stays here: {}", m.error.as_deref().unwrap_or("the migration was aborted")),
            state => outln!("migration {} of {agent} to {} is {state}", m.id, m.peer),
        }
    }
    Ok(match m.state {
        MigrationState::Aborted => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}

pub(crate) async fn migrations(args: RacksArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let list: MigrationList = client.get("/api/v1/migrations").await?;
    if args.json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .migrations
        .iter()
        .map(|m| {
            let here = format!("{}/{}", m.fleet, m.slot.map_or("-".into(), |s| s.to_string()));
            let there = format!("{}/{}", m.remote_fleet, m.remote_slot.map_or("-".into(), |s| s.to_string()));
            vec![
                m.id.clone(),
                m.direction.to_string(),
                m.peer.clone(),
                here,
                there,
                m.state.to_string(),
                m.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out!("{}", crate::output::table(&["ID", "WAY", "RACK", "HERE", "THERE", "STATE", "WHY"], &rows));
    Ok(ExitCode::SUCCESS)
}

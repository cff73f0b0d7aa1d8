//! Fleet management commands: launch, ls, status, scale, terminate, audit.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clawfleet_proto::api::{
    Ack, AgentStatus, AuditEntry, Fleet, FleetList, FleetState, FleetStatus, LaunchRequest, ScaleRequest, UpdateRequest,
};

use crate::args::{
    ArmArgs, AuditArgs, ChatArgs, ChimeArgs, Every, HaikuArgs, LaunchArgs, LeaderArgs, LsArgs, RollbackArgs, ScaleArgs, ScenarioArgs,
    ScoreboardArgs, StatusArgs, TerminateArgs, UpdateArgs,
};
use crate::client::Client;
use crate::output::{Progress, table};

pub(crate) fn print_json<T: serde::Serialize>(value: &T) {
    outln!("{}", serde_json::to_string_pretty(value).expect("API types serialize"));
}

pub(crate) async fn launch(args: LaunchArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let cluster = match &args.cluster {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading the cluster file {}", path.display()))?;
            let spec = clawfleet_proto::cluster::parse_cluster_file(&text, &args.cluster_profile)
                .with_context(|| format!("the cluster file {}", path.display()))?;
            Some(spec)
        }
        None => None,
    };
    let req = LaunchRequest {
        name: args.name.clone(),
        replicas: args.replicas,
        backend: args.backend.clone(),
        brain: args.brain.clone(),
        prompt: args.prompt.clone(),
        version: args.version.clone(),
        image: args.image.clone(),
        cluster,
        deploy: args.max_unavailable.map(|m| clawfleet_proto::api::DeployPolicy { max_unavailable: Some(m), ..Default::default() }),
        env: args.env.iter().cloned().collect(),
        secrets: args.secrets.clone(),
    };
    let mut fleet: Fleet = client.post("/api/v1/fleets", &req).await?;
    if !args.json {
        eprintln!(
            "launched fleet '{}': {} agents ({}, brain {}, version {})",
            fleet.name, fleet.replicas, fleet.backend, fleet.brain, fleet.version
        );
    }
    if args.wait {
        fleet = wait_ready(&client, &fleet.name, Duration::from_secs(args.timeout)).await?;
    }
    if args.json {
        print_json(&fleet);
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until every agent of the fleet is ready, showing progress.
async fn wait_ready(client: &Client, name: &str, timeout: Duration) -> anyhow::Result<Fleet> {
    wait_for(client, name, timeout, "are ready", &ready).await
}

pub(crate) fn ready(a: &AgentStatus) -> bool {
    matches!(a.state.as_str(), "idle" | "busy")
}

/// Polls the fleet until `done` holds for each of its agents and no agent above its replica
/// count is left (showing progress and what the backend prepares), its backend reports a
/// problem (which ends the wait at once: it will not go away by itself), or `timeout` passes;
/// `what` says what the agents are waited for.
pub(crate) async fn wait_for(
    client: &Client,
    name: &str,
    timeout: Duration,
    what: &str,
    done: &dyn Fn(&AgentStatus) -> bool,
) -> anyhow::Result<Fleet> {
    let started = Instant::now();
    let mut progress: Option<Progress> = None;
    let finish = |p: Option<Progress>| p.map(Progress::finish);
    loop {
        let status: FleetStatus = client.get(&format!("/api/v1/fleets/{name}")).await?;
        let total = status.fleet.replicas;
        let wanted = || status.agents.iter().filter(|a| a.slot < total);
        let count = wanted().filter(|a| done(a)).count() as u32;
        let bar = progress.get_or_insert_with(|| Progress::new(u64::from(total), &format!("agents {what}")));
        bar.set(u64::from(count));
        bar.note(status.fleet.preparing.as_deref());
        if let Some(problem) = &status.fleet.problem {
            finish(progress);
            bail!("fleet '{name}': {problem} ({count} of {total} agents {what})");
        }
        let extra = status.agents.iter().filter(|a| a.slot >= total).count();
        if count >= total && extra == 0 {
            finish(progress);
            eprintln!("all {total} agents of '{name}' {what} ({:.1} s)", started.elapsed().as_secs_f64());
            return Ok(status.fleet);
        }
        if started.elapsed() > timeout {
            finish(progress);
            let waiting: Vec<String> = wanted()
                .filter(|a| !done(a))
                .take(10)
                .map(|a| {
                    let version = a.fleet_version.as_deref().map(|v| format!(", version {v}")).unwrap_or_default();
                    match &a.problem {
                        Some(p) => format!("{} is {}{version} ({p})", a.id, a.state),
                        None => format!("{} is {}{version}", a.id, a.state),
                    }
                })
                .chain(status.agents.iter().filter(|a| a.slot >= total).take(10).map(|a| format!("{} is still {}", a.id, a.state)))
                .collect();
            bail!("only {count} of {total} agents of '{name}' {what} after {} s: {}", timeout.as_secs(), waiting.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let list: FleetList = args.client.client()?.get("/api/v1/fleets").await?;
    if args.json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    if list.fleets.is_empty() {
        outln!("no fleets (launch one: clawfleet launch NAME --replicas N)");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .fleets
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                format!("{}/{}", f.ready, f.replicas),
                f.state.to_string(),
                f.backend.clone(),
                f.brain.clone(),
                f.version.clone(),
                f.created_at.get(..19).unwrap_or(&f.created_at).replace('T', " "),
                match (&f.problem, &f.preparing) {
                    (Some(problem), _) => format!("problem: {problem}"),
                    (None, Some(preparing)) => format!("preparing: {preparing}"),
                    (None, None) => String::new(),
                },
            ]
        })
        .collect();
    out!("{}", table(&["NAME", "READY", "STATE", "BACKEND", "BRAIN", "VERSION", "CREATED", "NOTE"], &rows));
    Ok(ExitCode::SUCCESS)
}

fn human_bytes(b: u64) -> String {
    match b {
        0..1_048_576 => format!("{} KiB", b / 1024),
        _ => format!("{:.1} MiB", b as f64 / 1_048_576.0),
    }
}

fn human_age(ms: u64) -> String {
    if ms < 10_000 { format!("{:.1}s ago", ms as f64 / 1000.0) } else { format!("{}s ago", ms / 1000) }
}

pub(crate) async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let s: FleetStatus = args.client.client()?.get(&format!("/api/v1/fleets/{}", args.name)).await?;
    if args.json {
        print_json(&s);
        return Ok(ExitCode::SUCCESS);
    }
    let f = &s.fleet;
    outln!(
        "fleet {}: {}/{} ready, {}, backend {}, brain {}, version {}{}",
        f.name,
        f.ready,
        f.replicas,
        f.state,
        f.backend,
        f.brain,
        f.version,
        f.image.as_deref().map(|i| format!(", image {i}")).unwrap_or_default()
    );
    outln!("isolation: {}", s.isolation);
    if let Some(l) = f.leader {
        outln!("leader: agent {} (epoch {})", l.slot, l.epoch);
    }
    if !f.env.is_empty() {
        outln!("brain env: {}", f.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "));
    }
    if !f.secrets.is_empty() {
        outln!("brain secrets: {} (values never shown)", f.secrets.join(", "));
    }
    if let Some(p) = &f.problem {
        outln!("problem: {p}");
    }
    if let Some(p) = &f.preparing {
        outln!("preparing: {p}");
    }
    if let Some(c) = &f.canary {
        match c.count {
            Some(n) => outln!("canary: {n} agents (the backend's choice) on version {}", c.version),
            None => {
                let slots: Vec<String> = c.slots.iter().map(u32::to_string).collect();
                outln!("canary: agents {} on version {}", slots.join(", "), c.version);
            }
        }
    }
    if let Some(d) = &s.deploy
        && let Some(mine) = d.fleets.iter().find(|x| x.fleet == f.name)
    {
        let of = mine.gated();
        outln!(
            "deploy #{} ({}): version {} → {}, {}/{of} agents passed (by {})",
            d.id,
            d.state,
            mine.from_version,
            mine.to_version,
            mine.ready,
            d.actor
        );
    }
    let rows: Vec<Vec<String>> = s
        .agents
        .iter()
        .map(|a| {
            let dash = || "-".to_owned();
            vec![
                a.slot.to_string(),
                a.id.clone(),
                if a.armed { a.state.clone() } else { format!("{} (disarmed)", a.state) },
                a.heartbeat_age_ms.map_or_else(dash, human_age),
                a.fleet_version.clone().unwrap_or_else(dash),
                a.uptime_s.map_or_else(dash, |u| format!("{u}s")),
                a.rss_bytes.map_or_else(dash, human_bytes),
                a.load1.map_or_else(dash, |l| format!("{l:.2}")),
                a.brain.as_ref().map_or_else(dash, |b| {
                    if b.healthy { "ok".into() } else { format!("unhealthy: {}", b.detail.clone().unwrap_or_default()) }
                }),
                a.queued.to_string(),
                a.instance.clone().unwrap_or_else(dash),
                a.node.as_deref().map_or_else(dash, |n| n.chars().take(12).collect()),
                a.restarts.to_string(),
                a.problem.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &[
                "SLOT",
                "ID",
                "STATE",
                "HEARTBEAT",
                "VERSION",
                "UPTIME",
                "RSS",
                "LOAD",
                "BRAIN",
                "QUEUE",
                "INSTANCE",
                "NODE",
                "RESTARTS",
                "PROBLEM"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn scale(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let before: FleetStatus = client.get(&format!("/api/v1/fleets/{}", args.name)).await?;
    let mut fleet: Fleet = client.post(&format!("/api/v1/fleets/{}/scale", args.name), &ScaleRequest { replicas: args.replicas }).await?;
    if !args.json {
        outln!("fleet '{}': {} -> {} agents", fleet.name, before.fleet.replicas, fleet.replicas);
    }
    if args.wait {
        fleet = wait_ready(&client, &fleet.name, Duration::from_secs(args.timeout)).await?;
    }
    if args.json {
        print_json(&fleet);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn update(args: UpdateArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let req = UpdateRequest { image: args.image.clone(), version: args.version.clone() };
    let fleet: Fleet = client.post(&format!("/api/v1/fleets/{}/update", args.name), &req).await?;
    after_change(&client, fleet, "updating", args.wait, args.timeout, args.json).await
}

pub(crate) async fn arm(args: ArmArgs) -> anyhow::Result<ExitCode> {
    let req = clawfleet_proto::api::ArmRequest { armed: args.state == "on" };
    let (fleet, slot) = (&args.agent.fleet, args.agent.slot);
    let ack: Ack = args.client.client()?.post(&format!("/api/v1/fleets/{fleet}/agents/{slot}/arm"), &req).await?;
    outln!("{}", ack.message);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn chat(args: ChatArgs) -> anyhow::Result<ExitCode> {
    use clawfleet_proto::api::{ChatList, ChatMessage, ChatPost};
    let client = args.client.client()?;
    if let Some(text) = args.text {
        let m: ChatMessage = client.post(&format!("/api/v1/fleets/{}/chat", args.fleet), &ChatPost { text }).await?;
        if args.json {
            print_json(&m);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let list: ChatList = client.get(&format!("/api/v1/fleets/{}/chat?limit={}", args.fleet, args.limit)).await?;
    if args.json {
        print_json(&list);
    } else {
        for m in &list.messages {
            outln!("{} {}: {}", m.at, m.from, m.text);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn scenario(args: ScenarioArgs) -> anyhow::Result<ExitCode> {
    use clawfleet_proto::scenario::Scenarios;
    use serde_json::{Map, Value, json};
    let client = args.client.client()?;
    let path = format!("/api/v1/fleets/{}/scenarios", args.fleet);
    // A merge patch names only what changes, so a change made meanwhile elsewhere (the
    // dashboard, another operator) to another scenario is kept.
    let mut patch = Map::new();
    let every = |e: Every, key: &str, unit: u64| match e {
        Every::Off => Value::Null,
        Every::Every(d) => json!({ key: u32::try_from(d.as_secs() / unit).unwrap_or(u32::MAX) }),
    };
    let mut rps = args.rps.map(|e| every(e, "interval_seconds", 1));
    if let Some(brain) = args.rps_brain {
        match rps.get_or_insert_with(|| json!({})) {
            Value::Object(fields) => _ = fields.insert("brain".into(), brain.into()),
            _ => anyhow::bail!("--rps-brain needs the rounds on, not --rps off"),
        }
    }
    patch.extend(rps.map(|v| ("rps".to_owned(), v)));
    patch.extend(args.haiku.map(|e| ("haiku".to_owned(), every(e, "interval_minutes", 60))));
    patch.extend(args.three_words.map(|e| ("three_words".to_owned(), every(e, "interval_minutes", 60))));
    let s: Scenarios = if patch.is_empty() { client.get(&path).await? } else { client.patch(&path, &patch).await? };
    if args.json {
        print_json(&s);
    } else {
        outln!("fleet '{}' plays: {}", args.fleet, crate::output::scenarios_line(&s));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn scoreboard(args: ScoreboardArgs) -> anyhow::Result<ExitCode> {
    let view: clawfleet_proto::api::RpsView = args.client.client()?.get(&format!("/api/v1/fleets/{}/rps", args.fleet)).await?;
    if args.json {
        print_json(&view);
        return Ok(ExitCode::SUCCESS);
    }
    match (&view.scenarios.rps, &view.round) {
        (None, _) => outln!("fleet '{}' plays no Rock/Paper/Scissors (clawfleet scenario {} --rps 10s)", args.fleet, args.fleet),
        (Some(r), None) => outln!("rounds every {} s; none played yet", r.interval_seconds),
        (Some(r), Some(round)) => outln!(
            "rounds every {} s; round {}: agent {} (epoch {}) played {}, {} answered",
            r.interval_seconds,
            round.round,
            round.leader,
            round.epoch,
            round.choice.map_or("-", |c| c.as_str()),
            round.plays
        ),
    }
    if !view.scoreboard.is_empty() {
        let rows: Vec<Vec<String>> = view
            .scoreboard
            .iter()
            .map(|r| {
                vec![
                    r.slot.to_string(),
                    r.name.clone(),
                    format!("{:+}", r.score),
                    r.wins.to_string(),
                    r.draws.to_string(),
                    r.losses.to_string(),
                ]
            })
            .collect();
        out!("{}", table(&["AGENT", "NAME", "SCORE", "WON", "DRAWN", "LOST"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn haiku(args: HaikuArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/fleets/{}/haiku?limit={}", args.fleet, args.limit);
    let list: clawfleet_proto::api::HaikuList = args.client.client()?.get(&path).await?;
    if args.json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    if list.haiku.is_empty() {
        outln!("no haiku yet (clawfleet scenario {} --haiku 5m)", args.fleet);
    }
    for h in &list.haiku {
        outln!("{} by agent {} (epoch {}):", h.at, h.agent, h.epoch);
        for line in h.text.lines() {
            outln!("    {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn chime(args: ChimeArgs) -> anyhow::Result<ExitCode> {
    let req = clawfleet_proto::api::ChimeRequest { prompt: args.prompt, targets: args.agents };
    let ack: Ack = args.client.client()?.post(&format!("/api/v1/fleets/{}/chime", args.fleet), &req).await?;
    outln!("{}", ack.message);
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn leader(args: LeaderArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let fleet: Fleet = if args.slot.is_some() || args.auto {
        let req = clawfleet_proto::api::LeaderRequest { slot: args.slot };
        client.post(&format!("/api/v1/fleets/{}/leader", args.fleet), &req).await?
    } else {
        client.get::<FleetStatus>(&format!("/api/v1/fleets/{}", args.fleet)).await?.fleet
    };
    if args.json {
        print_json(&fleet);
        return Ok(ExitCode::SUCCESS);
    }
    match fleet.leader {
        Some(l) => outln!("fleet '{}': agent {} leads (epoch {})", fleet.name, l.slot, l.epoch),
        None => outln!("fleet '{}': no leader (no agent is healthy)", fleet.name),
    }
    if let Some(p) = fleet.leader_preferred {
        outln!("preferred: agent {p} (leads while it is healthy)");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    if args.name != "all" {
        let fleet: Fleet = client.post(&format!("/api/v1/fleets/{}/rollback", args.name), &serde_json::json!({})).await?;
        return after_change(&client, fleet, "rolling back", false, 0, args.json).await;
    }
    // Every fleet that has a version to return to; the others are named and left alone.
    let list: FleetList = client.get("/api/v1/fleets").await?;
    let mut moved = Vec::new();
    for f in list.fleets.iter().filter(|f| f.state == FleetState::Active) {
        if f.rollback_to.is_none() {
            if !args.json {
                eprintln!("fleet '{}': nothing to roll back to (it runs version {})", f.name, f.version);
            }
            continue;
        }
        let fleet: Fleet = client.post(&format!("/api/v1/fleets/{}/rollback", f.name), &serde_json::json!({})).await?;
        if !args.json {
            eprintln!("fleet '{}': rolling back to version {}, one agent at a time", fleet.name, fleet.version);
        }
        moved.push(fleet);
    }
    if args.json {
        print_json(&FleetList { fleets: moved });
    }
    Ok(ExitCode::SUCCESS)
}

async fn after_change(client: &Client, fleet: Fleet, doing: &str, wait: bool, timeout: u64, json: bool) -> anyhow::Result<ExitCode> {
    if !json {
        let image = fleet.image.as_deref().map(|i| format!("image {i}, ")).unwrap_or_default();
        eprintln!("fleet '{}': {doing} to {image}version {}, one agent at a time", fleet.name, fleet.version);
    }
    let fleet = if wait { wait_version(client, &fleet.name, &fleet.version, Duration::from_secs(timeout)).await? } else { fleet };
    if json {
        print_json(&fleet);
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits until every agent runs `version` and is ready, or the backend reports the update
/// rolled back.
async fn wait_version(client: &Client, name: &str, version: &str, timeout: Duration) -> anyhow::Result<Fleet> {
    let runs = |a: &AgentStatus| ready(a) && a.fleet_version.as_deref() == Some(version);
    wait_for(client, name, timeout, &format!("run version {version}"), &runs).await
}

pub(crate) async fn terminate(args: TerminateArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let ack: Ack = client.delete(&format!("/api/v1/fleets/{}", args.name)).await?;
    if args.wait {
        let started = Instant::now();
        loop {
            match client.get::<FleetStatus>(&format!("/api/v1/fleets/{}", args.name)).await {
                Err(e) if crate::client::is_not_found(&e) => break,
                Err(e) => return Err(e),
                Ok(s) if started.elapsed() > Duration::from_secs(args.timeout) => {
                    bail!("fleet '{}' still has {} agents after {} s", args.name, s.agents.len(), args.timeout)
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    if args.json {
        print_json(&ack);
    } else if args.wait {
        outln!("fleet '{}' terminated", args.name);
    } else {
        outln!("{}", ack.message);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let entries: Vec<AuditEntry> = args.client.client()?.get(&format!("/api/v1/audit?limit={}", args.limit)).await?;
    if args.json {
        print_json(&entries);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = entries
        .into_iter()
        .map(|e| vec![e.at.get(..19).unwrap_or(&e.at).replace('T', " "), e.actor, e.action, e.target, e.detail])
        .collect();
    out!("{}", table(&["AT", "WHO", "ACTION", "TARGET", "DETAIL"], &rows));
    Ok(ExitCode::SUCCESS)
}

//! `clawfleet council open|status|list|close`: a fleet's councils (seed 002).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clawfleet_proto::council::{CouncilList, CouncilOpen, CouncilState, CouncilView};

use crate::args::{CouncilCloseArgs, CouncilCommand, CouncilListArgs, CouncilOpenArgs, CouncilStatusArgs};
use crate::client::Client;
use crate::fleet::print_json;
use crate::output::{Progress, table};

pub(crate) async fn run(command: CouncilCommand) -> anyhow::Result<ExitCode> {
    match command {
        CouncilCommand::Open(a) => open(a).await,
        CouncilCommand::Status(a) => status(a).await,
        CouncilCommand::List(a) => list(a).await,
        CouncilCommand::Close(a) => close(a).await,
    }
}

/// "14:02:03" of an RFC 3339 stamp.
fn clock(at: &str) -> &str {
    at.get(11..19).unwrap_or(at)
}

fn print(c: &CouncilView) {
    let held = c.seats.iter().filter(|s| s.slot.is_some()).count();
    outln!("council {} of {}: {} ({held}/{} roles held)", c.id, c.fleet, c.state, c.seats.len());
    let until = match c.state {
        CouncilState::Open => format!(", fails at {} without its core roles", clock(&c.deadline)),
        _ => c.ended_at.as_deref().map(|e| format!(", ended {}", clock(e))).unwrap_or_default(),
    };
    outln!("opened {} by {}{until}", clock(&c.opened_at), c.by);
    if !c.brief.is_empty() {
        outln!("brief: {}", c.brief);
    }
    let rows: Vec<Vec<String>> = c
        .seats
        .iter()
        .map(|s| {
            vec![
                s.role.clone(),
                if s.core { "yes" } else { "" }.to_owned(),
                s.slot.map_or("-".to_owned(), |slot| slot.to_string()),
                s.since.as_deref().map(clock).unwrap_or("").to_owned(),
                s.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out!("{}", table(&["ROLE", "CORE", "AGENT", "SINCE", "REASON"], &rows));
}

async fn open(args: CouncilOpenArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let timeout_seconds = u32::try_from(args.timeout.as_secs()).unwrap_or(u32::MAX);
    let req = CouncilOpen { roles: args.roles, core: args.core, timeout_seconds: Some(timeout_seconds), brief: args.brief };
    let mut council: CouncilView = client.post(&format!("/api/v1/fleets/{}/councils", args.fleet), &req).await?;
    if args.wait {
        council = wait(&client, council).await?;
    }
    if args.json {
        print_json(&council);
    } else {
        print(&council);
    }
    Ok(match council.state {
        CouncilState::Failed if args.wait => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}

/// Polls a council until it is no longer open, showing how many core roles are held.
async fn wait(client: &Client, mut council: CouncilView) -> anyhow::Result<CouncilView> {
    let core = council.seats.iter().filter(|s| s.core).count() as u64;
    let mut progress = Progress::new(core, "core roles held");
    while council.state == CouncilState::Open {
        progress.set(council.seats.iter().filter(|s| s.core && s.slot.is_some()).count() as u64);
        tokio::time::sleep(Duration::from_millis(300)).await;
        council = client.get(&format!("/api/v1/fleets/{}/councils/{}", council.fleet, council.id)).await?;
    }
    progress.set(council.seats.iter().filter(|s| s.core && s.slot.is_some()).count() as u64);
    progress.finish();
    Ok(council)
}

/// The council `id`, or the fleet's newest.
async fn find(client: &Client, fleet: &str, id: Option<u64>) -> anyhow::Result<CouncilView> {
    if let Some(id) = id {
        return client.get(&format!("/api/v1/fleets/{fleet}/councils/{id}")).await;
    }
    let list: CouncilList = client.get(&format!("/api/v1/fleets/{fleet}/councils")).await?;
    match list.councils.into_iter().next() {
        Some(c) => Ok(c),
        None => bail!("fleet '{fleet}' has no council (open one: clawfleet council open {fleet} --roles ...)"),
    }
}

async fn status(args: CouncilStatusArgs) -> anyhow::Result<ExitCode> {
    let council = find(&args.client.client()?, &args.fleet, args.id).await?;
    if args.json {
        print_json(&council);
    } else {
        print(&council);
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: CouncilListArgs) -> anyhow::Result<ExitCode> {
    let list: CouncilList = args.client.client()?.get(&format!("/api/v1/fleets/{}/councils", args.fleet)).await?;
    if args.json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    if list.councils.is_empty() {
        outln!("fleet '{}' has no council", args.fleet);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .councils
        .iter()
        .map(|c| {
            let held: Vec<String> =
                c.seats.iter().map(|s| format!("{}={}", s.role, s.slot.map_or("-".to_owned(), |slot| slot.to_string()))).collect();
            vec![c.id.to_string(), c.state.to_string(), clock(&c.opened_at).to_owned(), held.join(" ")]
        })
        .collect();
    out!("{}", table(&["ID", "STATE", "OPENED", "ROLES"], &rows));
    Ok(ExitCode::SUCCESS)
}

async fn close(args: CouncilCloseArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let id = match args.id {
        Some(id) => id,
        None => find(&client, &args.fleet, None).await?.id,
    };
    let council: CouncilView = client.post(&format!("/api/v1/fleets/{}/councils/{id}/close", args.fleet), &serde_json::json!({})).await?;
    if args.json {
        print_json(&council);
    } else {
        outln!("council {} of {} closed", council.id, council.fleet);
    }
    Ok(ExitCode::SUCCESS)
}

//! Talking to agents: inject (optionally waiting for the answers), attach, logs, command.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clawfleet_proto::api::{CommandRequest, CommandResponse, InjectRequest, InjectResponse, InjectionStatus};
use clawfleet_proto::event::Event;
use futures_util::StreamExt;

use crate::args::{AttachArgs, CommandArgs, InjectArgs, LogsArgs, MonitorArgs};
use crate::output::{EventPrinter, Progress, table};

pub(crate) async fn inject(args: InjectArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let prompt = if args.prompt == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the prompt from stdin")?;
        text
    } else {
        args.prompt.clone()
    };
    let req =
        InjectRequest { prompt, agents: (!args.agents.is_empty()).then(|| args.agents.clone()), role: args.role.clone(), request_id: None };
    let resp: InjectResponse = client.post(&format!("/api/v1/fleets/{}/inject", args.name), &req).await?;
    if !args.wait {
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&resp)?);
        } else {
            outln!("{}", resp.injection_id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("injection {} queued for {} agents of '{}'", resp.injection_id, resp.targets.len(), resp.fleet);

    // Follow the injection's events from its first ack until every target has ended its turn.
    // Scoped to the fleet too, so a token bound to that fleet may follow it.
    let query = [
        ("fleet", resp.fleet.clone()),
        ("injection", resp.injection_id.clone()),
        ("since", resp.first_event_id.saturating_sub(1).to_string()),
        ("follow", "true".to_owned()),
    ];
    let mut events = Box::pin(client.events(&query).await?);
    let mut done: BTreeSet<u32> = BTreeSet::new();
    let mut progress = Progress::new(resp.targets.len() as u64, "agents answered");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    while done.len() < resp.targets.len() {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(e)) => {
                let e = e?;
                if e.body.is_terminal() {
                    done.extend(e.agent);
                    progress.set(done.len() as u64);
                }
            }
            Ok(None) => bail!("the event stream ended before every agent answered"),
            Err(_) => {
                progress.finish();
                let waiting: Vec<String> =
                    resp.targets.iter().filter(|t| !done.contains(t)).map(|t| format!("{}/{t}", resp.fleet)).collect();
                bail!("timed out after {} s waiting for {}", args.timeout, waiting.join(", "));
            }
        }
    }
    progress.finish();
    let status: InjectionStatus = client.get(&format!("/api/v1/injections/{}", resp.injection_id)).await?;
    let failed = status.agents.iter().any(|a| a.state != "complete");
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        for a in &status.agents {
            match (&a.answer, &a.error) {
                (_, Some(err)) => outln!("{}/{} failed: {err}", status.fleet, a.agent),
                (Some(answer), None) => outln!("{}/{}: {}", status.fleet, a.agent, answer.trim()),
                (None, None) => outln!("{}/{}: ({})", status.fleet, a.agent, a.state),
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn stream(client: &crate::client::Client, query: Vec<(&str, String)>, json: bool) -> anyhow::Result<ExitCode> {
    let mut events = Box::pin(client.events(&query).await?);
    let mut printer = EventPrinter::default();
    let stdout = std::io::stdout();
    loop {
        let next = tokio::select! {
            e = events.next() => e,
            () = crate::shutdown_signal() => return Ok(ExitCode::SUCCESS),
        };
        let Some(e) = next else { return Ok(ExitCode::SUCCESS) };
        let e: Event = e?;
        let mut out = stdout.lock();
        let written = if json { writeln!(out, "{}", serde_json::to_string(&e)?) } else { printer.print(&e, &mut out) };
        // A closed pipe (`| head`) ends the command quietly.
        if written.and_then(|()| out.flush()).is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

pub(crate) async fn attach(args: AttachArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    // Fail now, with the API's message, for a fleet that does not exist.
    let _: clawfleet_proto::api::FleetStatus = client.get(&format!("/api/v1/fleets/{}", args.name)).await?;
    let mut query = vec![("fleet", args.name.clone()), ("follow", "true".to_owned())];
    query.extend(args.agent.map(|a| ("agent", a.to_string())));
    query.extend(args.since.map(|s| ("since", s.to_string())));
    stream(&client, query, args.json).await
}

pub(crate) async fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let mut query = vec![("fleet", args.name.clone()), ("since", args.since.to_string()), ("follow", args.follow.to_string())];
    query.extend(args.agent.map(|a| ("agent", a.to_string())));
    stream(&client, query, args.json).await
}

pub(crate) async fn command(args: CommandArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let req = CommandRequest {
        command: args.command.clone(),
        agents: (!args.agents.is_empty()).then(|| args.agents.clone()),
        timeout_ms: Some(args.timeout * 1000),
    };
    let resp: CommandResponse = client.post(&format!("/api/v1/fleets/{}/command", args.name), &req).await?;
    let all_ok = resp.pending.is_empty() && resp.results.iter().all(|r| r.ok);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        let mut rows: Vec<Vec<String>> = resp
            .results
            .iter()
            .map(|r| {
                let detail = match &r.error {
                    Some(e) => e.clone(),
                    None => r.result.to_string(),
                };
                vec![format!("{}/{}", args.name, r.agent), if r.ok { "ok".into() } else { "error".into() }, detail]
            })
            .collect();
        rows.extend(
            resp.pending
                .iter()
                .map(|p| vec![format!("{}/{p}", args.name), "pending".into(), "no reply yet; it stays queued for the agent".into()]),
        );
        out!("{}", table(&["AGENT", "STATUS", "REPLY"], &rows));
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `monitor`: a health-check of every agent, reported the way the hatchery fleet monitor
/// reports it (`{"status":"healthy"|"unhealthy","results":[{"name","healthy","http_status"}]}`),
/// so the scripts and alerts built on it keep working. Exit status 1 when anything is unhealthy.
pub(crate) async fn monitor(args: MonitorArgs) -> anyhow::Result<ExitCode> {
    let outcome = async {
        let client = args.client.client()?;
        let fleets: Vec<String> = match &args.name {
            Some(name) => vec![name.clone()],
            None => {
                let list: clawfleet_proto::api::FleetList = client.get("/api/v1/fleets").await?;
                list.fleets
                    .into_iter()
                    .filter(|f| f.state == clawfleet_proto::api::FleetState::Active && f.replicas > 0)
                    .map(|f| f.name)
                    .collect()
            }
        };
        let mut results = Vec::new();
        for fleet in fleets {
            let req = CommandRequest { command: "health-check".into(), agents: None, timeout_ms: Some(args.timeout * 1000) };
            let resp: CommandResponse = client.post(&format!("/api/v1/fleets/{fleet}/command"), &req).await?;
            for r in resp.results {
                let healthy = r.ok && r.result["healthy"] == true;
                results.push((
                    format!("{fleet}/{}", r.agent),
                    healthy,
                    r.error.or_else(|| r.result["brain"]["detail"].as_str().map(str::to_owned)),
                ));
            }
            results.extend(resp.pending.into_iter().map(|p| (format!("{fleet}/{p}"), false, Some("no reply".to_owned()))));
        }
        anyhow::Ok(results)
    }
    .await;
    let results = match outcome {
        Ok(r) => r,
        Err(e) if args.json => {
            outln!("{}", serde_json::json!({"status": "error", "message": format!("{e:#}")}));
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e),
    };
    let all_healthy = results.iter().all(|r| r.1);
    if args.json {
        let body = if results.is_empty() {
            serde_json::json!({"status": "ok", "message": "no running instances", "results": []})
        } else {
            let rows: Vec<_> = results
                .iter()
                .map(|(name, healthy, _)| serde_json::json!({"name": name, "healthy": healthy, "http_status": if *healthy { 200 } else { 503 }}))
                .collect();
            serde_json::json!({"status": if all_healthy { "healthy" } else { "unhealthy" }, "results": rows})
        };
        outln!("{body}");
    } else if results.is_empty() {
        outln!("No running instances to monitor.");
    } else {
        for (name, healthy, why) in &results {
            if !healthy {
                outln!("{name} UNHEALTHY ({})", why.as_deref().unwrap_or("unhealthy"));
            }
        }
        if all_healthy {
            outln!("All {} agents healthy", results.len());
        }
    }
    Ok(if all_healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

//! What security costs: the agent sandbox on agent start (100 local agents launched with
//! `--agent-sandbox off` and with Landlock, alternately, on fresh control planes), and token
//! checks on API latency (the same status request with a stored token, looked up by hash, and
//! with an agent's derived token, checked by HMAC, beside `/healthz`, which checks none).

use std::time::{Duration, Instant};

use anyhow::Context;
use clawfleet_cli::client::Client;
use clawfleet_proto::api::{FleetStatus, JoinResponse};

use crate::{Args, Plane, Row, median, percentile};

pub(crate) async fn run(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    sandbox_cost(a, rows).await?;
    let request_p50_us = token_cost(a, rows).await?;
    check_alone(a, request_p50_us, rows);
    Ok(())
}

/// The checks themselves, in this process: what each request pays for its token.
fn check_alone(a: &Args, request_p50_us: f64, rows: &mut Vec<Row>) {
    use clawfleet_bus::{BusSecret, FleetAuth};
    let n: u32 = if a.quick { 20_000 } else { 200_000 };
    let auth = FleetAuth::new(BusSecret::generate());
    auth.allow_fleet("lat", "u1");
    let agent: clawfleet_core::AgentRef = "lat/0".parse().expect("valid");
    let agent_token = auth.agent_token(&agent).expect("the fleet exists");
    let stored = format!("cft_{}", "ab".repeat(32));
    let table: std::collections::HashMap<String, ()> = [(clawfleet_bus::credentials::token_hash(&stored), ())].into();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(table.get(&clawfleet_bus::credentials::token_hash(std::hint::black_box(&stored))));
    }
    let per_stored = t.elapsed().as_secs_f64() * 1e9 / f64::from(n);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(auth.check_agent_token(std::hint::black_box(&agent_token)));
    }
    let per_agent = t.elapsed().as_secs_f64() * 1e9 / f64::from(n);
    rows.push(Row {
        name: "one token check alone (stored: SHA-256 and lookup; agent: HMAC-SHA256)",
        result: format!("stored {per_stored:.0} ns, agent {per_agent:.0} ns"),
        goal: "side by side",
        notes: format!(
            "{n} checks each in one thread; the slower is {:.2} % of the stored-token request's p50 above",
            100.0 * per_agent.max(per_stored) / 1000.0 / request_p50_us
        ),
    });
}

async fn sandbox_cost(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let runs = if a.quick { 1 } else { 5 };
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for run in 0..runs {
        for (mode, samples) in [("off", &mut off), ("landlock", &mut on)] {
            let plane = Plane::start_args(&a.bin, 2000, &["--agent-sandbox", mode]).await?;
            let name = format!("s{run}");
            let t0 = Instant::now();
            plane.launch(&name, 100, "local").await?;
            plane.wait_ready(&name, 100, Duration::from_secs(180)).await?;
            samples.push(t0.elapsed().as_secs_f64());
            plane.stop().await;
        }
    }
    let list = |v: &[f64]| v.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ");
    let (m_off, m_on) = (median(off.clone()), median(on.clone()));
    rows.push(Row {
        name: "launch 100 local agents until all report ready, no sandbox (`--agent-sandbox off`)",
        result: format!("{m_off:.2} s"),
        goal: "side by side",
        notes: format!("median of {runs}: {}", list(&off)),
    });
    rows.push(Row {
        name: "launch 100 local agents until all report ready, Landlock sandbox (the default)",
        result: format!("{m_on:.2} s"),
        goal: "side by side",
        notes: format!(
            "median of {runs}: {}; ratio sandboxed/unsandboxed {:.2}; each agent builds its ruleset (every sibling on the way to the data directory) and runs brains through `brain-exec`",
            list(&on),
            m_on / m_off
        ),
    });
    Ok(())
}

/// Returns the stored-token request's p50, in µs.
async fn token_cost(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<f64> {
    let n = if a.quick { 300 } else { 3000 };
    let plane = Plane::start(&a.bin, 2000, None).await?;
    plane.launch("lat", 1, "external").await?;
    let join: JoinResponse = plane.client.get("/api/v1/fleets/lat/join?slots=0").await?;
    let agent_token = join.agents[0].token.clone().context("the join endpoint gave no agent token")?;
    let agent = Client::new(&plane.url, &agent_token)?;
    let http = reqwest::Client::new();
    let healthz = format!("{}/healthz", plane.url);
    let (mut stored, mut derived, mut none) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        let _: FleetStatus = plane.client.get("/api/v1/fleets/lat").await?;
        stored.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        let _: FleetStatus = agent.get("/api/v1/fleets/lat").await?;
        derived.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        http.get(&healthz).send().await?.error_for_status()?.bytes().await?;
        none.push(t.elapsed().as_secs_f64() * 1e6);
    }
    plane.stop().await;
    let show = |v: &mut Vec<f64>| format!("p50 {:.0} µs, p99 {:.0} µs", percentile(v, 0.5), percentile(v, 0.99));
    let (s50, d50, h50) = (median(stored.clone()), median(derived.clone()), median(none.clone()));
    rows.push(Row {
        name: "API request with a stored token (`GET /api/v1/fleets/F`, operator)",
        result: show(&mut stored),
        goal: "side by side",
        notes: format!("{n} requests, interleaved with the two below; the check is a SHA-256 and a map lookup"),
    });
    rows.push(Row {
        name: "API request with an agent's derived token (same request)",
        result: show(&mut derived),
        goal: "side by side",
        notes: format!("checked by recomputing its HMAC; ratio of p50s derived/stored {:.2}", d50 / s50),
    });
    rows.push(Row {
        name: "`/healthz`, no token checked",
        result: show(&mut none),
        goal: "side by side",
        notes: format!(
            "the floor of an HTTP round trip here; stored-token request p50 minus this: {:.0} µs (the check and the status handler)",
            s50 - h50
        ),
    });
    Ok(s50)
}

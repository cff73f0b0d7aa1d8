//! clawbucket at scale (issue #13): an external fleet of 1,000 joined agents (`agent --join
//! --count`, heartbeats every 2 s), playing Rock/Paper/Scissors; each round measured from the
//! leader's move (its `led_at`) until the last of the 999 players' scores is stored. Then the
//! dashboard in headless Chromium (Debian's chromium-driver) at 100 and 1,000 agents: time from
//! loading the page to every tile rendered, and while every agent heartbeats, what the page
//! receives a second and the frames a second it draws.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clawfleet_proto::api::RpsView;

use crate::{Args, Plane, Row, percentile};

#[path = "../../cli/tests/it/webdriver.rs"]
#[allow(dead_code, unreachable_pub)]
mod webdriver;

pub(crate) async fn run(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let plane = Plane::start(&a.bin, 2000, None).await?;
    for (n, fleet) in [(100u32, "hundred"), (1000, "army")] {
        plane.launch(fleet, n, "external").await?;
        let mut agents = Command::new(&a.bin)
            .args(["agent", "--join", fleet, "--count", &n.to_string(), "--data"])
            .arg(&plane.data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        plane.wait_ready(fleet, n, Duration::from_secs(180)).await?;
        let result = async {
            if n == 1000 {
                rps_rounds(a, &plane, fleet, rows).await?;
            }
            dashboard(a, &plane, fleet, n, rows).await
        }
        .await;
        let _ = agents.kill();
        let _ = agents.wait();
        plane.terminate(fleet).await?;
        result?;
    }
    Ok(())
}

fn millis(at: &str) -> anyhow::Result<f64> {
    let t = humantime::parse_rfc3339_weak(at).with_context(|| format!("a time: {at}"))?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64() * 1000.0)
}

fn now_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

/// Rounds every 5 s; each from the leader's move to its 999th stored score.
async fn rps_rounds(a: &Args, plane: &Plane, fleet: &str, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let rounds = if a.quick { 3 } else { 10 };
    let body = serde_json::json!({"rps": {"interval_seconds": 5}});
    let _: serde_json::Value = plane.client.put(&format!("/api/v1/fleets/{fleet}/scenarios"), &body).await?;
    let path = format!("/api/v1/fleets/{fleet}/rps");
    let (mut took, mut seen) = (Vec::new(), 0u64);
    let deadline = Instant::now() + Duration::from_secs(60 + rounds * 10);
    while took.len() < rounds as usize {
        if Instant::now() > deadline {
            bail!("only {} rounds were played by all 999 players in time", took.len());
        }
        let v: RpsView = plane.client.get(&path).await?;
        if let Some(r) = v.round.filter(|r| r.round > seen && r.plays >= 999)
            && let Some(led) = &r.led_at
        {
            seen = r.round;
            took.push(now_ms() - millis(led)?);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _: serde_json::Value = plane.client.put(&format!("/api/v1/fleets/{fleet}/scenarios"), &serde_json::json!({})).await?;
    let (p50, p99) = (percentile(&mut took, 0.5), percentile(&mut took, 0.99));
    rows.push(Row {
        name: "an RPS round at 1,000 agents: the leader's move until the 999th player's score is stored",
        result: format!("p50 {p50:.0} ms, p99 {p99:.0} ms over {rounds} rounds"),
        goal: "well within the round's interval (5 s here; clawbucket's default 10 s)",
        notes: "one message on the fleet's topic asks the 999 players; each move is judged and scored in the ingest transaction that stores it; polled every 10 ms (add up to 10 ms); clawbucket has no figure to compare: its players poll memcached every interval".into(),
    });
    Ok(())
}

/// The page at `n` agents: first render of every tile, then 20 s of heartbeats.
async fn dashboard(a: &Args, plane: &Plane, fleet: &str, n: u32, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let url = format!("{}/#token={}", plane.url, std::fs::read_to_string(plane.data.join("token"))?.trim());
    let fleet = fleet.to_owned();
    let watch_s = if a.quick { 10 } else { 20 };
    let (render_ms, bytes_s, fps) = tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, f64, f64)> {
        let browser = webdriver::Driver::start(1600, 1000);
        // A fresh page with the token in its address; every tile counted.
        let t0 = Instant::now();
        browser.go(&url);
        let deadline = t0 + Duration::from_secs(120);
        loop {
            let count = browser.run(&format!(
                "return document.querySelectorAll('.tile').length === {n} && document.getElementById('fleet-title').textContent.includes('{fleet}');"
            ));
            if count == true {
                break;
            }
            if Instant::now() > deadline {
                bail!("the page did not show {n} tiles in 120 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let render_ms = t0.elapsed().as_secs_f64() * 1000.0;
        // What the page receives (resource timing: every API answer it completed) and the
        // frames it draws, while every agent heartbeats.
        browser.run(
            "window.__frames = 0; performance.clearResourceTimings(); performance.setResourceTimingBufferSize(100000);
             (function tick() { window.__frames++; requestAnimationFrame(tick); })();",
        );
        std::thread::sleep(Duration::from_secs(watch_s));
        let v = browser.run(
            "return [window.__frames, performance.getEntriesByType('resource').reduce((s, e) => s + (e.encodedBodySize || 0), 0)];",
        );
        let frames = v[0].as_f64().unwrap_or(0.0);
        let bytes = v[1].as_f64().unwrap_or(0.0);
        Ok((render_ms, bytes / watch_s as f64, frames / watch_s as f64))
    })
    .await??;
    rows.push(Row {
        name: if n == 1000 { "dashboard at 1,000 agents (Chromium)" } else { "dashboard at 100 agents (Chromium)" },
        result: format!("every tile in {render_ms:.0} ms; then {:.0} KB/s, {fps:.0} frames/s", bytes_s / 1000.0),
        goal: "all tiles in seconds; bounded bytes and frames a second",
        notes: format!(
            "{n} joined agents heartbeating every 2 s, page {}×{} px; the page polls the fleet's status every max(1 s, 2 ms an agent) and writes only what changed; bytes are the API answers it completed in {watch_s} s (the event stream comes on top: no events while agents only heartbeat); frames counted with requestAnimationFrame (headless, 60 Hz at most)",
            1600, 1000
        ),
    });
    Ok(())
}

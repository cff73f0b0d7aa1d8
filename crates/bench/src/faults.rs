//! Faults (issue #16): the control plane killed with SIGKILL at points of a fixed pseudo-random
//! schedule while a client injects as fast as it is answered, then started again on the same
//! data directory. Counted at the end, from the stored events: injections the API accepted
//! (answered 202) that never completed (lost), turns that ran twice for one agent (duplicated),
//! and how long each restart took until the API accepted an injection again.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clawfleet_cli::client::Client;
use clawfleet_proto::api::{InjectRequest, InjectResponse};

use crate::{Args, Row, free_port, percentile};

const TRIALS: usize = 50;
const AGENTS: u32 = 4;

/// The same schedule every run (xorshift64).
struct Schedule(u64);

impl Schedule {
    /// Milliseconds in `lo..hi`.
    fn next(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo)
    }
}

struct Up {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    http: u16,
    mqtt: u16,
}

impl Up {
    fn spawn(&self) -> anyhow::Result<Child> {
        Command::new(&self.bin)
            .args(["up", "--data"])
            .arg(self.dir.path())
            .args(["--http", &format!("127.0.0.1:{}", self.http), "--mqtt-listen", &format!("127.0.0.1:{}", self.mqtt)])
            .args(["--no-model", "--heartbeat-ms", "500"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting clawfleet up")
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }
}

async fn inject(client: &Client, slot: u32, n: usize) -> anyhow::Result<InjectResponse> {
    let req = InjectRequest { prompt: format!("job {n}"), agents: Some(vec![slot]), role: None, request_id: None };
    client.post("/api/v1/fleets/faults/inject", &req).await
}

pub(crate) async fn run(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let trials = if a.quick { 10 } else { TRIALS };
    let up = Up { bin: a.bin.clone(), dir: tempfile::tempdir()?, http: free_port(), mqtt: free_port() };
    let mut child = up.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !up.dir.path().join("server.json").exists() {
        if Instant::now() > deadline {
            bail!("the control plane did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = std::fs::read_to_string(up.dir.path().join("token"))?;
    let client = Client::new(&up.url(), token.trim())?;
    let launch = clawfleet_proto::api::LaunchRequest {
        name: "faults".into(),
        replicas: AGENTS,
        backend: Some("local".into()),
        brain: Some("echo".into()),
        ..Default::default()
    };
    let _: serde_json::Value = client.post("/api/v1/fleets", &launch).await?;
    let ready = Instant::now() + Duration::from_secs(60);
    loop {
        let list: clawfleet_proto::api::FleetList = client.get("/api/v1/fleets").await?;
        if list.fleets.iter().any(|f| f.name == "faults" && f.ready >= AGENTS) {
            break;
        }
        if Instant::now() > ready {
            bail!("the fleet was not ready in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let accepted: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let mut schedule = Schedule(0x5eed_cafe_f00d);
    let mut back = Vec::new();
    let mut n = 0;
    for _ in 0..trials {
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = {
            let (client, accepted, stop) = (client.clone(), accepted.clone(), stop.clone());
            let start = n;
            tokio::spawn(async move {
                let mut i = start;
                while !stop.load(Ordering::Relaxed) {
                    let slot = (i % AGENTS as usize) as u32;
                    match inject(&client, slot, i).await {
                        Ok(r) => accepted.lock().unwrap().push((r.injection_id, slot)),
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                    i += 1;
                }
                i
            })
        };
        tokio::time::sleep(Duration::from_millis(schedule.next(100, 1500))).await;
        let _ = child.kill();
        let _ = child.wait();
        let killed = Instant::now();
        child = up.spawn()?;
        // Back when the API accepts an injection again.
        loop {
            if inject(&client, 0, usize::MAX).await.is_ok_and(|r| {
                accepted.lock().unwrap().push((r.injection_id, 0));
                true
            }) {
                break;
            }
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("the control plane did not serve again within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        back.push(killed.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        n = traffic.await?;
    }

    // Every accepted injection, answered once by its agent?
    let accepted = accepted.lock().unwrap().clone();
    let drain = Instant::now() + Duration::from_secs(120);
    let (lost, duplicated) = loop {
        let params = [("fleet", "faults".to_owned()), ("since", "0".to_owned()), ("follow", "false".to_owned())];
        let mut stream = Box::pin(client.events(&params).await?);
        let mut turns: std::collections::HashMap<(String, u32), (u32, u32)> = std::collections::HashMap::new();
        use futures_util::StreamExt;
        while let Some(e) = stream.next().await {
            let e = e?;
            let (Some(id), Some(agent)) = (e.injection_id.clone(), e.agent) else { continue };
            let entry = turns.entry((id, agent)).or_default();
            match e.body.name() {
                "turn_started" => entry.0 += 1,
                "turn_complete" => entry.1 += 1,
                _ => {}
            }
        }
        let lost = accepted.iter().filter(|(id, slot)| turns.get(&(id.clone(), *slot)).is_none_or(|t| t.1 == 0)).count();
        let duplicated = turns.values().filter(|(started, done)| *started > 1 || *done > 1).count();
        if lost == 0 || Instant::now() > drain {
            break (lost, duplicated);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    // Agents the killed control planes left are adopted by the next one; the last one's go now.
    kill_agents(up.dir.path());
    rows.push(Row {
        name: "kill -9 of the control plane during injection traffic",
        result: format!(
            "{trials} kills: {lost} of {} accepted injections lost, {duplicated} turns run twice; back serving p50 {:.0} ms, p99 {:.0} ms",
            accepted.len(),
            percentile(&mut back.clone(), 0.5),
            percentile(&mut back, 0.99)
        ),
        goal: "0 lost, 0 twice",
        notes: format!(
            "a client injects into a {AGENTS}-agent local echo fleet (one agent each, round robin) as fast as it is answered; the \
             control plane is SIGKILLed after 100-1500 ms (a fixed pseudo-random schedule) and started again on the same data \
             directory; back serving is from the kill until the API accepts an injection again. Lost: answered 202 and never \
             turn_complete; twice: an agent's turn_started or turn_complete stored twice for one injection"
        ),
    });
    Ok(())
}

/// Kills the agents a control plane in `data` left (their pid files).
fn kill_agents(data: &std::path::Path) {
    for fleet in std::fs::read_dir(data.join("agents")).into_iter().flatten().flatten() {
        for slot in std::fs::read_dir(fleet.path()).into_iter().flatten().flatten() {
            if let Some(pid) =
                std::fs::read_to_string(slot.path().join("agent.pid")).ok().and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok())
            {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

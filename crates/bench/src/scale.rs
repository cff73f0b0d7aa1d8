//! Scale (issue #16): 10,000 simulated agents (`agent --join --count`, in four processes) on one
//! control plane, heartbeating every 2 s (5,000 heartbeats a second): the control plane's CPU
//! and memory in that steady state, a broadcast to all of them until every one has taken it,
//! and inject → turn_complete to one local agent while that load runs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::projects::Agents;
use crate::{Args, Plane, Row, ack_to_delivered, cpu_seconds, median, round_trips, rss_mib};

const AGENTS: u32 = 10_000;
const PROCESSES: u32 = 4;

pub(crate) async fn run(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n = if a.quick { 2_000 } else { AGENTS };
    let plane = Plane::start(&a.bin, 2000, None).await?;
    plane.launch("sim", n, "external").await?;
    let per = n / PROCESSES;
    let t0 = Instant::now();
    let mut agents = Agents(Vec::new());
    for p in 0..PROCESSES {
        let child = Command::new(&a.bin)
            .args(["agent", "--join", "sim", "--slot", &(p * per).to_string(), "--count", &per.to_string(), "--data"])
            .arg(&plane.data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        agents.0.push(child);
    }
    plane.wait_ready("sim", n, Duration::from_secs(600)).await?;
    let join_s = t0.elapsed().as_secs_f64();

    // Steady state: heartbeats only.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let window = if a.quick { 10.0 } else { 30.0 };
    let cpu0 = cpu_seconds(plane.pid())?;
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(window)).await;
    let cpu = (cpu_seconds(plane.pid())? - cpu0) / w0.elapsed().as_secs_f64() * 100.0;
    let rss = rss_mib(plane.pid())?;
    let agents_rss: f64 = agents.0.iter().map(|c| rss_mib(c.id()).unwrap_or(0.0)).sum();

    // Inject → turn_complete to one agent while the heartbeats run.
    let (p50, p99) = round_trips(&plane, if a.quick { 50 } else { 200 }).await?;

    // A broadcast to every one of them, until each has taken it.
    let mut events = plane.watch("sim").await?;
    let rounds = if a.quick { 1 } else { 3 };
    let mut times = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let resp = plane.inject("sim", "everyone", None).await?;
        let pairs = ack_to_delivered(&mut events, &resp.injection_id, n as usize, Duration::from_secs(300)).await?;
        let last = pairs.iter().map(|(_, d)| *d).max().expect("n > 0");
        times.push(last.duration_since(start).as_secs_f64());
        // Let the turns' events land before the next round.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    drop(events);
    let peak = rss_mib(plane.pid())?;
    let heartbeats = f64::from(n) / 2.0;
    rows.push(Row {
        name: "control plane with 10,000 agents heartbeating every 2 s: CPU",
        result: format!("{cpu:.0} % of one core"),
        goal: "< 100 % (one core)",
        notes: format!(
            "{n} simulated agents from `agent --join --count {per}` in {PROCESSES} processes ({:.0} heartbeats/s), all ready {join_s:.0} s \
             after they started; over {window:.0} s of nothing but heartbeats, control plane process only (API, store, embedded broker)",
            heartbeats
        ),
    });
    rows.push(Row {
        name: "control plane with 10,000 agents heartbeating every 2 s: memory",
        result: format!("{rss:.0} MiB steady, {peak:.0} MiB after the broadcasts"),
        goal: "< 1 GB",
        notes: format!("VmRSS; the {PROCESSES} simulated agents' processes together: {agents_rss:.0} MiB"),
    });
    rows.push(Row {
        name: "broadcast to 10,000 simulated agents until every agent delivered",
        result: format!("{:.2} s", median(times.clone())),
        goal: "< 2 s",
        notes: format!(
            "median of {rounds}: {}; one fleet message on the bus, each agent's inject_delivered stored and streamed back",
            times.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ")
        ),
    });
    rows.push(Row {
        name: "inject to one agent while 10,000 heartbeat",
        result: format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
        goal: "p99 < 100 ms",
        notes: "inject → turn_complete of one local echo agent, sequentially, on the same control plane, while the 10,000 heartbeat".into(),
    });
    drop(agents);
    plane.stop().await;
    Ok(())
}

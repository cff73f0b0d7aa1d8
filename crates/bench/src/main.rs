//! `clawfleet-bench`: measures clawfleet with its real binaries (a control plane started with
//! `clawfleet up`, local agents, and simulated agents from `clawfleet agent --join --count N`),
//! and prints a Markdown table. Agents use the `echo` brain, which answers at once, so what is
//! measured is clawfleet itself.
//!
//! Usage: `clawfleet-bench [--bin PATH] [--quick] [--only NAME]... [--llama-cpp DIR --model GGUF]`
//! (`--only`: launch, thousand, brokers, security, deploy, leader, clawbucket, projects, snapshot, migrate, faults, scale, docker, slurm, model; `model` needs the reference
//! llama.cpp tools, `docker` a Docker Engine in Swarm mode, `slurm` a running Slurm.)
//! (`scripts/bench` builds in release mode, runs it, and writes the table into BENCHMARKS.md.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clawfleet_cli::client::Client;
use clawfleet_proto::api::{FleetList, FleetStatus, InjectRequest, InjectResponse, LaunchRequest};
use clawfleet_proto::event::Event;
use futures_util::StreamExt;
use tokio::sync::mpsc;

mod clawbucket;
mod deploy;
mod docker;
mod faults;
mod leader;
mod migrate;
mod model;
mod projects;
mod scale;
mod security;
mod slurm;
mod snapshot;

struct Args {
    bin: PathBuf,
    quick: bool,
    only: Vec<String>,
    /// The reference llama.cpp build (`llama-bench`, `llama-batched-bench`, `llama-server`).
    llama_cpp: Option<PathBuf>,
    model: Option<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut bin = std::env::current_exe()?.with_file_name("clawfleet");
    let mut quick = false;
    let mut only = Vec::new();
    let (mut llama_cpp, mut model) = (None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bin" => bin = it.next().context("--bin needs a path")?.into(),
            "--quick" => quick = true,
            "--only" => only.push(it.next().context("--only needs a name")?),
            "--llama-cpp" => llama_cpp = Some(it.next().context("--llama-cpp needs a directory")?.into()),
            "--model" => model = Some(it.next().context("--model needs a path")?.into()),
            other => bail!(
                "unknown argument '{other}' (usage: clawfleet-bench [--bin PATH] [--quick] [--only NAME]... [--llama-cpp DIR --model GGUF])"
            ),
        }
    }
    if !bin.exists() {
        bail!("no clawfleet binary at {} (build it: cargo build --release -p clawfleet-cli)", bin.display());
    }
    Ok(Args { bin, quick, only, llama_cpp, model })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A control plane process.
struct Plane {
    child: Child,
    _dir: tempfile::TempDir,
    data: PathBuf,
    /// `http://127.0.0.1:PORT`
    url: String,
    client: Client,
}

/// A control plane a failed benchmark leaves is killed with it: it would load the next ones.
impl Drop for Plane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Plane {
    async fn start(bin: &Path, heartbeat_ms: u64, bus: Option<&str>) -> anyhow::Result<Plane> {
        Plane::start_with(bin, heartbeat_ms, bus, None, &[]).await
    }

    /// A control plane with more `up` arguments.
    async fn start_args(bin: &Path, heartbeat_ms: u64, extra: &[&str]) -> anyhow::Result<Plane> {
        Plane::start_with(bin, heartbeat_ms, None, None, extra).await
    }

    /// A control plane with more `up` arguments and environment variables.
    async fn start_env(bin: &Path, heartbeat_ms: u64, extra: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Plane> {
        Plane::start_full(bin, heartbeat_ms, None, None, extra, env).await
    }

    /// `docker`: the Docker host address and the network agents join (`up --docker`).
    async fn start_with(
        bin: &Path,
        heartbeat_ms: u64,
        bus: Option<&str>,
        docker: Option<(&str, &str)>,
        extra: &[&str],
    ) -> anyhow::Result<Plane> {
        Plane::start_full(bin, heartbeat_ms, bus, docker, extra, &[]).await
    }

    async fn start_full(
        bin: &Path,
        heartbeat_ms: u64,
        bus: Option<&str>,
        docker: Option<(&str, &str)>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Plane> {
        let dir = tempfile::tempdir()?;
        let http = free_port();
        let mut cmd = Command::new(bin);
        let host = docker.map_or("127.0.0.1", |d| d.0);
        cmd.args(["up", "--data"])
            .arg(dir.path())
            .args(["--http", &format!("127.0.0.1:{http}"), "--mqtt-listen", &format!("{host}:{}", free_port())])
            .arg("--no-model")
            .args(["--heartbeat-ms", &heartbeat_ms.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(bus) = bus {
            cmd.args(["--bus", bus]);
        }
        if let Some((host, network)) = docker {
            cmd.args(["--docker", "--docker-host", host, "--docker-network", network]);
        }
        cmd.args(extra).envs(env.iter().copied());
        let child = cmd.spawn().context("starting clawfleet up")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dir.path().join("server.json").exists() {
            if Instant::now() > deadline {
                bail!("the control plane did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let token = std::fs::read_to_string(dir.path().join("token"))?;
        let url = format!("http://127.0.0.1:{http}");
        let client = Client::new(&url, token.trim())?;
        Ok(Plane { child, data: dir.path().to_owned(), _dir: dir, url, client })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn launch(&self, name: &str, replicas: u32, backend: &str) -> anyhow::Result<()> {
        self.launch_image(name, replicas, backend, None).await
    }

    async fn launch_image(&self, name: &str, replicas: u32, backend: &str, image: Option<&str>) -> anyhow::Result<()> {
        let req = LaunchRequest {
            name: name.into(),
            replicas,
            backend: Some(backend.into()),
            brain: Some("echo".into()),
            image: image.map(str::to_owned),
            ..LaunchRequest::default()
        };
        let _: serde_json::Value = self.client.post("/api/v1/fleets", &req).await?;
        Ok(())
    }

    async fn wait_ready(&self, name: &str, replicas: u32, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let list: FleetList = self.client.get("/api/v1/fleets").await?;
            if list.fleets.iter().any(|f| f.name == name && f.ready >= replicas) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("fleet {name} not ready after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn terminate(&self, name: &str) -> anyhow::Result<()> {
        let _: serde_json::Value = self.client.delete(&format!("/api/v1/fleets/{name}")).await?;
        loop {
            match self.client.get::<FleetStatus>(&format!("/api/v1/fleets/{name}")).await {
                Err(_) => return Ok(()),
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Every stored event of a fleet.
    async fn events(&self, fleet: &str) -> anyhow::Result<Vec<Event>> {
        let params = [("fleet", fleet.to_owned()), ("since", "0".to_owned()), ("follow", "false".to_owned())];
        let mut stream = Box::pin(self.client.events(&params).await?);
        let mut out = Vec::new();
        while let Some(e) = stream.next().await {
            out.push(e?);
        }
        Ok(out)
    }

    /// Live events of a fleet, each with the time it reached this client.
    async fn watch(&self, fleet: &str) -> anyhow::Result<mpsc::UnboundedReceiver<(Instant, Event)>> {
        let stream = self.client.events(&[("fleet", fleet.to_owned()), ("follow", "true".to_owned())]).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = Box::pin(stream);
            while let Some(Ok(e)) = stream.next().await {
                if tx.send((Instant::now(), e)).is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn inject(&self, fleet: &str, prompt: &str, agents: Option<Vec<u32>>) -> anyhow::Result<InjectResponse> {
        self.client
            .post(&format!("/api/v1/fleets/{fleet}/inject"), &InjectRequest { prompt: prompt.into(), agents, role: None, request_id: None })
            .await
    }
}

/// Waits until `count` events of `kind` for `injection` arrived; returns their arrival times.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<(Instant, Event)>,
    injection: &str,
    kind: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Instant>> {
    let mut times = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + timeout;
    while times.len() < count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((at, e))) if e.injection_id.as_deref() == Some(injection) && e.body.name() == kind => times.push(at),
            Ok(Some(_)) => {}
            Ok(None) => bail!("event stream ended"),
            Err(_) => bail!("only {} of {count} {kind} events after {timeout:?}", times.len()),
        }
    }
    Ok(times)
}

/// For each agent of an injection: when its `inject_ack` and its `inject_delivered` reached us.
async fn ack_to_delivered(
    rx: &mut mpsc::UnboundedReceiver<(Instant, Event)>,
    injection: &str,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<(Instant, Instant)>> {
    let mut acks: HashMap<u32, Instant> = HashMap::new();
    let mut pairs = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + timeout;
    while pairs.len() < count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((at, e))) if e.injection_id.as_deref() == Some(injection) => match (e.body.name(), e.agent) {
                ("inject_ack", Some(a)) => {
                    acks.insert(a, at);
                }
                ("inject_delivered", Some(a)) => pairs.push((*acks.get(&a).context("delivered before its ack")?, at)),
                _ => {}
            },
            Ok(Some(_)) => {}
            Ok(None) => bail!("event stream ended"),
            Err(_) => bail!("only {} of {count} deliveries after {timeout:?}", pairs.len()),
        }
    }
    Ok(pairs)
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS")?.split_whitespace().nth(1).context("VmRSS")?.parse()?;
    Ok(kb / 1024.0)
}

fn agent_pids(data: &Path, fleet: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(data.join("agents")).into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&format!("{fleet}-")) {
            continue;
        }
        for slot in std::fs::read_dir(entry.path()).into_iter().flatten().flatten() {
            if let Some(pid) =
                std::fs::read_to_string(slot.path().join("agent.pid")).ok().and_then(|t| t.split_whitespace().next()?.parse().ok())
            {
                pids.push(pid);
            }
        }
    }
    pids
}

/// A row of the results table.
struct Row {
    name: &'static str,
    result: String,
    goal: &'static str,
    notes: String,
}

async fn launch_and_latency(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let plane = Plane::start(&a.bin, 2000, None).await?;
    let runs = if a.quick { 1 } else { 3 };
    let mut launches = Vec::new();
    for run in 0..runs {
        let name = format!("l{run}");
        let t0 = Instant::now();
        plane.launch(&name, 100, "local").await?;
        plane.wait_ready(&name, 100, Duration::from_secs(120)).await?;
        launches.push(t0.elapsed().as_secs_f64());
        if run + 1 < runs {
            plane.terminate(&name).await?;
        }
    }
    let fleet = format!("l{}", runs - 1);
    rows.push(Row {
        name: "launch 100 local agents until all report ready",
        result: format!("{:.2} s", median(launches.clone())),
        goal: "< 3 s",
        notes: format!("median of {runs}: {}", launches.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ")),
    });

    // Idle agent size, after the agents have settled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sizes: Vec<f64> = agent_pids(&plane.data, &fleet).into_iter().filter_map(|p| rss_mib(p).ok()).collect();
    let n = sizes.len();
    rows.push(Row {
        name: "one idle agent process, resident memory",
        result: format!("{:.1} MiB", median(sizes.clone())),
        goal: "< 10 MB",
        notes: format!("median of {n} local agents (VmRSS), max {:.1} MiB", sizes.iter().cloned().fold(0.0, f64::max)),
    });

    // Inject to inject_delivered at 100 agents: to one agent at a time, and to all at once.
    // Two intervals, both seen by an API client on the event stream: from the `inject_ack`
    // event (the injection is persisted) to `inject_delivered` (the agent journaled it and
    // the control plane stored its answer), and from sending the POST.
    let mut events = plane.watch(&fleet).await?;
    let rounds = if a.quick { 5 } else { 30 };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (mut one_ev, mut one_post) = (Vec::new(), Vec::new());
    for i in 0..(rounds * 10) {
        let t0 = Instant::now();
        let resp = plane.inject(&fleet, "ping", Some(vec![(i % 100) as u32])).await?;
        for (ack, delivered) in ack_to_delivered(&mut events, &resp.injection_id, 1, Duration::from_secs(30)).await? {
            one_ev.push(ms(delivered.duration_since(ack)));
            one_post.push(ms(delivered.duration_since(t0)));
        }
    }
    let (mut all_ev, mut all_post) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t0 = Instant::now();
        let resp = plane.inject(&fleet, "ping", None).await?;
        for (ack, delivered) in ack_to_delivered(&mut events, &resp.injection_id, 100, Duration::from_secs(30)).await? {
            all_ev.push(ms(delivered.duration_since(ack)));
            all_post.push(ms(delivered.duration_since(t0)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = |v: &mut Vec<f64>| format!("p50 {:.1} ms, p99 {:.1} ms", percentile(v, 0.5), percentile(v, 0.99));
    rows.push(Row {
        name: "inject_ack to inject_delivered at 100 agents, one agent at a time",
        result: p(&mut one_ev),
        goal: "p99 < 10 ms",
        notes: format!("{} injections; from the POST: {}", one_ev.len(), p(&mut one_post)),
    });
    rows.push(Row {
        name: "inject_ack to inject_delivered at 100 agents, whole fleet",
        result: p(&mut all_ev),
        goal: "p99 < 10 ms",
        notes: format!("{rounds} injections to all 100 ({} deliveries); from the POST: {}", all_ev.len(), p(&mut all_post)),
    });
    plane.stop().await;
    Ok(())
}

async fn thousand_agents(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let plane = Plane::start(&a.bin, 2000, None).await?;
    plane.launch("sim", 1000, "external").await?;
    let mut agents = Command::new(&a.bin)
        .args(["agent", "--join", "sim", "--count", "1000", "--data"])
        .arg(&plane.data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let t0 = Instant::now();
    plane.wait_ready("sim", 1000, Duration::from_secs(120)).await?;
    let join_s = t0.elapsed().as_secs_f64();

    // Broadcast until every agent delivered.
    let mut events = plane.watch("sim").await?;
    let rounds = if a.quick { 2 } else { 5 };
    let mut times = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        let resp = plane.inject("sim", "everyone", None).await?;
        let pairs = ack_to_delivered(&mut events, &resp.injection_id, 1000, Duration::from_secs(60)).await?;
        let last = pairs.iter().map(|(_, d)| *d).max().unwrap();
        times.push(last.duration_since(t0).as_secs_f64());
        // Let the turns finish before the next round.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    rows.push(Row {
        name: "broadcast to 1,000 simulated agents until every agent delivered",
        result: format!("{:.3} s", median(times.clone())),
        goal: "< 1 s",
        notes: format!(
            "median of {rounds}: {}; agents from `agent --join --count 1000` in one process (all ready {join_s:.1} s after start)",
            times.iter().map(|s| format!("{s:.3}")).collect::<Vec<_>>().join(", ")
        ),
    });
    drop(events);

    // Steady state: 1,000 agents heartbeating every 2 s, nothing else.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let window = if a.quick { 10.0 } else { 30.0 };
    let cpu0 = cpu_seconds(plane.pid())?;
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(window)).await;
    let cpu = (cpu_seconds(plane.pid())? - cpu0) / w0.elapsed().as_secs_f64() * 100.0;
    let rss = rss_mib(plane.pid())?;
    let agents_rss = rss_mib(agents.id())?;
    rows.push(Row {
        name: "control plane with 1,000 agents heartbeating every 2 s: CPU",
        result: format!("{cpu:.1} % of one core"),
        goal: "< 25 %",
        notes: format!("over {window:.0} s, control plane process only (API, store, embedded broker); 500 heartbeats/s"),
    });
    rows.push(Row {
        name: "control plane with 1,000 agents heartbeating every 2 s: memory",
        result: format!("{rss:.0} MiB"),
        goal: "< 200 MB",
        notes: format!("VmRSS; the 1,000 simulated agents' process: {agents_rss:.0} MiB"),
    });
    let _ = agents.kill();
    let _ = agents.wait();
    plane.stop().await;
    Ok(())
}

fn mosquitto() -> anyhow::Result<(Child, u16)> {
    let port = free_port();
    let bin = ["mosquitto", "/usr/sbin/mosquitto"]
        .into_iter()
        .find(|b| Command::new(b).arg("-h").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok());
    let bin = bin.context("mosquitto is not installed (apt-get install mosquitto)")?;
    // Mosquitto leaves Nagle's algorithm on unless told otherwise; clawfleet's sockets turn it off.
    let conf = std::env::temp_dir().join(format!("clawfleet-bench-mosquitto-{port}.conf"));
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"))?;
    let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("mosquitto did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, port))
}

/// Inject → turn_complete for one agent, sequentially.
async fn round_trips(plane: &Plane, n: usize) -> anyhow::Result<(f64, f64)> {
    plane.launch("rt", 1, "local").await?;
    plane.wait_ready("rt", 1, Duration::from_secs(60)).await?;
    let mut events = plane.watch("rt").await?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let resp = plane.inject("rt", "ping", None).await?;
        let t = collect(&mut events, &resp.injection_id, "turn_complete", 1, Duration::from_secs(30)).await?;
        samples.push(t[0].duration_since(t0).as_secs_f64() * 1000.0);
    }
    Ok((percentile(&mut samples, 0.5), percentile(&mut samples, 0.99)))
}

async fn brokers(a: &Args, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n = if a.quick { 50 } else { 300 };
    let plane = Plane::start(&a.bin, 2000, None).await?;
    let (e50, e99) = round_trips(&plane, n).await?;
    plane.stop().await;
    let (mut child, port) = mosquitto()?;
    let plane = Plane::start(&a.bin, 2000, Some(&format!("mqtt://127.0.0.1:{port}"))).await?;
    let result = round_trips(&plane, n).await;
    plane.stop().await;
    let _ = child.kill();
    let _ = child.wait();
    let (m50, m99) = result?;
    rows.push(Row {
        name: "injection round trip (inject to turn_complete), embedded broker",
        result: format!("p50 {e50:.1} ms, p99 {e99:.1} ms"),
        goal: "side by side",
        notes: format!("{n} sequential injections to one agent"),
    });
    rows.push(Row {
        name: "injection round trip (inject to turn_complete), Mosquitto 2.0",
        result: format!("p50 {m50:.1} ms, p99 {m99:.1} ms"),
        goal: "side by side",
        notes: format!(
            "same, with `up --bus mqtt://…` to Debian's Mosquitto (`set_tcp_nodelay true`); ratio of p50s, embedded/Mosquitto: {:.2}",
            e50 / m50
        ),
    });
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let wanted = |name: &str| a.only.is_empty() || a.only.iter().any(|o| o == name);
    let mut rows = Vec::new();
    let mut failures: HashMap<&str, String> = HashMap::new();
    for (name, run) in [
        ("launch", 0),
        ("thousand", 1),
        ("brokers", 2),
        ("security", 6),
        ("deploy", 7),
        ("leader", 8),
        ("clawbucket", 9),
        ("projects", 10),
        ("snapshot", 11),
        ("migrate", 12),
        ("faults", 13),
        ("scale", 14),
        ("docker", 4),
        ("slurm", 5),
        ("model", 3),
    ] {
        if !wanted(name) {
            continue;
        }
        eprintln!("clawfleet-bench: {name}…");
        let result = match run {
            0 => launch_and_latency(&a, &mut rows).await,
            1 => thousand_agents(&a, &mut rows).await,
            2 => brokers(&a, &mut rows).await,
            4 => docker::run(&a, &mut rows).await,
            5 => slurm::run(&a, &mut rows).await,
            6 => security::run(&a, &mut rows).await,
            7 => deploy::run(&a, &mut rows).await,
            8 => leader::run(&a, &mut rows).await,
            9 => clawbucket::run(&a, &mut rows).await,
            10 => projects::run(&a, &mut rows).await,
            11 => snapshot::run(&a, &mut rows).await,
            12 => migrate::run(&a, &mut rows).await,
            13 => faults::run(&a, &mut rows).await,
            14 => scale::run(&a, &mut rows).await,
            _ => match (&a.llama_cpp, &a.model) {
                (Some(dir), Some(gguf)) => {
                    let reference = model::Reference::in_dir(dir);
                    model::run(&a.bin, &reference, gguf, a.quick, &mut rows).await
                }
                _ => Err(anyhow::anyhow!(
                    "the model benchmarks need --llama-cpp DIR (llama-bench, llama-batched-bench, llama-server) and --model GGUF; scripts/bench gives them"
                )),
            },
        };
        if let Err(e) = result {
            failures.insert(name, format!("{e:#}"));
        }
    }
    println!("| benchmark | result | goal | notes |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} |", r.name, r.result, r.goal, r.notes);
    }
    for (name, e) in &failures {
        eprintln!("clawfleet-bench: {name} failed: {e}");
    }
    if !failures.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

//! Fixtures: a real control plane (`clawfleet up` as a child process with its own data
//! directory and ports), a Mosquitto broker, and the CLI run as a user would run it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clawfleet_cli::client::Client;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_clawfleet");

/// A free TCP port on loopback (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `f` until it returns `Some`, or panics naming `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Mosquitto broker from Debian's package, on a private port.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::on(free_port())
    }

    /// Kills it (as a crash or a service restart would) and starts it again on its port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Mosquitto::on(self.port);
    }

    fn on(port: u16) -> Mosquitto {
        let child = Command::new("mosquitto")
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed for the external-broker tests (apt-get install mosquitto; .ci/run does)");
        eventually(Duration::from_secs(10), "mosquitto to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        Mosquitto { child, port }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start a control plane.
#[derive(Clone, Debug)]
pub struct PlaneOptions {
    pub bus: Option<String>,
    pub extra_path: Option<PathBuf>,
    pub heartbeat_ms: u64,
    pub model_url: Option<String>,
    /// Run `up`'s built-in model service (most tests do without, for speed).
    pub builtin_model: bool,
    /// Enable the docker backend: (the Docker host address, the overlay network agents join).
    pub docker: Option<(String, String)>,
    /// Enable the slurm backend (the local single-node Slurm).
    pub slurm: bool,
    /// More arguments for `up`.
    pub up_args: Vec<String>,
    /// More environment for `up` (`CLAWFLEET_FAILPOINTS`).
    pub env: Vec<(String, String)>,
    /// Run `up` in this network namespace (a host of its own, see [`Hosts`]), its API on every
    /// address there and reached by the tests at `address`.
    pub netns: Option<(String, String)>,
}

impl Default for PlaneOptions {
    fn default() -> Self {
        PlaneOptions {
            bus: None,
            extra_path: None,
            heartbeat_ms: 200,
            model_url: None,
            builtin_model: false,
            docker: None,
            slurm: false,
            up_args: Vec::new(),
            env: Vec::new(),
            netns: None,
        }
    }
}

/// A running `clawfleet up`.
pub struct Plane {
    pub dir: tempfile::TempDir,
    pub http_port: u16,
    pub mqtt_port: u16,
    pub model_port: u16,
    pub options: PlaneOptions,
    child: Option<Child>,
}

impl Plane {
    pub fn start() -> Plane {
        Plane::with(PlaneOptions::default())
    }

    pub fn with(options: PlaneOptions) -> Plane {
        Plane::in_dir(tempfile::tempdir().unwrap(), options)
    }

    /// A control plane on a data directory prepared beforehand.
    pub fn in_dir(dir: tempfile::TempDir, options: PlaneOptions) -> Plane {
        let mut plane = Plane { dir, http_port: free_port(), mqtt_port: free_port(), model_port: free_port(), options, child: None };
        plane.spawn();
        plane
    }

    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    /// The address the tests reach the API at.
    fn host(&self) -> &str {
        self.options.netns.as_ref().map_or("127.0.0.1", |(_, address)| address.as_str())
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host(), self.http_port)
    }

    /// Starts (again) the `up` process on the same data directory and ports.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = match &self.options.netns {
            Some((ns, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let listen = if self.options.netns.is_some() { "0.0.0.0" } else { "127.0.0.1" };
        cmd.arg("up")
            .args(["--data", self.data().to_str().unwrap()])
            .args(["--http", &format!("{listen}:{}", self.http_port)])
            .args(["--mqtt-listen", &format!("{}:{}", self.options.docker.as_ref().map_or(listen, |d| d.0.as_str()), self.mqtt_port)])
            .args(["--heartbeat-ms", &self.options.heartbeat_ms.to_string()])
            .env_remove("CLAWFLEET_TOKEN")
            .env_remove("CLAWFLEET_SERVER")
            .env("RUST_LOG", "info,rmqtt=warn,rmqtt_net=warn,rmqtt_codec=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(self.data().join("up.log")).unwrap());
        if let Some(bus) = &self.options.bus {
            cmd.args(["--bus", bus]);
        }
        if self.options.slurm {
            cmd.arg("--slurm");
        }
        if let Some((host, network)) = &self.options.docker {
            cmd.args(["--docker", "--docker-host", host, "--docker-network", network]);
        }
        match (&self.options.model_url, self.options.builtin_model) {
            (Some(url), _) => {
                cmd.args(["--model-url", url]);
            }
            (None, true) => {
                cmd.args(["--model-listen", &format!("127.0.0.1:{}", self.model_port), "--model-slots", "4", "--model-ctx", "1024"]);
            }
            (None, false) => {
                cmd.arg("--no-model");
            }
        }
        cmd.args(&self.options.up_args);
        cmd.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        if let Some(extra) = &self.options.extra_path {
            let path = format!("{}:{}", extra.display(), std::env::var("PATH").unwrap_or_default());
            cmd.env("PATH", path);
        }
        self.child = Some(cmd.spawn().expect("start clawfleet up"));
        let url = self.url();
        eventually(Duration::from_secs(30), "the control plane to serve", || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("clawfleet up exited with {status}; log:\n{}", self.log());
            }
            let ok = std::net::TcpStream::connect((self.host(), self.http_port)).is_ok() && self.data().join("server.json").exists();
            ok.then_some(())
        });
        let _ = url;
    }

    /// Waits (at most `within`) for the control plane to exit by itself (a failpoint);
    /// whether it did.
    pub fn exited(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().unwrap().is_some()
            {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Kills the control plane abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the control plane the way Ctrl-C does.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data().join("up.log")).unwrap_or_default()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data().join("token")).unwrap().trim().to_owned()
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url(), &self.token()).unwrap()
    }

    /// Runs the CLI against this control plane (found through the data directory).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(args, &[])
    }

    pub fn cli_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env("CLAWFLEET_DATA", self.data()).env_remove("CLAWFLEET_TOKEN").env_remove("CLAWFLEET_SERVER").stdin(Stdio::null());
        if self.options.netns.is_some() {
            cmd.env("CLAWFLEET_SERVER", self.url());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// Starts the CLI in the background, its output piped.
    pub fn spawn_cli(&self, args: &[&str]) -> std::process::Child {
        Command::new(BIN)
            .args(args)
            .env("CLAWFLEET_DATA", self.data())
            .env_remove("CLAWFLEET_TOKEN")
            .env_remove("CLAWFLEET_SERVER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs the CLI and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "clawfleet {} failed ({}):\nstdout: {}\nstderr: {}\nserver log:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.tail_log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI and insists on failure with exit status 1; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "clawfleet {} should fail; stdout: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    fn tail_log(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A raw HTTP request, for testing the API's refusals.
    pub fn http(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let client = reqwest::Client::new();
            let mut req = client.request(method.parse().unwrap(), format!("{}{path}", self.url()));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.header("content-type", "application/json").body(b.to_owned());
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        })
    }

    /// Pids of this control plane's agent processes, by slot, from their pid files.
    pub fn agent_pid(&self, fleet: &str, slot: u32) -> Option<u32> {
        let agents = self.data().join("agents");
        for entry in std::fs::read_dir(&agents).ok()? {
            let entry = entry.ok()?;
            if entry.file_name().to_string_lossy().starts_with(&format!("{fleet}-")) {
                let text = std::fs::read_to_string(entry.path().join(slot.to_string()).join("agent.pid")).ok()?;
                return text.split_whitespace().next()?.parse().ok();
            }
        }
        None
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.stop();
        // Agents a crashed control plane left behind.
        if let Ok(dirs) = std::fs::read_dir(self.data().join("agents")) {
            for fleet in dirs.flatten() {
                for slot in std::fs::read_dir(fleet.path()).into_iter().flatten().flatten() {
                    if let Ok(text) = std::fs::read_to_string(slot.path().join("agent.pid"))
                        && let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse::<i32>().ok())
                    {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                    }
                }
            }
        }
    }
}

/// Every event of a fleet, from the API.
pub fn events(plane: &Plane, fleet: &str) -> Vec<Value> {
    plane.ok(&["logs", fleet, "--json"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// (slot, epoch) pairs.
pub type SlotEpochs = Vec<(u64, u64)>;

/// A fleet's leaders and their leaders' moves, from its events: every `leader_changed` to an
/// agent as (slot, epoch), checked to grow by epoch (never two leaders in one epoch), and every
/// accepted leader's move (`rps_move` with an epoch) as (agent, epoch).
pub fn leaders_and_led(events: &[Value]) -> (SlotEpochs, SlotEpochs) {
    let changes: Vec<u64> =
        events.iter().filter(|e| e["event"] == "leader_changed").map(|e| e["data"]["epoch"].as_u64().unwrap()).collect();
    assert!(changes.windows(2).all(|w| w[1] > w[0]), "epochs grow with every change: {changes:?}");
    let epochs = events
        .iter()
        .filter(|e| e["event"] == "leader_changed" && e["data"]["slot"].is_u64())
        .map(|e| (e["data"]["slot"].as_u64().unwrap(), e["data"]["epoch"].as_u64().unwrap()))
        .collect();
    let led = events
        .iter()
        .filter(|e| e["event"] == "rps_move" && e["data"]["epoch"].is_u64())
        .map(|e| (e["agent"].as_u64().unwrap(), e["data"]["epoch"].as_u64().unwrap()))
        .collect();
    (epochs, led)
}

/// Events of one kind, for one agent, of one injection.
pub fn count(events: &[Value], kind: &str, agent: u32, injection: &str) -> usize {
    events.iter().filter(|e| e["event"] == kind && e["agent"] == agent && e["injection_id"] == injection).count()
}

/// Hosts of their own on this machine (as root): network namespaces, each reached by the tests
/// over a veth pair of its own (`10.<net>.<i>.2`, this side `.1`), and linked to each other
/// pairwise by another veth pair (`10.<net>.<100 + i*10 + j>.{1,2}`), so traffic between them
/// crosses no bridge and no firewall of this machine, and a link between two of them can be cut
/// while the tests still reach both. Removed when dropped.
pub struct Hosts {
    pub names: Vec<String>,
    net: u8,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Hosts {
    /// `n` hosts, or `None` where namespaces cannot be made (not root).
    pub fn new(n: usize) -> Option<Hosts> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: network namespaces need root");
            return None;
        }
        let id = std::process::id() % 100_000;
        let net = 100 + (id % 100) as u8;
        let names: Vec<String> = (0..n).map(|i| format!("cf{id}h{i}")).collect();
        let hosts = Hosts { names, net };
        for (i, ns) in hosts.names.iter().enumerate() {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            let (here, there) = (format!("cf{id}t{i}"), format!("cf{id}m{i}"));
            ip(&["link", "add", &here, "type", "veth", "peer", "name", &there, "netns", ns]);
            ip(&["addr", "add", &format!("10.{net}.{i}.1/24"), "dev", &here]);
            ip(&["link", "set", &here, "up"]);
            ip(&["-n", ns, "addr", "add", &format!("10.{net}.{i}.2/24"), "dev", &there]);
            ip(&["-n", ns, "link", "set", &there, "up"]);
        }
        for i in 0..n {
            for j in i + 1..n {
                let (a, b) = (&hosts.names[i], &hosts.names[j]);
                let (la, lb) = (hosts.link(i, j, i), hosts.link(i, j, j));
                ip(&["link", "add", &la, "netns", a, "type", "veth", "peer", "name", &lb, "netns", b]);
                let subnet = 100 + i * 10 + j;
                ip(&["-n", a, "addr", "add", &format!("10.{net}.{subnet}.1/24"), "dev", &la]);
                ip(&["-n", b, "addr", "add", &format!("10.{net}.{subnet}.2/24"), "dev", &lb]);
                ip(&["-n", a, "link", "set", &la, "up"]);
                ip(&["-n", b, "link", "set", &lb, "up"]);
            }
        }
        Some(hosts)
    }

    /// The name of host `end`'s side of the link between hosts `i` and `j`.
    fn link(&self, i: usize, j: usize, end: usize) -> String {
        format!("cf{}l{i}{j}{end}", std::process::id() % 100_000)
    }

    /// Where the tests reach host `i`.
    pub fn address(&self, i: usize) -> String {
        format!("10.{}.{i}.2", self.net)
    }

    /// Where host `i` reaches host `j` (over their own link).
    pub fn peer_address(&self, i: usize, j: usize) -> String {
        let (lo, hi) = (i.min(j), i.max(j));
        format!("10.{}.{}.{}", self.net, 100 + lo * 10 + hi, if j == lo { 1 } else { 2 })
    }

    /// Cuts (`false`) or heals (`true`) the link between hosts `i` and `j`.
    pub fn link_up(&self, i: usize, j: usize, up: bool) {
        let (lo, hi) = (i.min(j), i.max(j));
        for end in [lo, hi] {
            ip(&["-n", &self.names[end], "link", "set", &self.link(lo, hi, end), if up { "up" } else { "down" }]);
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.names {
            // Its veth pairs go with it.
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
    }
}

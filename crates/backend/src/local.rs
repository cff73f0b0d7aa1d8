//! The local backend: each agent is a child process (`clawfleet agent`), supervised.
//!
//! A slot holds at most one agent. `Start` runs it with its environment, its output appended
//! to `agent.log` in its workspace, and a task of its own watches it: a started agent is
//! `Starting` until its `alive` file says it reached the bus (so a rollout's `max_unavailable`
//! counts agents that are up, not processes), then `Running`; an agent that exits is
//! `Exited` until the plan starts its successor (after the plan's backoff); `Stop` sends it
//! SIGTERM, then SIGKILL after a grace period. Agents run in process groups of their own, so a
//! Ctrl-C in the control plane's terminal reaches only the control plane, which then stops them
//! in order.
//!
//! A control plane that is killed leaves its agents running; when it comes back, the first
//! `observe` of a fleet finds each slot's agent through `agent.pid` (pid, start time and the
//! key of its configuration) and adopts it instead of starting a second one; one whose
//! configuration changed meanwhile is replaced like any outdated agent.
//!
//! ```text
//! <root>/<fleet>-<uid>/<slot>/   the agent's workspace (see clawfleet-agent)
//!                     agent.pid  "<pid> <start time> <config key>"
//!                     agent.log  the agent's stdout and stderr
//!                     alive      written by the agent: when its loop last turned, whether it reached the bus
//!                     agent.secrets  its bus password, until the agent has read (and removed) it
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clawfleet_core::{BackendKind, FleetName};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::sandbox::Sandbox;
use crate::{Action, Applied, Backend, BackendError, ConfigKey, Deployment, Instance, InstanceState, env};
use clawfleet_proto::api::Isolation;

/// The agent's secrets file in its workspace (see [`env::SECRETS_FILE`]).
const SECRETS_FILE_NAME: &str = "agent.secrets";

/// How the local backend starts agents.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The program to run (normally the `clawfleet` binary itself).
    pub program: PathBuf,
    /// Arguments before any others (normally `["agent"]`).
    pub args: Vec<String>,
    /// Where agent workspaces live.
    pub root: PathBuf,
    /// How long a stopping agent gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// How agents are confined.
    pub sandbox: Arc<Sandbox>,
}

/// Agents as local child processes.
pub struct LocalBackend {
    config: LocalConfig,
    fleets: Mutex<HashMap<FleetName, BTreeMap<u32, Slot>>>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend").field("root", &self.config.root).finish()
    }
}

/// One slot of a fleet: its agent (at most one: agents of a slot share a workspace and a bus
/// identity) and how often one was started.
#[derive(Default)]
struct Slot {
    agent: Option<Agent>,
    starts: u32,
}

/// One agent process, and the task that watches it.
struct Agent {
    id: String,
    key: ConfigKey,
    state: Arc<Mutex<InstanceState>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Its workspace, where it says when it reached the bus.
    workspace: PathBuf,
    /// When it was started (Unix ms; 0 for an adopted one, up already).
    started_ms: u128,
    /// It has reached the bus since it was started.
    up: AtomicBool,
}

impl Agent {
    /// Asked to stop, and stopped.
    fn gone(&self) -> bool {
        *self.stop.borrow() && self.task.is_finished()
    }

    /// What it is doing: a running process is `Starting` until it has reached the bus (its
    /// `alive` file says so, written after it was started), so a rollout's `max_unavailable`
    /// counts agents that are up, not processes that exist.
    fn state(&self) -> InstanceState {
        let state = self.state.lock().expect("not poisoned").clone();
        if state != InstanceState::Running || self.up.load(Ordering::Relaxed) {
            return state;
        }
        let text = std::fs::read_to_string(self.workspace.join(clawfleet_proto::alive::FILE)).unwrap_or_default();
        match clawfleet_proto::alive::Alive::parse(&text) {
            Some(a) if a.connected && a.at_ms >= self.started_ms => {
                self.up.store(true, Ordering::Relaxed);
                InstanceState::Running
            }
            _ => InstanceState::Starting,
        }
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
}

impl LocalBackend {
    pub fn new(config: LocalConfig) -> LocalBackend {
        LocalBackend { config, fleets: Mutex::new(HashMap::new()) }
    }

    /// The workspace of one agent of one fleet incarnation.
    pub fn workspace(&self, fleet: &FleetName, uid: &str, slot: u32) -> PathBuf {
        self.config.root.join(format!("{fleet}-{uid}")).join(slot.to_string())
    }

    /// Agents a control plane that was killed left running, found by their pid files.
    fn adopt(&self, d: &Deployment) -> BTreeMap<u32, Slot> {
        let mut slots = BTreeMap::new();
        let Ok(dirs) = std::fs::read_dir(self.config.root.join(format!("{}-{}", d.fleet, d.uid))) else { return slots };
        for dir in dirs.flatten() {
            let Some(slot) = dir.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let pidfile = dir.path().join("agent.pid");
            let Some((pid, key)) = running_agent(&pidfile) else { continue };
            let label = format!("{}/{slot}", d.fleet);
            tracing::info!(agent = %label, pid, "Adopting a running agent");
            let state = Arc::new(Mutex::new(InstanceState::Running));
            let (stop, stop_rx) = watch::channel(false);
            let watch = Watch { pid, pidfile, grace: self.config.grace, state: state.clone(), stop: stop_rx, label };
            let agent = Agent {
                id: format!("pid {pid}"),
                key,
                state,
                stop,
                task: tokio::spawn(watch.adopted()),
                workspace: dir.path(),
                started_ms: 0,
                up: AtomicBool::new(true),
            };
            slots.insert(slot, Slot { agent: Some(agent), starts: 1 });
        }
        slots
    }

    /// Starts one agent of `d` in `slot`; an agent that cannot be started is a failed one.
    fn start(&self, d: &Deployment, slot: u32, attempt: u32) -> Agent {
        let key = self.key(d, slot);
        let workspace = self.workspace(&d.fleet, &d.uid, slot);
        let label = format!("{}/{slot}", d.fleet);
        let (stop, stop_rx) = watch::channel(false);
        let started_ms = unix_ms();
        match self.spawn(d, slot, &workspace, key) {
            Ok((child, pid)) => {
                let state = Arc::new(Mutex::new(InstanceState::Running));
                let pidfile = workspace.join("agent.pid");
                let watch = Watch { pid, pidfile, grace: self.config.grace, state: state.clone(), stop: stop_rx, label };
                let task = tokio::spawn(watch.child(child));
                Agent { id: format!("pid {pid}"), key, state, stop, task, workspace, started_ms, up: AtomicBool::new(false) }
            }
            Err(reason) => {
                tracing::error!(agent = %label, %reason, "Could not start an agent");
                let state = Arc::new(Mutex::new(InstanceState::Failed(reason)));
                let task = tokio::spawn(async {});
                Agent { id: format!("start {attempt} (failed)"), key, state, stop, task, workspace, started_ms, up: AtomicBool::new(false) }
            }
        }
    }

    fn spawn(&self, d: &Deployment, slot: u32, workspace: &Path, key: ConfigKey) -> Result<(tokio::process::Child, u32), String> {
        let (secrets, vars): (Vec<_>, Vec<_>) = d.agent_env(slot).into_iter().partition(|(k, _)| env::SECRET_VARS.contains(k));
        std::fs::create_dir_all(workspace).map_err(|e| format!("cannot create {}: {e}", workspace.display()))?;
        let log_path = workspace.join("agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        write_secrets(&workspace.join(SECRETS_FILE_NAME), &secrets)?;
        let mut cmd = Command::new(&self.config.program);
        cmd.args(&self.config.args).current_dir(workspace).stdin(Stdio::null()).stdout(log).stderr(log2).process_group(0);
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(env::is_private) {
                cmd.env_remove(&k);
            }
        }
        cmd.envs(vars);
        cmd.env(env::WORKSPACE, workspace).env(env::SECRETS_FILE, workspace.join(SECRETS_FILE_NAME));
        if self.config.sandbox.isolation() != Isolation::None {
            // A confined agent's brains cannot write the shared /tmp: they get their own.
            let tmp = workspace.join("tmp");
            std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
            cmd.env("TMPDIR", &tmp);
        }
        // Stable across the agent's restarts and updates (its uid in user mode comes from it).
        let identity = crate::stable_hash(format!("{}-{}/{slot}", d.fleet, d.uid).into_bytes());
        self.config.sandbox.confine(&mut cmd, workspace, identity)?;
        let child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", self.config.program.display()))?;
        let pid = child.id().unwrap_or(0);
        if let Some(line) = pid_line(pid, key) {
            let _ = std::fs::write(workspace.join("agent.pid"), line);
        }
        Ok((child, pid))
    }
}

fn write_secrets(path: &Path, secrets: &[(&str, String)]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    for (k, v) in secrets {
        writeln!(file, "{k}={v}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    fn isolation(&self) -> Isolation {
        self.config.sandbox.isolation()
    }

    fn workspace(&self, d: &Deployment, slot: u32) -> Option<PathBuf> {
        Some(LocalBackend::workspace(self, &d.fleet, &d.uid, slot))
    }

    async fn observe(&self, d: &Deployment) -> Result<Vec<Instance>, BackendError> {
        let mut fleets = self.fleets.lock().expect("not poisoned");
        let slots = fleets.entry(d.fleet.clone()).or_insert_with(|| self.adopt(d));
        for slot in slots.values_mut() {
            if slot.agent.as_ref().is_some_and(Agent::gone) {
                slot.agent = None;
            }
        }
        Ok(slots
            .iter()
            .filter_map(|(&slot, s)| {
                let agent = s.agent.as_ref()?;
                Some(Instance {
                    slot,
                    id: agent.id.clone(),
                    key: Some(agent.key),
                    state: agent.state(),
                    restarts: s.starts.saturating_sub(1),
                    node: None,
                })
            })
            .collect())
    }

    async fn execute(&self, d: &Deployment, actions: &[Action]) -> Result<Applied, BackendError> {
        let mut fleets = self.fleets.lock().expect("not poisoned");
        let slots = fleets.entry(d.fleet.clone()).or_insert_with(|| self.adopt(d));
        for action in actions {
            match action {
                Action::Start { slot } => {
                    let s = slots.entry(*slot).or_default();
                    if s.agent.as_ref().is_some_and(|a| !a.task.is_finished()) {
                        // The plan starts only empty slots; this one is not (yet).
                        continue;
                    }
                    s.starts += 1;
                    s.agent = Some(self.start(d, *slot, s.starts));
                }
                Action::Stop { slot, instance, .. } => {
                    if let Some(a) = slots.get(slot).and_then(|s| s.agent.as_ref()).filter(|a| &a.id == instance) {
                        let _ = a.stop.send(true);
                    }
                }
                Action::Forget { slot, instance } => {
                    if let Some(s) = slots.get_mut(slot)
                        && s.agent.as_ref().is_some_and(|a| &a.id == instance && a.task.is_finished())
                    {
                        s.agent = None;
                    }
                }
            }
        }
        slots.retain(|_, s| s.agent.is_some() || s.starts > 0);
        Ok(Applied::Started)
    }

    async fn remove(&self, d: &Deployment) -> Result<bool, BackendError> {
        let mut fleets = self.fleets.lock().expect("not poisoned");
        let Some(slots) = fleets.get(&d.fleet) else { return Ok(true) };
        let agents = || slots.values().filter_map(|s| s.agent.as_ref());
        for a in agents() {
            let _ = a.stop.send(true);
        }
        if agents().all(|a| a.task.is_finished()) {
            fleets.remove(&d.fleet);
            return Ok(true);
        }
        Ok(false)
    }

    async fn shutdown(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut fleets = self.fleets.lock().expect("not poisoned");
            fleets
                .drain()
                .flat_map(|(_, slots)| slots.into_values())
                .filter_map(|s| s.agent)
                .map(|a| {
                    let _ = a.stop.send(true);
                    a.task
                })
                .collect()
        };
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Watches one agent process until it exits or is told to stop.
struct Watch {
    pid: u32,
    pidfile: PathBuf,
    grace: Duration,
    state: Arc<Mutex<InstanceState>>,
    stop: watch::Receiver<bool>,
    label: String,
}

impl Watch {
    fn set(&self, state: InstanceState) {
        *self.state.lock().expect("not poisoned") = state;
    }

    fn exited(&self, last_exit: String) {
        tracing::warn!(agent = %self.label, pid = self.pid, %last_exit, "Agent exited");
        let _ = std::fs::remove_file(&self.pidfile);
        self.set(InstanceState::Exited { last_exit });
    }

    async fn stopped(&self) {
        self.set(InstanceState::Stopping);
        terminate(self.pid, self.grace).await;
    }

    /// An agent this backend started (its child).
    async fn child(mut self, mut child: tokio::process::Child) {
        tokio::select! {
            exit = child.wait() => self.exited(match exit {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            }),
            _ = self.stop.changed() => {
                self.stopped().await;
                let _ = child.wait().await;
                let _ = std::fs::remove_file(&self.pidfile);
            }
        }
    }

    /// An adopted agent (not our child: polled).
    async fn adopted(mut self) {
        let start = start_time(self.pid);
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    if start_time(self.pid) != start || is_zombie(self.pid) {
                        return self.exited("exited".into());
                    }
                }
                _ = self.stop.changed() => {
                    self.stopped().await;
                    let _ = std::fs::remove_file(&self.pidfile);
                    return;
                }
            }
        }
    }
}

/// SIGTERM, then SIGKILL to the whole process group after `grace`.
async fn terminate(pid: u32, grace: Duration) {
    let target = Pid::from_raw(pid as i32);
    let start = start_time(pid);
    if start.is_none() {
        return;
    }
    let _ = signal::kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if start_time(pid) != start || is_zombie(pid) {
            return;
        }
    }
    tracing::warn!(pid, "Agent did not stop within its grace period; killing it");
    let _ = signal::killpg(target, Signal::SIGKILL);
}

/// A process's start time (clock ticks since boot), which tells a pid's reuse apart.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

fn pid_line(pid: u32, key: ConfigKey) -> Option<String> {
    Some(format!("{pid} {} {key}\n", start_time(pid)?))
}

fn read_pidfile(path: &Path) -> Option<(u32, u64, ConfigKey)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    let key = parts.next()?.parse().ok()?;
    Some((pid, start, key))
}

/// The pid and configuration of this slot's agent, if its pid file names a process that still
/// runs (the start time tells a reused pid apart).
fn running_agent(pidfile: &Path) -> Option<(u32, ConfigKey)> {
    let (pid, start, key) = read_pidfile(pidfile)?;
    (start_time(pid) == Some(start) && !is_zombie(pid)).then_some((pid, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_started_agent_is_starting_until_it_says_it_reached_the_bus() {
        use clawfleet_proto::alive::{Alive, FILE};
        let dir = tempfile::tempdir().unwrap();
        let started_ms = unix_ms();
        let (stop, _) = watch::channel(false);
        let agent = Agent {
            id: "pid 1".into(),
            key: ConfigKey(1),
            state: Arc::new(Mutex::new(InstanceState::Running)),
            stop,
            task: tokio::spawn(async {}),
            workspace: dir.path().to_owned(),
            started_ms,
            up: AtomicBool::new(false),
        };
        let write = |at_ms, connected| std::fs::write(dir.path().join(FILE), Alive { at_ms, connected }.render()).unwrap();
        assert_eq!(agent.state(), InstanceState::Starting, "no sign of life yet");
        write(started_ms - 5_000, true);
        assert_eq!(agent.state(), InstanceState::Starting, "the previous agent's sign of life");
        write(started_ms + 10, false);
        assert_eq!(agent.state(), InstanceState::Starting, "running, not on the bus yet");
        write(started_ms + 20, true);
        assert_eq!(agent.state(), InstanceState::Running);
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        assert_eq!(agent.state(), InstanceState::Running, "once up, up");
        *agent.state.lock().unwrap() = InstanceState::Stopping;
        assert_eq!(agent.state(), InstanceState::Stopping);
    }

    #[test]
    fn start_time_of_self() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert_eq!(start_time(u32::MAX / 2), None);
        assert!(!is_zombie(me));
    }

    #[test]
    fn pidfiles_round_trip() {
        let dir = std::env::temp_dir().join(format!("clawfleet-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.pid");
        std::fs::write(&path, pid_line(std::process::id(), ConfigKey(42)).unwrap()).unwrap();
        assert_eq!(running_agent(&path), Some((std::process::id(), ConfigKey(42))));
        std::fs::write(&path, format!("{} 1 {}", std::process::id(), ConfigKey(42))).unwrap();
        assert_eq!(running_agent(&path), None, "another process's start time: the pid was reused");
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(running_agent(&path), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! The local backend: each agent is a child process (`clawfleet agent`), supervised.
//!
//! One supervisor task per slot starts the agent with its environment, appends its output to
//! `agent.log` in its workspace, restarts it with exponential backoff (0.5 s doubling to 30 s,
//! reset after 30 s of good running) and stops it with SIGTERM, then SIGKILL after a grace
//! period. Agents run in process groups of their own, so a Ctrl-C in the control plane's
//! terminal reaches only the control plane, which then stops them in order.
//!
//! A control plane that is killed leaves its agents running; when it comes back, each slot
//! finds its agent through `agent.pid` (pid, start time and a key of its configuration) and
//! adopts it instead of starting a second one. An agent whose configuration changed is
//! replaced, one slot at a time.
//!
//! ```text
//! <root>/<fleet>-<uid>/<slot>/   the agent's workspace (see clawfleet-agent)
//!                     agent.pid  "<pid> <start time> <config key>"
//!                     agent.log  the agent's stdout and stderr
//!                     agent.secrets  its bus password, until the agent has read (and removed) it
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
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
use crate::{Applied, Backend, BackendError, Deployment, Replica, ReplicaState, env};
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

struct Slot {
    key: u64,
    status: Arc<Mutex<Status>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Debug, Clone)]
struct Status {
    state: ReplicaState,
    pid: Option<u32>,
    restarts: u32,
}

impl Slot {
    fn finished(&self) -> bool {
        self.task.is_finished()
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

impl LocalBackend {
    pub fn new(config: LocalConfig) -> LocalBackend {
        LocalBackend { config, fleets: Mutex::new(HashMap::new()) }
    }

    /// The workspace of one agent of one fleet incarnation.
    pub fn workspace(&self, fleet: &FleetName, uid: &str, slot: u32) -> PathBuf {
        self.config.root.join(format!("{fleet}-{uid}")).join(slot.to_string())
    }

    fn spawn_slot(&self, deployment: &Deployment, slot: u32, key: u64) -> Slot {
        let workspace = self.workspace(&deployment.fleet, &deployment.uid, slot);
        let (secrets, mut vars): (Vec<_>, Vec<_>) = deployment
            .agent_env(slot)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .partition(|(k, _)| env::SECRET_VARS.contains(&k.as_str()));
        vars.push((env::WORKSPACE.to_owned(), workspace.display().to_string()));
        vars.push((env::SECRETS_FILE.to_owned(), workspace.join(SECRETS_FILE_NAME).display().to_string()));
        let status = Arc::new(Mutex::new(Status { state: ReplicaState::Starting, pid: None, restarts: 0 }));
        let (stop, stop_rx) = watch::channel(false);
        let ctx = Supervisor {
            program: self.config.program.clone(),
            args: self.config.args.clone(),
            vars,
            secrets,
            workspace,
            key,
            sandbox: self.config.sandbox.clone(),
            identity: crate::stable_hash(format!("{}-{}/{slot}", deployment.fleet, deployment.uid).into_bytes()),
            grace: self.config.grace,
            status: status.clone(),
            stop: stop_rx,
            label: format!("{}/{slot}", deployment.fleet),
        };
        Slot { key, status, stop, task: tokio::spawn(ctx.run()) }
    }
}

/// A stable key of an agent's configuration: a changed key means the agent must be replaced.
pub(crate) fn config_key(vars: &[(&'static str, String)]) -> u64 {
    crate::stable_hash(vars.iter().flat_map(|(k, v)| k.bytes().chain([0]).chain(v.bytes()).chain([0])))
}

#[async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Local
    }

    fn isolation(&self) -> Isolation {
        self.config.sandbox.isolation()
    }

    async fn apply(&self, deployment: &Deployment) -> Result<Applied, BackendError> {
        let mut fleets = self.fleets.lock().expect("not poisoned");
        let slots = fleets.entry(deployment.fleet.clone()).or_default();
        slots.retain(|_, s| !(s.finished() && s.stopping()));
        let mut replacing = slots.values().filter(|s| s.stopping()).count();
        for slot in 0..deployment.replicas {
            let key = config_key(&deployment.agent_env(slot));
            match slots.get(&slot) {
                None => {
                    slots.insert(slot, self.spawn_slot(deployment, slot, key));
                }
                Some(s) if s.key != key && !s.stopping() && replacing == 0 => {
                    // A changed configuration: replace one agent at a time.
                    tracing::info!(fleet = %deployment.fleet, slot, "Replacing an agent whose configuration changed");
                    let _ = s.stop.send(true);
                    replacing += 1;
                }
                Some(_) => {}
            }
        }
        for (slot, s) in slots.range(deployment.replicas..) {
            if !s.stopping() {
                tracing::info!(fleet = %deployment.fleet, slot, "Stopping an agent above the replica count");
                let _ = s.stop.send(true);
            }
        }
        Ok(Applied::Started)
    }

    async fn observe(&self, fleet: &FleetName) -> Result<Vec<Replica>, BackendError> {
        let fleets = self.fleets.lock().expect("not poisoned");
        let Some(slots) = fleets.get(fleet) else { return Ok(Vec::new()) };
        Ok(slots
            .iter()
            .filter(|(_, s)| !s.finished())
            .map(|(&slot, s)| {
                let st = s.status.lock().expect("not poisoned").clone();
                Replica { slot, instance: st.pid.map(|p| format!("pid {p}")), state: st.state, restarts: st.restarts, node: None }
            })
            .collect())
    }

    async fn remove(&self, fleet: &FleetName) -> Result<bool, BackendError> {
        let mut fleets = self.fleets.lock().expect("not poisoned");
        let Some(slots) = fleets.get(fleet) else { return Ok(true) };
        for s in slots.values() {
            let _ = s.stop.send(true);
        }
        if slots.values().all(Slot::finished) {
            fleets.remove(fleet);
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
                .map(|s| {
                    let _ = s.stop.send(true);
                    s.task
                })
                .collect()
        };
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Supervises one slot's agent process until told to stop.
struct Supervisor {
    program: PathBuf,
    args: Vec<String>,
    vars: Vec<(String, String)>,
    /// Written to the agent's secrets file before each start, never put in its environment.
    secrets: Vec<(String, String)>,
    workspace: PathBuf,
    key: u64,
    sandbox: Arc<Sandbox>,
    /// Stable across the agent's restarts and updates (its uid in user mode comes from it).
    identity: u64,
    grace: Duration,
    status: Arc<Mutex<Status>>,
    stop: watch::Receiver<bool>,
    label: String,
}

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const STABLE_AFTER: Duration = Duration::from_secs(30);

impl Supervisor {
    fn set(&self, state: ReplicaState, pid: Option<u32>) {
        let mut st = self.status.lock().expect("not poisoned");
        st.state = state;
        st.pid = pid;
    }

    async fn run(mut self) {
        let pidfile = self.workspace.join("agent.pid");
        if let Some(pid) = adoptable(&pidfile, self.key) {
            tracing::info!(agent = %self.label, pid, "Adopting a running agent");
            self.set(ReplicaState::Running, Some(pid));
            let stopped = self.watch_adopted(pid).await;
            if stopped {
                self.set(ReplicaState::Stopping, Some(pid));
                terminate(pid, self.grace).await;
                let _ = std::fs::remove_file(&pidfile);
                return;
            }
        } else if let Some(pid) = stale_agent(&pidfile) {
            // Our agent from another configuration: replace it.
            tracing::info!(agent = %self.label, pid, "Stopping an agent started with another configuration");
            terminate(pid, self.grace).await;
        }

        let mut backoff = MIN_BACKOFF;
        while !*self.stop.borrow() {
            let started = Instant::now();
            match self.start() {
                Err(reason) => {
                    tracing::error!(agent = %self.label, %reason, "Could not start an agent");
                    self.set(ReplicaState::Failed(reason), None);
                }
                Ok(mut child) => {
                    let pid = child.id().unwrap_or(0);
                    if let Some(line) = pid_line(pid, self.key) {
                        let _ = std::fs::write(&pidfile, line);
                    }
                    self.set(ReplicaState::Running, Some(pid));
                    tokio::select! {
                        exit = child.wait() => {
                            let last_exit = match exit {
                                Ok(s) => s.to_string(),
                                Err(e) => e.to_string(),
                            };
                            tracing::warn!(agent = %self.label, pid, %last_exit, "Agent exited; restarting");
                            let _ = std::fs::remove_file(&pidfile);
                            let mut st = self.status.lock().expect("not poisoned");
                            st.restarts += 1;
                            st.state = ReplicaState::Restarting { last_exit };
                            st.pid = None;
                        }
                        _ = self.stop.changed() => {
                            self.set(ReplicaState::Stopping, Some(pid));
                            terminate(pid, self.grace).await;
                            let _ = child.wait().await;
                            let _ = std::fs::remove_file(&pidfile);
                            return;
                        }
                    }
                }
            }
            if started.elapsed() > STABLE_AFTER {
                backoff = MIN_BACKOFF;
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = self.stop.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn start(&self) -> Result<tokio::process::Child, String> {
        std::fs::create_dir_all(&self.workspace).map_err(|e| format!("cannot create {}: {e}", self.workspace.display()))?;
        let log_path = self.workspace.join("agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        self.write_secrets()?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).current_dir(&self.workspace).stdin(Stdio::null()).stdout(log).stderr(log2).process_group(0);
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(env::is_private) {
                cmd.env_remove(&k);
            }
        }
        cmd.envs(self.vars.iter().map(|(k, v)| (k, v)));
        if self.sandbox.isolation() != Isolation::None {
            // A confined agent's brains cannot write the shared /tmp: they get their own.
            let tmp = self.workspace.join("tmp");
            std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
            cmd.env("TMPDIR", &tmp);
        }
        self.sandbox.confine(&mut cmd, &self.workspace, self.identity)?;
        cmd.spawn().map_err(|e| format!("cannot run {}: {e}", self.program.display()))
    }

    fn write_secrets(&self) -> Result<(), String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.workspace.join(SECRETS_FILE_NAME);
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        for (k, v) in &self.secrets {
            writeln!(file, "{k}={v}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Waits for an adopted agent (not our child: polled) to exit or for a stop request.
    /// Returns `true` when asked to stop.
    async fn watch_adopted(&mut self, pid: u32) -> bool {
        let start = start_time(pid);
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    if start_time(pid) != start {
                        tracing::warn!(agent = %self.label, pid, "Adopted agent exited; restarting");
                        let mut st = self.status.lock().expect("not poisoned");
                        st.restarts += 1;
                        st.state = ReplicaState::Restarting { last_exit: "exited".into() };
                        st.pid = None;
                        return false;
                    }
                }
                _ = self.stop.changed() => return true,
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

fn pid_line(pid: u32, key: u64) -> Option<String> {
    Some(format!("{pid} {} {key:016x}\n", start_time(pid)?))
}

fn read_pidfile(path: &Path) -> Option<(u32, u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut parts = text.split_whitespace();
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    let key = u64::from_str_radix(parts.next()?, 16).ok()?;
    Some((pid, start, key))
}

/// The pid of this slot's agent, still running with this configuration, if there is one.
fn adoptable(pidfile: &Path, key: u64) -> Option<u32> {
    let (pid, start, k) = read_pidfile(pidfile)?;
    (k == key && start_time(pid) == Some(start) && !is_zombie(pid)).then_some(pid)
}

/// The pid of this slot's agent still running with another configuration.
fn stale_agent(pidfile: &Path) -> Option<u32> {
    let (pid, start, _) = read_pidfile(pidfile)?;
    (start_time(pid) == Some(start)).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert_eq!(start_time(u32::MAX / 2), None);
        assert!(!is_zombie(me));
    }

    #[test]
    fn config_keys_are_stable_and_sensitive() {
        let a = vec![("A", "1".to_owned()), ("B", "2".to_owned())];
        let b = vec![("A", "1".to_owned()), ("B", "3".to_owned())];
        assert_eq!(config_key(&a), config_key(&a.clone()));
        assert_ne!(config_key(&a), config_key(&b));
        // Field boundaries matter: ("AB","") differs from ("A","B").
        assert_ne!(config_key(&[("AB", String::new())]), config_key(&[("A", "B".to_owned())]));
    }

    #[test]
    fn pidfiles_round_trip() {
        let dir = std::env::temp_dir().join(format!("clawfleet-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.pid");
        std::fs::write(&path, pid_line(std::process::id(), 42).unwrap()).unwrap();
        assert_eq!(adoptable(&path, 42), Some(std::process::id()));
        assert_eq!(adoptable(&path, 43), None);
        assert_eq!(stale_agent(&path), Some(std::process::id()));
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(adoptable(&path, 42), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

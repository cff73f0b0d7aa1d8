//! The slurm backend: each agent is a Slurm batch job of its own (`sbatch`), so a fleet scales
//! and heals one slot at a time. Jobs are named `cf.<fleet>.<slot>.<key>` (the key digests the
//! agent's configuration: a changed key means the job is replaced); their state comes from
//! `squeue` with delimited output; `scancel` stops them (SIGTERM, then Slurm's SIGKILL after
//! `KillWait`). A job that ends while its slot is wanted is submitted again, as a restart.
//!
//! Commands run on this machine, or on a login node over ssh (`login`): one multiplexed
//! connection (`ControlMaster`), `BatchMode` (never a password prompt), and retries with backoff
//! on transient failures (ssh's own exit 255, a controller that does not answer).
//!
//! A fleet's cluster profile (`launch --cluster FILE`) overrides the backend's defaults: login
//! host, partition, account, QoS, time limit, workspace root, and the agents' transport: the
//! bus, or the mailbox (files the control plane follows, for nodes with no route to the bus),
//! or `auto` (the default: each agent tries the bus and falls back to the mailbox).
//!
//! ```text
//! <root>/<fleet>-<uid>/<slot>/   the agent's workspace, on a filesystem the nodes share
//!                     job.sh     the batch script, only until Slurm has its copy (it holds
//!                                the agent's credentials)
//!                     agent.secrets  those credentials (0600), written as the job starts and
//!                                removed by the agent once read: never in its environment
//!                     agent.log  the job's output
//! <root>/<fleet>-<uid>/mailbox/  inbox, outbox, archive (`<job>_<NN>.jsonl`, NN = slot)
//! ```
//!
//! The batch script runs the agent as its child and passes SIGTERM on (Slurm signals only the
//! batch shell with `--signal=B:TERM`); an agent that exits with an error leaves a
//! `worker_error` line in the mailbox, so a dead worker is reported whichever transport it used.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use clawfleet_core::{BackendKind, FleetName};
use clawfleet_proto::api::Isolation;
use clawfleet_proto::cluster::TransportMode;
use tokio::process::Command;

use crate::{Action, Applied, Backend, BackendError, ConfigKey, Deployment, Instance, InstanceState, config_key, env};

/// Where and how the slurm backend runs agents.
#[derive(Debug, Clone)]
pub struct SlurmConfig {
    /// The `clawfleet` binary, as the compute nodes see it.
    pub program: PathBuf,
    /// Where agent workspaces live, on a filesystem the nodes share.
    pub root: PathBuf,
    pub partition: Option<String>,
    /// Run Slurm's commands on this ssh host (an alias of ~/.ssh/config) instead of here.
    pub login: Option<String>,
    /// For fleets whose profile does not say.
    pub transport: TransportMode,
}

/// Where and how one fleet's jobs run: the backend's defaults under the fleet's profile.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    login: Option<String>,
    partition: Option<String>,
    account: Option<String>,
    qos: Option<String>,
    time_limit: Option<String>,
    root: PathBuf,
    transport: TransportMode,
}

pub struct SlurmBackend {
    config: SlurmConfig,
    /// Jobs submitted per (fleet, slot): a slot's restarts are its submissions less one.
    submitted: Mutex<HashMap<(FleetName, u32), u32>>,
}

impl std::fmt::Debug for SlurmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlurmBackend").field("root", &self.config.root).field("login", &self.config.login).finish()
    }
}

/// One job of a fleet, as `squeue` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub slot: u32,
    pub key: String,
    pub state: String,
    pub nodes: String,
    pub reason: String,
}

/// The job name of an agent.
pub fn job_name(fleet: &FleetName, slot: u32, key: &str) -> String {
    format!("cf.{fleet}.{slot}.{key}")
}

/// The jobs of `fleet` among `squeue -h -o '%i|%j|%T|%N|%r'` lines; other lines are skipped.
pub fn parse_squeue(fleet: &FleetName, text: &str) -> Vec<Job> {
    let prefix = format!("cf.{fleet}.");
    text.lines()
        .filter_map(|line| {
            let mut f = line.trim().splitn(5, '|');
            let (id, name, state, nodes, reason) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next().unwrap_or(""));
            let (slot, key) = name.strip_prefix(&prefix)?.split_once('.')?;
            Some(Job {
                id: id.to_owned(),
                slot: slot.parse().ok()?,
                key: key.to_owned(),
                state: state.to_owned(),
                nodes: nodes.to_owned(),
                reason: reason.to_owned(),
            })
        })
        .collect()
}

fn replica_state(job: &Job) -> InstanceState {
    match job.state.as_str() {
        "RUNNING" => InstanceState::Running,
        "PENDING" | "CONFIGURING" | "REQUEUED" | "RESIZING" => InstanceState::Starting,
        "COMPLETING" | "STOPPED" | "SIGNALING" => InstanceState::Stopping,
        "SUSPENDED" => InstanceState::Restarting { last_exit: "was suspended by Slurm".into() },
        other => InstanceState::Failed(format!("job {} is {other} ({})", job.id, job.reason)),
    }
}

/// Quotes a word for a POSIX shell (the remote side of ssh runs one).
fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl SlurmBackend {
    pub fn new(config: SlurmConfig) -> SlurmBackend {
        SlurmBackend { config, submitted: Mutex::new(HashMap::new()) }
    }

    fn target(&self, d: &Deployment) -> Target {
        let c = d.cluster.clone().unwrap_or_default();
        let root = match (&c.workspace_root, &c.cluster_subdir) {
            (Some(r), Some(sub)) => PathBuf::from(r).join(sub),
            (Some(r), None) => PathBuf::from(r),
            (None, _) => self.config.root.clone(),
        };
        let login = c.login_host.or_else(|| self.config.login.clone());
        // Over ssh the control plane cannot read the mailbox: agents must use the bus.
        let transport = c.transport.unwrap_or(if login.is_some() { TransportMode::Bus } else { self.config.transport });
        Target {
            login,
            partition: c.partition.or_else(|| self.config.partition.clone()),
            account: c.account,
            qos: c.qos,
            time_limit: c.time_limit,
            root,
            transport,
        }
    }

    /// Runs a Slurm command here or on the login node, retrying transient failures.
    async fn run(&self, login: Option<&str>, program: &str, args: &[String], stdin: Option<String>) -> Result<String, BackendError> {
        let mut delay = Duration::from_millis(250);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut cmd = match login {
                None => {
                    let mut c = Command::new(program);
                    c.args(args);
                    c
                }
                Some(login) => {
                    let mut c = Command::new("ssh");
                    c.args(["-o", "BatchMode=yes", "-o", "ControlMaster=auto", "-o", "ControlPersist=60"])
                        .arg("-o")
                        .arg(format!("ControlPath={}/clawfleet-ssh-%C", std::env::temp_dir().display()))
                        .arg(login)
                        .arg("--")
                        .arg(std::iter::once(program.to_owned()).chain(args.iter().map(|a| shell_quote(a))).collect::<Vec<_>>().join(" "));
                    c
                }
            };
            cmd.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            let mut child = cmd.spawn().map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => BackendError::Unavailable(
                    BackendKind::Slurm,
                    format!(
                        "'{}' is not installed here (Slurm's client commands are needed, or --slurm-login HOST)",
                        cmd.as_std().get_program().to_string_lossy()
                    ),
                ),
                _ => BackendError::Permanent(format!("cannot run {program}: {e}")),
            })?;
            if let (Some(text), Some(mut pipe)) = (&stdin, child.stdin.take()) {
                use tokio::io::AsyncWriteExt;
                pipe.write_all(text.as_bytes()).await.map_err(|e| BackendError::Transient(format!("{program}: writing its input: {e}")))?;
            }
            let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
                .await
                .map_err(|_| BackendError::Transient(format!("{program} did not finish within 60 s")))?
                .map_err(|e| BackendError::Permanent(format!("{program}: {e}")))?;
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            let transient = out.status.code() == Some(255) && login.is_some()
                || err.contains("Unable to contact slurm controller")
                || err.contains("Socket timed out")
                || err.contains("Resource temporarily unavailable");
            if transient && attempt < 4 {
                tracing::warn!(program, attempt, error = %err, "Slurm command failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                continue;
            }
            let via = login.map(|l| format!(" (on {l} over ssh)")).unwrap_or_default();
            let message = format!("{program}{via} failed ({}): {err}", out.status);
            return Err(if transient { BackendError::Transient(message) } else { BackendError::Permanent(message) });
        }
    }

    async fn jobs(&self, login: Option<&str>, fleet: &FleetName) -> Result<Vec<Job>, BackendError> {
        let out = self.run(login, "squeue", &["-h".into(), "-o".into(), "%i|%j|%T|%N|%r".into()], None).await?;
        Ok(parse_squeue(fleet, &out))
    }

    fn fleet_dir(t: &Target, d: &Deployment) -> PathBuf {
        t.root.join(format!("{}-{}", d.fleet, d.uid))
    }

    /// The batch script of one agent.
    fn script(&self, t: &Target, d: &Deployment, slot: u32, name: &str) -> String {
        let base = Self::fleet_dir(t, d);
        let ws = base.join(slot.to_string());
        let mut s = String::from("#!/bin/sh\n");
        s.push_str(&format!("#SBATCH --job-name={name}\n"));
        s.push_str(&format!("#SBATCH --output={}\n", ws.join("agent.log").display()));
        s.push_str(&format!("#SBATCH --chdir={}\n", ws.display()));
        s.push_str("#SBATCH --ntasks=1\n#SBATCH --cpus-per-task=1\n#SBATCH --oversubscribe\n");
        // SIGTERM a minute before a time limit: the agent ends its turn and flushes.
        s.push_str("#SBATCH --signal=B:TERM@60\n");
        for (option, value) in [("partition", &t.partition), ("account", &t.account), ("qos", &t.qos), ("time", &t.time_limit)] {
            if let Some(v) = value {
                s.push_str(&format!("#SBATCH --{option}={v}\n"));
            }
        }
        let q = |p: &std::path::Path| shell_quote(&p.display().to_string());
        let (secrets, public): (Vec<_>, Vec<_>) = d.agent_env(slot).into_iter().partition(|(k, _)| env::SECRET_VARS.contains(k));
        for (k, v) in public {
            s.push_str(&format!("export {k}={}\n", shell_quote(&v)));
        }
        // Credentials go to a file only this job's user reads, which the agent removes once it
        // has read it: not to its environment, which its brains could read in /proc.
        let secrets_file = ws.join("agent.secrets");
        s.push_str(&format!("(umask 077 && cat > {}) <<'CLAWFLEET_SECRETS'\n", q(&secrets_file)));
        for (k, v) in secrets {
            s.push_str(&format!("{k}={v}\n"));
        }
        s.push_str("CLAWFLEET_SECRETS\n");
        s.push_str(&format!("export {}={}\n", env::SECRETS_FILE, q(&secrets_file)));
        s.push_str(&format!("export {}={}\n", env::WORKSPACE, q(&ws)));
        s.push_str(&format!("export {}={}\n", env::TRANSPORT, t.transport));
        s.push_str(&format!("export {}={}\n", env::MAILBOX, q(&base)));
        // The agent is the shell's child: Slurm's early SIGTERM reaches the batch shell only.
        s.push_str(&format!("{} agent &\n", shell_quote(&self.config.program.display().to_string())));
        s.push_str("pid=$!\ntrap 'kill -TERM $pid 2>/dev/null' TERM INT\nwait $pid; rc=$?\n");
        s.push_str("while kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done\n");
        let outbox = base.join("mailbox").join("outbox");
        let file = format!("${{SLURM_JOB_ID}}_{slot:02}.jsonl");
        s.push_str(&format!(
            "if [ $rc -ne 0 ]; then\n  mkdir -p {o} {a}\n  printf '{{\"type\":\"worker_error\",\"job_id\":\"%s\",\"node_id\":{slot},\"error\":\"the agent exited with status %d (its log: agent.log in its workspace)\"}}\\n' \"$SLURM_JOB_ID\" $rc >> {o}/{file}\n  mv {o}/{file} {a}/ 2>/dev/null\nfi\nexit $rc\n",
            o = q(&outbox),
            a = q(&base.join("mailbox").join("archive")),
        ));
        s
    }

    async fn submit(&self, t: &Target, d: &Deployment, slot: u32, key: &str) -> Result<(), BackendError> {
        let ws = Self::fleet_dir(t, d).join(slot.to_string());
        let name = job_name(&d.fleet, slot, key);
        let script = self.script(t, d, slot, &name);
        let path = ws.join("job.sh");
        if t.login.is_none() {
            std::fs::create_dir_all(&ws)
                .map_err(|e| BackendError::Permanent(format!("cannot create the workspace {}: {e}", ws.display())))?;
            write_private(&path, &script).map_err(|e| BackendError::Permanent(format!("cannot write {}: {e}", path.display())))?;
            let submitted = self.run(None, "sbatch", &["--parsable".into(), path.display().to_string()], None).await;
            // Slurm keeps its own copy; this one holds credentials, in the agent's workspace.
            let _ = std::fs::remove_file(&path);
            submitted?;
        } else {
            // The script reaches the login node on sbatch's stdin; the workspace must exist there.
            let mkdir = format!("mkdir -p {}", shell_quote(&ws.display().to_string()));
            self.run(t.login.as_deref(), "sh", &["-c".into(), mkdir], None).await?;
            self.run(t.login.as_deref(), "sbatch", &["--parsable".into()], Some(script)).await?;
        }
        *self.submitted.lock().expect("not poisoned").entry((d.fleet.clone(), slot)).or_insert(0) += 1;
        Ok(())
    }

    async fn cancel(&self, login: Option<&str>, ids: &[String]) -> Result<(), BackendError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.run(login, "scancel", ids, None).await.map(drop)
    }
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o700).open(path)?;
    f.write_all(text.as_bytes())
}

#[async_trait]
impl Backend for SlurmBackend {
    fn isolation(&self) -> Isolation {
        Isolation::BatchJob
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Slurm
    }

    /// The agent's workspace on the shared filesystem, when Slurm's commands run here (the
    /// login node is this machine, as it is for the mailbox); over ssh it is the cluster's.
    fn workspace(&self, d: &Deployment, slot: u32) -> Option<PathBuf> {
        let t = self.target(d);
        t.login.is_none().then(|| Self::fleet_dir(&t, d).join(slot.to_string()))
    }

    fn key(&self, d: &Deployment, slot: u32) -> ConfigKey {
        let mut vars = d.agent_env(slot);
        vars.push(("program", self.config.program.display().to_string()));
        vars.push(("target", format!("{:?}", self.target(d))));
        config_key(&vars)
    }

    async fn observe(&self, d: &Deployment) -> Result<Vec<Instance>, BackendError> {
        let t = self.target(d);
        let jobs = self.jobs(t.login.as_deref(), &d.fleet).await?;
        let submitted = self.submitted.lock().expect("not poisoned");
        Ok(jobs
            .into_iter()
            .map(|j| Instance {
                slot: j.slot,
                key: j.key.parse().ok(),
                state: replica_state(&j),
                restarts: submitted.get(&(d.fleet.clone(), j.slot)).map_or(0, |n| n.saturating_sub(1)),
                node: (!j.nodes.is_empty() && j.nodes != "(null)").then(|| j.nodes.clone()),
                id: format!("job {}", j.id),
            })
            .collect())
    }

    async fn execute(&self, d: &Deployment, actions: &[Action]) -> Result<Applied, BackendError> {
        let t = self.target(d);
        if t.login.is_some() && t.transport != TransportMode::Bus {
            return Err(BackendError::Permanent(format!(
                "transport '{}' needs the mailbox on a filesystem this control plane reads, but the fleet runs over ssh on {}: \
                 run clawfleet up on the login node, or give the profile \"transport\": \"bus\"",
                t.transport,
                t.login.as_deref().unwrap_or_default()
            )));
        }
        if t.login.is_none() {
            let mailbox = Self::fleet_dir(&t, d);
            clawfleet_mailbox::Mailbox::open(&mailbox).map_err(|e| BackendError::Permanent(e.to_string()))?;
        }
        let cancel: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop { instance, .. } => instance.strip_prefix("job ").map(str::to_owned),
                _ => None,
            })
            .collect();
        self.cancel(t.login.as_deref(), &cancel).await?;
        for action in actions {
            // A job that ended is gone from the queue by itself: `Forget` has nothing to do.
            if let Action::Start { slot } = action {
                self.submit(&t, d, *slot, &self.key(d, *slot).to_string()).await?;
            }
        }
        Ok(Applied::Started)
    }

    async fn remove(&self, d: &Deployment) -> Result<bool, BackendError> {
        let login = self.target(d).login;
        let jobs = self.jobs(login.as_deref(), &d.fleet).await?;
        if jobs.is_empty() {
            self.submitted.lock().expect("not poisoned").retain(|(f, _), _| f != &d.fleet);
            return Ok(true);
        }
        let ids: Vec<String> = jobs.iter().filter(|j| j.state != "COMPLETING").map(|j| j.id.clone()).collect();
        self.cancel(login.as_deref(), &ids).await?;
        Ok(false)
    }

    async fn shutdown(&self) {
        // Slurm jobs outlive the control plane; the next `up` finds them by name.
    }

    fn mailbox(&self, d: &Deployment) -> Option<PathBuf> {
        let t = self.target(d);
        (t.login.is_none()).then(|| Self::fleet_dir(&t, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_of_the_fleet_are_parsed_and_others_skipped() {
        let fleet: FleetName = "squad".parse().unwrap();
        let text = "12|cf.squad.0.00ab|RUNNING|vm|None\n\
                    13|cf.squad.1.00ab|PENDING||Resources\n\
                    14|cf.other.0.00ab|RUNNING|vm|None\n\
                    15|somebody-elses-job|RUNNING|vm|None\n\
                    garbage\n\
                    16|cf.squad.x.00ab|RUNNING|vm|None\n";
        let jobs = parse_squeue(&fleet, text);
        assert_eq!(jobs.len(), 2);
        assert_eq!((jobs[0].id.as_str(), jobs[0].slot, jobs[0].state.as_str()), ("12", 0, "RUNNING"));
        assert_eq!(replica_state(&jobs[1]), InstanceState::Starting);
        assert!(matches!(replica_state(&Job { state: "FAILED".into(), ..jobs[0].clone() }), InstanceState::Failed(_)));
    }

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("abc-1.2"), "abc-1.2");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b;rm -rf /"), "'a b;rm -rf /'");
    }
}

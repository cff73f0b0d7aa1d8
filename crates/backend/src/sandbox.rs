//! How the local backend confines the agents it starts, and their brains with them.
//!
//! Local agents run on the operator's machine, beside the control plane's data directory: its
//! database (the bus secret), its API token, every other agent's workspace. A brain runs
//! whatever its prompt asks, so an agent must not be able to read any of that.
//!
//! - **Landlock** (the default where the kernel has it): each agent is its own Landlock domain.
//!   It may read and execute everything outside the data directory (the system paths a brain
//!   needs), read and write its own workspace (and the directories the operator adds), write
//!   the harmless devices (`/dev/null`, ttys), and nothing else. Landlock has no deny rule, so
//!   "everything but the data directory" is built as a rule for every sibling of each directory
//!   on the way from `/` down to it. With ABI 6, signals and abstract unix sockets are scoped
//!   too: an agent can neither signal the control plane or another agent nor reach their
//!   abstract sockets, and Landlock's ptrace rule keeps it out of their memory
//!   (`/proc/PID/mem`). No credential is in any agent's environment, which stays readable.
//! - **User** (where Landlock is missing and the control plane runs as root): each agent runs as
//!   an unprivileged uid of its own, which owns only its workspace; the data directory is then
//!   traversable (0711) but its files stay 0600.
//! - **Off**: agents run as the operator, and can read everything the operator can.
//!
//! The control plane decides; each agent enforces Landlock on itself (`clawfleet agent` does
//! it first thing, before any thread or connection exists, and refuses to run if it cannot) and
//! runs every brain process in a nested domain of its own (`clawfleet_agent::sandbox`). The
//! backend hands the rules over in the agent's environment ([`crate::env::SANDBOX_HIDE`],
//! [`crate::env::SANDBOX_WRITE`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clawfleet_proto::api::Isolation;
use landlock::{ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr};

/// What the operator asked for (`up --agent-sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// Landlock if the kernel has it, else an unprivileged user of its own when running as
    /// root, else nothing (with a warning).
    #[default]
    Auto,
    Landlock,
    User,
    Off,
}

impl std::str::FromStr for SandboxMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SandboxMode::Auto),
            "landlock" => Ok(SandboxMode::Landlock),
            "user" => Ok(SandboxMode::User),
            "off" => Ok(SandboxMode::Off),
            other => Err(format!("unknown agent sandbox '{other}': the choices are auto, landlock, user and off")),
        }
    }
}

/// Why a sandbox cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("--agent-sandbox landlock: this kernel has no Landlock (or it is disabled); use --agent-sandbox user (as root) or off")]
    NoLandlock,
    #[error("--agent-sandbox user needs the control plane to run as root (it runs as uid {0})")]
    NotRoot(u32),
    #[error("cannot use the data directory {path} for the sandbox: {source}")]
    DataDir { path: String, source: std::io::Error },
}

/// The Landlock ABI of the running kernel (0 without Landlock): the newest ABI whose every
/// filesystem right it takes.
pub fn landlock_abi() -> u32 {
    let known = [(ABI::V6, 6), (ABI::V5, 5), (ABI::V4, 4), (ABI::V3, 3), (ABI::V2, 2), (ABI::V1, 1)];
    known
        .into_iter()
        .find(|(abi, _)| {
            Ruleset::default()
                .set_compatibility(CompatLevel::HardRequirement)
                .handle_access(AccessFs::from_all(*abi))
                .and_then(|r| r.create())
                .is_ok()
        })
        .map_or(0, |(_, n)| n)
}

/// How agents are confined: chosen once, when the control plane starts.
#[derive(Debug, Clone)]
pub struct Sandbox {
    isolation: Isolation,
    /// The directory hidden from agents (the data directory), canonical.
    hidden: PathBuf,
    /// More directories agents may write (a brain's own state, say).
    writable: Vec<PathBuf>,
}

impl Sandbox {
    /// Resolves `mode` on this machine. `data_dir` is what agents must not see.
    pub fn new(mode: SandboxMode, data_dir: &Path, writable: Vec<PathBuf>) -> Result<Sandbox, SandboxError> {
        let hidden = data_dir.canonicalize().map_err(|source| SandboxError::DataDir { path: data_dir.display().to_string(), source })?;
        let abi = landlock_abi();
        let root = nix::unistd::geteuid().is_root();
        let isolation = match mode {
            SandboxMode::Off => Isolation::None,
            SandboxMode::Landlock if abi == 0 => return Err(SandboxError::NoLandlock),
            SandboxMode::Landlock => Isolation::Landlock { abi },
            SandboxMode::User if !root => return Err(SandboxError::NotRoot(nix::unistd::geteuid().as_raw())),
            SandboxMode::User => Isolation::User,
            SandboxMode::Auto if abi > 0 => Isolation::Landlock { abi },
            SandboxMode::Auto if root => Isolation::User,
            SandboxMode::Auto => Isolation::None,
        };
        if isolation == Isolation::User {
            // Agents of other uids must reach their workspaces; nothing here is listable.
            std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o711))
                .map_err(|source| SandboxError::DataDir { path: hidden.display().to_string(), source })?;
        }
        Ok(Sandbox { isolation, hidden, writable })
    }

    pub fn isolation(&self) -> Isolation {
        self.isolation.clone()
    }

    /// Confines one agent whose workspace is `workspace` (created already) to `cmd`, before it
    /// is spawned. `identity` picks its own uid in user mode.
    pub(crate) fn confine(&self, cmd: &mut tokio::process::Command, workspace: &Path, identity: u64) -> Result<(), String> {
        match self.isolation {
            Isolation::Landlock { .. } => {
                let write: Vec<&Path> = std::iter::once(workspace).chain(self.writable.iter().map(PathBuf::as_path)).collect();
                let write = std::env::join_paths(write).map_err(|e| format!("a writable directory cannot be passed on: {e}"))?;
                cmd.env(crate::env::SANDBOX_HIDE, &self.hidden).env(crate::env::SANDBOX_WRITE, write);
            }
            Isolation::User => {
                let uid = agent_uid(identity);
                let mut dir = workspace.to_owned();
                // The workspace is the agent's alone; the directories above it only traversable.
                chown_tree(&dir, uid)?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| format!("cannot make {} private: {e}", dir.display()))?;
                while dir.pop() && dir.starts_with(&self.hidden) && dir != self.hidden {
                    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711));
                }
                // As root, std drops the supplementary groups too.
                cmd.uid(uid).gid(uid);
            }
            _ => {}
        }
        Ok(())
    }
}

/// The uid of one agent in user mode: its own, from the range 2^20..2^31, which no
/// distribution hands out to people.
fn agent_uid(key: u64) -> u32 {
    const BASE: u64 = 1 << 20;
    (BASE + key % ((1u64 << 31) - BASE)) as u32
}

fn chown_tree(dir: &Path, uid: u32) -> Result<(), String> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid)).map_err(|e| format!("cannot give {} to uid {uid}: {e}", dir.display()))?;
    for entry in std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            chown_tree(&path, uid)?;
        } else {
            let _ = std::os::unix::fs::lchown(&path, Some(uid), Some(uid));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_say_the_choices() {
        assert_eq!("off".parse::<SandboxMode>(), Ok(SandboxMode::Off));
        assert_eq!("landlock".parse::<SandboxMode>(), Ok(SandboxMode::Landlock));
        assert_eq!(
            "jail".parse::<SandboxMode>().unwrap_err(),
            "unknown agent sandbox 'jail': the choices are auto, landlock, user and off"
        );
    }

    #[test]
    fn agent_uids_are_unprivileged() {
        for key in [0, 1, u64::MAX, 1 << 40] {
            let uid = agent_uid(key);
            assert!((1 << 20..1 << 31).contains(&uid), "{uid}");
        }
    }
}

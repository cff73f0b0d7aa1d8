//! Landlock, enforced by the agent on itself and on its brains.
//!
//! A local backend that sandboxes its agents hands each one the directory it must not see (the
//! control plane's data directory) and the directories it may write (its workspace first).
//! [`confine`] turns that into one Landlock domain for the whole agent process: it may read
//! and execute everything except the hidden directory, write the directories it was given and
//! the harmless devices, and (ABI 6) neither signal nor reach the abstract sockets of processes
//! outside its domain. Landlock restricts the calling thread and its future children, so it is
//! called before any other thread exists.
//!
//! Every brain process then runs in a domain nested in the agent's ([`nest`], through
//! `clawfleet brain-exec`): Landlock keeps a process from attaching to a less restricted one, so
//! a brain can neither read its agent's memory (where its bus login is) nor signal it. (Its
//! agent's environment stays readable, and holds no credential: those come in a secrets file
//! the agent removes before any brain starts.)

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};

/// The newest Landlock ABI this code asks for; older kernels enforce what they have.
const ABI_ASKED: ABI = ABI::V6;

/// What a sandboxed agent may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// Hidden from the agent, and everything under it.
    pub hide: PathBuf,
    /// Readable and writable (the agent's workspace first).
    pub write: Vec<PathBuf>,
}

/// Why a sandbox could not be enforced.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot build the Landlock ruleset: {0}")]
    Ruleset(String),
    #[error("the kernel did not enforce the Landlock ruleset (no Landlock, or it is disabled)")]
    NotEnforced,
}

fn ruleset_error(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Ruleset(e.to_string())
}

/// Confines the calling thread and everything it starts afterwards. Call it before any other
/// thread exists.
pub fn confine(c: &Confinement) -> Result<(), SandboxError> {
    let read = AccessFs::from_read(ABI_ASKED);
    let all = AccessFs::from_all(ABI_ASKED);
    let devices = read | AccessFs::WriteFile | AccessFs::IoctlDev;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(ruleset_error)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(ruleset_error)?
        .create()
        .map_err(ruleset_error)?;
    for path in everything_but(&c.hide) {
        // A path that went away meanwhile is simply not granted.
        if let Ok(fd) = PathFd::new(&path) {
            ruleset = ruleset.add_rule(PathBeneath::new(fd, read)).map_err(ruleset_error)?;
        }
    }
    for dev in ["/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/ptmx", "/dev/pts"] {
        if let Ok(fd) = PathFd::new(dev) {
            ruleset = ruleset.add_rule(PathBeneath::new(fd, devices)).map_err(ruleset_error)?;
        }
    }
    for dir in &c.write {
        let fd = PathFd::new(dir).map_err(|e| SandboxError::Ruleset(format!("{}: {e}", dir.display())))?;
        ruleset = ruleset.add_rule(PathBeneath::new(fd, all)).map_err(ruleset_error)?;
    }
    enforced(ruleset.restrict_self().map_err(ruleset_error)?.ruleset)
}

/// Moves the calling process into a Landlock domain nested in its own: it keeps every right it
/// had but no longer reaches its parent's `/proc` entries, signals or abstract sockets.
pub fn nest() -> Result<(), SandboxError> {
    // A domain must handle some right; making block devices is one nobody here needs.
    let ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::MakeBlock)
        .map_err(ruleset_error)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(ruleset_error)?
        .create()
        .map_err(ruleset_error)?;
    enforced(ruleset.restrict_self().map_err(ruleset_error)?.ruleset)
}

fn enforced(status: RulesetStatus) -> Result<(), SandboxError> {
    match status {
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Ok(()),
        RulesetStatus::NotEnforced => Err(SandboxError::NotEnforced),
    }
}

/// Every path that, granted recursively, gives everything on this machine except `hidden`: each
/// sibling of each directory from `/` down to `hidden`. Symbolic links are left out (what they
/// point to is granted, or not, where it is).
pub fn everything_but(hidden: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut at = PathBuf::from("/");
    for part in hidden.components().skip(1) {
        let next = at.join(part);
        if let Ok(entries) = std::fs::read_dir(&at) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path != next && entry.file_type().is_ok_and(|t| !t.is_symlink()) {
                    out.push(path);
                }
            }
        }
        at = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_but_a_directory_is_its_ancestors_siblings() {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().canonicalize().unwrap();
        for dir in ["a/data/agents", "a/other", "b"] {
            std::fs::create_dir_all(base.join(dir)).unwrap();
        }
        std::fs::write(base.join("a/file"), "x").unwrap();
        std::os::unix::fs::symlink(base.join("a/data"), base.join("a/link-to-data")).unwrap();
        let granted = everything_but(&base.join("a/data"));
        for yes in ["a/other", "a/file", "b"] {
            assert!(granted.contains(&base.join(yes)), "{yes} should be granted: {granted:?}");
        }
        for no in ["a", "a/data", "a/data/agents", "a/link-to-data"] {
            assert!(!granted.contains(&base.join(no)), "{no} must not be granted");
        }
        assert!(granted.iter().all(|p| !p.starts_with(base.join("a/data"))));
        assert!(granted.contains(&PathBuf::from("/usr")));
    }
}

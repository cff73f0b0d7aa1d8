//! A fleet's desired state, validated from what a user asked for.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use clawfleet_proto::MAX_PROMPT_BYTES;
use clawfleet_proto::api::{DeployPolicy, LaunchRequest};
use clawfleet_proto::cluster::ClusterSpec;

use crate::brain::{BrainSpec, BrainSpecError};
use crate::names::{FleetName, NameError};

/// Most agents one fleet may have.
pub const MAX_REPLICAS: u32 = 10_000;
/// Longest version label.
pub const MAX_VERSION_LEN: usize = 64;
pub const MAX_IMAGE_LEN: usize = 256;

/// A version label: 1-64 printable characters without spaces.
pub fn check_version(version: &str) -> Result<(), SpecError> {
    if version.is_empty() || version.len() > MAX_VERSION_LEN || !version.chars().all(|c| c.is_ascii_graphic()) {
        return Err(SpecError::Version(version.to_owned()));
    }
    Ok(())
}

/// A Docker image reference, checked for shape only (the engine says whether it exists).
pub fn check_image(image: &str) -> Result<(), SpecError> {
    if image.is_empty() || image.len() > MAX_IMAGE_LEN || !image.chars().all(|c| c.is_ascii_graphic()) || image.starts_with('-') {
        return Err(SpecError::Image(image.to_owned()));
    }
    Ok(())
}

/// Where a fleet's agents run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Local,
    Docker,
    Slurm,
    /// Agents started by the user (`clawfleet agent --join`); clawfleet starts nothing.
    External,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Docker => "docker",
            BackendKind::Slurm => "slurm",
            BackendKind::External => "external",
        }
    }
}

impl FromStr for BackendKind {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "local" => Ok(BackendKind::Local),
            "docker" => Ok(BackendKind::Docker),
            "slurm" => Ok(BackendKind::Slurm),
            "external" => Ok(BackendKind::External),
            other => Err(SpecError::UnknownBackend(other.to_owned())),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fleet's desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSpec {
    pub name: FleetName,
    pub replicas: u32,
    pub backend: BackendKind,
    pub brain: BrainSpec,
    /// The system prompt every agent starts its conversation with.
    pub prompt: Option<String>,
    /// A label the user gives a version of the fleet (agents report it back).
    pub version: String,
    /// The container image (container backends).
    pub image: Option<String>,
    /// Where and how the slurm backend runs the fleet.
    pub cluster: Option<ClusterSpec>,
    /// How its agents are replaced when its configuration changes.
    pub deploy: DeployPolicy,
    /// Environment variables its brains get.
    pub env: BTreeMap<String, String>,
    /// The control-plane secrets its brains get, by name (sorted, each once).
    pub secrets: Vec<String>,
}

/// The longest a deploy may go without progress.
pub const MAX_DEPLOY_DEADLINE_S: u64 = 3_600;

/// The most environment variables and secrets a fleet's brains get.
pub const MAX_BRAIN_VARS: usize = 64;
/// The longest value of one of them.
pub const MAX_ENV_VALUE_BYTES: usize = 4096;
/// The longest secret's value.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// An environment variable's name for a brain: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes,
/// not one of clawfleet's own (`CLAWFLEET_*`). Also a secret's name.
pub fn check_var_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !ok {
        return Err(SpecError::VarName(name.chars().take(80).collect()));
    }
    if name.to_ascii_uppercase().starts_with("CLAWFLEET_") {
        return Err(SpecError::ReservedVar(name.to_owned()));
    }
    Ok(())
}

/// A secret's value: at most 64 KiB, and no NUL (it becomes an environment variable).
pub fn check_secret_value(name: &str, value: &str) -> Result<(), SpecError> {
    if value.len() > MAX_SECRET_BYTES || value.contains('\0') {
        return Err(SpecError::SecretValue(name.to_owned()));
    }
    Ok(())
}

/// Why a spec, a prompt or a target list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Brain(#[from] BrainSpecError),
    #[error("unknown backend '{0}' (expected local, docker, slurm or external)")]
    UnknownBackend(String),
    #[error("replicas must be between 0 and {MAX_REPLICAS}, got {0}")]
    Replicas(u32),
    #[error("{what} is {len} bytes, over the {MAX_PROMPT_BYTES}-byte limit")]
    PromptTooLarge { what: &'static str, len: usize },
    #[error("prompt is empty")]
    EmptyPrompt,
    #[error("version label must be 1-{MAX_VERSION_LEN} printable characters without spaces, got '{0}'")]
    Version(String),
    #[error("image must be a Docker image reference (1-{MAX_IMAGE_LEN} printable characters without spaces), got '{0}'")]
    Image(String),
    #[error("--image is for container backends (docker); the {0} backend runs the clawfleet binary itself")]
    ImageNotForBackend(BackendKind),
    #[error("--cluster is for the slurm backend, not {0}")]
    ClusterNotForBackend(BackendKind),
    #[error("cluster profile: {0}")]
    Cluster(String),
    #[error("fleet '{fleet}' has no agent {slot} (its agents are {range})")]
    UnknownAgent { fleet: String, slot: u32, range: String },
    #[error("fleet '{0}' has no agents")]
    NoAgents(String),
    #[error("slots must be N or A-B (A at most B), got '{0}'")]
    SlotRange(String),
    #[error("'{0}' is not an environment variable name (letters, digits and '_', not starting with a digit, at most 128)")]
    VarName(String),
    #[error("'{0}' is clawfleet's own: a brain's variables may not start with CLAWFLEET_")]
    ReservedVar(String),
    #[error("env {0}: the value is over {MAX_ENV_VALUE_BYTES} bytes or holds a NUL")]
    EnvValue(String),
    #[error("{0} variables and secrets, over the limit of {MAX_BRAIN_VARS}")]
    TooManyVars(usize),
    #[error("'{0}' is both an env variable and a secret")]
    VarTwice(String),
    #[error("secret {0}: the value is over {MAX_SECRET_BYTES} bytes or holds a NUL")]
    SecretValue(String),
    #[error("{0}")]
    Deploy(String),
}

impl SpecError {
    /// The field of a fleet's declaration the error is about, where it is about one.
    pub fn field(&self) -> Option<&'static str> {
        Some(match self {
            SpecError::Name(_) => "name",
            SpecError::Brain(_) => "brain",
            SpecError::UnknownBackend(_) => "backend",
            SpecError::Replicas(_) => "replicas",
            SpecError::PromptTooLarge { .. } | SpecError::EmptyPrompt => "prompt",
            SpecError::Version(_) => "version",
            SpecError::Image(_) | SpecError::ImageNotForBackend(_) => "image",
            SpecError::ClusterNotForBackend(_) | SpecError::Cluster(_) => "cluster",
            SpecError::EnvValue(_) => "env",
            SpecError::Deploy(_) => "deploy",
            SpecError::VarName(_) | SpecError::ReservedVar(_) | SpecError::TooManyVars(_) => "env",
            SpecError::VarTwice(_) => "secrets",
            SpecError::UnknownAgent { .. } | SpecError::NoAgents(_) | SpecError::SlotRange(_) | SpecError::SecretValue(_) => return None,
        })
    }
}

/// Checks a prompt's size: `what` names it in the error ("prompt", "system prompt").
pub fn check_prompt(what: &'static str, prompt: &str) -> Result<(), SpecError> {
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(SpecError::PromptTooLarge { what, len: prompt.len() });
    }
    Ok(())
}

pub fn check_replicas(replicas: u32) -> Result<u32, SpecError> {
    if replicas > MAX_REPLICAS {
        return Err(SpecError::Replicas(replicas));
    }
    Ok(replicas)
}

impl FleetSpec {
    /// Validates a launch request; `default_brain` applies when the request names none.
    pub fn from_request(req: &LaunchRequest, default_brain: &BrainSpec) -> Result<FleetSpec, SpecError> {
        let name: FleetName = req.name.parse()?;
        let backend = req.backend.as_deref().map(str::parse).transpose()?.unwrap_or(BackendKind::Local);
        let brain = req.brain.as_deref().map(str::parse).transpose()?.unwrap_or_else(|| default_brain.clone());
        if let Some(p) = &req.prompt {
            check_prompt("system prompt", p)?;
        }
        let version = req.version.clone().unwrap_or_else(|| "1".to_owned());
        check_version(&version)?;
        if let Some(image) = &req.image {
            check_image(image)?;
            if backend != BackendKind::Docker {
                return Err(SpecError::ImageNotForBackend(backend));
            }
        }
        if let Some(cluster) = &req.cluster {
            cluster.check().map_err(SpecError::Cluster)?;
            if backend != BackendKind::Slurm {
                return Err(SpecError::ClusterNotForBackend(backend));
            }
        }
        let deploy = req.deploy.clone().unwrap_or_default();
        if deploy.canary == Some(0) {
            return Err(SpecError::Deploy("deploy.canary must be at least 1 agent".into()));
        }
        if let Some(d) = deploy.deadline_s.filter(|d| !(1..=MAX_DEPLOY_DEADLINE_S).contains(d)) {
            return Err(SpecError::Deploy(format!("deploy.deadline_s must be between 1 and {MAX_DEPLOY_DEADLINE_S} seconds, got {d}")));
        }
        for (k, v) in &req.env {
            check_var_name(k)?;
            if v.len() > MAX_ENV_VALUE_BYTES || v.contains('\0') {
                return Err(SpecError::EnvValue(k.clone()));
            }
        }
        let secrets: Vec<String> = req.secrets.iter().cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        for s in &secrets {
            check_var_name(s)?;
            if req.env.contains_key(s) {
                return Err(SpecError::VarTwice(s.clone()));
            }
        }
        if req.env.len() + secrets.len() > MAX_BRAIN_VARS {
            return Err(SpecError::TooManyVars(req.env.len() + secrets.len()));
        }
        Ok(FleetSpec {
            name,
            replicas: check_replicas(req.replicas)?,
            backend,
            brain,
            prompt: req.prompt.clone().filter(|p| !p.is_empty()),
            version,
            image: req.image.clone(),
            cluster: req.cluster.clone(),
            deploy,
            env: req.env.clone(),
            secrets,
        })
    }
}

/// The slots an injection or command goes to: every slot below `replicas` when `requested` is
/// `None`, else exactly the requested ones (sorted, without repeats), each of which must exist.
pub fn resolve_targets(fleet: &str, replicas: u32, requested: Option<&[u32]>) -> Result<Vec<u32>, SpecError> {
    if replicas == 0 {
        return Err(SpecError::NoAgents(fleet.to_owned()));
    }
    let Some(requested) = requested else { return Ok((0..replicas).collect()) };
    let mut slots = requested.to_vec();
    slots.sort_unstable();
    slots.dedup();
    if let Some(&slot) = slots.iter().find(|&&s| s >= replicas) {
        let range = if replicas == 1 { "0".to_owned() } else { format!("0-{}", replicas - 1) };
        return Err(SpecError::UnknownAgent { fleet: fleet.to_owned(), slot, range });
    }
    if slots.is_empty() {
        return Err(SpecError::NoAgents(fleet.to_owned()));
    }
    Ok(slots)
}

/// The slots an `N` or `A-B` range names, checked against the fleet's replica count before
/// anything is made of it (a range as wide as `0-300000000` is refused, not allocated).
pub fn slot_range(fleet: &str, replicas: u32, range: &str) -> Result<Vec<u32>, SpecError> {
    let bad = || SpecError::SlotRange(range.chars().take(64).collect());
    let (a, b): (u32, u32) = match range.split_once('-') {
        Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
        None => {
            let n = range.parse().map_err(|_| bad())?;
            (n, n)
        }
    };
    if a > b {
        return Err(bad());
    }
    if replicas == 0 {
        return Err(SpecError::NoAgents(fleet.to_owned()));
    }
    if b >= replicas {
        let range = if replicas == 1 { "0".to_owned() } else { format!("0-{}", replicas - 1) };
        return Err(SpecError::UnknownAgent { fleet: fleet.to_owned(), slot: b, range });
    }
    Ok((a..=b).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_are_checked_before_they_are_made() {
        type Case = (&'static str, u32, Result<Vec<u32>, &'static str>);
        let cases: [Case; 7] = [
            ("2", 4, Ok(vec![2])),
            ("1-3", 4, Ok(vec![1, 2, 3])),
            ("0-300000000", 4, Err("fleet 'f' has no agent 300000000 (its agents are 0-3)")),
            ("3-1", 4, Err("slots must be N or A-B (A at most B), got '3-1'")),
            ("x", 4, Err("slots must be N or A-B (A at most B), got 'x'")),
            ("0-99999999999", 4, Err("slots must be N or A-B (A at most B), got '0-99999999999'")),
            ("0", 0, Err("fleet 'f' has no agents")),
        ];
        for (range, replicas, want) in cases {
            assert_eq!(slot_range("f", replicas, range).map_err(|e| e.to_string()), want.map_err(str::to_owned), "{range}");
        }
    }

    fn req(name: &str, replicas: u32) -> LaunchRequest {
        LaunchRequest { name: name.into(), replicas, ..LaunchRequest::default() }
    }

    #[test]
    fn defaults() {
        let spec = FleetSpec::from_request(&req("squad", 8), &BrainSpec::Echo).unwrap();
        assert_eq!(spec.backend, BackendKind::Local);
        assert_eq!(spec.brain, BrainSpec::Echo);
        assert_eq!(spec.version, "1");
        assert_eq!(spec.prompt, None);
    }

    #[test]
    fn refusals_name_the_problem() {
        let err = |r: LaunchRequest| FleetSpec::from_request(&r, &BrainSpec::Echo).unwrap_err().to_string();
        assert_eq!(err(req("squad", 10_001)), "replicas must be between 0 and 10000, got 10001");
        assert_eq!(
            err(LaunchRequest { backend: Some("k8s".into()), ..req("s", 1) }),
            "unknown backend 'k8s' (expected local, docker, slurm or external)"
        );
        assert_eq!(
            err(LaunchRequest { version: Some("v 2".into()), ..req("s", 1) }),
            "version label must be 1-64 printable characters without spaces, got 'v 2'"
        );
        assert_eq!(
            err(LaunchRequest { prompt: Some("x".repeat(MAX_PROMPT_BYTES + 1)), ..req("s", 1) }),
            format!("system prompt is {} bytes, over the 65536-byte limit", MAX_PROMPT_BYTES + 1)
        );
        assert!(err(req("Bad", 1)).starts_with("fleet name 'Bad' may only contain"));
    }

    #[test]
    fn targets() {
        assert_eq!(resolve_targets("s", 3, None).unwrap(), vec![0, 1, 2]);
        assert_eq!(resolve_targets("s", 3, Some(&[2, 0, 2])).unwrap(), vec![0, 2]);
        assert_eq!(resolve_targets("s", 3, Some(&[3])).unwrap_err().to_string(), "fleet 's' has no agent 3 (its agents are 0-2)");
        assert_eq!(resolve_targets("s", 1, Some(&[1])).unwrap_err().to_string(), "fleet 's' has no agent 1 (its agents are 0)");
        assert_eq!(resolve_targets("s", 0, None).unwrap_err().to_string(), "fleet 's' has no agents");
    }
}

//! Cluster files (`clawfleet launch --backend slurm --cluster FILE`): where and how a fleet's
//! jobs run. A file is one profile, or codeswarm's whole configuration, from which the profile
//! `cluster.slurm.profiles.<name>` is taken (codeswarm's fields are read; the ones clawfleet has
//! no use for are accepted and ignored; any other field is an error, so a typo never passes).
//!
//! ```json
//! {"login_host": "hpc-login", "partition": "compute", "workspace_root": "/shared/agents",
//!  "inject_timeout_seconds": 120, "transport": "auto"}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One cluster profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Run Slurm's commands on this ssh host (an alias of ~/.ssh/config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Where agent workspaces and the mailbox live, on a filesystem the nodes share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_root: Option<String>,
    /// A directory under `workspace_root` (codeswarm's `cluster_subdir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_subdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// Slurm's `--time` (e.g. `00:30:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<String>,
    /// An injection its agent has not taken within this many seconds fails with `"timeout"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject_timeout_seconds: Option<u64>,
    /// How agents reach the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<TransportMode>,
    // Read from codeswarm's files, not used by clawfleet (its own retries apply).
    #[serde(default, skip_serializing)]
    pub ssh_retry_attempts: Option<Value>,
    #[serde(default, skip_serializing)]
    pub ssh_retry_delay_seconds: Option<Value>,
}

crate::named_enum! {
    /// How an agent reaches the control plane.
    pub enum TransportMode ("transport") {
        Bus = "bus",
        /// Files on a filesystem the nodes share, for nodes with no route to the bus.
        Mailbox = "mailbox",
        /// The bus when the node reaches it, else the mailbox.
        Auto = "auto",
    }
}

/// The longest host or Slurm name a profile may hold.
pub const MAX_NAME_BYTES: usize = 256;
/// The longest path a profile may hold.
pub const MAX_PATH_BYTES: usize = 1024;

/// Why a cluster file was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClusterFileError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("no profile '{profile}' in cluster.slurm.profiles (it has: {have})")]
    NoProfile { profile: String, have: String },
    #[error("profile '{profile}': {reason}")]
    Invalid { profile: String, reason: String },
}

/// Reads a cluster file: a profile on its own, or codeswarm's configuration with `profile`.
pub fn parse_cluster_file(text: &str, profile: &str) -> Result<ClusterSpec, ClusterFileError> {
    let v: Value = serde_json::from_str(text).map_err(|e| ClusterFileError::NotJson(e.to_string()))?;
    let invalid = |reason: String| ClusterFileError::Invalid { profile: profile.to_owned(), reason };
    let body = match v.pointer("/cluster/slurm/profiles") {
        Some(Value::Object(profiles)) => profiles.get(profile).cloned().ok_or_else(|| ClusterFileError::NoProfile {
            profile: profile.to_owned(),
            have: profiles.keys().cloned().collect::<Vec<_>>().join(", "),
        })?,
        Some(_) => return Err(invalid("cluster.slurm.profiles must be an object".into())),
        None if v.get("cluster").is_some() => {
            return Err(ClusterFileError::NoProfile { profile: profile.to_owned(), have: "no cluster.slurm.profiles".into() });
        }
        None => v,
    };
    let spec: ClusterSpec = serde_json::from_value(body).map_err(|e| invalid(e.to_string()))?;
    spec.check().map_err(invalid)?;
    Ok(spec)
}

impl ClusterSpec {
    /// The rules a profile follows beyond its shape.
    pub fn check(&self) -> Result<(), String> {
        // Stored with the fleet: every string is bounded.
        let names = [("login_host", &self.login_host), ("partition", &self.partition), ("account", &self.account), ("qos", &self.qos)];
        let paths = [("workspace_root", &self.workspace_root), ("cluster_subdir", &self.cluster_subdir)];
        for (field, value, max) in
            names.iter().map(|(f, v)| (f, v, MAX_NAME_BYTES)).chain(paths.iter().map(|(f, v)| (f, v, MAX_PATH_BYTES)))
        {
            if let Some(v) = value.as_deref().filter(|v| v.len() > max) {
                return Err(format!("{field} is {} bytes, over the {max}-byte limit", v.len()));
            }
        }
        for (field, value) in [("ssh_retry_attempts", &self.ssh_retry_attempts), ("ssh_retry_delay_seconds", &self.ssh_retry_delay_seconds)]
        {
            if let Some(v) = value
                && !(v.is_number() || v.as_str().is_some_and(|s| s.len() <= 20 && s.parse::<f64>().is_ok()))
            {
                return Err(format!("{field} must be a number"));
            }
        }
        if self.inject_timeout_seconds == Some(0) {
            return Err("inject_timeout_seconds must be at least 1".into());
        }
        for (field, value) in
            [("login_host", &self.login_host), ("partition", &self.partition), ("account", &self.account), ("qos", &self.qos)]
        {
            if let Some(v) = value
                && (v.is_empty() || v.starts_with('-') || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b)))
            {
                return Err(format!("{field} '{v}' is not a host or Slurm name"));
            }
        }
        if let Some(t) = &self.time_limit
            && (t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit() || b":-".contains(&b)))
        {
            return Err(format!("time_limit '{t}' is not a Slurm time (like 00:30:00 or 1-00:00:00)"));
        }
        for (field, value) in [("workspace_root", &self.workspace_root), ("cluster_subdir", &self.cluster_subdir)] {
            if let Some(v) = value
                && (v.is_empty() || v.contains(['\n', '\0']))
            {
                return Err(format!("{field} must be a path"));
            }
        }
        if self.workspace_root.as_deref().is_some_and(|r| !r.starts_with('/')) {
            return Err("workspace_root must be an absolute path (the nodes resolve it, not this directory)".into());
        }
        if self.cluster_subdir.as_deref().is_some_and(|d| d.starts_with('/') || d.split('/').any(|c| c == "..")) {
            return Err("cluster_subdir must be a relative path inside workspace_root".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_alone_or_inside_codeswarms_file() {
        let flat =
            r#"{"login_host":"hpc","partition":"compute","workspace_root":"/shared","inject_timeout_seconds":30,"transport":"auto"}"#;
        let spec = parse_cluster_file(flat, "default").unwrap();
        assert_eq!(spec.login_host.as_deref(), Some("hpc"));
        assert_eq!(spec.inject_timeout_seconds, Some(30));
        let codeswarm = r#"{"cluster":{"slurm":{"profiles":{"default":{"login_host":"hpc","workspace_root":"/w",
            "cluster_subdir":"codeswarm","partition":"compute","time_limit":"00:30:00","account":"acct","qos":"normal",
            "ssh_retry_attempts":4,"ssh_retry_delay_seconds":1.5}}}}}"#;
        let spec = parse_cluster_file(codeswarm, "default").unwrap();
        assert_eq!((spec.cluster_subdir.as_deref(), spec.qos.as_deref()), (Some("codeswarm"), Some("normal")));
        let e = parse_cluster_file(codeswarm, "gpu").unwrap_err();
        assert_eq!(e.to_string(), "no profile 'gpu' in cluster.slurm.profiles (it has: default)");
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        let err = |t: &str| parse_cluster_file(t, "default").unwrap_err().to_string();
        assert!(err("{").starts_with("not JSON"));
        assert!(err(r#"{"partiton":"x"}"#).contains("unknown field `partiton`"), "{}", err(r#"{"partiton":"x"}"#));
        assert!(err(r#"{"transport":"pigeon"}"#).contains("unknown variant `pigeon`, expected one of `bus`, `mailbox`, `auto`"));
        assert!(err(r#"{"inject_timeout_seconds":0}"#).contains("at least 1"));
        assert!(
            err(r#"{"inject_timeout_seconds":-3}"#).contains("inject_timeout_seconds")
                || err(r#"{"inject_timeout_seconds":-3}"#).contains("invalid value")
        );
        assert!(err(r#"{"partition":"a b"}"#).contains("partition 'a b'"));
        assert!(err(r#"{"login_host":"-oProxyCommand=x"}"#).contains("login_host"));
        assert!(err(r#"{"workspace_root":"relative"}"#).contains("absolute"));
        assert!(err(r#"{"workspace_root":"/w","cluster_subdir":"../up"}"#).contains("cluster_subdir"));
        assert!(err(r#"{"time_limit":"soon"}"#).contains("time_limit"));
        assert!(err(r#"{"cluster":{}}"#).contains("no profile"));
        // Stored with the fleet: bounded.
        let long = format!(r#"{{"partition":"{}"}}"#, "p".repeat(MAX_NAME_BYTES + 1));
        assert_eq!(err(&long), "profile 'default': partition is 257 bytes, over the 256-byte limit");
        let deep = format!(r#"{{"workspace_root":"/{}"}}"#, "w".repeat(MAX_PATH_BYTES));
        assert!(err(&deep).contains("workspace_root is 1025 bytes, over the 1024-byte limit"), "{}", err(&deep));
        assert_eq!(err(r#"{"ssh_retry_attempts":{"a":[1,2,3]}}"#), "profile 'default': ssh_retry_attempts must be a number");
        assert!(parse_cluster_file(r#"{"ssh_retry_attempts":"4","ssh_retry_delay_seconds":0.5}"#, "default").is_ok());
    }
}

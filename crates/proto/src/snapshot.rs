//! An agent's snapshot (`clawfleet snapshot FLEET/SLOT`): a gzip'd tar of its workspace, the
//! files a restored agent needs (its conversation, its workspace config, its working files;
//! never its journal, its inbox or a credential), and `manifest.json`, which names where it
//! came from and the sha256 of every file. This is the manifest's shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the archive says it is.
pub const FORMAT: &str = "clawfleet-snapshot";
/// The format version this clawfleet writes and reads.
pub const VERSION: u32 = 1;
/// The manifest's name in the archive.
pub const MANIFEST: &str = "manifest.json";
/// Where the workspace's files are in the archive.
pub const WORKSPACE_DIR: &str = "workspace";

/// Where an agent's events had got to when it was snapshotted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalPosition {
    pub epoch: String,
    pub seq: u64,
}

/// Where a snapshot comes from: the agent, its control plane, its brain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub clawfleet_version: String,
    /// RFC 3339.
    pub created_at: String,
    /// The control plane it was taken from (its host and data directory).
    pub source: String,
    pub fleet: String,
    pub slot: u32,
    /// The agent's brain and system prompt, as its fleet has them (never a secret: a snapshot
    /// of a workspace that holds one is refused).
    pub brain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    pub fleet_version: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    #[serde(flatten)]
    pub origin: Origin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalPosition>,
    /// How many turns its conversation holds.
    pub turns: u64,
    /// Each file (its path under `workspace/`) and its sha256, hex.
    pub files: BTreeMap<String, String>,
    /// What was left out of the workspace, and why (a link, a special file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

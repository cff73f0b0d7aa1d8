//! The agent policy file (`up --agent-policy FILE`): which other fleets the agents of a fleet
//! may act on with their own tokens, and how. Without it, agents act on no other fleet.
//!
//! ```json
//! {"rules": [{"from": "ops", "to": ["web", "api"], "actions": ["scale", "update", "command"]}]}
//! ```

use serde::{Deserialize, Serialize};

/// The file as written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub rules: Vec<PolicyRuleFile>,
}

/// One rule: the agents of `from` may do `actions` to each fleet in `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRuleFile {
    pub from: String,
    pub to: Vec<String>,
    pub actions: Vec<String>,
}

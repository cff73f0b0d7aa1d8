//! The environment a backend gives each agent runtime (`clawfleet agent` reads it).
//! Secrets travel only here, never on the bus or in command lines.

pub const FLEET: &str = "CLAWFLEET_FLEET";
pub const SLOT: &str = "CLAWFLEET_SLOT";
pub const FLEET_UID: &str = "CLAWFLEET_FLEET_UID";
/// `mqtt://host:port` of the broker, as the agent reaches it.
pub const BUS: &str = "CLAWFLEET_BUS";
pub const BUS_USERNAME: &str = "CLAWFLEET_BUS_USERNAME";
/// The CA certificate (PEM text, not a secret) an agent trusts for `mqtts://`.
pub const BUS_CA: &str = "CLAWFLEET_BUS_CA";
pub const BUS_PASSWORD: &str = "CLAWFLEET_BUS_PASSWORD";
/// The agent's own API token (role `agent`): never given to its brains.
pub const AGENT_TOKEN: &str = "CLAWFLEET_AGENT_TOKEN";
pub const WORKSPACE: &str = "CLAWFLEET_WORKSPACE";
pub const BRAIN: &str = "CLAWFLEET_BRAIN";
pub const MODEL_URL: &str = "CLAWFLEET_MODEL_URL";
pub const MODEL_NAME: &str = "CLAWFLEET_MODEL_NAME";
/// `1` when the model URL is the control plane's own model service, which takes llama-server's
/// sampling options (top_k, min_p, repeat_penalty) besides OpenAI's.
pub const MODEL_BUILTIN: &str = "CLAWFLEET_MODEL_BUILTIN";
pub const SYSTEM_PROMPT: &str = "CLAWFLEET_SYSTEM_PROMPT";
/// The council roles an agent can take, comma-separated (`agent --capabilities`).
pub const CAPABILITIES: &str = "CLAWFLEET_CAPABILITIES";
pub const FLEET_VERSION: &str = "CLAWFLEET_FLEET_VERSION";
pub const HEARTBEAT_MS: &str = "CLAWFLEET_HEARTBEAT_MS";
/// `bus`, `mailbox` or `auto`: how the agent reaches the control plane.
pub const TRANSPORT: &str = "CLAWFLEET_TRANSPORT";
/// The shared directory of the agent's mailbox (`<dir>/mailbox/...`).
pub const MAILBOX: &str = "CLAWFLEET_MAILBOX";

/// A file (0600, in the agent's workspace) of `NAME=value` lines: the agent's credentials
/// ([`SECRET_VARS`]), kept
/// out of its environment, which its brains could read through `/proc`. The agent reads it
/// and removes it before it starts any brain; its backend writes it again before each start.
pub const SECRETS_FILE: &str = "CLAWFLEET_SECRETS_FILE";

/// The variables a fleet's brains get (`env` in fleet.toml), as a JSON object.
pub const BRAIN_ENV: &str = "CLAWFLEET_BRAIN_ENV";
/// The secrets a fleet's brains get (`secrets` in fleet.toml), as a JSON object of their
/// values: a secret variable, never in an agent's environment.
pub const BRAIN_SECRETS: &str = "CLAWFLEET_BRAIN_SECRETS";
/// Where a docker agent finds [`BRAIN_SECRETS`]: a Docker secret mounted into its task.
pub const BRAIN_SECRETS_FILE: &str = "CLAWFLEET_BRAIN_SECRETS_FILE";

/// The variables of [`Deployment::agent_env`](crate::Deployment::agent_env) that local and
/// slurm agents get through [`SECRETS_FILE`] instead, and docker agents through a Docker secret.
pub const SECRET_VARS: &[&str] = &[BUS_PASSWORD, AGENT_TOKEN, BRAIN_SECRETS];

/// The directory a sandboxed agent must not see (the control plane's data directory): set, the
/// agent confines itself with Landlock before anything else, or refuses to run.
pub const SANDBOX_HIDE: &str = "CLAWFLEET_SANDBOX_HIDE";
/// The directories a sandboxed agent may write (its workspace first), `:`-separated.
pub const SANDBOX_WRITE: &str = "CLAWFLEET_SANDBOX_WRITE";

/// Variables of the control plane's own environment that an agent must not inherit
/// (an agent holding the operator token could deploy or terminate itself).
pub fn is_private(name: &str) -> bool {
    name.starts_with("CLAWFLEET_")
}

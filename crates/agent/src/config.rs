//! What an agent needs to know to run: who it is, where the bus is, what it thinks with.

use std::path::PathBuf;
use std::time::Duration;

use clawfleet_core::{AgentRef, BrainSpec};

use crate::link::Transport;

/// An agent's configuration, from its backend (environment) or from `agent --join`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub agent: AgentRef,
    /// The fleet incarnation; part of the bus client id and credentials.
    pub fleet_uid: String,
    pub bus_host: String,
    pub bus_port: u16,
    /// MQTT over TLS, trusting this CA (PEM); `None`: plain TCP.
    pub bus_tls_ca: Option<Vec<u8>>,
    pub bus_username: Option<String>,
    pub bus_password: Option<String>,
    /// The agent's own API token (role `agent`), from its backend's secret channel.
    pub api_token: Option<String>,
    pub workspace: PathBuf,
    pub brain: BrainSpec,
    /// Base URL of the shared model service (OpenAI-compatible), for the `model` brain.
    pub model_url: Option<String>,
    /// Model name to ask the shared model service for.
    pub model_name: String,
    /// Whether the model URL is the control plane's own model service (then the `model` brain
    /// asks for the sampling a small model needs, with llama-server's options).
    pub model_builtin: bool,
    pub system_prompt: Option<String>,
    /// The council roles it can take, most wanted first; empty: its brain chooses.
    pub capabilities: Vec<String>,
    pub fleet_version: String,
    pub heartbeat_interval: Duration,
    /// A turn with no output for this long is stopped.
    pub watchdog: Duration,
    /// The bus, or a mailbox on a shared filesystem when the node cannot reach the bus.
    pub transport: Transport,
    /// When the agent is sandboxed: the program that runs each brain process in a sandbox
    /// nested in the agent's (`clawfleet`, as `clawfleet brain-exec PROGRAM ARGS...`).
    pub brain_exec: Option<PathBuf>,
    /// What its brains get in their environment: the fleet's variables and secrets.
    pub brain_env: Vec<(String, String)>,
}

impl AgentConfig {
    /// A configuration with clawfleet's defaults for everything but identity and bus.
    pub fn new(
        agent: AgentRef,
        fleet_uid: impl Into<String>,
        bus_host: impl Into<String>,
        bus_port: u16,
        workspace: PathBuf,
    ) -> AgentConfig {
        AgentConfig {
            agent,
            fleet_uid: fleet_uid.into(),
            bus_host: bus_host.into(),
            bus_port,
            bus_tls_ca: None,
            bus_username: None,
            bus_password: None,
            api_token: None,
            workspace,
            brain: BrainSpec::Echo,
            model_url: None,
            model_name: "default".into(),
            model_builtin: false,
            system_prompt: None,
            capabilities: Vec::new(),
            fleet_version: "1".into(),
            heartbeat_interval: Duration::from_secs(2),
            watchdog: Duration::from_secs(300),
            transport: Transport::Bus,
            brain_exec: None,
            brain_env: Vec::new(),
        }
    }

    pub fn client_id(&self) -> String {
        clawfleet_core::acl::agent_client_id(&self.agent, &self.fleet_uid)
    }
}

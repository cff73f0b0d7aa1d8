//! Brains: what an agent thinks with, behind one streaming interface.
//!
//! A [`Brain`] runs one turn: it gets the system prompt, the agent's recent conversation and
//! the new prompt, sends [`Progress`] while it works (text deltas, or bare activity such as a
//! tool call, which keeps the watchdog quiet), and returns the whole answer or an error. The
//! turn is cancelled by dropping its future; brains that run processes kill them then.

mod echo;
mod http;
mod mock;
mod process;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use clawfleet_core::BrainSpec;
use clawfleet_proto::event::Usage;
use tokio::sync::mpsc;

use crate::workspace::Message;

pub use http::{OllamaBrain, OpenAiBrain};
pub use process::{ClaudeParser, CmdParser, CodexParser, LineParser, ProcessBrain};

/// One turn's input.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    pub injection_id: String,
    pub system_prompt: Option<String>,
    pub history: Vec<Message>,
    pub prompt: String,
    /// The agent's workspace: the working directory of process brains.
    pub workspace: PathBuf,
}

/// What a brain reports while it works.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A piece of the answer.
    Delta(String),
    /// Work without answer text (reasoning, a tool call): proof of life for the watchdog.
    Activity,
}

/// A finished turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TurnResult {
    pub content: String,
    pub usage: Option<Usage>,
}

/// Why a turn failed; the message is shown to the operator as `agent_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BrainError(pub String);

/// Whether a brain can answer now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrainHealth {
    pub healthy: bool,
    pub detail: Option<String>,
}

impl BrainHealth {
    pub fn ok() -> BrainHealth {
        BrainHealth { healthy: true, detail: None }
    }

    pub fn failing(detail: impl Into<String>) -> BrainHealth {
        BrainHealth { healthy: false, detail: Some(detail.into()) }
    }
}

/// Where a brain sends its progress.
pub type ProgressSender = mpsc::Sender<Progress>;

/// An agent's brain.
#[async_trait]
pub trait Brain: Send + Sync {
    /// Runs one turn to its end.
    async fn turn(&self, request: TurnRequest, progress: ProgressSender) -> Result<TurnResult, BrainError>;

    /// Checks that the brain can answer (endpoint reachable, binary installed…).
    async fn health(&self) -> BrainHealth;
}

/// What the `model` brain asks the control plane's own model service for (SmolLM2-135M by
/// default): Ollama's defaults for the same model (top_k 40, top_p 0.9, no min_p, a repeat
/// penalty of 1.1 over the last 64 tokens, which the service counts from the prompt's end, so an
/// answer does not echo its question), a cooler temperature than Ollama's 0.8 (SmolLM2's model
/// card suggests 0.2: a model this small wanders off topic when it samples widely), and an
/// answer at most 256 tokens long (a small model that starts repeating does not stop by itself).
/// Other endpoints get only what the agent's fleet asks for.
pub fn model_sampling() -> serde_json::Value {
    serde_json::json!({
        "temperature": 0.2,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.0,
        "repeat_penalty": 1.1,
        "repeat_last_n": 64,
        "max_tokens": 256,
    })
}

/// Builds the brain for a spec. `http` is shared by every agent of a process.
pub fn build(spec: &BrainSpec, config: &crate::AgentConfig, http: &reqwest::Client) -> Arc<dyn Brain> {
    let (model_url, model_name) = (config.model_url.as_deref(), config.model_name.as_str());
    match spec {
        BrainSpec::Echo => Arc::new(echo::EchoBrain),
        BrainSpec::Mock => Arc::new(mock::MockBrain),
        BrainSpec::Model => match model_url {
            Some(url) if config.model_builtin => Arc::new(OpenAiBrain::new(http.clone(), url, model_name).with_options(model_sampling())),
            Some(url) => Arc::new(OpenAiBrain::new(http.clone(), url, model_name)),
            None => Arc::new(BrokenBrain(
                "brain 'model' needs the shared model service, but the agent was given no model URL \
                 (start the control plane with a model service or --model-url)"
                    .into(),
            )),
        },
        BrainSpec::OpenAi { url, model } => {
            // A fleet's secret OPENAI_API_KEY comes before the agent's own environment's.
            let key = config.brain_env.iter().find(|(k, _)| k == "OPENAI_API_KEY").map(|(_, v)| v.clone());
            Arc::new(OpenAiBrain::new(http.clone(), url, model).with_api_key(key))
        }
        BrainSpec::Ollama { url, model } => Arc::new(OllamaBrain::new(http.clone(), url, model)),
        BrainSpec::Codex { model } => process(ProcessBrain::codex(model.clone()), config),
        BrainSpec::Claude { model } => process(ProcessBrain::claude(model.clone()), config),
        // With `approve`, the runtime asks before each turn; the brain runs once it is approved.
        BrainSpec::Cmd { command, .. } => process(ProcessBrain::cmd(command.clone()), config),
    }
}

fn process(brain: ProcessBrain, config: &crate::AgentConfig) -> Arc<dyn Brain> {
    Arc::new(brain.nested_by(config.brain_exec.clone()).with_env(config.brain_env.clone()))
}

/// A brain that cannot work, and says why on every turn and health check.
struct BrokenBrain(String);

#[async_trait]
impl Brain for BrokenBrain {
    async fn turn(&self, _: TurnRequest, _: ProgressSender) -> Result<TurnResult, BrainError> {
        Err(BrainError(self.0.clone()))
    }

    async fn health(&self) -> BrainHealth {
        BrainHealth::failing(self.0.clone())
    }
}

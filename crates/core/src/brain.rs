//! Brain specs: what an agent thinks with, written as one string.
//!
//! | spec | brain |
//! |---|---|
//! | `model` | the shared model service of the control plane (OpenAI-compatible) |
//! | `openai:URL#MODEL` | any OpenAI-compatible endpoint (`/v1/chat/completions`, streaming) |
//! | `ollama:URL#MODEL` | an Ollama server (`/api/chat`, NDJSON streaming) |
//! | `codex[#MODEL]` | `codex exec --json` |
//! | `claude[#MODEL]` | `claude -p --output-format stream-json` |
//! | `cmd:COMMAND` | any shell command: the prompt on stdin (newline-terminated) and in `CLAWFLEET_PROMPT`, stdout lines are the answer |
//! | `echo` | answers with the prompt at once; for tests and benchmarks |

use std::fmt;
use std::str::FromStr;

/// A parsed brain spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrainSpec {
    Model,
    OpenAi {
        url: String,
        model: String,
    },
    Ollama {
        url: String,
        model: String,
    },
    Codex {
        model: Option<String>,
    },
    Claude {
        model: Option<String>,
    },
    /// A shell command per turn; with `approve`, the agent asks before each turn runs it (an
    /// execution approval) and runs it only when the answer is yes.
    Cmd {
        command: String,
        approve: bool,
    },
    Echo,
    /// codeswarm's mock worker (`worker_mode=mock`): plans the graph a spec gives after
    /// `MOCK_TASK_GRAPH_JSON:`, does a project task by committing a marker file on its branch,
    /// merges the task branches for the integration task. For tests and protocol checks.
    Mock,
}

/// The longest brain spec (it is stored with its fleet).
pub const MAX_BRAIN_SPEC_BYTES: usize = 4096;

/// Why a brain spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid brain spec '{spec}': {reason} (expected model, openai:URL#MODEL, ollama:URL#MODEL, codex, claude, cmd:COMMAND, approve:cmd:COMMAND, echo or mock)"
)]
pub struct BrainSpecError {
    /// The spec, cut to its first 80 characters.
    pub spec: String,
    pub reason: String,
}

impl BrainSpecError {
    fn new(spec: &str, reason: impl Into<String>) -> BrainSpecError {
        let mut shown: String = spec.chars().take(80).collect();
        if shown.len() < spec.len() {
            shown.push('…');
        }
        BrainSpecError { spec: shown, reason: reason.into() }
    }
}

impl BrainSpec {
    /// The kind, as shown in lists: `model`, `openai`, `ollama`, `codex`, `claude`, `cmd`, `echo`.
    pub fn kind(&self) -> &'static str {
        match self {
            BrainSpec::Model => "model",
            BrainSpec::OpenAi { .. } => "openai",
            BrainSpec::Ollama { .. } => "ollama",
            BrainSpec::Codex { .. } => "codex",
            BrainSpec::Claude { .. } => "claude",
            BrainSpec::Cmd { .. } => "cmd",
            BrainSpec::Echo => "echo",
            BrainSpec::Mock => "mock",
        }
    }
}

fn url_and_model(spec: &str, rest: &str) -> Result<(String, String), BrainSpecError> {
    let err = |reason: &str| BrainSpecError::new(spec, reason);
    let (url, model) = rest.rsplit_once('#').ok_or_else(|| err("missing '#MODEL' after the URL"))?;
    let Some(after_scheme) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else {
        return Err(err("the URL must start with http:// or https://"));
    };
    if after_scheme.trim_end_matches('/').is_empty() || after_scheme.starts_with('/') {
        return Err(err("the URL has no host"));
    }
    let url = url.trim_end_matches('/');
    if model.is_empty() {
        return Err(err("the model name after '#' is empty"));
    }
    Ok((url.to_owned(), model.to_owned()))
}

fn optional_model(spec: &str, rest: &str) -> Result<Option<String>, BrainSpecError> {
    match rest.strip_prefix('#') {
        None if rest.is_empty() => Ok(None),
        Some(m) if !m.is_empty() => Ok(Some(m.to_owned())),
        _ => Err(BrainSpecError::new(spec, "expected nothing or '#MODEL' after the name")),
    }
}

impl FromStr for BrainSpec {
    type Err = BrainSpecError;

    fn from_str(spec: &str) -> Result<Self, BrainSpecError> {
        if spec.len() > MAX_BRAIN_SPEC_BYTES {
            return Err(BrainSpecError::new(spec, format!("it is {} bytes, over the {MAX_BRAIN_SPEC_BYTES}-byte limit", spec.len())));
        }
        if spec == "model" {
            return Ok(BrainSpec::Model);
        }
        if spec == "echo" {
            return Ok(BrainSpec::Echo);
        }
        if spec == "mock" {
            return Ok(BrainSpec::Mock);
        }
        if let Some(rest) = spec.strip_prefix("openai:") {
            let (url, model) = url_and_model(spec, rest)?;
            return Ok(BrainSpec::OpenAi { url, model });
        }
        if let Some(rest) = spec.strip_prefix("ollama:") {
            let (url, model) = url_and_model(spec, rest)?;
            return Ok(BrainSpec::Ollama { url, model });
        }
        if let Some(rest) = spec.strip_prefix("codex") {
            return Ok(BrainSpec::Codex { model: optional_model(spec, rest)? });
        }
        if let Some(rest) = spec.strip_prefix("claude") {
            return Ok(BrainSpec::Claude { model: optional_model(spec, rest)? });
        }
        let (approve, rest) = match spec.strip_prefix("approve:") {
            Some(rest) if rest.starts_with("cmd:") => (true, rest),
            Some(_) => {
                return Err(BrainSpecError::new(
                    spec,
                    "only a cmd: brain asks for approvals (approve:cmd:COMMAND); codex asks only through its app server, which clawfleet does not drive",
                ));
            }
            None => (false, spec),
        };
        if let Some(command) = rest.strip_prefix("cmd:") {
            if command.trim().is_empty() {
                return Err(BrainSpecError::new(spec, "the command after 'cmd:' is empty"));
            }
            return Ok(BrainSpec::Cmd { command: command.to_owned(), approve });
        }
        Err(BrainSpecError::new(spec, "unknown kind"))
    }
}

impl fmt::Display for BrainSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrainSpec::Model => f.write_str("model"),
            BrainSpec::Echo => f.write_str("echo"),
            BrainSpec::Mock => f.write_str("mock"),
            BrainSpec::OpenAi { url, model } => write!(f, "openai:{url}#{model}"),
            BrainSpec::Ollama { url, model } => write!(f, "ollama:{url}#{model}"),
            BrainSpec::Codex { model: None } => f.write_str("codex"),
            BrainSpec::Codex { model: Some(m) } => write!(f, "codex#{m}"),
            BrainSpec::Claude { model: None } => f.write_str("claude"),
            BrainSpec::Claude { model: Some(m) } => write!(f, "claude#{m}"),
            BrainSpec::Cmd { command, approve: false } => write!(f, "cmd:{command}"),
            BrainSpec::Cmd { command, approve: true } => write!(f, "approve:cmd:{command}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        for spec in [
            "model",
            "echo",
            "openai:http://127.0.0.1:8080/v1#smollm2",
            "ollama:http://localhost:11434#smollm2:135m",
            "codex",
            "codex#gpt-5-codex",
            "claude",
            "claude#sonnet",
            "cmd:tr a-z A-Z",
            "approve:cmd:make deploy",
            "mock",
        ] {
            let parsed: BrainSpec = spec.parse().unwrap();
            assert_eq!(parsed.to_string(), spec);
        }
        assert_eq!(
            "openai:https://api.example.com/v1/#gpt".parse::<BrainSpec>().unwrap(),
            BrainSpec::OpenAi { url: "https://api.example.com/v1".into(), model: "gpt".into() }
        );
    }

    #[test]
    fn bad_specs_say_why() {
        let reason = |s: &str| s.parse::<BrainSpec>().unwrap_err().reason;
        assert_eq!(reason("gpt"), "unknown kind");
        // Stored with its fleet: bounded, and an error does not echo all of it.
        let long = format!("cmd:{}", "x".repeat(MAX_BRAIN_SPEC_BYTES));
        let err = long.parse::<BrainSpec>().unwrap_err();
        assert_eq!(err.reason, format!("it is {} bytes, over the 4096-byte limit", MAX_BRAIN_SPEC_BYTES + 4));
        assert_eq!(err.spec.chars().count(), 81, "80 characters and an ellipsis");
        assert!(format!("cmd:{}", "x".repeat(MAX_BRAIN_SPEC_BYTES - 4)).parse::<BrainSpec>().is_ok());
        assert_eq!(reason("openai:http://x"), "missing '#MODEL' after the URL");
        assert_eq!(reason("openai:ftp://x#m"), "the URL must start with http:// or https://");
        assert_eq!(reason("ollama:http://x#"), "the model name after '#' is empty");
        assert_eq!(reason("openai:http:///#m"), "the URL has no host");
        assert_eq!(reason("openai:https://#m"), "the URL has no host");
        assert_eq!(reason("cmd:  "), "the command after 'cmd:' is empty");
        assert_eq!(reason("approve:cmd: "), "the command after 'cmd:' is empty");
        assert!(reason("approve:codex").starts_with("only a cmd: brain asks for approvals"));
        assert_eq!(reason("codexx"), "expected nothing or '#MODEL' after the name");
        let msg = "nope".parse::<BrainSpec>().unwrap_err().to_string();
        assert!(msg.starts_with("invalid brain spec 'nope': unknown kind (expected model,"), "{msg}");
    }
}

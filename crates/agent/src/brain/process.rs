//! Brains that are processes: `codex exec --json`, `claude -p --output-format stream-json`,
//! and any shell command. Each turn runs one process in the agent's workspace, in a process
//! group of its own that is killed if the turn is cancelled. A [`LineParser`] per kind turns
//! stdout lines into progress and the turn's result; parsers are pure and tested on their own.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use clawfleet_proto::event::Usage;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::{Brain, BrainError, BrainHealth, Progress, ProgressSender, TurnRequest, TurnResult};

/// Turns a brain process's stdout into progress and a result.
pub trait LineParser: Send {
    /// One line of stdout (without its newline).
    fn line(&mut self, line: &str) -> Vec<Progress>;
    /// The process exited; `stderr_tail` is the end of what it wrote to stderr.
    fn finish(&mut self, exit: std::process::ExitStatus, stderr_tail: &str) -> Result<TurnResult, BrainError>;
}

fn exit_error(what: &str, exit: std::process::ExitStatus, stderr_tail: &str) -> BrainError {
    let status = match exit.code() {
        Some(code) => format!("exited with status {code}"),
        None => "was killed by a signal".to_owned(),
    };
    let tail = stderr_tail.trim();
    if tail.is_empty() { BrainError(format!("{what} {status}")) } else { BrainError(format!("{what} {status}: {tail}")) }
}

/// `codex exec --json`: `thread.started`, `turn.started`, `item.started|updated|completed`,
/// `turn.completed {usage}`, `turn.failed {error}`. Agent messages are the answer; other items
/// (reasoning, commands, file changes) are activity.
#[derive(Debug, Default)]
pub struct CodexParser {
    content: String,
    usage: Option<Usage>,
    error: Option<String>,
    completed: bool,
}

impl LineParser for CodexParser {
    fn line(&mut self, line: &str) -> Vec<Progress> {
        let Ok(v) = serde_json::from_str::<Value>(line) else { return vec![Progress::Activity] };
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "item.completed" if v.pointer("/item/type").and_then(Value::as_str) == Some("agent_message") => {
                let text = v.pointer("/item/text").and_then(Value::as_str).unwrap_or("");
                let delta = if self.content.is_empty() { text.to_owned() } else { format!("\n\n{text}") };
                self.content.push_str(&delta);
                vec![Progress::Delta(delta)]
            }
            "turn.completed" => {
                self.completed = true;
                let u = |k: &str| v.pointer(&format!("/usage/{k}")).and_then(Value::as_u64);
                self.usage = Some(Usage {
                    input_tokens: u("input_tokens").unwrap_or(0),
                    output_tokens: u("output_tokens").unwrap_or(0),
                    cached_input_tokens: u("cached_input_tokens"),
                    total_tokens: None,
                });
                vec![]
            }
            "turn.failed" => {
                self.error = Some(v.pointer("/error/message").and_then(Value::as_str).unwrap_or("turn failed").to_owned());
                vec![]
            }
            "error" => {
                self.error = Some(v.get("message").and_then(Value::as_str).unwrap_or("codex reported an error").to_owned());
                vec![]
            }
            _ => vec![Progress::Activity],
        }
    }

    fn finish(&mut self, exit: std::process::ExitStatus, stderr_tail: &str) -> Result<TurnResult, BrainError> {
        if let Some(e) = self.error.take() {
            return Err(BrainError(format!("codex: {e}")));
        }
        if !exit.success() {
            return Err(exit_error("codex", exit, stderr_tail));
        }
        if !self.completed {
            return Err(BrainError("codex ended without turn.completed".into()));
        }
        Ok(TurnResult { content: std::mem::take(&mut self.content), usage: self.usage.take() })
    }
}

/// `claude -p --output-format stream-json --verbose`: `system` (init), `assistant` messages
/// (text blocks are the answer), `user` (tool results), `stream_event` (partial text when
/// enabled), and a final `result` with `is_error`, the whole answer and `usage`.
#[derive(Debug, Default)]
pub struct ClaudeParser {
    content: String,
    streamed: bool,
    result: Option<Result<String, String>>,
    usage: Option<Usage>,
}

impl LineParser for ClaudeParser {
    fn line(&mut self, line: &str) -> Vec<Progress> {
        let Ok(v) = serde_json::from_str::<Value>(line) else { return vec![Progress::Activity] };
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "stream_event" => {
                let ev = v.get("event").unwrap_or(&Value::Null);
                if ev.pointer("/delta/type").and_then(Value::as_str) == Some("text_delta") {
                    let text = ev.pointer("/delta/text").and_then(Value::as_str).unwrap_or("").to_owned();
                    self.streamed = true;
                    self.content.push_str(&text);
                    return vec![Progress::Delta(text)];
                }
                vec![Progress::Activity]
            }
            "assistant" if !self.streamed => {
                let blocks = v.pointer("/message/content").and_then(Value::as_array).cloned().unwrap_or_default();
                let text: String = blocks
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .collect();
                if text.is_empty() {
                    return vec![Progress::Activity];
                }
                let delta = if self.content.is_empty() { text } else { format!("\n\n{text}") };
                self.content.push_str(&delta);
                vec![Progress::Delta(delta)]
            }
            "result" => {
                let is_error = v.get("is_error").and_then(Value::as_bool).unwrap_or(false);
                let text = v.get("result").and_then(Value::as_str).map(str::to_owned);
                self.result = Some(if is_error {
                    Err(text.unwrap_or_else(|| v.get("subtype").and_then(Value::as_str).unwrap_or("error").to_owned()))
                } else {
                    Ok(text.unwrap_or_default())
                });
                let u = |k: &str| v.pointer(&format!("/usage/{k}")).and_then(Value::as_u64);
                self.usage = Some(Usage {
                    input_tokens: u("input_tokens").unwrap_or(0),
                    output_tokens: u("output_tokens").unwrap_or(0),
                    cached_input_tokens: u("cache_read_input_tokens"),
                    total_tokens: None,
                });
                vec![]
            }
            _ => vec![Progress::Activity],
        }
    }

    fn finish(&mut self, exit: std::process::ExitStatus, stderr_tail: &str) -> Result<TurnResult, BrainError> {
        match self.result.take() {
            Some(Err(e)) => Err(BrainError(format!("claude: {e}"))),
            _ if !exit.success() => Err(exit_error("claude", exit, stderr_tail)),
            Some(Ok(text)) => {
                let content = if text.is_empty() { std::mem::take(&mut self.content) } else { text };
                Ok(TurnResult { content, usage: self.usage.take() })
            }
            None => Err(BrainError("claude ended without a result line".into())),
        }
    }
}

/// Any command: every stdout line is part of the answer; exit status 0 ends the turn.
#[derive(Debug, Default)]
pub struct CmdParser {
    content: String,
}

impl LineParser for CmdParser {
    fn line(&mut self, line: &str) -> Vec<Progress> {
        let delta = if self.content.is_empty() { line.to_owned() } else { format!("\n{line}") };
        if delta.is_empty() {
            // An empty first line still counts as life.
            return vec![Progress::Activity];
        }
        self.content.push_str(&delta);
        vec![Progress::Delta(delta)]
    }

    fn finish(&mut self, exit: std::process::ExitStatus, stderr_tail: &str) -> Result<TurnResult, BrainError> {
        if !exit.success() {
            return Err(exit_error("the command", exit, stderr_tail));
        }
        Ok(TurnResult { content: std::mem::take(&mut self.content), usage: None })
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Codex { model: Option<String> },
    Claude { model: Option<String> },
    Cmd { command: String },
}

/// Which of the agent's own variables a brain process inherits: everything outside clawfleet's
/// namespace (a codex brain needs its `OPENAI_API_KEY`, a shell its `PATH`), and of clawfleet's
/// only what describes the turn's place (fleet, slot, workspace, the model service). Never a
/// clawfleet credential: the bus login, the fleet key, an API token.
fn brain_may_inherit(name: &str) -> bool {
    const SHOWN: &[&str] = &[
        "CLAWFLEET_FLEET",
        "CLAWFLEET_SLOT",
        "CLAWFLEET_FLEET_VERSION",
        "CLAWFLEET_WORKSPACE",
        "CLAWFLEET_MODEL_URL",
        "CLAWFLEET_MODEL_NAME",
    ];
    !name.starts_with("CLAWFLEET_") || SHOWN.contains(&name)
}

/// A brain that runs a process per turn.
#[derive(Debug, Clone)]
pub struct ProcessBrain {
    kind: Kind,
    program: String,
    /// Runs `program` in a nested sandbox (`brain_exec brain-exec program args...`).
    brain_exec: Option<PathBuf>,
    /// Variables its processes get beyond what they inherit (the fleet's `env` and `secrets`).
    env: Vec<(String, String)>,
}

impl ProcessBrain {
    /// `codex`, or the program named by `CLAWFLEET_CODEX_BIN`.
    pub fn codex(model: Option<String>) -> ProcessBrain {
        ProcessBrain {
            kind: Kind::Codex { model },
            program: std::env::var("CLAWFLEET_CODEX_BIN").unwrap_or_else(|_| "codex".into()),
            brain_exec: None,
            env: Vec::new(),
        }
    }

    /// `claude`, or the program named by `CLAWFLEET_CLAUDE_BIN`.
    pub fn claude(model: Option<String>) -> ProcessBrain {
        ProcessBrain {
            kind: Kind::Claude { model },
            program: std::env::var("CLAWFLEET_CLAUDE_BIN").unwrap_or_else(|_| "claude".into()),
            brain_exec: None,
            env: Vec::new(),
        }
    }

    pub fn cmd(command: String) -> ProcessBrain {
        ProcessBrain { kind: Kind::Cmd { command }, program: "sh".into(), brain_exec: None, env: Vec::new() }
    }

    /// Runs each turn's process through `brain_exec` (a sandboxed agent's own binary), which
    /// nests it in a sandbox of its own before it starts.
    pub fn nested_by(mut self, brain_exec: Option<PathBuf>) -> ProcessBrain {
        self.brain_exec = brain_exec;
        self
    }

    /// Gives each turn's process these variables too (the fleet's `env` and `secrets`).
    pub fn with_env(mut self, env: Vec<(String, String)>) -> ProcessBrain {
        self.env = env;
        self
    }

    fn command(&self, req: &TurnRequest) -> (Command, Option<String>, Box<dyn LineParser>) {
        let mut cmd = match &self.brain_exec {
            Some(exec) => {
                let mut cmd = Command::new(exec);
                cmd.arg("brain-exec").arg(&self.program);
                cmd
            }
            None => Command::new(&self.program),
        };
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_none_or(|n| !brain_may_inherit(n)) {
                cmd.env_remove(&name);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.current_dir(&req.workspace).env("CLAWFLEET_INJECTION_ID", &req.injection_id);
        match &self.kind {
            Kind::Codex { model } => {
                cmd.args(["exec", "--json", "--skip-git-repo-check"]);
                if let Some(m) = model {
                    cmd.args(["--model", m]);
                }
                let prompt = match &req.system_prompt {
                    Some(system) => format!("{system}\n\n{}", req.prompt),
                    None => req.prompt.clone(),
                };
                cmd.arg("--").arg(prompt);
                (cmd, None, Box::new(CodexParser::default()))
            }
            Kind::Claude { model } => {
                cmd.args(["-p", "--output-format", "stream-json", "--verbose"]);
                if let Some(m) = model {
                    cmd.args(["--model", m]);
                }
                if let Some(system) = &req.system_prompt {
                    cmd.args(["--append-system-prompt", system]);
                }
                cmd.arg(&req.prompt);
                (cmd, None, Box::new(ClaudeParser::default()))
            }
            Kind::Cmd { command } => {
                cmd.args(["-c", command]).env("CLAWFLEET_PROMPT", &req.prompt);
                if let Some(system) = &req.system_prompt {
                    cmd.env("CLAWFLEET_SYSTEM_PROMPT", system);
                }
                // Line-oriented commands (`read`, `while read`) need the last line ended.
                let mut stdin = req.prompt.clone();
                if !stdin.ends_with('\n') {
                    stdin.push('\n');
                }
                (cmd, Some(stdin), Box::new(CmdParser::default()))
            }
        }
    }

    fn name(&self) -> &str {
        match self.kind {
            Kind::Codex { .. } => "codex",
            Kind::Claude { .. } => "claude",
            Kind::Cmd { .. } => "the command",
        }
    }
}

/// The longest output line a parser is given (the rest of the line is dropped).
const MAX_LINE: usize = 1 << 20;
/// The most a brain may write to its stdout in one turn.
const MAX_OUTPUT: usize = 16 << 20;

/// Reads one line into `line` (its newline left out), keeping at most `max` bytes of it;
/// returns the bytes it consumed (0 at the end).
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, line: &mut Vec<u8>, max: usize) -> std::io::Result<usize> {
    line.clear();
    let mut consumed = 0;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(consumed);
        }
        let (chunk, ended) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        let room = max.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = ended.unwrap_or(available.len());
        r.consume(used);
        consumed += used;
        if ended.is_some() {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(consumed);
        }
    }
}

/// Kills a brain's whole process group when the turn ends or is cancelled.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[async_trait]
impl Brain for ProcessBrain {
    async fn turn(&self, request: TurnRequest, progress: ProgressSender) -> Result<TurnResult, BrainError> {
        let (mut cmd, stdin, mut parser) = self.command(&request);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| BrainError(format!("could not start {}: {e}", self.program)))?;
        let mut guard = GroupGuard(child.id().map(|pid| pid as i32));
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A command that does not read its stdin must not block the turn.
            tokio::spawn(async move {
                let _ = pipe.write_all(text.as_bytes()).await;
            });
        }
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let stderr_task = tokio::spawn(async move {
            let mut tail: VecDeque<u8> = VecDeque::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.extend(&buf[..n]);
                let excess = tail.len().saturating_sub(2048);
                tail.drain(..excess);
            }
            String::from_utf8_lossy(&tail.into_iter().collect::<Vec<_>>()).into_owned()
        });
        let mut out = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let (mut line, mut written) = (Vec::new(), 0usize);
        loop {
            let n =
                read_line(&mut out, &mut line, MAX_LINE).await.map_err(|e| BrainError(format!("reading {}'s output: {e}", self.name())))?;
            if n == 0 {
                break;
            }
            written += n;
            if written > MAX_OUTPUT {
                // The guard kills it with its whole group.
                return Err(BrainError(format!(
                    "{} wrote more than {} MiB to its output in one turn: it was stopped, and the turn failed",
                    self.name(),
                    MAX_OUTPUT >> 20
                )));
            }
            // Bytes that are not UTF-8 (a brain printing garbage) become U+FFFD.
            for p in parser.line(&String::from_utf8_lossy(&line)) {
                let _ = progress.send(p).await;
            }
        }
        let exit = child.wait().await.map_err(|e| BrainError(format!("waiting for {}: {e}", self.name())))?;
        guard.0 = None;
        let tail = stderr_task.await.unwrap_or_default();
        let tail = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        parser.finish(exit, tail)
    }

    async fn health(&self) -> BrainHealth {
        match find_program(&self.program) {
            Some(_) => BrainHealth::ok(),
            None => BrainHealth::failing(format!("'{}' is not installed (not found on PATH)", self.program)),
        }
    }
}

/// The path a program name resolves to, as a shell would find it.
fn find_program(program: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_exec(&p).then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(program)).find(|p| is_exec(p))
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    fn feed(parser: &mut dyn LineParser, lines: &[&str]) -> Vec<Progress> {
        lines.iter().flat_map(|l| parser.line(l)).collect()
    }

    const OK: i32 = 0;

    #[tokio::test]
    async fn output_lines_are_bounded_and_read_whole() {
        let text = format!("short\r\n{}\nlast", "x".repeat(100));
        let mut r = tokio::io::BufReader::with_capacity(8, text.as_bytes());
        let mut line = Vec::new();
        assert_eq!(read_line(&mut r, &mut line, 10).await.unwrap(), 7);
        assert_eq!(line, b"short");
        assert_eq!(read_line(&mut r, &mut line, 10).await.unwrap(), 101, "a long line is consumed whole");
        assert_eq!(line, b"xxxxxxxxxx", "and kept to its bound");
        assert_eq!(read_line(&mut r, &mut line, 10).await.unwrap(), 4);
        assert_eq!(line, b"last", "the last line needs no newline");
        assert_eq!(read_line(&mut r, &mut line, 10).await.unwrap(), 0);
    }

    #[test]
    fn a_brain_inherits_no_clawfleet_credential() {
        for secret in ["CLAWFLEET_BUS_PASSWORD", "CLAWFLEET_BUS_USERNAME", "CLAWFLEET_BUS_FLEET_KEY", "CLAWFLEET_TOKEN", "CLAWFLEET_BUS"] {
            assert!(!brain_may_inherit(secret), "{secret}");
        }
        for shown in ["PATH", "HOME", "OPENAI_API_KEY", "CLAWFLEET_WORKSPACE", "CLAWFLEET_MODEL_URL", "CLAWFLEET_SLOT"] {
            assert!(brain_may_inherit(shown), "{shown}");
        }
    }

    #[test]
    fn codex_stream() {
        let mut p = CodexParser::default();
        let progress = feed(
            &mut p,
            &[
                r#"{"type":"thread.started","thread_id":"t1"}"#,
                r#"{"type":"turn.started"}"#,
                r#"{"type":"item.completed","item":{"id":"item_0","type":"reasoning","text":"thinking"}}"#,
                r#"{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"Hello."}}"#,
                r#"{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"Done."}}"#,
                r#"{"type":"turn.completed","usage":{"input_tokens":10,"cached_input_tokens":4,"output_tokens":3}}"#,
            ],
        );
        assert_eq!(progress.iter().filter(|p| **p == Progress::Activity).count(), 3);
        assert_eq!(progress[3], Progress::Delta("Hello.".into()));
        assert_eq!(progress[4], Progress::Delta("\n\nDone.".into()));
        let r = p.finish(ExitStatus::from_raw(OK), "").unwrap();
        assert_eq!(r.content, "Hello.\n\nDone.");
        assert_eq!(r.usage, Some(Usage { input_tokens: 10, output_tokens: 3, cached_input_tokens: Some(4), total_tokens: None }));
    }

    #[test]
    fn codex_failures() {
        let mut p = CodexParser::default();
        feed(&mut p, &[r#"{"type":"turn.failed","error":{"message":"rate limited"}}"#]);
        assert_eq!(p.finish(ExitStatus::from_raw(OK), "").unwrap_err().0, "codex: rate limited");
        let mut p = CodexParser::default();
        assert_eq!(p.finish(ExitStatus::from_raw(OK), "").unwrap_err().0, "codex ended without turn.completed");
        let mut p = CodexParser::default();
        assert_eq!(p.finish(ExitStatus::from_raw(1 << 8), "Not logged in").unwrap_err().0, "codex exited with status 1: Not logged in");
    }

    #[test]
    fn claude_stream() {
        let mut p = ClaudeParser::default();
        let progress = feed(
            &mut p,
            &[
                r#"{"type":"system","subtype":"init","session_id":"s1"}"#,
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Hi "},{"type":"tool_use","id":"x"}]}}"#,
                r#"{"type":"user","message":{"content":[{"type":"tool_result"}]}}"#,
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"there"}]}}"#,
                r#"{"type":"result","subtype":"success","is_error":false,"result":"Hi there","usage":{"input_tokens":7,"output_tokens":2}}"#,
            ],
        );
        assert_eq!(
            progress,
            vec![Progress::Activity, Progress::Delta("Hi ".into()), Progress::Activity, Progress::Delta("\n\nthere".into())]
        );
        let r = p.finish(ExitStatus::from_raw(OK), "").unwrap();
        assert_eq!(r.content, "Hi there");
        assert_eq!(r.usage.unwrap().output_tokens, 2);

        let mut p = ClaudeParser::default();
        let progress = feed(
            &mut p,
            &[
                r#"{"type":"stream_event","event":{"type":"content_block_delta","delta":{"type":"text_delta","text":"Hel"}}}"#,
                r#"{"type":"stream_event","event":{"type":"content_block_delta","delta":{"type":"text_delta","text":"lo"}}}"#,
                r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Hello"}]}}"#,
                r#"{"type":"result","subtype":"error_max_turns","is_error":true}"#,
            ],
        );
        assert_eq!(progress[..2], [Progress::Delta("Hel".into()), Progress::Delta("lo".into())]);
        assert_eq!(p.finish(ExitStatus::from_raw(OK), "").unwrap_err().0, "claude: error_max_turns");
    }

    #[test]
    fn cmd_lines() {
        let mut p = CmdParser::default();
        assert_eq!(feed(&mut p, &["one", "two"]), vec![Progress::Delta("one".into()), Progress::Delta("\ntwo".into())]);
        assert_eq!(p.finish(ExitStatus::from_raw(OK), "").unwrap().content, "one\ntwo");
        let mut p = CmdParser::default();
        assert_eq!(p.finish(ExitStatus::from_raw(3 << 8), "boom\n").unwrap_err().0, "the command exited with status 3: boom");
        assert_eq!(CmdParser::default().finish(ExitStatus::from_raw(9), "").unwrap_err().0, "the command was killed by a signal");
    }
}

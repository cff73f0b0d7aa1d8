//! An agent's workspace directory: its identity (epoch), its event journal, the directives
//! it accepted, and its conversation. Everything is append-only JSON Lines, rotated at a
//! size limit (one previous file kept), so a crash mid-write loses at most a partial line,
//! which readers skip.
//!
//! ```text
//! <workspace>/epoch               this workspace's id: events are numbered within it
//! <workspace>/events.jsonl        every event the agent published, with its seq
//! <workspace>/inbox.jsonl         every directive it accepted (for de-duplication and recovery)
//! <workspace>/conversation.jsonl  the agent's own conversation: its isolated context
//! <workspace>/config.json         optional overrides, re-read by `config-reload`
//! ```

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use clawfleet_proto::bus::AgentEnvelope;
use clawfleet_proto::event::EventBody;
use serde::{Deserialize, Serialize};

/// Size at which a log file is rotated.
const ROTATE_BYTES: u64 = 16 * 1024 * 1024;

/// An append-only JSON Lines file with one rotated predecessor.
#[derive(Debug)]
struct JsonlLog {
    path: PathBuf,
    old_path: PathBuf,
    file: File,
    size: u64,
}

impl JsonlLog {
    fn open(dir: &Path, stem: &str) -> io::Result<JsonlLog> {
        let path = dir.join(format!("{stem}.jsonl"));
        let old_path = dir.join(format!("{stem}.1.jsonl"));
        let mut file = OpenOptions::new().create(true).append(true).read(true).open(&path)?;
        let size = file.metadata()?.len();
        // A crash mid-line leaves a partial line: end it so the next line stands alone.
        if size > 0 {
            let content = fs::read(&path)?;
            if content.last() != Some(&b'\n') {
                file.write_all(b"\n")?;
            }
        }
        let size = file.metadata()?.len();
        Ok(JsonlLog { path, old_path, file, size })
    }

    fn append<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        let mut line = serde_json::to_vec(value).expect("log lines serialize");
        line.push(b'\n');
        if self.size + line.len() as u64 > ROTATE_BYTES && self.size > 0 {
            fs::rename(&self.path, &self.old_path)?;
            self.file = OpenOptions::new().create(true).append(true).read(true).open(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Every complete, well-formed line, oldest first; malformed lines are skipped.
    fn read_all<T: for<'de> Deserialize<'de>>(&self) -> io::Result<Vec<T>> {
        let mut out = Vec::new();
        for path in [&self.old_path, &self.path] {
            let file = match File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for line in BufReader::new(file).lines() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str(&line) {
                    Ok(v) => out.push(v),
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "Skipping a malformed workspace line"),
                }
            }
        }
        Ok(out)
    }
}

/// A directive the agent accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Accepted {
    Inject { id: String, prompt: String },
    Command { id: String, command: String },
}

impl Accepted {
    pub fn id(&self) -> &str {
        match self {
            Accepted::Inject { id, .. } | Accepted::Command { id, .. } => id,
        }
    }
}

/// One message of an agent's conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// The file [`Workspace::mark_alive`] writes.
pub const ALIVE: &str = clawfleet_proto::alive::FILE;

/// The health check of the agent whose workspace is `dir`: healthy when its loop marked itself
/// alive within `max_age` and it has reached the bus since it started.
pub fn check_alive(dir: &Path, max_age: std::time::Duration) -> Result<(), String> {
    let path = dir.join(ALIVE);
    let text = fs::read_to_string(&path).map_err(|e| format!("no sign of life in {}: {e}", path.display()))?;
    let alive = clawfleet_proto::alive::Alive::parse(&text).ok_or_else(|| format!("{} is garbled: {text:?}", path.display()))?;
    let (at, connected) = (alive.at_ms, alive.connected);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let age = now.saturating_sub(at);
    if age > max_age.as_millis() {
        return Err(format!("the agent last turned its loop {age} ms ago (more than {} ms)", max_age.as_millis()));
    }
    if !connected {
        return Err("the agent runs but has not reached the bus yet".into());
    }
    Ok(())
}

/// Optional per-workspace overrides, read at start and by `config-reload`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    pub system_prompt: Option<String>,
    pub brain: Option<String>,
    /// The council roles the agent can take, most wanted first (then it claims without asking
    /// its brain).
    pub capabilities: Option<Vec<String>>,
}

/// What a restarted agent must finish from its previous run.
#[derive(Debug, Default, PartialEq)]
pub struct Recovery {
    /// Injections accepted but never started: they run now, in order.
    pub not_started: Vec<(String, String)>,
    /// Injections whose turn started and never ended: they get an `agent_error`.
    pub interrupted: Vec<String>,
}

/// An open workspace.
#[derive(Debug)]
pub struct Workspace {
    dir: PathBuf,
    epoch: String,
    journal: JsonlLog,
    next_seq: u64,
    inbox: JsonlLog,
    seen: HashSet<String>,
    conversation: JsonlLog,
    history: Vec<Message>,
}

/// How many conversation messages are kept in memory and sent to a model brain.
const HISTORY_MESSAGES: usize = 40;

impl Workspace {
    /// Opens (creating) a workspace and reads what a restart needs.
    pub fn open(dir: &Path) -> io::Result<(Workspace, Recovery)> {
        fs::create_dir_all(dir)?;
        let epoch_path = dir.join("epoch");
        let epoch = match fs::read_to_string(&epoch_path) {
            Ok(e) if !e.trim().is_empty() => e.trim().to_owned(),
            Ok(_) | Err(_) => {
                let e = uuid::Uuid::new_v4().simple().to_string();
                fs::write(&epoch_path, &e)?;
                e
            }
        };
        let journal = JsonlLog::open(dir, "events")?;
        let inbox = JsonlLog::open(dir, "inbox")?;
        let conversation = JsonlLog::open(dir, "conversation")?;

        let events: Vec<AgentEnvelope> = journal.read_all()?;
        let next_seq = events.iter().filter(|e| e.epoch == epoch).map(|e| e.seq).max().unwrap_or(0) + 1;
        let accepted: Vec<Accepted> = inbox.read_all()?;
        let seen = accepted.iter().map(|a| a.id().to_owned()).collect();
        let mut history: Vec<Message> = conversation.read_all()?;
        let excess = history.len().saturating_sub(HISTORY_MESSAGES);
        history.drain(..excess);

        let mut started = HashSet::new();
        let mut ended = HashSet::new();
        for e in &events {
            let Some(id) = &e.injection_id else { continue };
            if matches!(e.body, EventBody::TurnStarted {}) {
                started.insert(id.clone());
            }
            if e.body.is_terminal() {
                ended.insert(id.clone());
            }
        }
        let mut recovery = Recovery::default();
        for a in accepted {
            if let Accepted::Inject { id, prompt } = a {
                if ended.contains(&id) {
                    continue;
                }
                if started.contains(&id) {
                    recovery.interrupted.push(id);
                } else {
                    recovery.not_started.push((id, prompt));
                }
            }
        }
        let ws = Workspace { dir: dir.to_owned(), epoch, journal, next_seq, inbox, seen, conversation, history };
        Ok((ws, recovery))
    }

    /// Records that the agent's loop turns (each heartbeat tick) and whether it has reached
    /// the bus: what `clawfleet agent --health` checks.
    pub fn mark_alive(&self, connected_once: bool) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        let _ = fs::write(self.dir.join(ALIVE), clawfleet_proto::alive::Alive { at_ms: now, connected: connected_once }.render());
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Sequence number of the last journaled event (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Numbers and journals an event, and returns the envelope to publish. A journal that
    /// cannot be written (disk full) is logged, and the event is still numbered and returned:
    /// it goes out live, only a later replay could not repeat it.
    pub fn record(&mut self, injection_id: Option<&str>, body: EventBody) -> AgentEnvelope {
        let envelope = AgentEnvelope {
            epoch: self.epoch.clone(),
            seq: self.next_seq,
            at: crate::now_rfc3339(),
            injection_id: injection_id.map(str::to_owned),
            body,
        };
        if let Err(e) = self.journal.append(&envelope) {
            tracing::error!(dir = %self.dir.display(), error = %e, "Could not write the agent's event journal");
        }
        self.next_seq += 1;
        envelope
    }

    /// Journaled events with a sequence number above `after_seq`, oldest first.
    pub fn replay(&self, after_seq: u64) -> io::Result<Vec<AgentEnvelope>> {
        let all: Vec<AgentEnvelope> = self.journal.read_all()?;
        Ok(all.into_iter().filter(|e| e.epoch == self.epoch && e.seq > after_seq).collect())
    }

    /// Whether a directive with this id was already accepted.
    pub fn has_seen(&self, id: &str) -> bool {
        self.seen.contains(id)
    }

    /// Records an accepted directive before it is acknowledged.
    pub fn accept(&mut self, accepted: Accepted) -> io::Result<()> {
        self.inbox.append(&accepted)?;
        self.seen.insert(accepted.id().to_owned());
        Ok(())
    }

    /// The most recent conversation messages.
    pub fn history(&self) -> &[Message] {
        &self.history
    }

    /// Adds a completed exchange to the conversation.
    pub fn remember(&mut self, prompt: &str, answer: &str) -> io::Result<()> {
        for m in [Message { role: "user".into(), content: prompt.into() }, Message { role: "assistant".into(), content: answer.into() }] {
            self.conversation.append(&m)?;
            self.history.push(m);
        }
        let excess = self.history.len().saturating_sub(HISTORY_MESSAGES);
        self.history.drain(..excess);
        Ok(())
    }

    /// Reads the conversation again from its log (a restore wrote it): the context the next
    /// turns get. How many messages the log holds.
    pub fn reload_conversation(&mut self) -> io::Result<usize> {
        self.conversation = JsonlLog::open(&self.dir, "conversation")?;
        let mut history: Vec<Message> = self.conversation.read_all()?;
        let total = history.len();
        history.drain(..total.saturating_sub(HISTORY_MESSAGES));
        self.history = history;
        Ok(total)
    }

    /// Reads `config.json`, if there is one.
    pub fn config(&self) -> Result<WorkspaceConfig, String> {
        let path = self.dir.join("config.json");
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(WorkspaceConfig::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_numbers_events_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ws, rec) = Workspace::open(dir.path()).unwrap();
        assert_eq!(rec, Recovery::default());
        let epoch = ws.epoch().to_owned();
        assert_eq!(ws.record(Some("i1"), EventBody::InjectDelivered {}).seq, 1);
        assert_eq!(ws.record(Some("i1"), EventBody::TurnStarted {}).seq, 2);
        drop(ws);
        let (ws, _) = Workspace::open(dir.path()).unwrap();
        assert_eq!(ws.epoch(), epoch);
        assert_eq!(ws.last_seq(), 2);
        assert_eq!(ws.replay(1).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn recovery_requeues_unstarted_and_reports_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ws, _) = Workspace::open(dir.path()).unwrap();
        for (id, p) in [("done", "a"), ("mid", "b"), ("todo1", "c"), ("todo2", "d")] {
            ws.accept(Accepted::Inject { id: id.into(), prompt: p.into() }).unwrap();
            ws.record(Some(id), EventBody::InjectDelivered {});
        }
        ws.accept(Accepted::Command { id: "c1".into(), command: "health-check".into() }).unwrap();
        ws.record(Some("done"), EventBody::TurnStarted {});
        ws.record(Some("done"), EventBody::TurnComplete {});
        ws.record(Some("mid"), EventBody::TurnStarted {});
        drop(ws);
        let (ws, rec) = Workspace::open(dir.path()).unwrap();
        assert_eq!(rec.interrupted, vec!["mid".to_owned()]);
        assert_eq!(rec.not_started, vec![("todo1".into(), "c".into()), ("todo2".into(), "d".into())]);
        assert!(ws.has_seen("done") && ws.has_seen("c1") && !ws.has_seen("other"));
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ws, _) = Workspace::open(dir.path()).unwrap();
        ws.record(None, EventBody::TurnStarted {});
        drop(ws);
        let mut f = OpenOptions::new().append(true).open(dir.path().join("events.jsonl")).unwrap();
        f.write_all(br#"{"epoch":"x","seq":2,"at":"t","ev"#).unwrap();
        drop(f);
        let (mut ws, _) = Workspace::open(dir.path()).unwrap();
        assert_eq!(ws.last_seq(), 1);
        assert_eq!(ws.record(None, EventBody::TurnComplete {}).seq, 2);
        assert_eq!(ws.replay(0).unwrap().len(), 2);
    }

    #[test]
    fn conversation_is_kept_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ws, _) = Workspace::open(dir.path()).unwrap();
        for i in 0..30 {
            ws.remember(&format!("q{i}"), &format!("a{i}")).unwrap();
        }
        drop(ws);
        let (ws, _) = Workspace::open(dir.path()).unwrap();
        assert_eq!(ws.history().len(), HISTORY_MESSAGES);
        assert_eq!(ws.history().last().unwrap().content, "a29");
    }

    #[test]
    fn workspace_config() {
        let dir = tempfile::tempdir().unwrap();
        let (ws, _) = Workspace::open(dir.path()).unwrap();
        assert_eq!(ws.config().unwrap(), WorkspaceConfig::default());
        fs::write(dir.path().join("config.json"), r#"{"system_prompt":"Be brief."}"#).unwrap();
        assert_eq!(ws.config().unwrap().system_prompt.as_deref(), Some("Be brief."));
        fs::write(dir.path().join("config.json"), r#"{"sytem_prompt":"typo"}"#).unwrap();
        assert!(ws.config().unwrap_err().contains("unknown field `sytem_prompt`"));
    }
}

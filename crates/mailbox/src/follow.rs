//! Following outboxes by polling, with offsets and inodes that survive restarts.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::layout::{Mailbox, MailboxError};

/// The largest line the follower accepts; a longer one is reported and skipped.
pub const MAX_LINE: usize = 1024 * 1024;

/// What one line of an outbox was.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Json(Value),
    /// A line checked to be JSON, as written (without its newline): what a follower that only
    /// relays lines gets ([`Follower::relaying`]), without building a value it would not use.
    Raw(Vec<u8>),
    /// Not JSON (or too long): reported with why, and skipped; the lines around it are kept.
    Garbage(String),
}

impl Line {
    /// The line's JSON value, or why it has none.
    pub fn into_value(self) -> Result<Value, String> {
        match self {
            Line::Json(v) => Ok(v),
            Line::Raw(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
            Line::Garbage(why) => Err(why),
        }
    }
}

/// One line, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub job_id: String,
    pub node: u32,
    /// Byte offset of the line in its file.
    pub offset: u64,
    pub line: Line,
}

/// Where the follower is in one file (keyed by inode: a file keeps it when the worker moves
/// it from the outbox to the archive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    /// Device and inode.
    dev: u64,
    ino: u64,
    /// Everything before this byte has been handed out and committed.
    offset: u64,
    /// The file's first bytes (up to [`HEAD`]): an inode number freed and reused for a new file
    /// of the same name does not pass for the old file.
    head: Vec<u8>,
}

const HEAD: usize = 64;

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// By file name (`<job>_<NN>.jsonl`), which is the same in the outbox and the archive.
    files: BTreeMap<String, Position>,
}

/// Follows every outbox (and archived outbox) of a mailbox.
#[derive(Debug)]
pub struct Follower {
    mailbox: Mailbox,
    state_path: PathBuf,
    state: State,
    /// Offsets handed out by `poll` but not yet committed.
    pending: BTreeMap<String, Position>,
    /// Hand out [`Line::Raw`] rather than [`Line::Json`].
    raw: bool,
}

impl Follower {
    /// A follower that keeps its offsets in `state_path` (loaded if it exists).
    pub fn open(mailbox: Mailbox, state_path: PathBuf) -> Result<Follower, MailboxError> {
        let state = match fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(error) => return Err(MailboxError::Read { path: state_path, error }),
        };
        Ok(Follower { mailbox, state_path, state, pending: BTreeMap::new(), raw: false })
    }

    /// This follower hands out lines as written ([`Line::Raw`]), checked but not parsed.
    pub fn relaying(mut self) -> Follower {
        self.raw = true;
        self
    }

    /// Every complete new line of every outbox and archived outbox, in file order. A line
    /// without its newline yet is left for a later poll. Call [`Follower::commit`] once the
    /// lines are safely stored; lines handed out but not committed are handed out again after
    /// a restart (at least once, never lost).
    pub fn poll(&mut self) -> Result<Vec<Record>, MailboxError> {
        let mut out = Vec::new();
        for dir in [self.mailbox.archive_dir(), self.mailbox.outbox_dir()] {
            let entries = fs::read_dir(&dir).map_err(|error| MailboxError::Read { path: dir.clone(), error })?;
            let mut names: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
            names.sort();
            for name in names {
                let Some((job_id, node)) = Mailbox::parse_file_name(&name) else { continue };
                self.read_file(&dir.join(&name), &name, &job_id, node, &mut out)?;
            }
        }
        Ok(out)
    }

    fn read_file(&mut self, path: &Path, name: &str, job_id: &str, node: u32, out: &mut Vec<Record>) -> Result<(), MailboxError> {
        let mut file = match File::open(path) {
            Ok(f) => f,
            // Moved to the archive between listing and opening: the next poll finds it there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(MailboxError::Read { path: path.to_owned(), error }),
        };
        let meta = file.metadata().map_err(|error| MailboxError::Read { path: path.to_owned(), error })?;
        let mut head = vec![0u8; HEAD.min(meta.len() as usize)];
        file.read_exact(&mut head).map_err(|error| MailboxError::Read { path: path.to_owned(), error })?;
        let known = self.pending.get(name).or_else(|| self.state.files.get(name));
        let start = match known {
            // The same file (in the outbox or, moved, in the archive): go on where we were.
            Some(p) if p.dev == meta.dev() && p.ino == meta.ino() && p.offset <= meta.len() && head.starts_with(&p.head) => p.offset,
            // A new file, or a file of that name replaced: from the start.
            _ => 0,
        };
        if start == meta.len() {
            return Ok(());
        }
        file.seek(SeekFrom::Start(start)).map_err(|error| MailboxError::Read { path: path.to_owned(), error })?;
        let mut bytes = Vec::new();
        file.take(meta.len() - start).read_to_end(&mut bytes).map_err(|error| MailboxError::Read { path: path.to_owned(), error })?;
        let (lines, consumed) = split_lines(&bytes, start, self.raw);
        out.extend(lines.into_iter().map(|(offset, line)| Record { job_id: job_id.to_owned(), node, offset, line }));
        if consumed > 0 {
            let offset = start + consumed as u64;
            head.truncate(offset.min(HEAD as u64) as usize);
            self.pending.insert(name.to_owned(), Position { dev: meta.dev(), ino: meta.ino(), offset, head });
        }
        Ok(())
    }

    /// Everything handed out so far is stored: remember it (in the state file, atomically).
    pub fn commit(&mut self) -> Result<(), MailboxError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.state.files.extend(std::mem::take(&mut self.pending));
        let tmp = self.state_path.with_extension("tmp");
        let bytes = serde_json::to_vec(&self.state).expect("serializable");
        fs::write(&tmp, bytes)
            .and_then(|()| fs::rename(&tmp, &self.state_path))
            .map_err(|error| MailboxError::State { path: self.state_path.clone(), error })
    }
}

/// The complete lines of `bytes` (read from byte `start` of a file) with their offsets, and how
/// many bytes they took: a last line without its newline is not consumed. `raw`: valid lines
/// as [`Line::Raw`], else parsed, as [`Line::Json`].
pub fn split_lines(bytes: &[u8], start: u64, keep_raw: bool) -> (Vec<(u64, Line)>, usize) {
    let mut out = Vec::new();
    let mut consumed = 0usize;
    while let Some(end) = bytes[consumed..].iter().position(|&b| b == b'\n') {
        let raw = &bytes[consumed..consumed + end];
        let offset = start + consumed as u64;
        consumed += end + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = if raw.len() > MAX_LINE {
            Line::Garbage(format!("a line of {} bytes, over the {MAX_LINE}-byte limit", raw.len()))
        } else if keep_raw {
            match serde_json::from_slice::<Checked>(raw) {
                Ok(_) => Line::Raw(raw.to_vec()),
                Err(e) => garbage(raw, &e),
            }
        } else {
            match serde_json::from_slice::<Value>(raw) {
                Ok(v) => Line::Json(v),
                Err(e) => garbage(raw, &e),
            }
        };
        out.push((offset, line));
    }
    (out, consumed)
}

/// Accepts exactly the JSON a [`Value`] accepts (numbers in range included), without building
/// one: what a relaying follower checks.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Checked, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

fn garbage(raw: &[u8], e: &serde_json::Error) -> Line {
    Line::Garbage(format!("not JSON ({e}): {}", String::from_utf8_lossy(&raw[..raw.len().min(120)])))
}

/// Reads one file as it grows (a worker's inbox): complete lines only, from where it was.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    offset: u64,
}

impl Tail {
    pub fn new(path: PathBuf) -> Tail {
        Tail { path, offset: 0 }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The complete lines appended since the last poll; nothing while the file does not exist.
    pub fn poll(&mut self) -> Result<Vec<Line>, MailboxError> {
        let read_error = |error| MailboxError::Read { path: self.path.clone(), error };
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(read_error(e)),
        };
        let len = file.metadata().map_err(read_error)?.len();
        if len < self.offset {
            // Truncated or replaced: read it again from the start (directives are idempotent).
            self.offset = 0;
        }
        if len == self.offset {
            return Ok(Vec::new());
        }
        file.seek(SeekFrom::Start(self.offset)).map_err(read_error)?;
        let mut bytes = Vec::new();
        file.take(len - self.offset).read_to_end(&mut bytes).map_err(read_error)?;
        let (lines, consumed) = split_lines(&bytes, self.offset, false);
        self.offset += consumed as u64;
        Ok(lines.into_iter().map(|(_, l)| l).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use serde_json::json;

    use super::*;

    fn setup() -> (tempfile::TempDir, Mailbox, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let mailbox = Mailbox::open(dir.path()).unwrap();
        let state = dir.path().join("follower.json");
        (dir, mailbox, state)
    }

    fn json_lines(records: &[Record]) -> Vec<Value> {
        records.iter().filter_map(|r| if let Line::Json(v) = &r.line { Some(v.clone()) } else { None }).collect()
    }

    #[test]
    fn a_partial_line_waits_for_its_newline() {
        let (_d, mailbox, state) = setup();
        let mut f = Follower::open(mailbox.clone(), state).unwrap();
        let path = mailbox.outbox_dir().join("77_00.jsonl");
        let mut w = fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        w.write_all(b"{\"type\":\"start\"}\n{\"type\":\"ass").unwrap();
        assert_eq!(json_lines(&f.poll().unwrap()), vec![json!({"type": "start"})]);
        assert!(f.poll().unwrap().is_empty(), "the partial line is not consumed");
        w.write_all(b"istant\"}\n").unwrap();
        assert_eq!(json_lines(&f.poll().unwrap()), vec![json!({"type": "assistant"})]);
    }

    #[test]
    fn garbage_is_reported_and_the_lines_around_it_kept() {
        let (_d, mailbox, state) = setup();
        let mut f = Follower::open(mailbox.clone(), state).unwrap();
        fs::write(mailbox.outbox_dir().join("5_01.jsonl"), "{\"a\":1}\nnot json at all\n\n{\"a\":2}\n").unwrap();
        let records = f.poll().unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].line, Line::Json(json!({"a": 1})));
        assert!(matches!(&records[1].line, Line::Garbage(why) if why.contains("not JSON")));
        assert_eq!(records[2].line, Line::Json(json!({"a": 2})));
        assert_eq!((records[2].job_id.as_str(), records[2].node), ("5", 1));
    }

    #[test]
    fn a_restart_neither_loses_nor_repeats_committed_lines() {
        let (_d, mailbox, state) = setup();
        mailbox.append_outbox("9", 2, &json!({"n": 1})).unwrap();
        mailbox.append_outbox("9", 2, &json!({"n": 2})).unwrap();
        let mut f = Follower::open(mailbox.clone(), state.clone()).unwrap();
        assert_eq!(f.poll().unwrap().len(), 2);
        f.commit().unwrap();
        mailbox.append_outbox("9", 2, &json!({"n": 3})).unwrap();
        // Handed out, not committed, then a crash: it comes again.
        assert_eq!(f.poll().unwrap().len(), 1);
        drop(f);
        let mut f = Follower::open(mailbox.clone(), state.clone()).unwrap();
        assert_eq!(json_lines(&f.poll().unwrap()), vec![json!({"n": 3})]);
        f.commit().unwrap();
        let mut f = Follower::open(mailbox, state).unwrap();
        assert!(f.poll().unwrap().is_empty());
    }

    #[test]
    fn an_outbox_moved_to_the_archive_is_drained_from_where_it_was() {
        let (_d, mailbox, state) = setup();
        let mut f = Follower::open(mailbox.clone(), state).unwrap();
        mailbox.append_outbox("3", 0, &json!({"n": 1})).unwrap();
        assert_eq!(f.poll().unwrap().len(), 1);
        f.commit().unwrap();
        mailbox.append_outbox("3", 0, &json!({"n": 2})).unwrap();
        mailbox.append_outbox("3", 0, &json!({"type": "complete"})).unwrap();
        mailbox.archive("3", 0).unwrap();
        assert_eq!(json_lines(&f.poll().unwrap()), vec![json!({"n": 2}), json!({"type": "complete"})]);
        f.commit().unwrap();
        assert!(f.poll().unwrap().is_empty());
    }

    #[test]
    fn a_replaced_file_is_read_from_its_start() {
        let (_d, mailbox, state) = setup();
        let mut f = Follower::open(mailbox.clone(), state).unwrap();
        mailbox.append_outbox("4", 0, &json!({"old": true})).unwrap();
        f.poll().unwrap();
        f.commit().unwrap();
        let path = mailbox.outbox_dir().join("4_00.jsonl");
        fs::remove_file(&path).unwrap();
        fs::write(&path, "{\"new\":true}\n").unwrap();
        assert_eq!(json_lines(&f.poll().unwrap()), vec![json!({"new": true})]);
    }

    #[test]
    fn relaying_accepts_exactly_what_parsing_accepts() {
        let text = b"{\"a\":[1,2.5,\"x\",null,true,{}]}\n76e2333\n{\"k\":\"\\u00e9\"}\n[1,";
        let (parsed, n1) = split_lines(text, 0, false);
        let (relayed, n2) = split_lines(text, 0, true);
        assert_eq!((n1, n2), (text.len() - 3, text.len() - 3));
        assert_eq!(relayed[0].1, Line::Raw(b"{\"a\":[1,2.5,\"x\",null,true,{}]}".to_vec()));
        assert!(matches!(&parsed[1].1, Line::Garbage(why) if why.contains("out of range")));
        assert!(matches!(&relayed[1].1, Line::Garbage(why) if why.contains("out of range")), "{:?}", relayed[1]);
        assert!(matches!(&relayed[2].1, Line::Raw(_)));
    }

    #[test]
    fn a_tail_reads_complete_lines_as_the_file_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let mut t = Tail::new(path.clone());
        assert!(t.poll().unwrap().is_empty(), "no file yet");
        let mut w = fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        w.write_all(b"{\"n\":1}\n{\"n\":").unwrap();
        assert_eq!(t.poll().unwrap(), vec![Line::Json(json!({"n": 1}))]);
        w.write_all(b"2}\ngarbage\n").unwrap();
        let lines = t.poll().unwrap();
        assert_eq!(lines[0], Line::Json(json!({"n": 2})));
        assert!(matches!(lines[1], Line::Garbage(_)));
        assert!(t.poll().unwrap().is_empty());
    }

    #[test]
    fn a_missing_mailbox_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mailbox = Mailbox::open(dir.path()).unwrap();
        fs::remove_dir(mailbox.outbox_dir()).unwrap();
        let mut f = Follower::open(mailbox, dir.path().join("s.json")).unwrap();
        let e = f.poll().unwrap_err();
        assert!(e.to_string().contains("mailbox/outbox"), "{e}");
    }
}

//! Where mailbox files are, and appending to an inbox.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    #[error("the mailbox directory {path} cannot be used: {error}")]
    Dir { path: PathBuf, error: io::Error },
    #[error("cannot append to {path}: {error}")]
    Append { path: PathBuf, error: io::Error },
    #[error("a mailbox line must be one line of JSON without a newline in it")]
    NotOneLine,
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("cannot save the follower's state to {path}: {error}")]
    State { path: PathBuf, error: io::Error },
}

/// A mailbox under `<base>/mailbox`.
#[derive(Debug, Clone)]
pub struct Mailbox {
    root: PathBuf,
}

impl Mailbox {
    /// The mailbox under `base`, its three directories created if missing.
    pub fn open(base: &Path) -> Result<Mailbox, MailboxError> {
        let root = base.join("mailbox");
        for dir in ["inbox", "outbox", "archive"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(|error| MailboxError::Dir { path: path.clone(), error })?;
        }
        Ok(Mailbox { root })
    }

    pub fn inbox_dir(&self) -> PathBuf {
        self.root.join("inbox")
    }

    pub fn outbox_dir(&self) -> PathBuf {
        self.root.join("outbox")
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.root.join("archive")
    }

    /// `<job_id>_<NN>.jsonl`
    pub fn file_name(job_id: &str, node: u32) -> String {
        format!("{job_id}_{node:02}.jsonl")
    }

    /// `("1234", 7)` from `1234_07.jsonl`.
    pub fn parse_file_name(name: &str) -> Option<(String, u32)> {
        let stem = name.strip_suffix(".jsonl")?;
        let (job, node) = stem.rsplit_once('_')?;
        if job.is_empty() || node.len() < 2 || !node.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((job.to_owned(), node.parse().ok()?))
    }

    /// Appends one JSON line to a worker's inbox, in one `write` on a file opened for appending
    /// (so concurrent appenders never interleave within a line on a local filesystem).
    pub fn append_inbox(&self, job_id: &str, node: u32, line: &serde_json::Value) -> Result<(), MailboxError> {
        append_line(&self.inbox_dir().join(Mailbox::file_name(job_id, node)), line)
    }

    /// Appends one JSON line to a worker's outbox (what a worker does).
    pub fn append_outbox(&self, job_id: &str, node: u32, line: &serde_json::Value) -> Result<(), MailboxError> {
        append_line(&self.outbox_dir().join(Mailbox::file_name(job_id, node)), line)
    }

    /// Moves a worker's outbox into the archive (what a worker does when it exits).
    pub fn archive(&self, job_id: &str, node: u32) -> Result<(), MailboxError> {
        let name = Mailbox::file_name(job_id, node);
        let from = self.outbox_dir().join(&name);
        fs::rename(&from, self.archive_dir().join(&name)).map_err(|error| MailboxError::Append { path: from, error })
    }
}

fn append_line(path: &Path, line: &serde_json::Value) -> Result<(), MailboxError> {
    let mut text = line.to_string();
    if text.contains('\n') {
        return Err(MailboxError::NotOneLine);
    }
    text.push('\n');
    let mut f =
        OpenOptions::new().create(true).append(true).open(path).map_err(|error| MailboxError::Append { path: path.to_owned(), error })?;
    f.write_all(text.as_bytes()).map_err(|error| MailboxError::Append { path: path.to_owned(), error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(Mailbox::file_name("1234", 7), "1234_07.jsonl");
        assert_eq!(Mailbox::parse_file_name("1234_07.jsonl"), Some(("1234".into(), 7)));
        assert_eq!(Mailbox::parse_file_name("a_b_12.jsonl"), Some(("a_b".into(), 12)));
        assert_eq!(Mailbox::parse_file_name("1234_7.jsonl"), None);
        assert_eq!(Mailbox::parse_file_name("1234_07.json"), None);
        assert_eq!(Mailbox::parse_file_name("_07.jsonl"), None);
    }
}

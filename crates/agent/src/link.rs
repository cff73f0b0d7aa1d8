//! How an agent reaches the control plane: the bus, or the shared-filesystem mailbox when its
//! node has no route to the bus (codeswarm's layout; `clawfleet_proto::mailbox` has the lines).
//!
//! Either way the agent's loop sees the same things: directives in, journaled events and
//! heartbeats out. The mailbox's inbox is read by a task of its own ([`follow_inbox`]): it polls
//! (the one mechanism that works on NFS and Lustre) and wakes early on an inotify hint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clawfleet_bus::client::BusClient;
use clawfleet_mailbox::{Mailbox, MailboxError, Tail};
use clawfleet_proto::bus::{self as wire, AgentEnvelope, Heartbeat};
use clawfleet_proto::mailbox::{self as lines, InboxItem};
use tokio::sync::{Notify, mpsc};

/// Where an agent's mailbox is: `<base>/mailbox/{inbox,outbox,archive}/<job_id>_<NN>.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxSpec {
    pub base: PathBuf,
    /// The Slurm job id (or any id unique to this run of the agent).
    pub job_id: String,
    /// `NN`: the agent's slot.
    pub node: u32,
}

/// Which way an agent talks to the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Bus,
    Mailbox(MailboxSpec),
}

/// How often the inbox is polled; an inotify hint wakes the reader sooner on a local disk.
pub const INBOX_POLL: Duration = Duration::from_millis(100);

pub(crate) enum Link {
    Bus { client: BusClient, events: String, heartbeats: String },
    Mailbox(Outbox),
}

/// The writing half of a mailbox.
pub(crate) struct Outbox {
    pub(crate) mailbox: Mailbox,
    pub job_id: String,
    pub node: u32,
}

impl Outbox {
    pub(crate) fn open(spec: &MailboxSpec) -> Result<Outbox, MailboxError> {
        Ok(Outbox { mailbox: Mailbox::open(&spec.base)?, job_id: spec.job_id.clone(), node: spec.node })
    }

    pub(crate) fn append(&self, line: &serde_json::Value) -> Result<(), MailboxError> {
        self.mailbox.append_outbox(&self.job_id, self.node, line)
    }

    pub(crate) fn inbox(&self) -> PathBuf {
        self.mailbox.inbox_dir().join(Mailbox::file_name(&self.job_id, self.node))
    }
}

impl Link {
    /// Sends a journaled event; `false` when it could not go now (the journal keeps it, and the
    /// control plane asks for a replay when it sees the gap).
    pub(crate) fn event(&self, envelope: &AgentEnvelope) -> bool {
        match self {
            Link::Bus { client, events, .. } => client.try_publish(events.clone(), wire::encode(envelope), false).is_ok(),
            Link::Mailbox(o) => o.append(&lines::event_line(&o.job_id, o.node, envelope)).map_err(log).is_ok(),
        }
    }

    pub(crate) fn heartbeat(&self, hb: &Heartbeat) {
        match self {
            Link::Bus { client, heartbeats, .. } => {
                let _ = client.try_publish(heartbeats.clone(), wire::encode(hb), true);
            }
            Link::Mailbox(o) => {
                let _ = o.append(&lines::heartbeat_line(&o.job_id, o.node, hb)).map_err(log);
            }
        }
    }

    /// The last words: waits for the bus to take them (briefly), or writes them and `complete`
    /// and moves the outbox to the archive.
    pub(crate) async fn finish(&self, last: &[AgentEnvelope], hb: &Heartbeat) {
        match self {
            Link::Bus { client, events, heartbeats } => {
                for e in last {
                    client.publish(events.clone(), wire::encode(e), false).await.ok();
                }
                client.publish(heartbeats.clone(), wire::encode(hb), true).await.ok();
                client.disconnect();
            }
            Link::Mailbox(o) => {
                for e in last {
                    self.event(e);
                }
                self.heartbeat(hb);
                let done = o.append(&lines::complete_line(&o.job_id, o.node)).and_then(|()| o.mailbox.archive(&o.job_id, o.node));
                if let Err(e) = done {
                    tracing::error!(error = %e, "Could not close the mailbox outbox");
                }
            }
        }
    }
}

fn log(e: MailboxError) -> MailboxError {
    tracing::warn!(error = %e, "Could not write to the mailbox; the journal keeps the event");
    e
}

/// What the inbox reader hands the agent's loop.
pub(crate) enum Inbound {
    Item(InboxItem),
    /// A line that is not a directive, or the inbox could not be read.
    Refused(String),
}

/// Reads the inbox at `path` until the receiver is gone.
pub(crate) async fn follow_inbox(path: PathBuf, tx: mpsc::Sender<Inbound>) {
    let wake = Arc::new(Notify::new());
    if let Some(dir) = path.parent() {
        let w = wake.clone();
        if let Err(e) = clawfleet_mailbox::hint::watch(&[dir.to_owned()], move || w.notify_one()) {
            tracing::debug!(error = %e, "No inotify hint for the inbox; polling alone");
        }
    }
    let mut tail = Tail::new(path);
    let mut last_error: Option<String> = None;
    loop {
        match tail.poll() {
            Ok(found) => {
                last_error = None;
                for line in found {
                    let msg = match line.into_value().and_then(|v| lines::parse_inbox(&v).map_err(|e| e.to_string())) {
                        Ok(item) => Inbound::Item(item),
                        Err(why) => Inbound::Refused(format!("refused an inbox line of {}: {why}", name(tail.path()))),
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let e = e.to_string();
                // Said once, not every poll.
                if last_error.as_ref() != Some(&e) && tx.send(Inbound::Refused(e.clone())).await.is_err() {
                    return;
                }
                last_error = Some(e);
            }
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(INBOX_POLL) => {}
            () = tx.closed() => return,
        }
    }
}

fn name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| format!("inbox/{}", n.to_string_lossy()))
}

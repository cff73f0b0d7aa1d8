//! The control plane's side of the mailbox transport, for agents on nodes with no route to the
//! bus (`crates/mailbox` has the files, `proto::mailbox` the lines).
//!
//! For every fleet whose backend keeps a mailbox, the loop follows the outboxes (polling, with
//! an inotify hint on local disks): events and heartbeats go to [`crate::ingest`] as
//! [`Inbound`] items, checked and stored exactly as those from the bus (once, by journal
//! position, and a gap gets a replay), and `worker_error` lines and lines it cannot read become
//! `agent_error` events. Only then are the follower's offsets committed. Directives go the
//! other way through [`crate::outbound`], to which this loop gives each slot's route: the inbox
//! of its current job (the newest outbox of its slot).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clawfleet_mailbox::{Follower, Mailbox, Record};
use clawfleet_proto::event::EventBody;
use clawfleet_proto::mailbox::{self as lines, OutboxItem};
use clawfleet_store::NewEvent;
use tokio::sync::{Notify, mpsc, watch};

use crate::app::App;
use crate::clock;
use crate::ingest::Inbound;

/// How the control plane follows mailboxes.
#[derive(Debug, Clone, Copy)]
pub struct MailboxOptions {
    /// Between two looks at every outbox.
    pub poll: Duration,
    /// Also wake on inotify events (local disks; a hint only, polling goes on).
    pub inotify: bool,
}

impl Default for MailboxOptions {
    fn default() -> Self {
        MailboxOptions { poll: Duration::from_millis(100), inotify: true }
    }
}

struct Followed {
    uid: String,
    mailbox: Mailbox,
    follower: Follower,
    /// The last problem reported, so a lasting one is said once.
    problem: Option<String>,
    /// Each agent's turn in progress, as its outbox last said (a worker that dies in it fails it).
    turns: HashMap<u32, String>,
}

/// How often the fleets are looked at for mailboxes to follow (a new fleet's agents wait for it).
const RESCAN: Duration = Duration::from_millis(250);

pub(crate) async fn run(app: Arc<App>, tx: mpsc::Sender<Inbound>, options: MailboxOptions, mut shutdown: watch::Receiver<bool>) {
    let wake = Arc::new(Notify::new());
    let mut followed: HashMap<String, Followed> = HashMap::new();
    let mut unusable: HashMap<String, String> = HashMap::new();
    let mut last_scan: Option<Instant> = None;
    loop {
        if last_scan.is_none_or(|at| at.elapsed() >= RESCAN) {
            last_scan = Some(Instant::now());
            rescan(&app, &mut followed, &mut unusable, &wake, options).await;
        }
        for (fleet, f) in followed.iter_mut() {
            follow(&app, &tx, fleet, f).await;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(options.poll) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Starts following the mailboxes of new fleets and forgets those of removed ones.
/// `unusable`: the last reason each fleet's mailbox could not be followed, so it is said once.
async fn rescan(
    app: &Arc<App>,
    followed: &mut HashMap<String, Followed>,
    unusable: &mut HashMap<String, String>,
    wake: &Arc<Notify>,
    options: MailboxOptions,
) {
    let Ok(rows) = app.db.run(|s| s.fleets()).await else { return };
    let mut wanted: HashMap<String, (String, PathBuf)> = HashMap::new();
    for row in &rows {
        let (Ok(backend), Ok(d)) = (app.backend(&row.backend), app.deployment(row)) else { continue };
        if let Some(dir) = backend.mailbox(&d) {
            wanted.insert(row.name.clone(), (row.uid.clone(), dir));
        }
    }
    followed.retain(|name, f| wanted.get(name).is_some_and(|(uid, _)| *uid == f.uid));
    unusable.retain(|name, _| wanted.contains_key(name));
    app.outbound.keep_routes(|name| followed.contains_key(name));
    for (name, (uid, dir)) in wanted {
        if followed.contains_key(&name) {
            continue;
        }
        let state = app.data_dir.join("mailbox").join(format!("{name}-{uid}.json"));
        let opened = std::fs::create_dir_all(app.data_dir.join("mailbox"))
            .map_err(|e| format!("cannot create {}: {e}", app.data_dir.join("mailbox").display()))
            .and_then(|()| Mailbox::open(&dir).map_err(|e| e.to_string()))
            .and_then(|mailbox| Follower::open(mailbox.clone(), state).map(|f| (mailbox, f)).map_err(|e| e.to_string()));
        match opened {
            Ok((mailbox, follower)) => {
                if options.inotify {
                    let w = wake.clone();
                    if let Err(e) = clawfleet_mailbox::hint::watch(&[mailbox.outbox_dir(), mailbox.archive_dir()], move || w.notify_one()) {
                        tracing::info!(fleet = %name, error = %e, "No inotify hint for the mailbox; polling alone");
                    }
                }
                tracing::info!(fleet = %name, dir = %dir.display(), "Following the fleet's mailbox");
                unusable.remove(&name);
                app.outbound.route(&name, mailbox.clone(), HashMap::new());
                followed.insert(name, Followed { uid, mailbox, follower, problem: None, turns: HashMap::new() });
            }
            // Said by the backend too (it creates the mailbox before submitting jobs).
            Err(e) => {
                if unusable.get(&name) != Some(&e) {
                    tracing::warn!(fleet = %name, error = %e, "Cannot follow the fleet's mailbox yet");
                    unusable.insert(name, e);
                }
            }
        }
    }
}

/// One look at a fleet's outboxes.
async fn follow(app: &App, tx: &mpsc::Sender<Inbound>, fleet: &str, f: &mut Followed) {
    let records = match f.follower.poll() {
        Ok(r) => r,
        Err(e) => {
            let problem = format!("the mailbox cannot be read: {e}");
            if f.problem.as_ref() != Some(&problem) {
                tracing::error!(fleet, %problem, "Mailbox problem");
                report(app, fleet, None, None, problem.clone()).await;
                f.problem = Some(problem);
            }
            return;
        }
    };
    if f.problem.take().is_some() {
        tracing::info!(fleet, "The mailbox can be read again");
    }
    update_routes(app, fleet, &f.mailbox);
    if records.is_empty() {
        return;
    }
    let mut problems = Vec::new();
    for Record { job_id, node, offset, line } in records {
        let source = || format!("{}, byte {offset}", Mailbox::file_name(&job_id, node));
        let item = line.into_value().and_then(|v| lines::parse_outbox(&v).map_err(|e| e.to_string()));
        let inbound = match item {
            Ok(OutboxItem::Event(e)) => {
                match (&e.body, &e.injection_id) {
                    (EventBody::TurnStarted {}, Some(id)) => {
                        f.turns.insert(node, id.clone());
                    }
                    (EventBody::TurnComplete {} | EventBody::AgentError { .. } | EventBody::InjectFailed { .. }, Some(id))
                        if f.turns.get(&node) == Some(id) =>
                    {
                        f.turns.remove(&node);
                    }
                    _ => {}
                }
                Inbound::Event { fleet: fleet.to_owned(), slot: node, envelope: e }
            }
            Ok(OutboxItem::Heartbeat(heartbeat)) => Inbound::Heartbeat { fleet: fleet.to_owned(), slot: node, heartbeat },
            Ok(OutboxItem::Start { hostname, .. }) => {
                tracing::info!(fleet, slot = node, job = %job_id, %hostname, "An agent started on the mailbox");
                continue;
            }
            Ok(OutboxItem::Complete) => {
                tracing::info!(fleet, slot = node, job = %job_id, "An agent finished on the mailbox");
                continue;
            }
            Ok(OutboxItem::WorkerError { injection_id, error }) => {
                // The turn it was in, if it said none: the one its outbox left open, else what its
                // last heartbeat said it was doing.
                let injection_id = injection_id.or_else(|| f.turns.remove(&node)).or_else(|| app.live.current_injection(fleet, node));
                problems.push((Some(node), injection_id, format!("the worker of job {job_id} failed: {error}")));
                continue;
            }
            Err(why) => {
                tracing::warn!(fleet, slot = node, source = %source(), %why, "Skipped a mailbox line");
                problems.push((Some(node), None, format!("skipped an outbox line ({}): {why}", source())));
                continue;
            }
        };
        if tx.send(inbound).await.is_err() {
            return;
        }
    }
    for (slot, injection_id, message) in problems {
        report(app, fleet, slot, injection_id, message).await;
    }
    // Events are committed once handed to ingest: were they lost in a crash before it stored
    // them, the agent's journal has them and the next heartbeat's gap asks for a replay.
    if let Err(e) = f.follower.commit() {
        tracing::error!(fleet, error = %e, "Could not save the mailbox offsets; lines may be read twice");
    }
}

async fn report(app: &App, fleet: &str, agent: Option<u32>, injection_id: Option<String>, message: String) {
    let event =
        NewEvent { at: clock::now_rfc3339(), fleet: fleet.to_owned(), agent, injection_id, body: EventBody::AgentError { message } };
    if let Err(e) = app.hub.append(vec![event]).await {
        tracing::error!(fleet, error = %e, "Could not store a mailbox problem");
    }
}

/// Each slot's current job: its newest outbox (an agent killed without archiving leaves its old
/// one behind).
fn update_routes(app: &App, fleet: &str, mailbox: &Mailbox) {
    let Ok(entries) = std::fs::read_dir(mailbox.outbox_dir()) else { return };
    let mut newest: HashMap<u32, (SystemTime, String)> = HashMap::new();
    for entry in entries.flatten() {
        let Some((job, node)) = entry.file_name().to_str().and_then(Mailbox::parse_file_name) else { continue };
        let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
        if newest.get(&node).is_none_or(|(t, _)| modified > *t) {
            newest.insert(node, (modified, job));
        }
    }
    app.outbound.route(fleet, mailbox.clone(), newest.into_iter().map(|(node, (_, job))| (node, job)).collect());
}

//! Durable state of the control plane: one SQLite file (WAL, `synchronous=FULL`), readable
//! with the `sqlite3` shell.
//!
//! What lives here: fleets (desired state), injections and commands, the **outbox** of
//! directives not yet acknowledged by their agent, every **event** (with the agent's journal
//! position, so a replayed event is stored once), each agent's journal cursor, the audit log
//! and API tokens. Every write that must happen together happens in one transaction: an
//! injection, its outbox rows and its `inject_ack` events commit at once or not at all.
//!
//! **API boundary:** plain rows in, plain rows out; the store knows no clock, no bus and no
//! HTTP. Calls are synchronous and short; async callers run them on a blocking thread.

mod approval;
mod council;
mod migration;
mod plan;
mod project;
mod queue;
mod retention;
mod scenario;
mod schema;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

pub use approval::Answer;
use clawfleet_proto::api::{BrainEnv, Canary, Deploy, DeployState, FleetState};
use clawfleet_proto::event::{Event, EventBody};
pub use migration::{Advance, Held, NewMigration, Vacated};
pub use plan::{NewPlan, PlanEnded, PlanRow};
pub use project::{Ended, NewProject};
pub use queue::{Delegated, Enqueue, NewQueueItem, Queued, ReplyRoute, ReplyTo, reply_origin};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
pub use scenario::{PhraseRow, RoundRow, ScoreRow};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("a fleet named '{0}' already exists")]
    FleetExists(String),
    #[error("a token named '{0}' already exists")]
    TokenExists(String),
    #[error("no fleet named '{0}'")]
    NoFleet(String),
    #[error("the fleet '{0}' has no earlier image or version to roll back to (it was never updated)")]
    NothingToRollBack(String),
    #[error("the database at {path} was written by a newer clawfleet (schema {found}, this one knows up to {known})")]
    TooNew { path: String, found: i64, known: i64 },
    #[error("deploy #{} of {} (by {}) is running: wait for it (--wait) or abort it", .0.id, .0.target, .0.actor)]
    DeployRunning(Box<Deploy>),
    #[error("no deploy #{0}")]
    NoDeploy(u64),
    #[error("deploy #{0} is {1}, not paused: only a deploy waiting on its canaries is promoted")]
    NotPaused(u64, DeployState),
    #[error("deploy #{0} is over ({1})")]
    DeployDone(u64, DeployState),
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("no secret named '{0}': set it first (clawfleet secret set {0})")]
    NoSecret(String),
    #[error("the secret '{0}' is used by fleet(s) {1}: change them first")]
    SecretInUse(String, String),
    #[error("fleet '{fleet}' has council {id} {state}: close it first (clawfleet council close {fleet} {id})")]
    CouncilLive { fleet: String, id: u64, state: clawfleet_proto::council::CouncilState },
    #[error("fleet '{0}' has no council {1}")]
    NoCouncil(String, u64),
    #[error("council {0} is {1} already")]
    CouncilOver(u64, clawfleet_proto::council::CouncilState),
    #[error("no project '{0}'")]
    NoProject(String),
    #[error("task {0} changed while the project was resumed: look again and resume again")]
    ProjectChanged(String),
    #[error("project '{0}' is already completed")]
    ProjectCompleted(String),
    #[error("no plan '{0}'")]
    NoPlan(String),
    #[error("plan {0} is {1}, not failed: only a failed plan is retried")]
    PlanNotFailed(String, clawfleet_proto::project::PlanStatus),
    #[error("fleet '{0}' has no active council")]
    NoActiveCouncil(String),
    #[error("no agent holds role '{role}' in council {council} of fleet '{fleet}'")]
    NoRole { fleet: String, council: u64, role: String },
    #[error("no queue item '{0}'")]
    NoQueueItem(String),
    #[error("queue item {} is {} already{}", .0.queue_id, .0.status, .0.dispatched_to.map_or(String::new(), |s| format!(" (to {}/{s}, injection {})", .0.fleet, .0.injection_id.as_deref().unwrap_or("?"))))]
    QueueItemOver(Box<clawfleet_proto::queue::QueueItem>),
    #[error("fleet '{0}' has {1} items queued, the most it takes: wait for some to be dispatched")]
    QueueFull(String, usize),
    #[error("no approval {0}")]
    NoApproval(u64),
    #[error("agent {agent} is migrating already (migration {id})")]
    Migrating { agent: String, id: String },
    #[error("agent {agent} moved to rack '{rack}': its slot here stays empty")]
    Defected { agent: String, rack: String },
    #[error("approval {} is answered already ({} by {})", .0.approval_id, if .0.approved == Some(true) { "approved" } else { "refused" }, .0.answered_by.as_deref().unwrap_or("?"))]
    ApprovalAnswered(Box<clawfleet_proto::approval::Approval>),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// Whether the database's disk is full (SQLite's `SQLITE_FULL`, or the OS's `ENOSPC`):
    /// nothing was written, and the same write succeeds once there is room.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => e.code == rusqlite::ErrorCode::DiskFull,
            _ => false,
        }
    }
}

/// An API token, as stored: its hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub name: String,
    pub role: String,
    pub fleet: Option<String>,
    /// SHA-256 of the token, hex.
    pub hash: String,
    pub created_at: String,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub created_by: String,
}

/// A change of a fleet's image and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetUpdate {
    /// A new version label, and a new image (`None`: keep the image).
    To { image: Option<String>, version: String },
    /// Back to the image and version the last update replaced.
    Rollback,
}

/// A fleet's stored desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetRow {
    pub name: String,
    /// Changes each time a fleet of this name is launched.
    pub uid: String,
    pub backend: String,
    pub brain: String,
    pub prompt: Option<String>,
    pub version: String,
    pub replicas: u32,
    pub state: FleetState,
    pub created_at: String,
    /// The container image (container backends; `None`: the backend's default).
    pub image: Option<String>,
    /// The image and version the last update replaced (what `rollback` returns to).
    pub previous: Option<(Option<String>, String)>,
    /// The cluster profile of a slurm fleet, as JSON (`launch --cluster`).
    pub cluster: Option<String>,
    /// Its deploy policy, as JSON (`None`: the defaults).
    pub deploy: Option<String>,
    /// Agents on another version than the fleet's, as JSON (`proto::api::Canary`).
    pub canary: Option<String>,
    /// What its brains get in their environment, as JSON (`BrainEnv`; `None`: nothing).
    pub brain_env: Option<String>,
    /// The agent that leads it, if one does.
    pub leader: Option<u32>,
    /// The highest leader epoch it has given.
    pub leader_epoch: u64,
    /// The agent the operator wants to lead.
    pub leader_preferred: Option<u32>,
}

/// A secret as listed (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub name: String,
    pub bytes: usize,
    pub updated_at: String,
    pub updated_by: String,
}

impl FleetRow {
    /// The `fleet_launched` event of a new fleet.
    pub fn launched(&self, at: &str) -> NewEvent {
        NewEvent {
            at: at.to_owned(),
            fleet: self.name.clone(),
            agent: None,
            injection_id: None,
            body: EventBody::FleetLaunched {
                replicas: self.replicas,
                backend: self.backend.clone(),
                brain: self.brain.clone(),
                version: self.version.clone(),
            },
        }
    }
}

/// One fleet's part of an apply (see [`Store::apply_fleets`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetApply {
    /// A new fleet, with its `fleet_launched` event.
    Create(FleetRow),
    /// New values of the fields that change; its name picks the fleet (its uid, backend,
    /// state and creation time stay). `changes` describes them, for the audit log and the
    /// `fleet_changed` event.
    Update {
        row: FleetRow,
        changes: Vec<String>,
    },
    Terminate(String),
}

/// An event to store; the store assigns its id.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub at: String,
    pub fleet: String,
    pub agent: Option<u32>,
    pub injection_id: Option<String>,
    pub body: EventBody,
}

impl NewEvent {
    fn stored(self, id: u64) -> Event {
        Event { id, at: self.at, fleet: self.fleet, agent: self.agent, injection_id: self.injection_id, body: self.body }
    }
}

/// An event reported by an agent, at a position in its journal.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentEvent {
    pub epoch: String,
    pub seq: u64,
    pub event: NewEvent,
}

/// Where the control plane is in one agent's journal: every event up to `seq` is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: String,
    pub seq: u64,
}

/// What happened to one agent event offered to [`Store::ingest`].
#[derive(Debug, Clone, PartialEq)]
pub enum Ingested {
    /// New: stored with this id.
    Stored(Box<Event>),
    /// Already stored (a redelivery or a replay).
    Duplicate,
    /// Events before it are missing; it was not stored. Ask the agent to replay after `after_seq`.
    Gap { after_seq: u64 },
    /// It names an injection that was not sent to its agent: not stored, though its journal
    /// position counts as read (a replay would only bring it again).
    Refused { injection_id: String },
}

/// A directive waiting for its agent's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub fleet: String,
    pub slot: u32,
    pub directive: Pending,
    pub attempts: u32,
    /// When the directive was accepted (RFC 3339).
    pub created_at: String,
}

/// What an outbox row waits to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    Inject { injection_id: String, prompt: String },
    Command { command_id: String, command: String },
}

/// A new injection: persisted with one outbox row and one `inject_ack` per target.
#[derive(Debug, Clone)]
pub struct NewInjection<'a> {
    pub id: &'a str,
    pub fleet: &'a str,
    pub prompt: &'a str,
    pub at: &'a str,
    pub caller: &'a str,
    pub targets: &'a [u32],
    /// The caller's correlation id, put in every `inject_ack`.
    pub request_id: Option<&'a str>,
}

/// A stored injection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectionRow {
    pub id: String,
    pub fleet: String,
    pub prompt: String,
    pub created_at: String,
}

/// Which events to read.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub fleet: Option<String>,
    pub agent: Option<u32>,
    pub injection_id: Option<String>,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// The control plane's database.
pub struct Store {
    conn: Mutex<Conn>,
    /// Stops the checkpointer thread when the store is dropped.
    _checkpointer: Option<Checkpointer>,
}

/// Checkpoints the WAL from a connection of its own, so that the fsyncs of a checkpoint never
/// happen inside a writer's commit (SQLite's automatic checkpoint, off here, would).
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("clawfleet-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(std::time::Duration::from_secs(1)) {
                    // PASSIVE: copies what it can without blocking writers.
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        eprintln!("clawfleet: WAL checkpoint failed: {e}");
                    }
                }
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            })
            .map_err(|e| StoreError::Corrupt { what: "checkpoint thread", reason: e.to_string() })?;
        Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Conn {
    conn: Connection,
    /// Whether `synchronous=FULL` is in force (else `NORMAL`).
    full: bool,
}

/// How hard a transaction's commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// fsync at commit (`synchronous=FULL`): operator actions, which nothing else could redo.
    Disk,
    /// Written to the OS at commit, synced with the next durable commit or checkpoint
    /// (`synchronous=NORMAL` under WAL): safe when the process dies, and used for events that
    /// agents can replay from their journals.
    Os,
}

/// Who made a control action; written in the same transaction as the action.
#[derive(Debug, Clone)]
pub struct Audit<'a> {
    pub at: &'a str,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub detail: String,
}

fn write_audit(tx: &Transaction<'_>, a: &Audit<'_>) -> Result<()> {
    tx.execute(
        "INSERT INTO audit (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![a.at, a.actor, a.action, a.target, a.detail],
    )?;
    Ok(())
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// An `events` row as stored: the event with its name and data still as text.
struct EventRow {
    id: u64,
    at: String,
    fleet: String,
    agent: Option<u32>,
    injection_id: Option<String>,
    name: String,
    data: String,
}

fn event_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: row.get(0)?,
        at: row.get(1)?,
        fleet: row.get(2)?,
        agent: row.get(3)?,
        injection_id: row.get(4)?,
        name: row.get(5)?,
        data: row.get(6)?,
    })
}

fn decode_event(row: EventRow) -> Result<Event> {
    let EventRow { id, at, fleet, agent, injection_id, name, data } = row;
    let data: serde_json::Value =
        serde_json::from_str(&data).map_err(|e| StoreError::Corrupt { what: "event", reason: format!("event {id}: {e}") })?;
    let body: EventBody = serde_json::from_value(serde_json::json!({"event": name, "data": data}))
        .map_err(|e| StoreError::Corrupt { what: "event", reason: format!("event {id}: {e}") })?;
    Ok(Event { id, at, fleet, agent, injection_id, body })
}

fn insert_event(tx: &Transaction<'_>, e: &NewEvent, journal: Option<(&str, u64)>) -> Result<u64> {
    let wire = serde_json::to_value(&e.body).expect("event bodies serialize");
    let data = wire.get("data").cloned().unwrap_or(serde_json::Value::Object(Default::default()));
    tx.prepare_cached(
        "INSERT INTO events (at, fleet, agent, injection_id, event, data, epoch, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        e.at,
        e.fleet,
        e.agent,
        e.injection_id,
        e.body.name(),
        data.to_string(),
        journal.map(|j| j.0),
        journal.map(|j| j.1)
    ])?;
    let id = tx.last_insert_rowid() as u64;
    // An agent's turn for an injection ended (an agent's error naming one ends its turn): its
    // events may go once they are old enough.
    if matches!(e.body, EventBody::TurnComplete {} | EventBody::InjectFailed { .. } | EventBody::AgentError { .. })
        && let (Some(injection), Some(slot)) = (&e.injection_id, e.agent)
    {
        tx.prepare_cached("UPDATE injection_targets SET ended = 1 WHERE injection_id = ?1 AND fleet = ?2 AND slot = ?3")?
            .execute(params![injection, e.fleet, slot])?;
    }
    Ok(id)
}

impl Store {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        schema::prepare(&conn, path)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpointer = Checkpointer::start(path)?;
        Ok(Store { conn: Mutex::new(Conn { conn, full: true }), _checkpointer: Some(checkpointer) })
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Result<Store> {
        let conn = Connection::open_in_memory()?;
        schema::prepare(&conn, Path::new(":memory:"))?;
        Ok(Store { conn: Mutex::new(Conn { conn, full: true }), _checkpointer: None })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn.conn)
    }

    fn tx_with<T>(&self, durability: Durability, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let full = durability == Durability::Disk;
        if conn.full != full {
            conn.conn.pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
            conn.full = full;
        }
        let tx = conn.conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// A transaction whose commit is on disk before it returns.
    fn tx<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        self.tx_with(Durability::Disk, f)
    }

    // ---- settings ----

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.with(|c| Ok(c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?))
    }

    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
            Ok(())
        })
    }

    // ---- fleets ----

    /// Stores a new fleet, its `fleet_launched` event and the audit line.
    pub fn insert_fleet(&self, fleet: &FleetRow, event: NewEvent, audit: &Audit<'_>) -> Result<Event> {
        self.tx(|tx| {
            write_audit(tx, audit)?;
            insert_fleet(tx, fleet, event)
        })
    }

    /// Makes every change of an apply, or none: new fleets, changed ones, terminated ones, an
    /// audit line each (`actor` made them at `at`). Returns the events, in order.
    pub fn apply_fleets(&self, changes: &[FleetApply], at: &str, actor: &str) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let mut events = Vec::new();
            for change in changes {
                let audit = |action, target, detail| Audit { at, actor, action, target, detail };
                match change {
                    FleetApply::Create(row) => {
                        write_audit(tx, &audit("apply: create", &row.name, format!("{} agents, {} backend", row.replicas, row.backend)))?;
                        events.push(insert_fleet(tx, row, row.launched(at))?);
                    }
                    FleetApply::Update { row, changes } => {
                        write_audit(tx, &audit("apply: update", &row.name, changes.join(", ")))?;
                        events.extend(update_spec(tx, row, changes, at)?);
                    }
                    FleetApply::Terminate(name) => {
                        write_audit(tx, &audit("apply: terminate", name, String::new()))?;
                        events.extend(mark_terminating(tx, name, at)?);
                    }
                }
            }
            Ok(events)
        })
    }

    pub fn fleets(&self) -> Result<Vec<FleetRow>> {
        self.with(|c| {
            let mut stmt = c.prepare(concat!("SELECT ", fleet_columns!(), " FROM fleets ORDER BY name"))?;
            let rows = stmt.query_map([], fleet_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    pub fn fleet(&self, name: &str) -> Result<Option<FleetRow>> {
        self.with(|c| {
            Ok(c.query_row(concat!("SELECT ", fleet_columns!(), " FROM fleets WHERE name = ?1"), [name], fleet_row).optional()?)
        })
    }

    /// Changes a fleet's replica count. Outbox rows of removed slots are dropped, and for each
    /// injection among them an `inject_failed` event is stored (returned with the scale event).
    pub fn scale_fleet(&self, name: &str, replicas: u32, at: &str, audit: &Audit<'_>) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let previous: Option<u32> = tx.query_row("SELECT replicas FROM fleets WHERE name = ?1", [name], |r| r.get(0)).optional()?;
            let previous = previous.ok_or_else(|| StoreError::NoFleet(name.to_owned()))?;
            write_audit(tx, &Audit { detail: format!("replicas {previous} -> {replicas}"), ..audit.clone() })?;
            tx.execute("UPDATE fleets SET replicas = ?2 WHERE name = ?1", params![name, replicas])?;
            tx.execute("DELETE FROM vacated WHERE fleet = ?1 AND slot >= ?2", params![name, replicas])?;
            let mut events = Vec::new();
            let scaled = NewEvent {
                at: at.to_owned(),
                fleet: name.to_owned(),
                agent: None,
                injection_id: None,
                body: EventBody::FleetScaled { replicas, previous },
            };
            let id = insert_event(tx, &scaled, None)?;
            events.push(scaled.stored(id));
            events.extend(fail_outbox(tx, name, replicas, at, "agent removed by a scale-down")?);
            Ok(events)
        })
    }

    /// Moves a fleet to a new image and version label, remembering the ones it replaces.
    /// `rollback: true` returns to the remembered ones instead (and remembers the current ones,
    /// so a second rollback undoes the first).
    pub fn update_fleet(&self, name: &str, change: FleetUpdate, at: &str, audit: &Audit<'_>) -> Result<Event> {
        self.tx(|tx| update_fleet(tx, name, change, at, audit))
    }

    // ---- arm ----

    /// Arms or disarms one agent; an `arm` event (even when it was already so: the operator
    /// asked) and an audit line.
    pub fn set_armed(&self, fleet: &str, slot: u32, armed: bool, at: &str, audit: &Audit<'_>) -> Result<Vec<Event>> {
        self.tx(|tx| {
            if armed {
                tx.execute("DELETE FROM disarmed WHERE fleet = ?1 AND slot = ?2", params![fleet, slot])?;
            } else {
                tx.execute("INSERT OR IGNORE INTO disarmed (fleet, slot) VALUES (?1, ?2)", params![fleet, slot])?;
            }
            write_audit(tx, audit)?;
            let event = NewEvent {
                at: at.to_owned(),
                fleet: fleet.to_owned(),
                agent: Some(slot),
                injection_id: None,
                body: EventBody::Arm { armed, by: audit.actor.to_owned() },
            };
            let id = insert_event(tx, &event, None)?;
            Ok(vec![event.stored(id)])
        })
    }

    /// The disarmed agents of a fleet.
    pub fn disarmed(&self, fleet: &str) -> Result<std::collections::BTreeSet<u32>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached("SELECT slot FROM disarmed WHERE fleet = ?1")?;
            let slots = stmt.query_map([fleet], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            Ok(slots)
        })
    }

    // ---- leaders ----

    /// Records a fleet's new leader (`None`: none) in `epoch`, which must exceed the stored
    /// one (a stale writer changes nothing and gets `false`); a `leader_changed` event.
    pub fn set_leader(&self, fleet: &str, slot: Option<u32>, epoch: u64, at: &str) -> Result<(bool, Vec<Event>)> {
        self.tx(|tx| {
            let row = tx
                .query_row(concat!("SELECT ", fleet_columns!(), " FROM fleets WHERE name = ?1"), [fleet], fleet_row)
                .optional()?
                .ok_or_else(|| StoreError::NoFleet(fleet.to_owned()))?;
            let moved = row.leader != slot && epoch >= row.leader_epoch && (slot.is_none() || epoch > row.leader_epoch);
            if !moved {
                return Ok((false, Vec::new()));
            }
            tx.execute("UPDATE fleets SET leader_slot = ?2, leader_epoch = ?3 WHERE name = ?1", params![fleet, slot, epoch as i64])?;
            let body = EventBody::LeaderChanged { slot, epoch, previous: row.leader };
            Ok((true, vec![fleet_event(tx, fleet, at, body)?]))
        })
    }

    /// The agent the operator wants to lead a fleet (`None`: the rule alone).
    pub fn set_leader_preferred(&self, fleet: &str, slot: Option<u32>, audit: &Audit<'_>) -> Result<()> {
        self.tx(|tx| {
            if tx.execute("UPDATE fleets SET leader_preferred = ?2 WHERE name = ?1", params![fleet, slot])? == 0 {
                return Err(StoreError::NoFleet(fleet.to_owned()));
            }
            write_audit(tx, audit)
        })
    }

    // ---- secrets ----

    /// Sets a secret's value (new, or replacing the old one). The audit line names it, never
    /// its value.
    pub fn set_secret(&self, name: &str, value: &str, at: &str, audit: &Audit<'_>) -> Result<()> {
        self.tx(|tx| {
            write_audit(tx, audit)?;
            tx.execute(
                "INSERT INTO secrets (name, value, updated_at, updated_by) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET value = ?2, updated_at = ?3, updated_by = ?4",
                params![name, value, at, audit.actor],
            )?;
            Ok(())
        })
    }

    /// Removes a secret no fleet uses.
    pub fn delete_secret(&self, name: &str, audit: &Audit<'_>) -> Result<()> {
        self.tx(|tx| {
            let users: Vec<String> = fleets_using(tx, name)?;
            if !users.is_empty() {
                return Err(StoreError::SecretInUse(name.to_owned(), users.join(", ")));
            }
            if tx.execute("DELETE FROM secrets WHERE name = ?1", [name])? == 0 {
                return Err(StoreError::NoSecret(name.to_owned()));
            }
            write_audit(tx, audit)
        })
    }

    /// Every secret, by name, without its value.
    pub fn secrets(&self) -> Result<Vec<SecretRow>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT name, length(CAST(value AS BLOB)), updated_at, updated_by FROM secrets ORDER BY name")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(SecretRow { name: r.get(0)?, bytes: r.get::<_, i64>(1)? as usize, updated_at: r.get(2)?, updated_by: r.get(3)? })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// Every secret's value, by name: what the control plane hands to agents.
    pub fn secret_values(&self) -> Result<std::collections::BTreeMap<String, String>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT name, value FROM secrets")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    // ---- deploys ----

    /// Starts a deploy: its record, and each of its fleets moved to its new version, in one
    /// transaction; refused while another deploy runs (one at a time per control plane).
    pub fn start_deploy(&self, deploy: &Deploy, audit: &Audit<'_>) -> Result<(Deploy, Vec<Event>)> {
        self.tx(|tx| {
            if let Some(running) = active_deploy(tx)? {
                return Err(StoreError::DeployRunning(Box::new(running)));
            }
            let mut deploy = deploy.clone();
            for f in &mut deploy.fleets {
                let row = tx
                    .query_row(concat!("SELECT ", fleet_columns!(), " FROM fleets WHERE name = ?1"), [&f.fleet], fleet_row)
                    .optional()?
                    .ok_or_else(|| StoreError::NoFleet(f.fleet.clone()))?;
                f.rollback_to = row.previous.map(|(image, version)| (version, image));
            }
            let deploy = &deploy;
            let fleets = serde_json::to_string(&deploy.fleets).expect("deploys serialize");
            tx.execute(
                "INSERT INTO deploys (target, actor, state, reason, deadline_s, created_at, finished_at, fleets)
                 VALUES (?1, ?2, ?3, NULL, ?4, ?5, NULL, ?6)",
                params![deploy.target, deploy.actor, DeployState::Running.as_str(), deploy.deadline_s, deploy.created_at, fleets],
            )?;
            let id = tx.last_insert_rowid() as u64;
            for f in &deploy.fleets {
                tx.execute("INSERT OR IGNORE INTO deploy_fleets (fleet, deploy) VALUES (?1, ?2)", params![f.fleet, id])?;
            }
            write_audit(tx, &Audit { detail: format!("deploy #{id} {}", audit.detail), ..audit.clone() })?;
            let mut events = Vec::new();
            for f in &deploy.fleets {
                let body = EventBody::DeployStarted {
                    deploy: id,
                    target: deploy.target.clone(),
                    version: f.to_version.clone(),
                    image: f.to_image.clone(),
                };
                events.push(fleet_event(tx, &f.fleet, &deploy.created_at, body)?);
                match (&f.slots, f.canaries) {
                    // Only some agents move: the fleet keeps its version.
                    (Some(_), _) | (None, Some(_)) => {
                        let canary = Canary {
                            slots: f.slots.clone().unwrap_or_default(),
                            count: f.canaries,
                            version: f.to_version.clone(),
                            image: f.to_image.clone(),
                        };
                        set_canary(tx, &f.fleet, Some(&canary))?;
                    }
                    (None, None) => {
                        set_canary(tx, &f.fleet, None)?;
                        let to = FleetUpdate::To { image: f.to_image.clone(), version: f.to_version.clone() };
                        let audit = Audit { detail: format!("deploy #{id}"), ..audit.clone() };
                        events.push(update_fleet(tx, &f.fleet, to, &deploy.created_at, &audit)?);
                    }
                }
            }
            Ok((Deploy { id, state: DeployState::Running, ..deploy.clone() }, events))
        })
    }

    /// A running deploy whose canaries passed waits for `promote`.
    pub fn pause_deploy(&self, id: u64, at: &str) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let deploy = load_deploy(tx, id)?;
            tx.execute("UPDATE deploys SET state = 'paused' WHERE id = ?1 AND state = 'running'", [id])?;
            deploy
                .fleets
                .iter()
                .map(|f| {
                    let reason = Some("its canaries passed: waiting for promote (or abort)".to_owned());
                    fleet_event(tx, &f.fleet, at, EventBody::DeployFinished { deploy: id, outcome: DeployState::Paused, reason })
                })
                .collect()
        })
    }

    /// A paused deploy goes on: its fleets move to the new version as a whole (their canaries
    /// join them), and it runs again, gated as before.
    pub fn promote_deploy(&self, id: u64, at: &str, audit: &Audit<'_>) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let mut deploy = load_deploy(tx, id)?;
            if deploy.state != DeployState::Paused {
                return Err(StoreError::NotPaused(id, deploy.state));
            }
            write_audit(tx, &Audit { detail: format!("deploy #{id} promoted"), ..audit.clone() })?;
            let mut events = Vec::new();
            for f in &mut deploy.fleets {
                f.slots = None;
                f.canaries = None;
                f.ready = 0;
                set_canary(tx, &f.fleet, None)?;
                let to = FleetUpdate::To { image: f.to_image.clone(), version: f.to_version.clone() };
                events.push(update_fleet(tx, &f.fleet, to, at, &Audit { detail: format!("deploy #{id} promoted"), ..audit.clone() })?);
            }
            tx.execute(
                "UPDATE deploys SET state = 'running', fleets = ?2 WHERE id = ?1",
                params![id, serde_json::to_string(&deploy.fleets).expect("serializes")],
            )?;
            Ok(events)
        })
    }

    /// The deploy that runs, if one does.
    pub fn active_deploy(&self) -> Result<Option<Deploy>> {
        self.with(|c| active_deploy(c))
    }

    pub fn deploy(&self, id: u64) -> Result<Option<Deploy>> {
        self.with(|c| Ok(c.query_row(concat!("SELECT ", deploy_columns!(), " FROM deploys WHERE id = ?1"), [id], deploy_row).optional()?))
    }

    /// The newest `limit` deploys, newest first, of `fleet` (a deploy of `all` included) or of all.
    pub fn deploys(&self, fleet: Option<&str>, limit: usize) -> Result<Vec<Deploy>> {
        self.with(|c| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = match fleet {
                None => {
                    let mut stmt = c.prepare(concat!("SELECT ", deploy_columns!(), " FROM deploys ORDER BY id DESC LIMIT ?1"))?;
                    stmt.query_map([limit], deploy_row)?.collect::<rusqlite::Result<Vec<_>>>()?
                }
                Some(f) => {
                    let mut stmt = c.prepare(concat!(
                        "SELECT ",
                        deploy_columns!(),
                        " FROM deploys WHERE id IN (SELECT deploy FROM deploy_fleets WHERE fleet = ?1) ORDER BY id DESC LIMIT ?2"
                    ))?;
                    stmt.query_map(params![f, limit], deploy_row)?.collect::<rusqlite::Result<Vec<_>>>()?
                }
            };
            Ok(rows)
        })
    }

    /// Notes how many agents of each fleet passed the gate; a `deploy_progress` event for each
    /// fleet whose count changed.
    pub fn deploy_progress(&self, id: u64, ready: &[(String, u32)], at: &str) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let mut deploy = tx
                .query_row(concat!("SELECT ", deploy_columns!(), " FROM deploys WHERE id = ?1"), [id], deploy_row)
                .optional()?
                .ok_or(StoreError::NoDeploy(id))?;
            let mut events = Vec::new();
            for f in &mut deploy.fleets {
                let Some((_, n)) = ready.iter().find(|(name, _)| *name == f.fleet) else { continue };
                if *n != f.ready {
                    f.ready = *n;
                    let body = EventBody::DeployProgress { deploy: id, ready: f.ready, replicas: f.replicas };
                    events.push(fleet_event(tx, &f.fleet, at, body)?);
                }
            }
            if !events.is_empty() {
                tx.execute(
                    "UPDATE deploys SET fleets = ?2 WHERE id = ?1",
                    params![id, serde_json::to_string(&deploy.fleets).expect("serializes")],
                )?;
            }
            Ok(events)
        })
    }

    /// Ends a running deploy as `outcome`; `Reverted` and `Aborted` return each fleet that
    /// still exists to the version and image it had before, in the same transaction.
    pub fn finish_deploy(&self, id: u64, outcome: DeployState, reason: Option<&str>, at: &str, audit: &Audit<'_>) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let deploy = tx
                .query_row(concat!("SELECT ", deploy_columns!(), " FROM deploys WHERE id = ?1"), [id], deploy_row)
                .optional()?
                .ok_or(StoreError::NoDeploy(id))?;
            if !deploy.state.is_active() {
                return Err(StoreError::DeployDone(id, deploy.state));
            }
            tx.execute(
                "UPDATE deploys SET state = ?2, reason = ?3, finished_at = ?4 WHERE id = ?1",
                params![id, outcome.as_str(), reason, at],
            )?;
            let detail = format!("deploy #{id} {outcome}{}", reason.map(|r| format!(": {r}")).unwrap_or_default());
            write_audit(tx, &Audit { detail: detail.chars().take(500).collect(), ..audit.clone() })?;
            let mut events = Vec::new();
            for f in &deploy.fleets {
                let exists: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM fleets WHERE name = ?1)", [&f.fleet], |r| r.get(0))?;
                if !exists {
                    continue;
                }
                if matches!(outcome, DeployState::Reverted | DeployState::Aborted) {
                    set_canary(tx, &f.fleet, None)?;
                    if !f.partial() {
                        let back = FleetUpdate::To { image: f.from_image.clone(), version: f.from_version.clone() };
                        let audit = Audit { detail: format!("deploy #{id} reverted"), ..audit.clone() };
                        events.push(update_fleet(tx, &f.fleet, back, at, &audit)?);
                        // As if the deploy had not been: `rollback` goes where it went before.
                        let (version, image) = f.rollback_to.clone().map_or((None, None), |(v, i)| (Some(v), i));
                        tx.execute(
                            "UPDATE fleets SET previous_image = ?2, previous_version = ?3 WHERE name = ?1",
                            params![f.fleet, image, version],
                        )?;
                    }
                }
                let body = EventBody::DeployFinished { deploy: id, outcome, reason: reason.map(str::to_owned) };
                events.push(fleet_event(tx, &f.fleet, at, body)?);
            }
            Ok(events)
        })
    }

    /// Marks a fleet as terminating; pending directives fail with `inject_failed`.
    pub fn mark_terminating(&self, name: &str, at: &str, audit: &Audit<'_>) -> Result<Vec<Event>> {
        self.tx(|tx| {
            write_audit(tx, audit)?;
            mark_terminating(tx, name, at)
        })
    }

    /// Removes a terminated fleet (its events stay) and stores `fleet_terminated`.
    pub fn delete_fleet(&self, name: &str, at: &str) -> Result<Event> {
        self.tx(|tx| {
            tx.execute("DELETE FROM fleets WHERE name = ?1", [name])?;
            tx.execute("DELETE FROM outbox WHERE fleet = ?1", [name])?;
            tx.execute("DELETE FROM cursors WHERE fleet = ?1", [name])?;
            for table in ["disarmed", "scenarios", "rps_rounds", "rps_plays", "rps_scores", "three_words", "councils", "vacated"] {
                tx.execute(&format!("DELETE FROM {table} WHERE fleet = ?1"), [name])?;
            }
            let ev = NewEvent {
                at: at.to_owned(),
                fleet: name.to_owned(),
                agent: None,
                injection_id: None,
                body: EventBody::FleetTerminated {},
            };
            let id = insert_event(tx, &ev, None)?;
            Ok(ev.stored(id))
        })
    }

    // ---- API tokens ----

    /// Every token (hashes only).
    pub fn tokens(&self) -> Result<Vec<TokenRow>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT name, role, fleet, hash, created_at, expires_at, created_by FROM tokens ORDER BY name")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(TokenRow {
                        name: r.get(0)?,
                        role: r.get(1)?,
                        fleet: r.get(2)?,
                        hash: r.get(3)?,
                        created_at: r.get(4)?,
                        expires_at: r.get(5)?,
                        created_by: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// Stores a new token, with its audit line.
    pub fn insert_token(&self, t: &TokenRow, audit: &Audit<'_>) -> Result<()> {
        self.tx(|tx| {
            let exists: bool = tx.query_row("SELECT EXISTS(SELECT 1 FROM tokens WHERE name = ?1)", [&t.name], |r| r.get(0))?;
            if exists {
                return Err(StoreError::TokenExists(t.name.clone()));
            }
            tx.execute(
                "INSERT INTO tokens (name, role, fleet, hash, created_at, expires_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![t.name, t.role, t.fleet, t.hash, t.created_at, t.expires_at, t.created_by],
            )?;
            write_audit(tx, audit)
        })
    }

    /// Makes `t` the token of its name, whatever was there (the operator's token file).
    pub fn put_token(&self, t: &TokenRow) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO tokens (name, role, fleet, hash, created_at, expires_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(name) DO UPDATE SET role = excluded.role, fleet = excluded.fleet, hash = excluded.hash,
                   created_at = excluded.created_at, expires_at = excluded.expires_at, created_by = excluded.created_by",
                params![t.name, t.role, t.fleet, t.hash, t.created_at, t.expires_at, t.created_by],
            )?;
            Ok(())
        })
    }

    /// Revokes a token: `false` if there was none of that name.
    pub fn delete_token(&self, name: &str, audit: &Audit<'_>) -> Result<bool> {
        self.tx(|tx| {
            let n = tx.execute("DELETE FROM tokens WHERE name = ?1", [name])?;
            if n > 0 {
                write_audit(tx, audit)?;
            }
            Ok(n > 0)
        })
    }

    // ---- injections and commands ----

    /// Persists an injection, its outbox rows and one `inject_ack` per target, atomically.
    /// Returns the outbox row ids and the events.
    pub fn create_injection(&self, inj: &NewInjection<'_>, audit: &Audit<'_>) -> Result<(Vec<i64>, Vec<Event>)> {
        self.tx(|tx| {
            write_audit(tx, audit)?;
            insert_injection(tx, inj)
        })
    }

    /// Persists a command with its outbox rows and one `command_sent` per target.
    /// Returns the outbox row ids and the events.
    pub fn create_command(
        &self,
        id: &str,
        fleet: &str,
        command: &str,
        at: &str,
        targets: &[u32],
        audit: &Audit<'_>,
    ) -> Result<(Vec<i64>, Vec<Event>)> {
        self.tx(|tx| {
            write_audit(tx, audit)?;
            let mut events = Vec::with_capacity(targets.len());
            let mut rows = Vec::with_capacity(targets.len());
            for slot in targets {
                tx.execute(
                    "INSERT INTO outbox (fleet, slot, kind, ref_id, label, created_at) VALUES (?1, ?2, 'command', ?3, ?4, ?5)",
                    params![fleet, slot, id, command, at],
                )?;
                rows.push(tx.last_insert_rowid());
                let ev = NewEvent {
                    at: at.to_owned(),
                    fleet: fleet.to_owned(),
                    agent: Some(*slot),
                    injection_id: None,
                    body: EventBody::CommandSent { command_id: id.to_owned(), command: command.to_owned() },
                };
                let eid = insert_event(tx, &ev, None)?;
                events.push(ev.stored(eid));
            }
            Ok((rows, events))
        })
    }

    pub fn injection(&self, id: &str) -> Result<Option<InjectionRow>> {
        self.with(|c| {
            Ok(c.query_row("SELECT id, fleet, prompt, created_at FROM injections WHERE id = ?1", [id], |r| {
                Ok(InjectionRow { id: r.get(0)?, fleet: r.get(1)?, prompt: r.get(2)?, created_at: r.get(3)? })
            })
            .optional()?)
        })
    }

    // ---- outbox ----

    /// Every directive still waiting for its agent, oldest first.
    /// How many directives wait for their agents.
    pub fn outbox_depth(&self) -> Result<u64> {
        self.with(|c| Ok(c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?))
    }

    pub fn outbox(&self) -> Result<Vec<OutboxRow>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT o.id, o.fleet, o.slot, o.kind, o.ref_id, o.label, i.prompt, o.attempts, o.created_at
                 FROM outbox o LEFT JOIN injections i ON o.kind = 'inject' AND i.id = o.ref_id ORDER BY o.id",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    let kind: String = r.get(3)?;
                    let ref_id: String = r.get(4)?;
                    let directive = if kind == "inject" {
                        Pending::Inject { injection_id: ref_id, prompt: r.get::<_, Option<String>>(6)?.unwrap_or_default() }
                    } else {
                        Pending::Command { command_id: ref_id, command: r.get::<_, Option<String>>(5)?.unwrap_or_default() }
                    };
                    Ok(OutboxRow {
                        id: r.get(0)?,
                        fleet: r.get(1)?,
                        slot: r.get(2)?,
                        directive,
                        attempts: r.get(7)?,
                        created_at: r.get(8)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// Gives up on outbox rows (an injection its agent did not take in time): each injection
    /// gets an `inject_failed` with `why`, each command a failed `command_reply`, atomically
    /// with the rows' removal. Rows already gone (acknowledged meanwhile) are skipped.
    pub fn expire_outbox(&self, ids: &[i64], at: &str, why: &str) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let mut events = Vec::new();
            for id in ids {
                let row: Option<(String, u32, String, String, Option<String>)> = tx
                    .query_row("SELECT fleet, slot, kind, ref_id, label FROM outbox WHERE id = ?1", [id], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .optional()?;
                let Some((fleet, slot, kind, ref_id, label)) = row else { continue };
                tx.execute("DELETE FROM outbox WHERE id = ?1", [id])?;
                events.extend(fail_rows(tx, &fleet, vec![(slot, kind, ref_id, label)], at, why)?);
            }
            Ok(events)
        })
    }

    /// Whether an agent's turn of an injection has ended (`turn_complete`, `agent_error` or
    /// `inject_failed` stored), so an observer's own verdict on it would only repeat it.
    pub fn turn_ended(&self, fleet: &str, agent: u32, injection_id: &str) -> Result<bool> {
        self.with(|c| {
            Ok(c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM events WHERE injection_id = ?3 AND fleet = ?1 AND agent = ?2
                 AND event IN ('turn_complete', 'agent_error', 'inject_failed'))",
            )?
            .query_row(params![fleet, agent, injection_id], |r| r.get(0))?)
        })
    }

    pub fn outbox_attempted(&self, ids: &[i64]) -> Result<()> {
        self.tx_with(Durability::Os, |tx| {
            let mut stmt = tx.prepare("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?1")?;
            for id in ids {
                stmt.execute([id])?;
            }
            Ok(())
        })
    }

    // ---- events ----

    /// Stores events the control plane itself observed (agent state changes).
    pub fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Event>> {
        self.tx_with(Durability::Os, |tx| {
            events
                .into_iter()
                .map(|e| {
                    let id = insert_event(tx, &e, None)?;
                    Ok(e.stored(id))
                })
                .collect()
        })
    }

    /// Stores a batch of agent events in one transaction, in journal order per agent:
    /// duplicates are skipped, a gap stops that agent's events (see [`Ingested::Gap`]), and
    /// an event that shows the agent has a directive ends that directive's outbox wait.
    pub fn ingest(&self, batch: Vec<AgentEvent>) -> Result<Vec<Ingested>> {
        self.tx_with(Durability::Os, |tx| {
            // Each agent's cursor is read once and written once per batch.
            let mut cursors: HashMap<(String, u32), Option<(String, u64)>> = HashMap::new();
            let mut out = Vec::with_capacity(batch.len());
            {
                let mut read = tx.prepare_cached("SELECT epoch, seq FROM cursors WHERE fleet = ?1 AND slot = ?2")?;
                let mut targeted =
                    tx.prepare_cached("SELECT 1 FROM injection_targets WHERE injection_id = ?1 AND fleet = ?2 AND slot = ?3")?;
                for AgentEvent { epoch, seq, event } in batch {
                    let slot = event.agent.unwrap_or(0);
                    let key = (event.fleet.clone(), slot);
                    if !cursors.contains_key(&key) {
                        let c = read.query_row(params![key.0, slot], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
                        cursors.insert(key.clone(), c);
                    }
                    let cursor = cursors.get_mut(&key).expect("inserted above");
                    let expected = match cursor {
                        Some((e, s)) if *e == epoch => *s + 1,
                        // A new workspace (or the first event ever) starts at 1.
                        _ => 1,
                    };
                    if seq < expected {
                        out.push(Ingested::Duplicate);
                        continue;
                    }
                    if seq > expected {
                        out.push(Ingested::Gap { after_seq: expected - 1 });
                        continue;
                    }
                    if let Some(injection) = &event.injection_id {
                        let targeted = targeted.query_row(params![injection, event.fleet, slot], |_| Ok(())).optional()?.is_some();
                        if !targeted {
                            *cursor = Some((epoch, seq));
                            out.push(Ingested::Refused { injection_id: injection.clone() });
                            continue;
                        }
                    }
                    let mut event = event;
                    let refused = match scenario::take(tx, &mut event, slot)? {
                        None => match council::take(tx, &event.fleet, slot, &mut event.body, &event.at)? {
                            None => approval::take(tx, &mut event, slot)?,
                            refused => refused,
                        },
                        refused => refused,
                    };
                    if let Some(reason) = refused {
                        // Refused, in the refusal's place in the journal: a replay is a duplicate.
                        let play = event.body.name().to_owned();
                        event.body = EventBody::PlayRefused { play, reason };
                    }
                    acknowledge(tx, &event, slot)?;
                    let id = insert_event(tx, &event, Some((&epoch, seq)))?;
                    *cursor = Some((epoch, seq));
                    out.push(Ingested::Stored(Box::new(event.stored(id))));
                }
            }
            let mut write = tx.prepare_cached(
                "INSERT INTO cursors (fleet, slot, epoch, seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(fleet, slot) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq",
            )?;
            for ((fleet, slot), cursor) in cursors {
                if let Some((epoch, seq)) = cursor {
                    write.execute(params![fleet, slot, epoch, seq])?;
                }
            }
            Ok(out)
        })
    }

    /// Moves an agent's cursor past events it can no longer replay, recording their loss.
    pub fn skip_to(&self, fleet: &str, slot: u32, epoch: &str, seq: u64, loss: NewEvent) -> Result<Event> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO cursors (fleet, slot, epoch, seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(fleet, slot) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq",
                params![fleet, slot, epoch, seq],
            )?;
            let id = insert_event(tx, &loss, None)?;
            Ok(loss.stored(id))
        })
    }

    pub fn cursor(&self, fleet: &str, slot: u32) -> Result<Option<Cursor>> {
        self.with(|c| {
            Ok(c.query_row("SELECT epoch, seq FROM cursors WHERE fleet = ?1 AND slot = ?2", params![fleet, slot], |r| {
                Ok(Cursor { epoch: r.get(0)?, seq: r.get(1)? })
            })
            .optional()?)
        })
    }

    /// Up to `limit` events with ids above `after`, oldest first.
    pub fn events_after(&self, filter: &EventFilter, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, at, fleet, agent, injection_id, event, data FROM events
                 WHERE id > ?1 AND (?2 IS NULL OR fleet = ?2) AND (?3 IS NULL OR agent = ?3) AND (?4 IS NULL OR injection_id = ?4)
                 ORDER BY id LIMIT ?5",
            )?;
            let rows = stmt
                .query_map(params![after, filter.fleet, filter.agent, filter.injection_id, limit as i64], event_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter().map(decode_event).collect()
        })
    }

    /// The newest `limit` chat messages of a fleet, oldest first.
    pub fn chat(&self, fleet: &str, limit: usize) -> Result<Vec<Event>> {
        self.newest(fleet, "chat", limit)
    }

    /// The newest `limit` ARM changes of a fleet, oldest first.
    pub fn arm_changes(&self, fleet: &str, limit: usize) -> Result<Vec<Event>> {
        self.newest(fleet, "arm", limit)
    }

    /// The newest `limit` events named `event` (one with an index of its own) of a fleet.
    fn newest(&self, fleet: &str, event: &'static str, limit: usize) -> Result<Vec<Event>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, at, fleet, agent, injection_id, event, data FROM events
                 WHERE fleet = ?1 AND event = ?2 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![fleet, event, limit as i64], event_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            let mut events = rows.into_iter().map(decode_event).collect::<Result<Vec<_>>>()?;
            events.reverse();
            Ok(events)
        })
    }

    /// Every event of one injection, oldest first.
    pub fn injection_events(&self, fleet: &str, injection_id: &str) -> Result<Vec<Event>> {
        let filter = EventFilter { fleet: Some(fleet.to_owned()), injection_id: Some(injection_id.to_owned()), ..EventFilter::default() };
        self.events_after(&filter, 0, usize::MAX >> 1)
    }

    /// The id just before the last `n` events matching `filter` (0 if there are fewer).
    pub fn tail_start(&self, filter: &EventFilter, n: usize) -> Result<u64> {
        self.with(|c| {
            let id: Option<u64> = c
                .query_row(
                    "SELECT id FROM events WHERE (?1 IS NULL OR fleet = ?1) AND (?2 IS NULL OR agent = ?2) AND (?3 IS NULL OR injection_id = ?3)
                     ORDER BY id DESC LIMIT 1 OFFSET ?4",
                    params![filter.fleet, filter.agent, filter.injection_id, n as i64],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(id.unwrap_or(0))
        })
    }

    pub fn last_event_id(&self) -> Result<u64> {
        self.with(|c| Ok(c.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?))
    }

    // ---- audit ----

    /// Records an action that changes nothing else in the store.
    pub fn audit(&self, audit: &Audit<'_>) -> Result<()> {
        self.tx(|tx| write_audit(tx, audit))
    }

    /// The newest `limit` audit lines, oldest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditRow>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT id, at, actor, action, target, detail FROM (SELECT * FROM audit ORDER BY id DESC LIMIT ?1) ORDER BY id")?;
            let rows = stmt
                .query_map([limit as i64], |r| {
                    Ok(AuditRow { id: r.get(0)?, at: r.get(1)?, actor: r.get(2)?, action: r.get(3)?, target: r.get(4)?, detail: r.get(5)? })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }
}

/// Moves a fleet to a new image and version, remembering the ones it replaces (or back to those).
fn update_fleet(tx: &Transaction<'_>, name: &str, change: FleetUpdate, at: &str, audit: &Audit<'_>) -> Result<Event> {
    let row = tx
        .query_row(concat!("SELECT ", fleet_columns!(), " FROM fleets WHERE name = ?1"), [name], fleet_row)
        .optional()?
        .ok_or_else(|| StoreError::NoFleet(name.to_owned()))?;
    let (image, version) = match change {
        FleetUpdate::To { image, version } => (image.or(row.image.clone()), version),
        FleetUpdate::Rollback => row.previous.clone().ok_or_else(|| StoreError::NothingToRollBack(name.to_owned()))?,
    };
    let show = |i: &Option<String>| i.clone().unwrap_or_else(|| "default".into());
    write_audit(
        tx,
        &Audit { detail: format!("image {} -> {}, version {} -> {version}", show(&row.image), show(&image), row.version), ..audit.clone() },
    )?;
    tx.execute(
        "UPDATE fleets SET image = ?2, version = ?3, previous_image = ?4, previous_version = ?5 WHERE name = ?1",
        params![name, image, version, row.image, row.version],
    )?;
    let body = EventBody::FleetUpdated {
        image: image.clone(),
        version: version.clone(),
        previous_image: row.image,
        previous_version: row.version,
    };
    fleet_event(tx, name, at, body)
}

/// Writes an injection, its outbox rows, its targets and one `inject_ack` a target, in the
/// caller's transaction. Returns the outbox row ids and the events.
pub(crate) fn insert_injection(tx: &Transaction<'_>, inj: &NewInjection<'_>) -> Result<(Vec<i64>, Vec<Event>)> {
    tx.execute(
        "INSERT INTO injections (id, fleet, prompt, created_at, caller) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![inj.id, inj.fleet, inj.prompt, inj.at, inj.caller],
    )?;
    let mut events = Vec::with_capacity(inj.targets.len());
    let mut rows = Vec::with_capacity(inj.targets.len());
    for slot in inj.targets {
        let defected: Option<String> = tx
            .prepare_cached("SELECT peer FROM vacated WHERE fleet = ?1 AND slot = ?2 AND defected = 1")?
            .query_row(params![inj.fleet, slot], |r| r.get(0))
            .optional()?;
        if let Some(rack) = defected {
            return Err(StoreError::Defected { agent: format!("{}/{slot}", inj.fleet), rack });
        }
        tx.execute(
            "INSERT INTO outbox (fleet, slot, kind, ref_id, created_at) VALUES (?1, ?2, 'inject', ?3, ?4)",
            params![inj.fleet, slot, inj.id, inj.at],
        )?;
        rows.push(tx.last_insert_rowid());
        tx.prepare_cached("INSERT INTO injection_targets (injection_id, fleet, slot) VALUES (?1, ?2, ?3)")?
            .execute(params![inj.id, inj.fleet, slot])?;
        let ev = NewEvent {
            at: inj.at.to_owned(),
            fleet: inj.fleet.to_owned(),
            agent: Some(*slot),
            injection_id: Some(inj.id.to_owned()),
            body: EventBody::InjectAck { prompt: inj.prompt.to_owned(), request_id: inj.request_id.map(str::to_owned) },
        };
        let id = insert_event(tx, &ev, None)?;
        events.push(ev.stored(id));
    }
    Ok((rows, events))
}

/// Stores an event of a fleet (not of one of its agents).
fn fleet_event(tx: &Transaction<'_>, fleet: &str, at: &str, body: EventBody) -> Result<Event> {
    let event = NewEvent { at: at.to_owned(), fleet: fleet.to_owned(), agent: None, injection_id: None, body };
    let id = insert_event(tx, &event, None)?;
    Ok(event.stored(id))
}

macro_rules! deploy_columns {
    () => {
        "id, target, actor, state, reason, deadline_s, created_at, finished_at, fleets"
    };
}
use deploy_columns;

fn deploy_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Deploy> {
    let corrupt = |i: usize, e: String| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into());
    Ok(Deploy {
        id: r.get::<_, i64>(0)? as u64,
        target: r.get(1)?,
        actor: r.get(2)?,
        state: r.get::<_, String>(3)?.parse().map_err(|e| corrupt(3, e))?,
        reason: r.get(4)?,
        deadline_s: r.get::<_, i64>(5)? as u64,
        created_at: r.get(6)?,
        finished_at: r.get(7)?,
        fleets: serde_json::from_str(&r.get::<_, String>(8)?).map_err(|e| corrupt(8, e.to_string()))?,
    })
}

fn active_deploy(c: &Connection) -> Result<Option<Deploy>> {
    Ok(c.query_row(
        concat!("SELECT ", deploy_columns!(), " FROM deploys WHERE state IN ('running', 'paused') ORDER BY id LIMIT 1"),
        [],
        deploy_row,
    )
    .optional()?)
}

fn load_deploy(c: &Connection, id: u64) -> Result<Deploy> {
    c.query_row(concat!("SELECT ", deploy_columns!(), " FROM deploys WHERE id = ?1"), [id], deploy_row)
        .optional()?
        .ok_or(StoreError::NoDeploy(id))
}

fn set_canary(tx: &Transaction<'_>, fleet: &str, canary: Option<&Canary>) -> Result<()> {
    let json = canary.map(|c| serde_json::to_string(c).expect("canaries serialize"));
    tx.execute("UPDATE fleets SET canary = ?2 WHERE name = ?1", params![fleet, json])?;
    Ok(())
}

/// The fleets whose brains get the secret `name`.
fn fleets_using(tx: &Transaction<'_>, name: &str) -> Result<Vec<String>> {
    let mut stmt = tx.prepare("SELECT name, brain_env FROM fleets WHERE brain_env IS NOT NULL ORDER BY name")?;
    let rows =
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows
        .into_iter()
        .filter(|(_, env)| BrainEnv::from_column(env.as_deref()).secrets.iter().any(|s| s == name))
        .map(|(f, _)| f)
        .collect())
}

/// Refuses a fleet whose brains would get a secret that is not set.
fn check_secrets(tx: &Transaction<'_>, fleet: &FleetRow) -> Result<()> {
    for name in BrainEnv::from_column(fleet.brain_env.as_deref()).secrets {
        let known: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM secrets WHERE name = ?1)", [&name], |r| r.get(0))?;
        if !known {
            return Err(StoreError::NoSecret(name));
        }
    }
    Ok(())
}

fn insert_fleet(tx: &Transaction<'_>, fleet: &FleetRow, event: NewEvent) -> Result<Event> {
    let exists: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM fleets WHERE name = ?1)", [&fleet.name], |r| r.get(0))?;
    if exists {
        return Err(StoreError::FleetExists(fleet.name.clone()));
    }
    check_secrets(tx, fleet)?;
    tx.execute(
        "INSERT INTO fleets (name, uid, backend, brain, prompt, version, replicas, state, created_at, image, cluster, deploy, brain_env)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            fleet.name,
            fleet.uid,
            fleet.backend,
            fleet.brain,
            fleet.prompt,
            fleet.version,
            fleet.replicas,
            fleet.state.as_str(),
            fleet.created_at,
            fleet.image,
            fleet.cluster,
            fleet.deploy,
            fleet.brain_env
        ],
    )?;
    let id = insert_event(tx, &event, None)?;
    Ok(event.stored(id))
}

/// A fleet's desired state set to `new`'s: `fleet_scaled` (with the outbox of removed slots
/// failed), `fleet_updated` (remembering the image and version it replaces, for rollback) and
/// `fleet_changed` (the rest) as they apply.
fn update_spec(tx: &Transaction<'_>, new: &FleetRow, changes: &[String], at: &str) -> Result<Vec<Event>> {
    check_secrets(tx, new)?;
    let old = tx
        .query_row(concat!("SELECT ", fleet_columns!(), " FROM fleets WHERE name = ?1"), [&new.name], fleet_row)
        .optional()?
        .ok_or_else(|| StoreError::NoFleet(new.name.clone()))?;
    let moved = old.image != new.image || old.version != new.version;
    let (previous_image, previous_version) = match (&old.previous, moved) {
        (_, true) => (old.image.clone(), Some(old.version.clone())),
        (Some((image, version)), false) => (image.clone(), Some(version.clone())),
        (None, false) => (None, None),
    };
    tx.execute(
        "UPDATE fleets SET brain = ?2, prompt = ?3, version = ?4, replicas = ?5, image = ?6, cluster = ?7, deploy = ?8,
         previous_image = ?9, previous_version = ?10, brain_env = ?11 WHERE name = ?1",
        params![
            new.name,
            new.brain,
            new.prompt,
            new.version,
            new.replicas,
            new.image,
            new.cluster,
            new.deploy,
            previous_image,
            previous_version,
            new.brain_env
        ],
    )?;
    let mut events = Vec::new();
    let mut push = |tx: &Transaction<'_>, body| -> Result<()> {
        let event = NewEvent { at: at.to_owned(), fleet: new.name.clone(), agent: None, injection_id: None, body };
        let id = insert_event(tx, &event, None)?;
        events.push(event.stored(id));
        Ok(())
    };
    if old.replicas != new.replicas {
        push(tx, EventBody::FleetScaled { replicas: new.replicas, previous: old.replicas })?;
    }
    if moved {
        push(
            tx,
            EventBody::FleetUpdated {
                image: new.image.clone(),
                version: new.version.clone(),
                previous_image: old.image.clone(),
                previous_version: old.version.clone(),
            },
        )?;
    }
    let rest: Vec<String> =
        changes.iter().filter(|c| !["replicas:", "version:", "image:"].iter().any(|f| c.starts_with(f))).cloned().collect();
    if !rest.is_empty() {
        push(tx, EventBody::FleetChanged { changes: rest })?;
    }
    if old.replicas > new.replicas {
        events.extend(fail_outbox(tx, &new.name, new.replicas, at, "agent removed by a scale-down")?);
    }
    Ok(events)
}

fn mark_terminating(tx: &Transaction<'_>, name: &str, at: &str) -> Result<Vec<Event>> {
    let n = tx.execute("UPDATE fleets SET state = 'terminating' WHERE name = ?1", [name])?;
    if n == 0 {
        return Err(StoreError::NoFleet(name.to_owned()));
    }
    let ev = NewEvent { at: at.to_owned(), fleet: name.to_owned(), agent: None, injection_id: None, body: EventBody::FleetTerminating {} };
    let id = insert_event(tx, &ev, None)?;
    let mut events = vec![ev.stored(id)];
    events.extend(fail_outbox(tx, name, 0, at, "fleet terminated")?);
    Ok(events)
}

macro_rules! fleet_columns {
    () => {
        "name, uid, backend, brain, prompt, version, replicas, state, created_at, image, previous_image, previous_version, cluster, deploy, canary, brain_env, leader_slot, leader_epoch, leader_preferred"
    };
}
use fleet_columns;

fn fleet_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FleetRow> {
    Ok(FleetRow {
        name: r.get(0)?,
        uid: r.get(1)?,
        backend: r.get(2)?,
        brain: r.get(3)?,
        prompt: r.get(4)?,
        version: r.get(5)?,
        replicas: r.get(6)?,
        state: r
            .get::<_, String>(7)?
            .parse()
            .map_err(|e: String| rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, e.into()))?,
        created_at: r.get(8)?,
        image: r.get(9)?,
        previous: match (r.get::<_, Option<String>>(10)?, r.get::<_, Option<String>>(11)?) {
            (image, Some(version)) => Some((image, version)),
            _ => None,
        },
        cluster: r.get(12)?,
        deploy: r.get(13)?,
        canary: r.get(14)?,
        brain_env: r.get(15)?,
        leader: r.get(16)?,
        leader_epoch: r.get::<_, i64>(17)? as u64,
        leader_preferred: r.get(18)?,
    })
}

/// An agent event that shows the agent has a directive ends that directive's outbox wait.
/// Journals have no gaps, so an agent's first event about an injection is its
/// `inject_delivered` (or an error); later events need not look.
fn acknowledge(tx: &Transaction<'_>, event: &NewEvent, slot: u32) -> Result<()> {
    let (kind, ref_id) = match (&event.body, &event.injection_id) {
        (EventBody::CommandReply { command_id, .. }, _) => ("command", command_id.as_str()),
        (EventBody::InjectDelivered {} | EventBody::InjectFailed { .. } | EventBody::AgentError { .. }, Some(id)) => {
            ("inject", id.as_str())
        }
        _ => return Ok(()),
    };
    tx.prepare_cached("DELETE FROM outbox WHERE fleet = ?1 AND slot = ?2 AND kind = ?3 AND ref_id = ?4")?.execute(params![
        event.fleet,
        slot,
        kind,
        ref_id
    ])?;
    Ok(())
}

/// Drops the outbox rows of slots at or above `first_removed`; each injection among them gets
/// an `inject_failed`, each command a failed `command_reply`.
fn fail_outbox(tx: &Transaction<'_>, fleet: &str, first_removed: u32, at: &str, why: &str) -> Result<Vec<Event>> {
    let rows: Vec<(u32, String, String, Option<String>)> = {
        let mut stmt = tx.prepare("SELECT slot, kind, ref_id, label FROM outbox WHERE fleet = ?1 AND slot >= ?2 ORDER BY id")?;
        stmt.query_map(params![fleet, first_removed], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?
    };
    tx.execute("DELETE FROM outbox WHERE fleet = ?1 AND slot >= ?2", params![fleet, first_removed])?;
    fail_rows(tx, fleet, rows, at, why)
}

/// Fails one agent's outbox rows of one kind (`inject` or `command`).
fn fail_rows_where(tx: &Transaction<'_>, fleet: &str, slot: u32, kind: &str, at: &str, why: &str) -> Result<Vec<Event>> {
    let rows: Vec<(u32, String, String, Option<String>)> = {
        let mut stmt =
            tx.prepare("SELECT slot, kind, ref_id, label FROM outbox WHERE fleet = ?1 AND slot = ?2 AND kind = ?3 ORDER BY id")?;
        stmt.query_map(params![fleet, slot, kind], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?
    };
    tx.execute("DELETE FROM outbox WHERE fleet = ?1 AND slot = ?2 AND kind = ?3", params![fleet, slot, kind])?;
    fail_rows(tx, fleet, rows, at, why)
}

/// The failure events of outbox rows `(slot, kind, ref_id, label)` that will not be delivered.
fn fail_rows(
    tx: &Transaction<'_>,
    fleet: &str,
    rows: Vec<(u32, String, String, Option<String>)>,
    at: &str,
    why: &str,
) -> Result<Vec<Event>> {
    let mut events = Vec::with_capacity(rows.len());
    for (slot, kind, ref_id, command) in rows {
        let (injection_id, body) = if kind == "inject" {
            (Some(ref_id), EventBody::InjectFailed { error: why.to_owned() })
        } else {
            let body = EventBody::CommandReply {
                command_id: ref_id,
                command: command.unwrap_or_default(),
                ok: false,
                result: serde_json::Value::Null,
                error: Some(why.to_owned()),
            };
            (None, body)
        };
        let ev = NewEvent { at: at.to_owned(), fleet: fleet.to_owned(), agent: Some(slot), injection_id, body };
        let id = insert_event(tx, &ev, None)?;
        events.push(ev.stored(id));
    }
    Ok(events)
}

//! The schema and its migrations, tracked with `PRAGMA user_version`.

use std::path::Path;

use rusqlite::Connection;

use crate::{Result, StoreError};

/// Migrations in order; migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE fleets (
    name       TEXT PRIMARY KEY,
    uid        TEXT NOT NULL,
    backend    TEXT NOT NULL,
    brain      TEXT NOT NULL,
    prompt     TEXT,
    version    TEXT NOT NULL,
    replicas   INTEGER NOT NULL,
    state      TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE injections (
    id         TEXT PRIMARY KEY,
    fleet      TEXT NOT NULL,
    prompt     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    caller     TEXT NOT NULL
);
-- Directives not yet acknowledged by their agent; resent until they are.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY,
    fleet      TEXT NOT NULL,
    slot       INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    ref_id     TEXT NOT NULL,
    -- The command name, for commands (an injection's prompt is in `injections`).
    label      TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    UNIQUE (fleet, slot, kind, ref_id)
);
CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL,
    fleet        TEXT NOT NULL,
    agent        INTEGER,
    injection_id TEXT,
    event        TEXT NOT NULL,
    data         TEXT NOT NULL,
    -- The agent's journal position, for events an agent reported.
    epoch        TEXT,
    seq          INTEGER,
    UNIQUE (fleet, agent, epoch, seq)
);
CREATE INDEX events_by_fleet ON events (fleet, id);
CREATE INDEX events_by_injection ON events (injection_id) WHERE injection_id IS NOT NULL;
-- How far into each agent's journal every event is stored.
CREATE TABLE cursors (
    fleet TEXT NOT NULL,
    slot  INTEGER NOT NULL,
    epoch TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (fleet, slot)
);
CREATE TABLE audit (
    id     INTEGER PRIMARY KEY,
    at     TEXT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
"#,
    r#"
-- The container image of a fleet (container backends), and what an update replaced, for rollback.
ALTER TABLE fleets ADD COLUMN image TEXT;
ALTER TABLE fleets ADD COLUMN previous_image TEXT;
ALTER TABLE fleets ADD COLUMN previous_version TEXT;
"#,
    r#"
-- Where and how the slurm backend runs a fleet (a cluster file's profile, JSON).
ALTER TABLE fleets ADD COLUMN cluster TEXT;
"#,
    r#"
-- Which agents each injection was sent to: an agent's event is stored under an injection only
-- if the injection targeted that agent (an agent must not write another agent's answer).
CREATE TABLE injection_targets (
    injection_id TEXT NOT NULL,
    fleet        TEXT NOT NULL,
    slot         INTEGER NOT NULL,
    PRIMARY KEY (injection_id, fleet, slot)
) WITHOUT ROWID;
INSERT OR IGNORE INTO injection_targets (injection_id, fleet, slot)
    SELECT injection_id, fleet, agent FROM events
    WHERE event = 'inject_ack' AND injection_id IS NOT NULL AND agent IS NOT NULL;
"#,
    r#"
-- API tokens (the operator's first one is the token file `up` writes): only a hash of each
-- is kept, so the database does not hold usable tokens.
CREATE TABLE tokens (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    fleet      TEXT,
    hash       TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    -- Unix seconds; NULL: never.
    expires_at INTEGER,
    created_by TEXT NOT NULL
);
"#,
    r#"
-- How a fleet's agents are replaced when its configuration changes (a deploy policy, JSON;
-- NULL: the defaults).
ALTER TABLE fleets ADD COLUMN deploy TEXT;
"#,
    r#"
-- Deploys, running and done (the history): what each moved, from which version to which, who
-- asked, how it ended and why. At most one is 'running'.
CREATE TABLE deploys (
    id          INTEGER PRIMARY KEY,
    target      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT,
    deadline_s  INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    finished_at TEXT,
    -- JSON: [{fleet, from_version, from_image, to_version, to_image, ready, replicas, slots}]
    fleets      TEXT NOT NULL
);
"#,
    r#"
-- Agents of a fleet on another version than the fleet's (a deploy's canaries, or one agent
-- deployed on its own), JSON: {slots, version, image}.
ALTER TABLE fleets ADD COLUMN canary TEXT;
"#,
    r#"
-- The fleets each deploy moved, so a fleet's history is a query, not a scan of every deploy.
CREATE TABLE deploy_fleets (
    fleet  TEXT NOT NULL,
    deploy INTEGER NOT NULL REFERENCES deploys(id),
    PRIMARY KEY (fleet, deploy)
) WITHOUT ROWID;
INSERT OR IGNORE INTO deploy_fleets (fleet, deploy)
    SELECT json_extract(f.value, '$.fleet'), d.id FROM deploys d, json_each(d.fleets) f;
"#,
    r#"
-- What a fleet's brains get in their environment, JSON: {env: {NAME: value}, secrets: [NAME]}.
ALTER TABLE fleets ADD COLUMN brain_env TEXT;
-- Secrets brains get by name (`clawfleet secret set`). Like the bus secret in meta, they never
-- leave the control plane but through an agent's secret channel.
CREATE TABLE secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL
);
"#,
    r#"
-- Who leads a fleet (clawbucket's MANAGER), in which epoch (the highest ever given, kept when
-- none leads, so epochs only grow), and whom the operator prefers.
ALTER TABLE fleets ADD COLUMN leader_slot INTEGER;
ALTER TABLE fleets ADD COLUMN leader_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE fleets ADD COLUMN leader_preferred INTEGER;
"#,
    r#"
-- A fleet's chat panel is its `chat` events, its ARM history its `arm` events, read newest
-- first (indexes of those rows alone: the hot path of other events pays nothing).
CREATE INDEX events_chat ON events (fleet, id) WHERE event = 'chat';
CREATE INDEX events_arm ON events (fleet, id) WHERE event = 'arm';
"#,
    r#"
-- Agents disarmed by an operator (clawbucket's ARM); every other agent is armed.
CREATE TABLE disarmed (
    fleet TEXT NOT NULL,
    slot  INTEGER NOT NULL,
    PRIMARY KEY (fleet, slot)
) WITHOUT ROWID;
"#,
    r#"
-- clawbucket's simulation. The scenarios a fleet plays (JSON `Scenarios`).
CREATE TABLE scenarios (
    fleet    TEXT PRIMARY KEY,
    settings TEXT NOT NULL
);
-- Rock/Paper/Scissors rounds, each opened for the leader in its epoch; `choice` once it moved.
CREATE TABLE rps_rounds (
    fleet     TEXT NOT NULL,
    round     INTEGER NOT NULL,
    epoch     INTEGER NOT NULL,
    leader    INTEGER NOT NULL,
    choice    TEXT,
    opened_at TEXT NOT NULL,
    led_at    TEXT,
    PRIMARY KEY (fleet, round)
) WITHOUT ROWID;
-- The other agents' moves of the recent rounds: one per agent and round.
CREATE TABLE rps_plays (
    fleet  TEXT NOT NULL,
    round  INTEGER NOT NULL,
    slot   INTEGER NOT NULL,
    choice TEXT NOT NULL,
    delta  INTEGER NOT NULL,
    at     TEXT NOT NULL,
    PRIMARY KEY (fleet, round, slot)
) WITHOUT ROWID;
CREATE TABLE rps_scores (
    fleet      TEXT NOT NULL,
    slot       INTEGER NOT NULL,
    score      INTEGER NOT NULL,
    wins       INTEGER NOT NULL,
    draws      INTEGER NOT NULL,
    losses     INTEGER NOT NULL,
    last_round INTEGER NOT NULL,
    PRIMARY KEY (fleet, slot)
) WITHOUT ROWID;
-- Each agent's latest three-word phrase.
CREATE TABLE three_words (
    fleet TEXT NOT NULL,
    slot  INTEGER NOT NULL,
    text  TEXT NOT NULL,
    at    TEXT NOT NULL,
    PRIMARY KEY (fleet, slot)
) WITHOUT ROWID;
-- The latest haiku are `haiku` events.
CREATE INDEX events_haiku ON events (fleet, id) WHERE event = 'haiku';
"#,
    r#"
-- Councils (seed 002): an opportunity broadcast to a fleet, its roles claimed by its agents.
CREATE TABLE councils (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    fleet     TEXT NOT NULL,
    state     TEXT NOT NULL,
    brief     TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    deadline  TEXT NOT NULL,
    ended_at  TEXT,
    by        TEXT NOT NULL
);
CREATE INDEX councils_fleet ON councils (fleet, id);
-- A council's roles in its order, and who holds each.
CREATE TABLE council_seats (
    council  INTEGER NOT NULL REFERENCES councils (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role     TEXT NOT NULL,
    core     INTEGER NOT NULL,
    slot     INTEGER,
    reason   TEXT,
    since    TEXT,
    PRIMARY KEY (council, position)
) WITHOUT ROWID;
"#,
    r#"
-- Orchestrated projects (codeswarm's router): a task graph run on the agents of worker fleets.
CREATE TABLE projects (
    id               TEXT PRIMARY KEY,
    title            TEXT NOT NULL,
    repo_path        TEXT NOT NULL,
    base_branch      TEXT NOT NULL,
    workspace_subdir TEXT NOT NULL,
    -- JSON: the worker fleets' names, the first the project's home (its events go there).
    workers          TEXT NOT NULL,
    status           TEXT NOT NULL,
    last_error       TEXT,
    integration_branch      TEXT,
    integration_head_commit TEXT,
    -- JSON: each worker fleet's prepared clones.
    preparation      TEXT NOT NULL,
    resume_count     INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    by               TEXT NOT NULL
);
-- A project's tasks in its order; an assigned one names its agent and the injection of its
-- attempt. An agent holds one task at most, of any project.
CREATE TABLE project_tasks (
    project       TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    task_id       TEXT NOT NULL,
    spec          TEXT NOT NULL,
    status        TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    not_before    INTEGER,
    fleet         TEXT,
    slot          INTEGER,
    last_fleet    TEXT,
    last_slot     INTEGER,
    injection_id  TEXT,
    branch        TEXT,
    base_commit   TEXT,
    head_commit   TEXT,
    result_status TEXT,
    result_raw    TEXT,
    last_error    TEXT,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    PRIMARY KEY (project, task_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX project_tasks_worker ON project_tasks (fleet, slot) WHERE status = 'assigned';
CREATE UNIQUE INDEX project_tasks_injection ON project_tasks (injection_id) WHERE injection_id IS NOT NULL;
"#,
    r#"
-- Plans (codeswarm's project_plan): a planner agent's task, whose answer becomes a project.
CREATE TABLE project_plans (
    id               TEXT PRIMARY KEY,
    title            TEXT NOT NULL,
    repo_path        TEXT NOT NULL,
    base_branch      TEXT NOT NULL,
    workspace_subdir TEXT NOT NULL,
    spec             TEXT NOT NULL,
    planner          TEXT NOT NULL,
    -- JSON: the worker fleets' names.
    workers          TEXT NOT NULL,
    auto_start       INTEGER NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    slot             INTEGER,
    injection_id     TEXT,
    project_id       TEXT,
    last_error       TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    by               TEXT NOT NULL
);
CREATE UNIQUE INDEX project_plans_planner ON project_plans (planner, slot) WHERE status = 'planning';
"#,
    r#"
-- What a project's last resume did (JSON: its summary), and when.
ALTER TABLE projects ADD COLUMN resume_summary TEXT;
ALTER TABLE projects ADD COLUMN last_resume_at REAL;
"#,
    r#"
-- Injections waiting for an idle agent (codeswarm's enqueue_inject): `wants` is the agent an
-- item waits for (NULL: the fleet's first idle one); `slot` and `injection_id` say where it went.
CREATE TABLE queue_items (
    id           TEXT PRIMARY KEY,
    fleet        TEXT NOT NULL,
    wants        INTEGER,
    source       TEXT,
    prompt       TEXT NOT NULL,
    request_id   TEXT,
    status       TEXT NOT NULL,
    slot         INTEGER,
    injection_id TEXT,
    reason       TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    by           TEXT NOT NULL
);
CREATE INDEX queue_items_waiting ON queue_items (fleet) WHERE status = 'queued';
CREATE UNIQUE INDEX queue_items_worker ON queue_items (fleet, slot) WHERE status = 'dispatched';
"#,
    r#"
-- Delegated items: the fleets the work came through (JSON, oldest first, ending with the
-- delegating one), and the answer's directive that made it (`injection_id#n`, once).
ALTER TABLE queue_items ADD COLUMN chain TEXT;
ALTER TABLE queue_items ADD COLUMN origin TEXT;
CREATE UNIQUE INDEX queue_items_origin ON queue_items (origin) WHERE origin IS NOT NULL;
-- An answer's chain is looked up by its injection; a fleet's rate by its delegations.
CREATE INDEX queue_items_injection ON queue_items (injection_id) WHERE injection_id IS NOT NULL;
CREATE INDEX queue_items_delegations ON queue_items (source, created_at) WHERE origin IS NOT NULL;
"#,
    r#"
-- A delegated item whose answer goes back (`/reply`): to `reply_to` (the delegating agent,
-- `fleet/slot`), for `reply_for` (the injection whose answer delegated it). `joined`: another
-- enqueue of the same work (a client reading the same answer, codeswarm's web backend) was
-- taken as this item, so the work is queued once.
ALTER TABLE queue_items ADD COLUMN reply_to TEXT;
ALTER TABLE queue_items ADD COLUMN reply_for TEXT;
ALTER TABLE queue_items ADD COLUMN joined INTEGER NOT NULL DEFAULT 0;
CREATE INDEX queue_items_sourced ON queue_items (source, created_at) WHERE origin IS NULL AND source IS NOT NULL;
"#,
    r#"
-- Execution approvals: an agent's turn asks before it runs `command`; `status` pending,
-- submitted (answered: `approved`, sent to the agent at `sent_at`) or resolved (the agent took
-- it). `version` grows with every change of any of them.
CREATE TABLE approvals (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    fleet        TEXT NOT NULL,
    slot         INTEGER NOT NULL,
    call_id      TEXT NOT NULL,
    injection_id TEXT,
    command      TEXT NOT NULL,
    cwd          TEXT,
    reason       TEXT,
    status       TEXT NOT NULL,
    approved     INTEGER,
    decision     TEXT,
    answered_by  TEXT,
    sent_at      TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    version      INTEGER NOT NULL
);
CREATE UNIQUE INDEX approvals_call ON approvals (fleet, slot, call_id);
CREATE INDEX approvals_open ON approvals (status) WHERE status != 'resolved';
CREATE INDEX approvals_version ON approvals (version);
"#,
    r#"
-- Migrations between racks, each side's own row (`direction`: out on the source, in on the
-- peer). `held_from`: the source's agent's outbox rows after it are held for the migration.
CREATE TABLE migrations (
    id           TEXT NOT NULL,
    direction    TEXT NOT NULL,
    peer         TEXT NOT NULL,
    fleet        TEXT NOT NULL,
    slot         INTEGER,
    remote_fleet TEXT NOT NULL,
    remote_slot  INTEGER,
    state        TEXT NOT NULL,
    error        TEXT,
    forwarded    INTEGER NOT NULL,
    held_from    INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (id, direction)
) WITHOUT ROWID;
CREATE UNIQUE INDEX migrations_one_open ON migrations (fleet, slot) WHERE direction = 'out' AND state NOT IN ('done', 'aborted');
-- Slots never started again: their agent moved to `peer` (`defected`), or an arrival from
-- it was aborted and was not the fleet's last slot.
CREATE TABLE vacated (
    fleet     TEXT NOT NULL,
    slot      INTEGER NOT NULL,
    peer      TEXT NOT NULL,
    defected  INTEGER NOT NULL,
    migration TEXT NOT NULL,
    PRIMARY KEY (fleet, slot)
) WITHOUT ROWID;
-- Injections a peer forwarded, once each: the source's id, and the one made here.
CREATE TABLE forwarded (
    migration        TEXT NOT NULL,
    source_injection TEXT NOT NULL,
    injection_id     TEXT NOT NULL,
    PRIMARY KEY (migration, source_injection)
) WITHOUT ROWID;
"#,
    r#"
-- Whether each target's turn for an injection ended (turn_complete, inject_failed, or an
-- agent_error naming it): the
-- events of an injection with a turn still open are never dropped by retention.
ALTER TABLE injection_targets ADD COLUMN ended INTEGER NOT NULL DEFAULT 0;
UPDATE injection_targets SET ended = 1 WHERE EXISTS (
    SELECT 1 FROM events d WHERE d.injection_id = injection_targets.injection_id AND d.fleet = injection_targets.fleet
        AND d.agent = injection_targets.slot AND d.event IN ('turn_complete', 'inject_failed', 'agent_error'));
CREATE INDEX injection_targets_open ON injection_targets (injection_id) WHERE ended = 0;
-- How far the events table reached when, by the control plane's own clock (agents' clocks
-- may be off): what retention by age drops below.
CREATE TABLE event_marks (
    at_ms  INTEGER PRIMARY KEY,
    max_id INTEGER NOT NULL
);
"#,
];

pub(crate) fn prepare(conn: &Connection, path: &Path) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew { path: path.display().to_string(), found: version, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        conn.execute_batch(&format!("BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;", i + 1))?;
    }
    Ok(())
}

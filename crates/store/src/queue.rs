//! The queue of injections waiting for an idle agent, stored: an item is dispatched in the
//! transaction that creates its injection, only while it is still queued and its agent holds
//! no other work (a project's task, a plan, another item: [`HOLDS`]), so no agent gets two at
//! once and no item is injected twice. It is done once its agent ends that injection's turn.

use clawfleet_proto::event::EventBody;
use clawfleet_proto::queue::{MAX_QUEUED_PER_FLEET, QueueItem, QueueStatus};
use rusqlite::{Connection, OptionalExtension, params};

use super::project::parse;
use super::{Audit, Event, NewEvent, NewInjection, Result, Store, StoreError, fleet_event, insert_event, insert_injection, write_audit};

/// The work an agent `(?1, ?2)` holds: a project's task, a plan, a queued item dispatched to
/// it and not yet done. One row or none.
pub(crate) const HOLDS: &str = "SELECT 1 FROM project_tasks WHERE fleet = ?1 AND slot = ?2 AND status = 'assigned'
     UNION ALL SELECT 1 FROM project_plans WHERE planner = ?1 AND slot = ?2 AND status = 'planning'
     UNION ALL SELECT 1 FROM queue_items WHERE fleet = ?1 AND slot = ?2 AND status = 'dispatched'";

/// An item to queue.
#[derive(Debug, Clone)]
pub struct NewQueueItem<'a> {
    pub id: &'a str,
    /// The agent it waits for; none: the fleet's first idle one.
    pub agent: Option<u32>,
}

/// Where a delegated item comes from: the fleets the work came through (ending with the
/// delegating one) and what made it (a directive, `injection_id#n`, or a reply,
/// [`reply_origin`]: an item made once).
#[derive(Debug, Clone)]
pub struct Delegated<'a> {
    pub chain: &'a [String],
    pub origin: &'a str,
    /// Where its answer goes back (`/reply`).
    pub reply: Option<ReplyTo<'a>>,
}

/// The delegating agent (`fleet/slot`) an answer goes back to, and the injection whose answer
/// delegated the work.
#[derive(Debug, Clone, Copy)]
pub struct ReplyTo<'a> {
    pub agent: &'a str,
    pub injection: &'a str,
}

/// A dispatched item's way back: its answer goes to `agent` as a reply for `injection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRoute {
    pub agent: String,
    pub injection: String,
    /// The fleets the work came through (see [`Store::chain_of`]).
    pub chain: Vec<String>,
}

/// The origin of the reply to the answer of `injection`: made once, and not a delegation of
/// the answering fleet (it does not count against its rate).
pub fn reply_origin(injection: &str) -> String {
    format!("{REPLY}{injection}")
}

const REPLY: &str = "reply:";

/// What an enqueue queued: its items, of which `joined` were already queued by the same work
/// read from the same answer (a delegation and a client's enqueue of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub items: Vec<QueueItem>,
    pub joined: usize,
}

/// What the items of one enqueue share.
#[derive(Debug, Clone)]
pub struct Enqueue<'a> {
    pub fleet: &'a str,
    pub prompt: &'a str,
    pub source: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub at: &'a str,
    pub by: &'a str,
    /// A delegation's chain and origin; none: an operator's or a client's enqueue.
    pub delegated: Option<Delegated<'a>>,
    /// Join the same work from the same source queued since this time (RFC 3339) by the other
    /// way (a delegation read from an answer, or a client's enqueue of it), instead of
    /// queueing it twice; none: never join.
    pub join_since: Option<&'a str>,
}

const COLUMNS: &str =
    "id, fleet, wants, source, prompt, request_id, status, slot, injection_id, reason, created_at, updated_at, by, reply_to";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<QueueItem> {
    Ok(QueueItem {
        queue_id: r.get(0)?,
        fleet: r.get(1)?,
        agent: r.get(2)?,
        source: r.get(3)?,
        prompt: r.get(4)?,
        request_id: r.get(5)?,
        status: parse(6, r.get(6)?)?,
        dispatched_to: r.get(7)?,
        injection_id: r.get(8)?,
        reason: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
        by: r.get(12)?,
        reply_to: r.get(13)?,
    })
}

/// The item the other way already made for the same work, that `e` joins (see
/// [`Enqueue::join_since`]): a delegation joins a client's enqueue, a client's enqueue a
/// delegation (never a reply), oldest first; never one cancelled or dropped.
fn joinable(c: &Connection, e: &Enqueue<'_>, agent: Option<u32>) -> Result<Option<String>> {
    let (Some(since), Some(source)) = (e.join_since, e.source) else { return Ok(None) };
    let other = match &e.delegated {
        Some(d) if d.origin.starts_with(REPLY) => return Ok(None),
        Some(_) => "origin IS NULL",
        None => &format!("origin IS NOT NULL AND origin NOT LIKE '{REPLY}%'"),
    };
    let sql = format!(
        "SELECT id FROM queue_items WHERE source = ?1 AND created_at >= ?2 AND {other} AND fleet = ?3 AND prompt = ?4
         AND wants IS ?5 AND joined = 0 AND status NOT IN ('cancelled', 'dropped') ORDER BY rowid LIMIT 1"
    );
    Ok(c.query_row(&sql, params![source, since, e.fleet, e.prompt, agent], |r| r.get(0)).optional()?)
}

fn read_chain(text: Option<String>) -> Result<Vec<String>> {
    match text {
        Some(text) => serde_json::from_str(&text).map_err(|e| StoreError::Corrupt { what: "a queued item's chain", reason: e.to_string() }),
        None => Ok(Vec::new()),
    }
}

fn one(c: &Connection, id: &str) -> Result<QueueItem> {
    c.query_row(&format!("SELECT {COLUMNS} FROM queue_items WHERE id = ?1"), [id], row)
        .optional()?
        .ok_or_else(|| StoreError::NoQueueItem(id.chars().take(64).collect()))
}

impl Store {
    /// Queues items for an active fleet (a `queue_enqueued` event each, one audit line when
    /// anything is queued or joined), at most [`MAX_QUEUED_PER_FLEET`] waiting for it. An item
    /// a delegation already made (same origin) is skipped; with `join_since`, an item the other
    /// way already made (same fleet, source, prompt and agent, not yet joined) is taken as it.
    pub fn enqueue(&self, e: &Enqueue<'_>, items: &[NewQueueItem<'_>], audit: &Audit<'_>) -> Result<(Queued, Vec<Event>)> {
        self.tx(|tx| {
            let state: Option<String> = tx.query_row("SELECT state FROM fleets WHERE name = ?1", [e.fleet], |r| r.get(0)).optional()?;
            if state.as_deref() != Some("active") {
                return Err(StoreError::NoFleet(e.fleet.to_owned()));
            }
            let waiting: usize =
                tx.query_row("SELECT COUNT(*) FROM queue_items WHERE fleet = ?1 AND status = 'queued'", [e.fleet], |r| {
                    r.get::<_, i64>(0).map(|n| n as usize)
                })?;
            if waiting + items.len() > MAX_QUEUED_PER_FLEET {
                return Err(StoreError::QueueFull(e.fleet.to_owned(), waiting));
            }
            let mut queued = Queued { items: Vec::with_capacity(items.len()), joined: 0 };
            let mut events = Vec::with_capacity(items.len());
            let chain = e.delegated.as_ref().map(|d| serde_json::to_string(d.chain).expect("names"));
            let reply = e.delegated.as_ref().and_then(|d| d.reply);
            for (n, item) in items.iter().enumerate() {
                let origin = e.delegated.as_ref().map(|d| format!("{}/{n}", d.origin));
                if let Some(o) = &origin
                    && tx.query_row("SELECT 1 FROM queue_items WHERE origin = ?1", [o], |_| Ok(())).optional()?.is_some()
                {
                    continue;
                }
                if let Some(id) = joinable(tx, e, item.agent)? {
                    // Taken as the item already there: a delegation gives it its chain and way
                    // back, a client its request id.
                    tx.execute(
                        "UPDATE queue_items SET joined = 1, origin = COALESCE(origin, ?2), chain = COALESCE(chain, ?3),
                         reply_to = COALESCE(reply_to, ?4), reply_for = COALESCE(reply_for, ?5), request_id = COALESCE(request_id, ?6)
                         WHERE id = ?1",
                        params![id, origin, chain, reply.map(|r| r.agent), reply.map(|r| r.injection), e.request_id],
                    )?;
                    queued.items.push(one(tx, &id)?);
                    queued.joined += 1;
                    continue;
                }
                tx.execute(
                    "INSERT INTO queue_items (id, fleet, wants, source, prompt, request_id, status, created_at, updated_at, by, chain, origin,
                         reply_to, reply_for)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?7, ?8, ?9, ?10, ?11, ?12)",
                    params![
                        item.id,
                        e.fleet,
                        item.agent,
                        e.source,
                        e.prompt,
                        e.request_id,
                        e.at,
                        e.by,
                        chain,
                        origin,
                        reply.map(|r| r.agent),
                        reply.map(|r| r.injection)
                    ],
                )?;
                let body = EventBody::QueueEnqueued {
                    queue_id: item.id.to_owned(),
                    agent: item.agent,
                    source: e.source.map(str::to_owned),
                    request_id: e.request_id.map(str::to_owned),
                    by: e.by.to_owned(),
                };
                events.push(fleet_event(tx, e.fleet, e.at, body)?);
                queued.items.push(one(tx, item.id)?);
            }
            if !queued.items.is_empty() {
                write_audit(tx, audit)?;
            }
            Ok((queued, events))
        })
    }

    /// Where the answer of a dispatched item's injection goes back, if its directive said
    /// `/reply`.
    pub fn reply_route(&self, injection_id: &str) -> Result<Option<ReplyRoute>> {
        self.with(|c| {
            let found: Option<(String, String, Option<String>)> = c
                .query_row(
                    "SELECT reply_to, reply_for, chain FROM queue_items WHERE injection_id = ?1 AND reply_to IS NOT NULL",
                    [injection_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((agent, injection, chain)) = found else { return Ok(None) };
            Ok(Some(ReplyRoute { agent, injection, chain: read_chain(chain)? }))
        })
    }

    /// The items waiting, oldest first (or, with `every`, the newest 500 of every status,
    /// oldest first), of one fleet or of all.
    pub fn queue(&self, fleet: Option<&str>, every: bool) -> Result<Vec<QueueItem>> {
        self.with(|c| {
            let sql = if every {
                format!(
                    "SELECT * FROM (SELECT {COLUMNS}, rowid AS n FROM queue_items WHERE ?1 IS NULL OR fleet = ?1 ORDER BY rowid DESC LIMIT 500)
                     ORDER BY n"
                )
            } else {
                format!("SELECT {COLUMNS} FROM queue_items WHERE status = 'queued' AND (?1 IS NULL OR fleet = ?1) ORDER BY rowid")
            };
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map([fleet], row)?.collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    /// The fleets the work of an injection came through, if a delegated item carried it
    /// (oldest first); none for any other injection.
    pub fn chain_of(&self, injection_id: &str) -> Result<Vec<String>> {
        self.with(|c| {
            let chain: Option<Option<String>> =
                c.query_row("SELECT chain FROM queue_items WHERE injection_id = ?1", [injection_id], |r| r.get(0)).optional()?;
            read_chain(chain.flatten())
        })
    }

    /// How many items `source` delegated since `at` (RFC 3339); replies are not delegations.
    pub fn delegations_since(&self, source: &str, at: &str) -> Result<usize> {
        self.with(|c| {
            let n: i64 = c.query_row(
                "SELECT COUNT(*) FROM queue_items WHERE source = ?1 AND origin IS NOT NULL AND created_at >= ?2 AND origin NOT LIKE ?3",
                params![source, at, format!("{REPLY}%")],
                |r| r.get(0),
            )?;
            Ok(n as usize)
        })
    }

    /// One item, whatever its status.
    pub fn queue_item(&self, id: &str) -> Result<QueueItem> {
        self.with(|c| one(c, id))
    }

    /// Cancels a waiting item (a `queue_cancelled` event, an audit line); one already
    /// dispatched, done or dropped is refused.
    pub fn cancel_queued(&self, id: &str, at: &str, audit: &Audit<'_>) -> Result<(QueueItem, Event)> {
        self.tx(|tx| {
            let item = one(tx, id)?;
            if item.status != QueueStatus::Queued {
                return Err(StoreError::QueueItemOver(Box::new(item)));
            }
            tx.execute("UPDATE queue_items SET status = 'cancelled', updated_at = ?2 WHERE id = ?1", params![id, at])?;
            write_audit(tx, audit)?;
            let ev = fleet_event(tx, &item.fleet, at, EventBody::QueueCancelled { queue_id: id.to_owned(), by: audit.actor.to_owned() })?;
            Ok((one(tx, id)?, ev))
        })
    }

    /// Dispatches a waiting item to an agent that holds no work, with the injection that
    /// carries its prompt, in one transaction; `None` (nothing written) when the item is no
    /// longer queued or the agent holds work. Returns the injection's outbox rows and events.
    pub fn dispatch_queued(&self, id: &str, injection: &NewInjection<'_>) -> Result<Option<(Vec<i64>, Vec<Event>)>> {
        let [slot] = injection.targets else { panic!("an item goes to one agent") };
        self.tx(|tx| {
            let item = one(tx, id)?;
            let held = tx.query_row(HOLDS, params![injection.fleet, slot], |_| Ok(())).optional()?;
            if item.status != QueueStatus::Queued || item.agent.is_some_and(|a| a != *slot) || held.is_some() {
                return Ok(None);
            }
            let (rows, mut events) = insert_injection(tx, injection)?;
            tx.execute(
                "UPDATE queue_items SET status = 'dispatched', slot = ?2, injection_id = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, slot, injection.id, injection.at],
            )?;
            let ev = NewEvent {
                at: injection.at.to_owned(),
                fleet: injection.fleet.to_owned(),
                agent: Some(*slot),
                injection_id: Some(injection.id.to_owned()),
                body: EventBody::QueueDispatched { queue_id: id.to_owned(), source: item.source, request_id: item.request_id },
            };
            let n = insert_event(tx, &ev, None)?;
            events.push(ev.stored(n));
            Ok(Some((rows, events)))
        })
    }

    /// Drops a waiting item that can never be dispatched, saying why (nothing when it is no
    /// longer waiting).
    pub fn drop_queued(&self, id: &str, reason: &str, at: &str) -> Result<Vec<Event>> {
        self.tx(|tx| {
            let item = one(tx, id)?;
            if item.status != QueueStatus::Queued {
                return Ok(vec![]);
            }
            tx.execute("UPDATE queue_items SET status = 'dropped', reason = ?2, updated_at = ?3 WHERE id = ?1", params![id, reason, at])?;
            let body = EventBody::QueueDropped {
                queue_id: id.to_owned(),
                source: item.source,
                request_id: item.request_id,
                reason: reason.to_owned(),
            };
            Ok(vec![fleet_event(tx, &item.fleet, at, body)?])
        })
    }

    /// Forgets the finished items (done, cancelled, dropped) of each fleet beyond its newest
    /// `keep`; how many. What waits or is dispatched is never forgotten.
    pub fn prune_queue(&self, keep: usize) -> Result<usize> {
        self.with(|c| {
            let n = c.execute(
                "DELETE FROM queue_items WHERE rowid IN (
                     SELECT rowid FROM (
                         SELECT rowid, ROW_NUMBER() OVER (PARTITION BY fleet ORDER BY rowid DESC) AS newest
                         FROM queue_items WHERE status IN ('done', 'cancelled', 'dropped'))
                     WHERE newest > ?1)",
                [keep as i64],
            )?;
            Ok(n)
        })
    }

    /// Marks done every dispatched item whose agent has ended its injection's turn (or failed
    /// it), freeing the agent; how many.
    pub fn finish_dispatched(&self, at: &str) -> Result<usize> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE queue_items SET status = 'done', updated_at = ?1
                 WHERE status = 'dispatched' AND EXISTS (
                     SELECT 1 FROM events e WHERE e.injection_id = queue_items.injection_id AND e.fleet = queue_items.fleet
                     AND e.agent = queue_items.slot AND e.event IN ('turn_complete', 'agent_error', 'inject_failed'))",
                [at],
            )?;
            Ok(n)
        })
    }
}

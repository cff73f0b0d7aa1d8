//! Migrations between racks, stored on both sides: each side's state of a migration changes
//! only from the states it is in (a compare-and-set), in one transaction with its event and
//! with what the step means for the fleet: the source's slot vacated when it commits (so the
//! reconciler stops its agent and never starts it again), the peer's new slot made when the
//! snapshot arrives, and given back when it is aborted. Injections the source accepted for its
//! agent after the migration began (outbox rows after `held_from`) are held, then sent on to
//! the peer one by one, each with its `inject_forwarded` event.

use clawfleet_proto::event::{Event, EventBody};
use clawfleet_proto::rack::{Direction, Migration, MigrationState};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::project::parse;
use super::{Audit, NewEvent, Result, Store, StoreError, fail_outbox, insert_event, write_audit};

const COLUMNS: &str =
    "id, direction, peer, fleet, slot, remote_fleet, remote_slot, state, error, forwarded, created_at, updated_at, held_from";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Migration, i64)> {
    Ok((
        Migration {
            id: r.get(0)?,
            direction: parse(1, r.get(1)?)?,
            peer: r.get(2)?,
            fleet: r.get(3)?,
            slot: r.get(4)?,
            remote_fleet: r.get(5)?,
            remote_slot: r.get(6)?,
            state: parse(7, r.get(7)?)?,
            error: r.get(8)?,
            forwarded: r.get(9)?,
            created_at: r.get(10)?,
            updated_at: r.get(11)?,
        },
        r.get(12)?,
    ))
}

fn one(c: &Connection, id: &str, direction: Direction) -> Result<Option<(Migration, i64)>> {
    Ok(c.query_row(&format!("SELECT {COLUMNS} FROM migrations WHERE id = ?1 AND direction = ?2"), params![id, direction.as_str()], row)
        .optional()?)
}

fn event(tx: &Transaction<'_>, m: &Migration, at: &str, detail: String) -> Result<Event> {
    let body = EventBody::Migration { id: m.id.clone(), state: m.state, peer: m.peer.clone(), detail };
    let e = NewEvent { at: at.to_owned(), fleet: m.fleet.clone(), agent: m.slot, injection_id: None, body };
    let id = insert_event(tx, &e, None)?;
    Ok(e.stored(id))
}

/// A migration the source begins (its peer accepted the offer).
#[derive(Debug, Clone)]
pub struct NewMigration<'a> {
    pub id: &'a str,
    pub peer: &'a str,
    pub fleet: &'a str,
    pub slot: u32,
    pub remote_fleet: &'a str,
}

/// One step of a migration on one side: from one of `from` to `to`, with what its event says
/// (`detail`), why, when it is aborted (`error`), and the agent's slot on the other rack once
/// it is known (`remote_slot`).
#[derive(Debug, Clone)]
pub struct Advance<'a> {
    pub from: &'a [MigrationState],
    pub to: MigrationState,
    pub error: Option<&'a str>,
    pub detail: String,
    pub remote_slot: Option<u32>,
}

/// An injection held for a moving agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub outbox_id: i64,
    pub injection_id: String,
    pub prompt: String,
}

/// A slot whose agent left: `peer` took it (`defected`), or a migration into this rack that
/// was aborted gave it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vacated {
    pub fleet: String,
    pub slot: u32,
    pub peer: String,
    pub defected: bool,
}

impl Store {
    /// Begins a migration out of this rack: `offered`, the agent's injections from now on
    /// held. Refused while another migration of the agent is open, or its slot is vacated.
    pub fn begin_migration(&self, m: &NewMigration<'_>, at: &str, audit: &Audit<'_>) -> Result<(Migration, Event)> {
        self.tx(|tx| {
            let open: Option<String> = tx
                .query_row(
                    "SELECT id FROM migrations WHERE direction = 'out' AND fleet = ?1 AND slot = ?2 AND state NOT IN ('done', 'aborted')",
                    params![m.fleet, m.slot],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = open {
                return Err(StoreError::Migrating { agent: format!("{}/{}", m.fleet, m.slot), id });
            }
            write_audit(tx, audit)?;
            let held_from: i64 = tx.query_row("SELECT COALESCE(MAX(id), 0) FROM outbox", [], |r| r.get(0))?;
            tx.execute(
                "INSERT INTO migrations (id, direction, peer, fleet, slot, remote_fleet, state, forwarded, created_at, updated_at, held_from)
                 VALUES (?1, 'out', ?2, ?3, ?4, ?5, 'offered', 0, ?6, ?6, ?7)",
                params![m.id, m.peer, m.fleet, m.slot, m.remote_fleet, at, held_from],
            )?;
            let (stored, _) = one(tx, m.id, Direction::Out)?.expect("just stored");
            let e = event(tx, &stored, at, format!("offered to {}, which accepted; its injections are held", m.peer))?;
            Ok((stored, e))
        })
    }

    /// Takes a peer's offer: `offered` on this side. The same offer again is the same
    /// migration (its stored state answers).
    pub fn offered_migration(&self, id: &str, peer: &str, source: (&str, u32), fleet: &str, at: &str) -> Result<Migration> {
        self.tx(|tx| {
            if let Some((m, _)) = one(tx, id, Direction::In)? {
                return Ok(m);
            }
            tx.execute(
                "INSERT INTO migrations (id, direction, peer, fleet, remote_fleet, remote_slot, state, forwarded, created_at, updated_at, held_from)
                 VALUES (?1, 'in', ?2, ?3, ?4, ?5, 'offered', 0, ?6, ?6, 0)",
                params![id, peer, fleet, source.0, source.1, at],
            )?;
            Ok(one(tx, id, Direction::In)?.expect("just stored").0)
        })
    }

    /// One migration, with the outbox position after which its agent's injections are held.
    pub fn migration(&self, id: &str, direction: Direction) -> Result<Option<(Migration, i64)>> {
        self.with(|c| one(c, id, direction))
    }

    /// The newest migrations (both sides), newest first.
    pub fn migrations(&self, most: usize) -> Result<Vec<Migration>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("SELECT {COLUMNS} FROM migrations ORDER BY created_at DESC, id LIMIT ?1"))?;
            let rows = stmt.query_map([most as i64], row)?.map(|r| r.map(|(m, _)| m)).collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// Migrations that have not ended on this side, and those that brought an agent here (for
    /// its `FROM` badge), with their held-from positions.
    pub fn live_migrations(&self) -> Result<Vec<(Migration, i64)>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM migrations WHERE state NOT IN ('done', 'aborted') OR (direction = 'in' AND state = 'committed')
                 ORDER BY created_at"
            ))?;
            let rows = stmt.query_map([], row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// Moves a migration on this side, with its event. What the step means goes with it: the source's slot vacated at
    /// `committing`; the peer's slot given back (the fleet shrunk when it is the last one, else
    /// vacated) at `aborted`. `None`: it is not in any of `from` (someone else moved it).
    pub fn advance_migration(
        &self,
        id: &str,
        direction: Direction,
        step: Advance<'_>,
        at: &str,
    ) -> Result<Option<(Migration, Vec<Event>)>> {
        let Advance { from, to, error, detail, remote_slot } = step;
        self.tx(|tx| {
            let Some((m, _)) = one(tx, id, direction)? else { return Ok(None) };
            if !from.contains(&m.state) {
                return Ok(None);
            }
            tx.execute(
                "UPDATE migrations SET state = ?3, error = COALESCE(?4, error), updated_at = ?5, remote_slot = COALESCE(?6, remote_slot)
                 WHERE id = ?1 AND direction = ?2",
                params![id, direction.as_str(), to.as_str(), error, at, remote_slot],
            )?;
            let (m, _) = one(tx, id, direction)?.expect("just changed");
            let mut events = Vec::new();
            match (direction, to, m.slot) {
                (Direction::Out, MigrationState::Committing, Some(slot)) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO vacated (fleet, slot, peer, defected, migration) VALUES (?1, ?2, ?3, 1, ?4)",
                        params![m.fleet, slot, m.peer, m.id],
                    )?;
                    // Commands waiting for it will never be taken: it stops here for good.
                    let commands = super::fail_rows_where(tx, &m.fleet, slot, "command", at, "the agent moved to another rack")?;
                    events.extend(commands);
                }
                (Direction::In, MigrationState::Aborted, Some(slot)) => events.extend(give_back(tx, &m.fleet, slot, &m.peer, &m.id, at)?),
                _ => {}
            }
            events.insert(0, event(tx, &m, at, detail)?);
            Ok(Some((m, events)))
        })
    }

    /// The peer's side, when the snapshot arrived: the target fleet grows by one slot for the
    /// arriving agent (its injections held until the migration commits), `transferred`.
    /// Refused when the migration is not `offered` (the same transfer again answers `None`).
    pub fn migration_arrived(&self, id: &str, at: &str, audit: &Audit<'_>) -> Result<Option<(Migration, Vec<Event>)>> {
        self.tx(|tx| {
            let Some((m, _)) = one(tx, id, Direction::In)? else { return Ok(None) };
            if m.state != MigrationState::Offered {
                return Ok(None);
            }
            let replicas: u32 = tx
                .query_row("SELECT replicas FROM fleets WHERE name = ?1 AND state = 'active'", [&m.fleet], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::NoFleet(m.fleet.clone()))?;
            write_audit(tx, &Audit { detail: format!("replicas {replicas} -> {} (migration {id})", replicas + 1), ..audit.clone() })?;
            tx.execute("UPDATE fleets SET replicas = ?2 WHERE name = ?1", params![m.fleet, replicas + 1])?;
            tx.execute("DELETE FROM vacated WHERE fleet = ?1 AND slot = ?2", params![m.fleet, replicas])?;
            tx.execute(
                "UPDATE migrations SET state = 'transferred', slot = ?2, updated_at = ?3 WHERE id = ?1 AND direction = 'in'",
                params![id, replicas, at],
            )?;
            let scaled = NewEvent {
                at: at.to_owned(),
                fleet: m.fleet.clone(),
                agent: None,
                injection_id: None,
                body: EventBody::FleetScaled { replicas: replicas + 1, previous: replicas },
            };
            let sid = insert_event(tx, &scaled, None)?;
            let (m, _) = one(tx, id, Direction::In)?.expect("just changed");
            let e =
                event(tx, &m, at, format!("the snapshot of {}/{} arrived; starting its copy", m.remote_fleet, m.remote_slot.unwrap_or(0)))?;
            Ok(Some((m, vec![scaled.stored(sid), e])))
        })
    }

    /// The injections held for a migration's agent that are still to be sent on, oldest first.
    pub fn held_injections(&self, fleet: &str, slot: u32, held_from: i64) -> Result<Vec<Held>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT o.id, o.ref_id, i.prompt FROM outbox o JOIN injections i ON i.id = o.ref_id
                 WHERE o.kind = 'inject' AND o.fleet = ?1 AND o.slot = ?2 AND o.id > ?3 ORDER BY o.id",
            )?;
            let rows = stmt
                .query_map(params![fleet, slot, held_from], |r| {
                    Ok(Held { outbox_id: r.get(0)?, injection_id: r.get(1)?, prompt: r.get(2)? })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    /// Whether injections sent before the migration began are still unacknowledged by the agent.
    pub fn unacknowledged_before(&self, fleet: &str, slot: u32, held_from: i64) -> Result<u32> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM outbox WHERE kind = 'inject' AND fleet = ?1 AND slot = ?2 AND id <= ?3",
                params![fleet, slot, held_from],
                |r| r.get(0),
            )?)
        })
    }

    /// A held injection went to the peer (`remote`: its id there, `agent` the copy there): its
    /// outbox row ends with `inject_forwarded`, once.
    pub fn injection_forwarded(&self, id: &str, held: &Held, agent: &str, remote: &str, at: &str) -> Result<Option<Event>> {
        self.tx(|tx| {
            let Some((m, _)) = one(tx, id, Direction::Out)? else { return Ok(None) };
            if tx.execute("DELETE FROM outbox WHERE id = ?1", [held.outbox_id])? == 0 {
                return Ok(None);
            }
            tx.execute("UPDATE migrations SET forwarded = forwarded + 1 WHERE id = ?1 AND direction = 'out'", [id])?;
            let e = NewEvent {
                at: at.to_owned(),
                fleet: m.fleet.clone(),
                agent: m.slot,
                injection_id: Some(held.injection_id.clone()),
                body: EventBody::InjectForwarded { rack: m.peer.clone(), agent: agent.to_owned(), injection_id: remote.to_owned() },
            };
            let eid = insert_event(tx, &e, None)?;
            Ok(Some(e.stored(eid)))
        })
    }

    /// The id on this rack of an injection a peer forwarded, if it came already.
    pub fn forwarded_here(&self, migration: &str, source_injection: &str) -> Result<Option<String>> {
        self.with(|c| {
            Ok(c.query_row(
                "SELECT injection_id FROM forwarded WHERE migration = ?1 AND source_injection = ?2",
                params![migration, source_injection],
                |r| r.get(0),
            )
            .optional()?)
        })
    }

    /// Stores a forwarded injection as a new one for the arrived agent (with its outbox row),
    /// once per source injection.
    pub fn take_forwarded(
        &self,
        migration: &str,
        source_injection: &str,
        inj: &super::NewInjection<'_>,
        audit: &Audit<'_>,
    ) -> Result<(Vec<i64>, Vec<Event>)> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO forwarded (migration, source_injection, injection_id) VALUES (?1, ?2, ?3)",
                params![migration, source_injection, inj.id],
            )?;
            write_audit(tx, audit)?;
            super::insert_injection(tx, inj)
        })
    }

    /// A fleet's vacated slots: the reconciler never starts them.
    pub fn vacated_slots(&self, fleet: &str) -> Result<std::collections::BTreeSet<u32>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached("SELECT slot FROM vacated WHERE fleet = ?1")?;
            let slots = stmt.query_map([fleet], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            Ok(slots)
        })
    }

    /// Every vacated slot.
    pub fn vacated(&self) -> Result<Vec<Vacated>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT fleet, slot, peer, defected FROM vacated ORDER BY fleet, slot")?;
            let rows = stmt
                .query_map([], |r| Ok(Vacated { fleet: r.get(0)?, slot: r.get(1)?, peer: r.get(2)?, defected: r.get(3)? }))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }
}

/// Gives an aborted arrival's slot back: the fleet shrinks when it is its last slot (what was
/// held for it failing), else the slot stays empty.
fn give_back(tx: &Transaction<'_>, fleet: &str, slot: u32, peer: &str, id: &str, at: &str) -> Result<Vec<Event>> {
    let replicas: Option<u32> = tx.query_row("SELECT replicas FROM fleets WHERE name = ?1", [fleet], |r| r.get(0)).optional()?;
    match replicas {
        Some(n) if n == slot + 1 => {
            tx.execute("UPDATE fleets SET replicas = ?2 WHERE name = ?1", params![fleet, slot])?;
            let scaled = NewEvent {
                at: at.to_owned(),
                fleet: fleet.to_owned(),
                agent: None,
                injection_id: None,
                body: EventBody::FleetScaled { replicas: slot, previous: n },
            };
            let sid = insert_event(tx, &scaled, None)?;
            let mut events = vec![scaled.stored(sid)];
            events.extend(fail_outbox(tx, fleet, slot, at, "the agent's migration was aborted")?);
            Ok(events)
        }
        Some(n) if slot < n => {
            tx.execute(
                "INSERT OR REPLACE INTO vacated (fleet, slot, peer, defected, migration) VALUES (?1, ?2, ?3, 0, ?4)",
                params![fleet, slot, peer, id],
            )?;
            super::fail_rows_where(tx, fleet, slot, "inject", at, "the agent's migration was aborted")
        }
        _ => Ok(Vec::new()),
    }
}

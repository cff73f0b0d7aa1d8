//! Councils, stored: each council's state and seats. An agent's claim is judged
//! (`clawfleet_core::council`) in the ingest transaction that stores it, against the seats
//! stored there, so two agents claiming one role at once cannot both get it. A fleet has at
//! most one council that is not over (open or active): the one its injections' `role` names.

use clawfleet_core::council::{Council, Spec};
use clawfleet_proto::council::{CouncilState, CouncilView, MAX_REASON_CHARS, MAX_ROLES, Seat};
use clawfleet_proto::event::EventBody;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{Audit, Event, Result, Store, StoreError, fleet_event, write_audit};

/// Councils listed per fleet (the newest).
pub(crate) const COUNCILS_LISTED: usize = 20;

fn state(col: usize, text: String) -> rusqlite::Result<CouncilState> {
    text.parse().map_err(|e: String| rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, e.into()))
}

fn seats(c: &Connection, id: u64) -> Result<Vec<Seat>> {
    let mut stmt = c.prepare_cached("SELECT role, core, slot, reason, since FROM council_seats WHERE council = ?1 ORDER BY position")?;
    let rows = stmt
        .query_map([id as i64], |r| Ok(Seat { role: r.get(0)?, core: r.get(1)?, slot: r.get(2)?, reason: r.get(3)?, since: r.get(4)? }))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

const VIEW: &str = "SELECT id, fleet, state, brief, opened_at, deadline, ended_at, by FROM councils";

fn view(c: &Connection, r: &rusqlite::Row<'_>) -> Result<CouncilView> {
    let id = r.get::<_, i64>(0)? as u64;
    Ok(CouncilView {
        id,
        fleet: r.get(1)?,
        state: state(2, r.get(2)?)?,
        brief: r.get(3)?,
        seats: seats(c, id)?,
        opened_at: r.get(4)?,
        deadline: r.get(5)?,
        ended_at: r.get(6)?,
        by: r.get(7)?,
    })
}

fn views(c: &Connection, filter: &str, params: impl rusqlite::Params) -> Result<Vec<CouncilView>> {
    let mut stmt = c.prepare_cached(&format!("{VIEW} {filter}"))?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(view(c, r)?);
    }
    Ok(out)
}

/// The fleet's council that is not over, if any.
fn live(c: &Connection, fleet: &str) -> Result<Option<CouncilView>> {
    Ok(views(c, "WHERE fleet = ?1 AND state IN ('open', 'active') ORDER BY id DESC LIMIT 1", [fleet])?.pop())
}

fn one(c: &Connection, fleet: &str, id: u64) -> Result<CouncilView> {
    views(c, "WHERE fleet = ?1 AND id = ?2", params![fleet, id as i64])?.pop().ok_or_else(|| StoreError::NoCouncil(fleet.to_owned(), id))
}

fn rules_of(v: &CouncilView) -> Council {
    Council { state: v.state, seats: v.seats.clone() }
}

fn end(tx: &Transaction<'_>, id: u64, to: CouncilState, at: &str) -> Result<()> {
    tx.execute("UPDATE councils SET state = ?2, ended_at = ?3 WHERE id = ?1", params![id as i64, to.as_str(), at])?;
    Ok(())
}

impl Store {
    /// Opens a council on a fleet, failing at `deadline` without its core roles; refused while
    /// the fleet has one open or active. A `council_opened` event and an audit line.
    pub fn open_council(&self, fleet: &str, spec: &Spec, at: &str, deadline: &str, audit: &Audit<'_>) -> Result<(CouncilView, Event)> {
        self.tx(|tx| {
            if tx.query_row("SELECT 1 FROM fleets WHERE name = ?1", [fleet], |_| Ok(())).optional()?.is_none() {
                return Err(StoreError::NoFleet(fleet.to_owned()));
            }
            if let Some(c) = live(tx, fleet)? {
                return Err(StoreError::CouncilLive { fleet: fleet.to_owned(), id: c.id, state: c.state });
            }
            tx.execute(
                "INSERT INTO councils (fleet, state, brief, opened_at, deadline, by) VALUES (?1, 'open', ?2, ?3, ?4, ?5)",
                params![fleet, spec.brief, at, deadline, audit.actor],
            )?;
            let id = tx.last_insert_rowid() as u64;
            let mut insert = tx.prepare_cached("INSERT INTO council_seats (council, position, role, core) VALUES (?1, ?2, ?3, ?4)")?;
            for (i, role) in spec.roles.iter().enumerate() {
                insert.execute(params![id as i64, i as i64, role, spec.core.contains(role)])?;
            }
            write_audit(tx, audit)?;
            let body = EventBody::CouncilOpened {
                council: id,
                roles: spec.roles.clone(),
                core: spec.core.clone(),
                brief: spec.brief.clone(),
                deadline: deadline.to_owned(),
                by: audit.actor.to_owned(),
            };
            let ev = fleet_event(tx, fleet, at, body)?;
            Ok((one(tx, fleet, id)?, ev))
        })
    }

    /// A fleet's councils, newest first.
    pub fn councils(&self, fleet: &str) -> Result<Vec<CouncilView>> {
        self.with(|c| views(c, "WHERE fleet = ?1 ORDER BY id DESC LIMIT ?2", params![fleet, COUNCILS_LISTED as i64]))
    }

    /// One council of a fleet.
    pub fn council(&self, fleet: &str, id: u64) -> Result<CouncilView> {
        self.with(|c| one(c, fleet, id))
    }

    /// Every council that is not over, of every fleet.
    pub fn live_councils(&self) -> Result<Vec<CouncilView>> {
        self.with(|c| views(c, "WHERE state IN ('open', 'active') ORDER BY id", []))
    }

    /// Closes a council that is not over: a `council_closed` event and an audit line.
    pub fn close_council(&self, fleet: &str, id: u64, at: &str, audit: &Audit<'_>) -> Result<Event> {
        self.tx(|tx| {
            let c = one(tx, fleet, id)?;
            if c.state.is_over() {
                return Err(StoreError::CouncilOver(id, c.state));
            }
            end(tx, id, CouncilState::Closed, at)?;
            write_audit(tx, audit)?;
            fleet_event(tx, fleet, at, EventBody::CouncilClosed { council: id, by: audit.actor.to_owned() })
        })
    }

    /// At a council's deadline: fails it if it is still open, naming the core roles no one
    /// holds (a `council_failed` event); nothing if it is active or over.
    pub fn expire_council(&self, fleet: &str, id: u64, at: &str) -> Result<Option<Event>> {
        self.tx(|tx| {
            let c = one(tx, fleet, id)?;
            let Some(unclaimed) = rules_of(&c).expire() else { return Ok(None) };
            end(tx, id, CouncilState::Failed, at)?;
            Ok(Some(fleet_event(tx, fleet, at, EventBody::CouncilFailed { council: id, unclaimed })?))
        })
    }

    /// An agent was lost: the role it held in the fleet's open council is free again (a
    /// `council_role_freed` event); nothing if it held none or the council is active.
    pub fn free_council_role(&self, fleet: &str, id: u64, slot: u32, at: &str) -> Result<Option<Event>> {
        self.tx(|tx| {
            let c = one(tx, fleet, id)?;
            let Some(role) = rules_of(&c).freed_by_loss(slot).map(str::to_owned) else { return Ok(None) };
            tx.execute(
                "UPDATE council_seats SET slot = NULL, reason = NULL, since = NULL WHERE council = ?1 AND role = ?2",
                params![id as i64, role],
            )?;
            Ok(Some(fleet_event(tx, fleet, at, EventBody::CouncilRoleFreed { council: id, role, slot })?))
        })
    }

    /// Records that a council is active, with its seats (a `council_activated` event), once
    /// the claim that made it so is stored.
    pub fn council_activated(&self, fleet: &str, id: u64, at: &str) -> Result<Event> {
        self.tx(|tx| {
            let c = one(tx, fleet, id)?;
            fleet_event(tx, fleet, at, EventBody::CouncilActivated { council: id, seats: c.seats })
        })
    }

    /// The agent that holds `role` in the fleet's active council: where an injection to a
    /// role goes.
    pub fn role_holder(&self, fleet: &str, role: &str) -> Result<u32> {
        self.with(|c| {
            let council = live(c, fleet)?.filter(|c| c.state == CouncilState::Active);
            let Some(council) = council else { return Err(StoreError::NoActiveCouncil(fleet.to_owned())) };
            rules_of(&council).holder(role).ok_or_else(|| StoreError::NoRole {
                fleet: fleet.to_owned(),
                council: council.id,
                role: role.chars().take(40).collect(),
            })
        })
    }
}

/// Judges an agent's council claim in the ingest transaction: `Ok(None)` when it got a role
/// (filled in, with whether it made the council active), `Ok(Some(reason))` when refused.
pub(crate) fn take(tx: &Transaction<'_>, fleet: &str, slot: u32, body: &mut EventBody, at: &str) -> Result<Option<String>> {
    let EventBody::CouncilClaim { council, roles, reason, role, activated } = body else { return Ok(None) };
    if roles.len() > MAX_ROLES {
        return Ok(Some(format!("a claim of {} roles (a council has at most {MAX_ROLES})", roles.len())));
    }
    let n = reason.chars().count();
    if n > MAX_REASON_CHARS {
        return Ok(Some(format!("a reason of {n} characters (at most {MAX_REASON_CHARS})")));
    }
    let c = match one(tx, fleet, *council) {
        Ok(c) => c,
        Err(StoreError::NoCouncil(..)) => return Ok(Some(format!("fleet '{fleet}' has no council {council}"))),
        Err(e) => return Err(e),
    };
    let award = match rules_of(&c).claim(slot, roles) {
        Ok(a) => a,
        Err(refused) => return Ok(Some(refused.to_string())),
    };
    tx.execute(
        "UPDATE council_seats SET slot = ?3, reason = ?4, since = ?5 WHERE council = ?1 AND role = ?2",
        params![*council as i64, award.role, slot, &*reason, at],
    )?;
    if award.activates {
        tx.execute("UPDATE councils SET state = 'active' WHERE id = ?1", [*council as i64])?;
    }
    (*role, *activated) = (Some(award.role), award.activates);
    Ok(None)
}

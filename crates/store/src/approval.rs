//! Execution approvals, stored: an agent's `exec_approval_required` makes a pending approval
//! in the ingest transaction that stores it (which gives it its id); an answer (an operator's,
//! an agent's the policy allows, or the control plane's refusal of one that waited too long)
//! is taken once, only while it is pending, with its `exec_approval_submitted` event; the
//! agent's `exec_approval_resolved` ends it. Until then the answer is sent again.

use clawfleet_proto::approval::{
    Approval, ApprovalList, ApprovalStatus, MAX_CALL_ID_BYTES, MAX_COMMAND_BYTES, MAX_DECISION_BYTES, MAX_DETAIL_BYTES,
};
use clawfleet_proto::event::EventBody;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::project::parse;
use super::{Audit, Event, NewEvent, Result, Store, StoreError, insert_event, write_audit};

/// The most approvals `approvals(.., every)` lists.
const LISTED: usize = 500;

const COLUMNS: &str = "id, fleet, slot, call_id, injection_id, command, cwd, reason, status, approved, decision, answered_by,
    created_at, updated_at, version";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Approval> {
    Ok(Approval {
        approval_id: r.get::<_, i64>(0)? as u64,
        fleet: r.get(1)?,
        agent: r.get(2)?,
        call_id: r.get(3)?,
        injection_id: r.get(4)?,
        command: r.get(5)?,
        cwd: r.get(6)?,
        reason: r.get(7)?,
        status: parse(8, r.get(8)?)?,
        approved: r.get(9)?,
        decision: r.get(10)?,
        answered_by: r.get(11)?,
        created_at: r.get(12)?,
        updated_at: r.get(13)?,
        version: r.get::<_, i64>(14)? as u64,
    })
}

fn one(c: &Connection, id: u64) -> Result<Approval> {
    c.query_row(&format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"), [id as i64], row).optional()?.ok_or(StoreError::NoApproval(id))
}

fn next_version(c: &Connection) -> Result<i64> {
    Ok(c.query_row("SELECT COALESCE(MAX(version), 0) + 1 FROM approvals", [], |r| r.get(0))?)
}

fn too_long(what: &str, text: &str, most: usize) -> Option<String> {
    (text.len() > most).then(|| format!("{what} is {} bytes, over the {most}-byte limit", text.len()))
}

/// Takes an agent's approval event where it is stored: a request becomes a pending approval
/// (its id written into the event), a resolution ends the approval it answers. `Some(reason)`:
/// refused, and nothing changed.
pub(crate) fn take(tx: &Transaction<'_>, event: &mut NewEvent, slot: u32) -> Result<Option<String>> {
    let (fleet, injection) = (event.fleet.clone(), event.injection_id.clone());
    match &mut event.body {
        EventBody::ExecApprovalRequired { approval_id, call_id, command, cwd, reason } => {
            if injection.is_none() {
                return Ok(Some("an approval is asked by a turn: it needs the turn's injection".into()));
            }
            if call_id.is_empty() {
                return Ok(Some("an approval needs a call id".into()));
            }
            let long = too_long("the call id", call_id, MAX_CALL_ID_BYTES)
                .or_else(|| too_long("the command", command, MAX_COMMAND_BYTES))
                .or_else(|| cwd.as_deref().and_then(|c| too_long("the working directory", c, MAX_DETAIL_BYTES)))
                .or_else(|| reason.as_deref().and_then(|r| too_long("the reason", r, MAX_DETAIL_BYTES)));
            if long.is_some() {
                return Ok(long);
            }
            let asked = tx
                .query_row(
                    "SELECT 1 FROM approvals WHERE fleet = ?1 AND slot = ?2 AND call_id = ?3",
                    params![fleet, slot, &*call_id],
                    |_| Ok(()),
                )
                .optional()?;
            if asked.is_some() {
                return Ok(Some(format!("call {call_id} asked for an approval already")));
            }
            // Asked at the control plane's time, not the agent's (whose clock may be off): the
            // timeout counts from it.
            tx.execute(
                "INSERT INTO approvals (fleet, slot, call_id, injection_id, command, cwd, reason, status, created_at, updated_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), ?8)",
                params![fleet, slot, &*call_id, injection, &*command, &*cwd, &*reason, next_version(tx)?],
            )?;
            *approval_id = Some(tx.last_insert_rowid() as u64);
            Ok(None)
        }
        EventBody::ExecApprovalResolved { call_id, .. } => {
            let n = tx.execute(
                "UPDATE approvals SET status = 'resolved', updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), version = ?4
                 WHERE fleet = ?1 AND slot = ?2 AND call_id = ?3 AND status = 'submitted'",
                params![fleet, slot, &*call_id, next_version(tx)?],
            )?;
            Ok((n == 0).then(|| format!("no answer was sent for call {}", call_id.chars().take(64).collect::<String>())))
        }
        _ => Ok(None),
    }
}

/// An answer to a pending approval.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub approved: bool,
    pub decision: Option<&'a str>,
    /// Who answered.
    pub by: &'a str,
    pub at: &'a str,
}

fn submit(tx: &Transaction<'_>, id: u64, a: &Answer<'_>) -> Result<(Approval, Event)> {
    let approval = one(tx, id)?;
    if approval.status != ApprovalStatus::Pending {
        return Err(StoreError::ApprovalAnswered(Box::new(approval)));
    }
    let decision: Option<String> = a.decision.map(|d| d.chars().take(MAX_DECISION_BYTES).collect());
    tx.execute(
        "UPDATE approvals SET status = 'submitted', approved = ?2, decision = ?3, answered_by = ?4, updated_at = ?5, version = ?6
         WHERE id = ?1",
        params![id as i64, a.approved, decision, a.by, a.at, next_version(tx)?],
    )?;
    let ev = NewEvent {
        at: a.at.to_owned(),
        fleet: approval.fleet.clone(),
        agent: Some(approval.agent),
        injection_id: approval.injection_id.clone(),
        body: EventBody::ExecApprovalSubmitted {
            approval_id: id,
            call_id: approval.call_id.clone(),
            approved: a.approved,
            decision,
            by: a.by.to_owned(),
        },
    };
    let n = insert_event(tx, &ev, None)?;
    Ok((one(tx, id)?, ev.stored(n)))
}

impl Store {
    /// The approvals not yet taken by their agents (or, with `every`, the newest of every
    /// status), oldest first, of one fleet or of all, and the approvals' version.
    pub fn approvals(&self, fleet: Option<&str>, every: bool) -> Result<ApprovalList> {
        self.with(|c| {
            let sql = if every {
                format!(
                    "SELECT * FROM (SELECT {COLUMNS} FROM approvals WHERE ?1 IS NULL OR fleet = ?1 ORDER BY id DESC LIMIT {LISTED}) ORDER BY id"
                )
            } else {
                format!("SELECT {COLUMNS} FROM approvals WHERE status != 'resolved' AND (?1 IS NULL OR fleet = ?1) ORDER BY id")
            };
            let mut stmt = c.prepare_cached(&sql)?;
            let approvals = stmt.query_map([fleet], row)?.collect::<rusqlite::Result<Vec<_>>>()?;
            let version: i64 = c.query_row("SELECT COALESCE(MAX(version), 0) FROM approvals", [], |r| r.get(0))?;
            Ok(ApprovalList { approvals, version: version as u64 })
        })
    }

    pub fn approval(&self, id: u64) -> Result<Approval> {
        self.with(|c| one(c, id))
    }

    /// Answers a pending approval, once (an audit line, an `exec_approval_submitted` event);
    /// one answered already is refused.
    pub fn answer_approval(&self, id: u64, answer: &Answer<'_>, audit: &Audit<'_>) -> Result<(Approval, Event)> {
        self.tx(|tx| {
            let answered = submit(tx, id, answer)?;
            write_audit(tx, audit)?;
            Ok(answered)
        })
    }

    /// Refuses every approval pending since before `asked_before` (RFC 3339): a timeout is a no.
    pub fn expire_approvals(&self, asked_before: &str, at: &str, by: &str) -> Result<Vec<(Approval, Event)>> {
        self.tx(|tx| {
            let ids: Vec<i64> = {
                let mut stmt = tx.prepare_cached("SELECT id FROM approvals WHERE status = 'pending' AND created_at < ?1 ORDER BY id")?;
                stmt.query_map([asked_before], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
            };
            let answer = Answer { approved: false, decision: Some("timeout"), by, at };
            ids.into_iter().map(|id| submit(tx, id as u64, &answer)).collect()
        })
    }

    /// The answered approvals whose agents have not taken the answer, last sent before
    /// `sent_before` (or never): to send again.
    pub fn unsent_approvals(&self, sent_before: &str) -> Result<Vec<Approval>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM approvals WHERE status = 'submitted' AND (sent_at IS NULL OR sent_at < ?1) ORDER BY id"
            ))?;
            let rows = stmt.query_map([sent_before], row)?.collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    /// Forgets the resolved approvals of each fleet beyond its newest `keep`; how many.
    pub fn prune_approvals(&self, keep: usize) -> Result<usize> {
        self.with(|c| {
            let n = c.execute(
                "DELETE FROM approvals WHERE id IN (
                     SELECT id FROM (
                         SELECT id, ROW_NUMBER() OVER (PARTITION BY fleet ORDER BY id DESC) AS newest
                         FROM approvals WHERE status = 'resolved')
                     WHERE newest > ?1)",
                [keep as i64],
            )?;
            Ok(n)
        })
    }

    /// Ends an answered approval whose agent is gone (its fleet deleted or scaled below it):
    /// nothing is there to take the answer.
    pub fn abandon_approval(&self, id: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE approvals SET status = 'resolved', updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), version = ?2
                 WHERE id = ?1 AND status = 'submitted'",
                params![id as i64, next_version(c)?],
            )?;
            Ok(())
        })
    }

    /// Notes that an approval's answer went to its agent.
    pub fn approval_sent(&self, id: u64, at: &str) -> Result<()> {
        self.with(|c| {
            c.execute("UPDATE approvals SET sent_at = ?2 WHERE id = ?1", params![id as i64, at])?;
            Ok(())
        })
    }
}

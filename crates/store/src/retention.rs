//! Retention of the events table (`up --retain-events 7d`, `--retain-events-rows N`): what
//! may go is an event older than the cutoff that belongs to no injection, or to one whose
//! every target's turn ended and that waits for no agent any more (no outbox row). Age is
//! measured by the control plane's own clock, through marks of how far the table reached when;
//! events are dropped in small batches, each its own short transaction, so writers go on
//! between them.

use rusqlite::{OptionalExtension, params};

use super::{Result, Store};

impl Store {
    /// Notes that the events table reached its current newest id at `at_ms`; marks from
    /// before `forget_before_ms` go.
    pub fn mark_events(&self, at_ms: i64, forget_before_ms: i64) -> Result<()> {
        self.tx(|tx| {
            let newest: i64 = tx.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?;
            tx.execute("INSERT OR REPLACE INTO event_marks (at_ms, max_id) VALUES (?1, ?2)", params![at_ms, newest])?;
            // The newest mark before the horizon stays: it is the cutoff.
            tx.execute("DELETE FROM event_marks WHERE at_ms < (SELECT MAX(at_ms) FROM event_marks WHERE at_ms < ?1)", [forget_before_ms])?;
            Ok(())
        })
    }

    /// The id at and below which events may be dropped: those the table had at `before_ms`
    /// (by the marks), and (`rows`) all but the newest `rows`; the larger cutoff of the two.
    pub fn retention_cutoff(&self, before_ms: Option<i64>, rows: Option<u64>) -> Result<Option<i64>> {
        self.with(|c| {
            let by_age: Option<i64> = match before_ms {
                Some(at) => c
                    .query_row("SELECT max_id FROM event_marks WHERE at_ms <= ?1 ORDER BY at_ms DESC LIMIT 1", [at], |r| r.get(0))
                    .optional()?,
                None => None,
            };
            let by_rows: Option<i64> = match rows {
                Some(n) => {
                    let newest: i64 = c.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?;
                    (newest > n as i64).then(|| newest - n as i64)
                }
                None => None,
            };
            Ok(by_age.max(by_rows).filter(|id| *id > 0))
        })
    }

    /// Looks at the next `batch` events after `after`, at or below `cutoff`, and drops those
    /// no open injection needs: how many went, and the last id looked at (`None`: no more).
    pub fn drop_events(&self, after: i64, cutoff: i64, batch: usize) -> Result<(usize, Option<i64>)> {
        self.tx(|tx| {
            let last: Option<i64> = tx.query_row(
                "SELECT MAX(id) FROM (SELECT id FROM events WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3)",
                params![after, cutoff, batch as i64],
                |r| r.get(0),
            )?;
            let Some(last) = last else { return Ok((0, None)) };
            let n = tx.execute(
                "DELETE FROM events AS e
                 WHERE e.id > ?1 AND e.id <= ?2
                   AND (e.injection_id IS NULL OR (
                       NOT EXISTS (SELECT 1 FROM injection_targets t WHERE t.injection_id = e.injection_id AND t.ended = 0)
                       AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.kind = 'inject' AND o.ref_id = e.injection_id)))",
                params![after, last],
            )?;
            Ok((n, Some(last)))
        })
    }

    /// The newest event's id.
    pub fn newest_event_id(&self) -> Result<i64> {
        self.with(|c| Ok(c.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?))
    }
}

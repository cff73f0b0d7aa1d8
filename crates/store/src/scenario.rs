//! clawbucket's simulation, stored: each fleet's scenarios, Rock/Paper/Scissors rounds, moves
//! and scores, and each agent's three-word phrase (haiku are `haiku` events). An agent's move,
//! haiku or phrase is judged (`clawfleet_core::scenario`, `core::leader`'s fence) in the same
//! transaction that stores it, against the leader stored there: a leader that lost its place
//! between two writes cannot slip a move in.

use clawfleet_core::leader::{Leader, Leadership};
use clawfleet_core::scenario::{self as rules, Move, Round, Verdict};
use clawfleet_proto::event::{EventBody, MAX_CHAT_CHARS};
use clawfleet_proto::scenario::{MAX_HAIKU_CHARS, MAX_THREE_WORDS_CHARS, Rps, Scenarios};
use rusqlite::{OptionalExtension, Transaction, params};

use super::{Audit, Event, NewEvent, Result, Store, StoreError, insert_event, write_audit};

/// Rounds kept per fleet (older ones are forgotten: a move for one is refused).
const ROUNDS_KEPT: u64 = 100;
/// Rounds whose moves are kept (to play each round once); a round older than that takes no move.
const PLAYS_KEPT: u64 = 10;

/// One agent's line of a fleet's scoreboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreRow {
    pub slot: u32,
    pub score: i64,
    pub wins: u64,
    pub draws: u64,
    pub losses: u64,
    /// The last round it played.
    pub last_round: u64,
}

/// A round as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundRow {
    pub round: u64,
    pub epoch: u64,
    pub leader: u32,
    pub choice: Option<Rps>,
    pub opened_at: String,
    pub led_at: Option<String>,
    /// How many agents played it.
    pub plays: u64,
}

/// An agent's three-word phrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhraseRow {
    pub slot: u32,
    pub text: String,
    pub at: String,
}

fn leadership(tx: &Transaction<'_>, fleet: &str) -> Result<Leadership> {
    let (slot, epoch, preferred): (Option<u32>, i64, Option<u32>) = tx
        .query_row("SELECT leader_slot, leader_epoch, leader_preferred FROM fleets WHERE name = ?1", [fleet], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?
        .ok_or_else(|| StoreError::NoFleet(fleet.to_owned()))?;
    Ok(Leadership { leader: slot.map(|slot| Leader { slot, epoch: epoch as u64 }), epoch: epoch as u64, preferred })
}

fn parse_move(col: usize, text: Option<String>) -> rusqlite::Result<Option<Rps>> {
    text.map(|t| t.parse().map_err(|e: String| rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, e.into())))
        .transpose()
}

impl Store {
    /// Sets the scenarios a fleet plays (none: all off); a `scenarios_set` event and an audit line.
    pub fn set_scenarios(&self, fleet: &str, scenarios: &Scenarios, at: &str, audit: &Audit<'_>) -> Result<Event> {
        self.tx(|tx| {
            leadership(tx, fleet)?;
            let json = serde_json::to_string(scenarios).expect("scenarios serialize");
            tx.execute(
                "INSERT INTO scenarios (fleet, settings) VALUES (?1, ?2) ON CONFLICT (fleet) DO UPDATE SET settings = ?2",
                params![fleet, json],
            )?;
            write_audit(tx, audit)?;
            let body = EventBody::ScenariosSet { scenarios: scenarios.clone(), by: audit.actor.to_owned() };
            let event = NewEvent { at: at.to_owned(), fleet: fleet.to_owned(), agent: None, injection_id: None, body };
            let id = insert_event(tx, &event, None)?;
            Ok(event.stored(id))
        })
    }

    /// The scenarios of every fleet that has set some, as stored (JSON `Scenarios`).
    pub fn scenarios(&self) -> Result<Vec<(String, String)>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached("SELECT fleet, settings FROM scenarios ORDER BY fleet")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    /// One fleet's scenarios, as stored (JSON `Scenarios`), if it has set some.
    pub fn fleet_scenarios(&self, fleet: &str) -> Result<Option<String>> {
        self.with(|c| Ok(c.query_row("SELECT settings FROM scenarios WHERE fleet = ?1", [fleet], |r| r.get(0)).optional()?))
    }

    /// Opens the fleet's next round for its leader in its epoch; `None` when no agent leads.
    /// Forgets rounds (and moves) old enough.
    pub fn open_round(&self, fleet: &str, at: &str) -> Result<Option<(u64, Leader)>> {
        self.tx(|tx| {
            let Some(leader) = leadership(tx, fleet)?.leader else { return Ok(None) };
            let last: Option<i64> = tx.query_row("SELECT MAX(round) FROM rps_rounds WHERE fleet = ?1", [fleet], |r| r.get(0))?;
            let round = last.unwrap_or(0) as u64 + 1;
            tx.execute(
                "INSERT INTO rps_rounds (fleet, round, epoch, leader, opened_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![fleet, round as i64, leader.epoch as i64, leader.slot, at],
            )?;
            tx.execute("DELETE FROM rps_rounds WHERE fleet = ?1 AND round <= ?2", params![fleet, round as i64 - ROUNDS_KEPT as i64])?;
            tx.execute("DELETE FROM rps_plays WHERE fleet = ?1 AND round <= ?2", params![fleet, round as i64 - PLAYS_KEPT as i64])?;
            Ok(Some((round, leader)))
        })
    }

    /// The newest round of a fleet that its leader moved in.
    pub fn latest_round(&self, fleet: &str) -> Result<Option<RoundRow>> {
        self.with(|c| {
            let row = c
                .query_row(
                    "SELECT r.round, r.epoch, r.leader, r.choice, r.opened_at, r.led_at,
                            (SELECT COUNT(*) FROM rps_plays p WHERE p.fleet = r.fleet AND p.round = r.round)
                     FROM rps_rounds r WHERE r.fleet = ?1 AND r.choice IS NOT NULL ORDER BY r.round DESC LIMIT 1",
                    [fleet],
                    |r| {
                        Ok(RoundRow {
                            round: r.get::<_, i64>(0)? as u64,
                            epoch: r.get::<_, i64>(1)? as u64,
                            leader: r.get(2)?,
                            choice: parse_move(3, r.get(3)?)?,
                            opened_at: r.get(4)?,
                            led_at: r.get(5)?,
                            plays: r.get::<_, i64>(6)? as u64,
                        })
                    },
                )
                .optional()?;
            Ok(row)
        })
    }

    /// A fleet's scoreboard: best first (ties by slot).
    pub fn scoreboard(&self, fleet: &str) -> Result<Vec<ScoreRow>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT slot, score, wins, draws, losses, last_round FROM rps_scores WHERE fleet = ?1 ORDER BY score DESC, slot",
            )?;
            let rows = stmt
                .query_map([fleet], |r| {
                    Ok(ScoreRow {
                        slot: r.get(0)?,
                        score: r.get(1)?,
                        wins: r.get::<_, i64>(2)? as u64,
                        draws: r.get::<_, i64>(3)? as u64,
                        losses: r.get::<_, i64>(4)? as u64,
                        last_round: r.get::<_, i64>(5)? as u64,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    /// Every agent's three-word phrase, by slot.
    pub fn phrases(&self, fleet: &str) -> Result<Vec<PhraseRow>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached("SELECT slot, text, at FROM three_words WHERE fleet = ?1 ORDER BY slot")?;
            let rows = stmt
                .query_map([fleet], |r| Ok(PhraseRow { slot: r.get(0)?, text: r.get(1)?, at: r.get(2)? }))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
    }

    /// The newest `limit` haiku of a fleet, oldest first.
    pub fn haiku(&self, fleet: &str, limit: usize) -> Result<Vec<Event>> {
        self.newest(fleet, "haiku", limit)
    }
}

/// Judges and applies an agent's scenario event in the ingest transaction: `Ok(None)` when it
/// is taken (a move's score filled in), `Ok(Some(reason))` when it is refused. Other events
/// pass untouched.
pub(crate) fn take(tx: &Transaction<'_>, event: &mut NewEvent, slot: u32) -> Result<Option<String>> {
    let fleet = event.fleet.clone();
    match &mut event.body {
        EventBody::RpsMove { round, choice, epoch, delta, score, .. } => {
            let leadership = leadership(tx, &fleet)?;
            let stored = tx
                .query_row(
                    "SELECT epoch, leader, choice FROM rps_rounds WHERE fleet = ?1 AND round = ?2",
                    params![fleet, *round as i64],
                    |r| {
                        Ok(Round { round: *round, epoch: r.get::<_, i64>(0)? as u64, leader: r.get(1)?, choice: parse_move(2, r.get(2)?)? })
                    },
                )
                .optional()?;
            let armed = tx
                .query_row("SELECT 1 FROM disarmed WHERE fleet = ?1 AND slot = ?2", params![fleet, slot], |_| Ok(()))
                .optional()?
                .is_none();
            let played = tx
                .query_row(
                    "SELECT 1 FROM rps_plays WHERE fleet = ?1 AND round = ?2 AND slot = ?3",
                    params![fleet, *round as i64, slot],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            let mv = Move { round: *round, slot, epoch: *epoch, choice: *choice };
            let verdict = match rules::judge(&leadership, stored.as_ref(), mv, armed, played) {
                Ok(v) => v,
                Err(refused) => return Ok(Some(refused.to_string())),
            };
            match verdict {
                Verdict::Leads => {
                    tx.execute(
                        "UPDATE rps_rounds SET choice = ?3, led_at = ?4 WHERE fleet = ?1 AND round = ?2",
                        params![fleet, *round as i64, choice.as_str(), event.at],
                    )?;
                    (*delta, *score) = (None, None);
                }
                Verdict::Plays { delta: d } => {
                    tx.execute(
                        "INSERT INTO rps_plays (fleet, round, slot, choice, delta, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![fleet, *round as i64, slot, choice.as_str(), d, event.at],
                    )?;
                    let new: i64 = tx.query_row(
                        "INSERT INTO rps_scores (fleet, slot, score, wins, draws, losses, last_round)
                         VALUES (?1, ?2, ?3, ?3 > 0, ?3 = 0, ?3 < 0, ?4)
                         ON CONFLICT (fleet, slot) DO UPDATE SET score = score + ?3, wins = wins + (?3 > 0),
                             draws = draws + (?3 = 0), losses = losses + (?3 < 0), last_round = MAX(last_round, ?4)
                         RETURNING score",
                        params![fleet, slot, d, *round as i64],
                        |r| r.get(0),
                    )?;
                    (*delta, *score) = (Some(d), Some(new));
                }
            }
            Ok(None)
        }
        EventBody::Haiku { epoch, text } => {
            if let Err(fenced) = leadership(tx, &fleet)?.fence(slot, *epoch) {
                return Ok(Some(fenced.to_string()));
            }
            Ok(too_long("haiku", text, MAX_HAIKU_CHARS))
        }
        EventBody::ThreeWords { text } => {
            if let Some(why) = too_long("three-word phrase", text, MAX_THREE_WORDS_CHARS) {
                return Ok(Some(why));
            }
            tx.execute(
                "INSERT INTO three_words (fleet, slot, text, at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (fleet, slot) DO UPDATE SET text = ?3, at = ?4",
                params![fleet, slot, &*text, event.at],
            )?;
            Ok(None)
        }
        EventBody::Chat { text, .. } => Ok(too_long("chat message", text, MAX_CHAT_CHARS)),
        _ => Ok(None),
    }
}

fn too_long(what: &str, text: &str, max: usize) -> Option<String> {
    let n = text.chars().count();
    if text.trim().is_empty() {
        Some(format!("an empty {what}"))
    } else {
        (n > max).then(|| format!("a {what} of {n} characters (at most {max})"))
    }
}

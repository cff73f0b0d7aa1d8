//! The rules of clawbucket's simulation, pure: which scenario settings are allowed, who may
//! move in a Rock/Paper/Scissors round and how a move scores, what a brain is asked, and how
//! its answer becomes a move, a haiku or a three-word phrase (or nothing, and the agent says why).
//!
//! A round is opened by the control plane for the fleet's leader in its epoch; the leader's
//! move, fenced by that epoch, is the round's; every other armed agent then plays it once and
//! scores +1, 0 or −1 against it.

use clawfleet_proto::scenario::{
    HAIKU_INTERVAL_MINUTES, MAX_HAIKU_CHARS, MAX_THREE_WORDS_CHARS, RPS_INTERVAL_SECONDS, Rps, Scenarios, THREE_WORDS_INTERVAL_MINUTES,
};

use crate::leader::{Fenced, Leadership};

/// What a move scores against the leader's: +1 a win, 0 a draw, −1 a loss.
pub fn score(player: Rps, leader: Rps) -> i8 {
    use Rps::*;
    match (player, leader) {
        (p, l) if p == l => 0,
        (Rock, Scissors) | (Paper, Rock) | (Scissors, Paper) => 1,
        _ => -1,
    }
}

/// Settings out of their bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("rps interval_seconds must be {min} to {max}, got {got}", min = RPS_INTERVAL_SECONDS.start(), max = RPS_INTERVAL_SECONDS.end())]
    RpsInterval { got: u32 },
    #[error("haiku interval_minutes must be {min} to {max}, got {got}", min = HAIKU_INTERVAL_MINUTES.start(), max = HAIKU_INTERVAL_MINUTES.end())]
    HaikuInterval { got: u32 },
    #[error("three_words interval_minutes must be {min} to {max}, got {got}", min = THREE_WORDS_INTERVAL_MINUTES.start(), max = THREE_WORDS_INTERVAL_MINUTES.end())]
    ThreeWordsInterval { got: u32 },
}

/// Checks every setting against its bounds.
pub fn validate(s: &Scenarios) -> Result<(), SettingsError> {
    if let Some(r) = s.rps.filter(|r| !RPS_INTERVAL_SECONDS.contains(&r.interval_seconds)) {
        return Err(SettingsError::RpsInterval { got: r.interval_seconds });
    }
    if let Some(h) = s.haiku.filter(|h| !HAIKU_INTERVAL_MINUTES.contains(&h.interval_minutes)) {
        return Err(SettingsError::HaikuInterval { got: h.interval_minutes });
    }
    if let Some(t) = s.three_words.filter(|t| !THREE_WORDS_INTERVAL_MINUTES.contains(&t.interval_minutes)) {
        return Err(SettingsError::ThreeWordsInterval { got: t.interval_minutes });
    }
    Ok(())
}

/// A change to a fleet's scenarios that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("a scenarios patch must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("the patched scenarios are not valid: {0}")]
    Shape(String),
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

/// Applies a JSON merge patch (RFC 7396) to a fleet's scenarios: a field absent is kept, `null`
/// turns a scenario (or a setting) off, an object is merged into what is there; so two people
/// who change different scenarios at once both keep their change, which a read-then-replace of
/// the whole would not.
pub fn merge(current: &Scenarios, patch: &serde_json::Value) -> Result<Scenarios, PatchError> {
    use serde_json::Value;
    fn apply(target: &mut Value, patch: &Value) {
        let Value::Object(changes) = patch else {
            *target = patch.clone();
            return;
        };
        if !target.is_object() {
            *target = Value::Object(serde_json::Map::new());
        }
        let fields = target.as_object_mut().expect("made an object above");
        for (key, change) in changes {
            if change.is_null() {
                fields.remove(key);
            } else {
                apply(fields.entry(key.clone()).or_insert(Value::Null), change);
            }
        }
    }
    let kind = match patch {
        Value::Object(_) => None,
        Value::Null => Some("null"),
        Value::Bool(_) => Some("a boolean"),
        Value::Number(_) => Some("a number"),
        Value::String(_) => Some("a string"),
        Value::Array(_) => Some("an array"),
    };
    if let Some(kind) = kind {
        return Err(PatchError::NotAnObject(kind));
    }
    let mut merged = serde_json::to_value(current).expect("scenarios serialize");
    apply(&mut merged, patch);
    let merged: Scenarios = serde_json::from_value(merged).map_err(|e| PatchError::Shape(e.to_string()))?;
    validate(&merged)?;
    Ok(merged)
}

/// A round as the control plane keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub round: u64,
    /// The epoch and the leader it was opened for.
    pub epoch: u64,
    pub leader: u32,
    /// The leader's move, once it moved.
    pub choice: Option<Rps>,
}

/// A move the control plane takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The leader's move: it is the round's.
    Leads,
    /// A player's move, and what it scores.
    Plays { delta: i8 },
}

/// Why a move was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Fenced(#[from] Fenced),
    #[error("round {0} was never opened")]
    NoRound(u64),
    #[error("round {round} was opened for agent {leader} in epoch {epoch}")]
    NotThisRound { round: u64, leader: u32, epoch: u64 },
    #[error("round {0} has its leader's move already")]
    AlreadyLed(u64),
    #[error("round {0} has no leader's move yet")]
    NotLed(u64),
    #[error("the leader does not play its own round {0}")]
    LeaderPlays(u64),
    #[error("agent {0} is disarmed: it takes part in no round")]
    Disarmed(u32),
    #[error("agent {slot} played round {round} already")]
    PlayedAlready { slot: u32, round: u64 },
}

/// An agent's move: `epoch` is `Some` for a leader's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub round: u64,
    pub slot: u32,
    pub epoch: Option<u64>,
    pub choice: Rps,
}

/// What an agent's move is, to the control plane, given the round it names (if it was
/// opened), whether the agent is armed and whether it has played the round already.
pub fn judge(leadership: &Leadership, round: Option<&Round>, mv: Move, armed: bool, played: bool) -> Result<Verdict, Refused> {
    let Move { round: round_no, slot, epoch, choice } = mv;
    match epoch {
        Some(epoch) => {
            leadership.fence(slot, epoch)?;
            let round = round.ok_or(Refused::NoRound(round_no))?;
            if round.epoch != epoch || round.leader != slot {
                return Err(Refused::NotThisRound { round: round.round, leader: round.leader, epoch: round.epoch });
            }
            if round.choice.is_some() {
                return Err(Refused::AlreadyLed(round.round));
            }
            Ok(Verdict::Leads)
        }
        None => {
            let round = round.ok_or(Refused::NoRound(round_no))?;
            let leader = round.choice.ok_or(Refused::NotLed(round.round))?;
            if slot == round.leader {
                return Err(Refused::LeaderPlays(round.round));
            }
            if !armed {
                return Err(Refused::Disarmed(slot));
            }
            if played {
                return Err(Refused::PlayedAlready { slot, round: round.round });
            }
            Ok(Verdict::Plays { delta: score(choice, leader) })
        }
    }
}

/// What an agent's brain is asked for its move.
pub const RPS_PROMPT: &str = "We are playing rock, paper, scissors. Answer with one word: rock, paper or scissors.";

/// What the leader's brain is asked for a haiku.
pub fn haiku_prompt(fleet: &str) -> String {
    format!("Write a haiku (three short lines) about a fleet of agents called {fleet}. Answer with the haiku only.")
}

/// What an agent's brain is asked for its three-word phrase.
pub const THREE_WORDS_PROMPT: &str = "In exactly three words, say what you are doing right now. Answer with the three words only.";

/// The first move a brain's answer names ("stone" is rock, as clawbucket has it), if any.
pub fn parse_move(answer: &str) -> Option<Rps> {
    answer.split(|c: char| !c.is_alphabetic()).find_map(|w| match w.to_lowercase().as_str() {
        "rock" | "stone" => Some(Rps::Rock),
        "paper" => Some(Rps::Paper),
        "scissors" | "scissor" => Some(Rps::Scissors),
        _ => None,
    })
}

/// An answer's first three words (letters, digits, `'` and `-` kept), at most
/// [`MAX_THREE_WORDS_CHARS`] characters; `None` when it has no word.
pub fn three_words(answer: &str) -> Option<String> {
    let words: Vec<String> = answer
        .split_whitespace()
        .map(|w| w.chars().filter(|c| c.is_alphanumeric() || *c == '\'' || *c == '-').collect::<String>())
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .take(3)
        .collect();
    (!words.is_empty()).then(|| words.join(" ").chars().take(MAX_THREE_WORDS_CHARS).collect())
}

/// A haiku from a brain's answer: its first three lines with text, leaving out a preface that
/// ends with a colon ("Here is a haiku:") and quotes, at most [`MAX_HAIKU_CHARS`] characters;
/// `None` when nothing is left.
pub fn haiku(answer: &str) -> Option<String> {
    let lines: Vec<&str> = answer
        .lines()
        .map(|l| l.trim().trim_matches(|c| c == '"' || c == '*' || c == '`').trim())
        .filter(|l| !l.is_empty() && !l.ends_with(':'))
        .take(3)
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n").chars().take(MAX_HAIKU_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use clawfleet_proto::scenario::{HaikuSettings, RpsSettings, ThreeWordsSettings};
    use expect_test::expect;

    use super::*;
    use crate::leader::Leader;

    #[test]
    fn a_merge_patch_changes_only_what_it_names() {
        let now = Scenarios {
            rps: Some(RpsSettings { interval_seconds: 5, brain: true }),
            haiku: Some(HaikuSettings { interval_minutes: 3 }),
            three_words: None,
        };
        let mut table = String::new();
        for patch in [
            r#"{}"#,
            r#"{"rps": {"interval_seconds": 9}}"#,
            r#"{"rps": null}"#,
            r#"{"rps": {"brain": null}}"#,
            r#"{"three_words": {"interval_minutes": 2}, "haiku": null}"#,
            r#"{"three_words": {}}"#,
            r#"{"rps": {"interval_seconds": 0}}"#,
            r#"{"rps": {"interval_seconds": "5"}}"#,
            r#"{"chess": {"interval_seconds": 5}}"#,
            r#"{"rps": 5}"#,
            r#"[1]"#,
            r#"null"#,
        ] {
            let got = match merge(&now, &serde_json::from_str(patch).unwrap()) {
                Ok(s) => serde_json::to_string(&s).unwrap(),
                Err(e) => format!("error: {e}"),
            };
            writeln!(table, "{patch:<56} {got}").unwrap();
        }
        expect![[r#"
            {}                                                       {"rps":{"interval_seconds":5,"brain":true},"haiku":{"interval_minutes":3}}
            {"rps": {"interval_seconds": 9}}                         {"rps":{"interval_seconds":9,"brain":true},"haiku":{"interval_minutes":3}}
            {"rps": null}                                            {"haiku":{"interval_minutes":3}}
            {"rps": {"brain": null}}                                 {"rps":{"interval_seconds":5,"brain":false},"haiku":{"interval_minutes":3}}
            {"three_words": {"interval_minutes": 2}, "haiku": null}  {"rps":{"interval_seconds":5,"brain":true},"three_words":{"interval_minutes":2}}
            {"three_words": {}}                                      error: the patched scenarios are not valid: missing field `interval_minutes`
            {"rps": {"interval_seconds": 0}}                         error: rps interval_seconds must be 1 to 3600, got 0
            {"rps": {"interval_seconds": "5"}}                       error: the patched scenarios are not valid: invalid type: string "5", expected u32
            {"chess": {"interval_seconds": 5}}                       error: the patched scenarios are not valid: unknown field `chess`, expected one of `rps`, `haiku`, `three_words`
            {"rps": 5}                                               error: the patched scenarios are not valid: invalid type: integer `5`, expected struct RpsSettings
            [1]                                                      error: a scenarios patch must be a JSON object, got an array
            null                                                     error: a scenarios patch must be a JSON object, got null
        "#]].assert_eq(&table);
    }

    #[test]
    fn moves_score_against_the_leaders() {
        let mut table = String::new();
        for p in Rps::ALL {
            for l in Rps::ALL {
                writeln!(table, "{p:>8} vs {l:<8} {:+}", score(*p, *l)).unwrap();
            }
        }
        expect![[r#"
                rock vs rock     +0
                rock vs paper    -1
                rock vs scissors +1
               paper vs rock     +1
               paper vs paper    +0
               paper vs scissors -1
            scissors vs rock     -1
            scissors vs paper    +1
            scissors vs scissors +0
        "#]]
        .assert_eq(&table);
    }

    #[test]
    fn settings_are_bounded() {
        let rps = |interval_seconds| Scenarios { rps: Some(RpsSettings { interval_seconds, brain: false }), ..Scenarios::default() };
        assert_eq!(validate(&rps(1)), Ok(()));
        assert_eq!(validate(&rps(3600)), Ok(()));
        assert_eq!(validate(&rps(0)).unwrap_err().to_string(), "rps interval_seconds must be 1 to 3600, got 0");
        assert_eq!(validate(&rps(3601)).unwrap_err(), SettingsError::RpsInterval { got: 3601 });
        let haiku = Scenarios { haiku: Some(HaikuSettings { interval_minutes: 0 }), ..Scenarios::default() };
        assert_eq!(validate(&haiku).unwrap_err().to_string(), "haiku interval_minutes must be 1 to 1440, got 0");
        let words = Scenarios { three_words: Some(ThreeWordsSettings { interval_minutes: 1441 }), ..Scenarios::default() };
        assert_eq!(validate(&words).unwrap_err(), SettingsError::ThreeWordsInterval { got: 1441 });
        assert_eq!(validate(&Scenarios::default()), Ok(()));
    }

    /// Agent 0 leads in epoch 2; round 5 was opened for it; agent 3 is disarmed; agent 2 has
    /// played round 5.
    #[test]
    fn who_may_move() {
        let leadership = Leadership { leader: Some(Leader { slot: 0, epoch: 2 }), epoch: 2, preferred: None };
        let open = Round { round: 5, epoch: 2, leader: 0, choice: None };
        let led = Round { choice: Some(Rps::Rock), ..open };
        let old = Round { round: 4, epoch: 1, leader: 1, choice: None };
        type Case = (&'static str, Option<Round>, u32, Option<u64>, Rps);
        let cases: &[Case] = &[
            ("leader leads", Some(open), 0, Some(2), Rps::Paper),
            ("leader twice", Some(led), 0, Some(2), Rps::Paper),
            ("stale epoch", Some(open), 0, Some(1), Rps::Paper),
            ("not the leader", Some(open), 1, Some(2), Rps::Paper),
            ("old leader's round", Some(old), 1, Some(1), Rps::Paper),
            ("leader, round of another epoch", Some(old), 0, Some(2), Rps::Paper),
            ("no such round", None, 0, Some(2), Rps::Paper),
            ("player before the leader", Some(open), 1, None, Rps::Paper),
            ("player wins", Some(led), 1, None, Rps::Paper),
            ("player draws", Some(led), 1, None, Rps::Rock),
            ("player loses", Some(led), 1, None, Rps::Scissors),
            ("player twice", Some(led), 2, None, Rps::Paper),
            ("disarmed player", Some(led), 3, None, Rps::Paper),
            ("leader plays its round", Some(led), 0, None, Rps::Paper),
            ("player, no round", None, 1, None, Rps::Paper),
        ];
        let mut out = String::new();
        for (what, round, slot, epoch, choice) in cases {
            let mv = Move { round: 5, slot: *slot, epoch: *epoch, choice: *choice };
            let verdict = judge(&leadership, round.as_ref(), mv, *slot != 3, *slot == 2);
            let shown = match verdict {
                Ok(v) => format!("{v:?}"),
                Err(e) => format!("refused: {e}"),
            };
            writeln!(out, "{what}: {shown}").unwrap();
        }
        expect![[r#"
            leader leads: Leads
            leader twice: refused: round 5 has its leader's move already
            stale epoch: refused: epoch 1 is stale: agent 0 leads in epoch 2
            not the leader: refused: agent 1 is not the leader (agent 0 is, in epoch 2)
            old leader's round: refused: agent 1 is not the leader (agent 0 is, in epoch 2)
            leader, round of another epoch: refused: round 4 was opened for agent 1 in epoch 1
            no such round: refused: round 5 was never opened
            player before the leader: refused: round 5 has no leader's move yet
            player wins: Plays { delta: 1 }
            player draws: Plays { delta: 0 }
            player loses: Plays { delta: -1 }
            player twice: refused: agent 2 played round 5 already
            disarmed player: refused: agent 3 is disarmed: it takes part in no round
            leader plays its round: refused: the leader does not play its own round 5
            player, no round: refused: round 5 was never opened
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn answers_become_moves_phrases_and_haiku() {
        assert_eq!(parse_move("Paper."), Some(Rps::Paper));
        assert_eq!(parse_move("I choose: SCISSORS!"), Some(Rps::Scissors));
        assert_eq!(parse_move("stone, then paper"), Some(Rps::Rock));
        assert_eq!(parse_move(RPS_PROMPT), Some(Rps::Rock), "the echo brain plays the prompt's first move");
        assert_eq!(parse_move("I'd rather not"), None);
        assert_eq!(parse_move("rocky"), None);

        assert_eq!(three_words("Guarding the gate, quietly.").as_deref(), Some("Guarding the gate"));
        assert_eq!(three_words("  **Counting** stars  ").as_deref(), Some("Counting stars"));
        assert_eq!(three_words("... !!! ?"), None);
        assert_eq!(three_words(&"a".repeat(80)).map(|s| s.len()), Some(MAX_THREE_WORDS_CHARS));

        expect![[r#"
            Old silent pond
            a frog jumps in
            splash! silence again"#]]
        .assert_eq(&haiku("Here is a haiku:\n\n\"Old silent pond\na frog jumps in\nsplash! silence again\"\nI hope you like it.").unwrap());
        assert_eq!(haiku("  \n \n"), None);
        assert_eq!(haiku(&"x".repeat(1000)).map(|s| s.chars().count()), Some(MAX_HAIKU_CHARS));
    }
}

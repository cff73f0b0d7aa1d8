//! clawbucket's simulation on the wire: which scenarios a fleet plays ([`Scenarios`]), what the
//! control plane asks an agent to do for them ([`Play`], in a `play` directive), and the moves
//! of Rock/Paper/Scissors ([`Rps`]). The rules (who may act, scoring, what an answer must look
//! like) are `clawfleet_core::scenario`'s.

use serde::{Deserialize, Serialize};

named_enum! {
    /// A Rock/Paper/Scissors move.
    pub enum Rps ("move") {
        Rock = "rock",
        Paper = "paper",
        Scissors = "scissors",
    }
}

named_enum! {
    /// How an agent chose what it played.
    pub enum Chooser ("chooser") {
        /// Its brain answered with a move.
        Brain = "brain",
        /// At random (the fleet plays at random, or its brain gave no move).
        Random = "random",
    }
}

/// The shortest and longest time between two Rock/Paper/Scissors rounds, in seconds.
pub const RPS_INTERVAL_SECONDS: std::ops::RangeInclusive<u32> = 1..=3600;
/// The shortest and longest time between two haiku, in minutes.
pub const HAIKU_INTERVAL_MINUTES: std::ops::RangeInclusive<u32> = 1..=1440;
/// The shortest and longest time between two three-word phrases of an agent, in minutes.
pub const THREE_WORDS_INTERVAL_MINUTES: std::ops::RangeInclusive<u32> = 1..=1440;
/// The longest haiku kept, in characters.
pub const MAX_HAIKU_CHARS: usize = 400;
/// The longest three-word phrase kept, in characters (clawbucket shows 50).
pub const MAX_THREE_WORDS_CHARS: usize = 50;
/// How many haiku a fleet keeps.
pub const HAIKU_KEPT: usize = 10;

/// The scenarios a fleet plays; each is off (absent) or on with its settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenarios {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rps: Option<RpsSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haiku: Option<HaikuSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub three_words: Option<ThreeWordsSettings>,
}

impl Scenarios {
    /// Whether any scenario is on.
    pub fn any(&self) -> bool {
        self.rps.is_some() || self.haiku.is_some() || self.three_words.is_some()
    }
}

/// Rock/Paper/Scissors: the leader publishes a round every `interval_seconds`; every other
/// armed agent plays it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpsSettings {
    pub interval_seconds: u32,
    /// Moves are chosen by the agents' brains (else at random, as clawbucket does).
    #[serde(default)]
    pub brain: bool,
}

/// The leader writes a haiku through its brain every `interval_minutes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaikuSettings {
    pub interval_minutes: u32,
}

/// Every agent says what it is doing in three words, through its brain, when it comes online
/// and every `interval_minutes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreeWordsSettings {
    pub interval_minutes: u32,
}

/// What the control plane asks an agent to do for a scenario. The agent answers with an
/// event: `rps_move`, `haiku`, `three_words`, `chat` or `council_claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "play", rename_all = "snake_case")]
pub enum Play {
    /// As the leader in `epoch`: choose the move of round `round`.
    RpsLead { round: u64, epoch: u64, brain: bool },
    /// Play round `round` (the leader has moved).
    Rps { round: u64, brain: bool },
    /// As the leader in `epoch`: write a haiku.
    Haiku { epoch: u64 },
    /// Say in three words what you are doing.
    ThreeWords {},
    /// Post to the fleet's chat what the brain answers to `prompt`.
    Chime { prompt: String },
    /// Council `council` is open with these roles free: claim the ones you would take (a
    /// `council_claim`), through the brain or the agent's declared capabilities.
    Council { council: u64, roles: Vec<String>, brief: String },
}

impl Play {
    /// The play's name, as in its `play` field.
    pub fn name(&self) -> &'static str {
        match self {
            Play::RpsLead { .. } => "rps_lead",
            Play::Rps { .. } => "rps",
            Play::Haiku { .. } => "haiku",
            Play::ThreeWords {} => "three_words",
            Play::Chime { .. } => "chime",
            Play::Council { .. } => "council",
        }
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn shapes() {
        let s = Scenarios {
            rps: Some(RpsSettings { interval_seconds: 10, brain: false }),
            haiku: Some(HaikuSettings { interval_minutes: 5 }),
            three_words: None,
        };
        expect![[r#"{"rps":{"interval_seconds":10,"brain":false},"haiku":{"interval_minutes":5}}"#]]
            .assert_eq(&serde_json::to_string(&s).unwrap());
        let play = Play::RpsLead { round: 3, epoch: 2, brain: true };
        expect![[r#"{"play":"rps_lead","round":3,"epoch":2,"brain":true}"#]].assert_eq(&serde_json::to_string(&play).unwrap());
        assert_eq!(serde_json::to_value(&play).unwrap()["play"], play.name());
        assert_eq!("stone".parse::<Rps>().unwrap_err(), "unknown move 'stone' (expected rock, paper or scissors)");
        let err = serde_json::from_str::<Scenarios>(r#"{"rps":{"interval":3}}"#).unwrap_err().to_string();
        assert!(err.starts_with("unknown field `interval`"), "{err}");
    }
}

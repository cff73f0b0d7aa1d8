//! Fleet names and agent references.

use std::fmt;
use std::str::FromStr;

/// Longest fleet name.
pub const MAX_FLEET_NAME: usize = 48;

/// A fleet's name: 1–48 characters of `a-z`, `0-9`, `-` and `_`, starting with a letter or
/// digit. It appears in bus topics, directory names and client ids, so nothing else is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FleetName(String);

/// Why a name or reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("fleet name is empty")]
    Empty,
    /// The name's start (an error never echoes more of what it was given).
    #[error("fleet name '{0}' is longer than {MAX_FLEET_NAME} characters")]
    TooLong(String),
    #[error("fleet name '{0}' may only contain a-z, 0-9, '-' and '_', and must start with a letter or digit")]
    BadChar(String),
    #[error("agent '{0}' is not of the form FLEET/SLOT (e.g. squad/3)")]
    BadAgentRef(String),
}

/// At most the first 48 characters of `s`, with `…` when there were more.
fn clip(s: &str) -> String {
    match s.char_indices().nth(48) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

impl FleetName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for FleetName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_FLEET_NAME {
            return Err(NameError::TooLong(clip(s)));
        }
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        let first_ok = s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !first_ok || !s.chars().all(ok_char) {
            return Err(NameError::BadChar(s.to_owned()));
        }
        Ok(FleetName(s.to_owned()))
    }
}

impl fmt::Display for FleetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One agent: `fleet/slot`. Slots count from 0, like codeswarm's node ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentRef {
    pub fleet: FleetName,
    pub slot: u32,
}

impl FromStr for AgentRef {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        let (fleet, slot) = s.split_once('/').ok_or_else(|| NameError::BadAgentRef(clip(s)))?;
        let slot = slot.parse().map_err(|_| NameError::BadAgentRef(clip(s)))?;
        Ok(AgentRef { fleet: fleet.parse()?, slot })
    }
}

impl fmt::Display for AgentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.fleet, self.slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_names() {
        for good in ["squad", "a", "squad-2", "x_y", "0fleet"] {
            assert_eq!(good.parse::<FleetName>().unwrap().as_str(), good);
        }
        assert_eq!("".parse::<FleetName>(), Err(NameError::Empty));
        for bad in ["Squad", "-x", "_x", "a/b", "a+b", "a#", "a b", "é"] {
            assert!(matches!(bad.parse::<FleetName>(), Err(NameError::BadChar(_))), "{bad}");
        }
        assert!(matches!("a".repeat(49).parse::<FleetName>(), Err(NameError::TooLong(_))));
        let long = "a".repeat(10_000).parse::<FleetName>().unwrap_err().to_string();
        assert!(long.len() < 120 && long.contains("…"), "an error echoes a bounded part of the name: {long}");
    }

    #[test]
    fn agent_refs() {
        let a: AgentRef = "squad/3".parse().unwrap();
        assert_eq!((a.fleet.as_str(), a.slot), ("squad", 3));
        assert_eq!(a.to_string(), "squad/3");
        for bad in ["squad", "squad/", "squad/x", "/3", "squad/-1"] {
            assert!(bad.parse::<AgentRef>().is_err(), "{bad}");
        }
    }
}

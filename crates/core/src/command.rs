//! The fixed command vocabulary of the fleet bus (hatchery ADR-005). Nothing else is accepted.

use std::fmt;
use std::str::FromStr;

/// A command an agent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandName {
    /// Is the agent and its brain healthy?
    HealthCheck,
    /// Which versions does it run?
    VersionReport,
    /// Re-read its configuration (system prompt, settings) and its conversation from its workspace.
    ConfigReload,
    /// What is it doing: state, queue, uptime, resources.
    StatusReport,
}

/// The whole vocabulary, in documentation order.
pub const VOCABULARY: [CommandName; 4] =
    [CommandName::HealthCheck, CommandName::VersionReport, CommandName::ConfigReload, CommandName::StatusReport];

/// A command outside the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown command '{0}': the vocabulary is health-check, version-report, config-reload, status-report")]
pub struct UnknownCommand(pub String);

impl CommandName {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandName::HealthCheck => "health-check",
            CommandName::VersionReport => "version-report",
            CommandName::ConfigReload => "config-reload",
            CommandName::StatusReport => "status-report",
        }
    }
}

impl FromStr for CommandName {
    type Err = UnknownCommand;

    fn from_str(s: &str) -> Result<Self, UnknownCommand> {
        VOCABULARY.into_iter().find(|c| c.as_str() == s).ok_or_else(|| UnknownCommand(s.to_owned()))
    }
}

impl fmt::Display for CommandName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_is_closed() {
        for c in VOCABULARY {
            assert_eq!(c.as_str().parse::<CommandName>(), Ok(c));
        }
        for bad in ["reboot", "HEALTH-CHECK", "health_check", "", "health-check "] {
            assert_eq!(bad.parse::<CommandName>(), Err(UnknownCommand(bad.into())));
        }
    }
}

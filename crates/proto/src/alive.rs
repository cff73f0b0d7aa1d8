//! The sign of life an agent keeps in its workspace (`alive`): when its loop last turned (Unix
//! milliseconds) and whether it has reached the bus since it started, as `MS CONNECTED\n`.
//! The agent writes it on every tick and when it first connects; `clawfleet agent --health`
//! (Docker's health check) and the local backend (whether a started agent is up) read it.

/// The file's name inside the workspace.
pub const FILE: &str = "alive";

/// What the file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alive {
    pub at_ms: u128,
    pub connected: bool,
}

impl Alive {
    pub fn render(&self) -> String {
        format!("{} {}\n", self.at_ms, u8::from(self.connected))
    }

    /// `None` when the text is not such a line.
    pub fn parse(text: &str) -> Option<Alive> {
        let mut parts = text.split_whitespace();
        let at_ms = parts.next()?.parse().ok()?;
        let connected = parts.next() == Some("1");
        Some(Alive { at_ms, connected })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_what_it_writes() {
        let a = Alive { at_ms: 1_764_000_000_123, connected: true };
        assert_eq!(Alive::parse(&a.render()), Some(a));
        assert_eq!(Alive::parse("12 0"), Some(Alive { at_ms: 12, connected: false }));
        assert_eq!(Alive::parse("soon 1"), None);
        assert_eq!(Alive::parse(""), None);
    }
}

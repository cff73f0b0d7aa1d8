//! MQTT topic names of the clawfleet bus, version 1.
//!
//! Hub-and-spoke: the control plane publishes directives to one agent (`.../agents/<slot>/cmd`)
//! or to a whole fleet (`.../cmd`); each agent publishes only under its own
//! `.../agents/<slot>/`: `events` (sequenced, QoS 1) and `heartbeat` (retained).
//! Fleet names are restricted by `clawfleet-core` so they never contain `/`, `+` or `#`.

/// The root of every clawfleet topic; the version changes when payloads break.
pub const ROOT: &str = "clawfleet/v1";

/// What an agent-scoped topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Directives from the control plane to this one agent.
    Cmd,
    /// Sequenced events from the agent.
    Events,
    /// The agent's retained heartbeat (and its last will).
    Heartbeat,
}

impl Channel {
    fn as_str(self) -> &'static str {
        match self {
            Channel::Cmd => "cmd",
            Channel::Events => "events",
            Channel::Heartbeat => "heartbeat",
        }
    }
}

/// Topic of one agent's channel.
pub fn agent(fleet: &str, slot: u32, channel: Channel) -> String {
    format!("{ROOT}/fleets/{fleet}/agents/{slot}/{}", channel.as_str())
}

/// Topic on which the control plane broadcasts directives to every agent of a fleet.
pub fn fleet_cmd(fleet: &str) -> String {
    format!("{ROOT}/fleets/{fleet}/cmd")
}

/// Filter matching one channel of every agent of one fleet.
pub fn fleet_agents(fleet: &str, channel: Channel) -> String {
    format!("{ROOT}/fleets/{fleet}/agents/+/{}", channel.as_str())
}

/// Filter matching one channel of every agent of every fleet (what the control plane reads).
pub fn all_agents(channel: Channel) -> String {
    format!("{ROOT}/fleets/+/agents/+/{}", channel.as_str())
}

/// An agent-scoped topic, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTopic<'a> {
    pub fleet: &'a str,
    pub slot: u32,
    pub channel: Channel,
}

/// Parses an agent-scoped topic; `None` for anything else (fleet topics, foreign topics).
pub fn parse_agent(topic: &str) -> Option<AgentTopic<'_>> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix("/fleets/")?;
    let mut parts = rest.split('/');
    let fleet = parts.next().filter(|f| !f.is_empty())?;
    if parts.next()? != "agents" {
        return None;
    }
    let slot_str = parts.next()?;
    // Canonical decimal only: "03" or "+3" would alias another agent's topic.
    if slot_str.len() > 1 && slot_str.starts_with('0') {
        return None;
    }
    let slot = slot_str.parse().ok().filter(|_| slot_str.bytes().all(|b| b.is_ascii_digit()))?;
    let channel = match parts.next()? {
        "cmd" => Channel::Cmd,
        "events" => Channel::Events,
        "heartbeat" => Channel::Heartbeat,
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(AgentTopic { fleet, slot, channel })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_topics_round_trip() {
        for channel in [Channel::Cmd, Channel::Events, Channel::Heartbeat] {
            let t = agent("squad", 12, channel);
            assert_eq!(parse_agent(&t), Some(AgentTopic { fleet: "squad", slot: 12, channel }));
        }
        assert_eq!(agent("squad", 3, Channel::Heartbeat), "clawfleet/v1/fleets/squad/agents/3/heartbeat");
    }

    #[test]
    fn foreign_and_aliasing_topics_are_not_agent_topics() {
        for t in [
            "clawfleet/v1/fleets/squad/cmd",
            "clawfleet/v1/fleets/squad/agents/03/events",
            "clawfleet/v1/fleets/squad/agents/+3/events",
            "clawfleet/v1/fleets/squad/agents/3/events/extra",
            "clawfleet/v1/fleets//agents/3/events",
            "clawfleet/v2/fleets/squad/agents/3/events",
            "other/topic",
            "",
        ] {
            assert_eq!(parse_agent(t), None, "{t}");
        }
        assert!(parse_agent("clawfleet/v1/fleets/squad/agents/0/events").is_some());
    }
}

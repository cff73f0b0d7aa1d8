//! Who may do what on the bus.
//!
//! Two kinds of bus identity: the control plane (everything) and agents. An agent's username
//! is `agent/FLEET/SLOT`; it may publish only its own `events` and `heartbeat` topics and
//! subscribe only to its own `cmd` topic and its fleet's `cmd` topic, never with wildcards;
//! it may retain only its heartbeat, and its last will obeys the same rules.
//! A third identity, the observer, may subscribe to the whole `clawfleet/v1/` tree and never
//! publish. The embedded broker asks these functions on every connect, subscribe and publish.

use clawfleet_proto::topic::{self, Channel};

use crate::names::{AgentRef, FleetName};

/// An authenticated bus client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusIdentity {
    Control,
    /// Read-only: may subscribe to anything under `clawfleet/v1/`, never publish.
    Observer,
    Agent(AgentRef),
}

/// The bus username of an agent.
pub fn agent_username(agent: &AgentRef) -> String {
    format!("agent/{}/{}", agent.fleet, agent.slot)
}

/// The MQTT client id of an agent of one fleet incarnation: stable across the agent's
/// restarts (so its persistent session and queued directives survive), new per incarnation.
pub fn agent_client_id(agent: &AgentRef, fleet_uid: &str) -> String {
    format!("clawfleet-{}-{}-{fleet_uid}", agent.fleet, agent.slot)
}

/// The agent an agent username names, if it is one.
pub fn parse_agent_username(username: &str) -> Option<AgentRef> {
    let rest = username.strip_prefix("agent/")?;
    let (fleet, slot) = rest.split_once('/')?;
    let fleet: FleetName = fleet.parse().ok()?;
    if slot.len() > 1 && slot.starts_with('0') || !slot.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(AgentRef { fleet, slot: slot.parse().ok()? })
}

/// May `who` publish to `topic`?
pub fn may_publish(who: &BusIdentity, topic: &str) -> bool {
    match who {
        BusIdentity::Control => true,
        BusIdentity::Observer => false,
        BusIdentity::Agent(me) => {
            let f = me.fleet.as_str();
            topic == topic::agent(f, me.slot, Channel::Events) || topic == topic::agent(f, me.slot, Channel::Heartbeat)
        }
    }
}

/// May `who` publish a retained message to `topic`? An agent only its own heartbeat (which
/// says whether it is alive to whoever subscribes later); anything else retained would reach
/// every later subscriber.
pub fn may_retain(who: &BusIdentity, topic: &str) -> bool {
    match who {
        BusIdentity::Control => true,
        BusIdentity::Observer => false,
        BusIdentity::Agent(me) => topic == topic::agent(me.fleet.as_str(), me.slot, Channel::Heartbeat),
    }
}

/// May `who` connect with this last will? The broker publishes a will for the client when it
/// drops, so a will is held to the client's own publish rights, retained or not, and is
/// checked at CONNECT (a broker that checks only publishes lets wills through).
pub fn may_will(who: &BusIdentity, topic: &str, retain: bool) -> bool {
    may_publish(who, topic) && (!retain || may_retain(who, topic))
}

/// May `who` subscribe to `filter`?
pub fn may_subscribe(who: &BusIdentity, filter: &str) -> bool {
    match who {
        BusIdentity::Control => true,
        BusIdentity::Observer => filter == "clawfleet/v1/#" || filter.starts_with("clawfleet/v1/"),
        BusIdentity::Agent(me) => {
            let f = me.fleet.as_str();
            filter == topic::agent(f, me.slot, Channel::Cmd) || filter == topic::fleet_cmd(f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(s: &str) -> BusIdentity {
        BusIdentity::Agent(s.parse().unwrap())
    }

    #[test]
    fn usernames() {
        let a: AgentRef = "squad/3".parse().unwrap();
        assert_eq!(agent_username(&a), "agent/squad/3");
        assert_eq!(parse_agent_username("agent/squad/3"), Some(a));
        for bad in ["agent/squad/03", "agent/squad/x", "agent/Squad/1", "control", "agent/squad/1/2", "agent/squad/+1"] {
            assert_eq!(parse_agent_username(bad), None, "{bad}");
        }
    }

    #[test]
    fn agents_touch_only_their_own_topics() {
        let me = agent("squad/3");
        assert!(may_publish(&me, "clawfleet/v1/fleets/squad/agents/3/events"));
        assert!(may_publish(&me, "clawfleet/v1/fleets/squad/agents/3/heartbeat"));
        assert!(!may_publish(&me, "clawfleet/v1/fleets/squad/agents/4/events"));
        assert!(!may_publish(&me, "clawfleet/v1/fleets/squad/agents/3/cmd"));
        assert!(!may_publish(&me, "clawfleet/v1/fleets/squad/cmd"));
        assert!(!may_publish(&me, "clawfleet/v1/fleets/other/agents/3/events"));

        assert!(may_subscribe(&me, "clawfleet/v1/fleets/squad/agents/3/cmd"));
        assert!(may_subscribe(&me, "clawfleet/v1/fleets/squad/cmd"));
        for bad in [
            "clawfleet/v1/fleets/squad/agents/4/cmd",
            "clawfleet/v1/fleets/squad/agents/+/cmd",
            "clawfleet/v1/fleets/squad/#",
            "#",
            "clawfleet/v1/fleets/other/cmd",
            "clawfleet/v1/fleets/squad/agents/3/events",
        ] {
            assert!(!may_subscribe(&me, bad), "{bad}");
        }
        assert!(may_publish(&BusIdentity::Control, "anything") && may_subscribe(&BusIdentity::Control, "#"));
    }

    #[test]
    fn a_will_is_held_to_its_clients_publish_rights() {
        let me = agent("squad/3");
        let cases = [
            ("clawfleet/v1/fleets/squad/agents/3/heartbeat", true, true),
            ("clawfleet/v1/fleets/squad/agents/3/heartbeat", false, true),
            ("clawfleet/v1/fleets/squad/agents/3/events", false, true),
            // Retained, an event would reach every later subscriber again.
            ("clawfleet/v1/fleets/squad/agents/3/events", true, false),
            ("clawfleet/v1/fleets/other/cmd", false, false),
            ("clawfleet/v1/fleets/other/cmd", true, false),
            ("clawfleet/v1/fleets/squad/cmd", false, false),
            ("clawfleet/v1/fleets/squad/agents/4/events", false, false),
            ("clawfleet/v1/fleets/squad/agents/4/heartbeat", true, false),
        ];
        for (topic, retain, allowed) in cases {
            assert_eq!(may_will(&me, topic, retain), allowed, "{topic} retain={retain}");
        }
        assert!(may_will(&BusIdentity::Control, "clawfleet/v1/fleets/squad/cmd", true));
    }

    #[test]
    fn the_observer_reads_everything_and_writes_nothing() {
        let o = BusIdentity::Observer;
        for filter in ["clawfleet/v1/#", "clawfleet/v1/fleets/+/agents/+/events", "clawfleet/v1/fleets/squad/cmd"] {
            assert!(may_subscribe(&o, filter), "{filter}");
        }
        for filter in ["#", "$SYS/#", "other/#", "clawfleet/v2/#"] {
            assert!(!may_subscribe(&o, filter), "{filter}");
        }
        for topic in
            ["clawfleet/v1/fleets/squad/cmd", "clawfleet/v1/fleets/squad/agents/0/events", "clawfleet/v1/fleets/squad/agents/0/heartbeat"]
        {
            assert!(!may_publish(&o, topic) && !may_will(&o, topic, false) && !may_retain(&o, topic), "{topic}");
        }
    }
}

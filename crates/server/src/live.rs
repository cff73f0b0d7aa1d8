//! The live view of every agent, from its heartbeats: kept in memory (heartbeats are retained
//! on the bus, so a restarted control plane has it back within one message per agent).
//! A periodic scan turns changes of availability into `agent_state` events.

use std::collections::HashMap;
use std::sync::Mutex;

use clawfleet_core::liveness::{self, AgentState, Availability, LastBeat};
use clawfleet_proto::bus::Heartbeat;

#[derive(Debug, Clone)]
pub(crate) struct LiveAgent {
    pub hb: Heartbeat,
    pub received_ms: u64,
    /// The availability last reported as an `agent_state` event.
    reported: Option<Availability>,
}

impl LiveAgent {
    pub(crate) fn state(&self, now_ms: u64) -> AgentState {
        liveness::state(Some(LastBeat { activity: self.hb.state, received_ms: self.received_ms, interval_ms: self.hb.interval_ms }), now_ms)
    }
}

/// A change of an agent's availability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transition {
    pub fleet: String,
    pub slot: u32,
    pub state: Availability,
    pub previous: Option<Availability>,
    /// The turn the agent's last heartbeat said it was in.
    pub injection: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Live {
    agents: Mutex<HashMap<(String, u32), LiveAgent>>,
}

impl Live {
    /// An agent's heartbeat arrived; returns when its previous one did.
    pub(crate) fn heartbeat(&self, fleet: &str, slot: u32, hb: Heartbeat, now_ms: u64) -> Option<u64> {
        let mut agents = self.agents.lock().expect("not poisoned");
        match agents.get_mut(&(fleet.to_owned(), slot)) {
            Some(a) => {
                a.hb = hb;
                Some(std::mem::replace(&mut a.received_ms, now_ms))
            }
            None => {
                agents.insert((fleet.to_owned(), slot), LiveAgent { hb, received_ms: now_ms, reported: None });
                None
            }
        }
    }

    pub(crate) fn get(&self, fleet: &str, slot: u32) -> Option<LiveAgent> {
        self.agents.lock().expect("not poisoned").get(&(fleet.to_owned(), slot)).cloned()
    }

    pub(crate) fn state(&self, fleet: &str, slot: u32, now_ms: u64) -> AgentState {
        self.get(fleet, slot).map_or(AgentState::Pending, |a| a.state(now_ms))
    }

    /// The turn the agent's last heartbeat said it was in.
    pub(crate) fn current_injection(&self, fleet: &str, slot: u32) -> Option<String> {
        self.get(fleet, slot).and_then(|a| a.hb.current_injection)
    }

    /// Whether directives sent to the agent now would reach it.
    pub(crate) fn reachable(&self, fleet: &str, slot: u32, now_ms: u64) -> bool {
        matches!(self.state(fleet, slot, now_ms), AgentState::Starting | AgentState::Idle | AgentState::Busy)
    }

    /// Availability changes since the last scan.
    pub(crate) fn scan(&self, now_ms: u64) -> Vec<Transition> {
        let mut agents = self.agents.lock().expect("not poisoned");
        let mut out = Vec::new();
        for ((fleet, slot), a) in agents.iter_mut() {
            let Some(now) = a.state(now_ms).availability() else { continue };
            if Some(now) != a.reported {
                let injection = a.hb.current_injection.clone();
                out.push(Transition { fleet: fleet.clone(), slot: *slot, state: now, previous: a.reported, injection });
                a.reported = Some(now);
            }
        }
        out.sort_by(|a, b| (&a.fleet, a.slot).cmp(&(&b.fleet, b.slot)));
        out
    }

    pub(crate) fn forget_fleet(&self, fleet: &str) {
        self.agents.lock().expect("not poisoned").retain(|(f, _), _| f != fleet);
    }

    /// Every agent's last heartbeat, for metrics.
    pub(crate) fn samples(&self) -> Vec<(String, u32, Heartbeat)> {
        self.agents.lock().expect("not poisoned").iter().map(|((f, s), a)| (f.clone(), *s, a.hb.clone())).collect()
    }

    /// Counts of agents by state, for metrics.
    pub(crate) fn counts(&self, now_ms: u64) -> HashMap<&'static str, u64> {
        let agents = self.agents.lock().expect("not poisoned");
        let mut counts = HashMap::new();
        for a in agents.values() {
            *counts.entry(a.state(now_ms).as_str()).or_insert(0) += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use clawfleet_proto::bus::{AgentActivity, BrainStatus};

    use super::*;

    fn hb(state: AgentActivity) -> Heartbeat {
        Heartbeat {
            epoch: "e".into(),
            seq: 0,
            at: "t".into(),
            state,
            interval_ms: 1000,
            version: "v".into(),
            fleet_version: "1".into(),
            pid: 1,
            hostname: "h".into(),
            uptime_s: 0,
            rss_bytes: 0,
            load1: 0.0,
            brain: BrainStatus { spec: "echo".into(), healthy: true, detail: None },
            current_injection: None,
            queued: 0,
        }
    }

    #[test]
    fn transitions_are_reported_once() {
        let live = Live::default();
        live.heartbeat("s", 0, hb(AgentActivity::Idle), 0);
        assert_eq!(
            live.scan(10),
            vec![Transition { fleet: "s".into(), slot: 0, state: Availability::Online, previous: None, injection: None }]
        );
        live.heartbeat("s", 0, hb(AgentActivity::Busy), 500);
        assert_eq!(live.scan(600), vec![], "idle to busy is not an availability change");
        assert_eq!(
            live.scan(3501),
            vec![Transition {
                fleet: "s".into(),
                slot: 0,
                state: Availability::Lost,
                previous: Some(Availability::Online),
                injection: None
            }]
        );
        assert!(!live.reachable("s", 0, 3501));
        live.heartbeat("s", 0, hb(AgentActivity::Idle), 4000);
        assert_eq!(live.scan(4000)[0].state, Availability::Online);
        live.heartbeat("s", 0, hb(AgentActivity::Disconnected), 4100);
        assert_eq!(live.scan(4100)[0].state, Availability::Lost);
    }
}

//! Whether an agent is alive, from its last heartbeat and the time now.

use clawfleet_proto::bus::AgentActivity;

/// Heartbeats an agent may miss before it is seen as lost.
pub const MISSED_BEATS_FOR_LOST: u64 = 3;

/// What the control plane knows of an agent's last heartbeat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LastBeat {
    pub activity: AgentActivity,
    /// When it arrived, in the caller's clock (milliseconds).
    pub received_ms: u64,
    pub interval_ms: u64,
}

/// An agent's state as the control plane reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// Desired, but no heartbeat yet.
    Pending,
    Starting,
    Idle,
    Busy,
    Stopping,
    Stopped,
    /// Its connection dropped, or it missed [`MISSED_BEATS_FOR_LOST`] heartbeats.
    Lost,
}

impl AgentState {
    pub const ALL: [AgentState; 7] = [
        AgentState::Pending,
        AgentState::Starting,
        AgentState::Idle,
        AgentState::Busy,
        AgentState::Stopping,
        AgentState::Stopped,
        AgentState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Pending => "pending",
            AgentState::Starting => "starting",
            AgentState::Idle => "idle",
            AgentState::Busy => "busy",
            AgentState::Stopping => "stopping",
            AgentState::Stopped => "stopped",
            AgentState::Lost => "lost",
        }
    }

    /// Able to take work now.
    pub fn is_ready(self) -> bool {
        matches!(self, AgentState::Idle | AgentState::Busy)
    }
}

/// An agent's availability, as `agent_state` events report it: not every idle/busy flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Starting,
    /// Idle or busy: it takes directives.
    Online,
    Stopping,
    Stopped,
    Lost,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Starting => "starting",
            Availability::Online => "online",
            Availability::Stopping => "stopping",
            Availability::Stopped => "stopped",
            Availability::Lost => "lost",
        }
    }
}

impl AgentState {
    /// Its availability (`None` while no heartbeat came).
    pub fn availability(self) -> Option<Availability> {
        Some(match self {
            AgentState::Pending => return None,
            AgentState::Starting => Availability::Starting,
            AgentState::Idle | AgentState::Busy => Availability::Online,
            AgentState::Stopping => Availability::Stopping,
            AgentState::Stopped => Availability::Stopped,
            AgentState::Lost => Availability::Lost,
        })
    }
}

/// Classifies an agent at `now_ms`.
pub fn state(last: Option<LastBeat>, now_ms: u64) -> AgentState {
    let Some(beat) = last else { return AgentState::Pending };
    let overdue = now_ms.saturating_sub(beat.received_ms) > MISSED_BEATS_FOR_LOST * beat.interval_ms.max(1);
    match beat.activity {
        AgentActivity::Disconnected => AgentState::Lost,
        AgentActivity::Stopped => AgentState::Stopped,
        _ if overdue => AgentState::Lost,
        AgentActivity::Starting => AgentState::Starting,
        AgentActivity::Idle => AgentState::Idle,
        AgentActivity::Busy => AgentState::Busy,
        AgentActivity::Stopping => AgentState::Stopping,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_is_what_events_report() {
        let shown: Vec<Option<&str>> = AgentState::ALL.iter().map(|s| s.availability().map(Availability::as_str)).collect();
        assert_eq!(shown, [None, Some("starting"), Some("online"), Some("online"), Some("stopping"), Some("stopped"), Some("lost")]);
    }

    fn beat(activity: AgentActivity, received_ms: u64) -> Option<LastBeat> {
        Some(LastBeat { activity, received_ms, interval_ms: 1000 })
    }

    #[test]
    fn lost_after_three_missed_beats() {
        assert_eq!(state(None, 10), AgentState::Pending);
        assert_eq!(state(beat(AgentActivity::Idle, 1000), 4000), AgentState::Idle);
        assert_eq!(state(beat(AgentActivity::Idle, 1000), 4001), AgentState::Lost);
        assert_eq!(state(beat(AgentActivity::Busy, 1000), 3000), AgentState::Busy);
        assert_eq!(state(beat(AgentActivity::Disconnected, 1000), 1000), AgentState::Lost);
        assert_eq!(state(beat(AgentActivity::Stopped, 0), 1_000_000), AgentState::Stopped);
        // A clock that went backwards never marks an agent lost.
        assert_eq!(state(beat(AgentActivity::Idle, 9000), 10), AgentState::Idle);
    }
}

//! The reconcile plan: which instances to start, stop and forget so that what runs for a fleet
//! matches what is desired. Level-triggered: computed afresh from the desired state and what
//! the backend observed, every pass, never told what changed. Backends only carry it out.
//!
//! Rules, slot by slot:
//! - a slot at or above `replicas` is emptied (`Stop` its live instances, `Forget` dead ones);
//! - a wanted slot with no live instance is started, after a crash only once its backoff (0.5 s
//!   doubling to 30 s, reset by 30 s of good running) has passed;
//! - a live instance whose configuration key is not the desired one is replaced (stopped, then
//!   started anew on a later pass), with at most `max_unavailable` wanted slots not running at
//!   once; an outdated instance that is not running anyway is replaced at once;
//! - a slot with two live instances (a backend mid-replacement) keeps the desired one;
//! - a vacated slot (its agent moved to another rack) is emptied like an excess one and never
//!   started, however many replicas are wanted.
//!
//! [`Memory`] is what the reconciler keeps of a fleet between passes: which live instances it
//! saw, which it stopped on purpose, and each slot's recent crashes. An instance that ends
//! without being stopped is a crash.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A digest of one agent's configuration: an instance whose key differs from the desired one
/// runs an outdated configuration and is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigKey(pub u64);

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for ConfigKey {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<ConfigKey, Self::Err> {
        u64::from_str_radix(s, 16).map(ConfigKey)
    }
}

/// Whether an instance's process (container, job) runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceState {
    Starting,
    Running,
    /// Exited; its backend starts it again by itself (Swarm does).
    Restarting {
        last_exit: String,
    },
    Stopping,
    /// Exited; the plan decides when a successor starts.
    Exited {
        last_exit: String,
    },
    /// Could not be started; the reason is shown to the operator.
    Failed(String),
}

impl InstanceState {
    pub fn as_str(&self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Restarting { .. } => "restarting",
            InstanceState::Stopping => "stopping",
            InstanceState::Exited { .. } => "exited",
            InstanceState::Failed(_) => "failed",
        }
    }

    /// Whether it runs or will run by itself (anything but `Exited` and `Failed`).
    pub fn is_live(&self) -> bool {
        !matches!(self, InstanceState::Exited { .. } | InstanceState::Failed(_))
    }
}

/// One agent instance as its backend observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub slot: u32,
    /// The backend's handle on it (a pid, a job, a task id), unique among the fleet's.
    pub id: String,
    /// The configuration it runs (`None`: the backend does not say).
    pub key: Option<ConfigKey>,
    pub state: InstanceState,
    /// Times the slot's agent was started again after it ended.
    pub restarts: u32,
    /// The machine it runs on, where the backend has several (a Swarm node, a Slurm node).
    pub node: Option<String>,
}

/// How a fleet's agents are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The most wanted slots that may be without a running agent while outdated ones are
    /// replaced (at least 1).
    pub max_unavailable: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { max_unavailable: 1 }
    }
}

/// Why an instance is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Its slot is at or above the replica count.
    Excess,
    /// It runs an outdated configuration.
    Outdated,
    /// Its slot has another live instance, with the desired configuration.
    Duplicate,
    /// Its slot is vacated: its agent lives on another rack now.
    Vacated,
}

/// One step for a backend to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a new instance of the slot, with the desired configuration.
    Start { slot: u32 },
    /// Stop this instance (gracefully, then by force).
    Stop { slot: u32, instance: String, why: StopReason },
    /// Drop the record of an instance that ended.
    Forget { slot: u32, instance: String },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Start { slot } => write!(f, "start {slot}"),
            Action::Stop { slot, instance, why } => write!(f, "stop {slot} ({instance}, {why:?})"),
            Action::Forget { slot, instance } => write!(f, "forget {slot} ({instance})"),
        }
    }
}

/// What to do now, and when to look again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Nothing more can be done before this many milliseconds (a crashed slot's backoff).
    pub requeue_after_ms: Option<u64>,
}

/// The shortest wait before a crashed slot starts again; it doubles with each crash.
pub const MIN_BACKOFF_MS: u64 = 500;
/// The longest wait before a crashed slot starts again.
pub const MAX_BACKOFF_MS: u64 = 30_000;
/// An instance that ran this long before it ended resets its slot's backoff.
pub const STABLE_AFTER_MS: u64 = 30_000;

/// The wait before starting a slot after its `crashes`-th crash in a row.
pub fn backoff_ms(crashes: u32) -> u64 {
    match crashes {
        0 => 0,
        n => MIN_BACKOFF_MS.saturating_mul(1 << (n - 1).min(16)).min(MAX_BACKOFF_MS),
    }
}

/// What the reconciler keeps of one fleet between passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    slots: BTreeMap<u32, SlotMemory>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SlotMemory {
    /// Live instances seen, and when each was first seen.
    live: BTreeMap<String, u64>,
    /// Instances this plan stopped: their end is no crash.
    stopped: BTreeSet<String>,
    /// Dead instances already counted as crashes.
    counted: BTreeSet<String>,
    /// Crashes in a row.
    crashes: u32,
    crashed_at_ms: u64,
}

impl SlotMemory {
    fn crash(&mut self, ran_ms: Option<u64>, now_ms: u64) {
        self.crashes = if ran_ms.is_some_and(|r| r >= STABLE_AFTER_MS) { 1 } else { self.crashes.saturating_add(1) };
        self.crashed_at_ms = now_ms;
    }

    /// Learns what the slot holds now: instances that ended without being stopped are crashes.
    fn observe(&mut self, instances: &[&Instance], now_ms: u64) {
        let live: BTreeSet<&str> = instances.iter().filter(|i| i.state.is_live()).map(|i| i.id.as_str()).collect();
        let ended: Vec<(String, u64)> =
            self.live.iter().filter(|(id, _)| !live.contains(id.as_str())).map(|(id, at)| (id.clone(), *at)).collect();
        for (id, seen_at) in ended {
            self.live.remove(&id);
            if !self.stopped.remove(&id) {
                self.crash(Some(now_ms.saturating_sub(seen_at)), now_ms);
            }
            self.counted.insert(id);
        }
        for i in instances.iter().filter(|i| !i.state.is_live()) {
            // Dead and never seen live (it could not be started): a crash too.
            if !self.counted.contains(&i.id) && !self.stopped.remove(&i.id) {
                self.crash(None, now_ms);
            }
            self.counted.insert(i.id.clone());
        }
        for id in live {
            self.live.entry(id.to_owned()).or_insert(now_ms);
        }
        // Only what is still observed needs remembering.
        self.counted.retain(|id| instances.iter().any(|i| &i.id == id));
        self.stopped.retain(|id| instances.iter().any(|i| &i.id == id));
    }

    fn is_empty(&self) -> bool {
        self.live.is_empty() && self.stopped.is_empty() && self.counted.is_empty() && self.crashes == 0
    }
}

impl Memory {
    /// Crashes in a row of a slot, as counted so far.
    pub fn crashes(&self, slot: u32) -> u32 {
        self.slots.get(&slot).map_or(0, |s| s.crashes)
    }
}

/// Plans one pass over a fleet: `desired[slot]` is each wanted slot's configuration key, or
/// `None` for a vacated one (its length is the replica count), `observed` what the backend
/// reports, `now_ms` a monotonic clock. Updates `memory` with what it saw and what it stops.
pub fn plan(memory: &mut Memory, desired: &[Option<ConfigKey>], observed: &[Instance], policy: Policy, now_ms: u64) -> Plan {
    let replicas = u32::try_from(desired.len()).unwrap_or(u32::MAX);
    let mut by_slot: BTreeMap<u32, Vec<&Instance>> = BTreeMap::new();
    for i in observed {
        by_slot.entry(i.slot).or_default().push(i);
    }
    let slots: BTreeSet<u32> = by_slot.keys().copied().chain(memory.slots.keys().copied()).chain(0..replicas).collect();
    for &slot in &slots {
        let seen = by_slot.get(&slot).map(Vec::as_slice).unwrap_or_default();
        memory.slots.entry(slot).or_default().observe(seen, now_ms);
    }

    let mut out = Plan::default();
    let stop = |memory: &mut Memory, out: &mut Plan, i: &Instance, why| {
        memory.slots.entry(i.slot).or_default().stopped.insert(i.id.clone());
        out.actions.push(Action::Stop { slot: i.slot, instance: i.id.clone(), why });
    };
    // Wanted slots without a running instance.
    let mut unavailable = (0..replicas)
        .filter(|&s| desired[s as usize].is_some())
        .filter(|s| !by_slot.get(s).is_some_and(|is| is.iter().any(|i| i.state == InstanceState::Running)))
        .count();
    let mut outdated = Vec::new();
    for &slot in &slots {
        let instances = by_slot.get(&slot).map(Vec::as_slice).unwrap_or_default();
        let (live, dead): (Vec<&Instance>, Vec<&Instance>) = instances.iter().partition(|i| i.state.is_live());
        let forget_dead = |out: &mut Plan| {
            out.actions.extend(dead.iter().map(|i| Action::Forget { slot, instance: i.id.clone() }));
        };
        let Some(want) = desired.get(slot as usize).copied().flatten() else {
            let why = if slot >= replicas { StopReason::Excess } else { StopReason::Vacated };
            for i in live.iter().filter(|i| i.state != InstanceState::Stopping) {
                stop(memory, &mut out, i, why);
            }
            forget_dead(&mut out);
            continue;
        };
        let active: Vec<&Instance> = live.iter().copied().filter(|i| i.state != InstanceState::Stopping).collect();
        let current: Vec<&Instance> = active.iter().copied().filter(|i| i.key.is_none_or(|k| k == want)).collect();
        if let Some(keep) = current.iter().find(|i| i.state == InstanceState::Running).or(current.first()) {
            for i in active.iter().filter(|i| i.id != keep.id) {
                let why = if current.iter().any(|c| c.id == i.id) { StopReason::Duplicate } else { StopReason::Outdated };
                stop(memory, &mut out, i, why);
            }
            continue;
        }
        if !active.is_empty() {
            // Only outdated instances: replaced within the budget, after the slots before.
            outdated.push(active);
            continue;
        }
        if !live.is_empty() {
            // Being stopped: its successor starts once it is gone.
            continue;
        }
        let m = &memory.slots[&slot];
        let ready_at = m.crashed_at_ms.saturating_add(backoff_ms(m.crashes));
        if m.crashes > 0 && now_ms < ready_at {
            let wait = ready_at - now_ms;
            out.requeue_after_ms = Some(out.requeue_after_ms.map_or(wait, |w| w.min(wait)));
            continue;
        }
        forget_dead(&mut out);
        out.actions.push(Action::Start { slot });
    }
    for active in outdated {
        let running = active.iter().any(|i| i.state == InstanceState::Running);
        if running && unavailable >= policy.max_unavailable.max(1) as usize {
            continue;
        }
        if running {
            unavailable += 1;
        }
        for i in active {
            stop(memory, &mut out, i, StopReason::Outdated);
        }
    }
    memory.slots.retain(|&slot, m| slot < replicas || !m.is_empty() || by_slot.contains_key(&slot));
    out
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use expect_test::{Expect, expect};

    use super::*;

    /// An instance from `"slot:id:key:state"` (key `-` for none; state `S` starting, `R`
    /// running, `T` stopping, `X` exited, `F` failed).
    fn instance(spec: &str) -> Instance {
        let f: Vec<&str> = spec.split(':').collect();
        let state = match f[3] {
            "S" => InstanceState::Starting,
            "R" => InstanceState::Running,
            "T" => InstanceState::Stopping,
            "X" => InstanceState::Exited { last_exit: "exit status: 1".into() },
            "F" => InstanceState::Failed("cannot run".into()),
            other => panic!("state {other}"),
        };
        Instance {
            slot: f[0].parse().unwrap(),
            id: f[1].into(),
            key: (f[2] != "-").then(|| ConfigKey(f[2].parse().unwrap())),
            state,
            restarts: 0,
            node: None,
        }
    }

    /// Plans each pass of `passes` (`(now_ms, instances)`) in turn, with one memory.
    fn passes(desired: &[u64], max_unavailable: u32, passes: &[(u64, &[&str])]) -> String {
        // Key 0: a vacated slot.
        let desired: Vec<Option<ConfigKey>> = desired.iter().map(|&k| (k != 0).then_some(ConfigKey(k))).collect();
        let mut memory = Memory::default();
        let mut text = String::new();
        for (now, instances) in passes {
            let observed: Vec<Instance> = instances.iter().map(|s| instance(s)).collect();
            let p = plan(&mut memory, &desired, &observed, Policy { max_unavailable }, *now);
            let actions: Vec<String> = p.actions.iter().map(ToString::to_string).collect();
            write!(text, "{now}: {}", if actions.is_empty() { "-".into() } else { actions.join(", ") }).unwrap();
            if let Some(w) = p.requeue_after_ms {
                write!(text, "; again in {w} ms").unwrap();
            }
            text.push('\n');
        }
        text
    }

    fn check(desired: &[u64], max_unavailable: u32, steps: &[(u64, &[&str])], expected: Expect) {
        expected.assert_eq(&passes(desired, max_unavailable, steps));
    }

    #[test]
    fn scale_up_and_down() {
        check(
            &[1, 1, 1],
            1,
            &[(0, &[])],
            expect![[r#"
            0: start 0, start 1, start 2
        "#]],
        );
        check(
            &[1, 1, 1],
            1,
            &[(0, &["0:a:1:R", "2:c:1:S"])],
            expect![[r#"
            0: start 1
        "#]],
        );
        check(
            &[1],
            1,
            &[(0, &["0:a:1:R", "1:b:1:R", "5:c:1:T", "6:d:1:X"])],
            expect![[r#"
            0: stop 1 (b, Excess), forget 6 (d)
        "#]],
        );
        check(
            &[],
            1,
            &[(0, &["0:a:1:S"])],
            expect![[r#"
            0: stop 0 (a, Excess)
        "#]],
        );
        check(
            &[1, 1],
            1,
            &[(0, &["1:b:1:R", "0:a:1:R"])],
            expect![[r#"
            0: -
        "#]],
        );
    }

    #[test]
    fn a_changed_configuration_is_rolled_out_within_max_unavailable() {
        let old: &[&str] = &["0:a:1:R", "1:b:1:R", "2:c:1:R", "3:d:1:R"];
        check(
            &[2, 2, 2, 2],
            1,
            &[(0, old)],
            expect![[r#"
            0: stop 0 (a, Outdated)
        "#]],
        );
        check(
            &[2, 2, 2, 2],
            2,
            &[(0, old)],
            expect![[r#"
            0: stop 0 (a, Outdated), stop 1 (b, Outdated)
        "#]],
        );
        // One slot already down (starting): with max 1, nothing more goes.
        check(
            &[2, 2, 2, 2],
            1,
            &[(0, &["0:a:2:S", "1:b:1:R", "2:c:1:R", "3:d:1:R"])],
            expect![[r#"
            0: -
        "#]],
        );
        check(
            &[2, 2, 2, 2],
            2,
            &[(0, &["0:a:2:S", "1:b:1:R", "2:c:1:R", "3:d:1:R"])],
            expect![[r#"
            0: stop 1 (b, Outdated)
        "#]],
        );
        // A whole rollout, pass by pass: stopped, gone, started, running, next.
        check(
            &[2, 2],
            1,
            &[
                (0, &["0:a:1:R", "1:b:1:R"]),
                (1, &["0:a:1:T", "1:b:1:R"]),
                (2, &["1:b:1:R"]),
                (3, &["0:e:2:S", "1:b:1:R"]),
                (4, &["0:e:2:R", "1:b:1:R"]),
                (5, &["0:e:2:R", "1:b:1:T"]),
                (6, &["0:e:2:R"]),
                (7, &["0:e:2:R", "1:f:2:R"]),
            ],
            expect![[r#"
                0: stop 0 (a, Outdated)
                1: -
                2: start 0
                3: -
                4: stop 1 (b, Outdated)
                5: -
                6: start 1
                7: -
            "#]],
        );
        // An outdated instance that does not run anyway is replaced at once, whatever the budget.
        check(
            &[2, 2],
            1,
            &[(0, &["0:a:1:S", "1:b:1:S"])],
            expect![[r#"
            0: stop 0 (a, Outdated), stop 1 (b, Outdated)
        "#]],
        );
        // Two live instances of a slot: the desired one stays.
        check(
            &[2],
            1,
            &[(0, &["0:a:1:R", "0:b:2:S"]), (1, &["0:b:2:R", "0:c:2:R"])],
            expect![[r#"
            0: stop 0 (a, Outdated)
            1: stop 0 (c, Duplicate)
        "#]],
        );
        // A backend that does not report keys (Swarm) is never asked to replace anything.
        check(
            &[2],
            1,
            &[(0, &["0:a:-:R"])],
            expect![[r#"
            0: -
        "#]],
        );
    }

    #[test]
    fn a_crashed_slot_restarts_with_backoff() {
        check(
            &[1],
            1,
            &[
                (0, &["0:a:1:R"]),
                // a ends unasked: its successor waits 500 ms, the next one twice that, ...
                (1_000, &["0:a:1:X"]),
                (1_500, &["0:a:1:X"]),
                (1_600, &["0:b:1:R"]),
                (1_700, &["0:b:1:X"]),
                (2_700, &["0:b:1:X"]),
                // c could not even start.
                (2_800, &["0:c:1:F"]),
                (4_800, &["0:c:1:F"]),
                (4_900, &["0:d:1:R"]),
                // d ran for more than 30 s before it vanished: its crash counts as the first.
                (40_000, &[]),
            ],
            expect![[r#"
                0: -
                1000: -; again in 500 ms
                1500: forget 0 (a), start 0
                1600: -
                1700: -; again in 1000 ms
                2700: forget 0 (b), start 0
                2800: -; again in 2000 ms
                4800: forget 0 (c), start 0
                4900: -
                40000: -; again in 500 ms
            "#]],
        );
        assert_eq!((backoff_ms(1), backoff_ms(3), backoff_ms(7), backoff_ms(100)), (500, 2_000, 30_000, 30_000));
    }

    #[test]
    fn what_the_plan_stops_is_no_crash() {
        check(
            &[2],
            1,
            &[(0, &["0:a:1:R"]), (1, &["0:a:1:T"]), (2, &["0:a:1:X"]), (3, &["0:b:2:R"])],
            expect![[r#"
                0: stop 0 (a, Outdated)
                1: -
                2: forget 0 (a), start 0
                3: -
            "#]],
        );
        check(
            &[1],
            1,
            &[(0, &["0:a:1:R", "1:b:1:R"]), (1, &["0:a:1:R"]), (2, &["0:a:1:R"])],
            expect![[r#"
            0: stop 1 (b, Excess)
            1: -
            2: -
        "#]],
        );
    }

    #[test]
    fn a_vacated_slot_is_emptied_and_never_started() {
        check(
            &[1, 0, 1],
            1,
            &[(0, &["0:a:1:R", "1:b:1:R"]), (1, &["0:a:1:R", "1:b:1:X"]), (2, &["0:a:1:R"])],
            expect![[r#"
            0: stop 1 (b, Vacated), start 2
            1: forget 1 (b), start 2
            2: start 2
        "#]],
        );
        // It counts for no budget: the outdated slots are replaced as if it were not there.
        check(
            &[0, 2, 2],
            1,
            &[(0, &["1:b:1:R", "2:c:1:R"])],
            expect![[r#"
            0: stop 1 (b, Outdated)
        "#]],
        );
    }

    #[test]
    fn memory_forgets_slots_that_are_gone() {
        let mut memory = Memory::default();
        let key = [Some(ConfigKey(1))];
        plan(&mut memory, &key, &[instance("0:a:1:R"), instance("3:b:1:R")], Policy::default(), 0);
        plan(&mut memory, &key, &[instance("0:a:1:R")], Policy::default(), 1);
        assert_eq!(memory.slots.keys().copied().collect::<Vec<_>>(), vec![0]);
        assert_eq!(memory.crashes(0), 0);
        assert_eq!("00000000000000ff".parse::<ConfigKey>().unwrap(), ConfigKey(255));
        assert_eq!(ConfigKey(255).to_string(), "00000000000000ff");
    }
}

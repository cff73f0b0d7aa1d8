//! The conformance suite every backend passes, driven through [`converge`] as the control
//! plane drives it: launch, idempotent convergence, scale up and down keeping the agents that
//! stay, restart after a crash, a rolling replacement on a changed configuration (one slot
//! down at most), a canary that moves one agent and holds there, its abort, remove. "Running" is checked twice:
//! by the backend's own report and by each agent's heartbeat on the bus, so a backend that
//! starts processes that cannot reach the bus fails.
//!
//! A backend's test calls [`run`] with a [`Harness`]: a deployment template whose endpoints
//! point at a bus the test started, the control plane's bus login, and a way to crash an agent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clawfleet_bus::client::{self, BusEvent, ClientConfig};
use clawfleet_proto::bus::{self as wire, AgentActivity, Heartbeat};
use clawfleet_proto::topic::{self, Channel};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{Backend, Deployment, Instance, InstanceState, Memory, converge};

/// Crashes an agent the way a fault would.
#[async_trait]
pub trait Chaos: Send + Sync {
    async fn kill(&self, instance: &Instance);
}

/// What the suite needs from a backend's test.
pub struct Harness {
    /// The fleet to launch (its `replicas` is ignored); agents should use the `echo` brain.
    pub deployment: Deployment,
    /// The control plane's bus login: host, port, username, password.
    pub bus_login: (String, u16, Option<String>, Option<String>),
    pub chaos: Arc<dyn Chaos>,
    /// How long each step may take.
    pub step_timeout: Duration,
}

struct Watcher {
    rx: mpsc::Receiver<BusEvent>,
    /// slot -> its latest heartbeat and when it arrived
    latest: HashMap<u32, (Heartbeat, Instant)>,
}

impl Watcher {
    fn drain(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            if let BusEvent::Message { topic, payload } = ev
                && let (Some(t), Ok(hb)) = (topic::parse_agent(&topic), wire::decode_heartbeat(&payload))
            {
                self.latest.insert(t.slot, (hb, Instant::now()));
            }
        }
    }

    fn idle(&self, slot: u32) -> bool {
        self.latest.get(&slot).is_some_and(|(hb, _)| hb.state == AgentActivity::Idle)
    }

    /// An idle heartbeat from an agent runtime that started after `since`.
    fn idle_since(&self, slot: u32, since: Instant) -> bool {
        self.latest.get(&slot).is_some_and(|(hb, at)| {
            hb.state == AgentActivity::Idle
                && *at > since
                && Duration::from_secs(hb.uptime_s) <= at.duration_since(since) + Duration::from_secs(1)
        })
    }
}

/// Runs the whole suite; the error names the step that failed and what was seen.
pub async fn run(backend: Arc<dyn Backend>, harness: Harness) -> Result<(), String> {
    let (host, port, user, pass) = harness.bus_login.clone();
    let mut cfg = ClientConfig::new(host, port, format!("conformance-{}", harness.deployment.uid));
    cfg.username = user;
    cfg.password = pass;
    cfg.clean_session = true;
    cfg.subscriptions = vec![topic::fleet_agents(harness.deployment.fleet.as_str(), Channel::Heartbeat)];
    let (_bus, rx) = client::connect(cfg);
    let mut watcher = Watcher { rx, latest: HashMap::new() };
    let t = harness.step_timeout;
    let with = |n: u32| Deployment { replicas: n, ..harness.deployment.clone() };
    let mut fleet = Driver { backend: &*backend, memory: Memory::default(), epoch: Instant::now() };

    // 1. Launch three.
    fleet.step(&with(3)).await.map_err(|e| format!("converge(3): {e}"))?;
    let first = fleet.wait_running(&mut watcher, &with(3), t, "launch 3").await?;

    // 2. Converging on the same state again changes nothing.
    fleet.step(&with(3)).await.map_err(|e| format!("converge(3) again: {e}"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.step(&with(3)).await.map_err(|e| format!("converge(3) again: {e}"))?;
    let again = instances(&fleet.observe(&with(3)).await?);
    if again != first {
        return Err(format!("converging on the same deployment replaced agents: {first:?} became {again:?}"));
    }

    // 3. Scale up: the first three stay.
    fleet.step(&with(5)).await.map_err(|e| format!("converge(5): {e}"))?;
    let five = fleet.wait_running(&mut watcher, &with(5), t, "scale to 5").await?;
    for (slot, inst) in &first {
        if five.get(slot) != Some(inst) {
            return Err(format!("scaling up replaced agent {slot}: {inst:?} became {:?}", five.get(slot)));
        }
    }

    // 4. Scale down: slots 0 and 1 stay, the rest go.
    let deadline = Instant::now() + t;
    loop {
        fleet.step(&with(2)).await.map_err(|e| format!("converge(2): {e}"))?;
        let now = instances(&fleet.observe(&with(2)).await?);
        if now.keys().copied().collect::<Vec<_>>() == vec![0, 1] {
            if now.get(&0) != first.get(&0) || now.get(&1) != first.get(&1) {
                return Err(format!("scaling down replaced agents that stay: {first:?} became {now:?}"));
            }
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("scale to 2: still observed slots {:?} after {t:?}", now.keys().collect::<Vec<_>>()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 5. A crashed agent is started again, in the same slot.
    let victim = fleet.observe(&with(2)).await?.into_iter().find(|r| r.slot == 1 && r.state.is_live()).ok_or("slot 1 vanished")?;
    let killed_at = Instant::now();
    harness.chaos.kill(&victim).await;
    let deadline = Instant::now() + t;
    loop {
        fleet.step(&with(2)).await.map_err(|e| format!("converge(2): {e}"))?;
        let replicas = fleet.observe(&with(2)).await?;
        let one = replicas.iter().find(|r| r.slot == 1 && r.state.is_live());
        watcher.drain();
        let restarted = one.is_some_and(|r| r.state == InstanceState::Running && r.restarts > victim.restarts);
        if restarted && watcher.idle_since(1, killed_at) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("a killed agent was not restarted in {t:?}: now {one:?}, before {victim:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 6. A changed configuration replaces every agent, never more than one slot down at once
    //    (the default max_unavailable), and each new agent heartbeats the new version.
    let before = instances(&fleet.observe(&with(2)).await?);
    let next = Deployment { version: format!("{}-next", harness.deployment.version), ..with(2) };
    let rolled_at = Instant::now();
    let deadline = rolled_at + 2 * t;
    loop {
        fleet.step(&next).await.map_err(|e| format!("rollout: {e}"))?;
        let replicas = fleet.observe(&next).await?;
        watcher.drain();
        let running = |slot: u32| replicas.iter().any(|r| r.slot == slot && r.state == InstanceState::Running);
        if !running(0) && !running(1) {
            return Err(format!("rollout: both slots were down at once: {replicas:?}"));
        }
        let now = instances(&replicas);
        let replaced = (0..2).all(|s| now.get(&s).is_some_and(|i| Some(i) != before.get(&s)) && running(s));
        let new_version = (0..2)
            .all(|s| watcher.idle_since(s, rolled_at) && watcher.latest.get(&s).is_some_and(|(hb, _)| hb.fleet_version == next.version));
        if replaced && new_version {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("rollout: not done after {:?}: {replicas:?}, before {before:?}", 2 * t));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 7. A canary: one agent moves to another version, the other stays as it was (the plan
    //    moves slot 0; a backend that rolls out by itself moves one of its choosing).
    let before = instances(&fleet.observe(&next).await?);
    let version = format!("{}-canary", next.version);
    let canary = match backend.rollout() {
        crate::Rollout::Planned => crate::Canary { slots: vec![0], count: None, version: version.clone(), image: None },
        crate::Rollout::Native => crate::Canary { slots: vec![], count: Some(1), version: version.clone(), image: None },
    };
    let with_canary = Deployment { canary: Some(canary), ..next.clone() };
    let on = |watcher: &Watcher, slot: u32, version: &str, since: Instant| {
        watcher.idle_since(slot, since) && watcher.latest.get(&slot).is_some_and(|(hb, _)| hb.fleet_version == version)
    };
    let started = Instant::now();
    let deadline = started + t;
    let moved = loop {
        fleet.step(&with_canary).await.map_err(|e| format!("canary: {e}"))?;
        let now = instances(&fleet.observe(&with_canary).await?);
        watcher.drain();
        let moved: Vec<u32> = (0..2).filter(|&s| now.get(&s) != before.get(&s)).collect();
        if moved.len() > 1 {
            return Err(format!("canary: both agents were replaced: {before:?} became {now:?}"));
        }
        if let [slot] = moved[..]
            && now.contains_key(&slot)
            && on(&watcher, slot, &version, started)
        {
            break slot;
        }
        if Instant::now() > deadline {
            return Err(format!("canary: no agent on {version} after {t:?}: {now:?}, before {before:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // It stays so: the other agent is not replaced while the canary runs.
    let other = 1 - moved;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        fleet.step(&with_canary).await.map_err(|e| format!("canary: {e}"))?;
        let now = instances(&fleet.observe(&with_canary).await?);
        if now.get(&other) != before.get(&other) {
            return Err(format!("canary: agent {other} was replaced too: {before:?} became {now:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 8. An aborted canary: its agent returns to the fleet's version; the other stays.
    let aborted_at = Instant::now();
    let deadline = aborted_at + t;
    loop {
        fleet.step(&next).await.map_err(|e| format!("abort: {e}"))?;
        let now = instances(&fleet.observe(&next).await?);
        watcher.drain();
        if now.get(&other) != before.get(&other) {
            return Err(format!("abort: agent {other} was replaced: {before:?} became {now:?}"));
        }
        if now.contains_key(&moved) && on(&watcher, moved, &next.version, aborted_at) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("abort: agent {moved} not back on {} after {t:?}: {now:?}", next.version));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 9. Remove: everything goes, and removing again is fine.
    let deadline = Instant::now() + t;
    while !backend.remove(&next).await.map_err(|e| format!("remove: {e}"))? {
        if Instant::now() > deadline {
            return Err(format!("remove did not finish in {t:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = fleet.observe(&next).await?;
    if !left.is_empty() {
        return Err(format!("after remove, still observed {left:?}"));
    }
    if !backend.remove(&next).await.map_err(|e| format!("second remove: {e}"))? {
        return Err("removing a removed fleet did not report it gone".into());
    }
    Ok(())
}

/// Drives one fleet of a backend the way the control plane does ([`converge`]).
struct Driver<'a> {
    backend: &'a dyn Backend,
    memory: Memory,
    epoch: Instant,
}

impl Driver<'_> {
    async fn step(&mut self, d: &Deployment) -> Result<(), crate::BackendError> {
        let now_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        converge(self.backend, d, &mut self.memory, now_ms).await.map(drop)
    }

    async fn observe(&self, d: &Deployment) -> Result<Vec<Instance>, String> {
        self.backend.observe(d).await.map_err(|e| format!("observe: {e}"))
    }

    /// Waits until slots `0..replicas` run by the backend's account and have sent an idle
    /// heartbeat.
    async fn wait_running(
        &mut self,
        watcher: &mut Watcher,
        d: &Deployment,
        t: Duration,
        step: &str,
    ) -> Result<BTreeMap<u32, String>, String> {
        let deadline = Instant::now() + t;
        loop {
            let replicas = self.observe(d).await.map_err(|e| format!("{step}: {e}"))?;
            watcher.drain();
            let running: Vec<u32> = replicas.iter().filter(|r| r.state == InstanceState::Running).map(|r| r.slot).collect();
            let reported = (0..d.replicas).all(|s| watcher.idle(s));
            if running == (0..d.replicas).collect::<Vec<_>>() && reported {
                return Ok(instances(&replicas));
            }
            if let Some(failed) = replicas.iter().find(|r| matches!(r.state, InstanceState::Failed(_))) {
                return Err(format!("{step}: agent {} failed: {:?}", failed.slot, failed.state));
            }
            if Instant::now() > deadline {
                let beats: BTreeMap<u32, &str> = watcher.latest.iter().map(|(s, (hb, _))| (*s, hb.state.as_str())).collect();
                return Err(format!("{step}: after {t:?} the backend runs slots {running:?}; heartbeats: {beats:?}"));
            }
            self.step(d).await.map_err(|e| format!("{step}: converge: {e}"))?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Each slot's live instance, leaving out those being stopped.
fn instances(replicas: &[Instance]) -> BTreeMap<u32, String> {
    replicas.iter().filter(|r| r.state.is_live() && r.state != InstanceState::Stopping).map(|r| (r.slot, r.id.clone())).collect()
}

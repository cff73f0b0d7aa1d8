//! The agent runtime against the real embedded broker, driven the way the control plane drives it.

use std::sync::Arc;
use std::time::Duration;

use clawfleet_agent::AgentConfig;
use clawfleet_agent::runtime;
use clawfleet_bus::broker::{BrokerConfig, EmbeddedBroker};
use clawfleet_bus::client::{self, BusClient, BusEvent, ClientConfig};
use clawfleet_bus::{BusSecret, CONTROL_USER, FleetAuth};
use clawfleet_core::acl;
use clawfleet_core::{AgentRef, BrainSpec};
use clawfleet_proto::bus::{self as wire, AgentActivity, AgentEnvelope, Directive, Heartbeat};
use clawfleet_proto::event::EventBody;
use clawfleet_proto::topic::{self, Channel};
use tokio::sync::{mpsc, oneshot};

struct Harness {
    _broker: EmbeddedBroker,
    secret: BusSecret,
    port: u16,
    control: BusClient,
    rx: mpsc::Receiver<BusEvent>,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Harness {
        let secret = BusSecret::generate();
        let auth = FleetAuth::new(secret.clone());
        auth.allow_fleet("squad", "u1");
        let broker = EmbeddedBroker::start(BrokerConfig::new("127.0.0.1:0".parse().unwrap()), Arc::new(auth)).unwrap();
        let port = broker.local_addr().port();
        let mut c = ClientConfig::new("127.0.0.1", port, "control");
        c.username = Some(CONTROL_USER.into());
        c.password = Some(secret.control_password());
        c.subscriptions = vec![topic::all_agents(Channel::Events), topic::all_agents(Channel::Heartbeat)];
        let (control, mut rx) = client::connect(c);
        assert!(matches!(rx.recv().await, Some(BusEvent::Connected { .. })));
        Harness { _broker: broker, secret, port, control, rx, dir: tempfile::tempdir().unwrap() }
    }

    fn config(&self, slot: u32, brain: &str) -> AgentConfig {
        let agent: AgentRef = format!("squad/{slot}").parse().unwrap();
        let mut c = AgentConfig::new(agent.clone(), "u1", "127.0.0.1", self.port, self.dir.path().join(slot.to_string()));
        c.bus_username = Some(acl::agent_username(&agent));
        c.bus_password = Some(self.secret.agent_password(&agent, "u1"));
        c.brain = brain.parse::<BrainSpec>().unwrap();
        c.heartbeat_interval = Duration::from_millis(200);
        c
    }

    /// Starts an agent; the sender stops it, the handle ends when it has stopped.
    fn spawn(&self, config: AgentConfig) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            runtime::run(config, reqwest::Client::new(), async {
                rx.await.ok();
            })
            .await
            .unwrap();
        });
        (tx, handle)
    }

    /// Starts an agent and waits until it is connected and idle.
    async fn spawn_ready(&mut self, config: AgentConfig) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let agent = config.agent.clone();
        let started = self.spawn(config);
        let hb = self.heartbeat_where(|hb| hb.state == AgentActivity::Idle).await;
        assert!(hb.pid > 0, "{agent}");
        // Subscriptions are sent right after CONNACK; give the broker a moment to apply them.
        tokio::time::sleep(Duration::from_millis(200)).await;
        started
    }

    async fn send(&self, slot: u32, d: &Directive) {
        self.control.publish(topic::agent("squad", slot, Channel::Cmd), wire::encode(d), false).await.unwrap();
    }

    async fn next(&mut self, deadline: tokio::time::Instant, what: &str) -> BusEvent {
        tokio::time::timeout_at(deadline, self.rx.recv()).await.unwrap_or_else(|_| panic!("{what} within 20 s")).unwrap()
    }

    /// The next agent event (skipping heartbeats).
    async fn event(&mut self) -> AgentEnvelope {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let BusEvent::Message { topic, payload } = self.next(deadline, "an event").await
                && topic.ends_with("/events")
            {
                return wire::decode_envelope(&payload).unwrap();
            }
        }
    }

    async fn heartbeat_where(&mut self, f: impl Fn(&Heartbeat) -> bool) -> Heartbeat {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let BusEvent::Message { topic, payload } = self.next(deadline, "a heartbeat").await
                && topic.ends_with("/heartbeat")
            {
                let hb = wire::decode_heartbeat(&payload).unwrap();
                if f(&hb) {
                    return hb;
                }
            }
        }
    }

    async fn names_until_terminal(&mut self) -> Vec<&'static str> {
        let mut names = Vec::new();
        loop {
            let e = self.event().await;
            names.push(e.body.name());
            if e.body.is_terminal() {
                // usage follows turn_complete
                if e.body == (EventBody::TurnComplete {}) {
                    names.push(self.event().await.body.name());
                }
                return names;
            }
        }
    }
}

fn inject(id: &str, prompt: &str) -> Directive {
    Directive::Inject { injection_id: id.into(), prompt: prompt.into(), targets: None, expires_at: None }
}

#[tokio::test]
async fn an_injection_runs_its_whole_lifecycle_once() {
    let mut h = Harness::new().await;
    let (_stop, _task) = h.spawn_ready(h.config(0, "echo")).await;
    h.send(0, &inject("i1", "hello there")).await;
    assert_eq!(
        h.names_until_terminal().await,
        vec!["inject_delivered", "turn_started", "assistant_delta", "assistant", "turn_complete", "usage"]
    );
    // The same injection again (a redelivery) is ignored; the next one runs.
    h.send(0, &inject("i1", "hello there")).await;
    h.send(0, &inject("i2", "second")).await;
    let e = h.event().await;
    assert_eq!((e.injection_id.as_deref(), e.body), (Some("i2"), EventBody::InjectDelivered {}));
    let seqs: Vec<u64> = {
        let mut v = vec![e.seq];
        for _ in 0..5 {
            v.push(h.event().await.seq);
        }
        v
    };
    assert_eq!(seqs, (7..=12).collect::<Vec<_>>(), "events are numbered without gaps");
}

#[tokio::test]
async fn fleet_broadcasts_respect_targets() {
    let mut h = Harness::new().await;
    let (_s0, _t0) = h.spawn_ready(h.config(0, "echo")).await;
    let (_s1, _t1) = h.spawn_ready(h.config(1, "echo")).await;
    let d = Directive::Inject { injection_id: "b1".into(), prompt: "x".into(), targets: Some(vec![1]), expires_at: None };
    h.control.publish(topic::fleet_cmd("squad"), wire::encode(&d), false).await.unwrap();
    let e = h.event().await;
    assert_eq!(e.body, EventBody::InjectDelivered {});
    // Only agent 1 answered: its events come from its topic (checked by the epoch being one agent's).
    let mut epochs = std::collections::HashSet::new();
    epochs.insert(e.epoch);
    for _ in 0..5 {
        epochs.insert(h.event().await.epoch);
    }
    assert_eq!(epochs.len(), 1);
}

#[tokio::test]
async fn commands_outside_the_vocabulary_are_refused() {
    let mut h = Harness::new().await;
    let (_stop, _task) = h.spawn_ready(h.config(0, "echo")).await;
    h.send(0, &Directive::Command { command_id: "c1".into(), command: "reboot".into(), targets: None }).await;
    match h.event().await.body {
        EventBody::CommandReply { ok: false, error: Some(e), command, .. } => {
            assert_eq!(command, "reboot");
            assert!(e.starts_with("unknown command 'reboot': the vocabulary is health-check"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    for cmd in ["health-check", "version-report", "status-report", "config-reload"] {
        h.send(0, &Directive::Command { command_id: format!("c-{cmd}"), command: cmd.into(), targets: None }).await;
        match h.event().await.body {
            EventBody::CommandReply { ok: true, command, result, .. } => {
                assert_eq!(command, cmd);
                assert!(result.is_object(), "{result}");
                if cmd == "health-check" {
                    assert_eq!(result["healthy"], true);
                }
            }
            other => panic!("{cmd}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn replay_republishes_the_journal() {
    let mut h = Harness::new().await;
    let (_stop, _task) = h.spawn_ready(h.config(0, "echo")).await;
    h.send(0, &inject("i1", "a")).await;
    h.names_until_terminal().await;
    h.send(0, &Directive::Replay { after_seq: 3 }).await;
    let replayed: Vec<u64> = vec![h.event().await.seq, h.event().await.seq, h.event().await.seq];
    assert_eq!(replayed, vec![4, 5, 6]);
}

#[tokio::test]
async fn the_watchdog_stops_a_silent_turn() {
    let mut h = Harness::new().await;
    let mut c = h.config(0, "cmd:sleep 30");
    c.watchdog = Duration::from_millis(500);
    let (_stop, _task) = h.spawn_ready(c).await;
    h.send(0, &inject("i1", "x")).await;
    assert_eq!(h.event().await.body.name(), "inject_delivered");
    assert_eq!(h.event().await.body.name(), "turn_started");
    match h.event().await.body {
        EventBody::AgentError { message } => assert_eq!(message, "no output for 0 s; the watchdog stopped the turn"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_failing_brain_ends_the_turn_with_agent_error() {
    let mut h = Harness::new().await;
    let (_stop, _task) = h.spawn_ready(h.config(0, "cmd:echo partial; echo broken >&2; exit 3")).await;
    h.send(0, &inject("i1", "x")).await;
    let names = h.names_until_terminal().await;
    assert_eq!(names, vec!["inject_delivered", "turn_started", "assistant_delta", "agent_error"]);
}

#[tokio::test]
async fn stopping_ends_the_turn_and_fails_the_queue() {
    let mut h = Harness::new().await;
    let (stop, task) = h.spawn_ready(h.config(0, "cmd:sleep 30")).await;
    h.send(0, &inject("i1", "x")).await;
    h.send(0, &inject("i2", "y")).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = h.event().await;
        seen.push((e.injection_id.unwrap(), e.body.name()));
    }
    assert_eq!(seen, vec![("i1".into(), "inject_delivered"), ("i1".into(), "turn_started"), ("i2".into(), "inject_delivered")]);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
    let a = h.event().await;
    let b = h.event().await;
    assert_eq!((a.injection_id.as_deref(), a.body.name()), (Some("i1"), "agent_error"));
    assert_eq!((b.injection_id.as_deref(), b.body.name()), (Some("i2"), "inject_failed"));
    h.heartbeat_where(|hb| hb.state == AgentActivity::Stopped).await;
}

#[tokio::test]
async fn a_restarted_agent_finishes_what_it_had_accepted() {
    let mut h = Harness::new().await;
    let dir = h.dir.path().join("0");
    // A previous run accepted two injections and was killed in the middle of the first.
    {
        use clawfleet_agent::workspace::{Accepted, Workspace};
        let (mut ws, _) = Workspace::open(&dir).unwrap();
        for id in ["old1", "old2"] {
            ws.accept(Accepted::Inject { id: id.into(), prompt: format!("prompt {id}") }).unwrap();
            ws.record(Some(id), EventBody::InjectDelivered {});
        }
        ws.record(Some("old1"), EventBody::TurnStarted {});
    }
    let (_stop, _task) = h.spawn(h.config(0, "echo"));
    let e = h.event().await;
    assert_eq!((e.injection_id.as_deref(), e.body.name(), e.seq), (Some("old1"), "agent_error", 4));
    let names = h.names_until_terminal().await;
    assert_eq!(names, vec!["turn_started", "assistant_delta", "assistant", "turn_complete", "usage"]);
}

//! The embedded broker with clawfleet's credentials and ACL, exercised through real clients.

use std::sync::Arc;
use std::time::Duration;

use clawfleet_bus::broker::{BrokerConfig, EmbeddedBroker};
use clawfleet_bus::client::{self, BusEvent, ClientConfig, Will};
use clawfleet_bus::{BusSecret, CONTROL_USER, FleetAuth};
use clawfleet_core::AgentRef;
use clawfleet_core::acl;
use clawfleet_proto::topic::{self, Channel};
use tokio::sync::mpsc::Receiver;

const UID: &str = "uid1";

fn auth(secret: &BusSecret) -> Arc<FleetAuth> {
    let auth = FleetAuth::new(secret.clone());
    auth.allow_fleet("squad", UID);
    Arc::new(auth)
}

fn start() -> (EmbeddedBroker, BusSecret) {
    let secret = BusSecret::generate();
    let broker = EmbeddedBroker::start(BrokerConfig::new("127.0.0.1:0".parse().unwrap()), auth(&secret)).unwrap();
    (broker, secret)
}

fn control_config(broker: &EmbeddedBroker, secret: &BusSecret, subs: Vec<String>) -> ClientConfig {
    let mut c = ClientConfig::new("127.0.0.1", broker.local_addr().port(), "control");
    c.username = Some(CONTROL_USER.into());
    c.password = Some(secret.control_password());
    c.subscriptions = subs;
    c
}

fn agent_config(broker: &EmbeddedBroker, secret: &BusSecret, agent: &str, subs: Vec<String>) -> ClientConfig {
    let a: AgentRef = agent.parse().unwrap();
    let mut c = ClientConfig::new("127.0.0.1", broker.local_addr().port(), acl::agent_client_id(&a, UID));
    c.username = Some(acl::agent_username(&a));
    c.password = Some(secret.agent_password(&a, UID));
    c.subscriptions = subs;
    c
}

async fn next(rx: &mut Receiver<BusEvent>) -> BusEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("bus event within 10 s").expect("channel open")
}

async fn connected(rx: &mut Receiver<BusEvent>) {
    match next(rx).await {
        BusEvent::Connected { .. } => {}
        other => panic!("expected Connected, got {other:?}"),
    }
}

async fn message(rx: &mut Receiver<BusEvent>) -> (String, Vec<u8>) {
    loop {
        match next(rx).await {
            BusEvent::Message { topic, payload } => return (topic, payload.to_vec()),
            BusEvent::Connected { .. } => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn wrong_credentials_are_refused() {
    let (broker, secret) = start();
    let mut bad = agent_config(&broker, &secret, "squad/1", vec![]);
    bad.password = Some("nope".into());
    let (_c, mut rx) = client::connect(bad);
    match next(&mut rx).await {
        BusEvent::Disconnected { reason } => assert_eq!(reason, "the broker refused the bus credentials"),
        other => panic!("{other:?}"),
    }
    // Anonymous too.
    let anon = ClientConfig::new("127.0.0.1", broker.local_addr().port(), "anon");
    let (_c, mut rx) = client::connect(anon);
    assert!(matches!(next(&mut rx).await, BusEvent::Disconnected { .. }));
    // One agent's password does not log in as another agent.
    let mut other = agent_config(&broker, &secret, "squad/2", vec![]);
    other.password = agent_config(&broker, &secret, "squad/1", vec![]).password;
    let (_c, mut rx) = client::connect(other);
    assert!(matches!(next(&mut rx).await, BusEvent::Disconnected { .. }));
}

#[tokio::test]
async fn directives_reach_agents_and_events_reach_the_control_plane() {
    let (broker, secret) = start();
    let events = topic::all_agents(Channel::Events);
    let (control, mut crx) = client::connect(control_config(&broker, &secret, vec![events]));
    connected(&mut crx).await;
    let subs = vec![topic::agent("squad", 1, Channel::Cmd), topic::fleet_cmd("squad")];
    let (agent, mut arx) = client::connect(agent_config(&broker, &secret, "squad/1", subs));
    connected(&mut arx).await;
    settle().await;

    control.publish(topic::fleet_cmd("squad"), b"to-all".to_vec(), false).await.unwrap();
    assert_eq!(message(&mut arx).await, (topic::fleet_cmd("squad"), b"to-all".to_vec()));
    control.publish(topic::agent("squad", 1, Channel::Cmd), b"to-one".to_vec(), false).await.unwrap();
    assert_eq!(message(&mut arx).await.1, b"to-one");

    agent.publish(topic::agent("squad", 1, Channel::Events), b"ev".to_vec(), false).await.unwrap();
    assert_eq!(message(&mut crx).await, (topic::agent("squad", 1, Channel::Events), b"ev".to_vec()));
}

#[tokio::test]
async fn agents_cannot_read_or_write_other_agents_topics() {
    let (broker, secret) = start();
    let (_control, mut crx) = client::connect(control_config(&broker, &secret, vec![topic::all_agents(Channel::Events)]));
    connected(&mut crx).await;
    // A nosy agent subscribing to another agent's commands and to a wildcard gets nothing.
    let nosy_subs = vec![topic::agent("squad", 2, Channel::Cmd), "clawfleet/v1/#".into()];
    let (nosy, mut nrx) = client::connect(agent_config(&broker, &secret, "squad/1", nosy_subs));
    connected(&mut nrx).await;
    settle().await;
    let (control2, mut c2rx) = client::connect({
        let mut c = control_config(&broker, &secret, vec![]);
        c.client_id = "control2".into();
        c
    });
    connected(&mut c2rx).await;
    control2.publish(topic::agent("squad", 2, Channel::Cmd), b"secret".to_vec(), false).await.unwrap();

    // Impersonating agent 2 on the events topic gets the publisher disconnected, and the
    // control plane never sees the message.
    nosy.publish(topic::agent("squad", 2, Channel::Events), b"forged".to_vec(), false).await.unwrap();
    loop {
        match next(&mut nrx).await {
            BusEvent::Disconnected { .. } | BusEvent::Closed => break,
            BusEvent::Message { topic, .. } => panic!("nosy agent read {topic}"),
            BusEvent::Connected { .. } => {}
        }
    }
    assert!(tokio::time::timeout(Duration::from_millis(500), crx.recv()).await.is_err(), "forged event was delivered");
}

#[tokio::test]
async fn retained_heartbeats_and_last_will() {
    let (broker, secret) = start();
    let hb = topic::agent("squad", 1, Channel::Heartbeat);
    let mut cfg = agent_config(&broker, &secret, "squad/1", vec![]);
    cfg.will = Some(Will { topic: hb.clone(), payload: b"gone".to_vec(), retain: true });
    let (agent, mut arx) = client::connect(cfg);
    connected(&mut arx).await;
    agent.publish(hb.clone(), b"alive".to_vec(), true).await.unwrap();
    settle().await;

    // A control plane that subscribes later still gets the retained heartbeat.
    let (_control, mut crx) = client::connect(control_config(&broker, &secret, vec![topic::all_agents(Channel::Heartbeat)]));
    assert_eq!(message(&mut crx).await, (hb.clone(), b"alive".to_vec()));

    // Dropping the agent's connection abruptly fires its will.
    drop(agent);
    drop(arx);
    assert_eq!(message(&mut crx).await, (hb, b"gone".to_vec()));
}

/// A last will is a publish the broker makes for the client when it drops, so it must obey the
/// client's publish rights: checked at CONNECT (rmqtt checks only publishes, so a will on
/// another fleet's `cmd` topic used to reach every agent of that fleet, and retained, every
/// agent started later).
#[tokio::test]
async fn a_will_the_client_may_not_publish_is_refused_at_connect() {
    let (broker, secret) = start();
    let (_control, mut crx) = client::connect(control_config(&broker, &secret, vec!["clawfleet/v1/#".into()]));
    connected(&mut crx).await;
    let wills = [
        (topic::fleet_cmd("other"), false),
        (topic::fleet_cmd("squad"), true),
        (topic::agent("squad", 2, Channel::Cmd), false),
        (topic::agent("squad", 2, Channel::Events), false),
        (topic::agent("squad", 1, Channel::Events), true),
    ];
    for (will, retain) in wills {
        let mut cfg = agent_config(&broker, &secret, "squad/1", vec![]);
        cfg.will = Some(Will { topic: will.clone(), payload: br#"{"forged":true}"#.to_vec(), retain });
        let (_agent, mut arx) = client::connect(cfg);
        match next(&mut arx).await {
            BusEvent::Disconnected { reason } => assert_eq!(reason, "the broker refused the bus credentials", "{will}"),
            other => panic!("a will on {will} (retain {retain}) was accepted: {other:?}"),
        }
    }
    // Its own heartbeat, retained, is its will: accepted, as before.
    let mut cfg = agent_config(&broker, &secret, "squad/1", vec![]);
    cfg.will = Some(Will { topic: topic::agent("squad", 1, Channel::Heartbeat), payload: b"gone".to_vec(), retain: true });
    let (agent, mut arx) = client::connect(cfg);
    connected(&mut arx).await;
    // A retained publish off its heartbeat is refused like a forbidden topic.
    agent.publish(topic::agent("squad", 1, Channel::Events), b"retained".to_vec(), true).await.unwrap();
    loop {
        match next(&mut arx).await {
            BusEvent::Disconnected { .. } | BusEvent::Closed => break,
            other => eprintln!("{other:?}"),
        }
    }
    drop(agent);
    drop(arx);
    // Nothing forged reached the bus: the only messages are the accepted agent's own will.
    assert_eq!(message(&mut crx).await, (topic::agent("squad", 1, Channel::Heartbeat), b"gone".to_vec()));
    while let Ok(Some(more)) = tokio::time::timeout(Duration::from_millis(500), crx.recv()).await {
        if let BusEvent::Message { topic, payload } = more {
            assert_eq!((topic.as_str(), &payload[..]), (topic::agent("squad", 1, Channel::Heartbeat).as_str(), &b"gone"[..]));
        }
    }
}

#[tokio::test]
async fn commands_queue_for_an_offline_agent() {
    let (broker, secret) = start();
    let cmd = topic::agent("squad", 1, Channel::Cmd);
    let (agent, mut arx) = client::connect(agent_config(&broker, &secret, "squad/1", vec![cmd.clone()]));
    connected(&mut arx).await;
    settle().await;
    agent.disconnect();
    while !matches!(next(&mut arx).await, BusEvent::Closed) {}

    let (control, mut crx) = client::connect(control_config(&broker, &secret, vec![]));
    connected(&mut crx).await;
    for i in 0..2000u32 {
        control.publish(cmd.clone(), i.to_be_bytes().to_vec(), false).await.unwrap();
    }
    settle().await;

    let (_agent, mut arx) = client::connect(agent_config(&broker, &secret, "squad/1", vec![cmd.clone()]));
    for i in 0..2000u32 {
        assert_eq!(message(&mut arx).await.1, i.to_be_bytes().to_vec(), "message {i}");
    }
}

#[test]
fn two_brokers_in_one_process_and_a_busy_port() {
    let (a, _) = start();
    let (b, _) = start();
    assert_ne!(a.local_addr(), b.local_addr());
    let err = EmbeddedBroker::start(BrokerConfig::new(a.local_addr()), auth(&BusSecret::generate())).unwrap_err();
    assert!(err.to_string().starts_with(&format!("could not listen for MQTT on {}", a.local_addr())), "{err}");
}

#[tokio::test]
async fn publishes_right_before_disconnect_arrive() {
    let (broker, secret) = start();
    let (_control, mut crx) = client::connect(control_config(&broker, &secret, vec![topic::all_agents(Channel::Events)]));
    connected(&mut crx).await;
    let (agent, mut arx) = client::connect(agent_config(&broker, &secret, "squad/1", vec![]));
    connected(&mut arx).await;
    for i in 0..3u8 {
        agent.publish(topic::agent("squad", 1, Channel::Events), vec![i], false).await.unwrap();
    }
    agent.disconnect();
    for i in 0..3u8 {
        assert_eq!(message(&mut crx).await.1, vec![i]);
    }
}

#[tokio::test]
async fn graceful_close_is_prompt() {
    let (broker, secret) = start();
    let (agent, mut arx) = client::connect(agent_config(&broker, &secret, "squad/1", vec![]));
    connected(&mut arx).await;
    for i in 0..10u8 {
        agent.try_publish(topic::agent("squad", 1, Channel::Heartbeat), vec![i], true).unwrap();
        agent.publish(topic::agent("squad", 1, Channel::Events), vec![i], false).await.unwrap();
    }
    let started = std::time::Instant::now();
    agent.disconnect();
    loop {
        match next(&mut arx).await {
            BusEvent::Closed => break,
            other => eprintln!("{other:?}"),
        }
    }
    eprintln!("closed after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(2));
}

//! The agent runtime over the mailbox transport: no bus at all, only files, driven the way the
//! control plane drives it (inbox lines in, outbox lines out), read with the real follower.

use std::time::Duration;

use clawfleet_agent::{AgentConfig, MailboxSpec, Transport, runtime};
use clawfleet_core::AgentRef;
use clawfleet_mailbox::{Follower, Line, Mailbox};
use clawfleet_proto::bus::{AgentActivity, Directive};
use clawfleet_proto::event::EventBody;
use clawfleet_proto::mailbox::{self as lines, OutboxItem};

/// Polls the outboxes until `done` holds for everything read so far.
async fn read_until(f: &mut Follower, seen: &mut Vec<OutboxItem>, done: impl Fn(&[OutboxItem]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(seen) {
        assert!(tokio::time::Instant::now() < deadline, "timed out; read so far: {seen:#?}");
        for r in f.poll().unwrap() {
            match r.line {
                Line::Json(v) => seen.push(lines::parse_outbox(&v).unwrap_or_else(|e| panic!("{e}: {v}"))),
                Line::Garbage(why) => panic!("the agent wrote garbage: {why}"),
                Line::Raw(_) => unreachable!("a parsing follower"),
            }
        }
        f.commit().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn events(seen: &[OutboxItem]) -> Vec<(Option<String>, EventBody)> {
    seen.iter().filter_map(|i| if let OutboxItem::Event(e) = i { Some((e.injection_id.clone(), e.body.clone())) } else { None }).collect()
}

#[tokio::test]
async fn an_agent_with_no_bus_talks_through_its_mailbox_and_archives_it_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("fleet");
    let agent: AgentRef = "squad/3".parse().unwrap();
    // Port 9 on loopback: nothing listens; the agent must never need it.
    let mut config = AgentConfig::new(agent, "u1", "127.0.0.1", 9, dir.path().join("ws"));
    config.heartbeat_interval = Duration::from_millis(200);
    config.transport = Transport::Mailbox(MailboxSpec { base: base.clone(), job_id: "4242".into(), node: 3 });
    let handle = tokio::spawn(runtime::run(config, reqwest::Client::new(), std::future::pending()));

    let mailbox = Mailbox::open(&base).unwrap();
    let mut follower = Follower::open(mailbox.clone(), dir.path().join("follower.json")).unwrap();
    let mut seen = Vec::new();
    read_until(&mut follower, &mut seen, |s| s.iter().any(|i| matches!(i, OutboxItem::Heartbeat(h) if h.state == AgentActivity::Idle)))
        .await;
    assert!(matches!(&seen[0], OutboxItem::Start { job_id, node_id: 3, .. } if job_id == "4242"), "{:?}", seen[0]);

    // An injection, a duplicate of it, a line that is not a directive, and a command.
    let inject = Directive::Inject { injection_id: "i1".into(), prompt: "hello".into(), targets: None, expires_at: None };
    mailbox.append_inbox("4242", 3, &lines::inbox_line(&inject)).unwrap();
    mailbox.append_inbox("4242", 3, &lines::inbox_line(&inject)).unwrap();
    mailbox.append_inbox("4242", 3, &serde_json::json!({"type": "reboot"})).unwrap();
    let health = Directive::Command { command_id: "c1".into(), command: "status-report".into(), targets: None };
    mailbox.append_inbox("4242", 3, &lines::inbox_line(&health)).unwrap();
    read_until(&mut follower, &mut seen, |s| {
        let ev = events(s);
        ev.iter().any(|(_, b)| matches!(b, EventBody::TurnComplete {}))
            && ev.iter().any(|(_, b)| matches!(b, EventBody::CommandReply { .. }))
    })
    .await;
    let ev = events(&seen);
    let turn: Vec<&str> = ev.iter().filter(|(id, _)| id.as_deref() == Some("i1")).map(|(_, b)| b.name()).collect();
    assert_eq!(turn.iter().filter(|n| **n == "turn_started").count(), 1, "the duplicate ran once: {turn:?}");
    assert!(turn.starts_with(&["inject_delivered", "turn_started"]), "{turn:?}");
    assert!(ev.iter().any(|(_, b)| matches!(b, EventBody::Assistant { content } if content.contains("hello"))));
    assert!(
        ev.iter().any(|(_, b)| matches!(b, EventBody::AgentError { message } if message.contains("unknown line type 'reboot'"))),
        "a bad inbox line is reported: {ev:#?}"
    );

    // A replay request: the journal again, from seq 1.
    let before = ev.len();
    mailbox.append_inbox("4242", 3, &lines::inbox_line(&Directive::Replay { after_seq: 0 })).unwrap();
    read_until(&mut follower, &mut seen, |s| events(s).len() >= 2 * before).await;

    // Shutdown: a last heartbeat, `complete`, and the outbox moved to the archive.
    mailbox.append_inbox("4242", 3, &lines::shutdown_line()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), handle).await.expect("the agent stopped").unwrap().unwrap();
    read_until(&mut follower, &mut seen, |s| matches!(s.last(), Some(OutboxItem::Complete))).await;
    assert!(seen.iter().any(|i| matches!(i, OutboxItem::Heartbeat(h) if h.state == AgentActivity::Stopped)));
    assert!(!mailbox.outbox_dir().join("4242_03.jsonl").exists());
    assert!(mailbox.archive_dir().join("4242_03.jsonl").exists());
}

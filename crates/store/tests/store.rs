//! The store's promises: atomic injections, exactly-once ingest, outbox acknowledgement,
//! failed directives on scale-down, durability across reopen.

use clawfleet_proto::api::FleetState;
use clawfleet_proto::event::EventBody;
use clawfleet_store::{
    AgentEvent, Audit, EventFilter, FleetApply, FleetRow, FleetUpdate, Ingested, NewEvent, NewInjection, Pending, Store, StoreError,
};

fn audit(action: &'static str) -> Audit<'static> {
    Audit { at: "t", actor: "operator", action, target: "squad", detail: String::new() }
}

fn fleet(name: &str, replicas: u32) -> FleetRow {
    FleetRow {
        name: name.into(),
        uid: "u1".into(),
        backend: "local".into(),
        brain: "echo".into(),
        prompt: None,
        version: "1".into(),
        replicas,
        state: FleetState::Active,
        created_at: "t0".into(),
        image: None,
        previous: None,
        cluster: None,
        deploy: None,
        canary: None,
        brain_env: None,
        leader: None,
        leader_epoch: 0,
        leader_preferred: None,
    }
}

#[test]
fn updates_remember_what_they_replaced_and_rollback_swaps_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    store.insert_fleet(&FleetRow { image: Some("a:1".into()), ..fleet("squad", 2) }, launched("squad"), &audit("launch")).unwrap();
    assert!(matches!(store.update_fleet("squad", FleetUpdate::Rollback, "t1", &audit("rollback")), Err(StoreError::NothingToRollBack(_))));
    let e =
        store.update_fleet("squad", FleetUpdate::To { image: Some("a:2".into()), version: "2".into() }, "t1", &audit("update")).unwrap();
    assert_eq!(
        e.body,
        EventBody::FleetUpdated {
            image: Some("a:2".into()),
            version: "2".into(),
            previous_image: Some("a:1".into()),
            previous_version: "1".into()
        }
    );
    let row = store.fleet("squad").unwrap().unwrap();
    assert_eq!((row.image.as_deref(), row.version.as_str()), (Some("a:2"), "2"));
    assert_eq!(row.previous, Some((Some("a:1".into()), "1".into())));
    // A version-only update keeps the image.
    store.update_fleet("squad", FleetUpdate::To { image: None, version: "3".into() }, "t2", &audit("update")).unwrap();
    assert_eq!(store.fleet("squad").unwrap().unwrap().image.as_deref(), Some("a:2"));
    // Rollback returns to what the last update replaced, and a second one undoes it.
    store.update_fleet("squad", FleetUpdate::Rollback, "t3", &audit("rollback")).unwrap();
    let row = store.fleet("squad").unwrap().unwrap();
    assert_eq!((row.image.as_deref(), row.version.as_str()), (Some("a:2"), "2"));
    store.update_fleet("squad", FleetUpdate::Rollback, "t4", &audit("rollback")).unwrap();
    assert_eq!(store.fleet("squad").unwrap().unwrap().version, "3");
    assert!(matches!(store.update_fleet("nope", FleetUpdate::Rollback, "t5", &audit("rollback")), Err(StoreError::NoFleet(_))));
}

fn deploy_of(fleets: &[&str]) -> clawfleet_proto::api::Deploy {
    use clawfleet_proto::api::{Deploy, DeployFleet, DeployState};
    Deploy {
        id: 0,
        target: fleets.join(","),
        actor: "operator".into(),
        state: DeployState::Running,
        reason: None,
        deadline_s: 60,
        created_at: "t".into(),
        finished_at: None,
        fleets: fleets
            .iter()
            .map(|f| DeployFleet {
                fleet: (*f).into(),
                from_version: "2".into(),
                from_image: None,
                to_version: "3".into(),
                to_image: None,
                ready: 0,
                replicas: 1,
                slots: None,
                canaries: None,
                rollback_to: None,
            })
            .collect(),
    }
}

#[test]
fn a_reverted_deploy_leaves_rollback_where_it_was_and_each_fleet_has_its_history() {
    use clawfleet_proto::api::DeployState;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    for name in ["a", "b"] {
        store.insert_fleet(&fleet(name, 1), launched(name), &audit("launch")).unwrap();
        store.update_fleet(name, FleetUpdate::To { image: None, version: "2".into() }, "t", &audit("update")).unwrap();
    }
    // a and b: 1 -> 2 by an update; then a deploy to 3, reverted.
    let (d, _) = store.start_deploy(&deploy_of(&["a", "b"]), &audit("deploy")).unwrap();
    assert_eq!(d.fleets[0].rollback_to, Some(("1".into(), None)), "what rollback went to before");
    assert_eq!(store.fleet("a").unwrap().unwrap().previous, Some((None, "2".into())));
    store.finish_deploy(d.id, DeployState::Reverted, Some("sick"), "t", &audit("deploy")).unwrap();
    let a = store.fleet("a").unwrap().unwrap();
    assert_eq!((a.version.as_str(), a.previous), ("2", Some((None, "1".into()))), "rollback goes to 1, not to the 3 that failed");
    // A second deploy, of a alone.
    let (second, _) = store.start_deploy(&deploy_of(&["a"]), &audit("deploy")).unwrap();
    store.finish_deploy(second.id, DeployState::Succeeded, None, "t", &audit("deploy")).unwrap();
    let ids = |fleet: Option<&str>, limit| store.deploys(fleet, limit).unwrap().iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(Some("a"), 10), [second.id, d.id], "newest first");
    assert_eq!(ids(Some("a"), 1), [second.id]);
    assert_eq!(ids(Some("b"), 10), [d.id]);
    assert_eq!(ids(Some("c"), 10), Vec::<u64>::new());
    assert_eq!(ids(None, 10), [second.id, d.id]);
}

#[test]
fn an_apply_is_made_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    store.insert_fleet(&fleet("web", 2), launched("web"), &audit("launch")).unwrap();
    store.insert_fleet(&fleet("old", 1), launched("old"), &audit("launch")).unwrap();
    let changed = FleetRow {
        replicas: 4,
        version: "2".into(),
        brain: "model".into(),
        deploy: Some(r#"{"max_unavailable":"25%"}"#.into()),
        ..fleet("web", 0)
    };
    let changes = vec![
        FleetApply::Create(fleet("new", 1)),
        FleetApply::Update {
            row: changed.clone(),
            changes: vec!["replicas: 2 → 4".into(), "brain: echo → model".into(), "version: 1 → 2".into()],
        },
        FleetApply::Terminate("old".into()),
    ];
    // One change that cannot be made (a fleet that exists) and nothing is.
    let failing = [changes.clone(), vec![FleetApply::Create(fleet("web", 9))]].concat();
    assert!(matches!(store.apply_fleets(&failing, "t1", "operator"), Err(StoreError::FleetExists(_))));
    assert_eq!(store.fleets().unwrap().iter().map(|f| (f.name.as_str(), f.replicas)).collect::<Vec<_>>(), [("old", 1), ("web", 2)]);

    let events = store.apply_fleets(&changes, "t1", "operator").unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.body.name()).collect();
    assert_eq!(names, ["fleet_launched", "fleet_scaled", "fleet_updated", "fleet_changed", "fleet_terminating"]);
    assert_eq!(events[3].body, EventBody::FleetChanged { changes: vec!["brain: echo → model".into()] });
    let web = store.fleet("web").unwrap().unwrap();
    assert_eq!((web.replicas, web.version.as_str(), web.brain.as_str(), web.uid.as_str()), (4, "2", "model", "u1"));
    assert_eq!(web.deploy, changed.deploy);
    assert_eq!(web.previous, Some((None, "1".into())), "what the update replaced, for rollback");
    assert_eq!(store.fleet("old").unwrap().unwrap().state, FleetState::Terminating);
    let audit = store.audit_log(10).unwrap();
    assert_eq!(audit.iter().filter(|a| a.action.starts_with("apply: ")).count(), 3);
}

fn launched(name: &str) -> NewEvent {
    NewEvent {
        at: "t0".into(),
        fleet: name.into(),
        agent: None,
        injection_id: None,
        body: EventBody::FleetLaunched { replicas: 2, backend: "local".into(), brain: "echo".into(), version: "1".into() },
    }
}

fn agent_event(slot: u32, epoch: &str, seq: u64, injection: &str, body: EventBody) -> AgentEvent {
    AgentEvent {
        epoch: epoch.into(),
        seq,
        event: NewEvent { at: "t".into(), fleet: "squad".into(), agent: Some(slot), injection_id: Some(injection.into()), body },
    }
}

fn inject(store: &Store, id: &str, slots: &[u32]) -> Vec<clawfleet_proto::event::Event> {
    store
        .create_injection(
            &NewInjection { id, fleet: "squad", prompt: "hi", at: "t1", caller: "test", targets: slots, request_id: None },
            &audit("inject"),
        )
        .unwrap()
        .1
}

#[test]
fn fleets_are_unique_by_name() {
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 2), launched("squad"), &audit("launch")).unwrap();
    assert!(
        matches!(store.insert_fleet(&fleet("squad", 2), launched("squad"), &audit("launch")), Err(StoreError::FleetExists(n)) if n == "squad")
    );
    assert_eq!(store.fleets().unwrap().len(), 1);
    assert_eq!(store.fleet("squad").unwrap().unwrap().replicas, 2);
    assert!(store.fleet("nope").unwrap().is_none());
    assert!(matches!(store.scale_fleet("nope", 1, "t", &audit("scale")), Err(StoreError::NoFleet(_))));
}

#[test]
fn an_injection_is_persisted_with_its_outbox_and_acks() {
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 2), launched("squad"), &audit("launch")).unwrap();
    let acks = inject(&store, "i1", &[0, 1]);
    assert_eq!(acks.len(), 2);
    assert!(acks.iter().all(|e| e.body == EventBody::InjectAck { prompt: "hi".into(), request_id: None }));
    assert!(acks[0].id < acks[1].id);
    let outbox = store.outbox().unwrap();
    let pending = Pending::Inject { injection_id: "i1".into(), prompt: "hi".into() };
    assert_eq!(outbox.iter().map(|r| (r.slot, r.directive.clone())).collect::<Vec<_>>(), vec![(0, pending.clone()), (1, pending)]);
    // A duplicate injection id is refused as a whole: nothing half-written.
    assert!(
        store
            .create_injection(
                &NewInjection { id: "i1", fleet: "squad", prompt: "x", at: "t", caller: "c", targets: &[0], request_id: None },
                &audit("inject")
            )
            .is_err()
    );
    assert_eq!(store.outbox().unwrap().len(), 2);
}

#[test]
fn an_expired_injection_fails_with_its_reason_and_leaves_the_outbox() {
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 2), launched("squad"), &audit("launch")).unwrap();
    inject(&store, "i1", &[0, 1]);
    let rows = store.outbox().unwrap();
    assert_eq!(rows[0].created_at, "t1");
    let events = store.expire_outbox(&[rows[0].id], "t2", "timeout").unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].agent, events[0].injection_id.as_deref()), (Some(0), Some("i1")));
    assert_eq!(events[0].body, EventBody::InjectFailed { error: "timeout".into() });
    assert_eq!(store.outbox().unwrap().iter().map(|r| r.slot).collect::<Vec<_>>(), vec![1]);
    // A row already gone (acknowledged meanwhile) is skipped, not failed.
    assert!(store.expire_outbox(&[rows[0].id], "t3", "timeout").unwrap().is_empty());
    assert!(store.turn_ended("squad", 0, "i1").unwrap());
    assert!(!store.turn_ended("squad", 1, "i1").unwrap());
}

#[test]
fn ingest_is_exactly_once_and_acknowledges_the_outbox() {
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 2), launched("squad"), &audit("launch")).unwrap();
    inject(&store, "i1", &[0, 1]);

    let delivered = agent_event(0, "e1", 1, "i1", EventBody::InjectDelivered {});
    let out = store.ingest(vec![delivered.clone()]).unwrap();
    assert!(matches!(&out[0], Ingested::Stored(e) if e.body == EventBody::InjectDelivered {}));
    assert_eq!(store.outbox().unwrap().iter().map(|r| r.slot).collect::<Vec<_>>(), vec![1], "slot 0 acknowledged");

    // Redelivery and replay are stored once.
    assert_eq!(store.ingest(vec![delivered]).unwrap(), vec![Ingested::Duplicate]);
    // A gap is refused and says where to replay from.
    let late = agent_event(0, "e1", 4, "i1", EventBody::TurnComplete {});
    assert_eq!(store.ingest(vec![late]).unwrap(), vec![Ingested::Gap { after_seq: 1 }]);
    let cursor = store.cursor("squad", 0).unwrap().unwrap();
    assert_eq!((cursor.epoch.as_str(), cursor.seq), ("e1", 1));
    // In order, the rest is stored.
    let batch = vec![
        agent_event(0, "e1", 2, "i1", EventBody::TurnStarted {}),
        agent_event(0, "e1", 3, "i1", EventBody::Assistant { content: "hello".into() }),
        agent_event(0, "e1", 4, "i1", EventBody::TurnComplete {}),
    ];
    assert!(store.ingest(batch).unwrap().iter().all(|i| matches!(i, Ingested::Stored(_))));
    inject(&store, "i9", &[0]);
    // A new workspace starts a new epoch at 1.
    assert!(matches!(store.ingest(vec![agent_event(0, "e2", 1, "i9", EventBody::TurnStarted {})]).unwrap()[0], Ingested::Stored(_)));
    assert_eq!(store.ingest(vec![agent_event(0, "e3", 5, "i9", EventBody::TurnStarted {})]).unwrap(), vec![Ingested::Gap { after_seq: 0 }]);

    // An agent that cannot replay a range any more: the cursor moves past it, and the loss is recorded.
    let loss = NewEvent {
        at: "t".into(),
        fleet: "squad".into(),
        agent: Some(0),
        injection_id: None,
        body: EventBody::AgentError { message: "lost".into() },
    };
    store.skip_to("squad", 0, "e3", 4, loss).unwrap();
    assert!(matches!(store.ingest(vec![agent_event(0, "e3", 5, "i9", EventBody::TurnStarted {})]).unwrap()[0], Ingested::Stored(_)));

    let names: Vec<_> = store.injection_events("squad", "i1").unwrap().iter().map(|e| (e.agent, e.body.name())).collect();
    assert_eq!(
        names,
        vec![
            (Some(0), "inject_ack"),
            (Some(1), "inject_ack"),
            (Some(0), "inject_delivered"),
            (Some(0), "turn_started"),
            (Some(0), "assistant"),
            (Some(0), "turn_complete")
        ]
    );
}

/// An agent reports on its own injections only: one that names an injection sent to another
/// agent (or to no one) is refused, yet its journal position is read, so nothing is replayed.
#[test]
fn an_agent_cannot_report_on_an_injection_it_was_not_sent() {
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 2), launched("squad"), &audit("launch")).unwrap();
    inject(&store, "to-0", &[0]);
    let cases = [(1, "to-0", "another agent's injection"), (1, "nowhere", "an injection that does not exist")];
    for (seq, (slot, injection, what)) in cases.into_iter().enumerate() {
        let forged = agent_event(slot, "e1", seq as u64 + 1, injection, EventBody::Assistant { content: "forged".into() });
        assert_eq!(store.ingest(vec![forged]).unwrap(), vec![Ingested::Refused { injection_id: injection.into() }], "{what}");
    }
    assert_eq!(store.cursor("squad", 1).unwrap().unwrap().seq, 2, "the refused events' positions are read");
    let mut other = fleet("other", 1);
    other.uid = "u2".into();
    store.insert_fleet(&other, launched("other"), &audit("launch")).unwrap();
    let mut foreign = agent_event(0, "e1", 1, "to-0", EventBody::Assistant { content: "forged".into() });
    foreign.event.fleet = "other".into();
    assert_eq!(store.ingest(vec![foreign]).unwrap(), vec![Ingested::Refused { injection_id: "to-0".into() }], "another fleet's agent 0");
    // The agent it was sent to reports on it.
    let own = agent_event(0, "e1", 1, "to-0", EventBody::Assistant { content: "mine".into() });
    assert!(matches!(&store.ingest(vec![own]).unwrap()[0], Ingested::Stored(_)));
    let answers: Vec<_> = store.injection_events("squad", "to-0").unwrap().into_iter().map(|e| (e.agent, e.body)).collect();
    assert_eq!(answers[1..], [(Some(0), EventBody::Assistant { content: "mine".into() })]);
}

#[test]
fn scaling_down_fails_what_the_removed_agents_had_pending() {
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 3), launched("squad"), &audit("launch")).unwrap();
    inject(&store, "i1", &[0, 1, 2]);
    store.create_command("c1", "squad", "health-check", "t", &[2], &audit("command")).unwrap();
    assert!(
        store.outbox().unwrap().iter().any(|r| r.directive == Pending::Command { command_id: "c1".into(), command: "health-check".into() })
    );
    let events = store.scale_fleet("squad", 1, "t2", &audit("scale")).unwrap();
    let summary: Vec<_> = events.iter().map(|e| (e.agent, e.body.clone())).collect();
    assert_eq!(summary[0], (None, EventBody::FleetScaled { replicas: 1, previous: 3 }));
    assert_eq!(summary[1], (Some(1), EventBody::InjectFailed { error: "agent removed by a scale-down".into() }));
    assert_eq!(summary[2], (Some(2), EventBody::InjectFailed { error: "agent removed by a scale-down".into() }));
    assert!(matches!(&summary[3], (Some(2), EventBody::CommandReply { command, ok: false, .. }) if command == "health-check"));
    assert_eq!(store.outbox().unwrap().iter().map(|r| r.slot).collect::<Vec<_>>(), vec![0]);
    assert_eq!(store.fleet("squad").unwrap().unwrap().replicas, 1);
}

#[test]
fn events_filter_and_page() {
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 2), launched("squad"), &audit("launch")).unwrap();
    store.insert_fleet(&fleet("other", 1), launched("other"), &audit("launch")).unwrap();
    inject(&store, "i1", &[0, 1]);
    let all = store.events_after(&EventFilter::default(), 0, 100).unwrap();
    assert_eq!(all.len(), 4);
    let squad = EventFilter { fleet: Some("squad".into()), ..Default::default() };
    assert_eq!(store.events_after(&squad, 0, 100).unwrap().len(), 3);
    let one = EventFilter { fleet: Some("squad".into()), agent: Some(1), ..Default::default() };
    assert_eq!(store.events_after(&one, 0, 100).unwrap().len(), 1);
    let page = store.events_after(&EventFilter::default(), all[1].id, 1).unwrap();
    assert_eq!(page, vec![all[2].clone()]);
    assert_eq!(store.last_event_id().unwrap(), all[3].id);
    // The last two of squad's three events start after its first.
    assert_eq!(store.tail_start(&squad, 2).unwrap(), all[0].id);
    assert_eq!(store.tail_start(&squad, 10).unwrap(), 0);
}

#[test]
fn everything_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clawfleet.db");
    {
        let store = Store::open(&path).unwrap();
        store.insert_fleet(&fleet("squad", 2), launched("squad"), &audit("launch")).unwrap();
        inject(&store, "i1", &[0, 1]);
        store.set_meta("k", b"v").unwrap();
        store.audit(&audit("join")).unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.fleets().unwrap().len(), 1);
    assert_eq!(store.outbox().unwrap().len(), 2);
    assert_eq!(store.injection("i1").unwrap().unwrap().prompt, "hi");
    assert_eq!(store.meta("k").unwrap().as_deref(), Some(&b"v"[..]));
    let log: Vec<String> = store.audit_log(10).unwrap().into_iter().map(|a| a.action).collect();
    assert_eq!(log, ["launch", "inject", "join"], "each action audited in its own transaction");
    assert_eq!(store.last_event_id().unwrap(), 3);
}

#[test]
fn terminate_then_delete() {
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 1), launched("squad"), &audit("launch")).unwrap();
    inject(&store, "i1", &[0]);
    let events = store.mark_terminating("squad", "t", &audit("terminate")).unwrap();
    assert_eq!(events.iter().map(|e| e.body.name()).collect::<Vec<_>>(), vec!["fleet_terminating", "inject_failed"]);
    assert_eq!(store.fleet("squad").unwrap().unwrap().state, FleetState::Terminating);
    store.delete_fleet("squad", "t").unwrap();
    assert!(store.fleet("squad").unwrap().is_none());
    // The name can be launched again.
    store.insert_fleet(&fleet("squad", 1), launched("squad"), &audit("launch")).unwrap();
}

#[test]
fn a_fleet_names_only_secrets_that_are_set_and_a_used_secret_stays() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).unwrap();
    let env = clawfleet_proto::api::BrainEnv { env: Default::default(), secrets: vec!["API_KEY".into()] };
    let row = FleetRow { brain_env: env.to_column(), ..fleet("lab", 1) };
    assert!(matches!(store.insert_fleet(&row, launched("lab"), &audit("launch")), Err(StoreError::NoSecret(n)) if n == "API_KEY"));
    assert!(store.fleet("lab").unwrap().is_none(), "nothing stored");
    store.set_secret("API_KEY", "sekrit-one", "t", &audit("secret-set")).unwrap();
    store.insert_fleet(&row, launched("lab"), &audit("launch")).unwrap();
    assert!(matches!(store.delete_secret("API_KEY", &audit("secret-remove")), Err(StoreError::SecretInUse(_, users)) if users == "lab"));
    store.set_secret("API_KEY", "sekrit-two", "t", &audit("secret-set")).unwrap();
    assert_eq!(store.secret_values().unwrap()["API_KEY"], "sekrit-two");
    let listed = store.secrets().unwrap();
    assert_eq!((listed.len(), listed[0].bytes), (1, 10));
    // The audit names the secret, never its value.
    assert!(store.audit_log(100).unwrap().iter().all(|a| !a.detail.contains("sekrit")));
    store.mark_terminating("lab", "t", &audit("terminate")).unwrap();
    store.delete_fleet("lab", "t").unwrap();
    store.delete_secret("API_KEY", &audit("secret-remove")).unwrap();
    assert!(matches!(store.delete_secret("API_KEY", &audit("secret-remove")), Err(StoreError::NoSecret(_))));
}

/// A scenario event from an agent (no injection).
fn play(slot: u32, seq: u64, body: EventBody) -> AgentEvent {
    AgentEvent {
        epoch: format!("e{slot}"),
        seq,
        event: NewEvent { at: format!("t{seq}"), fleet: "squad".into(), agent: Some(slot), injection_id: None, body },
    }
}

fn shown(results: Vec<Ingested>) -> Vec<String> {
    results
        .into_iter()
        .map(|r| match r {
            Ingested::Stored(e) => match e.body {
                EventBody::RpsMove { round, choice, delta, score, .. } => {
                    format!("{:?} moved {choice} in {round}: {delta:?} {score:?}", e.agent)
                }
                EventBody::PlayRefused { play, reason } => format!("{:?} {play} refused: {reason}", e.agent),
                other => format!("{:?} {}", e.agent, other.name()),
            },
            other => format!("{other:?}"),
        })
        .collect()
}

/// Rounds are opened for the stored leader in its epoch; the leader's move is fenced by it,
/// every other armed agent plays once and is scored, and a deposed leader's haiku is refused.
#[test]
fn rps_moves_are_judged_where_they_are_stored() {
    use clawfleet_proto::scenario::{Chooser, Rps};
    let mv = |round, choice, epoch| EventBody::RpsMove { round, choice, by: Chooser::Random, epoch, delta: None, score: None };
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 4), launched("squad"), &audit("launch")).unwrap();
    assert_eq!(store.open_round("squad", "t").unwrap(), None, "no leader, no round");
    store.set_leader("squad", Some(0), 1, "t").unwrap();
    store.set_armed("squad", 3, false, "t", &audit("arm")).unwrap();
    let (round, leader) = store.open_round("squad", "t").unwrap().unwrap();
    assert_eq!((round, leader.slot, leader.epoch), (1, 0, 1));
    let results = store
        .ingest(vec![
            play(1, 1, mv(1, Rps::Paper, None)),
            play(0, 1, mv(1, Rps::Rock, Some(1))),
            play(1, 2, mv(1, Rps::Paper, None)),
            play(2, 1, mv(1, Rps::Scissors, None)),
            play(1, 3, mv(1, Rps::Rock, None)),
            play(3, 1, mv(1, Rps::Rock, None)),
            play(0, 2, mv(1, Rps::Paper, Some(1))),
        ])
        .unwrap();
    expect_test::expect![[r#"
        [
            "Some(1) rps_move refused: round 1 has no leader's move yet",
            "Some(0) moved rock in 1: None None",
            "Some(1) moved paper in 1: Some(1) Some(1)",
            "Some(2) moved scissors in 1: Some(-1) Some(-1)",
            "Some(1) rps_move refused: agent 1 played round 1 already",
            "Some(3) rps_move refused: agent 3 is disarmed: it takes part in no round",
            "Some(0) rps_move refused: round 1 has its leader's move already",
        ]
    "#]]
    .assert_debug_eq(&shown(results));
    let row = store.latest_round("squad").unwrap().unwrap();
    assert_eq!((row.round, row.choice, row.plays), (1, Some(Rps::Rock), 2));
    let board: Vec<_> = store.scoreboard("squad").unwrap().into_iter().map(|r| (r.slot, r.score, r.wins, r.losses)).collect();
    assert_eq!(board, [(1, 1, 1, 0), (2, -1, 0, 1)]);

    // Agent 1 takes over in epoch 2: agent 0's round-2 move and haiku, in epoch 1, are stale.
    let (round, _) = store.open_round("squad", "t").unwrap().unwrap();
    store.set_leader("squad", Some(1), 2, "t").unwrap();
    let results = store
        .ingest(vec![
            play(0, 3, mv(round, Rps::Rock, Some(1))),
            play(0, 4, EventBody::Haiku { epoch: 1, text: "old pond".into() }),
            play(1, 4, EventBody::Haiku { epoch: 2, text: "new pond".into() }),
            play(2, 2, EventBody::ThreeWords { text: "x".repeat(51) }),
            play(2, 3, EventBody::ThreeWords { text: "guarding the gate".into() }),
        ])
        .unwrap();
    expect_test::expect![[r#"
        [
            "Some(0) rps_move refused: agent 0 is not the leader (agent 1 is, in epoch 2)",
            "Some(0) haiku refused: agent 0 is not the leader (agent 1 is, in epoch 2)",
            "Some(1) haiku",
            "Some(2) three_words refused: a three-word phrase of 51 characters (at most 50)",
            "Some(2) three_words",
        ]
    "#]]
    .assert_debug_eq(&shown(results));
    assert_eq!(store.haiku("squad", 5).unwrap().len(), 1);
    let phrases: Vec<_> = store.phrases("squad").unwrap().into_iter().map(|p| (p.slot, p.text)).collect();
    assert_eq!(phrases, [(2, "guarding the gate".to_owned())]);
    // A refusal keeps its journal place: the same event again is a duplicate.
    assert_eq!(store.ingest(vec![play(0, 4, EventBody::Haiku { epoch: 1, text: "old pond".into() })]).unwrap(), vec![Ingested::Duplicate]);
}

/// A council's claims are judged where they are stored: the first claim of a role wins, an
/// agent holds one role, the last core role makes it active; a lost member frees its role only
/// before that; the deadline fails a council still open, naming what no one took.
#[test]
fn council_claims_are_judged_where_they_are_stored() {
    use clawfleet_core::council;
    use clawfleet_proto::council::{CouncilOpen, CouncilState};
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 4), launched("squad"), &audit("launch")).unwrap();
    let open = |roles: &[&str]| {
        let request = CouncilOpen {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            core: vec!["planner".into(), "coder".into()],
            timeout_seconds: None,
            brief: "ship it".into(),
        };
        store.open_council("squad", &council::validate(request).unwrap(), "t0", "t9", &audit("council-open"))
    };
    let (view, ev) = open(&["planner", "coder", "reviewer"]).unwrap();
    assert_eq!((view.id, view.state, ev.body.name()), (1, CouncilState::Open, "council_opened"));
    let err = open(&["planner", "coder"]).unwrap_err().to_string();
    assert_eq!(err, "fleet 'squad' has council 1 open: close it first (clawfleet council close squad 1)");

    let claim = |slot, seq, council, roles: &[&str]| {
        let roles = roles.iter().map(|r| r.to_string()).collect();
        // What an agent says it got is the control plane's to fill in.
        play(slot, seq, EventBody::CouncilClaim { council, roles, reason: "I can".into(), role: Some("forged".into()), activated: true })
    };
    let results = store
        .ingest(vec![
            claim(2, 1, 1, &["reviewer", "planner"]),
            claim(1, 1, 1, &["reviewer"]),
            claim(1, 2, 9, &["coder"]),
            claim(1, 3, 1, &[]),
            claim(0, 1, 1, &["planner"]),
            claim(2, 2, 1, &["coder"]),
        ])
        .unwrap();
    let shown: Vec<String> = results
        .into_iter()
        .map(|r| match r {
            Ingested::Stored(e) => match e.body {
                EventBody::CouncilClaim { role, activated, .. } => format!("{:?} got {role:?} {activated}", e.agent),
                EventBody::PlayRefused { play, reason } => format!("{:?} {play} refused: {reason}", e.agent),
                other => format!("{:?} {}", e.agent, other.name()),
            },
            other => format!("{other:?}"),
        })
        .collect();
    expect_test::expect![[r#"
        [
            "Some(2) got Some(\"reviewer\") false",
            "Some(1) council_claim refused: every role it claimed is taken: 'reviewer' by agent 2",
            "Some(1) council_claim refused: fleet 'squad' has no council 9",
            "Some(1) council_claim refused: it claimed no role",
            "Some(0) got Some(\"planner\") false",
            "Some(2) council_claim refused: agent 2 holds role 'reviewer' already (an agent holds one role)",
        ]
    "#]]
    .assert_debug_eq(&shown);
    assert_eq!(store.role_holder("squad", "planner").unwrap_err().to_string(), "fleet 'squad' has no active council");

    // Lost before activation: its role is free again, and another agent takes it.
    let freed = store.free_council_role("squad", 1, 2, "t3").unwrap().unwrap();
    assert_eq!(freed.body, EventBody::CouncilRoleFreed { council: 1, role: "reviewer".into(), slot: 2 });
    assert!(store.free_council_role("squad", 1, 2, "t3").unwrap().is_none(), "freed once");
    let results = store.ingest(vec![claim(1, 4, 1, &["coder"]), claim(3, 1, 1, &["reviewer"])]).unwrap();
    assert!(matches!(&results[0], Ingested::Stored(e) if matches!(&e.body, EventBody::CouncilClaim { activated: true, .. })));
    let view = store.council("squad", 1).unwrap();
    assert_eq!(view.state, CouncilState::Active);
    let holders: Vec<_> = view.seats.iter().map(|s| (s.role.as_str(), s.slot, s.reason.as_deref())).collect();
    assert_eq!(holders, [("planner", Some(0), Some("I can")), ("coder", Some(1), Some("I can")), ("reviewer", Some(3), Some("I can"))]);
    assert_eq!(store.role_holder("squad", "coder").unwrap(), 1);
    assert_eq!(store.council_activated("squad", 1, "t4").unwrap().body.name(), "council_activated");

    // Active: members keep their roles while away, and the deadline passes it by.
    assert!(store.free_council_role("squad", 1, 1, "t5").unwrap().is_none());
    assert!(store.expire_council("squad", 1, "t9").unwrap().is_none());
    assert_eq!(store.close_council("squad", 1, "t10", &audit("council-close")).unwrap().body.name(), "council_closed");
    assert_eq!(store.close_council("squad", 1, "t10", &audit("council-close")).unwrap_err().to_string(), "council 1 is closed already");
    assert_eq!(store.role_holder("squad", "coder").unwrap_err().to_string(), "fleet 'squad' has no active council");

    // A council no one joins fails at its deadline, naming the core roles.
    let (view, _) = open(&["planner", "coder", "reviewer"]).unwrap();
    let ev = store.expire_council("squad", view.id, "t20").unwrap().unwrap();
    assert_eq!(ev.body, EventBody::CouncilFailed { council: view.id, unclaimed: vec!["planner".into(), "coder".into()] });
    let states: Vec<_> = store.councils("squad").unwrap().iter().map(|c| c.state).collect();
    assert_eq!(states, [CouncilState::Failed, CouncilState::Closed]);
    assert!(store.live_councils().unwrap().is_empty());
    // A removed fleet takes its councils with it.
    store.delete_fleet("squad", "t30").unwrap();
    assert!(store.councils("squad").unwrap().is_empty());
}

/// A task is assigned with its injection in one transaction, to an agent that holds no other;
/// a lost worker's task goes back, and its old attempt's answer is not taken.
#[test]
fn project_tasks_are_claimed_once_and_late_answers_are_not_taken() {
    use clawfleet_core::project::{normalize, with_integration};
    use clawfleet_proto::project::{ProjectStatus, TaskInput, TaskStatus};
    use clawfleet_store::{Ended, NewProject};
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("crew", 2), launched("crew"), &audit("launch")).unwrap();
    let input = |id: &str| TaskInput { task_id: Some(id.into()), title: id.into(), prompt: "do it".into(), ..TaskInput::default() };
    let tasks = with_integration(normalize(vec![input("T-001"), input("T-002")]).unwrap(), "p1", "main");
    let workers = vec!["crew".to_owned()];
    let p = NewProject {
        id: "p1",
        title: "t",
        repo_path: "/r",
        base_branch: "main",
        workspace_subdir: "repo",
        workers: &workers,
        tasks: &tasks,
    };
    let (view, ev) = store.create_project(&p, 1_000, "t", &audit("project-create")).unwrap();
    assert_eq!((view.status, view.task_order.len(), ev.body.name()), (ProjectStatus::Draft, 3, "project_created"));
    store.set_project_status("p1", ProjectStatus::Running, None, 1_000, "t").unwrap();
    let assign = |task: &str, slot: u32, injection: &str| {
        let targets = [slot];
        let inj = NewInjection {
            id: injection,
            fleet: "crew",
            prompt: "do it",
            at: "t",
            caller: "project p1",
            targets: &targets,
            request_id: None,
        };
        store.assign_task("p1", task, &inj, "b", 1_000).unwrap().is_some()
    };
    assert!(assign("T-001", 0, "i1"));
    assert!(!assign("T-002", 0, "i2"), "agent 0 holds a task already");
    assert!(!assign("T-001", 1, "i3"), "T-001 is assigned already");
    assert!(assign("T-002", 1, "i4"));
    assert_eq!(store.task_holders().unwrap().len(), 2);
    // Agent 0 is lost: T-001 goes back, to run again after a backoff.
    let events = store.give_back_task("crew", 0, 2_000, "t").unwrap();
    assert!(
        matches!(&events[0].body, EventBody::ProjectTaskResult { status: TaskStatus::Pending, result_status, .. } if result_status == "worker_lost")
    );
    let t1 = &store.project("p1", 2_000).unwrap().tasks["T-001"];
    assert_eq!((t1.status, t1.attempts, t1.assignment_injection_id.as_deref()), (TaskStatus::Pending, 1, None));
    assert!(t1.retry_at.is_some());
    assert!(assign("T-001", 0, "i5"));
    let done = |task: &str, injection: &str| Ended {
        project: "p1".into(),
        task_id: task.into(),
        injection_id: injection.into(),
        answer: Ok(format!("TASK_RESULT\ntask_id: {task}\nstatus: done\nhead_commit: abc\n")),
    };
    assert!(store.end_attempt(&done("T-001", "i1"), 3_000, "t").unwrap().is_empty(), "the lost attempt's answer is not taken");
    assert_eq!(store.project("p1", 3_000).unwrap().tasks["T-001"].status, TaskStatus::Assigned);
    assert_eq!(store.end_attempt(&done("T-001", "i5"), 3_000, "t").unwrap().len(), 1);
    assert!(store.end_attempt(&done("T-001", "i5"), 3_000, "t").unwrap().is_empty(), "taken once");
    store.end_attempt(&done("T-002", "i4"), 3_000, "t").unwrap();
    assert!(assign("T-003", 1, "i6"), "the integration task, once both are done");
    let events = store.end_attempt(&done("T-003", "i6"), 4_000, "t").unwrap();
    assert!(events.iter().any(|e| matches!(&e.body, EventBody::ProjectStatus { status: ProjectStatus::Completed, .. })), "{events:?}");
    let view = store.project("p1", 4_000).unwrap();
    assert_eq!(
        (view.status, view.task_counts.completed, view.integration_head_commit.as_deref()),
        (ProjectStatus::Completed, 3, Some("abc"))
    );
}

#[test]
fn a_queued_item_is_dispatched_once_to_an_agent_that_holds_nothing() {
    use clawfleet_proto::queue::QueueStatus;
    use clawfleet_store::{Enqueue, NewQueueItem};
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 2), launched("squad"), &audit("launch")).unwrap();
    let add = |id: &str, agent: Option<u32>| {
        let e = Enqueue { fleet: "squad", prompt: "hi", source: Some("ops"), request_id: Some("r1"), at: "t0", by: "admin", ..enqueue() };
        store.enqueue(&e, &[NewQueueItem { id, agent }], &audit("queue")).map(|(q, events)| (q.items, events))
    };
    let dispatch = |id: &str, injection: &str, slot: u32| {
        let targets = [slot];
        let inj = NewInjection {
            id: injection,
            fleet: "squad",
            prompt: "hi",
            at: "t1",
            caller: "queue",
            targets: &targets,
            request_id: Some("r1"),
        };
        store.dispatch_queued(id, &inj).unwrap().map(|(_, events)| events.iter().map(|e| e.body.name()).collect::<Vec<_>>())
    };
    let (items, events) = add("q1", None).unwrap();
    assert_eq!((items[0].status, events[0].body.name()), (QueueStatus::Queued, "queue_enqueued"));
    add("q2", Some(1)).unwrap();
    let waiting = |s: &Store| s.queue(None, false).unwrap().into_iter().map(|i| i.queue_id).collect::<Vec<_>>();
    assert_eq!(waiting(&store), ["q1", "q2"]);
    // q1 to agent 0, once; q2 is agent 1's, and agent 0 holds q1 anyway.
    assert_eq!(dispatch("q1", "i1", 0), Some(vec!["inject_ack", "queue_dispatched"]));
    assert_eq!(dispatch("q1", "i2", 1), None);
    assert_eq!(dispatch("q2", "i3", 0), None);
    let q1 = store.queue_item("q1").unwrap();
    assert_eq!((q1.status, q1.dispatched_to, q1.injection_id.as_deref()), (QueueStatus::Dispatched, Some(0), Some("i1")));
    assert_eq!(waiting(&store), ["q2"]);
    assert!(store.task_holders().unwrap().contains(&("squad".to_owned(), 0)), "a project assigns agent 0 nothing meanwhile");
    // A waiting item is cancelled once; a dispatched one is not.
    let (q2, ev) = store.cancel_queued("q2", "t2", &audit("queue-cancel")).unwrap();
    assert_eq!((q2.status, ev.body.name()), (QueueStatus::Cancelled, "queue_cancelled"));
    assert_eq!(store.cancel_queued("q2", "t2", &audit("queue-cancel")).unwrap_err().to_string(), "queue item q2 is cancelled already");
    assert_eq!(
        store.cancel_queued("q1", "t2", &audit("queue-cancel")).unwrap_err().to_string(),
        "queue item q1 is dispatched already (to squad/0, injection i1)"
    );
    assert_eq!(store.cancel_queued("nope", "t2", &audit("queue-cancel")).unwrap_err().to_string(), "no queue item 'nope'");
    // Agent 0 is free again once its turn is over (an answer alone does not free it).
    store.ingest(vec![agent_event(0, "e1", 1, "i1", EventBody::Assistant { content: "hello".into() })]).unwrap();
    assert_eq!(store.finish_dispatched("t3").unwrap(), 0);
    store.ingest(vec![agent_event(0, "e1", 2, "i1", EventBody::TurnComplete {})]).unwrap();
    assert_eq!(store.finish_dispatched("t3").unwrap(), 1);
    assert_eq!(store.queue_item("q1").unwrap().status, QueueStatus::Done);
    add("q3", None).unwrap();
    assert!(dispatch("q3", "i4", 0).is_some());
    // Dropped once, saying why.
    add("q4", Some(1)).unwrap();
    let why = "fleet 'squad' has no agent 1 (it has 1)";
    assert_eq!(store.drop_queued("q4", why, "t4").unwrap()[0].body.name(), "queue_dropped");
    assert!(store.drop_queued("q4", "again", "t4").unwrap().is_empty());
    assert_eq!(store.queue_item("q4").unwrap().reason.as_deref(), Some(why));
    assert_eq!(store.queue(Some("squad"), true).unwrap().len(), 4);
    assert!(store.queue(Some("other"), true).unwrap().is_empty());
    // Finished items beyond the newest one are forgotten; the dispatched one stays.
    assert_eq!(store.prune_queue(1).unwrap(), 2);
    let kept: Vec<String> = store.queue(Some("squad"), true).unwrap().into_iter().map(|i| i.queue_id).collect();
    assert_eq!(kept, ["q3", "q4"]);
    assert_eq!(store.prune_queue(1).unwrap(), 0);
    // All of it is in the file.
    assert_eq!(
        store.events_after(&EventFilter::default(), 0, 1000).unwrap().iter().filter(|e| e.body.name().starts_with("queue_")).count(),
        8
    );
}

#[test]
fn a_fleet_queues_only_so_much_and_only_while_active() {
    use clawfleet_proto::queue::MAX_QUEUED_PER_FLEET;
    use clawfleet_store::{Enqueue, NewQueueItem};
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 1), launched("squad"), &audit("launch")).unwrap();
    let e = Enqueue { fleet: "squad", prompt: "hi", at: "t0", by: "admin", ..enqueue() };
    let ids: Vec<String> = (0..MAX_QUEUED_PER_FLEET).map(|i| format!("q{i}")).collect();
    let items: Vec<NewQueueItem<'_>> = ids.iter().map(|id| NewQueueItem { id, agent: None }).collect();
    store.enqueue(&e, &items, &audit("queue")).unwrap();
    let err = store.enqueue(&e, &[NewQueueItem { id: "more", agent: None }], &audit("queue")).unwrap_err();
    assert_eq!(err.to_string(), "fleet 'squad' has 1000 items queued, the most it takes: wait for some to be dispatched");
    let e = Enqueue { fleet: "gone", ..e };
    assert!(matches!(store.enqueue(&e, &[NewQueueItem { id: "x", agent: None }], &audit("queue")), Err(StoreError::NoFleet(_))));
}

#[test]
fn a_lost_planners_plan_is_queued_again_and_its_late_answer_is_not_taken() {
    use clawfleet_proto::project::PlanStatus;
    use clawfleet_store::{NewPlan, PlanEnded};
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("thinkers", 2), launched("thinkers"), &audit("launch")).unwrap();
    let workers = vec!["thinkers".to_owned()];
    let plan = NewPlan {
        id: "pl1",
        title: "t",
        repo_path: "",
        base_branch: "main",
        workspace_subdir: "repo",
        spec: "make a graph",
        planner: "thinkers",
        workers: &workers,
        auto_start: false,
    };
    store.create_plan(&plan, 1_000, "t", &audit("project-plan")).unwrap();
    let assign = |slot: u32, injection: &str| {
        let targets = [slot];
        let inj = NewInjection {
            id: injection,
            fleet: "thinkers",
            prompt: "plan",
            at: "t",
            caller: "plan pl1",
            targets: &targets,
            request_id: None,
        };
        store.assign_plan("pl1", &inj, 1_000).unwrap().is_some()
    };
    assert!(assign(0, "i1"));
    assert!(!assign(1, "i2"), "the plan is being planned already");
    // Another agent's loss gives nothing back; the planner's gives the plan back, once.
    assert!(store.give_back_plan("thinkers", 1, 2_000, "t").unwrap().is_empty());
    let events = store.give_back_plan("thinkers", 0, 2_000, "t").unwrap();
    assert!(matches!(&events[..], [e] if matches!(&e.body, EventBody::PlanQueued { plan_id, .. } if plan_id == "pl1")), "{events:?}");
    assert!(store.give_back_plan("thinkers", 0, 2_000, "t").unwrap().is_empty());
    let view = store.plan("pl1").unwrap().view;
    assert_eq!((view.status, view.planner_node_id, view.injection_id.as_deref()), (PlanStatus::Queued, None, None));
    assert_eq!(view.last_error.as_deref(), Some("its planner thinkers/0 was lost; it is queued again"));
    assert!(store.task_holders().unwrap().is_empty(), "agent 0 holds nothing now");
    // The lost planner's answer, if it comes late, is not taken: the plan waits for another.
    store
        .ingest(vec![AgentEvent {
            epoch: "e1".into(),
            seq: 1,
            event: NewEvent {
                at: "t".into(),
                fleet: "thinkers".into(),
                agent: Some(0),
                injection_id: Some("i1".into()),
                body: EventBody::Assistant { content: "TASK_GRAPH_JSON\n[]".into() },
            },
        }])
        .unwrap();
    assert_eq!(store.ended_plans().unwrap(), Vec::<PlanEnded>::new());
    assert!(assign(1, "i3"), "another agent takes it");
    assert_eq!(store.plan("pl1").unwrap().view.attempts, 2);
}

#[test]
fn a_delegation_is_queued_once_and_its_chain_follows_its_injection() {
    use clawfleet_store::{Delegated, Enqueue, NewQueueItem};
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 1), launched("squad"), &audit("launch")).unwrap();
    let chain = vec!["boss".to_owned()];
    let e = Enqueue {
        fleet: "squad",
        prompt: "do it",
        source: Some("boss"),
        request_id: None,
        at: "2026-12-03T12:00:00.000Z",
        by: "agent boss/0 (delegation)",
        delegated: Some(Delegated { chain: &chain, origin: "i0#0", reply: None }),
        join_since: None,
    };
    let (first, _) = store.enqueue(&e, &[NewQueueItem { id: "q1", agent: None }], &audit("delegate")).unwrap();
    // The same directive read again makes nothing, and says nothing in the audit trail.
    let audits = |s: &Store| s.audit_log(100).unwrap().len();
    let before = audits(&store);
    let (again, events) = store.enqueue(&e, &[NewQueueItem { id: "q2", agent: None }], &audit("delegate")).unwrap();
    assert_eq!((first.items.len(), again.items.len(), events.len(), audits(&store)), (1, 0, 0, before));
    assert_eq!(store.delegations_since("boss", "2026-12-03T11:59:00.000Z").unwrap(), 1);
    assert_eq!(store.delegations_since("boss", "2026-12-03T12:00:01.000Z").unwrap(), 0);
    let targets = [0];
    let inj = NewInjection { id: "i1", fleet: "squad", prompt: "do it", at: "t1", caller: "queue", targets: &targets, request_id: None };
    store.dispatch_queued("q1", &inj).unwrap().unwrap();
    assert_eq!(store.chain_of("i1").unwrap(), ["boss"]);
    assert!(store.chain_of("i0").unwrap().is_empty(), "an injection no item carried came through no fleet");
}

/// An enqueue with every optional part left out.
fn enqueue() -> clawfleet_store::Enqueue<'static> {
    clawfleet_store::Enqueue {
        fleet: "squad",
        prompt: "hi",
        source: None,
        request_id: None,
        at: "t0",
        by: "admin",
        delegated: None,
        join_since: None,
    }
}

#[test]
fn a_client_routing_the_same_directive_joins_the_delegation_and_a_reply_goes_back_once() {
    use clawfleet_store::{Delegated, NewQueueItem, ReplyTo, reply_origin};
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 2), launched("squad"), &audit("launch")).unwrap();
    store.insert_fleet(&fleet("boss", 1), launched("boss"), &audit("launch")).unwrap();
    let chain = vec!["boss".to_owned()];
    let at = "2026-12-03T12:00:00.000Z";
    let reply = Some(ReplyTo { agent: "boss/0", injection: "i0" });
    let delegation = |origin: &'static str| clawfleet_store::Enqueue {
        prompt: "do it",
        source: Some("boss"),
        at,
        by: "agent boss/0 (delegation)",
        delegated: Some(Delegated { chain: &chain, origin, reply }),
        join_since: Some("2026-12-03T11:59:00.000Z"),
        ..enqueue()
    };
    let client = |prompt: &'static str, source: Option<&'static str>, since: &'static str| clawfleet_store::Enqueue {
        prompt,
        source,
        request_id: Some("web-1"),
        at: "2026-12-03T12:00:01.000Z",
        by: "operator",
        join_since: Some(since),
        ..enqueue()
    };
    let item = |id| [NewQueueItem { id, agent: None }];
    let (made, events) = store.enqueue(&delegation("i0#0"), &item("q1"), &audit("delegate")).unwrap();
    assert_eq!((made.items.len(), made.joined, events.len()), (1, 0, 1));
    // The web backend read the same answer: its enqueue is the delegation's item, with its
    // request id, and nothing new; the same work once more (or other work) is queued.
    let (joined, events) = store.enqueue(&client("do it", Some("boss"), "2026-12-03T11:59:01.000Z"), &item("w1"), &audit("queue")).unwrap();
    assert_eq!((joined.joined, joined.items[0].queue_id.as_str(), events.len()), (1, "q1", 0));
    assert_eq!(store.queue_item("q1").unwrap().request_id.as_deref(), Some("web-1"));
    let (again, _) = store.enqueue(&client("do it", Some("boss"), "2026-12-03T11:59:01.000Z"), &item("w2"), &audit("queue")).unwrap();
    assert_eq!((again.joined, again.items[0].queue_id.as_str()), (0, "w2"));
    for (id, prompt, source, since) in [
        ("w-a", "do that", Some("boss"), "2026-12-03T11:59:01.000Z"),
        ("w-b", "do it", None, "2026-12-03T11:59:01.000Z"),
        ("w-c", "do it", Some("boss"), "2026-12-03T12:00:00.500Z"),
    ] {
        let (q, _) = store.enqueue(&client(prompt, source, since), &item(id), &audit("queue")).unwrap();
        assert_eq!(q.joined, 0, "{prompt} from {source:?} since {since}");
        store.cancel_queued(id, "t", &audit("queue-cancel")).unwrap();
    }
    // The other way round: the client was first, the delegation takes its item (and gives it
    // its way back).
    let (first, _) = store.enqueue(&client("check", Some("boss"), "2026-12-03T11:59:01.000Z"), &item("w3"), &audit("queue")).unwrap();
    assert_eq!(first.joined, 0);
    let late = clawfleet_store::Enqueue { prompt: "check", ..delegation("i0#1") };
    let (took, events) = store.enqueue(&late, &item("q2"), &audit("delegate")).unwrap();
    assert_eq!(
        (took.joined, took.items[0].queue_id.as_str(), took.items[0].reply_to.as_deref(), events.len()),
        (1, "w3", Some("boss/0"), 0)
    );
    // The answer of q1's injection goes back to boss/0, once; a reply is not a delegation.
    let targets = [0];
    let inj = NewInjection { id: "i1", fleet: "squad", prompt: "do it", at: "t1", caller: "queue", targets: &targets, request_id: None };
    store.dispatch_queued("q1", &inj).unwrap().unwrap();
    let route = store.reply_route("i1").unwrap().unwrap();
    assert_eq!((route.agent.as_str(), route.injection.as_str(), route.chain), ("boss/0", "i0", chain.clone()));
    assert_eq!(store.reply_route("i0").unwrap(), None);
    let back = vec!["boss".to_owned(), "squad".to_owned()];
    let origin = reply_origin("i1");
    let reply = clawfleet_store::Enqueue {
        fleet: "boss",
        prompt: "[Reply from /swarm[squad]/node[0] for request i0]\ndone",
        source: Some("squad"),
        at,
        by: "agent squad/0 (reply)",
        delegated: Some(Delegated { chain: &back, origin: &origin, reply: None }),
        ..enqueue()
    };
    let replied = |id| store.enqueue(&reply, &[NewQueueItem { id, agent: Some(0) }], &audit("delegate-reply")).unwrap().0.items.len();
    assert_eq!((replied("r1"), replied("r2")), (1, 0));
    assert_eq!(store.delegations_since("squad", "2026-12-03T11:59:00.000Z").unwrap(), 0);
    assert_eq!(store.delegations_since("boss", "2026-12-03T11:59:00.000Z").unwrap(), 2);
}

/// An approval is made where the agent's request is stored, answered once while pending (or
/// refused by the timeout), sent until the agent takes the answer, and nothing else moves it.
#[test]
fn an_approval_is_answered_once_and_ends_when_its_agent_takes_the_answer() {
    use clawfleet_proto::approval::ApprovalStatus;
    use clawfleet_store::Answer;
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 2), launched("squad"), &audit("launch")).unwrap();
    inject(&store, "i1", &[0, 1]);
    let ask = |slot: u32, seq: u64, call: &str| {
        let body = EventBody::ExecApprovalRequired {
            approval_id: Some(99),
            call_id: call.into(),
            command: "make deploy".into(),
            cwd: Some("/w".into()),
            reason: None,
        };
        store.ingest(vec![agent_event(slot, "e", seq, "i1", body)]).unwrap()
    };
    let stored = ask(0, 1, "c1");
    // The id is the control plane's, whatever the agent said.
    assert!(
        matches!(&stored[..], [Ingested::Stored(e)] if matches!(e.body, EventBody::ExecApprovalRequired { approval_id: Some(1), .. })),
        "{stored:?}"
    );
    assert_eq!(shown(ask(0, 2, "c1")), ["Some(0) exec_approval_required refused: call c1 asked for an approval already"]);
    let long = "x".repeat(65);
    assert_eq!(shown(ask(0, 3, &long)), ["Some(0) exec_approval_required refused: the call id is 65 bytes, over the 64-byte limit"]);
    ask(1, 1, "c1");
    let list = store.approvals(Some("squad"), false).unwrap();
    let pending: Vec<(u64, u32, ApprovalStatus)> = list.approvals.iter().map(|a| (a.approval_id, a.agent, a.status)).collect();
    assert_eq!(pending, [(1, 0, ApprovalStatus::Pending), (2, 1, ApprovalStatus::Pending)]);
    let v0 = list.version;

    // Answered once; a second answer is refused, naming the first.
    let yes = Answer { approved: true, decision: Some("accept"), by: "root (operator)", at: "t2" };
    let (a, ev) = store.answer_approval(1, &yes, &audit("approve")).unwrap();
    assert_eq!(
        (a.status, a.approved, ev.body.name(), ev.agent),
        (ApprovalStatus::Submitted, Some(true), "exec_approval_submitted", Some(0))
    );
    assert!(store.approvals(None, false).unwrap().version > v0, "the version grows with a change");
    let err = store.answer_approval(1, &Answer { approved: false, ..yes }, &audit("approve")).unwrap_err();
    assert_eq!(err.to_string(), "approval 1 is answered already (approved by root (operator))");
    assert_eq!(store.answer_approval(7, &yes, &audit("approve")).unwrap_err().to_string(), "no approval 7");
    // Sent until taken.
    assert_eq!(store.unsent_approvals("t3").unwrap().len(), 1);
    store.approval_sent(1, "t3").unwrap();
    assert!(store.unsent_approvals("t3").unwrap().is_empty());
    assert_eq!(store.unsent_approvals("t4").unwrap().len(), 1, "sent again when it was not taken");
    // The agent takes it once; an answer that was never sent is not taken.
    let took = |slot: u32, seq: u64, call: &str| {
        let body = EventBody::ExecApprovalResolved { call_id: call.into(), approved: true, waiting: true };
        shown(store.ingest(vec![agent_event(slot, "e", seq, "i1", body)]).unwrap())
    };
    assert_eq!(took(0, 4, "c1"), ["Some(0) exec_approval_resolved"]);
    assert_eq!(took(0, 5, "c1"), ["Some(0) exec_approval_resolved refused: no answer was sent for call c1"]);
    assert_eq!(took(1, 2, "c1"), ["Some(1) exec_approval_resolved refused: no answer was sent for call c1"]);
    assert_eq!(store.approval(1).unwrap().status, ApprovalStatus::Resolved);
    // The other waited too long: a no.
    // Asked at the store's time (the agent said "t"): one asked before the year 3000 has waited.
    assert!(store.approval(2).unwrap().created_at.starts_with("20"), "{:?}", store.approval(2).unwrap().created_at);
    assert!(store.expire_approvals("2000-01-01T00:00:00.000Z", "t9", "x").unwrap().is_empty());
    let expired = store.expire_approvals("3000-01-01T00:00:00.000Z", "t9", "the control plane (no answer in 300 s)").unwrap();
    assert_eq!(expired.len(), 1);
    let (a, ev) = &expired[0];
    assert_eq!((a.approval_id, a.approved, a.decision.as_deref()), (2, Some(false), Some("timeout")));
    assert!(matches!(&ev.body, EventBody::ExecApprovalSubmitted { approved: false, .. }));
    assert!(store.expire_approvals("3000-01-01T00:00:00.000Z", "t9", "x").unwrap().is_empty());
    let open: Vec<u64> = store.approvals(None, false).unwrap().approvals.iter().map(|a| a.approval_id).collect();
    assert_eq!(open, [2], "taken approvals leave the list");
    assert_eq!(store.approvals(None, true).unwrap().approvals.len(), 2);
    // One whose agent is gone ends (it is resolved, answered as it was).
    store.abandon_approval(2).unwrap();
    assert_eq!(store.approval(2).unwrap().status, ApprovalStatus::Resolved);
    assert!(store.unsent_approvals("3000-01-01T00:00:00.000Z").unwrap().is_empty());
    // Resolved ones beyond the newest are forgotten.
    assert_eq!(store.prune_approvals(1).unwrap(), 1);
    assert_eq!(store.approvals(None, true).unwrap().approvals.iter().map(|a| a.approval_id).collect::<Vec<_>>(), [2]);
}

/// A migration on each side: the source holds what arrives after it began, vacates its slot
/// when it commits (and then refuses injections for it), sends held ones on once each; the
/// peer grows its fleet when the snapshot arrives and gives the slot back when aborted.
#[test]
fn migrations_hold_vacate_forward_and_give_back() {
    use clawfleet_proto::rack::{Direction, MigrationState as S};
    use clawfleet_store::{Advance, NewMigration};
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 3), launched("squad"), &audit("launch")).unwrap();
    inject(&store, "before", &[1]);
    let m = NewMigration { id: "m1", peer: "rack-b", fleet: "squad", slot: 1, remote_fleet: "squad" };
    let (started, event) = store.begin_migration(&m, "t2", &audit("migrate")).unwrap();
    assert_eq!((started.state, started.direction, event.agent), (S::Offered, Direction::Out, Some(1)));
    assert!(matches!(store.begin_migration(&m, "t2", &audit("migrate")), Err(StoreError::Migrating { id, .. }) if id == "m1"));
    let (_, held_from) = store.migration("m1", Direction::Out).unwrap().unwrap();
    assert_eq!(store.unacknowledged_before("squad", 1, held_from).unwrap(), 1);
    inject(&store, "during", &[0, 1, 2]);
    let held = store.held_injections("squad", 1, held_from).unwrap();
    assert_eq!(held.iter().map(|h| h.injection_id.as_str()).collect::<Vec<_>>(), ["during"]);

    // Only from the states it is in.
    assert!(
        store
            .advance_migration(
                "m1",
                Direction::Out,
                Advance { from: &[S::Transferred], to: S::Committing, error: None, detail: "x".into(), remote_slot: None },
                "t3"
            )
            .unwrap()
            .is_none()
    );
    store
        .advance_migration(
            "m1",
            Direction::Out,
            Advance { from: &[S::Offered], to: S::Transferred, error: None, detail: "sent".into(), remote_slot: None },
            "t3",
        )
        .unwrap()
        .unwrap();
    let (m1, events) = store
        .advance_migration(
            "m1",
            Direction::Out,
            Advance { from: &[S::Transferred], to: S::Committing, error: None, detail: "go".into(), remote_slot: None },
            "t4",
        )
        .unwrap()
        .unwrap();
    assert_eq!((m1.state, events[0].body.name()), (S::Committing, "migration"));
    let vacated = store.vacated().unwrap();
    assert_eq!((vacated.len(), vacated[0].slot, vacated[0].defected, vacated[0].peer.as_str()), (1, 1, true, "rack-b"));
    assert_eq!(store.vacated_slots("squad").unwrap().into_iter().collect::<Vec<_>>(), [1]);
    let refused = store.create_injection(
        &NewInjection { id: "after", fleet: "squad", prompt: "hi", at: "t5", caller: "test", targets: &[1], request_id: None },
        &audit("inject"),
    );
    assert!(matches!(refused, Err(StoreError::Defected { rack, .. }) if rack == "rack-b"));
    // Sent on once: the second time finds no row.
    let e = store.injection_forwarded("m1", &held[0], "squad/3", "remote-1", "t6").unwrap().unwrap();
    assert_eq!(e.body, EventBody::InjectForwarded { rack: "rack-b".into(), agent: "squad/3".into(), injection_id: "remote-1".into() });
    assert!(store.injection_forwarded("m1", &held[0], "squad/3", "remote-1", "t6").unwrap().is_none());
    assert!(store.held_injections("squad", 1, held_from).unwrap().is_empty());
    assert_eq!(store.migrations(10).unwrap()[0].forwarded, 1);

    // The peer's side: the offer again is the same migration; the arrival grows the fleet by
    // one slot, held; an abort shrinks it back, failing what was held for it.
    store.insert_fleet(&fleet("dest", 2), launched("dest"), &audit("launch")).unwrap();
    let offered = store.offered_migration("m2", "rack-a", ("squad", 1), "dest", "t7").unwrap();
    assert_eq!((offered.direction, offered.slot), (Direction::In, None));
    assert_eq!(store.offered_migration("m2", "rack-a", ("squad", 1), "dest", "t8").unwrap().created_at, "t7");
    let (arrived, _) = store.migration_arrived("m2", "t9", &audit("migrate")).unwrap().unwrap();
    assert_eq!((arrived.state, arrived.slot), (S::Transferred, Some(2)));
    assert!(store.migration_arrived("m2", "t9", &audit("migrate")).unwrap().is_none());
    assert_eq!(store.fleet("dest").unwrap().unwrap().replicas, 3);
    store
        .advance_migration(
            "m2",
            Direction::In,
            Advance {
                from: &[S::Offered, S::Transferred, S::Ready],
                to: S::Aborted,
                error: Some("no"),
                detail: "aborted".into(),
                remote_slot: None,
            },
            "t10",
        )
        .unwrap()
        .unwrap();
    assert_eq!(store.fleet("dest").unwrap().unwrap().replicas, 2);
    assert_eq!(store.live_migrations().unwrap().iter().map(|(m, _)| m.id.as_str()).collect::<Vec<_>>(), ["m1"]);
    // Scaling below a vacated slot forgets it.
    store.scale_fleet("squad", 1, "t11", &audit("scale")).unwrap();
    assert!(store.vacated().unwrap().is_empty());
}

#[test]
fn retention_drops_old_events_but_never_an_open_injections() {
    let store = Store::in_memory().unwrap();
    store.insert_fleet(&fleet("squad", 2), launched("squad"), &audit("launch")).unwrap();
    inject(&store, "done", &[0]);
    let turn =
        vec![agent_event(0, "e1", 1, "done", EventBody::InjectDelivered {}), agent_event(0, "e1", 2, "done", EventBody::TurnComplete {})];
    store.ingest(turn).unwrap();
    // Open: agent 1 never took it (its outbox row waits), agent 0's turn has not ended.
    inject(&store, "open", &[0, 1]);
    store.ingest(vec![agent_event(0, "e1", 3, "open", EventBody::InjectDelivered {})]).unwrap();
    let names = |s: &Store| -> Vec<(String, String)> {
        let mut all = Vec::new();
        for id in ["done", "open"] {
            all.extend(s.injection_events("squad", id).unwrap().iter().map(|e| (id.to_owned(), e.body.name().to_owned())));
        }
        all
    };
    let newest = store.newest_event_id().unwrap();

    // By age: marks by the control plane's clock say what the table had when.
    store.mark_events(1_000, 0).unwrap();
    assert_eq!(store.retention_cutoff(Some(999), None).unwrap(), None, "nothing is older than the first mark");
    assert_eq!(store.retention_cutoff(Some(1_000), None).unwrap(), Some(newest));
    // By rows: all but the newest 2; the larger cutoff wins.
    assert_eq!(store.retention_cutoff(None, Some(2)).unwrap(), Some(newest - 2));
    assert_eq!(store.retention_cutoff(Some(1_000), Some(2)).unwrap(), Some(newest));
    assert_eq!(store.retention_cutoff(None, Some(1_000)).unwrap(), None);

    // In batches: the launch and the ended injection go, the open one stays whole.
    let cutoff = newest;
    let (mut after, mut dropped) = (0, 0);
    while let (n, Some(last)) = store.drop_events(after, cutoff, 2).unwrap() {
        dropped += n;
        after = last;
    }
    assert_eq!(dropped, 4, "fleet_launched, and done's inject_ack, inject_delivered, turn_complete");
    let kept = names(&store);
    assert!(kept.iter().all(|(id, _)| id == "open") && kept.len() == 3, "{kept:?}");

    // Once its every turn ended, the open one goes too.
    store.ingest(vec![agent_event(0, "e1", 4, "open", EventBody::TurnComplete {})]).unwrap();
    store.ingest(vec![agent_event(1, "e9", 1, "open", EventBody::InjectDelivered {})]).unwrap();
    let (n, _) = store.drop_events(0, cutoff, 100).unwrap();
    assert_eq!(n, 0, "agent 1's turn is still open");
    store.ingest(vec![agent_event(1, "e9", 2, "open", EventBody::InjectFailed { error: "x".into() })]).unwrap();
    let (n, _) = store.drop_events(0, cutoff, 100).unwrap();
    assert_eq!(n, 3, "the events at or below the cutoff; the newer ones wait for a later one");
    // Marks before the horizon go, but the one that is the cutoff stays.
    store.mark_events(2_000, 1_500).unwrap();
    store.mark_events(3_000, 2_500).unwrap();
    assert_eq!(store.retention_cutoff(Some(2_600), None).unwrap(), Some(store.newest_event_id().unwrap()));
    assert_eq!(store.retention_cutoff(Some(1_000), None).unwrap(), None, "the mark at 1000 is forgotten");
}

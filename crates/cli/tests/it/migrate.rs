//! Migration between two racks end to end (`clawfleet migrate FLEET/SLOT --to RACK`): every
//! precondition checked before anything changes; the agent's conversation goes with it; the
//! injections sent to it meanwhile are answered once, by the copy that took over; the slot it
//! left stays empty (DEFECTED) and its new one says FROM; a peer that is down or refuses
//! changes nothing; and a control plane killed after any durable step, on either side, ends
//! with exactly one copy once it is back.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Hosts, Plane, PlaneOptions, count, events, eventually};

/// Rack `rack-a`, which knows `rack-b` as its peer with a `peer` token `rack-b` made for it.
pub(crate) fn two_racks(a_env: Vec<(String, String)>, b_env: Vec<(String, String)>) -> (Plane, Plane, tempfile::TempDir) {
    let b = Plane::with(PlaneOptions { up_args: vec!["--rack".into(), "rack-b".into()], env: b_env, ..PlaneOptions::default() });
    let token = b.ok(&["token", "create", "--role", "peer", "--name", "rack-a"]).trim().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rack-b.token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let a = Plane::with(PlaneOptions {
        up_args: ["--rack", "rack-a", "--peer", &format!("rack-b={}", b.url()), "--peer-token", &format!("rack-b={}", file.display())]
            .map(String::from)
            .to_vec(),
        env: a_env,
        ..PlaneOptions::default()
    });
    (a, b, dir)
}

fn history(p: &Plane, fleet: &str, slot: u32) -> Value {
    p.json(&["command", fleet, "status-report", "--agent", &slot.to_string(), "--json"])["results"][0]["result"]["history_len"].clone()
}

fn agent(p: &Plane, fleet: &str, slot: u32) -> Value {
    let status = p.json(&["status", fleet, "--json"]);
    status["agents"].as_array().unwrap().iter().find(|a| a["slot"] == slot).cloned().unwrap_or(Value::Null)
}

fn migration(p: &Plane, id: &str) -> Value {
    p.json(&["migrations", "--json"])["migrations"].as_array().unwrap().iter().find(|m| m["id"] == id).cloned().unwrap_or(Value::Null)
}

#[test]
fn an_agent_moves_with_its_conversation_and_what_was_sent_to_it_meanwhile() {
    let (a, b, _dir) = two_racks(Vec::new(), Vec::new());
    b.ok(&["launch", "squad", "--brain", "echo", "--wait"]);
    // Each turn takes a moment, so the migration can be made to wait for one.
    a.ok(&["launch", "squad", "--replicas", "2", "--brain", "cmd:sleep 1; cat", "--wait"]);
    for prompt in ["one", "two"] {
        a.ok(&["inject", "squad", prompt, "--agent", "1", "--wait"]);
    }
    assert_eq!(history(&a, "squad", 1), 4);

    // Every precondition is checked first; nothing changes when one fails.
    assert!(a.fails(&["migrate", "squad/1", "--to", "rack-c"]).contains("no peer rack named 'rack-c'"));
    assert!(a.fails(&["migrate", "squad/7", "--to", "rack-b"]).contains("fleet 'squad' has no agent 7"));
    let err = a.fails(&["migrate", "squad/1", "--to", "rack-b", "--fleet", "nope"]);
    assert!(err.contains("rack 'rack-b' refused: no fleet named 'nope'"), "{err}");
    assert!(a.json(&["migrations", "--json"])["migrations"].as_array().unwrap().is_empty());

    // Moved once its turn is over, with an injection sent to it while it moves.
    a.ok(&["inject", "squad", "three", "--agent", "1"]);
    let m = a.json(&["migrate", "squad/1", "--to", "rack-b", "--no-wait", "--json"]);
    let id = m["id"].as_str().unwrap().to_owned();
    assert_eq!(m["state"], "offered", "{m:#}");
    let held = a.json(&["inject", "squad", "four", "--agent", "1", "--json"]);
    let held_id = held["injection_id"].as_str().unwrap().to_owned();
    let done = eventually(Duration::from_secs(90), "the migration to end", || {
        let m = migration(&a, &id);
        m["state"].as_str().is_some_and(|s| s == "done" || s == "aborted").then_some(m)
    });
    assert_eq!((&done["state"], &done["forwarded"], &done["remote_slot"]), (&"done".into(), &1.into(), &1.into()), "{done:#}\n{}", a.log());

    // Here: DEFECTED, never started again, and nothing more is taken for it.
    let here = agent(&a, "squad", 1);
    assert_eq!(
        (&here["state"], &here["badge"]["kind"], &here["badge"]["rack"]),
        (&"defected".into(), &"defected".into(), &"rack-b".into()),
        "{here:#}"
    );
    assert!(a.fails(&["inject", "squad", "five", "--agent", "1"]).contains("agent squad/1 moved to rack 'rack-b'"));
    let all = a.json(&["inject", "squad", "everyone", "--json"]);
    assert_eq!(all["targets"], serde_json::json!([0]), "a broadcast goes to the agents still here: {all:#}");
    assert!(a.fails(&["migrate", "squad/1", "--to", "rack-b"]).contains("its slot was vacated by a migration"));
    // There: FROM rack-a, with the three turns and the held one answered there, once.
    let there = agent(&b, "squad", 1);
    assert_eq!((&there["badge"]["kind"], &there["badge"]["rack"]), (&"from".into(), &"rack-a".into()), "{there:#}");
    let a_events = events(&a, "squad");
    assert_eq!(count(&a_events, "turn_complete", 1, &held_id), 0, "the source's copy never answered the held injection");
    let forwarded: Vec<&Value> = a_events.iter().filter(|e| e["event"] == "inject_forwarded").collect();
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    assert_eq!((&forwarded[0]["injection_id"], &forwarded[0]["data"]["agent"]), (&held_id.clone().into(), &"squad/1".into()));
    let remote = forwarded[0]["data"]["injection_id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(60), "the held injection answered on rack-b", || {
        (count(&events(&b, "squad"), "turn_complete", 1, &remote) == 1).then_some(())
    });
    assert_eq!(history(&b, "squad", 1), 8, "the copy holds the three turns and the held one");
    for (plane, want) in [(&a, "done: squad/1 on rack-b took over"), (&b, "took over from squad/1 of rack-a")] {
        let feed: Vec<String> =
            events(plane, "squad").iter().filter(|e| e["event"] == "migration").map(|e| e["data"]["detail"].to_string()).collect();
        assert!(feed.iter().any(|d| d.contains(want)), "the activity feed says what happened: {feed:?}");
    }

    // The last agent here moves only when asked to.
    let err = a.fails(&["migrate", "squad/0", "--to", "rack-b"]);
    assert!(err.contains("is the last available agent of fleet 'squad' here; --allow-last"), "{err}");
    let text = a.ok(&["migrate", "squad/0", "--to", "rack-b", "--allow-last"]);
    assert!(text.contains("squad/0 moved to rack-b: it is squad/2 there now"), "{text}");
}

#[test]
fn a_peer_that_is_down_or_refuses_changes_nothing() {
    let (a, mut b, _dir) = two_racks(Vec::new(), Vec::new());
    a.ok(&["launch", "squad", "--replicas", "2", "--brain", "echo", "--wait"]);
    // No fleet there to take it.
    let err = a.fails(&["migrate", "squad/0", "--to", "rack-b"]);
    assert!(err.contains("rack 'rack-b' refused: no fleet named 'squad'"), "{err}");
    // A fleet whose backend starts its agents itself cannot take one.
    b.ok(&["launch", "outside", "--backend", "external", "--replicas", "0"]);
    let err = a.fails(&["migrate", "squad/0", "--to", "rack-b", "--fleet", "outside"]);
    assert!(err.contains("runs on the external backend, which takes no migrated agent"), "{err}");
    // Its token revoked: refused.
    b.ok(&["launch", "squad", "--brain", "echo", "--wait"]);
    b.ok(&["token", "revoke", "rack-a"]);
    let err = a.fails(&["migrate", "squad/0", "--to", "rack-b"]);
    assert!(err.contains("rack 'rack-b' refused"), "{err}");
    // Down.
    b.stop();
    let err = a.fails(&["migrate", "squad/0", "--to", "rack-b"]);
    assert!(err.contains("rack 'rack-b' does not answer"), "{err}");
    assert!(a.json(&["migrations", "--json"])["migrations"].as_array().unwrap().is_empty());
    // The agent never stopped answering.
    a.ok(&["inject", "squad", "still here?", "--agent", "0", "--wait"]);
    assert_eq!(agent(&a, "squad", 0)["badge"], Value::Null);
}

/// Where a migration is after a kill, seen from both racks: whether the source's agent is
/// still its (not vacated) and whether the peer's copy took over.
fn copies(a: &Plane, b: &Plane, slot: u32, id: &str) -> (bool, bool) {
    let here = agent(a, "squad", slot)["badge"]["kind"] != "defected";
    let there =
        b.json(&["migrations", "--json"])["migrations"].as_array().unwrap().iter().any(|m| m["id"] == id && m["state"] == "committed");
    (here, there)
}

#[test]
fn a_kill_of_either_rack_at_any_step_ends_with_exactly_one_copy() {
    // Each failpoint kills its control plane (abort, as kill -9) right after that durable step.
    let points = [
        ("a", "migrate.out.offered"),
        ("a", "migrate.out.transferred"),
        ("a", "migrate.out.committing"),
        ("a", "migrate.out.committed"),
        ("a", "migrate.out.forwarded"),
        ("a", "migrate.out.aborting"),
        ("b", "migrate.in.offered"),
        ("b", "migrate.in.transferred"),
        ("b", "migrate.in.ready"),
        ("b", "migrate.in.committed"),
    ];
    let (mut a, mut b, dir) = two_racks(Vec::new(), Vec::new());
    b.ok(&["launch", "squad", "--brain", "echo", "--wait"]);
    a.ok(&["launch", "squad", "--replicas", &(points.len() + 1).to_string(), "--brain", "echo", "--wait"]);
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "value-of-the-abort-trial").unwrap();
    a.ok(&["secret", "set", "TRIAL", "--from-file", secret.to_str().unwrap()]);
    for (slot, (side, point)) in points.iter().enumerate() {
        let (slot, s) = (slot as u32, slot.to_string());
        let name = format!("squad/{slot}");
        a.ok(&["inject", "squad", "remember me", "--agent", &s, "--wait"]);
        if *point == "migrate.out.aborting" {
            // An abort: the agent's workspace holds a secret's value, so no snapshot of it is taken.
            std::fs::write(workspace(&a, "squad", slot).join("notes.txt"), "value-of-the-abort-trial").unwrap();
        }
        let victim = if *side == "a" { &mut a } else { &mut b };
        victim.stop();
        victim.options.env = vec![("CLAWFLEET_FAILPOINTS".to_owned(), point.to_string())];
        victim.spawn();
        eventually(Duration::from_secs(60), "the agent to be back", || (agent(&a, "squad", slot)["state"] == "idle").then_some(()));
        // The kill may come in the middle of these two requests.
        let _ = a.cli(&["migrate", &name, "--to", "rack-b", "--no-wait", "--json"]);
        let sent = a.cli(&["inject", "squad", "while it moves", "--agent", &s, "--json"]);
        let held = sent
            .status
            .success()
            .then(|| serde_json::from_slice::<Value>(&sent.stdout).unwrap()["injection_id"].as_str().unwrap().to_owned());
        let victim = if *side == "a" { &mut a } else { &mut b };
        assert!(victim.exited(Duration::from_secs(90)), "{point}: the control plane did not reach its failpoint\n{}", victim.log());
        victim.options.env = Vec::new();
        victim.spawn();
        let Some(id) = newest(&a, &name) else {
            // Killed before it answered the offer: the source never began.
            assert_eq!(*point, "migrate.in.offered");
            assert_ne!(agent(&a, "squad", slot)["badge"]["kind"], "defected");
            continue;
        };
        let end = eventually(Duration::from_secs(120), "the migration to end", || {
            let m = migration(&a, &id);
            m["state"].as_str().is_some_and(|s| s == "done" || s == "aborted").then_some(m)
        });
        let (here, there) = copies(&a, &b, slot, &id);
        assert!(here != there, "{point}: exactly one copy (here {here}, there {there}): {end:#}");
        assert_eq!(here, end["state"] == "aborted", "{point}: {end:#}");
        assert_eq!(here, *point == "migrate.out.aborting", "{point}: {end:#}");
        // What was sent meanwhile is answered once, by the copy that is the agent now.
        if let Some(held) = held {
            eventually(Duration::from_secs(60), "the held injection answered once", || {
                let a_events = events(&a, "squad");
                let here_answers = count(&a_events, "turn_complete", slot, &held);
                let there_answers =
                    a_events.iter().find(|e| e["event"] == "inject_forwarded" && e["injection_id"] == held).map_or(0, |f| {
                        let remote = f["data"]["injection_id"].as_str().unwrap();
                        events(&b, "squad").iter().filter(|e| e["event"] == "turn_complete" && e["injection_id"] == remote).count()
                    });
                assert!(here_answers + there_answers <= 1, "{point}: answered twice");
                (here_answers + there_answers == 1).then_some(())
            });
        }
    }
}

/// The newest migration out of this rack of `agent`, if any.
fn newest(a: &Plane, agent: &str) -> Option<String> {
    let (fleet, slot) = agent.split_once('/').unwrap();
    let list = a.json(&["migrations", "--json"]);
    list["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["direction"] == "out" && m["fleet"] == fleet && m["slot"] == slot.parse::<u64>().unwrap())
        .map(|m| m["id"].as_str().unwrap().to_owned())
}

/// The workspace of a local agent.
fn workspace(p: &Plane, fleet: &str, slot: u32) -> std::path::PathBuf {
    let agents = p.data().join("agents");
    let dir =
        std::fs::read_dir(&agents).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with(&format!("{fleet}-"))).unwrap();
    dir.path().join(slot.to_string())
}

/// The two racks as hosts of their own (network namespaces), rack-a reaching rack-b over their
/// own link, which the test can cut; `None` where namespaces cannot be made.
fn two_hosts(a_env: &[(&str, &str)], b_env: &[(&str, &str)], a_args: &[&str]) -> Option<(Hosts, Plane, Plane, tempfile::TempDir)> {
    let hosts = Hosts::new(2)?;
    let env = |e: &[(&str, &str)]| e.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
    let b = Plane::with(PlaneOptions {
        up_args: vec!["--rack".into(), "rack-b".into()],
        env: env(b_env),
        netns: Some((hosts.names[1].clone(), hosts.address(1))),
        ..PlaneOptions::default()
    });
    let token = b.ok(&["token", "create", "--role", "peer", "--name", "rack-a"]).trim().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rack-b.token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let peer = format!("rack-b=http://{}:{}", hosts.peer_address(0, 1), b.http_port);
    let mut up_args: Vec<String> =
        ["--rack", "rack-a", "--peer", &peer, "--peer-token", &format!("rack-b={}", file.display())].map(String::from).to_vec();
    up_args.extend(a_args.iter().map(|s| s.to_string()));
    let a = Plane::with(PlaneOptions {
        up_args,
        env: env(a_env),
        netns: Some((hosts.names[0].clone(), hosts.address(0))),
        ..PlaneOptions::default()
    });
    Some((hosts, a, b, dir))
}

/// Waits for migration `id` on rack-a to be in `state`.
fn reaches(a: &Plane, id: &str, state: &str) -> Value {
    eventually(Duration::from_secs(60), state, || {
        let m = migration(a, id);
        (m["state"] == state).then_some(m)
    })
}

/// Whether injection `held` (sent to rack-a while its agent moved) was answered exactly once,
/// on either rack; panics if twice.
fn answered_once(a: &Plane, b: &Plane, slot: u32, held: &str) -> bool {
    let a_events = events(a, "squad");
    let here = count(&a_events, "turn_complete", slot, held);
    let there = a_events.iter().find(|e| e["event"] == "inject_forwarded" && e["injection_id"] == held).map_or(0, |f| {
        let remote = f["data"]["injection_id"].as_str().unwrap();
        events(b, "squad").iter().filter(|e| e["event"] == "turn_complete" && e["injection_id"] == remote).count()
    });
    assert!(here + there <= 1, "{held} answered twice");
    here + there == 1
}

#[test]
fn a_partition_between_the_racks_ends_with_exactly_one_copy() {
    // rack-a holds each commit a moment, so the link can be cut between its decision and the
    // peer hearing it; rack-b takes a moment before it restores, so the link can be cut
    // before its copy is ready.
    let a_env = [("CLAWFLEET_FAILPOINTS", "migrate.out.committing=pause:1500")];
    let b_env = [("CLAWFLEET_FAILPOINTS", "migrate.in.restore=pause:2500")];
    let Some((hosts, a, b, _dir)) = two_hosts(&a_env, &b_env, &["--migrate-within", "8s"]) else { return };
    b.ok(&["launch", "squad", "--brain", "echo", "--wait"]);
    // Each turn takes a moment, so a migration can be made to wait for one.
    a.ok(&["launch", "squad", "--replicas", "4", "--brain", "cmd:sleep 1; cat", "--wait"]);
    assert_eq!(a.json(&["racks", "--json"])["peers"][0]["answers"], true, "rack-a reaches rack-b over their link");

    // 1. Cut before the snapshot goes: it waits, and goes once the link heals.
    a.ok(&["inject", "squad", "one", "--agent", "1", "--wait"]);
    hosts.link_up(0, 1, false);
    let err = a.fails(&["migrate", "squad/1", "--to", "rack-b"]);
    assert!(err.contains("rack 'rack-b' does not answer"), "a cut link is a peer that does not answer: {err}");
    hosts.link_up(0, 1, true);
    // The agent busy with a turn: the migration waits for it, and the link is cut meanwhile.
    a.ok(&["inject", "squad", "two", "--agent", "1"]);
    let id = a.json(&["migrate", "squad/1", "--to", "rack-b", "--no-wait", "--json"])["id"].as_str().unwrap().to_owned();
    hosts.link_up(0, 1, false);
    let held = a.json(&["inject", "squad", "while cut off", "--agent", "1", "--json"])["injection_id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(migration(&a, &id)["state"], "offered", "no snapshot crosses a cut link");
    assert_eq!(agent(&a, "squad", 1)["state"], "idle", "the agent is still here, and the only copy");
    hosts.link_up(0, 1, true);
    let end = reaches(&a, &id, "done");
    assert_eq!(history(&b, "squad", end["remote_slot"].as_u64().unwrap() as u32), 6, "it moved with its turns, and the held one");
    eventually(Duration::from_secs(60), "the held injection answered", || answered_once(&a, &b, 1, &held).then_some(()));

    // 2. Cut between the decision and the peer hearing it: no copy answers until the link
    // heals (the source's is stopped, the peer's held), then the peer's does.
    let id = a.json(&["migrate", "squad/2", "--to", "rack-b", "--no-wait", "--json"])["id"].as_str().unwrap().to_owned();
    let held = a.json(&["inject", "squad", "across the cut", "--agent", "2", "--json"])["injection_id"].as_str().unwrap().to_owned();
    reaches(&a, &id, "committing");
    hosts.link_up(0, 1, false);
    std::thread::sleep(Duration::from_secs(10));
    let m = migration(&a, &id);
    assert_eq!(m["state"], "committing", "the decision stands, however long the peer is away (past --migrate-within): {m:#}");
    assert_eq!(agent(&a, "squad", 2)["badge"]["kind"], "defected");
    let there: Vec<Value> =
        b.json(&["migrations", "--json"])["migrations"].as_array().unwrap().iter().filter(|m| m["id"] == id).cloned().collect();
    assert_eq!(there[0]["state"], "ready", "the peer's copy waits, held: {there:?}");
    hosts.link_up(0, 1, true);
    reaches(&a, &id, "done");
    eventually(Duration::from_secs(60), "the held injection answered", || answered_once(&a, &b, 2, &held).then_some(()));

    // 3. Cut while the peer's copy is getting ready: rack-a gives up after --migrate-within,
    // its agent answers again at once, and the peer gives its slot back once it hears.
    let id = a.json(&["migrate", "squad/3", "--to", "rack-b", "--no-wait", "--json"])["id"].as_str().unwrap().to_owned();
    reaches(&a, &id, "transferred");
    hosts.link_up(0, 1, false);
    let m = reaches(&a, &id, "aborting");
    assert!(m["error"].as_str().unwrap().contains("was not ready within 8s"), "{m:#}");
    a.ok(&["inject", "squad", "back already?", "--agent", "3", "--wait"]);
    hosts.link_up(0, 1, true);
    reaches(&a, &id, "aborted");
    let there = eventually(Duration::from_secs(30), "the peer to give the slot back", || {
        b.json(&["migrations", "--json"])["migrations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id && m["state"] == "aborted")
            .cloned()
    });
    let slot = there["slot"].as_u64().unwrap() as u32;
    assert_ne!(agent(&b, "squad", slot)["badge"]["kind"], "from", "{there:#}");
    assert_ne!(agent(&a, "squad", 3)["badge"]["kind"], "defected");
}

#[test]
fn up_demo_with_two_racks_moves_an_agent_between_them() {
    let a = Plane::with(PlaneOptions { up_args: ["--demo", "--racks", "2"].map(String::from).to_vec(), ..PlaneOptions::default() });
    let b_data = a.data().join("racks").join("rack-b");
    let on_b = |args: &[&str]| {
        let out = a.cli_with(args, &[("CLAWFLEET_DATA", b_data.to_str().unwrap())]);
        assert!(out.status.success(), "clawfleet {args:?} on rack-b: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let racks = a.json(&["racks", "--json"]);
    assert_eq!(
        (&racks["rack"], &racks["peers"][0]["name"], &racks["peers"][0]["answers"]),
        (&"rack-a".into(), &"rack-b".into(), &true.into()),
        "{racks:#}"
    );
    assert_eq!(on_b(&["racks", "--json"])["peers"][0]["name"], "rack-a");
    eventually(Duration::from_secs(60), "both demo fleets ready", || {
        let here = a.json(&["ls", "--json"])["fleets"][0]["ready"] == 3;
        let there = on_b(&["ls", "--json"])["fleets"][0]["ready"] == 3;
        (here && there).then_some(())
    });
    let text = a.ok(&["migrate", "demo/0", "--to", "rack-b"]);
    assert!(text.contains("demo/0 moved to rack-b: it is demo/3 there now"), "{text}");
    let there = on_b(&["status", "demo", "--json"]);
    assert_eq!(there["agents"][3]["badge"], serde_json::json!({"kind": "from", "rack": "rack-a"}), "{there:#}");

    // Each rack's dashboard says it on the tile.
    let browser = crate::webdriver::Driver::start(1280, 900);
    let b_token = std::fs::read_to_string(b_data.join("token")).unwrap();
    for (url, token, agent, badge) in [
        (format!("http://127.0.0.1:{}", a.http_port + 1), b_token.trim().to_owned(), "demo/3", "FROM rack-a"),
        (a.url(), a.token(), "demo/0", "DEFECTED"),
    ] {
        browser.go(&format!("{url}/#token={token}"));
        eventually(Duration::from_secs(30), badge, || {
            browser.text(&format!(".tile[data-agent=\"{agent}\"] .badge")).filter(|t| t.contains(badge))
        });
    }
    assert!(browser.text(".tile[data-agent=\"demo/0\"][data-state=\"defected\"]").is_some());
}

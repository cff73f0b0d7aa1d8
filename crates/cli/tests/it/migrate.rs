//! Migration between two racks end to end (`clawfleet migrate FLEET/SLOT --to RACK`): every
//! precondition checked before anything changes; the agent's conversation goes with it; the
//! injections sent to it meanwhile are answered once, by the copy that took over; the slot it
//! left stays empty (DEFECTED) and its new one says FROM; a peer that is down or refuses
//! changes nothing; and a control plane killed after any durable step, on either side, ends
//! with exactly one copy once it is back.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Plane, PlaneOptions, count, events, eventually};

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
    a.ok(&["launch", "squad", "--replicas", "2", "--brain", "echo", "--wait"]);
    for prompt in ["one", "two", "three"] {
        a.ok(&["inject", "squad", prompt, "--agent", "1", "--wait"]);
    }
    assert_eq!(history(&a, "squad", 1), 6);

    // Every precondition is checked first; nothing changes when one fails.
    assert!(a.fails(&["migrate", "squad/1", "--to", "rack-c"]).contains("no peer rack named 'rack-c'"));
    assert!(a.fails(&["migrate", "squad/7", "--to", "rack-b"]).contains("fleet 'squad' has no agent 7"));
    let err = a.fails(&["migrate", "squad/1", "--to", "rack-b", "--fleet", "nope"]);
    assert!(err.contains("rack 'rack-b' refused: no fleet named 'nope'"), "{err}");
    assert!(a.json(&["migrations", "--json"])["migrations"].as_array().unwrap().is_empty());

    // Moved, with an injection sent to it while it moves.
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

//! Councils on real agents (seed 002): the control plane broadcasts the opportunity, each agent
//! claims through its brain (the echo brain names the roles in the order it was told them) or
//! its declared capabilities, the first claim of a role wins and an agent holds one; the council
//! is active once its core roles are held, and an injection can then address a role. A council
//! no one can fill fails at its deadline naming what is missing; a member lost before activation
//! frees its role, which goes to another agent.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Plane, PlaneOptions, eventually};

fn holders(council: &Value) -> Vec<(String, Option<u64>)> {
    council["seats"].as_array().unwrap().iter().map(|s| (s["role"].as_str().unwrap().to_owned(), s["slot"].as_u64())).collect()
}

fn workspace(plane: &Plane, fleet: &str, slot: u32) -> std::path::PathBuf {
    let dir = std::fs::read_dir(plane.data().join("agents"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&format!("{fleet}-")))
        .unwrap();
    dir.path().join(slot.to_string())
}

#[test]
fn a_council_is_claimed_activated_addressed_by_role_and_closed() {
    let plane = Plane::with(PlaneOptions { heartbeat_ms: 200, ..PlaneOptions::default() });
    plane.ok(&["launch", "guild", "--replicas", "3", "--brain", "echo", "--wait"]);
    let t = Duration::from_secs(60);
    // Agent 2 declares what it can do in its workspace's config.json: it claims the reviewer
    // role without asking its brain.
    std::fs::write(workspace(&plane, "guild", 2).join("config.json"), r#"{"capabilities":["reviewer"]}"#).unwrap();
    plane.ok(&["command", "guild", "config-reload", "--agent", "2"]);

    // Bad requests change nothing.
    let err = plane.fails(&["council", "open", "guild", "--roles", "Planner"]);
    assert!(err.contains("role 'Planner' must be 1 to 32 characters of a-z, 0-9, - and _, starting with a letter"), "{err}");
    let err = plane.fails(&["council", "open", "guild", "--roles", "planner", "--core", "boss"]);
    assert!(err.contains("core role 'boss' is not one of the council's roles"), "{err}");
    let err = plane.fails(&["council", "open", "guild", "--roles", "planner", "--timeout", "2h"]);
    assert!(err.contains("timeout_seconds must be 1 to 3600, got 7200"), "{err}");
    let err = plane.fails(&["council", "open", "nope", "--roles", "planner"]);
    assert!(err.contains("no fleet named 'nope'"), "{err}");
    let err = plane.fails(&["council", "status", "guild"]);
    assert!(err.contains("fleet 'guild' has no council"), "{err}");

    let council = plane.json(&[
        "council",
        "open",
        "guild",
        "--roles",
        "planner,coder,reviewer",
        "--core",
        "planner,coder",
        "--brief",
        "ship the release",
        "--wait",
        "--json",
    ]);
    assert_eq!(council["state"], "active", "{council}");
    let id = council["id"].as_u64().unwrap();
    let council = eventually(t, "every role held", || {
        let c = plane.json(&["council", "status", "guild", "--json"]);
        holders(&c).iter().all(|h| h.1.is_some()).then_some(c)
    });
    let held = holders(&council);
    assert_eq!(held[2], ("reviewer".to_owned(), Some(2)), "the agent that declared it: {council}");
    let mut slots: Vec<u64> = held.iter().map(|h| h.1.unwrap()).collect();
    slots.sort();
    assert_eq!(slots, [0, 1, 2], "an agent holds one role: {council}");
    let reviewer = &council["seats"][2];
    assert_eq!(reviewer["reason"], "my declared capabilities: reviewer", "{council}");
    let text = plane.ok(&["council", "status", "guild"]);
    assert!(
        text.contains(&format!("council {id} of guild: active (3/3 roles held)")) && text.contains("brief: ship the release"),
        "{text}"
    );

    // The role's holder answers an injection to the role.
    let planner = held[0].1.unwrap();
    let answer = plane.ok(&["inject", "guild", "plan the release", "--role", "planner", "--wait"]);
    assert!(answer.contains(&format!("guild/{planner}: plan the release")), "{answer}");
    let err = plane.fails(&["inject", "guild", "hi", "--role", "boss"]);
    assert!(err.contains(&format!("no agent holds role 'boss' in council {id} of fleet 'guild'")), "{err}");
    let err = plane.fails(&["council", "open", "guild", "--roles", "tester"]);
    assert!(err.contains(&format!("fleet 'guild' has council {id} active: close it first (clawfleet council close guild {id})")), "{err}");

    // Every step is an event.
    let events = crate::support::events(&plane, "guild");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).filter(|k| k.starts_with("council_")).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "council_claim").count(), 3, "{kinds:?}");
    assert!(kinds.starts_with(&["council_opened"]) && kinds.contains(&"council_activated"), "{kinds:?}");

    assert!(plane.ok(&["council", "close", "guild"]).contains(&format!("council {id} of guild closed")));
    let err = plane.fails(&["inject", "guild", "hi", "--role", "planner"]);
    assert!(err.contains("fleet 'guild' has no active council"), "{err}");
    let err = plane.fails(&["council", "close", "guild", &id.to_string()]);
    assert!(err.contains(&format!("council {id} is closed already")), "{err}");

    // Four core roles no agent can all fill: it fails at its deadline, naming those no one took.
    let out = plane.cli(&["council", "open", "guild", "--roles", "a,b,c,d", "--timeout", "3s", "--wait", "--json"]);
    assert!(!out.status.success(), "a failed council is a failure of --wait");
    let failed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(failed["state"], "failed", "{failed}");
    let unclaimed: Vec<String> = holders(&failed).into_iter().filter(|h| h.1.is_none()).map(|h| h.0).collect();
    assert_eq!(unclaimed, ["c", "d"], "agents 0 and 1 took a and b; agent 2 can only review: {failed}");
    let ev = crate::support::events(&plane, "guild").into_iter().rev().find(|e| e["event"] == "council_failed").unwrap();
    assert_eq!(ev["data"]["unclaimed"], serde_json::json!(["c", "d"]), "{ev}");
    let list = plane.ok(&["council", "list", "guild"]);
    assert!(list.contains("failed") && list.contains("closed"), "{list}");
}

/// A member lost before its council is active gives its role back; once back, it is offered
/// the free roles again like any agent without one.
#[test]
fn a_member_lost_before_activation_frees_its_role() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let plane = Plane::with(PlaneOptions { heartbeat_ms: 200, ..PlaneOptions::default() });
    plane.ok(&["launch", "crew", "--replicas", "2", "--brain", "echo", "--wait"]);
    let t = Duration::from_secs(60);
    // Three core roles, two agents: it stays open.
    let council = plane.json(&["council", "open", "crew", "--roles", "pilot,navigator,engineer", "--timeout", "120s", "--json"]);
    let id = council["id"].as_u64().unwrap();
    let council = eventually(t, "two roles held", || {
        let c = plane.json(&["council", "status", "crew", "--json"]);
        (holders(&c).iter().filter(|h| h.1.is_some()).count() == 2).then_some(c)
    });
    let held = holders(&council);
    assert_eq!(held[2].1, None, "{council}");
    let (role, slot) = held.iter().find_map(|(r, s)| s.map(|s| (r.clone(), s))).unwrap();
    let pid = Pid::from_raw(plane.agent_pid("crew", slot as u32).unwrap() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let freed =
        eventually(t, "its role freed", || crate::support::events(&plane, "crew").into_iter().find(|e| e["event"] == "council_role_freed"));
    assert_eq!(
        (freed["data"]["council"].as_u64(), freed["data"]["role"].as_str(), freed["data"]["slot"].as_u64()),
        (Some(id), Some(role.as_str()), Some(slot))
    );
    kill(pid, Signal::SIGCONT).unwrap();
    eventually(t, "the agent back, with a role again", || {
        let c = plane.json(&["council", "status", "crew", "--json"]);
        (holders(&c).iter().filter(|h| h.1.is_some()).count() == 2 && holders(&c).iter().any(|h| h.1 == Some(slot))).then_some(())
    });
    assert_eq!(plane.json(&["council", "status", "crew", "--json"])["state"], "open");
}

/// A role freed by a lost member is offered again to every agent without one, here one whose
/// declared capability was taken when it first claimed.
#[test]
fn a_freed_role_goes_to_an_agent_that_was_refused_before() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let plane = Plane::with(PlaneOptions { heartbeat_ms: 200, ..PlaneOptions::default() });
    plane.ok(&["launch", "deck", "--replicas", "3", "--brain", "echo", "--wait"]);
    let t = Duration::from_secs(60);
    std::fs::write(workspace(&plane, "deck", 2).join("config.json"), r#"{"capabilities":["pilot"]}"#).unwrap();
    plane.ok(&["command", "deck", "config-reload", "--agent", "2"]);
    let pid = |slot: u32| Pid::from_raw(plane.agent_pid("deck", slot).unwrap() as i32);
    let state = |slot: usize| plane.json(&["status", "deck", "--json"])["agents"][slot]["state"].as_str().unwrap_or("").to_owned();
    // Agent 2 is away when the council opens: agents 0 and 1 take pilot and navigator; no one
    // can take ghost, so the council stays open.
    kill(pid(2), Signal::SIGSTOP).unwrap();
    eventually(t, "agent 2 seen lost", || (state(2) == "lost").then_some(()));
    let council = plane.json(&["council", "open", "deck", "--roles", "pilot,navigator,ghost", "--timeout", "120s", "--json"]);
    let id = council["id"].as_u64().unwrap();
    let held = eventually(t, "pilot and navigator held", || {
        let c = plane.json(&["council", "status", "deck", "--json"]);
        let h = holders(&c);
        (h[0].1.is_some() && h[1].1.is_some()).then_some(h)
    });
    // Back, agent 2 is offered the council and claims pilot, which is taken.
    kill(pid(2), Signal::SIGCONT).unwrap();
    eventually(t, "agent 2's claim refused", || {
        let events = crate::support::events(&plane, "deck");
        events.iter().any(|e| e["event"] == "play_refused" && e["agent"] == 2 && e["data"]["play"] == "council_claim").then_some(())
    });
    // The pilot is lost: its role goes to agent 2.
    let pilot = held[0].1.unwrap() as u32;
    kill(pid(pilot), Signal::SIGSTOP).unwrap();
    let c = eventually(t, "agent 2 the pilot", || {
        let c = plane.json(&["council", "status", "deck", "--json"]);
        (holders(&c)[0].1 == Some(2)).then_some(c)
    });
    kill(pid(pilot), Signal::SIGCONT).unwrap();
    assert_eq!((c["id"].as_u64(), c["state"].as_str()), (Some(id), Some("open")), "{c}");
}

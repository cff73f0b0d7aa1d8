//! Deploys on the local backend: a target is required, a deploy is gated by each new agent's
//! heartbeat and health check, reverts by itself when an agent fails its check or progress
//! stops, runs one at a time (a second is refused, or queued with --wait), survives a killed
//! control plane, and is refused to an agent's own token; canaries wait for promote or abort,
//! and one agent can be deployed on its own; `history` keeps every deploy.

use std::time::Duration;

use crate::support::Plane;

fn history(plane: &Plane, target: &str) -> Vec<serde_json::Value> {
    plane.json(&["history", target, "--json"])["deploys"].as_array().unwrap().clone()
}

#[test]
fn a_deploy_is_gated_reverted_by_itself_and_kept_in_history() {
    let plane = Plane::start();
    plane.ok(&["launch", "web", "--replicas", "2", "--brain", "echo", "--wait"]);
    // The brain of this fleet answers no health probe: its agents run, but are not healthy.
    plane.ok(&["launch", "sick", "--replicas", "1", "--brain", "openai:http://127.0.0.1:9/v1#nothing", "--wait"]);

    let err = plane.fails(&["deploy", "--version", "2"]);
    assert!(err.contains("target required: all, or a fleet"), "{err}");
    let err = plane.fails(&["deploy", "nosuch", "--version", "2"]);
    assert!(err.contains("no fleet named 'nosuch'"), "{err}");
    let err = plane.fails(&["deploy", "web", "--image", "x:1"]);
    assert!(err.contains("fleet 'web' runs on local: an image is for docker fleets"), "{err}");
    let err = plane.fails(&["deploy", "web", "--version", "1"]);
    assert!(err.contains("fleet 'web' already runs version 1"), "{err}");

    // A good deploy: every agent replaced, on version 2, each having answered a health check.
    let out = plane.ok(&["deploy", "web", "--version", "2", "--json"]);
    let deploy: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(deploy["state"], "succeeded", "{deploy}");
    assert_eq!(deploy["fleets"][0]["ready"], 2);
    let status = plane.json(&["status", "web", "--json"]);
    for agent in status["agents"].as_array().unwrap() {
        assert_eq!(agent["fleet_version"], "2", "{status}");
    }
    let events = crate::support::events(&plane, "web");
    let checks = events.iter().filter(|e| e["event"] == "command_reply" && e["data"]["command"] == "health-check").count();
    assert!(checks >= 2, "each new agent answered a health check: {events:?}");
    assert!(events.iter().any(|e| e["event"] == "deploy_finished" && e["data"]["outcome"] == "succeeded"));

    // A deploy whose new agent fails its health check reverts by itself, and says why.
    let err = plane.fails(&["deploy", "sick", "--version", "2"]);
    assert!(err.contains("reverted: agent sick/0 on version 2 failed its health check"), "{err}");
    crate::support::eventually(Duration::from_secs(60), "sick back on version 1", || {
        let s = plane.json(&["status", "sick", "--json"]);
        (s["fleet"]["version"] == "1" && s["agents"][0]["fleet_version"] == "1").then_some(())
    });

    // The revert undid the deploy: `rollback` does not go to the version that failed.
    let err = plane.fails(&["rollback", "sick"]);
    assert!(err.contains("no earlier image or version"), "{err}");
    assert!(plane.json(&["status", "sick", "--json"])["fleet"]["rollback_to"].is_null());
    // `rollback all` returns every fleet that has a version to return to, and names the others.
    let out = plane.cli(&["rollback", "all"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("fleet 'web': rolling back to version 1") && said.contains("fleet 'sick': nothing to roll back to"), "{said}");
    crate::support::eventually(Duration::from_secs(60), "web back on version 1", || {
        let s = plane.json(&["status", "web", "--json"]);
        s["agents"].as_array().unwrap().iter().all(|a| a["fleet_version"] == "1" && a["state"] == "idle").then_some(())
    });
    assert_eq!(plane.json(&["status", "web", "--json"])["fleet"]["rollback_to"], "2");

    let web = history(&plane, "web");
    assert_eq!(web.len(), 1);
    assert_eq!(
        (web[0]["state"].as_str(), web[0]["actor"].as_str(), web[0]["fleets"][0]["from_version"].as_str()),
        (Some("succeeded"), Some("operator (operator)"), Some("1"))
    );
    let all = history(&plane, "all");
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["state"], "reverted", "newest first");
    let table = plane.ok(&["history", "sick"]);
    assert!(table.contains("sick 1 → 2") && table.contains("reverted") && table.contains("failed its health check"), "{table}");
    let audit = plane.json(&["audit", "--json"]);
    assert!(audit.as_array().unwrap().iter().any(|a| a["action"] == "deploy" && a["target"] == "web"), "{audit}");
}

#[test]
fn deploys_run_one_at_a_time_survive_a_killed_control_plane_and_are_refused_to_their_own_agents() {
    let mut plane = Plane::start();
    // No agent ever joins an external fleet: its deploy cannot progress.
    plane.ok(&["launch", "ext", "--backend", "external", "--replicas", "1"]);
    plane.ok(&["launch", "other", "--backend", "external", "--replicas", "1"]);
    let out = plane.ok(&["deploy", "ext", "--version", "2", "--deadline", "600", "--detach", "--json"]);
    let first: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(first["state"], "running");

    // One at a time: a second deploy is refused with the running one's name.
    let err = plane.fails(&["deploy", "other", "--version", "2"]);
    assert!(err.contains(&format!("deploy #{} of ext (by operator (operator)) is running", first["id"])), "{err}");

    // A killed control plane picks the deploy up where it was.
    plane.kill();
    plane.spawn();
    let ext = history(&plane, "ext");
    assert_eq!((ext[0]["id"].clone(), ext[0]["state"].as_str()), (first["id"].clone(), Some("running")));
    assert_eq!(plane.json(&["status", "ext", "--json"])["fleet"]["version"], "2");

    // An agent's own token may not deploy its own fleet.
    let token = plane.json_get("/api/v1/fleets/ext/join?slots=0")["agents"][0]["token"].as_str().unwrap().to_owned();
    let (code, body) = plane.http("POST", "/api/v1/deploys", Some(&token), Some(r#"{"target": "ext", "version": "3"}"#));
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("refusing self-deploy"), "{body}");

    // Queued behind the running one with --wait: it starts once that one is aborted.
    let waiting = plane.spawn_cli(&["deploy", "other", "--version", "2", "--wait", "--detach", "--json"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(plane.ok(&["deploy", "abort", "ext"]).contains("aborted"));
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!((second["target"].as_str(), second["state"].as_str()), (Some("other"), Some("running")));
    let ext = history(&plane, "ext");
    assert_eq!((ext[0]["state"].as_str(), ext[0]["reason"].as_str()), (Some("aborted"), Some("aborted by operator (operator)")));
    assert_eq!(plane.json(&["status", "ext", "--json"])["fleet"]["version"], "1", "an abort reverts");

    // A deploy that makes no progress within its deadline reverts by itself.
    plane.ok(&["deploy", "abort", "other"]);
    let err = plane.fails(&["deploy", "ext", "--version", "2", "--deadline", "2"]);
    assert!(err.contains("reverted: no progress in 2 s: 0 of 1 agents run version 2 and answered their health check"), "{err}");
}

/// Each agent's `fleet_version`, by slot.
fn versions(plane: &Plane, fleet: &str) -> Vec<String> {
    let status = plane.json(&["status", fleet, "--json"]);
    status["agents"].as_array().unwrap().iter().map(|a| a["fleet_version"].as_str().unwrap_or("-").to_owned()).collect()
}

#[test]
fn canaries_wait_for_promote_and_one_agent_deploys_on_its_own() {
    let plane = Plane::start();
    plane.ok(&["launch", "web", "--replicas", "3", "--brain", "echo", "--wait"]);
    let err = plane.fails(&["deploy", "web", "--canary", "3"]);
    assert!(err.contains("canaries are fewer than its agents"), "{err}");

    // Canaries: the first agent moves, passes its gate, and the deploy waits.
    let out = plane.ok(&["deploy", "web", "--version", "2", "--canary", "1", "--json"]);
    let deploy: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(deploy["state"], "paused", "{deploy}");
    assert_eq!(versions(&plane, "web"), ["2", "1", "1"]);
    let status = plane.json(&["status", "web", "--json"]);
    assert_eq!((status["fleet"]["version"].as_str(), status["fleet"]["canary"]["slots"].clone()), (Some("1"), serde_json::json!([0])));
    let text = plane.ok(&["status", "web"]);
    assert!(text.contains("canary: agents 0 on version 2") && text.contains("(paused): version 1 → 2, 1/1 agents passed"), "{text}");
    // Paused is still running: no second deploy meanwhile.
    let err = plane.fails(&["deploy", "all", "--version", "9"]);
    assert!(err.contains("is running: wait for it"), "{err}");
    assert!(plane.ok(&["deploy", "promote", "web"]).contains("promoted"));
    crate::support::eventually(Duration::from_secs(60), "the promoted deploy to succeed", || {
        (history(&plane, "web")[0]["state"] == "succeeded").then_some(())
    });
    assert_eq!(versions(&plane, "web"), ["2", "2", "2"]);
    let err = plane.fails(&["deploy", "promote", "web"]);
    assert!(err.contains("no deploy of web is running"), "{err}");

    // Canaries aborted: they go back, the fleet never moved.
    let deploy: serde_json::Value = serde_json::from_str(&plane.ok(&["deploy", "web", "--canary", "2", "--json"])).unwrap();
    assert_eq!((deploy["state"].as_str(), deploy["fleets"][0]["to_version"].as_str()), (Some("paused"), Some("3")));
    assert_eq!(versions(&plane, "web"), ["3", "3", "2"]);
    plane.ok(&["deploy", "abort", "web"]);
    crate::support::eventually(Duration::from_secs(60), "the canaries back on version 2", || {
        (versions(&plane, "web") == ["2", "2", "2"]).then_some(())
    });
    assert!(plane.json(&["status", "web", "--json"])["fleet"]["canary"].is_null());

    // One agent on its own: it moves and stays moved; the others do not.
    let deploy: serde_json::Value = serde_json::from_str(&plane.ok(&["deploy", "web/1", "--version", "5", "--json"])).unwrap();
    assert_eq!(deploy["state"], "succeeded", "{deploy}");
    assert_eq!(versions(&plane, "web"), ["2", "5", "2"]);
    let err = plane.fails(&["deploy", "web/7"]);
    assert!(err.contains("fleet 'web' has no agent 7"), "{err}");
    // A deploy of the whole fleet brings that agent along.
    plane.ok(&["deploy", "web", "--version", "6"]);
    assert_eq!(versions(&plane, "web"), ["6", "6", "6"]);
}

/// A fleet's deploy policy in fleet.toml gives its deploys their canaries and deadline; the
/// deploy's own flags override them.
#[test]
fn a_fleet_files_deploy_policy_sets_canaries_and_the_deadline() {
    let plane = Plane::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fleet.toml");
    std::fs::write(&file, "[fleets.web]\nreplicas = 2\nbrain = \"echo\"\ndeploy = { canary = 1, deadline_s = 30 }\n").unwrap();
    let file = file.display().to_string();
    plane.ok(&["apply", "-f", &file, "--timeout", "120"]);
    let deploy: serde_json::Value = serde_json::from_str(&plane.ok(&["deploy", "web", "--version", "2", "--json"])).unwrap();
    assert_eq!((deploy["state"].as_str(), deploy["deadline_s"].as_u64()), (Some("paused"), Some(30)), "{deploy}");
    assert_eq!(deploy["fleets"][0]["slots"], serde_json::json!([0]), "{deploy}");
    plane.ok(&["deploy", "promote", "web"]);
    crate::support::eventually(Duration::from_secs(60), "the promoted deploy to succeed", || {
        (history(&plane, "web")[0]["state"] == "succeeded").then_some(())
    });
    // Flags win.
    let deploy: serde_json::Value =
        serde_json::from_str(&plane.ok(&["deploy", "web", "--version", "3", "--deadline", "60", "--json"])).unwrap();
    assert_eq!((deploy["state"].as_str(), deploy["deadline_s"].as_u64()), (Some("paused"), Some(60)), "{deploy}");
    plane.ok(&["deploy", "abort", "web"]);
    let err = plane.fails(&["deploy", "web", "--version", "4", "--canary", "2"]);
    assert!(err.contains("canaries are fewer than its agents"), "{err}");
    std::fs::write(dir.path().join("bad.toml"), "[fleets.web]\nreplicas = 2\ndeploy = { canary = 0 }\n").unwrap();
    let err = plane.fails(&["diff", "-f", &dir.path().join("bad.toml").display().to_string()]);
    assert!(err.contains("bad.toml:3:10: fleets.web.deploy: deploy.canary must be at least 1 agent"), "{err}");
}

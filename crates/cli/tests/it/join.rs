//! Agents run by hand: `clawfleet agent --join FLEET --count N` for an external fleet.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{BIN, Plane, eventually};

#[test]
fn many_agents_in_one_process_join_an_external_fleet() {
    let plane = Plane::start();
    plane.ok(&["launch", "sim", "--replicas", "20", "--backend", "external"]);
    assert_eq!(plane.json(&["status", "sim", "--json"])["agents"][0]["state"], "pending");
    let mut agents = Command::new(BIN)
        .args(["agent", "--join", "sim", "--count", "20"])
        .env("CLAWFLEET_DATA", plane.data())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "20 joined agents ready", || {
        (plane.json(&["ls", "--json"])["fleets"][0]["ready"] == 20).then_some(())
    });
    let answers = plane.ok(&["inject", "sim", "all of you", "--wait"]);
    assert_eq!(answers.lines().count(), 20);
    // Each has its own identity: one pid, twenty distinct bus clients and workspaces.
    let status = plane.json(&["status", "sim", "--json"]);
    let epochs: std::collections::HashSet<_> =
        status["agents"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(epochs.len(), 20);

    // A joined slot that does not exist is refused.
    let out = plane.cli(&["agent", "--join", "sim", "--slot", "20"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fleet 'sim' has no agent 20 (its agents are 0-19)"));

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agents.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(agents.wait().unwrap().success());
    eventually(Duration::from_secs(10), "agents seen stopped", || {
        let s = plane.json(&["status", "sim", "--json"]);
        s["agents"].as_array().unwrap().iter().all(|a| a["state"] == "stopped").then_some(())
    });
}

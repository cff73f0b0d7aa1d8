//! Faults: a frozen agent, a crashed agent, a killed control plane, a full disk. Nothing
//! accepted is lost, nothing runs twice, lost agents are seen as lost and as back, and what
//! cannot be stored is refused clearly.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{Plane, count, events, eventually};

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap();
}

fn states(plane: &Plane, fleet: &str, agent: u32) -> Vec<String> {
    events(plane, fleet)
        .iter()
        .filter(|e| e["event"] == "agent_state" && e["agent"] == agent)
        .map(|e| e["data"]["state"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn an_offline_agent_is_seen_lost_and_gets_what_was_queued_once() {
    let plane = Plane::start();
    plane.ok(&["launch", "squad", "--replicas", "2", "--wait"]);
    let pid = plane.agent_pid("squad", 1).unwrap();

    // Freeze agent 1: it stops heartbeating (200 ms) and is seen lost within three beats.
    signal(pid, Signal::SIGSTOP);
    eventually(Duration::from_secs(10), "agent 1 to be seen lost", || {
        (plane.json(&["status", "squad", "--json"])["agents"][1]["state"] == "lost").then_some(())
    });
    // Commands sent meanwhile are accepted and queued.
    let id = plane.ok(&["inject", "squad", "--agent", "1", "while you were away"]).trim().to_owned();
    let reply = plane.cli(&["command", "squad", "status-report", "--agent", "1", "--timeout", "1", "--json"]);
    let reply: serde_json::Value = serde_json::from_slice(&reply.stdout).unwrap();
    assert_eq!(reply["pending"], serde_json::json!([1]), "{reply}");

    // Back: it gets both, once, and the control plane sees it online again.
    signal(pid, Signal::SIGCONT);
    eventually(Duration::from_secs(30), "the queued injection to complete", || {
        (count(&events(&plane, "squad"), "turn_complete", 1, &id) == 1).then_some(())
    });
    eventually(Duration::from_secs(30), "the queued command's reply", || {
        events(&plane, "squad")
            .iter()
            .any(|e| e["event"] == "command_reply" && e["data"]["command_id"] == reply["command_id"])
            .then_some(())
    });
    // Give any duplicate delivery time to show up, then check there is none.
    std::thread::sleep(Duration::from_secs(3));
    let evs = events(&plane, "squad");
    assert_eq!(count(&evs, "inject_delivered", 1, &id), 1);
    assert_eq!(count(&evs, "turn_started", 1, &id), 1);
    assert_eq!(count(&evs, "turn_complete", 1, &id), 1);
    let replies = evs.iter().filter(|e| e["event"] == "command_reply" && e["data"]["command_id"] == reply["command_id"]).count();
    assert_eq!(replies, 1);
    let s = states(&plane, "squad", 1);
    let lost = s.iter().position(|x| x == "lost").expect("seen lost");
    assert!(s[lost..].iter().any(|x| x == "online"), "seen back: {s:?}");
}

#[test]
fn a_crashed_agent_is_restarted_in_its_slot_with_its_conversation() {
    let plane = Plane::start();
    plane.ok(&["launch", "squad", "--replicas", "2", "--wait"]);
    plane.ok(&["inject", "squad", "--agent", "0", "remember me", "--wait"]);
    let pid = plane.agent_pid("squad", 0).unwrap();
    signal(pid, Signal::SIGKILL);
    eventually(Duration::from_secs(30), "agent 0 restarted", || {
        let a = &plane.json(&["status", "squad", "--json"])["agents"][0];
        (a["restarts"] == 1 && a["state"] == "idle" && a["instance"] != format!("pid {pid}")).then_some(())
    });
    // Its workspace (and so its conversation) is the same one.
    let ws = std::fs::read_dir(plane.data().join("agents")).unwrap().next().unwrap().unwrap().path().join("0");
    let conversation = std::fs::read_to_string(ws.join("conversation.jsonl")).unwrap();
    assert!(conversation.contains("remember me"), "{conversation}");
    plane.ok(&["inject", "squad", "--agent", "0", "still here", "--wait"]);
}

#[test]
fn a_killed_control_plane_loses_no_injection_and_no_event() {
    let mut plane = Plane::start();
    plane.ok(&["launch", "slow", "--replicas", "2", "--brain", "cmd:sleep 2; echo slept", "--wait"]);
    let id = plane.ok(&["inject", "slow", "take your time"]).trim().to_owned();
    // Crash while the turns run; the agents keep running, the embedded broker dies with it.
    plane.kill();
    std::thread::sleep(Duration::from_secs(3));
    plane.spawn();
    eventually(Duration::from_secs(30), "both turns to complete after the restart", || {
        let evs = events(&plane, "slow");
        (count(&evs, "turn_complete", 0, &id) == 1 && count(&evs, "turn_complete", 1, &id) == 1).then_some(())
    });
    let evs = events(&plane, "slow");
    for agent in [0, 1] {
        for kind in ["inject_ack", "inject_delivered", "turn_started", "assistant", "turn_complete", "usage"] {
            let n = count(&evs, kind, agent, &id);
            let expected = if kind == "usage" { 0 } else { 1 };
            assert_eq!(n, expected, "{kind} of agent {agent}");
        }
        let answer = evs.iter().find(|e| e["event"] == "assistant" && e["agent"] == agent && e["injection_id"] == id.as_str()).unwrap();
        assert_eq!(answer["data"]["content"], "slept");
    }
    // The same agent processes finished the turns: they were adopted, not restarted.
    let status = plane.json(&["status", "slow", "--json"]);
    assert!(status["agents"].as_array().unwrap().iter().all(|a| a["restarts"] == 0), "{status}");
}

#[test]
fn a_stopped_control_plane_brings_its_fleets_back() {
    let mut plane = Plane::start();
    plane.ok(&["launch", "squad", "--replicas", "2", "--wait"]);
    let before = plane.agent_pid("squad", 0).unwrap();
    plane.stop();
    // Ctrl-C stops the local agents with the control plane.
    eventually(Duration::from_secs(10), "agents to stop", || (!std::path::Path::new(&format!("/proc/{before}")).exists()).then_some(()));
    plane.spawn();
    eventually(Duration::from_secs(30), "the fleet back", || (plane.json(&["ls", "--json"])["fleets"][0]["ready"] == 2).then_some(()));
    assert_ne!(plane.agent_pid("squad", 0), Some(before), "a new agent process");
    plane.ok(&["inject", "squad", "hello again", "--wait"]);
}

/// A tmpfs of `mb` MiB mounted on a new directory (as root), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(mb: u32) -> Option<SmallDisk> {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting a small filesystem needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m,mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
        Some(SmallDisk { dir })
    }

    /// Fills it up; returns the filler file.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_refuses_new_work_clearly_and_recovers_when_space_returns() {
    let Some(disk) = SmallDisk::new(64) else { return };
    let mut plane = Plane::in_dir(tempfile::tempdir_in(disk.dir.path()).unwrap(), crate::support::PlaneOptions::default());
    plane.ok(&["launch", "squad", "--brain", "echo", "--wait"]);
    plane.ok(&["inject", "squad", "before", "--wait"]);
    let filler = disk.fill();

    // New work is refused, saying why; what is stored is still read.
    let refused = eventually(Duration::from_secs(30), "an injection refused for want of space", || {
        let out = plane.cli(&["inject", "squad", "while full"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && err.contains("out of space")).then_some(err)
    });
    assert!(refused.contains("the control plane's data directory is out of space: nothing was stored"), "{refused}");
    assert_eq!(plane.json(&["ls", "--json"])["fleets"][0]["name"], "squad");
    let (status, body) = plane.http("POST", "/api/v1/fleets/squad/inject", Some(&plane.token()), Some(r#"{"prompt": "full?"}"#));
    assert_eq!((status, &body["code"]), (507, &"disk_full".into()), "{body}");

    // Room again: it takes work, and the store is whole after a restart.
    std::fs::remove_file(filler).unwrap();
    eventually(Duration::from_secs(60), "an injection answered once there is room", || {
        plane.cli(&["inject", "squad", "after", "--wait", "--timeout", "10"]).status.success().then_some(())
    });
    plane.stop();
    plane.spawn();
    let answered: Vec<String> = events(&plane, "squad")
        .iter()
        .filter(|e| e["event"] == "assistant")
        .map(|e| e["data"]["content"].as_str().unwrap().to_owned())
        .collect();
    assert!(answered.contains(&"before".to_owned()) && answered.contains(&"after".to_owned()), "{answered:?}");
    assert!(!answered.iter().any(|a| a == "while full" || a == "full?"), "what was refused never ran: {answered:?}");
}

#[test]
fn agents_cut_off_are_lost_within_three_heartbeats_and_get_what_was_queued_once_they_are_back() {
    // The control plane on one host, its agents on another, joined over a link of their own.
    let Some(hosts) = crate::support::Hosts::new(2) else { return };
    let to_plane = hosts.peer_address(1, 0);
    let plane = Plane::with(crate::support::PlaneOptions {
        heartbeat_ms: 300,
        netns: Some((hosts.names[0].clone(), hosts.address(0))),
        up_args: vec!["--agent-bus-host".into(), to_plane.clone()],
        ..crate::support::PlaneOptions::default()
    });
    plane.ok(&["launch", "far", "--replicas", "3", "--backend", "external"]);
    let mut agents = std::process::Command::new("ip")
        .args(["netns", "exec", &hosts.names[1], crate::support::BIN, "agent", "--join", "far", "--count", "3"])
        .env("CLAWFLEET_DATA", plane.data())
        .env("CLAWFLEET_SERVER", format!("http://{to_plane}:{}", plane.http_port))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "3 agents on the other host ready", || {
        (plane.json(&["ls", "--json"])["fleets"][0]["ready"] == 3).then_some(())
    });
    plane.ok(&["inject", "far", "hello across", "--wait"]);

    // Cut: each is lost within three heartbeats (with a liveness bound generous for CI).
    hosts.link_up(0, 1, false);
    let cut = std::time::Instant::now();
    for agent in 0..3 {
        eventually(Duration::from_secs(30), "the agent seen lost", || {
            (states(&plane, "far", agent).last().map(String::as_str) == Some("lost")).then_some(())
        });
    }
    eprintln!("all three lost {} ms after the cut", cut.elapsed().as_millis());
    let id = plane.ok(&["inject", "far", "while you were away"]).trim().to_owned();

    // Healed: they come back, and what was queued for them runs once each.
    hosts.link_up(0, 1, true);
    eventually(Duration::from_secs(60), "the queued injection answered by all three", || {
        let evs = events(&plane, "far");
        (0..3).all(|a| count(&evs, "turn_complete", a, &id) == 1).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let evs = events(&plane, "far");
    for agent in 0..3 {
        assert_eq!(count(&evs, "turn_started", agent, &id), 1, "agent {agent} ran it once");
        assert!(states(&plane, "far", agent).ends_with(&["lost".to_owned(), "online".to_owned()]), "{:?}", states(&plane, "far", agent));
    }
    let _ = agents.kill();
    let _ = agents.wait();
}

#[test]
fn a_mosquitto_restart_mid_stream_loses_nothing_and_agents_come_back() {
    let mut broker = crate::support::Mosquitto::start();
    let plane = Plane::with(crate::support::PlaneOptions { bus: Some(format!("mqtt://127.0.0.1:{}", broker.port)), ..Default::default() });
    plane.ok(&["launch", "stream", "--replicas", "2", "--brain", "echo", "--wait"]);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(plane.ok(&["inject", "stream", &format!("before {i}")]).trim().to_owned());
    }
    broker.restart();
    // The API takes work while the bus comes back; the outbox sends it once agents are there.
    for i in 0..10 {
        ids.push(plane.ok(&["inject", "stream", &format!("after {i}")]).trim().to_owned());
    }
    eventually(Duration::from_secs(90), "every injection answered by both agents", || {
        let evs = events(&plane, "stream");
        ids.iter().all(|id| (0..2).all(|a| count(&evs, "turn_complete", a, id) == 1)).then_some(())
    });
    let evs = events(&plane, "stream");
    for id in &ids {
        for agent in 0..2 {
            assert_eq!(count(&evs, "turn_started", agent, id), 1, "agent {agent} ran {id} once");
        }
    }
    plane.ok(&["inject", "stream", "still there?", "--wait"]);
}

#[test]
fn brains_that_print_garbage_or_gigabytes_fail_their_turn_clearly_and_the_agent_goes_on() {
    let plane = Plane::start();
    // Bytes that are not UTF-8 are kept as U+FFFD; the turn completes.
    plane.ok(&["launch", "noise", "--brain", "cmd:printf 'ok \\377\\376 done\\n'", "--wait"]);
    let id = plane.ok(&["inject", "noise", "speak", "--wait"]);
    assert!(id.contains("ok \u{fffd}\u{fffd} done"), "{id}");
    // 200 MB on one line: stopped at 16 MiB, the turn failed, saying why.
    plane.ok(&["launch", "flood", "--brain", "cmd:head -c 200000000 /dev/zero | tr '\\0' x; echo; echo after", "--wait"]);
    let sent = plane.json(&["inject", "flood", "flood", "--json"]);
    let id = sent["injection_id"].as_str().unwrap().to_owned();
    let failed = eventually(Duration::from_secs(60), "the flooding turn to fail", || {
        events(&plane, "flood").into_iter().find(|e| e["event"] == "agent_error" && e["injection_id"] == id.as_str())
    });
    assert!(failed["data"]["message"].as_str().unwrap().contains("wrote more than 16 MiB to its output in one turn"), "{failed}");
    let stored: usize = events(&plane, "flood").iter().map(|e| e.to_string().len()).sum();
    assert!(stored < 40 << 20, "what was stored of it is bounded: {stored} bytes");
    // Only its brain was stopped: the agent runs on, idle, never restarted.
    eventually(Duration::from_secs(30), "the agent idle again", || {
        let status = plane.json(&["status", "flood", "--json"]);
        (status["agents"][0]["state"] == "idle" && status["agents"][0]["restarts"] == 0).then_some(())
    });
}

#[test]
fn agents_whose_clocks_are_off_by_minutes_are_seen_as_they_are() {
    // libfaketime (Debian's faketime) moves each agent process's clock: one ten minutes ahead,
    // one ten minutes behind. Liveness reads only the control plane's own monotonic clock.
    let plane = Plane::with(crate::support::PlaneOptions { heartbeat_ms: 300, ..Default::default() });
    plane.ok(&["launch", "skew", "--replicas", "2", "--backend", "external"]);
    let mut agents: Vec<std::process::Child> = [("0", "+10m"), ("1", "-10m")]
        .iter()
        .map(|(slot, offset)| {
            std::process::Command::new("faketime")
                .args(["-f", offset, crate::support::BIN, "agent", "--join", "skew", "--slot", slot])
                .env("CLAWFLEET_DATA", plane.data())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("faketime (apt-get install faketime)")
        })
        .collect();
    eventually(Duration::from_secs(30), "both agents ready", || (plane.json(&["ls", "--json"])["fleets"][0]["ready"] == 2).then_some(()));
    let answers = plane.ok(&["inject", "skew", "what time is it?", "--wait"]);
    assert_eq!(answers.lines().count(), 2, "{answers}");
    // Their heartbeats say times minutes away, and they are neither lost nor stale.
    std::thread::sleep(Duration::from_secs(2));
    let status = plane.json(&["status", "skew", "--json"]);
    for a in status["agents"].as_array().unwrap() {
        assert_eq!(a["state"], "idle", "{a}");
        assert!(a["heartbeat_age_ms"].as_u64().unwrap() < 5_000, "{a}");
    }
    let at = |slot: usize| humantime::parse_rfc3339_weak(status["agents"][slot]["last_heartbeat"].as_str().unwrap()).unwrap();
    let apart = at(0).duration_since(at(1)).unwrap();
    assert!(apart > Duration::from_secs(15 * 60), "the agents' own clocks are 20 minutes apart: {apart:?}");
    assert!(states(&plane, "skew", 0).iter().all(|s| s != "lost") && states(&plane, "skew", 1).iter().all(|s| s != "lost"));
    for a in &mut agents {
        let _ = a.kill();
        let _ = a.wait();
    }
}

//! A fleet's whole life through the CLI: launch, inject, stream, command, scale, terminate.
//! Run on the embedded broker and on Mosquitto.

use serde_json::Value;

use crate::support::{Mosquitto, Plane, PlaneOptions, count, events};

fn whole_life(plane: &Plane) {
    // Launch and wait until every agent reports ready.
    let fleet = plane.json(&["launch", "squad", "--replicas", "3", "--prompt", "You are a scout.", "--wait", "--json"]);
    assert_eq!((fleet["name"].as_str(), fleet["replicas"].as_u64(), fleet["ready"].as_u64()), (Some("squad"), Some(3), Some(3)));

    let ls = plane.json(&["ls", "--json"]);
    assert_eq!(ls["fleets"][0]["name"], "squad");
    let human = plane.ok(&["ls"]);
    assert!(human.starts_with("NAME") && human.contains("squad  3/3"), "{human}");

    let status = plane.json(&["status", "squad", "--json"]);
    let agents = status["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 3);
    for (i, a) in agents.iter().enumerate() {
        assert_eq!(a["slot"], i as u64);
        assert_eq!(a["id"], format!("squad/{i}"));
        assert_eq!(a["state"], "idle");
        assert!(a["rss_bytes"].as_u64().unwrap() > 0 && a["last_heartbeat"].is_string() && a["version"].is_string());
        assert!(a["instance"].as_str().unwrap().starts_with("pid "));
    }

    // Inject to all and wait for the answers.
    let answers = plane.ok(&["inject", "squad", "Report your status in three words.", "--wait"]);
    assert_eq!(answers.lines().count(), 3, "{answers}");
    for i in 0..3 {
        assert!(answers.contains(&format!("squad/{i}: Report your status in three words.")), "{answers}");
    }
    // Inject to one agent: prints the injection id.
    let id = plane.ok(&["inject", "squad", "--agent", "2", "only you"]).trim().to_owned();
    assert_eq!(id.len(), 36, "an injection id: {id}");
    let status: Value = plane.client_json(&format!("/api/v1/injections/{id}"));
    assert_eq!(status["agents"].as_array().unwrap().len(), 1);

    // The whole lifecycle is stored, once per agent, in order.
    crate::support::eventually(std::time::Duration::from_secs(20), "the single-agent injection to complete", || {
        let evs = events(plane, "squad");
        (count(&evs, "turn_complete", 2, &id) == 1).then_some(())
    });
    let evs = events(plane, "squad");
    let kinds: Vec<&str> = evs.iter().filter(|e| e["injection_id"] == id.as_str()).map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["inject_ack", "inject_delivered", "turn_started", "assistant_delta", "assistant", "turn_complete", "usage"]);
    let ids: Vec<u64> = evs.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "event ids increase");

    // attach --since replays history and then streams live; its JSON lines are events.
    let since = evs.iter().find(|e| e["injection_id"] == id.as_str()).unwrap()["id"].as_u64().unwrap() - 1;
    let attach = std::process::Command::new(crate::support::BIN)
        .args(["attach", "squad", "--json", "--since", &since.to_string()])
        .env("CLAWFLEET_DATA", plane.data())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(attach.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let out = attach.wait_with_output().unwrap();
    let streamed: Vec<Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(streamed.len() >= 7, "{streamed:?}");
    assert_eq!(streamed[0]["event"], "inject_ack");

    // Commands of the vocabulary, and a refusal for anything else.
    let reply = plane.json(&["command", "squad", "version-report", "--json"]);
    assert_eq!(reply["results"].as_array().unwrap().len(), 3);
    assert!(reply["results"].as_array().unwrap().iter().all(|r| r["ok"] == true && r["result"]["fleet_version"] == "1"));
    let health = plane.ok(&["command", "squad", "health-check", "--agent", "1"]);
    assert!(health.contains("squad/1") && health.contains("\"healthy\":true"), "{health}");
    let err = plane.fails(&["command", "squad", "reboot"]);
    assert_eq!(err.trim(), "error: unknown command 'reboot': the vocabulary is health-check, version-report, config-reload, status-report");

    // Scale up and down; `scale --wait` returns once the fleet is that size, every agent ready.
    plane.ok(&["scale", "squad", "5", "--wait"]);
    assert_eq!(plane.json(&["ls", "--json"])["fleets"][0]["ready"], 5);
    plane.ok(&["scale", "squad", "2", "--wait"]);
    assert_eq!(plane.json(&["status", "squad", "--json"])["agents"].as_array().unwrap().len(), 2, "the agents above 2 are gone");

    // Terminate and wait for it to be gone.
    plane.ok(&["terminate", "squad", "--wait"]);
    assert_eq!(plane.json(&["ls", "--json"])["fleets"].as_array().unwrap().len(), 0);
    let evs = events(plane, "squad");
    assert_eq!(evs.last().unwrap()["event"], "fleet_terminated");

    // The audit log names every control action.
    let audit = plane.json(&["audit", "--json"]);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    for action in ["launch", "inject", "command", "scale", "terminate"] {
        assert!(actions.contains(&action), "{actions:?}");
    }
    assert_eq!(audit[0]["actor"], "operator (operator)", "the token file's token, by name and role");
}

impl Plane {
    fn client_json(&self, path: &str) -> Value {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(self.client().get(path)).unwrap()
    }
}

#[test]
fn whole_life_on_the_embedded_broker() {
    whole_life(&Plane::start());
}

#[test]
fn whole_life_on_mosquitto() {
    let mosquitto = Mosquitto::start();
    let plane = Plane::with(PlaneOptions { bus: Some(format!("mqtt://127.0.0.1:{}", mosquitto.port)), ..PlaneOptions::default() });
    whole_life(&plane);
}

#[test]
fn up_demo_launches_a_small_fleet() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::support::BIN)
        .args(["up", "--demo", "--data"])
        .arg(data.path())
        .args([
            "--http",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--model-listen",
            "127.0.0.1:0",
            "--model-slots",
            "4",
            "--model-ctx",
            "1024",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read its first lines, then stop it.
    let pid = out.id();
    std::thread::sleep(std::time::Duration::from_secs(3));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = out.wait_with_output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("dashboard  http://127.0.0.1:"), "{text}");
    assert!(text.contains("API token"), "{text}");
    assert!(text.contains("launched fleet 'demo' (3 local agents, brain model)"), "{text}");
    assert!(text.contains("model      SmolLM2-135M-Instruct (4 slots × 1024 tokens, 94 MB of KV cache) on http://127.0.0.1:"), "{text}");
}

#[test]
fn monitor_speaks_the_hatchery_monitor_format() {
    let plane = Plane::start();
    let empty = plane.json(&["monitor", "--json"]);
    assert_eq!(empty, serde_json::json!({"status": "ok", "message": "no running instances", "results": []}));
    plane.ok(&["launch", "good", "--replicas", "2", "--wait"]);
    plane.ok(&["launch", "bad", "--brain", "openai:http://127.0.0.1:9/v1#x", "--wait"]);
    let out = plane.cli(&["monitor", "--json"]);
    assert_eq!(out.status.code(), Some(1), "unhealthy agents fail the monitor");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "unhealthy");
    let results = v["results"].as_array().unwrap();
    assert!(results.contains(&serde_json::json!({"name": "bad/0", "healthy": false, "http_status": 503})), "{v}");
    assert!(results.contains(&serde_json::json!({"name": "good/1", "healthy": true, "http_status": 200})), "{v}");
    assert_eq!(plane.json(&["monitor", "good", "--json"])["status"], "healthy");
    let human = plane.cli(&["monitor"]);
    assert!(String::from_utf8_lossy(&human.stdout).starts_with("bad/0 UNHEALTHY (http://127.0.0.1:9/v1/models: could not connect"));
    let out = plane.cli_with(&["monitor", "--json"], &[("CLAWFLEET_SERVER", "http://127.0.0.1:9")]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "error");
    assert!(v["message"].as_str().unwrap().starts_with("cannot reach the control plane"));
}

//! The queue end to end: prompts wait in the control plane for an idle agent that holds no
//! work, survive a kill -9 of the control plane, can be cancelled while they wait, and are
//! dropped, saying why, when their agent is scaled away.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Plane, PlaneOptions, eventually};

fn item(plane: &Plane, id: &str) -> Value {
    plane.json(&["queue", "show", id, "--json"])
}

fn waiting(plane: &Plane) -> Vec<String> {
    let list = plane.json(&["queue", "list", "--fleet", "q", "--json"]);
    list["items"].as_array().unwrap().iter().map(|i| i["prompt"].as_str().unwrap().to_owned()).collect()
}

fn add(plane: &Plane, args: &[&str]) -> String {
    let v = plane.json(&[&["queue", "add", "q"], args, &["--json"]].concat());
    v["items"][0]["queue_id"].as_str().unwrap().to_owned()
}

#[test]
fn queued_prompts_wait_for_an_idle_agent_survive_a_crash_and_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("go");
    // Every turn holds its agent until the test opens the gate.
    let script = dir.path().join("brain.sh");
    std::fs::write(&script, format!("p=$(cat)\nwhile [ ! -e {} ]; do sleep 0.1; done\necho \"did $p\"\n", gate.display())).unwrap();
    let mut plane = Plane::with(PlaneOptions { heartbeat_ms: 200, ..PlaneOptions::default() });
    plane.ok(&["launch", "q", "--replicas", "2", "--brain", &format!("cmd:bash {}", script.display()), "--wait"]);
    // Agent 1 is busy with a direct injection: the first queued prompt goes to agent 0.
    plane.ok(&["inject", "q", "hold", "--agent", "1"]);
    eventually(Duration::from_secs(30), "agent 1 to be busy", || {
        let s = plane.json(&["status", "q", "--json"]);
        (s["agents"][1]["state"] == "busy").then_some(())
    });
    let first = add(&plane, &["first"]);
    let a = eventually(Duration::from_secs(30), "the first prompt to be dispatched", || {
        let a = item(&plane, &first);
        (a["status"] == "dispatched").then_some(a)
    });
    assert_eq!(a["dispatched_to"], 0, "{a}");
    // Both agents hold work now: the rest waits, oldest first.
    let second = add(&plane, &["second", "--agent", "1"]);
    let third = add(&plane, &["third"]);
    let fourth = add(&plane, &["fourth"]);
    let cancelled = plane.json(&["queue", "cancel", &fourth, "--json"]);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let err = plane.fails(&["queue", "cancel", &fourth]);
    assert!(err.contains(&format!("queue item {fourth} is cancelled already")), "{err}");
    let err = plane.fails(&["queue", "cancel", &first]);
    assert!(err.contains("is dispatched already (to q/0, injection"), "{err}");
    assert_eq!(waiting(&plane), ["second", "third"]);
    // Refusals name what is wrong.
    assert!(plane.fails(&["queue", "add", "q", " "]).contains("prompt is empty"));
    assert!(plane.fails(&["queue", "add", "q", "x", "--agent", "5"]).contains("fleet 'q' has no agent 5 (it has 2)"));
    assert!(plane.fails(&["queue", "add", "nope", "x"]).contains("no fleet named 'nope'"));
    assert!(plane.fails(&["queue", "show", "nope"]).contains("no queue item 'nope'"));

    // A crash loses nothing that waits, and dispatches nothing twice.
    plane.kill();
    plane.spawn();
    assert_eq!(waiting(&plane), ["second", "third"]);
    assert_eq!(item(&plane, &first)["status"], "dispatched");
    // Agent 1 scaled away: what waits for it is dropped, saying why.
    plane.ok(&["scale", "q", "1"]);
    let b = eventually(Duration::from_secs(30), "the second prompt to be dropped", || {
        let b = item(&plane, &second);
        (b["status"] == "dropped").then_some(b)
    });
    assert_eq!(b["reason"], "fleet 'q' has no agent 1 (it has 1)", "{b}");

    // The gate opens: agent 0 finishes the first, then takes the third.
    std::fs::write(&gate, "").unwrap();
    let c = eventually(Duration::from_secs(60), "the third prompt to be done", || {
        let c = item(&plane, &third);
        (c["status"] == "done").then_some(c)
    });
    assert_eq!(c["dispatched_to"], 0, "{c}");
    assert_eq!(item(&plane, &first)["status"], "done");
    let evs = crate::support::events(&plane, "q");
    let answers = |injection: &Value| -> Vec<String> {
        evs.iter()
            .filter(|e| e["event"] == "assistant" && &e["injection_id"] == injection)
            .map(|e| e["data"]["content"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(answers(&a["injection_id"]), ["did first"]);
    assert_eq!(answers(&c["injection_id"]), ["did third"]);
    let d = item(&plane, &fourth);
    assert!(d["injection_id"].is_null() && d["status"] == "cancelled", "{d}");
    let history = plane.json(&["queue", "list", "--all", "--json"]);
    let statuses: Vec<&str> = history["items"].as_array().unwrap().iter().map(|i| i["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["done", "dropped", "done", "cancelled"]);
    let text = plane.ok(&["queue", "list"]);
    assert_eq!(text.trim(), "nothing waits");
}

#[test]
fn an_agent_delegates_through_the_control_plane_and_loops_and_strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"rules": [{"from": "boss", "to": ["crew"], "actions": ["inject"]}, {"from": "crew", "to": ["boss"], "actions": ["inject"]}]}"#,
    )
    .unwrap();
    let crew = dir.path().join("crew.sh");
    std::fs::write(&crew, "p=$(cat)\ncase \"$p\" in *bounce*) echo '/swarm[boss]/idle back to you' ;; *) echo \"crew did: $p\" ;; esac\n")
        .unwrap();
    let plane = Plane::with(PlaneOptions {
        heartbeat_ms: 200,
        up_args: vec!["--agent-policy".into(), policy.to_str().unwrap().into()],
        ..PlaneOptions::default()
    });
    plane.ok(&["launch", "crew", "--brain", &format!("cmd:bash {}", crew.display()), "--wait"]);
    // boss hands its work to crew, asking for the answer back when it says "ask".
    let boss = dir.path().join("boss.sh");
    std::fs::write(
        &boss,
        "p=$(cat)\ncase \"$p\" in '[Reply from'*) printf 'boss heard: %s\\n' \"$p\" ;; *ask*) echo \"/swarm[crew]/idle/reply $p\" ;; \
         *) echo 'Handing it over:'; echo \"- /swarm[crew]/idle $p\" ;; esac\n",
    )
    .unwrap();
    plane.ok(&["launch", "boss", "--brain", &format!("cmd:bash {}", boss.display()), "--wait"]);
    plane.ok(&["launch", "rogue", "--brain", "cmd:echo '/swarm[crew]/idle sneak in'", "--wait"]);

    // boss hands "fix it" to crew: queued as coming from boss, answered by crew.
    plane.ok(&["inject", "boss", "fix it"]);
    let answer = eventually(Duration::from_secs(60), "crew's answer to the delegated work", || {
        crate::support::events(&plane, "crew")
            .into_iter()
            .find(|e| e["event"] == "assistant" && e["data"]["content"].as_str().is_some_and(|c| c.contains("crew did")))
    });
    assert_eq!(answer["data"]["content"], "crew did: fix it");
    let history = plane.json(&["queue", "list", "--fleet", "crew", "--all", "--json"]);
    let item = &history["items"][0];
    assert_eq!(
        (&item["source"], &item["prompt"], &item["injection_id"]),
        (&Value::from("boss"), &Value::from("fix it"), &answer["injection_id"]),
        "{history}"
    );

    // A client that routes the same directive itself (codeswarm's web backend) joins the
    // delegation's item instead of queueing the work twice.
    let joined = plane.json(&["queue", "add", "crew", "fix it", "--source", "boss", "--json"]);
    assert_eq!((&joined["joined"], &joined["items"][0]["queue_id"]), (&Value::from(1), &item["queue_id"]), "{joined}");
    let text = plane.ok(&["queue", "add", "crew", "fix it", "--source", "boss"]);
    assert!(text.contains("queued ") && !text.contains("already"), "only the first is joined: {text}");

    // "/reply": crew's answer goes back to the boss agent that asked, once.
    plane.ok(&["inject", "boss", "ask for the count"]);
    let heard = eventually(Duration::from_secs(60), "crew's answer to come back to boss", || {
        crate::support::events(&plane, "boss")
            .into_iter()
            .find(|e| e["event"] == "assistant" && e["data"]["content"].as_str().is_some_and(|c| c.starts_with("boss heard")))
    });
    let asked = crate::support::events(&plane, "crew")
        .into_iter()
        .find(|e| e["event"] == "assistant" && e["data"]["content"] == "crew did: ask for the count")
        .expect("crew answered the question");
    let boss_asked = crate::support::events(&plane, "boss")
        .into_iter()
        .find(|e| e["event"] == "assistant" && e["data"]["content"].as_str().is_some_and(|c| c.starts_with("/swarm[crew]/idle/reply")))
        .expect("boss asked");
    assert_eq!(
        heard["data"]["content"].as_str().unwrap(),
        format!(
            "boss heard: [Reply from /swarm[crew]/node[0] for request {}]\ncrew did: ask for the count",
            boss_asked["injection_id"].as_str().unwrap()
        )
    );
    assert!(asked["injection_id"].is_string());

    // crew, asked to bounce work that came from boss back to boss, is refused: a loop.
    plane.ok(&["inject", "boss", "bounce"]);
    let refused = eventually(Duration::from_secs(60), "crew's delegation to be refused", || {
        crate::support::events(&plane, "crew").into_iter().find(|e| e["event"] == "delegation_refused")
    });
    assert_eq!(refused["data"]["target"], "boss");
    assert_eq!(refused["data"]["reason"], "a loop: 'boss' is already on the way this work came (boss → crew)");

    // rogue has no policy to inject crew.
    plane.ok(&["inject", "rogue", "go"]);
    let refused = eventually(Duration::from_secs(60), "rogue's delegation to be refused", || {
        crate::support::events(&plane, "rogue").into_iter().find(|e| e["event"] == "delegation_refused")
    });
    assert_eq!(refused["data"]["reason"], "no policy lets the agents of 'rogue' inject 'crew' (the control plane's --agent-policy)");
    // Nothing else was queued for crew: from boss the work, the second "fix it" the client
    // sent, the question and the bounce; none from rogue. boss got one reply.
    let history = plane.json(&["queue", "list", "--fleet", "crew", "--all", "--json"]);
    let sources: Vec<&str> = history["items"].as_array().unwrap().iter().map(|i| i["source"].as_str().unwrap()).collect();
    assert_eq!(sources, ["boss", "boss", "boss", "boss"], "{history}");
    let replies = plane.json(&["queue", "list", "--fleet", "boss", "--all", "--json"]);
    let replies: Vec<(&str, &str)> =
        replies["items"].as_array().unwrap().iter().map(|i| (i["source"].as_str().unwrap(), i["by"].as_str().unwrap())).collect();
    assert_eq!(replies, [("crew", "agent crew/0 (reply)")]);
}

//! A fleet's leader (clawbucket's MANAGER): the lowest healthy agent leads and stays while it is
//! healthy; a frozen or killed leader is replaced with a higher epoch, and one that comes back
//! stays replaced; the operator's preferred agent leads while healthy. Epochs only grow.

use std::time::Duration;

use crate::support::{Plane, PlaneOptions, eventually};

fn leader(plane: &Plane, fleet: &str) -> (Option<u64>, u64) {
    let f = plane.json(&["leader", fleet, "--json"]);
    (f["leader"]["slot"].as_u64(), f["leader"]["epoch"].as_u64().unwrap_or(0))
}

fn pid_of(plane: &Plane, fleet: &str, slot: u32) -> i32 {
    let dir = std::fs::read_dir(plane.data().join("agents"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&format!("{fleet}-")))
        .unwrap();
    let text = std::fs::read_to_string(dir.path().join(slot.to_string()).join("agent.pid")).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

#[test]
fn one_leader_at_a_time_through_a_freeze_a_kill_and_an_override() {
    use nix::sys::signal::Signal;
    let plane = Plane::with(PlaneOptions { heartbeat_ms: 200, ..PlaneOptions::default() });
    plane.ok(&["launch", "ring", "--replicas", "3", "--brain", "echo", "--wait"]);
    let t = Duration::from_secs(30);
    eventually(t, "agent 0 to lead", || (leader(&plane, "ring").0 == Some(0)).then_some(()));
    let (_, first) = leader(&plane, "ring");
    assert!(plane.ok(&["status", "ring"]).contains(&format!("leader: agent 0 (epoch {first})")));

    // Frozen (SIGSTOP): lost after three missed heartbeats, and agent 1 leads in a new epoch.
    let frozen = pid_of(&plane, "ring", 0);
    signal(frozen, Signal::SIGSTOP);
    eventually(t, "agent 1 to lead", || (leader(&plane, "ring").0 == Some(1)).then_some(()));
    let (_, second) = leader(&plane, "ring");
    assert!(second > first, "epochs grow: {first} then {second}");
    // Back: it is healthy again, and stays replaced.
    signal(frozen, Signal::SIGCONT);
    eventually(t, "agent 0 healthy again", || (plane.json(&["status", "ring", "--json"])["agents"][0]["state"] == "idle").then_some(()));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(leader(&plane, "ring"), (Some(1), second), "the old leader stays replaced");

    // The operator's preferred agent leads while healthy; killed, the lowest healthy leads
    // until it is back.
    assert!(plane.ok(&["leader", "ring", "2"]).contains("preferred: agent 2"));
    eventually(t, "agent 2 to lead", || (leader(&plane, "ring").0 == Some(2)).then_some(()));
    signal(pid_of(&plane, "ring", 2), Signal::SIGKILL);
    eventually(t, "agent 0 to lead while 2 is down", || (leader(&plane, "ring").0 == Some(0)).then_some(()));
    eventually(t, "agent 2 restarted and leading again", || (leader(&plane, "ring").0 == Some(2)).then_some(()));
    plane.ok(&["leader", "ring", "--auto"]);
    assert!(plane.json(&["leader", "ring", "--json"])["leader_preferred"].is_null());
    let err = plane.fails(&["leader", "ring", "9"]);
    assert!(err.contains("fleet 'ring' has no agent 9"), "{err}");

    // Never two leaders: each change names one agent, in an epoch above the last.
    let events = crate::support::events(&plane, "ring");
    let changes: Vec<(Option<u64>, u64)> = events
        .iter()
        .filter(|e| e["event"] == "leader_changed")
        .map(|e| (e["data"]["slot"].as_u64(), e["data"]["epoch"].as_u64().unwrap()))
        .collect();
    assert!(changes.len() >= 5, "{changes:?}");
    assert!(changes.windows(2).all(|w| w[1].1 > w[0].1), "epochs grow with every change: {changes:?}");
    assert_eq!(changes.iter().map(|c| c.0).collect::<Vec<_>>()[..5], [Some(0), Some(1), Some(2), Some(0), Some(2)], "{changes:?}");
}

/// A fleet's chat panel: operators post (as themselves), everyone who reads the fleet reads it,
/// newest last; a message is 1 to 280 characters; messages stream with the fleet's events.
#[test]
fn a_fleet_has_a_chat_panel_of_bounded_messages() {
    let plane = Plane::start();
    plane.ok(&["launch", "room", "--backend", "external", "--replicas", "1"]);
    plane.ok(&["chat", "room", "hello, agents"]);
    let posted = plane.json(&["chat", "room", "ça va? 🦀", "--json"]);
    assert_eq!((posted["from"].as_str(), posted["text"].as_str()), (Some("operator (operator)"), Some("ça va? 🦀")), "{posted}");
    let list = plane.json(&["chat", "room", "--json"]);
    let texts: Vec<&str> = list["messages"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["hello, agents", "ça va? 🦀"]);
    assert!(plane.ok(&["chat", "room"]).contains("operator (operator): hello, agents"));
    assert_eq!(plane.json(&["chat", "room", "--limit", "1", "--json"])["messages"].as_array().unwrap().len(), 1);
    // 280 characters (not bytes) is the limit.
    plane.ok(&["chat", "room", &"é".repeat(280)]);
    let err = plane.fails(&["chat", "room", &"é".repeat(281)]);
    assert!(err.contains("a chat message is 1 to 280 characters, got 281"), "{err}");
    let err = plane.fails(&["chat", "room", "   "]);
    assert!(err.contains("got 0"), "{err}");
    let err = plane.fails(&["chat", "nowhere", "hi"]);
    assert!(err.contains("no fleet named 'nowhere'"), "{err}");
    // An observer reads the panel and may not post to it.
    let observer = plane.ok(&["token", "create", "--role", "observer", "--name", "reader"]).trim().to_owned();
    let (code, v) = plane.http("GET", "/api/v1/fleets/room/chat", Some(&observer), None);
    assert_eq!((code, v["messages"].as_array().map(Vec::len)), (200, Some(3)), "{v}");
    let (code, v) = plane.http("POST", "/api/v1/fleets/room/chat", Some(&observer), Some(r#"{"text": "hi"}"#));
    assert_eq!(code, 403, "{v}");
    let events = crate::support::events(&plane, "room");
    assert_eq!(events.iter().filter(|e| e["event"] == "chat").count(), 3);
}

/// ARM: an operator disarms and arms one agent; each change is an `arm` event naming who, the
/// agent's status says so, and an unknown agent or a value that is not on/off is refused.
#[test]
fn agents_are_armed_and_disarmed_one_by_one() {
    let plane = Plane::start();
    plane.ok(&["launch", "arms", "--backend", "external", "--replicas", "2"]);
    let armed = |plane: &Plane| -> Vec<bool> {
        plane.json(&["status", "arms", "--json"])["agents"].as_array().unwrap().iter().map(|a| a["armed"].as_bool().unwrap()).collect()
    };
    assert_eq!(armed(&plane), [true, true], "armed unless disarmed");
    assert_eq!(plane.ok(&["arm", "arms/1", "off"]).trim(), "agent arms/1 disarmed");
    assert_eq!(armed(&plane), [true, false]);
    assert!(plane.ok(&["status", "arms"]).contains("(disarmed)"));
    plane.ok(&["arm", "arms/1", "on"]);
    assert_eq!(armed(&plane), [true, true]);
    let events = crate::support::events(&plane, "arms");
    let arms: Vec<(bool, &str)> = events
        .iter()
        .filter(|e| e["event"] == "arm" && e["agent"] == 1)
        .map(|e| (e["data"]["armed"].as_bool().unwrap(), e["data"]["by"].as_str().unwrap()))
        .collect();
    assert_eq!(arms, [(false, "operator (operator)"), (true, "operator (operator)")]);
    let err = plane.fails(&["arm", "arms/7", "off"]);
    assert!(err.contains("fleet 'arms' has no agent 7"), "{err}");
    let out = plane.cli(&["arm", "arms/0", "maybe"]);
    assert_eq!(out.status.code(), Some(2), "a bad value is bad usage");
    let (code, v) = plane.http("POST", "/api/v1/fleets/arms/agents/0/arm", Some(&plane.token()), Some(r#"{"armed": "yes"}"#));
    assert_eq!(code, 400, "{v}");
}

/// clawbucket's own endpoints answer with its shapes: the swarm's tiles with one manager,
/// scaling (202), chat, ARM and its events; the fleet is the `service`, or the only one.
#[test]
fn clawbucket_endpoints_answer_with_its_shapes() {
    let plane = Plane::with(PlaneOptions { heartbeat_ms: 200, ..PlaneOptions::default() });
    plane.ok(&["launch", "bucket", "--replicas", "2", "--brain", "echo", "--wait"]);
    let token = plane.token();
    let t = Some(token.as_str());
    plane.ok(&["leader", "bucket", "0"]);
    eventually(Duration::from_secs(30), "a manager", || (leader(&plane, "bucket").0 == Some(0)).then_some(()));
    let (code, swarm) = plane.http("GET", "/api/swarm", t, None);
    let tiles = swarm["replicas"].as_array().unwrap();
    assert_eq!(
        (code, swarm["service"].as_str(), tiles.len(), swarm["desired_replicas"].as_u64()),
        (200, Some("bucket"), 2, Some(2)),
        "{swarm}"
    );
    let managers: Vec<u64> = tiles.iter().filter(|t| t["is_manager"] == true).map(|t| t["slot"].as_u64().unwrap()).collect();
    assert_eq!(managers, [0], "exactly one MANAGER: {swarm}");
    let name = tiles[1]["name"].as_str().unwrap().to_owned();
    assert!(
        name.ends_with("-1") && tiles[1]["id"].as_str().is_some() && tiles[1]["color"].as_str().is_some_and(|c| c.len() == 7),
        "{swarm}"
    );
    assert_eq!(tiles[1]["score"], 0, "{swarm}");

    let (code, v) = plane.http("POST", "/api/scale", t, Some(r#"{"service": "clawfleet-bucket", "replicas": 3}"#));
    assert_eq!((code, v), (202, serde_json::json!({"ok": true, "service": "bucket", "desired_replicas": 3, "status": "scaling"})));
    let (code, m) = plane.http("POST", "/api/chat", t, Some(r#"{"text": "rock?"}"#));
    assert_eq!((code, m["message"]["text"].as_str(), m["message"]["host"].as_str()), (201, Some("rock?"), Some("control-plane")), "{m}");
    let (_, chat) = plane.http("GET", "/api/chat?service=bucket", t, None);
    assert_eq!(chat["messages"][0]["from"], "operator (operator)", "{chat}");
    let body = serde_json::json!({"bot": name, "state": "off"}).to_string();
    let (code, v) = plane.http("POST", "/api/arm", t, Some(&body));
    assert_eq!((code, v["event"]["state"].as_str(), v["event"]["bot"].as_str()), (201, Some("off"), Some(name.as_str())), "{v}");
    let (_, events) = plane.http("GET", "/api/arm/events", t, None);
    assert_eq!((events["events"][0]["slot"].as_u64(), events["events"][0]["state"].as_str()), (Some(1), Some("off")), "{events}");

    // Bad input: a clear error, as {"error": ...}.
    let (code, v) = plane.http("POST", "/api/arm", t, Some(r#"{"task_id": "0", "state": "maybe"}"#));
    assert!(code == 400 && v["error"].as_str().unwrap().contains("state must be \"on\" or \"off\""), "{v}");
    let (code, v) = plane.http("POST", "/api/arm", t, Some(r#"{"task_id": "nobody", "state": "on"}"#));
    assert!(code == 404 && v["error"].as_str().unwrap().contains("has no agent \"nobody\""), "{v}");
    let (code, v) = plane.http("POST", "/api/chat", t, Some(&serde_json::json!({"text": "x".repeat(281)}).to_string()));
    assert!(code == 400 && v["error"].as_str().unwrap().contains("1 to 280 characters"), "{v}");
    // RPS: off until an interval is set, which is bounded (refused outside, not clamped).
    let (code, v) = plane.http("GET", "/api/rps", t, None);
    assert_eq!(
        (code, v["state"].is_null(), v["enabled"].as_bool(), v["interval_seconds"].as_u64()),
        (200, true, Some(false), Some(10)),
        "{v}"
    );
    for (body, why) in [
        (r#"{"interval_seconds": 0}"#, "rps interval_seconds must be 1 to 3600, got 0"),
        (r#"{"interval_seconds": 3601}"#, "got 3601"),
        (r#"{"interval_seconds": "ten"}"#, "interval_seconds"),
        (r#"{"interval_seconds": 5, "pace": 1}"#, "unknown field `pace`"),
    ] {
        let (code, v) = plane.http("POST", "/api/rps/config", t, Some(body));
        assert!(code == 400 && v["error"].as_str().unwrap().contains(why), "{body}: {code} {v}");
    }
    let (code, v) = plane.http("POST", "/api/rps/config", t, Some(r#"{"interval_seconds": 1}"#));
    assert_eq!((code, v["ok"].as_bool(), v["interval_seconds"].as_u64()), (200, Some(true), Some(1)), "{v}");
    let board = eventually(Duration::from_secs(30), "a scored round on the scoreboard", || {
        let (_, v) = plane.http("GET", "/api/scoreboard", t, None);
        (v["scoreboard"].as_array().is_some_and(|b| !b.is_empty())).then_some(v)
    });
    let row = &board["scoreboard"][0];
    assert!(
        row["bot"].is_string() && row["task_id"].is_string() && row["score"].is_i64() && board["rounds"].as_u64() >= Some(1),
        "{board}"
    );
    let (_, v) = plane.http("GET", "/api/rps?service=bucket", t, None);
    assert!(["rock", "paper", "scissors"].contains(&v["state"]["choice"].as_str().unwrap()) && v["state"]["slot"] == 0, "{v}");
    let (code, v) = plane.http("GET", "/api/haiku", t, None);
    assert_eq!((code, v["haiku"].as_array().map(Vec::len)), (200, Some(0)), "no haiku until the scenario is on: {v}");
    plane.ok(&["launch", "other", "--backend", "external", "--replicas", "1"]);
    let (code, v) = plane.http("GET", "/api/swarm", t, None);
    assert!(code == 400 && v["error"].as_str().unwrap().contains("2 fleets run: name one as service"), "{v}");
    let (code, _) = plane.http("GET", "/api/swarm?service=bucket", None, None);
    assert_eq!(code, 401, "behind the token like the rest");
    // A token bound to one fleet gets that fleet by default, and neither sees nor learns of
    // the others (refused whether they exist or not).
    let scoped = plane.ok(&["token", "create", "--role", "operator", "--fleet", "other", "--name", "other-op"]).trim().to_owned();
    let (code, v) = plane.http("GET", "/api/swarm", Some(&scoped), None);
    assert_eq!((code, v["service"].as_str()), (200, Some("other")), "{v}");
    for service in ["bucket", "ghost"] {
        let (code, v) = plane.http("GET", &format!("/api/swarm?service={service}"), Some(&scoped), None);
        assert_eq!(code, 403, "{service}: {v}");
    }
}

/// Rock/Paper/Scissors, haiku and three words on real agents: the leader opens each round,
/// every other armed agent plays it once and is scored; a disarmed agent plays none; the
/// leader writes the haiku and every agent its phrase. A frozen leader is replaced, and no move
/// is ever taken from an agent but in the epoch it led in.
#[test]
fn a_fleet_plays_rps_writes_haiku_and_says_three_words() {
    use nix::sys::signal::Signal;
    let plane = Plane::with(PlaneOptions { heartbeat_ms: 200, ..PlaneOptions::default() });
    plane.ok(&["launch", "game", "--replicas", "4", "--brain", "echo", "--wait"]);
    let t = Duration::from_secs(60);
    // The first agent heard leads, which need not be agent 0 on a loaded machine: ask for it.
    plane.ok(&["leader", "game", "0"]);
    eventually(t, "agent 0 to lead", || (leader(&plane, "game").0 == Some(0)).then_some(()));
    plane.ok(&["arm", "game/3", "off"]);
    let err = plane.fails(&["scenario", "game", "--rps", "0s"]);
    assert!(err.contains("rps interval_seconds must be 1 to 3600, got 0"), "{err}");
    let err = plane.fails(&["scenario", "game", "--haiku", "30s"]);
    assert!(err.contains("haiku interval_minutes must be 1 to 1440, got 0"), "{err}");
    let set = plane.ok(&["scenario", "game", "--rps", "1s", "--haiku", "1m", "--three-words", "1m"]);
    assert_eq!(set.trim(), "fleet 'game' plays: rps every 1 s, haiku every 1 min, three words every 1 min");

    let played = |plane: &Plane, slot: u64| -> u64 {
        let v = plane.json(&["scoreboard", "game", "--json"]);
        v["scoreboard"].as_array().unwrap().iter().find(|r| r["slot"] == slot).map_or(0, |r| r["last_round"].as_u64().unwrap())
    };
    eventually(t, "agents 1 and 2 to play three rounds", || (played(&plane, 1) >= 3 && played(&plane, 2) >= 3).then_some(()));
    let view = plane.json(&["scoreboard", "game", "--json"]);
    let slots: Vec<u64> = view["scoreboard"].as_array().unwrap().iter().map(|r| r["slot"].as_u64().unwrap()).collect();
    assert!(!slots.contains(&0) && !slots.contains(&3), "neither the leader nor the disarmed agent plays: {view}");
    for r in view["scoreboard"].as_array().unwrap() {
        let (w, d, l) = (r["wins"].as_i64().unwrap(), r["draws"].as_i64().unwrap(), r["losses"].as_i64().unwrap());
        assert_eq!(r["score"].as_i64().unwrap(), w - l, "{r}");
        assert!(w + d + l >= 3, "{r}");
    }
    assert!(plane.ok(&["scoreboard", "game"]).contains("SCORE"));
    // The echo brain writes back the prompts: the haiku and the phrases come through the brains.
    let haiku = eventually(t, "a haiku", || {
        let v = plane.json(&["haiku", "game", "--json"]);
        v["haiku"].as_array().and_then(|h| h.first().cloned())
    });
    assert!(haiku["text"].as_str().unwrap().contains("game") && haiku["agent"] == 0, "{haiku}");
    eventually(t, "every armed agent's three words", || {
        let s = plane.json(&["status", "game", "--json"]);
        s["agents"].as_array().unwrap()[..3].iter().all(|a| a["three_words"] == "In exactly three").then_some(())
    });

    assert!(plane.json(&["status", "game", "--json"])["agents"][3]["three_words"].is_null(), "the disarmed agent says nothing");
    // Disarmed, the leader no longer leads: agent 1 does, in a new epoch; armed again, agent 0
    // plays.
    plane.ok(&["arm", "game/0", "off"]);
    eventually(t, "agent 1 to lead in place of the disarmed agent 0", || (leader(&plane, "game").0 == Some(1)).then_some(()));
    plane.ok(&["arm", "game/0", "on"]);
    plane.ok(&["leader", "game", "0"]);
    eventually(t, "agent 0 to lead again", || (leader(&plane, "game").0 == Some(0)).then_some(()));
    plane.ok(&["leader", "game", "--auto"]);

    // Asked to chime in, an agent posts its brain's answer to the chat, as itself.
    assert_eq!(plane.ok(&["chime", "game", "--agents", "2", "say hi"]).trim(), "asked 1 agent of game to chime in");
    let said = eventually(t, "agent 2 in the chat", || {
        let v = plane.json(&["chat", "game", "--json"]);
        v["messages"].as_array().unwrap().iter().find(|m| m["agent"] == 2).cloned()
    });
    assert!(said["text"] == "say hi" && said["from"].as_str().unwrap().ends_with("-2"), "{said}");

    // The leader frozen: agent 1 leads in a new epoch and opens the rounds; agent 0, back,
    // plays them.
    let before = played(&plane, 0);
    let frozen = pid_of(&plane, "game", 0);
    signal(frozen, Signal::SIGSTOP);
    eventually(t, "agent 1 to lead", || (leader(&plane, "game").0 == Some(1)).then_some(()));
    signal(frozen, Signal::SIGCONT);
    eventually(t, "agent 0 to play a round led by agent 1", || (played(&plane, 0) > before).then_some(()));

    // Every leader's move came from the agent that led, in its epoch.
    let events = crate::support::events(&plane, "game");
    let (epochs, led) = crate::support::leaders_and_led(&events);
    assert!(led.iter().any(|l| l.0 == 0) && led.iter().any(|l| l.0 == 1), "both leaders led: {led:?}");
    assert!(led.iter().all(|l| epochs.contains(l)), "a move in an epoch its agent did not lead in: {led:?} vs {epochs:?}");
    assert!(!events.iter().any(|e| e["event"] == "rps_move" && e["agent"] == 3), "the disarmed agent never moved");
}

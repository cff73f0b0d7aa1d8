//! Every bad input gets a clear error naming what is wrong, and the control plane keeps serving.

use serde_json::json;

use crate::support::Plane;

#[test]
fn the_api_refuses_bad_requests_clearly_and_keeps_serving() {
    let plane = Plane::start();
    let token = plane.token();
    let t = Some(token.as_str());
    plane.ok(&["launch", "squad", "--replicas", "2", "--wait"]);

    // (method, path, token, body, status, code, start of the message)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<String>, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        ("GET", "/api/v1/fleets", None, None, 401, "unauthorized", "missing token: send 'Authorization: Bearer <token>'"),
        ("GET", "/api/v1/fleets", Some("wrong"), None, 401, "unauthorized", "invalid token"),
        ("GET", "/api/v1/fleets/nope", t, None, 404, "unknown_fleet", "no fleet named 'nope'"),
        ("POST", "/api/v1/fleets", t, Some("{not json".into()), 400, "invalid_json", "invalid json:"),
        ("POST", "/api/v1/fleets", t, Some(r#"{"name":"x"}"#.into()), 400, "invalid_body", "invalid request body:"),
        (
            "POST",
            "/api/v1/fleets",
            t,
            Some(r#"{"name":"x","replicas":1,"colour":"red"}"#.into()),
            400,
            "invalid_body",
            "invalid request body: colour: unknown field `colour`, expected one of `name`",
        ),
        (
            "POST",
            "/api/v1/fleets",
            t,
            Some(r#"{"name":"Bad Name","replicas":1}"#.into()),
            400,
            "bad_request",
            "fleet name 'Bad Name' may only contain",
        ),
        (
            "POST",
            "/api/v1/fleets",
            t,
            Some(r#"{"name":"x","replicas":1,"backend":"k8s"}"#.into()),
            400,
            "bad_request",
            "unknown backend 'k8s'",
        ),
        (
            "POST",
            "/api/v1/fleets",
            t,
            Some(r#"{"name":"x","replicas":1,"brain":"gpt"}"#.into()),
            400,
            "bad_request",
            "invalid brain spec 'gpt'",
        ),
        (
            "POST",
            "/api/v1/fleets",
            t,
            Some(r#"{"name":"x","replicas":1,"brain":"model"}"#.into()),
            400,
            "bad_request",
            "brain 'model' needs the shared model service",
        ),
        (
            "POST",
            "/api/v1/fleets",
            t,
            Some(r#"{"name":"x","replicas":20000}"#.into()),
            400,
            "bad_request",
            "replicas must be between 0 and 10000",
        ),
        (
            "POST",
            "/api/v1/fleets",
            t,
            Some(r#"{"name":"squad","replicas":1}"#.into()),
            409,
            "fleet_exists",
            "a fleet named 'squad' already exists",
        ),
        ("POST", "/api/v1/fleets/squad/inject", t, Some(r#"{"prompt":""}"#.into()), 400, "bad_request", "prompt is empty"),
        (
            "POST",
            "/api/v1/fleets/squad/inject",
            t,
            Some(json!({"prompt": "x".repeat(70_000)}).to_string()),
            413,
            "too_large",
            "prompt is 70000 bytes, over the 65536-byte limit",
        ),
        (
            "POST",
            "/api/v1/fleets/squad/inject",
            t,
            Some(r#"{"prompt":"hi","agents":[7]}"#.into()),
            404,
            "unknown_agent",
            "fleet 'squad' has no agent 7 (its agents are 0-1)",
        ),
        ("POST", "/api/v1/fleets/nope/inject", t, Some(r#"{"prompt":"hi"}"#.into()), 404, "unknown_fleet", "no fleet named 'nope'"),
        (
            "POST",
            "/api/v1/fleets/squad/command",
            t,
            Some(r#"{"command":"reboot"}"#.into()),
            400,
            "unknown_command",
            "unknown command 'reboot': the vocabulary is",
        ),
        ("POST", "/api/v1/fleets/squad/scale", t, Some(r#"{"replicas":-1}"#.into()), 400, "invalid_body", "invalid request body:"),
        (
            "POST",
            "/api/v1/fleets/squad/update",
            t,
            Some("{}".into()),
            400,
            "bad_request",
            "an update needs a new image, a new version, or both",
        ),
        (
            "POST",
            "/api/v1/fleets/squad/update",
            t,
            Some(r#"{"image":"clawfleet-agent:2"}"#.into()),
            400,
            "bad_request",
            "--image is for container backends (docker); the local backend",
        ),
        ("POST", "/api/v1/fleets/squad/update", t, Some(r#"{"version":"has space"}"#.into()), 400, "bad_request", "version label must be"),
        ("POST", "/api/v1/fleets/squad/rollback", t, None, 409, "conflict", "the fleet 'squad' has no earlier image or version"),
        ("POST", "/api/v1/fleets/nope/rollback", t, None, 404, "unknown_fleet", "no fleet named 'nope'"),
        (
            "POST",
            "/api/v1/fleets/squad/inject",
            t,
            Some(json!({"prompt": "x".repeat(3_000_000)}).to_string()),
            413,
            "too_large",
            "request body rejected",
        ),
        (
            "POST",
            "/api/v1/fleets/squad/inject",
            t,
            // Stored with every inject_ack: bounded (the first release stored 2 MiB per agent).
            Some(json!({"prompt": "x", "request_id": "r".repeat(300)}).to_string()),
            400,
            "bad_request",
            "request_id is 300 bytes, over the 256-byte limit",
        ),
        ("GET", "/api/v1/events?since=abc", t, None, 400, "bad_request", "invalid query string"),
        ("GET", "/api/v1/events?since=18446744073709551615", t, None, 400, "bad_request", "since is 18446744073709551615; event ids"),
        ("GET", "/api/v1/fleets/%ff", t, None, 400, "bad_request", "invalid path"),
        ("GET", "/api/v1/injections/%ff%fe", t, None, 400, "bad_request", "invalid path"),
        ("GET", "/api/v1/injections/nope", t, None, 404, "unknown_injection", "no injection with id 'nope'"),
        ("PUT", "/api/v1/fleets", t, None, 405, "method_not_allowed", "this endpoint does not take that method"),
        ("GET", "/nowhere", t, None, 404, "not_found", "no such endpoint"),
    ];
    for (method, path, token, body, status, code, message) in cases {
        let (got, v) = plane.http(method, path, token, body.as_deref());
        assert_eq!(got, status, "{method} {path}: {v}");
        assert_eq!(v["code"], code, "{method} {path}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with(message), "{method} {path}: {v}");
    }

    // Nothing of that disturbed the fleet: it still answers.
    let answers = plane.ok(&["inject", "squad", "still there?", "--wait"]);
    assert_eq!(answers.lines().count(), 2, "{answers}");
    let (status, _) = plane.http("GET", "/healthz", None, None);
    assert_eq!(status, 200);
}

#[test]
fn the_cli_says_what_is_wrong_in_one_line() {
    let plane = Plane::start();
    let one_line = |args: &[&str], expected: &str| {
        let err = plane.fails(args);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("error: {expected}")), "{err}");
    };
    one_line(&["status", "nope"], "no fleet named 'nope'");
    one_line(&["inject", "nope", "hi"], "no fleet named 'nope'");
    one_line(&["launch", "x", "--brain", "gpt"], "invalid brain spec 'gpt'");
    let out = plane.cli_with(&["ls"], &[("CLAWFLEET_TOKEN", "wrong")]);
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "error: invalid token");
    let out = plane.cli_with(&["ls"], &[("CLAWFLEET_SERVER", "http://127.0.0.1:9")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: cannot reach the control plane at http://127.0.0.1:9: is `clawfleet up` running?"
    );
    let out = plane.cli_with(&["ls"], &[("CLAWFLEET_DATA", "/nonexistent")]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("error: no API token: pass --token, set CLAWFLEET_TOKEN, or run where `clawfleet up` wrote /nonexistent/token")
    );
    // Usage errors exit 2.
    assert_eq!(plane.cli(&["launch"]).status.code(), Some(2));
    assert_eq!(plane.cli(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn malformed_bus_messages_are_refused_and_counted() {
    use std::time::Duration;
    let plane = Plane::start();
    plane.ok(&["launch", "squad", "--replicas", "1", "--wait"]);
    // An agent's own credentials, from the join endpoint.
    let join = plane.json_get("/api/v1/fleets/squad/join?slots=0");
    // A range far past the fleet is refused before it is made (the first release allocated
    // 1.5 GiB for this one), and the control plane keeps serving.
    let (status, body) = plane.http("GET", "/api/v1/fleets/squad/join?slots=0-300000000", Some(&plane.token()), None);
    assert_eq!((status, body["error"].as_str()), (404, Some("fleet 'squad' has no agent 300000000 (its agents are 0)")), "{body}");
    let (status, body) = plane.http("GET", "/api/v1/fleets/squad/join?slots=3-1", Some(&plane.token()), None);
    assert_eq!(status, 400, "{body}");
    let (user, pass) =
        (join["agents"][0]["username"].as_str().unwrap().to_owned(), join["agents"][0]["password"].as_str().unwrap().to_owned());
    let uid = join["fleet_uid"].as_str().unwrap().to_owned();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Log in as a second connection of agent 0 would: same identity, so the real agent is
        // kicked off and comes back; meanwhile we publish garbage on its own topics.
        let mut cfg = clawfleet_bus::ClientConfig::new("127.0.0.1", plane.mqtt_port, format!("clawfleet-squad-0-{uid}"));
        cfg.username = Some(user);
        cfg.password = Some(pass);
        cfg.clean_session = true;
        let (bus, mut rx) = clawfleet_bus::client::connect(cfg);
        while !matches!(rx.recv().await, Some(clawfleet_bus::BusEvent::Connected { .. })) {}
        for garbage in [&b"{not json"[..], b"\xff\xfe", br#"{"epoch":"e","seq":1,"at":"t","event":"fleet_terminated","data":{}}"#] {
            bus.publish("clawfleet/v1/fleets/squad/agents/0/events", garbage.to_vec(), false).await.unwrap();
        }
        bus.publish("clawfleet/v1/fleets/squad/agents/0/heartbeat", b"[]".to_vec(), false).await.unwrap();
        bus.disconnect();
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let metrics = plane.http("GET", "/metrics", None, None).1;
    let metrics = metrics.as_str().unwrap();
    let rejected = |reason: &str| -> u64 {
        let line = format!("clawfleet_bus_rejected_total{{reason=\"{reason}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&line)).map_or(0, |v| v.parse().unwrap())
    };
    assert!(rejected("malformed") >= 3 && rejected("forbidden") >= 1, "{metrics}");
    // The forged fleet_terminated was not stored, and the fleet still works.
    assert!(crate::support::events(&plane, "squad").iter().all(|e| e["event"] != "fleet_terminated"));
    crate::support::eventually(Duration::from_secs(20), "the kicked agent to come back", || {
        plane.cli(&["inject", "squad", "hi", "--wait", "--timeout", "5"]).status.success().then_some(())
    });
}

impl Plane {
    pub fn json_get(&self, path: &str) -> serde_json::Value {
        let (status, v) = self.http("GET", path, Some(&self.token()), None);
        assert_eq!(status, 200, "{path}: {v}");
        v
    }
}

/// A reader that goes away (`| head`) ends a printing command quietly, never with a panic.
#[test]
fn a_closed_pipe_ends_a_printing_command_quietly() {
    let plane = Plane::start();
    // Far more output than a pipe holds (64 KiB), so `ls` meets the closed pipe.
    let token = plane.token();
    for i in 0..400 {
        let body = json!({"name": format!("pipe-fleet-with-a-long-name-{i:03}"), "replicas": 0, "prompt": "p".repeat(200)}).to_string();
        let (status, _) = plane.http("POST", "/api/v1/fleets", Some(&token), Some(&body));
        assert_eq!(status, 201);
    }
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("'{}' ls --json --data '{}' | head -c 10", crate::support::BIN, plane.data().display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.stdout.len(), 10);
}

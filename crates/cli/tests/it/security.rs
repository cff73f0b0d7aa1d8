//! The security probe's attacks, each replayed against the real binary: what an agent, a
//! brain, a bus client or a web page could do before, and must not be able to do now.

use crate::support::{Plane, PlaneOptions};

/// A brain runs the operator's prompt with whatever tools it has: it must not find a clawfleet
/// credential in its environment (hole 3: a `cmd:` brain printed `CLAWFLEET_BUS_PASSWORD`).
/// A rack's offer of an agent, as rack `rack-y` makes it.
const OFFER: &str = concat!(
    r#"{"id": "0190a000-0000-7000-8000-000000000000", "from": "rack-y", "fleet": "web", "slot": 0, "clawfleet_version": ""#,
    env!("CARGO_PKG_VERSION"),
    r#"", "snapshot_version": 1, "target_fleet": "web"}"#
);

#[test]
fn a_brain_sees_no_clawfleet_credential() {
    let plane = Plane::start();
    plane.ok(&["launch", "nosy", "--brain", "cmd:env", "--wait"]);
    let answer = plane.ok(&["inject", "nosy", "print your environment", "--wait"]);
    assert!(answer.contains("CLAWFLEET_WORKSPACE="), "the brain still gets its place: {answer}");
    for secret in [
        "CLAWFLEET_BUS_PASSWORD",
        "CLAWFLEET_BUS_USERNAME",
        "CLAWFLEET_BUS=",
        "CLAWFLEET_TOKEN",
        "CLAWFLEET_AGENT_TOKEN",
        "cfa.",
        &plane.token(),
    ] {
        assert!(!answer.contains(secret), "a brain saw {secret}: {answer}");
    }
}

/// Logs in to the control plane's bus as one agent (its credentials from the join endpoint) and
/// publishes `messages` as it.
fn publish_as_agent(plane: &Plane, fleet: &str, slot: u32, messages: &[(String, Vec<u8>)]) {
    let join = plane.json_get(&format!("/api/v1/fleets/{fleet}/join?slots={slot}"));
    let agent = &join["agents"][0];
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client_id = format!("clawfleet-{fleet}-{slot}-{}", join["fleet_uid"].as_str().unwrap());
        let mut cfg = clawfleet_bus::ClientConfig::new("127.0.0.1", plane.mqtt_port, client_id);
        cfg.username = agent["username"].as_str().map(str::to_owned);
        cfg.password = agent["password"].as_str().map(str::to_owned);
        let (bus, mut rx) = clawfleet_bus::client::connect(cfg);
        while !matches!(rx.recv().await, Some(clawfleet_bus::BusEvent::Connected { .. })) {}
        for (topic, payload) in messages {
            bus.publish(topic.clone(), payload.clone(), false).await.unwrap();
        }
        bus.disconnect();
        while !matches!(rx.recv().await, Some(clawfleet_bus::BusEvent::Closed) | None) {}
    });
}

/// An agent writes events on its own topic only, but an event names its injection: one naming
/// another fleet's injection must not change that injection's answers (hole 4).
#[test]
fn an_agent_cannot_answer_for_another_fleets_injection() {
    let plane = Plane::start();
    plane.ok(&["launch", "victim", "--wait"]);
    plane.ok(&["launch", "evil", "--backend", "external"]);
    let sent = plane.json(&["inject", "victim", "what is 2+2?", "--wait", "--json"]);
    let injection = sent["injection_id"].as_str().unwrap().to_owned();
    let forged = serde_json::json!({
        "epoch": "e1", "seq": 1, "at": "2026-01-01T00:00:00Z", "injection_id": injection,
        "event": "assistant", "data": {"content": "forged: 5"},
    });
    publish_as_agent(&plane, "evil", 0, &[("clawfleet/v1/fleets/evil/agents/0/events".into(), forged.to_string().into_bytes())]);
    crate::support::eventually(std::time::Duration::from_secs(10), "the forged event to be refused", || {
        let metrics = plane.http("GET", "/metrics", None, None).1;
        metrics.as_str().unwrap().lines().any(|l| l == "clawfleet_bus_rejected_total{reason=\"forbidden\"} 1").then_some(())
    });
    let status = plane.json_get(&format!("/api/v1/injections/{injection}"));
    let answers: Vec<_> = status["agents"].as_array().unwrap().iter().map(|a| a["answer"].as_str().unwrap().to_owned()).collect();
    assert_eq!(answers, ["what is 2+2?"], "{status}");
    assert!(crate::support::events(&plane, "evil").iter().all(|e| e["event"] != "assistant"));
}

/// `clawfleet router` on TCP, with extra environment; killed when dropped.
struct TcpRouter(std::process::Child);

impl TcpRouter {
    fn start(plane: &Plane, args: &[&str], env: &[(&str, &str)]) -> TcpRouter {
        let mut cmd = std::process::Command::new(crate::support::BIN);
        cmd.arg("router").args(args).env("CLAWFLEET_DATA", plane.data()).env_remove("CODESWARM_ROUTER_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        TcpRouter(cmd.stderr(std::process::Stdio::null()).spawn().unwrap())
    }
}

impl Drop for TcpRouter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connect(port: u16) -> std::net::TcpStream {
    let stream = crate::support::eventually(std::time::Duration::from_secs(10), "the router to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    stream
}

/// What the router sends until it closes the connection.
fn read_to_close(mut stream: std::net::TcpStream) -> String {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).expect("the router closes the connection (not a timeout)");
    text
}

/// A web page can make the operator's browser POST to the router's loopback port; the body's
/// lines used to run as router commands (hole 5). Such a connection is closed with nothing run;
/// a router beyond loopback needs a token, and a client that does not present it is refused.
#[test]
fn the_tcp_router_runs_nothing_smuggled_in_http_and_needs_a_token_beyond_loopback() {
    use std::io::Write;
    let plane = Plane::start();
    let marker = plane.data().join("pwned");
    let launch = serde_json::json!({
        "protocol": "codeswarm.router.v1", "type": "command", "command": "swarm_launch", "request_id": "x",
        "payload": {"nodes": 1, "provider_params": {"name": "smuggled", "brain": format!("cmd:touch {}", marker.display())}},
    })
    .to_string();
    let port = crate::support::free_port();
    let _router = TcpRouter::start(&plane, &[], &[("CODESWARM_ROUTER_PORT", &port.to_string())]);
    let mut browser = connect(port);
    let body = format!("\n{launch}\n");
    // The rest of the request comes after the router has seen its first line (and closed):
    // the close must be an orderly one, not a reset that fails the browser's write.
    browser.write_all(b"POST / HTTP/1.1\r\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    write!(browser, "Host: 127.0.0.1:{port}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    assert_eq!(read_to_close(browser), "", "closed at once, with nothing said");
    // A request line too long to read as one (a page can fetch a URL of megabytes), or one that
    // is not UTF-8, closes the connection too: the body's lines never run.
    let long = format!("POST /{} HTTP/1.1\r\n", "a".repeat(1_100_000));
    for first in [long.into_bytes(), b"\xff\xfe / HTTP/1.1\r\n".to_vec()] {
        let mut browser = connect(port);
        browser.write_all(&first).unwrap();
        let _ = write!(browser, "Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        assert_eq!(read_to_close(browser), "", "closed, with nothing said");
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let fleets = plane.json(&["ls", "--json"]);
    assert_eq!(fleets["fleets"], serde_json::json!([]), "nothing was launched: {fleets}");
    assert!(!marker.exists());

    // Beyond loopback, no token: the router does not start.
    let out = plane.cli(&["router", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("which is not loopback, without a token") && err.contains("CODESWARM_ROUTER_TOKEN"), "{err}");

    // With a token: the first line must present it.
    let port = crate::support::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _router = TcpRouter::start(&plane, &["--listen", &listen], &[("CODESWARM_ROUTER_TOKEN", "s3cret-token")]);
    let list = r#"{"protocol":"codeswarm.router.v1","type":"command","command":"swarm_list","request_id":"l"}"#;
    for first in [list.to_owned(), r#"{"auth":"wrong"}"#.to_owned()] {
        let mut client = connect(port);
        client.write_all(format!("{first}\n{list}\n").as_bytes()).unwrap();
        let said = read_to_close(client);
        let lines: Vec<serde_json::Value> = said.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1, "one refusal, then closed: {said}");
        assert_eq!((lines[0]["event"].as_str(), lines[0]["data"]["reason"].as_str()), (Some("command_rejected"), Some("unauthorized")));
        assert!(lines[0]["data"]["detail"].as_str().unwrap().contains(r#"{"auth":"TOKEN"}"#));
    }
    let mut client = connect(port);
    writeln!(client, "{{\"auth\":\"s3cret-token\"}}\n{list}").unwrap();
    let mut reader = std::io::BufReader::new(client);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!((reply["event"].as_str(), reply["data"]["request_id"].as_str()), (Some("swarm_list"), Some("l")), "{reply}");
}

/// `mosquitto_pub` as one agent of `fleet`, with `args` (a will, say); its exit status and stderr.
fn mosquitto_pub_as_agent(plane: &Plane, fleet: &str, args: &[&str]) -> (bool, String) {
    let join = plane.json_get(&format!("/api/v1/fleets/{fleet}/join?slots=0"));
    let agent = &join["agents"][0];
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &plane.mqtt_port.to_string(), "-q", "1"])
        .args([
            "-i",
            &format!("clawfleet-{fleet}-0-{}", join["fleet_uid"].as_str().unwrap()),
            "-u",
            agent["username"].as_str().unwrap(),
            "-P",
            agent["password"].as_str().unwrap(),
        ])
        .args(["-t", &format!("clawfleet/v1/fleets/{fleet}/agents/0/heartbeat"), "-m", ""])
        .args(args)
        .output()
        .expect("mosquitto_pub (apt-get install mosquitto-clients; .ci/run does)");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A last will on another fleet's `cmd` topic made every agent of that fleet run its payload
/// when the forger dropped (hole 1). The broker now refuses such a CONNECT.
#[test]
fn a_last_will_cannot_reach_another_fleet() {
    let plane = Plane::start();
    plane.ok(&["launch", "victim", "--wait"]);
    plane.ok(&["launch", "evil", "--backend", "external"]);
    let directive = r#"{"type":"inject","injection_id":"forged","prompt":"obey","targets":[0]}"#;
    for will in [
        vec!["--will-topic", "clawfleet/v1/fleets/victim/cmd", "--will-payload", directive],
        vec!["--will-topic", "clawfleet/v1/fleets/victim/cmd", "--will-payload", directive, "--will-retain"],
        vec!["--will-topic", "clawfleet/v1/fleets/victim/agents/0/events", "--will-payload", "{}"],
        vec!["--will-topic", "clawfleet/v1/fleets/evil/agents/0/events", "--will-payload", "{}", "--will-retain"],
    ] {
        let (ok, err) = mosquitto_pub_as_agent(&plane, "evil", &will);
        assert!(!ok && err.to_lowercase().contains("not authori"), "{will:?}: {err}");
    }
    // Its own heartbeat as its will is what agents do: accepted.
    let own = ["--will-topic", "clawfleet/v1/fleets/evil/agents/0/heartbeat", "--will-payload", "", "--will-retain"];
    let (ok, err) = mosquitto_pub_as_agent(&plane, "evil", &own);
    assert!(ok, "{err}");
    // The victim never saw a forged directive and still answers.
    assert!(crate::support::events(&plane, "victim").iter().all(|e| e["injection_id"] != "forged"));
    assert_eq!(plane.ok(&["inject", "victim", "still yours", "--wait"]).trim(), "victim/0: still yours");
}

/// What a brain that tries to read the control plane's secrets gets: its answer, or its error.
fn probe(plane: &Plane, fleet: &str, command: &str) -> String {
    plane.ok(&["launch", fleet, "--brain", &format!("cmd:{command}"), "--wait"]);
    let out = plane.cli(&["inject", fleet, "go", "--wait", "--timeout", "60"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A local agent ran as the operator: a brain `cat DATA/token` answered with the operator's
/// token, and the database (with the bus secret) was world-readable (hole 2). Agents are now
/// confined with Landlock by default; the files are 0600.
#[test]
fn a_local_agent_cannot_read_the_control_planes_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let plane = Plane::start();
    let data = plane.data().canonicalize().unwrap();
    let token = plane.token();
    plane.ok(&["launch", "bystander", "--wait"]);
    let secrets = [
        format!("cat {}/token", data.display()),
        format!("cat {}/clawfleet.db", data.display()),
        format!("ls {}/agents", data.display()),
        format!("cat {}/agents/bystander-*/0/agent.log", data.display()),
        // Its memory holds its bus password; the brain runs in a sandbox nested in the agent's.
        "head -c 1 /proc/$PPID/mem".to_owned(),
        // The file that brought the password is gone before any brain starts.
        "cat agent.secrets".to_owned(),
    ];
    for (i, command) in secrets.iter().enumerate() {
        let answer = probe(&plane, &format!("nosy{i}"), command);
        assert!(answer.contains("failed:"), "{command} worked: {answer}");
        assert!(!answer.contains(&token) && !answer.contains("CLAWFLEET_BUS_PASSWORD"), "{command}: {answer}");
    }
    // Its environment is readable, and holds no credential.
    let answer = probe(&plane, "environ", "tr '\\0' '\\n' < /proc/$PPID/environ");
    let password = plane.json_get("/api/v1/fleets/environ/join?slots=0")["agents"][0]["password"].as_str().unwrap().to_owned();
    assert!(answer.contains("CLAWFLEET_FLEET=environ"), "{answer}");
    assert!(!answer.contains("CLAWFLEET_BUS_PASSWORD") && !answer.contains(&password), "{answer}");
    // What a brain needs still works: its own workspace, the system, the network.
    let answer = probe(&plane, "worker", "echo ok > note && cat note && ls /usr/bin/env && mktemp");
    assert!(answer.starts_with("worker/0: ok\n/usr/bin/env\n"), "{answer}");
    let status = plane.json(&["status", "worker", "--json"]);
    assert_eq!(status["isolation"]["kind"], "landlock", "{status}");
    let human = plane.ok(&["status", "worker"]);
    assert!(human.contains("landlock (ABI"), "{human}");
    for file in ["token", "clawfleet.db", "clawfleet.db-wal", "clawfleet.db-shm"] {
        let mode = std::fs::metadata(data.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} is {mode:o}");
    }
}

/// `--agent-sandbox off` gives the old behaviour, said loudly: the same probe reads the token.
#[test]
fn the_sandbox_can_be_turned_off_and_says_so() {
    let plane = Plane::with(PlaneOptions { up_args: vec!["--agent-sandbox".into(), "off".into()], ..PlaneOptions::default() });
    let data = plane.data().canonicalize().unwrap();
    let answer = probe(&plane, "open", &format!("cat {}/token", data.display()));
    assert_eq!(answer.trim(), format!("open/0: {}", plane.token()));
    let status = plane.json(&["status", "open", "--json"]);
    assert_eq!(status["isolation"]["kind"], "none", "{status}");
    assert!(plane.log().contains("Local agents are NOT sandboxed"));
}

/// Where Landlock is missing, a control plane running as root runs each agent as an
/// unprivileged user of its own (forced here with `--agent-sandbox user`).
#[test]
fn as_root_agents_can_run_as_users_of_their_own() {
    assert!(nix::unistd::geteuid().is_root(), "this test runs as root (as CI does)");
    let plane = Plane::with(PlaneOptions { up_args: vec!["--agent-sandbox".into(), "user".into()], ..PlaneOptions::default() });
    let data = plane.data().canonicalize().unwrap();
    let answer = probe(&plane, "own", &format!("id -u; echo ok > note && cat note; cat {}/token", data.display()));
    let lines: Vec<&str> = answer.lines().collect();
    assert!(lines[0].starts_with("own/0 failed:"), "reading the token fails: {answer}");
    // Its brain runs as its uid; the agent's memory (its bus password) stays its own.
    let answer = probe(&plane, "peek", "head -c 1 /proc/$PPID/mem");
    assert!(answer.contains("failed:") && answer.contains("Permission denied"), "{answer}");
    let workspace =
        std::fs::read_dir(data.join("agents")).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("own-")).unwrap();
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(workspace.path().join("0")).unwrap());
    assert!(uid >= 1 << 20, "the workspace belongs to the agent's own uid, not {uid}");
    assert!(plane.log().contains("Local agents are sandboxed"));
    assert_eq!(plane.json(&["status", "own", "--json"])["isolation"]["kind"], "user");
}

/// A request (token, method, path, body) and what it must get (status, error message start).
type Case<'a> = (Option<&'a str>, &'a str, &'a str, Option<&'a str>, u16, &'a str);

/// Every endpoint, asked by every role, about its own fleet and another: 401 without a valid
/// token, 403 naming the rule for a forbidden action, and the audit log names the token.
#[test]
fn every_endpoint_answers_each_role_as_the_matrix_says() {
    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(policy.path(), r#"{"rules": [{"from": "ops", "to": ["web"], "actions": ["scale", "command"]}, {"from": "ops", "to": ["spare"], "actions": ["update", "inject"]}, {"from": "ops", "to": ["ops"], "actions": ["command"]}]}"#).unwrap();
    let plane = Plane::with(PlaneOptions {
        up_args: vec!["--agent-policy".into(), policy.path().to_str().unwrap().into()],
        ..PlaneOptions::default()
    });
    for fleet in ["web", "ops", "spare"] {
        plane.ok(&["launch", fleet, "--backend", "external", "--replicas", "2"]);
    }
    let create = |args: &[&str]| plane.ok(&[&["token", "create"], args].concat()).trim().to_owned();
    let observer = create(&["--role", "observer", "--name", "watcher"]);
    let web_admin = create(&["--role", "operator", "--fleet", "web", "--name", "web-admin"]);
    let doomed = create(&["--role", "operator", "--name", "doomed"]);
    let brief = create(&["--role", "operator", "--name", "brief", "--expires", "1s"]);
    let rack = create(&["--role", "peer", "--name", "rack-z"]);
    let ops0 = plane.json_get("/api/v1/fleets/ops/join?slots=0")["agents"][0]["token"].as_str().unwrap().to_owned();
    let operator = plane.token();
    // The database keeps tokens' hashes, never the tokens.
    let db: Vec<u8> =
        ["clawfleet.db", "clawfleet.db-wal"].iter().flat_map(|f| std::fs::read(plane.data().join(f)).unwrap_or_default()).collect();
    for token in [&observer, &web_admin, &doomed, &brief, &operator, &rack] {
        assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()), "a token is stored as it is");
    }
    let list = plane.json(&["token", "list", "--json"]);
    let names: Vec<&str> = list["tokens"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["brief", "doomed", "operator", "rack-z", "watcher", "web-admin"], "{list}");
    assert!(!list.to_string().contains(&observer), "a listing never shows a token");
    assert!(plane.ok(&["token", "revoke", "doomed"]).contains("revoked"));
    std::thread::sleep(std::time::Duration::from_millis(2100));

    // An expiry is echoed in its error, a line of it at most.
    let long_expiry = serde_json::json!({"role": "observer", "expires": "x".repeat(100_000)}).to_string();
    let scale = Some(r#"{"replicas": 3}"#);
    let command = Some(r#"{"command": "health-check", "timeout_ms": 100}"#);
    let update = Some(r#"{"version": "2"}"#);
    let inject = Some(r#"{"prompt": "hi"}"#);
    let launch = Some(r#"{"name": "fresh", "backend": "external", "replicas": 1}"#);
    let apply_web = Some(r#"{"fleets": [{"name": "web", "backend": "external", "replicas": 5}]}"#);
    let apply_dry = Some(r#"{"fleets": [{"name": "web", "backend": "external", "replicas": 5}], "dry_run": true}"#);
    let (op, obs, adm, agent) = (Some(operator.as_str()), Some(observer.as_str()), Some(web_admin.as_str()), Some(ops0.as_str()));
    let peer = Some(rack.as_str());
    let offer_z = OFFER.replace("rack-y", "rack-z");
    let (offer_bad_id, offer_nope) = (offer_z.replace("0190", "zz"), offer_z.replace("\"web\"}", "\"nope\"}"));
    let offer_v9 = offer_z.replace("\"snapshot_version\": 1", "\"snapshot_version\": 9");
    let offer_long = offer_z.replace("\"web\"}", &format!("\"{}\"}}", "w".repeat(10_000)));
    #[rustfmt::skip]
    let cases: Vec<Case<'_>> = vec![
        // Who are you?
        (None, "GET", "/api/v1/fleets", None, 401, "missing token"),
        (Some("cft_nonsense"), "GET", "/api/v1/fleets", None, 401, "invalid token"),
        (Some(doomed.as_str()), "GET", "/api/v1/fleets", None, 401, "invalid token"),
        (Some(brief.as_str()), "GET", "/api/v1/fleets", None, 401, "the token 'brief' expired at"),
        // The operator: everything.
        (op, "GET", "/api/v1/info", None, 200, ""),
        (op, "GET", "/api/v1/audit", None, 200, ""),
        (op, "POST", "/api/v1/fleets/spare/scale", scale, 200, ""),
        // The observer reads, and only reads.
        (obs, "GET", "/api/v1/info", None, 200, ""),
        (obs, "GET", "/api/v1/fleets", None, 200, ""),
        (obs, "GET", "/api/v1/fleets/web", None, 200, ""),
        (obs, "GET", "/api/v1/events?follow=false", None, 200, ""),
        (obs, "GET", "/api/v1/audit", None, 200, ""),
        (obs, "POST", "/api/v1/fleets/web/scale", scale, 403, "the observer token 'watcher' may not scale fleet 'web'"),
        (obs, "POST", "/api/v1/fleets/web/inject", inject, 403, "the observer token 'watcher' may not inject fleet 'web'"),
        (obs, "GET", "/api/v1/fleets/web/join", None, 403, "the observer token 'watcher' may not join fleet 'web'"),
        (obs, "DELETE", "/api/v1/fleets/web", None, 403, "the observer token 'watcher' may not terminate fleet 'web'"),
        (obs, "GET", "/api/v1/tokens", None, 403, "the observer token 'watcher' may not manage-tokens everything"),
        (obs, "POST", "/api/v1/apply", apply_dry, 200, ""),
        (obs, "POST", "/api/v1/apply", apply_web, 403, "the observer token 'watcher' may not scale fleet 'web'"),
        // An operator of one fleet: that fleet only.
        (adm, "POST", "/api/v1/fleets/web/scale", scale, 200, ""),
        (adm, "POST", "/api/v1/fleets/web/update", update, 200, ""),
        (adm, "POST", "/api/v1/fleets/ops/scale", scale, 403, "the operator token 'web-admin' may not scale fleet 'ops'"),
        (adm, "GET", "/api/v1/fleets/ops", None, 403, "the operator token 'web-admin' may not read fleet 'ops'"),
        (adm, "GET", "/api/v1/events?follow=false", None, 403, "the operator token 'web-admin' may not read everything"),
        (adm, "GET", "/api/v1/events?fleet=web&follow=false", None, 200, ""),
        (adm, "GET", "/api/v1/audit", None, 403, "the operator token 'web-admin' may not read-audit everything"),
        (adm, "POST", "/api/v1/apply", apply_dry, 403, "the operator token 'web-admin' may not read everything"),
        (adm, "POST", "/api/v1/tokens", Some(r#"{"role": "operator"}"#), 403, "the operator token 'web-admin' may not manage-tokens"),
        // An agent: its own fleet to read, never to deploy; other fleets as the policy says.
        (agent, "GET", "/api/v1/fleets/ops", None, 200, ""),
        (agent, "GET", "/api/v1/events?fleet=ops&agent=0&follow=false", None, 200, ""),
        (agent, "GET", "/api/v1/events?fleet=ops&agent=1&follow=false", None, 403, "the agent token 'agent ops/0' may not read agent ops/1"),
        (agent, "GET", "/api/v1/events?follow=false", None, 403, "the agent token 'agent ops/0' may not read everything"),
        (agent, "GET", "/api/v1/events?fleet=ops&follow=false", None, 403, "the agent token 'agent ops/0' may not read fleet 'ops'"),
        (agent, "GET", "/api/v1/fleets/web", None, 403, "the agent token 'agent ops/0' may not read fleet 'web'"),
        (agent, "POST", "/api/v1/fleets/ops/scale", scale, 403, "refusing self-deploy: an agent token may not scale its own fleet 'ops'"),
        (agent, "POST", "/api/v1/fleets/ops/update", update, 403, "refusing self-deploy: an agent token may not update its own fleet 'ops'"),
        (agent, "DELETE", "/api/v1/fleets/ops", None, 403, "refusing self-deploy: an agent token may not terminate its own fleet 'ops'"),
        (agent, "POST", "/api/v1/fleets/web/scale", Some(r#"{"replicas": 4}"#), 200, ""),
        (agent, "POST", "/api/v1/fleets/web/command", command, 200, ""),
        // Its own fleet's agents, where a rule names the fleet itself: a command, never a deploy.
        (agent, "POST", "/api/v1/fleets/ops/command", command, 200, ""),
        (agent, "POST", "/api/v1/fleets/ops/inject", inject, 403, "no policy lets the agents of 'ops' inject 'ops'"),
        (agent, "POST", "/api/v1/fleets/web/update", update, 403, "no policy lets the agents of 'ops' update 'web'"),
        (agent, "DELETE", "/api/v1/fleets/spare", None, 403, "no policy lets the agents of 'ops' terminate 'spare'"),
        (agent, "GET", "/api/v1/fleets/web/join", None, 403, "the agent token 'agent ops/0' may not join fleet 'web'"),
        (agent, "GET", "/api/v1/audit", None, 403, "the agent token 'agent ops/0' may not read-audit everything"),
        (agent, "GET", "/api/v1/tokens", None, 403, "the agent token 'agent ops/0' may not manage-tokens everything"),
        (agent, "POST", "/api/v1/apply", apply_web, 403, "the agent token 'agent ops/0' may not read everything"),
        // Launch, rollback, deploys and the observer's bus login, by role.
        (obs, "POST", "/api/v1/fleets", launch, 403, "the observer token 'watcher' may not launch fleet 'fresh'"),
        (adm, "POST", "/api/v1/fleets", launch, 403, "the operator token 'web-admin' may not launch fleet 'fresh'"),
        (agent, "POST", "/api/v1/fleets", launch, 403, "no policy lets the agents of 'ops' launch 'fresh'"),
        (obs, "POST", "/api/v1/fleets/web/rollback", None, 403, "the observer token 'watcher' may not update fleet 'web'"),
        (agent, "POST", "/api/v1/fleets/ops/rollback", None, 403, "refusing self-deploy: an agent token may not update its own fleet 'ops'"),
        (obs, "GET", "/api/v1/deploys", None, 200, ""),
        (agent, "GET", "/api/v1/deploys", None, 403, "the agent token 'agent ops/0' may not read everything"),
        (obs, "POST", "/api/v1/deploys", Some(r#"{"target": "web"}"#), 403, "the observer token 'watcher' may not update fleet 'web'"),
        (adm, "POST", "/api/v1/deploys", Some(r#"{"target": "all"}"#), 403, "the operator token 'web-admin' may not update everything"),
        (agent, "POST", "/api/v1/deploys", Some(r#"{"target": "ops"}"#), 403, "refusing self-deploy: an agent token may not update its own fleet 'ops'"),
        (agent, "POST", "/api/v1/deploys", Some(r#"{"target": "ops/1"}"#), 403, "refusing self-deploy: an agent token may not update its own fleet 'ops'"),
        (agent, "POST", "/api/v1/deploys", Some(r#"{"target": "web"}"#), 403, "no policy lets the agents of 'ops' update 'web'"),
        (agent, "POST", "/api/v1/deploys", Some(r#"{"target": "spare", "deadline_s": 1}"#), 201, ""),
        (obs, "POST", "/api/v1/fleets/web/leader", Some(r#"{"slot": 1}"#), 403, "the observer token 'watcher' may not update fleet 'web'"),
        (agent, "POST", "/api/v1/fleets/ops/leader", Some(r#"{"slot": 1}"#), 403, "refusing self-deploy: an agent token may not update its own fleet 'ops'"),
        (adm, "POST", "/api/v1/fleets/web/leader", Some(r#"{"slot": 1}"#), 200, ""),
        (adm, "POST", "/api/v1/fleets/web/leader", Some(r#"{"slot": 99}"#), 404, "fleet 'web' has no agent 99"),
        (obs, "GET", "/api/v1/fleets/web/chat", None, 200, ""),
        (obs, "POST", "/api/v1/fleets/web/chat", Some(r#"{"text": "hi"}"#), 403, "the observer token 'watcher' may not inject fleet 'web'"),
        (adm, "POST", "/api/v1/fleets/web/chat", Some(r#"{"text": "hi"}"#), 201, ""),
        (obs, "POST", "/api/v1/fleets/web/agents/0/arm", Some(r#"{"armed": false}"#), 403, "the observer token 'watcher' may not command agent web/0"),
        (adm, "POST", "/api/v1/fleets/ops/agents/0/arm", Some(r#"{"armed": false}"#), 403, "the operator token 'web-admin' may not command agent ops/0"),
        (agent, "POST", "/api/v1/fleets/web/agents/0/arm", Some(r#"{"armed": false}"#), 200, ""),
        // Scenarios: who may update the fleet sets them, who reads it reads them; agents ask
        // no rounds of their own fleet.
        (obs, "GET", "/api/v1/fleets/web/scenarios", None, 200, ""),
        (obs, "GET", "/api/v1/fleets/web/rps", None, 200, ""),
        (obs, "GET", "/api/v1/fleets/web/haiku", None, 200, ""),
        (obs, "PUT", "/api/v1/fleets/web/scenarios", Some(r#"{"rps": {"interval_seconds": 5}}"#), 403, "the observer token 'watcher' may not update fleet 'web'"),
        (agent, "PUT", "/api/v1/fleets/ops/scenarios", Some(r#"{"rps": {"interval_seconds": 5}}"#), 403, "refusing self-deploy: an agent token may not update its own fleet 'ops'"),
        (adm, "PUT", "/api/v1/fleets/ops/scenarios", Some(r#"{"rps": {"interval_seconds": 5}}"#), 403, "the operator token 'web-admin' may not update fleet 'ops'"),
        (adm, "PUT", "/api/v1/fleets/web/scenarios", Some(r#"{"rps": {"interval_seconds": 0}}"#), 400, "rps interval_seconds must be 1 to 3600, got 0"),
        (adm, "PUT", "/api/v1/fleets/web/scenarios", Some(r#"{"rps": {"interval_seconds": 5}}"#), 200, ""),
        (obs, "PATCH", "/api/v1/fleets/web/scenarios", Some(r#"{"rps": {"interval_seconds": 5}}"#), 403, "the observer token 'watcher' may not update fleet 'web'"),
        (agent, "PATCH", "/api/v1/fleets/ops/scenarios", Some(r#"{"rps": null}"#), 403, "refusing self-deploy: an agent token may not update its own fleet 'ops'"),
        (adm, "PATCH", "/api/v1/fleets/ops/scenarios", Some(r#"{"rps": null}"#), 403, "the operator token 'web-admin' may not update fleet 'ops'"),
        (adm, "PATCH", "/api/v1/fleets/web/scenarios", Some(r#"{"rps": {"interval_seconds": 0}}"#), 400, "rps interval_seconds must be 1 to 3600, got 0"),
        (adm, "PATCH", "/api/v1/fleets/web/scenarios", Some(r#"[{"rps": null}]"#), 400, "a scenarios patch must be a JSON object, got an array"),
        (adm, "PATCH", "/api/v1/fleets/web/scenarios", Some(r#"{"chess": {}}"#), 400, "the patched scenarios are not valid: unknown field `chess`"),
        (adm, "PATCH", "/api/v1/fleets/web/scenarios", Some(r#"{"haiku": {"interval_minutes": 5}}"#), 200, ""),
        (obs, "POST", "/api/v1/fleets/web/chime", Some("{}"), 403, "the observer token 'watcher' may not inject fleet 'web'"),
        (adm, "POST", "/api/v1/fleets/web/chime", Some(r#"{"prompt": ""}"#), 400, "the prompt is empty"),
        (adm, "POST", "/api/v1/fleets/web/chime", Some(r#"{"targets": [99]}"#), 404, "fleet 'web' has no agent 99"),
        (adm, "POST", "/api/v1/fleets/web/chime", Some("{}"), 202, ""),
        // Councils: who may inject the fleet opens and closes them, who reads it reads them.
        (obs, "GET", "/api/v1/fleets/web/councils", None, 200, ""),
        (obs, "POST", "/api/v1/fleets/web/councils", Some(r#"{"roles": ["a"]}"#), 403, "the observer token 'watcher' may not inject fleet 'web'"),
        (adm, "POST", "/api/v1/fleets/ops/councils", Some(r#"{"roles": ["a"]}"#), 403, "the operator token 'web-admin' may not inject fleet 'ops'"),
        (agent, "POST", "/api/v1/fleets/ops/councils", Some(r#"{"roles": ["a"]}"#), 403, "no policy lets the agents of 'ops' inject 'ops'"),
        (adm, "POST", "/api/v1/fleets/web/councils", Some(r#"{"roles": []}"#), 400, "a council needs at least one role"),
        (adm, "POST", "/api/v1/fleets/web/councils", Some(r#"{"roles": ["a"], "quorum": 1}"#), 400, "invalid request body"),
        (adm, "POST", "/api/v1/fleets/web/councils", Some(r#"{"roles": ["a"]}"#), 201, ""),
        (adm, "POST", "/api/v1/fleets/web/councils", Some(r#"{"roles": ["b"]}"#), 409, "fleet 'web' has council 1 "),
        (agent, "GET", "/api/v1/fleets/web/councils/1", None, 403, "the agent token 'agent ops/0' may not read fleet 'web'"),
        (obs, "POST", "/api/v1/fleets/web/councils/1/close", None, 403, "the observer token 'watcher' may not inject fleet 'web'"),
        (adm, "POST", "/api/v1/fleets/web/councils/1/close", None, 200, ""),
        (adm, "GET", "/api/v1/fleets/web/councils/9", None, 404, "fleet 'web' has no council 9"),
        // The queue: who may inject a fleet queues for it (an agent where its policy lets it,
        // as its own fleet), who reads a fleet sees its items.
        (obs, "POST", "/api/v1/fleets/web/queue", Some(r#"{"prompt": "hi"}"#), 403, "the observer token 'watcher' may not inject fleet 'web'"),
        (agent, "POST", "/api/v1/fleets/ops/queue", Some(r#"{"prompt": "hi"}"#), 403, "no policy lets the agents of 'ops' inject 'ops'"),
        (adm, "POST", "/api/v1/fleets/ops/queue", Some(r#"{"prompt": "hi"}"#), 403, "the operator token 'web-admin' may not inject fleet 'ops'"),
        (adm, "POST", "/api/v1/fleets/web/queue", Some(r#"{"prompt": "  "}"#), 400, "prompt is empty"),
        (adm, "POST", "/api/v1/fleets/web/queue", Some(r#"{"prompt": "hi", "agents": [0], "all": true}"#), 400, "give agents or all, not both"),
        (adm, "POST", "/api/v1/fleets/web/queue", Some(r#"{"prompt": "hi", "agents": [7]}"#), 400, "fleet 'web' has no agent 7"),
        (adm, "POST", "/api/v1/fleets/web/queue", Some(r#"{"prompt": "hi", "source": "Bad Name"}"#), 400, "source: "),
        (adm, "POST", "/api/v1/fleets/web/queue", Some(r#"{"prompt": "hi", "selector": "idle"}"#), 400, "invalid request body"),
        (adm, "POST", "/api/v1/fleets/web/queue", Some(r#"{"prompt": "hi", "source": "ops"}"#), 201, ""),
        (agent, "POST", "/api/v1/fleets/spare/queue", Some(r#"{"prompt": "over to you", "source": "web"}"#), 201, ""),
        (obs, "GET", "/api/v1/queue", None, 200, ""),
        (agent, "GET", "/api/v1/queue?fleet=web", None, 403, "the agent token 'agent ops/0' may not read fleet 'web'"),
        (obs, "GET", "/api/v1/queue?color=red", None, 400, "invalid query"),
        (obs, "DELETE", "/api/v1/queue/nope", None, 404, "no queue item 'nope'"),
        // Snapshots: who may update an agent's fleet takes one; never of its own fleet.
        (obs, "GET", "/api/v1/fleets/web/agents/0/snapshot", None, 403, "the observer token 'watcher' may not update agent web/0"),
        (agent, "GET", "/api/v1/fleets/ops/agents/1/snapshot", None, 403, "refusing self-deploy: an agent token may not update its own fleet 'ops'"),
        (adm, "GET", "/api/v1/fleets/web/agents/0/snapshot", None, 409, "agent web/0 runs on the external backend, whose workspaces"),
        (adm, "GET", "/api/v1/fleets/web/agents/9/snapshot", None, 404, "fleet 'web' has no agent 9"),
        (obs, "POST", "/api/v1/fleets/web/agents/0/restore", Some("x"), 403, "the observer token 'watcher' may not update agent web/0"),
        (agent, "POST", "/api/v1/fleets/ops/agents/1/restore", Some("x"), 403, "refusing self-deploy: an agent token may not update its own fleet 'ops'"),
        (adm, "POST", "/api/v1/fleets/web/agents/0/restore", Some("not an archive"), 400, "the archive is truncated or is not a clawfleet snapshot"),
        // Racks: a peer reads the rack and nothing of any fleet; who reads everything reads both.
        (peer, "GET", "/api/v1/rack", None, 200, ""),
        (op, "GET", "/api/v1/rack", None, 200, ""),
        (obs, "GET", "/api/v1/rack", None, 200, ""),
        (adm, "GET", "/api/v1/rack", None, 403, "the operator token 'web-admin' may not read everything"),
        (agent, "GET", "/api/v1/rack", None, 403, "the agent token 'agent ops/0' may not read everything"),
        (op, "GET", "/api/v1/racks", None, 200, ""),
        (obs, "GET", "/api/v1/racks", None, 200, ""),
        (peer, "GET", "/api/v1/racks", None, 403, "the peer token 'rack-z' may not read everything"),
        (peer, "GET", "/api/v1/fleets/web", None, 403, "the peer token 'rack-z' may not read fleet 'web'"),
        (peer, "POST", "/api/v1/fleets/web/inject", inject, 403, "the peer token 'rack-z' may not inject fleet 'web'"),
        (peer, "GET", "/api/v1/fleets/web/agents/0/snapshot", None, 403, "the peer token 'rack-z' may not update agent web/0"),
        (peer, "GET", "/api/v1/tokens", None, 403, "the peer token 'rack-z' may not manage-tokens everything"),
        (peer, "GET", "/api/v1/bus/observer", None, 403, "the peer token 'rack-z' may not"),
        // Migrations: who may update an agent moves it; who reads everything lists them; what
        // racks ask each other takes a peer token, and a peer sees only what it offered.
        (obs, "POST", "/api/v1/fleets/web/agents/0/migrate", Some(r#"{"to": "rack-y"}"#), 403, "the observer token 'watcher' may not update agent web/0"),
        (agent, "POST", "/api/v1/fleets/ops/agents/1/migrate", Some(r#"{"to": "rack-y"}"#), 403, "refusing self-deploy"),
        (peer, "POST", "/api/v1/fleets/web/agents/0/migrate", Some(r#"{"to": "rack-y"}"#), 403, "the peer token 'rack-z' may not update agent web/0"),
        (adm, "POST", "/api/v1/fleets/web/agents/0/migrate", Some(r#"{"to": "Rack Y"}"#), 400, "rack name 'Rack Y' must be"),
        (adm, "POST", "/api/v1/fleets/web/agents/0/migrate", Some(r#"{"to": "rack-y"}"#), 400, "no peer rack named 'rack-y'"),
        (adm, "POST", "/api/v1/fleets/web/agents/0/migrate", Some(r#"{"to": "rack-y", "when": "now"}"#), 400, "invalid request body"),
        (obs, "GET", "/api/v1/migrations", None, 200, ""),
        (peer, "GET", "/api/v1/migrations", None, 403, "the peer token 'rack-z' may not read everything"),
        (obs, "GET", "/api/v1/migrations/nope", None, 404, "no migration nope"),
        (op, "POST", "/api/v1/migrations", Some(r#"{"id": "x"}"#), 400, "invalid request body"),
        (op, "POST", "/api/v1/migrations", Some(OFFER), 403, "racks ask this of each other: it takes a peer token"),
        (obs, "POST", "/api/v1/migrations", Some(OFFER), 403, "the observer token 'watcher' may not peer everything"),
        (peer, "POST", "/api/v1/migrations", Some(OFFER), 400, "the offer says it comes from 'rack-y', but its token is rack 'rack-z'"),
        (peer, "POST", "/api/v1/migrations", Some(offer_bad_id.as_str()), 400, "migration id: "),
        (peer, "POST", "/api/v1/migrations", Some(offer_nope.as_str()), 404, "no fleet named 'nope'"),
        (peer, "POST", "/api/v1/migrations", Some(offer_long.as_str()), 400, "the target fleet: "),
        (peer, "POST", "/api/v1/migrations", Some(offer_v9.as_str()), 409, "it reads snapshot format 9"),
        (peer, "POST", "/api/v1/migrations", Some(offer_z.as_str()), 409, "fleet 'web' here runs on the external backend, which takes no migrated agent"),
        (peer, "POST", "/api/v1/migrations/0190a000-0000-7000-8000-000000000000/transfer", Some("x"), 404, "no migration 0190a000-0000-7000-8000-000000000000 from rack 'rack-z'"),
        (op, "GET", "/api/v1/migrations/x/arrival", None, 403, "racks ask this of each other: it takes a peer token"),
        (peer, "GET", "/api/v1/migrations/x/arrival", None, 404, "no migration x from rack 'rack-z'"),
        (peer, "POST", "/api/v1/migrations/x/commit", None, 404, "no migration x from rack 'rack-z'"),
        (peer, "POST", "/api/v1/migrations/x/abort", None, 404, "no migration x from rack 'rack-z'"),
        (peer, "POST", "/api/v1/migrations/x/inject", Some(r#"{"injection_id": "i", "prompt": " "}"#), 400, "prompt is empty"),
        (peer, "POST", "/api/v1/migrations/x/inject", Some(r#"{"injection_id": "i", "prompt": "hi"}"#), 404, "no migration x from rack 'rack-z'"),
        (agent, "POST", "/api/v1/migrations/x/inject", Some(r#"{"injection_id": "i", "prompt": "hi"}"#), 403, "the agent token 'agent ops/0' may not peer everything"),
        // Approvals: who reads an agent sees its approvals (answering them is tested with a
        // real one, end to end, and role by role in core).
        (obs, "GET", "/api/v1/approvals", None, 200, ""),
        (agent, "GET", "/api/v1/approvals?fleet=web", None, 403, "the agent token 'agent ops/0' may not read fleet 'web'"),
        (obs, "GET", "/api/v1/approvals?color=red", None, 400, "invalid query"),
        (obs, "GET", "/api/v1/approvals/9", None, 404, "no approval 9"),
        (obs, "POST", "/api/v1/approvals/9", Some(r#"{"approved": true}"#), 404, "no approval 9"),
        (adm, "POST", "/api/v1/approvals/x", Some(r#"{"approved": true}"#), 400, "approval id 'x' is not a number"),
        (adm, "POST", "/api/v1/approvals/9", Some(r#"{"approved": "yes"}"#), 400, "invalid request body"),
        (adm, "POST", "/api/v1/approvals/9", Some(r#"{"approved": true, "decision": ""}"#), 400, "decision must be 1-64 bytes"),
        // Projects: who may inject every worker fleet creates and starts one, who reads them
        // all sees it.
        (obs, "GET", "/api/v1/projects", None, 200, ""),
        (obs, "POST", "/api/v1/projects", Some(r#"{"title": "p", "repo_path": "/nope", "worker_swarm_ids": ["web"], "tasks": []}"#), 403, "the observer token 'watcher' may not inject fleet 'web'"),
        (adm, "POST", "/api/v1/projects", Some(r#"{"title": "p", "repo_path": "/nope", "worker_swarm_ids": ["web", "ops"], "tasks": []}"#), 403, "the operator token 'web-admin' may not inject fleet 'ops'"),
        (agent, "POST", "/api/v1/projects", Some(r#"{"title": "p", "repo_path": "/nope", "worker_swarm_ids": ["ops"], "tasks": []}"#), 403, "no policy lets the agents of 'ops' inject 'ops'"),
        (adm, "POST", "/api/v1/projects", Some(r#"{"title": "p", "repo_path": "/nope", "worker_swarm_ids": ["web"], "tasks": []}"#), 403, "the operator token 'web-admin' may not launch everything"),
        (op, "POST", "/api/v1/projects", Some(r#"{"title": "p", "repo_path": "/nope", "worker_swarm_ids": ["web"], "tasks": []}"#), 400, "repo_path /nope: No such file or directory"),
        (adm, "POST", "/api/v1/projects", Some(r#"{"title": "p", "worker_swarm_ids": ["web"], "tasks": []}"#), 400, "project requires at least one task"),
        (adm, "POST", "/api/v1/projects", Some(r#"{"title": "", "repo_path": "/nope", "worker_swarm_ids": ["web"], "tasks": []}"#), 400, "project requires title"),
        (adm, "POST", "/api/v1/projects", Some(r#"{"title": "p", "repo": "/nope"}"#), 400, "invalid request body"),
        (adm, "GET", "/api/v1/projects/nope", None, 404, "no project 'nope'"),
        (adm, "POST", "/api/v1/projects/nope/start", None, 404, "no project 'nope'"),
        (adm, "POST", "/api/v1/projects/nope/resume", Some("{}"), 404, "no project 'nope'"),
        (obs, "POST", "/api/v1/projects/nope/resume-preview", Some("{}"), 404, "no project 'nope'"),
        (adm, "POST", "/api/v1/projects/nope/resume", Some(r#"{"retry": true}"#), 400, "invalid request body"),
        (obs, "GET", "/api/v1/plans", None, 200, ""),
        (obs, "POST", "/api/v1/plans", Some(r#"{"title": "p", "spec": "s", "planner_swarm_id": "web", "worker_swarm_ids": ["web"]}"#), 403, "the observer token 'watcher' may not inject fleet 'web'"),
        (adm, "POST", "/api/v1/plans", Some(r#"{"title": "p", "spec": "s", "planner_swarm_id": "ops", "worker_swarm_ids": ["web"]}"#), 403, "the operator token 'web-admin' may not inject fleet 'ops'"),
        (adm, "POST", "/api/v1/plans", Some(r#"{"title": "p", "spec": " ", "planner_swarm_id": "web", "worker_swarm_ids": ["web"]}"#), 400, "project_plan requires a spec"),
        (adm, "GET", "/api/v1/plans/nope", None, 404, "no plan 'nope'"),
        (adm, "POST", "/api/v1/plans/nope/retry", None, 404, "no plan 'nope'"),
        (op, "GET", "/api/v1/bus/observer", None, 200, ""),
        (obs, "GET", "/api/v1/bus/observer", None, 403, "the observer token 'watcher' may not"),
        (adm, "GET", "/api/v1/bus/observer", None, 403, "the operator token 'web-admin' may not"),
        (agent, "GET", "/api/v1/bus/observer", None, 403, "the agent token 'agent ops/0' may not"),
        // Secrets: unscoped operators only; names checked; values never listed.
        (op, "PUT", "/api/v1/secrets/MATRIX_KEY", Some(r#"{"value": "m4trix"}"#), 200, ""),
        (op, "GET", "/api/v1/secrets", None, 200, ""),
        (op, "PUT", "/api/v1/secrets/CLAWFLEET_X", Some(r#"{"value": "v"}"#), 400, "'CLAWFLEET_X' is clawfleet's own"),
        (op, "PUT", "/api/v1/secrets/1BAD", Some(r#"{"value": "v"}"#), 400, "'1BAD' is not an environment variable name"),
        (op, "DELETE", "/api/v1/secrets/NOPE", None, 404, "no secret named 'NOPE'"),
        (obs, "GET", "/api/v1/secrets", None, 403, "the observer token 'watcher' may not manage-secrets everything"),
        (adm, "PUT", "/api/v1/secrets/MATRIX_KEY", Some(r#"{"value": "x"}"#), 403, "the operator token 'web-admin' may not manage-secrets"),
        (agent, "DELETE", "/api/v1/secrets/MATRIX_KEY", None, 403, "the agent token 'agent ops/0' may not manage-secrets"),
        // Tokens: bad requests are named.
        (op, "POST", "/api/v1/tokens", Some(r#"{"role": "root"}"#), 400, "invalid request body: role: unknown variant `root`"),
        (op, "POST", "/api/v1/tokens", Some(r#"{"role": "agent"}"#), 400, "an agent token acts as an agent of one fleet"),
        (op, "POST", "/api/v1/tokens", Some(r#"{"role": "observer", "name": "Bad Name"}"#), 400, "token name 'Bad Name' must be"),
        (op, "POST", "/api/v1/tokens", Some(r#"{"role": "observer", "name": "watcher"}"#), 409, "a token named 'watcher' already exists"),
        (op, "POST", "/api/v1/tokens", Some(r#"{"role": "observer", "expires": "forever"}"#), 400, "expires 'forever':"),
        (op, "POST", "/api/v1/tokens", Some(r#"{"role": "observer", "expires": "20000d"}"#), 400, "expires '20000d' must be between"),
        (op, "POST", "/api/v1/tokens", Some(&long_expiry), 400, "expires 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx':"),
        (op, "DELETE", "/api/v1/tokens/operator", None, 409, "'operator' is the token file's token"),
        (op, "DELETE", "/api/v1/tokens/nobody", None, 404, "no token named 'nobody'"),
    ];
    for (token, method, path, body, status, message) in cases {
        let (got, v) = plane.http(method, path, token, body);
        let who = token.map_or("no token", |t| &t[..t.len().min(12)]);
        assert_eq!(got, status, "{who} {method} {path}: {v}");
        if status >= 400 {
            let code = match status {
                401 => "unauthorized",
                403 => "forbidden",
                _ => v["code"].as_str().unwrap(),
            };
            assert_eq!(v["code"], code, "{who} {method} {path}: {v}");
            assert!(v["error"].as_str().unwrap().starts_with(message), "{who} {method} {path}: {v}");
            assert!(v["error"].as_str().unwrap().len() < 500, "{who} {method} {path}: an error echoes too much");
        }
    }
    // A queued item is cancelled by who may inject its fleet; an agent's delegation comes from
    // its own fleet, whatever it says; an agent sees no item of a fleet it may not read.
    let (_, web) = plane.http("GET", "/api/v1/queue?fleet=web", obs, None);
    let web_item = web["items"][0]["queue_id"].as_str().unwrap().to_owned();
    let (code, v) = plane.http("DELETE", &format!("/api/v1/queue/{web_item}"), obs, None);
    assert_eq!((code, v["error"].as_str().unwrap()), (403, "the observer token 'watcher' may not inject fleet 'web'"));
    let (code, v) = plane.http("DELETE", &format!("/api/v1/queue/{web_item}"), adm, None);
    assert_eq!((code, &v["status"]), (200, &serde_json::json!("cancelled")), "{v}");
    let (_, spare) = plane.http("GET", "/api/v1/queue?fleet=spare&all=true", obs, None);
    assert_eq!(spare["items"][0]["source"], "ops", "{spare}");
    let (_, seen) = plane.http("GET", "/api/v1/queue?all=true", agent, None);
    assert!(seen["items"].as_array().unwrap().iter().all(|i| i["fleet"] != "web"), "{seen}");
    // An agent's own token sees its own agent only: in its fleet's status, and in an injection
    // sent to it (one sent to its siblings alone is not found).
    let (_, status) = plane.http("GET", "/api/v1/fleets/ops", agent, None);
    let slots: Vec<u64> = status["agents"].as_array().unwrap().iter().map(|a| a["slot"].as_u64().unwrap()).collect();
    assert_eq!(slots, [0], "{status}");
    let to_sibling = plane.json(&["inject", "ops", "psst", "--agent", "1", "--json"]);
    let (code, v) = plane.http("GET", &format!("/api/v1/injections/{}", to_sibling["injection_id"].as_str().unwrap()), agent, None);
    assert_eq!(code, 404, "{v}");
    let to_all = plane.json(&["inject", "ops", "all hands", "--json"]);
    let (code, v) = plane.http("GET", &format!("/api/v1/injections/{}", to_all["injection_id"].as_str().unwrap()), agent, None);
    let seen: Vec<u64> = v["agents"].as_array().unwrap().iter().map(|a| a["agent"].as_u64().unwrap()).collect();
    assert_eq!((code, seen), (200, vec![0]), "{v}");
    // A token bound to one fleet works the CLI on it, `inject --wait` included.
    // (The external fleet has no agents running: the wait times out, but it may follow the fleet.)
    let out = plane.cli_with(&["inject", "web", "hi", "--agent", "0", "--wait", "--timeout", "2"], &[("CLAWFLEET_TOKEN", &web_admin)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("timed out after 2 s waiting for web/0"), "{err}");
    // A token bound to one fleet lists that fleet only.
    let (_, listed) = plane.http("GET", "/api/v1/fleets", adm, None);
    let listed: Vec<&str> = listed["fleets"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(listed, ["web"]);
    // The audit log names each action's token and role.
    let audit = plane.json(&["audit", "--json"]);
    let actors: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e["actor"].as_str().unwrap().to_owned(), e["action"].as_str().unwrap().to_owned(), e["target"].as_str().unwrap().to_owned())
        })
        .collect();
    for expected in [
        ("operator (operator)", "token-create", "watcher"),
        ("operator (operator)", "token-revoke", "doomed"),
        ("operator (operator)", "scale", "spare"),
        ("web-admin (operator)", "scale", "web"),
        ("agent ops/0 (agent)", "scale", "web"),
        ("agent ops/0 (agent)", "command", "web"),
    ] {
        let e = (expected.0.to_owned(), expected.1.to_owned(), expected.2.to_owned());
        assert!(actors.contains(&e), "{expected:?} not in the audit log: {actors:?}");
    }
}

/// The dashboard holds a token in the page: it may not be framed, may run only its own script,
/// and leaks no referrer.
#[test]
fn the_dashboard_sends_its_security_headers() {
    let plane = Plane::start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let resp = rt.block_on(reqwest::get(format!("{}/", plane.url()))).unwrap();
    let h = resp.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'; script-src 'sha256-"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
}

/// The read-only observer login watches the whole bus with stock mosquitto_sub, cannot
/// publish, and in everything it sees during a full run (agents, brains, tokens, scaling) there
/// is no token, bus secret or agent password.
#[test]
fn the_observer_watches_the_whole_bus_and_no_secret_is_on_it() {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let plane = Plane::start();
    let line = plane.ok(&["bus", "credentials", "--observer"]);
    let login = plane.json(&["bus", "credentials", "--observer", "--json"]);
    let (host, port) = (login["host"].as_str().unwrap().to_owned(), login["port"].to_string());
    let (user, pass) = (login["username"].as_str().unwrap().to_owned(), login["password"].as_str().unwrap().to_owned());
    assert_eq!(line.trim(), format!("mosquitto_sub -h {host} -p {port} -u {user} -P {pass} -t 'clawfleet/v1/#' -v"));
    let mut sub = std::process::Command::new("mosquitto_sub")
        .args(["-h", &host, "-p", &port, "-u", &user, "-P", &pass, "-t", "clawfleet/v1/#", "-v"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let out = sub.stdout.take().unwrap();
    let s = seen.clone();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let mut s = s.lock().unwrap();
            s.push_str(&l);
            s.push('\n');
        }
    });
    let seen_has = |what: &str| seen.lock().unwrap().contains(what);

    // A full run: brains that go looking for secrets, talk, commands, tokens, scaling.
    plane.ok(&["launch", "talk", "--replicas", "2", "--wait"]);
    crate::support::eventually(std::time::Duration::from_secs(10), "the observer to see heartbeats", || {
        seen_has("clawfleet/v1/fleets/talk/agents/1/heartbeat").then_some(())
    });
    plane.ok(&["launch", "snoop", "--brain", "cmd:env; cat agent.secrets 2>&1; cat /proc/$PPID/environ 2>&1 | tr '\\0' '\\n'", "--wait"]);
    // A fleet whose brains get a secret (its brain keeps it to itself): it never crosses the bus.
    let vault = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(vault.path(), "v4ult-value-for-brains").unwrap();
    plane.ok(&["secret", "set", "VAULT_KEY", "--from-file", vault.path().to_str().unwrap()]);
    plane.ok(&["launch", "keeper", "--brain", "echo", "--secret", "VAULT_KEY", "--wait"]);
    plane.ok(&["inject", "keeper", "hello", "--wait"]);
    plane.ok(&["inject", "talk", "hello", "--wait"]);
    plane.cli(&["inject", "snoop", "go", "--wait"]);
    plane.ok(&["command", "talk", "health-check"]);
    let made = plane.ok(&["token", "create", "--role", "observer"]).trim().to_owned();
    plane.ok(&["scale", "talk", "3", "--wait"]);
    plane.ok(&["inject", "talk", "again", "--wait"]);

    // It may not publish: a forged directive from it reaches no agent.
    let forged = r#"{"type":"inject","injection_id":"from-observer","prompt":"obey","targets":[0]}"#;
    let _ = std::process::Command::new("mosquitto_pub")
        .args(["-h", &host, "-p", &port, "-u", &user, "-P", &pass, "-q", "1", "-t", "clawfleet/v1/fleets/talk/cmd", "-m", forged])
        .output()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let _ = sub.kill();
    let _ = sub.wait();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains("clawfleet/v1/fleets/talk/agents/2/events") && seen.contains("inject_delivered"), "it saw the bus");
    assert!(!seen.contains("from-observer"), "the observer published");
    assert!(crate::support::events(&plane, "talk").iter().all(|e| e["injection_id"] != "from-observer"));

    let store = clawfleet_store::Store::open(&plane.data().join("clawfleet.db")).unwrap();
    let secret = store.meta("bus_secret").unwrap().unwrap();
    let bus = clawfleet_bus::BusSecret::from_bytes(secret.clone().try_into().unwrap());
    let mut secrets = vec![
        plane.token(),
        made,
        pass.clone(),
        bus.control_password(),
        secret.iter().map(|b| format!("{b:02x}")).collect(),
        "v4ult-value-for-brains".into(),
    ];
    for (fleet, slots) in [("talk", "0-2"), ("snoop", "0")] {
        let join = plane.json_get(&format!("/api/v1/fleets/{fleet}/join?slots={slots}"));
        for a in join["agents"].as_array().unwrap() {
            secrets.push(a["password"].as_str().unwrap().to_owned());
            secrets.push(a["token"].as_str().unwrap().to_owned());
        }
    }
    for s in &secrets {
        assert!(!seen.contains(s.as_str()), "a secret ({}…) was on the bus", &s[..8]);
    }
    assert!(!seen.contains("cft_") && !seen.contains("cfa."), "a token was on the bus");
}

/// Debian's Mosquitto, with the configuration `clawfleet bus config --mosquitto` writes.
struct DynsecMosquitto {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl DynsecMosquitto {
    /// Runs `mosquitto -c CONF/mosquitto.conf` and waits until it listens on `port`.
    fn start(conf: tempfile::TempDir, port: u16) -> DynsecMosquitto {
        let child = std::process::Command::new("mosquitto")
            .args(["-c", conf.path().join("mosquitto.conf").to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        let broker = DynsecMosquitto { child, port, _dir: conf };
        crate::support::eventually(std::time::Duration::from_secs(10), "mosquitto to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        broker
    }

    /// A control plane on `data` that uses this Mosquitto (`scheme`: mqtt or mqtts) with
    /// `--bus-dynsec`.
    fn plane(&self, data: tempfile::TempDir, scheme: &str) -> Plane {
        let options = PlaneOptions {
            bus: Some(format!("{scheme}://127.0.0.1:{}", self.port)),
            up_args: vec!["--bus-dynsec".into()],
            ..PlaneOptions::default()
        };
        Plane::in_dir(data, options)
    }
}

impl Drop for DynsecMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// With `--bus` pointing at Mosquitto set up by `bus config --mosquitto`, the same per-agent
/// logins and ACLs hold there: an agent can neither read another's commands, nor publish as
/// another, nor smuggle a will; the observer reads everything; fleets launched later get their
/// logins through the plugin's topic API.
#[test]
fn on_mosquitto_every_agent_has_its_own_login_and_acl() {
    use std::time::Duration;
    let data = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    let out = std::process::Command::new(crate::support::BIN)
        .args(["bus", "config", "--mosquitto", conf.path().to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .args(["--data", data.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = std::fs::read_to_string(conf.path().join("dynamic-security.json")).unwrap();
    assert!(file.contains("clawfleet-control") && file.contains("clawfleet-observer"));
    let broker = DynsecMosquitto::start(conf, port);
    let plane = broker.plane(data, "mqtt");
    // Fleets launched after the file was written: their agents log in with their own passwords,
    // which the control plane gives the plugin on $CONTROL, where no other client may listen.
    let store = clawfleet_store::Store::open(&plane.data().join("clawfleet.db")).unwrap();
    let secret = clawfleet_bus::BusSecret::from_bytes(store.meta("bus_secret").unwrap().unwrap().try_into().unwrap());
    let p = broker.port.to_string();
    let eavesdrop = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &p, "-u", "clawfleet-observer", "-P", &secret.observer_password(), "-W", "6", "-v"])
        .args(["-t", "$CONTROL/#", "-t", "#"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    plane.ok(&["launch", "victim", "--wait"]);
    plane.ok(&["launch", "evil", "--backend", "external"]);
    let overheard = String::from_utf8_lossy(&eavesdrop.wait_with_output().unwrap().stdout).into_owned();
    assert!(!overheard.contains("createClient") && !overheard.contains("password"), "{overheard}");
    assert_eq!(plane.ok(&["inject", "victim", "first", "--wait"]).trim(), "victim/0: first");
    let evil = plane.json_get("/api/v1/fleets/evil/join?slots=0");
    let (user, pass) =
        (evil["agents"][0]["username"].as_str().unwrap().to_owned(), evil["agents"][0]["password"].as_str().unwrap().to_owned());
    let evil_id = format!("clawfleet-evil-0-{}", evil["fleet_uid"].as_str().unwrap());
    assert_eq!(plane.json(&["bus", "credentials", "--observer", "--json"])["password"], secret.observer_password());

    // The observer watches while the evil agent tries its tricks.
    let observer = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &p, "-u", "clawfleet-observer", "-P", &secret.observer_password(), "-t", "clawfleet/v1/#", "-v"])
        .args(["-W", "12"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The evil agent listens to the victim's commands.
    let nosy = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &p, "-i", &evil_id, "-u", &user, "-P", &pass, "-W", "8", "-v"])
        .args(["-t", "clawfleet/v1/fleets/victim/agents/0/cmd", "-t", "clawfleet/v1/fleets/victim/cmd"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(plane.ok(&["inject", "victim", "second", "--wait"]).trim(), "victim/0: second");
    let nosy = nosy.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&nosy.stdout).contains("second"), "the evil agent read the victim's commands");

    // It publishes as the victim, and leaves a will on the victim's fleet topic.
    let forged = r#"{"epoch":"e","seq":1,"at":"t","event":"assistant","data":{"content":"forged"}}"#;
    let _ = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &p, "-i", &evil_id, "-u", &user, "-P", &pass, "-q", "1"])
        .args(["-t", "clawfleet/v1/fleets/victim/agents/0/events", "-m", forged])
        .output()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut cfg = clawfleet_bus::ClientConfig::new("127.0.0.1", broker.port, evil_id.clone());
        (cfg.username, cfg.password) = (Some(user.clone()), Some(pass.clone()));
        let directive = r#"{"type":"inject","injection_id":"willed","prompt":"obey","targets":[0]}"#;
        cfg.will = Some(clawfleet_bus::Will { topic: "clawfleet/v1/fleets/victim/cmd".into(), payload: directive.into(), retain: true });
        let (_bus, mut rx) = clawfleet_bus::client::connect(cfg);
        while !matches!(rx.recv().await, Some(clawfleet_bus::BusEvent::Connected { .. })) {}
    });
    // Dropping the runtime dropped the connection without a DISCONNECT: the will would fire now.
    drop(rt);
    let observed = String::from_utf8_lossy(&observer.wait_with_output().unwrap().stdout).into_owned();
    assert!(observed.contains("clawfleet/v1/fleets/victim/agents/0/events"), "the observer sees the bus: {observed}");
    assert!(!observed.contains("forged") && !observed.contains("willed"), "a forgery reached the bus: {observed}");
    let events = crate::support::events(&plane, "victim");
    assert!(events.iter().all(|e| e["injection_id"] != "willed" && e["data"]["content"] != "forged"));
    assert_eq!(plane.ok(&["inject", "victim", "third", "--wait"]).trim(), "victim/0: third");
    // A scaled fleet's new agents get logins of their own (and lose them when scaled away).
    plane.ok(&["scale", "victim", "2", "--wait"]);
    let answers = plane.ok(&["inject", "victim", "fourth", "--wait"]);
    assert!(answers.contains("victim/0: fourth") && answers.contains("victim/1: fourth"), "{answers}");
    // A terminated fleet's logins go.
    plane.ok(&["terminate", "evil", "--wait"]);
    crate::support::eventually(Duration::from_secs(10), "the terminated fleet's login to go", || {
        let after = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &p, "-i", &evil_id, "-u", &user, "-P", &pass])
            .args(["-t", "clawfleet/v1/fleets/evil/agents/0/heartbeat", "-m", ""])
            .output()
            .unwrap();
        (!after.status.success()).then_some(())
    });
}

/// `clawfleet certs` makes a development CA and a server certificate; `up --tls-cert/--tls-key`
/// serves the API and dashboard over HTTPS only and the embedded broker over TLS only; curl and
/// mosquitto_sub trust it with the CA, the CLI and local agents too, and nothing speaks plain
/// HTTP or MQTT on those ports.
#[test]
fn the_api_speaks_tls_with_a_local_ca() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::support::BIN).args(["certs", "--data", data.path().to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tls = data.path().join("tls");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(tls.join("server-key.pem")).unwrap().permissions().mode() & 0o777, 0o600);
    let (cert, key) = (tls.join("server.pem"), tls.join("server-key.pem"));
    let plane = Plane::in_dir(
        data,
        PlaneOptions {
            up_args: vec!["--tls-cert".into(), cert.to_str().unwrap().into(), "--tls-key".into(), key.to_str().unwrap().into()],
            ..PlaneOptions::default()
        },
    );
    let url = format!("https://127.0.0.1:{}", plane.http_port);
    let curl = |args: &[&str]| std::process::Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().unwrap();
    let ok = curl(&["--cacert", tls.join("ca.pem").to_str().unwrap(), &format!("{url}/healthz")]);
    assert!(ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("serving"), "{}", String::from_utf8_lossy(&ok.stderr));
    let localhost = curl(&["--cacert", tls.join("ca.pem").to_str().unwrap(), &format!("https://localhost:{}/healthz", plane.http_port)]);
    assert!(localhost.status.success(), "{}", String::from_utf8_lossy(&localhost.stderr));
    let untrusted = curl(&[&format!("{url}/healthz")]);
    assert!(!untrusted.status.success(), "a certificate from an unknown CA was accepted");
    let plain = curl(&[&format!("http://127.0.0.1:{}/healthz", plane.http_port)]);
    assert!(!plain.status.success() || !String::from_utf8_lossy(&plain.stdout).contains("serving"), "plain HTTP was served");
    // The CLI finds the https URL and the CA in the data directory; local agents reach the
    // embedded broker over TLS (mqtts://), trusting the CA they are given.
    plane.ok(&["launch", "secure", "--wait"]);
    assert_eq!(plane.ok(&["inject", "secure", "over tls", "--wait"]).trim(), "secure/0: over tls");
    let join = plane.json_get_tls("/api/v1/fleets/secure/join?slots=0", &tls.join("ca.pem"));
    assert_eq!(join["bus"], format!("mqtts://127.0.0.1:{}", plane.mqtt_port));
    // The observer with stock mosquitto_sub and --cafile; plain MQTT is not spoken there.
    let line = plane.ok(&["bus", "credentials", "--observer"]);
    assert!(line.contains(&format!("--cafile {}", tls.join("ca.pem").display())), "{line}");
    let login = plane.json(&["bus", "credentials", "--observer", "--json"]);
    let (user, pass) = (login["username"].as_str().unwrap(), login["password"].as_str().unwrap());
    let port = plane.mqtt_port.to_string();
    let sub = |extra: &[&str]| {
        std::process::Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-u",
                user,
                "-P",
                pass,
                "-t",
                "clawfleet/v1/fleets/secure/agents/0/heartbeat",
                "-C",
                "1",
                "-W",
                "10",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let over_tls = sub(&["--cafile", tls.join("ca.pem").to_str().unwrap()]);
    assert!(over_tls.status.success() && !over_tls.stdout.is_empty(), "{}", String::from_utf8_lossy(&over_tls.stderr));
    let plain = sub(&[]);
    assert!(plain.stdout.is_empty(), "plain MQTT was served on the TLS port");
}

impl Plane {
    /// `GET path` over HTTPS with the operator token, trusting `ca`.
    fn json_get_tls(&self, path: &str, ca: &std::path::Path) -> serde_json::Value {
        let client =
            clawfleet_cli::client::Client::with_ca(&format!("https://127.0.0.1:{}", self.http_port), &self.token(), Some(ca)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(client.get(path)).unwrap()
    }
}

/// MQTT over TLS on Mosquitto: `bus config --mosquitto --tls-cert/--tls-key` writes a TLS
/// listener; the control plane and its agents reach it at `mqtts://`, trusting the CA that
/// `clawfleet certs` made; the observer's mosquitto_sub uses `--cafile`.
#[test]
fn on_mosquitto_over_tls_agents_and_the_observer_speak_mqtts() {
    let data = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    let run = |args: &[&str]| {
        let out =
            std::process::Command::new(crate::support::BIN).args(args).args(["--data", data.path().to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "clawfleet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["certs"]);
    let tls = data.path().join("tls");
    let (cert, key, ca) = (tls.join("server.pem"), tls.join("server-key.pem"), tls.join("ca.pem"));
    run(&["bus", "config", "--mosquitto", conf.path().to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")]
        .into_iter()
        .chain(["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()])
        .collect::<Vec<_>>());
    let broker = DynsecMosquitto::start(conf, port);
    let plane = broker.plane(data, "mqtts");
    plane.ok(&["launch", "sealed", "--wait"]);
    assert_eq!(plane.ok(&["inject", "sealed", "encrypted", "--wait"]).trim(), "sealed/0: encrypted");
    assert_eq!(plane.json_get("/api/v1/fleets/sealed/join?slots=0")["bus"], format!("mqtts://127.0.0.1:{port}"));
    let login = plane.json(&["bus", "credentials", "--observer", "--json"]);
    let sub = |extra: &[&str]| {
        std::process::Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-u",
                login["username"].as_str().unwrap(),
                "-P",
                login["password"].as_str().unwrap(),
            ])
            .args(["-t", "clawfleet/v1/fleets/sealed/agents/0/heartbeat", "-C", "1", "-W", "10"])
            .args(extra)
            .output()
            .unwrap()
    };
    let over_tls = sub(&["--cafile", ca.to_str().unwrap()]);
    assert!(over_tls.status.success() && !over_tls.stdout.is_empty(), "{}", String::from_utf8_lossy(&over_tls.stderr));
    assert!(sub(&[]).stdout.is_empty(), "Mosquitto answered plain MQTT on its TLS listener");
}

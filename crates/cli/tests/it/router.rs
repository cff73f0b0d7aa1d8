//! The codeswarm router protocol, through `clawfleet router` on stdio and on TCP.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{BIN, Plane, PlaneOptions, free_port};

/// Lines from a reader, on a channel, so tests can wait with a deadline.
fn lines(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { return };
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("router wrote a non-JSON line ({e}): {line}"));
            assert_eq!(v["protocol"], "codeswarm.router.v1", "{line}");
            assert_eq!(v["type"], "event", "{line}");
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    rx
}

/// `clawfleet router --stdio` against `plane` (found through its data directory only): the
/// process, its stdin, and its events.
pub fn stdio_router(plane: &Plane) -> (std::process::Child, std::process::ChildStdin, mpsc::Receiver<Value>) {
    let mut router = Command::new(BIN)
        .args(["router", "--stdio"])
        .env("CLAWFLEET_DATA", plane.data())
        .env_remove("CLAWFLEET_TOKEN")
        .env_remove("CLAWFLEET_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = router.stdin.take().unwrap();
    let rx = lines(router.stdout.take().unwrap());
    (router, stdin, rx)
}

/// Waits for an event matching `f`, collecting what came before.
pub fn wait_for(rx: &mpsc::Receiver<Value>, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_within(rx, 30, what, f)
}

pub fn command(name: &str, request_id: &str, payload: Value) -> String {
    json!({"protocol": "codeswarm.router.v1", "type": "command", "command": name, "request_id": request_id, "payload": payload}).to_string()
        + "\n"
}

#[test]
fn stdio_router_launches_injects_streams_refuses_and_terminates() {
    let plane = Plane::start();
    let (mut router, mut stdin, rx) = stdio_router(&plane);

    stdin
        .write_all(
            command("swarm_launch", "r1", json!({"nodes": 2, "system_prompt": "You are a scout.", "provider_params": {"name": "rs"}}))
                .as_bytes(),
        )
        .unwrap();
    let launched = wait_for(&rx, "swarm_launched", |v| v["event"] == "swarm_launched");
    assert_eq!(launched["data"]["request_id"], "r1");
    assert_eq!((launched["data"]["swarm_id"].as_str(), launched["data"]["node_count"].as_u64()), (Some("rs"), Some(2)));
    let first = wait_for(&rx, "a node online", |v| v["event"] == "node_state" && v["data"]["state"] == "online");
    let other = 1 - first["data"]["node_id"].as_u64().unwrap();
    wait_for(&rx, "the other node online", |v| v["event"] == "node_state" && v["data"]["node_id"] == other);
    std::thread::sleep(Duration::from_millis(300));

    // Full envelope to all nodes, then the seed's short daemon form to one.
    stdin.write_all(command("inject", "r2", json!({"swarm_id": "rs", "nodes": "all", "content": "hello"})).as_bytes()).unwrap();
    let ack = wait_for(&rx, "inject_ack", |v| v["event"] == "inject_ack");
    assert_eq!(ack["data"]["request_id"], "r2");
    assert_eq!(ack["data"]["prompt"], "hello");
    let injection = ack["data"]["injection_id"].as_str().unwrap().to_owned();
    for kind in ["inject_delivered", "turn_started", "assistant_delta", "assistant", "turn_complete", "usage"] {
        let e = wait_for(&rx, kind, |v| v["event"] == kind && v["data"]["injection_id"] == injection.as_str());
        assert_eq!(e["data"]["swarm_id"], "rs");
        assert!(e["data"]["node_id"].is_u64());
    }
    stdin.write_all(b"{\"action\":\"inject\",\"job_id\":\"rs\",\"node_id\":1,\"content\":\"short form\"}\n").unwrap();
    let short = wait_for(&rx, "short-form assistant", |v| v["event"] == "assistant" && v["data"]["content"] == "short form");
    assert_eq!(short["data"]["node_id"], 1);
    assert_eq!(short["data"]["final_answer"], true, "an assistant event is its turn's final answer, as codeswarm marks it");

    // Bad lines are answered with a reason, and the router keeps going.
    stdin.write_all(b"this is not json\n").unwrap();
    let r = wait_for(&rx, "rejection", |v| v["event"] == "command_rejected");
    assert!(r["data"]["reason"].as_str().unwrap().starts_with("invalid json"));
    stdin.write_all(command("inject", "r3", json!({"swarm_id": "nope", "nodes": 0, "content": "x"})).as_bytes()).unwrap();
    let r = wait_for(&rx, "rejection r3", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "r3");
    // The reference router's exact words (codeswarm's web backend compares them), details beside.
    assert_eq!(r["data"]["reason"], "unknown swarm_id");
    assert_eq!(r["data"]["detail"], "no fleet named 'nope'");
    stdin.write_all(command("inject", "r4", json!({"swarm_id": "rs", "nodes": [5], "content": "x"})).as_bytes()).unwrap();
    let r = wait_for(&rx, "rejection r4", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "r4");
    assert_eq!(r["data"]["reason"], "fleet 'rs' has no agent 5 (its agents are 0-1)");
    stdin.write_all(command("dance", "r5", json!({})).as_bytes()).unwrap();
    let r = wait_for(&rx, "rejection r5", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "r5");
    assert!(r["data"]["reason"].as_str().unwrap().starts_with("unknown command 'dance'"));

    // Listing, status, queue, providers.
    stdin.write_all(command("swarm_list", "r6", json!({})).as_bytes()).unwrap();
    let list = wait_for(&rx, "swarm_list", |v| v["event"] == "swarm_list");
    assert_eq!(list["data"]["swarms"]["rs"]["node_count"], 2);
    assert_eq!(list["data"]["swarms"]["rs"]["status"], "running");
    stdin.write_all(command("swarm_status", "r7", json!({"swarm_id": "rs"})).as_bytes()).unwrap();
    let status = wait_for(&rx, "swarm_status", |v| v["event"] == "swarm_status" && v["data"]["request_id"] == "r7");
    assert_eq!(status["data"]["status"], "running");
    // Flat, as the reference shapes it: codeswarm's CLI prints each value as `key: value`, so
    // none may be an object (it would print "[object Object]").
    let data = status["data"].as_object().unwrap();
    assert_eq!((data["swarm_id"].as_str(), data["job_id"].as_str(), data["node_count"].as_u64()), (Some("rs"), Some("rs"), Some(2)));
    assert!(
        data.values().all(|v| !v.is_object() && v.as_array().is_none_or(|a| a.iter().all(|i| !i.is_object() && !i.is_array()))),
        "{status}"
    );
    assert_eq!(data["node_states"].as_array().map(Vec::len), Some(2), "{status}");

    // Orchestrated projects and approvals: codeswarm's web backend polls both; none yet.
    stdin.write_all(command("approvals_list", "a1", json!({})).as_bytes()).unwrap();
    let a = wait_for(&rx, "approvals_list", |v| v["event"] == "approvals_list" && v["data"]["request_id"] == "a1");
    assert_eq!((&a["data"]["approvals_version"], &a["data"]["approvals"]), (&json!(0), &json!({})));
    stdin.write_all(command("project_list", "p1", json!({})).as_bytes()).unwrap();
    let p = wait_for(&rx, "project_list", |v| v["event"] == "project_list" && v["data"]["request_id"] == "p1");
    assert_eq!(p["data"]["projects"], json!({}));
    wait_for(&rx, "projects_updated", |v| v["event"] == "projects_updated" && v["data"]["projects"] == json!({}));
    stdin.write_all(command("project_start", "p2", json!({"project_id": "p-9"})).as_bytes()).unwrap();
    let r = wait_for(&rx, "rejection p2", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "p2");
    assert_eq!(r["data"]["reason"], "unknown project_id");
    let approve = json!({"job_id": "rs", "call_id": "c1", "node_id": 0, "injection_id": null, "approved": true, "decision": "approved"});
    stdin.write_all(command("approve_execution", "a2", approve).as_bytes()).unwrap();
    let r = wait_for(&rx, "rejection a2", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "a2");
    assert_eq!(r["data"]["reason"], "unknown approval request");
    assert_eq!((&r["data"]["call_id"], &r["data"]["node_id"], &r["data"]["pending_candidates"]), (&json!("c1"), &json!(0), &json!(0)));
    stdin.write_all(command("enqueue_inject", "q1", json!({"target_swarm_id": "nope", "content": "x"})).as_bytes()).unwrap();
    let r = wait_for(&rx, "rejection q1", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "q1");
    assert_eq!(r["data"]["reason"], "unknown target_swarm_id");
    stdin.write_all(command("swarm_launch", "l1", json!({"nodes": 1, "provider": "aws"})).as_bytes()).unwrap();
    let r = wait_for(&rx, "rejection l1", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "l1");
    assert_eq!(r["data"]["reason"], "unknown provider: aws");
    stdin
        .write_all(
            command("enqueue_inject", "r8", json!({"target_swarm_id": "rs", "selector": "idle", "content": "any idle node"})).as_bytes(),
        )
        .unwrap();
    // Queued in the control plane, then dispatched to the idle node, with the request's id
    // throughout (its injection's events included).
    let queued = wait_for(&rx, "inter_swarm_enqueued", |v| v["event"] == "inter_swarm_enqueued");
    let queue_id = queued["data"]["queue_id"].as_str().unwrap().to_owned();
    assert_eq!(
        (&queued["data"]["request_id"], &queued["data"]["target_swarm_id"], &queued["data"]["selector"]),
        (&json!("r8"), &json!("rs"), &json!("idle"))
    );
    wait_for(&rx, "queue_updated", |v| v["event"] == "queue_updated");
    let dispatched = wait_for(&rx, "inter_swarm_dispatched", |v| v["event"] == "inter_swarm_dispatched");
    assert_eq!((&dispatched["data"]["queue_id"], &dispatched["data"]["request_id"]), (&json!(queue_id), &json!("r8")), "{dispatched}");
    assert!(dispatched["data"]["node_id"].is_u64() && dispatched["data"]["injection_id"].is_string(), "{dispatched}");
    let answer = wait_for(&rx, "the queued prompt's answer", |v| {
        v["event"] == "assistant" && v["data"]["injection_id"] == dispatched["data"]["injection_id"]
    });
    assert!(answer["data"]["content"].as_str().unwrap().contains("any idle node"), "{answer}");
    stdin.write_all(command("queue_list", "r8b", json!({})).as_bytes()).unwrap();
    let list = wait_for(&rx, "queue_list", |v| v["event"] == "queue_list" && v["data"]["request_id"] == "r8b");
    assert_eq!(list["data"]["items"], json!([]), "nothing waits once it is dispatched");
    stdin.write_all(command("providers_list", "r9", json!({})).as_bytes()).unwrap();
    let providers = wait_for(&rx, "providers_list", |v| v["event"] == "providers_list");
    assert!(providers["data"]["providers"].as_array().unwrap().iter().any(|p| p["id"] == "local"));

    // Terminate.
    stdin.write_all(command("swarm_terminate", "r10", json!({"swarm_id": "rs"})).as_bytes()).unwrap();
    let done = wait_for(&rx, "swarm_terminated", |v| v["event"] == "swarm_terminated");
    assert_eq!(done["data"]["request_id"], "r10");

    // Closing stdin ends daemon mode.
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(10);
    while router.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "router did not exit after stdin closed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tcp_router_sends_every_event_to_every_client() {
    let plane = Plane::start();
    plane.ok(&["launch", "squad", "--replicas", "1", "--wait"]);
    let port = free_port();
    let mut router = Command::new(BIN)
        .args(["router"])
        .env("CLAWFLEET_DATA", plane.data())
        .env("CODESWARM_ROUTER_PORT", port.to_string())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let connect = || {
        crate::support::eventually(Duration::from_secs(10), "the router to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
    };
    let mut a = connect();
    let b = connect();
    let rx_a = lines(a.try_clone().unwrap());
    let rx_b = lines(b);
    std::thread::sleep(Duration::from_millis(300));
    a.write_all(command("inject", "t1", json!({"swarm_id": "squad", "nodes": 0, "content": "both of you see this"})).as_bytes()).unwrap();
    for rx in [&rx_a, &rx_b] {
        let e = wait_for(rx, "assistant", |v| v["event"] == "assistant");
        assert_eq!(e["data"]["content"], "both of you see this");
    }
    router.kill().unwrap();
    router.wait().unwrap();
}

/// Like [`wait_for`], with a deadline of `secs` seconds.
pub fn wait_within(rx: &mpsc::Receiver<Value>, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if f(&v) => return v,
            Ok(v) => seen.push(v["event"].as_str().unwrap_or("?").to_owned()),
            Err(_) => panic!("no {what} within {secs} s; saw {seen:?}"),
        }
    }
}

/// Names of the jobs in Slurm's queue that belong to fleet `fleet`.
fn slurm_jobs_of(fleet: &str) -> Vec<String> {
    let out = Command::new("squeue").args(["-h", "-o", "%j"]).output().unwrap();
    assert!(out.status.success(), "squeue: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|j| j.starts_with(&format!("cf.{fleet}."))).map(str::to_owned).collect()
}

/// Cancels a fleet's Slurm jobs if the test fails half-way, so they do not outlive it.
struct CancelJobsOnPanic(&'static str);

impl Drop for CancelJobsOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let script = format!("squeue -h -o '%i %j' | awk '$2 ~ /^cf\\.{}\\./ {{print $1}}' | xargs -r scancel", self.0);
            let _ = Command::new("sh").args(["-c", &script]).status();
        }
    }
}

#[test]
fn the_router_launches_talks_to_and_terminates_a_slurm_swarm() {
    let sinfo = Command::new("sinfo").args(["-h", "-o", "%T"]).output();
    let state = sinfo.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    assert!(
        ["idle", "mixed", "allocated"].iter().any(|s| state.starts_with(s)),
        "a single-node Slurm must be up (scripts/slurm-setup; .ci/run runs it); sinfo says '{state}'"
    );
    let plane = Plane::with(PlaneOptions { slurm: true, ..PlaneOptions::default() });
    let _cleanup = CancelJobsOnPanic("rslurm");
    let (mut router, mut stdin, rx) = stdio_router(&plane);

    // Launch: the profile fields of provider_params become the fleet's cluster profile.
    let params = json!({"name": "rslurm", "brain": "echo", "transport": "mailbox", "inject_timeout_seconds": 600});
    stdin.write_all(command("swarm_launch", "s1", json!({"nodes": 2, "provider": "slurm", "provider_params": params})).as_bytes()).unwrap();
    let progress = wait_for(&rx, "swarm_launch_progress", |v| v["event"] == "swarm_launch_progress" && v["data"]["request_id"] == "s1");
    assert_eq!(progress["data"]["provider"], "slurm");
    let launched = wait_for(&rx, "swarm_launched", |v| v["event"] == "swarm_launched" && v["data"]["request_id"] == "s1");
    assert_eq!(launched["data"]["swarm_id"], "rslurm");
    assert_eq!(launched["data"]["node_count"], 2);
    assert_eq!(launched["data"]["provider"], "slurm");

    // Both agents come up, each a Slurm job of its own.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut poll = 0;
    let status = loop {
        poll += 1;
        let rid = format!("st{poll}");
        stdin.write_all(command("swarm_status", &rid, json!({"swarm_id": "rslurm"})).as_bytes()).unwrap();
        let s = wait_for(&rx, "swarm_status", |v| v["event"] == "swarm_status" && v["data"]["request_id"] == rid.as_str());
        let states = s["data"]["node_states"].as_array().cloned().unwrap_or_default();
        if states.len() == 2 && states.iter().all(|n| n == "idle") {
            break s;
        }
        assert!(Instant::now() < deadline, "the slurm swarm was not idle within 120 s; last status: {s}\nlog: {}", plane.log());
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(status["data"]["status"], "running");
    let jobs = status["data"]["node_job_ids"].as_array().unwrap_or_else(|| panic!("each slurm node's job id: {status}"));
    assert_eq!(jobs.len(), 2, "{status}");
    for job in jobs {
        let job = job.as_str().unwrap();
        assert!(!job.is_empty() && job.bytes().all(|b| b.is_ascii_digit()), "{status}");
    }

    // Inject to all: the echo brain answers on both nodes, through the mailbox.
    let prompt = "hello over the router and slurm";
    stdin.write_all(command("inject", "s2", json!({"swarm_id": "rslurm", "nodes": "all", "content": prompt})).as_bytes()).unwrap();
    let ack = wait_for(&rx, "inject_ack", |v| v["event"] == "inject_ack" && v["data"]["request_id"] == "s2");
    let injection = ack["data"]["injection_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut answered, mut completed) = ([false; 2], [false; 2]);
    let mut seen = Vec::new();
    while answered != [true; 2] || completed != [true; 2] {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!("answers within 120 s: assistant {answered:?}, turn_complete {completed:?}; saw {seen:?}\nlog: {}", plane.log())
        });
        let node = v["data"]["node_id"].as_u64().filter(|&n| n < 2).map(|n| n as usize);
        match (v["event"].as_str(), node) {
            (Some("inject_failed"), _) if v["data"]["injection_id"] == injection.as_str() => panic!("injection failed: {v}"),
            (Some("assistant"), Some(n)) if v["data"]["swarm_id"] == "rslurm" => {
                assert!(v["data"]["content"].as_str().is_some_and(|c| c.contains(prompt)), "{v}");
                answered[n] = true;
            }
            (Some("turn_complete"), Some(n)) if v["data"]["injection_id"] == injection.as_str() => completed[n] = true,
            _ => seen.push(v["event"].as_str().unwrap_or("?").to_owned()),
        }
    }

    // A bad profile field is refused with the reason.
    let bad = json!({"nodes": 1, "provider": "slurm", "provider_params": {"name": "rbad", "transport": "pigeon"}});
    stdin.write_all(command("swarm_launch", "s3", bad).as_bytes()).unwrap();
    let r = wait_for(&rx, "rejection s3", |v| v["event"] == "command_rejected" && v["data"]["request_id"] == "s3");
    assert!(
        r["data"]["reason"].as_str().is_some_and(|m| m.contains("unknown variant `pigeon`, expected one of `bus`, `mailbox`, `auto`")),
        "{r}"
    );
    assert!(slurm_jobs_of("rbad").is_empty(), "a refused launch submitted jobs");

    // Terminate: the swarm ends and its jobs leave the queue.
    stdin.write_all(command("swarm_terminate", "s4", json!({"swarm_id": "rslurm"})).as_bytes()).unwrap();
    let done = wait_within(&rx, 120, "swarm_terminated", |v| v["event"] == "swarm_terminated" && v["data"]["swarm_id"] == "rslurm");
    assert_eq!(done["data"]["request_id"], "s4");
    let left = slurm_jobs_of("rslurm");
    assert!(left.is_empty(), "jobs left after swarm_terminated: {left:?}");

    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(10);
    while router.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "router did not exit after stdin closed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! Execution approvals end to end: an `approve:cmd:` agent asks before each turn runs its
//! command; the answer (the CLI's, the router's `approve_execution`, or the control plane's
//! refusal after `--approval-timeout`) reaches it, and it runs the command or ends the turn
//! refused. Bad answers are refused, nothing else disturbed.

use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};

use crate::router::{command, stdio_router, wait_for};
use crate::support::{Plane, PlaneOptions, eventually};

fn pending(plane: &Plane) -> Vec<Value> {
    let list = plane.json(&["approvals", "list", "--json"]);
    list["approvals"].as_array().unwrap().iter().filter(|a| a["status"] == "pending").cloned().collect()
}

/// Waits for the agent's next approval; its id.
fn asked(plane: &Plane, what: &str) -> Value {
    eventually(Duration::from_secs(60), what, || pending(plane).pop())
}

/// The turn's end: its answer, or why it failed.
fn ended(plane: &Plane, injection: &str) -> String {
    eventually(Duration::from_secs(60), "the turn to end", || {
        crate::support::events(plane, "ops").into_iter().find_map(|e| {
            if e["injection_id"] != injection {
                return None;
            }
            match e["event"].as_str() {
                Some("assistant") => Some(format!("answer: {}", e["data"]["content"].as_str().unwrap())),
                Some("agent_error") => Some(format!("error: {}", e["data"]["message"].as_str().unwrap())),
                _ => None,
            }
        })
    })
}

fn inject(plane: &Plane, prompt: &str) -> String {
    plane.json(&["inject", "ops", prompt, "--json"])["injection_id"].as_str().unwrap().to_owned()
}

#[test]
fn an_agent_asks_before_it_runs_its_command_and_runs_it_only_when_approved() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let plane = Plane::with(PlaneOptions {
        heartbeat_ms: 200,
        // The brain notes each run beside the test (agents write only where they are let).
        up_args: vec!["--approval-timeout".into(), "3s".into(), "--agent-writable".into(), dir.path().to_str().unwrap().into()],
        ..PlaneOptions::default()
    });
    let brain = format!("approve:cmd:p=$(cat); echo \"$p\" >> {}; echo \"ran $p\"", ran.display());
    plane.ok(&["launch", "ops", "--brain", &brain, "--wait"]);
    let runs = || std::fs::read_to_string(&ran).unwrap_or_default();

    // Approved from the CLI: the command runs, once.
    let first = inject(&plane, "deploy");
    let a = asked(&plane, "the first approval");
    assert_eq!((&a["fleet"], &a["agent"], &a["injection_id"]), (&json!("ops"), &json!(0), &json!(first)), "{a}");
    assert!(a["command"].as_str().unwrap().starts_with("p=$(cat)"), "{a}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(runs(), "", "nothing runs before the answer");
    let id = a["approval_id"].to_string();
    // Who may not approve it is refused, and it still waits: an observer, and an agent token
    // of its own fleet (never self-approval).
    let create = |args: &[&str]| plane.ok(&[&["token", "create"], args].concat()).trim().to_owned();
    let observer = create(&["--role", "observer", "--name", "watcher"]);
    let sibling = create(&["--role", "agent", "--fleet", "ops", "--name", "ops-bot"]);
    let path = format!("/api/v1/approvals/{id}");
    for (token, expected) in [
        (&observer, "the observer token 'watcher' may not approve agent ops/0"),
        (&sibling, "refusing self-approval: an agent token may not approve what its own fleet 'ops' runs"),
    ] {
        let (status, body) = plane.http("POST", &path, Some(token), Some(r#"{"approved": true}"#));
        assert_eq!((status, body["error"].as_str().unwrap_or("")), (403, expected), "{body}");
    }
    assert_eq!(pending(&plane).len(), 1);
    let text = plane.ok(&["approvals", "approve", &id]);
    assert!(text.contains("approved (submitted)"), "{text}");
    assert_eq!(ended(&plane, &first), "answer: ran deploy");
    assert_eq!(runs(), "deploy\n");
    let err = plane.fails(&["approvals", "deny", &id]);
    assert!(err.contains(&format!("approval {id} is answered already (approved by ")), "{err}");
    let taken = eventually(Duration::from_secs(30), "the agent to take the answer", || {
        let a = plane.json(&["approvals", "show", &id, "--json"]);
        (a["status"] == "resolved").then_some(a)
    });
    assert_eq!(taken["approved"], true);

    // Denied through codeswarm's router: the turn ends refused, the command never runs.
    let (mut router, mut stdin, rx) = stdio_router(&plane);
    let second = inject(&plane, "drop tables");
    let b = asked(&plane, "the second approval");
    stdin.write_all(command("approvals_list", "l1", json!({})).as_bytes()).unwrap();
    let list = wait_for(&rx, "approvals_list", |v| v["event"] == "approvals_list" && v["data"]["request_id"] == "l1");
    let shown = &list["data"]["approvals"]["ops"]["0"][0];
    assert_eq!((&shown["call_id"], &shown["approval_status"]), (&b["call_id"], &json!("pending")), "{list}");
    assert!(list["data"]["approvals_version"].as_u64().unwrap() > 0);
    // Missing `approved` is a refusal, as the reference reads it.
    let deny = json!({"job_id": "ops", "call_id": b["call_id"], "node_id": 0, "decision": "cancel"});
    stdin.write_all(command("approve_execution", "d1", deny.clone()).as_bytes()).unwrap();
    let submitted = wait_for(&rx, "exec_approval_submitted", |v| v["event"] == "exec_approval_submitted");
    assert_eq!((&submitted["data"]["request_id"], &submitted["data"]["approved"]), (&json!("d1"), &json!(false)), "{submitted}");
    // Events count the approvals' version as approvals_list does: the answer moved it on.
    let listed = list["data"]["approvals_version"].as_u64().unwrap();
    assert!(submitted["data"]["approvals_version"].as_u64().unwrap() > listed, "{submitted} after {listed}");
    let resolved = wait_for(&rx, "exec_approval_resolved", |v| v["event"] == "exec_approval_resolved");
    assert_eq!((&resolved["data"]["request_id"], &resolved["data"]["call_id"]), (&json!("d1"), &b["call_id"]), "{resolved}");
    assert_eq!(ended(&plane, &second), "error: the command was not approved (cancel); it did not run");
    // Answering again is idempotent, and an unknown call is refused as the reference refuses it.
    stdin.write_all(command("approve_execution", "d2", deny).as_bytes()).unwrap();
    let again = wait_for(&rx, "the idempotent answer", |v| v["data"]["request_id"] == "d2");
    assert_eq!((&again["event"], &again["data"]["idempotent"]), (&json!("exec_approval_resolved"), &json!(true)), "{again}");
    stdin.write_all(command("approve_execution", "d3", json!({"job_id": "ops", "call_id": "nope", "approved": true})).as_bytes()).unwrap();
    let r = wait_for(&rx, "rejection d3", |v| v["data"]["request_id"] == "d3");
    assert_eq!((&r["event"], &r["data"]["reason"]), (&json!("command_rejected"), &json!("unknown approval request")), "{r}");
    let _ = router.kill();

    // Nobody answers: after the timeout it is a no.
    let third = inject(&plane, "reboot");
    assert_eq!(ended(&plane, &third), "error: the command was not approved (timeout); it did not run");
    assert_eq!(runs(), "deploy\n", "only the approved turn ran");
    let history = plane.json(&["approvals", "list", "--all", "--json"]);
    let answers: Vec<(&str, &Value, &str)> = history["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["status"].as_str().unwrap(), &a["approved"], a["answered_by"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(answers.len(), 3, "{history}");
    assert_eq!((answers[2].0, answers[2].1, answers[2].2), ("resolved", &json!(false), "the control plane (no answer in 3 s)"));
    assert!(answers.iter().all(|(s, _, _)| *s == "resolved"), "{history}");
    assert_eq!(plane.ok(&["approvals", "list"]).trim(), "nothing waits for an approval");

    // Bad answers name what is wrong.
    assert!(plane.fails(&["approvals", "approve", "999"]).contains("no approval 999"));
    let (status, body) = plane.http("POST", "/api/v1/approvals/x1", Some(&plane.token()), Some(r#"{"approved": true}"#));
    assert_eq!((status, body["error"].as_str().unwrap_or("")), (400, "approval id 'x1' is not a number"), "{body}");
    let (status, body) = plane.http("POST", &format!("/api/v1/approvals/{id}"), Some(&plane.token()), Some(r#"{"decision": "accept"}"#));
    assert_eq!(status, 400, "{body}");
    // The agent keeps serving.
    let brainless = inject(&plane, "after");
    asked(&plane, "an approval after all that");
    let c = pending(&plane).pop().unwrap();
    plane.ok(&["approvals", "approve", &c["approval_id"].to_string()]);
    assert_eq!(ended(&plane, &brainless), "answer: ran after");

    // An approval whose agent is gone ends: refused at its timeout, then no one to send it to.
    inject(&plane, "never");
    let d = asked(&plane, "an approval that will have no agent");
    plane.ok(&["terminate", "ops", "--wait"]);
    let ended = eventually(Duration::from_secs(60), "the orphaned approval to end", || {
        let a = plane.json(&["approvals", "show", &d["approval_id"].to_string(), "--json"]);
        (a["status"] == "resolved").then_some(a)
    });
    assert_eq!(ended["approved"], false, "{ended}");
    assert_eq!(plane.ok(&["approvals", "list"]).trim(), "nothing waits for an approval");
}

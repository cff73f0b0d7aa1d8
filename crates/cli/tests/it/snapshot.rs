//! Snapshots end to end: an agent's state taken while it runs, verified as it arrives, written
//! to a new file readable by its owner only; a workspace that holds a secret's value is
//! refused, naming the secret and never its value.

use std::os::unix::fs::PermissionsExt;

use crate::support::{Plane, PlaneOptions};

#[test]
fn an_agents_snapshot_holds_its_turns_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let plane = Plane::with(PlaneOptions { heartbeat_ms: 200, ..PlaneOptions::default() });
    plane.ok(&["launch", "squad", "--replicas", "2", "--brain", "echo", "--prompt", "Be terse.", "--wait"]);
    for prompt in ["one", "two", "three"] {
        plane.ok(&["inject", "squad", prompt, "--agent", "1", "--wait"]);
    }
    let file = dir.path().join("squad-1.cfsnap");
    let v = plane.json(&["snapshot", "squad/1", "-o", file.to_str().unwrap(), "--json"]);
    let m = &v["manifest"];
    assert_eq!((&m["fleet"], &m["slot"], &m["turns"], &m["brain"]), (&"squad".into(), &1.into(), &3.into(), &"echo".into()), "{v:#}");
    assert_eq!(m["system_prompt"], "Be terse.");
    assert_eq!(m["format"], "clawfleet-snapshot");
    assert!(m["journal"]["seq"].as_u64().unwrap() > 0, "{v:#}");
    let files: Vec<&str> = m["files"].as_object().unwrap().keys().map(String::as_str).collect();
    assert!(files.contains(&"conversation.jsonl"), "{files:?}");
    assert!(!files.iter().any(|f| f.starts_with("events") || f.starts_with("inbox") || *f == "epoch"), "{files:?}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(v["bytes"].as_u64().unwrap(), std::fs::metadata(&file).unwrap().len());
    let err = plane.fails(&["snapshot", "squad/1", "-o", file.to_str().unwrap()]);
    assert!(err.contains("an existing file is not overwritten"), "{err}");
    let text = plane.ok(&["snapshot", "squad/0", "-o", dir.path().join("zero.cfsnap").to_str().unwrap()]);
    assert!(text.starts_with("snapshot of squad/0: 0 turns"), "{text}");
    assert!(plane.fails(&["snapshot", "squad/7"]).contains("fleet 'squad' has no agent 7"));
    assert!(plane.fails(&["snapshot", "nope/0"]).contains("no fleet named 'nope'"));
    assert!(plane.fails(&["snapshot", "squad"]).contains("squad"));

    // Restored into another fleet's idle agent: it holds the three turns, and goes on.
    plane.ok(&["launch", "other", "--brain", "echo", "--wait"]);
    plane.ok(&["inject", "other", "its own turn", "--wait"]);
    let done = plane.json(&["restore", file.to_str().unwrap(), "--into", "other", "--slot", "0", "--json"]);
    assert_eq!(
        (&done["agent"], &done["from"], &done["turns"], &done["reloaded"], &done["conversation_messages"]),
        (&"other/0".into(), &"squad/1".into(), &3.into(), &true.into(), &6.into()),
        "{done:#}"
    );
    let history =
        |p: &Plane| p.json(&["command", "other", "status-report", "--agent", "0", "--json"])["results"][0]["result"]["history_len"].clone();
    assert_eq!(history(&plane), 6);
    plane.ok(&["inject", "other", "four", "--wait"]);
    assert_eq!(history(&plane), 8, "the restored agent goes on from the restored conversation");
    // Bad archives are refused before anything changes.
    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.path().join("cut.cfsnap");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = plane.fails(&["restore", cut.to_str().unwrap(), "--into", "other", "--slot", "0"]);
    assert!(err.contains("the archive is truncated or is not a clawfleet snapshot"), "{err}");
    let (status, body) = plane.http("POST", "/api/v1/fleets/other/agents/0/restore", Some(&plane.token()), None);
    assert_eq!((status, &body["code"]), (400, &"bad_request".into()), "an empty body: {body}");
    assert!(plane.fails(&["restore", file.to_str().unwrap(), "--into", "other", "--slot", "3"]).contains("fleet 'other' has no agent 3"));
    assert_eq!(history(&plane), 8, "nothing changed");

    // Into a new agent: the fleet grows by one, and its new agent starts from the snapshot.
    let text = plane.ok(&["restore", file.to_str().unwrap(), "--into", "other"]);
    assert!(text.contains("other grows to 2 agents") && text.contains("restored squad/1 into other/1: 3 turns"), "{text}");
    let history1 =
        plane.json(&["command", "other", "status-report", "--agent", "1", "--json"])["results"][0]["result"]["history_len"].clone();
    assert_eq!(history1, 6);
    assert_eq!(history(&plane), 8, "agent 0 is as it was");
    plane.ok(&["scale", "other", "1", "--wait"]);

    // As Letta's Agent File, and back: the system prompt and the turns; what it cannot hold is said.
    let af = dir.path().join("squad-1.af");
    let v = plane.json(&["snapshot", "squad/1", "--format", "af", "-o", af.to_str().unwrap(), "--json"]);
    assert!(v["unmapped"][0].as_str().unwrap().starts_with("brain 'echo' is not a model"), "{v:#}");
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&af).unwrap()).unwrap();
    let agent = &file["agents"][0];
    assert_eq!((agent["system"].as_str(), agent["messages"].as_array().map(Vec::len)), (Some("Be terse."), Some(7)), "{agent:#}");
    assert_eq!(agent["messages"][1]["content"][0]["text"], "one");
    let done = plane.json(&["restore", af.to_str().unwrap(), "--into", "other", "--slot", "0", "--json"]);
    assert_eq!((&done["turns"], &done["conversation_messages"], &done["from"]), (&3.into(), &6.into(), &"squad-1/0".into()), "{done:#}");
    assert_eq!(history(&plane), 6);
    let letta = dir.path().join("letta.af");
    std::fs::write(
        &letta,
        r#"{"agents": [{"name": "loop", "system": "You are Loop.", "tools": [{"name": "send_message"}],
        "llm_config": {"model": "claude-sonnet-4-5", "model_endpoint_type": "bedrock"},
        "messages": [{"role": "user", "content": [{"type": "text", "text": "remember 42"}]},
                     {"role": "assistant", "content": [{"type": "text", "text": "noted"}]}]}]}"#,
    )
    .unwrap();
    let text = plane.ok(&["restore", letta.to_str().unwrap(), "--into", "other", "--slot", "0"]);
    assert!(text.contains("restored loop/0 into other/0: 1 turns") && text.contains("not restored: 1 tools"), "{text}");
    assert!(text.contains("not restored: llm_config (endpoint type bedrock"), "{text}");
    assert_eq!(history(&plane), 2);
    std::fs::write(&letta, "{\"agents\": []}").unwrap();
    assert!(
        plane
            .fails(&["restore", letta.to_str().unwrap(), "--into", "other", "--slot", "0"])
            .contains("not a Letta agent file: it has no agent")
    );

    // A brain that writes its secret into the workspace: no snapshot of it.
    let value = dir.path().join("value");
    std::fs::write(&value, "s3cr3t-value-42").unwrap();
    plane.ok(&["secret", "set", "API_KEY", "--from-file", value.to_str().unwrap()]);
    plane.ok(&["launch", "leaky", "--brain", "cmd:echo \"$API_KEY\" > notes.txt; echo noted", "--secret", "API_KEY", "--wait"]);
    plane.ok(&["inject", "leaky", "write it down", "--wait"]);
    let err = plane.fails(&["snapshot", "leaky/0", "-o", dir.path().join("leak.cfsnap").to_str().unwrap()]);
    assert!(err.contains("holds the value of the secret 'API_KEY' (in notes.txt): a snapshot never carries a secret"), "{err}");
    assert!(!err.contains("s3cr3t"), "the error names the secret, never its value: {err}");
    assert!(!dir.path().join("leak.cfsnap").exists());
    let audit = plane.ok(&["audit"]);
    assert!(audit.contains("snapshot") && audit.contains("agent 1: "), "{audit}");
}

//! Every kind of brain through a real agent: agent CLIs (stand-ins on PATH that print what the
//! real ones print) and HTTP model APIs (stand-in servers that stream like the real ones).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::support::{Plane, PlaneOptions};

fn script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn codex_claude_and_commands_drive_turns() {
    let bin = tempfile::tempdir().unwrap();
    script(
        bin.path(),
        "codex",
        r#"for last; do :; done
echo "$@" > codex-args.txt
echo '{"type":"thread.started","thread_id":"t1"}'
echo '{"type":"turn.started"}'
echo '{"type":"item.completed","item":{"id":"item_0","type":"reasoning","text":"hmm"}}'
echo '{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"codex heard you"}}'
echo '{"type":"turn.completed","usage":{"input_tokens":12,"cached_input_tokens":2,"output_tokens":4}}'
"#,
    );
    script(
        bin.path(),
        "claude",
        r#"for last; do :; done
echo "$@" > claude-args.txt
echo '{"type":"system","subtype":"init","session_id":"s1"}'
printf '{"type":"assistant","message":{"content":[{"type":"text","text":"claude heard %s"}]}}\n' "$last"
printf '{"type":"result","subtype":"success","is_error":false,"result":"claude heard %s","usage":{"input_tokens":5,"output_tokens":3}}\n' "$last"
"#,
    );
    let plane = Plane::with(PlaneOptions { extra_path: Some(bin.path().to_owned()), ..PlaneOptions::default() });

    plane.ok(&["launch", "cx", "--brain", "codex#gpt-5-codex", "--prompt", "Be terse.", "--wait"]);
    assert_eq!(plane.ok(&["inject", "cx", "ping", "--wait"]).trim(), "cx/0: codex heard you");
    let ws = workspace(&plane, "cx");
    let args = std::fs::read_to_string(ws.join("codex-args.txt")).unwrap();
    assert_eq!(args.trim(), "exec --json --skip-git-repo-check --model gpt-5-codex -- Be terse.\n\nping");
    let usage = crate::support::events(&plane, "cx").into_iter().find(|e| e["event"] == "usage").unwrap();
    assert_eq!((usage["data"]["input_tokens"].as_u64(), usage["data"]["cached_input_tokens"].as_u64()), (Some(12), Some(2)));

    plane.ok(&["launch", "cl", "--brain", "claude", "--prompt", "Be kind.", "--wait"]);
    assert_eq!(plane.ok(&["inject", "cl", "pong", "--wait"]).trim(), "cl/0: claude heard pong");
    let args = std::fs::read_to_string(workspace(&plane, "cl").join("claude-args.txt")).unwrap();
    assert_eq!(args.trim(), "-p --output-format stream-json --verbose --append-system-prompt Be kind. pong");

    // Any command: the prompt on stdin and in CLAWFLEET_PROMPT; stdout lines are the answer.
    plane.ok(&["launch", "sh", "--brain", "cmd:tr a-z A-Z; echo \"env=$CLAWFLEET_PROMPT\"", "--wait"]);
    assert_eq!(plane.ok(&["inject", "sh", "shout", "--wait"]), "sh/0: SHOUT\nenv=shout\n");

    // A brain that is not installed: the turn fails with the reason, health-check says why.
    plane.ok(&["launch", "none", "--brain", "cmd:definitely-not-a-command-xyz", "--wait"]);
    let out = plane.cli(&["inject", "none", "x", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("none/0 failed: the command exited with status 127"), "{text}");
}

fn workspace(plane: &Plane, fleet: &str) -> std::path::PathBuf {
    std::fs::read_dir(plane.data().join("agents"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&format!("{fleet}-")))
        .unwrap()
        .path()
        .join("0")
}

/// What the stand-in model servers received.
type Seen = Arc<Mutex<Vec<Value>>>;

fn serve(router: Router) -> (u16, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
    });
    (port, handle)
}

fn last_user(body: &Value) -> String {
    body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_owned()
}

async fn openai_chat(State(seen): State<Seen>, axum::Json(body): axum::Json<Value>) -> axum::response::Response {
    seen.lock().unwrap().push(body.clone());
    if body["model"] != "small" {
        return (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"message": format!("model '{}' not found", body["model"])}})),
        )
            .into_response();
    }
    let text = format!("openai heard {}", last_user(&body));
    let (a, b) = text.split_at(6);
    let chunk = |t: &str| json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "small", "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]});
    let sse = format!(
        "data: {}\n\ndata: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        chunk(a),
        chunk(b),
        json!({"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
    );
    ([("content-type", "text/event-stream")], Body::from(sse)).into_response()
}

async fn ollama_chat(State(seen): State<Seen>, axum::Json(body): axum::Json<Value>) -> axum::response::Response {
    seen.lock().unwrap().push(body.clone());
    let text = format!("ollama heard {}", last_user(&body));
    let lines = format!(
        "{}\n{}\n",
        json!({"model": body["model"], "message": {"role": "assistant", "content": text}, "done": false}),
        json!({"model": body["model"], "message": {"role": "assistant", "content": ""}, "done": true, "prompt_eval_count": 7, "eval_count": 2})
    );
    ([("content-type", "application/x-ndjson")], Body::from(lines)).into_response()
}

use axum::response::IntoResponse;

#[test]
fn openai_and_ollama_endpoints_stream_answers_with_the_agents_own_context() {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/models", get(|| async { axum::Json(json!({"object": "list", "data": []})) }))
        .route("/api/chat", post(ollama_chat))
        .route("/api/tags", get(|| async { axum::Json(json!({"models": []})) }))
        .with_state(seen.clone());
    let (port, _server) = serve(app);
    let base = format!("http://127.0.0.1:{port}");
    let plane = Plane::with(PlaneOptions { model_url: Some(format!("{base}/v1")), ..PlaneOptions::default() });

    plane.ok(&["launch", "oa", "--replicas", "2", "--brain", &format!("openai:{base}/v1#small"), "--prompt", "You are a scout.", "--wait"]);
    let answers = plane.ok(&["inject", "oa", "first", "--wait"]);
    assert_eq!(answers, "oa/0: openai heard first\noa/1: openai heard first\n");
    plane.ok(&["inject", "oa", "--agent", "1", "second", "--wait"]);
    // Agent 1's second turn carried its system prompt and its own earlier exchange, and nothing of agent 0's.
    let last = seen.lock().unwrap().last().cloned().unwrap();
    let roles: Vec<(&str, &str)> =
        last["messages"].as_array().unwrap().iter().map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap())).collect();
    assert_eq!(roles, [("system", "You are a scout."), ("user", "first"), ("assistant", "openai heard first"), ("user", "second")]);
    assert_eq!(last["stream"], true);
    let evs = crate::support::events(&plane, "oa");
    let deltas = evs.iter().filter(|e| e["event"] == "assistant_delta" && e["agent"] == 1).count();
    assert!(deltas >= 2, "streamed in pieces");

    // The default brain of this control plane is its model service ("model").
    plane.ok(&["launch", "m", "--wait"]);
    let err = plane.cli(&["inject", "m", "x", "--wait"]);
    let out = String::from_utf8_lossy(&err.stdout);
    assert!(out.starts_with("m/0 failed: ") && out.contains("model '\"default\"' not found"), "{out}");

    plane.ok(&["launch", "ol", "--brain", &format!("ollama:{base}#smollm2:135m"), "--wait"]);
    assert_eq!(plane.ok(&["inject", "ol", "hi", "--wait"]).trim(), "ol/0: ollama heard hi");
    let usage = crate::support::events(&plane, "ol").into_iter().find(|e| e["event"] == "usage").unwrap();
    assert_eq!(usage["data"]["output_tokens"], 2);

    // An endpoint that is down: a clear agent_error naming it.
    plane.ok(&["launch", "down", "--brain", "openai:http://127.0.0.1:9/v1#x", "--wait"]);
    let out = plane.cli(&["inject", "down", "x", "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "down/0 failed: http://127.0.0.1:9/v1/chat/completions: could not connect (is the model service running?)");
}

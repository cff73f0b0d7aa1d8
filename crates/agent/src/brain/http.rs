//! Brains behind HTTP model APIs: OpenAI-compatible chat completions (SSE streaming) and
//! Ollama's `/api/chat` (NDJSON streaming). Both send the system prompt, the agent's recent
//! conversation and the new prompt, and stream the answer as deltas.

use async_trait::async_trait;
use clawfleet_proto::event::Usage;
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{Brain, BrainError, BrainHealth, Progress, ProgressSender, TurnRequest, TurnResult};

/// Splits a byte stream into lines, whatever the chunk boundaries (even inside a UTF-8 char).
#[derive(Debug, Default)]
pub(crate) struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Complete lines in `chunk` (joined with what was pending), without their `\n` or `\r\n`.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut lines = Vec::new();
        while let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=i).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        lines
    }

    /// What is left at the end of the stream, if anything.
    pub(crate) fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        (!rest.is_empty()).then(|| String::from_utf8_lossy(&rest).into_owned())
    }
}

/// The chat messages of a turn, without the `dropped` oldest messages of its history.
fn messages(request: &TurnRequest, dropped: usize) -> Vec<Value> {
    let history = &request.history[dropped.min(request.history.len())..];
    let mut out = Vec::with_capacity(history.len() + 2);
    if let Some(system) = &request.system_prompt {
        out.push(json!({"role": "system", "content": system}));
    }
    for m in history {
        out.push(json!({"role": m.role, "content": m.content}));
    }
    out.push(json!({"role": "user", "content": request.prompt}));
    out
}

/// Whether an error body says the prompt is longer than the model's context: OpenAI's code,
/// or the words OpenAI, vLLM and clawfleet's model service use.
fn context_exceeded(body: &str) -> bool {
    let code = serde_json::from_str::<Value>(body).ok().and_then(|v| v.pointer("/error/code")?.as_str().map(str::to_owned));
    code.as_deref() == Some("context_length_exceeded") || body.to_lowercase().contains("context length")
}

/// The message of an API error body (`{"error":{"message":…}}` or `{"error":"…"}`), else the body.
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let msg = parsed.as_ref().and_then(|v| {
        let e = v.get("error")?;
        e.get("message").and_then(Value::as_str).or(e.as_str()).map(str::to_owned)
    });
    let mut msg = msg.unwrap_or_else(|| body.trim().to_owned());
    if msg.len() > 300 {
        let mut cut = 300;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push('…');
    }
    msg
}

/// Posts a turn (`body` makes the request from its messages). When the server answers that the
/// conversation is longer than its context, the oldest half of the history is left out and the
/// turn tried again, until only the system prompt and the new prompt are left: an agent whose
/// conversation outgrew its model keeps working, with a shorter memory.
async fn post_turn(
    http: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    request: &TurnRequest,
    body: impl Fn(Vec<Value>) -> Value,
) -> Result<reqwest::Response, BrainError> {
    let mut dropped = 0;
    loop {
        let mut req = http.post(url).json(&body(messages(request, dropped)));
        if let Some(key) = auth {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.map_err(|e| BrainError(format!("{url}: {}", describe(&e))))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let left = request.history.len() - dropped;
        if status == reqwest::StatusCode::BAD_REQUEST && left > 0 && context_exceeded(&text) {
            // Whole exchanges (a user message and its answer) go together.
            dropped += left.div_ceil(2).next_multiple_of(2).min(left);
            tracing::warn!(
                url,
                dropped,
                kept = request.history.len() - dropped,
                "The conversation is longer than the model's context; leaving out its oldest messages"
            );
            continue;
        }
        return Err(BrainError(format!("{url} answered {status}: {}", error_message(&text))));
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "could not connect (is the model service running?)".into()
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            src = inner.source();
        }
        s
    }
}

async fn probe(http: &reqwest::Client, url: &str) -> BrainHealth {
    match http.get(url).timeout(std::time::Duration::from_secs(3)).send().await {
        Ok(r) if r.status().is_success() => BrainHealth::ok(),
        Ok(r) => BrainHealth::failing(format!("{url} answered {}", r.status())),
        Err(e) => BrainHealth::failing(format!("{url}: {}", describe(&e))),
    }
}

/// An OpenAI-compatible endpoint.
pub struct OpenAiBrain {
    http: reqwest::Client,
    completions: String,
    models: String,
    model: String,
    api_key: Option<String>,
    /// Request fields sent with every turn besides the messages (sampling options).
    options: serde_json::Map<String, Value>,
}

impl OpenAiBrain {
    /// `base` is the API root, with or without `/v1` (`http://host:8080` or `http://host:8080/v1`).
    pub fn new(http: reqwest::Client, base: &str, model: &str) -> OpenAiBrain {
        let base = base.trim_end_matches('/');
        let root = if base.ends_with("/v1") { base.to_owned() } else { format!("{base}/v1") };
        OpenAiBrain {
            http,
            completions: format!("{root}/chat/completions"),
            models: format!("{root}/models"),
            model: model.to_owned(),
            api_key: std::env::var("OPENAI_API_KEY").ok().filter(|k| !k.is_empty()),
            options: serde_json::Map::new(),
        }
    }

    /// Authenticates with `key` (a fleet's secret), when given, instead of the agent's own
    /// `OPENAI_API_KEY`.
    pub fn with_api_key(mut self, key: Option<String>) -> OpenAiBrain {
        if let Some(key) = key.filter(|k| !k.is_empty()) {
            self.api_key = Some(key);
        }
        self
    }

    /// Sends `options` (a JSON object of request fields: temperature, top_k, ...) with every turn.
    pub fn with_options(mut self, options: Value) -> OpenAiBrain {
        if let Value::Object(map) = options {
            self.options = map;
        }
        self
    }
}

/// What one SSE `data:` payload of a chat completion stream says.
#[derive(Debug, PartialEq)]
pub(crate) enum ChunkEvent {
    Delta(String),
    Usage(Usage),
    Done,
    Error(String),
    Nothing,
}

pub(crate) fn parse_sse_data(data: &str) -> Result<Vec<ChunkEvent>, String> {
    if data == "[DONE]" {
        return Ok(vec![ChunkEvent::Done]);
    }
    let v: Value = serde_json::from_str(data).map_err(|e| format!("invalid stream chunk: {e}"))?;
    if let Some(e) = v.get("error") {
        return Ok(vec![ChunkEvent::Error(error_message(&json!({"error": e}).to_string()))]);
    }
    let mut out = Vec::new();
    if let Some(text) = v.pointer("/choices/0/delta/content").and_then(Value::as_str)
        && !text.is_empty()
    {
        out.push(ChunkEvent::Delta(text.to_owned()));
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        let get = |k: &str| u.get(k).and_then(Value::as_u64);
        out.push(ChunkEvent::Usage(Usage {
            input_tokens: get("prompt_tokens").unwrap_or(0),
            output_tokens: get("completion_tokens").unwrap_or(0),
            total_tokens: get("total_tokens"),
            cached_input_tokens: u.pointer("/prompt_tokens_details/cached_tokens").and_then(Value::as_u64),
        }));
    }
    if out.is_empty() {
        out.push(ChunkEvent::Nothing);
    }
    Ok(out)
}

#[async_trait]
impl Brain for OpenAiBrain {
    async fn turn(&self, request: TurnRequest, progress: ProgressSender) -> Result<TurnResult, BrainError> {
        let body = |messages| {
            let mut body = self.options.clone();
            body.extend([
                ("model".to_owned(), json!(self.model)),
                ("messages".to_owned(), json!(messages)),
                ("stream".to_owned(), json!(true)),
                ("stream_options".to_owned(), json!({"include_usage": true})),
            ]);
            Value::Object(body)
        };
        let resp = post_turn(&self.http, &self.completions, self.api_key.as_deref(), &request, body).await?;
        let mut stream = resp.bytes_stream();
        let mut lines = LineBuffer::default();
        let mut result = TurnResult::default();
        let mut done = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BrainError(format!("{}: stream broke: {}", self.completions, describe(&e))))?;
            for line in lines.push(&chunk) {
                let Some(data) = line.strip_prefix("data:") else { continue };
                let events = parse_sse_data(data.trim()).map_err(|e| BrainError(format!("{}: {e}", self.completions)))?;
                for ev in events {
                    match ev {
                        ChunkEvent::Delta(text) => {
                            result.content.push_str(&text);
                            let _ = progress.send(Progress::Delta(text)).await;
                        }
                        ChunkEvent::Usage(u) => result.usage = Some(u),
                        ChunkEvent::Done => done = true,
                        ChunkEvent::Error(e) => return Err(BrainError(format!("{}: {e}", self.completions))),
                        ChunkEvent::Nothing => {}
                    }
                }
            }
        }
        if !done {
            return Err(BrainError(format!("{}: the stream ended without [DONE]", self.completions)));
        }
        Ok(result)
    }

    async fn health(&self) -> BrainHealth {
        probe(&self.http, &self.models).await
    }
}

/// An Ollama server.
pub struct OllamaBrain {
    http: reqwest::Client,
    chat: String,
    tags: String,
    model: String,
}

impl OllamaBrain {
    pub fn new(http: reqwest::Client, base: &str, model: &str) -> OllamaBrain {
        let base = base.trim_end_matches('/');
        OllamaBrain { http, chat: format!("{base}/api/chat"), tags: format!("{base}/api/tags"), model: model.to_owned() }
    }

    /// Applies one stream line; returns whether it was the last.
    async fn handle_line(&self, line: &str, result: &mut TurnResult, progress: &ProgressSender) -> Result<bool, BrainError> {
        if line.trim().is_empty() {
            return Ok(false);
        }
        let (delta, usage, done) = parse_ollama_line(line).map_err(|e| BrainError(format!("{}: {e}", self.chat)))?;
        if let Some(text) = delta {
            result.content.push_str(&text);
            let _ = progress.send(Progress::Delta(text)).await;
        }
        if usage.is_some() {
            result.usage = usage;
        }
        Ok(done)
    }
}

/// What one NDJSON line of an Ollama chat stream says: (delta, final usage, error).
pub(crate) fn parse_ollama_line(line: &str) -> Result<(Option<String>, Option<Usage>, bool), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid stream line: {e}"))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(e.to_owned());
    }
    let delta = v.pointer("/message/content").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
    let done = v.get("done").and_then(Value::as_bool).unwrap_or(false);
    let usage = done.then(|| Usage {
        input_tokens: v.get("prompt_eval_count").and_then(Value::as_u64).unwrap_or(0),
        output_tokens: v.get("eval_count").and_then(Value::as_u64).unwrap_or(0),
        ..Usage::default()
    });
    Ok((delta, usage, done))
}

#[async_trait]
impl Brain for OllamaBrain {
    async fn turn(&self, request: TurnRequest, progress: ProgressSender) -> Result<TurnResult, BrainError> {
        let body = |messages| json!({"model": self.model, "messages": messages, "stream": true});
        let resp = post_turn(&self.http, &self.chat, None, &request, body).await?;
        let mut stream = resp.bytes_stream();
        let mut lines = LineBuffer::default();
        let mut result = TurnResult::default();
        let mut done = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BrainError(format!("{}: stream broke: {}", self.chat, describe(&e))))?;
            for line in lines.push(&chunk) {
                done |= self.handle_line(&line, &mut result, &progress).await?;
            }
        }
        if let Some(line) = lines.finish() {
            done |= self.handle_line(&line, &mut result, &progress).await?;
        }
        if !done {
            return Err(BrainError(format!("{}: the stream ended before done:true", self.chat)));
        }
        Ok(result)
    }

    async fn health(&self) -> BrainHealth {
        probe(&self.http, &self.tags).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_buffer_handles_any_split() {
        let text = "data: {\"a\":\"é\"}\r\n\ndata: [DONE]\n";
        for split in 0..text.len() {
            let (a, b) = text.as_bytes().split_at(split);
            let mut buf = LineBuffer::default();
            let mut lines = buf.push(a);
            lines.extend(buf.push(b));
            assert_eq!(lines, vec!["data: {\"a\":\"é\"}", "", "data: [DONE]"], "split at {split}");
            assert_eq!(buf.finish(), None);
        }
    }

    #[test]
    fn sse_chunks() {
        let chunk = r#"{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;
        assert_eq!(parse_sse_data(chunk).unwrap(), vec![ChunkEvent::Delta("Hi".into())]);
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
        assert_eq!(
            parse_sse_data(usage).unwrap(),
            vec![ChunkEvent::Usage(Usage { input_tokens: 5, output_tokens: 2, total_tokens: Some(7), cached_input_tokens: None })]
        );
        assert_eq!(parse_sse_data("[DONE]").unwrap(), vec![ChunkEvent::Done]);
        assert_eq!(parse_sse_data(r#"{"error":{"message":"overloaded"}}"#).unwrap(), vec![ChunkEvent::Error("overloaded".into())]);
        assert!(parse_sse_data("{oops").unwrap_err().starts_with("invalid stream chunk"));
    }

    #[test]
    fn ollama_lines() {
        assert_eq!(
            parse_ollama_line(r#"{"message":{"role":"assistant","content":"Hi"},"done":false}"#).unwrap(),
            (Some("Hi".into()), None, false)
        );
        let (_, usage, done) = parse_ollama_line(r#"{"message":{"content":""},"done":true,"prompt_eval_count":9,"eval_count":3}"#).unwrap();
        assert!(done);
        assert_eq!(usage.unwrap().output_tokens, 3);
        assert_eq!(parse_ollama_line(r#"{"error":"model 'x' not found"}"#).unwrap_err(), "model 'x' not found");
    }

    #[test]
    fn context_errors_are_recognised() {
        assert!(context_exceeded(r#"{"error":{"message":"x","code":"context_length_exceeded"}}"#));
        assert!(context_exceeded(r#"{"error":{"message":"This model's maximum context length is 2048 tokens."}}"#));
        assert!(context_exceeded(r#"{"error":"the prompt is 300 tokens; the context length of this model service is 255"}"#));
        assert!(!context_exceeded(r#"{"error":{"message":"temperature must be between 0 and 2"}}"#));
    }

    /// A server whose context holds at most `fits` messages answers 400 with OpenAI's code past it.
    async fn small_context_server(fits: usize) -> (String, std::sync::Arc<std::sync::Mutex<Vec<usize>>>) {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let log = log.clone();
                async move {
                    let n = body["messages"].as_array().map_or(0, Vec::len);
                    log.lock().unwrap().push(n);
                    if n > fits {
                        let e =
                            json!({"error": {"message": "too long", "type": "invalid_request_error", "code": "context_length_exceeded"}});
                        return (StatusCode::BAD_REQUEST, axum::Json(e)).into_response();
                    }
                    let last = body["messages"][n - 1]["content"].as_str().unwrap_or("").to_owned();
                    let chunk = json!({"choices": [{"index": 0, "delta": {"content": format!("re: {last}")}}]});
                    format!("data: {chunk}\n\ndata: [DONE]\n\n").into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, seen)
    }

    #[tokio::test]
    async fn a_conversation_longer_than_the_context_loses_its_oldest_exchanges() {
        let (base, seen) = small_context_server(4).await;
        let brain = OpenAiBrain::new(reqwest::Client::new(), &base, "m");
        let history = (0..6)
            .map(|i| crate::workspace::Message { role: if i % 2 == 0 { "user" } else { "assistant" }.into(), content: format!("m{i}") })
            .collect();
        let request = TurnRequest {
            injection_id: "i".into(),
            system_prompt: Some("be brief".into()),
            history,
            prompt: "now?".into(),
            workspace: std::env::temp_dir(),
        };
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let result = brain.turn(request.clone(), tx.clone()).await.unwrap();
        assert_eq!(result.content, "re: now?");
        // 8 messages, then the oldest 4 of the 6 left out (whole exchanges): system, m4, m5, prompt.
        assert_eq!(*seen.lock().unwrap(), vec![8, 4]);

        // With room for nothing but the system prompt and the prompt, the whole history goes.
        let (base, seen) = small_context_server(2).await;
        let brain = OpenAiBrain::new(reqwest::Client::new(), &base, "m");
        assert_eq!(brain.turn(request.clone(), tx.clone()).await.unwrap().content, "re: now?");
        assert_eq!(*seen.lock().unwrap(), vec![8, 4, 2]);

        // Without even that, the error is the server's.
        let (base, seen) = small_context_server(1).await;
        let brain = OpenAiBrain::new(reqwest::Client::new(), &base, "m");
        let e = brain.turn(request, tx).await.unwrap_err();
        assert!(e.0.contains("400") && e.0.contains("too long"), "{e}");
        assert_eq!(*seen.lock().unwrap(), vec![8, 4, 2]);
    }

    #[test]
    fn error_bodies() {
        assert_eq!(error_message(r#"{"error":{"message":"bad model"}}"#), "bad model");
        assert_eq!(error_message(r#"{"error":"nope"}"#), "nope");
        assert_eq!(error_message("plain"), "plain");
        assert_eq!(error_message(&"é".repeat(400)).chars().count(), 151);
    }
}

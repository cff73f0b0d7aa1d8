//! The model service with the real SmolLM2 weights, through HTTP as clients call it.
//! The model must be in the default models directory (`clawfleet model fetch`; `.ci/run` does it).

use std::sync::Arc;
use std::time::Duration;

use clawfleet_model::files::{self, SMOLLM2};
use clawfleet_model::{EngineConfig, ModelService};
use futures_util::StreamExt;
use serde_json::{Value, json};

struct Served {
    base: String,
    _rt: tokio::runtime::Runtime,
}

fn serve(tune: impl FnOnce(&mut EngineConfig)) -> Served {
    let dir = files::default_models_dir();
    let path = files::locate(&dir, &SMOLLM2).unwrap_or_else(|e| panic!("{e}"));
    let mut config = EngineConfig::new(path);
    config.slots = 8;
    config.slot_context = 1024;
    config.default_max_tokens = Some(64);
    tune(&mut config);
    let service = Arc::new(ModelService::load(config, Some(&SMOLLM2)).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(service.serve(listener, std::future::pending()));
    Served { base, _rt: rt }
}

fn client_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new().post(format!("{base}{path}")).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn post_raw(base: &str, path: &str, body: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// The lines of a streamed body.
async fn lines(base: &str, path: &str, body: Value) -> (u16, Vec<String>) {
    let resp = reqwest::Client::new().post(format!("{base}{path}")).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[test]
fn openai_chat_completions_whole_and_streamed() {
    let s = serve(|_| {});
    client_rt().block_on(async {
        let (status, v) = post(&s.base, "/v1/chat/completions", json!({"model": "smollm2", "messages": user("Say hello."), "max_tokens": 8, "temperature": 0})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "SmolLM2-135M-Instruct");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        let answer = v["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
        assert!(!answer.is_empty());
        let u = &v["usage"];
        assert!(u["prompt_tokens"].as_u64().unwrap() > 5);
        assert!(u["completion_tokens"].as_u64().unwrap() <= 8);
        assert_eq!(u["total_tokens"].as_u64(), Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()));

        // The same request streamed gives the same greedy answer, in SSE chunks.
        let (status, ls) = lines(&s.base, "/v1/chat/completions", json!({"model": "default", "messages": user("Say hello."), "max_tokens": 8, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}})).await;
        assert_eq!(status, 200);
        assert_eq!(ls.last().unwrap(), "data: [DONE]");
        let chunks: Vec<Value> = ls[..ls.len() - 1].iter().map(|l| serde_json::from_str(l.strip_prefix("data: ").unwrap()).unwrap()).collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
        let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(streamed, answer);
        let finish = chunks.iter().find_map(|c| c["choices"][0]["finish_reason"].as_str()).unwrap();
        assert!(finish == "stop" || finish == "length");
        assert_eq!(chunks.last().unwrap()["choices"], json!([]), "the usage chunk has no choices");
        assert!(chunks.last().unwrap()["usage"]["completion_tokens"].as_u64().is_some());

        let resp: Value = reqwest::get(format!("{}/v1/models", s.base)).await.unwrap().json().await.unwrap();
        assert_eq!(resp["data"][0]["id"], "SmolLM2-135M-Instruct");
    });
}

#[test]
fn a_conversation_reads_only_what_is_new_and_answers_the_same() {
    let s = serve(|_| {});
    client_rt().block_on(async {
        let turn2 = json!([
            {"role": "user", "content": "Tell me about cats."},
            {"role": "assistant", "content": "Cats are small furry animals."},
            {"role": "user", "content": "And dogs?"},
        ]);
        let req = |messages: &Value| json!({"model": "smollm2", "messages": messages, "max_tokens": 6, "temperature": 0});
        let cached = |v: &Value| v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
        // Cold: nothing cached.
        let (_, cold) = post(&s.base, "/v1/chat/completions", req(&turn2)).await;
        assert_eq!(cached(&cold), 0, "{cold}");
        // The first turn alone starts like it: found in the cache.
        let (_, first) = post(&s.base, "/v1/chat/completions", req(&user("Tell me about cats."))).await;
        let first_prompt = first["usage"]["prompt_tokens"].as_u64().unwrap();
        assert_eq!(cached(&first), first_prompt - 1, "all but the last prompt token: {first}");
        // The second turn again: the first turn's tokens come from the cache, the answer is the same.
        let (_, warm) = post(&s.base, "/v1/chat/completions", req(&turn2)).await;
        assert!(cached(&warm) >= first_prompt - 1, "{warm}");
        assert_eq!(warm["choices"][0]["message"]["content"], cold["choices"][0]["message"]["content"]);
        // Ollama counts the prompt tokens it computed.
        let (_, v) =
            post(&s.base, "/api/chat", json!({"model": "smollm2", "messages": turn2, "stream": false, "options": {"num_predict": 2}}))
                .await;
        assert!(v["prompt_eval_count"].as_u64().unwrap() < warm["usage"]["prompt_tokens"].as_u64().unwrap(), "{v}");
        let metrics = reqwest::get(format!("{}/metrics", s.base)).await.unwrap().text().await.unwrap();
        assert!(metric(&metrics, "clawfleet_model_prompt_cached_tokens_total") > first_prompt, "{metrics}");
    });
}

#[test]
fn sampling_controls_work() {
    let s = serve(|_| {});
    client_rt().block_on(async {
        let req = |seed: i64| json!({"model": "smollm2", "messages": user("Tell me a short story."), "max_tokens": 12, "temperature": 0.9, "seed": seed});
        let a = post(&s.base, "/v1/chat/completions", req(7)).await.1;
        let b = post(&s.base, "/v1/chat/completions", req(7)).await.1;
        assert_eq!(a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"], "the same seed gives the same text");
        // The budget is honoured.
        assert_eq!(a["usage"]["completion_tokens"], 12);
        assert_eq!(a["choices"][0]["finish_reason"], "length");
        // A stop sequence ends the text before it.
        let (_, v) = post(&s.base, "/api/generate", json!({"model": "smollm2", "prompt": "1, 2, 3, 4, 5,", "raw": true, "stream": false, "options": {"temperature": 0, "num_predict": 24, "stop": [" 8"]}})).await;
        let text = v["response"].as_str().unwrap();
        assert!(!text.contains(" 8"), "{text:?}");
        assert!(text.contains('7'), "it counted up to the stop: {text:?}");
        assert_eq!(v["done_reason"], "stop");
    });
}

#[test]
fn ollama_chat_generate_and_tags() {
    let s = serve(|_| {});
    client_rt().block_on(async {
        // Streams by default, NDJSON, the last line done with counts.
        let (status, ls) = lines(
            &s.base,
            "/api/chat",
            json!({"model": "smollm2:135m", "messages": user("Hi!"), "options": {"num_predict": 6, "temperature": 0}}),
        )
        .await;
        assert_eq!(status, 200);
        let objs: Vec<Value> = ls.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        let last = objs.last().unwrap();
        assert_eq!(last["done"], true);
        assert!(last["eval_count"].as_u64().unwrap() <= 6 && last["prompt_eval_count"].as_u64().unwrap() > 0);
        assert!(objs[..objs.len() - 1].iter().all(|o| o["done"] == false && o["message"]["role"] == "assistant"));
        let (status, v) = post(
            &s.base,
            "/api/generate",
            json!({"model": "smollm2", "prompt": "Hi!", "system": "Be brief.", "stream": false, "options": {"num_predict": 4}}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["done"], true);
        assert!(v["response"].is_string() && v["eval_duration"].as_u64().is_some());
        let tags: Value = reqwest::get(format!("{}/api/tags", s.base)).await.unwrap().json().await.unwrap();
        assert_eq!(tags["models"][0]["name"], "SmolLM2-135M-Instruct");
        assert_eq!(tags["models"][0]["size"], 98_362_432);
    });
}

#[test]
fn bad_requests_get_each_apis_error_shape_and_the_service_goes_on() {
    let s = serve(|c| c.slot_context = 256);
    client_rt().block_on(async {
        let oa = |status: u16, v: &Value, param: Option<&str>, starts: &str| {
            assert!(v["error"]["message"].as_str().unwrap().starts_with(starts), "{v}");
            assert!(v["error"]["type"].is_string(), "{v}");
            assert_eq!(v["error"]["param"].as_str(), param, "{v}");
            status
        };
        let (st, v) = post_raw(&s.base, "/v1/chat/completions", "{nope").await;
        assert_eq!(oa(st, &v, None, "invalid json:"), 400);
        let (st, v) = post_raw(&s.base, "/v1/chat/completions", r#"{"model":"smollm2"}"#).await;
        assert_eq!(oa(st, &v, None, "invalid request body: missing field `messages`"), 400);
        // Like Ollama, a body sent without a JSON content type (`curl -d`) is still read.
        let resp = reqwest::Client::new()
            .post(format!("{}/api/generate", s.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(r#"{"model":"smollm2","prompt":"Hi","stream":false,"options":{"num_predict":2}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (st, v) = post(&s.base, "/v1/chat/completions", json!({"model": "gpt-9", "messages": user("x")})).await;
        assert_eq!(oa(st, &v, Some("model"), "The model 'gpt-9' does not exist"), 404);
        assert_eq!(v["error"]["code"], "model_not_found");
        let (st, v) = post(&s.base, "/v1/chat/completions", json!({"model": "smollm2", "messages": user("x"), "temperature": 9})).await;
        assert_eq!(oa(st, &v, Some("temperature"), "temperature must be between 0 and 2, got 9"), 400);
        let (st, v) = post(&s.base, "/v1/chat/completions", json!({"model": "smollm2", "messages": user(&"word ".repeat(400))})).await;
        assert_eq!(oa(st, &v, Some("messages"), "the prompt is"), 400);
        assert_eq!(v["error"]["code"], "context_length_exceeded");
        // Ollama's shape.
        let (st, v) = post_raw(&s.base, "/api/chat", "[]").await;
        assert_eq!(st, 400);
        assert!(v["error"].as_str().unwrap().starts_with("invalid request body"), "{v}");
        let (st, v) = post(&s.base, "/api/generate", json!({"model": "llama3", "prompt": "x"})).await;
        assert_eq!((st, v["error"].as_str().unwrap().starts_with("model 'llama3' not found")), (404, true), "{v}");
        let (st, v) = post(&s.base, "/api/chat", json!({"model": "smollm2", "messages": user("x"), "options": {"num_predict": 0}})).await;
        assert_eq!(st, 400, "{v}");
        // Still serving.
        let (st, _) = post(&s.base, "/v1/chat/completions", json!({"model": "smollm2", "messages": user("ok?"), "max_tokens": 2})).await;
        assert_eq!(st, 200);
    });
}

#[test]
fn many_streams_at_once_share_the_model() {
    let s = serve(|_| {});
    client_rt().block_on(async {
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let base = s.base.clone();
                tokio::spawn(async move {
                    let body = json!({"model": "smollm2", "messages": user(&format!("Count to {i}.")), "max_tokens": 16, "temperature": 0, "stream": true});
                    let (status, ls) = lines(&base, "/v1/chat/completions", body).await;
                    assert_eq!(status, 200);
                    assert_eq!(ls.last().map(String::as_str), Some("data: [DONE]"));
                    ls.len()
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap() >= 3);
        }
        let metrics = reqwest::get(format!("{}/metrics", s.base)).await.unwrap().text().await.unwrap();
        let steps: u64 = metric(&metrics, "clawfleet_model_steps_total");
        let tokens: u64 = metric(&metrics, "clawfleet_model_completion_tokens_total");
        assert!(steps < tokens, "batched: {steps} forward passes for {tokens} tokens");
    });
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_full_service_refuses_with_429_and_503_and_a_gone_client_frees_its_slot() {
    let s = serve(|c| {
        c.slots = 1;
        c.queue = 1;
    });
    client_rt().block_on(async {
        let long = json!({"model": "smollm2", "messages": user("Write a very long story."), "max_tokens": 2000, "temperature": 0.8, "stream": true});
        // One running, one waiting…
        let mut first = reqwest::Client::new().post(format!("{}/v1/chat/completions", s.base)).json(&long).send().await.unwrap().bytes_stream();
        first.next().await.unwrap().unwrap();
        let base = s.base.clone();
        let second = tokio::spawn({
            let long = long.clone();
            async move { reqwest::Client::new().post(format!("{base}/v1/chat/completions")).json(&long).send().await.unwrap().status().as_u16() }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // …and the third is refused, in each API's way.
        let (st, v) = post(&s.base, "/v1/chat/completions", json!({"model": "smollm2", "messages": user("x"), "max_tokens": 2})).await;
        assert_eq!(st, 429, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().starts_with("the model service is busy"), "{v}");
        let (st, v) = post(&s.base, "/api/chat", json!({"model": "smollm2", "messages": user("x"), "stream": false})).await;
        assert_eq!(st, 503, "{v}");
        // The first client goes away: its slot is freed and the waiting request runs.
        drop(first);
        assert_eq!(tokio::time::timeout(Duration::from_secs(60), second).await.unwrap().unwrap(), 200);
        let metrics = reqwest::get(format!("{}/metrics", s.base)).await.unwrap().text().await.unwrap();
        assert!(metric(&metrics, "clawfleet_model_cancelled_total") >= 1, "{metrics}");
        assert_eq!(metric(&metrics, "clawfleet_model_refused_total"), 2);
    });
}

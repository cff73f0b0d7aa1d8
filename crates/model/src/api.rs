//! The model service's HTTP API, as stock clients call it: OpenAI (`/v1/chat/completions`,
//! streamed as server-sent events or not; `/v1/models`) and Ollama (`/api/chat`,
//! `/api/generate`, streamed as NDJSON or not; `/api/tags`). Each API answers errors in its own
//! shape: OpenAI `{"error":{"message","type","param","code"}}`, Ollama `{"error":"…"}`.
//! A client that disconnects cancels its request.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clawfleet_core::generation::{self, Generation, GenerationError};
use clawfleet_proto::model::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice, ChunkChoice, Delta, ModelCard, ModelList,
    OllamaChatChunk, OllamaChatRequest, OllamaGenerateChunk, OllamaGenerateRequest, OllamaMessage, OllamaModel, OllamaStats, OllamaTags,
    OpenAiError, OpenAiErrorBody, OpenAiUsage, PromptTokensDetails,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::ModelService;
use crate::engine::{GenerateError, Output, Refused, Summary};

/// Which API a request came in on, for the shape of its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Ollama,
}

/// An error in the caller's API shape.
#[derive(Debug)]
struct ModelError {
    api: Api,
    status: StatusCode,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    message: String,
}

impl ModelError {
    fn new(api: Api, status: StatusCode, kind: &'static str, message: impl Into<String>) -> ModelError {
        ModelError { api, status, kind, param: None, code: None, message: message.into() }
    }

    fn invalid(api: Api, e: GenerationError) -> ModelError {
        ModelError {
            param: e.param.map(str::to_owned),
            ..ModelError::new(api, StatusCode::BAD_REQUEST, "invalid_request_error", e.message)
        }
    }

    fn refused(api: Api, r: Refused) -> ModelError {
        match r {
            Refused::Busy { .. } => {
                let status = if api == Api::OpenAi { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::SERVICE_UNAVAILABLE };
                ModelError { code: Some("server_busy"), ..ModelError::new(api, status, "server_busy", r.to_string()) }
            }
            Refused::Stopped(_) => ModelError::new(api, StatusCode::SERVICE_UNAVAILABLE, "server_error", r.to_string()),
        }
    }

    fn failed(api: Api, e: GenerateError) -> ModelError {
        match e {
            GenerateError::PromptTooLong { .. } => ModelError {
                code: Some("context_length_exceeded"),
                param: Some("messages".into()),
                ..ModelError::new(api, StatusCode::BAD_REQUEST, "invalid_request_error", e.to_string())
            },
            other => ModelError::new(api, StatusCode::INTERNAL_SERVER_ERROR, "server_error", other.to_string()),
        }
    }
}

impl IntoResponse for ModelError {
    fn into_response(self) -> Response {
        match self.api {
            Api::OpenAi => {
                let body = OpenAiError {
                    error: OpenAiErrorBody {
                        message: self.message,
                        kind: self.kind.into(),
                        param: self.param,
                        code: self.code.map(str::to_owned),
                    },
                };
                (self.status, Json(body)).into_response()
            }
            Api::Ollama => (self.status, Json(serde_json::json!({ "error": self.message }))).into_response(),
        }
    }
}

/// Reads a JSON body whatever its Content-Type says: clients of these APIs (Ollama's own docs
/// among them, with `curl -d`) do not always send `application/json`.
async fn json_body<T: serde::de::DeserializeOwned>(api: Api, req: Request) -> Result<T, ModelError> {
    let bytes = Bytes::from_request(req, &()).await.map_err(|e| {
        ModelError::new(api, StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", format!("request body rejected: {}", e.body_text()))
    })?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value = T::deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    value.map_err(|e| {
        let message = match e.classify() {
            serde_json::error::Category::Data => format!("invalid request body: {e}"),
            _ => format!("invalid json: {e}"),
        };
        ModelError::new(api, StatusCode::BAD_REQUEST, "invalid_request_error", message)
    })
}

/// A JSON body whose rejection is answered in the OpenAI shape.
struct OpenAiJson<T>(T);
/// A JSON body whose rejection is answered in the Ollama shape.
struct OllamaJson<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for OpenAiJson<T> {
    type Rejection = ModelError;
    async fn from_request(req: Request, _: &S) -> Result<Self, ModelError> {
        json_body(Api::OpenAi, req).await.map(OpenAiJson)
    }
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for OllamaJson<T> {
    type Rejection = ModelError;
    async fn from_request(req: Request, _: &S) -> Result<Self, ModelError> {
        json_body(Api::Ollama, req).await.map(OllamaJson)
    }
}

pub(crate) fn router(service: Arc<ModelService>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/models", get(openai_models))
        .route("/api/chat", post(ollama_chat))
        .route("/api/generate", post(ollama_generate))
        .route("/api/tags", get(ollama_tags))
        .route("/api/version", get(|| async { Json(serde_json::json!({"version": env!("CARGO_PKG_VERSION")})) }))
        .route("/metrics", get(metrics))
        .route("/", get(|| async { "clawfleet model service is running" }))
        .fallback(|req: Request| async move {
            let api = if req.uri().path().starts_with("/api/") { Api::Ollama } else { Api::OpenAi };
            ModelError::new(api, StatusCode::NOT_FOUND, "invalid_request_error", format!("no such endpoint: {}", req.uri().path()))
        })
        .layer(axum::extract::DefaultBodyLimit::max(4 * 1024 * 1024))
        .with_state(service)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// Checks the model name and queues the request; waits until it is admitted (or refused), so
/// that errors get a proper status before any streaming starts.
async fn start(service: &ModelService, api: Api, g: &Generation) -> Result<(mpsc::UnboundedReceiver<Output>, u32), ModelError> {
    if !service.serves(&g.model) {
        let message = match api {
            Api::OpenAi => format!("The model '{}' does not exist; this service has '{}' (see /v1/models)", g.model, service.name()),
            Api::Ollama => format!("model '{}' not found; this service has '{}' (see /api/tags)", g.model, service.name()),
        };
        return Err(ModelError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..ModelError::new(api, StatusCode::NOT_FOUND, "invalid_request_error", message)
        });
    }
    let mut rx = service.engine.submit(g.prompt.clone(), g.sampling.clone()).map_err(|r| ModelError::refused(api, r))?;
    match rx.recv().await {
        Some(Output::Started { prompt_tokens }) => Ok((rx, prompt_tokens)),
        Some(Output::Failed(e)) => Err(ModelError::failed(api, e)),
        Some(other) => {
            Err(ModelError::new(api, StatusCode::INTERNAL_SERVER_ERROR, "server_error", format!("unexpected engine output {other:?}")))
        }
        None => Err(ModelError::new(api, StatusCode::SERVICE_UNAVAILABLE, "server_error", "the model engine stopped")),
    }
}

/// Collects a whole answer.
async fn collect(api: Api, mut rx: mpsc::UnboundedReceiver<Output>) -> Result<(String, Summary), ModelError> {
    let mut text = String::new();
    while let Some(out) = rx.recv().await {
        match out {
            Output::Text(t) => text.push_str(&t),
            Output::Done(summary) => return Ok((text, summary)),
            Output::Failed(e) => return Err(ModelError::failed(api, e)),
            Output::Started { .. } => {}
        }
    }
    Err(ModelError::new(api, StatusCode::SERVICE_UNAVAILABLE, "server_error", "the model engine stopped"))
}

/// What a streamed answer is made of, whatever the API.
enum Piece {
    Text(String),
    Done(Summary),
    Failed(String),
}

fn pieces(rx: mpsc::UnboundedReceiver<Output>) -> impl futures_util::Stream<Item = Piece> + Send + 'static {
    futures_util::stream::unfold((rx, false), |(mut rx, ended)| async move {
        if ended {
            return None;
        }
        loop {
            match rx.recv().await {
                Some(Output::Text(t)) => return Some((Piece::Text(t), (rx, false))),
                Some(Output::Done(s)) => return Some((Piece::Done(s), (rx, true))),
                Some(Output::Failed(e)) => return Some((Piece::Failed(e.to_string()), (rx, true))),
                Some(Output::Started { .. }) => continue,
                None => return Some((Piece::Failed("the model engine stopped".into()), (rx, true))),
            }
        }
    })
}

fn streaming(content_type: &'static str, body: impl futures_util::Stream<Item = Bytes> + Send + 'static) -> Response {
    let mut resp = Response::new(Body::from_stream(body.map(Ok::<_, std::convert::Infallible>)));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn usage(s: &Summary) -> OpenAiUsage {
    OpenAiUsage {
        prompt_tokens: u64::from(s.prompt_tokens),
        completion_tokens: u64::from(s.completion_tokens),
        total_tokens: u64::from(s.prompt_tokens + s.completion_tokens),
        prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: u64::from(s.cached_tokens) }),
    }
}

async fn openai_chat(
    State(service): State<Arc<ModelService>>,
    OpenAiJson(req): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ModelError> {
    let g = generation::from_openai(&req).map_err(|e| ModelError::invalid(Api::OpenAi, e))?;
    let (rx, _) = start(&service, Api::OpenAi, &g).await?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let created = unix_now();
    let model = service.name().to_owned();
    if !g.stream {
        let (text, summary) = collect(Api::OpenAi, rx).await?;
        let body = ChatCompletion {
            id,
            object: "chat.completion".into(),
            created,
            model,
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage { role: "assistant".into(), content: text },
                finish_reason: summary.finish.as_str().into(),
            }],
            usage: usage(&summary),
        };
        return Ok(Json(body).into_response());
    }
    let include_usage = g.include_usage;
    let chunk = move |delta: Delta, finish: Option<String>, usage: Option<OpenAiUsage>| {
        let choices = if usage.is_some() && finish.is_none() && delta == Delta::default() {
            vec![]
        } else {
            vec![ChunkChoice { index: 0, delta, finish_reason: finish }]
        };
        let c =
            ChatCompletionChunk { id: id.clone(), object: "chat.completion.chunk".into(), created, model: model.clone(), choices, usage };
        Bytes::from(format!("data: {}\n\n", serde_json::to_string(&c).expect("chunks serialize")))
    };
    let first = futures_util::stream::once({
        let bytes = chunk(Delta { role: Some("assistant".into()), content: Some(String::new()) }, None, None);
        async move { bytes }
    });
    let body = pieces(rx).flat_map(move |p| {
        let out: Vec<Bytes> = match p {
            Piece::Text(t) => vec![chunk(Delta { role: None, content: Some(t) }, None, None)],
            Piece::Done(s) => {
                let mut v = vec![chunk(Delta::default(), Some(s.finish.as_str().into()), None)];
                if include_usage {
                    v.push(chunk(Delta::default(), None, Some(usage(&s))));
                }
                v.push(Bytes::from_static(b"data: [DONE]\n\n"));
                v
            }
            Piece::Failed(message) => {
                let e = OpenAiError { error: OpenAiErrorBody { message, kind: "server_error".into(), param: None, code: None } };
                vec![Bytes::from(format!("data: {}\n\n", serde_json::to_string(&e).expect("errors serialize")))]
            }
        };
        futures_util::stream::iter(out)
    });
    Ok(streaming("text/event-stream", first.chain(body)))
}

async fn openai_models(State(service): State<Arc<ModelService>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: service.name().into(),
            object: "model".into(),
            created: service.loaded_at,
            owned_by: "clawfleet".into(),
        }],
    })
}

fn ollama_stats(s: &Summary) -> OllamaStats {
    let nanos = |d: Duration| d.as_nanos() as u64;
    OllamaStats {
        done_reason: s.finish.as_str().into(),
        total_duration: nanos(s.queued + s.prompt_time + s.generation_time),
        load_duration: 0,
        // As Ollama counts: the prompt tokens computed, not those found in the cache.
        prompt_eval_count: u64::from(s.prompt_tokens - s.cached_tokens),
        prompt_eval_duration: nanos(s.prompt_time),
        eval_count: u64::from(s.completion_tokens),
        eval_duration: nanos(s.generation_time),
    }
}

fn ndjson<T: serde::Serialize>(value: &T) -> Bytes {
    let mut line = serde_json::to_vec(value).expect("chunks serialize");
    line.push(b'\n');
    Bytes::from(line)
}

fn ollama_error_line(message: String) -> Bytes {
    ndjson(&serde_json::json!({ "error": message }))
}

async fn ollama_chat(
    State(service): State<Arc<ModelService>>,
    OllamaJson(req): OllamaJson<OllamaChatRequest>,
) -> Result<Response, ModelError> {
    let g = generation::from_ollama_chat(&req).map_err(|e| ModelError::invalid(Api::Ollama, e))?;
    let (rx, _) = start(&service, Api::Ollama, &g).await?;
    let model = req.model.clone();
    let line = move |content: String, stats: Option<OllamaStats>| OllamaChatChunk {
        model: model.clone(),
        created_at: rfc3339_now(),
        message: OllamaMessage { role: "assistant".into(), content },
        done: stats.is_some(),
        stats,
    };
    if !g.stream {
        let (text, summary) = collect(Api::Ollama, rx).await?;
        return Ok(Json(line(text, Some(ollama_stats(&summary)))).into_response());
    }
    let body = pieces(rx).map(move |p| match p {
        Piece::Text(t) => ndjson(&line(t, None)),
        Piece::Done(s) => ndjson(&line(String::new(), Some(ollama_stats(&s)))),
        Piece::Failed(message) => ollama_error_line(message),
    });
    Ok(streaming("application/x-ndjson", body))
}

async fn ollama_generate(
    State(service): State<Arc<ModelService>>,
    OllamaJson(req): OllamaJson<OllamaGenerateRequest>,
) -> Result<Response, ModelError> {
    let g = generation::from_ollama_generate(&req).map_err(|e| ModelError::invalid(Api::Ollama, e))?;
    let (rx, _) = start(&service, Api::Ollama, &g).await?;
    let model = req.model.clone();
    let line = move |response: String, stats: Option<OllamaStats>| OllamaGenerateChunk {
        model: model.clone(),
        created_at: rfc3339_now(),
        response,
        done: stats.is_some(),
        stats,
    };
    if !g.stream {
        let (text, summary) = collect(Api::Ollama, rx).await?;
        return Ok(Json(line(text, Some(ollama_stats(&summary)))).into_response());
    }
    let body = pieces(rx).map(move |p| match p {
        Piece::Text(t) => ndjson(&line(t, None)),
        Piece::Done(s) => ndjson(&line(String::new(), Some(ollama_stats(&s)))),
        Piece::Failed(message) => ollama_error_line(message),
    });
    Ok(streaming("application/x-ndjson", body))
}

async fn ollama_tags(State(service): State<Arc<ModelService>>) -> Json<OllamaTags> {
    let info = service.engine.info();
    Json(OllamaTags {
        models: vec![OllamaModel {
            name: service.name().into(),
            model: service.name().into(),
            modified_at: humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(service.loaded_at)).to_string(),
            size: info.size,
            digest: service.digest.clone(),
            details: serde_json::json!({
                "format": "gguf",
                "family": "llama",
                "parameter_size": format!("{}M", info.params / 1_000_000),
                "quantization_level": if info.file.contains("Q4_1") { "Q4_1" } else { "unknown" },
            }),
        }],
    })
}

/// `GET /metrics`: the engine's counters, its queue and slots, and time to first token, in
/// OpenMetrics for a scraper that asks for it (Prometheus), else the classic text format.
/// Tokens per second are `rate(clawfleet_model_completion_tokens_total[1m])`.
async fn metrics(State(service): State<Arc<ModelService>>, headers: HeaderMap) -> Response {
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Unit;
    let s = service.engine.stats().clone();
    let info = service.engine.info();
    let mut r = prometheus_client::registry::Registry::with_prefix("clawfleet_model");
    r.register("requests", "Generation requests accepted", s.requests);
    r.register("refused", "Requests refused because the service was busy", s.refused);
    r.register("cancelled", "Requests whose client went away", s.cancelled);
    r.register("prompt_tokens", "Prompt tokens computed", s.prompt_tokens);
    r.register("prompt_cached_tokens", "Prompt tokens found in a slot's cache, not computed again", s.cached_tokens);
    r.register("completion_tokens", "Tokens generated", s.completion_tokens);
    r.register("steps", "Forward passes", s.steps);
    r.register("active", "Sequences being generated: slots busy", s.active);
    r.register("waiting", "Requests waiting for a sequence slot: the queue", s.waiting);
    r.register_with_unit("time_to_first_token", "From a request's arrival to its first token, its wait included", Unit::Seconds, s.ttft);
    r.register_with_unit("queue_wait", "A request's wait for a sequence slot", Unit::Seconds, s.queued);
    let constant = |v: u64| {
        let g: Gauge = Gauge::default();
        g.set(v as i64);
        g
    };
    r.register("slots", "Sequences generated together at most", constant(u64::from(info.slots)));
    r.register("slot_context_tokens", "Context of each slot: the longest request", constant(u64::from(info.max_request_tokens)));
    r.register("kv_cache_bytes", "Memory of the KV cache, allocated up front", constant(info.kv_bytes()));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).expect("writing to a String");
    let openmetrics = clawfleet_proto::exposition::wants_openmetrics(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let (kind, body) = match openmetrics {
        true => (clawfleet_proto::exposition::OPENMETRICS, out),
        false => (clawfleet_proto::exposition::TEXT, clawfleet_proto::exposition::classic(&out)),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

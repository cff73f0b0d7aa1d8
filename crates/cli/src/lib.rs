//! The `clawfleet` command.
//!
//! `main` parses arguments (clap, exit 2 on bad usage), picks a runtime (a single thread for
//! agent runtimes, to keep them small; multi-threaded for the rest), runs the command, and
//! maps its result to the exit status, printing the whole error chain on one line.

/// `println!` for command output, except that a reader gone away (`clawfleet logs | head`) ends
/// the process quietly, as Unix tools do, instead of panicking.
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for command output, like [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

mod agent;
mod apply;
mod approvals;
mod args;
pub mod client;
mod council;
mod deploy;
mod docker;
mod fleet;
mod import;
mod mailbox;
mod model;
mod output;
mod project;
mod queue;
mod rack;
pub mod router;
mod snapshot;
mod talk;
mod token;
mod up;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, ClientArgs, Command};

pub fn main() -> ExitCode {
    let mut cli = Cli::parse();
    match &mut cli.command {
        Command::BrainExec(a) => return agent::brain_exec(a),
        // Before the runtime starts any thread: Landlock confines only the calling thread and
        // what it starts afterwards.
        Command::Agent(a) => {
            // Its memory will hold its bus password and API token: a process of its own uid (a
            // brain of an agent sandboxed by uid, or on a cluster) may not read it.
            if let Err(e) = nix::sys::prctl::set_dumpable(false) {
                eprintln!("error: cannot keep this agent's memory private: {e}");
                return ExitCode::FAILURE;
            }
            if let Err(e) = agent::read_key_file(a).and_then(|()| agent::confine(a)) {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        }
        _ => {}
    }
    let (filter, single_thread) = match &cli.command {
        Command::Up(_) => ("info,rmqtt=warn,rmqtt_net=warn,rmqtt_codec=warn", false),
        Command::Agent(_) => ("info", true),
        Command::BrainExec(_) => unreachable!("handled above"),
        Command::Router(_) => ("info", false),
        _ => ("warn", false),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match cli.log_format {
        args::LogFormat::Text => logs.with_ansi(ansi).init(),
        args::LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
    }

    let runtime = if single_thread {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(a) => up::up(a).await,
        Command::Launch(a) => fleet::launch(a).await,
        Command::Ls(a) => fleet::ls(a).await,
        Command::Status(a) => fleet::status(a).await,
        Command::Inject(a) => talk::inject(a).await,
        Command::Attach(a) => talk::attach(a).await,
        Command::Logs(a) => talk::logs(a).await,
        Command::Command(a) => talk::command(a).await,
        Command::Scale(a) => fleet::scale(a).await,
        Command::Update(a) => fleet::update(a).await,
        Command::Diff(a) => apply::diff(a).await,
        Command::Apply(a) => apply::apply(a).await,
        Command::Import(a) => import::run(a),
        Command::Deploy(a) => deploy::run(a).await,
        Command::History(a) => deploy::history(a).await,
        Command::Rollback(a) => fleet::rollback(a).await,
        Command::Leader(a) => fleet::leader(a).await,
        Command::Chat(a) => fleet::chat(a).await,
        Command::Arm(a) => fleet::arm(a).await,
        Command::Scenario(a) => fleet::scenario(a).await,
        Command::Scoreboard(a) => fleet::scoreboard(a).await,
        Command::Haiku(a) => fleet::haiku(a).await,
        Command::Chime(a) => fleet::chime(a).await,
        Command::Council(c) => council::run(c).await,
        Command::Queue(c) => queue::run(c).await,
        Command::Approvals(c) => approvals::run(c).await,
        Command::Snapshot(a) => snapshot::run(a).await,
        Command::Restore(a) => snapshot::restore(a).await,
        Command::Racks(a) => rack::racks(a).await,
        Command::Migrate(a) => rack::migrate(a).await,
        Command::Migrations(a) => rack::migrations(a).await,
        Command::Project(c) => project::run(c).await,
        Command::Image(crate::args::ImageCommand::Build(a)) => docker::image_build(a).await,
        Command::Discover(a) => docker::discover(a).await,
        Command::Terminate(a) => fleet::terminate(a).await,
        Command::Monitor(a) => talk::monitor(a).await,
        Command::Audit(a) => fleet::audit(a).await,
        Command::Router(a) => router::run(a).await,
        Command::Token(c) => token::run(c).await,
        Command::Secret(c) => token::secret(c).await,
        Command::Certs(a) => token::certs(a),
        Command::Bus(crate::args::BusCommand::Credentials(a)) => token::bus_credentials(a).await,
        Command::Bus(crate::args::BusCommand::Config(a)) => token::bus_config(a),
        Command::Mailbox(crate::args::MailboxCommand::Follow(a)) => mailbox::follow(a).await,
        Command::Agent(a) => agent::run(a).await,
        Command::BrainExec(_) => unreachable!("runs before the runtime"),
        Command::Model(c) => model::run(c).await,
    }
}

/// Resolves when the process is asked to stop (SIGTERM or SIGINT).
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

impl ClientArgs {
    pub(crate) fn client(&self) -> anyhow::Result<client::Client> {
        client::Client::locate(&client::Locator {
            server: self.server.clone(),
            token: self.token.clone(),
            data: self.data.clone(),
            cacert: self.cacert.clone(),
        })
    }
}

//! The agent's event loop: one task, one closed set of inputs ([`Input`]), read in one place.
//!
//! Inputs: the bus (connection changes and directives), its own brain's progress and results,
//! a heartbeat tick (which also runs the watchdog), and the shutdown signal. Turns run one at
//! a time in a task of their own; every event is journaled before it is published; every
//! accepted injection ends with `turn_complete`, `agent_error` or `inject_failed`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clawfleet_bus::client::{self, BusEvent, ClientConfig, Will};
use clawfleet_core::{BrainSpec, CommandName, council, scenario};
use clawfleet_proto::bus::{self as wire, AgentActivity, BrainStatus, Directive, Heartbeat};
use clawfleet_proto::event::EventBody;
use clawfleet_proto::mailbox::InboxItem;
use clawfleet_proto::scenario::{Chooser, Play, Rps};
use clawfleet_proto::topic::{self, Channel};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::brain::{self, Brain, BrainError, BrainHealth, Progress, TurnRequest, TurnResult};
use crate::config::AgentConfig;
use crate::link::{Inbound, Link, Outbox, Transport};
use crate::workspace::{Accepted, Workspace};

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot open the workspace {path}: {source}")]
    Workspace { path: String, source: std::io::Error },
    #[error("the bus connection task stopped unexpectedly")]
    BusGone,
    #[error("cannot use the mailbox: {0}")]
    Mailbox(#[from] clawfleet_mailbox::MailboxError),
}

/// Everything the loop reacts to.
enum Input {
    Bus(BusEvent),
    Inbox(Inbound),
    /// Everything the agent's own tasks sent since the last look, in order.
    Internal(Vec<Internal>),
    Tick,
    Shutdown,
}

/// Messages from the agent's own tasks.
enum Internal {
    Progress {
        turn: u64,
        progress: Progress,
    },
    Done {
        turn: u64,
        result: Result<TurnResult, BrainError>,
    },
    /// A scenario's play went through the brain: its answer, or why not.
    Played {
        play: Play,
        answer: Result<String, String>,
    },
    /// A health probe finished; `reply_to` is the health-check command that asked, if any.
    Health {
        health: BrainHealth,
        reply_to: Option<String>,
    },
}

struct Turn {
    no: u64,
    injection_id: String,
    prompt: String,
    last_output: Instant,
    handle: JoinHandle<()>,
    /// The approval it waits for before its brain runs (the watchdog leaves it be meanwhile).
    awaiting: Option<(String, oneshot::Sender<Answer>)>,
}

/// An approval's answer: yes or no, and the decision word that came with it.
type Answer = (bool, Option<String>);

struct Agent {
    config: AgentConfig,
    ws: Workspace,
    brain: Arc<dyn Brain>,
    brain_spec: BrainSpec,
    system_prompt: Option<String>,
    /// The council roles it declares it can take (none: its brain chooses).
    capabilities: Vec<String>,
    health: BrainHealth,
    http: reqwest::Client,
    link: Link,
    activity: AgentActivity,
    queue: VecDeque<(String, String)>,
    current: Option<Turn>,
    turns: u64,
    turns_completed: u64,
    turns_failed: u64,
    started: Instant,
    internal: mpsc::Sender<Internal>,
    /// Whether the bus connection has ever come up (the health check wants it).
    connected_once: bool,
    /// The plays seen lately (each is played once), and how many are with the brain now.
    plays_seen: VecDeque<String>,
    plays_running: usize,
    /// The approvals answered lately (an answer sent again is taken once).
    approvals_taken: VecDeque<String>,
    /// When the next heartbeat is due; state changes bring it forward.
    next_beat: tokio::time::Instant,
    last_beat: tokio::time::Instant,
}

/// The closest two heartbeats may be: state changes within it share one heartbeat.
const MIN_BEAT_GAP: Duration = Duration::from_millis(200);
/// Plays remembered, so a redelivered one is not played twice.
const PLAYS_REMEMBERED: usize = 256;
/// Plays with the brain at once; more are answered without it (a random move) or dropped.
const MAX_PLAYS_RUNNING: usize = 4;
/// The longest a play waits for the brain.
const PLAY_TIMEOUT: Duration = Duration::from_secs(120);
/// Approvals remembered as answered.
const APPROVALS_REMEMBERED: usize = 64;

/// A move from a brain's answer, else a random one.
fn rps_move(round: u64, epoch: Option<u64>, answer: &Result<String, String>) -> EventBody {
    let (choice, by) = match answer.as_deref().ok().and_then(scenario::parse_move) {
        Some(choice) => (choice, Chooser::Brain),
        None => {
            let r = u32::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..4].try_into().expect("4 bytes"));
            (Rps::ALL[r as usize % Rps::ALL.len()], Chooser::Random)
        }
    };
    EventBody::RpsMove { round, choice, by, epoch, delta: None, score: None }
}

/// Runs one agent until `shutdown` resolves; then ends its turn, fails what is queued,
/// publishes a final `stopped` heartbeat and disconnects.
pub async fn run(config: AgentConfig, http: reqwest::Client, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let (ws, recovery) = Workspace::open(&config.workspace)
        .map_err(|source| AgentError::Workspace { path: config.workspace.display().to_string(), source })?;
    let fleet = config.agent.fleet.as_str().to_owned();
    let slot = config.agent.slot;
    let heartbeat_topic = topic::agent(&fleet, slot, Channel::Heartbeat);

    // Launch configuration, overridden by the workspace's config.json.
    let (Resolved { brain: brain_spec, system_prompt, capabilities }, config_problem) = match resolve_config(&config, &ws) {
        Ok(r) => (r, None),
        Err(e) => {
            let launched = Resolved {
                brain: config.brain.clone(),
                system_prompt: config.system_prompt.clone(),
                capabilities: config.capabilities.clone(),
            };
            (launched, Some(e))
        }
    };
    let brain = brain::build(&brain_spec, &config, &http);

    let mut bus_config = ClientConfig::new(config.bus_host.clone(), config.bus_port, config.client_id());
    bus_config.username = config.bus_username.clone();
    bus_config.password = config.bus_password.clone();
    bus_config.tls_ca = config.bus_tls_ca.clone();
    bus_config.clean_session = false;
    bus_config.keep_alive = Duration::from_secs(5);
    bus_config.subscriptions = vec![topic::agent(&fleet, slot, Channel::Cmd), topic::fleet_cmd(&fleet)];

    let (internal, mut internal_rx) = mpsc::channel(1024);
    let mut will = Heartbeat {
        epoch: ws.epoch().to_owned(),
        seq: 0,
        at: crate::now_rfc3339(),
        state: AgentActivity::Disconnected,
        interval_ms: config.heartbeat_interval.as_millis() as u64,
        version: crate::VERSION.into(),
        fleet_version: config.fleet_version.clone(),
        pid: std::process::id(),
        hostname: crate::sysinfo::hostname(),
        uptime_s: 0,
        rss_bytes: 0,
        load1: 0.0,
        brain: BrainStatus { spec: brain_spec.to_string(), healthy: false, detail: Some("disconnected".into()) },
        current_injection: None,
        queued: 0,
    };
    will.seq = ws.last_seq();
    bus_config.will = Some(Will { topic: heartbeat_topic.clone(), payload: wire::encode(&will), retain: true });
    // The mailbox's reader sends on `inbox_tx`; the bus's connection task on its own channel.
    let (inbox_tx, mut inbox_rx) = mpsc::channel(256);
    let (link, mut bus_rx) = match &config.transport {
        Transport::Bus => {
            let (client, rx) = client::connect(bus_config);
            let events = topic::agent(&fleet, slot, Channel::Events);
            (Link::Bus { client, events, heartbeats: heartbeat_topic.clone() }, rx)
        }
        Transport::Mailbox(spec) => {
            let outbox = Outbox::open(spec)?;
            let start = clawfleet_proto::mailbox::start_line(&spec.job_id, spec.node, &crate::sysinfo::hostname(), &crate::now_rfc3339());
            outbox.append(&start)?;
            tokio::spawn(crate::link::follow_inbox(outbox.inbox(), inbox_tx));
            // No bus: its branch of the loop is off.
            (Link::Mailbox(outbox), mpsc::channel(1).1)
        }
    };
    let mailbox = matches!(link, Link::Mailbox(_));
    let mut agent = Agent {
        brain,
        brain_spec,
        system_prompt,
        capabilities,
        health: BrainHealth::failing("not checked yet"),
        http,
        link,
        activity: AgentActivity::Starting,
        queue: VecDeque::new(),
        current: None,
        turns: 0,
        turns_completed: 0,
        turns_failed: 0,
        started: Instant::now(),
        internal,
        connected_once: false,
        plays_seen: VecDeque::new(),
        plays_running: 0,
        approvals_taken: VecDeque::new(),
        next_beat: tokio::time::Instant::now(),
        last_beat: tokio::time::Instant::now(),
        ws,
        config,
    };
    if let Some(e) = config_problem {
        agent.emit(None, EventBody::AgentError { message: format!("ignored workspace config: {e}") });
    }

    for id in recovery.interrupted {
        agent.turns_failed += 1;
        agent.emit(Some(&id), EventBody::AgentError { message: "the agent restarted during this turn; it did not finish".into() });
    }
    agent.queue.extend(recovery.not_started);
    agent.probe_health(None);
    if mailbox {
        // The mailbox is there as soon as it is open.
        agent.on_bus(BusEvent::Connected { session_present: true });
    }

    tokio::pin!(shutdown);
    let mut batch = Vec::new();
    loop {
        let input = tokio::select! {
            biased;
            () = &mut shutdown => Input::Shutdown,
            ev = bus_rx.recv(), if !mailbox => match ev {
                Some(ev) => Input::Bus(ev),
                None => return Err(AgentError::BusGone),
            },
            Some(inbound) = inbox_rx.recv() => Input::Inbox(inbound),
            _ = internal_rx.recv_many(&mut batch, 256) => Input::Internal(std::mem::take(&mut batch)),
            () = tokio::time::sleep_until(agent.next_beat) => Input::Tick,
        };
        match input {
            Input::Bus(ev) => agent.on_bus(ev),
            Input::Inbox(Inbound::Item(InboxItem::Directive(d))) => agent.on_directive(d),
            Input::Inbox(Inbound::Item(InboxItem::Shutdown)) => {
                tracing::info!("The inbox asks the agent to shut down");
                break;
            }
            Input::Inbox(Inbound::Refused(message)) => {
                tracing::warn!(%message, "Mailbox problem");
                agent.emit(None, EventBody::AgentError { message });
            }
            Input::Internal(batch) => agent.on_internal_batch(batch),
            Input::Tick => {
                agent.check_watchdog();
                agent.publish_heartbeat();
                agent.ws.mark_alive(agent.connected_once);
            }
            Input::Shutdown => break,
        }
        agent.start_next_turn();
    }
    agent.stop(&mut bus_rx).await;
    Ok(())
}

impl Agent {
    fn emit(&mut self, injection_id: Option<&str>, body: EventBody) {
        let envelope = self.ws.record(injection_id, body);
        if !self.link.event(&envelope) {
            // Journaled: the control plane sees the gap in the next heartbeat and asks for a replay.
            tracing::debug!(seq = envelope.seq, "Bus queue full; event left for replay");
        }
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            epoch: self.ws.epoch().to_owned(),
            seq: self.ws.last_seq(),
            at: crate::now_rfc3339(),
            state: self.activity,
            interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            version: crate::VERSION.into(),
            fleet_version: self.config.fleet_version.clone(),
            pid: std::process::id(),
            hostname: crate::sysinfo::hostname(),
            uptime_s: self.started.elapsed().as_secs(),
            rss_bytes: crate::sysinfo::rss_bytes(),
            load1: crate::sysinfo::load1(),
            brain: BrainStatus { spec: self.brain_spec.to_string(), healthy: self.health.healthy, detail: self.health.detail.clone() },
            current_injection: self.current.as_ref().map(|t| t.injection_id.clone()),
            queued: self.queue.len() as u32,
        }
    }

    /// Publishes a heartbeat now and schedules the next one a full interval later.
    fn publish_heartbeat(&mut self) {
        self.link.heartbeat(&self.heartbeat());
        let now = tokio::time::Instant::now();
        self.last_beat = now;
        self.next_beat = now + self.config.heartbeat_interval;
    }

    /// Something the heartbeat reports changed: beat soon, but not more often than
    /// [`MIN_BEAT_GAP`], so a burst of changes (a turn that takes microseconds) is one beat.
    fn heartbeat_soon(&mut self) {
        self.next_beat = self.next_beat.min(self.last_beat + MIN_BEAT_GAP);
    }

    fn set_activity(&mut self, activity: AgentActivity) {
        if self.activity != activity {
            self.activity = activity;
            self.heartbeat_soon();
        }
    }

    fn on_bus(&mut self, ev: BusEvent) {
        match ev {
            BusEvent::Connected { session_present } => {
                tracing::info!(agent = %self.config.agent, session_present, "Connected to the bus");
                if !self.connected_once {
                    self.connected_once = true;
                    self.ws.mark_alive(true);
                }
                if self.activity == AgentActivity::Starting {
                    self.activity = AgentActivity::Idle;
                }
                self.publish_heartbeat();
            }
            BusEvent::Disconnected { reason } if !self.connected_once => {
                let c = &self.config;
                tracing::warn!(agent = %c.agent, %reason, "Cannot reach the bus at mqtt://{}:{} (is that address right and reachable from here?); retrying", c.bus_host, c.bus_port);
            }
            BusEvent::Disconnected { reason } => {
                tracing::warn!(agent = %self.config.agent, %reason, "Bus connection lost; reconnecting");
            }
            BusEvent::Closed => {}
            BusEvent::Message { topic, payload } => match wire::decode_directive(&payload) {
                Ok(directive) if directive.is_for(self.config.agent.slot) => self.on_directive(directive),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "Refusing a directive");
                    self.emit(None, EventBody::AgentError { message: format!("refused a directive on {topic}: {e}") });
                }
            },
        }
    }

    fn on_directive(&mut self, directive: Directive) {
        match directive {
            Directive::Inject { injection_id, prompt, expires_at, .. } => {
                if self.ws.has_seen(&injection_id) {
                    tracing::debug!(%injection_id, "Duplicate injection ignored");
                    return;
                }
                if let Some(at) = expires_at
                    && humantime::parse_rfc3339_weak(&at).is_ok_and(|at| std::time::SystemTime::now() > at)
                {
                    // The control plane has failed it with "timeout" already.
                    tracing::warn!(%injection_id, expires_at = %at, "Dropped an injection that arrived after its deadline");
                    return;
                }
                if let Err(e) = self.ws.accept(Accepted::Inject { id: injection_id.clone(), prompt: prompt.clone() }) {
                    // Not acknowledged: the control plane will send it again.
                    tracing::error!(error = %e, "Could not record an injection; leaving it unacknowledged");
                    return;
                }
                self.emit(Some(&injection_id), EventBody::InjectDelivered {});
                self.queue.push_back((injection_id, prompt));
                self.heartbeat_soon();
            }
            Directive::Command { command_id, command, .. } => {
                if self.ws.has_seen(&command_id) {
                    return;
                }
                if let Err(e) = self.ws.accept(Accepted::Command { id: command_id.clone(), command: command.clone() }) {
                    tracing::error!(error = %e, "Could not record a command; leaving it unacknowledged");
                    return;
                }
                self.on_command(command_id, command);
            }
            Directive::Replay { after_seq } => match self.ws.replay(after_seq) {
                Ok(events) => {
                    tracing::info!(after_seq, count = events.len(), "Replaying journaled events");
                    for e in events {
                        if !self.link.event(&e) {
                            break;
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "Could not read the journal for a replay"),
            },
            Directive::Play { play_id, play, expires_at, .. } => self.on_play(play_id, play, expires_at),
            Directive::Approval { call_id, approved, decision } => self.on_approval(call_id, approved, decision),
        }
    }

    /// The answer to an approval: the waiting turn goes on (its brain runs) or ends refused;
    /// either way the control plane hears it was taken. Taken once; an answer for a turn that
    /// is gone (the agent restarted) is taken as not waiting.
    fn on_approval(&mut self, call_id: String, approved: bool, decision: Option<String>) {
        if self.approvals_taken.contains(&call_id) {
            return;
        }
        if self.approvals_taken.len() == APPROVALS_REMEMBERED {
            self.approvals_taken.pop_front();
        }
        self.approvals_taken.push_back(call_id.clone());
        let waiting = self.current.as_mut().filter(|t| t.awaiting.as_ref().is_some_and(|(c, _)| *c == call_id));
        let (injection, waiting) = match waiting {
            Some(turn) => {
                let (_, answer) = turn.awaiting.take().expect("it waits for this call");
                turn.last_output = Instant::now();
                let _ = answer.send((approved, decision));
                (Some(turn.injection_id.clone()), true)
            }
            None => (None, false),
        };
        self.emit(injection.as_deref(), EventBody::ExecApprovalResolved { call_id, approved, waiting });
    }

    /// A scenario's play: a random move at once, or the brain asked beside the conversation
    /// (its answer is not part of it). Each play runs once; a late one is dropped, so an agent
    /// that was cut off does not act on what it was asked before.
    fn on_play(&mut self, play_id: String, play: Play, expires_at: Option<String>) {
        if self.plays_seen.contains(&play_id) {
            return;
        }
        if self.plays_seen.len() == PLAYS_REMEMBERED {
            self.plays_seen.pop_front();
        }
        self.plays_seen.push_back(play_id);
        if let Some(at) = expires_at
            && humantime::parse_rfc3339_weak(&at).is_ok_and(|at| std::time::SystemTime::now() > at)
        {
            tracing::info!(play = play.name(), expires_at = %at, "Dropped a play that arrived after its deadline");
            return;
        }
        let prompt = match &play {
            Play::RpsLead { brain: false, .. } | Play::Rps { brain: false, .. } => return self.answer_play(play, Err("random".into())),
            Play::RpsLead { .. } | Play::Rps { .. } => scenario::RPS_PROMPT.to_owned(),
            Play::Haiku { .. } => scenario::haiku_prompt(self.config.agent.fleet.as_str()),
            Play::ThreeWords {} => scenario::THREE_WORDS_PROMPT.to_owned(),
            Play::Chime { prompt } => prompt.clone(),
            Play::Council { council: id, roles, .. } if !self.capabilities.is_empty() => {
                let reason = format!("my declared capabilities: {}", self.capabilities.join(", "));
                let roles = council::from_capabilities(&self.capabilities, roles);
                let claim = EventBody::CouncilClaim { council: *id, roles, reason: council::reason(&reason), role: None, activated: false };
                return self.emit(None, claim);
            }
            Play::Council { roles, brief, .. } => council::prompt(brief, roles),
        };
        if self.plays_running >= MAX_PLAYS_RUNNING {
            tracing::warn!(play = play.name(), "Too many plays with the brain; this one is answered without it");
            return self.answer_play(play, Err("busy".into()));
        }
        self.plays_running += 1;
        let request = TurnRequest {
            injection_id: format!("play-{}", play.name()),
            system_prompt: self.system_prompt.clone(),
            history: Vec::new(),
            prompt,
            workspace: self.ws.dir().to_owned(),
        };
        let brain = self.brain.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let (ptx, mut prx) = mpsc::channel(64);
            let drain = async move { while prx.recv().await.is_some() {} };
            let turn = tokio::time::timeout(PLAY_TIMEOUT, brain.turn(request, ptx));
            let (result, ()) = tokio::join!(turn, drain);
            let answer = match result {
                Ok(Ok(r)) => Ok(r.content),
                Ok(Err(e)) => Err(e.0),
                Err(_) => Err(format!("no answer in {} s", PLAY_TIMEOUT.as_secs())),
            };
            let _ = tx.send(Internal::Played { play, answer }).await;
        });
    }

    /// Reports what a play gave: a move (the brain's, else a random one), a haiku, a phrase or
    /// a chat message; a brain that gave nothing usable is logged, and nothing is reported.
    fn answer_play(&mut self, play: Play, answer: Result<String, String>) {
        let body =
            match play {
                Play::RpsLead { round, epoch, .. } => Some(rps_move(round, Some(epoch), &answer)),
                Play::Rps { round, .. } => Some(rps_move(round, None, &answer)),
                Play::Haiku { epoch } => answer.as_deref().ok().and_then(scenario::haiku).map(|text| EventBody::Haiku { epoch, text }),
                Play::ThreeWords {} => answer.as_deref().ok().and_then(scenario::three_words).map(|text| EventBody::ThreeWords { text }),
                Play::Chime { .. } => answer.as_deref().ok().map(str::trim).filter(|t| !t.is_empty()).map(|t| EventBody::Chat {
                    from: String::new(),
                    text: t.chars().take(clawfleet_proto::event::MAX_CHAT_CHARS).collect(),
                }),
                // A brain that failed claims nothing, and says why.
                Play::Council { council: id, roles: open, .. } => {
                    let (roles, why) = match &answer {
                        Ok(a) => (council::parse_claim(a, &open), a.as_str()),
                        Err(e) => (Vec::new(), e.as_str()),
                    };
                    Some(EventBody::CouncilClaim { council: id, roles, reason: council::reason(why), role: None, activated: false })
                }
            };
        match body {
            Some(body) => self.emit(None, body),
            None => {
                tracing::warn!(answer = ?answer.map(|a| a.chars().take(80).collect::<String>()), "The brain's answer to a play gave nothing to report")
            }
        }
    }

    fn reply(&mut self, command_id: String, command: &str, outcome: Result<Value, String>) {
        let (ok, result, error) = match outcome {
            Ok(v) => (true, v, None),
            Err(e) => (false, Value::Null, Some(e)),
        };
        self.emit(None, EventBody::CommandReply { command_id, command: command.to_owned(), ok, result, error });
    }

    fn on_command(&mut self, command_id: String, command: String) {
        let name = match command.parse::<CommandName>() {
            Ok(n) => n,
            Err(e) => return self.reply(command_id, &command, Err(e.to_string())),
        };
        let outcome = match name {
            // Answered when the probe finishes.
            CommandName::HealthCheck => return self.probe_health(Some(command_id)),
            CommandName::VersionReport => Ok(json!({
                "clawfleet": crate::VERSION,
                "protocol": topic::ROOT,
                "fleet_version": self.config.fleet_version,
                "brain": self.brain_spec.to_string(),
            })),
            CommandName::StatusReport => Ok(json!({
                "state": self.activity.as_str(),
                "current_injection": self.current.as_ref().map(|t| t.injection_id.clone()),
                "queued": self.queue.len(),
                "turns_completed": self.turns_completed,
                "turns_failed": self.turns_failed,
                "uptime_s": self.started.elapsed().as_secs(),
                "rss_bytes": crate::sysinfo::rss_bytes(),
                "load1": crate::sysinfo::load1(),
                "epoch": self.ws.epoch(),
                "seq": self.ws.last_seq(),
                "history_len": self.ws.history().len(),
            })),
            CommandName::ConfigReload => {
                let before = (self.brain_spec.clone(), self.system_prompt.clone());
                let conversation = self.ws.reload_conversation().map_err(|e| format!("reading the conversation: {e}"));
                self.apply_workspace_config().and(conversation).map(|messages| {
                    let mut changed = Vec::new();
                    if before.0 != self.brain_spec {
                        changed.push("brain");
                        self.rebuild_brain();
                        self.probe_health(None);
                    }
                    if before.1 != self.system_prompt {
                        changed.push("system_prompt");
                    }
                    json!({"reloaded": true, "changed": changed, "brain": self.brain_spec.to_string(), "conversation_messages": messages})
                })
            }
        };
        self.reply(command_id, name.as_str(), outcome);
    }

    /// Applies `config.json` over the launch configuration.
    fn apply_workspace_config(&mut self) -> Result<(), String> {
        Resolved { brain: self.brain_spec, system_prompt: self.system_prompt, capabilities: self.capabilities } =
            resolve_config(&self.config, &self.ws)?;
        Ok(())
    }

    fn rebuild_brain(&mut self) {
        self.brain = brain::build(&self.brain_spec, &self.config, &self.http);
    }

    fn probe_health(&self, reply_to: Option<String>) {
        let brain = self.brain.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let health = brain.health().await;
            let _ = tx.send(Internal::Health { health, reply_to }).await;
        });
    }

    fn start_next_turn(&mut self) {
        if self.current.is_some() || matches!(self.activity, AgentActivity::Stopping | AgentActivity::Stopped) {
            return;
        }
        let Some((injection_id, prompt)) = self.queue.pop_front() else {
            if self.activity == AgentActivity::Busy {
                self.set_activity(AgentActivity::Idle);
            }
            return;
        };
        self.turns += 1;
        let no = self.turns;
        self.emit(Some(&injection_id), EventBody::TurnStarted {});
        let request = TurnRequest {
            injection_id: injection_id.clone(),
            system_prompt: self.system_prompt.clone(),
            history: self.ws.history().to_vec(),
            prompt: prompt.clone(),
            workspace: self.ws.dir().to_owned(),
        };
        let brain = self.brain.clone();
        let tx = self.internal.clone();
        // A brain that asks before it runs its command: the turn waits for the answer.
        let (awaiting, answer) = match &self.brain_spec {
            BrainSpec::Cmd { command, approve: true } => {
                let call_id = uuid::Uuid::new_v4().to_string();
                let body = EventBody::ExecApprovalRequired {
                    approval_id: None,
                    call_id: call_id.clone(),
                    command: command.chars().take(clawfleet_proto::approval::MAX_COMMAND_BYTES / 4).collect(),
                    cwd: Some(self.ws.dir().display().to_string().chars().take(clawfleet_proto::approval::MAX_DETAIL_BYTES / 4).collect()),
                    reason: Some(format!("fleet '{}' asks before its brain runs its command", self.config.agent.fleet)),
                };
                self.emit(Some(&injection_id), body);
                let (answer_tx, answer_rx) = oneshot::channel::<Answer>();
                (Some((call_id, answer_tx)), Some(answer_rx))
            }
            _ => (None, None),
        };
        let handle = tokio::spawn(async move {
            if let Some(answer) = answer {
                let refused = match answer.await {
                    Ok((true, _)) => None,
                    Ok((false, decision)) => {
                        Some(format!("the command was not approved ({}); it did not run", decision.unwrap_or_else(|| "refused".into())))
                    }
                    Err(_) => Some("the approval was dropped; the command did not run".into()),
                };
                if let Some(message) = refused {
                    let _ = tx.send(Internal::Done { turn: no, result: Err(BrainError(message)) }).await;
                    return;
                }
            }
            let (ptx, mut prx) = mpsc::channel(64);
            let forward = {
                let tx = tx.clone();
                async move {
                    while let Some(progress) = prx.recv().await {
                        if tx.send(Internal::Progress { turn: no, progress }).await.is_err() {
                            break;
                        }
                    }
                }
            };
            let (result, ()) = tokio::join!(brain.turn(request, ptx), forward);
            let _ = tx.send(Internal::Done { turn: no, result }).await;
        });
        self.current = Some(Turn { no, injection_id, prompt, last_output: Instant::now(), handle, awaiting });
        self.set_activity(AgentActivity::Busy);
    }

    /// Handles a batch of internal messages, merging consecutive deltas of a turn into one event.
    fn on_internal_batch(&mut self, batch: Vec<Internal>) {
        let mut pending: Option<(u64, String)> = None;
        for msg in batch {
            match msg {
                Internal::Progress { turn, progress: Progress::Delta(text) } => match &mut pending {
                    Some((t, acc)) if *t == turn => acc.push_str(&text),
                    _ => {
                        if let Some((t, acc)) = pending.take() {
                            self.on_internal(Internal::Progress { turn: t, progress: Progress::Delta(acc) });
                        }
                        pending = Some((turn, text));
                    }
                },
                other => {
                    if let Some((t, acc)) = pending.take() {
                        self.on_internal(Internal::Progress { turn: t, progress: Progress::Delta(acc) });
                    }
                    self.on_internal(other);
                }
            }
        }
        if let Some((t, acc)) = pending {
            self.on_internal(Internal::Progress { turn: t, progress: Progress::Delta(acc) });
        }
    }

    fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::Progress { turn, progress } => {
                let Some(current) = self.current.as_mut().filter(|t| t.no == turn) else { return };
                current.last_output = Instant::now();
                if let Progress::Delta(content) = progress {
                    let id = current.injection_id.clone();
                    self.emit(Some(&id), EventBody::AssistantDelta { content });
                }
            }
            Internal::Done { turn, result } => {
                let Some(current) = self.current.take_if(|t| t.no == turn) else { return };
                let id = current.injection_id;
                match result {
                    Ok(result) => {
                        self.turns_completed += 1;
                        self.health = BrainHealth::ok();
                        if let Err(e) = self.ws.remember(&current.prompt, &result.content) {
                            tracing::error!(error = %e, "Could not save the conversation");
                        }
                        self.emit(Some(&id), EventBody::Assistant { content: result.content });
                        self.emit(Some(&id), EventBody::TurnComplete {});
                        if let Some(usage) = result.usage {
                            self.emit(Some(&id), EventBody::Usage(usage));
                        }
                    }
                    Err(e) => {
                        self.turns_failed += 1;
                        self.emit(Some(&id), EventBody::AgentError { message: e.0 });
                    }
                }
            }
            Internal::Played { play, answer } => {
                self.plays_running -= 1;
                self.answer_play(play, answer);
            }
            Internal::Health { health, reply_to } => {
                let changed = health != self.health;
                self.health = health;
                if let Some(command_id) = reply_to {
                    let result = json!({
                        "healthy": self.health.healthy,
                        "state": self.activity.as_str(),
                        "brain": {"spec": self.brain_spec.to_string(), "healthy": self.health.healthy, "detail": self.health.detail},
                    });
                    self.reply(command_id, CommandName::HealthCheck.as_str(), Ok(result));
                }
                if changed {
                    self.heartbeat_soon();
                }
            }
        }
    }

    fn check_watchdog(&mut self) {
        let limit = self.config.watchdog;
        let Some(current) = self.current.take_if(|t| t.awaiting.is_none() && t.last_output.elapsed() > limit) else { return };
        current.handle.abort();
        self.turns_failed += 1;
        let message = format!("no output for {} s; the watchdog stopped the turn", limit.as_secs());
        tracing::warn!(injection_id = %current.injection_id, "{message}");
        self.emit(Some(&current.injection_id), EventBody::AgentError { message });
    }

    async fn stop(mut self, bus_rx: &mut mpsc::Receiver<BusEvent>) {
        tracing::info!(agent = %self.config.agent, "Stopping");
        self.activity = AgentActivity::Stopping;
        self.publish_heartbeat();
        let mut last = Vec::new();
        if let Some(current) = self.current.take() {
            current.handle.abort();
            let message = "the agent was stopped during this turn".to_owned();
            last.push(self.ws.record(Some(&current.injection_id), EventBody::AgentError { message }));
        }
        while let Some((id, _)) = self.queue.pop_front() {
            let error = "the agent was stopped before this turn started".to_owned();
            last.push(self.ws.record(Some(&id), EventBody::InjectFailed { error }));
        }
        self.activity = AgentActivity::Stopped;
        let hb = self.heartbeat();
        // The final words wait for room on the bus, briefly: they are journaled either way.
        let flush = async {
            self.link.finish(&last, &hb).await;
            if matches!(self.link, Link::Bus { .. }) {
                while let Some(ev) = bus_rx.recv().await {
                    if matches!(ev, BusEvent::Closed) {
                        break;
                    }
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), flush).await.is_err() {
            tracing::warn!("The bus did not take the final events in 5 s; they stay in the journal");
        }
    }
}

/// What the agent runs with: the launch configuration, overridden by `config.json`.
struct Resolved {
    brain: BrainSpec,
    system_prompt: Option<String>,
    capabilities: Vec<String>,
}

fn resolve_config(config: &AgentConfig, ws: &Workspace) -> Result<Resolved, String> {
    let cfg = ws.config()?;
    let brain = match &cfg.brain {
        Some(spec) => spec.parse::<BrainSpec>().map_err(|e| format!("config.json: {e}"))?,
        None => config.brain.clone(),
    };
    Ok(Resolved {
        brain,
        system_prompt: cfg.system_prompt.or_else(|| config.system_prompt.clone()),
        capabilities: cfg.capabilities.unwrap_or_else(|| config.capabilities.clone()),
    })
}

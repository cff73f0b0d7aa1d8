//! How results look: aligned tables, progress (a bar on a terminal, plain lines when piped),
//! and a readable rendering of the event stream.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clawfleet_proto::event::{Event, EventBody};

/// Prints rows under headers, columns padded to their widest cell.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Progress of a long operation: an indicatif bar on a terminal, else a plain line on stderr
/// whenever the count changes (at most once a second).
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    what: String,
    last: Option<(u64, Instant)>,
    total: u64,
    /// The note last shown, and when (piped output).
    note: Option<(String, Instant)>,
}

impl Progress {
    pub(crate) fn new(total: u64, what: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(what.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress { bar, what: what.to_owned(), last: None, total, note: None }
    }

    /// Shows what the operation waits on besides the count (`None`: nothing in particular); when
    /// piped, a changed note is printed at most once a second.
    pub(crate) fn note(&mut self, note: Option<&str>) {
        match &self.bar {
            Some(bar) => bar.set_message(match note {
                Some(n) => format!("{} ({n})", self.what),
                None => self.what.clone(),
            }),
            None => {
                let Some(note) = note else { return };
                let due = self.note.as_ref().is_none_or(|(n, at)| n != note && at.elapsed() >= Duration::from_secs(1));
                if due {
                    eprintln!("{}: {note}", self.what);
                    self.note = Some((note.to_owned(), Instant::now()));
                }
            }
        }
    }

    pub(crate) fn set(&mut self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None => {
                let due = self.last.is_none_or(|(n, at)| n != done && (at.elapsed() >= Duration::from_secs(1) || done == self.total));
                if due {
                    eprintln!("{}: {done}/{}", self.what, self.total);
                    self.last = Some((done, Instant::now()));
                }
            }
        }
    }

    pub(crate) fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

fn clock(at: &str) -> &str {
    // "2026-11-22T17:00:00.123Z" -> "17:00:00"
    at.get(11..19).unwrap_or(at)
}

fn short(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    one_line.chars().take(max).collect::<String>() + "…"
}

/// Renders events for people: streamed answers as whole lines, per agent.
#[derive(Default)]
pub(crate) struct EventPrinter {
    /// (fleet, agent, injection) -> text not yet printed (no newline yet)
    partial: HashMap<(String, u32, String), String>,
    streamed: HashMap<(String, u32, String), bool>,
}

impl EventPrinter {
    pub(crate) fn print(&mut self, e: &Event, out: &mut impl Write) -> std::io::Result<()> {
        let who = match e.agent {
            Some(a) => format!("{}/{a}", e.fleet),
            None => e.fleet.clone(),
        };
        let t = clock(&e.at);
        let key = (e.fleet.clone(), e.agent.unwrap_or(0), e.injection_id.clone().unwrap_or_default());
        let line = match &e.body {
            EventBody::AssistantDelta { content } => {
                self.streamed.insert(key.clone(), true);
                let buf = self.partial.entry(key).or_default();
                buf.push_str(content);
                while let Some(i) = buf.find('\n') {
                    let l: String = buf.drain(..=i).collect();
                    writeln!(out, "{t} {who} │ {}", l.trim_end_matches('\n'))?;
                }
                return Ok(());
            }
            EventBody::Assistant { content } => {
                let rest = self.partial.remove(&key).unwrap_or_default();
                if self.streamed.remove(&key).unwrap_or(false) {
                    if !rest.is_empty() {
                        writeln!(out, "{t} {who} │ {rest}")?;
                    }
                } else {
                    for l in content.lines() {
                        writeln!(out, "{t} {who} │ {l}")?;
                    }
                }
                return Ok(());
            }
            EventBody::InjectAck { prompt, .. } => format!("queued \"{}\"", short(prompt, 60)),
            EventBody::InjectDelivered {} => "delivered".into(),
            EventBody::TurnStarted {} => "thinking…".into(),
            EventBody::TurnComplete {} => "done".into(),
            EventBody::Usage(u) => format!("tokens: {} in, {} out", u.input_tokens, u.output_tokens),
            EventBody::AgentError { message } => format!("error: {message}"),
            EventBody::InjectFailed { error } => format!("failed: {error}"),
            EventBody::CommandSent { command, .. } => format!("{command} sent"),
            EventBody::CommandReply { command, ok: true, result, .. } => format!("{command}: {}", short(&result.to_string(), 100)),
            EventBody::CommandReply { command, error, .. } => format!("{command} failed: {}", error.as_deref().unwrap_or("")),
            EventBody::AgentState { state, .. } => format!("is {state}"),
            EventBody::FleetLaunched { replicas, backend, brain, .. } => format!("launched: {replicas} agents ({backend}, brain {brain})"),
            EventBody::FleetScaled { replicas, previous } => format!("scaled from {previous} to {replicas} agents"),
            EventBody::FleetUpdated { image, version, previous_image, previous_version } => {
                let show = |i: &Option<String>| i.clone().unwrap_or_else(|| "the default image".into());
                format!("updated: {} version {previous_version} -> {} version {version}", show(previous_image), show(image))
            }
            EventBody::FleetChanged { changes } => format!("changed: {}", changes.join(", ")),
            EventBody::LeaderChanged { slot: Some(slot), epoch, .. } => format!("leader: agent {slot} (epoch {epoch})"),
            EventBody::LeaderChanged { slot: None, .. } => "leader: none (no agent is healthy)".into(),
            EventBody::Chat { from, text } => format!("chat from {from}: {text}"),
            EventBody::Arm { armed, by } => format!("{} by {by}", if *armed { "armed" } else { "disarmed" }),
            EventBody::RpsMove { round, choice, epoch: Some(epoch), .. } => format!("leads round {round} with {choice} (epoch {epoch})"),
            EventBody::RpsMove { round, choice, delta, score, .. } => {
                let result = match delta {
                    Some(1) => "wins",
                    Some(0) => "draws",
                    _ => "loses",
                };
                format!("plays {choice} in round {round}: {result} (score {})", score.unwrap_or(0))
            }
            EventBody::Haiku { text, .. } => format!("haiku: {}", text.replace('\n', " / ")),
            EventBody::ThreeWords { text } => format!("says: {text}"),
            EventBody::PlayRefused { play, reason } => format!("{play} refused: {reason}"),
            EventBody::ScenariosSet { scenarios, by } => format!("scenarios set by {by}: {}", scenarios_line(scenarios)),
            EventBody::CouncilOpened { council, roles, core, .. } => {
                format!("council {council} opened: roles {} (core {})", roles.join(", "), core.join(", "))
            }
            EventBody::CouncilClaim { council, role: Some(role), activated, reason, .. } => {
                format!(
                    "takes role {role} in council {council}{}: {}",
                    if *activated { ", which is active" } else { "" },
                    short(reason, 80)
                )
            }
            EventBody::CouncilClaim { council, roles, .. } => format!("claims {} in council {council}", roles.join(", ")),
            EventBody::CouncilRoleFreed { council, role, slot } => {
                format!("council {council}: role {role} is free again (agent {slot} was lost)")
            }
            EventBody::CouncilActivated { council, seats } => {
                let held: Vec<String> = seats.iter().filter_map(|s| s.slot.map(|slot| format!("{} agent {slot}", s.role))).collect();
                format!("council {council} is active: {}", held.join(", "))
            }
            EventBody::CouncilFailed { council, unclaimed } => format!("council {council} failed: no one took {}", unclaimed.join(", ")),
            EventBody::CouncilClosed { council, by } => format!("council {council} closed by {by}"),
            EventBody::ProjectCreated { project_id, title, tasks } => format!("project {project_id} created: {title} ({tasks} tasks)"),
            EventBody::ProjectStatus { project_id, status, last_error } => {
                format!("project {project_id} is {status}{}", last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default())
            }
            EventBody::ProjectResumed { project_id, status, resume_summary } => {
                format!("project {project_id} resumed, {status}: {}", crate::project::summary_line(resume_summary))
            }
            EventBody::ProjectTaskAssigned { project_id, task_id, attempt } => {
                format!("works on {task_id} of project {project_id} (attempt {attempt})")
            }
            EventBody::ProjectTaskResult { task_id, status, result_status, error, .. } => {
                format!(
                    "{task_id}: {result_status}, task {status}{}",
                    error.as_deref().map(|e| format!(": {}", short(e, 80))).unwrap_or_default()
                )
            }
            EventBody::DelegationRefused { target, reason } => format!("may not delegate to {target}: {reason}"),
            EventBody::ExecApprovalRequired { approval_id, command, .. } => {
                let id = approval_id.map_or("?".to_owned(), |a| a.to_string());
                format!("asks to run {}: approval {id} (clawfleet approvals approve {id})", short(command, 80))
            }
            EventBody::ExecApprovalSubmitted { approval_id, approved, by, .. } => {
                format!("approval {approval_id} {} by {by}", if *approved { "approved" } else { "refused" })
            }
            EventBody::ExecApprovalResolved { approved: true, waiting: true, .. } => "runs its approved command".to_owned(),
            EventBody::ExecApprovalResolved { approved: false, waiting: true, .. } => "does not run its command: refused".to_owned(),
            EventBody::ExecApprovalResolved { waiting: false, .. } => "took an approval no turn of it waits for".to_owned(),
            EventBody::QueueEnqueued { queue_id, agent, source, by, .. } => {
                let whom = agent.map_or("its first idle agent".to_owned(), |a| format!("agent {a}"));
                let from = source.as_deref().map(|s| format!(" from {s}")).unwrap_or_default();
                format!("queued {queue_id} for {whom}{from} (by {by})")
            }
            EventBody::QueueDispatched { queue_id, .. } => format!("takes queued {queue_id}"),
            EventBody::QueueCancelled { queue_id, by } => format!("queued {queue_id} cancelled by {by}"),
            EventBody::QueueDropped { queue_id, reason, .. } => format!("queued {queue_id} dropped: {reason}"),
            EventBody::PlanQueued { plan_id, title } => format!("plan {plan_id} queued: {title}"),
            EventBody::PlanStarted { plan_id } => format!("plans {plan_id}"),
            EventBody::PlanCompleted { plan_id, project_id } => format!("plan {plan_id} became project {project_id}"),
            EventBody::PlanFailed { plan_id, reason } => format!("plan {plan_id} failed: {}", short(reason, 100)),
            EventBody::DeployStarted { deploy, version, .. } => format!("deploy #{deploy}: to version {version}"),
            EventBody::DeployProgress { deploy, ready, replicas } => format!("deploy #{deploy}: {ready}/{replicas} agents passed the gate"),
            EventBody::DeployFinished { deploy, outcome, reason } => {
                format!("deploy #{deploy} {outcome}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())
            }
            EventBody::Migration { state, peer, detail, .. } => format!("migration to/from rack {peer}: {state}: {detail}"),
            EventBody::InjectForwarded { rack, agent, injection_id } => {
                format!("forwarded to {agent} on rack {rack} (injection {injection_id})")
            }
            EventBody::FleetTerminating {} => "terminating".into(),
            EventBody::FleetTerminated {} => "terminated".into(),
        };
        // The last 8 characters tell injections apart (ids may come from agents: count chars, not bytes).
        let inj = e
            .injection_id
            .as_deref()
            .map(|i| format!("  [{}]", i.chars().skip(i.chars().count().saturating_sub(8)).collect::<String>()))
            .unwrap_or_default();
        writeln!(out, "{t} {who} {line}{inj}")
    }
}

/// Writes command output to stdout. A closed pipe ends the process with status 0 and nothing on
/// stderr (the reader has what it wanted); any other failure to write is a panic, as println!'s.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => panic!("failed printing to stdout: {e}"),
    }
}

/// A fleet's scenarios in one line: `rps every 10 s, haiku every 5 min` (or `none`).
pub(crate) fn scenarios_line(s: &clawfleet_proto::scenario::Scenarios) -> String {
    let mut on = Vec::new();
    if let Some(r) = s.rps {
        on.push(format!("rps every {} s{}", r.interval_seconds, if r.brain { " (brains move)" } else { "" }));
    }
    if let Some(h) = s.haiku {
        on.push(format!("haiku every {} min", h.interval_minutes));
    }
    if let Some(t) = s.three_words {
        on.push(format!("three words every {} min", t.interval_minutes));
    }
    if on.is_empty() { "none".into() } else { on.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(agent: u32, body: EventBody) -> Event {
        Event {
            id: 1,
            at: "2026-11-22T17:00:01.000Z".into(),
            fleet: "squad".into(),
            agent: Some(agent),
            injection_id: Some("0193-abcdefgh".into()),
            body,
        }
    }

    #[test]
    fn streamed_answers_print_as_lines() {
        let mut p = EventPrinter::default();
        let mut out = Vec::new();
        for e in [
            ev(1, EventBody::TurnStarted {}),
            ev(1, EventBody::AssistantDelta { content: "Hel".into() }),
            ev(2, EventBody::AssistantDelta { content: "Other\n".into() }),
            ev(1, EventBody::AssistantDelta { content: "lo\nwor".into() }),
            ev(1, EventBody::Assistant { content: "Hello\nworld".into() }),
            ev(1, EventBody::TurnComplete {}),
        ] {
            p.print(&e, &mut out).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "17:00:01 squad/1 thinking…  [abcdefgh]\n17:00:01 squad/2 │ Other\n17:00:01 squad/1 │ Hello\n17:00:01 squad/1 │ wor\n17:00:01 squad/1 done  [abcdefgh]\n"
        );
    }

    #[test]
    fn odd_injection_ids_do_not_break_printing() {
        let mut e = ev(1, EventBody::TurnComplete {});
        e.injection_id = Some("ab\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{d7}".into());
        let mut out = Vec::new();
        EventPrinter::default().print(&e, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "17:00:01 squad/1 done  [\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{d7}]\n");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
    }
}

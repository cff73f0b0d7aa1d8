//! `clawfleet mailbox follow`: the outbox follower on its own, for tools built on codeswarm's
//! (its `outbox_follower.py OUTBOX_DIR` prints every new outbox line on stdout). Lines that are
//! not JSON are reported on stderr and skipped; offsets are committed once the lines are written.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clawfleet_mailbox::{Follower, Line, Mailbox};
use tokio::sync::Notify;

use crate::args::FollowArgs;

pub(crate) async fn follow(args: FollowArgs) -> anyhow::Result<ExitCode> {
    let outbox = args.outbox.canonicalize().with_context(|| format!("the outbox directory {}", args.outbox.display()))?;
    let (Some(mailbox_dir), Some(base)) = (outbox.parent(), outbox.parent().and_then(|p| p.parent())) else {
        bail!("{} is not a mailbox outbox (expected <base>/mailbox/outbox)", outbox.display());
    };
    if outbox.file_name().is_none_or(|n| n != "outbox") || mailbox_dir.file_name().is_none_or(|n| n != "mailbox") {
        bail!("{} is not a mailbox outbox (expected <base>/mailbox/outbox)", outbox.display());
    }
    let mailbox = Mailbox::open(base)?;
    let state = args.state.clone().unwrap_or_else(|| mailbox_dir.join(".clawfleet_follower.json"));
    // Lines go out as written: checked to be JSON, never parsed into values nobody reads.
    let mut follower = Follower::open(mailbox.clone(), state)?.relaying();
    let wake = Arc::new(Notify::new());
    if !args.no_inotify {
        let w = wake.clone();
        if let Err(e) = clawfleet_mailbox::hint::watch(&[mailbox.outbox_dir(), mailbox.archive_dir()], move || w.notify_one()) {
            tracing::info!(error = %e, "No inotify hint; polling alone");
        }
    }
    let poll = Duration::from_millis(args.poll_ms.max(1));
    // One write per batch of lines, not one per line.
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let records = follower.poll()?;
        if !records.is_empty() {
            for r in records {
                match r.line {
                    Line::Raw(bytes) => stdout.write_all(&bytes).and_then(|()| stdout.write_all(b"\n")),
                    Line::Json(v) => writeln!(stdout, "{v}"),
                    Line::Garbage(why) => {
                        eprintln!("skipped a line of {} at byte {}: {why}", Mailbox::file_name(&r.job_id, r.node), r.offset);
                        Ok(())
                    }
                }
                .or_else(quiet_when_closed)?;
            }
            // Committed only once written: a restart repeats nothing it printed, loses nothing.
            stdout.flush().or_else(quiet_when_closed)?;
            follower.commit()?;
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(poll) => {}
            () = &mut stop => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// A reader gone away ends the follower quietly; anything else is an error.
fn quiet_when_closed(e: std::io::Error) -> anyhow::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    Err(anyhow::Error::new(e).context("writing to stdout"))
}

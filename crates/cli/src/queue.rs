//! `clawfleet queue add|list|show|cancel`: prompts that wait for an idle agent.

use std::process::ExitCode;

use clawfleet_proto::queue::{QueueAdd, QueueItem, QueueList};

use crate::args::{ListArgs, QueueAddArgs, QueueCommand, QueueShowArgs};
use crate::fleet::print_json;
use crate::output::table;

pub(crate) async fn run(command: QueueCommand) -> anyhow::Result<ExitCode> {
    match command {
        QueueCommand::Add(a) => add(a).await,
        QueueCommand::List(a) => list(a).await,
        QueueCommand::Show(a) => show(a, false).await,
        QueueCommand::Cancel(a) => show(a, true).await,
    }
}

/// Whom an item waits for, or where it went.
fn whom(i: &QueueItem) -> String {
    match (i.dispatched_to, i.agent) {
        (Some(slot), _) => format!("{}/{slot}", i.fleet),
        (None, Some(slot)) => format!("{}/{slot}", i.fleet),
        (None, None) => format!("{} (first idle)", i.fleet),
    }
}

fn rows(items: &[QueueItem]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            let mut prompt: String = i.prompt.chars().take(40).collect();
            if prompt.len() < i.prompt.len() {
                prompt.push('…');
            }
            vec![
                i.queue_id.clone(),
                i.status.to_string(),
                whom(i),
                i.source.clone().unwrap_or_else(|| "-".into()),
                i.created_at.get(11..19).unwrap_or(&i.created_at).to_owned(),
                prompt.replace('\n', " "),
            ]
        })
        .collect();
    table(&["ID", "STATUS", "AGENT", "SOURCE", "QUEUED", "PROMPT"], &rows)
}

async fn add(args: QueueAddArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let req = QueueAdd {
        prompt: args.prompt,
        agents: (!args.agents.is_empty()).then_some(args.agents),
        all: args.all,
        source: args.source,
        request_id: None,
    };
    let list: QueueList = client.post(&format!("/api/v1/fleets/{}/queue", args.fleet), &req).await?;
    if args.json {
        print_json(&list);
    } else {
        for i in &list.items {
            outln!("queued {} for {}", i.queue_id, whom(i));
        }
        if list.joined > 0 {
            outln!("{} of these a delegation from the same answer had queued already: the work is queued once", list.joined);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let path = crate::client::list_path("/api/v1/queue", args.fleet.as_deref(), args.all);
    let list: QueueList = client.get(&path).await?;
    if args.json {
        print_json(&list);
    } else if list.items.is_empty() {
        outln!("{}", if args.all { "the queue has held nothing" } else { "nothing waits" });
    } else {
        out!("{}", rows(&list.items));
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(args: QueueShowArgs, cancel: bool) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let path = format!("/api/v1/queue/{}", args.id);
    let item: QueueItem = if cancel { client.delete(&path).await? } else { client.get(&path).await? };
    if args.json {
        print_json(&item);
    } else {
        out!("{}", rows(std::slice::from_ref(&item)));
        if let Some(i) = &item.injection_id {
            outln!("injection {i}");
        }
        if let Some(why) = &item.reason {
            outln!("dropped: {why}");
        }
        if let Some(to) = &item.reply_to {
            outln!("its answer goes back to {to}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

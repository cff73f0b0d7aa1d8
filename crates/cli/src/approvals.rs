//! `clawfleet approvals list|show|approve|deny`: executions that wait for an operator's answer.

use std::process::ExitCode;

use clawfleet_proto::approval::{Approval, ApprovalAnswer, ApprovalList, ApprovalStatus};

use crate::args::{ApprovalAnswerArgs, ApprovalShowArgs, ApprovalsCommand, ListArgs};
use crate::fleet::print_json;
use crate::output::table;

pub(crate) async fn run(command: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ApprovalsCommand::List(a) => list(a).await,
        ApprovalsCommand::Show(a) => show(a).await,
        ApprovalsCommand::Approve(a) => answer(a, true).await,
        ApprovalsCommand::Deny(a) => answer(a, false).await,
    }
}

/// What became of it, in a word or two.
fn outcome(a: &Approval) -> String {
    match (a.status, a.approved) {
        (ApprovalStatus::Pending, _) => "pending".into(),
        (status, Some(true)) => format!("approved ({status})"),
        (status, _) => format!("refused ({status})"),
    }
}

fn rows(approvals: &[Approval]) -> String {
    let rows: Vec<Vec<String>> = approvals
        .iter()
        .map(|a| {
            let mut command: String = a.command.chars().take(48).collect();
            if command.len() < a.command.len() {
                command.push('…');
            }
            vec![
                a.approval_id.to_string(),
                format!("{}/{}", a.fleet, a.agent),
                outcome(a),
                a.created_at.get(11..19).unwrap_or(&a.created_at).to_owned(),
                command.replace('\n', " "),
            ]
        })
        .collect();
    table(&["ID", "AGENT", "STATUS", "ASKED", "COMMAND"], &rows)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let path = crate::client::list_path("/api/v1/approvals", args.fleet.as_deref(), args.all);
    let list: ApprovalList = client.get(&path).await?;
    if args.json {
        print_json(&list);
    } else if list.approvals.is_empty() {
        outln!("{}", if args.all { "no agent has asked for an approval" } else { "nothing waits for an approval" });
    } else {
        out!("{}", rows(&list.approvals));
    }
    Ok(ExitCode::SUCCESS)
}

fn print(a: &Approval, json: bool) {
    if json {
        print_json(a);
        return;
    }
    out!("{}", rows(std::slice::from_ref(a)));
    if let Some(cwd) = &a.cwd {
        outln!("in {cwd}");
    }
    if let Some(reason) = &a.reason {
        outln!("why: {reason}");
    }
    if let Some(by) = &a.answered_by {
        outln!("answered by {by}{}", a.decision.as_deref().map(|d| format!(" ({d})")).unwrap_or_default());
    }
}

async fn show(args: ApprovalShowArgs) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let a: Approval = client.get(&format!("/api/v1/approvals/{}", args.id)).await?;
    print(&a, args.json);
    Ok(ExitCode::SUCCESS)
}

async fn answer(args: ApprovalAnswerArgs, approved: bool) -> anyhow::Result<ExitCode> {
    let client = args.client.client()?;
    let req = ApprovalAnswer { approved, decision: args.decision };
    let a: Approval = client.post(&format!("/api/v1/approvals/{}", args.id), &req).await?;
    print(&a, args.json);
    Ok(ExitCode::SUCCESS)
}

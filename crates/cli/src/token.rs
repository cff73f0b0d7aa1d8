//! `clawfleet token`: API tokens bound to roles; `clawfleet bus credentials`: bus logins.

use std::process::ExitCode;

use clawfleet_proto::api::{Ack, BusLogin, NewToken, TokenList, TokenRequest};

use crate::args::{BusCredentialsArgs, TokenCommand};
use crate::output::table;

pub(crate) async fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create(a) => {
            let req = TokenRequest { name: a.name, role: a.role, fleet: a.fleet, expires: a.expires };
            let t: NewToken = a.client.client()?.post("/api/v1/tokens", &req).await?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                outln!("{}", t.token);
                eprintln!(
                    "token '{}' ({}{}{}): shown this once; the control plane keeps only its hash",
                    t.info.name,
                    t.info.role,
                    t.info.fleet.as_deref().map(|f| format!(", fleet {f}")).unwrap_or_default(),
                    t.info.expires_at.as_deref().map(|e| format!(", expires {e}")).unwrap_or_default(),
                );
            }
        }
        TokenCommand::List(a) => {
            let list: TokenList = a.client.client()?.get("/api/v1/tokens").await?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let rows: Vec<Vec<String>> = list
                    .tokens
                    .into_iter()
                    .map(|t| {
                        vec![
                            t.name,
                            t.role.to_string(),
                            t.fleet.unwrap_or_else(|| "*".into()),
                            t.expires_at.unwrap_or_else(|| "never".into()),
                            t.created_by,
                        ]
                    })
                    .collect();
                out!("{}", table(&["NAME", "ROLE", "FLEET", "EXPIRES", "CREATED BY"], &rows));
            }
        }
        TokenCommand::Revoke(a) => {
            let ack: Ack = a.client.client()?.delete(&format!("/api/v1/tokens/{}", a.name)).await?;
            outln!("{}", ack.message);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `clawfleet bus credentials --observer`: the read-only login, as a mosquitto_sub line.
pub(crate) async fn bus_credentials(args: BusCredentialsArgs) -> anyhow::Result<ExitCode> {
    let login: BusLogin = args.client.client()?.get("/api/v1/bus/observer").await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&login)?);
    } else {
        outln!("mosquitto_sub -h {} -p {} -u {} -P {} -t '{}' -v", login.host, login.port, login.username, login.password, login.topics);
    }
    Ok(ExitCode::SUCCESS)
}

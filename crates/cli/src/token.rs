//! `clawfleet token`: API tokens bound to roles; `clawfleet secret`: secrets brains get; `clawfleet bus`: bus logins, and a Mosquitto
//! configured with them.

use std::process::ExitCode;

use anyhow::Context;

use clawfleet_proto::api::{Ack, BusLogin, NewToken, SecretList, SecretRequest, TokenList, TokenRequest};

use crate::args::{BusConfigArgs, BusCredentialsArgs, CertsArgs, SecretCommand, TokenCommand};
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

/// `clawfleet secret set|list|rm`.
pub(crate) async fn secret(command: SecretCommand) -> anyhow::Result<ExitCode> {
    match command {
        SecretCommand::Set(a) => {
            let value = match &a.from_file {
                Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading the secret from {}", path.display()))?,
                None => {
                    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        eprintln!("the value of secret '{}', then Ctrl-D:", a.name);
                    }
                    std::io::read_to_string(std::io::stdin()).context("reading the secret from standard input")?
                }
            };
            let value = value.strip_suffix('\n').map(|v| v.strip_suffix('\r').unwrap_or(v)).unwrap_or(&value).to_owned();
            let ack: Ack = a.client.client()?.put(&format!("/api/v1/secrets/{}", a.name), &SecretRequest { value }).await?;
            outln!("{}", ack.message);
        }
        SecretCommand::List(a) => {
            let list: SecretList = a.client.client()?.get("/api/v1/secrets").await?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let rows: Vec<Vec<String>> = list
                    .secrets
                    .into_iter()
                    .map(|s| vec![s.name, s.bytes.to_string(), s.fleets.join(","), s.updated_at, s.updated_by])
                    .collect();
                out!("{}", table(&["NAME", "BYTES", "FLEETS", "UPDATED", "BY"], &rows));
            }
        }
        SecretCommand::Rm(a) => {
            let ack: Ack = a.client.client()?.delete(&format!("/api/v1/secrets/{}", a.name)).await?;
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
        let tls = match (login.tls, &args.client.cacert) {
            (false, _) => String::new(),
            (true, Some(ca)) => format!(" --cafile {}", ca.display()),
            (true, None) => {
                let data = args.client.data.clone().unwrap_or_else(crate::client::default_data_dir);
                format!(" --cafile {}", data.join("tls").join("ca.pem").display())
            }
        };
        outln!(
            "mosquitto_sub -h {} -p {}{tls} -u {} -P {} -t '{}' -v",
            login.host,
            login.port,
            login.username,
            login.password,
            login.topics
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `clawfleet bus config --mosquitto DIR`: a Mosquitto with clawfleet's logins and ACLs.
pub(crate) fn bus_config(args: BusConfigArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let data = args.data.clone().unwrap_or_else(crate::client::default_data_dir);
    let plugin = match &args.plugin {
        Some(p) => p.clone(),
        None => ["x86_64-linux-gnu", "aarch64-linux-gnu"]
            .iter()
            .map(|arch| std::path::PathBuf::from(format!("/usr/lib/{arch}/mosquitto_dynamic_security.so")))
            .find(|p| p.exists())
            .ok_or_else(|| anyhow::anyhow!("no mosquitto_dynamic_security.so found (apt-get install mosquitto), or give --plugin PATH"))?,
    };
    let file = clawfleet_server::mosquitto_dynsec_file(&data)?;
    let dir = &args.mosquitto;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
    };
    write("dynamic-security.json", &serde_json::to_string_pretty(&file)?)?;
    let mut tls = String::new();
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let read = |p: &std::path::Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
        write("server.pem", &read(cert)?)?;
        write("server-key.pem", &read(key)?)?;
        tls = format!("certfile {0}/server.pem\nkeyfile {0}/server-key.pem\n", dir.display());
    }
    let scheme = if tls.is_empty() { "mqtt" } else { "mqtts" };
    write(
        "mosquitto.conf",
        &format!(
            "# Written by `clawfleet bus config --mosquitto`: clawfleet's logins and ACLs, in the\n\
             # dynamic-security plugin. Start the control plane with --bus {scheme}://{listen} --bus-dynsec.\n\
             per_listener_settings false\nallow_anonymous false\nset_tcp_nodelay true\n\
             listener {port} {host}\n{tls}plugin {plugin}\nplugin_opt_config_file {file}\n",
            listen = args.listen,
            port = args.listen.port(),
            host = args.listen.ip(),
            plugin = plugin.display(),
            file = dir.join("dynamic-security.json").display(),
        ),
    )?;
    // Mosquitto started as root runs as the user `mosquitto`, and its plugin rewrites its file
    // as fleets change: the directory is theirs (and still nobody else's).
    if nix::unistd::geteuid().is_root()
        && let Ok(Some(user)) = nix::unistd::User::from_name("mosquitto")
    {
        for path in
            [dir.clone(), dir.join("dynamic-security.json"), dir.join("mosquitto.conf"), dir.join("server.pem"), dir.join("server-key.pem")]
        {
            if !path.exists() {
                continue;
            }
            std::os::unix::fs::chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .with_context(|| format!("giving {} to the mosquitto user", path.display()))?;
        }
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    outln!("wrote {0}/mosquitto.conf and {0}/dynamic-security.json", dir.display());
    outln!("  mosquitto -c {}/mosquitto.conf", dir.display());
    outln!("  clawfleet up --data {} --bus {scheme}://{} --bus-dynsec", data.display(), args.listen);
    Ok(ExitCode::SUCCESS)
}

/// `clawfleet certs`: a local CA and a server certificate it signs, for development.
pub(crate) fn certs(args: CertsArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let data = args.data.clone().unwrap_or_else(crate::client::default_data_dir);
    let dir = args.dir.clone().unwrap_or_else(|| data.join("tls"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "clawfleet development CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(host) = nix::unistd::gethostname()
        && let Some(h) = host.to_str()
        && !names.iter().any(|n| n == h)
    {
        names.push(h.to_owned());
    }
    names.extend(args.host.iter().cloned());
    let mut server_params = rcgen::CertificateParams::new(names.clone())?;
    server_params.distinguished_name.push(rcgen::DnType::CommonName, "clawfleet control plane");
    server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = rcgen::KeyPair::generate()?;
    let server = server_params.signed_by(&server_key, &ca, &ca_key)?;
    let write = |name: &str, text: &str, mode: u32| -> anyhow::Result<()> {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
    };
    write("ca.pem", &ca.pem(), 0o644)?;
    write("ca-key.pem", &ca_key.serialize_pem(), 0o600)?;
    write("server.pem", &server.pem(), 0o644)?;
    write("server-key.pem", &server_key.serialize_pem(), 0o600)?;
    outln!("wrote a CA and a server certificate for {} in {}", names.join(", "), dir.display());
    outln!("  clawfleet up --tls-cert {0}/server.pem --tls-key {0}/server-key.pem", dir.display());
    outln!("  curl --cacert {}/ca.pem https://127.0.0.1:8080/healthz", dir.display());
    Ok(ExitCode::SUCCESS)
}

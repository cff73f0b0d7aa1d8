//! `clawfleet import FILE`: the registries the tools clawfleet replaces keep, as a fleet.toml.
//!
//! - hatchery's `fleet.json` (`{"instances": {"<name>": {"port", "created", "host", "status",
//!   "version"}}}`): its instances are containers of one agent image, so one docker fleet with
//!   as many agents as instances run, at the version most of them run;
//! - clawdinators' `instances.json` (`{"<id>": {"host", "instanceType", "bootstrapPrefix",
//!   "…TokenSecret"}}`): one agent per host, started there, so one external fleet with an agent
//!   per instance (`clawfleet agent --join FLEET --slot N` on each host).
//!
//! What has no place in a fleet.toml (ports, hosts, instance types, secrets' names) is kept as
//! comments beside the fleet, slot by slot, so nothing of the registry is silently dropped.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clawfleet_core::FleetName;
use serde_json::Value;

use crate::args::ImportArgs;

/// The largest registry read.
const MAX_REGISTRY_BYTES: u64 = 16 * 1024 * 1024;

pub(crate) fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let text = read(&args.file)?;
    let toml = convert(&text, args.fleet.as_deref()).with_context(|| format!("importing {}", args.file.display()))?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, &toml).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {} (check it with: clawfleet diff -f {})", path.display(), path.display());
        }
        None => out!("{toml}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path) -> anyhow::Result<String> {
    let size = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if size > MAX_REGISTRY_BYTES {
        bail!("{}: the file is {size} bytes, over the {MAX_REGISTRY_BYTES}-byte limit", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// A TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A registry value as a comment shows it (one line, bounded).
fn shown(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let one_line: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).take(120).collect();
    one_line
}

/// Converts a registry to a fleet.toml.
pub(crate) fn convert(text: &str, fleet: Option<&str>) -> anyhow::Result<String> {
    let v: Value = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("not JSON: {e}"))?;
    let Value::Object(top) = &v else { bail!("a registry is a JSON object; this is {}", kind(&v)) };
    if let Some(instances) = top.get("instances") {
        let Value::Object(instances) = instances else { bail!("hatchery's fleet.json: `instances` must be an object") };
        return hatchery(instances, fleet.unwrap_or("hatchery"));
    }
    if !top.is_empty() && top.values().all(|i| i.get("host").is_some()) {
        return clawdinators(top, fleet.unwrap_or("clawdinators"));
    }
    bail!(
        "neither hatchery's fleet.json ({{\"instances\": {{NAME: {{port, host, status, version}}}}}}) nor \
         clawdinators' instances.json ({{ID: {{host, instanceType, bootstrapPrefix}}}})"
    )
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn fleet_name(name: &str) -> anyhow::Result<FleetName> {
    name.parse().map_err(|e| anyhow::anyhow!("{e} (give another with --fleet)"))
}

fn hatchery(instances: &serde_json::Map<String, Value>, fleet: &str) -> anyhow::Result<String> {
    let name = fleet_name(fleet)?;
    let running: Vec<(&String, &Value)> =
        instances.iter().filter(|(_, i)| i.get("status").and_then(Value::as_str) == Some("running")).collect();
    // The version most running instances run (ties: the greatest, as text).
    let mut versions: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, i) in &running {
        if let Some(v) = i.get("version").and_then(Value::as_str) {
            *versions.entry(v).or_default() += 1;
        }
    }
    let version = versions.iter().max_by_key(|(v, n)| (**n, **v)).map(|(v, _)| (*v).to_owned());
    let mut out = format!(
        "# Imported from hatchery's fleet.json: {} instances, {} running.\n\
         # Each instance was a container of its own on a port of its own; clawfleet runs them as one\n\
         # docker fleet (a Swarm service) and gives each agent its own workspace volume.\n\n",
        instances.len(),
        running.len()
    );
    out.push_str(&format!("[fleets.{name}]\nbackend = \"docker\"\nreplicas = {}\n", running.len()));
    if let Some(v) = &version {
        clawfleet_core::spec::check_version(v).map_err(|e| anyhow::anyhow!("the instances' version: {e}"))?;
        out.push_str(&format!("version = {}\n", quoted(v)));
    }
    out.push_str("# Slot by slot, what the registry said of each running instance:\n");
    for (slot, (id, i)) in running.iter().enumerate() {
        let field = |k: &str| i.get(k).map(shown).unwrap_or_else(|| "?".into());
        out.push_str(&format!(
            "#   {slot}: {} (host {}, port {}, version {}, created {})\n",
            shown(&Value::String((*id).clone())),
            field("host"),
            field("port"),
            field("version"),
            field("created")
        ));
    }
    for (id, i) in instances.iter().filter(|(_, i)| i.get("status").and_then(Value::as_str) != Some("running")) {
        let status = i.get("status").map(shown).unwrap_or_else(|| "no status".into());
        out.push_str(&format!("#   not imported: {} ({status})\n", shown(&Value::String(id.clone()))));
    }
    Ok(out)
}

fn clawdinators(instances: &serde_json::Map<String, Value>, fleet: &str) -> anyhow::Result<String> {
    let name = fleet_name(fleet)?;
    let mut out = format!(
        "# Imported from clawdinators' instances.json: {} instances, one agent per host.\n\
         # The hosts run their agents themselves: on each, `clawfleet agent --join {name} --slot N`.\n\
         # Secrets stay where they are; the registry named them (listed per slot below).\n\n",
        instances.len()
    );
    out.push_str(&format!("[fleets.{name}]\nbackend = \"external\"\nreplicas = {}\n", instances.len()));
    out.push_str("# Slot by slot, what the registry said of each instance:\n");
    for (slot, (id, i)) in instances.iter().enumerate() {
        let Value::Object(fields) = i else { bail!("instance '{}': an instance is an object", shown(&Value::String(id.clone()))) };
        let rest: Vec<String> = fields.iter().map(|(k, v)| format!("{} {}", shown(&Value::String(k.clone())), shown(v))).collect();
        out.push_str(&format!("#   {slot}: {} ({})\n", shown(&Value::String(id.clone())), rest.join(", ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn hatchery_fleets_become_one_docker_fleet() {
        let registry = r#"{"instances": {
            "alice": {"port": 18789, "created": "2026-02-01", "host": "nas", "status": "running", "version": "1.4"},
            "bob": {"port": 18790, "created": "2026-02-03", "host": "nas", "status": "running", "version": "1.5"},
            "carol": {"port": 18791, "created": "2026-02-04", "host": "nas", "status": "running", "version": "1.5"},
            "dave": {"port": 18792, "created": "2026-01-01", "host": "nas", "status": "stopped", "version": "1.2"}
        }}"#;
        let toml = convert(registry, None).unwrap();
        expect![[r#"
            # Imported from hatchery's fleet.json: 4 instances, 3 running.
            # Each instance was a container of its own on a port of its own; clawfleet runs them as one
            # docker fleet (a Swarm service) and gives each agent its own workspace volume.

            [fleets.hatchery]
            backend = "docker"
            replicas = 3
            version = "1.5"
            # Slot by slot, what the registry said of each running instance:
            #   0: alice (host nas, port 18789, version 1.4, created 2026-02-01)
            #   1: bob (host nas, port 18790, version 1.5, created 2026-02-03)
            #   2: carol (host nas, port 18791, version 1.5, created 2026-02-04)
            #   not imported: dave (stopped)
        "#]]
        .assert_eq(&toml);
        let fleets = clawfleet_proto::fleetfile::parse(&toml).unwrap();
        assert_eq!((fleets[0].request.replicas, fleets[0].request.backend.as_deref()), (3, Some("docker")));
    }

    #[test]
    fn clawdinators_become_one_external_fleet() {
        let registry = r#"{
            "clawdinator-1": {"host": "clawdinator-1", "instanceType": "t3.large", "bootstrapPrefix": "bootstrap/clawdinator-1", "discordTokenSecret": "clawdinator-discord-token-1"},
            "clawdinator-2": {"host": "clawdinator-2", "instanceType": "t3.large", "bootstrapPrefix": "bootstrap/clawdinator-2", "discordTokenSecret": "clawdinator-discord-token-2"}
        }"#;
        let toml = convert(registry, Some("dinos")).unwrap();
        expect![[r#"
            # Imported from clawdinators' instances.json: 2 instances, one agent per host.
            # The hosts run their agents themselves: on each, `clawfleet agent --join dinos --slot N`.
            # Secrets stay where they are; the registry named them (listed per slot below).

            [fleets.dinos]
            backend = "external"
            replicas = 2
            # Slot by slot, what the registry said of each instance:
            #   0: clawdinator-1 (host clawdinator-1, instanceType t3.large, bootstrapPrefix bootstrap/clawdinator-1, discordTokenSecret clawdinator-discord-token-1)
            #   1: clawdinator-2 (host clawdinator-2, instanceType t3.large, bootstrapPrefix bootstrap/clawdinator-2, discordTokenSecret clawdinator-discord-token-2)
        "#]]
        .assert_eq(&toml);
        assert_eq!(clawfleet_proto::fleetfile::parse(&toml).unwrap()[0].request.replicas, 2);
    }

    #[test]
    fn what_is_no_registry_is_refused_by_name() {
        let err = |text: &str, fleet: Option<&str>| convert(text, fleet).unwrap_err().to_string();
        assert!(err("[1, 2]", None).contains("a registry is a JSON object; this is an array"));
        assert!(err("{\"a\": 1}", None).contains("neither hatchery's fleet.json"));
        assert!(err("not json", None).starts_with("not JSON"));
        assert!(err(r#"{"instances": []}"#, None).contains("`instances` must be an object"));
        assert!(err(r#"{"instances": {}}"#, Some("Bad Name")).contains("give another with --fleet"));
        // A newline in a registry's names cannot end a comment and start TOML of its own.
        let sneaky = r#"{"instances": {"x\n[fleets.evil]\nreplicas = 9": {"status": "running"}}}"#;
        let fleets = clawfleet_proto::fleetfile::parse(&convert(sneaky, None).unwrap()).unwrap();
        assert_eq!(fleets.iter().map(|f| f.request.name.as_str()).collect::<Vec<_>>(), ["hatchery"]);
    }
}

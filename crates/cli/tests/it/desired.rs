//! Desired state in a file: `diff` plans (exit 0 when nothing would change, 2 when something
//! would), `apply` makes it so through the reconciler and waits, `--prune` terminates what the
//! file leaves out, and a bad file changes nothing.

use crate::support::Plane;

fn write(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("fleet.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `diff`'s exit code and stdout.
fn diff(plane: &Plane, file: &str, extra: &[&str]) -> (i32, String) {
    let out = plane.cli(&[&["diff", "-f", file], extra].concat());
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_fleet_file_is_planned_applied_changed_and_pruned() {
    let plane = Plane::start();
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "[fleets.web]\nreplicas = 1\nbrain = \"echo\"\n\n[fleets.batch]\nreplicas = 2\nbrain = \"echo\"\nversion = \"1\"\n",
    );
    let (code, plan) = diff(&plane, &file, &[]);
    assert_eq!(code, 2, "changes to make: {plan}");
    assert!(plan.contains("+ fleet batch") && plan.contains("+ fleet web") && plan.contains("2 to create"), "{plan}");
    assert_eq!(plane.json(&["ls", "--json"])["fleets"], serde_json::json!([]), "diff changes nothing");

    plane.ok(&["apply", "-f", &file, "--timeout", "120"]);
    for (fleet, replicas) in [("web", 1), ("batch", 2)] {
        let status = plane.json(&["status", fleet, "--json"]);
        assert_eq!(status["fleet"]["ready"], replicas, "{status}");
    }
    let (code, plan) = diff(&plane, &file, &[]);
    assert_eq!((code, plan.trim()), (0, "0 to create, 0 to change, 0 to terminate"));

    // A changed file: web scales, batch moves to version 2 with a prompt (its agents replaced),
    // and the plan says old → new.
    let file = write(
        dir.path(),
        "[fleets.web]\nreplicas = 2\nbrain = \"echo\"\n\n[fleets.batch]\nreplicas = 2\nbrain = \"echo\"\nversion = \"2\"\n\
         prompt = \"You are terse.\"\ndeploy = { max_unavailable = \"50%\" }\n",
    );
    let (code, plan) = diff(&plane, &file, &["--json"]);
    assert_eq!(code, 2);
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["applied"], false);
    let batch = &plan["changes"][0];
    assert_eq!((batch["fleet"].as_str(), batch["op"].as_str()), (Some("batch"), Some("update")), "{plan}");
    let fields: Vec<&str> = batch["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["prompt", "version", "deploy.max_unavailable"]);
    assert_eq!(plan["changes"][1]["fields"], serde_json::json!([{"field": "replicas", "from": "1", "to": "2"}]));

    plane.ok(&["apply", "-f", &file, "--timeout", "120"]);
    let batch = plane.json(&["status", "batch", "--json"]);
    assert_eq!(batch["fleet"]["version"], "2");
    assert_eq!(batch["fleet"]["deploy"], serde_json::json!({"max_unavailable": "50%"}));
    for agent in batch["agents"].as_array().unwrap() {
        assert_eq!((agent["state"].as_str(), agent["fleet_version"].as_str()), (Some("idle"), Some("2")), "{batch}");
    }
    assert_eq!(plane.json(&["status", "web", "--json"])["fleet"]["ready"], 2);
    let events = crate::support::events(&plane, "batch");
    assert!(
        events.iter().any(|e| e["event"] == "fleet_changed" && e["data"]["changes"][0].as_str().is_some_and(|c| c.starts_with("prompt:"))),
        "{events:?}"
    );

    // A fleet the file no longer declares is left alone, unless --prune.
    let file = write(
        dir.path(),
        "[fleets.batch]\nreplicas = 2\nbrain = \"echo\"\nversion = \"2\"\nprompt = \"You are terse.\"\ndeploy = { max_unavailable = \"50%\" }\n",
    );
    let (code, plan) = diff(&plane, &file, &[]);
    assert_eq!(code, 0, "{plan}");
    assert!(plan.contains("fleet web is not declared: left alone"), "{plan}");
    let (code, plan) = diff(&plane, &file, &["--prune"]);
    assert_eq!(code, 2);
    assert!(plan.contains("- fleet web") && plan.contains("1 to terminate"), "{plan}");
    plane.ok(&["apply", "-f", &file, "--prune"]);
    let fleets = plane.json(&["ls", "--json"]);
    let names: Vec<&str> = fleets["fleets"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["batch"]);
    let audit = plane.json(&["audit", "--json"]);
    assert!(audit.as_array().unwrap().iter().any(|a| a["action"] == "apply: terminate" && a["target"] == "web"), "{audit}");
    plane.ok(&["terminate", "batch", "--wait"]);
}

#[test]
fn a_bad_fleet_file_changes_nothing_and_says_where() {
    let plane = Plane::start();
    plane.ok(&["launch", "web", "--backend", "external", "--replicas", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[fleets.web]\nbackend = \"external\"\nreplicas = 1\nreplcas = 3\n", ":4:1: unknown field `replcas`, expected one of"),
        ("[fleets.web]\nbackend = \"external\"\nreplicas = \"two\"\n", ":3:12: invalid type: string \"two\", expected u32"),
        ("[fleets.new]\nreplicas = 1\nbrain = \"gpt\"\n", ":3:9: fleets.new.brain: invalid brain spec 'gpt'"),
        ("[fleets.new]\nreplicas = 1\ndeploy = { max_unavailable = 0 }\n", ":3:30: max_unavailable must be a count of at least 1"),
        ("[fleets.new\n", ":1:12: unclosed table, expected `]`"),
    ];
    for (text, want) in cases {
        let file = write(dir.path(), text);
        for command in ["diff", "apply"] {
            let err = plane.fails(&[command, "-f", &file]);
            assert!(err.contains(&format!("{file}{want}")), "{command} of {text:?}: {err}");
        }
    }
    // One fleet cannot be applied (it would move to another backend): the good one is not made.
    let file = write(dir.path(), "[fleets.good]\nreplicas = 1\nbrain = \"echo\"\n\n[fleets.web]\nreplicas = 1\n");
    let err = plane.fails(&["apply", "-f", &file]);
    assert!(err.contains("fleet 'web' runs on the external backend and is declared on local"), "{err}");
    let err = plane.fails(&["apply", "-f", "/nonexistent/fleet.toml"]);
    assert!(err.contains("reading the fleet file /nonexistent/fleet.toml"), "{err}");
    let fleets = plane.json(&["ls", "--json"]);
    assert_eq!(fleets["fleets"].as_array().unwrap().len(), 1, "nothing half-applied: {fleets}");
    // A control plane without the backend a fleet names refuses it by name.
    let file = write(dir.path(), "[fleets.hpc]\nbackend = \"slurm\"\nreplicas = 1\n");
    let err = plane.fails(&["diff", "-f", &file]);
    assert!(err.contains("fleet 'hpc': backend: the slurm backend is not enabled"), "{err}");
}

#[test]
fn a_hatchery_registry_is_imported_as_a_fleet_file_the_control_plane_plans() {
    let plane = Plane::start();
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("fleet.json");
    std::fs::write(
        &registry,
        r#"{"instances": {"alice": {"port": 18789, "host": "nas", "status": "running", "version": "3"},
                          "bob": {"port": 18790, "host": "nas", "status": "running", "version": "3"}}}"#,
    )
    .unwrap();
    let file = dir.path().join("fleet.toml").display().to_string();
    let out = plane.cli(&["import", &registry.display().to_string(), "--fleet", "hatch", "-o", &file]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, plan) = diff(&plane, &file, &[]);
    // This control plane has no docker backend: the plan names it.
    assert_eq!(code, 1, "{plan}");
    let err = plane.fails(&["diff", "-f", &file]);
    assert!(err.contains("fleet 'hatch': backend: the docker backend is not enabled"), "{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("[fleets.hatch]\nbackend = \"docker\"\nreplicas = 2\nversion = \"3\"\n"), "{text}");
    let err = plane.fails(&["import", "/nonexistent/fleet.json"]);
    assert!(err.contains("reading /nonexistent/fleet.json"), "{err}");
}

/// A fleet file gives brains variables and secrets: the variables are shown, the secrets'
/// values never (not in status, events, the audit log, the agent's log or its environment,
/// until a brain says them);
/// a changed value replaces the agents; a missing or misnamed one is refused, nothing applied.
#[test]
fn brains_get_the_env_and_secrets_a_fleet_file_names() {
    let plane = Plane::start();
    let dir = tempfile::tempdir().unwrap();
    let value_file = dir.path().join("value");
    std::fs::write(&value_file, "s3cr3t-42\n").unwrap();
    let value = value_file.display().to_string();

    let brain = r#"cmd:echo \"$PROJECT $API_KEY $(tr '\\0' '\\n' < /proc/$PPID/environ | grep -c s3cr[3]t)\""#;
    let file = write(
        dir.path(),
        &format!("[fleets.lab]\nreplicas = 1\nbrain = \"{brain}\"\nenv = {{ PROJECT = \"climate\" }}\nsecrets = [\"API_KEY\"]\n"),
    );
    // The secret must exist first: nothing is applied.
    let err = plane.fails(&["apply", "-f", &file]);
    assert!(err.contains("no secret named 'API_KEY': set it first (clawfleet secret set API_KEY)"), "{err}");
    assert_eq!(plane.json(&["ls", "--json"])["fleets"], serde_json::json!([]));
    assert!(plane.ok(&["secret", "set", "API_KEY", "--from-file", &value]).contains("secret 'API_KEY' set (9 bytes)"));

    plane.ok(&["apply", "-f", &file, "--timeout", "120"]);
    let status = plane.json(&["status", "lab", "--json"]);
    assert_eq!((status["fleet"]["env"]["PROJECT"].as_str(), status["fleet"]["secrets"][0].as_str()), (Some("climate"), Some("API_KEY")));
    let human = plane.ok(&["status", "lab"]);
    assert!(human.contains("brain env: PROJECT=climate") && human.contains("brain secrets: API_KEY (values never shown)"), "{human}");
    let list = plane.json(&["secret", "list", "--json"]);
    assert_eq!((list["secrets"][0]["name"].as_str(), list["secrets"][0]["fleets"][0].as_str()), (Some("API_KEY"), Some("lab")), "{list}");
    let agents = plane.data().join("agents");
    let logs: String = walk(&agents).iter().filter(|p| p.ends_with("agent.log")).map(|p| std::fs::read_to_string(p).unwrap()).collect();
    for (what, text) in [
        ("status", status.to_string()),
        ("the secret list", list.to_string()),
        ("events", serde_json::to_string(&crate::support::events(&plane, "lab")).unwrap()),
        ("the audit log", plane.json(&["audit", "--json"]).to_string()),
        ("the agent's log", logs),
    ] {
        assert!(!text.contains("s3cr3t"), "the secret's value is in {what}: {text}");
    }
    // The brain has both (and says so: its answer is its own); its agent's environment holds
    // no secret (0 lines match).
    assert_eq!(plane.ok(&["inject", "lab", "go", "--wait"]).trim(), "lab/0: climate s3cr3t-42 0");
    let err = plane.fails(&["secret", "rm", "API_KEY"]);
    assert!(err.contains("the secret 'API_KEY' is used by fleet(s) lab"), "{err}");

    // A new value: the agents are replaced and get it.
    std::fs::write(&value_file, "s3cr3t-43").unwrap();
    assert!(plane.ok(&["secret", "set", "API_KEY", "--from-file", &value]).contains("the agents of lab get it"));
    crate::support::eventually(std::time::Duration::from_secs(60), "the new value to reach the brain", || {
        let out = plane.cli(&["inject", "lab", "go", "--wait"]);
        String::from_utf8_lossy(&out.stdout).contains("climate s3cr3t-43 0").then_some(())
    });
    // A changed variable is a planned change, and rolls the agents too.
    let changed = write(
        dir.path(),
        &format!("[fleets.lab]\nreplicas = 1\nbrain = \"{brain}\"\nenv = {{ PROJECT = \"ocean\" }}\nsecrets = [\"API_KEY\"]\n"),
    );
    let (code, plan) = diff(&plane, &changed, &[]);
    assert!(code == 2 && plan.contains("env: PROJECT=climate → PROJECT=ocean"), "{plan}");
    plane.ok(&["apply", "-f", &changed, "--timeout", "120"]);
    crate::support::eventually(std::time::Duration::from_secs(60), "the new variable to reach the brain", || {
        let out = plane.cli(&["inject", "lab", "go", "--wait"]);
        String::from_utf8_lossy(&out.stdout).contains("ocean s3cr3t-43 0").then_some(())
    });

    // Bad names are refused where they are written; so is a secret that is not set, at launch.
    let bad = write(dir.path(), "[fleets.x]\nreplicas = 1\nenv = { CLAWFLEET_BUS = \"evil\" }\n");
    let err = plane.fails(&["apply", "-f", &bad]);
    assert!(err.contains("fleet.toml:3:7: fleets.x.env") && err.contains("clawfleet's own"), "{err}");
    let err = plane.fails(&["launch", "y", "--secret", "NOPE"]);
    assert!(err.contains("no secret named 'NOPE'"), "{err}");
    let err = plane.fails(&["launch", "z", "--env", "1X=2"]);
    assert!(err.contains("'1X' is not an environment variable name"), "{err}");
    plane.ok(&["terminate", "lab", "--wait"]);
    assert!(plane.ok(&["secret", "rm", "API_KEY"]).contains("secret 'API_KEY' removed"));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

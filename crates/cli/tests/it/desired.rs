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

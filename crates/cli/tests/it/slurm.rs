//! The slurm backend passes the conformance suite on a real single-node Slurm (started by
//! `scripts/slurm-setup`, which `.ci/run` runs), with real agent jobs on a real bus.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clawfleet_backend::Instance;
use clawfleet_backend::conformance::{self, Chaos};
use clawfleet_backend::slurm::{SlurmBackend, SlurmConfig};

use crate::support::{Plane, PlaneOptions, eventually};

/// Kills a job's agent the way a crashed node process would end it.
struct KillJob;

#[async_trait]
impl Chaos for KillJob {
    async fn kill(&self, instance: &Instance) {
        let id = instance.id.strip_prefix("job ").expect("a job id").to_owned();
        let out = std::process::Command::new("scancel").args(["--full", "--signal=KILL", &id]).output().unwrap();
        assert!(out.status.success(), "scancel: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn slurm_is_up() {
    let sinfo = std::process::Command::new("sinfo").args(["-h", "-o", "%T"]).output();
    let state = sinfo.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    // `completing`: another test's jobs are being cleaned up; the node serves all the same.
    assert!(
        ["idle", "mixed", "allocated", "completing"].iter().any(|s| state.starts_with(s)),
        "a single-node Slurm must be up (scripts/slurm-setup; .ci/run runs it); sinfo says '{state}'"
    );
}

#[test]
fn a_slurm_fleet_launches_answers_and_terminates() {
    slurm_is_up();
    let plane = Plane::with(PlaneOptions { slurm: true, ..PlaneOptions::default() });
    plane.ok(&["launch", "hpc", "--backend", "slurm", "--replicas", "2", "--brain", "echo", "--wait", "--timeout", "120"]);
    let status = plane.json(&["status", "hpc", "--json"]);
    for a in status["agents"].as_array().unwrap() {
        assert!(a["instance"].as_str().is_some_and(|i| i.starts_with("job ")), "{a}");
        assert!(a["node"].as_str().is_some_and(|n| !n.is_empty()), "{a}");
    }
    let out = plane.ok(&["inject", "hpc", "hello from the login node", "--wait"]);
    assert!(out.contains("hpc/0: hello from the login node") && out.contains("hpc/1: hello from the login node"), "{out}");
    // A running agent's workspace holds no credential: the batch script went once Slurm had its
    // copy, and the agent read and removed its secrets file.
    let fleet_dir = std::fs::read_dir(plane.data().join("slurm"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("hpc-"))
        .unwrap();
    for slot in ["0", "1"] {
        let ws = fleet_dir.path().join(slot);
        for file in ["job.sh", "agent.secrets"] {
            assert!(!ws.join(file).exists(), "{} is still there", ws.join(file).display());
        }
    }
    // A deploy: each job replaced by one on the new version, each new agent health-checked.
    let deploy = plane.json(&["deploy", "hpc", "--version", "2", "--deadline", "120", "--json"]);
    assert_eq!((deploy["state"].as_str(), deploy["fleets"][0]["ready"].as_u64()), (Some("succeeded"), Some(2)), "{deploy}");
    // A canary on Slurm: only the first job moves, then the deploy waits; abort brings it back.
    let deploy = plane.json(&["deploy", "hpc", "--version", "3", "--canary", "1", "--deadline", "120", "--json"]);
    assert_eq!(deploy["state"], "paused", "{deploy}");
    plane.ok(&["deploy", "abort", "hpc"]);
    crate::support::eventually(Duration::from_secs(120), "the canary back on version 2", || {
        let s = plane.json(&["status", "hpc", "--json"]);
        s["agents"].as_array().unwrap().iter().all(|a| a["fleet_version"] == "2" && a["state"] == "idle").then_some(())
    });
    // A deploy whose new agent fails its health check (its brain answers no probe) reverts.
    plane.ok(&["launch", "sick", "--backend", "slurm", "--replicas", "1", "--brain", "openai:http://127.0.0.1:9/v1#none", "--wait"]);
    let err = plane.fails(&["deploy", "sick", "--version", "2", "--deadline", "120"]);
    assert!(err.contains("reverted: agent sick/0 on version 2 failed its health check"), "{err}");
    plane.ok(&["terminate", "sick", "--wait"]);
    // A job's brain gets the fleet's variables and secrets (the secret through the job's
    // private file, which is gone once the agent read it).
    let value = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(value.path(), "slurm-s3cret").unwrap();
    plane.ok(&["secret", "set", "API_KEY", "--from-file", value.path().to_str().unwrap()]);
    let brain = r#"cmd:echo "$PROJECT $API_KEY""#;
    let args = ["--brain", brain, "--env", "PROJECT=climate", "--secret", "API_KEY", "--wait", "--timeout", "120"];
    plane.ok(&[&["launch", "envy", "--backend", "slurm", "--replicas", "1"][..], &args[..]].concat());
    assert_eq!(plane.ok(&["inject", "envy", "go", "--wait"]).trim(), "envy/0: climate slurm-s3cret");
    plane.ok(&["terminate", "envy", "--wait"]);
    plane.ok(&["terminate", "hpc", "--wait"]);
    let left = std::process::Command::new("squeue").args(["-h", "-o", "%j"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&left.stdout).contains("cf.hpc."), "jobs left after terminate");
}

#[test]
fn slurm_backend_passes_the_conformance_suite() {
    slurm_is_up();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let root = tempfile::tempdir().unwrap();
        let backend = Arc::new(SlurmBackend::new(SlurmConfig {
            program: crate::support::BIN.into(),
            root: root.path().to_owned(),
            partition: None,
            login: None,
            transport: clawfleet_proto::cluster::TransportMode::Bus,
        }));
        let (_broker, harness) = crate::conformance::harness("127.0.0.1", "sconf", 300, Arc::new(KillJob), Duration::from_secs(90));
        let result = conformance::run(backend.clone(), harness).await;
        if result.is_err() {
            let _ = std::process::Command::new("sh")
                .args(["-c", "squeue -h -o '%i %j' | awk '$2 ~ /^cf\\.sconf\\./ {print $1}' | xargs -r scancel"])
                .status();
        }
        result.unwrap();
    });
}

fn cluster_file(dir: &std::path::Path, name: &str, profile: serde_json::Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, profile.to_string()).unwrap();
    path.display().to_string()
}

/// The Slurm job id of an agent in `status --json`, once it has one.
fn try_job_of(status: &serde_json::Value, slot: usize) -> Option<String> {
    status["agents"][slot]["instance"].as_str().and_then(|i| i.strip_prefix("job ")).map(str::to_owned)
}

fn job_of(status: &serde_json::Value, slot: usize) -> String {
    try_job_of(status, slot).expect("a job id")
}

/// The pid of the agent runtime inside a Slurm job (found by its environment).
fn agent_pid(job: &str) -> Option<u32> {
    let needle = format!("SLURM_JOB_ID={job}\0");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        let is_agent = cmdline.split(|&b| b == 0).any(|w| w == b"agent") && !cmdline.starts_with(b"/bin/sh");
        (is_agent && environ.windows(needle.len()).any(|w| w == needle.as_bytes())).then_some(pid)
    })
}

/// Agents whose nodes have no route to the bus: the whole life of a fleet through the mailbox.
#[test]
fn a_slurm_fleet_on_the_mailbox_answers_survives_garbage_and_reports_dead_workers() {
    slurm_is_up();
    let plane = Plane::with(PlaneOptions { slurm: true, ..PlaneOptions::default() });
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_file(dir.path(), "mbox.json", serde_json::json!({"transport": "mailbox", "inject_timeout_seconds": 600}));
    plane.ok(&[
        "launch",
        "mbox",
        "--backend",
        "slurm",
        "--replicas",
        "2",
        "--brain",
        "echo",
        "--cluster",
        &cluster,
        "--wait",
        "--timeout",
        "120",
    ]);
    let out = plane.ok(&["inject", "mbox", "over the shared filesystem", "--wait"]);
    assert!(out.contains("mbox/0: over the shared filesystem") && out.contains("mbox/1: over the shared filesystem"), "{out}");

    // clawbucket's scenarios over the mailbox too: the leader's move and the other's, scored;
    // every agent's three words; the leader's haiku.
    plane.ok(&["scenario", "mbox", "--rps", "1s", "--haiku", "1m", "--three-words", "1m"]);
    eventually(Duration::from_secs(60), "a scored round over the mailbox", || {
        let v = plane.json(&["scoreboard", "mbox", "--json"]);
        v["scoreboard"].as_array().unwrap().iter().any(|r| r["last_round"].as_u64() >= Some(1)).then_some(())
    });
    eventually(Duration::from_secs(60), "three words over the mailbox", || {
        let s = plane.json(&["status", "mbox", "--json"]);
        s["agents"].as_array().unwrap().iter().all(|a| a["three_words"].is_string()).then_some(())
    });
    eventually(Duration::from_secs(60), "the leader's haiku over the mailbox", || {
        plane.json(&["haiku", "mbox", "--json"])["haiku"].as_array().is_some_and(|h| !h.is_empty()).then_some(())
    });
    plane.ok(&["scenario", "mbox", "--rps", "off", "--haiku", "off", "--three-words", "off"]);

    // It went through files, not the bus: each agent's outbox holds its events.
    let status = plane.json(&["status", "mbox", "--json"]);
    let uid = status["fleet"]["uid"].as_str().map(str::to_owned);
    let base = std::fs::read_dir(plane.data().join("slurm"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().unwrap().to_string_lossy().starts_with("mbox-") && uid.as_deref().is_none_or(|u| p.to_string_lossy().ends_with(u))
        })
        .expect("the fleet's directory");
    let job0 = job_of(&status, 0);
    let outbox0 = base.join("mailbox/outbox").join(format!("{job0}_00.jsonl"));
    let text = std::fs::read_to_string(&outbox0).unwrap();
    assert!(text.lines().next().unwrap().contains(r#""type":"start""#), "{text}");
    assert!(text.contains(r#""event":"assistant""#), "{text}");
    assert!(base.join("mailbox/inbox").join(format!("{job0}_00.jsonl")).exists());

    // A garbage line and a truncated one in an outbox: reported, skipped, the lines around them kept.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&outbox0).unwrap();
        f.write_all(b"this is not json\n{\"type\":\"worker_event\",\"event\":\"bogus\"}\n").unwrap();
    }
    crate::support::eventually(Duration::from_secs(30), "the garbage reported", || {
        let ev = crate::support::events(&plane, "mbox");
        let skipped = ev
            .iter()
            .filter(|e| e["event"] == "agent_error" && e["data"]["message"].as_str().is_some_and(|m| m.contains("skipped an outbox line")));
        (skipped.count() == 2).then_some(())
    });
    let out = plane.ok(&["inject", "mbox", "still serving", "--agent", "0", "--wait"]);
    assert!(out.contains("mbox/0: still serving"), "{out}");

    // A job cancelled from outside: the agent stops cleanly (complete, archived), a new job takes the slot.
    let job1 = job_of(&status, 1);
    assert!(std::process::Command::new("scancel").arg(&job1).status().unwrap().success());
    let archived = base.join("mailbox/archive").join(format!("{job1}_01.jsonl"));
    crate::support::eventually(Duration::from_secs(60), "the cancelled agent's outbox archived", || archived.exists().then_some(()));
    let last = std::fs::read_to_string(&archived).unwrap().lines().last().unwrap_or_default().to_owned();
    assert_eq!(last, format!(r#"{{"type":"complete","job_id":"{job1}","node_id":1}}"#));
    crate::support::eventually(Duration::from_secs(120), "a new job for slot 1", || {
        let s = plane.json(&["status", "mbox", "--json"]);
        let job = try_job_of(&s, 1);
        (job.is_some_and(|j| j != job1) && s["agents"][1]["state"] == "idle").then_some(())
    });
    let out = plane.ok(&["inject", "mbox", "after the cancel", "--agent", "1", "--wait"]);
    assert!(out.contains("mbox/1: after the cancel"), "{out}");

    // A worker killed in a turn: its job script leaves a worker_error, which ends the turn.
    plane.ok(&["terminate", "mbox", "--wait"]);
    let slow = cluster_file(dir.path(), "slow.json", serde_json::json!({"transport": "mailbox"}));
    plane.ok(&[
        "launch",
        "slow",
        "--backend",
        "slurm",
        "--replicas",
        "1",
        "--brain",
        "cmd:sleep 300",
        "--cluster",
        &slow,
        "--wait",
        "--timeout",
        "120",
    ]);
    let injected = plane.json(&["inject", "slow", "take your time", "--json"]);
    let id = injected["injection_id"].as_str().unwrap().to_owned();
    crate::support::eventually(Duration::from_secs(30), "the turn started", || {
        (crate::support::count(&crate::support::events(&plane, "slow"), "turn_started", 0, &id) == 1).then_some(())
    });
    let job = job_of(&plane.json(&["status", "slow", "--json"]), 0);
    let pid = crate::support::eventually(Duration::from_secs(10), "the agent's pid", || agent_pid(&job));
    assert!(std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let err = crate::support::eventually(Duration::from_secs(90), "agent_error for the turn", || {
        if std::time::Instant::now() > deadline {
            let log = plane.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!("no worker_error event; pid {pid} of job {job}; events: {:#?}\nlog: {tail:#?}", crate::support::events(&plane, "slow"));
        }
        crate::support::events(&plane, "slow").into_iter().find(|e| {
            e["event"] == "agent_error"
                && e["injection_id"] == id.as_str()
                && e["data"]["message"].as_str().is_some_and(|m| m.contains("failed"))
        })
    });
    assert!(err["data"]["message"].as_str().unwrap().contains("exited with status 137"), "{err}");
    plane.ok(&["terminate", "slow", "--wait"]);
}

/// An injection its agent does not take in time fails with "timeout"; bad cluster profiles and a
/// job Slurm refuses are clear errors, and the control plane keeps serving.
#[test]
fn slurm_timeouts_and_refusals_are_clear_errors() {
    slurm_is_up();
    let plane = Plane::with(PlaneOptions { slurm: true, ..PlaneOptions::default() });
    let dir = tempfile::tempdir().unwrap();

    // Bad files never reach the control plane.
    let typo = cluster_file(dir.path(), "typo.json", serde_json::json!({"partiton": "debug"}));
    let err = plane.fails(&["launch", "bad", "--backend", "slurm", "--replicas", "1", "--cluster", &typo]);
    assert!(err.contains("unknown field `partiton`"), "{err}");
    let err = plane.fails(&[
        "launch",
        "bad",
        "--backend",
        "local",
        "--replicas",
        "1",
        "--cluster",
        &cluster_file(dir.path(), "ok.json", serde_json::json!({})),
    ]);
    assert!(err.contains("--cluster is for the slurm backend"), "{err}");
    let err = plane.fails(&["launch", "bad", "--backend", "slurm", "--replicas", "1", "--cluster", "/nonexistent/cluster.json"]);
    assert!(err.contains("reading the cluster file /nonexistent/cluster.json"), "{err}");

    // A partition Slurm does not have: sbatch refuses; the fleet says why, as an event too.
    let nopart = cluster_file(dir.path(), "nopart.json", serde_json::json!({"partition": "nosuchpartition"}));
    plane.ok(&["launch", "refused", "--backend", "slurm", "--replicas", "1", "--cluster", &nopart]);
    let problem = crate::support::eventually(Duration::from_secs(60), "the refusal", || {
        plane.json(&["status", "refused", "--json"])["fleet"]["problem"].as_str().map(str::to_owned)
    });
    assert!(problem.contains("sbatch") && problem.contains("nosuchpartition"), "{problem}");
    assert!(!problem.contains("trying again"), "a refusal is no transient failure: {problem}");
    // A mailbox directory that cannot be made (its root is a file).
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let nodir =
        cluster_file(dir.path(), "nodir.json", serde_json::json!({"transport": "mailbox", "workspace_root": file.display().to_string()}));
    plane.ok(&["launch", "nodir", "--backend", "slurm", "--replicas", "1", "--cluster", &nodir]);
    let problem = crate::support::eventually(Duration::from_secs(60), "the mailbox problem", || {
        plane.json(&["status", "nodir", "--json"])["fleet"]["problem"].as_str().map(str::to_owned)
    });
    assert!(problem.contains("mailbox") && problem.contains("a-file"), "{problem}");
    // ssh to a login host that does not exist.
    let nossh = cluster_file(dir.path(), "nossh.json", serde_json::json!({"login_host": "no-such-login-node.invalid"}));
    plane.ok(&["launch", "nossh", "--backend", "slurm", "--replicas", "1", "--cluster", &nossh]);
    let problem = crate::support::eventually(Duration::from_secs(120), "the ssh failure", || {
        plane.json(&["status", "nossh", "--json"])["fleet"]["problem"].as_str().map(str::to_owned)
    });
    // An unreachable login node is a transient failure: tried again with backoff, and said as
    // an event once it has failed three times in a row.
    assert!(problem.contains("over ssh") && problem.contains("trying again in"), "{problem}");
    for fleet in ["refused", "nodir", "nossh"] {
        crate::support::eventually(Duration::from_secs(120), "the backend's complaint as an event", || {
            let ev = crate::support::events(&plane, fleet);
            ev.iter()
                .any(|e| e["event"] == "agent_error" && e["data"]["message"].as_str().is_some_and(|m| m.starts_with("slurm backend:")))
                .then_some(())
        });
        plane.ok(&["terminate", fleet]);
    }

    // An agent that cannot take an injection (its job suspended) fails it with "timeout".
    let quick = cluster_file(dir.path(), "quick.json", serde_json::json!({"transport": "mailbox", "inject_timeout_seconds": 2}));
    plane.ok(&[
        "launch",
        "late",
        "--backend",
        "slurm",
        "--replicas",
        "1",
        "--brain",
        "echo",
        "--cluster",
        &quick,
        "--wait",
        "--timeout",
        "120",
    ]);
    let job = job_of(&plane.json(&["status", "late", "--json"]), 0);
    assert!(std::process::Command::new("scontrol").args(["suspend", &job]).status().unwrap().success());
    crate::support::eventually(Duration::from_secs(30), "the agent lost", || {
        (plane.json(&["status", "late", "--json"])["agents"][0]["state"] == "lost").then_some(())
    });
    let injected = plane.json(&["inject", "late", "anyone there?", "--json"]);
    let id = injected["injection_id"].as_str().unwrap().to_owned();
    let failed = crate::support::eventually(Duration::from_secs(30), "inject_failed", || {
        crate::support::events(&plane, "late").into_iter().find(|e| e["event"] == "inject_failed" && e["injection_id"] == id.as_str())
    });
    assert_eq!(failed["data"]["error"], "timeout", "{failed}");
    // Resumed, the agent reads the injection late and drops it: a timed-out injection never runs.
    assert!(std::process::Command::new("scontrol").args(["resume", &job]).status().unwrap().success());
    crate::support::eventually(Duration::from_secs(60), "the agent back", || {
        (plane.json(&["status", "late", "--json"])["agents"][0]["state"] == "idle").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let ev = crate::support::events(&plane, "late");
    assert_eq!(crate::support::count(&ev, "inject_delivered", 0, &id), 0, "{ev:#?}");
    assert_eq!(crate::support::count(&ev, "turn_started", 0, &id), 0, "{ev:#?}");
    plane.ok(&["terminate", "late", "--wait"]);
    // Still serving.
    plane.ok(&["ls"]);
}

/// The control plane crashes while mailbox agents work: they go on writing; the restarted
/// control plane reads on from its committed offsets, and every event is stored exactly once.
#[test]
fn a_killed_control_plane_reads_the_mailbox_on_without_losing_or_repeating() {
    slurm_is_up();
    let mut plane = Plane::with(PlaneOptions { slurm: true, ..PlaneOptions::default() });
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster_file(dir.path(), "mbox.json", serde_json::json!({"transport": "mailbox"}));
    plane.ok(&[
        "launch",
        "crash",
        "--backend",
        "slurm",
        "--replicas",
        "2",
        "--brain",
        "cmd:sleep 2; echo slept",
        "--cluster",
        &cluster,
        "--wait",
        "--timeout",
        "120",
    ]);
    let first = plane.ok(&["inject", "crash", "before the crash", "--wait"]);
    assert!(first.contains("crash/0: slept") && first.contains("crash/1: slept"), "{first}");
    let id = plane.ok(&["inject", "crash", "during the crash"]).trim().to_owned();
    plane.kill();
    // The turns finish while nobody follows the mailbox.
    std::thread::sleep(Duration::from_secs(4));
    plane.spawn();
    crate::support::eventually(Duration::from_secs(60), "both turns read after the restart", || {
        let evs = crate::support::events(&plane, "crash");
        (crate::support::count(&evs, "turn_complete", 0, &id) == 1 && crate::support::count(&evs, "turn_complete", 1, &id) == 1)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let evs = crate::support::events(&plane, "crash");
    for agent in [0, 1] {
        for kind in ["inject_ack", "inject_delivered", "turn_started", "assistant", "turn_complete"] {
            assert_eq!(crate::support::count(&evs, kind, agent, &id), 1, "{kind} of agent {agent}: {evs:#?}");
        }
    }
    // No event of the first injection came twice either.
    let ids: Vec<&str> = evs.iter().filter(|e| e["event"] == "assistant").filter_map(|e| e["injection_id"].as_str()).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    plane.ok(&["terminate", "crash", "--wait"]);
}

/// A login node that accepts ssh's connection and never answers holds up its own fleet only:
/// a local fleet still scales, and its lost agent is still noticed, while the slurm fleet's
/// pass hangs (each fleet reconciles in a task of its own; liveness has its own tick).
#[test]
fn a_hanging_login_node_holds_up_no_other_fleet() {
    use std::time::{Duration, Instant};
    slurm_is_up();
    // ssh to this login node never returns (an `ssh` first on the control plane's PATH that
    // only sleeps: a node that accepts the connection and never answers).
    let bin = tempfile::tempdir().unwrap();
    let ssh = bin.path().join("ssh");
    std::fs::write(&ssh, "#!/bin/sh\nexec sleep 3600\n").unwrap();
    std::fs::set_permissions(&ssh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plane = Plane::with(PlaneOptions { slurm: true, extra_path: Some(bin.path().to_owned()), ..PlaneOptions::default() });
    plane.ok(&["launch", "quick", "--replicas", "1", "--wait"]);
    let hang = cluster_file(dir.path(), "hang.json", serde_json::json!({"login_host": "hanging-login-node"}));
    plane.ok(&["launch", "stuck", "--backend", "slurm", "--replicas", "1", "--cluster", &hang]);
    std::thread::sleep(Duration::from_secs(2));

    let t0 = Instant::now();
    plane.ok(&["scale", "quick", "2", "--wait", "--timeout", "30"]);
    assert!(t0.elapsed() < Duration::from_secs(30), "the local fleet waited for the slurm one");
    // A frozen local agent is noticed as lost (three missed heartbeats of 200 ms), not after the hang.
    let pid = plane.agent_pid("quick", 0).expect("agent 0 runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGSTOP).unwrap();
    crate::support::eventually(Duration::from_secs(20), "agent quick/0 to be lost", || {
        let status = plane.json(&["status", "quick", "--json"]);
        (status["agents"][0]["state"] == "lost").then_some(())
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGCONT).unwrap();
    // `status` of the stuck fleet answers too, from heartbeats, without waiting out ssh (60 s).
    let (tx, rx) = std::sync::mpsc::channel();
    let data = plane.data().to_owned();
    std::thread::spawn(move || {
        let out = std::process::Command::new(crate::support::BIN)
            .args(["status", "stuck", "--json"])
            .env("CLAWFLEET_DATA", data)
            .env_remove("CLAWFLEET_TOKEN")
            .env_remove("CLAWFLEET_SERVER")
            .output()
            .unwrap();
        let _ = tx.send(out);
    });
    let out = rx.recv_timeout(Duration::from_secs(30)).expect("status of the stuck fleet answers");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    plane.ok(&["terminate", "quick", "--wait"]);
}

/// A code project on a slurm fleet: the control plane prepares each worker's clone in its job's
/// workspace on the shared filesystem, the mock workers (codeswarm's) commit their tasks' branches
/// there, and the integration branch lands in the project's repository.
#[test]
fn a_code_project_runs_on_slurm_workers() {
    slurm_is_up();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").arg("-C").arg(&repo).args(args).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    std::fs::create_dir_all(&repo).unwrap();
    git(&["init", "-q", "-b", "main"]);
    git(&["config", "user.name", "test"]);
    git(&["config", "user.email", "test@example.com"]);
    std::fs::write(repo.join("README.md"), "# hpc\n").unwrap();
    git(&["add", "README.md"]);
    git(&["commit", "-q", "-m", "start"]);
    let plane = Plane::with(PlaneOptions { slurm: true, heartbeat_ms: 500, ..PlaneOptions::default() });
    plane.ok(&["launch", "grid", "--backend", "slurm", "--replicas", "2", "--brain", "mock", "--wait", "--timeout", "120"]);
    let plan = serde_json::json!({"tasks": [
        {"task_id": "T-001", "title": "one", "prompt": "Make the first marker.", "depends_on": []},
        {"task_id": "T-002", "title": "two", "prompt": "Make the second marker.", "depends_on": ["T-001"]},
    ]});
    let file = dir.path().join("plan.json");
    std::fs::write(&file, plan.to_string()).unwrap();
    let repo_s = repo.display().to_string();
    let args = ["project", "create", "-f", file.to_str().unwrap(), "--title", "HPC", "--repo", &repo_s, "--workers", "grid"];
    let done = plane.json(&[&args[..], &["--start", "--wait", "--timeout", "240", "--json"]].concat());
    assert_eq!((done["status"].as_str(), done["task_counts"]["completed"].as_u64()), (Some("completed"), Some(3)), "{done:#}");
    let paths = done["repo_preparation"]["grid"]["worker_paths"].as_array().unwrap().clone();
    assert_eq!(paths.len(), 2, "{done:#}");
    for p in &paths {
        assert!(p.as_str().unwrap().starts_with(plane.data().join("slurm").to_str().unwrap()), "a clone in the job's workspace: {p}");
    }
    let ib = done["integration_branch"].as_str().unwrap();
    for t in ["T-001", "T-002"] {
        assert!(git(&["show", &format!("{ib}:mock_tasks/{t}.txt")]).starts_with(t));
    }
    plane.ok(&["terminate", "grid", "--wait"]);
}

//! The docker backend on a real single-node Swarm: agent images built locally, the
//! conformance suite, a fleet's life (discovery, a killed container, a network cut, a rolling
//! update that fails its health check and rolls back), and bad input. Each test uses networks,
//! services and images of its own, and removes them.
//!
//! Needs a Docker Engine in Swarm mode (`.ci/run` runs `docker swarm init`).

use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use clawfleet_backend::Instance;
use clawfleet_backend::conformance::{self, Chaos};
use clawfleet_docker::swarm::{DockerBackend, DockerConfig};
use clawfleet_docker::{Engine, swarm};
use serde_json::Value;

use crate::support::{BIN, Plane, PlaneOptions, eventually};

const IMAGE: &str = "clawfleet-agent:it";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("the docker CLI");
    assert!(out.status.success(), "docker {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

/// The Docker host address, once Swarm is known to run; the agent image, built once.
fn setup() -> String {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let engine = Engine::from_env();
        rt().block_on(async {
            let info: Value = engine.get("/info").await.expect("a Docker Engine (this test needs one; .ci/run has it)");
            assert_eq!(info["Swarm"]["LocalNodeState"], "active", "Docker must be in Swarm mode (docker swarm init; .ci/run does it)");
        });
        let out = Command::new(BIN).args(["image", "build", "--tag", IMAGE]).output().unwrap();
        assert!(out.status.success(), "image build failed: {}", String::from_utf8_lossy(&out.stderr));
        rt().block_on(swarm::gateway(&engine)).unwrap()
    })
    .clone()
}

struct KillContainer;

#[async_trait]
impl Chaos for KillContainer {
    async fn kill(&self, instance: &Instance) {
        let task = instance.id.clone();
        let container = docker(&["inspect", "--format", "{{.Status.ContainerStatus.ContainerID}}", &task]);
        docker(&["kill", &container]);
    }
}

#[test]
fn docker_backend_passes_the_conformance_suite() {
    let host = setup();
    let network = format!("cf-conf-{}", std::process::id());
    rt().block_on(async {
        let mut config = DockerConfig::new(Engine::from_env(), host.clone());
        config.network = network.clone();
        config.default_image = IMAGE.into();
        config.grace = Duration::from_secs(2);
        let backend = Arc::new(DockerBackend::new(config));
        let (_broker, harness) = crate::conformance::harness(&host, "dconf", 500, Arc::new(KillContainer), Duration::from_secs(120));
        let result = conformance::run(backend.clone(), harness).await;
        let _ = Command::new("docker").args(["service", "rm", "clawfleet-dconf"]).output();
        let _ = Command::new("docker").args(["network", "rm", &network]).output();
        result.unwrap();
    });
}

fn agent_status(plane: &Plane, fleet: &str) -> Vec<Value> {
    plane.json(&["status", fleet, "--json"])["agents"].as_array().unwrap().clone()
}

fn container_of(plane: &Plane, fleet: &str, slot: usize) -> String {
    let task = agent_status(plane, fleet)[slot]["instance"].as_str().unwrap().to_owned();
    docker(&["inspect", "--format", "{{.Status.ContainerStatus.ContainerID}}", &task])
}

fn report(plane: &Plane, fleet: &str, slot: &str) -> Value {
    let out = plane.json(&["command", fleet, "status-report", "--agent", slot, "--json"]);
    out["results"][0]["result"].clone()
}

#[test]
fn a_docker_fleet_lives_heals_and_rolls_back() {
    let host = setup();
    let network = format!("cf-life-{}", std::process::id());
    let plane = Plane::with(PlaneOptions { heartbeat_ms: 500, docker: Some((host, network.clone())), ..PlaneOptions::default() });
    let fleet = "dsquad";
    let service = "clawfleet-dsquad";
    let cleanup = || {
        let _ = Command::new("docker").args(["service", "rm", service]).output();
        let _ = Command::new("docker").args(["network", "rm", &network]).output();
    };
    struct Guard<F: Fn()>(F);
    impl<F: Fn()> Drop for Guard<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let _guard = Guard(cleanup);

    plane.ok(&[
        "launch",
        fleet,
        "--backend",
        "docker",
        "--replicas",
        "3",
        "--image",
        IMAGE,
        "--brain",
        "echo",
        "--wait",
        "--timeout",
        "180",
    ]);
    // The fleet's key reaches tasks as a Docker secret, not in the spec's environment, which
    // anyone with the engine can read.
    let env = docker(&["service", "inspect", service, "--format", "{{json .Spec.TaskTemplate.ContainerSpec.Env}}"]);
    assert!(
        env.contains("CLAWFLEET_BUS_FLEET_KEY_FILE=/run/secrets/clawfleet-fleet-key") && !env.contains("CLAWFLEET_BUS_FLEET_KEY="),
        "{env}"
    );
    let secrets = docker(&["secret", "ls", "-q", "--filter", &format!("label=org.clawfleet.fleet={fleet}")]);
    assert_eq!(secrets.lines().count(), 1, "{secrets}");
    let agents = agent_status(&plane, fleet);
    for (i, a) in agents.iter().enumerate() {
        assert_eq!(a["slot"], i as u64);
        assert!(a["instance"].as_str().is_some_and(|t| !t.is_empty()), "task id shown: {a}");
        assert!(a["node"].as_str().is_some_and(|n| !n.is_empty()), "node id shown: {a}");
    }

    // Discovery right after launch finds every task, with its address on the fleet's network
    // and its state: Swarm shows a task `starting` until its health check passes, a few seconds
    // after the agent said hello, and such a task already answers on its address.
    let found = plane.json(&["discover", "--service", service, "--method", "swarm", "--json"]);
    let tasks = found["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3, "every task, right after launch --wait: {found}");
    assert!(
        tasks.iter().all(|t| t["network"] == network.as_str() && matches!(t["state"].as_str(), Some("starting" | "running"))),
        "{found}"
    );
    // Once healthy, every task says so.
    let found = eventually(Duration::from_secs(60), "discovery to find 3 healthy running tasks", || {
        let found = plane.json(&["discover", "--service", service, "--method", "swarm", "--verify-health", "--json"]);
        let tasks = found["tasks"].as_array().unwrap();
        (tasks.len() == 3 && tasks.iter().all(|t| t["healthy"] == true && t["state"] == "running")).then_some(found)
    });
    let tasks = found["tasks"].as_array().unwrap();
    assert!(tasks.iter().all(|t| t["network"] == network.as_str()), "{found}");
    assert!(tasks.iter().all(|t| !t["address"].as_str().unwrap().contains('/')), "CIDR stripped: {found}");

    // clawbucket's scenarios on Swarm: rounds led by the leader and scored for the others;
    // each task's three words on /api/swarm; the leader's haiku.
    plane.ok(&["scenario", fleet, "--rps", "1s", "--haiku", "1m", "--three-words", "1m"]);
    eventually(Duration::from_secs(60), "scored rounds on Swarm", || {
        let v = plane.json(&["scoreboard", fleet, "--json"]);
        (v["scoreboard"].as_array().unwrap().len() == 2).then_some(())
    });
    eventually(Duration::from_secs(60), "three words on every task", || {
        let (_, v) = plane.http("GET", &format!("/api/swarm?service={service}"), Some(&plane.token()), None);
        v["replicas"].as_array().is_some_and(|r| r.len() == 3 && r.iter().all(|t| t["three_words"].is_string())).then_some(())
    });

    // The leader cut off the network: agent 1 leads in a new epoch and opens the rounds; agent
    // 0, back, learns it no longer leads and plays them. Never two leaders in one epoch, and no
    // leader's move accepted but from the agent that led, in its epoch (whatever agent 0 sends
    // from before the cut is refused).
    let leader = || {
        let f = plane.json(&["leader", fleet, "--json"]);
        (f["leader"]["slot"].as_u64(), f["leader"]["epoch"].as_u64().unwrap_or(0))
    };
    let played = |slot: u64| -> u64 {
        let v = plane.json(&["scoreboard", fleet, "--json"]);
        v["scoreboard"].as_array().unwrap().iter().find(|r| r["slot"] == slot).map_or(0, |r| r["last_round"].as_u64().unwrap())
    };
    plane.ok(&["leader", fleet, "0"]);
    eventually(Duration::from_secs(60), "agent 0 to lead", || (leader().0 == Some(0)).then_some(()));
    plane.ok(&["leader", fleet, "--auto"]);
    let (_, first) = leader();
    let cut = container_of(&plane, fleet, 0);
    docker(&["network", "disconnect", &network, &cut]);
    eventually(Duration::from_secs(60), "agent 1 to lead after the cut", || (leader().0 == Some(1)).then_some(()));
    let (_, second) = leader();
    assert!(second > first, "epochs grow: {first} then {second}");
    let round = eventually(Duration::from_secs(60), "a round scored under agent 1", || {
        let r = played(2);
        let led = crate::support::events(&plane, fleet)
            .iter()
            .any(|e| e["event"] == "rps_move" && e["agent"] == 1 && e["data"]["epoch"] == second);
        (led && r > 0).then_some(r)
    });
    docker(&["network", "connect", &network, &cut]);
    eventually(Duration::from_secs(60), "agent 0 to play a round led by agent 1", || (played(0) > round).then_some(()));
    assert_eq!(leader(), (Some(1), second), "the old leader stays replaced");
    let (epochs, led) = crate::support::leaders_and_led(&crate::support::events(&plane, fleet));
    assert!(led.iter().all(|l| epochs.contains(l)), "a move in an epoch its agent did not lead in: {led:?} vs {epochs:?}");
    eventually(Duration::from_secs(60), "the leader's haiku on Swarm", || {
        plane.json(&["haiku", fleet, "--json"])["haiku"].as_array().is_some_and(|h| !h.is_empty()).then_some(())
    });
    plane.ok(&["scenario", fleet, "--rps", "off", "--haiku", "off", "--three-words", "off"]);

    // A conversation, then a killed container: Swarm replaces it in the same slot, and the
    // agent keeps its workspace (journal epoch) and conversation.
    plane.ok(&["inject", fleet, "remember this", "--agent", "1", "--wait"]);
    let before = report(&plane, fleet, "1");
    assert_eq!(before["history_len"], 2, "{before}");
    let old_task = agent_status(&plane, fleet)[1]["instance"].clone();
    docker(&["kill", &container_of(&plane, fleet, 1)]);
    eventually(Duration::from_secs(120), "slot 1 to be replaced and ready", || {
        let a = &agent_status(&plane, fleet)[1];
        (a["instance"] != old_task && a["state"] == "idle" && a["restarts"].as_u64() >= Some(1)).then_some(())
    });
    let after = report(&plane, fleet, "1");
    assert_eq!(after["epoch"], before["epoch"], "same workspace after the container was replaced");
    assert_eq!(after["history_len"], 2, "{after}");

    // Cut slot 2 off the network: it is seen lost; a prompt sent meanwhile arrives once after
    // the cut heals.
    let container = container_of(&plane, fleet, 2);
    docker(&["network", "disconnect", &network, &container]);
    eventually(Duration::from_secs(30), "slot 2 to be seen lost", || (agent_status(&plane, fleet)[2]["state"] == "lost").then_some(()));
    let sent = plane.json(&["inject", fleet, "while you were away", "--agent", "2", "--json"]);
    let id = sent["injection_id"].as_str().unwrap().to_owned();
    docker(&["network", "connect", &network, &container]);
    eventually(Duration::from_secs(60), "slot 2 back and the prompt answered", || {
        let events = crate::support::events(&plane, fleet);
        (crate::support::count(&events, "turn_complete", 2, &id) == 1).then_some(())
    });
    let events = crate::support::events(&plane, fleet);
    assert_eq!(crate::support::count(&events, "inject_delivered", 2, &id), 1, "delivered exactly once");

    // An update to an image whose agents never become healthy is rolled back by Swarm.
    let broken = "clawfleet-agent:it-broken";
    build_broken(broken);
    let err =
        String::from_utf8(plane.cli(&["update", fleet, "--image", broken, "--version", "2", "--wait", "--timeout", "240"]).stderr).unwrap();
    assert!(err.contains("rolled back"), "{err}");
    let status = plane.json(&["status", fleet, "--json"]);
    assert!(status["fleet"]["problem"].as_str().unwrap().contains("rolled back"), "{status}");
    plane.ok(&["rollback", fleet]);
    eventually(Duration::from_secs(30), "the problem to clear", || {
        plane.json(&["status", fleet, "--json"])["fleet"]["problem"].is_null().then_some(())
    });
    // A good update goes through, one agent at a time.
    plane.ok(&["update", fleet, "--version", "3", "--wait", "--timeout", "240"]);
    // A deploy: Swarm replaces the agents, clawfleet's gate checks each one's health.
    let deploy = plane.json(&["deploy", fleet, "--version", "4", "--deadline", "240", "--json"]);
    assert_eq!((deploy["state"].as_str(), deploy["fleets"][0]["ready"].as_u64()), (Some("succeeded"), Some(3)), "{deploy}");
    // Canaries: Swarm moves one agent of its choosing, the gate passes it, and Swarm's update
    // holds there until promote; the others stay on version 4.
    let versions = || -> Vec<String> {
        let mut v: Vec<String> =
            agent_status(&plane, fleet).iter().map(|a| a["fleet_version"].as_str().unwrap_or("?").to_owned()).collect();
        v.sort();
        v
    };
    let err = plane.fails(&["deploy", &format!("{fleet}/1")]);
    assert!(err.contains("picks the agents it replaces") && err.contains("--canary 1"), "{err}");
    let deploy = plane.json(&["deploy", fleet, "--version", "5", "--canary", "1", "--deadline", "240", "--json"]);
    assert_eq!((deploy["state"].as_str(), deploy["fleets"][0]["ready"].as_u64()), (Some("paused"), Some(1)), "{deploy}");
    assert_eq!(versions(), ["4", "4", "5"]);
    let text = plane.ok(&["status", fleet]);
    assert!(text.contains("canary: 1 agents (the backend's choice) on version 5") && text.contains("1/1 agents passed"), "{text}");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(versions(), ["4", "4", "5"], "the update holds at its canary");
    assert!(plane.ok(&["deploy", "promote", fleet]).contains("promoted"));
    eventually(Duration::from_secs(240), "the promoted deploy to succeed", || {
        (plane.json(&["history", fleet, "--json"])["deploys"][0]["state"] == "succeeded").then_some(())
    });
    assert_eq!(versions(), ["5", "5", "5"]);
    // Aborted canaries go back; the others never moved.
    let deploy = plane.json(&["deploy", fleet, "--version", "6", "--canary", "2", "--deadline", "240", "--json"]);
    assert_eq!(deploy["state"], "paused", "{deploy}");
    assert_eq!(versions(), ["5", "6", "6"]);
    plane.ok(&["deploy", "abort", fleet]);
    eventually(Duration::from_secs(180), "the canaries back on version 5", || (versions() == ["5", "5", "5"]).then_some(()));
    // A deploy whose new agents never pass the gate reverts by itself at its deadline, on
    // Docker as anywhere (Swarm has rolled its own update back by then, too).
    let err = plane.fails(&["deploy", fleet, "--image", broken, "--version", "7", "--deadline", "45"]);
    assert!(err.contains("reverted: no progress in 45 s: 0 of 3 agents run version 7"), "{err}");
    eventually(Duration::from_secs(180), "the fleet back on version 5, every agent idle", || {
        let s = plane.json(&["status", fleet, "--json"]);
        let back = s["fleet"]["version"] == "5" && s["fleet"]["problem"].is_null();
        (back && s["agents"].as_array().unwrap().iter().all(|a| a["state"] == "idle" && a["fleet_version"] == "5")).then_some(())
    });

    plane.ok(&["terminate", fleet, "--wait"]);
    let left = docker(&["volume", "ls", "-q", "--filter", &format!("label=org.clawfleet.fleet={fleet}")]);
    assert!(left.is_empty(), "volumes left: {left}");
    let left = docker(&["secret", "ls", "-q", "--filter", &format!("label=org.clawfleet.fleet={fleet}")]);
    assert!(left.is_empty(), "secrets left: {left}");
}

/// An agent image that starts but never reaches the bus (so never becomes healthy).
fn build_broken(tag: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {IMAGE}\nENTRYPOINT [\"/clawfleet\", \"agent\", \"--bus\", \"mqtt://127.0.0.1:9\"]\n"),
    )
    .unwrap();
    docker(&["build", "-q", "-t", tag, dir.path().to_str().unwrap()]);
}

#[test]
fn docker_bad_input_gets_clear_errors() {
    let host = setup();
    let network = format!("cf-bad-{}", std::process::id());
    let plane = Plane::with(PlaneOptions { docker: Some((host, network.clone())), ..PlaneOptions::default() });

    let err = plane.fails(&["discover", "--service", "no-such-service-here", "--method", "swarm"]);
    assert!(err.contains("no Swarm service named 'no-such-service-here'"), "{err}");
    let err = plane.fails(&["discover", "--service", "x", "--method", "swarm", "--docker-socket", "/nonexistent/docker.sock"]);
    assert!(err.contains("no Docker socket at /nonexistent/docker.sock"), "{err}");
    // auto falls back to dns instead of failing on swarm, and says both reasons when dns fails too.
    let err = plane.fails(&["discover", "--service", "no-such-service-here", "--method", "auto"]);
    assert!(err.contains("swarm: no Swarm service") && err.contains("dns: cannot resolve tasks.no-such-service-here"), "{err}");
    let err = plane.fails(&["discover", "--service", "x", "--method", "carrier-pigeon"]);
    assert!(err.contains("unknown discovery method"), "{err}");

    let err = plane.fails(&["launch", "bad1", "--backend", "docker", "--image", "has space"]);
    assert!(err.contains("image must be a Docker image reference"), "{err}");
    let err = plane.fails(&["launch", "bad2", "--backend", "local", "--image", IMAGE]);
    assert!(err.contains("--image is for container backends"), "{err}");

    // A missing image: `launch --wait` stops at once with the fleet's problem, which says what
    // to run (instead of waiting out its timeout).
    let started = std::time::Instant::now();
    let args = ["launch", "bad3", "--backend", "docker", "--image", "clawfleet-agent:does-not-exist", "--brain", "echo", "--wait"];
    let err = plane.fails(&[&args[..], &["--timeout", "300"]].concat());
    assert!(err.contains("clawfleet image build") && err.contains("0 of 1 agents"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(240), "stopped at the problem, not at the timeout: {:?}", started.elapsed());
    let problem = plane.json(&["status", "bad3", "--json"])["fleet"]["problem"].as_str().map(str::to_owned).unwrap_or_default();
    assert!(problem.contains("clawfleet image build"), "{problem}");
    let err = plane.fails(&["rollback", "bad3"]);
    assert!(err.contains("no earlier image or version"), "{err}");
    // A deploy to an image that is not here is refused before anything changes.
    let err = plane.fails(&["deploy", "bad3", "--image", "clawfleet-agent:does-not-exist-either"]);
    assert!(err.contains("fleet 'bad3': the image 'clawfleet-agent:does-not-exist-either' is not on this Docker Engine"), "{err}");
    assert!(plane.json(&["history", "bad3", "--json"])["deploys"].as_array().unwrap().is_empty());
    plane.ok(&["terminate", "bad3", "--wait"]);
    let _ = Command::new("docker").args(["network", "rm", &network]).output();
}

/// The first docker fleet on an engine without the default agent image: `launch --wait` builds
/// it from the running binary (nothing is pulled), shows that it does, and the fleet comes up.
/// The default image's tag is one of this test's own, so it is missing whatever ran before.
#[test]
fn the_first_docker_fleet_builds_the_default_image() {
    let host = setup();
    let network = format!("cf-auto-{}", std::process::id());
    let tag = format!("clawfleet-agent:it-auto-{}", std::process::id());
    let _ = Command::new("docker").args(["image", "rm", "-f", &tag]).output();
    let up_args = vec!["--docker-image".to_owned(), tag.clone()];
    let plane = Plane::with(PlaneOptions { docker: Some((host, network.clone())), up_args, ..PlaneOptions::default() });
    let out = plane.cli(&["launch", "dauto", "--backend", "docker", "--replicas", "2", "--brain", "echo", "--wait", "--timeout", "240"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = Command::new("docker").args(["service", "rm", "clawfleet-dauto"]).output();
    let built = docker(&["image", "ls", "-q", &tag]);
    let _ = Command::new("docker").args(["network", "rm", &network]).output();
    let _ = Command::new("docker").args(["image", "rm", "-f", &tag]).output();
    assert!(out.status.success(), "launch --wait: {err}\nlog: {}", plane.log());
    assert!(err.contains("building the agent image"), "the build is shown: {err}");
    assert!(err.contains("all 2 agents of 'dauto' are ready"), "{err}");
    assert!(!built.is_empty(), "the image {tag} was built");
}

/// The agent image with host programs beside it (each with the libraries it links) and host
/// directories copied as they are: what a test's brains need in their containers.
fn build_with(tag: &str, programs: &[&str], trees: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    let mut files: Vec<std::path::PathBuf> = programs.iter().map(std::path::PathBuf::from).collect();
    for program in programs {
        let ldd = Command::new("ldd").arg(program).output().unwrap();
        let text = String::from_utf8_lossy(&ldd.stdout).into_owned();
        files.extend(text.split_whitespace().filter(|w| w.starts_with('/')).map(std::path::PathBuf::from));
    }
    for file in &files {
        let to = rootfs.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(file.canonicalize().unwrap(), &to).unwrap();
    }
    for tree in trees {
        let to = rootfs.join(std::path::Path::new(tree).parent().unwrap().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&to).unwrap();
        let out = Command::new("cp").arg("-a").arg(tree).arg(&to).output().unwrap();
        assert!(out.status.success(), "copying {tree}: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(dir.path().join("Dockerfile"), format!("FROM {IMAGE}\nCOPY rootfs/ /\n")).unwrap();
    let out = Command::new("docker").args(["build", "-q", "-t", tag]).arg(dir.path()).env("DOCKER_BUILDKIT", "0").output().unwrap();
    assert!(out.status.success(), "building {tag}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The agent image with a shell, `cat` and `head`.
fn build_with_shell(tag: &str) {
    build_with(tag, &["/bin/sh", "/bin/cat", "/usr/bin/head"], &[]);
}

/// Removes a test's service and network when the test ends, however it ends.
struct Cleanup {
    service: String,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["service", "rm", &self.service]).output();
        let _ = Command::new("docker").args(["network", "rm", &self.network]).output();
    }
}

/// A docker agent's fleet key (a Docker secret, /run/secrets) derives every agent's bus login
/// and API token of its fleet: a brain read it with `cat`. The agent reads it, then confines
/// itself (Landlock) away from it, and runs its brains in nested domains, out of its memory.
#[test]
fn a_docker_brain_cannot_read_its_agents_secrets() {
    let host = setup();
    let shell = "clawfleet-agent:it-shell";
    build_with_shell(shell);
    let network = format!("cf-nosy-{}", std::process::id());
    let plane = Plane::with(PlaneOptions { docker: Some((host, network.clone())), ..PlaneOptions::default() });
    let fleet = "dnosy";
    let _cleanup = Cleanup { service: "clawfleet-dnosy".into(), network };
    // Its brain gets the fleet's variables and secrets, though (a Docker secret of their own).
    let value = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(value.path(), "d0cker-s3cret").unwrap();
    plane.ok(&["secret", "set", "API_KEY", "--from-file", value.path().to_str().unwrap()]);
    let probe =
        "cat /run/secrets/clawfleet-fleet-key 2>&1; head -c 1 /proc/$PPID/mem 2>&1; echo \"$PROJECT $API_KEY\"; echo ok > note && cat note";
    let brain = format!("cmd:{probe}");
    let args = ["--env", "PROJECT=climate", "--secret", "API_KEY", "--wait", "--timeout", "180"];
    plane.ok(&[&["launch", fleet, "--backend", "docker", "--image", shell, "--brain", &brain][..], &args[..]].concat());
    let spec = docker(&["service", "inspect", "clawfleet-dnosy"]);
    assert!(!spec.contains("d0cker-s3cret") && spec.contains("clawfleet-brain-secrets"), "the secret is in the service's spec: {spec}");
    let out = plane.cli(&["inject", fleet, "go", "--wait", "--timeout", "60"]);
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(answer.contains("/run/secrets/clawfleet-fleet-key: Permission denied"), "{answer}");
    let mem = answer.lines().find(|l| l.contains("/mem")).unwrap_or_default();
    assert!(mem.contains("Permission denied") || mem.contains("Operation not permitted"), "{answer}");
    assert!(answer.trim_end().ends_with("ok"), "its workspace is its own to write: {answer}");
    assert!(answer.contains("climate d0cker-s3cret"), "{answer}");
    let hex_run = answer.split(|c: char| !c.is_ascii_hexdigit()).any(|w| w.len() >= 64);
    assert!(!hex_run, "the fleet's key leaked: {answer}");
    plane.ok(&["terminate", fleet, "--wait"]);
}

/// The agent image with git (Debian's, its helpers as they are) and a shell: what a code
/// project's workers need in their containers.
fn build_with_git(tag: &str) {
    build_with(tag, &["/bin/sh", "/usr/bin/git"], &["/usr/lib/git-core"]);
}

/// A code project on a docker fleet: the control plane prepares each worker's clone in its
/// container's volume, with a mirror of the project's repository beside it (the container
/// cannot reach the repository); codeswarm's mock workers commit there, the integration task
/// fetches the other worker's branch from the mirror, and the integration branch lands in the
/// project's repository.
#[test]
fn a_code_project_runs_on_docker_workers() {
    let host = setup();
    let tag = "clawfleet-agent:it-git";
    build_with_git(tag);
    let network = format!("cf-proj-{}", std::process::id());
    let plane = Plane::with(PlaneOptions { heartbeat_ms: 500, docker: Some((host, network.clone())), ..PlaneOptions::default() });
    let fleet = "dcrew";
    let _cleanup = Cleanup { service: "clawfleet-dcrew".into(), network };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let git = |args: &[&str]| {
        let out = Command::new("git").arg("-C").arg(&repo).args(args).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    std::fs::create_dir_all(&repo).unwrap();
    git(&["init", "-q", "-b", "main"]);
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "start"]);
    let args = ["launch", fleet, "--backend", "docker", "--replicas", "2", "--image", tag, "--brain", "mock", "--wait", "--timeout", "180"];
    plane.ok(&args);
    let plan = serde_json::json!({"tasks": [
        {"task_id": "T-001", "title": "one", "prompt": "Make the first marker.", "depends_on": []},
        {"task_id": "T-002", "title": "two", "prompt": "Make the second marker.", "depends_on": []},
    ]});
    let file = dir.path().join("plan.json");
    std::fs::write(&file, plan.to_string()).unwrap();
    let repo_s = repo.display().to_string();
    let create = ["project", "create", "-f", file.to_str().unwrap(), "--title", "Boxes", "--repo", &repo_s, "--workers", fleet];
    let done = plane.json(&[&create[..], &["--start", "--wait", "--timeout", "240", "--json"]].concat());
    assert_eq!((done["status"].as_str(), done["task_counts"]["completed"].as_u64()), (Some("completed"), Some(3)), "{done:#}");
    let paths = done["repo_preparation"][fleet]["worker_paths"].as_array().unwrap().clone();
    assert_eq!(paths.len(), 2, "{done:#}");
    assert!(paths.iter().all(|p| p.as_str().unwrap().contains("/volumes/clawfleet-dcrew-")), "clones in the volumes: {paths:?}");
    let ib = done["integration_branch"].as_str().unwrap();
    for t in ["T-001", "T-002"] {
        assert!(git(&["show", &format!("{ib}:mock_tasks/{t}.txt")]).starts_with(t), "{t} on {ib}");
    }
    plane.ok(&["terminate", fleet, "--wait"]);
}

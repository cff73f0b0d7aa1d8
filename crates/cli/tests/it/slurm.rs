//! The slurm backend passes the conformance suite on a real single-node Slurm (started by
//! `scripts/slurm-setup`, which `.ci/run` runs), with real agent jobs on a real bus.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clawfleet_backend::Replica;
use clawfleet_backend::conformance::{self, Chaos};
use clawfleet_backend::slurm::{SlurmBackend, SlurmConfig};

use crate::support::{Plane, PlaneOptions};

/// Kills a job's agent the way a crashed node process would end it.
struct KillJob;

#[async_trait]
impl Chaos for KillJob {
    async fn kill(&self, replica: &Replica) {
        let id = replica.instance.as_deref().and_then(|i| i.strip_prefix("job ")).expect("a job id").to_owned();
        let out = std::process::Command::new("scancel").args(["--full", "--signal=KILL", &id]).output().unwrap();
        assert!(out.status.success(), "scancel: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn slurm_is_up() {
    let sinfo = std::process::Command::new("sinfo").args(["-h", "-o", "%T"]).output();
    let state = sinfo.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    assert!(
        ["idle", "mixed", "allocated"].iter().any(|s| state.starts_with(s)),
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
            transport: "bus".into(),
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

//! The conformance suite's shared setup, and the local backend passing it with real agent processes
//! on a real bus (the docker and slurm tests use the same setup).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clawfleet_backend::conformance::{self, Chaos, Harness};
use clawfleet_backend::local::{LocalBackend, LocalConfig};
use clawfleet_backend::{Credentials, Deployment, Endpoints, Instance};
use clawfleet_bus::broker::{BrokerConfig, EmbeddedBroker};
use clawfleet_bus::{BusSecret, CONTROL_USER, FleetAuth};
use clawfleet_core::BrainSpec;

struct KillPid;

#[async_trait]
impl Chaos for KillPid {
    async fn kill(&self, instance: &Instance) {
        let pid: i32 = instance.id.strip_prefix("pid ").and_then(|p| p.parse().ok()).expect("a pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
}

/// A broker on `host` that lets `fleet` (incarnation `u1`) in, and the suite's harness for it:
/// agents with the echo brain, per-agent passwords, heartbeats every `heartbeat_ms`.
pub fn harness(host: &str, fleet: &str, heartbeat_ms: u64, chaos: Arc<dyn Chaos>, step_timeout: Duration) -> (EmbeddedBroker, Harness) {
    let secret = BusSecret::generate();
    let auth = FleetAuth::new(secret.clone());
    auth.allow_fleet(fleet, "u1");
    let broker = EmbeddedBroker::start(BrokerConfig::new(format!("{host}:0").parse().unwrap()), Arc::new(auth)).unwrap();
    let port = broker.local_addr().port();
    let deployment = Deployment {
        fleet: fleet.parse().unwrap(),
        uid: "u1".into(),
        replicas: 0,
        brain: BrainSpec::Echo,
        prompt: None,
        version: "1".into(),
        image: None,
        cluster: None,
        canary: None,
        policy: clawfleet_backend::Policy::default(),
        brain_env: Default::default(),
        vacated: Default::default(),
        endpoints: Endpoints {
            bus_host: host.into(),
            bus_port: port,
            bus_tls: false,
            bus_ca: None,
            credentials: Credentials::PerAgent(secret.clone()),
            model_url: None,
            model_name: "default".into(),
            model_builtin: false,
            heartbeat_ms,
        },
    };
    let harness = Harness {
        deployment,
        bus_login: (host.into(), port, Some(CONTROL_USER.into()), Some(secret.control_password())),
        chaos,
        step_timeout,
    };
    (broker, harness)
}

#[test]
fn local_backend_passes_the_conformance_suite() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let data = tempfile::tempdir().unwrap();
        // Confined the way `up` confines agents by default.
        let sandbox = clawfleet_backend::sandbox::Sandbox::new(Default::default(), data.path(), Vec::new()).unwrap();
        let backend = Arc::new(LocalBackend::new(LocalConfig {
            program: crate::support::BIN.into(),
            args: vec!["agent".into()],
            root: data.path().join("agents"),
            grace: Duration::from_secs(5),
            sandbox: Arc::new(sandbox),
        }));
        let (_broker, harness) = harness("127.0.0.1", "conf", 200, Arc::new(KillPid), Duration::from_secs(30));
        let result = conformance::run(backend.clone(), harness).await;
        clawfleet_backend::Backend::shutdown(&*backend).await;
        result.unwrap();
    });
}

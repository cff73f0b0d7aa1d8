//! The Docker backend: a fleet is a Swarm service (`clawfleet-<fleet>`), a Swarm slot is an
//! agent slot (Swarm numbers them from 1, agents from 0), and each slot keeps its workspace in
//! a volume of its own (`clawfleet-<fleet>-<uid>-<slot>`), so a replaced container finds its
//! conversation and journal again.
//!
//! `execute` creates the service or updates it (its rollout is Swarm's own, `Rollout::Native`):
//! a scale only changes its replica count; a new image or configuration is a rolling update,
//! the fleet's `max_unavailable` tasks at a time (stop first), gated by the image's
//! health check (the agent is healthy once it has reached the bus and its loop turns), which
//! Swarm rolls back by itself when a new task fails. A rolled-back update is reported as the
//! fleet's problem instead of being pushed again (until the control plane restarts: Swarm keeps
//! no trace of a spec it rolled back, so the backend remembers what it pushed). Every task of a service gets the same
//! environment, so agents get their fleet's password key and derive their own password from
//! their slot. Services outlive the control plane; `remove` deletes the service, then, once its
//! containers are gone, its volumes.
//!
//! The default agent image is built on first use, when the backend knows the binary to build it
//! from ([`DockerConfig::build_from`]): a fleet that needs it is [`Applied::Preparing`] (with the
//! build's last line) until the image exists. Nothing is pulled.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clawfleet_backend::{Action, Applied, Backend, BackendError, Credentials, Deployment, Instance, InstanceState, Rollout, env};
use clawfleet_core::{BackendKind, FleetName};
use serde_json::{Value, json};

use crate::engine::{Engine, EngineError, filters, query_escape};
use crate::image;

/// Labels clawfleet puts on what it creates.
pub const LABEL_FLEET: &str = "org.clawfleet.fleet";
pub const LABEL_UID: &str = "org.clawfleet.uid";
/// A digest of everything in the task template; a change means a rolling update.
pub const LABEL_KEY: &str = "org.clawfleet.key";
/// How many canaries the service's held update moved (absent: no canary).
pub const LABEL_CANARY: &str = "org.clawfleet.canary";
/// The pause after each updated task of a canary's update: Swarm's updater moves one task per
/// parallel worker, then each waits this long, so the update holds at the canaries until a
/// new spec (promote, or abort) replaces it.
const CANARY_HOLD: Duration = Duration::from_secs(365 * 24 * 3600);
/// The file (in `/run/secrets`) with the secrets a fleet's brains get.
const BRAIN_SECRETS_FILE: &str = "clawfleet-brain-secrets";
/// Where Docker mounts a task's secrets.
const SECRETS_DIR: &str = "/run/secrets";
/// The environment variable that carries the Swarm slot (1-based) into the agent.
pub const SWARM_SLOT_ENV: &str = "CLAWFLEET_SWARM_SLOT";
/// The fleet's password key (see `clawfleet_bus::FleetKey`), for agents given it directly.
pub const FLEET_KEY_ENV: &str = "CLAWFLEET_BUS_FLEET_KEY";
/// Where a task finds the fleet's key: a Docker secret mounted into it, not its environment
/// (which `docker service inspect` shows to anyone with the engine).
pub const FLEET_KEY_FILE_ENV: &str = "CLAWFLEET_BUS_FLEET_KEY_FILE";
/// The file name of that secret in a task (`/run/secrets/NAME`).
pub const FLEET_KEY_SECRET_FILE: &str = "clawfleet-fleet-key";

/// A Docker secret, as a service spec references it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub engine: Engine,
    /// The overlay network agents join (created, attachable, if missing).
    pub network: String,
    /// The host agents in containers use to reach the control plane's bus and model service
    /// (replaces loopback hosts in their endpoints).
    pub agent_host: String,
    /// The image of fleets that name none.
    pub default_image: String,
    /// How long a stopping agent gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// How long Swarm watches each updated task before it counts the update good.
    pub update_monitor: Duration,
    /// The `clawfleet` binary to build the default image from when it is missing (`None`: a
    /// missing default image is the fleet's problem, as any missing image is).
    pub build_from: Option<PathBuf>,
    /// Each agent confines itself with Landlock away from its Docker secrets (once it read
    /// them), and its brains with it, each in a nested domain that cannot reach the agent's
    /// memory. Off only where the kernel has no Landlock, or with `--agent-sandbox off`.
    pub sandbox_brains: bool,
    /// Where the engine keeps its volumes, when they are on this machine's filesystem (a
    /// single-node Swarm whose engine is here): agents' workspaces the control plane can reach,
    /// where a project prepares its clones.
    pub volumes: Option<PathBuf>,
}

impl DockerConfig {
    pub fn new(engine: Engine, agent_host: impl Into<String>) -> DockerConfig {
        DockerConfig {
            engine,
            network: "clawfleet".into(),
            agent_host: agent_host.into(),
            default_image: image::default_tag(),
            grace: Duration::from_secs(10),
            update_monitor: Duration::from_secs(20),
            build_from: None,
            sandbox_brains: true,
            volumes: None,
        }
    }
}

pub struct DockerBackend {
    config: DockerConfig,
    network_ready: tokio::sync::OnceCell<()>,
    /// Task ids seen per (fleet, slot): how many times Swarm replaced an agent.
    seen: Mutex<HashMap<(FleetName, u32), BTreeSet<String>>>,
    /// The template key of each fleet's last rolling update this backend started.
    pushed: Mutex<HashMap<FleetName, String>>,
    /// The build of the default image, on first use.
    build: Arc<Mutex<Build>>,
}

/// Where the automatic build of the default image stands.
#[derive(Debug, Default)]
enum Build {
    #[default]
    NotStarted,
    Running {
        since: Instant,
        /// The build's last line of output.
        step: String,
    },
    /// Tried again after [`BUILD_RETRY`], or at once once the image exists.
    Failed { at: Instant, error: String },
}

/// How long a failed automatic build waits before it is tried again.
const BUILD_RETRY: Duration = Duration::from_secs(30);

impl std::fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBackend").field("socket", &self.config.engine.socket()).field("network", &self.config.network).finish()
    }
}

pub fn service_name(fleet: &FleetName) -> String {
    format!("clawfleet-{fleet}")
}

/// The host of the control plane as containers see it: the gateway of Swarm's
/// `docker_gwbridge` (what overlay networks leave the host through), else of `bridge`.
pub async fn gateway(engine: &Engine) -> Result<String, EngineError> {
    let mut last = None;
    for net in ["docker_gwbridge", "bridge"] {
        match engine.get::<Value>(&format!("/networks/{net}")).await {
            Ok(n) => {
                if let Some(gw) = n["IPAM"]["Config"].as_array().into_iter().flatten().find_map(|c| c["Gateway"].as_str()) {
                    return Ok(gw.to_owned());
                }
            }
            Err(e) if e.is_not_found() => continue,
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| EngineError::Api {
        method: hyper::Method::GET,
        path: "/networks".into(),
        status: hyper::StatusCode::NOT_FOUND,
        message: "neither docker_gwbridge nor bridge has a gateway address: pass the address agents should use".into(),
    }))
}

fn failed(e: impl std::fmt::Display) -> BackendError {
    BackendError::Permanent(e.to_string())
}

impl DockerBackend {
    pub fn new(config: DockerConfig) -> DockerBackend {
        DockerBackend {
            config,
            network_ready: tokio::sync::OnceCell::new(),
            seen: Mutex::new(HashMap::new()),
            pushed: Mutex::new(HashMap::new()),
            build: Arc::default(),
        }
    }

    fn unavailable(&self, e: EngineError) -> BackendError {
        match e {
            EngineError::NoSocket(_) | EngineError::PermissionDenied(_) | EngineError::Connect(..) => {
                BackendError::Unavailable(BackendKind::Docker, e.to_string())
            }
            e if e.is_not_swarm() => BackendError::Unavailable(
                BackendKind::Docker,
                "this Docker Engine is not in Swarm mode (run `docker swarm init`, or join it to a swarm as a manager)".into(),
            ),
            // No answer, or the engine's own trouble: worth trying again.
            EngineError::Transport { .. } | EngineError::Timeout { .. } => BackendError::Transient(e.to_string()),
            EngineError::Api { status, .. } if status.is_server_error() => BackendError::Transient(e.to_string()),
            e => failed(e),
        }
    }

    async fn ensure_network(&self) -> Result<(), BackendError> {
        self.network_ready
            .get_or_try_init(|| async {
                let engine = &self.config.engine;
                let name = &self.config.network;
                match engine.get::<Value>(&format!("/networks/{}", query_escape(name))).await {
                    Ok(n) if n["Driver"] == "overlay" => Ok(()),
                    Ok(n) => Err(failed(format!(
                        "the Docker network '{name}' exists but is a {} network; Swarm services need an overlay network",
                        n["Driver"].as_str().unwrap_or("?")
                    ))),
                    Err(e) if e.is_not_found() => {
                        let spec = json!({
                            "Name": name, "Driver": "overlay", "Attachable": true, "CheckDuplicate": true,
                            "Labels": { LABEL_FLEET: "" },
                        });
                        engine.post::<Value>("/networks/create", &spec).await.map(drop).map_err(|e| self.unavailable(e))
                    }
                    Err(e) => Err(self.unavailable(e)),
                }
            })
            .await
            .map(drop)
    }

    /// The name of the Docker secret holding a fleet incarnation's key.
    pub fn key_secret_name(d: &Deployment) -> String {
        let uid_short: String = d.uid.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
        format!("clawfleet-{}-{uid_short}-key", d.fleet)
    }

    /// The Docker secret with the fleet's key, made on first use (`None`: agents need no key).
    async fn ensure_key_secret(&self, d: &Deployment) -> Result<Option<SecretRef>, BackendError> {
        let Credentials::PerAgent(secret) = &d.endpoints.credentials else { return Ok(None) };
        let engine = &self.config.engine;
        let name = Self::key_secret_name(d);
        let found: Vec<Value> = engine.get(&format!("/secrets?{}", filters(&[("name", &name)]))).await.map_err(|e| self.unavailable(e))?;
        if let Some(id) = found.iter().find(|s| s["Spec"]["Name"] == name.as_str()).and_then(|s| s["ID"].as_str()) {
            return Ok(Some(SecretRef { id: id.to_owned(), name }));
        }
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(secret.fleet_key(d.fleet.as_str(), &d.uid).to_hex());
        let body = json!({ "Name": name, "Labels": { LABEL_FLEET: d.fleet.as_str(), LABEL_UID: d.uid }, "Data": data });
        let made: Value = engine.post("/secrets/create", &body).await.map_err(|e| self.unavailable(e))?;
        let id = made["ID"].as_str().ok_or_else(|| failed("the Docker Engine created a secret without an ID"))?;
        Ok(Some(SecretRef { id: id.to_owned(), name }))
    }

    /// The Docker secret with the secrets the fleet's brains get (`None`: they get none). A
    /// secret's data cannot change, so its name carries a digest of it: new values, a new
    /// secret (and a rolling update); all go with the fleet.
    async fn ensure_brain_secret(&self, d: &Deployment) -> Result<Option<SecretRef>, BackendError> {
        let Some((_, json)) = d.agent_env(0).into_iter().find(|(k, _)| *k == env::BRAIN_SECRETS) else { return Ok(None) };
        let engine = &self.config.engine;
        let uid_short: String = d.uid.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
        let digest = clawfleet_backend::stable_hash(json.bytes());
        let name = format!("clawfleet-{}-{uid_short}-brain-{:08x}", d.fleet, digest as u32);
        let found: Vec<Value> = engine.get(&format!("/secrets?{}", filters(&[("name", &name)]))).await.map_err(|e| self.unavailable(e))?;
        if let Some(id) = found.iter().find(|s| s["Spec"]["Name"] == name.as_str()).and_then(|s| s["ID"].as_str()) {
            return Ok(Some(SecretRef { id: id.to_owned(), name }));
        }
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(json);
        let body = json!({ "Name": name, "Labels": { LABEL_FLEET: d.fleet.as_str(), LABEL_UID: d.uid }, "Data": data });
        let made: Value = engine.post("/secrets/create", &body).await.map_err(|e| self.unavailable(e))?;
        let id = made["ID"].as_str().ok_or_else(|| failed("the Docker Engine created a secret without an ID"))?;
        Ok(Some(SecretRef { id: id.to_owned(), name }))
    }

    /// The service spec of a deployment; `key` is the Docker secret with the fleet's key,
    /// `brain` the one with its brains' secrets.
    pub fn spec(&self, d: &Deployment, key: Option<&SecretRef>, brain: Option<&SecretRef>) -> Value {
        // Canaries are the whole service on the new version, its update held after them.
        // (Canaries by slot are the plan's: Swarm cannot place them, and they are not asked of it.)
        let canary = d.canary.as_ref().and_then(|c| Some((c.count?, c)));
        let d = &match canary {
            Some((_, c)) => {
                Deployment { version: c.version.clone(), image: c.image.clone().or_else(|| d.image.clone()), canary: None, ..d.clone() }
            }
            None => Deployment { canary: None, ..d.clone() },
        };
        let image = d.image.clone().unwrap_or_else(|| self.config.default_image.clone());
        let mut env: Vec<String> = d
            .agent_env(0)
            .into_iter()
            .filter(|(k, _)| {
                ![env::SLOT, env::BUS_USERNAME, env::BUS_PASSWORD, env::AGENT_TOKEN, env::BRAIN_SECRETS, env::BUS, env::MODEL_URL]
                    .contains(k)
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let e = &d.endpoints;
        env.push(format!("{}={}://{}:{}", env::BUS, if e.bus_tls { "mqtts" } else { "mqtt" }, self.agent_host(&e.bus_host), e.bus_port));
        if let Some(url) = &e.model_url {
            env.push(format!("{}={}", env::MODEL_URL, self.rehost_url(url)));
        }
        let mut secrets = Vec::new();
        match &e.credentials {
            Credentials::PerAgent(secret) => match key {
                Some(s) => {
                    env.push(format!("{FLEET_KEY_FILE_ENV}=/run/secrets/{FLEET_KEY_SECRET_FILE}"));
                    secrets.push(json!({
                        "File": { "Name": FLEET_KEY_SECRET_FILE, "UID": "0", "GID": "0", "Mode": 0o400 },
                        "SecretID": s.id,
                        "SecretName": s.name,
                    }));
                }
                None => env.push(format!("{FLEET_KEY_ENV}={}", secret.fleet_key(d.fleet.as_str(), &d.uid).to_hex())),
            },
            Credentials::Shared { username, password } => {
                env.push(format!("{}={username}", env::BUS_USERNAME));
                env.push(format!("{}={password}", env::BUS_PASSWORD));
            }
            Credentials::Anonymous => {}
        }
        if let Some(s) = brain {
            env.push(format!("{}=/run/secrets/{BRAIN_SECRETS_FILE}", env::BRAIN_SECRETS_FILE));
            secrets.push(json!({
                "File": { "Name": BRAIN_SECRETS_FILE, "UID": "0", "GID": "0", "Mode": 0o400 },
                "SecretID": s.id,
                "SecretName": s.name,
            }));
        }
        env.push(format!("{SWARM_SLOT_ENV}={{{{.Task.Slot}}}}"));
        env.push(format!("{}={}", env::WORKSPACE, image::WORKSPACE));
        if self.config.sandbox_brains {
            // The fleet's key derives every agent's logins: no brain may read it.
            env.push(format!("{}={SECRETS_DIR}", env::SANDBOX_HIDE));
            env.push(format!("{}={}:/tmp", env::SANDBOX_WRITE, image::WORKSPACE));
        }
        env.sort();
        let template = json!({
            "ContainerSpec": {
                "Image": image,
                "Env": env,
                "Hostname": format!("{}-{{{{.Task.Slot}}}}", d.fleet),
                "Mounts": [{
                    "Type": "volume",
                    "Source": volume_name(d, "{{.Task.Slot}}"),
                    "Target": image::WORKSPACE,
                    "VolumeOptions": { "Labels": { LABEL_FLEET: d.fleet.as_str(), LABEL_UID: d.uid } },
                }],
                "Secrets": secrets,
                "StopSignal": "SIGTERM",
                "StopGracePeriod": self.config.grace.as_nanos() as u64,
                "Labels": { LABEL_FLEET: d.fleet.as_str() },
            },
            "RestartPolicy": { "Condition": "any", "Delay": 500_000_000u64, "MaxAttempts": 0 },
            "Networks": [{ "Target": self.config.network }],
        });
        let key = format!("{:016x}", clawfleet_backend::stable_hash(template.to_string().into_bytes()));
        let monitor = self.config.update_monitor.as_nanos() as u64;
        let mut labels = json!({ LABEL_FLEET: d.fleet.as_str(), LABEL_UID: d.uid, LABEL_KEY: key });
        // The fleet's max_unavailable: stop-first, so that many agents are down at once.
        let (parallelism, delay) = match canary {
            Some((n, _)) => {
                labels[LABEL_CANARY] = json!(n.to_string());
                (n.max(1), CANARY_HOLD.as_nanos() as u64)
            }
            None => (d.policy.max_unavailable.max(1), 0),
        };
        json!({
            "Name": service_name(&d.fleet),
            "Labels": labels,
            "TaskTemplate": template,
            "Mode": { "Replicated": { "Replicas": d.replicas } },
            "UpdateConfig": { "Parallelism": parallelism, "Delay": delay, "FailureAction": "rollback", "Monitor": monitor, "MaxFailureRatio": 0.0, "Order": "stop-first" },
            "RollbackConfig": { "Parallelism": d.policy.max_unavailable.max(1), "Delay": 0, "FailureAction": "pause", "Monitor": monitor, "MaxFailureRatio": 0.0, "Order": "stop-first" },
        })
    }

    fn agent_host(&self, host: &str) -> String {
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
        if loopback { self.config.agent_host.clone() } else { host.to_owned() }
    }

    /// `http://127.0.0.1:11435/v1` -> `http://<agent host>:11435/v1`.
    fn rehost_url(&self, url: &str) -> String {
        let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h, Some(p)),
            _ => (authority, None),
        };
        let host = self.agent_host(host.trim_start_matches('[').trim_end_matches(']'));
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        match port {
            Some(p) => format!("{scheme}://{host}:{p}{path}"),
            None => format!("{scheme}://{host}{path}"),
        }
    }

    /// `Started` when the engine has the image; `Preparing` while the default image is being
    /// built (the build starts here, on first use); an error when the image is missing and is
    /// not this backend's to build.
    async fn ensure_image(&self, image: &str) -> Result<Applied, BackendError> {
        match image::exists(&self.config.engine, image).await {
            Ok(true) => return Ok(Applied::Started),
            Ok(false) => {}
            Err(e) => return Err(self.unavailable(e)),
        }
        let binary = match &self.config.build_from {
            Some(binary) if image == self.config.default_image => binary.clone(),
            _ => {
                return Err(failed(format!(
                    "the image '{image}' is not on this Docker Engine (nothing is pulled): build it with `clawfleet image build --tag {image}`"
                )));
            }
        };
        let mut build = self.build.lock().expect("not poisoned");
        match &*build {
            Build::Running { since, step } => {
                return Ok(Applied::Preparing(format!(
                    "building the agent image {image} from {} ({} s): {step}",
                    binary.display(),
                    since.elapsed().as_secs()
                )));
            }
            Build::Failed { at, error } if at.elapsed() < BUILD_RETRY => {
                return Err(failed(format!(
                    "building the agent image {image} failed: {error} (tried again every {} s; or build it with `clawfleet image build --tag {image}`)",
                    BUILD_RETRY.as_secs()
                )));
            }
            Build::NotStarted | Build::Failed { .. } => {}
        }
        tracing::info!(image, binary = %binary.display(), "Building the default agent image on first use");
        *build = Build::Running { since: Instant::now(), step: "starting".into() };
        let preparing = format!("building the agent image {image} from {} (first use; nothing is pulled)", binary.display());
        let (engine, tag, state) = (self.config.engine.clone(), image.to_owned(), self.build.clone());
        tokio::spawn(async move {
            let progress = |line: &str| {
                if let Build::Running { step, .. } = &mut *state.lock().expect("not poisoned") {
                    *step = line.to_owned();
                }
            };
            let outcome = image::build(&engine, &tag, &binary, progress).await;
            let mut build = state.lock().expect("not poisoned");
            *build = match outcome {
                Ok(id) => {
                    tracing::info!(image = tag, id, "Built the default agent image");
                    Build::NotStarted
                }
                Err(e) => {
                    tracing::error!(image = tag, error = %e, "Could not build the default agent image");
                    Build::Failed { at: Instant::now(), error: e.to_string() }
                }
            };
        });
        Ok(Applied::Preparing(preparing))
    }

    async fn tasks(&self, service: &str) -> Result<Vec<Value>, BackendError> {
        self.config.engine.get(&format!("/tasks?{}", filters(&[("service", service)]))).await.map_err(|e| self.unavailable(e))
    }
}

/// The volume of an agent's workspace, for a Swarm slot (`{{.Task.Slot}}` in a template).
fn volume_name(d: &Deployment, swarm_slot: &str) -> String {
    let uid_short: String = d.uid.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
    format!("clawfleet-{}-{uid_short}-{swarm_slot}", d.fleet)
}

#[async_trait]
impl Backend for DockerBackend {
    fn isolation(&self) -> clawfleet_backend::Isolation {
        clawfleet_backend::Isolation::Container
    }

    /// The slot's volume on this machine, once its agent has run (Swarm makes it with the
    /// first task), when the engine's volumes are here.
    fn workspace(&self, d: &Deployment, slot: u32) -> Option<PathBuf> {
        let dir = self.config.volumes.as_ref()?.join(volume_name(d, &(slot + 1).to_string())).join("_data");
        dir.is_dir().then_some(dir)
    }

    fn workspace_inside(&self) -> Option<PathBuf> {
        Some(PathBuf::from(image::WORKSPACE))
    }

    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    /// Swarm's own rolling update, gated by the agent's health check, replaces agents.
    fn rollout(&self) -> Rollout {
        Rollout::Native
    }

    async fn execute(&self, d: &Deployment, _: &[Action]) -> Result<Applied, BackendError> {
        self.ensure_network().await?;
        let engine = &self.config.engine;
        let name = service_name(&d.fleet);
        let key_secret = self.ensure_key_secret(d).await?;
        let brain_secret = self.ensure_brain_secret(d).await?;
        let mut spec = self.spec(d, key_secret.as_ref(), brain_secret.as_ref());
        let key = spec["Labels"][LABEL_KEY].as_str().unwrap_or_default().to_owned();
        let image = spec["TaskTemplate"]["ContainerSpec"]["Image"].as_str().unwrap_or_default().to_owned();
        let current = match engine.get::<Value>(&format!("/services/{}", query_escape(&name))).await {
            Ok(s) => s,
            Err(e) if e.is_not_found() => {
                let ready = self.ensure_image(&image).await?;
                if ready != Applied::Started {
                    return Ok(ready);
                }
                return engine.post::<Value>("/services/create", &spec).await.map(|_| ready).map_err(|e| self.unavailable(e));
            }
            Err(e) => return Err(self.unavailable(e)),
        };
        let id = current["ID"].as_str().unwrap_or(&name).to_owned();
        let version = current["Version"]["Index"].as_u64().unwrap_or(0);
        let labels = &current["Spec"]["Labels"];
        if labels[LABEL_UID].as_str() != Some(d.uid.as_str()) {
            // A service left by an earlier fleet of the same name.
            return engine.delete(&format!("/services/{id}")).await.map(|()| Applied::Started).map_err(|e| self.unavailable(e));
        }
        let replicas = current["Spec"]["Mode"]["Replicated"]["Replicas"].as_u64();
        let same_template = labels[LABEL_KEY].as_str() == Some(key.as_str());
        // An update held at its canaries ends when the spec changes: it is not waited for.
        let holding = labels[LABEL_CANARY].as_str().map(str::to_owned);
        let same_hold = holding.as_deref() == spec["Labels"][LABEL_CANARY].as_str();
        if same_template && same_hold && replicas == Some(u64::from(d.replicas)) {
            return Ok(Applied::Started);
        }
        let status = current["UpdateStatus"]["State"].as_str().unwrap_or("");
        if !same_template {
            // Swarm's rollback restores the previous spec and keeps no trace of the one that
            // failed, so the backend remembers what it pushed.
            let pushed = self.pushed.lock().expect("not poisoned").get(&d.fleet) == Some(&key);
            let rolled_back = status.starts_with("rollback") && pushed;
            if rolled_back {
                // Swarm rolled this update back: keep the fleet where Swarm put it (scaled as asked).
                let message = current["UpdateStatus"]["Message"].as_str().unwrap_or("").to_owned();
                if replicas != Some(u64::from(d.replicas)) {
                    let mut kept = current["Spec"].clone();
                    kept["Mode"]["Replicated"]["Replicas"] = json!(d.replicas);
                    engine
                        .post::<Value>(&format!("/services/{id}/update?version={version}"), &kept)
                        .await
                        .map_err(|e| self.unavailable(e))?;
                }
                let running = current["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].as_str().unwrap_or("?");
                return Err(failed(format!(
                    "the update to {image} was rolled back by Swarm ({message}); agents run {running}: \
                     run `clawfleet rollback {}` to keep it, or update to another image",
                    d.fleet
                )));
            }
            if (status == "updating" && holding.is_none()) || status == "rollback_started" {
                // One update at a time: the next pass brings the newest spec.
                return Ok(Applied::Started);
            }
            let ready = self.ensure_image(&image).await?;
            if ready != Applied::Started {
                return Ok(ready);
            }
        } else {
            // Only the replica count or the hold changes: keep the running template exactly
            // (a promote's canaries stay as they are; the update goes on with the rest).
            let (labels, update) = (spec["Labels"].take(), spec["UpdateConfig"].take());
            spec = current["Spec"].clone();
            spec["Mode"]["Replicated"]["Replicas"] = json!(d.replicas);
            spec["Labels"] = labels;
            spec["UpdateConfig"] = update;
        }
        engine.post::<Value>(&format!("/services/{id}/update?version={version}"), &spec).await.map_err(|e| self.unavailable(e))?;
        if !same_template {
            self.pushed.lock().expect("not poisoned").insert(d.fleet.clone(), key);
        }
        Ok(Applied::Started)
    }

    /// An image other than the default one (which is built on first use) must be here:
    /// nothing is pulled.
    async fn check(&self, d: &Deployment) -> Result<(), BackendError> {
        let Some(image) = d.image.as_deref().filter(|i| *i != self.config.default_image) else { return Ok(()) };
        match image::exists(&self.config.engine, image).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(failed(format!(
                "the image '{image}' is not on this Docker Engine (nothing is pulled): build it with `clawfleet image build --tag {image}`, or `docker load` it"
            ))),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// Swarm's update is over (or there was none): it watches new tasks for its monitor period
    /// before it calls an update complete, and may still roll it back until then.
    async fn settled(&self, d: &Deployment) -> Result<bool, BackendError> {
        let name = service_name(&d.fleet);
        match self.config.engine.get::<Value>(&format!("/services/{}", query_escape(&name))).await {
            Ok(s) => {
                Ok(!matches!(s["UpdateStatus"]["State"].as_str(), Some("updating" | "rollback_started" | "paused" | "rollback_paused")))
            }
            Err(e) if e.is_not_found() => Ok(true),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    async fn observe(&self, d: &Deployment) -> Result<Vec<Instance>, BackendError> {
        let fleet = &d.fleet;
        let name = service_name(fleet);
        let replicas = match self.config.engine.get::<Value>(&format!("/services/{}", query_escape(&name))).await {
            Ok(s) => s["Spec"]["Mode"]["Replicated"]["Replicas"].as_u64().unwrap_or(0),
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(self.unavailable(e)),
        };
        let tasks = self.tasks(&name).await?;
        let mut by_slot: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
        for t in &tasks {
            if let Some(slot) = t["Slot"].as_u64().filter(|s| *s >= 1) {
                by_slot.entry(slot).or_default().push(t);
            }
        }
        let mut seen = self.seen.lock().expect("not poisoned");
        let mut out = Vec::new();
        for (swarm_slot, mut slot_tasks) in by_slot {
            let slot = (swarm_slot - 1) as u32;
            // Newest first.
            slot_tasks.sort_by(|a, b| b["CreatedAt"].as_str().cmp(&a["CreatedAt"].as_str()));
            let ids = seen.entry((fleet.clone(), slot)).or_default();
            ids.extend(slot_tasks.iter().filter_map(|t| t["ID"].as_str().map(str::to_owned)));
            let restarts = ids.len().saturating_sub(1) as u32;
            let wanted = slot_tasks.iter().find(|t| t["DesiredState"] == "running");
            let (task, state) = match wanted {
                Some(t) => (*t, task_state(t, slot_tasks.get(1).copied())),
                None => {
                    let Some(t) =
                        slot_tasks.iter().find(|t| matches!(t["Status"]["State"].as_str(), Some("running" | "starting" | "preparing")))
                    else {
                        continue;
                    };
                    if swarm_slot <= replicas {
                        // Between two tasks of a slot that stays.
                        (*t, InstanceState::Restarting { last_exit: "was replaced".into() })
                    } else {
                        (*t, InstanceState::Stopping)
                    }
                }
            };
            out.push(Instance {
                slot,
                id: task["ID"].as_str().unwrap_or_default().to_owned(),
                key: None,
                state,
                restarts,
                node: task["NodeID"].as_str().map(str::to_owned),
            });
        }
        Ok(out)
    }

    async fn remove(&self, d: &Deployment) -> Result<bool, BackendError> {
        let fleet = &d.fleet;
        let engine = &self.config.engine;
        let name = service_name(fleet);
        match engine.delete(&format!("/services/{}", query_escape(&name))).await {
            Ok(()) => return Ok(false),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(self.unavailable(e)),
        }
        let label = format!("com.docker.swarm.service.name={name}");
        let containers: Vec<Value> =
            engine.get(&format!("/containers/json?all=1&{}", filters(&[("label", &label)]))).await.map_err(|e| self.unavailable(e))?;
        if !containers.is_empty() {
            return Ok(false);
        }
        let label = format!("{LABEL_FLEET}={fleet}");
        let volumes: Value = engine.get(&format!("/volumes?{}", filters(&[("label", &label)]))).await.map_err(|e| self.unavailable(e))?;
        let mut all_gone = true;
        for v in volumes["Volumes"].as_array().into_iter().flatten() {
            let Some(vname) = v["Name"].as_str() else { continue };
            match engine.delete(&format!("/volumes/{}", query_escape(vname))).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::debug!(volume = vname, error = %e, "Volume still in use");
                    all_gone = false;
                }
            }
        }
        // The fleet's key goes with its last task.
        let secrets: Vec<Value> =
            engine.get(&format!("/secrets?{}", filters(&[("label", &label)]))).await.map_err(|e| self.unavailable(e))?;
        for s in &secrets {
            let Some(id) = s["ID"].as_str() else { continue };
            match engine.delete(&format!("/secrets/{}", query_escape(id))).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::debug!(secret = id, error = %e, "Secret still in use");
                    all_gone = false;
                }
            }
        }
        if all_gone {
            self.seen.lock().expect("not poisoned").retain(|(f, _), _| f != fleet);
        }
        Ok(all_gone)
    }

    async fn shutdown(&self) {
        // Swarm services outlive the control plane: Swarm keeps them running.
    }
}

/// What the task Swarm wants running in a slot is doing; `previous` is the task before it.
fn task_state(task: &Value, previous: Option<&Value>) -> InstanceState {
    let status = &task["Status"];
    let err = status["Err"].as_str().unwrap_or("");
    match status["State"].as_str().unwrap_or("") {
        "running" => InstanceState::Running,
        "new" | "pending" | "assigned" | "accepted" | "preparing" | "ready" | "starting" => match previous {
            Some(p) if !p["Status"]["Err"].as_str().unwrap_or("").is_empty() => {
                InstanceState::Restarting { last_exit: explain(p["Status"]["Err"].as_str().unwrap_or("")) }
            }
            _ => InstanceState::Starting,
        },
        "rejected" if err.contains("No such image") || err.contains("no such image") => InstanceState::Failed(explain(err)),
        other => InstanceState::Restarting { last_exit: if err.is_empty() { other.to_owned() } else { explain(err) } },
    }
}

fn explain(err: &str) -> String {
    if err.contains("No such image") || err.contains("no such image") {
        format!("{err}: the image is not on this node (build it there with `clawfleet image build`)")
    } else {
        err.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clawfleet_backend::Endpoints;

    fn backend() -> DockerBackend {
        DockerBackend::new(DockerConfig::new(Engine::new("/nonexistent.sock"), "172.18.0.1"))
    }

    fn deployment() -> Deployment {
        Deployment {
            fleet: "squad".parse().unwrap(),
            uid: "0190-abc".into(),
            replicas: 3,
            brain: clawfleet_core::BrainSpec::Echo,
            prompt: None,
            version: "1".into(),
            image: None,
            cluster: None,
            canary: None,
            policy: clawfleet_backend::Policy::default(),
            brain_env: Default::default(),
            vacated: Default::default(),
            endpoints: Endpoints {
                bus_host: "127.0.0.1".into(),
                bus_port: 1883,
                bus_tls: false,
                bus_ca: None,
                credentials: Credentials::PerAgent(clawfleet_bus::BusSecret::from_bytes([1; 32])),
                model_url: Some("http://127.0.0.1:11435/v1".into()),
                model_name: "m".into(),
                model_builtin: true,
                heartbeat_ms: 2000,
            },
        }
    }

    #[test]
    fn the_spec_reaches_the_host_and_gives_each_slot_a_volume() {
        let b = backend();
        let secret = SecretRef { id: "sec1".into(), name: "clawfleet-squad-0190abc-key".into() };
        let spec = b.spec(&deployment(), Some(&secret), None);
        let env: Vec<&str> = spec["TaskTemplate"]["ContainerSpec"]["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(env.contains(&"CLAWFLEET_BUS=mqtt://172.18.0.1:1883"), "{env:?}");
        assert!(env.contains(&"CLAWFLEET_MODEL_URL=http://172.18.0.1:11435/v1"), "{env:?}");
        assert!(env.contains(&"CLAWFLEET_SWARM_SLOT={{.Task.Slot}}"), "{env:?}");
        // The fleet's key is a Docker secret, not in the environment `docker service inspect` shows.
        assert!(env.contains(&"CLAWFLEET_BUS_FLEET_KEY_FILE=/run/secrets/clawfleet-fleet-key"), "{env:?}");
        assert!(!env.iter().any(|e| e.starts_with("CLAWFLEET_BUS_FLEET_KEY=")));
        assert_eq!(spec["TaskTemplate"]["ContainerSpec"]["Secrets"][0]["SecretID"], "sec1");
        // The agent hides its secrets from itself (once read) and its brains.
        assert!(
            env.contains(&"CLAWFLEET_SANDBOX_HIDE=/run/secrets") && env.contains(&"CLAWFLEET_SANDBOX_WRITE=/workspace:/tmp"),
            "{env:?}"
        );
        assert_eq!(DockerBackend::key_secret_name(&deployment()), "clawfleet-squad-0190abc-key");
        assert!(!env.iter().any(|e| e.starts_with("CLAWFLEET_BUS_PASSWORD=")
            || e.starts_with("CLAWFLEET_AGENT_TOKEN=")
            || e.starts_with("CLAWFLEET_SLOT=")));
        assert_eq!(spec["TaskTemplate"]["ContainerSpec"]["Mounts"][0]["Source"], "clawfleet-squad-0190abc-{{.Task.Slot}}");
        assert_eq!(spec["UpdateConfig"]["FailureAction"], "rollback");
        assert_eq!(spec["UpdateConfig"]["Parallelism"], 1);
        let wide = Deployment { policy: clawfleet_backend::Policy { max_unavailable: 3 }, ..deployment() };
        let spec = b.spec(&wide, None, None);
        assert_eq!((spec["UpdateConfig"]["Parallelism"].as_u64(), spec["RollbackConfig"]["Parallelism"].as_u64()), (Some(3), Some(3)));
        // The key ignores the replica count and follows the template.
        let key = |d: &Deployment| b.spec(d, Some(&secret), None)["Labels"][LABEL_KEY].clone();
        let d = deployment();
        assert_eq!(key(&d), key(&Deployment { replicas: 9, ..d.clone() }));
        assert_ne!(key(&d), key(&Deployment { image: Some("other:1".into()), ..d.clone() }));
    }

    #[test]
    fn brains_get_their_variables_in_the_spec_and_their_secrets_as_a_docker_secret() {
        let b = backend();
        let brain_env = clawfleet_backend::BrainEnvironment {
            vars: vec![("PROJECT".into(), "climate".into())],
            secrets: vec![("API_KEY".into(), "s3cr3t-value".into())],
        };
        let d = Deployment { brain_env, ..deployment() };
        let brain = SecretRef { id: "sec2".into(), name: "clawfleet-squad-0190abc-brain-1234abcd".into() };
        let spec = b.spec(&d, None, Some(&brain));
        let text = spec.to_string();
        assert!(!text.contains("s3cr3t-value"), "a secret is in the service spec: {text}");
        let env = &spec["TaskTemplate"]["ContainerSpec"]["Env"];
        assert!(env.as_array().unwrap().contains(&json!(r#"CLAWFLEET_BRAIN_ENV={"PROJECT":"climate"}"#)), "{env}");
        assert!(env.as_array().unwrap().contains(&json!("CLAWFLEET_BRAIN_SECRETS_FILE=/run/secrets/clawfleet-brain-secrets")), "{env}");
        assert_eq!(spec["TaskTemplate"]["ContainerSpec"]["Secrets"][0]["SecretID"], "sec2");
    }

    #[test]
    fn canaries_are_the_new_template_with_its_update_held() {
        let b = backend();
        let canary = clawfleet_backend::Canary { slots: vec![], count: Some(2), version: "2".into(), image: Some("next:2".into()) };
        let held = b.spec(&Deployment { canary: Some(canary), ..deployment() }, None, None);
        let promoted = b.spec(&Deployment { version: "2".into(), image: Some("next:2".into()), ..deployment() }, None, None);
        // The template is the promoted one's, so a promote keeps the canaries' tasks.
        assert_eq!(held["TaskTemplate"], promoted["TaskTemplate"]);
        assert_eq!(held["Labels"][LABEL_KEY], promoted["Labels"][LABEL_KEY]);
        let env = held["TaskTemplate"]["ContainerSpec"]["Env"].as_array().unwrap();
        assert!(env.contains(&json!("CLAWFLEET_FLEET_VERSION=2")), "{env:?}");
        // Two tasks move, then each of the two workers waits out the hold.
        assert_eq!(held["UpdateConfig"]["Parallelism"], 2);
        assert_eq!(held["UpdateConfig"]["Delay"].as_u64(), Some(CANARY_HOLD.as_nanos() as u64));
        assert_eq!(held["Labels"][LABEL_CANARY], "2");
        assert_eq!((promoted["UpdateConfig"]["Delay"].as_u64(), promoted["Labels"].get(LABEL_CANARY)), (Some(0), None));
        // Canaries by slot are the plan's; Swarm's spec ignores them.
        let by_slot = clawfleet_backend::Canary { slots: vec![0], count: None, version: "2".into(), image: None };
        assert_eq!(b.spec(&Deployment { canary: Some(by_slot), ..deployment() }, None, None), b.spec(&deployment(), None, None));
    }

    #[test]
    fn only_loopback_hosts_are_replaced() {
        let b = backend();
        assert_eq!(b.rehost_url("http://localhost:8000/v1"), "http://172.18.0.1:8000/v1");
        assert_eq!(b.rehost_url("http://[::1]:8000"), "http://172.18.0.1:8000");
        assert_eq!(b.rehost_url("https://api.example.com/v1"), "https://api.example.com/v1");
        assert_eq!(b.agent_host("10.1.2.3"), "10.1.2.3");
    }

    #[test]
    fn task_states_map_to_replica_states() {
        let t = |state: &str, err: &str| json!({"Status": {"State": state, "Err": err}});
        assert_eq!(task_state(&t("running", ""), None), InstanceState::Running);
        assert_eq!(task_state(&t("preparing", ""), None), InstanceState::Starting);
        assert!(matches!(task_state(&t("starting", ""), Some(&t("failed", "task: non-zero exit (1)"))), InstanceState::Restarting { .. }));
        assert!(
            matches!(task_state(&t("rejected", "No such image: x:1"), None), InstanceState::Failed(m) if m.contains("clawfleet image build"))
        );
    }
}

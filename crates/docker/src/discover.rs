//! Discovery: every task of a Swarm service that is meant to run, with its address on the
//! service's network, its state and (when asked) its health.
//!
//! The `swarm` method lists the service's tasks (`GET /tasks`, desired state running) and reads
//! each task's network attachments, CIDR stripped; it finds every replica, where resolving the
//! service's name finds only its virtual IP. A task counts once it has an address, whatever its
//! current state: a task still `starting` (its health check has not passed yet) already answers
//! on its address, so it is listed, with its state. The `dns` method resolves `tasks.NAME`, which only
//! works from a container on the service's network. `auto` tries swarm, then dns, and says why
//! it fell back. Discovery only reads: it takes a [`ReadOnly`] engine.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::{EngineError, ReadOnly, filters};

/// How to find a service's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Swarm,
    Dns,
    Auto,
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Method, String> {
        match s {
            "swarm" => Ok(Method::Swarm),
            "dns" => Ok(Method::Dns),
            "auto" => Ok(Method::Auto),
            other => Err(format!("unknown discovery method '{other}' (swarm, dns or auto)")),
        }
    }
}

/// What a discovery asks for.
#[derive(Debug, Clone)]
pub struct Query {
    pub service: String,
    pub method: Method,
    /// The network whose addresses to report [default: the service's first non-ingress network].
    pub network: Option<String>,
    /// Check each task's health: `GET http://ADDRESS:PORT/health` when `health_port` is set,
    /// else the container's own health check (tasks on this node).
    pub verify_health: bool,
    pub health_port: Option<u16>,
}

/// A Swarm task's current state, as the Engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Allocated,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Ready,
    /// Its container runs, and its health check has not passed yet.
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Remove,
    Orphaned,
    /// A state this version does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Allocated => "allocated",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
            TaskState::Unknown => "unknown",
        }
    }
}

/// One task of the service that is meant to run and has an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub address: IpAddr,
    /// Swarm's view of it (swarm method only): `running`, or `starting` until its health check
    /// passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<TaskState>,
    /// Swarm's task id (swarm method only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The service slot (1-based, as Swarm numbers them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Set with `verify_health`: whether the task answered healthy, and if not why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_detail: Option<String>,
}

/// The answer to a [`Query`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Discovery {
    pub service: String,
    /// The method that produced `tasks` (never `auto`).
    pub method: Method,
    /// Why `auto` did not use swarm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    pub tasks: Vec<Task>,
    /// Why `tasks` is empty, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub elapsed_ms: f64,
}

/// Why discovery found nothing to report.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("no Swarm service named '{0}'")]
    UnknownService(String),
    #[error("this Docker Engine is not a Swarm manager, so it cannot list tasks: {0}")]
    NotSwarm(String),
    #[error("the service '{service}' is not attached to a network named '{network}' (it has: {have})")]
    NoSuchNetwork { service: String, network: String, have: String },
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("cannot resolve tasks.{service}: {error} (the dns method works only from a container on the service's network)")]
    Dns { service: String, error: String },
    #[error("swarm: {swarm}; dns: {dns}")]
    Both { swarm: Box<DiscoverError>, dns: Box<DiscoverError> },
}

pub async fn discover(engine: &ReadOnly, query: &Query) -> Result<Discovery, DiscoverError> {
    let started = std::time::Instant::now();
    let (method, fallback_reason, (mut tasks, note)) = match query.method {
        Method::Swarm => (Method::Swarm, None, swarm(engine, query).await?),
        Method::Dns => (Method::Dns, None, dns(&query.service).await?),
        Method::Auto => match swarm(engine, query).await {
            Ok(found) => (Method::Swarm, None, found),
            Err(swarm_error) => match dns(&query.service).await {
                Ok(found) => (Method::Dns, Some(swarm_error.to_string()), found),
                Err(dns_error) => return Err(DiscoverError::Both { swarm: Box::new(swarm_error), dns: Box::new(dns_error) }),
            },
        },
    };
    if query.verify_health {
        verify(engine, &mut tasks, query.health_port).await;
    }
    Ok(Discovery {
        service: query.service.clone(),
        method,
        fallback_reason,
        tasks,
        note,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawTask {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "NodeID", default)]
    node_id: Option<String>,
    #[serde(default)]
    slot: Option<u64>,
    #[serde(default)]
    status: RawStatus,
    #[serde(default)]
    networks_attachments: Vec<RawAttachment>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawStatus {
    #[serde(default)]
    state: TaskState,
    #[serde(default)]
    err: Option<String>,
    #[serde(default)]
    container_status: Option<RawContainerStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawContainerStatus {
    #[serde(rename = "ContainerID", default)]
    container_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawAttachment {
    network: RawNetwork,
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawNetwork {
    #[serde(default)]
    spec: RawNetworkSpec,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawNetworkSpec {
    #[serde(default)]
    name: String,
    #[serde(default)]
    ingress: bool,
}

/// "10.0.13.5/24" -> 10.0.13.5
pub fn strip_cidr(address: &str) -> Option<IpAddr> {
    address.split('/').next()?.parse().ok()
}

async fn swarm(engine: &ReadOnly, query: &Query) -> Result<(Vec<Task>, Option<String>), DiscoverError> {
    let service = &query.service;
    match engine.get::<Value>(&format!("/services/{}", crate::engine::query_escape(service))).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() => return Err(DiscoverError::UnknownService(service.clone())),
        Err(e) if e.is_not_swarm() => return Err(DiscoverError::NotSwarm(e.to_string())),
        Err(e) => return Err(e.into()),
    }
    let all: Vec<RawTask> = engine.get(&format!("/tasks?{}", filters(&[("service", service), ("desired-state", "running")]))).await?;
    let mut tasks = Vec::new();
    let mut waiting = Vec::new();
    let mut networks_seen = std::collections::BTreeSet::new();
    for t in all {
        // A task without an address yet (pending, preparing) cannot be reached: it is only
        // counted in the note.
        let waiting_line = || format!("{} {}", t.status.state.as_str(), t.status.err.as_deref().unwrap_or("")).trim().to_owned();
        if !matches!(t.status.state, TaskState::Starting | TaskState::Running) {
            waiting.push(waiting_line());
            continue;
        }
        let attachment = t.networks_attachments.iter().find(|a| {
            networks_seen.insert(a.network.spec.name.clone());
            match &query.network {
                Some(n) => &a.network.spec.name == n,
                None => !a.network.spec.ingress,
            }
        });
        let Some(attachment) = attachment else { continue };
        let Some(address) = attachment.addresses.iter().find_map(|a| strip_cidr(a)) else { continue };
        tasks.push(Task {
            address,
            state: Some(t.status.state),
            task_id: Some(t.id),
            node_id: t.node_id,
            slot: t.slot,
            container_id: t.status.container_status.and_then(|c| c.container_id),
            network: Some(attachment.network.spec.name.clone()),
            healthy: None,
            health_detail: None,
        });
    }
    tasks.sort_by_key(|t| (t.slot, t.address));
    if let Some(network) = &query.network
        && tasks.is_empty()
        && !networks_seen.is_empty()
        && !networks_seen.contains(network)
    {
        let have = networks_seen.into_iter().collect::<Vec<_>>().join(", ");
        return Err(DiscoverError::NoSuchNetwork { service: service.clone(), network: network.clone(), have });
    }
    let note = tasks.is_empty().then(|| {
        if waiting.is_empty() {
            format!("the service '{service}' has no running tasks (scaled to 0, or every task ended)")
        } else {
            let mut shown = waiting.clone();
            shown.sort();
            shown.dedup();
            format!("the service '{service}' has no task with an address yet: {} task(s) {}", waiting.len(), shown.join("; "))
        }
    });
    Ok((tasks, note))
}

async fn dns(service: &str) -> Result<(Vec<Task>, Option<String>), DiscoverError> {
    let name = format!("tasks.{service}");
    let addrs = tokio::net::lookup_host((name.as_str(), 0))
        .await
        .map_err(|e| DiscoverError::Dns { service: service.to_owned(), error: e.to_string() })?;
    let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
    ips.sort();
    ips.dedup();
    let tasks = ips
        .into_iter()
        .map(|address| Task {
            address,
            state: None,
            task_id: None,
            node_id: None,
            slot: None,
            container_id: None,
            network: None,
            healthy: None,
            health_detail: None,
        })
        .collect::<Vec<_>>();
    let note = tasks.is_empty().then(|| format!("{name} resolved to no address"));
    Ok((tasks, note))
}

async fn verify(engine: &ReadOnly, tasks: &mut [Task], port: Option<u16>) {
    let checks = tasks.iter().map(|t| {
        let engine = engine.clone();
        let (address, container) = (t.address, t.container_id.clone());
        async move {
            match (port, container) {
                (Some(port), _) => http_health(address, port).await,
                (None, Some(id)) => container_health(&engine, &id).await,
                (None, None) => (false, "no container to ask and no --health-port to probe".to_owned()),
            }
        }
    });
    let results = futures_util::future::join_all(checks).await;
    for (task, (healthy, detail)) in tasks.iter_mut().zip(results) {
        task.healthy = Some(healthy);
        task.health_detail = Some(detail);
    }
}

async fn container_health(engine: &ReadOnly, id: &str) -> (bool, String) {
    match engine.get::<Value>(&format!("/containers/{id}/json")).await {
        Ok(c) => {
            let state = &c["State"];
            match state["Health"]["Status"].as_str() {
                Some("healthy") => (true, "healthy (container health check)".into()),
                Some(other) => (false, format!("{other} (container health check)")),
                None if state["Running"].as_bool() == Some(true) => (true, "running (the image has no health check)".into()),
                None => (false, format!("container {}", state["Status"].as_str().unwrap_or("not running"))),
            }
        }
        Err(e) if e.is_not_found() => (false, "its container is on another node: pass --health-port to probe it over the network".into()),
        Err(e) => (false, e.to_string()),
    }
}

/// `GET http://address:port/health`: healthy when it answers 2xx within two seconds.
async fn http_health(address: IpAddr, port: u16) -> (bool, String) {
    let work = async {
        let stream = tokio::net::TcpStream::connect((address, port)).await.map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = Request::get("/health").header("host", format!("{address}:{port}")).body(Empty::<Bytes>::new()).expect("valid");
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        Ok::<_, String>(status)
    };
    match tokio::time::timeout(Duration::from_secs(2), work).await {
        Ok(Ok(status)) if status.is_success() => (true, format!("GET /health: {status}")),
        Ok(Ok(status)) => (false, format!("GET /health: {status}")),
        Ok(Err(e)) => (false, format!("GET /health: {e}")),
        Err(_) => (false, "GET /health: no answer within 2 s".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_is_stripped() {
        assert_eq!(strip_cidr("10.0.13.5/24"), Some("10.0.13.5".parse().unwrap()));
        assert_eq!(strip_cidr("10.0.13.5"), Some("10.0.13.5".parse().unwrap()));
        assert_eq!(strip_cidr("fd00::5/64"), Some("fd00::5".parse().unwrap()));
        assert_eq!(strip_cidr("garbage/24"), None);
    }

    #[test]
    fn tasks_parse_from_the_engine_shape() {
        let raw = r#"[{"ID":"t1","NodeID":"n1","Slot":3,"Status":{"State":"running","ContainerStatus":{"ContainerID":"c1"}},
            "NetworksAttachments":[{"Network":{"Spec":{"Name":"ingress","Ingress":true}},"Addresses":["10.0.0.9/24"]},
                                   {"Network":{"Spec":{"Name":"agents"}},"Addresses":["10.0.1.4/24"]}]},
            {"ID":"t2","Slot":4,"Status":{"State":"starting"}}, {"ID":"t3","Status":{"State":"hibernating"}}]"#;
        let tasks: Vec<RawTask> = serde_json::from_str(raw).unwrap();
        assert_eq!(tasks[0].slot, Some(3));
        assert_eq!(tasks.iter().map(|t| t.status.state).collect::<Vec<_>>(), [TaskState::Running, TaskState::Starting, TaskState::Unknown]);
        assert_eq!(tasks[0].networks_attachments[1].addresses, vec!["10.0.1.4/24"]);
        assert!(tasks[0].networks_attachments[0].network.spec.ingress);
    }

    #[tokio::test]
    async fn auto_falls_back_to_dns_and_says_why() {
        let engine = crate::engine::Engine::new("/nonexistent/docker.sock").read_only();
        let query =
            Query { service: "localhost-nope".into(), method: Method::Auto, network: None, verify_health: false, health_port: None };
        match discover(&engine, &query).await {
            Ok(d) => {
                assert_eq!(d.method, Method::Dns);
                assert!(d.fallback_reason.unwrap().contains("no Docker socket"));
            }
            Err(DiscoverError::Both { swarm, dns }) => {
                assert!(swarm.to_string().contains("no Docker socket"), "{swarm}");
                assert!(dns.to_string().contains("tasks.localhost-nope"), "{dns}");
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

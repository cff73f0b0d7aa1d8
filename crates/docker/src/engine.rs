//! A small client of the Docker Engine API over its unix socket: JSON in, JSON out, one
//! connection per call (connecting to a unix socket costs microseconds), API version pinned.
//!
//! [`Engine`] may change things; [`ReadOnly`] can only `GET`, which is all discovery needs
//! (it works with the socket mounted read-only into a container).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::UnixStream;

/// The API version clawfleet speaks: Docker Engine 20.10 and later.
pub const API_VERSION: &str = "v1.41";
/// Where the Docker socket usually is.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Why a call to the Docker Engine failed; every message names the socket or the call.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no Docker socket at {0} (is Docker installed and running? set --docker-socket or DOCKER_HOST=unix://PATH)")]
    NoSocket(PathBuf),
    #[error("permission denied on the Docker socket {0} (run as root or as a member of the docker group)")]
    PermissionDenied(PathBuf),
    #[error("cannot connect to the Docker socket {0}: {1}")]
    Connect(PathBuf, io::Error),
    #[error("Docker Engine: {method} {path}: {source}")]
    Transport { method: Method, path: String, source: hyper::Error },
    #[error("Docker Engine did not answer {method} {path} within {0:?}", TIMEOUT)]
    Timeout { method: Method, path: String },
    /// The engine refused the call; `message` is its own explanation.
    #[error("Docker Engine refused {method} {path} ({status}): {message}")]
    Api { method: Method, path: String, status: StatusCode, message: String },
    #[error("Docker Engine sent an answer to {path} that is not what it documents: {source}")]
    Decode { path: String, source: serde_json::Error },
}

impl EngineError {
    /// The engine answered 404: no such service, container, image, network…
    pub fn is_not_found(&self) -> bool {
        matches!(self, EngineError::Api { status, .. } if *status == StatusCode::NOT_FOUND)
    }

    /// The engine answered 503 "This node is not a swarm manager" or similar.
    pub fn is_not_swarm(&self) -> bool {
        matches!(self, EngineError::Api { status, message, .. } if *status == StatusCode::SERVICE_UNAVAILABLE && message.contains("swarm"))
    }
}

/// The longest one call may take (an image build streams longer: see [`Engine::post_stream`]).
const TIMEOUT: Duration = Duration::from_secs(60);

/// A Docker Engine that may be changed.
#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
}

/// A Docker Engine that is only read.
#[derive(Debug, Clone)]
pub struct ReadOnly {
    socket: PathBuf,
}

impl Engine {
    pub fn new(socket: impl Into<PathBuf>) -> Engine {
        Engine { socket: socket.into() }
    }

    /// The socket `DOCKER_HOST` names (`unix://PATH`), else [`DEFAULT_SOCKET`].
    pub fn from_env() -> Engine {
        Engine::new(socket_from_env())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn read_only(&self) -> ReadOnly {
        ReadOnly { socket: self.socket.clone() }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, EngineError> {
        self.read_only().get(path).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, EngineError> {
        let body = serde_json::to_vec(body).expect("serializable");
        let bytes = call(&self.socket, Method::POST, path, Some(("application/json", body.into()))).await?;
        decode(path, &bytes)
    }

    /// A POST whose answer is not needed (start, stop, connect…).
    pub async fn post_empty(&self, path: &str, body: Option<&Value>) -> Result<(), EngineError> {
        let body = body.map(|b| ("application/json", Bytes::from(serde_json::to_vec(b).expect("serializable"))));
        call(&self.socket, Method::POST, path, body).await.map(drop)
    }

    pub async fn delete(&self, path: &str) -> Result<(), EngineError> {
        call(&self.socket, Method::DELETE, path, None).await.map(drop)
    }

    /// A POST whose answer streams JSON lines (an image build), each handed to `line` as it comes.
    pub async fn post_stream(&self, path: &str, content_type: &str, body: Vec<u8>, mut line: impl FnMut(Value)) -> Result<(), EngineError> {
        let mut response = send(&self.socket, Method::POST, path, Some((content_type, body.into()))).await?;
        let status = response.status();
        let mut pending = Vec::new();
        while let Some(frame) = response.body_mut().frame().await {
            let frame = frame.map_err(|source| EngineError::Transport { method: Method::POST, path: path.into(), source })?;
            if let Some(data) = frame.data_ref() {
                pending.extend_from_slice(data);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let rest = pending.split_off(end + 1);
                    if let Ok(v) = serde_json::from_slice::<Value>(&pending) {
                        line(v);
                    }
                    pending = rest;
                }
            }
        }
        if !status.is_success() {
            return Err(api_error(Method::POST, path, status, &pending));
        }
        Ok(())
    }
}

impl ReadOnly {
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, EngineError> {
        let bytes = call(&self.socket, Method::GET, path, None).await?;
        decode(path, &bytes)
    }

    /// The raw body of a GET (container logs).
    pub async fn get_bytes(&self, path: &str) -> Result<Bytes, EngineError> {
        call(&self.socket, Method::GET, path, None).await
    }
}

/// `DOCKER_HOST=unix://PATH`, else the default socket.
pub fn socket_from_env() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

fn decode<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, EngineError> {
    // An empty answer (204) decodes as JSON null, for callers that expect `()` or `Value`.
    let bytes = if bytes.is_empty() { b"null".as_slice() } else { bytes };
    serde_json::from_slice(bytes).map_err(|source| EngineError::Decode { path: path.into(), source })
}

async fn call(socket: &Path, method: Method, path: &str, body: Option<(&str, Bytes)>) -> Result<Bytes, EngineError> {
    let work = async {
        let response = send(socket, method.clone(), path, body).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|source| EngineError::Transport { method: method.clone(), path: path.into(), source })?
            .to_bytes();
        if !status.is_success() {
            return Err(api_error(method.clone(), path, status, &bytes));
        }
        Ok(bytes)
    };
    tokio::time::timeout(TIMEOUT, work).await.unwrap_or_else(|_| Err(EngineError::Timeout { method: method.clone(), path: path.into() }))
}

async fn send(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<(&str, Bytes)>,
) -> Result<hyper::Response<hyper::body::Incoming>, EngineError> {
    let stream = UnixStream::connect(socket).await.map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => EngineError::NoSocket(socket.into()),
        io::ErrorKind::PermissionDenied => EngineError::PermissionDenied(socket.into()),
        _ => EngineError::Connect(socket.into(), e),
    })?;
    let transport = |source| EngineError::Transport { method: method.clone(), path: path.into(), source };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(transport)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = Request::builder().method(method.clone()).uri(format!("/{API_VERSION}{path}")).header("host", "docker");
    let body = match body {
        Some((content_type, bytes)) => {
            request = request.header("content-type", content_type);
            bytes
        }
        None => Bytes::new(),
    };
    let request = request.body(Full::new(body)).expect("a valid request");
    sender.send_request(request).await.map_err(transport)
}

fn api_error(method: Method, path: &str, status: StatusCode, body: &[u8]) -> EngineError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    EngineError::Api { method, path: path.into(), status, message }
}

/// Percent-encodes a query value (filters are JSON).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `?filters=…` for the given label or name filters.
pub fn filters(pairs: &[(&str, &str)]) -> String {
    let mut map = serde_json::Map::new();
    for (k, v) in pairs {
        let entry = map.entry(k.to_string()).or_insert_with(|| Value::Array(Vec::new()));
        entry.as_array_mut().expect("array").push(Value::String(v.to_string()));
    }
    format!("filters={}", query_escape(&Value::Object(map).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_json_and_escaped() {
        let q = filters(&[("service", "web"), ("desired-state", "running")]);
        assert_eq!(q, "filters=%7B%22service%22%3A%5B%22web%22%5D%2C%22desired-state%22%3A%5B%22running%22%5D%7D");
    }

    #[tokio::test]
    async fn a_missing_socket_says_where_it_looked() {
        let e = Engine::new("/nonexistent/docker.sock").get::<Value>("/_ping").await.unwrap_err();
        assert!(matches!(e, EngineError::NoSocket(_)), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/docker.sock"), "{e}");
    }
}

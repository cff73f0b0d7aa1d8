//! The control plane's HTTP API, for the CLI, the router and the benchmarks.
//!
//! The server is found from `--server`, `CLAWFLEET_SERVER`, the `server.json` that `up` wrote
//! in the data directory, or `http://127.0.0.1:8080`; the token from `--token`,
//! `CLAWFLEET_TOKEN`, or the data directory's `token` file.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clawfleet_proto::event::Event;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The default data directory: `$XDG_DATA_HOME/clawfleet`, else `~/.local/share/clawfleet`.
pub fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("clawfleet");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/clawfleet"),
        None => PathBuf::from(".clawfleet"),
    }
}

/// An answer of the control plane that is not a success: what it said, and its status (callers
/// tell "no such fleet" by `404`, not by the words).
#[derive(Debug)]
pub struct ApiFailure {
    pub status: reqwest::StatusCode,
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiFailure {}

/// Whether `e` is the control plane answering `404 Not Found`.
/// A list's path with its `fleet` and `all` filters (`/api/v1/queue?fleet=crew&all=true`).
pub(crate) fn list_path(base: &str, fleet: Option<&str>, all: bool) -> String {
    let mut query: Vec<String> = fleet.map(|f| format!("fleet={f}")).into_iter().collect();
    if all {
        query.push("all=true".into());
    }
    if query.is_empty() { base.to_owned() } else { format!("{base}?{}", query.join("&")) }
}

pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiFailure>().is_some_and(|f| f.status == reqwest::StatusCode::NOT_FOUND)
}

/// An API client.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// Where to find the control plane.
#[derive(Debug, Clone, Default)]
pub struct Locator {
    pub server: Option<String>,
    pub token: Option<String>,
    pub data: Option<PathBuf>,
    /// The CA that signed an HTTPS control plane's certificate [default: the data directory's
    /// `tls/ca.pem`, which `clawfleet certs` writes, when it exists].
    pub cacert: Option<PathBuf>,
}

fn recorded_server(data: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data.join("server.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("http")?.as_str().map(str::to_owned)
}

impl Client {
    pub fn locate(loc: &Locator) -> anyhow::Result<Client> {
        let data = loc.data.clone().unwrap_or_else(default_data_dir);
        let base = loc.server.clone().or_else(|| recorded_server(&data)).unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let token = match &loc.token {
            Some(t) => t.clone(),
            None => {
                let path = data.join("token");
                std::fs::read_to_string(&path).map(|t| t.trim().to_owned()).map_err(|e| {
                    anyhow!("no API token: pass --token, set CLAWFLEET_TOKEN, or run where `clawfleet up` wrote {} ({e})", path.display())
                })?
            }
        };
        let local_ca = data.join("tls").join("ca.pem");
        let ca = loc.cacert.clone().or_else(|| (base.starts_with("https://") && local_ca.exists()).then_some(local_ca));
        Client::with_ca(&base, &token, ca.as_deref())
    }

    pub fn new(base: &str, token: &str) -> anyhow::Result<Client> {
        Client::with_ca(base, token, None)
    }

    /// A client that also trusts the CA in the PEM file `ca` (a control plane's own CA).
    pub fn with_ca(base: &str, token: &str, ca: Option<&Path>) -> anyhow::Result<Client> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("the server URL must start with http:// or https://, got '{base}'");
        }
        let mut builder = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5));
        if let Some(path) = ca {
            let pem = std::fs::read(path).with_context(|| format!("reading the CA certificate {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).with_context(|| format!("{} is not a PEM certificate", path.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Client { http, base, token: token.to_owned() })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!("cannot reach the control plane at {}: is `clawfleet up` running?", self.base)
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = match serde_json::from_str::<clawfleet_proto::api::ApiError>(&text) {
            Ok(e) => e.error,
            Err(_) => format!("the control plane answered {status}: {}", text.trim()),
        };
        Err(ApiFailure { status, message }.into())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.send(self.http.get(format!("{}{path}", self.base))).await?;
        resp.json().await.with_context(|| format!("reading the answer to GET {path}"))
    }

    /// A body as it comes (an archive).
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self.send(self.http.get(format!("{}{path}", self.base))).await?;
        Ok(resp.bytes().await.with_context(|| format!("reading the answer to GET {path}"))?.to_vec())
    }

    /// Sends a body as it is (an archive), reading a JSON answer.
    pub async fn post_bytes<T: DeserializeOwned>(&self, path: &str, content_type: &str, body: Vec<u8>) -> anyhow::Result<T> {
        let req = self.http.post(format!("{}{path}", self.base)).header(reqwest::header::CONTENT_TYPE, content_type).body(body);
        let resp = self.send(req).await?;
        resp.json().await.with_context(|| format!("reading the answer to POST {path}"))
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        let resp = self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await?;
        resp.json().await.with_context(|| format!("reading the answer to POST {path}"))
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        let resp = self.send(self.http.put(format!("{}{path}", self.base)).json(body)).await?;
        resp.json().await.with_context(|| format!("reading the answer to PUT {path}"))
    }

    /// A JSON merge patch (RFC 7396): the fields it names change, the rest are kept.
    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        let req = self.http.patch(format!("{}{path}", self.base)).header(reqwest::header::CONTENT_TYPE, "application/merge-patch+json");
        let resp = self.send(req.body(serde_json::to_vec(body).context("encoding the patch")?)).await?;
        resp.json().await.with_context(|| format!("reading the answer to PATCH {path}"))
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.send(self.http.delete(format!("{}{path}", self.base))).await?;
        resp.json().await.with_context(|| format!("reading the answer to DELETE {path}"))
    }

    /// Events as the API streams them (`query` as in `/api/v1/events?…`).
    pub async fn events(&self, query: &[(&str, String)]) -> anyhow::Result<impl Stream<Item = anyhow::Result<Event>> + use<>> {
        let req = self.http.get(format!("{}/api/v1/events", self.base)).query(query);
        let resp = self.send(req).await?;
        let mut bytes = resp.bytes_stream();
        let mut pending: Vec<u8> = Vec::new();
        Ok(async_stream(move |tx| async move {
            while let Some(chunk) = bytes.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow!("the event stream broke: {e}"))).await;
                        return;
                    }
                };
                pending.extend_from_slice(&chunk);
                while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    let line = &line[..line.len() - 1];
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let item = serde_json::from_slice::<Event>(line).map_err(|e| {
                        let text = String::from_utf8_lossy(line);
                        match serde_json::from_str::<clawfleet_proto::api::ApiError>(&text) {
                            Ok(err) => anyhow!("{}", err.error),
                            Err(_) => anyhow!("unreadable event line ({e}): {text}"),
                        }
                    });
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
            }
        }))
    }
}

/// A stream fed by a task (what `async-stream` would give, without the dependency).
fn async_stream<T, F, Fut>(f: F) -> impl Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

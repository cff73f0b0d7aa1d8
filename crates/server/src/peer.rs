//! This rack's peers (`up --rack NAME --peer NAME=URL --peer-token NAME=FILE`): other control
//! planes, reached over their HTTP API with the `peer` token each gave this rack, which lets
//! this rack do nothing there but what racks ask of each other.

use std::time::{Duration, Instant};

use clawfleet_proto::rack::{PeerStatus, RackInfo};
use serde::de::DeserializeOwned;

/// This rack's name and its peers.
#[derive(Clone, Default)]
pub struct RackConfig {
    /// This rack's name (`--rack`; default: the host's name).
    pub name: String,
    pub peers: Vec<PeerConfig>,
}

/// One peer rack.
#[derive(Clone)]
pub struct PeerConfig {
    pub name: String,
    /// Its API's base URL (`http://10.0.0.2:8080`).
    pub url: String,
    /// The `peer` token it made for this rack.
    pub token: String,
}

impl std::fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConfig").field("name", &self.name).field("url", &self.url).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RackConfig").field("name", &self.name).field("peers", &self.peers).finish()
    }
}

/// Why a peer did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("no peer rack named '{0}' (this rack's peers are given with --peer NAME=URL)")]
    Unknown(String),
    /// It did not answer (down, or cut off): the same call may be tried again.
    #[error("rack '{peer}' does not answer: {reason}")]
    Unreachable { peer: String, reason: String },
    /// It answered no.
    #[error("rack '{peer}' refused: {message}")]
    Refused { peer: String, status: u16, message: String },
}

/// The peers, and one HTTP client for them.
pub(crate) struct Peers {
    pub config: RackConfig,
    http: reqwest::Client,
}

impl Peers {
    pub(crate) fn new(config: RackConfig) -> Peers {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client with rustls builds");
        Peers { config, http }
    }

    fn peer(&self, name: &str) -> Result<&PeerConfig, PeerError> {
        self.config.peers.iter().find(|p| p.name == name).ok_or_else(|| PeerError::Unknown(name.to_owned()))
    }

    /// Calls a peer's API with this rack's token for it: its answer, or why not (an answer of
    /// 5xx, as no answer, worth trying again).
    async fn call<T: DeserializeOwned>(&self, name: &str, method: reqwest::Method, path: &str, body: Body) -> Result<T, PeerError> {
        let peer = self.peer(name)?;
        let url = format!("{}{path}", peer.url.trim_end_matches('/'));
        let mut req = self.http.request(method, &url).bearer_auth(&peer.token);
        req = match body {
            Body::None => req,
            Body::Json(json) => req.header(reqwest::header::CONTENT_TYPE, "application/json").body(json),
            Body::Archive(bytes) => {
                let sum = clawfleet_snapshot::sha256_hex(&bytes);
                req.header(reqwest::header::CONTENT_TYPE, "application/gzip").header(SHA256_HEADER, sum).body(bytes)
            }
        };
        let unreachable = |e: reqwest::Error| PeerError::Unreachable { peer: name.to_owned(), reason: describe(&e) };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            let message = serde_json::from_slice::<clawfleet_proto::api::ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)])));
            if status.is_server_error() {
                return Err(PeerError::Unreachable { peer: name.to_owned(), reason: message });
            }
            return Err(PeerError::Refused { peer: name.to_owned(), status: status.as_u16(), message });
        }
        serde_json::from_slice(&bytes).map_err(|e| PeerError::Refused {
            peer: name.to_owned(),
            status: status.as_u16(),
            message: format!("an answer it could not read: {e}"),
        })
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, name: &str, path: &str) -> Result<T, PeerError> {
        self.call(name, reqwest::Method::GET, path, Body::None).await
    }

    /// POSTs `body` (JSON) to a peer.
    pub(crate) async fn post<T: DeserializeOwned>(&self, name: &str, path: &str, body: &impl serde::Serialize) -> Result<T, PeerError> {
        let json = serde_json::to_vec(body).expect("wire types serialize");
        self.call(name, reqwest::Method::POST, path, Body::Json(json)).await
    }

    /// POSTs an archive to a peer, with its sha256 in [`SHA256_HEADER`].
    pub(crate) async fn post_archive<T: DeserializeOwned>(&self, name: &str, path: &str, archive: Vec<u8>) -> Result<T, PeerError> {
        self.call(name, reqwest::Method::POST, path, Body::Archive(archive)).await
    }

    /// Whether each peer answers now, and what it says of itself.
    pub(crate) async fn status(&self) -> Vec<PeerStatus> {
        let probes = self.config.peers.iter().map(|p| async move {
            let started = Instant::now();
            let answer: Result<RackInfo, PeerError> = self.get(&p.name, "/api/v1/rack").await;
            let latency_ms = Some(started.elapsed().as_millis() as u64);
            match answer {
                Ok(info) => {
                    let problem = compatible(&info).err();
                    PeerStatus { name: p.name.clone(), url: p.url.clone(), answers: true, info: Some(info), latency_ms, problem }
                }
                Err(e) => PeerStatus {
                    name: p.name.clone(),
                    url: p.url.clone(),
                    answers: false,
                    info: None,
                    latency_ms,
                    problem: Some(e.to_string()),
                },
            }
        });
        futures_util::future::join_all(probes).await
    }
}

/// The header that carries a transferred archive's sha256 (lowercase hex).
pub(crate) const SHA256_HEADER: &str = "x-clawfleet-sha256";

/// What a call to a peer sends.
enum Body {
    None,
    Json(Vec<u8>),
    Archive(Vec<u8>),
}

/// What reqwest says, with its causes.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// This rack's own information.
pub(crate) fn info(rack: &str) -> RackInfo {
    RackInfo {
        rack: rack.to_owned(),
        clawfleet_version: env!("CARGO_PKG_VERSION").into(),
        snapshot_version: clawfleet_proto::snapshot::VERSION,
    }
}

/// Whether an agent can move between this rack and one that says `peer` of itself: the same
/// snapshot format, and the same clawfleet release line (major and minor version).
pub(crate) fn compatible(peer: &RackInfo) -> Result<(), String> {
    let line = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    let ours = info("");
    if peer.snapshot_version != ours.snapshot_version {
        return Err(format!("it reads snapshot format {}, this rack writes {}", peer.snapshot_version, ours.snapshot_version));
    }
    if line(&peer.clawfleet_version) != line(&ours.clawfleet_version) {
        return Err(format!("it runs clawfleet {}, this rack {}", peer.clawfleet_version, ours.clawfleet_version));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatible_racks_share_a_format_and_a_release_line() {
        let mut peer = info("b");
        assert_eq!(compatible(&peer), Ok(()));
        peer.clawfleet_version = "9.9.0".into();
        assert!(compatible(&peer).unwrap_err().contains("runs clawfleet 9.9.0"));
        peer = RackInfo { snapshot_version: 99, ..info("b") };
        assert!(compatible(&peer).unwrap_err().contains("snapshot format 99"));
    }

    #[test]
    fn a_peer_token_never_shows_in_debug_output() {
        let c = RackConfig {
            name: "a".into(),
            peers: vec![PeerConfig { name: "b".into(), url: "http://b".into(), token: "cfp_secret".into() }],
        };
        assert!(!format!("{c:?}").contains("cfp_secret"));
    }
}

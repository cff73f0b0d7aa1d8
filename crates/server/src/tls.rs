//! HTTPS for the API and the dashboard (`up --tls-cert FILE --tls-key FILE`): rustls with
//! ring, with the configuration `clawfleet_bus::tls::server_config` reads and the handshakes
//! `clawfleet_bus::tls::handshakes` runs (the broker's TLS front uses both too).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// The certificate chain and private key the API serves with (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why TLS cannot be served: the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// A listener whose connections are TLS (`clawfleet_bus::tls::handshakes`), for `axum::serve`.
pub(crate) struct TlsListener {
    addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Serves HTTP/1.1 over TLS with `config` on `tcp`.
    pub(crate) fn new(tcp: TcpListener, config: &Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let addr = tcp.local_addr()?;
        let mut config = (**config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsListener { addr, ready: clawfleet_bus::tls::handshakes(tcp, Arc::new(config)) })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

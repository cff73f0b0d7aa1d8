//! TLS for the bus: the embedded broker's TLS front (MQTT over TLS on the broker's address,
//! handed to the broker in this process in plain form on loopback), and the server
//! configuration the API's HTTPS shares. rustls with ring throughout.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A rustls server configuration from a PEM certificate chain and key; errors name the file.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the TLS certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("cannot read the TLS certificate {}: no certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read the TLS key {}: {e}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map(Arc::new)
        .map_err(|e| format!("the TLS certificate and key do not make a server configuration: {e}"))
}

/// Accepts TLS connections on `listener`: each handshake runs in a task of its own (bounded to
/// 10 s), so a client that stalls in one holds up no one else; a failed handshake is logged and
/// dropped. Connections come out of the channel with their peer's address, until it is dropped.
pub fn handshakes(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let acceptor = TlsAcceptor::from(config);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "TLS accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = socket.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// Serves MQTT over TLS on `listener`, each connection's bytes both ways to the broker at `plain`.
pub(crate) fn serve_front(listener: TcpListener, config: Arc<rustls::ServerConfig>, plain: SocketAddr) {
    let mut connections = handshakes(listener, config);
    tokio::spawn(async move {
        while let Some((mut tls, _)) = connections.recv().await {
            tokio::spawn(async move {
                let Ok(mut broker) = TcpStream::connect(plain).await else { return };
                let _ = broker.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
}

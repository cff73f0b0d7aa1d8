//! TLS for the bus: the embedded broker's TLS front (MQTT over TLS on the broker's address,
//! handed to the broker in this process in plain form on loopback), and the server
//! configuration the API's HTTPS shares. rustls with ring throughout.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

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

/// Serves MQTT over TLS on `listener`: each connection's handshake in a task of its own, then
/// its bytes both ways to the broker at `plain`.
pub(crate) fn serve_front(listener: TcpListener, config: Arc<rustls::ServerConfig>, plain: SocketAddr) {
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT over TLS: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(socket)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "MQTT over TLS: handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "MQTT over TLS: handshake timed out"),
                };
                let Ok(mut broker) = tokio::net::TcpStream::connect(plain).await else { return };
                let _ = broker.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
}

//! TLS termination: rustls with h2 and http/1.1 by ALPN, certificates re-read on reload.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::error::BoxError;

/// The listener's TLS side; the acceptor is swapped when certificates are reloaded, and
/// each handshake uses the one current when it starts.
pub struct TlsTerminator {
    acceptor: ArcSwap<TlsAcceptor>,
}

impl TlsTerminator {
    /// Loads the certificate and key.
    pub fn new(config: &TlsConfig) -> Result<TlsTerminator, BoxError> {
        Ok(TlsTerminator {
            acceptor: ArcSwap::from_pointee(acceptor(config)?),
        })
    }

    /// Re-reads the certificate and key; on error the old ones stay in use.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), BoxError> {
        self.acceptor.store(Arc::new(acceptor(config)?));
        Ok(())
    }

    /// Runs the handshake.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let acceptor = self.acceptor.load_full();
        acceptor.accept(stream).await
    }
}

fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, BoxError> {
    let certs = load_certs(&config.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| format!("server.tls.key_file {}: {e}", config.key_file.display()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("server.tls: the certificate and key do not fit together: {e}"))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("server.tls.cert_file {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("server.tls.cert_file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "server.tls.cert_file {}: no certificate in it",
            path.display()
        )
        .into());
    }
    Ok(certs)
}

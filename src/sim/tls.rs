//! The simulator's self-signed certificate and TLS acceptor.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// What a TLS simulator needs: the acceptor, and the PEM clients must trust.
pub(super) struct TlsSetup {
    pub(super) acceptor: TlsAcceptor,
    pub(super) ca_pem: String,
}

/// Generates a fresh self-signed certificate for `localhost`, `127.0.0.1` and
/// `ip`, and a server config offering `h2` and `http/1.1` over ALPN.
pub(super) fn self_signed(ip: IpAddr) -> io::Result<TlsSetup> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if ip.to_string() != "127.0.0.1" {
        names.push(ip.to_string());
    }
    let certified = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
    let cert_der = certified.cert.der().clone();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));

    // An explicit provider rather than the process-wide default: the default
    // is ambiguous (and `builder()` panics) when another dependency enables a
    // second rustls crypto backend.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)
        .map_err(io::Error::other)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    Ok(TlsSetup {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        ca_pem: certified.cert.pem(),
    })
}

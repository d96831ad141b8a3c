//! The rustls path: a TLS upstream trusted through `upstream.ca_file`.

mod common;

use common::{client, job_path, send, start_gateway, start_sim, tempdir, test_config};
use http::{Method, StatusCode};

#[tokio::test]
async fn a_tls_upstream_is_reached_with_the_configured_ca() {
    let sim = start_sim(true).await;
    assert!(sim.url().starts_with("https://"));
    let dir = tempdir();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, sim.ca_pem().expect("tls sim has a cert")).expect("write ca");
    let mut config = test_config();
    config.upstream.ca_file = Some(ca);
    let gateway = start_gateway(&sim, config).await;
    let id = sim.add_completed(None);
    let url = format!("{}{}", gateway.url(), job_path(id));
    let c = client();
    let first = send(&c, Method::GET, &url, &[], Default::default()).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.cache(), "miss");
    assert_eq!(
        send(&c, Method::GET, &url, &[], Default::default())
            .await
            .cache(),
        "hit"
    );
    assert_eq!(sim.calls_to(&job_path(id)), 1);
}

#[tokio::test]
async fn an_untrusted_tls_upstream_is_a_502() {
    let sim = start_sim(true).await;
    let gateway = start_gateway(&sim, test_config()).await;
    let id = sim.add_completed(None);
    let url = format!("{}{}", gateway.url(), job_path(id));
    let reply = send(&client(), Method::GET, &url, &[], Default::default()).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code(), "upstream_unreachable");
}

/// An HTTP/2 upstream (TLS, ALPN `h2`) that resets each of the first `resets` streams with
/// `reason`, then answers with a completed job. Returns its URL, the PEM to trust, and
/// the count of streams it saw.
async fn h2_upstream(
    reason: h2::Reason,
    resets: usize,
) -> (
    String,
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .expect("server config");
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let streams = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&streams);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    if n < resets {
                        respond.send_reset(reason);
                        continue;
                    }
                    let id = request
                        .uri()
                        .path()
                        .rsplit('/')
                        .next()
                        .and_then(|s| s.parse::<uuid::Uuid>().ok())
                        .unwrap_or_default();
                    let body = common::completed_job_json(id, "https://upstream.invalid");
                    let response = http::Response::builder()
                        .header("content-type", "application/json")
                        .body(())
                        .expect("response");
                    if let Ok(mut send) = respond.send_response(response, false) {
                        let _ = send.send_data(bytes::Bytes::from(body), true);
                    }
                }
            });
        }
    });
    (format!("https://{addr}"), certified.cert.pem(), streams)
}

/// On HTTP/2 the one failure after which a GET is sent again is `REFUSED_STREAM` (the
/// server's promise that it did not process it); any other reset is not resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_h2_only_a_refused_stream_is_sent_again() {
    use std::sync::atomic::Ordering;
    for (reason, status, streams) in [
        (h2::Reason::REFUSED_STREAM, StatusCode::OK, 2),
        (h2::Reason::INTERNAL_ERROR, StatusCode::BAD_GATEWAY, 1),
    ] {
        let (url, pem, seen) = h2_upstream(reason, 1).await;
        let dir = tempdir();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, pem).expect("write ca");
        let mut config = test_config();
        config.upstream.ca_file = Some(ca);
        let gateway = common::start_gateway_at(&url, config).await;
        let path = job_path(uuid::Uuid::new_v4());
        let reply = send(
            &client(),
            Method::GET,
            &format!("{}{path}", gateway.url()),
            &[],
            Default::default(),
        )
        .await;
        assert_eq!(reply.status, status, "{reason:?}: {:?}", reply.body);
        assert_eq!(seen.load(Ordering::SeqCst), streams, "{reason:?}");
    }
}

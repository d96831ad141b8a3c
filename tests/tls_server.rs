//! TLS termination: h1 and h2 (by ALPN) clients get a cached job; certificates are
//! re-read on reload.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::{job_path, start_sim, tempdir, KEY};
use exagate::secret::ApiKey;
use exagate::{Config, Launch};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

/// Writes a fresh self-signed certificate for 127.0.0.1; returns its PEM.
fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("cert");
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    (cert, key, certified.cert.pem())
}

/// A client trusting only `ca_pem`, offering h1 only, or h2 only.
fn tls_client(
    ca_pem: &str,
    h2: bool,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let mut roots = rustls::RootCertStore::empty();
    let cert = rustls_pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes()).expect("pem");
    roots.add(cert).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if h2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let mut client = Client::builder(TokioExecutor::new());
    if h2 {
        client.http2_only(true);
    }
    client.build(connector)
}

async fn get(
    client: &Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    url: &str,
) -> Result<(StatusCode, Version, String), String> {
    let request = Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let version = response.version();
    let cache = response.headers()["x-cache"]
        .to_str()
        .unwrap_or("")
        .to_string();
    let _ = response.into_body().collect().await;
    Ok((status, version, cache))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_on_h1_and_h2_get_a_cached_job_and_certificates_reload() {
    let sim = start_sim(false).await;
    let dir = tempdir();
    let (cert, key, first_pem) = write_cert(dir.path(), "first");
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, KEY).expect("key");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let config_path = dir.path().join("config.toml");
    let write_config = |cert: &Path, key: &Path| {
        std::fs::write(
            &config_path,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"https://127.0.0.1:{port}\"\n\
                 [server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
                 [upstream]\nurl = \"{}\"\napi_key_file = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
                cert.display(),
                key.display(),
                sim.url(),
                key_file.display()
            ),
        )
        .expect("write config");
    };
    write_config(&cert, &key);
    let config = Config::load(&config_path).expect("config");
    let gw = exagate::start(Launch {
        key: ApiKey::load(&config.upstream).expect("key"),
        config,
        config_path: Some(config_path.clone()),
        watch_every: None,
        public: listener,
        admin: None,
    })
    .expect("start");

    let id = sim.add_completed(None);
    let url = format!("https://127.0.0.1:{port}{}", job_path(id));
    let h1 = tls_client(&first_pem, false);
    let (status, version, cache) = get(&h1, &url).await.expect("h1 over TLS");
    assert_eq!(
        (status, version, cache.as_str()),
        (StatusCode::OK, Version::HTTP_11, "miss")
    );
    let h2 = tls_client(&first_pem, true);
    let (status, version, cache) = get(&h2, &url).await.expect("h2 over TLS");
    assert_eq!(
        (status, version, cache.as_str()),
        (StatusCode::OK, Version::HTTP_2, "hit")
    );
    assert_eq!(sim.calls(), 1);

    // A renewed certificate: trusted by a new client only after the reload.
    let (cert2, key2, second_pem) = write_cert(dir.path(), "second");
    let renewed = tls_client(&second_pem, false);
    assert!(
        get(&renewed, &url).await.is_err(),
        "not served before the reload"
    );
    write_config(&cert2, &key2);
    gw.reload().await.expect("reload");
    let (status, _, cache) = get(&renewed, &url).await.expect("served after the reload");
    assert_eq!((status, cache.as_str()), (StatusCode::OK, "hit"));
}

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

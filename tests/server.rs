//! The listener: HTTP/2 cleartext beside HTTP/1.1, and graceful shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{job_path, Harness};
use exagate::sim::Fault;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::test]
async fn h2c_prior_knowledge_is_served_on_the_same_port() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    for expected in ["miss", "hit"] {
        let request = Request::get(format!("{}{}", h.url(), job_path(id)))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let response = h2.request(request).await.expect("h2 request");
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-cache"], expected);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert!(!body.is_empty());
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    h.sim.set_fault(Fault::Latency(Duration::from_millis(700)));
    let url = format!("{}{}", h.url(), job_path(id));
    let client = h.client.clone();
    let in_flight = tokio::spawn(async move {
        common::send(&client, http::Method::GET, &url, &[], Bytes::new()).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = h.gateway.addr;
    h.gateway.shutdown().await;
    let reply = in_flight.await.expect("task");
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the in-flight request finished"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

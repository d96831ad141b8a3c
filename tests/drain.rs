//! Draining on shutdown: `/readyz` fails at once, the gateway keeps serving for
//! `drain_delay`, then stops accepting and lets in-flight requests (downloads too)
//! finish.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{job_path, send, Harness};
use exagate::sim::Fault;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_readiness_keeps_serving_then_drains() {
    let h = Harness::with(|c| {
        c.server.drain_delay = Duration::from_millis(800);
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let id = h.sim.add_completed(None);
    let admin = h.gateway.admin_url().expect("admin");
    let public = h.gateway.addr;

    // A download in flight, read slowly so it spans the whole drain.
    let mut download = TcpStream::connect(public).await.expect("connect");
    download
        .write_all(format!("GET /v2/extract/{id}/download HTTP/1.1\r\nhost: gw\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match download.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            tokio::time::sleep(Duration::from_millis(12)).await;
        }
        got
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A slow lookup in flight.
    h.sim.set_fault(Fault::Latency(Duration::from_millis(1200)));
    let slow_url = format!("{}{}", h.url(), job_path(h.sim.add_completed(None)));
    let client = h.client.clone();
    let slow = tokio::spawn(async move {
        send(&client, Method::GET, &slow_url, &[], Default::default()).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.sim.set_fault(Fault::None);

    let began = Instant::now();
    h.gateway.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ready = send(
        &h.client,
        Method::GET,
        &format!("{admin}/readyz"),
        &[],
        Default::default(),
    )
    .await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "unready at once"
    );
    // Still serving during the delay, on a new connection too.
    let fresh = common::client();
    let during = send(
        &fresh,
        Method::GET,
        &format!("{}{}", h.url(), job_path(id)),
        &[],
        Default::default(),
    )
    .await;
    assert_eq!(during.status, StatusCode::OK);
    assert!(began.elapsed() < Duration::from_millis(800));

    // After the delay: no new connections.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        TcpStream::connect(public).await.is_err(),
        "still accepting after the delay"
    );

    // In-flight work finished whole.
    let slow = slow.await.expect("task");
    assert_eq!(slow.status, StatusCode::OK);
    let got = reader.await.expect("reader");
    let text = String::from_utf8_lossy(&got[..got.len().min(2048)]).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    assert_eq!(
        got.len() - head_end,
        3 * 1024 * 1024,
        "the download was not cut short"
    );
    h.gateway.stopped().await;
}

//! Uploads and downloads are timed by their progress: `upstream.timeout` bounds each
//! stall and the wait for the answer, never the length of a transfer that keeps moving.

mod common;

use std::time::Duration;

use common::{start_gateway, start_sim, test_config, RawUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a create of `total` bytes declared, `sent` of them in `chunks` pieces
/// `every` apart, then waits for the answer's status line.
async fn upload(
    addr: std::net::SocketAddr,
    total: usize,
    sent: usize,
    chunks: usize,
    every: Duration,
) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v2/extract HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {total}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    // A JSON object padded to `total` bytes: `{"url":"...","pad":"xxxx"}`.
    let prefix = r#"{"url":"https://example.com/a.pdf","pad":""#;
    let mut body = prefix.as_bytes().to_vec();
    body.resize(total - 2, b'x');
    body.extend_from_slice(b"\"}");
    let piece = sent.div_ceil(chunks);
    for part in body[..sent].chunks(piece) {
        if stream.write_all(part).await.is_err() {
            break;
        }
        tokio::time::sleep(every).await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_that_keeps_moving_is_not_cut_by_the_answer_deadline() {
    let sim = start_sim(false).await;
    let mut config = test_config();
    config.upstream.timeout = Duration::from_secs(2);
    let gw = start_gateway(&sim, config).await;
    // 10 KB over 5 s: never a stall of 2 s, so the create goes through, once.
    let answer = upload(
        gw.addr,
        10 * 1024,
        10 * 1024,
        10,
        Duration::from_millis(500),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 201"),
        "{answer}"
    );
    assert_eq!(sim.calls_to("/v2/extract"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_client_stops_sending_is_408() {
    let sim = start_sim(false).await;
    let mut config = test_config();
    config.upstream.timeout = Duration::from_millis(800);
    let gw = start_gateway(&sim, config).await;
    // 4 of 100 declared bytes, then nothing.
    let answer = upload(gw.addr, 100, 4, 1, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_upstream_stops_reading_is_504() {
    // Reads the head, then neither reads the body nor answers.
    let upstream = RawUpstream::start(|_, mut stream| async move {
        let _ = common::read_head(&mut stream).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let mut config = test_config();
    config.upstream.timeout = Duration::from_millis(800);
    config.server.max_body = 128 * 1024 * 1024;
    let gw = common::start_gateway_at(&upstream.url(), config).await;
    // Far more than the socket buffers hold: the upload stops moving upstream.
    let total = 64 * 1024 * 1024;
    let answer = upload(gw.addr, total, total, 256, Duration::ZERO).await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("stopped reading"), "{answer}");
}

/// A call the gateway gave up on does not leave its upstream connection open behind it:
/// a silent answer, or an upload the client stopped sending (whose upstream connection
/// would otherwise wait on the client for as long as the client stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_given_up_on_is_closed() {
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let upstream = RawUpstream::start(move |_, mut stream| {
        let closed = closed_tx.clone();
        async move {
            let _ = common::read_head(&mut stream).await;
            // Say nothing; note when the gateway hangs up.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            let _ = closed.send(());
        }
    })
    .await;
    let mut config = test_config();
    config.upstream.timeout = Duration::from_millis(500);
    let gw = common::start_gateway_at(&upstream.url(), config).await;
    let url = format!("{}{}", gw.url(), common::job_path(uuid::Uuid::new_v4()));
    let reply = common::send(
        &common::client(),
        http::Method::GET,
        &url,
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(reply.error_code(), "upstream_timeout");
    let closed = tokio::time::timeout(Duration::from_secs(5), closed_rx.recv()).await;
    assert!(
        matches!(closed, Ok(Some(()))),
        "a silent call's connection is still open"
    );

    // 4 of 100 bytes, then the client stays, silent, for 4 s: the upstream connection
    // must go well before the client does (the stall is 0.5 s).
    let addr = gw.addr;
    let stalled = tokio::spawn(upload(addr, 100, 4, 1, Duration::from_secs(4)));
    let closed = tokio::time::timeout(Duration::from_millis(2500), closed_rx.recv()).await;
    assert!(
        matches!(closed, Ok(Some(()))),
        "a stalled upload's connection is still open"
    );
    assert!(stalled.await.expect("upload").starts_with("HTTP/1.1 408"));
}

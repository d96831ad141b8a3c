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
    // Not shorter: with the other tests of this file moving tens of MiB on two cores, the
    // test's own client can stall for most of a second.
    config.upstream.timeout = Duration::from_secs(2);
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
    // Says nothing; notes when the gateway hangs up.
    let (upstream, mut closed_rx) = common::silent_upstream().await;
    let mut config = test_config();
    config.upstream.timeout = Duration::from_millis(500);
    // Uploads past 1 KiB go upstream before they are whole.
    config.server.upload_buffer = 1024;
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

    // 2 KiB of 4, then the client stays, silent, for 4 s: the upstream connection must
    // go well before the client does (the stall is 0.5 s).
    let addr = gw.addr;
    let stalled = tokio::spawn(upload(addr, 4096, 2048, 1, Duration::from_secs(4)));
    let closed = tokio::time::timeout(Duration::from_millis(2500), closed_rx.recv()).await;
    assert!(
        matches!(closed, Ok(Some(()))),
        "a stalled upload's connection is still open"
    );
    assert!(stalled.await.expect("upload").starts_with("HTTP/1.1 408"));
}

/// Downloads hold a slot of their own bound (`upstream.max_streams`) until their body
/// is done, so slow transfers never take the lookups' slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_hold_their_own_slots_to_the_end_and_never_starve_lookups() {
    // Downloads: a head and 1 KiB of 1 MiB, then silence; jobs: answered at once.
    let upstream = RawUpstream::start(|_, mut stream| async move {
        let Some(head) = common::read_head(&mut stream).await else {
            return;
        };
        if head.contains("/download") {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n")
                .await;
            let _ = stream.write_all(&[1u8; 1024]).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        common::answer_job(&mut stream, &head).await;
    })
    .await;
    let mut config = test_config();
    config.upstream.max_streams = 2;
    config.upstream.max_concurrent = 2;
    config.upstream.timeout = Duration::from_secs(4);
    config.admin.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let gw = common::start_gateway_at(&upstream.url(), config).await;
    let download = || {
        let url = format!("{}/v2/extract/{}/download", gw.url(), uuid::Uuid::new_v4());
        let request = http::Request::get(url)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        common::client().request(request)
    };
    // Two downloads under way: their heads are in, their bodies are not done.
    let first = download().await.expect("a head");
    let second = download().await.expect("a head");
    assert_eq!(
        common::metric_of(&gw, "exagate_upstream_streams_in_flight").await,
        2.0
    );
    // A third waits half of upstream.timeout, then is refused...
    let third = download().await.expect("an answer");
    assert_eq!(third.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    // ...while lookups go on in their own lane.
    for _ in 0..3 {
        let job = common::job_path(uuid::Uuid::new_v4());
        let url = format!("{}{job}", gw.url());
        let reply = common::send(
            &common::client(),
            http::Method::GET,
            &url,
            &[],
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(reply.status, http::StatusCode::OK);
    }
    drop((first, second));
    // Dropped by their clients: the slots come back.
    for _ in 0..50 {
        if common::metric_of(&gw, "exagate_upstream_streams_in_flight").await == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the download slots were not given back");
}

/// A download whose client reads nothing is ended at `server.send_timeout`, on HTTP/1
/// (the socket fills) and on HTTP/2 (a stream window of 0), and its upstream call and
/// slot go with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_the_client_never_reads_is_ended_at_the_send_timeout() {
    // Downloads far larger than what socket buffers hold.
    let sim = exagate::sim::Simulator::start(exagate::sim::SimOptions {
        api_key: common::KEY.to_string(),
        download_size: 64 * 1024 * 1024,
        ..exagate::sim::SimOptions::default()
    })
    .await
    .expect("simulator");
    let mut config = test_config();
    config.server.send_timeout = Duration::from_millis(800);
    config.admin.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let gw = start_gateway(&sim, config).await;
    // HTTP/1: asks for a 64 MiB download and reads nothing.
    let id = sim.add_completed(None);
    let mut h1 = TcpStream::connect(gw.addr).await.expect("connect");
    let request = format!("GET /v2/extract/{id}/download HTTP/1.1\r\nhost: gw\r\n\r\n");
    h1.write_all(request.as_bytes()).await.expect("write");
    // HTTP/2: five downloads on a connection whose stream windows are 0.
    let (mut sender, _connection) = common::h2_shut_windows(gw.addr).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let id = sim.add_completed(None);
        let request = http::Request::get(format!("http://gw/v2/extract/{id}/download"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("a head");
        assert_eq!(response.status(), http::StatusCode::OK);
        held.push(response);
    }
    assert_eq!(
        common::metric_of(&gw, "exagate_upstream_streams_in_flight").await,
        6.0
    );
    let mut released = false;
    for _ in 0..60 {
        if common::metric_of(&gw, "exagate_upstream_streams_in_flight").await == 0.0 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        released,
        "downloads nobody reads still hold their upstream calls"
    );
    assert!(common::metric_of(&gw, "exagate_send_timeouts_total").await >= 5.0);
    // The HTTP/1 connection itself is closed (its socket was full).
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), h1.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the HTTP/1 connection that reads nothing is still open"
    );
    drop(held);
}

/// Uploads are read (up to `server.upload_buffer`) before an upstream slot is taken:
/// clients that trickle their bodies hold nothing upstream, and lookups go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_uploads_hold_no_upstream_slot() {
    let sim = start_sim(false).await;
    let mut config = test_config();
    config.upstream.max_streams = 4;
    config.upstream.max_concurrent = 4;
    config.admin.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let gw = start_gateway(&sim, config).await;
    // 16 creates that declare 100 bytes and send 4.
    let mut stalled = Vec::new();
    for _ in 0..16 {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        let head = "POST /v2/extract HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"ur";
        stream.write_all(head.as_bytes()).await.expect("write");
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        common::metric_of(&gw, "exagate_upstream_streams_in_flight").await,
        0.0
    );
    assert_eq!(sim.calls(), 0, "a partial upload reached the upstream");
    let id = sim.add_completed(None);
    let url = format!("{}{}", gw.url(), common::job_path(id));
    let reply = common::send(
        &common::client(),
        http::Method::GET,
        &url,
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, http::StatusCode::OK);
    // And a whole create still goes through while they wait.
    let answer = upload(gw.addr, 200, 200, 1, Duration::ZERO).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(stalled);
}

/// A forwarded call whose client hangs up before the answer is ended upstream too (a
/// cached lookup's fetch goes on: others may be waiting on it, and it stores its answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_call_whose_client_left_is_ended_upstream() {
    let (upstream, mut closed_rx) = common::silent_upstream().await;
    let gw = common::start_gateway_at(&upstream.url(), test_config()).await;
    let mut client = TcpStream::connect(gw.addr).await.expect("connect");
    client
        .write_all(b"GET /v2/extract-settings HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.connections(), 1);
    drop(client);
    // Well before upstream.timeout (2 s) would have ended it.
    let closed = tokio::time::timeout(Duration::from_millis(1500), closed_rx.recv()).await;
    assert!(
        matches!(closed, Ok(Some(()))),
        "the upstream call outlived its client"
    );
}

/// A large cached answer to a client whose HTTP/2 window stays shut is ended at
/// `server.send_timeout` too (it would otherwise be held, evicted or not, for as long as
/// the client likes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_nobody_reads_is_ended_at_the_send_timeout() {
    let sim = start_sim(false).await;
    sim.set_padding(400 * 1024);
    let mut config = test_config();
    config.server.send_timeout = Duration::from_millis(600);
    config.admin.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let gw = start_gateway(&sim, config).await;
    let id = sim.add_completed(None);
    let path = common::job_path(id);
    let whole = common::send(
        &common::client(),
        http::Method::GET,
        &format!("{}{path}", gw.url()),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert!(whole.body.len() > 300 * 1024, "{}", whole.body.len());
    let (mut sender, _connection) = common::h2_shut_windows(gw.addr).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let request = http::Request::get(format!("http://gw{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("a head");
        assert_eq!(response.headers()["x-cache"], "hit");
        held.push(response);
    }
    let mut ended = 0.0;
    for _ in 0..50 {
        ended = common::metric_of(&gw, "exagate_send_timeouts_total").await;
        if ended >= 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ended, 5.0, "large answers nobody reads were held");
    drop(held);
}

//! What a misbehaving client runs into: body and header limits, slow headers, idle
//! connections, the connection cap.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{job_path, Harness};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads what the server sends until it closes (or `limit` passes).
async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test]
async fn a_declared_body_over_max_body_is_413_before_any_upstream_call() {
    let h = Harness::with(|c| c.server.max_body = 1024).await;
    let reply = h
        .send(
            Method::POST,
            "/v2/extract",
            &[("content-type", "application/json")],
            Bytes::from(vec![b' '; 4096]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code(), "payload_too_large");
    assert_eq!(h.sim.calls(), 0);
    // Within the limit it goes through.
    let ok = h
        .send(
            Method::POST,
            "/v2/extract",
            &[("content-type", "application/json")],
            Bytes::from(r#"{"url":"https://example.com/a.pdf"}"#),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn a_chunked_body_over_max_body_never_reaches_the_upstream_whole() {
    let h = Harness::with(|c| c.server.max_body = 1024).await;
    let mut stream = TcpStream::connect(h.gateway.addr).await.expect("connect");
    let chunk = "x".repeat(4000);
    let request = format!(
        "POST /v2/extract HTTP/1.1\r\nhost: gw\r\ncontent-type: multipart/form-data; boundary=b\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let (answer, _) = read_until_close(&mut stream, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    for seen in h.sim.requests() {
        assert!(
            seen.body_len <= 1024,
            "the upstream got {} bytes",
            seen.body_len
        );
    }
}

#[tokio::test]
async fn slow_headers_are_cut() {
    let h = Harness::with(|c| c.server.header_read_timeout = Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(h.gateway.addr).await.expect("connect");
    stream
        .write_all(b"GET /v2/extract HTTP/1.1\r\nhost: gw\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let (_, closed) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "the connection was not closed");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(h.sim.calls(), 0);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let h = Harness::with(|c| c.server.idle_timeout = Duration::from_millis(300)).await;
    let id = h.sim.add_completed(None);
    let mut stream = TcpStream::connect(h.gateway.addr).await.expect("connect");
    let request = format!("GET {} HTTP/1.1\r\nhost: gw\r\n\r\n", job_path(id));
    stream.write_all(request.as_bytes()).await.expect("write");
    let (answer, closed) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed, "the idle connection was kept open");
}

#[tokio::test]
async fn an_oversized_head_is_refused() {
    let h = Harness::with(|c| c.server.max_header_bytes = 8 * 1024).await;
    let mut stream = TcpStream::connect(h.gateway.addr).await.expect("connect");
    let request = format!(
        "GET /v2/extract HTTP/1.1\r\nhost: gw\r\nx-junk: {}\r\n\r\n",
        "j".repeat(64 * 1024)
    );
    let _ = stream.write_all(request.as_bytes()).await;
    let (answer, closed) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert_eq!(h.sim.calls(), 0);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_slot() {
    let h = Harness::with(|c| {
        c.server.max_connections = 1;
        c.server.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let id = h.sim.add_completed(None);
    // The first connection holds the only slot (idle, until its idle timeout).
    let mut first = TcpStream::connect(h.gateway.addr).await.expect("connect");
    first
        .write_all(format!("GET {} HTTP/1.1\r\nhost: gw\r\n\r\n", job_path(id)).as_bytes())
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = first.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The second is accepted by the kernel but not served until the first is gone.
    let started = Instant::now();
    let second = h.get(&job_path(id)).await;
    assert_eq!(second.status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "served at once despite max_connections = 1"
    );
}

#[tokio::test]
async fn a_trickled_head_is_cut_though_bytes_keep_coming() {
    // Bytes every 50 ms keep the idle timeout from ever firing: only the head timeout
    // can end this (a slowloris).
    let h = Harness::with(|c| c.server.header_read_timeout = Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(h.gateway.addr).await.expect("connect");
    let head = b"GET /v2/extract HTTP/1.1\r\nhost: gw\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut cut_after = None;
    for byte in head.iter() {
        if stream.write_all(&[*byte]).await.is_err() {
            cut_after = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_after = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => panic!(
                "answered a head that never finished: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(_) => {}
        }
    }
    let cut_after = cut_after.expect("the whole trickled head was taken (about 6 s of it)");
    assert!(
        cut_after < Duration::from_secs(4),
        "cut only after {cut_after:?}"
    );
    assert_eq!(h.sim.calls(), 0);
}

#[tokio::test]
async fn a_silent_connection_is_cut_after_the_head_timeout() {
    let h = Harness::with(|c| c.server.header_read_timeout = Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(h.gateway.addr).await.expect("connect");
    let (answer, closed) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "a connection that never sent a byte was kept open");
    assert!(answer.is_empty(), "{answer}");
}

#[tokio::test]
async fn a_keep_alive_pause_between_requests_is_ruled_by_the_idle_timeout() {
    // As nginx separates client_header_timeout from keepalive_timeout: waiting for the
    // next request on an idle connection is not a slow head.
    let h = Harness::with(|c| {
        c.server.header_read_timeout = Duration::from_millis(200);
        c.server.idle_timeout = Duration::from_secs(10);
    })
    .await;
    let id = h.sim.add_completed(None);
    let mut stream = TcpStream::connect(h.gateway.addr).await.expect("connect");
    let request = format!("GET {} HTTP/1.1\r\nhost: gw\r\n\r\n", job_path(id));
    for round in 0..2 {
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "round {round}: {answer}"
        );
        // Four head timeouts of quiet between the two requests.
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
}

#[tokio::test]
async fn an_h2_connection_is_not_timed_like_an_h1_head() {
    let h = Harness::with(|c| {
        c.server.header_read_timeout = Duration::from_millis(200);
        c.server.idle_timeout = Duration::from_secs(10);
    })
    .await;
    let id = h.sim.add_completed(None);
    let stream = TcpStream::connect(h.gateway.addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    for round in 0..2 {
        let request = http::Request::get(job_path(id))
            .header("host", "gw")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let response = sender
            .send_request(request)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the connection is gone: {e}"));
        assert_eq!(response.status(), StatusCode::OK, "round {round}");
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    drop(sender);
    let _ = connection.await;
}

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = b"\0\0\0\x04\0\0\0\0\0";

/// An h2c connection that sends its preface and SETTINGS and then nothing is closed at
/// the idle timeout, hard when it never answers the goodbye (GOAWAY and its PING).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_that_ignores_the_goodbye_is_closed() {
    let h = Harness::with(|c| {
        c.server.idle_timeout = Duration::from_millis(600);
        c.admin.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(h.gateway.addr).await.expect("connect");
        stream.write_all(PREFACE).await.expect("preface");
        stream.write_all(SETTINGS).await.expect("settings");
        streams.push(stream);
    }
    for stream in &mut streams {
        // Reads what the server says (SETTINGS, GOAWAY, PING) and never answers.
        let (_, closed) = read_until_close(stream, Duration::from_secs(8)).await;
        assert!(
            closed,
            "an idle h2 connection outlived idle_timeout and its grace"
        );
    }
    let closed = h
        .metric(r#"exagate_connections_closed_total{cause="goodbye_timeout"}"#)
        .await;
    assert_eq!(closed, 20.0);
}

/// The HTTP/2 preface trickled a byte at a time is a slow head like any other.
#[tokio::test]
async fn a_trickled_h2_preface_is_cut_at_the_head_timeout() {
    let h = Harness::with(|c| c.server.header_read_timeout = Duration::from_millis(400)).await;
    let mut stream = TcpStream::connect(h.gateway.addr).await.expect("connect");
    stream.write_all(b"PRI ").await.expect("write");
    let bytes: Vec<&[u8]> = PREFACE[4..].chunks(1).collect();
    let cut_after = cut_while_sending(&mut stream, &bytes, Duration::from_millis(150))
        .await
        .expect("the whole trickled preface was taken");
    assert!(cut_after < Duration::from_secs(3), "{cut_after:?}");
}

/// A header block left open (HEADERS without END_HEADERS, then a CONTINUATION now and
/// then) is a head that never completes: cut at the head timeout.
#[tokio::test]
async fn an_h2_header_block_kept_open_is_cut_at_the_head_timeout() {
    let h = Harness::with(|c| c.server.header_read_timeout = Duration::from_millis(400)).await;
    let mut stream = TcpStream::connect(h.gateway.addr).await.expect("connect");
    stream.write_all(PREFACE).await.expect("preface");
    stream.write_all(SETTINGS).await.expect("settings");
    // HEADERS on stream 1, one byte of HPACK (an indexed `:method: GET`), no END_HEADERS.
    stream
        .write_all(b"\0\0\x01\x01\x00\0\0\0\x01\x82")
        .await
        .expect("headers");
    // Three CONTINUATIONs on stream 1 (`:scheme: http`, still no END_HEADERS), fewer
    // than h2's own limit on CONTINUATION frames, over 1.5 s.
    let continuation: &[u8] = b"\0\0\x01\x09\x00\0\0\0\x01\x86";
    let cut_after = cut_while_sending(&mut stream, &[continuation; 3], Duration::from_millis(500))
        .await
        .expect("an open header block was kept");
    assert!(cut_after < Duration::from_secs(3), "{cut_after:?}");
}

/// Sends `pieces`, one every `every`, until the gateway cuts the connection; how long
/// that took, or `None` if every piece was taken.
async fn cut_while_sending(
    stream: &mut TcpStream,
    pieces: &[&[u8]],
    every: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    for piece in pieces {
        tokio::time::sleep(every).await;
        if stream.write_all(piece).await.is_err() {
            return Some(started.elapsed());
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await
        {
            return Some(started.elapsed());
        }
    }
    None
}

//! What the access log says of requests that went wrong: a call never made has no
//! upstream fields; a download whose upstream stalled is cut, logged `complete=false`
//! and counted.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use common::{job_path, Harness, RawUpstream};
use exagate::sim::Fault;
use http::{Method, StatusCode};
use http_body_util::BodyExt;

/// Every access line this test binary's gateways write, as JSON lines.
fn lines() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter("exagate::access=info")
            .with_writer(move || Sink(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        log
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The access line for `path` (waits up to 2 s for it).
async fn line_for(path: &str) -> serde_json::Value {
    for _ in 0..40 {
        let text = String::from_utf8_lossy(&lines().lock().unwrap_or_else(|e| e.into_inner()))
            .into_owned();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["path"] == path);
        if let Some(line) = found {
            return line["fields"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no access line for {path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_never_made_have_no_upstream_fields() {
    lines();
    let h = Harness::new().await;
    // A 429 closes the gate for 5 s.
    h.sim.set_fault_for(
        Fault::TooManyRequests {
            retry_after: Some(5),
        },
        1,
    );
    let tripped = h.get(&job_path(h.sim.add_completed(None))).await;
    assert_eq!(tripped.status, StatusCode::TOO_MANY_REQUESTS);
    let id = h.sim.add_completed(None);
    let reprocess = format!("/v2/extract/{id}/reprocess");
    let download = format!("/v2/extract/{id}/download");
    let r = h.send(Method::POST, &reprocess, &[], Bytes::new()).await;
    assert_eq!(r.error_code(), "upstream_rate_limited");
    assert_eq!(h.get(&download).await.error_code(), "upstream_rate_limited");
    for path in [&reprocess, &download] {
        let line = line_for(path).await;
        assert_eq!(line["status"], 429, "{line}");
        assert!(line.get("upstream_us").is_none(), "{path}: {line}");
        assert!(line.get("upstream_status").is_none(), "{path}: {line}");
    }
    // The check can fail: the call that was made has them.
    let sent = h.sim.requests();
    let first = sent
        .first()
        .expect("the tripping call")
        .path_and_query
        .clone();
    let line = line_for(&first).await;
    assert!(line.get("upstream_us").is_some(), "{line}");
    assert_eq!(line["upstream_status"], 429, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_whose_upstream_stalls_is_cut_logged_and_counted() {
    use tokio::io::AsyncWriteExt;
    lines();
    // The head and 1 KiB of a 1 MiB download, then silence.
    let upstream = RawUpstream::start(|_, mut stream| async move {
        let _ = common::read_head(&mut stream).await;
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: application/pdf\r\ncontent-length: 1048576\r\n\r\n";
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&[7u8; 1024]).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let mut config = common::test_config();
    config.upstream.timeout = Duration::from_millis(700);
    config.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let gw = common::start_gateway_at(&upstream.url(), config).await;
    let path = format!("/v2/extract/{}/download", uuid::Uuid::new_v4());
    let request = http::Request::get(format!("{}{path}", gw.url()))
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    let response = common::client().request(request).await.expect("a head");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match body.frame().await {
                Some(Ok(frame)) => received += frame.data_ref().map_or(0, |d| d.len()),
                Some(Err(_)) => return "cut",
                None => return "ended",
            }
        }
    })
    .await;
    assert_eq!(
        ended,
        Ok("cut"),
        "the download was held, or ended as if whole"
    );
    assert_eq!(received, 1024);
    let line = line_for(&path).await;
    assert_eq!(line["complete"], false, "{line}");
    assert_eq!(
        common::metric_of(&gw, "exagate_upstream_body_stalls_total").await,
        1.0
    );
}

/// A client that hangs up before its answer still leaves its access line and its metric,
/// as `499`: abandoned requests (and what they cost upstream) are never invisible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_is_logged_and_counted_as_499() {
    use tokio::io::AsyncWriteExt;
    lines();
    let h = Harness::with(|c| {
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let id = h.sim.add_completed(None);
    let job = job_path(id);
    let settings_path = "/v2/extract-settings";
    for path in [job.as_str(), settings_path] {
        h.sim
            .set_fault_for(Fault::Latency(Duration::from_millis(800)), 1);
        let mut stream = tokio::net::TcpStream::connect(h.gateway.addr)
            .await
            .expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nhost: gw\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(stream);
        let line = line_for(path).await;
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["complete"], false, "{line}");
    }
    for route in ["job", "settings"] {
        let series = format!(
            r#"exagate_requests_total{{route="{route}",status="499",cache="{}",client=""}}"#,
            if route == "job" { "miss" } else { "bypass" }
        );
        assert_eq!(h.metric(&series).await, 1.0, "{series}");
    }
}

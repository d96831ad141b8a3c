//! The forwarded endpoints: key injected, bodies streamed, nothing cached or retried.

mod common;

use bytes::Bytes;
use common::{job_path, Harness, KEY};
use http::{Method, StatusCode};

#[tokio::test]
async fn create_is_forwarded_with_the_key_and_never_cached() {
    let h = Harness::new().await;
    let body = Bytes::from(r#"{"url":"https://example.com/report.pdf","name":"report"}"#);
    let created = h
        .send(
            Method::POST,
            "/v2/extract",
            &[
                ("content-type", "application/json"),
                ("x-api-key", "app-key"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK);
    assert_eq!(created.cache(), "bypass");
    assert_eq!(created.json()["state"], "pending");
    let seen = h.sim.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(seen[0].body_len, body.len());
    assert_eq!(seen[0].headers["x-api-key"], KEY);
}

#[tokio::test]
async fn a_large_upload_streams_through_whole() {
    let h = Harness::new().await;
    let payload = Bytes::from(vec![b'x'; 2 * 1024 * 1024]);
    let reply = h
        .send(
            Method::POST,
            "/v2/extract",
            &[("content-type", "multipart/form-data; boundary=xyz")],
            payload.clone(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(h.sim.requests()[0].body_len, payload.len());
}

#[tokio::test]
async fn list_upload_and_settings_are_forwarded_every_time() {
    let h = Harness::new().await;
    h.sim.add_completed(None);
    for path in [
        "/v2/extract?limit=5",
        "/v2/extract/upload?filename=a.pdf",
        "/v2/extract-settings",
    ] {
        for _ in 0..2 {
            let reply = h.get(path).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}");
            assert_eq!(reply.cache(), "bypass", "{path}");
        }
    }
    assert_eq!(h.sim.calls(), 6);
    let put = h
        .send(
            Method::PUT,
            "/v2/extract-settings",
            &[("content-type", "application/json")],
            Bytes::from(r#"{"webhookUrl":"https://hooks.example.com/exa"}"#),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(put.json()["webhookUrl"], "https://hooks.example.com/exa");
}

#[tokio::test]
async fn listed_jobs_have_their_links_rewritten() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let list = h.get("/v2/extract").await.json();
    let items = list["items"].as_array().expect("items");
    let job = items
        .iter()
        .find(|j| j["id"] == id.to_string())
        .expect("the job is listed");
    let link = job["links"]["download"].as_str().expect("download link");
    assert!(link.starts_with(&h.url()), "{link}");
}

#[tokio::test]
async fn a_job_action_drops_the_cached_job() {
    let h = Harness::new().await;
    let id = h
        .sim
        .add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    assert_eq!(h.get(&job_path(id)).await.json()["state"], "failed");
    // Hit twice: the second is served by the front table, which must be dropped too.
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit");
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit");
    let reprocess = h
        .send(
            Method::POST,
            &format!("/v2/extract/{id}/reprocess"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(reprocess.status, StatusCode::OK);
    assert_eq!(reprocess.cache(), "bypass");
    let after = h.get(&job_path(id)).await;
    assert_eq!(after.cache(), "miss", "the failed copy was dropped");
    assert_ne!(after.json()["state"], "failed");
}

#[tokio::test]
async fn webhook_trigger_is_forwarded() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let reply = h
        .send(
            Method::POST,
            &format!("/v2/extract/{id}/webhook/trigger"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.json()["traceId"].is_string());
}

/// Every route sends the job id upstream in its canonical lower-case spelling (the
/// upstream's pattern is lower-case), as the cached routes do.
#[tokio::test]
async fn every_route_sends_the_canonical_job_id() {
    let h = Harness::new().await;
    let done = h.sim.add_completed(None);
    let failed = h
        .sim
        .add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    let upper = |id: uuid::Uuid| id.to_string().to_uppercase();
    let download = h
        .get(&format!("/v2/extract/{}/download", upper(done)))
        .await;
    assert_eq!(download.status, StatusCode::OK);
    let reprocess = h
        .send(
            Method::POST,
            &format!("/v2/extract/{}/reprocess", upper(failed)),
            &[],
            Bytes::new(),
        )
        .await;
    assert!(reprocess.status.is_success(), "{}", reprocess.status);
    for request in h.sim.requests() {
        assert_eq!(
            request.path_and_query,
            request.path_and_query.to_lowercase(),
            "sent as typed"
        );
    }
    assert_eq!(h.sim.calls(), 2);
}

/// A job action the upstream turns down (`409`: only failed jobs can be reprocessed)
/// changed nothing, so the cached job stays.
#[tokio::test]
async fn a_refused_job_action_keeps_the_cached_job() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
    let reprocess = h
        .send(
            Method::POST,
            &format!("/v2/extract/{id}/reprocess"),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(reprocess.status, StatusCode::CONFLICT);
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit");
}

/// An upstream that compresses whenever the request allows it: lists and creates still
/// come back with their links pointing at the gateway, whatever the app accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_creates_are_rewritten_when_the_upstream_would_compress() {
    use std::io::Write as _;
    use tokio::io::AsyncWriteExt;
    let id = uuid::Uuid::new_v4();
    let upstream = common::RawUpstream::start(move |_, mut stream| async move {
        let Some(head) = common::read_head(&mut stream).await else {
            return;
        };
        let origin = "http://upstream.invalid";
        let job = common::completed_job_json(id, origin);
        let body = if head.starts_with("GET") {
            format!(r#"{{"items":[{job}],"nextCursor":null}}"#)
        } else {
            job
        };
        let gzip = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("accept-encoding:") && l.contains("gzip")
        });
        let (encoding, body) = if gzip {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            let _ = encoder.write_all(body.as_bytes());
            ("content-encoding: gzip\r\n", encoder.finish().unwrap_or_default())
        } else {
            ("", body.into_bytes())
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{encoding}content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&body).await;
        let _ = stream.shutdown().await;
    })
    .await;
    let gw = common::start_gateway_at(&upstream.url(), common::test_config()).await;
    let c = common::client();
    let accepts = [("accept-encoding", "gzip, deflate, br")];
    let list = common::send(
        &c,
        Method::GET,
        &format!("{}/v2/extract", gw.url()),
        &accepts,
        Bytes::new(),
    )
    .await;
    let created = common::send(
        &c,
        Method::POST,
        &format!("{}/v2/extract", gw.url()),
        &[
            ("accept-encoding", "gzip"),
            ("content-type", "application/json"),
        ],
        Bytes::from(r#"{"url":"https://example.com/a.pdf"}"#),
    )
    .await;
    let ours = format!("{}/v2/extract/{id}/download", gw.url());
    for (what, reply, links) in [
        ("list", &list, list.json()["items"][0]["links"].clone()),
        ("create", &created, created.json()["links"].clone()),
    ] {
        assert_eq!(reply.status, StatusCode::OK, "{what}");
        assert!(
            !reply.headers.contains_key("content-encoding"),
            "{what}: passed on compressed"
        );
        assert_eq!(links["download"], ours.as_str(), "{what}: {links}");
    }
}

/// A pass-through request declares upstream exactly the body it carries (never the
/// client's framing), and carries only the headers on the allow-list.
#[tokio::test]
async fn the_upstream_is_told_only_of_the_body_it_gets_and_allowed_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::new().await;
    let mut stream = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .expect("connect");
    // A GET that declares and sends 19 bytes, with headers no upstream should act on.
    let request = "GET /v2/extract-settings HTTP/1.1\r\nhost: gw\r\ncontent-length: 19\r\n\
                   x-http-method-override: DELETE\r\nx-original-url: /v2/admin\r\n\
                   forwarded: for=10.0.0.1\r\nx_api_key: smuggled\r\n\
                   x-request-id: trace-1\r\nconnection: close\r\n\r\n0123456789abcdefghi";
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let seen = h.sim.requests();
    let settings = seen
        .iter()
        .find(|r| r.path_and_query == "/v2/extract-settings")
        .expect("the settings call");
    assert_eq!(settings.body_len, 0);
    assert!(settings
        .headers
        .get("content-length")
        .is_none_or(|v| v == "0"));
    for dropped in [
        "x-http-method-override",
        "x-original-url",
        "forwarded",
        "x_api_key",
    ] {
        assert!(
            !settings.headers.contains_key(dropped),
            "{dropped} was forwarded"
        );
    }
    assert_eq!(settings.headers["x-request-id"], "trace-1");
    // A create declares the length of what it sends, and the upstream gets all of it.
    let body = Bytes::from(r#"{"url":"https://example.com/a.pdf"}"#);
    let created = h
        .send(
            Method::POST,
            "/v2/extract",
            &[("content-type", "application/json")],
            body.clone(),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK);
    let create = h
        .sim
        .requests()
        .into_iter()
        .find(|r| r.method == Method::POST)
        .expect("the create");
    assert_eq!(create.body_len, body.len());
    assert_eq!(
        create.headers["content-length"],
        body.len().to_string().as_str()
    );
    // A bodiless POST (a reprocess) says so: some servers refuse a POST without a length.
    let failed = h
        .sim
        .add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    let path = format!("/v2/extract/{failed}/reprocess");
    assert!(h
        .send(Method::POST, &path, &[], Bytes::new())
        .await
        .status
        .is_success());
    let reprocess = h
        .sim
        .requests()
        .into_iter()
        .find(|r| r.path_and_query == path)
        .expect("the reprocess");
    assert_eq!(
        reprocess
            .headers
            .get("content-length")
            .map(|v| v.as_bytes()),
        Some(&b"0"[..]),
        "{:?}",
        reprocess.headers
    );
}

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

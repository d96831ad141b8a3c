//! Key injection: the gateway's key goes upstream, whatever the client sends.

mod common;

use bytes::Bytes;
use common::{job_path, Harness, KEY};
use http::{Method, StatusCode};

#[tokio::test]
async fn the_gateway_key_replaces_whatever_the_client_sends() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let reply = h
        .send(
            Method::GET,
            &job_path(id),
            &[
                ("x-api-key", "someone-elses-key"),
                ("authorization", "Bearer app-token"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let download = h
        .send(
            Method::GET,
            &format!("/v2/extract/{id}/download"),
            &[
                ("x-api-key", "someone-elses-key"),
                ("authorization", "Basic eDp5"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(download.status, StatusCode::OK);
    let seen = h.sim.requests();
    assert_eq!(seen.len(), 2);
    for request in seen {
        let keys: Vec<_> = request.headers.get_all("x-api-key").iter().collect();
        assert_eq!(
            keys,
            [KEY],
            "exactly the gateway's key: {}",
            request.path_and_query
        );
        assert!(!request.headers.contains_key("authorization"));
    }
}

#[tokio::test]
async fn the_key_is_in_no_answer() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    for path in [
        job_path(id),
        format!("/v2/extract/{id}/chunks"),
        "/v2/extract".to_string(),
        "/v2/extract/bad".to_string(),
        "/v2/nothing".to_string(),
    ] {
        let reply = h.get(&path).await;
        assert!(
            !String::from_utf8_lossy(&reply.body).contains(KEY),
            "{path}"
        );
        for (name, value) in &reply.headers {
            assert!(
                !value
                    .as_bytes()
                    .windows(KEY.len())
                    .any(|w| w == KEY.as_bytes()),
                "{path} {name}"
            );
        }
    }
}

//! What the gateway refuses by itself, without an upstream call.

mod common;

use common::{job_path, Harness};
use http::{Method, StatusCode};

#[tokio::test]
async fn invalid_job_ids_get_400_and_cost_nothing() {
    let h = Harness::new().await;
    for bad in [
        "/v2/extract/not-a-job",
        "/v2/extract/123e4567-e89b-02d3-a456-426614174000",
        "/v2/extract/123e4567e89b12d3a456426614174000",
        "/v2/extract/123e4567-e89b-12d3-a456-42661417400z/chunks",
    ] {
        let reply = h.get(bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.error_code(), "invalid_job_id", "{bad}");
        assert!(reply.json()["error"]["message"].is_string());
        assert_eq!(reply.cache(), "bypass");
    }
    assert_eq!(h.sim.calls(), 0);
}

#[tokio::test]
async fn suspicious_paths_get_400_and_cost_nothing() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let long = format!("/v2/extract?cursor={}", "a".repeat(3000));
    for bad in [
        "/v2/extract/%2e%2e",
        "/v2/extract/..%2fusers",
        "/v2/extract/%2E%2E/%2E%2E/v2/users",
        "/v2//extract",
        &format!("/v2/extract//{id}"),
        &format!("/v2/extract/{id}/./chunks"),
        &format!("/v2/extract/{id}/../../users"),
        "/v2/extract/%00",
        "/v2/extract%2fupload",
        &long,
    ] {
        let reply = h.get(bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.error_code(), "bad_request", "{bad}");
    }
    assert_eq!(h.sim.calls(), 0);
}

#[tokio::test]
async fn invalid_base_gets_400_and_costs_nothing() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    for bad in [
        "nope",
        "0c2d8a4e5b6f4a708b1c2d3e4f506172",
        "{0c2d8a4e-5b6f-4a70-8b1c-2d3e4f506172}",
    ] {
        let reply = h
            .send(
                Method::GET,
                &job_path(id),
                &[("x-exabase-base-id", bad)],
                Default::default(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.error_code(), "invalid_base_id");
    }
    assert_eq!(h.sim.calls(), 0);
}

#[tokio::test]
async fn other_paths_are_404_from_the_gateway() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    for path in [
        "/",
        "/v2/users/me",
        "/v2/workspaces",
        "/v1/extract",
        "/v2/extractx",
        &format!("/v2/extract/{id}/secrets"),
    ] {
        let reply = h.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.error_code(), "not_found", "{path}");
    }
    assert_eq!(h.sim.calls(), 0);
}

#[tokio::test]
async fn wrong_method_gets_405_with_allow() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let reply = h
        .send(Method::DELETE, &job_path(id), &[], Default::default())
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "GET, HEAD");
    assert_eq!(reply.error_code(), "method_not_allowed");
    let reply = h
        .send(
            Method::DELETE,
            "/v2/extract-settings",
            &[],
            Default::default(),
        )
        .await;
    assert_eq!(reply.headers["allow"], "GET, PUT");
    assert_eq!(h.sim.calls(), 0);
}

/// A chunks query is `start` and `end`, integers with `1 <= start <= end`: anything else
/// is refused before the cache and the upstream, and the spellings of one window share
/// one entry.
#[tokio::test]
async fn chunk_windows_are_parsed_and_keyed_canonically() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    assert_eq!(
        h.get(&format!("/v2/extract/{id}")).await.status,
        StatusCode::OK
    );
    let calls = h.sim.calls();
    for query in [
        "start=1&end=100&x=7",
        "start=0",
        "start=5&end=4",
        "start=a",
        "start=1&start=2",
    ] {
        let reply = h.get(&format!("/v2/extract/{id}/chunks?{query}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(reply.error_code(), "bad_request", "{query}");
    }
    assert_eq!(
        h.sim.calls(),
        calls,
        "a refused window reached the upstream"
    );
    let first = h
        .get(&format!("/v2/extract/{id}/chunks?start=1&end=20"))
        .await;
    assert_eq!(first.cache(), "miss");
    for spelling in ["end=20&start=1", "start=01&end=20", "start=1&end=20&"] {
        let again = h.get(&format!("/v2/extract/{id}/chunks?{spelling}")).await;
        assert_eq!(again.cache(), "hit", "{spelling}");
        assert_eq!(again.body, first.body, "{spelling}");
    }
    assert_eq!(h.sim.calls(), calls + 1);
    assert_eq!(
        h.sim.requests().last().map(|r| r.path_and_query.clone()),
        Some(format!("/v2/extract/{id}/chunks?start=1&end=20"))
    );
}

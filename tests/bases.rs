//! Base isolation: a job of one scope is never served for another.

mod common;

use common::{job_path, Harness};
use http::StatusCode;
use uuid::Uuid;

const BASE_A: &str = "0c2d8a4e-5b6f-4a70-8b1c-2d3e4f506172";
const BASE_B: &str = "9a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d";

#[tokio::test]
async fn a_base_job_is_never_served_for_another_base_or_the_workspace() {
    let h = Harness::new().await;
    let a = Uuid::parse_str(BASE_A).expect("uuid");
    let b = Uuid::parse_str(BASE_B).expect("uuid");
    let id = h.sim.add_completed(Some(a));

    // Warm the cache in base A.
    let in_a = h.get_in(a, &job_path(id)).await;
    assert_eq!(in_a.status, StatusCode::OK);
    assert_eq!(h.get_in(a, &job_path(id)).await.cache(), "hit");

    // Base B and the workspace each ask upstream, which says 404.
    let in_b = h.get_in(b, &job_path(id)).await;
    assert_eq!(in_b.status, StatusCode::NOT_FOUND);
    assert_eq!(in_b.cache(), "miss");
    let in_workspace = h.get(&job_path(id)).await;
    assert_eq!(in_workspace.status, StatusCode::NOT_FOUND);
    assert_eq!(in_workspace.cache(), "miss");

    // And the upstream was asked in the right scope each time.
    let scopes: Vec<Option<String>> = h
        .sim
        .requests()
        .iter()
        .map(|r| {
            r.headers
                .get("x-exabase-base-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        scopes,
        vec![Some(BASE_A.to_string()), Some(BASE_B.to_string()), None]
    );
}

#[tokio::test]
async fn workspace_job_is_not_served_inside_a_base() {
    let h = Harness::new().await;
    let a = Uuid::parse_str(BASE_A).expect("uuid");
    let id = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(id)).await.status, StatusCode::OK);
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit");
    let in_a = h.get_in(a, &job_path(id)).await;
    assert_eq!(in_a.status, StatusCode::NOT_FOUND);
    assert_eq!(in_a.cache(), "miss");
}

#[tokio::test]
async fn upper_case_base_is_the_same_scope() {
    let h = Harness::new().await;
    let a = Uuid::parse_str(BASE_A).expect("uuid");
    let id = h.sim.add_completed(Some(a));
    assert_eq!(h.get_in(a, &job_path(id)).await.status, StatusCode::OK);
    let upper = BASE_A.to_uppercase();
    let reply = h
        .send(
            http::Method::GET,
            &job_path(id),
            &[("x-exabase-base-id", &upper)],
            Default::default(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.cache(), "hit");
}

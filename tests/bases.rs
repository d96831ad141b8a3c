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

/// `X-Exabase-Workspace-Id`, the API's earlier name for the scope header.
const LEGACY: &str = "x-exabase-workspace-id";

async fn get_legacy(h: &Harness, id: &str, path: &str) -> common::Reply {
    h.send(http::Method::GET, path, &[(LEGACY, id)], Default::default())
        .await
}

#[tokio::test]
async fn the_legacy_workspace_header_is_a_scope_of_its_own() {
    let h = Harness::new().await;
    let a = Uuid::parse_str(BASE_A).expect("uuid");
    // One job in each of the three scopes an id can name, all with the same job id's
    // neighbours: the legacy scope of A, the base A, the workspace.
    let legacy_job = h.sim.add_completed(Some(exagate::sim::legacy_scope(a)));
    let base_job = h.sim.add_completed(Some(a));
    let ws_job = h.sim.add_completed(None);

    let first = get_legacy(&h, BASE_A, &job_path(legacy_job)).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.cache(), "miss");
    assert_eq!(
        get_legacy(&h, BASE_A, &job_path(legacy_job)).await.cache(),
        "hit"
    );
    // The same job asked as base A, or in the workspace, is not the legacy entry.
    let as_base = h.get_in(a, &job_path(legacy_job)).await;
    assert_eq!(
        (as_base.status, as_base.cache()),
        (StatusCode::NOT_FOUND, "miss")
    );
    let in_ws = h.get(&job_path(legacy_job)).await;
    assert_eq!(
        (in_ws.status, in_ws.cache()),
        (StatusCode::NOT_FOUND, "miss")
    );
    // And the base's and the workspace's cached jobs are not served to the legacy header.
    assert_eq!(
        h.get_in(a, &job_path(base_job)).await.status,
        StatusCode::OK
    );
    assert_eq!(h.get(&job_path(ws_job)).await.status, StatusCode::OK);
    for other in [base_job, ws_job] {
        let reply = get_legacy(&h, BASE_A, &job_path(other)).await;
        assert_eq!(
            (reply.status, reply.cache()),
            (StatusCode::NOT_FOUND, "miss")
        );
    }

    // Upstream, the header went as it came (canonical form), and only it.
    let legacy_calls: Vec<_> = h
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.headers.contains_key(LEGACY))
        .collect();
    assert_eq!(
        legacy_calls.len(),
        3,
        "one call each for the three legacy lookups"
    );
    for call in &legacy_calls {
        assert_eq!(call.headers[LEGACY], BASE_A);
        assert!(!call.headers.contains_key("x-exabase-base-id"));
    }
}

#[tokio::test]
async fn the_legacy_header_is_forwarded_on_pass_through_routes() {
    let h = Harness::new().await;
    let a = Uuid::parse_str(BASE_A).expect("uuid");
    let job = h.sim.add_completed(Some(exagate::sim::legacy_scope(a)));
    let upper = BASE_A.to_uppercase();
    for path in [
        format!("{}/chunks", job_path(job)),
        format!("{}/download", job_path(job)),
        "/v2/extract".to_string(),
    ] {
        let reply = get_legacy(&h, &upper, &path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
    let list = get_legacy(&h, BASE_A, "/v2/extract").await.json();
    assert!(
        list.to_string().contains(&job.to_string()),
        "the list is the legacy scope's: {list}"
    );
    let seen = h.sim.requests();
    assert!(seen.len() >= 4);
    for call in seen {
        assert_eq!(call.headers[LEGACY], BASE_A, "{}", call.path_and_query);
    }
}

#[tokio::test]
async fn a_bad_or_doubled_scope_header_is_a_400_that_costs_nothing() {
    let h = Harness::new().await;
    let id = job_path(Uuid::new_v4());
    let bad = get_legacy(&h, "not-a-uuid", &id).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_code(), "invalid_workspace_id");
    let twice = h
        .send(
            http::Method::GET,
            &id,
            &[(LEGACY, BASE_A), (LEGACY, BASE_B)],
            Default::default(),
        )
        .await;
    assert_eq!(twice.error_code(), "invalid_workspace_id");
    for path in [id.clone(), "/v2/extract".to_string()] {
        let both = h
            .send(
                http::Method::GET,
                &path,
                &[(LEGACY, BASE_A), ("x-exabase-base-id", BASE_B)],
                Default::default(),
            )
            .await;
        assert_eq!(both.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(both.error_code(), "conflicting_scope_headers");
    }
    assert_eq!(h.sim.calls(), 0);
}

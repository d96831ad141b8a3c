//! The admin listener: metrics that move as expected, health, readiness, purge.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{job_path, Harness, KEY};
use exagate::sim::Fault;
use futures_util::future::join_all;
use http::{Method, StatusCode};

async fn with_admin(token_env: &str) -> Harness {
    let token_env = token_env.to_string();
    Harness::with(move |c| {
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin.token_env = token_env;
    })
    .await
}

fn series(route: &str, status: u16, cache: &str) -> String {
    format!("exagate_requests_total{{route=\"{route}\",status=\"{status}\",cache=\"{cache}\",client=\"\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_gauges_follow_a_known_sequence() {
    let h = with_admin("EXAGATE_TEST_UNSET_TOKEN_1").await;
    let a = h.sim.add_completed(None);
    let missing = uuid::Uuid::new_v4();
    // 1 miss + 2 hits on a job, 1 miss on a 404, 1 refused id.
    for _ in 0..3 {
        assert_eq!(h.get(&job_path(a)).await.status, StatusCode::OK);
    }
    assert_eq!(
        h.get(&job_path(missing)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.get("/v2/extract/nope").await.status,
        StatusCode::BAD_REQUEST
    );
    // 20 concurrent cold requests for one job: 1 upstream call, 19 coalesced.
    let b = h.sim.add_completed(None);
    // Slow enough that all 20 arrive while the one fetch is under way.
    h.sim.set_fault(Fault::Latency(Duration::from_millis(1000)));
    let path = job_path(b);
    join_all((0..20).map(|_| h.get(&path))).await;
    h.sim.set_fault(Fault::None);

    assert_eq!(h.metric(&series("job", 200, "miss")).await, 21.0);
    assert_eq!(h.metric(&series("job", 200, "hit")).await, 2.0);
    assert_eq!(h.metric(&series("job", 404, "miss")).await, 1.0);
    assert_eq!(h.metric(&series("job", 400, "bypass")).await, 0.0);
    assert_eq!(h.metric(&series("none", 400, "bypass")).await, 1.0);
    assert_eq!(h.metric("exagate_coalesced_requests_total").await, 19.0);
    // 24 requests went to the gateway for 3 upstream calls: 2 hits and 19 followers
    // saved a call (the 400 never needed one).
    assert_eq!(
        h.metric("exagate_upstream_calls_saved_total{reason=\"hit\"}")
            .await,
        2.0
    );
    assert_eq!(
        h.metric("exagate_upstream_calls_saved_total{reason=\"coalesced\"}")
            .await,
        19.0
    );
    assert_eq!(
        h.metric("exagate_upstream_requests_total{route=\"job\",status=\"200\"}")
            .await,
        2.0
    );
    assert_eq!(
        h.metric("exagate_upstream_requests_total{route=\"job\",status=\"404\"}")
            .await,
        1.0
    );
    assert_eq!(
        h.metric("exagate_upstream_duration_seconds_count").await,
        3.0
    );
    assert_eq!(h.metric("exagate_cache_entries").await, 3.0);
    let bytes = h.metric("exagate_cache_bytes").await;
    assert!(bytes > 1000.0, "{bytes}");
    assert_eq!(h.metric("exagate_ready").await, 1.0);
    assert_eq!(h.metric("exagate_quota_tokens").await, -1.0);
    assert_eq!(h.sim.calls(), 3);

    let text = String::from_utf8(h.admin_get("/metrics").await.body.to_vec()).expect("utf8");
    assert!(!text.contains(KEY));
    assert!(!text.contains(&a.to_string()), "no ids in labels");
}

#[tokio::test]
async fn quota_state_is_exported() {
    let h = Harness::with(|c| {
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.upstream.rate_limit = Some(exagate::config::Rate {
            count: 100,
            per: Duration::from_secs(3600),
        });
    })
    .await;
    let id = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(id)).await.status, StatusCode::OK);
    let tokens = h.metric("exagate_quota_tokens").await;
    assert!(
        (8.9..9.1).contains(&tokens),
        "burst 10, one spent: {tokens}"
    );
    h.sim.set_fault_for(
        Fault::TooManyRequests {
            retry_after: Some(5),
        },
        1,
    );
    let other = h.sim.add_completed(None);
    assert_eq!(
        h.get(&job_path(other)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        h.get(&job_path(other)).await.error_code(),
        "upstream_rate_limited"
    );
    let cooldown = h.metric("exagate_upstream_cooldown_seconds").await;
    assert!(cooldown > 3.0 && cooldown <= 5.0, "{cooldown}");
    assert_eq!(
        h.metric("exagate_guard_refusals_total{cause=\"upstream_rate_limited\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn per_client_labels_when_clients_are_configured() {
    let h = Harness::with(|c| {
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.clients = vec![exagate::config::ClientConfig {
            name: "billing-app".into(),
            token_sha256: exagate::auth::hash_token("t0ken"),
            bases: None,
            workspace: None,
            rate_limit: None,
        }];
    })
    .await;
    let id = h.sim.add_completed(None);
    let reply = h
        .send(
            Method::GET,
            &job_path(id),
            &[("x-api-key", "t0ken")],
            Default::default(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let series = "exagate_requests_total{route=\"job\",status=\"200\",cache=\"miss\",client=\"billing-app\"}";
    assert_eq!(h.metric(series).await, 1.0);
    let text = String::from_utf8(h.admin_get("/metrics").await.body.to_vec()).expect("utf8");
    assert!(!text.contains("t0ken"));
}

#[tokio::test]
async fn health_and_readiness() {
    let h = with_admin("EXAGATE_TEST_UNSET_TOKEN_2").await;
    let health = h.admin_get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(h.admin_get("/readyz").await.status, StatusCode::OK);
    assert_eq!(h.sim.calls(), 0, "health costs no upstream call");
    // The admin routes are not on the public port.
    assert_eq!(h.get("/metrics").await.status, StatusCode::NOT_FOUND);
    assert_eq!(h.get("/healthz").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn purge_drops_an_entry_and_needs_the_token() {
    // A variable name no other test uses: the environment is shared by the process.
    std::env::set_var("EXAGATE_TEST_ADMIN_TOKEN_PURGE", "purge-me-9c1");
    let h = with_admin("EXAGATE_TEST_ADMIN_TOKEN_PURGE").await;
    let id = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
    let chunks = format!("/v2/extract/{id}/chunks?start=1&end=20");
    assert_eq!(h.get(&chunks).await.cache(), "miss");
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit");
    assert_eq!(h.get(&chunks).await.cache(), "hit");

    let path = format!("/cache/{id}");
    let none = h.admin_send(Method::DELETE, &path, &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    let wrong = h
        .admin_send(Method::DELETE, &path, &[("authorization", "Bearer nope")])
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h.get(&job_path(id)).await.cache(),
        "hit",
        "refused purges purge nothing"
    );

    let ok = h
        .admin_send(
            Method::DELETE,
            &path,
            &[("authorization", "Bearer purge-me-9c1")],
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
    assert_eq!(h.get(&chunks).await.cache(), "miss", "its chunks went too");

    // Everything.
    let other = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(other)).await.cache(), "miss");
    let all = h
        .admin_send(
            Method::DELETE,
            "/cache",
            &[("authorization", "Bearer purge-me-9c1")],
        )
        .await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(h.get(&job_path(other)).await.cache(), "miss");
    assert!(
        h.metric("exagate_cache_evictions_total{cause=\"explicit\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn purge_is_off_without_the_token_variable() {
    let h = with_admin("EXAGATE_TEST_UNSET_TOKEN_3").await;
    let id = h.sim.add_completed(None);
    let reply = h
        .admin_send(
            Method::DELETE,
            &format!("/cache/{id}"),
            &[("authorization", "Bearer x")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code(), "forbidden");
}

#[tokio::test]
async fn a_purge_names_its_scope_by_either_header() {
    std::env::set_var("EXAGATE_TEST_ADMIN_TOKEN_LEGACY", "purge-legacy-4e2");
    let h = with_admin("EXAGATE_TEST_ADMIN_TOKEN_LEGACY").await;
    let ws: uuid::Uuid = "0c2d8a4e-5b6f-4a70-8b1c-2d3e4f506172"
        .parse()
        .expect("uuid");
    let legacy = (
        "x-exabase-workspace-id",
        "0c2d8a4e-5b6f-4a70-8b1c-2d3e4f506172",
    );
    let id = h.sim.add_completed(Some(exagate::sim::legacy_scope(ws)));
    let job = job_path(id);
    let headers = [legacy];
    let get = || h.send(Method::GET, &job, &headers, Default::default());
    assert_eq!(get().await.cache(), "miss");
    assert_eq!(get().await.cache(), "hit");
    let token = ("authorization", "Bearer purge-legacy-4e2");
    // Without the header the purge is of the workspace's entry, not this one.
    let path = format!("/cache/{id}");
    let other_scope = h.admin_send(Method::DELETE, &path, &[token]).await;
    assert_eq!(other_scope.status, StatusCode::OK);
    assert_eq!(get().await.cache(), "hit");
    let both = h
        .admin_send(
            Method::DELETE,
            &path,
            &[token, legacy, ("x-exabase-base-id", legacy.1)],
        )
        .await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);
    let ok = h.admin_send(Method::DELETE, &path, &[token, legacy]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(get().await.cache(), "miss");
}

// A refused fetch saves no call: the requests that joined it share its refusal, and are
// neither "coalesced" nor "saved".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_shared_by_a_flight_save_nothing() {
    let h = Harness::with(|c| {
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.upstream.rate_limit = Some(exagate::config::Rate {
            count: 1,
            per: Duration::from_secs(3600),
        });
    })
    .await;
    let spend = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(spend)).await.status, StatusCode::OK);
    let cold = h.sim.add_completed(None);
    let path = job_path(cold);
    let replies = join_all((0..20).map(|_| h.get(&path))).await;
    assert!(replies
        .iter()
        .all(|r| r.status == StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(h.metric("exagate_coalesced_requests_total").await, 0.0);
    assert_eq!(
        h.metric("exagate_upstream_calls_saved_total{reason=\"coalesced\"}")
            .await,
        0.0
    );
    assert_eq!(
        h.metric("exagate_guard_refusals_total{cause=\"quota_exhausted\"}")
            .await,
        20.0
    );
}

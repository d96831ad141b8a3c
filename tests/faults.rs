//! Upstream faults: clear errors, nothing poisoned in the cache, hits keep flowing, and
//! the gateway recovers by itself.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{job_path, Harness, KEY};
use exagate::sim::Fault;
use http::StatusCode;

/// Asserts a fault gives `status`/`code`, is not stored, and that the next request after
/// the fault is cleared succeeds as a miss.
async fn fault_is_not_cached(h: &Harness, fault: Fault, status: StatusCode, code: &str) {
    let id = h.sim.add_completed(None);
    h.sim.set_fault(fault.clone());
    let reply = h.get(&job_path(id)).await;
    assert_eq!(reply.status, status, "{fault:?}");
    assert_eq!(reply.error_code(), code, "{fault:?}");
    assert!(!String::from_utf8_lossy(&reply.body).contains(KEY));
    h.sim.set_fault(Fault::None);
    let after = h.get(&job_path(id)).await;
    assert_eq!(after.status, StatusCode::OK, "{fault:?} recovered");
    assert_eq!(after.cache(), "miss", "{fault:?} was not stored");
}

#[tokio::test]
async fn broken_answers_are_502_and_never_stored() {
    let h = Harness::new().await;
    fault_is_not_cached(
        &h,
        Fault::InvalidJson,
        StatusCode::BAD_GATEWAY,
        "upstream_invalid_response",
    )
    .await;
    fault_is_not_cached(
        &h,
        Fault::Truncated,
        StatusCode::BAD_GATEWAY,
        "upstream_invalid_response",
    )
    .await;
    fault_is_not_cached(
        &h,
        Fault::Reset,
        StatusCode::BAD_GATEWAY,
        "upstream_unreachable",
    )
    .await;
}

#[tokio::test]
async fn silent_upstream_is_504_after_the_timeout() {
    let h = Harness::with(|c| c.upstream.timeout = Duration::from_millis(700)).await;
    let started = Instant::now();
    fault_is_not_cached(
        &h,
        Fault::Silent,
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(700));
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged_and_unstored() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    h.sim.set_fault(Fault::ServerError);
    let reply = h.get(&job_path(id)).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.cache(), "miss");
    h.sim.set_fault(Fault::TooManyRequests {
        retry_after: Some(1),
    });
    let reply = h.get(&job_path(id)).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        reply.headers["retry-after"], "1",
        "Retry-After reaches the app"
    );
    assert_eq!(reply.cache(), "miss");
    h.sim.set_fault(Fault::None);
    // The upstream's 429 closed the gate for its Retry-After (tests/quota.rs); once it
    // reopens, nothing of the 429 was kept.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit");
    assert_eq!(h.sim.calls_to(&job_path(id)), 3);
}

#[tokio::test]
async fn a_job_with_another_id_is_refused_not_stored() {
    let h = Harness::new().await;
    let asked = uuid::Uuid::parse_str("6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b").expect("uuid");
    let body = Bytes::from(
        r#"{"id":"123e4567-e89b-12d3-a456-426614174000","state":"completed","createdAt":"2026-11-29T10:00:00.000Z","links":null}"#,
    );
    h.sim.add_job_with_body(None, asked, body);
    for _ in 0..2 {
        let reply = h.get(&job_path(asked)).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(reply.error_code(), "upstream_invalid_response");
    }
    assert_eq!(h.sim.calls_to(&job_path(asked)), 2);
}

#[tokio::test]
async fn upstream_down_serves_cached_jobs_and_502s_the_rest_quickly() {
    let h = Harness::with(|c| c.upstream.timeout = Duration::from_secs(10)).await;
    let cached = h.sim.add_completed(None);
    let other = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(cached)).await.status, StatusCode::OK);
    h.sim.shutdown().await;

    let hit = h.get(&job_path(cached)).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.cache(), "hit");

    let started = Instant::now();
    let miss = h.get(&job_path(other)).await;
    assert_eq!(miss.status, StatusCode::BAD_GATEWAY);
    assert_eq!(miss.error_code(), "upstream_unreachable");
    // A refused connection is known at once: it must not wait for the 10 s deadline.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

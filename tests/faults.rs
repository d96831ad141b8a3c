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

#[tokio::test]
async fn a_get_is_retried_once_when_the_connection_breaks_before_an_answer() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    h.sim.set_fault_for(Fault::Reset, 1);
    let reply = h.get(&job_path(id)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(h.sim.calls(), 2, "one failed attempt, one retry");
}

#[tokio::test]
async fn a_post_is_never_retried() {
    let h = Harness::new().await;
    h.sim.set_fault_for(Fault::Reset, 1);
    let reply = h
        .send(
            http::Method::POST,
            "/v2/extract",
            &[("content-type", "application/json")],
            Bytes::from(r#"{"url":"https://example.com/a.pdf"}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code(), "upstream_unreachable");
    assert_eq!(h.sim.calls(), 1);
}

#[tokio::test]
async fn a_body_over_upstream_max_body_is_502_and_not_stored() {
    let h = Harness::with(|c| c.upstream.max_body = 4096).await;
    h.sim.set_padding(16 * 1024);
    let id = h.sim.add_completed(None);
    for _ in 0..2 {
        let reply = h.get(&job_path(id)).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert_eq!(reply.error_code(), "upstream_body_too_large");
    }
    assert_eq!(h.sim.calls(), 2);
}

#[tokio::test]
async fn the_gateway_recovers_by_itself_when_the_upstream_comes_back() {
    let h = Harness::new().await;
    let addr = h.sim.addr();
    h.sim.shutdown().await;
    let down = h.get(&job_path(uuid::Uuid::new_v4())).await;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY);
    // The same upstream address comes back.
    let sim = exagate::sim::Simulator::start(exagate::sim::SimOptions {
        api_key: KEY.to_string(),
        addr,
        ..Default::default()
    })
    .await
    .expect("restart on the same port");
    let id = sim.add_completed(None);
    let up = h.get(&job_path(id)).await;
    assert_eq!(up.status, StatusCode::OK);
    assert_eq!(up.cache(), "miss");
}

/// A gateway with an admin listener in front of `upstream`, and a `rate_limit` of two
/// calls.
async fn in_front_of(upstream: &common::RawUpstream) -> exagate::RunningGateway {
    let mut config = common::test_config();
    config.admin.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    config.upstream.rate_limit = Some(exagate::config::Rate {
        count: 10,
        per: Duration::from_secs(3600),
    });
    config.upstream.rate_limit_burst = Some(2);
    common::start_gateway_at(&upstream.url(), config).await
}

async fn get_from(gw: &exagate::RunningGateway, path: &str) -> common::Reply {
    let url = format!("{}{path}", gw.url());
    common::send(
        &common::client(),
        http::Method::GET,
        &url,
        &[],
        Bytes::new(),
    )
    .await
}

/// Part of an answer came back before the connection broke: the upstream saw the
/// request, so it is never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_answered_in_part_is_not_resent() {
    use tokio::io::AsyncWriteExt;
    let upstream = common::RawUpstream::start(|_, mut stream| async move {
        while common::read_head(&mut stream).await.is_some() {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: appl")
                .await;
            let _ = stream.shutdown().await;
        }
    })
    .await;
    let gw = in_front_of(&upstream).await;
    let reply = get_from(&gw, &job_path(uuid::Uuid::new_v4())).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code(), "upstream_unreachable");
    assert_eq!(upstream.connections(), 1, "the request was sent twice");
    assert_eq!(
        common::metric_of(
            &gw,
            r#"exagate_upstream_requests_total{route="job",status="error"}"#
        )
        .await,
        1.0
    );
}

/// Nothing came back at all (a connection the far end closed as the request went out):
/// sent once more, and both sends are counted and paid for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_no_answer_at_all_is_resent_once_counted_and_paid() {
    let upstream = common::RawUpstream::start(|n, mut stream| async move {
        let Some(head) = common::read_head(&mut stream).await else {
            return;
        };
        if n == 0 {
            // Read the request, say nothing, close.
            return;
        }
        common::answer_job(&mut stream, &head).await;
    })
    .await;
    let gw = in_front_of(&upstream).await;
    let reply = get_from(&gw, &job_path(uuid::Uuid::new_v4())).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(upstream.connections(), 2);
    let error = r#"exagate_upstream_requests_total{route="job",status="error"}"#;
    let ok = r#"exagate_upstream_requests_total{route="job",status="200"}"#;
    assert_eq!(common::metric_of(&gw, error).await, 1.0);
    assert_eq!(common::metric_of(&gw, ok).await, 1.0);
    // The bucket of two paid for both sends: the next cold job is refused.
    let next = get_from(&gw, &job_path(uuid::Uuid::new_v4())).await;
    assert_eq!(next.error_code(), "quota_exhausted");
    assert_eq!(upstream.connections(), 2);
}

/// A `createdAt` at the end of the time range: no panic, the job is kept for
/// `completed_ttl`.
#[tokio::test]
async fn a_created_at_at_the_end_of_time_is_served_and_kept() {
    let h = Harness::new().await;
    let id = uuid::Uuid::new_v4();
    let body = format!(
        r#"{{"id":"{id}","state":"completed","createdAt":"9999-12-31T23:59:59Z","links":{{}}}}"#
    );
    h.sim.add_job_with_body(None, id, Bytes::from(body));
    let first = h.get(&job_path(id)).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.cache(), "miss");
    let second = h.get(&job_path(id)).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.cache(), "hit");
    assert_eq!(h.sim.calls(), 1);
}

/// A resend the account's quota cannot pay for is answered as what it is, `429
/// quota_exhausted` with `Retry-After`, not as an unreachable upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_the_quota_cannot_pay_is_a_429() {
    let upstream = common::RawUpstream::start(|_, mut stream| async move {
        // Read the request, say nothing, close.
        let _ = common::read_head(&mut stream).await;
    })
    .await;
    let mut config = common::test_config();
    config.upstream.rate_limit = Some(exagate::config::Rate {
        count: 10,
        per: Duration::from_secs(3600),
    });
    config.upstream.rate_limit_burst = Some(1);
    let gw = common::start_gateway_at(&upstream.url(), config).await;
    let reply = get_from(&gw, &job_path(uuid::Uuid::new_v4())).await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        reply.body
    );
    assert_eq!(reply.error_code(), "quota_exhausted");
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(upstream.connections(), 1);
}

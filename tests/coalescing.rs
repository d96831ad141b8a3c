//! Concurrent misses for one key cost one upstream call, and every waiter is answered.

mod common;

use std::time::Duration;

use common::{job_path, Harness};
use exagate::sim::Fault;
use futures_util::future::join_all;
use http::StatusCode;
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_cold_requests_make_one_upstream_call() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    // Slow the upstream so every request arrives while the one fetch is under way.
    h.sim.set_fault(Fault::Latency(Duration::from_millis(300)));
    let path = job_path(id);
    let replies = join_all((0..100).map(|_| h.get(&path))).await;
    assert_eq!(h.sim.calls_to(&path), 1);
    let first = &replies[0].body;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(&reply.body, first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reaches_every_waiter_from_one_call() {
    // Long enough that all 50 requests join the one fetch even on a slow, shared machine.
    let h = Harness::with(|c| c.upstream.timeout = Duration::from_secs(2)).await;
    let id = h.sim.add_completed(None);
    h.sim.set_fault(Fault::Silent);
    let path = job_path(id);
    let replies = join_all((0..50).map(|_| h.get(&path))).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(reply.error_code(), "upstream_timeout");
    }
    assert_eq!(h.sim.calls_to(&path), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_does_not_cancel_the_fetch_for_others() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    h.sim.set_fault(Fault::Latency(Duration::from_millis(600)));
    let path = job_path(id);
    // The first requester gives up after 100 ms (its connection is dropped).
    let impatient = tokio::time::timeout(Duration::from_millis(100), h.get(&path)).await;
    assert!(
        impatient.is_err(),
        "the impatient client should have given up"
    );
    // A second requester joins the same fetch and gets the answer.
    let patient = h.get(&path).await;
    assert_eq!(patient.status, StatusCode::OK);
    assert_eq!(h.sim.calls_to(&path), 1, "the fetch was not restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_polls_on_a_pending_job_is_one_call_per_ttl() {
    // A TTL well above the time 200 requests take on a slow, shared machine: the storm
    // must fit in one TTL for "one call per TTL" to mean exactly one.
    let h = Harness::with(|c| c.cache.in_progress_ttl = Duration::from_secs(5)).await;
    let id = h
        .sim
        .add_job(None, Some("pending"), OffsetDateTime::now_utc());
    let path = job_path(id);
    let replies = join_all((0..200).map(|_| h.get(&path))).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    assert_eq!(h.sim.calls_to(&path), 1);
}

//! The quota guard: the token bucket, the shared cooldown after an upstream 429, and the
//! cap on upstream calls in flight. Refusals cost no upstream call; hits keep flowing.

mod common;

use std::time::{Duration, Instant};

use common::{completed_job_json, job_path, read_head, start_gateway_at, Harness, RawUpstream};
use exagate::config::Rate;
use exagate::sim::Fault;
use futures_util::future::join_all;
use http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bucket_bounds_upstream_calls_and_hits_keep_flowing() {
    let h = Harness::with(|c| {
        c.upstream.rate_limit = Some(Rate {
            count: 10,
            per: Duration::from_secs(3600),
        });
    })
    .await;
    // Burst defaults to a tenth of the count: 1 call, then one every 6 minutes.
    let warm = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(warm)).await.status, StatusCode::OK);

    let ids = h.sim.seed_completed(None, 1000);
    let replies = join_all(ids.iter().map(|id| h.get_owned(job_path(*id)))).await;
    let refused: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(
        refused.len(),
        1000,
        "the bucket was spent by the first call"
    );
    for reply in &refused {
        assert_eq!(reply.error_code(), "quota_exhausted");
        let secs: u64 = reply.headers["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("whole seconds");
        // The next token is 6 minutes away (less the time the test has run).
        assert!((300..=360).contains(&secs), "retry-after {secs}");
    }
    // Exactly the bucket's worth reached the upstream.
    assert_eq!(h.sim.calls(), 1);
    // A cached job is still served.
    let hit = h.get(&job_path(warm)).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.cache(), "hit");
}

#[tokio::test]
async fn an_upstream_429_closes_the_gate_for_its_retry_after() {
    let h = Harness::new().await;
    let cached = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(cached)).await.status, StatusCode::OK);
    let other = h.sim.add_completed(None);
    h.sim.set_fault_for(
        Fault::TooManyRequests {
            retry_after: Some(2),
        },
        1,
    );
    let first = h.get(&job_path(other)).await;
    assert_eq!(first.status, StatusCode::TOO_MANY_REQUESTS);
    let closed_at = Instant::now();
    assert_eq!(h.sim.calls(), 2);

    // While the gate is closed: misses are refused at once, hits are served.
    let mut refused = 0;
    while closed_at.elapsed() < Duration::from_millis(1400) {
        let miss = h.get(&job_path(h.sim.add_completed(None))).await;
        assert_eq!(miss.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(miss.error_code(), "upstream_rate_limited");
        assert!(miss.headers.contains_key("retry-after"));
        refused += 1;
        let hit = h.get(&job_path(cached)).await;
        assert_eq!(hit.status, StatusCode::OK);
        assert_eq!(hit.cache(), "hit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused >= 5);
    assert_eq!(
        h.sim.calls(),
        2,
        "no upstream call while the gate was closed"
    );

    // After the 2 s, calls go through again.
    tokio::time::sleep(Duration::from_millis(2200).saturating_sub(closed_at.elapsed())).await;
    let after = h.get(&job_path(other)).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(h.sim.calls(), 3);
}

#[tokio::test]
async fn without_retry_after_the_backoff_starts_at_one_second() {
    let h = Harness::new().await;
    h.sim
        .set_fault_for(Fault::TooManyRequests { retry_after: None }, 1);
    let id = h.sim.add_completed(None);
    assert_eq!(
        h.get(&job_path(id)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let refused = h.get(&job_path(id)).await;
    assert_eq!(refused.error_code(), "upstream_rate_limited");
    assert_eq!(refused.headers["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(h.get(&job_path(id)).await.status, StatusCode::OK);
    assert_eq!(h.sim.calls(), 2);
}

#[tokio::test]
async fn a_huge_retry_after_is_capped_by_max_cooldown() {
    let h = Harness::with(|c| c.upstream.max_cooldown = Duration::from_secs(1)).await;
    h.sim.set_fault_for(
        Fault::TooManyRequests {
            retry_after: Some(3600),
        },
        1,
    );
    let id = h.sim.add_completed(None);
    assert_eq!(
        h.get(&job_path(id)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(h.get(&job_path(id)).await.headers["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(h.get(&job_path(id)).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_max_concurrent_wait_then_get_503() {
    let h = Harness::with(|c| {
        c.upstream.max_concurrent = 2;
        c.upstream.timeout = Duration::from_millis(600);
    })
    .await;
    h.sim.set_fault(Fault::Silent);
    let ids = h.sim.seed_completed(None, 6);
    let replies = join_all(ids.iter().map(|id| h.get_owned(job_path(*id)))).await;
    let codes: Vec<String> = replies.iter().map(|r| r.error_code()).collect();
    let timeouts = codes.iter().filter(|c| *c == "upstream_timeout").count();
    let busy = codes.iter().filter(|c| *c == "upstream_busy").count();
    assert_eq!(timeouts, 2, "{codes:?}");
    assert_eq!(busy, 4, "{codes:?}");
    for reply in replies.iter().filter(|r| r.error_code() == "upstream_busy") {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(h.sim.calls(), 2, "only two calls were ever in flight");
}

/// A `503 upstream_busy` refusal sends nothing and so spends nothing: the token it took
/// goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_refusal_gives_its_token_back() {
    let h = Harness::with(|c| {
        // A 2 s wait for the slot, a 3 s call: margins a loaded machine cannot eat.
        c.upstream.timeout = Duration::from_secs(4);
        c.upstream.max_concurrent = 1;
        c.upstream.rate_limit = Some(Rate {
            count: 10,
            per: Duration::from_secs(3600),
        });
        c.upstream.rate_limit_burst = Some(2);
    })
    .await;
    h.sim
        .set_fault_for(Fault::Latency(Duration::from_millis(3000)), 1);
    let slow = h.get_owned(job_path(h.sim.add_completed(None)));
    let busy = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Waits half of upstream.timeout (2 s) for the one slot, then gives up.
        h.get(&job_path(h.sim.add_completed(None))).await
    };
    let (slow, busy) = tokio::join!(slow, busy);
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(busy.error_code(), "upstream_busy");
    // Two tokens, one call so far: one more call goes through.
    let next = h.get(&job_path(h.sim.add_completed(None))).await;
    assert_eq!(next.status, StatusCode::OK, "{:?}", next.body);
    let spent = h.get(&job_path(h.sim.add_completed(None))).await;
    assert_eq!(spent.error_code(), "quota_exhausted");
    assert_eq!(h.sim.calls(), 2);
}

/// A call that waited for a slot checks the 429 gate again when it gets one: a 429 that
/// arrived while it queued stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_respects_a_cooldown_that_began_while_it_waited() {
    use tokio::io::AsyncWriteExt;
    let slow_ok = uuid::Uuid::new_v4();
    let slow_429 = uuid::Uuid::new_v4();
    let queued = uuid::Uuid::new_v4();
    let upstream = RawUpstream::start(move |_, mut stream| async move {
        let Some(head) = read_head(&mut stream).await else {
            return;
        };
        let origin = "http://upstream.invalid";
        // The 429 comes back first: the slot it frees goes to the queued call, which must
        // see the gate the 429 just closed.
        let response = if head.contains(&slow_ok.to_string()) {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let body = completed_job_json(slow_ok, origin);
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        } else if head.contains(&slow_429.to_string()) {
            tokio::time::sleep(Duration::from_millis(600)).await;
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 5\r\ncontent-length: 2\r\n\r\n{}".to_string()
        } else {
            let body = completed_job_json(queued, origin);
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        };
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
    let mut config = common::test_config();
    config.upstream.max_concurrent = 2;
    config.upstream.timeout = Duration::from_secs(4);
    let gw = start_gateway_at(&upstream.url(), config).await;
    let c = common::client();
    let get = |id: uuid::Uuid| {
        let url = format!("{}{}", gw.url(), job_path(id));
        let c = c.clone();
        async move { common::send(&c, http::Method::GET, &url, &[], bytes::Bytes::new()).await }
    };
    let third = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        get(queued).await
    };
    let (ok, limited, third) = tokio::join!(get(slow_ok), get(slow_429), third);
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.error_code(), "upstream_rate_limited");
    assert_eq!(
        upstream.connections(),
        2,
        "the queued call reached the upstream during the cooldown"
    );
}

/// With no `[[clients]]`, `upstream.per_address_rate_limit` gives each client address a
/// share of its own: one address scanning unknown ids cannot spend the account's quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_spends_only_its_own_share() {
    let h = Harness::with(|c| {
        // A burst of 2.
        c.upstream.per_address_rate_limit = Some(Rate {
            count: 20,
            per: Duration::from_secs(3600),
        });
    })
    .await;
    let kept = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(kept)).await.status, StatusCode::OK);
    assert_eq!(
        h.get(&job_path(uuid::Uuid::new_v4())).await.status,
        StatusCode::NOT_FOUND
    );
    let scan = h.get(&job_path(uuid::Uuid::new_v4())).await;
    assert_eq!(scan.error_code(), "quota_exhausted");
    assert!(
        String::from_utf8_lossy(&scan.body).contains("per_address_rate_limit"),
        "{:?}",
        scan.body
    );
    assert_eq!(h.sim.calls(), 2);
    // What is cached costs nothing and is still served.
    assert_eq!(h.get(&job_path(kept)).await.cache(), "hit");
}

//! What answers tell the caches after the gateway: `Cache-Control` says how long a stored
//! answer stays true (never beyond its entry's own expiry) and that it is `private`;
//! everything the gateway does not store says `no-store`.

mod common;

use std::time::Duration;

use common::{job_path, start_gateway_at, test_config, Harness, RawUpstream, Reply};
use exagate::config::Rate;
use http::{Method, StatusCode};
use time::OffsetDateTime;

/// The `max-age` of a `private, max-age=N` answer; panics on anything else.
fn max_age(reply: &Reply) -> u64 {
    let value = reply.headers["cache-control"].to_str().expect("ascii");
    let secs = value
        .strip_prefix("private, max-age=")
        .unwrap_or_else(|| panic!("not private with a max-age: {value:?}"));
    secs.parse().expect("whole seconds")
}

fn age(reply: &Reply) -> u64 {
    reply.headers["age"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds")
}

fn no_store(reply: &Reply) -> bool {
    reply
        .headers
        .get("cache-control")
        .is_some_and(|v| v == "no-store")
}

#[tokio::test]
async fn a_completed_job_is_private_for_as_long_as_its_files_live() {
    let h = Harness::new().await;
    // Its files go 24 h after createdAt: the entry, and its max-age, end then.
    let created = OffsetDateTime::now_utc() - time::Duration::hours(23);
    let id = h.sim.add_job(None, Some("completed"), created);
    let miss = h.get(&job_path(id)).await;
    assert_eq!(miss.cache(), "miss");
    let left = (created + time::Duration::hours(24) - OffsetDateTime::now_utc()).whole_seconds();
    let first = max_age(&miss);
    assert!(
        first <= u64::try_from(left).expect("positive")
            && first + 5 >= u64::try_from(left).expect("positive"),
        "max-age {first} for a job with {left} s left"
    );
    assert!(miss.headers.get("age").is_none(), "a fresh miss has no Age");
    let vary = miss.headers["vary"].to_str().expect("ascii");
    assert!(vary.contains("x-exabase-base-id") && vary.contains("x-exabase-workspace-id"));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hit = h.get(&job_path(id)).await;
    assert_eq!(hit.cache(), "hit");
    assert_eq!(
        max_age(&hit),
        first,
        "max-age is the entry's whole lifetime"
    );
    assert!(age(&hit) >= 1, "Age counts from the fetch");
    let left = (created + time::Duration::hours(24) - OffsetDateTime::now_utc()).whole_seconds();
    assert!(
        max_age(&hit) - age(&hit) <= u64::try_from(left).expect("positive"),
        "what is left downstream is never more than the entry has"
    );
}

#[tokio::test]
async fn max_age_minus_age_never_outlives_a_short_entry() {
    let h = Harness::with(|c| c.cache.failed_ttl = Duration::from_secs(3)).await;
    let id = h
        .sim
        .add_job(None, Some("failed"), OffsetDateTime::now_utc());
    let miss = h.get(&job_path(id)).await;
    assert_eq!(max_age(&miss), 3, "the whole configured lifetime");
    let started = std::time::Instant::now();
    loop {
        let reply = h.get(&job_path(id)).await;
        let elapsed = started.elapsed().as_secs_f64();
        if reply.cache() != "hit" {
            // Expired: refetched, and a new lifetime begins.
            // (From the miss's answer, a moment after its fetch: the margin covers a loaded machine.)
            assert!(elapsed >= 2.5, "expired early, after {elapsed:.2} s");
            assert_eq!(max_age(&reply), 3);
            break;
        }
        let left = max_age(&reply) - age(&reply);
        assert!(
            left as f64 <= 3.0 - elapsed + 0.05,
            "{left} s left said after {elapsed:.2} s of a 3 s entry"
        );
        assert!(elapsed < 4.0, "the entry outlived its ttl");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test]
async fn a_404_is_kept_briefly_and_says_so() {
    let h = Harness::new().await;
    let missing = job_path(uuid::Uuid::new_v4());
    let reply = h.get(&missing).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(max_age(&reply), 2, "not_found_ttl is 2 s");
}

#[tokio::test]
async fn answers_never_stored_say_no_store() {
    let h = Harness::with(|c| c.cache.in_progress_ttl = Duration::ZERO).await;
    // An in-progress job whose state is not kept.
    let pending = h
        .sim
        .add_job(None, Some("processing"), OffsetDateTime::now_utc());
    let reply = h.get(&job_path(pending)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(no_store(&reply), "{:?}", reply.headers);
    assert!(reply.headers.get("vary").is_none());
    // The gateway's own errors.
    let bad = h.get("/v2/extract/not-a-job").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(no_store(&bad));
    let unrouted = h.get("/v2/nothing-here").await;
    assert!(no_store(&unrouted));
    // Pass-through: a download streamed, and a list.
    let done = h.sim.add_completed(None);
    let download = h.get(&format!("{}/download", job_path(done))).await;
    assert_eq!(download.status, StatusCode::OK);
    assert!(no_store(&download), "{:?}", download.headers);
    let list = h.get("/v2/extract").await;
    assert!(no_store(&list), "{:?}", list.headers);
    // HEAD of a stored entry says what its GET says.
    let stored = h.get(&job_path(done)).await;
    let head = h
        .send(Method::HEAD, &job_path(done), &[], Default::default())
        .await;
    assert_eq!(head.cache(), "hit");
    assert_eq!(max_age(&head), max_age(&stored));
}

#[tokio::test]
async fn a_refusal_says_no_store() {
    let h = Harness::with(|c| {
        c.upstream.rate_limit = Some(Rate {
            count: 1,
            per: Duration::from_secs(3600),
        });
    })
    .await;
    let one = h.sim.add_completed(None);
    let two = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(one)).await.status, StatusCode::OK);
    let refused = h.get(&job_path(two)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.error_code(), "quota_exhausted");
    assert!(no_store(&refused));
}

#[tokio::test]
async fn the_upstreams_own_cache_control_is_replaced_on_pass_through() {
    use tokio::io::AsyncWriteExt;
    let upstream = RawUpstream::start(|_, mut stream| async move {
        if common::read_head(&mut stream).await.is_some() {
            let body = "file";
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncache-control: public, max-age=31536000, immutable\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    })
    .await;
    let gw = start_gateway_at(&upstream.url(), test_config()).await;
    let path = format!("{}/download", job_path(uuid::Uuid::new_v4()));
    let reply = common::send(
        &common::client(),
        Method::GET,
        &format!("{}{path}", gw.url()),
        &[],
        Default::default(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let values: Vec<_> = reply.headers.get_all("cache-control").iter().collect();
    assert_eq!(
        values,
        ["no-store"],
        "made with the team's key: no cache keeps it"
    );
}

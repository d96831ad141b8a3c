//! The cached lookup: hits, misses, and each state's expiry, through real HTTP.

mod common;

use std::time::Duration;

use common::{job_path, Harness};
use http::{Method, StatusCode};
use time::OffsetDateTime;

#[tokio::test]
async fn completed_job_is_a_miss_then_hits_with_one_upstream_call() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let first = h.get(&job_path(id)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.cache(), "miss");
    for _ in 0..5 {
        let again = h.get(&job_path(id)).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.cache(), "hit");
        assert_eq!(again.body, first.body, "a hit serves the same bytes");
        assert!(again.headers.contains_key("age"));
    }
    assert_eq!(h.sim.calls_to(&job_path(id)), 1);
    assert_eq!(first.json()["state"], "completed");
    assert_eq!(
        first.headers["content-length"].to_str().ok(),
        Some(first.body.len().to_string().as_str())
    );
}

#[tokio::test]
async fn upper_case_id_shares_the_entry_and_goes_upstream_lower_case() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
    let upper = format!("/v2/extract/{}", id.to_string().to_uppercase());
    let reply = h.get(&upper).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.cache(), "hit");
    let paths: Vec<String> = h
        .sim
        .requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(paths, vec![job_path(id)]);
}

#[tokio::test]
async fn head_answers_from_the_same_entry_without_a_body() {
    let h = Harness::new().await;
    let id = h.sim.add_completed(None);
    let head = h
        .send(Method::HEAD, &job_path(id), &[], Default::default())
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.cache(), "miss");
    assert!(head.body.is_empty());
    let get = h.get(&job_path(id)).await;
    assert_eq!(get.cache(), "hit");
    assert_eq!(
        head.headers["content-length"].to_str().ok(),
        Some(get.body.len().to_string().as_str())
    );
    assert_eq!(h.sim.calls_to(&job_path(id)), 1);
}

#[tokio::test]
async fn completed_job_expires_when_its_retention_ends() {
    let h = Harness::new().await;
    // Created 24 h minus 1.5 s ago: upstream turns it `cleaned` in 1.5 s, so the gateway
    // may keep the completed body only that long, not `completed_ttl`.
    let created =
        OffsetDateTime::now_utc() - time::Duration::hours(24) + time::Duration::milliseconds(1500);
    let id = h.sim.add_job(None, Some("completed"), created);
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit");
    tokio::time::sleep(Duration::from_millis(1800)).await;
    // Past retention: a miss, and (still `completed` upstream, but past its end of life)
    // not stored again.
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
    assert_eq!(h.sim.calls_to(&job_path(id)), 3);
}

#[tokio::test]
async fn completed_job_past_retention_is_never_stored() {
    let h = Harness::new().await;
    let created = OffsetDateTime::now_utc() - time::Duration::hours(25);
    let id = h.sim.add_job(None, Some("completed"), created);
    for _ in 0..3 {
        let reply = h.get(&job_path(id)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.cache(), "miss");
    }
    assert_eq!(h.sim.calls_to(&job_path(id)), 3);
}

#[tokio::test]
async fn completed_ttl_caps_a_young_job() {
    let h = Harness::with(|c| c.cache.completed_ttl = Duration::from_millis(400)).await;
    let id = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
    // The first hit comes from moka, the second from the front table: both expire alike.
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit");
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
}

/// Asserts that a job in `state` is kept for about `ttl`: a hit just after the miss, a
/// miss once `ttl` has passed.
async fn kept_for(h: &Harness, state: Option<&str>, ttl: Duration) {
    let id = h.sim.add_job(None, state, OffsetDateTime::now_utc());
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss", "{state:?}");
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit", "{state:?}");
    // Again: from the front table this time, which must expire with the entry.
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit", "{state:?}");
    tokio::time::sleep(ttl + Duration::from_millis(250)).await;
    assert_eq!(
        h.get(&job_path(id)).await.cache(),
        "miss",
        "{state:?} expired"
    );
    assert_eq!(h.sim.calls_to(&job_path(id)), 2, "{state:?}");
}

#[tokio::test]
async fn each_state_is_kept_for_its_own_ttl() {
    let h = Harness::with(|c| {
        c.cache.failed_ttl = Duration::from_millis(500);
        c.cache.in_progress_ttl = Duration::from_millis(300);
        c.cache.cleaned_ttl = Duration::from_millis(700);
    })
    .await;
    kept_for(&h, Some("failed"), Duration::from_millis(500)).await;
    kept_for(&h, Some("pending"), Duration::from_millis(300)).await;
    kept_for(&h, Some("processing"), Duration::from_millis(300)).await;
    kept_for(&h, None, Duration::from_millis(300)).await;
    kept_for(&h, Some("archived-someday"), Duration::from_millis(300)).await;
    kept_for(&h, Some("cleaned"), Duration::from_millis(700)).await;
}

#[tokio::test]
async fn cleaned_default_ttl_outlives_the_test() {
    let h = Harness::new().await;
    let id = h
        .sim
        .add_job(None, Some("cleaned"), OffsetDateTime::now_utc());
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit");
}

#[tokio::test]
async fn in_progress_ttl_zero_turns_storing_off() {
    let h = Harness::with(|c| c.cache.in_progress_ttl = Duration::ZERO).await;
    let id = h
        .sim
        .add_job(None, Some("processing"), OffsetDateTime::now_utc());
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
    assert_eq!(h.sim.calls_to(&job_path(id)), 2);
}

#[tokio::test]
async fn a_polled_job_is_seen_moving_to_completed() {
    let h = Harness::with(|c| c.cache.in_progress_ttl = Duration::from_millis(100)).await;
    let id = h.sim.add_progressing(None);
    let mut states = Vec::new();
    for _ in 0..40 {
        let reply = h.get(&job_path(id)).await;
        let state = reply.json()["state"].as_str().unwrap_or("null").to_string();
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        if state == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(states, ["pending", "processing", "completed"]);
    // Once completed it is a hit.
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit");
}

#[tokio::test]
async fn not_found_is_passed_through_and_kept_briefly() {
    let h = Harness::with(|c| c.cache.not_found_ttl = Duration::from_millis(400)).await;
    let id = uuid::Uuid::parse_str("0b7e4d2c-1f3a-4b5c-8d6e-7f8091a2b3c4").expect("uuid");
    let first = h.get(&job_path(id)).await;
    assert_eq!(first.status, StatusCode::NOT_FOUND);
    assert_eq!(first.cache(), "miss");
    let upstream_body = first.body.clone();
    let second = h.get(&job_path(id)).await;
    assert_eq!(second.status, StatusCode::NOT_FOUND);
    assert_eq!(second.cache(), "hit");
    assert_eq!(
        second.body, upstream_body,
        "the upstream's 404 body, unchanged"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
    assert_eq!(h.sim.calls_to(&job_path(id)), 2);
}

#[tokio::test]
async fn cache_weighs_entries_in_bytes() {
    let h = Harness::new().await;
    for _ in 0..5 {
        let id = h.sim.add_completed(None);
        assert_eq!(h.get(&job_path(id)).await.status, StatusCode::OK);
    }
    let cache = &h.gateway.gateway.cache;
    cache.run_pending_tasks().await;
    assert_eq!(cache.entry_count(), 5);
    // Weighed by bytes: at least the bodies, plus bounded overhead.
    let size = cache.weighted_size();
    assert!(size > 5 * 1000, "weighted size {size}");
    assert!(size < 5 * 64 * 1024, "weighted size {size}");
}

#[tokio::test]
async fn a_small_cache_evicts_instead_of_growing() {
    let h = Harness::with(|c| c.cache.max_size = 64 * 1024).await;
    h.sim.set_padding(8 * 1024);
    for _ in 0..40 {
        let id = h.sim.add_completed(None);
        assert_eq!(h.get(&job_path(id)).await.status, StatusCode::OK);
    }
    let cache = &h.gateway.gateway.cache;
    cache.run_pending_tasks().await;
    assert!(
        cache.weighted_size() <= 64 * 1024,
        "weighted size {} over the bound",
        cache.weighted_size()
    );
    assert!(cache.entry_count() < 40);
}

/// A scan of made-up ids (each a 404, kept briefly) fills a table of its own: the team's
/// hot jobs stay cached however long the scan goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_unknown_ids_never_evicts_the_hot_jobs() {
    let h = Harness::with(|c| {
        c.cache.max_size = 1024 * 1024;
        c.cache.not_found_ttl = Duration::from_secs(60);
    })
    .await;
    let hot = h.sim.seed_completed(None, 50);
    for id in &hot {
        assert_eq!(h.get(&job_path(*id)).await.cache(), "miss");
    }
    // About 3,000 404s of ~700 bytes each: twice the whole cache.
    let ids: Vec<_> = (0..3000).map(|_| job_path(uuid::Uuid::new_v4())).collect();
    for chunk in ids.chunks(100) {
        let replies =
            futures_util::future::join_all(chunk.iter().map(|p| h.get_owned(p.clone()))).await;
        assert!(replies.iter().all(|r| r.status == StatusCode::NOT_FOUND));
    }
    let calls = h.sim.calls();
    let mut misses = 0;
    for id in &hot {
        if h.get(&job_path(*id)).await.cache() != "hit" {
            misses += 1;
        }
    }
    assert_eq!(misses, 0, "the scan evicted {misses} of 50 hot jobs");
    assert_eq!(h.sim.calls(), calls);
}

/// The same for a scan of one job's chunk windows (a job has any number of them): they
/// have a share of their own, and the hot jobs stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_chunk_windows_never_evicts_the_hot_jobs() {
    let h = Harness::with(|c| c.cache.max_size = 1024 * 1024).await;
    let hot = h.sim.seed_completed(None, 50);
    for id in &hot {
        assert_eq!(h.get(&job_path(*id)).await.cache(), "miss");
    }
    let scanned = hot[0];
    // ~2,000 windows of 1-20 chunks, several KiB each: far past the whole cache.
    let windows: Vec<_> = (1..=2000)
        .map(|n| {
            format!(
                "/v2/extract/{scanned}/chunks?start={}&end={}",
                n % 80 + 1,
                n % 80 + 1 + n / 80
            )
        })
        .collect();
    for chunk in windows.chunks(100) {
        let replies =
            futures_util::future::join_all(chunk.iter().map(|p| h.get_owned(p.clone()))).await;
        assert!(
            replies.iter().all(|r| r.status == StatusCode::OK),
            "a window failed"
        );
    }
    let mut misses = 0;
    for id in &hot {
        if h.get(&job_path(*id)).await.cache() != "hit" {
            misses += 1;
        }
    }
    assert_eq!(misses, 0, "the window scan evicted {misses} of 50 hot jobs");
}

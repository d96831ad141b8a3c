//! An invalidation wins over every fill that began before it: a job action, a purge or a
//! reload that empties the cache, arriving while a slow fetch of the same job is under
//! way, leaves nothing of that fetch in the cache (its answer still reaches the requests
//! that waited on it).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{job_path, Harness};
use exagate::sim::Fault;
use http::{Method, StatusCode};
use time::OffsetDateTime;

/// Starts a GET of `path` whose upstream answer takes 2 s, and returns it once the
/// gateway is 0.7 s into the fill.
async fn slow_fill(h: &Harness, path: String) -> tokio::task::JoinHandle<common::Reply> {
    h.sim
        .set_fault_for(Fault::SlowAnswer(Duration::from_millis(2000)), 1);
    let client = h.client.clone();
    let url = format!("{}{path}", h.url());
    let fill =
        tokio::spawn(
            async move { common::send(&client, Method::GET, &url, &[], Bytes::new()).await },
        );
    tokio::time::sleep(Duration::from_millis(700)).await;
    fill
}

async fn reprocess(h: &Harness, id: uuid::Uuid) -> common::Reply {
    let path = format!("/v2/extract/{id}/reprocess");
    h.send(Method::POST, &path, &[], Bytes::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reprocess_during_a_fill_is_not_undone_by_it() {
    let h = Harness::with(|c| c.upstream.timeout = Duration::from_secs(5)).await;
    let id = h
        .sim
        .add_job(None, Some("failed"), OffsetDateTime::now_utc());
    let fill = slow_fill(&h, job_path(id)).await;

    let reprocess = reprocess(&h, id).await;
    assert!(
        reprocess.status.is_success(),
        "reprocess: {}",
        reprocess.status
    );
    // A poll sent after the reprocess was answered, while the old fetch is still on its
    // way, does not join that fetch: it sees the reprocess.
    let during = h.get(&job_path(id)).await;
    assert_ne!(
        during.json()["state"],
        "failed",
        "a poll after the reprocess got the old job"
    );

    // The fill answers its request with what it fetched (the job as it was)...
    let filled = fill.await.expect("fill task");
    assert_eq!(filled.status, StatusCode::OK);
    assert_eq!(filled.json()["state"], "failed");
    // Not stored, so it tells the caches after the gateway not to keep it either.
    assert_eq!(filled.headers["cache-control"], "no-store");
    // ...and stores nothing: later polls never see the failed job again.
    let after = h.get(&job_path(id)).await;
    assert_ne!(
        after.json()["state"],
        "failed",
        "the failed job came back from the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_fill_is_not_undone_by_it() {
    std::env::set_var("EXAGATE_TEST_ADMIN_TOKEN_RACE", "race-purge-4f1");
    let h = Harness::with(|c| {
        c.upstream.timeout = Duration::from_secs(5);
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin.token_env = "EXAGATE_TEST_ADMIN_TOKEN_RACE".into();
    })
    .await;
    for purge in ["/cache", "/cache/{id}"] {
        let id = h.sim.add_completed(None);
        let fill = slow_fill(&h, job_path(id)).await;
        let path = purge.replace("{id}", &id.to_string());
        let purged = h
            .admin_send(
                Method::DELETE,
                &path,
                &[("authorization", "Bearer race-purge-4f1")],
            )
            .await;
        assert_eq!(purged.status, StatusCode::OK, "{path}");
        // A request after the purge starts a fetch of its own (the upstream's second
        // call for this job), rather than wait for the one that began before.
        let before = h.sim.calls_to(&job_path(id));
        assert_eq!(h.get(&job_path(id)).await.status, StatusCode::OK);
        assert_eq!(h.sim.calls_to(&job_path(id)), before + 1, "{path}");
        assert!(
            !fill.is_finished(),
            "the old fetch ended first: the check proved nothing"
        );
        let filled = fill.await.expect("fill task");
        assert_eq!(filled.status, StatusCode::OK);
        assert_eq!(
            filled.headers["cache-control"], "no-store",
            "{path}: a purged answer must not live on downstream"
        );
    }
    // Neither overtaken fill stored its answer (what the cache holds now is from the
    // fetches that began after each purge).
    assert_eq!(
        h.metric("exagate_cache_fills_discarded_total").await,
        2.0,
        "both overtaken fills are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_that_began_after_an_invalidation_are_stored() {
    let h = Harness::new().await;
    let id = h
        .sim
        .add_job(None, Some("failed"), OffsetDateTime::now_utc());
    let other = h.sim.add_completed(None);
    assert_eq!(h.get(&job_path(other)).await.cache(), "miss");
    let reprocess = reprocess(&h, id).await;
    assert!(reprocess.status.is_success());
    // The epoch moved on, but a fill that starts now is stored as usual...
    h.sim.set_state(id, Some("completed"));
    assert_eq!(h.get(&job_path(id)).await.cache(), "miss");
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit");
    // ...and what was stored before the action, of another job, is untouched.
    assert_eq!(h.get(&job_path(other)).await.cache(), "hit");
}

/// An invalidation turns away fetches of its own job only: a purge or an action on one
/// job costs another job neither its coalescing nor its stored answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_leaves_other_jobs_fetches_alone() {
    std::env::set_var("EXAGATE_TEST_ADMIN_TOKEN_OTHER", "other-purge-9d2");
    let h = Harness::with(|c| {
        c.upstream.timeout = Duration::from_secs(5);
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin.token_env = "EXAGATE_TEST_ADMIN_TOKEN_OTHER".into();
    })
    .await;
    let other = h
        .sim
        .add_job(None, Some("failed"), OffsetDateTime::now_utc());
    for round in 0..2 {
        let slow = h.sim.add_completed(None);
        let fill = slow_fill(&h, job_path(slow)).await;
        if round == 0 {
            let purged = h
                .admin_send(
                    Method::DELETE,
                    &format!("/cache/{other}"),
                    &[("authorization", "Bearer other-purge-9d2")],
                )
                .await;
            assert_eq!(purged.status, StatusCode::OK);
        } else {
            assert!(reprocess(&h, other).await.status.is_success());
        }
        // Joins the fetch under way (no second upstream call) ...
        let joined = h.get(&job_path(slow)).await;
        assert_eq!(joined.status, StatusCode::OK);
        assert_eq!(fill.await.expect("fill").status, StatusCode::OK);
        assert_eq!(h.sim.calls_to(&job_path(slow)), 1, "round {round}");
        // ... which stored its answer.
        assert_eq!(h.get(&job_path(slow)).await.cache(), "hit", "round {round}");
    }
    assert_eq!(h.metric("exagate_cache_fills_discarded_total").await, 0.0);
}

/// A job action whose client hangs up before the answer still drops the job's entries
/// once the upstream has acted on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_action_whose_client_hung_up_still_invalidates() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::new().await;
    let id = h
        .sim
        .add_job(None, Some("failed"), OffsetDateTime::now_utc());
    assert_eq!(h.get(&job_path(id)).await.json()["state"], "failed");
    assert_eq!(h.get(&job_path(id)).await.cache(), "hit");
    h.sim
        .set_fault_for(Fault::Latency(Duration::from_millis(800)), 1);
    let mut stream = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .expect("connect");
    let request = format!(
        "POST /v2/extract/{id}/reprocess HTTP/1.1\r\nhost: gw\r\ncontent-length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
    // The upstream acts on it at 0.8 s; the gateway drops the job then.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = h.get(&job_path(id)).await;
    assert_ne!(
        after.json()["state"],
        "failed",
        "the reprocessed job is still served as failed ({})",
        after.cache()
    );
}

//! A cached job is never served after the earliest expiry of a signed link in it, less
//! `cache.link_margin` (#13): through the simulator, which signs its CDN links S3-style
//! with a lifetime of the test's choosing.

mod common;

use std::time::Duration;

use common::{get_from, job_path, start_gateway, test_config, KEY};
use exagate::sim::{SimOptions, Simulator};
use http::StatusCode;

async fn sim_signing_for(lifetime: Duration) -> Simulator {
    Simulator::start(SimOptions {
        api_key: KEY.to_string(),
        link_lifetime: Some(lifetime),
        ..SimOptions::default()
    })
    .await
    .expect("simulator")
}

fn max_age(reply: &common::Reply) -> u64 {
    let value = reply.headers["cache-control"].to_str().expect("ascii");
    value
        .split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no max-age in {value}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_kept_only_until_its_links_die_less_the_margin() {
    let sim = sim_signing_for(Duration::from_secs(5)).await;
    let mut config = test_config();
    config.cache.link_margin = Duration::from_secs(2);
    let gw = start_gateway(&sim, config).await;
    let id = sim.add_completed(None);
    let first = get_from(&gw, &job_path(id)).await;
    assert_eq!((first.status, first.cache()), (StatusCode::OK, "miss"));
    // The links say they die 5 s after signing: kept 3 s, not the completed job's day.
    assert!(max_age(&first) <= 3, "{:?}", first.headers["cache-control"]);
    assert_eq!(get_from(&gw, &job_path(id)).await.cache(), "hit");
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let later = get_from(&gw, &job_path(id)).await;
    assert_eq!(
        later.cache(),
        "miss",
        "fetched again, with fresh signatures"
    );
    assert_eq!(sim.calls_to(&job_path(id)), 2);
    // Fresh signatures: a later expiry in the body.
    assert_ne!(first.body, later.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_links_die_within_the_margin_is_not_stored() {
    let sim = sim_signing_for(Duration::from_secs(1)).await;
    let mut config = test_config();
    config.cache.link_margin = Duration::from_secs(2);
    config.admin.listen = Some("127.0.0.1:0".parse().expect("addr"));
    let gw = start_gateway(&sim, config).await;
    let id = sim.add_completed(None);
    for _ in 0..2 {
        let reply = get_from(&gw, &job_path(id)).await;
        assert_eq!((reply.status, reply.cache()), (StatusCode::OK, "miss"));
        assert_eq!(reply.headers["cache-control"], "no-store");
    }
    assert_eq!(sim.calls_to(&job_path(id)), 2);
    assert_eq!(
        common::metric_of(
            &gw,
            "exagate_answers_not_stored_total{cause=\"links_expiring\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_whose_expiry_cannot_be_read_change_nothing() {
    // The default simulator's links carry no date: the job is kept as its state says.
    let sim = common::start_sim(false).await;
    let gw = start_gateway(&sim, test_config()).await;
    let id = sim.add_completed(None);
    let reply = get_from(&gw, &job_path(id)).await;
    assert!(
        max_age(&reply) > 3000,
        "{:?}",
        reply.headers["cache-control"]
    );
}

//! `[state] dir`: a lone gateway (no Redis) keeps its cache across a restart.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{get_from as get, job_path, start_sim, test_config, KEY};
use exagate::sim::Simulator;
use exagate::RunningGateway;
use http::StatusCode;

/// A gateway in front of `sim` keeping its state in `dir`, known as `public_url` (fixed,
/// so a restart on a new port is the same gateway), with `key`.
async fn gateway(
    sim: &Simulator,
    dir: &Path,
    public_url: &str,
    key: &str,
    adjust: impl Fn(&mut exagate::Config),
) -> RunningGateway {
    let mut config = test_config();
    config.state.dir = Some(dir.to_path_buf());
    adjust(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    config.server.listen = listener.local_addr().expect("addr");
    config.server.public_url = public_url.to_string();
    config.upstream.url = sim.url();
    config.validate().expect("valid");
    let key =
        exagate::secret::ApiKey::from_secret(key, exagate::secret::KeySource::Env("T".into()))
            .expect("key");
    exagate::start(exagate::Launch::in_memory(config, key, listener)).expect("starts")
}

const PUBLIC: &str = "http://gateway.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_is_warm_and_costs_no_upstream_call() {
    let sim = start_sim(false).await;
    let dir = common::tempdir();
    let ids = sim.seed_completed(None, 30);
    let first = gateway(&sim, dir.path(), PUBLIC, KEY, |_| {}).await;
    for id in &ids {
        assert_eq!(get(&first, &job_path(*id)).await.cache(), "miss");
    }
    let chunks = format!("{}/chunks?start=1&end=5", job_path(ids[0]));
    assert_eq!(get(&first, &chunks).await.cache(), "miss");
    first.shutdown().await;
    let file = dir.path().join("cache.snapshot");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("written on drain")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "bodies are the account's data");
    }
    let calls = sim.calls();
    let second = gateway(&sim, dir.path(), PUBLIC, KEY, |_| {}).await;
    for id in &ids {
        let reply = get(&second, &job_path(*id)).await;
        assert_eq!((reply.status, reply.cache()), (StatusCode::OK, "hit"));
        assert!(reply.json()["links"]["chunks"]
            .as_str()
            .unwrap_or("")
            .starts_with(PUBLIC));
        let age: u64 = reply.headers["age"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("secs");
        assert!(age < 60, "its age is kept: {age}");
    }
    assert_eq!(get(&second, &chunks).await.cache(), "hit");
    assert_eq!(sim.calls(), calls, "no upstream call for what was cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_expired_while_down_is_not_served() {
    let sim = start_sim(false).await;
    let dir = common::tempdir();
    let short = |c: &mut exagate::Config| c.cache.failed_ttl = Duration::from_secs(1);
    let failed = sim.add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    let done = sim.add_completed(None);
    let first = gateway(&sim, dir.path(), PUBLIC, KEY, short).await;
    get(&first, &job_path(failed)).await;
    get(&first, &job_path(done)).await;
    first.shutdown().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = gateway(&sim, dir.path(), PUBLIC, KEY, short).await;
    assert_eq!(
        get(&second, &job_path(failed)).await.cache(),
        "miss",
        "expired while down"
    );
    assert_eq!(get(&second, &job_path(done)).await.cache(), "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_foreign_snapshot_starts_cold() {
    let sim = start_sim(false).await;
    let id = sim.add_completed(None);
    for case in [
        "flipped byte",
        "truncated",
        "garbage",
        "another key",
        "another public url",
    ] {
        let dir = common::tempdir();
        let first = gateway(&sim, dir.path(), PUBLIC, KEY, |_| {}).await;
        assert_eq!(get(&first, &job_path(id)).await.status, StatusCode::OK);
        first.shutdown().await;
        let file = dir.path().join("cache.snapshot");
        let mut bytes = std::fs::read(&file).expect("snapshot");
        let (key, public) = match case {
            "flipped byte" => {
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x40;
                (KEY, PUBLIC)
            }
            "truncated" => {
                bytes.truncate(bytes.len() - 7);
                (KEY, PUBLIC)
            }
            "garbage" => {
                bytes = b"not a snapshot at all".to_vec();
                (KEY, PUBLIC)
            }
            // The simulator wants KEY: a gateway with another key gets 401s, which is
            // fine here: what matters is that it does not serve the snapshot's answer.
            "another key" => (KEY, PUBLIC),
            _ => (KEY, "http://moved.test"),
        };
        std::fs::write(&file, &bytes).expect("rewrite");
        let key = if case == "another key" {
            "another-key-4d1"
        } else {
            key
        };
        let second = gateway(&sim, dir.path(), public, key, |_| {}).await;
        let reply = get(&second, &job_path(id)).await;
        assert_ne!(
            reply.cache(),
            "hit",
            "{case}: served from a snapshot it must not trust"
        );
        second.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_written_while_serving_too() {
    let sim = start_sim(false).await;
    let dir = common::tempdir();
    let id = sim.add_completed(None);
    let gw = gateway(&sim, dir.path(), PUBLIC, KEY, |c| {
        c.state.snapshot_interval = Duration::from_secs(1);
    })
    .await;
    get(&gw, &job_path(id)).await;
    let file = dir.path().join("cache.snapshot");
    for _ in 0..40 {
        if std::fs::metadata(&file)
            .map(|m| m.len() > 100)
            .unwrap_or(false)
        {
            // Written by the interval, with no drain.
            drop(gw);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no snapshot written within 4 s at a 1 s interval");
}

/// Entries held compressed are written as identity bodies and held compressed again
/// after the restart: both kinds of client get what they got before it, as hits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_entries_survive_a_restart_in_both_forms() {
    let sim = start_sim(false).await;
    sim.set_padding(4096);
    let dir = common::tempdir();
    let ids = sim.seed_completed(None, 5);
    let first = gateway(&sim, dir.path(), PUBLIC, KEY, |_| {}).await;
    let mut before = Vec::new();
    for id in &ids {
        let reply = get(&first, &job_path(*id)).await;
        assert_eq!(reply.status, StatusCode::OK);
        before.push(reply.body);
    }
    first.shutdown().await;
    let calls = sim.calls();
    let second = gateway(&sim, dir.path(), PUBLIC, KEY, |_| {}).await;
    let client = common::client();
    for (id, body) in ids.iter().zip(&before) {
        let url = format!("{}{}", second.url(), job_path(*id));
        let gzip = common::send(
            &client,
            http::Method::GET,
            &url,
            &[("accept-encoding", "gzip")],
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(gzip.cache(), "hit");
        assert_eq!(gzip.headers["content-encoding"], "gzip");
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&gzip.body[..]),
            &mut decoded,
        )
        .expect("gzip");
        assert_eq!(&decoded[..], &body[..]);
        let identity = get(&second, &job_path(*id)).await;
        assert_eq!(identity.cache(), "hit");
        assert_eq!(&identity.body, body);
    }
    assert_eq!(sim.calls(), calls);
}

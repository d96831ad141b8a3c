//! `[shared]`: replicas that act as one gateway through one real `redis-server`. Two or
//! three gateways in one test, each on its own port, in front of one simulator.

mod common;

use std::time::{Duration, Instant};

use common::redis::{replica_config, replicas, wait_shared, RedisServer};
use common::{get_from as get, job_path, start_gateway, start_sim, test_config, Reply};
use exagate::config::Rate;
use exagate::sim::{Fault, Simulator};
use exagate::RunningGateway;
use futures_util::future::join_all;
use http::{Method, StatusCode};

/// Asks `gw` for `path` until it is a miss (an invalidation reached it), failing after
/// `within`.
async fn until_miss(gw: &RunningGateway, path: &str, within: Duration, what: &str) {
    let started = Instant::now();
    while get(gw, path).await.cache() != "miss" {
        assert!(started.elapsed() < within, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_fetched_through_one_replica_is_a_hit_on_another() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let gws = replicas(&sim, &redis, 2, |_| {}).await;
    let id = sim.add_completed(None);
    let first = get(&gws[0], &job_path(id)).await;
    assert_eq!((first.status, first.cache()), (StatusCode::OK, "miss"));
    // The write to Redis runs after the answer: give it a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = get(&gws[1], &job_path(id)).await;
    assert_eq!((second.status, second.cache()), (StatusCode::OK, "hit"));
    assert_eq!(
        sim.calls_to(&job_path(id)),
        1,
        "one upstream call for both replicas"
    );
    // Each replica's links point at itself.
    let links = |r: &Reply| {
        r.json()["links"]["chunks"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        links(&first).starts_with(&gws[0].url()),
        "{}",
        links(&first)
    );
    assert!(
        links(&second).starts_with(&gws[1].url()),
        "{}",
        links(&second)
    );
    // And now a local hit on the second: no Redis, no upstream.
    assert_eq!(get(&gws[1], &job_path(id)).await.cache(), "hit");
    assert_eq!(sim.calls_to(&job_path(id)), 1);
    // What the metrics say: a Redis miss, lock and store on the first; a Redis hit on the
    // second; the second's last read was local (no lookup).
    let m0 = gws[0].gateway.render_metrics().await;
    let m1 = gws[1].gateway.render_metrics().await;
    let v = common::metric_value;
    assert_eq!(
        v(
            &m0,
            "exagate_shared_requests_total{op=\"get\",result=\"miss\"}"
        ),
        1.0
    );
    assert_eq!(
        v(
            &m0,
            "exagate_shared_requests_total{op=\"store\",result=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        v(
            &m1,
            "exagate_shared_requests_total{op=\"get\",result=\"hit\"}"
        ),
        1.0
    );
    assert_eq!(
        v(
            &m1,
            "exagate_shared_requests_total{op=\"lookup\",result=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        v(&m1, "exagate_upstream_calls_saved_total{reason=\"hit\"}"),
        2.0
    );
    assert!(v(&m1, "exagate_shared_command_seconds_count") >= 1.0);
    assert_eq!(v(&m1, "exagate_shared_mode"), 1.0);
    // Freshness survives the trip: the second replica's max-age counts from the fetch.
    assert!(second.headers["cache-control"]
        .to_str()
        .unwrap_or("")
        .starts_with("private, max-age="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_requests_spread_over_three_replicas_cost_one_call() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let gws = replicas(&sim, &redis, 3, |_| {}).await;
    let id = sim.add_completed(None);
    sim.set_fault(Fault::Latency(Duration::from_millis(400)));
    let path = job_path(id);
    let replies = join_all((0..99).map(|i| get(&gws[i % 3], &path))).await;
    sim.set_fault(Fault::None);
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    assert_eq!(
        sim.calls_to(&path),
        1,
        "99 cold requests over 3 replicas: one call"
    );
    let hits = replies.iter().filter(|r| r.cache() == "hit").count();
    assert!(
        hits >= 2,
        "the other replicas' requests were answered from Redis ({hits} hits)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_is_the_accounts_not_each_replicas() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let gws = replicas(&sim, &redis, 2, |c| {
        c.upstream.rate_limit = Some(Rate {
            count: 6,
            per: Duration::from_secs(3600),
        });
        c.upstream.rate_limit_burst = Some(6);
    })
    .await;
    let ids = sim.seed_completed(None, 20);
    let mut ok = 0;
    let mut refused = 0;
    for (i, id) in ids.iter().enumerate() {
        let reply = get(&gws[i % 2], &job_path(*id)).await;
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(reply.error_code(), "quota_exhausted");
                assert!(reply.headers.contains_key("retry-after"));
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        (ok, refused),
        (6, 14),
        "a burst of 6 across both replicas, not 6 each"
    );
    assert_eq!(sim.calls(), 6);
    let mut allowed = 0.0;
    for gw in &gws {
        let text = gw.gateway.render_metrics().await;
        let decisions = |mode: &str, result: &str| {
            common::metric_value(
                &text,
                &format!("exagate_quota_decisions_total{{mode=\"{mode}\",result=\"{result}\"}}"),
            )
        };
        allowed += decisions("shared", "allowed");
        assert_eq!(decisions("local", "allowed"), 0.0);
    }
    assert_eq!(allowed, 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_through_one_replica_closes_the_gate_on_the_other() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let gws = replicas(&sim, &redis, 2, |_| {}).await;
    sim.set_fault_for(
        Fault::TooManyRequests {
            retry_after: Some(5),
        },
        1,
    );
    let a = sim.add_completed(None);
    assert_eq!(
        get(&gws[0], &job_path(a)).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let calls = sim.calls();
    let b = sim.add_completed(None);
    let other = get(&gws[1], &job_path(b)).await;
    assert_eq!(other.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(other.error_code(), "upstream_rate_limited");
    let wait: u64 = other.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!((1..=5).contains(&wait), "{wait}");
    assert_eq!(
        sim.calls(),
        calls,
        "the other replica did not call upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_or_a_job_action_on_one_replica_is_a_miss_on_the_other() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    std::env::set_var("EXAGATE_TEST_SHARED_PURGE", "shared-purge-31a");
    let gws = replicas(&sim, &redis, 2, |c| {
        c.admin.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin.token_env = "EXAGATE_TEST_SHARED_PURGE".into();
    })
    .await;
    let token = ("authorization", "Bearer shared-purge-31a");
    for how in ["purge", "reprocess", "purge everything"] {
        let id = sim.add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
        let path = job_path(id);
        assert_eq!(get(&gws[0], &path).await.cache(), "miss");
        assert_eq!(get(&gws[1], &path).await.cache(), "hit");
        assert_eq!(
            get(&gws[1], &path).await.cache(),
            "hit",
            "{how}: a local hit"
        );
        let done = match how {
            "purge" => {
                let url = format!("{}/cache/{id}", gws[0].admin_url().expect("admin"));
                common::send(
                    &common::client(),
                    Method::DELETE,
                    &url,
                    &[token],
                    Default::default(),
                )
                .await
            }
            "reprocess" => {
                let url = format!("{}{path}/reprocess", gws[0].url());
                common::send(
                    &common::client(),
                    Method::POST,
                    &url,
                    &[],
                    Default::default(),
                )
                .await
            }
            _ => {
                let url = format!("{}/cache", gws[0].admin_url().expect("admin"));
                common::send(
                    &common::client(),
                    Method::DELETE,
                    &url,
                    &[token],
                    Default::default(),
                )
                .await
            }
        };
        assert!(done.status.is_success(), "{how}: {}", done.status);
        let what = format!("{how}: the other replica still serves the old job");
        until_miss(&gws[1], &path, Duration::from_secs(1), &what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_with_different_keys_never_share_an_entry_and_no_secret_reaches_redis() {
    if !common::redis::installed() {
        return;
    }
    use tokio::io::AsyncReadExt;
    // One upstream that answers any key: only the keys differ between the two gateways.
    let upstream = common::RawUpstream::start(|_, mut stream| async move {
        if let Some(head) = common::read_head(&mut stream).await {
            // A completed job created a minute ago, so it is stored.
            let created = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
            common::answer_job_created(&mut stream, &head, Some(created)).await;
        }
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    })
    .await;
    let redis = RedisServer::start().await;
    let start = |key: &'static str| {
        let mut config = replica_config(&redis);
        config.upstream.url = upstream.url();
        let url = upstream.url();
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            config.server.listen = addr;
            config.server.public_url = format!("http://{addr}");
            config.upstream.url = url;
            let key = exagate::secret::ApiKey::from_secret(
                key,
                exagate::secret::KeySource::Env("T".into()),
            )
            .expect("key");
            exagate::start(exagate::Launch::in_memory(config, key, listener)).expect("starts")
        }
    };
    let a = start("team-a-key-0b9f4e1c").await;
    let b = start("team-b-key-7d2a6c53").await;
    wait_shared(&a, true).await;
    wait_shared(&b, true).await;
    let id = uuid::Uuid::new_v4();
    assert_eq!(get(&a, &job_path(id)).await.cache(), "miss");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = get(&b, &job_path(id)).await;
    assert_eq!(
        (other.status, other.cache()),
        (StatusCode::OK, "miss"),
        "another key, another entry"
    );
    assert_eq!(upstream.connections(), 2);
    // Neither key, nor anything of it, is in any Redis key or value.
    let dump = redis.dump().await;
    assert!(!dump.is_empty());
    for (key, value) in &dump {
        for secret in ["team-a-key-0b9f4e1c", "team-b-key-7d2a6c53"] {
            assert!(!key.contains(secret), "{key}");
            assert!(
                !String::from_utf8_lossy(value).contains(secret),
                "value of {key}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_is_warm_from_redis() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let ids = sim.seed_completed(None, 20);
    {
        let mut first = replicas(&sim, &redis, 1, |_| {}).await;
        for id in &ids {
            assert_eq!(get(&first[0], &job_path(*id)).await.status, StatusCode::OK);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        first.remove(0).shutdown().await;
    }
    let calls = sim.calls();
    let again = replicas(&sim, &redis, 1, |_| {}).await;
    for id in &ids {
        let reply = get(&again[0], &job_path(*id)).await;
        assert_eq!((reply.status, reply.cache()), (StatusCode::OK, "hit"));
    }
    assert_eq!(
        sim.calls(),
        calls,
        "a restart with Redis costs no upstream call"
    );
}

/// Traffic against `gw` while something happens to Redis: hits of `warm` and misses of
/// fresh jobs, each timed; every request is answered, none waits past `limit`.
async fn traffic(
    sim: &Simulator,
    gw: &RunningGateway,
    warm: &[uuid::Uuid],
    rounds: usize,
    limit: Duration,
) {
    for round in 0..rounds {
        let fresh = sim.add_completed(None);
        for path in [job_path(warm[round % warm.len()]), job_path(fresh)] {
            let started = Instant::now();
            let reply = get(gw, &path).await;
            let took = started.elapsed();
            assert_eq!(reply.status, StatusCode::OK, "{path} in round {round}");
            assert!(took < limit, "{path} took {took:?} in round {round}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_traffic_degrades_and_comes_back() {
    let Some((mut redis, sim)) = common::redis::setup().await else {
        return;
    };
    let gws = replicas(&sim, &redis, 1, |_| {}).await;
    let gw = &gws[0];
    let warm = sim.seed_completed(None, 5);
    for id in &warm {
        get(gw, &job_path(*id)).await;
    }
    redis.kill();
    // A Redis command waits at most shared.timeout (250 ms); a miss, an upstream call more.
    traffic(&sim, gw, &warm, 10, Duration::from_millis(2500)).await;
    wait_shared(gw, false).await;
    assert_eq!(
        common::metric_value(&gw.gateway.render_metrics().await, "exagate_shared_mode"),
        0.0
    );
    traffic(&sim, gw, &warm, 5, Duration::from_millis(2500)).await;
    redis.restart().await;
    wait_shared(gw, true).await;
    // Its subscription came back after a loss: what it holds may have missed
    // invalidations, and is dropped.
    let calls = sim.calls_to(&job_path(warm[0]));
    assert_eq!(get(gw, &job_path(warm[0])).await.cache(), "miss");
    assert_eq!(sim.calls_to(&job_path(warm[0])), calls + 1);
    // Shared again: a job fetched now is in Redis.
    let id = sim.add_completed(None);
    assert_eq!(get(gw, &job_path(id)).await.cache(), "miss");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stored = redis.dump().await;
    assert!(
        stored.iter().any(|(k, _)| k.contains(&id.to_string())),
        "{stored:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_mid_traffic_holds_no_request_past_the_timeout() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let gws = replicas(&sim, &redis, 2, |_| {}).await;
    let warm = sim.seed_completed(None, 5);
    for id in &warm {
        get(&gws[0], &job_path(*id)).await;
    }
    redis.freeze();
    for gw in &gws {
        traffic(&sim, gw, &warm, 8, Duration::from_millis(2500)).await;
    }
    wait_shared(&gws[0], false).await;
    redis.thaw();
    for gw in &gws {
        wait_shared(gw, true).await;
    }
    traffic(&sim, &gws[1], &warm, 3, Duration::from_millis(2500)).await;
}

// The Redis password is a secret like the key: not in any log line at the most verbose
// level, nor in /metrics, whether Redis takes it or refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_never_appears_in_logs_or_metrics() {
    if !common::redis::installed() {
        return;
    }
    use std::process::{Command, Stdio};
    const PASSWORD: &str = "redis-pw-5e8d1c77a";
    let sim = start_sim(false).await;
    let redis = RedisServer::start_with(Some(PASSWORD)).await;
    let id = sim.add_completed(None);
    for (case, url) in [
        ("right", redis.url()),
        (
            "wrong",
            redis.url().replace(PASSWORD, &format!("{PASSWORD}x")),
        ),
    ] {
        let dir = common::tempdir();
        let port = common::free_port();
        let admin = common::free_port();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, format!("{}\n", common::KEY)).expect("key");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\ndrain_delay = \"0s\"\n\
                 [upstream]\nurl = \"{}\"\napi_key_file = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
                 [shared]\nredis_url_env = \"EXAGATE_TEST_REDIS_URL\"\n[log]\nlevel = \"trace\"\n",
                sim.url(),
                key_file.display()
            ),
        )
        .expect("config");
        let log = dir.path().join("stderr.log");
        let child = common::KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_exagate"))
                .arg("--config")
                .arg(&config)
                .env("EXAGATE_TEST_REDIS_URL", &url)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log"))
                .spawn()
                .expect("spawn"),
        );
        common::wait_listening(port).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..3 {
            let reply = common::send(
                &common::client(),
                Method::GET,
                &format!("{base}{}", job_path(id)),
                &[],
                Default::default(),
            )
            .await;
            assert_eq!(reply.status, StatusCode::OK, "{case}");
        }
        // Shared mode is on within a few probes (with the right password only).
        let want = if case == "right" { 1.0 } else { 0.0 };
        let mut metrics = String::new();
        for _ in 0..50 {
            let scraped = common::send(
                &common::client(),
                Method::GET,
                &format!("http://127.0.0.1:{admin}/metrics"),
                &[],
                Default::default(),
            )
            .await;
            metrics = String::from_utf8_lossy(&scraped.body).to_string();
            if common::metric_value(&metrics, "exagate_shared_mode") == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mode = common::metric_value(&metrics, "exagate_shared_mode");
        assert_eq!(mode, want, "{case}");
        drop(child);
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.len() > 1000, "{case}: the trace log was written");
        assert!(
            !text.contains(PASSWORD),
            "{case}: the password is in the log"
        );
        assert!(!metrics.contains(PASSWORD));
        if case == "right" {
            assert_eq!(
                text.matches("shared tier on").count(),
                1,
                "one line when it is on"
            );
            assert!(!text.contains("shared tier lost"), "{text}");
        } else {
            assert!(
                text.contains("Redis does not answer at start"),
                "one line says so"
            );
        }
    }
}

// The subscription is checked every second; a check that fails on a healthy Redis would
// drop the local cache each time (this happened: PING on a subscribed connection does
// not answer "PONG").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_subscription_keeps_the_local_cache() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let gws = replicas(&sim, &redis, 1, |_| {}).await;
    let id = sim.add_completed(None);
    assert_eq!(get(&gws[0], &job_path(id)).await.cache(), "miss");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // Redis emptied: only the local copy can answer now.
    let mut c = redis.conn().await;
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut c)
        .await
        .expect("FLUSHALL");
    assert_eq!(
        get(&gws[0], &job_path(id)).await.cache(),
        "hit",
        "the local cache was dropped"
    );
    assert_eq!(sim.calls_to(&job_path(id)), 1);
    assert_eq!(
        common::metric_value(
            &gws[0].gateway.render_metrics().await,
            "exagate_shared_mode"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_at_start_the_gateway_serves_and_joins_when_it_appears() {
    if !common::redis::installed() {
        return;
    }
    let sim = start_sim(false).await;
    let port = common::free_port();
    let mut config = test_config();
    config.shared = Some(exagate::config::SharedConfig {
        redis_url: Some(format!("redis://127.0.0.1:{port}/0")),
        redis_url_env: None,
        namespace: "exagate-test".into(),
        timeout: Duration::from_millis(250),
        max_replicas: 2,
    });
    let gw = start_gateway(&sim, config).await;
    let id = sim.add_completed(None);
    let started = Instant::now();
    assert_eq!(get(&gw, &job_path(id)).await.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        get(&gw, &job_path(id)).await.cache(),
        "hit",
        "the local cache works alone"
    );
    wait_shared(&gw, false).await;
    // Redis appears on that port: the replica joins by itself.
    let redis = RedisServer::start_on(port).await;
    wait_shared(&gw, true).await;
    let other = sim.add_completed(None);
    assert_eq!(get(&gw, &job_path(other)).await.cache(), "miss");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(redis
        .dump()
        .await
        .iter()
        .any(|(k, _)| k.contains(&other.to_string())));
}

// A replica whose fetch holds the lock and dies (or freezes) stops renewing its lease: the
// lock is gone within a lease (3 s), and a waiting replica takes over within its own
// deadline, at the cost of one call. A lock that would live longer (no TTL, an hour: not
// one of ours) is cut back to a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lock_holder_costs_one_call_and_no_error() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let gws = replicas(&sim, &redis, 1, |c| {
        c.upstream.timeout = Duration::from_secs(6)
    })
    .await;
    let prefix = name_prefix(&sim, &redis, &gws[0]).await;
    let mut c = redis.conn().await;
    for (case, ttl) in [
        ("a dead holder's lease", Some(1500u64)),
        ("a lock with no TTL", None),
    ] {
        let id = sim.add_completed(None);
        let lock = format!(
            "{prefix}:{}:lock:w:{id}:job",
            generation(&redis, &prefix).await
        );
        let mut set = redis::cmd("SET");
        set.arg(&lock).arg("dead-holder");
        if let Some(ms) = ttl {
            set.arg("PX").arg(ms);
        }
        let _: () = set.query_async(&mut c).await.expect("SET");
        wait_shared(&gws[0], true).await;
        let started = Instant::now();
        let reply = get(&gws[0], &job_path(id)).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{case}: taken over, not a 504"
        );
        assert!(
            started.elapsed() < Duration::from_millis(3800),
            "{case}: {:?}",
            started.elapsed()
        );
        assert_eq!(sim.calls_to(&job_path(id)), 1, "{case}: one call");
    }
    let metrics = gws[0].gateway.render_metrics().await;
    assert_eq!(
        common::metric_value(&metrics, "exagate_shared_lock_takeovers_total"),
        2.0
    );
}

/// The generation part (`g{n}`) of the names under `prefix` now.
async fn generation(redis: &RedisServer, prefix: &str) -> String {
    let mut c = redis.conn().await;
    // Anything but a count (junk a test put there) reads as "g?".
    let n: Result<Option<u64>, _> = redis::cmd("GET")
        .arg(format!("{prefix}:generation"))
        .query_async(&mut c)
        .await;
    match n {
        Ok(n) => format!("g{}", n.unwrap_or(0)),
        Err(_) => "g?".into(),
    }
}

/// The prefix of a replica's Redis names, read from an entry it stored.
async fn name_prefix(sim: &Simulator, redis: &RedisServer, gw: &RunningGateway) -> String {
    let seen = sim.add_completed(None);
    get(gw, &job_path(seen)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let entry = redis
        .dump()
        .await
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| k.contains(":job:w:"))
        .expect("an entry");
    entry[..entry.find(":g").expect("name")].to_string()
}

// What the quota key and the gate hold is never trusted past what this gateway's own
// rate and cap allow: a reload that changes the rate, or junk, cannot lock the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_quota_or_gate_never_refuses_past_the_current_rate_and_cap() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let gws = replicas(&sim, &redis, 1, |c| {
        c.upstream.rate_limit = Some(Rate {
            count: 36_000,
            per: Duration::from_secs(3600),
        });
        c.upstream.rate_limit_burst = Some(10);
        c.upstream.max_cooldown = Duration::from_secs(5);
    })
    .await;
    let prefix = name_prefix(&sim, &redis, &gws[0]).await;
    let mut c = redis.conn().await;
    // An arrival time an hour ahead (what a slower rate left behind, or junk).
    let far: u64 = exagate::cache::envelope::now_ms() + 3_600_000;
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:quota"))
        .arg(far)
        .query_async(&mut c)
        .await
        .expect("SET");
    let refused = get(&gws[0], &job_path(sim.add_completed(None))).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.headers["retry-after"], "1",
        "at most one interval (100 ms)"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        get(&gws[0], &job_path(sim.add_completed(None)))
            .await
            .status,
        StatusCode::OK
    );
    // Junk there is a full bucket.
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:quota"))
        .arg("junk")
        .query_async(&mut c)
        .await
        .expect("SET");
    assert_eq!(
        get(&gws[0], &job_path(sim.add_completed(None)))
            .await
            .status,
        StatusCode::OK
    );
    // A gate closed for an hour is closed for at most upstream.max_cooldown here.
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:cooldown"))
        .arg("1")
        .arg("PX")
        .arg(3_600_000)
        .query_async(&mut c)
        .await
        .expect("SET");
    let closed = get(&gws[0], &job_path(sim.add_completed(None))).await;
    assert_eq!(closed.error_code(), "upstream_rate_limited");
    let wait: u64 = closed.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!(wait <= 5, "{wait}");
}

// An outage right after the account's bucket ran dry hands out no fresh burst: what each
// replica spent in shared mode is spent from its local share too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_after_the_bucket_ran_dry_hands_out_no_fresh_burst() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let gws = replicas(&sim, &redis, 2, |c| {
        c.upstream.rate_limit = Some(Rate {
            count: 6,
            per: Duration::from_secs(3600),
        });
        c.upstream.rate_limit_burst = Some(6);
    })
    .await;
    for i in 0..10 {
        get(&gws[i % 2], &job_path(sim.add_completed(None))).await;
    }
    assert_eq!(sim.calls(), 6);
    redis.freeze();
    for gw in &gws {
        wait_shared(gw, false).await;
    }
    for i in 0..10 {
        let reply = get(&gws[i % 2], &job_path(sim.add_completed(None))).await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{i}");
    }
    assert_eq!(sim.calls(), 6, "no fresh local burst");
    redis.thaw();
}

// A key that holds something of the wrong kind is one bad entry, not an outage: the
// replica stays in shared mode, answers from the upstream, and repairs the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_the_wrong_type_is_one_miss_not_an_outage() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    std::env::set_var("EXAGATE_TEST_SHARED_JUNK", "junk-purge-5c3");
    let gws = replicas(&sim, &redis, 2, |c| {
        c.admin.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin.token_env = "EXAGATE_TEST_SHARED_JUNK".into();
    })
    .await;
    let prefix = name_prefix(&sim, &redis, &gws[0]).await;
    let mut c = redis.conn().await;
    let id = sim.add_completed(None);
    let _: () = redis::cmd("SET")
        .arg(format!(
            "{prefix}:{}:job:w:{id}",
            generation(&redis, &prefix).await
        ))
        .arg("i am a string")
        .query_async(&mut c)
        .await
        .expect("SET");
    for _ in 0..5 {
        let reply = get(&gws[0], &job_path(uuid::Uuid::new_v4())).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(get(&gws[0], &job_path(id)).await.status, StatusCode::OK);
    assert!(
        gws[0].gateway.shared.as_ref().expect("shared").usable(),
        "still shared"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        get(&gws[1], &job_path(id)).await.cache(),
        "hit",
        "the entry was repaired"
    );
    // Junk in the generation counter: emptying everything still works everywhere.
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:generation"))
        .arg("x")
        .query_async(&mut c)
        .await
        .expect("SET");
    let url = format!("{}/cache", gws[0].admin_url().expect("admin"));
    let purged = common::send(
        &common::client(),
        Method::DELETE,
        &url,
        &[("authorization", "Bearer junk-purge-5c3")],
        Default::default(),
    )
    .await;
    assert_eq!(purged.status, StatusCode::OK);
    let what = "the purge did not reach the other replica";
    until_miss(&gws[1], &job_path(id), Duration::from_secs(1), what).await;
    let text = gws[0].gateway.render_metrics().await;
    assert_eq!(
        common::metric_value(
            &text,
            "exagate_shared_requests_total{op=\"ping\",result=\"error\"}"
        ),
        0.0
    );
}

// A token taken for a call that never reached the upstream goes back to the account's
// quota: the quota is spent by calls that really go upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_calls_never_sent_go_back_to_the_shared_quota() {
    if !common::redis::installed() {
        return;
    }
    let redis = RedisServer::start().await;
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut config = replica_config(&redis);
    config.upstream.rate_limit = Some(Rate {
        count: 3,
        per: Duration::from_secs(3600),
    });
    config.upstream.rate_limit_burst = Some(3);
    let gw = common::start_gateway_at(&url, config).await;
    wait_shared(&gw, true).await;
    // Nothing listens: every call fails to connect, and nothing was sent.
    for _ in 0..6 {
        let id = uuid::Uuid::new_v4();
        let reply = get(&gw, &job_path(id)).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_GATEWAY,
            "{}",
            reply.error_code()
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Now an upstream there: the whole burst of 3 is still the account's.
    let sim_on_port = common::RawUpstream::start_on(port, |_, mut stream| async move {
        use tokio::io::AsyncWriteExt;
        if common::read_head(&mut stream).await.is_some() {
            let answer =
                "HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&gw, &job_path(uuid::Uuid::new_v4())).await.status);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::NOT_FOUND,
            StatusCode::NOT_FOUND,
            StatusCode::NOT_FOUND,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(sim_on_port.connections(), 3);
}

// What Redis holds is input like any other: an entry that is garbage, another job, a
// status this gateway never stores, or one claiming to live for centuries, is not
// served as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_shared_entry_is_never_served_as_it_is() {
    if !common::redis::installed() {
        return;
    }
    use exagate::cache::{Envelope, JobState};
    let sim = start_sim(false).await;
    let redis = RedisServer::start().await;
    let gws = replicas(&sim, &redis, 1, |_| {}).await;
    let seen = sim.add_completed(None);
    get(&gws[0], &job_path(seen)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let entry = redis
        .dump()
        .await
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| k.contains(":job:w:"))
        .expect("an entry");
    let prefix = entry[..entry.find(":job:").expect("name")].to_string();
    let now = exagate::cache::envelope::now_ms();
    let other = sim.add_completed(None);
    let other_body = get(&gws[0], &job_path(other)).await.body;
    let forever = now + 100 * 365 * 24 * 3600 * 1000;
    let envelope = |status: u16, body: bytes::Bytes, state: Option<JobState>, expires_at: u64| {
        Envelope {
            status: http::StatusCode::from_u16(status).expect("status"),
            content_type: Some(bytes::Bytes::from_static(b"application/json")),
            job_state: state,
            fetched_at: now,
            expires_at,
            body,
        }
        .encode()
        .to_vec()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage",
            b"not an envelope at all, but long enough".to_vec(),
        ),
        (
            "another job",
            envelope(
                200,
                other_body.clone(),
                Some(JobState::Completed),
                now + 60_000,
            ),
        ),
        (
            "a 500",
            envelope(500, bytes::Bytes::from_static(b"{}"), None, now + 60_000),
        ),
        (
            "state mismatch",
            envelope(
                200,
                other_body.clone(),
                Some(JobState::Failed),
                now + 60_000,
            ),
        ),
    ];
    let mut c = redis.conn().await;
    for (case, value) in cases {
        let id = sim.add_completed(None);
        let hash = format!("{prefix}:job:w:{id}");
        let _: () = redis::cmd("HSET")
            .arg(&hash)
            .arg("job")
            .arg(value)
            .query_async(&mut c)
            .await
            .expect("HSET");
        let reply = get(&gws[0], &job_path(id)).await;
        assert_eq!(reply.status, StatusCode::OK, "{case}");
        assert_eq!(
            reply.json()["id"],
            id.to_string(),
            "{case}: the poisoned entry was served"
        );
        assert_eq!(
            sim.calls_to(&job_path(id)),
            1,
            "{case}: fetched from the upstream instead"
        );
    }
    // A true entry that claims a century is kept no longer than this gateway's longest TTL.
    // (The upstream's own body, as the tier keeps it, read straight from the simulator.)
    let fresh = sim.add_completed(None);
    let upstream_body = {
        let c = common::client();
        common::send(
            &c,
            Method::GET,
            &format!("{}{}", sim.url(), job_path(fresh)),
            &[("x-api-key", common::KEY)],
            Default::default(),
        )
        .await
        .body
    };
    let hash = format!("{prefix}:job:w:{fresh}");
    let long = envelope(200, upstream_body, Some(JobState::Completed), forever);
    let _: () = redis::cmd("HSET")
        .arg(&hash)
        .arg("job")
        .arg(long)
        .query_async(&mut c)
        .await
        .expect("HSET");
    let calls = sim.calls_to(&job_path(fresh));
    let reply = get(&gws[0], &job_path(fresh)).await;
    assert_eq!((reply.status, reply.cache()), (StatusCode::OK, "hit"));
    assert_eq!(sim.calls_to(&job_path(fresh)), calls);
    let max_age: u64 = reply.headers["cache-control"]
        .to_str()
        .expect("ascii")
        .trim_start_matches("private, max-age=")
        .parse()
        .expect("secs");
    assert!(max_age <= 24 * 3600, "a completed job for {max_age} s");
    // A failed job claiming an hour: this replica keeps failed jobs 30 s.
    let failed = sim.add_job(None, Some("failed"), time::OffsetDateTime::now_utc());
    let failed_body = common::send(
        &common::client(),
        Method::GET,
        &format!("{}{}", sim.url(), job_path(failed)),
        &[("x-api-key", common::KEY)],
        Default::default(),
    )
    .await
    .body;
    let hash = format!("{prefix}:job:w:{failed}");
    let hour = envelope(200, failed_body, Some(JobState::Failed), now + 3_600_000);
    let _: () = redis::cmd("HSET")
        .arg(&hash)
        .arg("job")
        .arg(hour)
        .query_async(&mut c)
        .await
        .expect("HSET");
    let reply = get(&gws[0], &job_path(failed)).await;
    assert_eq!(reply.cache(), "hit");
    let max_age: u64 = reply.headers["cache-control"]
        .to_str()
        .expect("ascii")
        .trim_start_matches("private, max-age=")
        .parse()
        .expect("secs");
    assert!(max_age <= 30, "a failed job for {max_age} s");
}

// A purge made while Redis is away is not lost: it reaches the other replicas once Redis
// is back, and the purging request does not wait for Redis meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_redis_outage_reaches_the_others_when_it_is_back() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    std::env::set_var("EXAGATE_TEST_SHARED_OUTAGE", "outage-purge-9b2");
    let gws = replicas(&sim, &redis, 2, |c| {
        c.admin.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin.token_env = "EXAGATE_TEST_SHARED_OUTAGE".into();
    })
    .await;
    let id = sim.add_completed(None);
    let path = job_path(id);
    assert_eq!(get(&gws[0], &path).await.cache(), "miss");
    assert_eq!(get(&gws[1], &path).await.cache(), "hit");
    redis.freeze();
    wait_shared(&gws[0], false).await;
    let started = Instant::now();
    let url = format!("{}/cache/{id}", gws[0].admin_url().expect("admin"));
    let purged = common::send(
        &common::client(),
        Method::DELETE,
        &url,
        &[("authorization", "Bearer outage-purge-9b2")],
        Default::default(),
    )
    .await;
    assert_eq!(purged.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    redis.thaw();
    for gw in &gws {
        wait_shared(gw, true).await;
    }
    let what = "the purge never reached the other replica";
    until_miss(&gws[1], &path, Duration::from_secs(2), what).await;
}

// A password refused once (a rotation race, a failover) leaves no connection stuck on the
// refusal: shared mode comes back by itself when Redis takes the password again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_mode_comes_back_after_redis_refused_the_password_for_a_while() {
    if !common::redis::installed() {
        return;
    }
    const PASSWORD: &str = "rotate-me-3d9";
    let sim = start_sim(false).await;
    let redis = RedisServer::start_with(Some(PASSWORD)).await;
    let gws = replicas(&sim, &redis, 1, |_| {}).await;
    let mut c = redis.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("another-one")
        .query_async(&mut c)
        .await
        .expect("CONFIG");
    for kind in ["normal", "pubsub"] {
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .query_async(&mut c)
            .await
            .unwrap_or(redis::Value::Nil);
    }
    wait_shared(&gws[0], false).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut c = redis::Client::open(redis.url().replace(PASSWORD, "another-one"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect with the new password");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(PASSWORD)
        .query_async(&mut c)
        .await
        .expect("CONFIG");
    wait_shared(&gws[0], true).await;
}

// Whatever the generation counter holds (the largest integer, a hash, nothing), emptying
// everything works on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptying_everything_survives_any_generation_counter() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    std::env::set_var("EXAGATE_TEST_SHARED_GEN", "gen-purge-8e4");
    let gws = replicas(&sim, &redis, 2, |c| {
        c.admin.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        c.admin.token_env = "EXAGATE_TEST_SHARED_GEN".into();
    })
    .await;
    let prefix = name_prefix(&sim, &redis, &gws[0]).await;
    let mut c = redis.conn().await;
    let counter = format!("{prefix}:generation");
    for (case, junk) in [
        ("int64 max", Some("9223372036854775806")),
        ("a hash", None),
        ("gone", Some("")),
    ] {
        match junk {
            Some("") => {
                let _: () = redis::cmd("DEL")
                    .arg(&counter)
                    .query_async(&mut c)
                    .await
                    .expect("DEL");
            }
            Some(value) => {
                let _: () = redis::cmd("SET")
                    .arg(&counter)
                    .arg(value)
                    .query_async(&mut c)
                    .await
                    .expect("SET");
            }
            None => {
                let _: () = redis::cmd("DEL")
                    .arg(&counter)
                    .query_async(&mut c)
                    .await
                    .expect("DEL");
                let _: () = redis::cmd("HSET")
                    .arg(&counter)
                    .arg("x")
                    .arg(1)
                    .query_async(&mut c)
                    .await
                    .expect("HSET");
            }
        }
        // Both replicas follow the counter within a probe (one repairs it first).
        let started = Instant::now();
        loop {
            let now = generation(&redis, &prefix).await;
            let same = gws.iter().all(|gw| {
                let g = gw
                    .gateway
                    .shared
                    .as_ref()
                    .expect("shared")
                    .current_generation();
                format!("g{g}") == now
            });
            if same && now != "g0" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{case}: replicas on {now}?"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..2 {
            let id = sim.add_completed(None);
            assert_eq!(get(&gws[0], &job_path(id)).await.cache(), "miss", "{case}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                get(&gws[1], &job_path(id)).await.cache(),
                "hit",
                "{case}: shared"
            );
            let url = format!("{}/cache", gws[0].admin_url().expect("admin"));
            let purged = common::send(
                &common::client(),
                Method::DELETE,
                &url,
                &[("authorization", "Bearer gen-purge-8e4")],
                Default::default(),
            )
            .await;
            assert_eq!(purged.status, StatusCode::OK);
            let started = Instant::now();
            loop {
                let a = get(&gws[0], &job_path(id)).await.cache().to_string();
                let b = get(&gws[1], &job_path(id)).await.cache().to_string();
                if a != "hit" || b != "hit" {
                    // Purged: neither serves the old entry from Redis any more.
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "{case}: the purge did nothing"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

// A gate key that would stay closed longer than upstream.max_cooldown is cut back to it,
// and then opens; a replica that spent nothing knows what the account had left when it
// loses Redis; a purge mark that no purge made refuses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_gates_outages_and_marks_cost_no_more_than_their_due() {
    let Some((redis, sim)) = common::redis::setup().await else {
        return;
    };
    let gws = replicas(&sim, &redis, 2, |c| {
        c.upstream.max_cooldown = Duration::from_secs(2);
        c.upstream.rate_limit = Some(Rate {
            count: 6,
            per: Duration::from_secs(3600),
        });
        c.upstream.rate_limit_burst = Some(6);
    })
    .await;
    let prefix = name_prefix(&sim, &redis, &gws[0]).await;
    let mut c = redis.conn().await;
    // A purge mark from nowhere (in the future): the fill is stored anyway.
    let marked = sim.add_completed(None);
    let _: () = redis::cmd("HSET")
        .arg(format!(
            "{prefix}:{}:job:w:{marked}",
            generation(&redis, &prefix).await
        ))
        .arg("purged")
        .arg("99999999999999")
        .query_async(&mut c)
        .await
        .expect("HSET");
    assert_eq!(get(&gws[0], &job_path(marked)).await.cache(), "miss");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        get(&gws[1], &job_path(marked)).await.cache(),
        "hit",
        "the junk mark refused the fill"
    );
    // A gate closed for an hour: cut back to max_cooldown (2 s), then open.
    let gate = format!("{prefix}:cooldown");
    let _: () = redis::cmd("SET")
        .arg(&gate)
        .arg("1")
        .arg("EX")
        .arg(3600)
        .query_async(&mut c)
        .await
        .expect("SET");
    let closed = get(&gws[0], &job_path(sim.add_completed(None))).await;
    assert_eq!(closed.error_code(), "upstream_rate_limited");
    let left: i64 = redis::cmd("PTTL")
        .arg(&gate)
        .query_async(&mut c)
        .await
        .expect("PTTL");
    assert!(left <= 2000, "the gate key was not cut back: {left} ms");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        get(&gws[0], &job_path(sim.add_completed(None)))
            .await
            .status,
        StatusCode::OK
    );
    // Spend the account's bucket through the first replica only.
    while get(&gws[0], &job_path(sim.add_completed(None)))
        .await
        .status
        == StatusCode::OK
    {}
    let calls = sim.calls();
    // Both replicas' probes (every 500 ms) have seen the empty bucket.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    redis.freeze();
    wait_shared(&gws[1], false).await;
    for _ in 0..5 {
        assert_eq!(
            get(&gws[1], &job_path(sim.add_completed(None)))
                .await
                .status,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(
        sim.calls(),
        calls,
        "the replica that spent nothing handed out a fresh burst"
    );
    redis.thaw();
}

//! The team workload, shared by (f) and (g): jobs created over 1.5 s, each polled by its
//! creator every 1.5 s (or long-polled) until completed, then read (job and chunks) by
//! five apps, every request to the next replica in turn; counted as upstream calls per
//! job. Also the in-process gateway and simulator it runs on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exagate::config::SharedConfig;
use exagate::secret::{ApiKey, KeySource};
use exagate::sim::{SimOptions, Simulator};
use exagate::{Config, RunningGateway};
use http::HeaderMap;
use tokio::net::TcpListener;

use crate::client::Conn;
use crate::scenarios::PADDING;
use crate::BoxError;

/// The receiver's secret of the harness's gateways with `[webhooks]`.
pub const HOOK_SECRET: &str = "bench-webhook-secret-0123456789abcdef0123";

/// How a team run is set up.
#[derive(Clone, Copy)]
pub struct Setup {
    /// Gateways behind round-robin.
    pub replicas: usize,
    /// The port of a redis-server they share, if any.
    pub redis: Option<u16>,
    /// `[webhooks]` on, the simulator's webhook pointed at the first replica.
    pub webhooks: bool,
    /// Creators long-poll (`?wait=30s`) instead of polling every 1.5 s.
    pub long_poll: bool,
}

/// What a team run measured.
pub struct TeamRun {
    /// Upstream calls per job.
    pub calls: f64,
    /// Requests that failed.
    pub failed: u64,
    /// Polls made more than a second after the job's webhook was acknowledged that still
    /// saw it in progress.
    pub late: u64,
    /// Per job, ms from the webhook's acknowledgement to the creator's answer that showed
    /// it completed (long-poll runs; polls see it at their next tick).
    pub seen_after_ms: Vec<u32>,
}

/// A gateway in front of `sim`, in-process, sharing the Redis on `redis` if any, with
/// `[webhooks]` (secret in `dir`) if `webhooks`.
pub async fn gateway(
    sim: &Simulator,
    redis: Option<u16>,
    webhooks: Option<&std::path::Path>,
) -> Result<RunningGateway, BoxError> {
    let mut config = Config::defaults();
    config.upstream.url = sim.url();
    config.admin.listen = None;
    config.server.shutdown_timeout = Duration::from_secs(2);
    config.server.drain_delay = Duration::ZERO;
    config.shared = redis.map(|port| SharedConfig {
        redis_url: Some(format!("redis://127.0.0.1:{port}/0")),
        redis_url_env: None,
        namespace: "exagate-bench".into(),
        timeout: Duration::from_millis(250),
        max_replicas: 3,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    config.server.listen = listener.local_addr()?;
    config.server.public_url = format!("http://{}", config.server.listen);
    if let Some(dir) = webhooks {
        let file = dir.join("webhook-secret");
        std::fs::write(&file, HOOK_SECRET)?;
        config.webhooks = Some(toml::from_str(&format!(
            "secret_file = {:?}\npublic_url = {:?}\n",
            file.display().to_string(),
            config.server.public_url
        ))?);
    }
    config.validate()?;
    let key = ApiKey::from_secret(crate::procs::SIM_KEY, KeySource::Env("(bench)".into()))?;
    let gw = exagate::start(exagate::Launch::in_memory(config, key, listener))?;
    if let Some(shared) = &gw.gateway.shared {
        for _ in 0..200 {
            if shared.usable() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if !shared.usable() {
            return Err("a replica did not reach shared mode".into());
        }
    }
    Ok(gw)
}

/// An in-process simulator with jobs padded like the others'.
pub async fn sim(pending: Duration, processing: Duration) -> Result<Simulator, BoxError> {
    let sim = Simulator::start(SimOptions {
        api_key: crate::procs::SIM_KEY.to_string(),
        pending_for: pending,
        processing_for: processing,
        ..SimOptions::default()
    })
    .await?;
    sim.set_padding(PADDING);
    Ok(sim)
}

/// Points the simulated account's webhook at `gw`'s receiver (as `webhooks register`).
pub async fn register(sim: &Simulator, gw: &RunningGateway) -> Result<(), BoxError> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let body = format!(
        "{{\"webhookUrl\":\"{}/webhooks/exabase/{HOOK_SECRET}\"}}",
        gw.url()
    );
    let request = http::Request::put(format!("{}/v2/extract-settings", sim.url()))
        .header("x-api-key", crate::procs::SIM_KEY)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let response = client.request(request).await?;
    if !response.status().is_success() {
        return Err(format!(
            "the simulator refused the webhook URL: {}",
            response.status()
        )
        .into());
    }
    Ok(())
}

/// Runs the team workload with `jobs` jobs.
pub async fn team(jobs: usize, setup: Setup, full: bool) -> Result<TeamRun, BoxError> {
    let (pending, processing) = if full {
        (Duration::from_secs(2), Duration::from_secs(4))
    } else {
        (Duration::from_millis(800), Duration::from_millis(1500))
    };
    let upstream = sim(pending, processing).await?;
    let secret_dir = tempfile::tempdir()?;
    let mut gws = Vec::new();
    for _ in 0..setup.replicas {
        let hooks = setup.webhooks.then_some(secret_dir.path());
        gws.push(gateway(&upstream, setup.redis, hooks).await?);
    }
    if setup.webhooks {
        register(&upstream, &gws[0]).await?;
    }
    upstream.reset_counters();
    let addrs: Arc<Vec<std::net::SocketAddr>> = Arc::new(gws.iter().map(|g| g.addr).collect());
    let turn = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let upstream = Arc::new(upstream);
    for i in 0..jobs {
        let addrs = Arc::clone(&addrs);
        let turn = Arc::clone(&turn);
        let sim = Arc::clone(&upstream);
        let long_poll = setup.long_poll;
        tasks.push(tokio::spawn(async move {
            // Jobs are created over the first 1.5 s, as a team's would be, and polled on a
            // fixed schedule from then on: every run asks the same questions at the same
            // moments of each job's life, whatever its latencies.
            tokio::time::sleep(Duration::from_millis((i as u64 * 1500) / jobs as u64)).await;
            let id = sim.add_progressing(None);
            let mut tick = tokio::time::interval(Duration::from_millis(1500));
            let next = || addrs[turn.fetch_add(1, Ordering::Relaxed) % addrs.len()];
            let job = format!("/v2/extract/{id}");
            let waiting = format!("{job}?wait=30s");
            let chunks = format!("{job}/chunks");
            let mut failed = 0u64;
            let mut polls: Vec<(Instant, bool)> = Vec::new();
            // The creator polls (or long-polls) until completed.
            loop {
                if !long_poll {
                    tick.tick().await;
                }
                let path = if long_poll { &waiting } else { &job };
                let done = match Conn::open(next(), HeaderMap::new()).await {
                    Ok(mut c) => match c.get(path).await {
                        Ok(r) if r.status == 200 => {
                            r.body.windows(11).any(|w| w == b"\"completed\"")
                        }
                        _ => {
                            failed += 1;
                            false
                        }
                    },
                    Err(_) => {
                        failed += 1;
                        false
                    }
                };
                polls.push((Instant::now(), done));
                if done {
                    break;
                }
                if polls.len() > 200 {
                    failed += 1;
                    break;
                }
            }
            // The creator and four other apps read it.
            for reader in 0..5u64 {
                tokio::time::sleep(Duration::from_millis(37 * reader)).await;
                for path in [&job, &chunks] {
                    match Conn::open(next(), HeaderMap::new()).await {
                        Ok(mut c) => match c.get(path).await {
                            Ok(r) if r.status == 200 => {}
                            _ => failed += 1,
                        },
                        Err(_) => failed += 1,
                    }
                }
            }
            (id, failed, polls)
        }));
    }
    let mut failed = 0;
    let mut late = 0;
    let mut seen_after_ms = Vec::new();
    let attempts = {
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await?);
        }
        outcomes
    };
    let deliveries = upstream.webhooks();
    for (id, job_failed, polls) in attempts {
        failed += job_failed;
        let acked = deliveries
            .iter()
            .filter(|a| a.job == id && a.outcome.is_some_and(|s| (200..300).contains(&s)))
            .map(|a| a.at)
            .min();
        let Some(acked) = acked else { continue };
        late += polls
            .iter()
            .filter(|(at, done)| !done && *at > acked + Duration::from_secs(1))
            .count() as u64;
        if setup.long_poll {
            if let Some((at, _)) = polls.iter().find(|(_, done)| *done) {
                let ms = at.saturating_duration_since(acked).as_millis();
                seen_after_ms.push(u32::try_from(ms).unwrap_or(u32::MAX));
            }
        }
    }
    let calls = upstream.calls() as f64 / jobs as f64;
    for gw in gws {
        gw.shutdown().await;
    }
    if let Ok(sim) = Arc::try_unwrap(upstream) {
        sim.shutdown().await;
    }
    Ok(TeamRun {
        calls,
        failed,
        late,
        seen_after_ms,
    })
}

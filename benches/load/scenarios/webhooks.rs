//! (g) Webhooks: the team workload with the API's webhooks pointed at the gateway,
//! against the same workload without, as upstream calls per job (creators polling every
//! 1.5 s, or long-polling; one gateway, and two replicas sharing Redis); and long-poll
//! waiters held on one job by a gateway process: memory per waiter, and the delay from
//! the webhook's acknowledgement to the last waiter's answer.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::quantile;
use crate::procs::{self, Logging};
use crate::scenarios::shared::start_redis;
use crate::scenarios::team::{self, Setup, TeamRun, HOOK_SECRET};
use crate::{BoxError, Plan};

/// What (g) measured.
pub struct Webhooks {
    pub jobs: usize,
    /// Each run's label and figures; the first is webhooks off (the reference).
    pub runs: Vec<(String, TeamRun)>,
    pub waiters: Option<Waiters>,
}

/// Long-poll waiters held at once on one job.
pub struct Waiters {
    pub held: usize,
    /// RSS of the gateway with the job cached and no waiter, and with all held.
    pub idle_rss: u64,
    pub held_rss: u64,
    /// From the webhook's acknowledgement to each waiter's answer: median, last.
    pub median_ms: f64,
    pub last_ms: f64,
    /// Waiters answered `completed`.
    pub completed: usize,
    /// Upstream calls for the job while they waited.
    pub calls: usize,
    /// For comparison: RSS a fresh gateway process adds per idle keep-alive connection
    /// that has had one answer (what any held connection costs, waiting or not).
    pub idle_connection: f64,
}

impl Waiters {
    pub fn per_waiter(&self) -> f64 {
        self.held_rss.saturating_sub(self.idle_rss) as f64 / self.held.max(1) as f64
    }
}

pub fn measure(plan: &Plan, dir: &Path) -> Result<Webhooks, BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let jobs = if plan.warmup { 100 } else { 20 };
    let redis = start_redis()?;
    let mut setups = vec![
        (
            "webhooks off, polling every 1.5 s".to_string(),
            Setup {
                replicas: 1,
                redis: None,
                webhooks: false,
                long_poll: false,
            },
        ),
        (
            "webhooks on, polling every 1.5 s".to_string(),
            Setup {
                replicas: 1,
                redis: None,
                webhooks: true,
                long_poll: false,
            },
        ),
        (
            "webhooks on, long-polling".to_string(),
            Setup {
                replicas: 1,
                redis: None,
                webhooks: true,
                long_poll: true,
            },
        ),
    ];
    if let Some(redis) = &redis {
        setups.push((
            "webhooks on, 2 replicas sharing Redis, polling".to_string(),
            Setup {
                replicas: 2,
                redis: Some(redis.port),
                webhooks: true,
                long_poll: false,
            },
        ));
    }
    let mut runs = Vec::new();
    for (label, setup) in setups {
        let run = rt.block_on(team::team(jobs, setup, plan.warmup))?;
        let mut seen = run.seen_after_ms.clone();
        println!(
            "webhooks: {label}: {:.2} upstream calls per job, {} failed, {} late polls{}",
            run.calls,
            run.failed,
            run.late,
            if seen.is_empty() {
                String::new()
            } else {
                format!(
                    ", completion seen {:.0} ms (median) / {:.0} ms (max) after the webhook",
                    quantile(&mut seen, 0.5),
                    quantile(&mut seen, 1.0)
                )
            }
        );
        runs.push((label, run));
    }
    drop(redis);
    let held = if plan.warmup { 5000 } else { 500 };
    let waiters = rt.block_on(waiters(dir, held))?;
    println!(
        "webhooks: {} long-polls held: {:.0} B per waiter (an idle keep-alive connection: {:.0} B; RSS {} -> {}); answered {:.1} ms (median) / {:.1} ms (last) after the webhook; {} upstream calls",
        waiters.held,
        waiters.per_waiter(),
        waiters.idle_connection,
        procs::format_bytes(waiters.idle_rss),
        procs::format_bytes(waiters.held_rss),
        waiters.median_ms,
        waiters.last_ms,
        waiters.calls
    );
    Ok(Webhooks {
        jobs,
        runs,
        waiters: Some(waiters),
    })
}

/// `held` long-polls on one in-progress job through a gateway process, then the job
/// completes and the simulator's webhook reaches the gateway.
async fn waiters(dir: &Path, held: usize) -> Result<Waiters, BoxError> {
    procs::raise_nofile();
    let sim = team::sim(Duration::from_secs(600), Duration::from_secs(600)).await?;
    let secret = dir.join("waiters-webhook-secret");
    std::fs::write(&secret, HOOK_SECRET)?;
    // The public URL is filled in by the harness's config ([server]); the receiver's
    // public_url only matters to `webhooks register`, done here by hand.
    let extra = format!(
        "\n[webhooks]\nsecret_file = {:?}\npublic_url = \"http://127.0.0.1:1\"\n",
        secret.display().to_string()
    );
    let sim_addr = sim.addr();
    let gateway = procs::start_gateway_with(
        dir,
        "webhooks-waiters",
        sim_addr,
        Logging::Off,
        "256MiB",
        &extra,
    )?;
    let addr = gateway.addr;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let body = format!("{{\"webhookUrl\":\"http://{addr}/webhooks/exabase/{HOOK_SECRET}\"}}");
    let request = http::Request::put(format!("{}/v2/extract-settings", sim.url()))
        .header("x-api-key", crate::procs::SIM_KEY)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    client.request(request).await?;
    let id = sim.add_job(None, Some("processing"), time::OffsetDateTime::now_utc());
    let path = format!("/v2/extract/{id}");
    // One lookup: the job is cached (in progress, 15 s) and its scope known.
    let mut first = crate::client::Conn::open(addr, http::HeaderMap::new()).await?;
    first.get(&path).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = gateway.proc.rss_bytes()?;
    sim.reset_counters();
    let request = format!("GET {path}?wait=55s HTTP/1.1\r\nHost: bench\r\n\r\n");
    let mut tasks = Vec::with_capacity(held);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..held {
        let request = request.clone();
        let sent = std::sync::Arc::clone(&sent);
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
            stream.write_all(request.as_bytes()).await.ok()?;
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Reads the head and the body (Content-Length) of the one answer.
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            loop {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse::<usize>().ok())
                                .flatten()
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length {
                        let done = text[end..].contains("\"completed\"");
                        return Some((Instant::now(), done));
                    }
                }
            }
        }));
    }
    // Every waiter held by the gateway (connections beyond the accept backlog come in on
    // their SYN retries, seconds later) before the job completes.
    let admin = gateway.admin.ok_or("the gateway has no admin listener")?;
    let metrics: http::Uri = format!("http://{admin}/metrics").parse()?;
    let started = Instant::now();
    loop {
        let response = client.get(metrics.clone()).await?;
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await?
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        let waiting = text
            .lines()
            .find_map(|l| l.strip_prefix("exagate_longpoll_waiters "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let sent_now = sent.load(std::sync::atomic::Ordering::Relaxed);
        if waiting as usize >= held {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            // Some connections never made it (refused past the accept backlog): measure
            // with those that did, and say so.
            println!(
                "webhooks: {waiting} of {held} long-polls held after 30 s ({sent_now} sent); going on with those"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held_rss = gateway.proc.rss_bytes()?;
    sim.set_state(id, Some("completed"));
    let mut answered = Vec::new();
    for task in tasks {
        if let Ok(Some(outcome)) = task.await {
            answered.push(outcome);
        }
    }
    let acked = sim
        .webhooks()
        .iter()
        .filter(|a| a.job == id && a.outcome.is_some_and(|s| (200..300).contains(&s)))
        .map(|a| a.at)
        .min()
        .ok_or("the simulator's webhook never reached the gateway")?;
    let mut delays: Vec<u32> = answered
        .iter()
        .map(|(at, _)| {
            u32::try_from(at.saturating_duration_since(acked).as_micros()).unwrap_or(u32::MAX)
        })
        .collect();
    let completed = answered.iter().filter(|(_, done)| *done).count();
    let held = answered.len();
    let calls = sim.calls_to(&path);
    gateway.proc.stop();
    let idle_connection = idle_connections(dir, &sim, held).await?;
    sim.shutdown().await;
    Ok(Waiters {
        idle_connection,
        held,
        idle_rss,
        held_rss,
        median_ms: quantile(&mut delays, 0.5) / 1000.0,
        last_ms: quantile(&mut delays, 1.0) / 1000.0,
        completed,
        calls,
    })
}

/// RSS a fresh gateway process adds per keep-alive connection left idle after one answer
/// (of a completed job, a hit): the reference for what a waiter adds.
async fn idle_connections(
    dir: &Path,
    sim: &exagate::sim::Simulator,
    n: usize,
) -> Result<f64, BoxError> {
    let gateway = procs::start_gateway(dir, "webhooks-idle", sim.addr(), Logging::Off, "256MiB")?;
    let id = sim.add_completed(None);
    let path = format!("/v2/extract/{id}");
    let mut first = crate::client::Conn::open(gateway.addr, http::HeaderMap::new()).await?;
    first.get(&path).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = gateway.proc.rss_bytes()?;
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let mut conn = crate::client::Conn::open(gateway.addr, http::HeaderMap::new()).await?;
        conn.get(&path).await?;
        open.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = gateway.proc.rss_bytes()?;
    drop(open);
    gateway.proc.stop();
    Ok(after.saturating_sub(before) as f64 / n.max(1) as f64)
}

//! Coalescing at scale, with the simulator and the gateway in this process: the
//! simulator's call counters are only readable in-process (`Simulator::calls_to`), and
//! they count exactly what reached the upstream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use exagate::secret::{ApiKey, KeySource};
use exagate::sim::{Fault, SimOptions, Simulator};
use exagate::Config;
use http::HeaderMap;
use tokio::net::TcpListener;
use tokio::sync::Barrier;

use crate::client::Conn;
use crate::BoxError;

/// What the burst scenario saw.
pub struct Burst {
    pub clients: usize,
    /// Answered 200.
    pub answered: usize,
    /// Answered `x-cache: miss` (joined the fetch) rather than `hit` (came after it).
    pub misses: usize,
    /// Calls that reached the simulator for the job.
    pub upstream_calls: usize,
}

/// What the polling scenario saw.
pub struct Polling {
    pub clients: usize,
    pub jobs: usize,
    /// Wall time the clients polled for.
    pub elapsed: Duration,
    /// Requests answered 200, and others.
    pub answered: u64,
    pub failed: u64,
    /// Upstream calls per job: mean and max.
    pub mean_calls: f64,
    pub max_calls: usize,
    pub ttl: Duration,
}

impl Polling {
    /// Most calls a job may cost if it never costs more than one per `ttl`: calls at
    /// least `ttl` apart fit `floor(elapsed / ttl) + 1` times in the run.
    pub fn bound(&self) -> usize {
        (self.elapsed.as_secs_f64() / self.ttl.as_secs_f64()).floor() as usize + 1
    }

    /// Mean upstream calls per job per `ttl` of polling.
    pub fn calls_per_ttl(&self) -> f64 {
        self.mean_calls / (self.elapsed.as_secs_f64() / self.ttl.as_secs_f64())
    }
}

struct Setup {
    sim: Simulator,
    gateway: exagate::RunningGateway,
}

async fn setup() -> Result<Setup, BoxError> {
    let sim = Simulator::start(SimOptions {
        api_key: crate::procs::SIM_KEY.to_string(),
        ..SimOptions::default()
    })
    .await?;
    sim.set_padding(2048);
    let mut config = Config::defaults();
    config.upstream.url = sim.url();
    config.admin.listen = None;
    // Nothing may outlive a scenario; its clients are gone by the time it shuts down.
    config.server.shutdown_timeout = Duration::from_secs(2);
    config.server.drain_delay = Duration::ZERO;
    config.validate()?;
    let key = ApiKey::from_secret(crate::procs::SIM_KEY, KeySource::Env("(bench)".into()))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let gateway = exagate::start(exagate::Launch::in_memory(config, key, listener))?;
    Ok(Setup { sim, gateway })
}

/// `clients` connections ask for one cold job at the same moment, while the upstream
/// takes 200 ms to answer.
pub async fn burst(clients: usize) -> Result<Burst, BoxError> {
    let Setup { sim, gateway } = setup().await?;
    let job = sim.add_completed(None);
    let path = format!("/v2/extract/{job}");
    // A slow upstream keeps the fetch in flight while the whole burst arrives, so the
    // requests really are concurrent with it.
    sim.set_fault(Fault::Latency(Duration::from_millis(200)));
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Conn::open(gateway.addr, HeaderMap::new()).await?);
    }
    let barrier = Arc::new(Barrier::new(clients));
    let mut tasks = Vec::with_capacity(clients);
    for mut conn in conns {
        let barrier = Arc::clone(&barrier);
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            conn.get(&path).await
        }));
    }
    let (mut answered, mut misses) = (0, 0);
    for task in tasks {
        if let Ok(Ok(reply)) = task.await {
            if reply.status == 200 {
                answered += 1;
                if reply.header("x-cache") == "miss" {
                    misses += 1;
                }
            }
        }
    }
    let upstream_calls = sim.calls_to(&path);
    gateway.shutdown().await;
    sim.shutdown().await;
    Ok(Burst {
        clients,
        answered,
        misses,
        upstream_calls,
    })
}

/// `clients` connections each poll one of `jobs` pending jobs every 100 ms for
/// `duration`, with `in_progress_ttl` at its default.
pub async fn polling(clients: usize, jobs: usize, duration: Duration) -> Result<Polling, BoxError> {
    let Setup { sim, gateway } = setup().await?;
    let ttl = Config::defaults().cache.in_progress_ttl;
    let now = time::OffsetDateTime::now_utc();
    let ids: Vec<_> = (0..jobs)
        .map(|_| sim.add_job(None, Some("pending"), now))
        .collect();
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(Conn::open(gateway.addr, HeaderMap::new()).await?);
    }
    sim.reset_counters();
    let started = Instant::now();
    let end = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::with_capacity(clients);
    for (i, mut conn) in conns.into_iter().enumerate() {
        let path = format!("/v2/extract/{}", ids[i % jobs]);
        tasks.push(tokio::spawn(async move {
            // Clients start spread over the first 100 ms, as independent pollers would.
            let first = tokio::time::Instant::now()
                + Duration::from_micros((i as u64 * 100_000) / clients as u64);
            let mut tick = tokio::time::interval_at(first, Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut ok, mut failed) = (0u64, 0u64);
            loop {
                let at = tick.tick().await;
                if at >= end {
                    break;
                }
                match conn.get(&path).await {
                    Ok(reply) if reply.status == 200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut answered, mut failed) = (0, 0);
    for task in tasks {
        let (ok, bad) = task.await?;
        answered += ok;
        failed += bad;
    }
    let elapsed = started.elapsed();
    let calls: Vec<usize> = ids
        .iter()
        .map(|id| sim.calls_to(&format!("/v2/extract/{id}")))
        .collect();
    gateway.shutdown().await;
    sim.shutdown().await;
    Ok(Polling {
        clients,
        jobs,
        elapsed,
        answered,
        failed,
        mean_calls: calls.iter().sum::<usize>() as f64 / jobs as f64,
        max_calls: calls.iter().copied().max().unwrap_or(0),
        ttl,
    })
}

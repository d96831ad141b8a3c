//! (f) The shared tier (`[shared]`), against a real `redis-server` the harness starts on
//! a free loopback port: local-hit throughput with the tier on against off, two gateway
//! processes measured as the headline throughput is (local hits never touch Redis, so
//! they must match); then, in-process (the simulator's counters are read there), what a
//! hit from Redis costs over a local hit, and replicas behind round-robin under a team
//! workload, as upstream calls per job against one gateway's.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exagate::config::SharedConfig;
use exagate::secret::{ApiKey, KeySource};
use exagate::sim::{SimOptions, Simulator};
use exagate::{Config, RunningGateway};
use http::HeaderMap;
use tokio::net::TcpListener;

use std::path::Path;

use crate::client::{quantile, Conn};
use crate::procs::{self, Logging};
use crate::scenarios::{throughput, CONNS, PADDING};
use crate::{warm, wrk, BoxError, Plan, Tools};

/// What the shared-tier scenarios measured.
pub struct Shared {
    /// Local-hit throughput (req/s), best round each, tier off and on.
    pub off_rps: f64,
    pub on_rps: f64,
    /// Median latency of a local hit and of a hit from Redis (µs), and how many each.
    pub local_hit_us: f64,
    pub redis_hit_us: f64,
    pub samples: usize,
    /// The team workload's runs; the first is one gateway without Redis (the reference).
    pub teams: Vec<Team>,
    pub jobs: usize,
}

/// One run of the team workload.
pub struct Team {
    pub replicas: usize,
    /// Upstream calls per job.
    pub calls: f64,
    pub failed: u64,
}

impl Shared {
    /// Throughput with the tier on, as a share of off.
    pub fn hit_ratio(&self) -> f64 {
        self.on_rps / self.off_rps.max(1.0)
    }
}

/// A redis-server child on a free loopback port, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Result<Option<Redis>, BoxError> {
    if crate::procs::which("redis-server").is_none() {
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    let port = crate::procs::free_addr()?.port();
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(Some(Redis {
                child,
                port,
                _dir: dir,
            }));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err("redis-server did not start".into())
}

async fn gateway(sim: &Simulator, redis: Option<&Redis>) -> Result<RunningGateway, BoxError> {
    let mut config = Config::defaults();
    config.upstream.url = sim.url();
    config.admin.listen = None;
    config.server.shutdown_timeout = Duration::from_secs(2);
    config.server.drain_delay = Duration::ZERO;
    config.shared = redis.map(|r| SharedConfig {
        redis_url: Some(format!("redis://127.0.0.1:{}/0", r.port)),
        redis_url_env: None,
        namespace: "exagate-bench".into(),
        timeout: Duration::from_millis(250),
        max_replicas: 3,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    config.server.listen = listener.local_addr()?;
    config.server.public_url = format!("http://{}", config.server.listen);
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

async fn sim(pending: Duration, processing: Duration) -> Result<Simulator, BoxError> {
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

/// Runs the three; `None` when redis-server is not installed.
pub fn measure(plan: &Plan, tools: &Tools, dir: &Path) -> Result<Option<Shared>, BoxError> {
    let Some(redis) = start_redis()? else {
        println!("shared: no redis-server on this machine, skipped");
        return Ok(None);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (off_rps, on_rps) = local_hits(plan, tools, dir, &redis, &rt)?;
    rt.block_on(run(plan, &redis, off_rps, on_rps)).map(Some)
}

/// Local-hit throughput of two gateway processes in front of one simulator, one with
/// `[shared]` and one without, measured as the headline throughput is (wrk when
/// installed), rounds in ABBA order so neither gets the quieter half of the run.
fn local_hits(
    plan: &Plan,
    tools: &Tools,
    dir: &Path,
    redis: &Redis,
    rt: &tokio::runtime::Runtime,
) -> Result<(f64, f64), BoxError> {
    let jobs = plan.hit_jobs.min(1000);
    let sim = procs::start_sim(dir, "shared-sim", jobs, PADDING)?;
    let paths: Arc<Vec<String>> = Arc::new(
        sim.ids
            .iter()
            .map(|id| format!("/v2/extract/{id}"))
            .collect(),
    );
    let shared = format!(
        "\n[shared]\nredis_url = \"redis://127.0.0.1:{}/0\"\nnamespace = \"exagate-bench\"\n",
        redis.port
    );
    let off = procs::start_gateway(dir, "shared-off", sim.addr, Logging::Off, "256MiB")?;
    let on =
        procs::start_gateway_with(dir, "shared-on", sim.addr, Logging::Off, "256MiB", &shared)?;
    // Shared mode is on within a few probes.
    std::thread::sleep(Duration::from_millis(1500));
    for server in [&off, &on] {
        rt.block_on(warm::gateway(server.addr, &paths))?;
    }
    let script = wrk::write_script(dir, &paths)?;
    let (mut off_rps, mut on_rps) = (0f64, 0f64);
    for round in 0..plan.rounds.max(2) * 2 {
        let on_now = round % 4 == 1 || round % 4 == 2;
        let server = if on_now { &on } else { &off };
        let t = throughput::once(rt, tools, &script, &paths, server, CONNS, plan.duration)?;
        let best = if on_now { &mut on_rps } else { &mut off_rps };
        *best = best.max(t.rps);
    }
    println!("shared: local hits {off_rps:.0} req/s with the tier off, {on_rps:.0} on");
    on.proc.stop();
    off.proc.stop();
    sim.proc.stop();
    Ok((off_rps, on_rps))
}

async fn run(plan: &Plan, redis: &Redis, off_rps: f64, on_rps: f64) -> Result<Shared, BoxError> {
    let upstream = sim(Duration::from_secs(1), Duration::from_secs(1)).await?;
    let on = gateway(&upstream, Some(redis)).await?;
    // A hit from Redis against a local hit: jobs filled through one replica, then read
    // twice through another.
    let other = gateway(&upstream, Some(redis)).await?;
    let samples = if plan.warmup { 300 } else { 60 };
    let mut filler = Conn::open(on.addr, HeaderMap::new()).await?;
    let mut reader = Conn::open(other.addr, HeaderMap::new()).await?;
    let (mut remote, mut local) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let id = upstream.add_completed(None);
        let path = format!("/v2/extract/{id}");
        filler.get(&path).await?;
        // The fill's write to Redis runs after its answer.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = Instant::now();
        let first = reader.get(&path).await?;
        let took = t.elapsed();
        if first.header("x-cache") != "hit" {
            continue;
        }
        remote.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        let t = Instant::now();
        reader.get(&path).await?;
        local.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    let (redis_hit_us, local_hit_us) = (quantile(&mut remote, 0.5), quantile(&mut local, 0.5));
    println!(
        "shared: {} reads: a hit from Redis {redis_hit_us:.0} µs, a local hit {local_hit_us:.0} µs (medians)",
        remote.len()
    );
    for gw in [on, other] {
        gw.shutdown().await;
    }
    upstream.shutdown().await;

    // Replicas behind round-robin, a team workload each time on a fresh simulator and a
    // fresh Redis namespace (a new simulator is a new upstream URL: a new fingerprint).
    let jobs = if plan.warmup { 100 } else { 20 };
    let mut teams = Vec::new();
    for (n, shared) in [(1usize, false), (2, true), (3, true)] {
        let (calls, failed) = team(jobs, n, shared.then_some(redis), plan.warmup).await?;
        println!(
            "shared: {n} replica(s){}: {calls:.2} upstream calls per job, {failed} failed",
            if shared { " sharing Redis" } else { " alone" }
        );
        teams.push(Team {
            replicas: n,
            calls,
            failed,
        });
    }
    Ok(Shared {
        off_rps,
        on_rps,
        local_hit_us,
        redis_hit_us,
        samples: remote.len(),
        teams,
        jobs,
    })
}

/// The team workload: `jobs` jobs, each polled by its creator every 1.5 s until it is
/// completed, then read (job and chunks) by 4 other apps; every request goes to the next
/// replica in turn. Returns upstream calls per job and failed requests.
async fn team(
    jobs: usize,
    replicas: usize,
    redis: Option<&Redis>,
    full: bool,
) -> Result<(f64, u64), BoxError> {
    let (pending, processing) = if full {
        (Duration::from_secs(2), Duration::from_secs(4))
    } else {
        (Duration::from_millis(800), Duration::from_millis(1500))
    };
    let upstream = sim(pending, processing).await?;
    let mut gws = Vec::new();
    for _ in 0..replicas {
        gws.push(gateway(&upstream, redis).await?);
    }
    let addrs: Arc<Vec<std::net::SocketAddr>> = Arc::new(gws.iter().map(|g| g.addr).collect());
    let turn = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let upstream = Arc::new(upstream);
    for i in 0..jobs {
        let addrs = Arc::clone(&addrs);
        let turn = Arc::clone(&turn);
        let sim = Arc::clone(&upstream);
        tasks.push(tokio::spawn(async move {
            // Jobs are created over the first 1.5 s, as a team's would be, and polled on a
            // fixed schedule from then on: every run asks the same questions at the same
            // moments of each job's life, whatever its latencies.
            tokio::time::sleep(Duration::from_millis((i as u64 * 1500) / jobs as u64)).await;
            let id = sim.add_progressing(None);
            let mut tick = tokio::time::interval(Duration::from_millis(1500));
            let next = || addrs[turn.fetch_add(1, Ordering::Relaxed) % addrs.len()];
            let job = format!("/v2/extract/{id}");
            let chunks = format!("{job}/chunks");
            let mut failed = 0u64;
            // The creator polls until completed.
            loop {
                tick.tick().await;
                let done = match Conn::open(next(), HeaderMap::new()).await {
                    Ok(mut c) => match c.get(&job).await {
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
                if done {
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
            failed
        }));
    }
    let mut failed = 0;
    for task in tasks {
        failed += task.await?;
    }
    let calls = upstream.calls() as f64 / jobs as f64;
    for gw in gws {
        gw.shutdown().await;
    }
    if let Ok(sim) = Arc::try_unwrap(upstream) {
        sim.shutdown().await;
    }
    Ok((calls, failed))
}

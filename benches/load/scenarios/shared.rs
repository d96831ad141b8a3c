//! (f) The shared tier (`[shared]`), against a real `redis-server` the harness starts on
//! a free loopback port: local-hit throughput with the tier on against off, two gateway
//! processes measured as the headline throughput is (local hits never touch Redis, so
//! they must match); then, in-process (the simulator's counters are read there), what a
//! hit from Redis costs over a local hit, and replicas behind round-robin under a team
//! workload, as upstream calls per job against one gateway's.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;

use std::path::Path;

use crate::client::{quantile, Conn};
use crate::procs::{self, Logging};
use crate::scenarios::{team, throughput, CONNS, PADDING};
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
pub struct Redis {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_redis() -> Result<Option<Redis>, BoxError> {
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
        let t = throughput::once(
            rt,
            tools,
            &script,
            &paths,
            server,
            CONNS,
            plan.duration,
            &HeaderMap::new(),
        )?;
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
    let upstream = team::sim(Duration::from_secs(1), Duration::from_secs(1)).await?;
    let on = team::gateway(&upstream, Some(redis.port), None).await?;
    // A hit from Redis against a local hit: jobs filled through one replica, then read
    // twice through another.
    let other = team::gateway(&upstream, Some(redis.port), None).await?;
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
        let setup = team::Setup {
            replicas: n,
            redis: shared.then_some(redis.port),
            webhooks: false,
            long_poll: false,
        };
        let team::TeamRun { calls, failed, .. } = team::team(jobs, setup, plan.warmup).await?;
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

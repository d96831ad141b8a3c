//! The load harness: exagate against a bare hyper server and nginx `proxy_cache`, side
//! by side in one run, reported as ratios against the tracker's targets.
//!
//! ```text
//! cargo bench --bench load               # full: a few minutes on 2 cores
//! cargo bench --bench load -- --quick    # every scenario for about a second (CI)
//! ```
//!
//! Options (after `--`):
//! - `--quick`: every scenario briefly, fewer jobs; results go to `quick.md`/`quick.svg`;
//! - `--install` / `--no-install`: wrk and nginx through apt-get when missing. The full
//!   mode installs them by default when run as root, the quick mode only with
//!   `--install`. Without wrk, throughput is measured with the harness's own client;
//!   without nginx, its column is skipped; the output says so;
//! - `--only hits,miss,memory,coalescing`: a subset (results go to `partial.md`);
//! - `--latency-load F`: the open-loop rate as a share of the lower measured throughput
//!   of the gateway and the bare server (default 0.25);
//! - `--without wrk,nginx`: act as if a tool were missing (exercises the fallbacks);
//! - `--keep`: keep the temporary directory with the generated configs and logs.
//!
//! `cargo bench` builds the `exagate` binary in the same (release-based) profile before
//! this harness and tells it where (`CARGO_BIN_EXE_exagate`); `EXAGATE_BIN` overrides.
//!
//! What runs, all on 127.0.0.1, each process started from a generated config in a
//! temporary directory and stopped at the end:
//! - `exagate sim` with a few thousand completed jobs padded to ~2 KB;
//! - the gateway in front of it (`exagate --config`, key from `EXABASE_API_KEY`, access
//!   log to a file through stderr at `info`, or `warn` for "log off");
//! - a bare hyper server (this binary, `--serve-bare`) answering the gateway's own
//!   rewritten bodies from a `HashMap`, same stack, one tracing line per request when
//!   logging is on;
//! - nginx with `proxy_cache` doing the same job: key injected, links rewritten to its
//!   own origin with `sub_filter`, `Accept-Encoding` cleared, 200s kept for 10 minutes,
//!   `access_log` to a file or off.
//!
//! Scenarios: (a) hit throughput, wrk with a Lua script cycling through the job paths,
//! 50 connections, log on and off; a sweep over 10/50/100/200 connections for the
//! chart; (b) hit p99 at one offered load for all three (our open-loop client, see
//! `client::open_loop`); (c) miss overhead, cold jobs one at a time over keep-alive,
//! through the gateway and straight to the simulator, interleaved; (d) RSS of a fresh
//! gateway before and after caching 100,000 jobs; (e) coalescing, in-process: a burst of
//! 1000 concurrent requests for one cold job, and 1000 clients polling 100 pending jobs
//! every 100 ms.
//!
//! Output: one Markdown table (printed, and written to `benches/results/latest.md`, or
//! `quick.md` in quick mode) and `benches/results/throughput.svg` (`quick.svg`).

mod bare;
mod client;
mod inproc;
mod procs;
mod report;
mod wrk;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use client::{Conn, LoadResult, Stop};
use procs::{Logging, Server};
use report::{micros, rps, Curve, Row, Verdict};

pub type BoxError = client::BoxError;

/// Command-line options.
struct Options {
    quick: bool,
    /// `Some(true)`: install missing tools; `Some(false)`: never; `None`: the mode's
    /// default.
    install: Option<bool>,
    keep: bool,
    /// Scenarios to run; empty for all.
    only: Vec<Scenario>,
    /// See [`DEFAULT_LATENCY_LOAD`].
    latency_load: f64,
    /// Tools to act as if missing (`wrk`, `nginx`), to exercise the fallbacks.
    without: Vec<&'static str>,
}

/// Scenario groups that `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Hit throughput, the connection sweep, open-loop latency.
    Hits,
    /// Miss overhead.
    Miss,
    /// RSS for cached jobs.
    Memory,
    /// The burst and the polling storm.
    Coalescing,
}

impl Scenario {
    fn parse(name: &str) -> Option<Scenario> {
        match name {
            "hits" => Some(Scenario::Hits),
            "miss" => Some(Scenario::Miss),
            "memory" => Some(Scenario::Memory),
            "coalescing" => Some(Scenario::Coalescing),
            _ => None,
        }
    }
}

impl Options {
    fn runs(&self, scenario: Scenario) -> bool {
        self.only.is_empty() || self.only.contains(&scenario)
    }
}

/// Sizes and durations of one run.
struct Plan {
    sim_jobs: usize,
    hit_jobs: usize,
    miss_jobs: usize,
    /// One throughput measurement.
    duration: Duration,
    /// Throughput measurements per server and logging mode; the best is kept.
    rounds: usize,
    warmup: bool,
    sweep: Vec<usize>,
    sweep_duration: Duration,
    latency_duration: Duration,
    /// Open-loop runs per server and logging mode; the lowest p99 is kept.
    latency_rounds: usize,
    memory_jobs: usize,
    burst_clients: usize,
    poll_clients: usize,
    poll_jobs: usize,
    poll_duration: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                sim_jobs: 600,
                hit_jobs: 300,
                miss_jobs: 100,
                duration: Duration::from_secs(1),
                rounds: 1,
                warmup: false,
                sweep: vec![10, 50],
                sweep_duration: Duration::from_secs(1),
                latency_duration: Duration::from_secs(1),
                latency_rounds: 1,
                memory_jobs: 10_000,
                burst_clients: 1000,
                poll_clients: 1000,
                poll_jobs: 100,
                poll_duration: Duration::from_secs(2),
            }
        } else {
            Plan {
                sim_jobs: 5000,
                hit_jobs: 3000,
                miss_jobs: 500,
                duration: Duration::from_secs(5),
                rounds: 3,
                warmup: true,
                sweep: vec![10, 50, 100, 200],
                sweep_duration: Duration::from_secs(3),
                latency_duration: Duration::from_secs(5),
                latency_rounds: 2,
                memory_jobs: 100_000,
                burst_clients: 1000,
                poll_clients: 1000,
                poll_jobs: 100,
                poll_duration: Duration::from_secs(5),
            }
        }
    }
}

/// Connections of the headline throughput and latency scenarios.
const CONNS: usize = 50;
/// Bytes the simulator pads each job to.
const PADDING: usize = 2048;
/// The offered load of the open-loop latency scenario, as a share of the lower of the
/// gateway's and the bare server's measured (closed-loop) throughput. The load generator
/// shares the two cores with the server, so a share well below 1 keeps the machine busy
/// without saturating it: the figure is then the server's latency, not a queue's.
const DEFAULT_LATENCY_LOAD: f64 = 0.25;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve-bare") {
        return serve_bare(&args[1..]);
    }
    let mut options = Options {
        quick: false,
        install: None,
        keep: false,
        only: Vec::new(),
        latency_load: DEFAULT_LATENCY_LOAD,
        without: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--only" => {
                let list = args.next().map(String::as_str).unwrap_or("");
                for name in list.split(',') {
                    match Scenario::parse(name) {
                        Some(s) => options.only.push(s),
                        None => {
                            eprintln!(
                                "load: --only takes hits,miss,memory,coalescing, not {name:?}"
                            );
                            return ExitCode::FAILURE;
                        }
                    }
                }
            }
            "--without" => {
                for name in args.next().map(String::as_str).unwrap_or("").split(',') {
                    match name {
                        "wrk" => options.without.push("wrk"),
                        "nginx" => options.without.push("nginx"),
                        _ => {
                            eprintln!("load: --without takes wrk,nginx, not {name:?}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
            }
            "--latency-load" => match args.next().and_then(|v| v.parse::<f64>().ok()) {
                Some(v) if v > 0.0 && v <= 2.0 => options.latency_load = v,
                _ => {
                    eprintln!("load: --latency-load takes a share like 0.25");
                    return ExitCode::FAILURE;
                }
            },
            "--quick" => options.quick = true,
            "--install" => options.install = Some(true),
            "--no-install" => options.install = Some(false),
            "--keep" => options.keep = true,
            // cargo passes `--bench` to every bench binary.
            "--bench" => {}
            "-h" | "--help" => {
                println!(
                    "cargo bench --bench load [-- [--quick] [--install|--no-install] \
                     [--only hits,miss,memory,coalescing] [--latency-load 0.25] [--without wrk,nginx] [--keep]]"
                );
                return ExitCode::SUCCESS;
            }
            other => eprintln!("load: ignoring unknown argument {other:?}"),
        }
    }
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve_bare(args: &[String]) -> ExitCode {
    let (Some(addr), Some(bodies)) = (args.first(), args.get(1)) else {
        eprintln!("usage: load --serve-bare ADDR BODIES [--log]");
        return ExitCode::FAILURE;
    };
    let log = args.get(2).map(String::as_str) == Some("--log");
    let result = addr
        .parse::<SocketAddr>()
        .map_err(BoxError::from)
        .and_then(|addr| bare::serve(addr, Path::new(bodies), log));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The external tools found (or installed).
struct Tools {
    wrk: bool,
    nginx: bool,
    notes: Vec<String>,
}

fn tools(options: &Options) -> Tools {
    let install = options.install.unwrap_or(!options.quick);
    let mut notes = Vec::new();
    let mut missing = Vec::new();
    if procs::which("wrk").is_none() {
        missing.push("wrk");
    }
    if procs::nginx_bin().is_none() {
        missing.push("nginx");
    }
    if !missing.is_empty() && install {
        println!("installing {} with apt-get ...", missing.join(", "));
        if let Err(e) = procs::apt_install(&missing) {
            notes.push(format!("could not install {}: {e}", missing.join(", ")));
        }
    }
    let wrk = procs::which("wrk").is_some() && !options.without.contains(&"wrk");
    let nginx = procs::nginx_bin().is_some() && !options.without.contains(&"nginx");
    if !wrk {
        notes.push(
            "wrk is not installed (or left out): throughput measured with the harness's own \
             closed-loop client (same connections and duration; run with --install for wrk)"
                .to_string(),
        );
    }
    if !nginx {
        notes.push(
            "nginx is not installed (or left out): its column is skipped (run with --install)"
                .to_string(),
        );
    }
    Tools { wrk, nginx, notes }
}

/// One throughput measurement.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    rps: f64,
    p99_us: f64,
    errors: u64,
}

/// One open-loop latency measurement.
#[derive(Debug, Clone, Copy)]
struct Latency {
    offered: f64,
    achieved: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

/// Miss latencies (medians, µs) of one logging mode.
#[derive(Debug, Clone, Copy, Default)]
struct Miss {
    direct: f64,
    gateway: f64,
    nginx: Option<f64>,
    /// Median of the per-job differences, gateway minus direct.
    gateway_added: f64,
    nginx_added: Option<f64>,
    jobs: usize,
    /// From the gateway's access log (log on only): median `upstream_us` and
    /// `duration_us` of these misses; what the gateway itself measured.
    logged: Option<(f64, f64)>,
}

/// Everything measured with one logging mode. Index 0 is exagate, 1 bare, 2 nginx.
struct Phase {
    logging: Logging,
    throughput: [Option<Throughput>; 3],
    latency: [Option<Latency>; 3],
    miss: Option<Miss>,
}

/// RSS of the gateway before and after caching `jobs` jobs.
struct Memory {
    jobs: usize,
    body_bytes: u64,
    empty_rss: u64,
    full_rss: u64,
    peak_rss: u64,
    /// Hits among the re-asked sample, and the sample's size.
    hits_sampled: (u64, u64),
}

/// Everything one run measured; what `--only` left out is absent.
#[derive(Default)]
struct Results {
    phases: Vec<Phase>,
    curves: Vec<Curve>,
    memory: Option<Memory>,
    burst: Option<inproc::Burst>,
    polling: Option<inproc::Polling>,
}

const NAMES: [&str; 3] = ["exagate", "bare hyper", "nginx"];

fn run(options: &Options) -> Result<(), BoxError> {
    let started = Instant::now();
    procs::raise_nofile();
    let plan = Plan::new(options.quick);
    let tools = tools(options);
    let machine = procs::machine();
    let mode = match (options.quick, options.only.is_empty()) {
        (true, _) => "quick",
        (false, true) => "full",
        (false, false) => "partial",
    };
    println!("exagate load harness, {mode} mode");
    println!("machine: {machine}");
    // A busy machine skews every figure; say so up front rather than after minutes.
    if let Some((all0, mine0)) = procs::cpu_seconds() {
        std::thread::sleep(Duration::from_secs(1));
        if let Some((all1, mine1)) = procs::cpu_seconds() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let busy = ((all1 - all0) - (mine1 - mine0)) / cores;
            if busy > 0.1 {
                println!(
                    "warning: other processes are using {:.0}% of the CPU; figures will be skewed",
                    busy * 100.0
                );
            }
        }
    }
    let bin = procs::exagate_bin();
    if !bin.exists() {
        return Err(format!("{} does not exist (cargo bench builds it)", bin.display()).into());
    }
    let dir = std::env::temp_dir().join(format!("exagate-load-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    // The servers' logs go here: a full disk once made the logging bare server fail
    // every request (CI), so say how much room there is up front.
    let free = procs::free_bytes(&dir);
    println!(
        "work dir: {} ({} free)",
        dir.display(),
        free.map_or_else(|| "unknown".to_string(), procs::format_bytes)
    );
    if free.is_some_and(|f| f < 512 * 1024 * 1024) {
        println!("warning: little free disk; the logging scenarios may fail for want of it");
    }
    let steal_before = procs::cpu_steal();
    let cpu_before = procs::cpu_seconds();
    let result = measure(options, &plan, &tools, &dir);
    let others = cpu_before
        .zip(procs::cpu_seconds())
        .map(|((all0, mine0), (all1, mine1))| ((all1 - all0) - (mine1 - mine0)).max(0.0));
    let steal = steal_before
        .zip(procs::cpu_steal())
        .map(|((s0, t0), (s1, t1))| (s1 - s0) as f64 / (t1 - t0).max(1) as f64);
    if options.keep {
        println!("kept {}", dir.display());
    } else {
        let _ = fs::remove_dir_all(&dir);
    }
    let results = result?;

    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    fs::create_dir_all(&out)?;
    // Only a full run replaces the committed results.
    let (md, svg) = match mode {
        "full" => ("latest.md", "throughput.svg"),
        "quick" => ("quick.md", "quick.svg"),
        _ => ("partial.md", "partial.svg"),
    };
    let rows = rows(&plan, &results);
    let mut notes = tools.notes.clone();
    notes.extend(run_notes(&plan, &results.phases));
    if let Some(others) = others {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let share = others / (started.elapsed().as_secs_f64() * cores);
        notes.push(format!(
            "CPU taken by other processes on the machine during the run: {others:.1} core-s \
             ({:.1}% of its capacity){}",
            share * 100.0,
            if share > 0.05 {
                " — something else was busy (a build?): rerun on a quiet machine"
            } else {
                ""
            }
        ));
    }
    if let Some(steal) = steal {
        notes.push(format!(
            "CPU time stolen by the hypervisor during the run: {:.1}%",
            steal * 100.0
        ));
    }
    let chart = (!results.curves.is_empty()).then_some(svg);
    let text = document(
        mode, &machine, &tools, &plan, options, &rows, &notes, started, chart,
    );
    println!("\n{text}");
    fs::write(out.join(md), &text)?;
    println!("wrote {}", out.join(md).display());
    if let Some(svg) = chart {
        report::chart(
            &out.join(svg),
            &results.curves,
            &format!("{mode} run, access log off; {machine}"),
        )?;
        println!("wrote {}", out.join(svg).display());
    }
    println!("done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn measure(options: &Options, plan: &Plan, tools: &Tools, dir: &Path) -> Result<Results, BoxError> {
    let mut results = Results::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if options.runs(Scenario::Hits) || options.runs(Scenario::Miss) {
        results.phases = phases(options, plan, tools, dir, &rt, &mut results.curves)?;
    }
    if options.runs(Scenario::Memory) {
        println!("\n== memory");
        let memory = memory(&rt, dir, plan.memory_jobs)?;
        println!(
            "memory: {} jobs, {} body bytes, RSS {} -> {} (peak {}), {}/{} sampled hits",
            memory.jobs,
            memory.body_bytes,
            memory.empty_rss,
            memory.full_rss,
            memory.peak_rss,
            memory.hits_sampled.0,
            memory.hits_sampled.1
        );
        results.memory = Some(memory);
    }
    drop(rt);
    if options.runs(Scenario::Coalescing) {
        println!("\n== coalescing (in-process)");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let burst = rt.block_on(inproc::burst(plan.burst_clients))?;
        println!(
            "burst: {} clients, {} answered ({} joined the fetch), {} upstream call(s)",
            burst.clients, burst.answered, burst.misses, burst.upstream_calls
        );
        let polling = rt.block_on(inproc::polling(
            plan.poll_clients,
            plan.poll_jobs,
            plan.poll_duration,
        ))?;
        println!(
            "polling: {} clients, {} jobs, {:.1} s, {} answered, {} failed, \
             calls per job mean {:.2} max {} (bound {})",
            polling.clients,
            polling.jobs,
            polling.elapsed.as_secs_f64(),
            polling.answered,
            polling.failed,
            polling.mean_calls,
            polling.max_calls,
            polling.bound()
        );
        results.burst = Some(burst);
        results.polling = Some(polling);
    }
    Ok(results)
}

/// The scenarios that need the three servers up: hits (a, b) and misses (c), once with
/// access logging off and once on. Each mode gets fresh processes.
fn phases(
    options: &Options,
    plan: &Plan,
    tools: &Tools,
    dir: &Path,
    rt: &tokio::runtime::Runtime,
    curves: &mut Vec<Curve>,
) -> Result<Vec<Phase>, BoxError> {
    let hits = options.runs(Scenario::Hits);
    let sim = procs::start_sim(dir, "sim", plan.sim_jobs, PADDING)?;
    let path_of = |id: &String| format!("/v2/extract/{id}");
    let hit_paths: Arc<Vec<String>> =
        Arc::new(sim.ids[..plan.hit_jobs].iter().map(path_of).collect());
    let gw_miss: Vec<String> = sim.ids[plan.hit_jobs..plan.hit_jobs + plan.miss_jobs]
        .iter()
        .map(path_of)
        .collect();
    let nginx_miss: Vec<String> = sim.ids
        [plan.hit_jobs + plan.miss_jobs..plan.hit_jobs + 2 * plan.miss_jobs]
        .iter()
        .map(path_of)
        .collect();
    let script = wrk::write_script(dir, &hit_paths)?;
    let bodies_file = dir.join("bodies.bin");

    // Every job is rendered by the simulator once before anything is timed, so neither
    // side of the miss comparison pays for the simulator's own first render.
    rt.block_on(async {
        let mut direct = Conn::open(sim.addr, sim_headers()).await?;
        let all: Vec<String> = sim.ids.iter().map(path_of).collect();
        client::sequential(&mut direct, &all).await?;
        Ok::<_, BoxError>(())
    })?;

    let mut phases = Vec::new();
    let mut bare_bodies = Vec::new();
    for logging in [Logging::Off, Logging::On] {
        let tag = match logging {
            Logging::Off => "off",
            Logging::On => "on",
        };
        println!("\n== access log {tag}");
        let gateway =
            procs::start_gateway(dir, &format!("gateway-{tag}"), sim.addr, logging, "1GiB")?;
        let bodies = rt.block_on(warm_gateway(gateway.addr, &hit_paths))?;
        // The bare server serves the first phase's bodies in both phases (the same bytes
        // but for the gateway's address in the links).
        if logging == Logging::Off {
            bare::save_bodies(&bodies_file, &bodies)?;
            bare_bodies = bodies;
        }
        let bare = procs::start_bare(dir, &format!("bare-{tag}"), &bodies_file, logging)?;
        rt.block_on(check_bare(bare.addr, &bare_bodies))
            .map_err(|e| format!("{e}\n{}", bare.proc.diagnose()))?;
        let nginx = if tools.nginx {
            let nginx = procs::start_nginx(dir, &format!("nginx-{tag}"), sim.addr, logging)?;
            rt.block_on(warm_nginx(nginx.addr, sim.addr, &hit_paths))?;
            Some(nginx)
        } else {
            None
        };
        let servers: [Option<&Server>; 3] = [Some(&gateway), Some(&bare), nginx.as_ref()];
        let mut phase = Phase {
            logging,
            throughput: [None; 3],
            latency: [None; 3],
            miss: None,
        };
        if hits {
            phase.throughput = hit_throughput(plan, tools, rt, &script, &hit_paths, &servers)?;
            if logging == Logging::Off {
                *curves = sweep(plan, tools, rt, &script, &hit_paths, &servers)?;
            }
            let offered = options.latency_load
                * phase.throughput[0]
                    .map_or(0.0, |t| t.rps)
                    .min(phase.throughput[1].map_or(0.0, |t| t.rps));
            phase.latency = hit_latency(plan, rt, &hit_paths, &servers, offered)?;
        }
        if options.runs(Scenario::Miss) {
            let miss = rt.block_on(miss_overhead(
                sim.addr,
                gateway.addr,
                nginx.as_ref().map(|n| n.addr),
                &gw_miss,
                &nginx_miss,
            ))?;
            println!(
                "miss: direct {:.0} µs, gateway {:.0} µs (+{:.0}), nginx {}",
                miss.direct,
                miss.gateway,
                miss.gateway_added,
                miss.nginx.map_or("—".to_string(), |n| format!(
                    "{n:.0} µs (+{:.0})",
                    miss.nginx_added.unwrap_or(f64::NAN)
                ))
            );
            let mut miss = miss;
            if logging == Logging::On {
                miss.logged = logged_miss_times(&gateway.proc.stderr, &gw_miss);
            }
            phase.miss = Some(miss);
        }
        phases.push(phase);
        drop(nginx);
        bare.proc.stop();
        gateway.proc.stop();
    }
    sim.proc.stop();
    Ok(phases)
}

/// (a) Throughput at 50 connections: interleaved rounds, the best of each server kept.
fn hit_throughput(
    plan: &Plan,
    tools: &Tools,
    rt: &tokio::runtime::Runtime,
    script: &Path,
    paths: &Arc<Vec<String>>,
    servers: &[Option<&Server>; 3],
) -> Result<[Option<Throughput>; 3], BoxError> {
    if plan.warmup {
        for server in servers.iter().flatten() {
            throughput(
                rt,
                tools,
                script,
                paths,
                server,
                CONNS,
                Duration::from_secs(1),
            )?;
        }
    }
    let mut best: [Option<Throughput>; 3] = [None; 3];
    for round in 0..plan.rounds {
        for (i, server) in servers.iter().enumerate() {
            let Some(server) = server else { continue };
            let t = throughput(rt, tools, script, paths, server, CONNS, plan.duration)?;
            println!(
                "throughput {:<10} round {}: {:>8.0} req/s, p99 {:>7.0} µs, {} errors",
                NAMES[i],
                round + 1,
                t.rps,
                t.p99_us,
                t.errors
            );
            if best[i].is_none_or(|b| t.rps > b.rps) {
                best[i] = Some(t);
            }
        }
    }
    Ok(best)
}

/// The chart's sweep over connection counts, levels interleaved across servers.
fn sweep(
    plan: &Plan,
    tools: &Tools,
    rt: &tokio::runtime::Runtime,
    script: &Path,
    paths: &Arc<Vec<String>>,
    servers: &[Option<&Server>; 3],
) -> Result<Vec<Curve>, BoxError> {
    let mut points: [Vec<(usize, f64, f64)>; 3] = Default::default();
    for &conns in &plan.sweep {
        for (i, server) in servers.iter().enumerate() {
            let Some(server) = server else { continue };
            let t = throughput(rt, tools, script, paths, server, conns, plan.sweep_duration)?;
            println!(
                "sweep {:<10} {:>3} conns: {:>8.0} req/s, p99 {:>7.0} µs",
                NAMES[i], conns, t.rps, t.p99_us
            );
            points[i].push((conns, t.rps, t.p99_us));
        }
    }
    Ok(points
        .into_iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty())
        .map(|(i, points)| Curve {
            server: NAMES[i],
            points,
        })
        .collect())
}

/// (b) Latency at one offered load, the same for all three servers.
fn hit_latency(
    plan: &Plan,
    rt: &tokio::runtime::Runtime,
    paths: &Arc<Vec<String>>,
    servers: &[Option<&Server>; 3],
    offered: f64,
) -> Result<[Option<Latency>; 3], BoxError> {
    let mut latency: [Option<Latency>; 3] = [None; 3];
    if offered <= 0.0 {
        return Ok(latency);
    }
    // Interleaved rounds, the lowest p99 of each server kept: noise from the rest of
    // the machine only ever adds latency.
    for round in 0..plan.latency_rounds {
        for (i, server) in servers.iter().enumerate() {
            let Some(server) = server else { continue };
            let mut r = rt.block_on(client::open_loop(
                server.addr,
                Arc::clone(paths),
                CONNS,
                offered,
                plan.latency_duration,
            ))?;
            let l = Latency {
                offered,
                achieved: r.rps(),
                p50_us: r.quantile_us(0.50),
                p99_us: r.quantile_us(0.99),
                errors: r.errors,
            };
            println!(
                "open loop  {:<10} round {}, {:.0} req/s offered: answered {:.0}/s, \
                 p50 {:.0} µs, p99 {:.0} µs, {} errors",
                NAMES[i],
                round + 1,
                offered,
                l.achieved,
                l.p50_us,
                l.p99_us,
                l.errors
            );
            if latency[i].is_none_or(|best| l.p99_us < best.p99_us) {
                latency[i] = Some(l);
            }
        }
    }
    Ok(latency)
}

fn sim_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_static(procs::SIM_KEY));
    headers
}

/// Fetches every path once through `server` at `addr` (16 connections), each a 200: the
/// misses that fill its cache.
async fn fill(addr: SocketAddr, paths: &Arc<Vec<String>>, server: &str) -> Result<(), BoxError> {
    let fill = client::closed_loop(addr, Arc::clone(paths), 16, Stop::EachOnce).await?;
    if fill.ok != paths.len() as u64 {
        return Err(format!(
            "warming {server}: {} of {} jobs answered 200",
            fill.ok,
            paths.len()
        )
        .into());
    }
    Ok(())
}

/// Fetches every path through the gateway (misses), then again checking each is a hit;
/// returns the bodies of the second pass, for the bare server.
async fn warm_gateway(
    addr: SocketAddr,
    paths: &Arc<Vec<String>>,
) -> Result<Vec<(String, Bytes)>, BoxError> {
    fill(addr, paths, "the gateway").await?;
    let mut conn = Conn::open(addr, HeaderMap::new()).await?;
    let public = format!("http://{addr}/v2/extract/");
    let mut bodies = Vec::with_capacity(paths.len());
    for path in paths.iter() {
        let reply = conn.get(path).await?;
        if reply.status != 200 || reply.header("x-cache") != "hit" {
            return Err(format!(
                "{path}: status {}, x-cache {:?} after warming",
                reply.status,
                reply.header("x-cache")
            )
            .into());
        }
        if !contains(&reply.body, public.as_bytes()) {
            return Err(format!("{path}: the gateway did not rewrite the links").into());
        }
        bodies.push((path.clone(), reply.body));
    }
    Ok(bodies)
}

/// Asks the bare server for every job once (which also logs a line for each when its
/// log is on) and checks it answers the body it was given: a port that accepts
/// connections is not yet a server that answers.
async fn check_bare(addr: SocketAddr, bodies: &[(String, Bytes)]) -> Result<(), BoxError> {
    let mut conn = Conn::open(addr, HeaderMap::new()).await?;
    for (path, body) in bodies {
        let reply = conn
            .get(path)
            .await
            .map_err(|e| format!("bare server, {path}: {e}"))?;
        if reply.status != 200 || reply.body != *body {
            return Err(format!(
                "bare server, {path}: status {}, {} body bytes, not the {} it was given",
                reply.status,
                reply.body.len(),
                body.len()
            )
            .into());
        }
    }
    Ok(())
}

/// Fetches every path through nginx, then again checking each is a cache HIT with its
/// links rewritten to nginx's origin.
async fn warm_nginx(
    addr: SocketAddr,
    sim: SocketAddr,
    paths: &Arc<Vec<String>>,
) -> Result<(), BoxError> {
    fill(addr, paths, "nginx").await?;
    let mut conn = Conn::open(addr, HeaderMap::new()).await?;
    let public = format!("http://{addr}/v2/extract/");
    let upstream = format!("http://{sim}/");
    for path in paths.iter() {
        let reply = conn.get(path).await?;
        if reply.status != 200 || reply.header("x-cache") != "HIT" {
            return Err(format!(
                "nginx {path}: status {}, x-cache {:?} after warming",
                reply.status,
                reply.header("x-cache")
            )
            .into());
        }
        if !contains(&reply.body, public.as_bytes()) || contains(&reply.body, upstream.as_bytes()) {
            return Err(format!("nginx {path}: sub_filter did not rewrite the links").into());
        }
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Hit throughput with wrk, or with the harness's closed-loop client without wrk.
///
/// A run that completes no request, or whose report cannot be read, fails with what is
/// known about the server (running or not, its stderr, the free disk): a bare "0
/// requests" from CI says nothing about why.
fn throughput(
    rt: &tokio::runtime::Runtime,
    tools: &Tools,
    script: &Path,
    paths: &Arc<Vec<String>>,
    server: &Server,
    conns: usize,
    duration: Duration,
) -> Result<Throughput, BoxError> {
    let measured = if tools.wrk {
        wrk::run(script, server.addr, conns, duration).map(|r| Throughput {
            rps: r.rps,
            p99_us: r.p99_us,
            errors: r.errors,
        })
    } else {
        rt.block_on(client::closed_loop(
            server.addr,
            Arc::clone(paths),
            conns,
            Stop::After(duration),
        ))
        .and_then(|mut r: LoadResult| {
            if r.rps() > 0.0 {
                Ok(Throughput {
                    rps: r.rps(),
                    p99_us: r.quantile_us(0.99),
                    errors: r.errors,
                })
            } else {
                Err(format!("no request completed ({} errors)", r.errors).into())
            }
        })
    };
    measured.map_err(|e| format!("{e}\n{}", server.proc.diagnose()).into())
}

/// Cold jobs one at a time over keep-alive: each id straight from the simulator, then
/// through the gateway (cold there), interleaved so drift hits both alike; the same for
/// nginx with its own ids.
async fn miss_overhead(
    sim: SocketAddr,
    gateway: SocketAddr,
    nginx: Option<SocketAddr>,
    gw_paths: &[String],
    nginx_paths: &[String],
) -> Result<Miss, BoxError> {
    let mut direct = Conn::open(sim, sim_headers()).await?;
    let mut via_gw = Conn::open(gateway, HeaderMap::new()).await?;
    let (mut d, mut g, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for path in gw_paths {
        let (dl, _) = client::sequential(&mut direct, std::slice::from_ref(path)).await?;
        let (gl, cache) = client::sequential(&mut via_gw, std::slice::from_ref(path)).await?;
        if cache[0] != "miss" {
            return Err(format!("{path} was not cold in the gateway ({})", cache[0]).into());
        }
        d.push(dl[0]);
        g.push(gl[0]);
        added.push(i64::from(gl[0]) - i64::from(dl[0]));
    }
    let mut miss = Miss {
        direct: client::quantile(&mut d, 0.5),
        gateway: client::quantile(&mut g, 0.5),
        gateway_added: median_i64(&mut added),
        jobs: gw_paths.len(),
        ..Miss::default()
    };
    if let Some(nginx) = nginx {
        let mut via_nginx = Conn::open(nginx, HeaderMap::new()).await?;
        let (mut n, mut added) = (Vec::new(), Vec::new());
        for path in nginx_paths {
            let (dl, _) = client::sequential(&mut direct, std::slice::from_ref(path)).await?;
            let (nl, cache) =
                client::sequential(&mut via_nginx, std::slice::from_ref(path)).await?;
            if cache[0] != "MISS" {
                return Err(format!("{path} was not cold in nginx ({})", cache[0]).into());
            }
            n.push(nl[0]);
            added.push(i64::from(nl[0]) - i64::from(dl[0]));
        }
        miss.nginx = Some(client::quantile(&mut n, 0.5));
        miss.nginx_added = Some(median_i64(&mut added));
    }
    Ok(miss)
}

/// Medians of `upstream_us` and `duration_us` over the access-log lines of the
/// misses for `paths`.
fn logged_miss_times(log: &Path, paths: &[String]) -> Option<(f64, f64)> {
    let text = fs::read_to_string(log).ok()?;
    let wanted: std::collections::HashSet<&str> = paths.iter().map(String::as_str).collect();
    let field = |line: &str, name: &str| -> Option<f64> {
        let start = line.find(name)? + name.len();
        let rest = &line[start..];
        let end = rest.find(' ').unwrap_or(rest.len());
        rest[..end].parse::<f64>().ok()
    };
    let (mut upstream, mut duration) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| l.contains("cache=miss")) {
        let ours = line
            .split(' ')
            .filter_map(|w| w.strip_prefix("path="))
            .any(|p| wanted.contains(p));
        if !ours {
            continue;
        }
        if let (Some(u), Some(d)) = (field(line, "upstream_us="), field(line, "duration_us=")) {
            upstream.push(u as u32);
            duration.push(d as u32);
        }
    }
    if upstream.is_empty() {
        return None;
    }
    Some((
        client::quantile(&mut upstream, 0.5),
        client::quantile(&mut duration, 0.5),
    ))
}

fn median_i64(values: &mut [i64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable();
    values[values.len() / 2] as f64
}

/// RSS of a fresh gateway (log off), empty and after caching `jobs` completed jobs.
fn memory(rt: &tokio::runtime::Runtime, dir: &Path, jobs: usize) -> Result<Memory, BoxError> {
    let sim = procs::start_sim(dir, "sim-memory", jobs, PADDING)?;
    let gateway = procs::start_gateway(dir, "gateway-memory", sim.addr, Logging::Off, "2GiB")?;
    let paths: Arc<Vec<String>> = Arc::new(
        sim.ids
            .iter()
            .map(|id| format!("/v2/extract/{id}"))
            .collect(),
    );
    // "Empty" is a gateway that has served requests (its runtime's threads and buffers
    // exist) but cached nothing: refused routes cost no upstream call and store nothing.
    let refused: Arc<Vec<String>> = Arc::new(vec!["/v2/not-a-route".to_string(); 2000]);
    rt.block_on(client::closed_loop(
        gateway.addr,
        refused,
        32,
        Stop::EachOnce,
    ))?;
    std::thread::sleep(Duration::from_millis(500));
    let empty_rss = gateway.proc.rss_bytes()?;
    let fill = rt.block_on(client::closed_loop(
        gateway.addr,
        Arc::clone(&paths),
        32,
        Stop::EachOnce,
    ))?;
    if fill.ok != jobs as u64 {
        return Err(format!("memory fill: {} of {jobs} jobs answered 200", fill.ok).into());
    }
    // Let moka's housekeeping and the allocator settle before reading.
    std::thread::sleep(Duration::from_secs(1));
    let full_rss = gateway.proc.rss_bytes()?;
    let peak_rss = gateway.proc.peak_rss_bytes()?;
    // Every 100th job again: all must be hits, or entries were evicted and the figure
    // would understate the cost.
    let sample: Arc<Vec<String>> = Arc::new(paths.iter().step_by(100).cloned().collect());
    let check = rt.block_on(client::closed_loop(
        gateway.addr,
        Arc::clone(&sample),
        8,
        Stop::EachOnce,
    ))?;
    gateway.proc.stop();
    sim.proc.stop();
    Ok(Memory {
        jobs,
        body_bytes: fill.body_bytes,
        empty_rss,
        full_rss,
        peak_rss,
        hits_sampled: (check.hits, sample.len() as u64),
    })
}

/// A row with the gateway's figure only (the others do not apply).
fn gateway_row(scenario: String, exagate: String, target: &str, verdict: Verdict) -> Row {
    Row {
        scenario,
        exagate,
        bare: "—".to_string(),
        nginx: "—".to_string(),
        vs_bare: "—".to_string(),
        vs_nginx: "—".to_string(),
        target: target.to_string(),
        verdict,
    }
}

fn rows(plan: &Plan, results: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    // Log on first: the fair production case.
    let ordered: Vec<&Phase> = [Logging::On, Logging::Off]
        .iter()
        .filter_map(|l| results.phases.iter().find(|p| p.logging == *l))
        .collect();
    for phase in &ordered {
        let t = phase.throughput.map(|t| t.map(|t| t.rps));
        if t[0].is_none() {
            continue;
        }
        let vs_bare = t[0].zip(t[1]).map(|(a, b)| a / b);
        let vs_nginx = t[0].zip(t[2]).map(|(a, b)| a / b);
        let ok = vs_bare.is_some_and(|r| r >= 0.9) && vs_nginx.is_none_or(|r| r >= 1.3);
        rows.push(Row::compared(
            format!(
                "hit throughput, {} ({} jobs, {CONNS} conns)",
                phase.logging.label(),
                plan.hit_jobs
            ),
            t,
            rps,
            "≥ 0.9× bare, ≥ 1.3× nginx",
            Verdict::check(ok),
        ));
    }
    for phase in &ordered {
        let Some(first) = phase.latency[0] else {
            continue;
        };
        let l = phase.latency.map(|l| l.map(|l| l.p99_us));
        let ok = l[0].zip(l[1]).is_some_and(|(a, b)| a <= 1.2 * b);
        rows.push(Row::compared(
            format!(
                "hit p99, open loop at {:.0} req/s, {}",
                first.offered,
                phase.logging.label()
            ),
            l,
            micros,
            "≤ 1.2× bare",
            Verdict::check(ok),
        ));
    }
    for phase in &ordered {
        let l = phase.latency.map(|l| l.map(|l| l.p50_us));
        if let Some(first) = phase.latency[0] {
            rows.push(Row::compared(
                format!(
                    "hit p50, open loop at {:.0} req/s, {}",
                    first.offered,
                    phase.logging.label()
                ),
                l,
                micros,
                "—",
                Verdict::Info,
            ));
        }
    }
    for phase in &ordered {
        let l = phase.throughput.map(|t| t.map(|t| t.p99_us));
        if l[0].is_none() {
            continue;
        }
        rows.push(Row::compared(
            format!(
                "hit p99, closed loop at full load ({CONNS} conns), {}",
                phase.logging.label()
            ),
            l,
            micros,
            "—",
            Verdict::Info,
        ));
    }
    for phase in &ordered {
        let Some(m) = phase.miss else { continue };
        rows.push(Row {
            scenario: format!(
                "miss: median latency added over calling the simulator directly ({} cold jobs, {})",
                m.jobs,
                phase.logging.label()
            ),
            exagate: match m.logged {
                None => format!(
                    "+{:.0} µs ({:.0} vs {:.0} direct)",
                    m.gateway_added, m.gateway, m.direct
                ),
                Some((upstream, duration)) => format!(
                    "+{:.0} µs ({:.0} vs {:.0} direct; its log: upstream {upstream:.0}, \
                     handler {duration:.0})",
                    m.gateway_added, m.gateway, m.direct
                ),
            },
            bare: "—".to_string(),
            nginx: m.nginx.map_or("—".to_string(), |n| {
                format!("+{:.0} µs ({n:.0})", m.nginx_added.unwrap_or(f64::NAN))
            }),
            vs_bare: "—".to_string(),
            vs_nginx: "—".to_string(),
            target: "< 200 µs".to_string(),
            verdict: Verdict::check(m.gateway_added < 200.0),
        });
    }
    if let Some(memory) = &results.memory {
        let delta = memory.full_rss.saturating_sub(memory.empty_rss) as f64;
        let body = memory.body_bytes as f64;
        let jobs = memory.jobs.max(1) as f64;
        let mem_ratio = delta / body.max(1.0);
        let all_hits = memory.hits_sampled.0 == memory.hits_sampled.1;
        rows.push(gateway_row(
            format!(
                "memory: RSS added / body bytes, {} cached jobs of ~{:.1} KB",
                memory.jobs,
                body / jobs / 1000.0
            ),
            format!(
                "{mem_ratio:.2} ({:.1} MB for {:.1} MB of bodies; {}/{} re-asked were hits)",
                delta / 1e6,
                body / 1e6,
                memory.hits_sampled.0,
                memory.hits_sampled.1
            ),
            "≤ 1.3",
            Verdict::check(mem_ratio <= 1.3 && all_hits),
        ));
        rows.push(gateway_row(
            "memory: per-entry overhead beyond the body".to_string(),
            format!(
                "{:.0} B/entry (RSS empty {:.1} MB, full {:.1} MB, peak {:.1} MB)",
                (delta - body) / jobs,
                memory.empty_rss as f64 / 1e6,
                memory.full_rss as f64 / 1e6,
                memory.peak_rss as f64 / 1e6
            ),
            "state it",
            Verdict::Info,
        ));
    }
    if let Some(burst) = &results.burst {
        rows.push(gateway_row(
            format!(
                "coalescing: {} concurrent requests, one cold job",
                burst.clients
            ),
            format!(
                "{} upstream call(s), {}/{} answered ({} joined the fetch)",
                burst.upstream_calls, burst.answered, burst.clients, burst.misses
            ),
            "1 call, all answered",
            Verdict::check(burst.upstream_calls == 1 && burst.answered == burst.clients),
        ));
    }
    if let Some(polling) = &results.polling {
        rows.push(gateway_row(
            format!(
                "polling: {} clients, {} pending jobs, every 100 ms for {:.1} s",
                polling.clients,
                polling.jobs,
                polling.elapsed.as_secs_f64()
            ),
            format!(
                "{:.2} calls/job/ttl (max {} per job, bound {}; {} polls, {} failed)",
                polling.calls_per_ttl(),
                polling.max_calls,
                polling.bound(),
                polling.answered,
                polling.failed
            ),
            &format!(
                "≤ 1 per job per in_progress_ttl ({} ms)",
                polling.ttl.as_millis()
            ),
            Verdict::check(polling.max_calls <= polling.bound() && polling.failed == 0),
        ));
    }
    rows
}

/// Warnings about the run itself: errors seen, a server below the offered load.
fn run_notes(plan: &Plan, phases: &[Phase]) -> Vec<String> {
    let mut notes = Vec::new();
    for phase in phases {
        for (i, t) in phase.throughput.iter().enumerate() {
            if let Some(t) = t.filter(|t| t.errors > 0) {
                notes.push(format!(
                    "{} ({}): {} errors or non-2xx answers during the throughput run",
                    NAMES[i],
                    phase.logging.label(),
                    t.errors
                ));
            }
        }
        for (i, l) in phase.latency.iter().enumerate() {
            let Some(l) = l else { continue };
            if l.errors > 0 {
                notes.push(format!(
                    "{} ({}): {} errors in the open-loop run",
                    NAMES[i],
                    phase.logging.label(),
                    l.errors
                ));
            }
            if l.achieved < 0.95 * l.offered {
                notes.push(format!(
                    "{} ({}): answered {:.0} of the {:.0} req/s offered in the open-loop run, \
                     so its p99 includes queueing",
                    NAMES[i],
                    phase.logging.label(),
                    l.achieved,
                    l.offered
                ));
            }
        }
    }
    if plan.rounds > 1 && phases.iter().any(|p| p.throughput[0].is_some()) {
        notes.push(format!(
            "throughput: best of {} interleaved {} s runs per server and mode, after a 1 s \
             warm-up run each; open-loop p99: lowest of {} interleaved {} s runs",
            plan.rounds,
            plan.duration.as_secs(),
            plan.latency_rounds,
            plan.latency_duration.as_secs()
        ));
    }
    notes
}

#[allow(clippy::too_many_arguments)]
fn document(
    mode: &str,
    machine: &str,
    tools: &Tools,
    plan: &Plan,
    options: &Options,
    rows: &[Row],
    notes: &[String],
    started: Instant,
    chart: Option<&str>,
) -> String {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let wrk = if tools.wrk {
        procs::version_of(Path::new("wrk"), "--version")
            .split(" Copyright")
            .next()
            .unwrap_or("")
            .to_string()
    } else {
        "wrk not installed (built-in closed-loop client)".to_string()
    };
    let nginx = match procs::nginx_bin() {
        Some(p) if tools.nginx => procs::version_of(&p, "-v"),
        _ => "nginx not installed or left out (skipped)".to_string(),
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let command = if args.is_empty() {
        "cargo bench --bench load".to_string()
    } else {
        format!("cargo bench --bench load -- {}", args.join(" "))
    };
    let mut out = String::new();
    out.push_str(&format!(
        "# exagate load results ({mode} mode)\n\n\
         Generated by `{command}` on {now}; the run took {:.0} s.\n\n\
         - machine: {machine}\n\
         - tools: {wrk}; {nginx}\n\
         - jobs: {} cached completed jobs of ~2 KB (simulator padding {PADDING} B); \
         {} cold jobs per server for the miss scenario; {} for memory\n\
         - load generators and servers share the machine's cores: figures are comparable \
         only within one run, as ratios\n\n",
        started.elapsed().as_secs_f64(),
        plan.hit_jobs,
        plan.miss_jobs,
        plan.memory_jobs,
    ));
    out.push_str(&report::table(rows));
    if let Some(svg) = chart {
        out.push_str(&format!(
            "\nChart: [`{svg}`]({svg}), throughput and wrk's p99 against connections \
             ({}), access log off.\n",
            plan.sweep
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join("/")
        ));
    }
    out.push_str(&format!(
        "\nHow each figure is measured:\n\n\
         - **throughput**: wrk, 2 threads, a Lua script cycling through the job paths \
         (each thread from its own offset; without wrk, the harness's own closed-loop \
         client on one thread, which then is the bottleneck); every server warm (the gateway and nginx \
         checked to answer each job as a hit with its links rewritten). \"log on\": the \
         gateway at `info` with stderr to a file, nginx `access_log` to a file, the bare \
         server one tracing line per request to a file; \"log off\": the gateway at \
         `warn`, `access_log off`, no line.\n\
         - **p99 and p50, open loop**: the harness's own client sends at a fixed rate \
         ({:.0}% of the lower of the gateway's and the bare server's throughput above, \
         the same rate for all three) over {CONNS} connections for {} s; a request held \
         up by a busy connection counts from when it was due (no coordinated omission). \
         wrk2 is not packaged in Debian.\n\
         - **miss**: one keep-alive connection each, one request at a time; each cold job \
         fetched straight from the simulator, then through the gateway (a miss there), \
         interleaved; the median of the per-job differences. Every job was rendered by \
         the simulator once beforehand, so neither side pays for that.\n\
         - **memory**: VmRSS of a fresh gateway (log off) that has served 2000 refused \
         requests, then after fetching every job once through it (32 connections); \
         per-entry overhead = (RSS added − body bytes) / jobs. Every 100th job is asked \
         again and must be a hit.\n\
         - **coalescing**: simulator and gateway in the harness's process (the \
         simulator's call counters are only readable there). For the burst the upstream \
         answers after 200 ms, so every request arrives while the fetch is in flight; \
         polling clients start spread over 100 ms, and the bound is \
         floor(duration / ttl) + 1 calls per job.\n",
        options.latency_load * 100.0,
        plan.latency_duration.as_secs(),
    ));
    if !notes.is_empty() {
        out.push_str("\nNotes:\n\n");
        for note in notes {
            out.push_str(&format!("- {note}\n"));
        }
    }
    out
}

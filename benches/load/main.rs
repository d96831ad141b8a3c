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
//! - `--only hits,miss,memory,coalescing,shared,webhooks,compression`: a subset (results go to `partial.md`);
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
//! every 100 ms; (f) the shared tier, in-process against a real redis-server: local-hit
//! throughput with `[shared]` on against off, a hit from Redis against a local hit, and 2
//! and 3 replicas behind round-robin against one gateway in upstream calls per job; (g)
//! webhooks: the team workload with the simulator's webhooks pointed at the gateway
//! against without (polling and long-polling, one gateway and two replicas sharing
//! Redis), and thousands of long-polls held on one job by a gateway process; (h)
//! compression: hit throughput of a gateway holding its cache compressed against one
//! with `cache.compress = false`, for clients that take no gzip and for those that do.
//!
//! Output: one Markdown table (printed, and written to `benches/results/latest.md`, or
//! `quick.md` in quick mode) and `benches/results/throughput.svg` (`quick.svg`).
//!
//! Where things are: this file reads the options, plans the run, finds the tools, starts
//! the servers and runs the scenarios in order, and writes the results; each scenario is a
//! file of `scenarios/` ((e) on top of `inproc.rs`); warming the servers is `warm.rs`;
//! the document and its table's rows are `results.rs`, the table and chart rendering
//! `report.rs`.

mod bare;
mod client;
mod inproc;
mod procs;
mod report;
mod results;
mod scenarios;
mod warm;
mod wrk;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use procs::{Logging, Server};
use report::Curve;
use results::{Phase, Results};
use scenarios::PADDING;

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
    /// The shared tier: hits with it on and off, a hit from Redis, replicas.
    Shared,
    /// Webhooks: calls per job with them on, long-poll waiters.
    Webhooks,
    /// Hits with the cache compressed against uncompressed.
    Compression,
}

impl Scenario {
    fn parse(name: &str) -> Option<Scenario> {
        match name {
            "hits" => Some(Scenario::Hits),
            "miss" => Some(Scenario::Miss),
            "memory" => Some(Scenario::Memory),
            "coalescing" => Some(Scenario::Coalescing),
            "shared" => Some(Scenario::Shared),
            "webhooks" => Some(Scenario::Webhooks),
            "compression" => Some(Scenario::Compression),
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
                                "load: --only takes hits,miss,memory,coalescing,shared,webhooks,compression, not {name:?}"
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
                     [--only hits,miss,memory,coalescing,shared,webhooks,compression] [--latency-load 0.25] [--without wrk,nginx] [--keep]]"
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
    let rows = results::rows(&plan, &results);
    let mut notes = tools.notes.clone();
    notes.extend(results::run_notes(&plan, &results.phases));
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
    let text = results::document(
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
        results.memory = Some(scenarios::memory::measure(&rt, dir, plan.memory_jobs)?);
    }
    if options.runs(Scenario::Compression) {
        println!("\n== compression (hits, compressed cache against cache.compress = false)");
        results.compression = Some(scenarios::compression::measure(plan, tools, &rt, dir)?);
    }
    drop(rt);
    if options.runs(Scenario::Coalescing) {
        println!("\n== coalescing (in-process)");
        let (burst, polling) = scenarios::coalescing::measure(plan)?;
        results.burst = Some(burst);
        results.polling = Some(polling);
    }
    if options.runs(Scenario::Shared) {
        println!("\n== shared tier (in-process, real redis-server)");
        results.shared = scenarios::shared::measure(plan, tools, dir)?;
    }
    if options.runs(Scenario::Webhooks) {
        println!(
            "\n== webhooks (in-process team workloads; long-poll waiters on a gateway process)"
        );
        results.webhooks = Some(scenarios::webhooks::measure(plan, dir)?);
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
    let all: Vec<String> = sim.ids.iter().map(path_of).collect();
    rt.block_on(warm::simulator(sim.addr, &all))?;

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
        let bodies = rt.block_on(warm::gateway(gateway.addr, &hit_paths))?;
        // The bare server serves the first phase's bodies in both phases (the same bytes
        // but for the gateway's address in the links).
        if logging == Logging::Off {
            bare::save_bodies(&bodies_file, &bodies)?;
            bare_bodies = bodies;
        }
        let bare = procs::start_bare(dir, &format!("bare-{tag}"), &bodies_file, logging)?;
        rt.block_on(warm::check_bare(bare.addr, &bare_bodies))
            .map_err(|e| format!("{e}\n{}", bare.proc.diagnose()))?;
        let nginx = if tools.nginx {
            let nginx = procs::start_nginx(dir, &format!("nginx-{tag}"), sim.addr, logging)?;
            rt.block_on(warm::nginx(nginx.addr, sim.addr, &hit_paths))?;
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
            phase.throughput =
                scenarios::throughput::measure(plan, tools, rt, &script, &hit_paths, &servers)?;
            if logging == Logging::Off {
                *curves =
                    scenarios::throughput::sweep(plan, tools, rt, &script, &hit_paths, &servers)?;
            }
            let offered = options.latency_load
                * phase.throughput[0]
                    .map_or(0.0, |t| t.rps)
                    .min(phase.throughput[1].map_or(0.0, |t| t.rps));
            phase.latency = scenarios::latency::measure(plan, rt, &hit_paths, &servers, offered)?;
        }
        if options.runs(Scenario::Miss) {
            phase.miss = Some(scenarios::miss::measure(
                rt,
                sim.addr,
                &gateway,
                nginx.as_ref().map(|n| n.addr),
                logging,
                &gw_miss,
                &nginx_miss,
            )?);
        }
        phases.push(phase);
        drop(nginx);
        bare.proc.stop();
        gateway.proc.stop();
    }
    sim.proc.stop();
    Ok(phases)
}

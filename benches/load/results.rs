//! Everything one run measured, and how it becomes the Markdown document: the table's
//! rows, the notes about the run, and the text around them.

use std::path::Path;
use std::time::Instant;

use crate::procs::{self, Logging};
use crate::report::{self, micros, rps, Curve, Row, Verdict};
use crate::scenarios::latency::Latency;
use crate::scenarios::memory::{Footprint, Memory};
use crate::scenarios::miss::Miss;
use crate::scenarios::throughput::Throughput;
use crate::scenarios::{CONNS, NAMES, PADDING};
use crate::{inproc, Options, Plan, Tools};

/// Everything measured with one logging mode. Index 0 is exagate, 1 bare, 2 nginx.
pub struct Phase {
    pub logging: Logging,
    pub throughput: [Option<Throughput>; 3],
    pub latency: [Option<Latency>; 3],
    pub miss: Option<Miss>,
}

/// Everything one run measured; what `--only` left out is absent.
#[derive(Default)]
pub struct Results {
    pub phases: Vec<Phase>,
    pub curves: Vec<Curve>,
    pub memory: Option<Memory>,
    pub burst: Option<inproc::Burst>,
    pub polling: Option<inproc::Polling>,
    pub shared: Option<crate::scenarios::shared::Shared>,
    pub webhooks: Option<crate::scenarios::webhooks::Webhooks>,
    pub compression: Option<crate::scenarios::compression::Compression>,
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

/// The table's rows, in the order the table shows them.
pub fn rows(plan: &Plan, results: &Results) -> Vec<Row> {
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
        let body = memory.body_bytes as f64;
        let jobs = memory.jobs.max(1) as f64;
        let [packed, plain] = &memory.footprints;
        let added = |f: &Footprint, rss: u64| rss.saturating_sub(f.empty_rss) as f64;
        let ratio = |f: &Footprint| added(f, f.read_rss) / body.max(1.0);
        let all_hits = |f: &Footprint| f.hits_sampled.0 == f.hits_sampled.1;
        let describe = |f: &Footprint| {
            format!(
                "{:.2} ({:.1} MB for {:.1} MB of bodies; {:.2} after the fill alone; front table {:.1} MB, {:.0}% of the RSS added; {}/{} re-asked were hits)",
                ratio(f),
                added(f, f.read_rss) / 1e6,
                body / 1e6,
                added(f, f.full_rss) / body.max(1.0),
                f.front_bytes as f64 / 1e6,
                100.0 * f.front_bytes as f64 / added(f, f.read_rss).max(1.0),
                f.hits_sampled.0,
                f.hits_sampled.1
            )
        };
        rows.push(gateway_row(
            format!(
                "memory: RSS added / identity body bytes, {} cached jobs of 1-8 KB (mean {:.1} KB), compressed, every job read again by identity clients",
                memory.jobs,
                body / jobs / 1000.0
            ),
            describe(packed),
            "≤ 0.8",
            Verdict::check(ratio(packed) <= 0.8 && all_hits(packed)),
        ));
        rows.push(gateway_row(
            "memory: the same, cache.compress = false (the reference)".to_string(),
            describe(plain),
            "state it",
            Verdict::check(all_hits(plain)),
        ));
        rows.push(gateway_row(
            "memory: per entry, compressed / uncompressed".to_string(),
            format!(
                "{:.0} / {:.0} B of RSS per entry for {:.0} B of body (weighed {:.0} / {:.0} B; RSS empty {:.1} MB, full {:.1} / {:.1} MB, peak {:.1} / {:.1} MB)",
                added(packed, packed.read_rss) / jobs,
                added(plain, plain.read_rss) / jobs,
                body / jobs,
                packed.weight as f64 / jobs,
                plain.weight as f64 / jobs,
                packed.empty_rss as f64 / 1e6,
                packed.read_rss as f64 / 1e6,
                plain.read_rss as f64 / 1e6,
                packed.peak_rss as f64 / 1e6,
                plain.peak_rss as f64 / 1e6
            ),
            "state it",
            Verdict::Info,
        ));
    }
    if let Some(c) = &results.compression {
        let ratio = c.paired_ratio;
        rows.push(gateway_row(
            format!(
                "compression: identity-hit throughput, compressed cache / cache.compress = false ({} jobs, {CONNS} conns, log off; median of {} back-to-back pairs)",
                plan.hit_jobs, c.rounds
            ),
            format!(
                "{ratio:.3} (best rounds {} vs {}; p99 {} vs {})",
                rps(Some(c.identity.rps)),
                rps(Some(c.reference.rps)),
                micros(Some(c.identity.p99_us)),
                micros(Some(c.reference.p99_us))
            ),
            "≥ 0.97",
            Verdict::check(ratio >= 0.97 && c.identity.errors == 0 && c.reference.errors == 0),
        ));
        rows.push(gateway_row(
            "compression: gzip-hit throughput (the stored bytes sent as they are)".to_string(),
            format!(
                "{}, p99 {} ({:.2}x identity; {:.0} B sent per answer against {:.0})",
                rps(Some(c.gzip.rps)),
                micros(Some(c.gzip.p99_us)),
                c.gzip.rps / c.identity.rps.max(1.0),
                c.body_bytes.1,
                c.body_bytes.0
            ),
            "state it",
            Verdict::check(c.gzip.errors == 0 && c.body_bytes.1 < c.body_bytes.0),
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
    if let Some(shared) = &results.shared {
        rows.push(gateway_row(
            format!("local hits with [shared] on, against off ({CONNS} conns, two processes)"),
            format!(
                "{:.1}% ({} vs {})",
                shared.hit_ratio() * 100.0,
                rps(Some(shared.on_rps)),
                rps(Some(shared.off_rps))
            ),
            "≥ 97%",
            Verdict::check(shared.hit_ratio() >= 0.97),
        ));
        rows.push(gateway_row(
            format!(
                "a hit from Redis against a local hit ({} reads)",
                shared.samples
            ),
            format!(
                "+{} ({} vs {}, medians)",
                micros(Some((shared.redis_hit_us - shared.local_hit_us).max(0.0))),
                micros(Some(shared.redis_hit_us)),
                micros(Some(shared.local_hit_us))
            ),
            "state it",
            Verdict::Info,
        ));
        let single = shared.teams.first().map_or(0.0, |t| t.calls);
        for team in shared.teams.iter().skip(1) {
            rows.push(gateway_row(
                format!(
                    "{} replicas sharing Redis, round-robin, team workload ({} jobs)",
                    team.replicas, shared.jobs
                ),
                format!(
                    "{:.2} upstream calls/job (one gateway: {single:.2}); {} failed",
                    team.calls, team.failed
                ),
                "= one gateway's (≤ +5%), none failed",
                Verdict::check(team.calls <= single * 1.05 + 0.01 && team.failed == 0),
            ));
        }
    }
    if let Some(hooks) = &results.webhooks {
        let reference = hooks.runs.first().map_or(0.0, |(_, r)| r.calls);
        for (label, run) in hooks.runs.iter().skip(1) {
            let mut seen = run.seen_after_ms.clone();
            let seen_text = if seen.is_empty() {
                String::new()
            } else {
                format!(
                    "; seen {:.0} ms (median) / {:.0} ms (max) after the webhook",
                    crate::client::quantile(&mut seen, 0.5),
                    crate::client::quantile(&mut seen, 1.0)
                )
            };
            let seen_ok = seen.is_empty() || crate::client::quantile(&mut seen, 1.0) <= 1000.0;
            rows.push(gateway_row(
                format!("team workload, {label} ({} jobs)", hooks.jobs),
                format!(
                    "{:.2} upstream calls/job (webhooks off: {reference:.2}); {} polls late, {} failed{seen_text}",
                    run.calls, run.late, run.failed
                ),
                "≤ 2.5 calls/job; seen within 1 s of the webhook; none failed",
                Verdict::check(run.calls <= 2.5 && run.late == 0 && run.failed == 0 && seen_ok),
            ));
        }
        if let Some(w) = &hooks.waiters {
            rows.push(gateway_row(
                format!("{} long-polls held on one job (gateway process)", w.held),
                format!(
                    "{:.0} B per waiter (an idle keep-alive connection: {:.0} B); answered {:.1} ms (median) / {:.1} ms (last) after the webhook; {}/{} completed, {} upstream calls",
                    w.per_waiter(),
                    w.idle_connection,
                    w.median_ms,
                    w.last_ms,
                    w.completed,
                    w.held,
                    w.calls
                ),
                "all answered ≤ 1 s after the webhook, no upstream call",
                Verdict::check(w.completed == w.held && w.last_ms <= 1000.0 && w.calls == 0),
            ));
        }
    }
    rows
}

/// Warnings about the run itself: errors seen, a server below the offered load.
pub fn run_notes(plan: &Plan, phases: &[Phase]) -> Vec<String> {
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

/// The whole Markdown document: what ran and where, the table, how each figure is
/// measured, and the notes.
#[allow(clippy::too_many_arguments)]
pub fn document(
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
         {} cold jobs per server for the miss scenario; {} for memory, of 1-8 KB \
         (padding {}, log-uniform)\n\
         - load generators and servers share the machine's cores: figures are comparable \
         only within one run, as ratios\n\n",
        started.elapsed().as_secs_f64(),
        plan.hit_jobs,
        plan.miss_jobs,
        plan.memory_jobs,
        crate::scenarios::memory::SPREAD,
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
         requests, then after fetching every job once through it (32 connections), then \
         after every job is read again by clients that send no Accept-Encoding (the \
         front table then holds what decompressed copies its slots and budget allow); \
         the ratio is the RSS added after that read over the identity body bytes. The \
         simulator pads each job with seeded prose that gzip compresses about as much \
         as English text (2.0-2.5x at 1-8 KB). Once with the cache compressed (the \
         default) and once with `cache.compress = false`, in the same run. Every 100th \
         job is asked again and must be a hit.\n\
         - **coalescing**: simulator and gateway in the harness's process (the \
         simulator's call counters are only readable there). For the burst the upstream \
         answers after 200 ms, so every request arrives while the fetch is in flight; \
         polling clients start spread over 100 ms, and the bound is \
         floor(duration / ttl) + 1 calls per job.\n\
         - **webhooks**: the team workload in-process, each run on a fresh simulator whose \
         webhook points at the (first) gateway; a poll is late when it was made more than \
         1 s after the job's webhook was acknowledged and still saw it in progress; \
         long-polls are held by a gateway process over one connection each, the job \
         completed once the gateway reports every one held \
         (`exagate_longpoll_waiters`), each delay measured from the webhook's \
         acknowledgement to the waiter's last byte.\n",
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

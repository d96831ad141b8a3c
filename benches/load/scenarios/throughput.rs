//! (a) Hit throughput: the headline figure at 50 connections (best of interleaved
//! rounds), and the sweep over connection counts that the chart draws. wrk when it is
//! installed, else the harness's own closed-loop client.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use crate::client::{self, LoadResult, Stop};
use crate::procs::Server;
use crate::report::Curve;
use crate::scenarios::{CONNS, NAMES};
use crate::{wrk, BoxError, Plan, Tools};

/// One throughput measurement.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub rps: f64,
    pub p99_us: f64,
    /// Failed requests and non-2xx answers.
    pub errors: u64,
}

impl Throughput {
    /// Prints this round's figures after `label`, and keeps them in `best` if they are
    /// the fastest yet.
    pub fn keep_best(self, best: &mut Option<Throughput>, label: &str, round: usize) {
        println!(
            "{label} round {}: {:>8.0} req/s, p99 {:>7.0} µs, {} errors",
            round + 1,
            self.rps,
            self.p99_us,
            self.errors
        );
        if best.is_none_or(|b| self.rps > b.rps) {
            *best = Some(self);
        }
    }
}

/// (a) Throughput at 50 connections: interleaved rounds, the best of each server kept.
pub fn measure(
    plan: &Plan,
    tools: &Tools,
    rt: &tokio::runtime::Runtime,
    script: &Path,
    paths: &Arc<Vec<String>>,
    servers: &[Option<&Server>; 3],
) -> Result<[Option<Throughput>; 3], BoxError> {
    if plan.warmup {
        for server in servers.iter().flatten() {
            once(
                rt,
                tools,
                script,
                paths,
                server,
                CONNS,
                Duration::from_secs(1),
                &HeaderMap::new(),
            )?;
        }
    }
    let none = HeaderMap::new();
    let mut best: [Option<Throughput>; 3] = [None; 3];
    for round in 0..plan.rounds {
        for (i, server) in servers.iter().enumerate() {
            let Some(server) = server else { continue };
            let t = once(
                rt,
                tools,
                script,
                paths,
                server,
                CONNS,
                plan.duration,
                &none,
            )?;
            t.keep_best(&mut best[i], &format!("throughput {:<10}", NAMES[i]), round);
        }
    }
    Ok(best)
}

/// The chart's sweep over connection counts, levels interleaved across servers.
pub fn sweep(
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
            let t = once(
                rt,
                tools,
                script,
                paths,
                server,
                conns,
                plan.sweep_duration,
                &HeaderMap::new(),
            )?;
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

/// Hit throughput with wrk, or with the harness's closed-loop client without wrk, every
/// request carrying `headers` (`script` must send the same ones).
///
/// A run that completes no request, or whose report cannot be read, fails with what is
/// known about the server (running or not, its stderr, the free disk): a bare "0
/// requests" from CI says nothing about why.
#[allow(clippy::too_many_arguments)]
pub fn once(
    rt: &tokio::runtime::Runtime,
    tools: &Tools,
    script: &Path,
    paths: &Arc<Vec<String>>,
    server: &Server,
    conns: usize,
    duration: Duration,
    headers: &HeaderMap,
) -> Result<Throughput, BoxError> {
    let measured = if tools.wrk {
        wrk::run(script, server.addr, conns, duration).map(|r| Throughput {
            rps: r.rps,
            p99_us: r.p99_us,
            errors: r.errors,
        })
    } else {
        rt.block_on(client::closed_loop_with(
            server.addr,
            Arc::clone(paths),
            conns,
            Stop::After(duration),
            headers.clone(),
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

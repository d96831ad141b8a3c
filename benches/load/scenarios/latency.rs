//! (b) Hit latency: p50 and p99 at one offered load, the same for all three servers, with
//! the harness's open-loop client (no coordinated omission; see `client::open_loop`).

use std::sync::Arc;

use crate::client;
use crate::procs::Server;
use crate::scenarios::{CONNS, NAMES};
use crate::{BoxError, Plan};

/// One open-loop latency measurement.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Requests per second sent.
    pub offered: f64,
    /// Requests per second answered.
    pub achieved: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

/// (b) Latency at one offered load, the same for all three servers.
pub fn measure(
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

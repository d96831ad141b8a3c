//! (c) Miss overhead: cold jobs one at a time over keep-alive, each straight from the
//! simulator and then through the gateway (and nginx), interleaved; with the access log
//! on, also what the gateway's own log says those misses took.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use http::HeaderMap;

use crate::client::{self, Conn};
use crate::procs::{self, Logging, Server};
use crate::BoxError;

/// Miss latencies (medians, µs) of one logging mode.
#[derive(Debug, Clone, Copy, Default)]
pub struct Miss {
    pub direct: f64,
    pub gateway: f64,
    pub nginx: Option<f64>,
    /// Median of the per-job differences, gateway minus direct.
    pub gateway_added: f64,
    pub nginx_added: Option<f64>,
    pub jobs: usize,
    /// From the gateway's access log (log on only): median `upstream_us` and
    /// `duration_us` of these misses; what the gateway itself measured.
    pub logged: Option<(f64, f64)>,
}

/// The miss scenario against the running simulator at `sim`, `gateway` and (when it
/// runs) nginx, with the cold `gw_paths` for the gateway and `nginx_paths` for nginx:
/// each server gets its own jobs, so each is cold where it is asked. With `logging` on,
/// the gateway's access log adds what it measured itself.
pub fn measure(
    rt: &tokio::runtime::Runtime,
    sim: SocketAddr,
    gateway: &Server,
    nginx: Option<SocketAddr>,
    logging: Logging,
    gw_paths: &[String],
    nginx_paths: &[String],
) -> Result<Miss, BoxError> {
    let mut miss = rt.block_on(miss_overhead(
        sim,
        gateway.addr,
        nginx,
        gw_paths,
        nginx_paths,
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
    if logging == Logging::On {
        miss.logged = logged_miss_times(&gateway.proc.stderr, gw_paths);
    }
    Ok(miss)
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
    let mut direct = Conn::open(sim, procs::sim_headers()).await?;
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

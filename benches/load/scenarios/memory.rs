//! (d) Memory: the RSS of a fresh gateway before and after caching many jobs of mixed
//! sizes (1-8 KB, log-uniform, padded with prose that compresses like English text), with
//! the cache held compressed (the default) and, as the reference measured in the same run,
//! uncompressed; and a sample re-asked to show none was evicted.
//!
//! Two figures per gateway: after the fill (every job fetched once: moka holds them, the
//! front table nothing), and after every job is read again by a client that takes no gzip
//! (the front table then holds as many decompressed copies as its slots and budget allow:
//! the most it ever holds, so the honest figure).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;

use crate::client::{self, Stop};
use crate::procs::{self, Server};
use crate::BoxError;

/// Job body sizes: from 1 KB to 8 KB, log-uniform (more small bodies than large).
pub const SPREAD: &str = "1024-8192";

/// What one gateway held.
#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    pub empty_rss: u64,
    /// After the fill.
    pub full_rss: u64,
    /// After an identity read of every job (the front table at its fullest).
    pub read_rss: u64,
    pub peak_rss: u64,
    /// `exagate_cache_front_bytes` after the read: the decompressed copies.
    pub front_bytes: u64,
    /// `exagate_cache_bytes` after the read: what the cache weighs itself.
    pub weight: u64,
    /// Hits among the re-asked sample, and the sample's size.
    pub hits_sampled: (u64, u64),
}

/// RSS of gateways holding `jobs` jobs, compressed and not.
pub struct Memory {
    pub jobs: usize,
    /// Identity body bytes the fill received: what the cache holds, before compression
    /// and overhead.
    pub body_bytes: u64,
    /// Compressed (the default), then uncompressed (the reference).
    pub footprints: [Footprint; 2],
}

/// RSS of a fresh gateway (log off), empty, after caching `jobs` completed jobs, and after
/// reading them all again; once compressed and once not.
pub fn measure(rt: &tokio::runtime::Runtime, dir: &Path, jobs: usize) -> Result<Memory, BoxError> {
    let sim = procs::start_sim(dir, "sim-memory", jobs, SPREAD)?;
    let paths: Arc<Vec<String>> = Arc::new(
        sim.ids
            .iter()
            .map(|id| format!("/v2/extract/{id}"))
            .collect(),
    );
    let mut body_bytes = 0;
    let mut footprints = Vec::new();
    for compress in [true, false] {
        let name = format!("gateway-memory-{}", if compress { "gzip" } else { "plain" });
        let gateway = procs::start_gateway_compressing(dir, &name, sim.addr, "2GiB", compress)?;
        let (footprint, bytes) = one(rt, &gateway, &paths)?;
        gateway.proc.stop();
        body_bytes = bytes;
        println!(
            "memory ({}): {} jobs, {} body bytes, RSS {} -> {} filled -> {} read (peak {}), front {} B, weight {} B, {}/{} sampled hits",
            if compress { "compressed" } else { "uncompressed" },
            jobs,
            bytes,
            footprint.empty_rss,
            footprint.full_rss,
            footprint.read_rss,
            footprint.peak_rss,
            footprint.front_bytes,
            footprint.weight,
            footprint.hits_sampled.0,
            footprint.hits_sampled.1
        );
        footprints.push(footprint);
    }
    sim.proc.stop();
    Ok(Memory {
        jobs,
        body_bytes,
        footprints: [footprints[0], footprints[1]],
    })
}

fn one(
    rt: &tokio::runtime::Runtime,
    gateway: &Server,
    paths: &Arc<Vec<String>>,
) -> Result<(Footprint, u64), BoxError> {
    let jobs = paths.len();
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
        Arc::clone(paths),
        32,
        Stop::EachOnce,
    ))?;
    if fill.ok != jobs as u64 {
        return Err(format!("memory fill: {} of {jobs} jobs answered 200", fill.ok).into());
    }
    // Let moka's housekeeping and the allocator settle before reading.
    std::thread::sleep(Duration::from_secs(1));
    let full_rss = gateway.proc.rss_bytes()?;
    // Every job again, by clients that take no gzip: all hits, and the front table keeps
    // what decompressed copies it may.
    let read = rt.block_on(client::closed_loop(
        gateway.addr,
        Arc::clone(paths),
        32,
        Stop::EachOnce,
    ))?;
    if read.hits != jobs as u64 || read.body_bytes != fill.body_bytes {
        return Err(format!(
            "memory read: {} of {jobs} hits, {} body bytes against {} at the fill",
            read.hits, read.body_bytes, fill.body_bytes
        )
        .into());
    }
    std::thread::sleep(Duration::from_secs(1));
    let read_rss = gateway.proc.rss_bytes()?;
    let peak_rss = gateway.proc.peak_rss_bytes()?;
    let admin = gateway.admin.ok_or("the gateway has no admin listener")?;
    let (front_bytes, weight) = rt.block_on(async {
        let text = metrics(admin).await?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|v| v as u64)
                .ok_or_else(|| format!("no {name} in /metrics"))
        };
        Ok::<_, BoxError>((
            value("exagate_cache_front_bytes")?,
            value("exagate_cache_bytes")?,
        ))
    })?;
    // Every 100th job once more: all must be hits, or entries were evicted and the
    // figure would understate the cost.
    let sample: Arc<Vec<String>> = Arc::new(paths.iter().step_by(100).cloned().collect());
    let check = rt.block_on(client::closed_loop(
        gateway.addr,
        Arc::clone(&sample),
        8,
        Stop::EachOnce,
    ))?;
    Ok((
        Footprint {
            empty_rss,
            full_rss,
            read_rss,
            peak_rss,
            front_bytes,
            weight,
            hits_sampled: (check.hits, sample.len() as u64),
        },
        fill.body_bytes,
    ))
}

/// The gateway's `/metrics` text.
async fn metrics(admin: SocketAddr) -> Result<String, BoxError> {
    let mut conn = client::Conn::open(admin, HeaderMap::new()).await?;
    let reply = conn.get("/metrics").await?;
    let body: Bytes = reply.body;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

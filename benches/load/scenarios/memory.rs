//! (d) Memory: the RSS of a fresh gateway before and after caching many jobs, and a
//! sample re-asked to show none was evicted.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::client::{self, Stop};
use crate::procs::{self, Logging};
use crate::scenarios::PADDING;
use crate::BoxError;

/// RSS of the gateway before and after caching `jobs` jobs.
pub struct Memory {
    pub jobs: usize,
    /// Body bytes the fill received: what the cache holds, before its overhead.
    pub body_bytes: u64,
    pub empty_rss: u64,
    pub full_rss: u64,
    pub peak_rss: u64,
    /// Hits among the re-asked sample, and the sample's size.
    pub hits_sampled: (u64, u64),
}

/// RSS of a fresh gateway (log off), empty and after caching `jobs` completed jobs.
pub fn measure(rt: &tokio::runtime::Runtime, dir: &Path, jobs: usize) -> Result<Memory, BoxError> {
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
    let memory = Memory {
        jobs,
        body_bytes: fill.body_bytes,
        empty_rss,
        full_rss,
        peak_rss,
        hits_sampled: (check.hits, sample.len() as u64),
    };
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
    Ok(memory)
}

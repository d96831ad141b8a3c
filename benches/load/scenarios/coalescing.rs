//! (e) Coalescing: a burst of concurrent requests for one cold job, and many clients
//! polling pending jobs. The simulator and the gateway run in this process (see
//! `inproc.rs`, which does the work), since only there are the simulator's call counters
//! readable; this file runs the two and says what they saw.

use crate::inproc::{self, Burst, Polling};
use crate::{BoxError, Plan};

/// The burst, then the polling storm, on a multi-thread runtime of their own, each
/// printed as it ends.
pub fn measure(plan: &Plan) -> Result<(Burst, Polling), BoxError> {
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
    Ok((burst, polling))
}

//! The scenarios, one file each (see the list at the top of `main.rs`): what each
//! measures, how, and the lines it prints while it runs. Starting and warming the servers
//! they run against is `main.rs`'s and `warm.rs`'s; turning their figures into the table
//! is `results.rs`'s.

pub mod coalescing;
pub mod compression;
pub mod latency;
pub mod memory;
pub mod miss;
pub mod shared;
pub mod team;
pub mod throughput;
pub mod webhooks;

/// Connections of the headline throughput and latency scenarios.
pub const CONNS: usize = 50;
/// Bytes the simulator pads each job to.
pub const PADDING: usize = 2048;

/// The servers compared, in the order of every per-server array: exagate, bare, nginx.
pub const NAMES: [&str; 3] = ["exagate", "bare hyper", "nginx"];

//! The cache: what is stored under which key (`key`), for how long (`policy`), where
//! (`store`, with a small `front` table before it for hot reads), and how concurrent
//! misses share one upstream call (`flight`); `envelope` is a stored answer as bytes, for
//! the shared tier and snapshots (`snapshot`: the cache in `state.dir`); `packed`, the
//! gzip form stored answers are held in.

pub mod answer;
pub mod copies;
pub mod envelope;
pub mod flight;
pub mod front;
pub mod key;
pub mod links;
pub mod packed;
pub mod policy;
pub mod snapshot;
pub mod store;
pub mod watch;

pub use answer::Answer;
pub use envelope::Envelope;
pub use flight::{Flights, Join};
pub use key::{CacheKey, JobKey, Scope};
pub use policy::{CachePolicy, Decision, JobState, NoCacheReason};
pub use store::CacheStore;

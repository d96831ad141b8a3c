//! What happened to one request, filled in along its way by every phase (routing,
//! lookup, pass-through, the client's share) and read at its end by the metrics and the
//! access log. A module of its own so the phases depend on it, not on one another.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::auth::Client;
use crate::cache::answer::XCache;

/// What happened to one request, filled in along its way, for the access log.
#[derive(Debug)]
pub struct Exchange {
    /// Route label.
    pub route: &'static str,
    /// The `x-cache` outcome.
    pub cache: XCache,
    /// The upstream's status, when one was involved.
    pub upstream_status: Option<StatusCode>,
    /// Time spent on the upstream call this request made (none for hits and waiters).
    pub upstream_time: Option<Duration>,
    /// Answered by another request's upstream call.
    pub coalesced: bool,
    /// The gateway's error code, when it answered with one.
    pub error: Option<&'static str>,
    /// The calling client, when clients are configured.
    pub client: Option<Arc<Client>>,
    /// The client's address, when the server knows it (for per-address shares).
    pub address: Option<IpAddr>,
    /// The client takes gzip (`Accept-Encoding`): a cached answer's gzip form is sent.
    pub gzip: bool,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            route: "none",
            cache: XCache::Bypass,
            upstream_status: None,
            upstream_time: None,
            coalesced: false,
            error: None,
            client: None,
            address: None,
            gzip: false,
        }
    }
}

//! The gateway's shared state: built once from the config, shared by every connection,
//! and swapped atomically on reload.
//!
//! State that must survive a reload (the cache, fetches under way, the quota bucket and
//! the 429 cooldown) lives in [`Gateway`] itself; everything derived from the config
//! lives in [`Live`], behind an `ArcSwap`. A request loads `Live` once and keeps that
//! snapshot to its end, so a reload never changes the rules under a request in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::Clients;
use crate::cache::{Answer, CacheKey, CachePolicy, CacheStore, Flights};
use crate::config::Config;
use crate::error::{BoxError, GatewayError};
use crate::guard::UpstreamGuard;
use crate::proxy::rewrite::LinkRewriter;
use crate::proxy::upstream::UpstreamClient;
use crate::secret::ApiKey;

/// What a fetch hands to every request that waited on it.
pub type FetchResult = Result<Arc<Answer>, GatewayError>;

/// Everything derived from one version of the config.
pub struct Live {
    /// The config itself.
    pub config: Arc<Config>,
    /// The pooled, key-injecting client (rebuilt on reload: new key, CA, timeouts).
    pub upstream: UpstreamClient,
    /// Per-state expiry rules.
    pub policy: CachePolicy,
    /// Points job links at the gateway.
    pub rewriter: LinkRewriter,
    /// Who may call.
    pub clients: Clients,
}

/// Everything a request needs, behind one `Arc`.
pub struct Gateway {
    /// Stored answers.
    pub cache: CacheStore,
    /// Fetches under way, so concurrent misses share one upstream call.
    pub flights: Arc<Flights<CacheKey, FetchResult>>,
    /// Quota, 429 cooldown and concurrency slots in front of the upstream.
    pub guard: Arc<UpstreamGuard>,
    /// The current config-derived state.
    live: ArcSwap<Live>,
    /// False once draining starts: `/readyz` fails so load balancers stop sending.
    ready: AtomicBool,
}

impl Gateway {
    /// Builds the state from a validated config and the loaded key.
    pub fn new(config: &Config, key: ApiKey) -> Result<Arc<Gateway>, BoxError> {
        let guard = Arc::new(UpstreamGuard::new(&config.upstream));
        let live = Live::build(config.clone(), key, &guard, None)?;
        Ok(Arc::new(Gateway {
            cache: CacheStore::new(config.cache.max_size),
            flights: Flights::new(),
            guard,
            live: ArcSwap::from_pointee(live),
            ready: AtomicBool::new(true),
        }))
    }

    /// The current config-derived state.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Applies a new, validated config and key. Returns warnings for settings that only
    /// take effect after a restart.
    pub fn reload(&self, config: Config, key: ApiKey) -> Result<Vec<String>, BoxError> {
        let old = self.live();
        let live = Live::build(config, key, &self.guard, Some(&old.clients))?;
        let warnings = restart_only_changes(&old.config, &live.config);
        self.guard.reconfigure(&live.config.upstream);
        self.live.store(Arc::new(live));
        Ok(warnings)
    }

    /// Whether the gateway should receive traffic.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Starts draining: readiness fails from now on.
    pub fn set_draining(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }
}

impl Live {
    fn build(
        config: Config,
        key: ApiKey,
        guard: &Arc<UpstreamGuard>,
        previous_clients: Option<&Clients>,
    ) -> Result<Live, BoxError> {
        Ok(Live {
            upstream: UpstreamClient::new(&config.upstream, key, Arc::clone(guard))?,
            policy: CachePolicy::new(&config.cache),
            rewriter: LinkRewriter::new(&config.server.public_url),
            clients: Clients::new(&config.clients, previous_clients),
            config: Arc::new(config),
        })
    }
}

/// Settings a reload cannot apply to a running process.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let mut check = |name: &str, differs: bool| {
        if differs {
            changed.push(format!("{name} changed: it takes effect after a restart"));
        }
    };
    check("server.listen", old.server.listen != new.server.listen);
    check("admin.listen", old.admin.listen != new.admin.listen);
    check("cache.max_size", old.cache.max_size != new.cache.max_size);
    check(
        "server.max_connections",
        old.server.max_connections != new.server.max_connections,
    );
    check(
        "server.tls (turning TLS on or off)",
        old.server.tls.is_some() != new.server.tls.is_some(),
    );
    check("log.format", old.log.format != new.log.format);
    changed
}

/// Whether an address only this machine can reach.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

//! The gateway's shared state: built once from the config, shared by every connection.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::{Answer, CacheKey, CachePolicy, CacheStore, Flights};
use crate::config::Config;
use crate::error::{BoxError, GatewayError};
use crate::proxy::rewrite::LinkRewriter;
use crate::proxy::upstream::UpstreamClient;
use crate::secret::ApiKey;

/// What a fetch hands to every request that waited on it.
pub type FetchResult = Result<Arc<Answer>, GatewayError>;

/// Everything a request needs, behind one `Arc`.
pub struct Gateway {
    /// Stored answers.
    pub cache: CacheStore,
    /// Fetches under way, so concurrent misses share one upstream call.
    pub flights: Arc<Flights<CacheKey, FetchResult>>,
    /// The pooled, key-injecting client.
    pub upstream: UpstreamClient,
    /// Per-state expiry rules.
    pub policy: CachePolicy,
    /// Points job links at the gateway.
    pub rewriter: LinkRewriter,
    /// Longest any request waits on the upstream.
    pub upstream_timeout: Duration,
}

impl Gateway {
    /// Builds the state from a validated config and the loaded key.
    pub fn new(config: &Config, key: ApiKey) -> Result<Arc<Gateway>, BoxError> {
        Ok(Arc::new(Gateway {
            cache: CacheStore::new(config.cache.max_size),
            flights: Flights::new(),
            upstream: UpstreamClient::new(&config.upstream, key)?,
            policy: CachePolicy::new(&config.cache),
            rewriter: LinkRewriter::new(&config.server.public_url),
            upstream_timeout: config.upstream.timeout,
        }))
    }
}

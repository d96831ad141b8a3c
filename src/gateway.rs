//! The gateway's shared state: built once from the config, shared by every connection,
//! and swapped atomically on reload.
//!
//! State that must survive a reload (the cache, fetches under way, the quota bucket and
//! the 429 cooldown) lives in [`Gateway`] itself; everything derived from the config
//! lives in [`Live`], behind an `ArcSwap`. A request loads `Live` once and keeps that
//! snapshot to its end, so a reload never changes the rules under a request in flight.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::Clients;
use crate::cache::{Answer, CacheKey, CachePolicy, CacheStore, Flights, JobKey};
use crate::config::Config;
use crate::error::{BoxError, GatewayError};
use crate::guard::{Lane, UpstreamGuard};
use crate::metrics::Metrics;
use crate::proxy::rewrite::LinkRewriter;
use crate::proxy::upstream::UpstreamClient;
use crate::secret::ApiKey;
use crate::shared::Shared;
use crate::webhooks::{Event, Webhooks, WebhooksLive};

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
    /// SHA-256 of the purge token from `admin.token_env`; `None` turns purging off.
    pub admin_token: Option<[u8; 32]>,
    /// What a snapshot of the cache must match to be used (`state.dir`).
    pub identity: crate::cache::snapshot::Identity,
    /// `[webhooks]` with its secrets read; `None` when off.
    pub webhooks: Option<WebhooksLive>,
}

/// Everything a request needs, behind one `Arc`.
pub struct Gateway {
    /// Stored answers.
    pub cache: CacheStore,
    /// Fetches under way, so concurrent misses share one upstream call.
    pub flights: Arc<Flights<CacheKey, FetchResult>>,
    /// Quota, 429 cooldown and concurrency slots in front of the upstream.
    pub guard: Arc<UpstreamGuard>,
    /// The tier shared with the other replicas (`[shared]`), when configured.
    pub shared: Option<Arc<Shared>>,
    /// Long-polls waiting for their job to change.
    pub watchers: Arc<crate::cache::watch::Watchers>,
    /// The scopes jobs were seen in and the relay's queue (used while `[webhooks]` is on).
    pub webhooks: Webhooks,
    /// The current config-derived state.
    live: ArcSwap<Live>,
    /// The config the process started with: what restart-only settings still are.
    boot: Arc<Config>,
    /// False once draining starts: `/readyz` fails so load balancers stop sending.
    ready: AtomicBool,
    /// Counters, histograms and gauges for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Each client address's share (`upstream.per_address_rate_limit`), by address
    /// group; bounded, and an address idle for an hour is forgotten (its bucket would
    /// have refilled by then at any sensible rate).
    pub addresses: moka::future::Cache<std::net::IpAddr, Arc<crate::guard::TokenBucket>>,
}

impl Gateway {
    /// Builds the state from a validated config and the loaded key.
    pub fn new(config: &Config, key: ApiKey) -> Result<Arc<Gateway>, BoxError> {
        let metrics = Arc::new(Metrics::new());
        let shared = match &config.shared {
            Some(sc) => {
                let (url, _) = sc.url()?;
                let shared = Shared::new(
                    sc,
                    &url,
                    &config.upstream.url,
                    &key,
                    config.upstream.timeout,
                    Arc::clone(&metrics),
                )?;
                Some(shared)
            }
            None => None,
        };
        let guard = Arc::new(UpstreamGuard::with_shared(
            &config.upstream,
            shared
                .as_ref()
                .zip(config.shared.as_ref())
                .map(|(s, c)| (Arc::clone(s), c.max_replicas)),
        ));
        let live = Live::build(config.clone(), key, &guard, &metrics, None)?;
        // Journaled only for a gateway that relays: one without [webhooks] at start
        // leaves no file behind.
        let journal = config.webhooks.as_ref().and(config.state.dir.as_deref());
        let webhooks = Webhooks::new(
            journal,
            config.upstream.ca_file.as_deref(),
            shared.clone(),
            Arc::clone(&metrics),
        )?;
        Ok(Arc::new(Gateway {
            watchers: crate::cache::watch::Watchers::new(),
            webhooks,
            cache: CacheStore::new(
                config.cache.max_size,
                config.cache.compress,
                Arc::clone(&metrics),
            ),
            metrics,
            flights: Flights::new(),
            guard,
            shared,
            boot: Arc::new(config.clone()),
            live: ArcSwap::from_pointee(live),
            ready: AtomicBool::new(true),
            addresses: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(std::time::Duration::from_secs(3600))
                .build(),
        }))
    }

    /// The current config-derived state, to keep (across awaits, to a request's end).
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// A short look at the current config-derived state. Unlike [`live`](Self::live) it
    /// touches no shared reference count (arc-swap's debt slots), which matters on the
    /// hit path where every request takes one look; do not hold it across an await.
    pub fn peek(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    /// Applies a new, validated config and key. Returns warnings for settings that only
    /// take effect after a restart.
    pub async fn reload(&self, config: Config, key: ApiKey) -> Result<Vec<String>, BoxError> {
        let old = self.live();
        let live = Live::build(config, key, &self.guard, &self.metrics, Some(&old.clients))?;
        // Against what runs (the config the process started with), not the last file
        // loaded: a restart-only change is named on every reload until a restart.
        let warnings = restart_only_changes(&self.boot, &live.config);
        // Stored answers carry links rewritten to the old public URL, or came from
        // another upstream: neither is true any more. (After the swap, so a fetch that
        // starts from here on renders with the new config.)
        let stale = old.config.server.public_url != live.config.server.public_url
            || old.config.upstream.url != live.config.upstream.url;
        self.guard.reconfigure(&live.config.upstream);
        let address_rate_changed = old.config.upstream.per_address_rate_limit
            != live.config.upstream.per_address_rate_limit;
        self.live.store(Arc::new(live));
        if address_rate_changed {
            // Buckets of the old rate: every address starts on the new one.
            self.addresses.invalidate_all();
        }
        if stale {
            // Fills under way render with the old config: the invalidation turns them
            // away too.
            self.cache.invalidate_all().await;
            self.watchers.changed_all();
            tracing::info!("server.public_url or upstream.url changed: the cache was emptied");
        }
        Ok(warnings)
    }

    /// Drops one job's answers here, in Redis and on every other replica (an operator's
    /// purge, or a job action that may have changed it). Here, a job action drops the
    /// job in every scope (`any_scope`), which costs little and is safe whatever scope
    /// the action ran in.
    pub async fn purge_job(&self, key: JobKey, any_scope: bool) {
        if any_scope {
            self.cache.invalidate_job(key.job).await;
        } else {
            self.cache.invalidate_scoped(key).await;
        }
        if let Some(shared) = &self.shared {
            shared.invalidate_job(key).await;
        }
        // Long-polls of the job look again (a reprocess makes a failed job pending).
        self.watchers.changed(key.job);
    }

    /// Records that `job` exists in `scope` (the upstream answered it there), so a
    /// webhook delivery for it primes that scope. Only while `[webhooks]` is on.
    pub fn record_scope(&self, live: &Live, key: JobKey) {
        if live.webhooks.is_none() {
            return;
        }
        self.webhooks.scopes.record(key.job, key.scope);
        if let Some(shared) = &self.shared {
            shared.record_scope(key.job, key.scope);
        }
    }

    /// The scopes `job` was seen in, here or (with `[shared]`) by any replica. `Err`
    /// when this replica knows none and Redis, which may know some, is away: the
    /// delivery is then refused for the API to send again, rather than dropped.
    pub async fn known_scopes(
        &self,
        job: uuid::Uuid,
    ) -> Result<Vec<crate::cache::Scope>, crate::shared::Unavailable> {
        let mut scopes = self.webhooks.scopes.of(job);
        let Some(shared) = &self.shared else {
            return Ok(scopes);
        };
        let remote = if shared.usable() {
            shared.scopes_of(job).await
        } else {
            Err(crate::shared::Unavailable)
        };
        match remote {
            Ok(found) => {
                for scope in found {
                    if !scopes.contains(&scope) {
                        self.webhooks.scopes.record(job, scope);
                        scopes.push(scope);
                    }
                }
                Ok(scopes)
            }
            Err(unavailable) if scopes.is_empty() => Err(unavailable),
            Err(_) => Ok(scopes),
        }
    }

    /// Hands an event to the relay and returns once it is queued (journaled, or in Redis).
    pub async fn emit_now(&self, live: &Live, event: &Event) {
        if let Some(hooks) = live.webhooks.as_ref().filter(|h| !h.subscribers.is_empty()) {
            self.webhooks
                .relay
                .emit(&hooks.subscribers, event, live.config.cache.retention)
                .await;
        }
    }

    /// Hands an event to the relay (each subscriber that hears of it gets it once), on a
    /// task of its own: the request that learned of it waits for no queue.
    pub fn emit(&self, live: &Live, event: &Event) {
        let Some(hooks) = live.webhooks.as_ref().filter(|h| !h.subscribers.is_empty()) else {
            return;
        };
        let relay = Arc::clone(&self.webhooks.relay);
        let subscribers = hooks.subscribers.clone();
        let (event, retention) = (event.clone(), live.config.cache.retention);
        tokio::spawn(async move {
            relay.emit(&subscribers, &event, retention).await;
        });
    }

    /// Empties the cache here, in Redis and on every other replica.
    pub async fn purge_all(&self) {
        self.cache.invalidate_all().await;
        if let Some(shared) = &self.shared {
            shared.invalidate_all().await;
        }
        self.watchers.changed_all();
    }

    /// Whether the gateway should receive traffic.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Starts draining: readiness fails from now on.
    pub fn set_draining(&self) {
        self.ready.store(false, Ordering::SeqCst);
        // Long-polls are answered now with what they have, rather than cut at the close.
        self.watchers.close();
    }

    /// Brings the scrape-time gauges up to date and encodes every metric.
    pub async fn render_metrics(&self) -> String {
        self.cache.run_pending_tasks().await;
        let m = &self.metrics;
        m.cache_entries
            .set(i64::try_from(self.cache.entry_count()).unwrap_or(i64::MAX));
        m.cache_bytes
            .set(i64::try_from(self.cache.weighted_size()).unwrap_or(i64::MAX));
        m.cache_front_bytes
            .set(i64::try_from(self.cache.front_bytes()).unwrap_or(i64::MAX));
        m.cache_copies_bytes
            .set(i64::try_from(self.cache.copies_bytes()).unwrap_or(i64::MAX));
        let (tokens, burst) = self.guard.quota_gauges().unwrap_or((-1.0, -1.0));
        m.quota_tokens.set(tokens);
        m.quota_burst.set(burst);
        m.cooldown_seconds.set(
            self.guard
                .cooldown
                .closed_for()
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        m.upstream_in_flight
            .set(i64::try_from(self.guard.in_flight(Lane::Lookup)).unwrap_or(i64::MAX));
        m.upstream_streams_in_flight
            .set(i64::try_from(self.guard.in_flight(Lane::Stream)).unwrap_or(i64::MAX));
        m.ready.set(i64::from(self.is_ready()));
        m.waiters
            .set(i64::try_from(self.watchers.waiting()).unwrap_or(i64::MAX));
        self.webhooks.relay.gauges().await;
        m.encode()
    }
}

impl Live {
    fn build(
        config: Config,
        key: ApiKey,
        guard: &Arc<UpstreamGuard>,
        metrics: &Arc<Metrics>,
        previous_clients: Option<&Clients>,
    ) -> Result<Live, BoxError> {
        let identity = crate::cache::snapshot::Identity {
            upstream: hex::encode(key.fingerprint(&config.upstream.url)),
            public_url: config.server.public_url.clone(),
        };
        let webhooks = config
            .webhooks
            .as_ref()
            .map(WebhooksLive::new)
            .transpose()?;
        // While webhooks are on, a completion arrives by push: in-progress answers may
        // be kept longer than a poll interval.
        let mut cache = config.cache.clone();
        if let Some(hooks) = &config.webhooks {
            cache.in_progress_ttl = hooks.in_progress_ttl;
        }
        Ok(Live {
            webhooks,
            identity,
            upstream: UpstreamClient::new(
                &config.upstream,
                key,
                Arc::clone(guard),
                Arc::clone(metrics),
            )?,
            policy: CachePolicy::new(&cache),
            rewriter: LinkRewriter::new(&config.server.public_url),
            clients: Clients::new(&config.clients, previous_clients),
            admin_token: std::env::var(&config.admin.token_env)
                .ok()
                .filter(|t| !t.trim().is_empty())
                .map(|t| crate::auth::sha256(t.trim().as_bytes())),
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
    check("cache.compress", old.cache.compress != new.cache.compress);
    check(
        "server.max_connections",
        old.server.max_connections != new.server.max_connections,
    );
    check(
        "server.tls (turning TLS on or off)",
        old.server.tls.is_some() != new.server.tls.is_some(),
    );
    check("log.format", old.log.format != new.log.format);
    let (o, n) = (&old.server, &new.server);
    check(
        "server.header_read_timeout",
        o.header_read_timeout != n.header_read_timeout,
    );
    check("server.idle_timeout", o.idle_timeout != n.idle_timeout);
    check("server.send_timeout", o.send_timeout != n.send_timeout);
    check(
        "server.max_header_bytes",
        o.max_header_bytes != n.max_header_bytes,
    );
    check(
        "server.shutdown_timeout",
        o.shutdown_timeout != n.shutdown_timeout,
    );
    let shared = |c: &Config| {
        c.shared.as_ref().map(|s| {
            (
                s.redis_url.clone(),
                s.redis_url_env.clone(),
                s.namespace.clone(),
                s.timeout,
                s.max_replicas,
            )
        })
    };
    check("[shared]", shared(old) != shared(new));
    check(
        "[webhooks] (turned on: its relay queue is journaled in state.dir only from a start)",
        old.webhooks.is_none() && new.webhooks.is_some() && new.state.dir.is_some(),
    );
    check(
        "[state]",
        old.state.dir != new.state.dir
            || old.state.snapshot_interval != new.state.snapshot_interval,
    );
    changed
}

//! The shared tier: replicas that act as one gateway through one Redis.
//!
//! What goes through it: stored answers (a second cache tier, `tier`), the lock that
//! lets one replica fetch a cold answer while the others wait for it (`tier`), the
//! account's quota and the 429 gate (`quota`), and invalidations (`bus`). Names are in
//! `keys`, the Lua scripts in `scripts`.
//!
//! Redis is an optimisation, never a dependency. Every command is bounded by
//! `shared.timeout`; a failure or a timeout opens a breaker that skips Redis for a few
//! seconds, during which each replica serves from its own cache under its share of the
//! quota (`rate_limit / max_replicas`) and its own 429 gate. A watch task probes Redis
//! and closes the breaker by itself once Redis answers. The tier is in use ("shared
//! mode") only while commands work and the invalidation subscription is up: a replica
//! that cannot hear the others' purges must not trust what it holds, so when the
//! subscription comes back after a loss it drops its local cache. One log line when
//! shared mode is lost, one when it is back; `exagate_shared_mode` says which.

pub mod bus;
pub mod hooks;
pub mod keys;
pub mod quota;
pub mod relay;
pub mod scripts;
pub mod tier;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script};

use crate::config::{redact_url, SharedConfig};
use crate::metrics::Metrics;
use crate::secret::ApiKey;
pub use keys::Keys;

/// How long Redis is skipped after a failed or slow command.
const BREAK_FOR: Duration = Duration::from_secs(2);

/// How often the watch task probes Redis (and the subscription is pinged).
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Why the tier did not answer: the caller goes on without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// The compiled scripts, loaded once (EVALSHA; `Script` reloads them on `NOSCRIPT`, after
/// a Redis restart).
struct Scripts {
    find_or_lock: Script,
    relay_offer: Script,
    relay_claim: Script,
    relay_finish: Script,
    store: Script,
    unlock: Script,
    purge: Script,
    renew: Script,
    next_generation: Script,
    probe: Script,
    take: Script,
    refund: Script,
    close_gate: Script,
}

/// The handle every replica's requests share.
pub struct Shared {
    /// The command connection; replaced when it keeps failing (see `watch`).
    conn: arc_swap::ArcSwap<ConnectionManager>,
    manager: ConnectionManagerConfig,
    client: redis::Client,
    /// Names of keys and the channel.
    pub keys: Keys,
    timeout: Duration,
    scripts: Scripts,
    metrics: Arc<Metrics>,
    /// This process, so it can skip its own invalidation messages.
    node: String,
    /// The generation of the names in use (see `keys`).
    generation: AtomicU64,
    /// How long a job's purge mark refuses fills, ms: above `upstream.timeout`, so every
    /// fill that began before the purge has ended before the mark does.
    marker_ttl_ms: AtomicU64,
    /// The password, if the URL holds one: scrubbed from any error text before logging.
    password: Option<String>,
    /// Breaker: Redis is skipped until then (ms since `epoch`).
    broken_until: AtomicU64,
    epoch: Instant,
    /// The invalidation subscription is up.
    subscribed: AtomicBool,
    /// What was last reported (log line and gauge), to report changes once.
    reported: AtomicBool,
    /// Invalidations that could not be sent while Redis was away, sent once it is back.
    pending: Mutex<Vec<bus::Invalidation>>,
    /// The account's quota as the GCRA sees it (interval ms, burst), for the probe.
    quota: Mutex<(u64, u32)>,
    /// The account's tokens left as of the last probe (-1: no quota or not known).
    account_left: std::sync::atomic::AtomicI64,
    /// Set when shared mode is lost, taken by the guard (see `take_lost`).
    lost: AtomicBool,
}

impl Shared {
    /// A handle for `config`, connecting lazily: a Redis that is down at start costs
    /// nothing but a log line, and the gateway starts and serves. `Err` only for a URL
    /// the client cannot use (validated earlier, so in practice never).
    pub fn new(
        config: &SharedConfig,
        url: &str,
        upstream_url: &str,
        key: &ApiKey,
        upstream_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Shared>, String> {
        let client = redis::Client::open(url).map_err(|_| {
            format!(
                "the Redis URL ({}, from shared.redis_url or shared.redis_url_env) is not one the client can use",
                redact_url(url)
            )
        })?;
        let password = client
            .get_connection_info()
            .redis_settings()
            .password()
            .map(str::to_owned);
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager.clone())
            .map_err(|_| "the Redis connection could not be set up".to_string())?;
        let fingerprint = key.fingerprint(upstream_url);
        let shared = Arc::new(Shared {
            conn: arc_swap::ArcSwap::from_pointee(conn),
            manager,
            quota: Mutex::new((0, 0)),
            account_left: std::sync::atomic::AtomicI64::new(-1),
            lost: AtomicBool::new(false),
            client,
            keys: Keys::new(&config.namespace, fingerprint),
            timeout: config.timeout,
            scripts: Scripts {
                find_or_lock: Script::new(scripts::FIND_OR_LOCK),
                relay_offer: Script::new(scripts::RELAY_OFFER),
                relay_claim: Script::new(scripts::RELAY_CLAIM),
                relay_finish: Script::new(scripts::RELAY_FINISH),
                store: Script::new(scripts::STORE),
                unlock: Script::new(scripts::UNLOCK),
                purge: Script::new(scripts::PURGE),
                renew: Script::new(scripts::RENEW),
                next_generation: Script::new(scripts::NEXT_GENERATION),
                probe: Script::new(scripts::PROBE),
                take: Script::new(scripts::TAKE),
                refund: Script::new(scripts::REFUND),
                close_gate: Script::new(scripts::CLOSE_GATE),
            },
            metrics,
            node: uuid::Uuid::new_v4().to_string(),
            generation: AtomicU64::new(0),
            marker_ttl_ms: AtomicU64::new(0),
            password,
            broken_until: AtomicU64::new(0),
            epoch: Instant::now(),
            subscribed: AtomicBool::new(false),
            reported: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
        });
        shared.set_upstream_timeout(upstream_timeout);
        shared.metrics.shared_mode.set(0);
        Ok(shared)
    }

    /// Follows a reloaded `upstream.timeout` (the purge mark outlives it by 2 s).
    pub fn set_upstream_timeout(&self, timeout: Duration) {
        let ms = u64::try_from((timeout + Duration::from_secs(2)).as_millis()).unwrap_or(u64::MAX);
        self.marker_ttl_ms.store(ms, Ordering::Relaxed);
    }

    /// The account's rate, for the probe's reading of its level (the guard sets it, and
    /// again on reload).
    pub fn set_quota(&self, rate: Option<crate::config::Rate>, burst: Option<u32>) {
        *self.quota.lock().unwrap_or_else(PoisonError::into_inner) = quota::interval(rate, burst);
    }

    /// The account's tokens left as the last probe saw them (`None`: unknown, no quota).
    pub fn account_left(&self) -> Option<i64> {
        let left = self.account_left.load(Ordering::Acquire);
        (left >= 0).then_some(left)
    }

    /// Whether shared mode was lost since the last call (once per loss): the guard then
    /// brings its local share down to this replica's part of what the account had left.
    pub fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::AcqRel)
    }

    /// The metrics it counts in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn marker_ttl_ms(&self) -> u64 {
        self.marker_ttl_ms.load(Ordering::Relaxed)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The generation of the names this replica uses now (for operators' tooling and
    /// tests: replicas follow the counter in Redis within a probe).
    pub fn current_generation(&self) -> u64 {
        self.generation()
    }

    fn since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether requests use the tier now: commands work and the subscription is up.
    pub fn usable(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
            && self.since_epoch() >= self.broken_until.load(Ordering::Acquire)
    }

    /// Logs (once) and publishes a change of mode.
    fn report(&self) {
        let now = self.usable();
        if self.reported.swap(now, Ordering::AcqRel) != now {
            self.metrics.shared_mode.set(i64::from(now));
            if !now {
                self.lost.store(true, Ordering::Release);
            }
            if now {
                tracing::info!("shared tier on: Redis answers; cache, quota and invalidations shared with the other replicas");
            } else {
                tracing::warn!("shared tier lost: Redis unreachable, slow or unsubscribed; serving from the local cache under the local quota share until it is back");
            }
        }
    }

    fn trip(&self) {
        let until = self.since_epoch() + u64::try_from(BREAK_FOR.as_millis()).unwrap_or(0);
        self.broken_until.fetch_max(until, Ordering::AcqRel);
        self.report();
    }

    /// A Redis error's text with any password scrubbed, for a log line.
    fn describe(&self, e: &redis::RedisError) -> String {
        let text = e.to_string();
        match &self.password {
            Some(p) if !p.is_empty() => text.replace(p.as_str(), "***"),
            _ => text,
        }
    }

    /// Runs one command or script on Redis within `shared.timeout`, counting it; skipped
    /// (without a round trip) while the tier is not usable, unless `always`.
    async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        always: bool,
        call: F,
    ) -> Result<T, Unavailable>
    where
        T: FromRedisValue,
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !always && !self.usable() {
            self.metrics.shared_op(op, "skipped");
            return Err(Unavailable);
        }
        let started = Instant::now();
        let conn = ConnectionManager::clone(&self.conn.load());
        let outcome = tokio::time::timeout(self.timeout, call(conn)).await;
        self.metrics
            .shared_seconds
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(value)) => {
                self.metrics.shared_op(op, "ok");
                Ok(value)
            }
            Ok(Err(e)) if about_the_data(&e) => {
                // One key holds something unexpected: that answer is a miss, and Redis
                // stays in use for everything else.
                self.metrics.shared_op(op, "invalid");
                tracing::debug!(op, error = %self.describe(&e), "Redis refused a command over what a key holds");
                Err(Unavailable)
            }
            Ok(Err(e)) => {
                self.metrics.shared_op(op, "error");
                tracing::debug!(op, error = %self.describe(&e), "Redis command failed");
                self.trip();
                Err(Unavailable)
            }
            Err(_) => {
                self.metrics.shared_op(op, "timeout");
                tracing::debug!(op, "Redis command timed out (shared.timeout)");
                self.trip();
                Err(Unavailable)
            }
        }
    }

    /// Starts the tasks that keep the tier going: the subscription (with `on_message`
    /// for what other replicas invalidate, `on_resubscribe` when local copies may have
    /// missed some) and the watch that probes Redis.
    pub fn start(self: &Arc<Self>, gateway: std::sync::Weak<crate::gateway::Gateway>) {
        tokio::spawn(bus::subscribe(Arc::clone(self), gateway));
        tokio::spawn(watch(Arc::downgrade(self)));
    }

    /// Reads the generation (repairing a junk counter) and takes it as this replica's;
    /// with `quota`, also what the account has left. One round trip.
    async fn probe(&self, op: &'static str, quota: bool) -> Result<(), Unavailable> {
        let (t, burst) = if quota {
            *self.quota.lock().unwrap_or_else(PoisonError::into_inner)
        } else {
            (0, 0)
        };
        let script = &self.scripts.probe;
        let (counter, account) = (self.keys.generation(), self.keys.quota());
        let (generation, left) = self
            .run::<(u64, i64), _, _>(op, true, |mut c| async move {
                script
                    .key(counter)
                    .key(account)
                    .arg(t)
                    .arg(burst)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        self.generation.store(generation, Ordering::Release);
        if quota {
            self.account_left.store(left, Ordering::Release);
        }
        Ok(())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<bus::Invalidation>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether an error is about what one key holds (a wrong type, a value that is not a
/// number, a script tripping over either, a reply of an unexpected shape) rather than
/// about Redis being reachable and answering.
fn about_the_data(e: &redis::RedisError) -> bool {
    if matches!(
        e.kind(),
        redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse
    ) && !e.is_io_error()
    {
        return true;
    }
    let text = e.to_string();
    ["WRONGTYPE", "not an integer", "user_script", "attempt to "]
        .iter()
        .any(|sign| text.contains(sign))
}

/// Runs `task` on the current runtime, if there is one (a token dropped outside any
/// runtime, at exit, has nothing left to give back to).
fn spawn<F>(task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(task);
    }
}

/// Probes Redis every `PROBE_EVERY`, closes the breaker when it answers, and sends the
/// invalidations that waited for it.
async fn watch(shared: std::sync::Weak<Shared>) {
    let mut first = true;
    let mut failures = 0u32;
    loop {
        let Some(s) = shared.upgrade() else { return };
        // Always, not only while broken: a frozen Redis (kill -STOP) fails no command
        // that is not sent, and this is how an idle gateway notices. The probe also reads
        // the generation (so every replica follows "empty everything" within a probe,
        // whatever messages it missed) and the account's tokens left.
        {
            match s.probe("ping", true).await {
                Ok(()) => {
                    failures = 0;
                    s.broken_until.store(0, Ordering::Release);
                }
                Err(_) => {
                    failures += 1;
                    if first {
                        tracing::warn!("shared tier: Redis does not answer at start; serving on the local cache until it does");
                    }
                    // A connection that keeps failing may be stuck on an error it will
                    // not recover from by itself (a password refused once): a new one.
                    if failures % 4 == 0 {
                        if let Ok(fresh) = ConnectionManager::new_lazy_with_config(
                            s.client.clone(),
                            s.manager.clone(),
                        ) {
                            s.conn.store(Arc::new(fresh));
                        }
                    }
                }
            }
            first = false;
        }
        s.report();
        if s.usable() {
            bus::flush_pending(&s).await;
        }
        drop(s);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

//! Prometheus metrics, served on the admin listener.
//!
//! Label values are bounded sets (route names, status codes, cache outcomes, configured
//! client names), never ids or paths, so the series count cannot grow with traffic. The
//! key never appears: nothing that holds it is ever a label.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of `exagate_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name (`job`, `chunks`, ...; `none` when unrouted).
    pub route: &'static str,
    /// Response status.
    pub status: u16,
    /// `hit`, `miss` or `bypass`.
    pub cache: &'static str,
    /// The configured client's name; empty when the gateway is open.
    pub client: ClientLabel,
}

/// A client's name as a label value, sharing the name's allocation (no copy per request).
#[derive(Clone, Debug, Hash, PartialEq, Eq, Default)]
pub struct ClientLabel(pub Option<std::sync::Arc<str>>);

impl prometheus_client::encoding::EncodeLabelValue for ClientLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.0.as_deref().unwrap_or(""))
    }
}

/// Labels of `exagate_upstream_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Route name.
    pub route: &'static str,
    /// Upstream status, or `error`/`timeout` when there was none.
    pub status: String,
}

/// Labels with a single `cause`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    /// Why.
    pub cause: &'static str,
}

/// Labels of `exagate_upstream_calls_saved_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SavedLabels {
    /// `hit` (answered from the cache) or `coalesced` (by another request's call).
    pub reason: &'static str,
}

/// Labels of `exagate_shared_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SharedLabels {
    /// What was asked of Redis (`lookup`, `get`, `store`, `quota`, ...).
    pub op: &'static str,
    /// `ok`, `hit`, `miss`, `error`, `timeout`, `skipped`, ...
    pub result: &'static str,
}

/// Labels of `exagate_quota_decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    /// `shared` (on Redis) or `local` (this process's bucket).
    pub mode: &'static str,
    /// `allowed` or `refused`.
    pub result: &'static str,
}

/// Labels with a single `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of `exagate_webhook_relayed_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayLabels {
    /// The subscriber's name (from the config: bounded).
    pub subscriber: String,
    /// `delivered`, `retry`, `failed` or `disabled`.
    pub outcome: &'static str,
}

/// Labels of `exagate_webhook_queue_depth`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// `pending` or `failed`.
    pub status: &'static str,
}

/// The label values of the families with a fixed set of them. Their series are created
/// at zero when the gateway starts: Prometheus sees each from the first scrape, so a
/// `rate()` or an alert on `increase()` counts the first event too, and a dashboard
/// shows 0 rather than "no data".
pub const EVICTION_CAUSES: [&str; 4] = ["expired", "size", "explicit", "replaced"];
/// See [`EVICTION_CAUSES`].
pub const REFUSAL_CAUSES: [&str; 3] = ["quota_exhausted", "upstream_rate_limited", "upstream_busy"];
/// See [`EVICTION_CAUSES`].
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "error"];
/// See [`EVICTION_CAUSES`] (the server's `Reason`s).
pub const CLOSE_CAUSES: [&str; 5] = [
    "head_timeout",
    "idle",
    "goodbye_timeout",
    "shutdown",
    "send_timeout",
];

/// See [`EVICTION_CAUSES`]: what became of each delivery to the webhook receiver.
pub const RECEIVED_OUTCOMES: [&str; 7] = [
    "primed",
    "not_stored",
    "unknown_job",
    "unscoped",
    "duplicate",
    "stale",
    "refused",
];

/// See [`EVICTION_CAUSES`]: why an answer was not stored.
pub const NOT_STORED_REASONS: [&str; 6] = [
    "status",
    "disabled",
    "past_retention",
    "no_created_at",
    "job_not_completed",
    "links_expiring",
];

/// Every metric the gateway keeps.
pub struct Metrics {
    /// The registry the admin listener encodes.
    registry: Registry,
    /// Requests answered, by route, status, cache outcome and client.
    pub requests: Family<RequestLabels, Counter>,
    /// Upstream calls, by route and status.
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    /// Upstream call latency (to the response head for streamed routes, to the last
    /// byte for cached ones).
    pub upstream_duration: Histogram,
    /// Requests answered by another request's upstream call.
    pub coalesced: Counter,
    /// Requests answered without the upstream call they would otherwise have cost, by
    /// reason; the two series are held directly (a hit pays no label lookup).
    saved_hit: Counter,
    saved_coalesced: Counter,
    /// Streamed upstream bodies cut after `upstream.timeout` without a byte.
    pub upstream_body_stalls: Counter,
    /// Forwarded responses ended because the client read nothing for `server.send_timeout`.
    pub send_timeouts: Counter,
    /// Fetched answers not stored because an invalidation came after their fetch began.
    pub fills_discarded: Counter,
    /// Client connections the server closed, by reason (`head_timeout`, `idle`,
    /// `goodbye_timeout`, `shutdown`).
    pub connections_closed: Family<CauseLabels, Counter>,
    /// Cache entries removed, by cause (`expired`, `size`, `explicit`, `replaced`).
    pub evictions: Family<CauseLabels, Counter>,
    /// Requests refused by the gateway's own protections, by code.
    pub refusals: Family<CauseLabels, Counter>,
    /// Config reloads, by result.
    pub reloads: Family<ResultLabels, Counter>,
    /// Redis commands of the shared tier, by operation and result.
    pub shared_requests: Family<SharedLabels, Counter>,
    /// Redis command latency.
    pub shared_seconds: Histogram,
    /// 1 while the shared tier is in use, 0 while this process is on its own.
    pub shared_mode: Gauge,
    /// Requests that waited for another replica's fetch.
    pub lock_waits: Counter,
    /// Locks taken over after their holder let go without an answer, or died.
    pub lock_takeovers: Counter,
    /// Invalidations sent to the other replicas.
    pub invalidations_sent: Counter,
    /// Invalidations received from the other replicas.
    pub invalidations_received: Counter,
    /// Quota decisions, by mode and result.
    pub quota_decisions: Family<QuotaLabels, Counter>,
    /// Cache entries (set at scrape time).
    pub cache_entries: Gauge,
    /// Cache weight in bytes (set at scrape time).
    pub cache_bytes: Gauge,
    /// Bytes of decompressed bodies the front table holds, part of `cache_bytes` (set at
    /// scrape time).
    pub cache_front_bytes: Gauge,
    /// Bytes of decompressed copies alive, the front table's and those being sent (set at
    /// scrape time).
    pub cache_copies_bytes: Gauge,
    /// Tokens left in the quota bucket; -1 when no limit (set at scrape time).
    pub quota_tokens: Gauge<f64, AtomicU64>,
    /// The most tokens the quota bucket holds (its burst); -1 when no limit (set at
    /// scrape time).
    pub quota_burst: Gauge<f64, AtomicU64>,
    /// Seconds until the 429 cooldown reopens; 0 when open (set at scrape time).
    pub cooldown_seconds: Gauge<f64, AtomicU64>,
    /// Upstream calls in flight for lookups (set at scrape time).
    pub upstream_in_flight: Gauge,
    /// Forwarded calls in flight, bodies included (set at scrape time).
    pub upstream_streams_in_flight: Gauge,
    /// 1 while ready to take traffic, 0 while draining (set at scrape time).
    pub ready: Gauge,
    /// Deliveries to the webhook receiver, by outcome.
    pub webhooks_received: Family<CauseLabels, Counter>,
    /// Attempts to relay events to subscribers, by subscriber and outcome.
    pub webhooks_relayed: Family<RelayLabels, Counter>,
    /// Relay deliveries pending or given up (set at scrape time).
    pub webhook_queue: Family<StatusLabels, Gauge>,
    /// Long-polls held now (set at scrape time).
    pub waiters: Gauge,
    /// Answers not stored, by reason (the policy's `NoCacheReason`).
    pub not_stored: Family<CauseLabels, Counter>,
    /// Job entries kept shorter than their state allows because a signed link in them
    /// dies sooner (less `cache.link_margin`).
    pub link_shortened: Counter,
    /// The hottest series, `requests{route="job",status="200",cache="hit",client=""}`,
    /// held directly so an open gateway's hits skip the family's lock and label hashing.
    open_job_hits: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("exagate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered", requests.clone());
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_requests",
            "Calls made to the upstream",
            upstream_requests.clone(),
        );
        // 1 ms .. ~33 s.
        let upstream_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "upstream_duration_seconds",
            "Upstream call latency",
            upstream_duration.clone(),
        );
        let coalesced = Counter::default();
        registry.register(
            "coalesced_requests",
            "Requests answered by another request's upstream call",
            coalesced.clone(),
        );
        let calls_saved = Family::<SavedLabels, Counter>::default();
        registry.register(
            "upstream_calls_saved",
            "Requests answered without the upstream call they would otherwise have cost (hit: from the cache; coalesced: by another request's call)",
            calls_saved.clone(),
        );
        // Both series exist from the start, so a dashboard's rate() has them before the
        // first hit.
        let saved_hit = calls_saved
            .get_or_create(&SavedLabels { reason: "hit" })
            .clone();
        let saved_coalesced = calls_saved
            .get_or_create(&SavedLabels {
                reason: "coalesced",
            })
            .clone();
        let upstream_body_stalls = Counter::default();
        registry.register(
            "upstream_body_stalls",
            "Streamed upstream bodies cut after upstream.timeout without a byte",
            upstream_body_stalls.clone(),
        );
        let send_timeouts = Counter::default();
        registry.register(
            "send_timeouts",
            "Forwarded responses ended because the client read nothing for server.send_timeout",
            send_timeouts.clone(),
        );
        let fills_discarded = Counter::default();
        registry.register(
            "cache_fills_discarded",
            "Fetched answers not stored because a purge or job action came after their fetch began",
            fills_discarded.clone(),
        );
        let connections_closed = Family::<CauseLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Client connections the gateway closed, by reason",
            connections_closed.clone(),
        );
        let evictions = Family::<CauseLabels, Counter>::default();
        registry.register(
            "cache_evictions",
            "Cache entries removed",
            evictions.clone(),
        );
        let refusals = Family::<CauseLabels, Counter>::default();
        registry.register(
            "guard_refusals",
            "Requests refused by the quota guard, the 429 cooldown or the concurrency cap",
            refusals.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register("config_reloads", "Configuration reloads", reloads.clone());
        let shared_requests = Family::<SharedLabels, Counter>::default();
        registry.register(
            "shared_requests",
            "Redis commands of the shared tier, by operation and result",
            shared_requests.clone(),
        );
        // 0.1 ms .. ~3 s.
        let shared_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        registry.register(
            "shared_command_seconds",
            "Redis command latency of the shared tier",
            shared_seconds.clone(),
        );
        let shared_mode = Gauge::default();
        registry.register(
            "shared_mode",
            "1 while the shared tier (Redis) is in use, 0 while this process is on its own",
            shared_mode.clone(),
        );
        let lock_waits = Counter::default();
        registry.register(
            "shared_lock_waits",
            "Fetches (one per replica, however many of its requests joined) that waited for another replica's fetch of the same answer",
            lock_waits.clone(),
        );
        let lock_takeovers = Counter::default();
        registry.register(
            "shared_lock_takeovers",
            "Coalescing locks taken after their holder let go without an answer or died",
            lock_takeovers.clone(),
        );
        let invalidations_sent = Counter::default();
        registry.register(
            "shared_invalidations_sent",
            "Invalidations sent to the other replicas",
            invalidations_sent.clone(),
        );
        let invalidations_received = Counter::default();
        registry.register(
            "shared_invalidations_received",
            "Invalidations received from the other replicas",
            invalidations_received.clone(),
        );
        let quota_decisions = Family::<QuotaLabels, Counter>::default();
        registry.register(
            "quota_decisions",
            "Upstream quota decisions, by mode (shared on Redis, or local) and result",
            quota_decisions.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Entries in the cache",
            cache_entries.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_bytes",
            "Weight of the cache in bytes",
            cache_bytes.clone(),
        );
        let cache_front_bytes = Gauge::default();
        registry.register(
            "cache_front_bytes",
            "Bytes of decompressed bodies kept for hot entries (part of exagate_cache_bytes)",
            cache_front_bytes.clone(),
        );
        let cache_copies_bytes = Gauge::default();
        registry.register(
            "cache_copies_bytes",
            "Bytes of decompressed copies alive: the front table's and those of answers being sent, one per entry",
            cache_copies_bytes.clone(),
        );
        let quota_tokens = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "quota_tokens",
            "Tokens left in the upstream quota bucket (-1: no limit)",
            quota_tokens.clone(),
        );
        let quota_burst = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "quota_burst",
            "The most tokens the upstream quota bucket holds (-1: no limit)",
            quota_burst.clone(),
        );
        let cooldown_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "upstream_cooldown_seconds",
            "Seconds until upstream calls resume after a 429 (0: open)",
            cooldown_seconds.clone(),
        );
        let upstream_in_flight = Gauge::default();
        registry.register(
            "upstream_in_flight",
            "Upstream calls in flight",
            upstream_in_flight.clone(),
        );
        let upstream_streams_in_flight = Gauge::default();
        registry.register(
            "upstream_streams_in_flight",
            "Forwarded upstream calls in flight, bodies included (upstream.max_streams)",
            upstream_streams_in_flight.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when taking traffic, 0 when draining",
            ready.clone(),
        );
        let webhooks_received = Family::<CauseLabels, Counter>::default();
        registry.register(
            "webhook_deliveries_received",
            "Deliveries to the webhook receiver, by outcome (primed, not_stored, unknown_job, unscoped, duplicate, stale, refused)",
            webhooks_received.clone(),
        );
        let webhooks_relayed = Family::<RelayLabels, Counter>::default();
        registry.register(
            "webhook_relayed",
            "Attempts to relay events to subscribers, by subscriber and outcome",
            webhooks_relayed.clone(),
        );
        let webhook_queue = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "webhook_queue_depth",
            "Relay deliveries pending or given up",
            webhook_queue.clone(),
        );
        let waiters = Gauge::default();
        registry.register(
            "longpoll_waiters",
            "Long-polls (?wait=) held now",
            waiters.clone(),
        );
        let not_stored = Family::<CauseLabels, Counter>::default();
        registry.register(
            "answers_not_stored",
            "Upstream answers not stored, by reason (status, disabled, past_retention, no_created_at, job_not_completed, links_expiring)",
            not_stored.clone(),
        );
        for cause in NOT_STORED_REASONS {
            let _ = not_stored.get_or_create(&CauseLabels { cause });
        }
        let link_shortened = Counter::default();
        registry.register(
            "cache_link_shortened",
            "Job entries kept shorter than their state allows because a signed link in them dies sooner",
            link_shortened.clone(),
        );
        for cause in RECEIVED_OUTCOMES {
            let _ = webhooks_received.get_or_create(&CauseLabels { cause });
        }
        for status in ["pending", "failed"] {
            let _ = webhook_queue.get_or_create(&StatusLabels { status });
        }
        for cause in EVICTION_CAUSES {
            let _ = evictions.get_or_create(&CauseLabels { cause });
        }
        for cause in REFUSAL_CAUSES {
            let _ = refusals.get_or_create(&CauseLabels { cause });
        }
        for cause in CLOSE_CAUSES {
            let _ = connections_closed.get_or_create(&CauseLabels { cause });
        }
        for result in RELOAD_RESULTS {
            let _ = reloads.get_or_create(&ResultLabels { result });
        }
        let open_job_hits = requests
            .get_or_create(&RequestLabels {
                route: "job",
                status: 200,
                cache: "hit",
                client: ClientLabel(None),
            })
            .clone();
        Metrics {
            open_job_hits,
            registry,
            requests,
            upstream_requests,
            upstream_duration,
            coalesced,
            saved_hit,
            saved_coalesced,
            upstream_body_stalls,
            send_timeouts,
            fills_discarded,
            connections_closed,
            evictions,
            refusals,
            reloads,
            shared_requests,
            shared_seconds,
            shared_mode,
            lock_waits,
            lock_takeovers,
            invalidations_sent,
            invalidations_received,
            quota_decisions,
            cache_entries,
            cache_bytes,
            cache_front_bytes,
            cache_copies_bytes,
            quota_tokens,
            quota_burst,
            cooldown_seconds,
            upstream_in_flight,
            upstream_streams_in_flight,
            ready,
            webhooks_received,
            webhooks_relayed,
            webhook_queue,
            waiters,
            not_stored,
            link_shortened,
        }
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts one answered request.
    pub fn request(&self, labels: RequestLabels) {
        let hot = labels.client.0.is_none()
            && labels.status == 200
            && labels.cache == "hit"
            && labels.route == "job";
        if hot {
            self.open_job_hits.inc();
        } else {
            self.requests.get_or_create(&labels).inc();
        }
    }

    /// Counts one request answered without an upstream call of its own: from the cache
    /// (`hit`) or by another request's call (`coalesced`).
    pub fn call_saved(&self, hit: bool) {
        if hit {
            self.saved_hit.inc();
        } else {
            self.saved_coalesced.inc();
        }
    }

    /// Counts one delivery to the webhook receiver.
    pub fn webhook_received(&self, cause: &'static str) {
        self.webhooks_received
            .get_or_create(&CauseLabels { cause })
            .inc();
    }

    /// Counts one relay attempt.
    pub fn webhook_relayed(&self, subscriber: &str, outcome: &'static str) {
        self.webhooks_relayed
            .get_or_create(&RelayLabels {
                subscriber: subscriber.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts one Redis command of the shared tier.
    pub fn shared_op(&self, op: &'static str, result: &'static str) {
        self.shared_requests
            .get_or_create(&SharedLabels { op, result })
            .inc();
    }

    /// Counts one quota decision.
    pub fn quota_decision(&self, mode: &'static str, allowed: bool) {
        let result = if allowed { "allowed" } else { "refused" };
        self.quota_decisions
            .get_or_create(&QuotaLabels { mode, result })
            .inc();
    }

    /// Counts one upstream call.
    pub fn upstream_call(&self, route: &'static str, status: String, seconds: f64) {
        self.upstream_requests
            .get_or_create(&UpstreamLabels { route, status })
            .inc();
        self.upstream_duration.observe(seconds);
    }
}

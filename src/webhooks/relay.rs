//! Relaying events to `[[webhooks.subscribers]]`: at least once, signed (Standard
//! Webhooks), retried with jitter until a 2xx or the job's end of life, one queue per
//! subscriber so a slow or dead one never holds up the others.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use time::OffsetDateTime;

use super::event::Event;
use super::outbox::{delivery_id, Delivery, Outbox, RetryRefused, Status};
use super::sign::SigningKey;
use crate::auth::ScopeRule;
use crate::cache::envelope::now_ms;
use crate::config::SubscriberConfig;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::shared::Shared;

/// Longest one attempt may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Attempts under way at once per subscriber.
pub const PER_SUBSCRIBER: usize = 4;

/// How often the queue is looked at when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);

/// One subscriber, as the current config has it.
pub struct Subscriber {
    /// Its name.
    pub name: String,
    /// Where deliveries go.
    pub url: Uri,
    key: SigningKey,
    rule: ScopeRule,
    events: Option<Vec<String>>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("name", &self.name)
            .field("url", &self.shown_url())
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// Builds one from its config, reading its secret from the environment. The error
    /// names the variable, never its value.
    pub fn new(config: &SubscriberConfig) -> Result<Subscriber, String> {
        let secret = std::env::var(&config.secret_env).map_err(|_| {
            format!(
                "webhooks.subscribers `{}`: the variable {} (secret_env) is not set",
                config.name, config.secret_env
            )
        })?;
        let key = SigningKey::parse(&secret).map_err(|why| {
            format!(
                "webhooks.subscribers `{}`: the secret in {} {why}",
                config.name, config.secret_env
            )
        })?;
        let url = config
            .url
            .parse()
            .map_err(|_| format!("webhooks.subscribers `{}`: url is not a URL", config.name))?;
        Ok(Subscriber {
            name: config.name.clone(),
            url,
            key,
            rule: ScopeRule::new(config.bases.as_deref(), config.workspace),
            events: config.events.clone(),
        })
    }

    /// Whether it hears of `event`: its scopes allow the job's, and it wants the type.
    pub fn wants(&self, event: &Event) -> bool {
        self.rule.allows(event.scope)
            && self
                .events
                .as_ref()
                .is_none_or(|e| e.iter().any(|k| k == event.kind))
    }

    /// Its URL without query or credentials, for the admin routes and logs (a query may
    /// hold a token of the app's).
    pub fn shown_url(&self) -> String {
        crate::config::shown_subscriber_url(&self.url.to_string())
    }
}

/// The relay: its queues and the client that empties them.
///
/// With `[shared]` the queue is in Redis (one per subscriber for all replicas); while
/// Redis is away, and without `[shared]`, it is this process's outbox (journaled in
/// `state.dir`). The scheduler empties both.
pub struct Relay {
    /// This process's queue: what is waiting, done and given up here.
    pub outbox: Outbox,
    shared: Option<Arc<Shared>>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    wake: tokio::sync::Notify,
    metrics: Arc<Metrics>,
    /// Attempts under way here, by subscriber (both queues').
    in_flight: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// Which queue a claimed delivery came from, and goes back to.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Local,
    Shared,
}

impl Relay {
    /// A relay whose outbox is journaled in `dir` (or kept in memory without one),
    /// trusting the public roots and `ca_file` (`upstream.ca_file`: subscribers are often
    /// internal apps behind the same private CA).
    pub fn new(
        dir: Option<&Path>,
        ca_file: Option<&Path>,
        shared: Option<Arc<Shared>>,
        metrics: Arc<Metrics>,
    ) -> Result<Relay, crate::BoxError> {
        let outbox = match dir {
            Some(dir) => Outbox::open(dir).unwrap_or_else(|e| {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot use the webhook journal in the state directory: deliveries are kept in memory only");
                Outbox::in_memory()
            }),
            None => Outbox::in_memory(),
        };
        let client = https_client(crate::proxy::upstream::client_tls(ca_file)?);
        Ok(Relay {
            outbox,
            shared,
            in_flight: std::sync::Mutex::new(std::collections::HashMap::new()),
            client,
            wake: tokio::sync::Notify::new(),
            metrics,
        })
    }

    /// Queues `event` for every subscriber that hears of it, once per subscriber (a
    /// duplicate event is a no-op). Returns how many deliveries were queued.
    pub async fn emit(
        &self,
        subscribers: &[Arc<Subscriber>],
        event: &Event,
        retention: Duration,
    ) -> usize {
        let now = now_ms();
        let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        let end = event
            .created_at
            .and_then(|at| u64::try_from(at.unix_timestamp()).ok())
            .map_or(now.saturating_add(retention_ms), |secs| {
                secs.saturating_mul(1000).saturating_add(retention_ms)
            });
        // A cleaned job is past its end by definition: still worth an hour of attempts;
        // and a `createdAt` in the future (the upstream's word) buys no more than a
        // job's whole life from now.
        let give_up_at = end
            .max(now.saturating_add(3_600_000))
            .min(now.saturating_add(retention_ms.max(3_600_000)));
        let payload = event.payload(OffsetDateTime::now_utc());
        let mut queued = 0;
        for subscriber in subscribers.iter().filter(|s| s.wants(event)) {
            let delivery = Delivery {
                id: delivery_id(&event.id, &subscriber.name),
                subscriber: subscriber.name.clone(),
                event: event.id.clone(),
                kind: event.kind.to_owned(),
                job: event.job,
                payload: payload.clone(),
                status: Status::Pending,
                attempts: 0,
                created_at: now,
                next_at: now,
                give_up_at,
                last_outcome: None,
            };
            let offered = match self.usable() {
                Some(shared) => match shared.relay_offer(&delivery).await {
                    Ok(queued) => queued,
                    // Redis away: kept here (another replica may relay it too: at least
                    // once).
                    Err(_) => self.outbox.offer(delivery),
                },
                None => self.outbox.offer(delivery),
            };
            if offered {
                queued += 1;
            }
        }
        if queued > 0 {
            self.wake.notify_one();
        }
        queued
    }

    /// Wakes the scheduler (an operator's retry, a subscriber enabled again).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// The scheduler: hands due deliveries to attempts, a few per subscriber at a time,
    /// until the gateway is gone.
    pub async fn run(self: Arc<Self>, gateway: Weak<Gateway>) {
        let mut pruned = now_ms();
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            let Some(gw) = gateway.upgrade() else { return };
            let live = gw.live();
            drop(gw);
            let Some(hooks) = live.webhooks.as_ref() else {
                continue;
            };
            let now = now_ms();
            for subscriber in &hooks.subscribers {
                if self.is_disabled(&subscriber.name).await {
                    continue;
                }
                let free = PER_SUBSCRIBER.saturating_sub(self.busy(&subscriber.name, 0));
                if free == 0 {
                    continue;
                }
                let mut claimed: Vec<(Delivery, Origin)> = self
                    .outbox
                    .claim(&subscriber.name, now, free)
                    .into_iter()
                    .map(|d| (d, Origin::Local))
                    .collect();
                if let Some(shared) = self.usable().filter(|_| claimed.len() < free) {
                    claimed.extend(
                        shared
                            .relay_claim(&subscriber.name, now, free - claimed.len())
                            .await
                            .into_iter()
                            .map(|d| (d, Origin::Shared)),
                    );
                }
                for (delivery, origin) in claimed {
                    self.busy(&subscriber.name, 1);
                    let relay = Arc::clone(&self);
                    let subscriber = Arc::clone(subscriber);
                    let schedule = hooks.retry_schedule.clone();
                    tokio::spawn(async move {
                        let done = relay.attempt(&subscriber, &schedule, delivery).await;
                        relay.finish(origin, done).await;
                        relay.busy(&subscriber.name, -1);
                    });
                }
            }
            if now.saturating_sub(pruned) > 5_000 {
                pruned = now;
                self.outbox.prune(now);
                self.orphans(&hooks.subscribers).await;
            }
        }
    }

    /// One attempt, and what it makes of the delivery.
    async fn attempt(
        &self,
        subscriber: &Subscriber,
        schedule: &[Duration],
        mut delivery: Delivery,
    ) -> Delivery {
        delivery.attempts += 1;
        let timestamp = u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
        let signature =
            subscriber
                .key
                .sign(&delivery.event, timestamp, delivery.payload.as_bytes());
        let request = Request::post(subscriber.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("exagate/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", delivery.event.as_str())
            .header("webhook-timestamp", timestamp)
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(delivery.payload.clone())));
        let request = match request {
            Ok(r) => r,
            Err(_) => {
                delivery.status = Status::Failed;
                delivery.last_outcome = Some("unsendable".into());
                return delivery;
            }
        };
        let outcome = tokio::time::timeout(TIMEOUT, self.client.request(request)).await;
        let now = now_ms();
        let (label, retry_after) = match outcome {
            Err(_) => ("timeout".to_owned(), None),
            Ok(Err(_)) => ("unreachable".to_owned(), None),
            Ok(Ok(response)) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(retry_after);
                // The body is not read: a subscriber that keeps streaming cannot hold
                // the attempt; the connection is dropped with the response.
                drop(response);
                if status.is_success() {
                    delivery.status = Status::Delivered;
                    delivery.last_outcome = Some(status.as_u16().to_string());
                    self.metrics.webhook_relayed(&subscriber.name, "delivered");
                    return delivery;
                }
                if status == StatusCode::GONE {
                    // The app says this endpoint is gone for good: no more attempts to
                    // it until an operator enables it again.
                    delivery.status = Status::Failed;
                    delivery.last_outcome = Some("410".into());
                    if self.set_disabled(&subscriber.name, true).await {
                        tracing::warn!(subscriber = %subscriber.name, "subscriber answered 410 Gone: disabled until enabled again on the admin listener");
                    }
                    self.metrics.webhook_relayed(&subscriber.name, "disabled");
                    return delivery;
                }
                (status.as_u16().to_string(), retry_after)
            }
        };
        let index = usize::try_from(delivery.attempts.saturating_sub(1)).unwrap_or(usize::MAX);
        let wait = schedule
            .get(index)
            .or(schedule.last())
            .copied()
            .unwrap_or(Duration::from_secs(60));
        let wait = jitter(wait).max(retry_after.unwrap_or_default());
        let next_at = now.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        if next_at <= delivery.give_up_at {
            tracing::info!(
                subscriber = %subscriber.name,
                delivery = %delivery.id,
                attempt = delivery.attempts,
                outcome = %label,
                retry_in = ?wait,
                "webhook delivery failed; it is retried"
            );
        }
        delivery.last_outcome = Some(label);
        if next_at > delivery.give_up_at {
            delivery.status = Status::Failed;
            self.metrics.webhook_relayed(&subscriber.name, "failed");
            tracing::warn!(subscriber = %subscriber.name, delivery = %delivery.id, attempts = delivery.attempts, "webhook delivery given up: the job's data is gone by the next attempt");
        } else {
            delivery.next_at = next_at;
            self.metrics.webhook_relayed(&subscriber.name, "retry");
        }
        delivery
    }

    /// Tallies attempts under way for `subscriber` (`change` of +1 or -1; 0 reads).
    fn busy(&self, subscriber: &str, change: i32) -> usize {
        let mut busy = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = busy.entry(subscriber.to_owned()).or_insert(0);
        match change {
            1 => *n += 1,
            -1 => *n = n.saturating_sub(1),
            _ => {}
        }
        *n
    }

    /// The shared tier, while it is usable.
    fn usable(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref().filter(|s| s.usable())
    }

    async fn finish(&self, origin: Origin, delivery: Delivery) {
        match origin {
            Origin::Local => self.outbox.finish(delivery),
            Origin::Shared => {
                if let Some(shared) = &self.shared {
                    if shared.relay_finish(&delivery).await.is_err() {
                        tracing::warn!(delivery = %delivery.id, "could not record a webhook attempt in Redis: it is tried again when its claim ends");
                    }
                }
            }
        }
    }

    /// Whether a subscriber is disabled, here or (with `[shared]`) by any replica.
    pub async fn is_disabled(&self, subscriber: &str) -> bool {
        if self.outbox.is_disabled(subscriber) {
            return true;
        }
        match self.usable() {
            Some(shared) => shared.relay_disabled(subscriber).await,
            None => false,
        }
    }

    /// Disables or enables a subscriber, here and for every replica; whether it changed.
    pub async fn set_disabled(&self, subscriber: &str, disabled: bool) -> bool {
        let was = self.is_disabled(subscriber).await;
        self.outbox.set_disabled(subscriber, disabled);
        if let Some(shared) = &self.shared {
            shared.relay_set_disabled(subscriber, disabled).await;
        }
        was != disabled
    }

    /// Deliveries, newest first, filtered: this process's and (with `[shared]`) Redis's.
    pub async fn list(&self, status: Option<Status>, subscriber: Option<&str>) -> Vec<Delivery> {
        let mut list = self.outbox.list(status, subscriber);
        if let Some(shared) = self.usable() {
            for d in shared.relay_list().await {
                let wanted = status.is_none_or(|s| d.status == s)
                    && subscriber.is_none_or(|s| d.subscriber == s);
                if wanted && !list.iter().any(|l| l.id == d.id) {
                    list.push(d);
                }
            }
        }
        list.sort_by_key(|d| std::cmp::Reverse(d.created_at));
        list
    }

    /// Makes a delivery due now (an operator's retry), in whichever queue holds it; a
    /// delivered one only with `replay`.
    pub async fn retry_now(&self, id: &str, replay: bool) -> Result<Delivery, RetryRefused> {
        let now = now_ms();
        if let Some(shared) = self.usable() {
            if let Some(d) = shared.relay_get(id).await {
                let d = match d.retried(now, replay) {
                    Err(RetryRefused::Due(d)) => return Ok(*d),
                    other => other?,
                };
                if shared.relay_finish(&d).await.is_ok() {
                    self.wake.notify_one();
                    return Ok(d);
                }
            }
        }
        let d = match self.outbox.retry_now(id, now, replay) {
            Err(RetryRefused::Due(d)) => return Ok(*d),
            other => other?,
        };
        self.wake.notify_one();
        Ok(d)
    }

    /// Gives up the pending deliveries of this process's own queue whose subscriber is no
    /// longer configured (a reload removed it): nothing will ever send them. Not those in
    /// Redis: another replica (a rolling deploy) may still have that subscriber; they
    /// leave Redis with their job's life.
    async fn orphans(&self, configured: &[Arc<Subscriber>]) {
        let orphaned = |d: &Delivery| {
            d.status == Status::Pending && !configured.iter().any(|s| s.name == d.subscriber)
        };
        let give_up = |mut d: Delivery| {
            d.status = Status::Failed;
            d.last_outcome = Some("subscriber_removed".into());
            d
        };
        for d in self.outbox.list(Some(Status::Pending), None) {
            if orphaned(&d) {
                self.outbox.finish(give_up(d));
            }
        }
    }

    /// How many deliveries are in each status, for `subscriber` or all.
    pub async fn counts(&self, subscriber: Option<&str>) -> [(Status, usize); 3] {
        let mut counts = [
            (Status::Pending, 0),
            (Status::Delivered, 0),
            (Status::Failed, 0),
        ];
        for d in self.list(None, subscriber).await {
            for (status, n) in &mut counts {
                if *status == d.status {
                    *n += 1;
                }
            }
        }
        counts
    }

    /// Sets the queue gauges (at scrape time).
    pub async fn gauges(&self) {
        let counts = self.counts(None).await;
        for (status, n) in counts {
            if status == Status::Delivered {
                continue;
            }
            self.metrics
                .webhook_queue
                .get_or_create(&crate::metrics::StatusLabels {
                    status: status.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// An HTTP/1.1 client over plain TCP or TLS (`tls`), for the relay and the account's
/// settings.
pub fn https_client(
    tls: rustls::ClientConfig,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Longest `Retry-After` honoured: a subscriber asking for more is tried again after
/// this (its job's data may be gone before a longer wait ends).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` in seconds or as an HTTP date, capped at [`MAX_RETRY_AFTER`].
fn retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    let wait = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        // All digits but past u64: longer than any cap.
        Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => MAX_RETRY_AFTER,
        Err(_) => httpdate::parse_http_date(text)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// `wait` give or take a fifth, so retries of many deliveries do not arrive together.
pub fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(0.8 + 0.4 * fraction())
}

/// A random number in `[0, 1)`, for jitter: random enough for spreading, and already
/// linked (uuid v4 reads the OS's RNG).
pub fn fraction() -> f64 {
    (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_both_forms_and_capped() {
        let secs = |v: &str| retry_after(&HeaderValue::from_str(v).expect("value"));
        assert_eq!(secs("8"), Some(Duration::from_secs(8)));
        assert_eq!(secs("999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(secs("99999999999999999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(secs("-5"), None);
        assert_eq!(secs("Thu, 01 Jan 2099 00:00:00 GMT"), Some(MAX_RETRY_AFTER));
        assert_eq!(secs("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(secs("soon"), None);
    }
}

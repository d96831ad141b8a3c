//! The relay's queue in Redis (`[webhooks]` with `[shared]`): every replica offers each
//! event, the first offer queues it (so a subscriber gets it once, not once per replica),
//! and any replica's scheduler may claim it under a lease. Deliveries survive any
//! replica's restart, and a replica that dies mid-attempt gives its claims back when
//! their lease ends (at least once).

use super::{Shared, Unavailable};
use crate::webhooks::outbox::{Delivery, Status};

/// How long a claim lasts: longer than an attempt may take (15 s), with a margin.
pub const LEASE_MS: u64 = 30_000;

/// How long a delivery is kept past its give-up time: it is what makes a late duplicate
/// event a no-op.
const KEEP_PAST_GIVE_UP_MS: u64 = 3_600_000;

/// Most deliveries an admin listing reads.
const LISTED: isize = 1000;

fn ttl_ms(delivery: &Delivery, now: u64) -> u64 {
    delivery
        .give_up_at
        .saturating_add(KEEP_PAST_GIVE_UP_MS)
        .saturating_sub(now)
        .max(60_000)
}

impl Shared {
    /// Queues `delivery` unless Redis holds one of its id already. `Ok(false)`: a
    /// duplicate; `Err`: Redis is away (the caller keeps it locally).
    pub async fn relay_offer(&self, delivery: &Delivery) -> Result<bool, Unavailable> {
        let json = serde_json::to_string(delivery).map_err(|_| Unavailable)?;
        let now = crate::cache::envelope::now_ms();
        let keys = (
            self.keys.relay_delivery(&delivery.id),
            self.keys.relay_due(&delivery.subscriber),
            self.keys.relay_all(),
        );
        let script = &self.scripts.relay_offer;
        let ttl = ttl_ms(delivery, now);
        let queued = self
            .run::<i64, _, _>("relay", false, |mut c| async move {
                script
                    .key(keys.0)
                    .key(keys.1)
                    .key(keys.2)
                    .arg(json)
                    .arg(ttl)
                    .arg(delivery.next_at)
                    .arg(delivery.created_at)
                    .arg(&delivery.id)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(queued == 1)
    }

    /// Claims up to `max` of `subscriber`'s due deliveries. A value that is not a
    /// delivery is skipped (Redis is input like any other).
    pub async fn relay_claim(&self, subscriber: &str, now: u64, max: usize) -> Vec<Delivery> {
        let due = self.keys.relay_due(subscriber);
        let prefix = self.keys.relay_delivery_prefix();
        let script = &self.scripts.relay_claim;
        let claimed = self
            .run::<Vec<Vec<u8>>, _, _>("relay", false, |mut c| async move {
                script
                    .key(due)
                    .arg(now)
                    .arg(max)
                    .arg(now.saturating_add(LEASE_MS))
                    .arg(prefix)
                    .invoke_async(&mut c)
                    .await
            })
            .await
            .unwrap_or_default();
        claimed
            .iter()
            .filter_map(|json| serde_json::from_slice::<Delivery>(json).ok())
            .filter(|d| d.subscriber == subscriber)
            .collect()
    }

    /// Records an attempt's result; `Err` when Redis is away (its lease then ends and
    /// the delivery is tried again: at least once).
    pub async fn relay_finish(&self, delivery: &Delivery) -> Result<(), Unavailable> {
        let json = serde_json::to_string(delivery).map_err(|_| Unavailable)?;
        let now = crate::cache::envelope::now_ms();
        let keys = (
            self.keys.relay_delivery(&delivery.id),
            self.keys.relay_due(&delivery.subscriber),
        );
        let pending = if delivery.status == Status::Pending {
            "1"
        } else {
            "0"
        };
        let script = &self.scripts.relay_finish;
        let ttl = ttl_ms(delivery, now);
        self.run::<i64, _, _>("relay", true, |mut c| async move {
            script
                .key(keys.0)
                .key(keys.1)
                .arg(json)
                .arg(ttl)
                .arg(pending)
                .arg(delivery.next_at)
                .arg(&delivery.id)
                .invoke_async(&mut c)
                .await
        })
        .await
        .map(|_| ())
    }

    /// One delivery, if Redis holds it.
    pub async fn relay_get(&self, id: &str) -> Option<Delivery> {
        let key = self.keys.relay_delivery(id);
        let json = self
            .run::<Option<Vec<u8>>, _, _>("relay", false, |mut c| async move {
                redis::cmd("GET").arg(key).query_async(&mut c).await
            })
            .await
            .ok()??;
        serde_json::from_slice(&json).ok()
    }

    /// The newest deliveries Redis holds (at most a thousand); forgets index entries
    /// whose delivery has expired.
    pub async fn relay_list(&self) -> Vec<Delivery> {
        let all = self.keys.relay_all();
        let ids = self
            .run::<Vec<String>, _, _>("relay", false, |mut c| async move {
                redis::cmd("ZREVRANGE")
                    .arg(&all)
                    .arg(0)
                    .arg(LISTED - 1)
                    .query_async(&mut c)
                    .await
            })
            .await
            .unwrap_or_default();
        if ids.is_empty() {
            return Vec::new();
        }
        let names: Vec<String> = ids.iter().map(|id| self.keys.relay_delivery(id)).collect();
        let values = self
            .run::<Vec<Option<Vec<u8>>>, _, _>("relay", false, |mut c| async move {
                redis::cmd("MGET").arg(&names).query_async(&mut c).await
            })
            .await
            .unwrap_or_default();
        let mut gone = Vec::new();
        let mut list = Vec::new();
        for (id, value) in ids.iter().zip(values) {
            match value.and_then(|v| serde_json::from_slice::<Delivery>(&v).ok()) {
                Some(d) => list.push(d),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            let all = self.keys.relay_all();
            let _ = self
                .run::<i64, _, _>("relay", false, |mut c| async move {
                    redis::cmd("ZREM")
                        .arg(all)
                        .arg(&gone)
                        .query_async(&mut c)
                        .await
                })
                .await;
        }
        list
    }

    /// Disables (a 410) or enables a subscriber for every replica.
    pub async fn relay_set_disabled(&self, subscriber: &str, disabled: bool) {
        let key = self.keys.relay_disabled(subscriber);
        let _ = self
            .run::<(), _, _>("relay", true, |mut c| async move {
                if disabled {
                    redis::cmd("SET").arg(key).arg(1).query_async(&mut c).await
                } else {
                    redis::cmd("DEL").arg(key).query_async(&mut c).await
                }
            })
            .await;
    }

    /// Whether any replica disabled a subscriber (`false` when Redis is away).
    pub async fn relay_disabled(&self, subscriber: &str) -> bool {
        let key = self.keys.relay_disabled(subscriber);
        self.run::<bool, _, _>("relay", false, |mut c| async move {
            redis::cmd("EXISTS").arg(key).query_async(&mut c).await
        })
        .await
        .unwrap_or(false)
    }
}

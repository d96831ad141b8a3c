//! Invalidations between replicas: a purge, a job action or "empty everything" on one
//! replica reaches every other replica's local cache through one pub/sub channel.
//!
//! Pub/sub is fire-and-forget: a message sent while a subscriber is disconnected is
//! lost to it. So a replica is only in shared mode while subscribed, and when its
//! subscription comes back after a loss it drops its whole local cache (it cannot know
//! what it missed) and reads the generation again. A replica that cannot send an
//! invalidation (Redis away) keeps it and sends it once Redis is back; too many kept
//! become one "empty everything".

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;

use super::{keys, Shared};
use crate::cache::JobKey;
use crate::gateway::Gateway;

/// Most invalidations kept while Redis is away; past it they fold into one `All`.
const MAX_PENDING: usize = 1024;

/// What one replica tells the others to drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// One job, with all its chunk windows.
    Job(JobKey),
    /// Everything (the generation was bumped to this).
    All(u64),
}

impl Invalidation {
    /// The message: `{node} job {scope} {id}` or `{node} all {generation}`.
    fn encode(&self, node: &str) -> String {
        match self {
            Invalidation::Job(key) => format!("{node} job {} {}", keys::scope(key.scope), key.job),
            Invalidation::All(generation) => format!("{node} all {generation}"),
        }
    }

    /// The sender and the invalidation; `None` for a message of no known form.
    fn decode(text: &str) -> Option<(&str, Invalidation)> {
        let mut parts = text.split(' ');
        let node = parts.next()?;
        let what = match (parts.next()?, parts.next()?, parts.next()) {
            ("job", scope, Some(id)) => Invalidation::Job(JobKey {
                scope: keys::parse_scope(scope)?,
                job: uuid::Uuid::try_parse(id).ok()?,
            }),
            ("all", generation, None) => Invalidation::All(generation.parse().ok()?),
            _ => return None,
        };
        parts.next().is_none().then_some((node, what))
    }
}

impl Shared {
    /// Drops one job from Redis and tells the other replicas (the caller has dropped it
    /// from its own cache). Kept for later if Redis is away.
    pub async fn invalidate_job(&self, key: JobKey) {
        self.invalidate(Invalidation::Job(key)).await;
    }

    /// Tells the other replicas that `key` has a new answer in Redis (a webhook primed
    /// it): they drop their own copy, and their long-polls look again. Not kept while
    /// Redis is away: the others' copies then live out their short in-progress life.
    pub async fn announce(&self, key: JobKey) {
        if !self.usable() {
            return;
        }
        let channel = self.keys.channel();
        let message = Invalidation::Job(key).encode(&self.node);
        let sent = self
            .run::<i64, _, _>("publish", true, |mut c| async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(message)
                    .query_async(&mut c)
                    .await
            })
            .await;
        if sent.is_ok() {
            self.metrics.invalidations_sent.inc();
        }
    }

    /// Empties the tier for every replica: a new generation, announced.
    pub async fn invalidate_all(&self) {
        self.invalidate(Invalidation::All(0)).await;
    }

    /// Sends at once while the tier is in use; otherwise (Redis away) keeps it for the
    /// watch to send when Redis is back, so the request that caused it waits for nothing.
    async fn invalidate(&self, what: Invalidation) {
        if !self.usable() || self.send(what).await.is_err() {
            self.keep(what);
        }
    }

    fn keep(&self, what: Invalidation) {
        let mut pending = self.pending();
        if pending.len() >= MAX_PENDING || matches!(what, Invalidation::All(_)) {
            pending.clear();
            pending.push(Invalidation::All(0));
        } else if !pending.contains(&what) && !pending.contains(&Invalidation::All(0)) {
            pending.push(what);
        }
    }

    /// Does one invalidation on Redis and publishes it.
    async fn send(&self, what: Invalidation) -> Result<(), super::Unavailable> {
        let what = match what {
            Invalidation::Job(key) => {
                let hash = self.keys.entry(self.generation(), &key);
                let marker = self.marker_ttl_ms();
                let script = &self.scripts.purge;
                self.run::<i64, _, _>("purge", true, |mut c| async move {
                    script.key(hash).arg(marker).invoke_async(&mut c).await
                })
                .await?;
                what
            }
            Invalidation::All(_) => {
                let counter = self.keys.generation();
                let script = &self.scripts.next_generation;
                let generation = self
                    .run::<u64, _, _>("purge", true, |mut c| async move {
                        script.key(counter).invoke_async(&mut c).await
                    })
                    .await?;
                self.generation.store(generation, Ordering::Release);
                Invalidation::All(generation)
            }
        };
        let channel = self.keys.channel();
        let message = what.encode(&self.node);
        self.run::<i64, _, _>("publish", true, |mut c| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(message)
                .query_async(&mut c)
                .await
        })
        .await?;
        self.metrics.invalidations_sent.inc();
        Ok(())
    }
}

/// Sends what was kept while Redis was away.
pub(super) async fn flush_pending(shared: &Shared) {
    let kept: Vec<Invalidation> = std::mem::take(&mut *shared.pending());
    for (i, what) in kept.iter().enumerate() {
        if shared.send(*what).await.is_err() {
            for rest in &kept[i..] {
                shared.keep(*rest);
            }
            return;
        }
    }
}

/// The subscription, for the life of the process: subscribe, read the generation, take
/// messages; on any loss, leave shared mode, and on the way back drop the local cache.
pub(super) async fn subscribe(shared: Arc<Shared>, gateway: Weak<Gateway>) {
    let weak = Arc::downgrade(&shared);
    drop(shared);
    let mut lost_before = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(s) = weak.upgrade() else { return };
        let connect = Duration::from_millis(500).max(s.timeout);
        let subscribed = tokio::time::timeout(connect, async {
            let mut pubsub = s.client.get_async_pubsub().await?;
            pubsub.subscribe(s.keys.channel()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let pubsub = match subscribed {
            Ok(Ok(pubsub)) => pubsub,
            _ => {
                drop(s);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        // Read what "everything" is now, before trusting anything.
        if s.probe("generation", false).await.is_err() {
            drop(s);
            tokio::time::sleep(backoff).await;
            continue;
        }
        if lost_before {
            if let Some(gw) = gateway.upgrade() {
                gw.cache.invalidate_all().await;
                tracing::info!("shared tier: subscription back; the local cache was dropped (invalidations may have been missed)");
            }
        }
        backoff = Duration::from_millis(100);
        s.subscribed.store(true, Ordering::Release);
        s.report();
        let (mut sink, mut stream) = pubsub.split();
        let ping_timeout = s.timeout.max(Duration::from_millis(500));
        drop(s);
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let (Some(s), Some(gw)) = (weak.upgrade(), gateway.upgrade()) else { return };
                    received(&s, &gw, message.get_payload_bytes()).await;
                }
                () = tokio::time::sleep(super::PROBE_EVERY * 2) => {
                    // A subscription on a dead or frozen connection hears nothing and
                    // says nothing: ask it.
                    // Any reply will do: on a subscribed RESP2 connection PING answers
                    // an array (["pong", ""]), not the usual "PONG".
                    let alive = tokio::time::timeout(ping_timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        let Some(s) = weak.upgrade() else { return };
        s.subscribed.store(false, Ordering::Release);
        s.report();
        lost_before = true;
    }
}

async fn received(shared: &Shared, gw: &Gateway, payload: &[u8]) {
    let decoded = std::str::from_utf8(payload)
        .ok()
        .and_then(Invalidation::decode);
    let Some((node, what)) = decoded else {
        shared.metrics.shared_op("message", "invalid");
        return;
    };
    if node == shared.node {
        return;
    }
    shared.metrics.invalidations_received.inc();
    match what {
        Invalidation::Job(key) => {
            gw.cache.invalidate_scoped(key).await;
            gw.watchers.changed(key.job);
        }
        Invalidation::All(generation) => {
            // The sender's bump is the counter's value now (messages arrive in order).
            shared.generation.store(generation, Ordering::Release);
            gw.cache.invalidate_all().await;
            gw.watchers.changed_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Scope;

    #[test]
    fn messages_round_trip_and_junk_is_refused() {
        let key = JobKey {
            scope: Scope::Legacy(uuid::Uuid::new_v4()),
            job: uuid::Uuid::new_v4(),
        };
        for what in [Invalidation::Job(key), Invalidation::All(7)] {
            let text = what.encode("node-1");
            assert_eq!(Invalidation::decode(&text), Some(("node-1", what)));
        }
        for junk in [
            "",
            "n",
            "n job w",
            "n job w not-a-uuid",
            "n all x",
            "n all 1 2",
            "n drop 1",
        ] {
            assert_eq!(Invalidation::decode(junk), None, "{junk}");
        }
    }
}

//! The second cache tier, and coalescing across replicas.
//!
//! A local miss asks Redis, in one script, for the answer or else the lock to fetch it.
//! With the answer, it is a hit. With the lock, this replica fetches, stores the answer
//! in Redis (in the background: writing never delays the answer) and lets the lock go.
//! Without either, another replica is fetching: poll until its answer is there, its
//! lock is gone (then take it), or the request's own deadline. The lock is a short lease
//! (`LEASE`) that its holder renews while it fetches: a holder that dies or freezes
//! stops renewing, its lock is gone within a lease, and a waiting replica takes over
//! (one more call) well inside its own deadline.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;

use super::{Keys, Shared, Unavailable};
use crate::cache::{CacheKey, Envelope};

/// How often a replica waiting for another's fetch looks again.
const POLL: Duration = Duration::from_millis(25);

/// How long a lock lives unless renewed; its holder renews it every third of that.
const LEASE: Duration = Duration::from_secs(3);

/// The coalescing lock for one answer, held by this replica (renewed in the background
/// until it is let go or dropped).
#[derive(Debug)]
pub struct Lock {
    key: String,
    token: String,
    /// Redis's clock when it was taken: a purge after it refuses this fetch's answer.
    taken_at: u64,
    /// The hash the answer goes to (of the generation the lock was taken in).
    hash: String,
    renewing: tokio::task::AbortHandle,
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.renewing.abort();
    }
}

fn lease_ms() -> u64 {
    u64::try_from(LEASE.as_millis()).unwrap_or(3000)
}

/// What Redis said about a local miss.
#[derive(Debug)]
pub enum Found {
    /// The answer, fresh.
    Hit(Envelope),
    /// Nobody has it: this replica holds the lock and fetches it.
    Fetch(Lock),
    /// Another replica was fetching it past this request's deadline.
    TimedOut,
    /// No answer from Redis: go on as if alone.
    Unavailable,
}

impl Shared {
    /// Looks for `key` in Redis, waiting (until `deadline`) while another replica fetches
    /// it.
    pub async fn find_or_lock(
        self: &Arc<Self>,
        key: &CacheKey,
        deadline: tokio::time::Instant,
    ) -> Found {
        let generation = self.generation();
        let hash = self.keys.entry(generation, key.job());
        let lock = self.keys.lock(generation, key);
        let field = Keys::field(key);
        let token = uuid::Uuid::new_v4().to_string();
        let mut waited = false;
        let mut skip_value = false;
        loop {
            let script = &self.scripts.find_or_lock;
            let (hash, lock_key, field, token) = (&hash, &lock, &field, &token);
            let ttl = lease_ms();
            let reply = self
                .run::<Vec<Value>, _, _>("lookup", false, |mut c| async move {
                    script
                        .key(hash)
                        .key(lock_key)
                        .arg(field)
                        .arg(token)
                        .arg(ttl)
                        .arg(if skip_value { "1" } else { "0" })
                        .invoke_async(&mut c)
                        .await
                })
                .await;
            let Ok(reply) = reply else {
                return Found::Unavailable;
            };
            match reply.as_slice() {
                [Value::Int(1), Value::BulkString(bytes)] => {
                    match fresh(Bytes::copy_from_slice(bytes)) {
                        Some(envelope) => {
                            self.metrics.shared_op("get", "hit");
                            return Found::Hit(envelope);
                        }
                        None => {
                            // Expired, or not readable: fetch it anew (and overwrite it).
                            self.metrics.shared_op("get", "unreadable");
                            skip_value = true;
                            continue;
                        }
                    }
                }
                [Value::Int(2), Value::Int(taken_at)] => {
                    self.metrics.shared_op("get", "miss");
                    if waited {
                        // The holder let go without an answer (its fetch failed) or died.
                        self.metrics.lock_takeovers.inc();
                    }
                    let renewing =
                        tokio::spawn(renew(Arc::downgrade(self), lock.clone(), token.clone()));
                    return Found::Fetch(Lock {
                        key: lock.clone(),
                        token: token.clone(),
                        taken_at: u64::try_from(*taken_at).unwrap_or(0),
                        hash: hash.clone(),
                        renewing: renewing.abort_handle(),
                    });
                }
                [Value::Int(0), _] => {
                    if !waited {
                        waited = true;
                        self.metrics.lock_waits.inc();
                    }
                    let next = tokio::time::Instant::now() + POLL;
                    if next >= deadline {
                        return Found::TimedOut;
                    }
                    tokio::time::sleep_until(next).await;
                }
                _ => {
                    self.metrics.shared_op("lookup", "invalid");
                    return Found::Unavailable;
                }
            }
        }
    }

    /// The answer stored for `key`, if fresh, without taking any lock (chunks ask for
    /// their job this way: another replica may have cached it as completed).
    pub async fn peek(&self, key: &CacheKey) -> Option<Envelope> {
        let hash = self.keys.entry(self.generation(), key.job());
        let field = Keys::field(key);
        let value = self
            .run::<Option<Vec<u8>>, _, _>("peek", false, |mut c| async move {
                redis::cmd("HGET")
                    .arg(hash)
                    .arg(field)
                    .query_async(&mut c)
                    .await
            })
            .await
            .ok()??;
        fresh(Bytes::from(value))
    }

    /// Stores an answer fetched under `lock`, then lets the lock go; in the background.
    /// `None` for an answer that is not stored: the lock alone goes.
    pub fn store(self: &Arc<Self>, key: &CacheKey, envelope: Option<Envelope>, lock: Lock) {
        let shared = Arc::clone(self);
        let key = key.clone();
        super::spawn(async move {
            if let Some(envelope) = envelope {
                // Into the generation the lock was taken in: after an "empty everything"
                // since, nobody reads it again.
                shared
                    .put_in(lock.hash.clone(), &key, &envelope, lock.taken_at)
                    .await;
            }
            shared.release(lock).await;
        });
    }

    /// Stores an answer no fetch made (a webhook delivery) for `key` in Redis, replacing
    /// what Redis holds, unless a purge came after `since_ms`.
    pub async fn put(&self, key: &CacheKey, envelope: &Envelope, since_ms: u64) {
        let hash = self.keys.entry(self.generation(), key.job());
        self.put_in(hash, key, envelope, since_ms).await;
    }

    /// Stores an answer in the job hash `hash` (of one generation), unless a purge came
    /// after `since_ms` (Redis time; for a fill, when its lock was taken).
    async fn put_in(&self, hash: String, key: &CacheKey, envelope: &Envelope, since_ms: u64) {
        let now = crate::cache::envelope::now_ms();
        let Some(left) = envelope.left(now) else {
            return;
        };
        let field = Keys::field(key);
        let ttl = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
        let value = envelope.encode();
        let script = &self.scripts.store;
        let stored = self
            .run::<i64, _, _>("store", true, |mut c| async move {
                script
                    .key(hash)
                    .arg(field)
                    .arg(value.as_ref())
                    .arg(ttl)
                    .arg(since_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        if stored == Ok(0) {
            self.metrics.shared_op("store", "refused");
        }
    }

    /// Lets a lock go if this replica still holds it.
    async fn release(&self, lock: Lock) {
        lock.renewing.abort();
        let script = &self.scripts.unlock;
        let _ = self
            .run::<i64, _, _>("unlock", true, |mut c| async move {
                script
                    .key(&lock.key)
                    .arg(&lock.token)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
    }

    /// Whether a call that found the tier unusable should even try (a cheap check so the
    /// lookup path does not build names for nothing).
    pub fn ready(&self) -> Result<(), Unavailable> {
        if self.usable() {
            Ok(())
        } else {
            Err(Unavailable)
        }
    }
}

/// An envelope read from Redis, if it is one and has not expired.
fn fresh(bytes: Bytes) -> Option<Envelope> {
    Envelope::decode(&bytes).filter(|e| e.left(crate::cache::envelope::now_ms()).is_some())
}

/// Renews a lock's lease for as long as its holder holds it (aborted when it lets go).
async fn renew(shared: std::sync::Weak<Shared>, key: String, token: String) {
    loop {
        tokio::time::sleep(LEASE / 3).await;
        let Some(s) = shared.upgrade() else { return };
        let script = &s.scripts.renew;
        let (key, token) = (&key, &token);
        let renewed = s
            .run::<i64, _, _>("renew", true, |mut c| async move {
                script
                    .key(key)
                    .arg(token)
                    .arg(lease_ms())
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        if renewed == Ok(0) {
            // Not ours any more (it expired while Redis was away): nothing to renew.
            return;
        }
    }
}

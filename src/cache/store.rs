//! The moka cache, bounded in bytes, with per-entry expiry taken from each answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::Expiry;
use uuid::Uuid;

use super::answer::Answer;
use super::front::{Front, Lookup};
use super::key::CacheKey;
use crate::metrics::{CauseLabels, Metrics};

/// Expiry read from the entry itself: the policy already decided when it stops being true.
struct AnswerExpiry;

impl Expiry<CacheKey, Arc<Answer>> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Answer>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(remaining(value, created_at))
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<Answer>,
        updated_at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        // A newer answer replaces the old one whole, expiry included.
        Some(remaining(value, updated_at))
    }
}

fn remaining(value: &Answer, at: Instant) -> Duration {
    value
        .expires_at
        .map_or(Duration::ZERO, |t| t.saturating_duration_since(at))
}

/// The gateway's answer cache.
#[derive(Clone)]
pub struct CacheStore {
    /// Answers by key; moka evicts by weight (bytes) and expires per entry. Hashed with
    /// foldhash rather than SipHash: keys are ids the gateway has already validated, the
    /// table is keyed per process, and every hit pays for the hash.
    cache: Cache<CacheKey, Arc<Answer>, foldhash::fast::RandomState>,
    /// Recently read small answers, served without moka's per-read bookkeeping.
    front: Arc<Front>,
}

impl CacheStore {
    /// A cache holding at most `max_bytes` of answers (as weighed by [`Answer::weight`]).
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> CacheStore {
        let front = Arc::new(Front::new());
        let listener_front = Arc::clone(&front);
        let cache = Cache::builder()
            .name("exagate")
            .max_capacity(max_bytes)
            .eviction_listener(move |key: Arc<CacheKey>, value: Arc<Answer>, cause| {
                // Whatever moka drops, the front table lets go of too.
                listener_front.removed(&key, &value);
                let cause = match cause {
                    RemovalCause::Expired => "expired",
                    RemovalCause::Size => "size",
                    RemovalCause::Explicit => "explicit",
                    RemovalCause::Replaced => "replaced",
                };
                metrics
                    .evictions
                    .get_or_create(&CauseLabels { cause })
                    .inc();
            })
            .weigher(|key: &CacheKey, value: &Arc<Answer>| value.weight(key))
            .expire_after(AnswerExpiry)
            .support_invalidation_closures()
            .build_with_hasher(foldhash::fast::RandomState::default());
        CacheStore { cache, front }
    }

    /// The stored answer, if any and still true at `now`: from the front table when it
    /// holds it, else from moka (and then offered to the front table). The caller's
    /// `now` also dates a hit's `Age`, so a hit reads the clock once.
    pub async fn get(&self, key: &CacheKey, now: Instant) -> Option<Arc<Answer>> {
        match self.front.get(key, now) {
            Lookup::Hit { answer, touch } => {
                if touch {
                    // Keeps moka's eviction policy aware that this key is hot.
                    let _ = Box::pin(self.cache.get(key)).await;
                }
                Some(answer)
            }
            Lookup::Miss { epoch } => {
                // Boxed, here and above: moka's read future is 700-odd bytes, and inline it
                // would size every hit's future (which hyper moves by value) for the rare
                // read that needs it.
                let answer = Box::pin(self.cache.get(key)).await?;
                self.front.offer(key, &answer, epoch, now);
                Some(answer)
            }
        }
    }

    /// Stores an answer whose `expires_at` is set; others are ignored.
    pub async fn insert(&self, key: CacheKey, answer: Arc<Answer>) {
        if answer.expires_at.is_some() {
            self.cache.insert(key, answer).await;
        }
    }

    /// Drops a job and all its chunk windows, in every scope (a job id is unique, and a
    /// write to it in one scope must not leave a stale copy anywhere).
    pub fn invalidate_job(&self, job: Uuid) {
        // One predicate covers the job and its chunk windows; moka guarantees `get` never
        // returns an entry it matches, even before the background removal has run.
        if let Err(e) = self
            .cache
            .invalidate_entries_if(move |key, _| key.job().job == job)
        {
            tracing::warn!(error = %e, "could not schedule cache invalidation");
        }
        // After moka's: a reader between the two cannot refill the front with the old
        // answer (see `front`).
        self.front.invalidate();
    }

    /// Drops one job and its chunk windows in one scope (an operator's purge).
    pub fn invalidate_scoped(&self, job: super::JobKey) {
        if let Err(e) = self
            .cache
            .invalidate_entries_if(move |key, _| *key.job() == job)
        {
            tracing::warn!(error = %e, "could not schedule cache invalidation");
        }
        self.front.invalidate();
    }

    /// Drops everything.
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
        self.front.invalidate();
    }

    /// Number of entries (approximate until pending maintenance runs).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Total weight of the entries, in bytes (approximate, as above).
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Applies pending maintenance so counts are exact (tests, metrics scrapes).
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }
}

//! The moka cache, bounded in bytes, with per-entry expiry taken from each answer.

use std::future::Future;
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
///
/// An invalidation (a job action, a purge, a reload that changes links) wins over every
/// fill that began before it, not only over what is stored when it runs: a fill reads
/// the invalidation epoch of its job (a stripe of [`STRIPES`] counters, chosen by the
/// job's id, plus a counter that only emptying the whole cache bumps) when it begins, and
/// stores its answer only if no invalidation has come since. The check and the store are
/// one step under `gate`, which every invalidation takes exclusively, so an invalidation
/// either sees the stored answer (and drops it) or the fill sees the invalidation (and
/// stores nothing); its answer still goes to the requests that waited on it.
#[derive(Clone)]
pub struct CacheStore {
    /// Answers by key; moka evicts by weight (bytes) and expires per entry. Hashed with
    /// foldhash rather than SipHash: keys are ids the gateway has already validated, the
    /// table is keyed per process, and every hit pays for the hash.
    cache: Moka,
    /// Chunk windows in a table of their own, a share of the bound ([`CHUNKS_SHARE`]):
    /// a job has any number of windows, and a scan of them must never evict jobs.
    chunks: Moka,
    /// Negative answers (404s) in a table of their own, a share of the bound
    /// ([`NEGATIVE_SHARE`]): a scan of made-up ids fills this one, never evicting jobs.
    negative: Moka,
    /// Recently read small answers, served without moka's per-read bookkeeping.
    front: Arc<Front>,
    /// Shared by fills (a check and a store), exclusive for invalidations. Hits never
    /// touch it.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// Invalidations of the jobs whose id falls in each stripe: an invalidation turns
    /// away only fills of its stripe (of its job, or the few that share the stripe), so
    /// one job's purge or action costs no other job its fetch or its coalescing.
    stripes: Arc<[std::sync::atomic::AtomicU64]>,
    /// Bumped when everything is dropped (a purge of all, a reload that moves links).
    everything: Arc<std::sync::atomic::AtomicU64>,
    /// Counts the fills an invalidation overtook.
    metrics: Arc<Metrics>,
    /// `cache.compress`: entries are held by their gzip form where it saves memory.
    compress: bool,
    /// The decompressed copies alive, one per entry.
    copies: Arc<super::copies::Copies>,
}

/// One of the store's moka tables.
type Moka = Cache<CacheKey, Arc<Answer>, foldhash::fast::RandomState>;

/// Invalidation stripes: one invalidation turns away the fills of one in this many jobs.
pub const STRIPES: usize = 1024;

/// The part of `cache.max_size` the chunk windows' table gets.
pub const CHUNKS_SHARE: u64 = 4;

/// The part of `cache.max_size` the negative table gets.
pub const NEGATIVE_SHARE: u64 = 8;

/// The part of `cache.max_size` the front table's rebuilt (decompressed) bodies may hold
/// (up to [`COPIES_MAX`](super::front::COPIES_MAX)).
pub const FRONT_SHARE: u64 = 16;

impl CacheStore {
    /// A cache holding at most `max_bytes` of answers (as weighed by [`Answer::weight`],
    /// and the front table's rebuilt bodies): an eighth of it for negative answers, a
    /// quarter for chunk windows, a sixteenth (16 MiB at most) for the front table's
    /// copies, the rest for jobs.
    ///
    /// `compress`: hold answers by their gzip form where that saves memory.
    pub fn new(max_bytes: u64, compress: bool, metrics: Arc<Metrics>) -> CacheStore {
        let front_bytes = (max_bytes / FRONT_SHARE)
            .min(u64::try_from(super::front::COPIES_MAX).unwrap_or(u64::MAX));
        let front = Arc::new(Front::new(
            usize::try_from(front_bytes).unwrap_or(usize::MAX),
        ));
        let negative_bytes = max_bytes / NEGATIVE_SHARE;
        let chunks_bytes = max_bytes / CHUNKS_SHARE;
        let jobs_bytes = max_bytes - negative_bytes - chunks_bytes - front_bytes;
        let cache = table("exagate", jobs_bytes, &front, &metrics);
        let chunks = table("exagate-chunks", chunks_bytes, &front, &metrics);
        let negative = table("exagate-negative", negative_bytes, &front, &metrics);
        CacheStore {
            cache,
            chunks,
            negative,
            front,
            gate: Arc::new(tokio::sync::RwLock::new(())),
            stripes: (0..STRIPES)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            everything: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            metrics,
            compress,
            copies: Arc::default(),
        }
    }

    /// The table a positive answer for `key` lives in.
    fn positive(&self, key: &CacheKey) -> &Moka {
        match key {
            CacheKey::Job(_) => &self.cache,
            CacheKey::Chunks(..) => &self.chunks,
        }
    }

    fn stripe(&self, job: Uuid) -> &std::sync::atomic::AtomicU64 {
        // Ids are random (v4) or at least spread; a collision only costs a fill.
        let index = (job.as_u128() as usize) % STRIPES;
        &self.stripes[index]
    }
}

/// A moka table bounded at `max_bytes`, expiring per answer, whose removals the front
/// table and the eviction counters hear of.
fn table(name: &str, max_bytes: u64, front: &Arc<Front>, metrics: &Arc<Metrics>) -> Moka {
    let listener_front = Arc::clone(front);
    let listener_metrics = Arc::clone(metrics);
    Cache::builder()
        .name(name)
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
            listener_metrics
                .evictions
                .get_or_create(&CauseLabels { cause })
                .inc();
        })
        .weigher(|key: &CacheKey, value: &Arc<Answer>| value.weight(key))
        .expire_after(AnswerExpiry)
        .support_invalidation_closures()
        .build_with_hasher(foldhash::fast::RandomState::default())
}

impl CacheStore {
    /// The answer for `key` if the front table holds a true one at `now`, found without
    /// waiting (see [`get`](Self::get) for `identity`): what lets a hit be answered with
    /// no future at all. `None` says nothing but "ask [`get`](Self::get)".
    pub fn get_now(&self, key: &CacheKey, now: Instant, identity: bool) -> Option<Arc<Answer>> {
        let Lookup::Hit { answer, touch } = self.front.get(key, now, identity) else {
            return None;
        };
        if touch {
            // Keeps moka's eviction policy aware that this key is hot, as `get` does.
            // moka's read is async but does not wait for anything unless its upkeep is
            // busy on another thread: it is polled once, here, and a read that would
            // wait is let go (a hint missed, no more).
            let read = std::pin::pin!(self.positive(key).get(key));
            let _ = read.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        }
        Some(answer)
    }

    /// The stored answer, if any and still true at `now`: from the front table when it
    /// holds it, else from moka (and then offered to the front table). The caller's
    /// `now` also dates a hit's `Age`, so a hit reads the clock once.
    ///
    /// `identity`: the answer is to hold its identity body (the client does not take
    /// gzip, or the answer goes to several clients); one moka holds by its gzip form
    /// alone is rebuilt, and the rebuilt copy offered to the front table, so the next
    /// hit finds it there. Without, the gzip form is enough (callers that only read the
    /// state, clients that take gzip).
    pub async fn get(&self, key: &CacheKey, now: Instant, identity: bool) -> Option<Arc<Answer>> {
        match self.front.get(key, now, identity) {
            Lookup::Hit { answer, touch } => {
                if touch {
                    // Keeps moka's eviction policy aware that this key is hot.
                    let _ = Box::pin(self.positive(key).get(key)).await;
                }
                Some(answer)
            }
            Lookup::Miss { epoch } => {
                // Boxed, here and above: moka's read future is 700-odd bytes, and inline it
                // would size every hit's future (which hyper moves by value) for the rare
                // read that needs it.
                match Box::pin(self.positive(key).get(key)).await {
                    Some(answer) if identity && !answer.has_identity() => {
                        let Some(full) = self.copies.of(key, &answer) else {
                            // Never for what the cache packed itself: drop the entry
                            // rather than serve or keep it; the caller fetches anew.
                            tracing::error!(key = ?key, "a cached answer's gzip form did not decode: dropped");
                            Box::pin(self.positive(key).invalidate(key)).await;
                            return None;
                        };
                        self.front.offer(key, &full, Some(&answer), epoch, now);
                        Some(full)
                    }
                    Some(answer) => {
                        self.front.offer(key, &answer, None, epoch, now);
                        Some(answer)
                    }
                    // Negative answers stay out of the front table: a scan must not
                    // take the slots of hot jobs.
                    None => Box::pin(self.negative.get(key)).await,
                }
            }
        }
    }

    /// The invalidation epoch of `job`, read when a fill of it begins and handed to
    /// [`insert`] (and, by the flights, to know which fetch a request may join).
    ///
    /// [`insert`]: Self::insert
    pub fn epoch(&self, job: Uuid) -> u64 {
        // Both counters only grow: their sum changes exactly when either does.
        self.everything.load(std::sync::atomic::Ordering::Acquire)
            + self.stripe(job).load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stores an answer whose `expires_at` is set (others are ignored), unless an
    /// invalidation came after `since` (the [`epoch`](Self::epoch) read when its fill
    /// began). Returns the answer as stored, with its gzip form if one was made (for the
    /// requests waiting on it), or `None` if it was not stored.
    pub async fn insert(
        &self,
        key: CacheKey,
        answer: Arc<Answer>,
        since: u64,
    ) -> Option<Arc<Answer>> {
        // Only answers to be stored (they have an expiry).
        answer.expires_at?;
        // Compressed before the gate: an invalidation need not wait for it.
        let answer = self.with_gzip(answer);
        let _fill = self.gate.read().await;
        if self.epoch(key.job().job) != since {
            self.metrics.fills_discarded.inc();
            tracing::debug!(key = ?key, "answer not stored: an invalidation came after its fetch began");
            return None;
        }
        self.put(key, Arc::clone(&answer)).await;
        Some(answer)
    }

    /// Whether entries are held by their gzip form (`cache.compress`).
    pub fn compresses(&self) -> bool {
        self.compress
    }

    /// `answer` with its gzip form, when compression is on and saves memory.
    fn with_gzip(&self, answer: Arc<Answer>) -> Arc<Answer> {
        match self.compress {
            true => answer.compressed().map(Arc::new).unwrap_or(answer),
            false => answer,
        }
    }

    /// Puts `answer` in its table. A key lives in one table at a time: a 404 after a 200
    /// (or the reverse) must not leave the other answer to be read.
    async fn put(&self, key: CacheKey, answer: Arc<Answer>) {
        let (table, other) = if answer.status == http::StatusCode::NOT_FOUND {
            (&self.negative, self.positive(&key))
        } else {
            (self.positive(&key), &self.negative)
        };
        other.invalidate(&key).await;
        // The cache holds the gzip form alone where there is one; the caller's answer
        // (both forms) goes to the requests waiting on it.
        let held = answer.packed().map(Arc::new).unwrap_or(answer);
        table.insert(key, held).await;
    }

    /// Stores an answer that is newer than any fill under way (a webhook delivery, a
    /// create's answer): those fills are turned away, as by an invalidation, and the
    /// answer takes the old one's place in one step, so no lookup in between finds the
    /// key empty (and goes upstream for it). Returns the answer as stored (see
    /// [`insert`](Self::insert)).
    pub async fn replace(&self, key: CacheKey, answer: Arc<Answer>) -> Option<Arc<Answer>> {
        // Only answers to be stored (they have an expiry).
        answer.expires_at?;
        let answer = self.with_gzip(answer);
        let _replacing = self.gate.write().await;
        self.stripe(key.job().job)
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.put(key, Arc::clone(&answer)).await;
        // The front table may hold the old answer: its epoch moves after the insert.
        self.front.invalidate();
        Some(answer)
    }

    /// Drops a job and all its chunk windows, in every scope (a job id is unique, and a
    /// write to it in one scope must not leave a stale copy anywhere).
    pub async fn invalidate_job(&self, job: Uuid) {
        // One predicate covers the job and its chunk windows; moka guarantees `get` never
        // returns an entry it matches, even before the background removal has run.
        self.invalidate(job, move |key| key.job().job == job).await;
    }

    /// Drops one job and its chunk windows in one scope (an operator's purge).
    pub async fn invalidate_scoped(&self, job: super::JobKey) {
        self.invalidate(job.job, move |key| *key.job() == job).await;
    }

    /// Drops everything.
    pub async fn invalidate_all(&self) {
        let _invalidation = self.gate.write().await;
        self.cache.invalidate_all();
        self.chunks.invalidate_all();
        self.negative.invalidate_all();
        self.everything
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.front.invalidate();
    }

    async fn invalidate(
        &self,
        job: Uuid,
        matches: impl Fn(&CacheKey) -> bool + Send + Sync + 'static,
    ) {
        let _invalidation = self.gate.write().await;
        let matches = Arc::new(matches);
        for table in [&self.cache, &self.chunks, &self.negative] {
            let matches = Arc::clone(&matches);
            if let Err(e) = table.invalidate_entries_if(move |key, _| matches(key)) {
                tracing::warn!(error = %e, "could not schedule cache invalidation");
            }
        }
        // The job's stripe turns away its fills under way. The front table's epoch, after
        // moka's invalidation: a reader between the two cannot refill the front with the
        // old answer (see `front`).
        self.stripe(job)
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.front.invalidate();
    }

    /// Number of entries (approximate until pending maintenance runs).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count() + self.chunks.entry_count() + self.negative.entry_count()
    }

    /// Total weight of the entries, in bytes (approximate, as above), with the front
    /// table's rebuilt bodies.
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
            + self.chunks.weighted_size()
            + self.negative.weighted_size()
            + self.front_bytes()
    }

    /// Bytes of the decompressed copies alive: the front table's, and those of answers
    /// being sent.
    pub fn copies_bytes(&self) -> u64 {
        u64::try_from(self.copies.bytes()).unwrap_or(u64::MAX)
    }

    /// Bytes of rebuilt (decompressed) bodies the front table holds.
    pub fn front_bytes(&self) -> u64 {
        u64::try_from(self.front.held_bytes()).unwrap_or(u64::MAX)
    }

    /// Every entry held now, of all three tables (for a snapshot).
    pub fn entries(&self) -> Vec<(CacheKey, Arc<Answer>)> {
        [&self.cache, &self.chunks, &self.negative]
            .into_iter()
            .flat_map(|table| table.iter())
            .map(|(key, answer)| (CacheKey::clone(&key), answer))
            .collect()
    }

    /// Applies pending maintenance so counts are exact (tests, metrics scrapes).
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
        self.chunks.run_pending_tasks().await;
        self.negative.run_pending_tasks().await;
    }
}

//! A small direct-mapped table of recently read answers, consulted before moka.
//!
//! moka's `get` records every read for its eviction policy (a shared channel, periodic
//! maintenance run by the reader), and on a cache hit that bookkeeping was the largest
//! cost the gateway adds over a bare server: serving hits from a plain table measured
//! about 9% more throughput. moka stays the cache of record (bounds, expiry, eviction,
//! invalidation); this table only holds answers moka returned, and never serves one that
//! moka would not:
//!
//! - every slot is checked against the answer's own `expires_at`;
//! - every invalidation bumps an epoch before it returns, and a slot filled under an
//!   older epoch is never served (a reader that fetched from moka before the
//!   invalidation cannot slip the old answer back in);
//! - moka's removals (expiry, size, replacement) empty the slot holding that answer, so
//!   the table does not keep evicted answers alive;
//! - only small answers go in (`MAX_BODY`), and a slot whose answer moka has dropped is
//!   taken over by the next offer, so the rare answer that outlives its moka entry here
//!   (offered in the instant after moka removed it) costs little and not for long.
//!
//! A hit here is still reported to moka now and then (`TOUCH_EVERY`), so the hottest
//! jobs keep their place in moka's frequency sketch and are not the first evicted.
//!
//! moka holds most job answers by their gzip form alone. A slot may hold such an answer
//! rebuilt with its identity body (for the clients that take no gzip), so that a hot
//! job is decompressed once, not at every hit; those rebuilt bodies are memory moka does
//! not weigh, and they are bounded by a budget of their own (a share of
//! `cache.max_size`), counted in [`Front::held_bytes`].

use std::cell::Cell;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;

use super::answer::Answer;
use super::key::CacheKey;

/// Slots in the table: a power of two. 16384 pointers are 128 KiB; a few thousand hot
/// jobs mostly get a slot of their own.
const SLOTS: usize = 16384;

/// Largest body kept here: job answers are a few KiB; large chunk windows go to moka
/// every time.
pub const MAX_BODY: usize = 8 * 1024;

/// One in this many hits served here (per thread) also reads through moka.
const TOUCH_EVERY: u32 = 64;

struct Slot {
    key: CacheKey,
    /// What is served.
    answer: Arc<Answer>,
    /// The answer moka holds, when `answer` is a rebuilt copy of it: what moka's
    /// removals name, and whose last reference says moka has let go.
    source: Option<Arc<Answer>>,
    /// The invalidation epoch read before the answer was taken from moka.
    epoch: u64,
    /// The rebuilt body's share of the budget, given back when the slot goes.
    _charge: Option<Charge>,
}

impl Slot {
    /// The answer moka holds (or held) for this slot.
    fn moka_answer(&self) -> &Arc<Answer> {
        self.source.as_ref().unwrap_or(&self.answer)
    }
}

/// Bytes of a rebuilt body, counted against the budget while a slot holds it.
struct Charge {
    bytes: usize,
    held: Arc<AtomicUsize>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The table.
pub struct Front {
    slots: Box<[ArcSwapOption<Slot>]>,
    epoch: AtomicU64,
    hasher: foldhash::fast::RandomState,
    /// Bytes of rebuilt bodies held by the slots.
    held: Arc<AtomicUsize>,
    /// The most `held` may reach.
    budget: usize,
}

/// What a lookup found.
pub enum Lookup {
    /// A true answer; `touch` says to also read it through moka this time.
    Hit { answer: Arc<Answer>, touch: bool },
    /// Not here: ask moka, and offer what it returns with this epoch.
    Miss { epoch: u64 },
}

impl Front {
    /// An empty table, holding at most `budget` bytes of rebuilt bodies.
    pub fn new(budget: usize) -> Front {
        Front {
            slots: (0..SLOTS).map(|_| ArcSwapOption::empty()).collect(),
            epoch: AtomicU64::new(0),
            hasher: foldhash::fast::RandomState::default(),
            held: Arc::new(AtomicUsize::new(0)),
            budget,
        }
    }

    /// Bytes of rebuilt (decompressed) bodies the slots hold now.
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn slot(&self, key: &CacheKey) -> &ArcSwapOption<Slot> {
        // SLOTS is a power of two: the mask keeps the index in range.
        let index = (self.hasher.hash_one(key) as usize) & (SLOTS - 1);
        &self.slots[index]
    }

    /// The answer for `key` if this table holds a true one at `now`; with `identity`,
    /// only one that holds its identity body.
    pub fn get(&self, key: &CacheKey, now: Instant, identity: bool) -> Lookup {
        // Read first: an invalidation that bumps the epoch after this point is one the
        // caller's moka read may or may not see, and what it offers is then refused.
        let epoch = self.epoch.load(Ordering::Acquire);
        let slot = self.slot(key).load();
        if let Some(slot) = slot.as_deref() {
            let fresh = slot.answer.expires_at.is_some_and(|at| now < at);
            let usable = !identity || slot.answer.has_identity();
            if slot.epoch == epoch && fresh && usable && slot.key == *key {
                return Lookup::Hit {
                    answer: Arc::clone(&slot.answer),
                    touch: touch_now(),
                };
            }
        }
        Lookup::Miss { epoch }
    }

    /// Keeps an answer moka just returned (`source`), or `answer`, its copy rebuilt
    /// with the identity body, if it is small, still of this epoch, its slot is free,
    /// and (for a rebuilt copy) the budget has room.
    ///
    /// First come, first kept: a slot holding another key's live answer is not taken
    /// over, so two hot keys sharing a slot do not evict each other on every read (the
    /// second is served by moka instead). A slot is free when empty, or holding this
    /// key, an older epoch, an expired answer, or one moka no longer holds (this table
    /// has the only reference left).
    pub fn offer(
        &self,
        key: &CacheKey,
        answer: &Arc<Answer>,
        source: Option<&Arc<Answer>>,
        epoch: u64,
        now: Instant,
    ) {
        if answer.len() > MAX_BODY || self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        let slot = self.slot(key);
        let current = slot.load();
        if let Some(held) = current.as_deref() {
            let free = held.key == *key
                || held.epoch != epoch
                || held.answer.expires_at.is_none_or(|at| now >= at)
                || Arc::strong_count(held.moka_answer()) == 1;
            if !free {
                return;
            }
        }
        let charge = match source {
            Some(_) => match self.charge(answer.len()) {
                Some(charge) => Some(charge),
                None => return,
            },
            None => None,
        };
        let new = Some(Arc::new(Slot {
            key: key.clone(),
            answer: Arc::clone(answer),
            source: source.cloned(),
            epoch,
            _charge: charge,
        }));
        // Lost a race with another offer or a removal: leave the slot to the winner (the
        // charge goes back as the refused slot drops).
        let _ = slot.compare_and_swap(&current, new);
    }

    /// `bytes` of the budget, if it has room for them.
    fn charge(&self, bytes: usize) -> Option<Charge> {
        let before = self.held.fetch_add(bytes, Ordering::AcqRel);
        let charge = Charge {
            bytes,
            held: Arc::clone(&self.held),
        };
        // Over: dropping the charge gives the bytes back.
        (before + bytes <= self.budget).then_some(charge)
    }

    /// Forgets `answer` if its slot holds it (moka removed it).
    pub fn removed(&self, key: &CacheKey, answer: &Arc<Answer>) {
        let slot = self.slot(key);
        let current = slot.load();
        if let Some(held) = current.as_deref() {
            if Arc::ptr_eq(held.moka_answer(), answer) {
                // Only if unchanged meanwhile: a newer answer offered since stays.
                let _ = slot.compare_and_swap(&current, None);
            }
        }
    }

    /// The invalidation epoch now: bumped by every invalidation. The store reads it when
    /// a fill begins, so a fill that an invalidation overtook is not stored either.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Makes every slot unservable at once, then frees them.
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for slot in self.slots.iter() {
            slot.store(None);
        }
    }
}

impl Default for Front {
    /// A table with a budget of 16 MiB of rebuilt bodies.
    fn default() -> Self {
        Front::new(16 << 20)
    }
}

/// True once every `TOUCH_EVERY` calls on this thread: a per-thread count costs no
/// shared write.
fn touch_now() -> bool {
    thread_local! {
        static HITS: Cell<u32> = const { Cell::new(0) };
    }
    HITS.with(|hits| {
        let n = hits.get().wrapping_add(1);
        hits.set(n);
        n % TOUCH_EVERY == 0
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};
    use uuid::Uuid;

    use super::*;
    use crate::cache::JobKey;

    fn key() -> CacheKey {
        CacheKey::Job(JobKey {
            scope: crate::cache::Scope::Workspace,
            job: Uuid::new_v4(),
        })
    }

    fn answer(body: usize, lives: Duration) -> Arc<Answer> {
        Arc::new(Answer::new(
            StatusCode::OK,
            &HeaderMap::new(),
            Bytes::from(vec![b' '; body]),
            None,
            Some(lives),
            Duration::ZERO,
        ))
    }

    fn hit(front: &Front, key: &CacheKey, now: Instant) -> Option<Arc<Answer>> {
        match front.get(key, now, true) {
            Lookup::Hit { answer, .. } => Some(answer),
            Lookup::Miss { .. } => None,
        }
    }

    fn epoch(front: &Front, key: &CacheKey) -> u64 {
        match front.get(key, Instant::now(), true) {
            Lookup::Miss { epoch } => epoch,
            Lookup::Hit { .. } => panic!("expected a miss"),
        }
    }

    #[test]
    fn an_offered_answer_is_served_until_it_expires() {
        let front = Front::default();
        let k = key();
        let a = answer(100, Duration::from_secs(10));
        front.offer(&k, &a, None, epoch(&front, &k), Instant::now());
        let served = hit(&front, &k, Instant::now()).expect("a hit");
        assert!(Arc::ptr_eq(&served, &a));
        assert!(hit(&front, &k, Instant::now() + Duration::from_secs(11)).is_none());
        // Another key in the same table is not this one.
        assert!(hit(&front, &key(), Instant::now()).is_none());
    }

    #[test]
    fn an_offer_read_before_an_invalidation_is_refused() {
        let front = Front::default();
        let k = key();
        let before = epoch(&front, &k);
        front.invalidate();
        front.offer(
            &k,
            &answer(100, Duration::from_secs(10)),
            None,
            before,
            Instant::now(),
        );
        assert!(hit(&front, &k, Instant::now()).is_none());
    }

    #[test]
    fn an_invalidation_drops_what_was_held() {
        let front = Front::default();
        let k = key();
        front.offer(
            &k,
            &answer(100, Duration::from_secs(10)),
            None,
            epoch(&front, &k),
            Instant::now(),
        );
        front.invalidate();
        assert!(hit(&front, &k, Instant::now()).is_none());
    }

    #[test]
    fn a_removal_by_moka_drops_only_that_answer() {
        let front = Front::default();
        let k = key();
        let old = answer(100, Duration::from_secs(10));
        let new = answer(100, Duration::from_secs(10));
        front.offer(&k, &new, None, epoch(&front, &k), Instant::now());
        // moka reports the replaced answer: the newer one stays.
        front.removed(&k, &old);
        assert!(hit(&front, &k, Instant::now()).is_some());
        front.removed(&k, &new);
        assert!(hit(&front, &k, Instant::now()).is_none());
    }

    /// Two keys that share a slot of `front`.
    fn colliding(front: &Front) -> (CacheKey, CacheKey) {
        let first = key();
        loop {
            let other = key();
            if std::ptr::eq(front.slot(&first), front.slot(&other)) {
                return (first, other);
            }
        }
    }

    #[test]
    fn a_live_answer_keeps_its_slot_until_moka_lets_go_of_it() {
        let front = Front::default();
        let (a, b) = colliding(&front);
        let held_by_moka = answer(100, Duration::from_secs(10));
        front.offer(&a, &held_by_moka, None, epoch(&front, &a), Instant::now());
        // b's answer does not push a's out: both would thrash on every read.
        front.offer(
            &b,
            &answer(100, Duration::from_secs(10)),
            None,
            epoch(&front, &b),
            Instant::now(),
        );
        assert!(hit(&front, &a, Instant::now()).is_some());
        assert!(hit(&front, &b, Instant::now()).is_none());
        // Once moka has dropped a's answer (this table holds the last reference), the
        // slot is free for the next offer.
        drop(held_by_moka);
        let b_answer = answer(100, Duration::from_secs(10));
        front.offer(&b, &b_answer, None, epoch(&front, &b), Instant::now());
        assert!(hit(&front, &b, Instant::now()).is_some());
        assert!(hit(&front, &a, Instant::now()).is_none());
    }

    #[test]
    fn large_answers_are_not_kept() {
        let front = Front::default();
        let k = key();
        front.offer(
            &k,
            &answer(MAX_BODY + 1, Duration::from_secs(10)),
            None,
            epoch(&front, &k),
            Instant::now(),
        );
        assert!(hit(&front, &k, Instant::now()).is_none());
    }
}

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
//! not weigh, and they are bounded by a budget of their own ([`COPIES_MAX`] at most),
//! counted in [`Front::held_bytes`]. When it is spent, a clock hand goes round the
//! slots and drops the copies not read since it last passed (second chance), so the
//! copies follow what is hot now, not what was read first.

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

/// Slots a key may be kept in: a set of four side by side, 32 bytes, in one cache line.
/// With two, about 2% of 3,000 hot keys found both taken (three keys to a pair), and
/// every hit on them went to moka and was decompressed again; with four, about one key
/// in a thousand does.
const WAYS: usize = 4;

/// One in this many hits served here (per thread) also reads through moka.
const TOUCH_EVERY: u32 = 64;

/// The most the rebuilt (decompressed) copies may hold, whatever `cache.max_size`: they
/// serve only the clients that take no gzip, and 16 MiB holds several thousand hot jobs;
/// colder ones are decompressed at each hit (microseconds).
pub const COPIES_MAX: usize = 16 << 20;

/// Largest decompressed copy kept (an eighth of the most the copies hold).
pub const MAX_COPY: usize = COPIES_MAX / 8;

/// Slots the clock hand looks at, at most, for one copy that finds the budget spent.
const RECLAIM_SCAN: usize = 256;

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
    /// A copy read since the clock hand last passed.
    referenced: std::sync::atomic::AtomicBool,
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
    /// The clock hand: the next slot it looks at.
    hand: AtomicUsize,
}

/// What a lookup found.
pub enum Lookup {
    /// A true answer; `touch` says to also read it through moka this time.
    Hit { answer: Arc<Answer>, touch: bool },
    /// Not here: ask moka, and offer what it returns with this epoch.
    Miss { epoch: u64 },
}

impl Front {
    /// An empty table, holding at most `budget` bytes of rebuilt bodies (the store gives
    /// it a share of `cache.max_size`, [`COPIES_MAX`] at most).
    pub fn new(budget: usize) -> Front {
        Front {
            slots: (0..SLOTS).map(|_| ArcSwapOption::empty()).collect(),
            epoch: AtomicU64::new(0),
            hasher: foldhash::fast::RandomState::default(),
            held: Arc::new(AtomicUsize::new(0)),
            budget,
            hand: AtomicUsize::new(0),
        }
    }

    /// Bytes of rebuilt (decompressed) bodies the slots hold now.
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// The [`WAYS`] slots `key` may be kept in, side by side in memory.
    fn ways(&self, key: &CacheKey) -> &[ArcSwapOption<Slot>] {
        // SLOTS is a power of two and a multiple of WAYS: the mask keeps the set in range.
        let start = (self.hasher.hash_one(key) as usize) & (SLOTS - 1) & !(WAYS - 1);
        &self.slots[start..start + WAYS]
    }

    /// The answer for `key` if this table holds a true one at `now`; with `identity`,
    /// only one that holds its identity body.
    pub fn get(&self, key: &CacheKey, now: Instant, identity: bool) -> Lookup {
        // Read first: an invalidation that bumps the epoch after this point is one the
        // caller's moka read may or may not see, and what it offers is then refused.
        let epoch = self.epoch.load(Ordering::Acquire);
        for way in self.ways(key) {
            let slot = way.load();
            let Some(slot) = slot.as_deref().filter(|s| s.key == *key) else {
                continue;
            };
            let fresh = slot.answer.expires_at.is_some_and(|at| now < at);
            let usable = !identity || slot.answer.has_identity();
            if slot.epoch == epoch && fresh && usable {
                // Read before written: a hot copy's line is not written at every hit.
                if slot.source.is_some() && !slot.referenced.load(Ordering::Relaxed) {
                    slot.referenced.store(true, Ordering::Relaxed);
                }
                return Lookup::Hit {
                    answer: Arc::clone(&slot.answer),
                    touch: touch_now(),
                };
            }
            break;
        }
        Lookup::Miss { epoch }
    }

    /// Keeps an answer moka just returned (`source`), or `answer`, its copy rebuilt
    /// with the identity body, if it is small, still of this epoch, its slot is free,
    /// and (for a rebuilt copy) the budget has room.
    ///
    /// The way that holds this key already, else the first free one. First come, first
    /// kept: a slot holding another key's live answer is not taken over, so hot keys
    /// sharing a set of slots do not evict each other on every read (one more is served
    /// by moka instead). A slot is free when empty, or holding an older epoch, an expired
    /// answer, or one moka no longer holds (this table has the only reference left).
    pub fn offer(
        &self,
        key: &CacheKey,
        answer: &Arc<Answer>,
        source: Option<&Arc<Answer>>,
        epoch: u64,
        now: Instant,
    ) {
        // A large copy may go in (under the budget): decompressing it at every hit
        // would cost the most. A large answer that is moka's own stays out, not to take
        // the slots of hot jobs for nothing.
        let largest = match source {
            Some(_) => MAX_COPY,
            None => MAX_BODY,
        };
        if answer.len() > largest || self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        let ways = self.ways(key);
        let loaded: [_; WAYS] = std::array::from_fn(|i| ways[i].load());
        let free = |held: Option<&Slot>| {
            held.is_none_or(|held| {
                held.epoch != epoch
                    || held.answer.expires_at.is_none_or(|at| now >= at)
                    || Arc::strong_count(held.moka_answer()) == 1
            })
        };
        let chosen = (0..WAYS)
            .find(|&i| loaded[i].as_deref().is_some_and(|held| held.key == *key))
            .or_else(|| (0..WAYS).find(|&i| free(loaded[i].as_deref())));
        let Some(chosen) = chosen else {
            return;
        };
        let (slot, current) = (&ways[chosen], &loaded[chosen]);
        let charge = match source {
            Some(_) => match self.charge(super::answer::allocated(answer.len())) {
                Some(charge) => Some(charge),
                None => {
                    self.reclaim();
                    match self.charge(super::answer::allocated(answer.len())) {
                        Some(charge) => Some(charge),
                        // Served all the same, decompressed again next time.
                        None => return,
                    }
                }
            },
            None => None,
        };
        let new = Some(Arc::new(Slot {
            key: key.clone(),
            answer: Arc::clone(answer),
            source: source.cloned(),
            epoch,
            _charge: charge,
            referenced: std::sync::atomic::AtomicBool::new(false),
        }));
        // Lost a race with another offer or a removal: leave the slot to the winner (the
        // charge goes back as the refused slot drops).
        let _ = slot.compare_and_swap(current, new);
    }

    /// Moves the clock hand over up to [`RECLAIM_SCAN`] slots: a copy read since the
    /// hand last passed is spared (and marked unread), one not read is dropped. Its
    /// bytes go back to the budget once no reader holds the slot.
    fn reclaim(&self) {
        let start = self.hand.fetch_add(RECLAIM_SCAN, Ordering::Relaxed);
        for i in 0..RECLAIM_SCAN {
            let slot = &self.slots[(start + i) & (SLOTS - 1)];
            let current = slot.load();
            let Some(held) = current.as_deref() else {
                continue;
            };
            if held.source.is_none() {
                continue;
            }
            if held.referenced.swap(false, Ordering::Relaxed) {
                continue;
            }
            let _ = slot.compare_and_swap(&current, None);
        }
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
        for slot in self.ways(key) {
            let current = slot.load();
            if let Some(held) = current.as_deref() {
                if Arc::ptr_eq(held.moka_answer(), answer) {
                    // Only if unchanged meanwhile: a newer answer offered since stays.
                    let _ = slot.compare_and_swap(&current, None);
                }
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

    /// One more key than a set of `front` has ways, all in the same set.
    fn colliding(front: &Front) -> Vec<CacheKey> {
        let set = |k: &CacheKey| front.ways(k).as_ptr() as usize;
        let first = key();
        let mut keys = vec![first.clone()];
        while keys.len() < WAYS + 1 {
            let other = key();
            if set(&other) == set(&first) {
                keys.push(other);
            }
        }
        keys
    }

    #[test]
    fn a_live_answer_keeps_its_slot_until_moka_lets_go_of_it() {
        let front = Front::default();
        let mut keys = colliding(&front);
        let b = keys.pop().expect("one key too many");
        let a = keys[0].clone();
        let held_by_moka = answer(100, Duration::from_secs(10));
        front.offer(&a, &held_by_moka, None, epoch(&front, &a), Instant::now());
        // Kept alive as moka would keep them.
        let others: Vec<_> = keys[1..]
            .iter()
            .map(|k| {
                let held = answer(100, Duration::from_secs(10));
                front.offer(k, &held, None, epoch(&front, k), Instant::now());
                held
            })
            .collect();
        for k in &keys {
            assert!(hit(&front, k, Instant::now()).is_some(), "every way kept");
        }
        // b's answer does not push another out: they would thrash on every read.
        front.offer(
            &b,
            &answer(100, Duration::from_secs(10)),
            None,
            epoch(&front, &b),
            Instant::now(),
        );
        assert!(keys
            .iter()
            .all(|k| hit(&front, k, Instant::now()).is_some()));
        assert!(hit(&front, &b, Instant::now()).is_none());
        // Once moka has dropped a's answer (this table holds the last reference), the
        // slot is free for the next offer.
        drop(held_by_moka);
        let b_answer = answer(100, Duration::from_secs(10));
        front.offer(&b, &b_answer, None, epoch(&front, &b), Instant::now());
        assert!(hit(&front, &b, Instant::now()).is_some());
        assert!(hit(&front, &a, Instant::now()).is_none());
        drop(others);
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

    /// A stored answer of `body` bytes of text, as moka holds it (gzip only), and its
    /// rebuilt copy.
    fn packed_and_copy(body: usize) -> (Arc<Answer>, Arc<Answer>) {
        let packed = crate::cache::answer::testing::packed(body);
        let copy = Arc::new(packed.with_identity(packed.identity().expect("decodes")));
        (packed, copy)
    }

    #[test]
    fn a_packed_answer_serves_gzip_readers_and_a_copy_serves_everyone() {
        let front = Front::default();
        let k = key();
        let (packed, copy) = packed_and_copy(4096);
        front.offer(&k, &packed, None, epoch(&front, &k), Instant::now());
        assert!(matches!(
            front.get(&k, Instant::now(), false),
            Lookup::Hit { .. }
        ));
        assert!(matches!(
            front.get(&k, Instant::now(), true),
            Lookup::Miss { .. }
        ));
        assert_eq!(front.held_bytes(), 0, "the packed answer is moka's own");
        front.offer(&k, &copy, Some(&packed), epoch(&front, &k), Instant::now());
        assert!(matches!(
            front.get(&k, Instant::now(), true),
            Lookup::Hit { .. }
        ));
        assert_eq!(front.held_bytes(), 4096);
        // moka's removal names its own answer, not the copy: the copy goes with it.
        front.removed(&k, &packed);
        assert!(hit(&front, &k, Instant::now()).is_none());
        assert_eq!(front.held_bytes(), 0);
    }

    #[test]
    fn copies_stay_within_the_budget_and_the_hand_drops_the_unread_ones() {
        // Room for three 4 KiB copies.
        let front = Front::new(3 * 4096 + 100);
        let keys: Vec<CacheKey> = (0..6).map(|_| key()).collect();
        let answers: Vec<_> = keys.iter().map(|_| packed_and_copy(4096)).collect();
        let offer = |i: usize| {
            let (packed, copy) = &answers[i];
            front.offer(
                &keys[i],
                copy,
                Some(packed),
                epoch(&front, &keys[i]),
                Instant::now(),
            );
        };
        for i in 0..3 {
            offer(i);
        }
        assert_eq!(front.held_bytes(), 3 * 4096);
        // Key 0 is read: it is spared by the hand's first pass.
        assert!(hit(&front, &keys[0], Instant::now()).is_some());
        for (i, k) in keys.iter().enumerate().skip(3) {
            // Spent budget: the hand goes round, a part of the table per offer. A copy
            // read since its last pass is spared once, so two rounds free a slot.
            for _ in 0..(4 * SLOTS / RECLAIM_SCAN) {
                offer(i);
                if hit(&front, k, Instant::now()).is_some() {
                    break;
                }
            }
            assert!(
                front.held_bytes() <= 3 * 4096 + 100,
                "{}",
                front.held_bytes()
            );
        }
        let held = keys
            .iter()
            .filter(|k| hit(&front, k, Instant::now()).is_some())
            .count();
        assert!(held <= 3, "{held} copies held");
        assert!(
            hit(&front, &keys[5], Instant::now()).is_some(),
            "the newest got in"
        );
        front.invalidate();
        assert_eq!(front.held_bytes(), 0);
    }
}

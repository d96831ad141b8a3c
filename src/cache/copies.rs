//! Decompressed copies of entries the cache holds by their gzip form: one per entry at a
//! time, shared by every identity client reading it.
//!
//! Without this, each identity hit on such an entry decompressed a copy of its own and
//! held it until its client had read it all: a few hundred stalled readers of one large
//! job (HTTP/1 clients that stop reading, HTTP/2 streams with a shut window) pinned a
//! gigabyte beyond `cache.max_size`, where identity bodies had pinned nothing but the
//! entry itself. Now readers of an entry share its copy, so what they can pin is at most
//! what the entries would weigh uncompressed, and the copies alive are counted
//! (`exagate_cache_copies_bytes`).
//!
//! The copy lives as long as any response still sends it: responses hold the body's
//! `Bytes`, not the answer, so the body is a `Bytes` over an owner this table keeps a
//! weak reference to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::answer::Answer;
use super::key::CacheKey;

/// Entries noted before dead ones are swept out (the table then doubles its threshold).
const SWEEP_AT: usize = 1024;

/// The copies alive, by key.
#[derive(Default)]
pub struct Copies {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The entry (as moka holds it) each copy was made from, and the copy's body.
    live: HashMap<CacheKey, (Weak<Answer>, Weak<Vec<u8>>)>,
    sweep_at: usize,
}

/// What a copy's `Bytes` owns: the shared body.
struct Owner(Arc<Vec<u8>>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Copies {
    /// The copy of `source` (moka's answer for `key`, held by its gzip form) with its
    /// identity body: the one alive if any, else a new one. `None` if the gzip form does
    /// not decode.
    pub fn of(&self, key: &CacheKey, source: &Arc<Answer>) -> Option<Arc<Answer>> {
        let body = self.body_of(key, source)?;
        let identity = bytes::Bytes::from_owner(Owner(body));
        Some(Arc::new(source.with_identity(identity)))
    }

    /// The shared identity body of `source`: alive, or decompressed now.
    fn body_of(&self, key: &CacheKey, source: &Arc<Answer>) -> Option<Arc<Vec<u8>>> {
        let source_ref = Arc::downgrade(source);
        if let Some(body) = Self::find(&self.lock(), key, &source_ref) {
            return Some(body);
        }
        // Decompressed outside the lock: other entries' readers need not wait for it.
        let body = Arc::new(super::packed::unpack_vec(source.gzip()?, source.len())?);
        let mut inner = self.lock();
        // Another reader may have made one meanwhile: the first stays, this one goes.
        if let Some(alive) = Self::find(&inner, key, &source_ref) {
            return Some(alive);
        }
        if inner.live.len() >= inner.sweep_at.max(SWEEP_AT) {
            inner.live.retain(|_, (_, body)| body.strong_count() > 0);
            inner.sweep_at = 2 * inner.live.len();
        }
        inner
            .live
            .insert(key.clone(), (source_ref, Arc::downgrade(&body)));
        Some(body)
    }

    /// Bytes of the copies alive now (identity bodies, as the allocator hands them out).
    pub fn bytes(&self) -> usize {
        self.lock()
            .live
            .values()
            .filter_map(|(_, body)| body.upgrade())
            .map(|body| super::answer::allocated(body.len()))
            .sum()
    }

    fn find(inner: &Inner, key: &CacheKey, source: &Weak<Answer>) -> Option<Arc<Vec<u8>>> {
        let (made_from, body) = inner.live.get(key)?;
        // Of this very entry: a newer answer for the key has a copy of its own.
        Weak::ptr_eq(made_from, source)
            .then(|| body.upgrade())
            .flatten()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding it leaves nothing half-done: the map is still valid.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::answer::testing::packed;
    use crate::cache::{JobKey, Scope};

    fn key() -> CacheKey {
        CacheKey::Job(JobKey {
            scope: Scope::Workspace,
            job: uuid::Uuid::new_v4(),
        })
    }

    #[test]
    fn readers_of_one_entry_share_one_copy_while_it_lives() {
        let copies = Copies::default();
        let (k, source) = (key(), packed(100_000));
        let body = |a: &Answer| a.identity().expect("an identity body");
        let first = copies.of(&k, &source).expect("decodes");
        let second = copies.of(&k, &source).expect("decodes");
        assert_eq!(body(&first).as_ptr(), body(&second).as_ptr(), "one body");
        assert_eq!(copies.bytes(), crate::cache::answer::allocated(100_000));
        // What a response holds is the body alone: it keeps the copy alive for the next.
        let sent = body(&first);
        drop((first, second));
        let third = copies.of(&k, &source).expect("decodes");
        assert_eq!(body(&third).as_ptr(), sent.as_ptr());
        // A newer answer for the key is not served the old copy.
        let newer = packed(100_000);
        let newest = copies.of(&k, &newer).expect("decodes");
        assert_ne!(body(&newest).as_ptr(), sent.as_ptr());
        drop((third, sent, newest));
        // Once its readers are done, the copy is gone: nothing is kept.
        assert_eq!(copies.bytes(), 0);
    }

    #[test]
    fn dead_copies_are_swept() {
        let copies = Copies::default();
        for _ in 0..3 * SWEEP_AT {
            let source = packed(1000);
            let _ = copies.of(&key(), &source);
        }
        assert!(copies.lock().live.len() <= SWEEP_AT + 1);
    }
}

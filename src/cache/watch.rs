//! Who waits for a job to change (long-polls): one channel per job with waiters, woken
//! whenever an answer for the job is stored (a fetch, a webhook delivery, another
//! replica's invalidation) and all at once when the gateway drains.
//!
//! A wake-up is only a hint to look again: the waiter reads the cache and decides
//! whether what it finds is a change, so a spurious one costs a cache read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use uuid::Uuid;

/// The registry of waiters, by job id (every scope of a job shares its channel).
#[derive(Default)]
pub struct Watchers {
    channels: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
    /// Requests held now.
    waiting: AtomicUsize,
    /// Set when the gateway drains: every waiter is answered at once.
    closing: AtomicBool,
    /// Woken when draining starts.
    close: watch::Sender<bool>,
}

/// One waiter's subscription; leaving (drop) forgets the job's channel once no one else
/// waits on it.
pub struct Watch {
    watchers: Arc<Watchers>,
    job: Uuid,
    changes: Option<watch::Receiver<u64>>,
    close: watch::Receiver<bool>,
}

impl Watchers {
    /// An empty registry.
    pub fn new() -> Arc<Watchers> {
        Arc::new(Watchers::default())
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, watch::Sender<u64>>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes to `job`'s changes from now on: subscribe first, then read the cache,
    /// so a change between the two is never missed.
    pub fn watch(self: &Arc<Self>, job: Uuid) -> Watch {
        let changes = self
            .channels()
            .entry(job)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Watch {
            watchers: Arc::clone(self),
            job,
            changes: Some(changes),
            close: self.close.subscribe(),
        }
    }

    /// Tells `job`'s waiters to look again. Costs a lock and a lookup when no one waits.
    pub fn changed(&self, job: Uuid) {
        if let Some(tx) = self.channels().get(&job) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Tells every waiter to look again (the whole cache was emptied).
    pub fn changed_all(&self) {
        for tx in self.channels().values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Answers every waiter now, and every later one at once (draining).
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.close.send_replace(true);
    }

    /// Whether the gateway is draining.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Requests held now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

impl Watch {
    /// Resolves at the job's next change, or when the gateway drains.
    pub async fn changed(&mut self) {
        let Some(changes) = self.changes.as_mut() else {
            return std::future::pending().await;
        };
        tokio::select! {
            result = changes.changed() => {
                if result.is_err() {
                    // The channel cannot close while we hold a receiver and it is in the
                    // map; if it did, wait for the drain only.
                    self.changes = None;
                }
            }
            _ = self.close.wait_for(|closing| *closing) => {}
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.watchers.waiting.fetch_sub(1, Ordering::Relaxed);
        drop(self.changes.take());
        let mut channels = self.watchers.channels();
        if channels
            .get(&self.job)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            channels.remove(&self.job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_wakes_the_waiter_and_leaving_forgets_the_job() {
        let watchers = Watchers::new();
        let job = Uuid::new_v4();
        let mut watch = watchers.watch(job);
        assert_eq!(watchers.waiting(), 1);
        watchers.changed(Uuid::new_v4());
        watchers.changed(job);
        tokio::time::timeout(std::time::Duration::from_secs(1), watch.changed())
            .await
            .expect("woken");
        drop(watch);
        assert_eq!(watchers.waiting(), 0);
        assert!(watchers.channels().is_empty());
    }

    #[tokio::test]
    async fn closing_wakes_everyone() {
        let watchers = Watchers::new();
        let mut watch = watchers.watch(Uuid::new_v4());
        watchers.close();
        tokio::time::timeout(std::time::Duration::from_secs(1), watch.changed())
            .await
            .expect("woken by the drain");
        assert!(watchers.closing());
    }
}

//! Request coalescing: one upstream fetch per key, however many requests want it.
//!
//! The first request for a missing key becomes the *leader*: it registers a flight and
//! the fetch runs on its own task (so a client that hangs up cannot cancel it for the
//! others, the moka `get_with` pitfall). Every later request for the key *follows*: it
//! waits on the flight's channel. The result, an error too, reaches every waiter. The
//! flight ends by publishing its result, then unregistering; because the fetch stores a
//! cacheable answer in the cache *before* publishing, a request that arrives after the
//! flight ended finds the answer in the cache.
//!
//! Every flight belongs to an *epoch* (the cache's invalidation count when it began). A
//! request joins only a flight of the current epoch: after a purge or a job action, a
//! request starts a fetch of its own rather than take the answer of one that began
//! before (which still answers the requests that joined it before).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// The registry of fetches under way.
pub struct Flights<K, V> {
    /// Key -> the channel its result will be published on. A `std` mutex: it is held for
    /// a hash-map operation only, never across an await.
    map: Mutex<HashMap<K, Registered<V>>>,
    /// Numbers flights, so a leader unregisters its own flight and never a newer one.
    next_id: std::sync::atomic::AtomicU64,
}

/// A flight as the registry holds it.
struct Registered<V> {
    rx: watch::Receiver<Option<V>>,
    epoch: u64,
    id: u64,
}

/// The role a request takes for a key.
pub enum Join<K: Eq + Hash + Clone, V: Clone> {
    /// No fetch was under way: this request must start one and complete it.
    Leader(FlightLeader<K, V>),
    /// A fetch is under way: wait for its result.
    Follower(Waiter<V>),
}

/// Held by whoever runs the fetch. Dropping it without completing (a panic in the fetch
/// task) unregisters the flight and wakes waiters with "abandoned".
pub struct FlightLeader<K: Eq + Hash + Clone, V: Clone> {
    /// The key, to unregister it.
    key: K,
    /// Where the result is published.
    tx: watch::Sender<Option<V>>,
    /// The registry it belongs to.
    flights: Arc<Flights<K, V>>,
    /// Its number in the registry.
    id: u64,
    /// The epoch it began in.
    epoch: u64,
}

/// A handle to wait for a flight's result.
pub struct Waiter<V> {
    /// The flight's channel; `None` until the result is in.
    rx: watch::Receiver<Option<V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Flights<K, V> {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Flights {
            map: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Joins the flight of `epoch` for `key`, starting one if none is under way (a
    /// flight of an earlier epoch is left to finish for those it already has).
    pub fn join(self: &Arc<Self>, key: &K, epoch: u64) -> Join<K, V> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = map.get(key).filter(|f| f.epoch == epoch) {
            return Join::Follower(Waiter {
                rx: flight.rx.clone(),
            });
        }
        let (tx, rx) = watch::channel(None);
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        map.insert(key.clone(), Registered { rx, epoch, id });
        Join::Leader(FlightLeader {
            key: key.clone(),
            tx,
            flights: Arc::clone(self),
            id,
            epoch,
        })
    }

    /// A waiter on the fetch of `epoch` under way for `key`, if there is one; never
    /// starts one.
    pub fn follow(&self, key: &K, epoch: u64) -> Option<Waiter<V>> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key)
            .filter(|f| f.epoch == epoch)
            .map(|f| Waiter { rx: f.rx.clone() })
    }

    /// Number of fetches under way.
    pub fn in_flight(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> FlightLeader<K, V> {
    /// A waiter for this flight's own result (the leader's request waits like any other).
    pub fn waiter(&self) -> Waiter<V> {
        Waiter {
            rx: self.tx.subscribe(),
        }
    }

    /// The epoch this flight began in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Publishes the result to every waiter and ends the flight.
    pub fn complete(self, value: V) {
        self.tx.send_replace(Some(value));
        // `Drop` unregisters, after the value is out.
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Drop for FlightLeader<K, V> {
    fn drop(&mut self) {
        let mut map = self
            .flights
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only its own: a flight of a later epoch may have taken the key since.
        if map.get(&self.key).is_some_and(|f| f.id == self.id) {
            map.remove(&self.key);
        }
    }
}

impl<V: Clone> Waiter<V> {
    /// The flight's result, or `None` if it was abandoned without one.
    pub async fn wait(mut self) -> Option<V> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(value) => value.clone(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_result() {
        let flights: Arc<Flights<u32, u32>> = Flights::new();
        let Join::Leader(leader) = flights.join(&1, 0) else {
            panic!("first join must lead");
        };
        let Join::Follower(follower) = flights.join(&1, 0) else {
            panic!("second join must follow");
        };
        let own = leader.waiter();
        assert_eq!(flights.in_flight(), 1);
        leader.complete(7);
        assert_eq!(follower.wait().await, Some(7));
        assert_eq!(own.wait().await, Some(7));
        assert_eq!(flights.in_flight(), 0);
        assert!(matches!(flights.join(&1, 0), Join::Leader(_)));
    }

    #[tokio::test]
    async fn a_later_epoch_starts_a_flight_of_its_own() {
        let flights: Arc<Flights<u32, u32>> = Flights::new();
        let Join::Leader(old) = flights.join(&1, 0) else {
            panic!("first join must lead");
        };
        let Join::Follower(early) = flights.join(&1, 0) else {
            panic!("same epoch follows");
        };
        let Join::Leader(new) = flights.join(&1, 1) else {
            panic!("a later epoch leads a new flight");
        };
        let Join::Follower(late) = flights.join(&1, 1) else {
            panic!("and others of it follow that one");
        };
        old.complete(7);
        assert_eq!(early.wait().await, Some(7));
        // The old flight's end did not unregister the new one.
        assert!(matches!(flights.join(&1, 1), Join::Follower(_)));
        new.complete(8);
        assert_eq!(late.wait().await, Some(8));
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn abandoned_flight_wakes_waiters_with_none() {
        let flights: Arc<Flights<u32, u32>> = Flights::new();
        let Join::Leader(leader) = flights.join(&1, 0) else {
            panic!("first join must lead");
        };
        let waiter = leader.waiter();
        drop(leader);
        assert_eq!(waiter.wait().await, None);
        assert_eq!(flights.in_flight(), 0);
    }
}

//! Guarding the account's quota and the upstream: every upstream call passes through
//! [`UpstreamGuard::admit`] first.
//!
//! Three independent checks, each its own module: the shared cooldown after an upstream
//! 429 (`cooldown`), the token bucket that keeps the gateway under the account's quota
//! (`bucket`), and a cap on calls in flight so the memory fetches hold stays bounded
//! (a semaphore). A refusal costs no upstream call and says when to come back.

pub mod bucket;
pub mod cooldown;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::UpstreamConfig;
use crate::error::{ErrorKind, GatewayError};
pub use bucket::TokenBucket;
pub use cooldown::Cooldown;

/// The guard in front of every upstream call.
pub struct UpstreamGuard {
    /// Closed for a while after the upstream answers 429.
    pub cooldown: Cooldown,
    /// The account's quota (`upstream.rate_limit`), if one is set.
    pub bucket: TokenBucket,
    /// Slots for calls in flight (`upstream.max_concurrent`).
    slots: Arc<Semaphore>,
    /// The configured number of slots, for metrics and resizing on reload.
    max_concurrent: std::sync::atomic::AtomicUsize,
}

/// A slot held for the duration of one upstream call.
pub type Slot = OwnedSemaphorePermit;

impl UpstreamGuard {
    /// A guard configured from `[upstream]`.
    pub fn new(config: &UpstreamConfig) -> UpstreamGuard {
        UpstreamGuard {
            cooldown: Cooldown::new(config.max_cooldown),
            bucket: TokenBucket::new(config.rate_limit, config.rate_limit_burst),
            slots: Arc::new(Semaphore::new(config.max_concurrent)),
            max_concurrent: config.max_concurrent.into(),
        }
    }

    /// Applies a reloaded `[upstream]`: the bucket keeps its tokens (a reload must not
    /// hand out a fresh burst), the cooldown keeps its state, the slot count changes.
    pub fn reconfigure(&self, config: &UpstreamConfig) {
        use std::sync::atomic::Ordering;
        self.cooldown.set_max(config.max_cooldown);
        self.bucket
            .reconfigure(config.rate_limit, config.rate_limit_burst);
        let old = self
            .max_concurrent
            .swap(config.max_concurrent, Ordering::SeqCst);
        if config.max_concurrent > old {
            self.slots.add_permits(config.max_concurrent - old);
        } else if config.max_concurrent < old {
            self.slots.forget_permits(old - config.max_concurrent);
        }
    }

    /// The quick checks, before any waiting: the 429 cooldown, then the quota.
    pub fn check_quota(&self) -> Result<(), GatewayError> {
        if let Some(wait) = self.cooldown.closed_for() {
            return Err(rate_limited(
                ErrorKind::UpstreamRateLimited,
                "the upstream answered 429; calls resume after its cooldown",
                wait,
            ));
        }
        if let Err(wait) = self.bucket.try_take() {
            return Err(rate_limited(
                ErrorKind::QuotaExhausted,
                "the gateway's upstream quota (upstream.rate_limit) is used up",
                wait,
            ));
        }
        Ok(())
    }

    /// Waits up to `deadline` for a slot for one upstream call.
    pub async fn slot(&self, deadline: Duration) -> Result<Slot, GatewayError> {
        let busy = || {
            GatewayError::new(
                ErrorKind::UpstreamBusy,
                "too many upstream calls in flight (upstream.max_concurrent)",
            )
        };
        match tokio::time::timeout(deadline, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(busy()),
        }
    }

    /// Upstream calls in flight now.
    pub fn in_flight(&self) -> usize {
        let max = self
            .max_concurrent
            .load(std::sync::atomic::Ordering::Relaxed);
        max.saturating_sub(self.slots.available_permits())
    }
}

/// A 429 from the gateway itself, with `Retry-After` in whole seconds (at least 1).
pub fn rate_limited(kind: ErrorKind, message: &'static str, wait: Duration) -> GatewayError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    GatewayError::new(kind, message).with_retry_after(secs.max(1))
}

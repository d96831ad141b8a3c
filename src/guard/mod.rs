//! Guarding the account's quota and the upstream: every upstream call passes through
//! [`UpstreamGuard::admit`] first.
//!
//! Three independent checks, each its own module: the shared cooldown after an upstream
//! 429 (`cooldown`), the token bucket that keeps the gateway under the account's quota
//! (`bucket`), and a cap on calls in flight so the memory fetches hold stays bounded
//! (a semaphore). A refusal costs no upstream call and says when to come back.

pub mod bucket;
pub mod cooldown;
pub mod token;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::UpstreamConfig;
use crate::error::{ErrorKind, GatewayError};
pub use bucket::TokenBucket;
pub use cooldown::Cooldown;
pub use token::Token;

/// The guard in front of every upstream call.
pub struct UpstreamGuard {
    /// Closed for a while after the upstream answers 429.
    pub cooldown: Cooldown,
    /// The account's quota (`upstream.rate_limit`), if one is set.
    pub bucket: Arc<TokenBucket>,
    /// Slots for cached lookups' calls (`upstream.max_concurrent`).
    lookups: Pool,
    /// Slots for forwarded calls, held to the end of their bodies (`upstream.max_streams`).
    streams: Pool,
}

/// Which bound a call draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// A cached lookup's fetch: short, read whole.
    Lookup,
    /// A forwarded call (download, upload, create, ...), whose body may take long.
    Stream,
}

/// A resizable count of slots.
struct Pool {
    slots: Arc<Semaphore>,
    /// The configured number of slots, for metrics and resizing on reload.
    max: AtomicUsize,
    /// Slots to retire as they come back: a reload that lowers the count while calls
    /// hold slots cannot take those slots away, so it takes them when released.
    retire: Arc<AtomicUsize>,
    /// What a call that waited too long is told.
    busy: &'static str,
}

impl Pool {
    fn new(max: usize, busy: &'static str) -> Pool {
        Pool {
            slots: Arc::new(Semaphore::new(max)),
            max: max.into(),
            retire: Arc::new(AtomicUsize::new(0)),
            busy,
        }
    }

    /// Changes the count from now on (slots in use beyond a lowered count are retired
    /// as they come back).
    fn resize(&self, new: usize) {
        let old = self.max.swap(new, Ordering::SeqCst);
        if new > old {
            // Slots still owed to an earlier lowering are cancelled first.
            let grow = new - old;
            let owed = self
                .retire
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(grow))
                })
                .unwrap_or(0);
            self.slots.add_permits(grow - owed.min(grow));
        } else if new < old {
            let shrink = old - new;
            let idle = self.slots.forget_permits(shrink);
            self.retire.fetch_add(shrink - idle, Ordering::AcqRel);
        }
    }

    /// Waits up to `wait` for a slot.
    async fn slot(&self, wait: Duration) -> Result<Slot, GatewayError> {
        match tokio::time::timeout(wait, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot {
                permit: Some(permit),
                retire: Arc::clone(&self.retire),
            }),
            _ => Err(GatewayError::new(ErrorKind::UpstreamBusy, self.busy)),
        }
    }

    /// Slots held now.
    fn in_use(&self) -> usize {
        // Permits in existence are the configured count plus those still to retire.
        let max = self.max.load(Ordering::Relaxed) + self.retire.load(Ordering::Relaxed);
        max.saturating_sub(self.slots.available_permits())
    }
}

/// A slot held for the duration of one upstream call.
pub struct Slot {
    /// The semaphore's permit; `None` only after it was retired in `drop`.
    permit: Option<OwnedSemaphorePermit>,
    /// The guard's count of slots still to retire.
    retire: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let retired = self
            .retire
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if let (true, Some(permit)) = (retired, self.permit.take()) {
            permit.forget();
        }
    }
}

/// Standing to make one upstream call: a slot, and the tokens that pay for it. Dropped
/// before [`sent`](Admission::sent), everything goes back.
pub struct Admission {
    /// The concurrency slot, held until the call (and, for buffered reads, its body) ends.
    slot: Slot,
    /// The account's token (when `upstream.rate_limit` is set) and the caller's (when its
    /// client has a share). A pair, not a `Vec`: every miss makes one of these.
    tokens: [Option<Token>; 2],
}

impl Admission {
    /// The call was handed to the connection: its tokens are used.
    pub fn sent(&mut self) {
        self.tokens.iter_mut().flatten().for_each(Token::spend);
    }

    /// Pays for sending the same call once more (the resend after a connection that
    /// closed with no answer): a new token of the account's quota, which the upstream
    /// counts, or no resend if it is empty. Not of the caller's share: the resend is the
    /// gateway's recovery, not the client's request, and a client at its last token must
    /// not turn a recoverable failure into an error for everyone waiting on the same
    /// fetch. The new token is settled like the first: spent once sent, given back if not.
    /// `Err` says how long until the account has a token.
    pub fn pay_again(&mut self) -> Result<(), Duration> {
        let [account, _] = &self.tokens;
        let again = account.as_ref().map(Token::take_another).transpose()?;
        // What was held paid for the send that went out; the new one, the next.
        self.sent();
        self.tokens = [again, None];
        Ok(())
    }

    /// The call was sent and answered: its tokens are used, and the slot alone is kept
    /// for as long as the caller holds it.
    pub fn into_slot(mut self) -> Slot {
        self.sent();
        self.slot
    }
}

impl UpstreamGuard {
    /// A guard configured from `[upstream]`.
    pub fn new(config: &UpstreamConfig) -> UpstreamGuard {
        UpstreamGuard {
            cooldown: Cooldown::new(config.max_cooldown),
            bucket: Arc::new(TokenBucket::new(config.rate_limit, config.rate_limit_burst)),
            lookups: Pool::new(
                config.max_concurrent,
                "too many upstream calls in flight (upstream.max_concurrent)",
            ),
            streams: Pool::new(
                config.max_streams,
                "too many forwarded calls in flight (upstream.max_streams)",
            ),
        }
    }

    /// Applies a reloaded `[upstream]`: the bucket keeps its tokens (a reload must not
    /// hand out a fresh burst), the cooldown keeps its state, the slot count changes
    /// from now on (slots in use beyond a lowered count are retired as they come back).
    pub fn reconfigure(&self, config: &UpstreamConfig) {
        self.cooldown.set_max(config.max_cooldown);
        self.bucket
            .reconfigure(config.rate_limit, config.rate_limit_burst);
        self.lookups.resize(config.max_concurrent);
        self.streams.resize(config.max_streams);
    }

    /// Whether the 429 gate is open.
    fn check_cooldown(&self) -> Result<(), GatewayError> {
        match self.cooldown.closed_for() {
            Some(wait) => Err(rate_limited(
                ErrorKind::UpstreamRateLimited,
                "the upstream answered 429; calls resume after its cooldown",
                wait,
            )),
            None => Ok(()),
        }
    }

    /// Admits one upstream call: the 429 gate, a token of the account's quota (with
    /// `share`, the caller's own token, already taken), then a slot of `lane`, waited
    /// for up to `wait`, then the gate again (a 429 may have closed it while this call
    /// queued). Any refusal gives back what was taken.
    pub async fn admit(
        &self,
        lane: Lane,
        share: Option<Token>,
        wait: Duration,
    ) -> Result<Admission, GatewayError> {
        self.check_cooldown()?;
        let account = if self.bucket.is_limited() {
            Some(Token::take(&self.bucket).map_err(|wait| {
                rate_limited(
                    ErrorKind::QuotaExhausted,
                    "the gateway's upstream quota (upstream.rate_limit) is used up",
                    wait,
                )
            })?)
        } else {
            None
        };
        let tokens = [account, share];
        let pool = match lane {
            Lane::Lookup => &self.lookups,
            Lane::Stream => &self.streams,
        };
        let slot = pool.slot(wait).await?;
        self.check_cooldown()?;
        Ok(Admission { slot, tokens })
    }

    /// Upstream calls in flight now, of one lane.
    pub fn in_flight(&self, lane: Lane) -> usize {
        match lane {
            Lane::Lookup => self.lookups.in_use(),
            Lane::Stream => self.streams.in_use(),
        }
    }
}

/// A 429 from the gateway itself, with `Retry-After` in whole seconds (at least 1).
pub fn rate_limited(kind: ErrorKind, message: &'static str, wait: Duration) -> GatewayError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    GatewayError::new(kind, message).with_retry_after(secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max_concurrent: usize) -> UpstreamConfig {
        UpstreamConfig {
            max_concurrent,
            ..UpstreamConfig::default()
        }
    }

    /// An admission, or the refusal of one, after a short wait for a slot.
    async fn admit(g: &UpstreamGuard) -> Result<Admission, GatewayError> {
        g.admit(Lane::Lookup, None, Duration::from_millis(10)).await
    }

    #[tokio::test]
    async fn lowering_the_slots_under_load_holds_as_calls_finish() {
        let g = UpstreamGuard::new(&slots(2));
        let a = admit(&g).await.expect("slot");
        let b = admit(&g).await.expect("slot");
        g.reconfigure(&slots(1));
        assert_eq!(g.in_flight(Lane::Lookup), 2);
        drop(a);
        // One slot was retired as it came back: the second call still holds the only one.
        assert!(admit(&g).await.is_err());
        drop(b);
        let c = admit(&g).await.expect("slot");
        assert!(admit(&g).await.is_err());
        drop(c);
        // Raising again cancels nothing owed (none is) and adds the slot back.
        g.reconfigure(&slots(2));
        let _c = admit(&g).await.expect("slot");
        let _d = admit(&g).await.expect("slot");
        assert_eq!(g.in_flight(Lane::Lookup), 2);
    }

    #[tokio::test]
    async fn streams_draw_on_their_own_bound() {
        let g = UpstreamGuard::new(&UpstreamConfig {
            max_concurrent: 1,
            max_streams: 2,
            ..UpstreamConfig::default()
        });
        let wait = Duration::from_millis(10);
        let _a = g.admit(Lane::Stream, None, wait).await.expect("stream");
        let _b = g.admit(Lane::Stream, None, wait).await.expect("stream");
        assert!(g.admit(Lane::Stream, None, wait).await.is_err());
        // Two transfers held: a lookup still gets its slot.
        let _c = admit(&g).await.expect("lookup");
        assert_eq!(
            (g.in_flight(Lane::Lookup), g.in_flight(Lane::Stream)),
            (1, 2)
        );
    }

    #[tokio::test]
    async fn raising_the_slots_first_cancels_what_is_owed() {
        let g = UpstreamGuard::new(&slots(2));
        let a = admit(&g).await.expect("slot");
        let b = admit(&g).await.expect("slot");
        g.reconfigure(&slots(1));
        g.reconfigure(&slots(2));
        drop(a);
        drop(b);
        let _c = admit(&g).await.expect("slot");
        let _d = admit(&g).await.expect("slot");
        assert!(admit(&g).await.is_err());
    }
}

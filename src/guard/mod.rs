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

use crate::config::{Rate, UpstreamConfig};
use crate::error::{ErrorKind, GatewayError};
use crate::shared::quota::Verdict;
use crate::shared::Shared;
pub use bucket::TokenBucket;
pub use cooldown::Cooldown;
pub use token::Token;

/// The guard in front of every upstream call.
pub struct UpstreamGuard {
    /// Closed for a while after the upstream answers 429.
    pub cooldown: Cooldown,
    /// The account's quota (`upstream.rate_limit`), if one is set; with `[shared]`, this
    /// process's share of it (`rate_limit / max_replicas`), spent only while Redis is away.
    pub bucket: Arc<TokenBucket>,
    /// The shared tier, whose quota and 429 gate are the account's, across replicas.
    shared: Option<SharedQuota>,
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
    pub async fn pay_again(&mut self) -> Result<(), Duration> {
        let [account, _] = &self.tokens;
        let again = match account {
            Some(token) => Some(token.take_another().await?),
            None => None,
        };
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

/// The shared quota's side of the guard.
struct SharedQuota {
    shared: Arc<Shared>,
    /// The account's rate and burst, as configured (the reloaded values).
    rate: std::sync::Mutex<(Option<Rate>, Option<u32>)>,
    /// Replicas the local share divides the quota among.
    max_replicas: u32,
    /// Tokens the shared quota had left at its last decision (-1: none yet).
    left: std::sync::atomic::AtomicI64,
}

impl SharedQuota {
    fn rate(&self) -> (Option<Rate>, Option<u32>) {
        *self
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// This process's share of `rate` (and `burst`) when it is one of `replicas`.
fn local_share(
    rate: Option<Rate>,
    burst: Option<u32>,
    replicas: u32,
) -> (Option<Rate>, Option<u32>) {
    let replicas = replicas.max(1);
    let rate = rate.map(|r| Rate {
        count: (r.count / replicas).max(1),
        per: r.per,
    });
    let burst = burst.map(|b| (b / replicas).max(1));
    (rate, burst)
}

impl UpstreamGuard {
    /// A guard configured from `[upstream]`, alone.
    pub fn new(config: &UpstreamConfig) -> UpstreamGuard {
        UpstreamGuard::with_shared(config, None)
    }

    /// A guard configured from `[upstream]`, whose quota and 429 gate are shared with the
    /// other replicas through `shared` (with `max_replicas` of them).
    pub fn with_shared(
        config: &UpstreamConfig,
        shared: Option<(Arc<Shared>, u32)>,
    ) -> UpstreamGuard {
        let replicas = shared.as_ref().map_or(1, |(_, n)| *n);
        let (rate, burst) = local_share(config.rate_limit, config.rate_limit_burst, replicas);
        UpstreamGuard {
            cooldown: Cooldown::new(config.max_cooldown),
            bucket: Arc::new(TokenBucket::new(rate, burst)),
            shared: shared.map(|(shared, max_replicas)| {
                shared.set_quota(config.rate_limit, config.rate_limit_burst);
                SharedQuota {
                    shared,
                    rate: std::sync::Mutex::new((config.rate_limit, config.rate_limit_burst)),
                    max_replicas,
                    left: std::sync::atomic::AtomicI64::new(-1),
                }
            }),
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
        let replicas = self.shared.as_ref().map_or(1, |s| s.max_replicas);
        let (rate, burst) = local_share(config.rate_limit, config.rate_limit_burst, replicas);
        self.bucket.reconfigure(rate, burst);
        if let Some(shared) = &self.shared {
            *shared
                .rate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                (config.rate_limit, config.rate_limit_burst);
            shared
                .shared
                .set_quota(config.rate_limit, config.rate_limit_burst);
        }
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
        let account = self.account_token().await?;
        let tokens = [account, share];
        let pool = match lane {
            Lane::Lookup => &self.lookups,
            Lane::Stream => &self.streams,
        };
        let slot = pool.slot(wait).await?;
        self.check_cooldown()?;
        Ok(Admission { slot, tokens })
    }

    /// A token of the account's quota (none when there is no quota): from the shared
    /// tier while it answers, else from this process's bucket. The shared tier also holds
    /// the 429 gate that any replica's 429 closes.
    async fn account_token(&self) -> Result<Option<Token>, GatewayError> {
        let spent = |wait| {
            rate_limited(
                ErrorKind::QuotaExhausted,
                "the gateway's upstream quota (upstream.rate_limit) is used up",
                wait,
            )
        };
        if let Some(quota) = &self.shared {
            let (rate, burst) = quota.rate();
            let metrics = quota.shared.metrics();
            match quota.shared.take(rate, burst, self.cooldown.max()).await {
                Ok(Verdict::Allowed(left)) => {
                    quota.left.store(left, Ordering::Relaxed);
                    metrics.quota_decision("shared", true);
                    return Ok(
                        rate.map(|_| Token::shared(&quota.shared, rate, burst, &self.bucket))
                    );
                }
                Ok(Verdict::Spent(wait)) => {
                    quota.left.store(0, Ordering::Relaxed);
                    metrics.quota_decision("shared", false);
                    return Err(spent(wait));
                }
                Ok(Verdict::Closed(wait)) => {
                    // Never longer than this gateway would close it for itself.
                    let wait = wait.min(self.cooldown.max());
                    // Another replica's 429: this one's gate closes for as long, so it
                    // holds even if Redis goes away now.
                    metrics.quota_decision("shared", false);
                    self.cooldown.close_for(wait);
                    return Err(rate_limited(
                        ErrorKind::UpstreamRateLimited,
                        "the upstream answered 429; calls resume after its cooldown",
                        wait,
                    ));
                }
                Err(_) => {
                    if quota.shared.take_lost() {
                        // Just lost Redis: this replica's share is its part of what the
                        // account had left (as the last probe saw it), not a fresh burst.
                        if let Some(left) = quota.shared.account_left() {
                            let replicas = f64::from(quota.max_replicas.max(1));
                            self.bucket.cap_at((left as f64 / replicas).floor());
                        }
                    }
                    if self.bucket.is_limited() {
                        let taken = Token::take(&self.bucket);
                        metrics.quota_decision("local", taken.is_ok());
                        return taken.map(Some).map_err(spent);
                    }
                    return Ok(None);
                }
            }
        }
        if self.bucket.is_limited() {
            Token::take(&self.bucket).map(Some).map_err(spent)
        } else {
            Ok(None)
        }
    }

    /// The quota's tokens left and its burst, for the gauges (`None`: no quota). With the
    /// shared tier in use, the account's as of its last decision (the burst until the
    /// first); else this process's bucket.
    pub fn quota_gauges(&self) -> Option<(f64, f64)> {
        if let Some(quota) = self.shared.as_ref().filter(|q| q.shared.usable()) {
            let (rate, burst) = quota.rate();
            let (_, burst) = crate::shared::quota::interval(rate, burst);
            rate?;
            let left = quota.left.load(Ordering::Relaxed);
            let left = if left < 0 {
                f64::from(burst)
            } else {
                left as f64
            };
            return Some((left, f64::from(burst)));
        }
        Some((self.bucket.available()?, self.bucket.capacity()?))
    }

    /// An upstream 429 here: the gate closes for every replica too.
    pub fn on_too_many(&self, retry_after: Option<Duration>) {
        self.cooldown.on_too_many(retry_after);
        if let (Some(quota), Some(wait)) = (&self.shared, self.cooldown.closed_for()) {
            quota.shared.close_gate(wait);
        }
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

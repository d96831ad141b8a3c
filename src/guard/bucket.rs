//! A token bucket: the account's quota, as calls per period with a burst.
//!
//! Tokens refill continuously (count / period per second) up to the burst. Kept as a
//! float under a mutex: it is touched once per upstream call, which the quota itself
//! limits to a few per second, so contention is not a concern.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::Rate;

/// A token bucket, or no limit at all.
pub struct TokenBucket {
    /// `None` when no rate is configured.
    state: Mutex<Option<BucketState>>,
}

struct BucketState {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens held.
    burst: f64,
    /// Tokens now (as of `at`).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

/// The default burst: a tenth of the count, so a restart cannot spend a whole hour's
/// quota in a second, and at least one.
fn default_burst(rate: Rate) -> u32 {
    (rate.count / 10).max(1)
}

impl TokenBucket {
    /// A bucket for `rate` (none: unlimited), full at the start.
    pub fn new(rate: Option<Rate>, burst: Option<u32>) -> TokenBucket {
        let state = rate.map(|rate| {
            let burst = f64::from(burst.unwrap_or_else(|| default_burst(rate)));
            BucketState {
                rate: f64::from(rate.count) / rate.per.as_secs_f64(),
                burst,
                tokens: burst,
                at: Instant::now(),
            }
        });
        TokenBucket {
            state: Mutex::new(state),
        }
    }

    /// Changes the rate and burst, keeping the tokens already there (capped).
    pub fn reconfigure(&self, rate: Option<Rate>, burst: Option<u32>) {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = TokenBucket::new(rate, burst)
            .state
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        *guard = match (guard.take(), fresh) {
            (Some(mut old), Some(new)) => {
                old.refill(Instant::now());
                Some(BucketState {
                    tokens: old.tokens.min(new.burst),
                    ..new
                })
            }
            (_, new) => new,
        };
    }

    /// Takes one token, or says how long until one is free.
    pub fn try_take(&self) -> Result<(), Duration> {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = guard.as_mut() else {
            return Ok(());
        };
        state.refill(Instant::now());
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - state.tokens) / state.rate))
        }
    }

    /// Returns one token taken by [`try_take`](Self::try_take) for a call that was never
    /// sent (capped at the burst, like any refill).
    pub fn give_back(&self) {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = guard.as_mut() {
            state.refill(Instant::now());
            state.tokens = (state.tokens + 1.0).min(state.burst);
        }
    }

    /// Whether a rate is configured (an unlimited bucket needs no token handed around).
    pub fn is_limited(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Brings the tokens down to at most `tokens` (never up).
    pub fn cap_at(&self, tokens: f64) {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = guard.as_mut() {
            state.refill(Instant::now());
            state.tokens = state.tokens.min(tokens.max(0.0));
        }
    }

    /// The most tokens it holds (`None`: unlimited), for metrics.
    pub fn capacity(&self) -> Option<f64> {
        let guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().map(|s| s.burst)
    }

    /// Tokens available now (`None`: unlimited), for metrics.
    pub fn available(&self) -> Option<f64> {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        guard.as_mut().map(|s| {
            s.refill(Instant::now());
            s.tokens
        })
    }
}

impl BucketState {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_always_gives() {
        let b = TokenBucket::new(None, None);
        for _ in 0..10_000 {
            assert!(b.try_take().is_ok());
        }
    }

    #[test]
    fn burst_then_wait_for_the_next_token() {
        let rate = Rate {
            count: 10,
            per: Duration::from_secs(3600),
        };
        let b = TokenBucket::new(Some(rate), Some(3));
        for _ in 0..3 {
            assert!(b.try_take().is_ok());
        }
        let wait = b.try_take().expect_err("empty");
        // One token every 360 s.
        assert!(
            wait > Duration::from_secs(350) && wait <= Duration::from_secs(360),
            "{wait:?}"
        );
    }

    #[test]
    fn default_burst_is_a_tenth() {
        let rate = Rate {
            count: 5000,
            per: Duration::from_secs(3600),
        };
        let b = TokenBucket::new(Some(rate), None);
        let taken = (0..1000).filter(|_| b.try_take().is_ok()).count();
        assert_eq!(taken, 500);
    }

    #[test]
    fn a_token_given_back_can_be_taken_again_but_never_past_the_burst() {
        let rate = Rate {
            count: 10,
            per: Duration::from_secs(3600),
        };
        let b = TokenBucket::new(Some(rate), Some(1));
        assert!(b.try_take().is_ok());
        assert!(b.try_take().is_err());
        b.give_back();
        assert!(b.try_take().is_ok());
        b.give_back();
        b.give_back();
        assert!(b.try_take().is_ok());
        assert!(
            b.try_take().is_err(),
            "two give-backs on a burst of 1 make one token"
        );
    }

    #[test]
    fn reconfigure_keeps_tokens_spent() {
        let rate = Rate {
            count: 100,
            per: Duration::from_secs(3600),
        };
        let b = TokenBucket::new(Some(rate), Some(5));
        for _ in 0..5 {
            assert!(b.try_take().is_ok());
        }
        b.reconfigure(Some(rate), Some(50));
        assert!(b.try_take().is_err(), "a reload must not refill the bucket");
    }
}

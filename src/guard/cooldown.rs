//! The shared gate closed by an upstream 429.
//!
//! While closed, no request reaches the upstream: each is answered 429 at once, so a
//! burst of misses cannot keep hammering an API that already said "too many". It stays
//! closed for the upstream's `Retry-After` (capped), or without one for a backoff that
//! starts at 1 s and doubles while 429s continue; a success resets the backoff. An
//! invented long pause would hurt more than it helps (see pitfalls: a 60 s default pushed
//! one proxy's median latency from 4 s to 64 s), hence the short start.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The first backoff without a `Retry-After`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The 429 gate.
pub struct Cooldown {
    state: Mutex<CooldownState>,
}

struct CooldownState {
    /// Closed until then.
    until: Option<Instant>,
    /// The next backoff to use without a `Retry-After`.
    backoff: Duration,
    /// Cap for any closing (`upstream.max_cooldown`).
    max: Duration,
}

impl Cooldown {
    /// An open gate.
    pub fn new(max: Duration) -> Cooldown {
        Cooldown {
            state: Mutex::new(CooldownState {
                until: None,
                backoff: FIRST_BACKOFF,
                max,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CooldownState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cap on any closing (`upstream.max_cooldown`).
    pub fn max(&self) -> Duration {
        self.lock().max.max(FIRST_BACKOFF)
    }

    /// Changes the cap (reload).
    pub fn set_max(&self, max: Duration) {
        self.lock().max = max;
    }

    /// How long the gate stays closed, or `None` when open.
    pub fn closed_for(&self) -> Option<Duration> {
        let state = self.lock();
        let until = state.until?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// The upstream answered 429, with its `Retry-After` if it sent one.
    pub fn on_too_many(&self, retry_after: Option<Duration>) {
        let mut state = self.lock();
        let pause = match retry_after {
            Some(wait) => wait,
            None => {
                let pause = state.backoff;
                state.backoff = (state.backoff * 2).min(state.max.max(FIRST_BACKOFF));
                pause
            }
        }
        .min(state.max);
        let until = Instant::now() + pause;
        // Never shorten a closing already in force.
        state.until = Some(state.until.map_or(until, |u| u.max(until)));
    }

    /// Another replica saw the 429 (the shared tier says the gate is closed for `wait`):
    /// closed here too, for as long, with no change to this process's own backoff.
    pub fn close_for(&self, wait: Duration) {
        let mut state = self.lock();
        let until = Instant::now() + wait.min(state.max.max(FIRST_BACKOFF));
        state.until = Some(state.until.map_or(until, |u| u.max(until)));
    }

    /// The upstream answered something other than 429: the backoff starts over.
    pub fn on_success(&self) {
        let mut state = self.lock();
        state.backoff = FIRST_BACKOFF;
    }
}

/// Reads `Retry-After` in either form RFC 9110 allows: whole seconds (a number too
/// large for 64 bits is "very long", and the cap applies), or an HTTP-date (the time
/// left until it; a date already past is no wait at all).
pub fn parse_retry_after(value: Option<&http::HeaderValue>) -> Option<Duration> {
    let text = value?.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(
            text.parse::<u64>()
                .map_or(Duration::MAX, Duration::from_secs),
        );
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let c = Cooldown::new(Duration::from_secs(60));
        assert!(c.closed_for().is_none());
        c.on_too_many(Some(Duration::from_secs(2)));
        let left = c.closed_for().expect("closed");
        assert!(left <= Duration::from_secs(2) && left > Duration::from_secs(1));
        c.on_too_many(Some(Duration::from_secs(3600)));
        assert!(c.closed_for().expect("closed") <= Duration::from_secs(60));
    }

    #[test]
    fn backoff_doubles_and_resets_after_success() {
        let c = Cooldown::new(Duration::from_secs(60));
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut s = c.lock();
            s.until = None;
            drop(s);
            c.on_too_many(None);
            seen.push(c.closed_for().expect("closed").as_secs_f64().round() as u64);
        }
        assert_eq!(seen, [1, 2, 4, 8]);
        c.on_success();
        c.lock().until = None;
        c.on_too_many(None);
        assert_eq!(
            c.closed_for().expect("closed").as_secs_f64().round() as u64,
            1
        );
    }

    #[test]
    fn retry_after_parsing() {
        let v = http::HeaderValue::from_static("7");
        assert_eq!(parse_retry_after(Some(&v)), Some(Duration::from_secs(7)));
        let past = http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(parse_retry_after(Some(&past)), Some(Duration::ZERO));
        let future = http::HeaderValue::from_static("Wed, 21 Oct 2099 07:28:00 GMT");
        assert!(parse_retry_after(Some(&future)).expect("a date") > Duration::from_secs(86400));
        let huge = http::HeaderValue::from_static("99999999999999999999999");
        assert_eq!(parse_retry_after(Some(&huge)), Some(Duration::MAX));
        for bad in ["soon", "-5", "1.5", ""] {
            let v = http::HeaderValue::from_static(bad);
            assert_eq!(parse_retry_after(Some(&v)), None, "{bad}");
        }
        assert_eq!(parse_retry_after(None), None);
        // A huge wait is capped, never an overflow.
        let c = Cooldown::new(Duration::from_secs(60));
        c.on_too_many(Some(Duration::MAX));
        assert!(c.closed_for().expect("closed") <= Duration::from_secs(60));
    }
}
